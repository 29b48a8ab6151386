//! The fault-test harness: the real `hookrelay` binary (so it can be killed),
//! a concurrent HTTP load that records the id of every 2xx, the broker's
//! `rabbitmqctl`, and the final reckoning against what reached RabbitMQ.

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hookrelay::config::Settings;
use lapin::options::{BasicGetOptions, ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{Connection, ConnectionProperties};
use serde_json::Value;
use uuid::Uuid;

pub const CLIENT_ID: &str = "fault-client";

fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// One relay's world: its exchange, its spool, its ports, its config file.
pub struct Setup {
    pub exchange: String,
    pub dir: PathBuf,
    pub port: u16,
    pub admin_port: u16,
}

impl Setup {
    pub fn new() -> Setup {
        let exchange = format!("fault-{}", Uuid::now_v7());
        let dir = std::env::temp_dir().join(&exchange);
        std::fs::create_dir_all(&dir).unwrap();
        // A durable queue bound to everything: where every accepted id must arrive.
        std::fs::write(
            dir.join("relay.toml"),
            format!("[[queues]]\nname = \"{exchange}.all\"\nbindings = [\"#\"]\n"),
        )
        .unwrap();
        Setup {
            exchange,
            dir,
            port: free_port(),
            admin_port: free_port(),
        }
    }

    pub fn all_queue(&self) -> String {
        format!("{}.all", self.exchange)
    }

    /// Starts a new relay (after the last one died or exited) and waits for
    /// its RabbitMQ connection; returns it and how long that took.
    pub async fn restart_relay(&self, within: Duration) -> (Relay, Duration) {
        let relay = self.start_relay();
        let ready_again = relay.wait_connected(within).await;
        (relay, ready_again)
    }

    /// Starts the relay binary; its log goes to `<dir>/relay-<n>.log`.
    pub fn start_relay(&self) -> Relay {
        let n = std::fs::read_dir(&self.dir).map(|d| d.count()).unwrap_or(0);
        let log = self.dir.join(format!("relay-{n}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_hookrelay"))
            .arg("serve")
            .env("HOOKRELAY_CONFIG", self.dir.join("relay.toml"))
            .env("HOOKRELAY__INGRESS__CLIENT_IDS", CLIENT_ID)
            .env("HOOKRELAY__INGRESS__ALLOWED_IPS", "127.0.0.1")
            .env(
                "HOOKRELAY__SERVER__LISTEN",
                format!("127.0.0.1:{}", self.port),
            )
            .env(
                "HOOKRELAY__SERVER__ADMIN_LISTEN",
                format!("127.0.0.1:{}", self.admin_port),
            )
            .env("HOOKRELAY__SERVER__SHUTDOWN_TIMEOUT_SECS", "10")
            .env("HOOKRELAY__AMQP__URI", amqp_url())
            .env("HOOKRELAY__AMQP__EXCHANGE", &self.exchange)
            .env("HOOKRELAY__AMQP__CONFIRM_TIMEOUT_MS", "2000")
            .env("HOOKRELAY__SPOOL__PATH", self.dir.join("spool.sqlite"))
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

    /// Deletes what the relay declared.
    pub async fn clean_up(&self) {
        let Ok(connection) =
            Connection::connect(&amqp_url(), ConnectionProperties::default()).await
        else {
            return;
        };
        let channel = connection.create_channel().await.unwrap();
        // The names the relay itself derives from this setup's configuration.
        let env = HashMap::from([
            (
                "HOOKRELAY__INGRESS__CLIENT_IDS".to_owned(),
                CLIENT_ID.to_owned(),
            ),
            (
                "HOOKRELAY__AMQP__EXCHANGE".to_owned(),
                self.exchange.clone(),
            ),
        ]);
        let settings = Settings::load_with_env(Some(&self.dir.join("relay.toml")), env)
            .expect("the setup's configuration");
        let topology = settings.topology();
        let consumer_queues = topology.consumer_queues().iter().map(|q| q.name.as_str());
        for queue in topology.own_queues().into_iter().chain(consumer_queues) {
            let _ = channel
                .queue_delete(queue.into(), QueueDeleteOptions::default())
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

pub struct Relay {
    child: Child,
    admin: String,
    pub log: PathBuf,
}

impl Relay {
    /// Waits until the relay reports a RabbitMQ connection; returns how long it took.
    pub async fn wait_connected(&self, within: Duration) -> Duration {
        self.wait_ready(within, true).await
    }

    /// Waits until `/readyz` is 200 (with `broker`, until RabbitMQ is connected).
    pub async fn wait_ready(&self, within: Duration, broker: bool) -> Duration {
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

    /// Waits until the spool is empty and RabbitMQ connected.
    pub async fn wait_drained(&self, within: Duration) {
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

    /// A counter or gauge from `/metrics`, e.g. `hookrelay_spool_drained_total`.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
    }

    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().unwrap();
    }

    /// SIGTERM, then wait for the exit.
    pub async fn terminate(mut self) -> ExitStatus {
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
pub struct BrokerGuard;

impl BrokerGuard {
    pub async fn stop_app(&self) {
        rabbitmqctl(&["stop_app"]).await;
    }

    pub async fn start_app(&self) {
        rabbitmqctl(&["start_app"]).await;
        rabbitmqctl(&["await_startup"]).await;
    }
}

impl Drop for BrokerGuard {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").arg("start_app").output();
        let _ = Command::new("rabbitmqctl").args(["await_startup"]).output();
    }
}

pub async fn rabbitmqctl(args: &[&str]) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let output =
        tokio::task::spawn_blocking(move || Command::new("rabbitmqctl").args(&args).output())
            .await
            .unwrap()
            .expect("rabbitmqctl runs");
    assert!(output.status.success(), "rabbitmqctl failed: {output:?}");
}

/// What one request came to.
#[derive(Debug, Clone)]
pub enum Sent {
    Accepted(String),
    Refused(u16, String),
    /// No answer at all (the relay was down or died mid-request).
    NoAnswer,
}

/// A bounded concurrent load: `total` webhooks over `connections` connections.
pub struct Load {
    pub progress: Arc<AtomicUsize>,
    results: Arc<Mutex<Vec<Sent>>>,
}

impl Load {
    pub fn new() -> Load {
        Load {
            progress: Arc::new(AtomicUsize::new(0)),
            results: Arc::new(Mutex::new(Vec::new())),
        }
    }

    pub async fn run(&self, port: u16, total: usize, connections: usize) {
        let next = Arc::new(AtomicUsize::new(0));
        let mut workers = Vec::new();
        for _ in 0..connections {
            let (next, progress, results) =
                (next.clone(), self.progress.clone(), self.results.clone());
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
                    let sent = send(&http, &url, n).await;
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
    pub async fn reached(&self, count: usize) {
        while self.progress.load(Ordering::SeqCst) < count {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub fn results(&self) -> Vec<Sent> {
        self.results.lock().unwrap().clone()
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

/// Every message id in `queue`, with how many times each arrived.
pub async fn delivered(queue: &str) -> HashMap<String, usize> {
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
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
                    .map(|id| id.to_string());
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

/// The reckoning: every 2xx'd id arrived; no 5xx but the documented spool-full
/// 503. Prints what it counted.
pub fn reckon(
    name: &str,
    results: &[Sent],
    delivered: &HashMap<String, usize>,
    ready_again: Duration,
) {
    let accepted: Vec<&String> = results
        .iter()
        .filter_map(|s| match s {
            Sent::Accepted(id) => Some(id),
            _ => None,
        })
        .collect();
    let refused: Vec<(u16, &String)> = results
        .iter()
        .filter_map(|s| match s {
            Sent::Refused(status, error) => Some((*status, error)),
            _ => None,
        })
        .collect();
    let no_answer = results
        .iter()
        .filter(|s| matches!(s, Sent::NoAnswer))
        .count();
    let missing: Vec<&&String> = accepted
        .iter()
        .filter(|id| !delivered.contains_key(id.as_str()))
        .collect();
    let duplicates: usize = delivered.values().map(|n| n - 1).sum();
    println!(
        "{name}: sent {}, 2xx {}, refused {}, no answer {}, delivered {} distinct, duplicates {}, missing {}, ready again after {} ms",
        results.len(),
        accepted.len(),
        refused.len(),
        no_answer,
        delivered.len(),
        duplicates,
        missing.len(),
        ready_again.as_millis()
    );
    assert!(
        missing.is_empty(),
        "{name}: {} accepted ids never reached RabbitMQ, e.g. {:?}",
        missing.len(),
        missing.first()
    );
    for (status, error) in &refused {
        assert!(
            *status == 503 && error.as_str() == "spool_full",
            "{name}: an undocumented refusal: {status} {error}"
        );
    }
    assert!(
        !accepted.is_empty(),
        "{name}: nothing was accepted: the test proved nothing"
    );
    assert!(
        ready_again <= Duration::from_secs(10),
        "{name}: ready again only after {ready_again:?}"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
