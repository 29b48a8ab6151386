//! Fault tests: a few thousand webhooks from several connections while the
//! broker or the relay fails, then every 2xx'd id must be found in a queue
//! bound to `#` (duplicates allowed, and counted).
//!
//! These stop RabbitMQ, so they must never run beside other broker tests:
//!
//! ```sh
//! cargo test --features fault-tests --test faults -- --test-threads=1 --nocapture
//! ```

#[path = "../common/mod.rs"]
mod common;
// Shared with the cluster tests, which use other parts of it.
#[allow(dead_code)]
mod harness;

use std::time::{Duration, Instant};

use common::rabbitmqctl;
use harness::{BrokerGuard, Load, Setup, delivered, reckon};

const TOTAL: usize = 3000;
const CONNECTIONS: usize = 8;
const READY_WITHIN: Duration = Duration::from_secs(30);
const DRAINED_WITHIN: Duration = Duration::from_secs(60);
/// How long RabbitMQ stays stopped in the middle of the load.
const OUTAGE: Duration = Duration::from_secs(1);

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
    let drained = relay.metric("hookrelay_spool_drained_total").await;
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
        tokio::time::sleep(OUTAGE).await; // the fault: RabbitMQ away this long
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
        rabbitmqctl::run_async(&["close_all_connections", "fault test: forced close"]).await;
        let closed_at = Instant::now();
        // Connected again: a second successful connection, not the first one
        // the relay may not have seen close yet.
        let deadline = Instant::now() + READY_WITHIN;
        while relay.metric("hookrelay_broker_connects_total").await < 2.0 {
            assert!(Instant::now() < deadline, "the relay did not reconnect");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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

/// RabbitMQ frozen (SIGSTOP) this long, in the middle of a history read.
const PAUSE: Duration = Duration::from_secs(3);

/// Thaws RabbitMQ (SIGCONT) when dropped, also when the test fails.
struct Frozen(String);

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.0])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_history_read_waits_out_a_broker_that_pauses() {
    // Arrange: 5,000 events in the history.
    let (setup, relay, load) = connected().await;
    load.run(setup.port, 5000, CONNECTIONS).await;
    relay.wait_drained(DRAINED_WITHIN).await;
    let pid = rabbitmqctl::run_async(&["eval", "os:getpid()."])
        .await
        .trim()
        .trim_matches('"')
        .to_owned();

    // Act: read them all; once the first has arrived, RabbitMQ freezes for
    // longer than a delivery ever takes.
    let env = setup.env().set(
        "HOOKRELAY__SPOOL__PATH",
        setup.dir.join("events.sqlite").to_str().unwrap(),
    );
    let mut events = common::binary::command(&["events", "--json"], &env)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read every line as it comes, so the read never waits on its own output.
    let stdout = std::io::BufReader::new(events.stdout.take().unwrap());
    let (first_line, first_arrived) = std::sync::mpsc::channel();
    let reading = std::thread::spawn(move || {
        let mut count = 0;
        for _ in std::io::BufRead::lines(stdout).map_while(Result::ok) {
            count += 1;
            if count == 1 {
                let _ = first_line.send(());
            }
        }
        (count, events.wait_with_output().unwrap())
    });
    tokio::task::spawn_blocking(move || first_arrived.recv())
        .await
        .unwrap()
        .expect("the first event arrives");
    let frozen = Frozen(pid.clone());
    std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap();
    let started = Instant::now();
    tokio::time::sleep(PAUSE).await; // the fault: RabbitMQ frozen
    drop(frozen);
    let (read, output) = tokio::task::spawn_blocking(move || reading.join().unwrap())
        .await
        .unwrap();

    // Assert: every event was read, the pause notwithstanding.
    println!(
        "history read across a {} s broker pause: {read} events read, exit {:?}, {} s in all",
        PAUSE.as_secs(),
        output.status.code(),
        started.elapsed().as_secs()
    );
    assert!(output.status.success(), "{output:?}");
    assert_eq!(read, 5000, "{}", String::from_utf8_lossy(&output.stderr));
    drop(relay);
    setup.clean_up().await;
}
