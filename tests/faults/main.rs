//! Fault tests: a few thousand webhooks from several connections while the
//! broker or the relay fails, then every 2xx'd id must be found in a queue
//! bound to `#` (duplicates allowed, and counted).
//!
//! These stop RabbitMQ, so they must never run beside other broker tests:
//!
//! ```sh
//! cargo test --features fault-tests --test faults -- --test-threads=1 --nocapture
//! ```

// Shared with the cluster tests, which use other parts of it.
#[allow(dead_code)]
mod harness;

use std::time::{Duration, Instant};

use harness::{BrokerGuard, Load, Setup, delivered, rabbitmqctl, reckon};

const TOTAL: usize = 3000;
const CONNECTIONS: usize = 8;
const READY_WITHIN: Duration = Duration::from_secs(30);
const DRAINED_WITHIN: Duration = Duration::from_secs(60);

/// A fresh setup with its relay connected, and a load not yet started.
async fn connected() -> (Setup, harness::Relay, Load) {
    let setup = Setup::new();
    let relay = setup.start_relay();
    relay.wait_connected(READY_WITHIN).await;
    (setup, relay, Load::new())
}

/// After the load: waits for the spool to drain, counts, and cleans up.
async fn settle(
    name: &str,
    setup: &Setup,
    relay: harness::Relay,
    load: &Load,
    ready_again: Duration,
) {
    relay.wait_drained(DRAINED_WITHIN).await;
    let drained = relay.metric("hookrelay_spool_drained_total ").await;
    println!("{name}: {drained} webhooks went through the spool");
    let reckoning = reckon(name, load, &delivered(&setup.all_queue()).await);
    println!(
        "{}, ready again after {} ms",
        reckoning.line(),
        ready_again.as_millis()
    );
    reckoning.assert_nothing_lost();
    assert!(
        ready_again <= Duration::from_secs(10),
        "{name}: ready again only after {ready_again:?}"
    );
    drop(relay);
    setup.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_stopped_and_started_mid_load() {
    let (setup, relay, load) = connected().await;
    let broker = BrokerGuard;

    let fault = async {
        load.reached(TOTAL / 4).await;
        broker.stop_app().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        broker.start_app().await;
        relay.wait_connected(READY_WITHIN).await
    };
    let ((), ready_again) = tokio::join!(load.run(setup.port, TOTAL, CONNECTIONS), fault);

    settle(
        "broker stop_app/start_app",
        &setup,
        relay,
        &load,
        ready_again,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_connections_force_closed_mid_load() {
    let (setup, relay, load) = connected().await;

    let fault = async {
        load.reached(TOTAL / 3).await;
        rabbitmqctl(&["close_all_connections", "fault test: forced close"]).await;
        let closed_at = Instant::now();
        // The relay may not have noticed yet; give it its health-check interval.
        tokio::time::sleep(Duration::from_millis(100)).await;
        relay.wait_connected(READY_WITHIN).await;
        closed_at.elapsed()
    };
    let ((), ready_again) = tokio::join!(load.run(setup.port, TOTAL, CONNECTIONS), fault);

    settle(
        "connections force-closed",
        &setup,
        relay,
        &load,
        ready_again,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relay_killed_mid_load_and_restarted_on_its_spool() {
    let (setup, mut relay, load) = connected().await;

    let fault = async {
        load.reached(TOTAL / 3).await;
        relay.kill();
        setup.restart_relay(READY_WITHIN).await
    };
    let ((), (relay, ready_again)) = tokio::join!(load.run(setup.port, TOTAL, CONNECTIONS), fault);

    settle("relay SIGKILL + restart", &setup, relay, &load, ready_again).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relay_terminated_mid_load_drains_gracefully() {
    let (setup, relay, load) = connected().await;

    let fault = async {
        load.reached(TOTAL / 3).await;
        let status = relay.terminate().await;
        assert!(status.success(), "a graceful exit: {status:?}");
        setup.restart_relay(READY_WITHIN).await
    };
    let ((), (relay, ready_again)) = tokio::join!(load.run(setup.port, TOTAL, CONNECTIONS), fault);

    settle("relay SIGTERM + restart", &setup, relay, &load, ready_again).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relay_started_while_the_broker_is_down() {
    let (setup, broker) = (Setup::new(), BrokerGuard);
    // Its topology (the queue bound to `#` included) is declared on connecting,
    // before the spool drains.
    broker.stop_app().await;
    let relay = setup.start_relay();
    relay.wait_ready(READY_WITHIN, false).await;
    let load = Load::new();

    let fault = async {
        load.reached(TOTAL / 2).await;
        broker.start_app().await;
        relay.wait_connected(READY_WITHIN).await
    };
    let ((), ready_again) = tokio::join!(load.run(setup.port, TOTAL, CONNECTIONS), fault);

    settle(
        "relay started with the broker down",
        &setup,
        relay,
        &load,
        ready_again,
    )
    .await;
}
