//! The fault-test harness: the real `hookrelay` binary (so it can be killed),
//! a concurrent HTTP load that records the id and time of every 2xx, the
//! broker's `rabbitmqctl`, and the final reckoning against what reached
//! RabbitMQ. The cluster tests (tests/cluster) use it too, against other
//! brokers.

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hookrelay::broker::Topology;
use lapin::options::{BasicGetOptions, ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{Connection, ConnectionProperties};
use serde_json::Value;
use uuid::Uuid;

use crate::common::env::{RelayEnv, amqp_url};
use crate::common::{binary, metrics, rabbitmqctl};

pub(crate) const CLIENT_ID: &str = "fault-client";

/// One relay's world: its exchange, its spool, its ports, its config file,
/// the RabbitMQ it talks to.
pub(crate) struct Setup {
    pub exchange: String,
    pub dir: PathBuf,
    pub port: u16,
    pub admin_port: u16,
    /// `amqp.uri`: one node, or a cluster's nodes separated by commas.
    pub amqp_uri: String,
    /// More `HOOKRELAY__...` settings for the relay.
    pub extra_env: Vec<(String, String)>,
    /// The relay's spool file in `dir` (its history index sits beside it).
    pub spool_file: String,
}

impl Setup {
    /// A relay on the shared broker (`AMQP_URL`).
    pub(crate) fn new() -> Setup {
        Setup::on(&amqp_url(), &[])
    }

    /// A relay on the RabbitMQ nodes of `amqp_uri`, with more settings.
    pub(crate) fn on(amqp_uri: &str, env: &[(&str, &str)]) -> Setup {
        let exchange = format!("fault-{}", Uuid::now_v7());
        let dir = std::env::temp_dir().join(&exchange);
        std::fs::create_dir_all(&dir).unwrap();
        // A durable queue bound to everything: where every accepted id must
        // arrive; and one bound to every change the relay announces.
        std::fs::write(
            dir.join("relay.toml"),
            format!(
                "[[queues]]\nname = \"{exchange}.all\"\nbindings = [\"#\"]\n\n\
                 [[queues]]\nname = \"{exchange}.all-changes\"\nchanges = [\"account.#\"]\n"
            ),
        )
        .unwrap();
        Setup {
            exchange,
            dir,
            port: free_port(),
            admin_port: free_port(),
            amqp_uri: amqp_uri.to_owned(),
            extra_env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            spool_file: "spool.sqlite".to_owned(),
        }
    }

    /// A second relay beside this one: the same exchange, configuration and
    /// folder, ports and a spool of its own (and so a history index of its own).
    pub(crate) fn beside(&self) -> Setup {
        Setup {
            port: free_port(),
            admin_port: free_port(),
            spool_file: "spool-2.sqlite".to_owned(),
            exchange: self.exchange.clone(),
            dir: self.dir.clone(),
            amqp_uri: self.amqp_uri.clone(),
            extra_env: self.extra_env.clone(),
        }
    }

    pub(crate) fn changes_queue(&self) -> String {
        format!("{}.all-changes", self.exchange)
    }

    /// The first node of `amqp_uri`.
    pub(crate) fn first_node(&self) -> &str {
        self.amqp_uri.split(',').next().unwrap_or_default()
    }

    pub(crate) fn all_queue(&self) -> String {
        format!("{}.all", self.exchange)
    }

    /// Starts a new relay (after the last one died or exited) and waits for
    /// its RabbitMQ connection; returns it and how long that took.
    pub(crate) async fn restart_relay(&self, within: Duration) -> (Relay, Duration) {
        let relay = self.start_relay();
        let ready_again = relay.wait_connected(within).await;
        (relay, ready_again)
    }

    /// The relay's environment: its config file (the queue bound to `#`),
    /// its ports, and the settings the test added.
    pub(crate) fn env(&self) -> RelayEnv {
        let config = self.dir.join("relay.toml");
        RelayEnv::new(
            CLIENT_ID,
            &self.exchange,
            &self.dir.join(&self.spool_file),
            &self.amqp_uri,
        )
        .set(
            "HOOKRELAY_CONFIG",
            config.to_str().expect("a UTF-8 temp dir"),
        )
        .set(
            "HOOKRELAY__SERVER__LISTEN",
            format!("127.0.0.1:{}", self.port),
        )
        .set(
            "HOOKRELAY__SERVER__ADMIN_LISTEN",
            format!("127.0.0.1:{}", self.admin_port),
        )
        .set("HOOKRELAY__SERVER__SHUTDOWN_TIMEOUT_SECS", "10")
        .set("HOOKRELAY__AMQP__CONFIRM_TIMEOUT_MS", "2000")
        .with(&self.extra_env)
    }

    /// Starts the relay binary; its log goes to `<dir>/relay-<n>.log`.
    pub(crate) fn start_relay(&self) -> Relay {
        let n = std::fs::read_dir(&self.dir)
            .map(std::iter::Iterator::count)
            .unwrap_or(0);
        let log = self.dir.join(format!("relay-{n}.log"));
        let child = binary::command(&["serve"], &self.env())
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .expect("the relay starts");
        Relay {
            child,
            admin: format!("http://127.0.0.1:{}", self.admin_port),
            log,
        }
    }

    /// `hookrelay audit --json --grace 0s` with the relay's configuration,
    /// until it finds no loss (a restarted relay notes how the run before it
    /// ended a moment after it connects) or `within` runs out: whether it
    /// passed, and what it said last.
    pub(crate) async fn audit(&self, within: Duration) -> (bool, String) {
        let started = Instant::now();
        loop {
            let mut command = binary::command(&["audit", "--json", "--grace", "0s"], &self.env());
            let output = tokio::task::spawn_blocking(move || command.output().expect("audit runs"))
                .await
                .unwrap();
            let said = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            if output.status.success() || started.elapsed() > within {
                return (output.status.success(), said);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Asserts that the audit, from the history alone, finds every number
    /// the relay gave accounted for (see [`Setup::audit`]).
    pub(crate) async fn assert_audited(&self, name: &str, within: Duration) {
        let (audited, said) = self.audit(within).await;
        println!("{name}: hookrelay audit said: {said}");
        assert!(audited, "{name}: the audit found a loss: {said}");
    }

    /// Deletes what the relay declared, and its folder.
    pub(crate) async fn clean_up(&self) {
        let Ok(connection) =
            Connection::connect(self.first_node(), ConnectionProperties::default()).await
        else {
            return;
        };
        let channel = connection.create_channel().await.unwrap();
        // The names the relay itself derives from this setup's configuration.
        let settings = self.env().settings(Some(&self.dir.join("relay.toml")));
        let topology = Topology::of(&settings);
        let consumer_queues = topology.consumer_queues().iter().map(|q| q.name.clone());
        let derived = [topology.announcer_lease(), topology.legacy_accounts_queue()];
        let own = topology.own_queues().into_iter().map(str::to_owned);
        for queue in own.chain(consumer_queues).chain(derived) {
            let _ = channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        for exchange in topology.own_exchanges() {
            let _ = channel
                .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
                .await;
        }
        let _ = connection.close(200, "done".into()).await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(crate) struct Relay {
    child: Child,
    admin: String,
    pub log: PathBuf,
}

impl Relay {
    /// Waits until the relay reports a RabbitMQ connection; returns how long it took.
    pub(crate) async fn wait_connected(&self, within: Duration) -> Duration {
        self.wait_ready(within, true).await
    }

    /// Waits until `/readyz` is 200 (with `broker`, until RabbitMQ is connected).
    pub(crate) async fn wait_ready(&self, within: Duration, broker: bool) -> Duration {
        let started = Instant::now();
        let http = reqwest::Client::new();
        while started.elapsed() < within {
            if let Ok(response) = http.get(format!("{}/readyz", self.admin)).send().await
                && response.status() == 200
            {
                let body: Value = response.json().await.unwrap_or_default();
                if !broker || body["broker"] == "connected" {
                    return started.elapsed();
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "the relay was not ready within {within:?}; log: {}",
            self.log.display()
        );
    }

    /// `/readyz`'s body, or `Null` while it does not answer.
    pub(crate) async fn readiness(&self) -> Value {
        match reqwest::get(format!("{}/readyz", self.admin)).await {
            Ok(response) => response.json().await.unwrap_or_default(),
            Err(_) => Value::Null,
        }
    }

    /// The node of `amqp.uri` the relay says it is connected to (`/readyz`).
    pub(crate) async fn node(&self) -> Option<String> {
        let response = reqwest::get(format!("{}/readyz", self.admin)).await.ok()?;
        let body: Value = response.json().await.ok()?;
        body["node"].as_str().map(str::to_owned)
    }

    /// Waits until the spool is empty and RabbitMQ connected.
    pub(crate) async fn wait_drained(&self, within: Duration) {
        let started = Instant::now();
        let http = reqwest::Client::new();
        while started.elapsed() < within {
            if let Ok(response) = http.get(format!("{}/readyz", self.admin)).send().await {
                let body: Value = response.json().await.unwrap_or_default();
                if body["broker"] == "connected" && body["spool"]["depth"] == 0 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "the spool did not drain within {within:?}; log: {}",
            self.log.display()
        );
    }

    /// Samples how many webhooks were published directly and how many
    /// spooled, every 25 ms until `work` is done; returns its output too.
    pub(crate) async fn sample_outcomes<T>(
        &self,
        work: impl Future<Output = T>,
    ) -> (T, Vec<Outcomes>) {
        let http = reqwest::Client::new();
        let mut samples = Vec::new();
        let sampling = async {
            loop {
                if let Some(text) = metrics::scrape(&http, &self.admin).await {
                    let count = |outcome: &str| {
                        let name =
                            format!("hookrelay_webhook_requests_total{{outcome=\"{outcome}\"}}");
                        metrics::sample(&text, &name).unwrap_or(0.0)
                    };
                    samples.push(Outcomes {
                        at: Instant::now(),
                        published: count("accepted"),
                        spooled: count("spooled"),
                    });
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        };
        let output = tokio::select! {
            () = sampling => unreachable!("sampling never ends"),
            output = work => output,
        };
        (output, samples)
    }

    /// A counter or gauge from `/metrics`, e.g. `hookrelay_spool_drained_total`.
    pub(crate) async fn metric(&self, name: &str) -> f64 {
        let text = metrics::scrape(&reqwest::Client::new(), &self.admin)
            .await
            .expect("the relay answers /metrics");
        metrics::sample(&text, name).unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
    }

    pub(crate) fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().unwrap();
    }

    /// SIGTERM, then wait for the exit.
    pub(crate) async fn terminate(mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        tokio::task::spawn_blocking(move || self.child.wait().unwrap())
            .await
            .unwrap()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Keeps RabbitMQ running whatever happens: a test that stops it starts it
/// again on the way out, even when it fails.
pub(crate) struct BrokerGuard;

impl BrokerGuard {
    pub(crate) async fn stop_app(&self) {
        rabbitmqctl::run_async(&["stop_app"]).await;
    }

    pub(crate) async fn start_app(&self) {
        rabbitmqctl::run_async(&["start_app"]).await;
        rabbitmqctl::run_async(&["await_startup"]).await;
    }
}

impl Drop for BrokerGuard {
    fn drop(&mut self) {
        rabbitmqctl::best_effort(&["start_app"]);
        rabbitmqctl::best_effort(&["await_startup"]);
    }
}

/// Webhooks answered so far, by where they went.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Outcomes {
    pub at: Instant,
    /// Confirmed by RabbitMQ before the answer.
    pub published: f64,
    /// Written to the spool before the answer.
    pub spooled: f64,
}

/// How long after `fault` the relay published directly again for good: the
/// first sample, after the last one in which webhooks were spooled, in which
/// one was published. Zero when it never spooled; `None` when it never came
/// back to publishing directly.
pub(crate) fn direct_again(samples: &[Outcomes], fault: Instant) -> Option<Duration> {
    let after: Vec<&Outcomes> = samples.iter().filter(|s| s.at >= fault).collect();
    let last_spooled = after
        .windows(2)
        .rposition(|pair| pair[1].spooled > pair[0].spooled);
    let Some(last_spooled) = last_spooled else {
        return Some(Duration::ZERO);
    };
    after[last_spooled + 1..]
        .windows(2)
        .find(|pair| pair[1].published > pair[0].published)
        .map(|pair| pair[1].at.duration_since(fault))
}

/// What one request came to.
#[derive(Debug, Clone)]
pub(crate) enum Sent {
    Accepted(String),
    Refused(u16, String),
    /// No answer at all (the relay was down or died mid-request).
    NoAnswer,
}

/// A bounded concurrent load: `total` webhooks over `connections` connections,
/// as fast as they are answered, or paced at a steady rate.
pub(crate) struct Load {
    pub progress: Arc<AtomicUsize>,
    results: Arc<Mutex<Vec<Sent>>>,
    /// When each 2xx came back.
    accepted_at: Arc<Mutex<Vec<Instant>>>,
    /// Webhooks per second, all connections together.
    rate: Option<f64>,
    /// The number of the first webhook: webhook `n` is of account `a<n>`.
    first: usize,
}

impl Load {
    pub(crate) fn new() -> Load {
        Load {
            progress: Arc::new(AtomicUsize::new(0)),
            results: Arc::new(Mutex::new(Vec::new())),
            accepted_at: Arc::new(Mutex::new(Vec::new())),
            rate: None,
            first: 0,
        }
    }

    /// A load whose webhooks are numbered from `first` (so of other accounts
    /// than a load numbered from 0).
    pub(crate) fn starting_at(first: usize) -> Load {
        Load {
            first,
            ..Load::new()
        }
    }

    /// Webhook `n` is sent no earlier than `n / per_second` after the start,
    /// so that a fault lands while the sender is steadily sending.
    pub(crate) fn paced(per_second: f64) -> Load {
        Load {
            rate: Some(per_second),
            ..Load::new()
        }
    }

    /// The longest time between two consecutive 2xx answers.
    pub(crate) fn longest_gap(&self) -> Duration {
        let mut times = self.accepted_at.lock().unwrap().clone();
        times.sort();
        times
            .windows(2)
            .map(|pair| pair[1] - pair[0])
            .max()
            .unwrap_or_default()
    }

    pub(crate) async fn run(&self, port: u16, total: usize, connections: usize) {
        let next = Arc::new(AtomicUsize::new(0));
        let started = tokio::time::Instant::now();
        let mut workers = Vec::new();
        for _ in 0..connections {
            let (next, progress, results, accepted_at, rate, first) = (
                next.clone(),
                self.progress.clone(),
                self.results.clone(),
                self.accepted_at.clone(),
                self.rate,
                self.first,
            );
            workers.push(tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(15))
                    .build()
                    .unwrap();
                let url = format!("http://127.0.0.1:{port}/webhooks");
                loop {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    if n >= total {
                        break;
                    }
                    if let Some(rate) = rate {
                        let due = started + Duration::from_secs_f64(n as f64 / rate);
                        tokio::time::sleep_until(due).await;
                    }
                    let sent = send(&http, &url, first + n).await;
                    if matches!(sent, Sent::Accepted(_)) {
                        accepted_at.lock().unwrap().push(Instant::now());
                    }
                    if matches!(sent, Sent::NoAnswer) {
                        // The relay is down: do not burn through the load meanwhile.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    results.lock().unwrap().push(sent);
                    progress.fetch_add(1, Ordering::SeqCst);
                }
            }));
        }
        for worker in workers {
            worker.await.unwrap();
        }
    }

    /// Resolves once `count` requests have been answered (or not).
    pub(crate) async fn reached(&self, count: usize) {
        while self.progress.load(Ordering::SeqCst) < count {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub(crate) fn results(&self) -> Vec<Sent> {
        self.results.lock().unwrap().clone()
    }

    /// The ids of the webhooks answered 2xx.
    pub(crate) fn accepted(&self) -> Vec<String> {
        self.results()
            .into_iter()
            .filter_map(|sent| match sent {
                Sent::Accepted(id) => Some(id),
                _ => None,
            })
            .collect()
    }
}

async fn send(http: &reqwest::Client, url: &str, n: usize) -> Sent {
    let body = if n.is_multiple_of(3) {
        format!(
            r#"{{"hook":"SyncAccount","user":{{"id":"u{n}","loginName":"user{n}"}},"account":{{"id":"a{n}","provider":"Bank"}}}}"#
        )
    } else {
        let code = ["LoginFailedError", "TemporaryFailureError"][n % 2];
        format!(
            r#"{{"hook":"SyncError","user":{{"id":"u{n}","loginName":"user{n}"}},"account":{{"id":"a{n}","provider":"Bank"}},"error":"{code}"}}"#
        )
    };
    let response = http
        .post(url)
        .header("content-type", "application/json")
        .header("x-client-id", CLIENT_ID)
        .body(body)
        .send()
        .await;
    let Ok(response) = response else {
        return Sent::NoAnswer;
    };
    let status = response.status().as_u16();
    let Ok(answer) = response.json::<Value>().await else {
        return Sent::NoAnswer;
    };
    if (200..300).contains(&status) {
        Sent::Accepted(answer["id"].as_str().unwrap_or_default().to_owned())
    } else {
        Sent::Refused(
            status,
            answer["error"].as_str().unwrap_or_default().to_owned(),
        )
    }
}

/// Every message id in `queue` on the shared broker, with how many times each arrived.
pub(crate) async fn delivered(queue: &str) -> HashMap<String, usize> {
    delivered_from(&amqp_url(), queue).await
}

/// Every message id in `queue`, read through the node at `uri`.
pub(crate) async fn delivered_from(uri: &str, queue: &str) -> HashMap<String, usize> {
    let connection = Connection::connect(uri, ConnectionProperties::default())
        .await
        .expect("RabbitMQ is back");
    let channel = connection.create_channel().await.unwrap();
    let mut seen = HashMap::new();
    let mut empty_polls = 0;
    // A few empty polls in a row: the last confirms have landed.
    while empty_polls < 5 {
        match channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            Some(message) => {
                empty_polls = 0;
                let id = message
                    .delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(std::string::ToString::to_string);
                *seen.entry(id.unwrap_or_default()).or_insert(0) += 1;
            }
            None => {
                empty_polls += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let _ = connection.close(200, "done".into()).await;
    seen
}

/// Every message in `queue` on the shared broker: its message id and its
/// `x-caused-by` (what an account change names as its cause).
pub(crate) async fn announced(queue: &str) -> Vec<(String, String)> {
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("RabbitMQ");
    let channel = connection.create_channel().await.unwrap();
    let mut seen = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        let properties = &message.delivery.properties;
        let id = properties.message_id().as_ref().map(ToString::to_string);
        let cause = hookrelay::wire::account::caused_by(properties.headers().as_ref());
        seen.push((id.unwrap_or_default(), cause.unwrap_or_default()));
    }
    let _ = connection.close(200, "done".into()).await;
    seen
}

/// What a load came to, against what reached RabbitMQ.
pub(crate) struct Reckoning {
    name: String,
    sent: usize,
    accepted: usize,
    refused: Vec<(u16, String)>,
    pub no_answer: usize,
    delivered: usize,
    duplicates: usize,
    missing: Vec<String>,
    longest_gap: Duration,
}

/// Compares every 2xx'd id of `load` with the ids `delivered` to RabbitMQ.
pub(crate) fn reckon(name: &str, load: &Load, delivered: &HashMap<String, usize>) -> Reckoning {
    let results = load.results();
    let accepted: Vec<&String> = results
        .iter()
        .filter_map(|s| match s {
            Sent::Accepted(id) => Some(id),
            _ => None,
        })
        .collect();
    Reckoning {
        name: name.to_owned(),
        sent: results.len(),
        accepted: accepted.len(),
        refused: results
            .iter()
            .filter_map(|s| match s {
                Sent::Refused(status, error) => Some((*status, error.clone())),
                _ => None,
            })
            .collect(),
        no_answer: results
            .iter()
            .filter(|s| matches!(s, Sent::NoAnswer))
            .count(),
        delivered: delivered.len(),
        duplicates: delivered.values().map(|n| n - 1).sum(),
        missing: accepted
            .iter()
            .filter(|id| !delivered.contains_key(id.as_str()))
            .map(|id| (*id).clone())
            .collect(),
        longest_gap: load.longest_gap(),
    }
}

impl Reckoning {
    /// `<name>: sent N, 2xx N, ... missing N, longest 2xx gap N ms`.
    pub(crate) fn line(&self) -> String {
        format!(
            "{}: sent {}, 2xx {}, refused {}, no answer {}, delivered {} distinct, duplicates {}, missing {}, longest 2xx gap {} ms",
            self.name,
            self.sent,
            self.accepted,
            self.refused.len(),
            self.no_answer,
            self.delivered,
            self.duplicates,
            self.missing.len(),
            self.longest_gap.as_millis()
        )
    }

    /// Every 2xx'd id arrived; no refusal but the documented spool-full 503;
    /// and something was accepted, or the test proved nothing.
    pub(crate) fn assert_nothing_lost(&self) {
        let name = &self.name;
        assert!(
            self.missing.is_empty(),
            "{name}: {} accepted ids never reached RabbitMQ, e.g. {:?}",
            self.missing.len(),
            self.missing.first()
        );
        for (status, error) in &self.refused {
            assert!(
                *status == 503 && error.as_str() == "spool_full",
                "{name}: an undocumented refusal: {status} {error}"
            );
        }
        assert!(
            self.accepted > 0,
            "{name}: nothing was accepted: the test proved nothing"
        );
    }

    /// Every webhook sent was answered 2xx: the sender saw nothing of the fault.
    pub(crate) fn assert_all_accepted(&self) {
        assert_eq!(
            self.accepted, self.sent,
            "{}: not every webhook was accepted",
            self.name
        );
    }
}

/// A port for a relay that must keep it across restarts (the load goes on
/// sending to it), so not port 0. Chosen below the kernel's ephemeral range:
/// outgoing connections (the load's, AMQP's) take their ports from that range,
/// so none of them can take this one between the pick and the relay's bind.
fn free_port() -> u16 {
    let ephemeral_from = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let below = 20000..ephemeral_from.max(20001);
    let span = u128::from(below.end - below.start);
    loop {
        // A UUIDv7's low 62 bits are random.
        let port = below.start + (Uuid::now_v7().as_u128() % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}
