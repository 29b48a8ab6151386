//! Cluster tests: a relay on a real three-node RabbitMQ cluster
//! (`scripts/rabbitmq-cluster.sh`), with quorum queues everywhere, takes
//! 3,000 webhooks paced over several connections while one node is killed,
//! or all three are restarted one by one. Every 2xx'd id must then be in a
//! quorum queue bound to `#`, read through a node that survived.
//!
//! Each test starts its own cluster (as root: the nodes run as the `rabbitmq`
//! user), on ports of its own (AMQP 5691-5693), and stops it at the end; the
//! broker on 5672 is never touched. Run them alone, one at a time:
//!
//! ```sh
//! cargo test --features cluster-tests --test cluster -- --test-threads=1 --nocapture
//! ```

#[path = "../common/mod.rs"]
mod common;
// Shared with the fault tests, which use other parts of it.
#[allow(dead_code)]
#[path = "../faults/harness.rs"]
mod harness;

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use harness::{Load, Setup, delivered_from, direct_again, reckon};

const TOTAL: usize = 3000;
/// Sent after the load, at its pace, while the fault lasts and once after it.
const TAIL: usize = 300;
const CONNECTIONS: usize = 8;
const READY_WITHIN: Duration = Duration::from_secs(30);
const DRAINED_WITHIN: Duration = Duration::from_secs(60);

/// What happens to the cluster once a quarter of the load is sent.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// SIGKILL of the node the relay is connected to.
    KillConnectedNode,
    /// Each node in turn stopped cleanly and started again.
    RollingRestart,
    /// SIGKILL of a node the relay is not connected to.
    KillOtherNode,
}

impl Fault {
    /// The load's pace. The fault should end well before the load does (when
    /// it does not, the load goes on at this pace until it has). 3,000 at
    /// 100/s take 30 s, and a kill at the 7.5th second is over within 2 s. A
    /// rolling restart took 23-31 s here, so its load takes 50 s and the
    /// restart begins at the 12.5th.
    fn per_second(self) -> f64 {
        match self {
            Fault::RollingRestart => 60.0,
            Fault::KillConnectedNode | Fault::KillOtherNode => 100.0,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_node_the_relay_is_connected_to_is_killed() {
    under(Fault::KillConnectedNode, "connected node killed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_node_is_restarted_one_by_one() {
    under(Fault::RollingRestart, "rolling restart").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_the_relay_is_not_connected_to_is_killed() {
    under(Fault::KillOtherNode, "other node killed").await;
}

async fn under(fault: Fault, scenario: &str) {
    let cluster = Cluster::start().await;
    let setup = Setup::on(
        &cluster.uris.join(","),
        &[("HOOKRELAY__AMQP__QUEUE_TYPE", "quorum")],
    );
    let relay = setup.start_relay();
    relay.wait_connected(READY_WITHIN).await;
    let connected = cluster.node_of(&relay.node().await.expect("readyz names the node"));
    let load = Load::paced(fault.per_second());
    let fault_over = AtomicBool::new(false);

    let faulting = async {
        load.reached(TOTAL / 4).await;
        let at = Instant::now();
        let killed = match fault {
            Fault::KillConnectedNode => Some(cluster.kill(connected).await),
            Fault::KillOtherNode => Some(cluster.kill(connected % 3 + 1).await),
            Fault::RollingRestart => {
                for n in 1..=3 {
                    cluster.restart(n).await;
                }
                None
            }
        };
        fault_over.store(true, Ordering::SeqCst);
        (at, at.elapsed(), killed)
    };
    let sending = async {
        load.run(setup.port, TOTAL, CONNECTIONS).await;
        // On a loaded machine a rolling restart can outlast the paced load:
        // keep sending at its pace while the fault lasts, then once more, so
        // that what the relay does after the fault can be seen.
        let mut after_the_fault = false;
        while !after_the_fault {
            after_the_fault = fault_over.load(Ordering::SeqCst);
            load.run(setup.port, TAIL, CONNECTIONS).await;
        }
        Instant::now()
    };
    let work = async { tokio::join!(sending, faulting) };
    let ((load_done, (fault_at, fault_took, killed)), samples) = relay.sample_outcomes(work).await;

    relay.wait_drained(DRAINED_WITHIN).await;
    let now_on = cluster.node_of(&relay.node().await.expect("connected"));
    let survivor = (1..=3).find(|n| Some(*n) != killed).unwrap();
    let delivered = delivered_from(&cluster.uris[survivor - 1], &setup.all_queue()).await;
    let reckoning = reckon(&format!("cluster {scenario}"), &load, &delivered);
    let direct = direct_again(&samples, fault_at);
    let replaced = relay.metric("hookrelay_channels_replaced_total").await;
    println!(
        "{}, fault took {} ms, direct publishing again {} after it began, connected to node {connected} then node {now_on}, channels replaced after a nack {replaced}",
        reckoning.line(),
        fault_took.as_millis(),
        direct.map_or("never".to_owned(), |d| format!("{} ms", d.as_millis())),
    );

    reckoning.assert_nothing_lost();
    reckoning.assert_all_accepted();
    setup
        .assert_audited(&format!("cluster {scenario}"), DRAINED_WITHIN)
        .await;
    assert!(
        fault_at + fault_took < load_done,
        "cluster {scenario}: webhooks were sent after the fault"
    );
    assert!(
        direct.is_some(),
        "cluster {scenario}: the relay never went back from the spool to publishing directly"
    );
    match fault {
        Fault::KillConnectedNode => assert_ne!(now_on, connected, "moved to a live node"),
        Fault::KillOtherNode => assert_eq!(now_on, connected, "no reason to reconnect"),
        Fault::RollingRestart => {}
    }
    // Only when it passed: a failure leaves the relay's log for a post-mortem
    // (and the cluster's logs are in CLUSTER_DIR.last).
    drop(relay);
    let _ = std::fs::remove_dir_all(&setup.dir);
}

/// The three nodes of `scripts/rabbitmq-cluster.sh`, stopped on drop.
struct Cluster {
    uris: Vec<String>,
}

impl Cluster {
    async fn start() -> Cluster {
        // A cluster a failed run left behind.
        let _ = script(&["stop"]).await;
        let output = script(&["start"]).await;
        let uris: Vec<String> = String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect();
        assert_eq!(uris.len(), 3, "start prints three URIs");
        Cluster { uris }
    }

    /// Node 1, 2 or 3, from the URI `/readyz` names.
    fn node_of(&self, masked: &str) -> usize {
        let port = |uri: &str| uri.rsplit_once(':').map(|(_, rest)| rest.to_owned());
        let wanted = port(masked);
        1 + self
            .uris
            .iter()
            .position(|uri| port(uri) == wanted)
            .unwrap_or_else(|| panic!("{masked} is none of {:?}", self.uris))
    }

    /// SIGKILL of node `n`'s Erlang VM; returns `n`.
    async fn kill(&self, n: usize) -> usize {
        script(&["kill", &n.to_string()]).await;
        n
    }

    /// A clean stop of node `n`, then a start; back once it is in the cluster.
    async fn restart(&self, n: usize) {
        script(&["restart", &n.to_string()]).await;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = cluster_command(&["stop"]).output();
    }
}

async fn script(args: &[&str]) -> std::process::Output {
    let mut command = cluster_command(args);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("the cluster script runs");
    assert!(
        output.status.success(),
        "rabbitmq-cluster.sh {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The cluster script, on ports and in a folder of the tests' own, so that a
/// cluster someone started by hand on the default ports is left alone.
fn cluster_command(args: &[&str]) -> Command {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/rabbitmq-cluster.sh");
    let mut command = Command::new(script);
    command
        .args(args)
        .env(
            "CLUSTER_DIR",
            std::env::temp_dir().join("hookrelay-cluster-tests"),
        )
        .env("CLUSTER_PORT", "5691")
        .env("DIST_PORT", "25691");
    command
}
