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
use harness::{BrokerGuard, Load, Setup, announced, delivered, reckon};

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
    // What the test knows it sent, the audit must find from the history
    // alone: every number accounted for.
    setup.assert_audited(name, DRAINED_WITHIN).await;
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
    // The webhooks only: the history also holds the relay's announcements.
    let mut events =
        common::binary::command(&["events", "--json", "--routing-key", "sync.#"], &env)
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

/// Account changes the relay announced so far, whatever their state (the
/// fault load's webhooks leave accounts ok, needs_reconnect or retrying).
async fn announced_so_far(relay: &harness::Relay) -> f64 {
    let mut total = 0.0;
    for state in ["ok", "needs_reconnect", "retrying"] {
        let name = format!("hookrelay_account_changes_announced_total{{state=\"{state}\"}}");
        total += relay.metric(&name).await;
    }
    total
}

/// Waits (up to `within`) for `condition` on `relay`'s `/readyz`.
async fn until_ready_says(
    relay: &harness::Relay,
    within: Duration,
    what: &str,
    condition: impl Fn(&serde_json::Value) -> bool,
) {
    let started = Instant::now();
    loop {
        let ready = relay.readiness().await;
        if condition(&ready) {
            return;
        }
        assert!(
            started.elapsed() < within,
            "{what}: {ready}; log: {}",
            relay.log.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn announcers_killed_mid_announcement_and_mid_fold_announce_each_change_once() {
    const BEFORE: usize = 3000;
    const DURING: usize = 3000;
    let first = Setup::new();
    let second = first.beside();
    let mut announcer = first.start_relay();
    announcer.wait_connected(READY_WITHIN).await;
    until_ready_says(&announcer, READY_WITHIN, "the first relay announces", |r| {
        r["accounts"]["announcing"] == true
    })
    .await;

    // A history of new accounts, every change announced.
    let before = Load::new();
    before.run(first.port, BEFORE, CONNECTIONS).await;
    let accepted_before = before.accepted().len();
    until_ready_says(&announcer, DRAINED_WITHIN, "all announced", |r| {
        r["accounts"]["owed"] == 0
    })
    .await;
    assert_eq!(announced_so_far(&announcer).await, accepted_before as f64);

    // A new relay reads that history into its store: SIGKILLed half-way,
    // it starts again and resumes where its last batch ended.
    let mut reading = second.start_relay();
    until_ready_says(&reading, READY_WITHIN, "the second relay reads", |r| {
        r["history_follower"]["offset"]
            .as_u64()
            .is_some_and(|offset| offset > 0)
    })
    .await;
    let mid_fold = reading.readiness().await["history_follower"]["caught_up"] == false;
    reading.kill();
    assert!(
        mid_fold,
        "the second relay was killed while it read the history"
    );
    let standby = second.start_relay();
    standby.wait_connected(READY_WITHIN).await;
    until_ready_says(
        &standby,
        DRAINED_WITHIN,
        "the second relay caught up",
        |r| r["history_follower"]["caught_up"] == true,
    )
    .await;
    assert_eq!(
        standby.readiness().await["accounts"]["owed"],
        0,
        "nothing owed: all announced"
    );

    // New accounts through the second relay while the first announces
    // them; the first is SIGKILLed in the middle of it.
    let during = Load::starting_at(BEFORE);
    let kill = async {
        let started = Instant::now();
        while announced_so_far(&announcer).await < (accepted_before + DURING / 4) as f64 {
            assert!(
                started.elapsed() < DRAINED_WITHIN,
                "the first relay stopped announcing"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        announcer.kill();
    };
    tokio::join!(during.run(second.port, DURING, CONNECTIONS), kill);
    until_ready_says(
        &standby,
        DRAINED_WITHIN,
        "the second relay took over",
        |r| r["accounts"]["announcing"] == true && r["accounts"]["owed"] == 0,
    )
    .await;

    // Each change exactly once: one per accepted webhook (each a new account).
    let mut accepted = before.accepted();
    accepted.extend(during.accepted());
    let got = announced(&first.changes_queue()).await;
    let mut ids: Vec<&String> = got.iter().map(|(id, _)| id).collect();
    ids.sort();
    ids.dedup();
    let mut causes: Vec<String> = got.iter().map(|(_, cause)| cause.clone()).collect();
    causes.sort();
    accepted.sort();
    println!(
        "announcers killed: {} webhooks accepted, {} changes announced, {} distinct",
        accepted.len(),
        got.len(),
        ids.len()
    );
    assert_eq!(ids.len(), got.len(), "no change announced twice");
    assert_eq!(causes, accepted, "every change announced, once");
    drop(standby);
    first.clean_up().await;
}
