//! Shared test harness: a relay started in-process on port 0 against the real
//! RabbitMQ at `AMQP_URL`, with its own exchange so tests run in parallel, and
//! a test-side AMQP channel to inspect what the relay published.

use std::net::SocketAddr;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use hookrelay::broker::Topology;
use hookrelay::config::Settings;
use hookrelay::startup::Application;
use lapin::message::BasicGetMessage;
use lapin::options::{
    BasicGetOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

pub(crate) use crate::common::cleanup::delete_everything_named;
use crate::common::env::{RelayEnv, amqp_url};
pub(crate) use crate::common::wait::eventually;
use crate::common::{binary, metrics, rabbitmqctl};

pub(crate) const CLIENT_ID: &str = "test-client";
pub(crate) const SENDER_IP: &str = "52.60.234.183";

/// RabbitMQ's management API, for tests of what only it can tell.
pub(crate) static MANAGEMENT_URL: LazyLock<String> = LazyLock::new(|| {
    std::env::var("RABBITMQ_MANAGEMENT_URL").unwrap_or_else(|_| "http://127.0.0.1:15672".into())
});

pub(crate) static AMQP_URL: LazyLock<String> = LazyLock::new(amqp_url);

/// Logs only when `TEST_LOG` is set, as zero-to-production does.
static TRACING: LazyLock<()> = LazyLock::new(|| {
    if std::env::var("TEST_LOG").is_ok() {
        hookrelay::telemetry::init(hookrelay::config::LogFormat::Text);
    }
});

pub(crate) fn sync_account() -> String {
    r#"{"hook":"SyncAccount","user":{"id":"user-1","loginName":"alice@example.com"},"account":{"id":"acct-1","provider":"First Bank"}}"#.to_owned()
}

pub(crate) fn sync_error(code: &str) -> String {
    format!(
        r#"{{"hook":"SyncError","user":{{"id":"user-1","loginName":"alice@example.com"}},"account":{{"id":"acct-1","provider":"First Bank"}},"error":"{code}"}}"#
    )
}

pub(crate) struct TestApp {
    pub address: String,
    pub admin_address: String,
    pub port: u16,
    pub settings: Settings,
    /// Every RabbitMQ name this relay uses.
    pub topology: Topology,
    pub http: reqwest::Client,
    pub channel: Channel,
    connection: Connection,
    shutdown: Option<oneshot::Sender<()>>,
    running: Option<JoinHandle<anyhow::Result<()>>>,
    /// Set by `stop`; a test that panicked before it leaves the cleaning to `Drop`.
    stopped: bool,
}

/// Settings for a test relay: localhost allowed, port 0, a unique exchange.
pub(crate) fn test_settings(extra_env: &[(&str, &str)]) -> Settings {
    test_env(&format!("test-{}", Uuid::now_v7()))
        .with(extra_env)
        .settings(None)
}

/// The environment of a test relay on `exchange`: the common one (see
/// [`RelayEnv::new`]) on ports the system picks, two workers, two channels.
pub(crate) fn test_env(exchange: &str) -> RelayEnv {
    let spool = std::env::temp_dir().join(exchange).join("spool.sqlite");
    RelayEnv::new(CLIENT_ID, exchange, &spool, &AMQP_URL)
        .set("HOOKRELAY__SERVER__LISTEN", "127.0.0.1:0")
        .set("HOOKRELAY__SERVER__ADMIN_LISTEN", "127.0.0.1:0")
        .set("HOOKRELAY__SERVER__WORKERS", "2")
        .set("HOOKRELAY__AMQP__CHANNELS", "2")
}

/// Starts a relay with `extra_env` applied and waits until it is connected.
pub(crate) async fn spawn_app(extra_env: &[(&str, &str)]) -> TestApp {
    let app = spawn_app_unready(test_settings(extra_env)).await;
    app.wait_until_ready().await;
    app
}

/// Starts a relay without waiting for RabbitMQ.
pub(crate) async fn spawn_app_unready(settings: Settings) -> TestApp {
    LazyLock::force(&TRACING);
    let (connection, channel) = amqp().await;
    let application = Application::build(settings.clone())
        .await
        .expect("the relay builds");
    let port = application.port();
    let admin_port = application.admin_port();
    let (shutdown, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(application.run_until_stopped(async {
        let _ = stopped.await;
    }));
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        admin_address: format!("http://127.0.0.1:{admin_port}"),
        port,
        topology: Topology::of(&settings),
        settings,
        http: reqwest::Client::new(),
        channel,
        connection,
        shutdown: Some(shutdown),
        running: Some(running),
        stopped: false,
    }
}

/// A test-side connection to RabbitMQ, or one clear line saying it is absent.
pub(crate) async fn amqp() -> (Connection, Channel) {
    let connect = Connection::connect(&AMQP_URL, ConnectionProperties::default());
    let connection = match tokio::time::timeout(Duration::from_secs(5), connect).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(err)) => panic!(
            "RabbitMQ is not reachable at {} ({err}); start it with `rabbitmq-server -detached`",
            *AMQP_URL
        ),
        Err(_) => panic!("RabbitMQ at {} did not answer within 5 s", *AMQP_URL),
    };
    let channel = connection.create_channel().await.expect("a test channel");
    (connection, channel)
}

impl TestApp {
    pub(crate) fn exchange(&self) -> &str {
        &self.settings.amqp.exchange
    }

    /// Waits until the relay is connected to RabbitMQ.
    pub(crate) async fn wait_until_ready(&self) {
        assert!(
            self.broker_ready().await,
            "the relay did not connect to RabbitMQ within 10 s (is RabbitMQ up?)"
        );
    }

    /// Waits up to 10 s for the relay's broker connection (not just readiness,
    /// which the spool can give on its own).
    /// Waits until the relay says RabbitMQ is gone (a test cut it off).
    pub(crate) async fn saw_rabbitmq_go(&self) -> bool {
        eventually(Duration::from_secs(30), || async {
            !self.broker_ready().await
        })
        .await
    }

    pub(crate) async fn broker_ready(&self) -> bool {
        for _ in 0..500 {
            let ready: serde_json::Value = self.get_admin("/readyz").await.json().await.unwrap();
            if ready["broker"] == "connected" {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    /// How many webhooks wait in the relay's spool.
    pub(crate) async fn depth_of_spool(&self) -> u64 {
        let ready: serde_json::Value = self.get_admin("/readyz").await.json().await.unwrap();
        ready["spool"]["depth"].as_u64().expect("a spool")
    }

    /// The body of `/readyz`.
    pub(crate) async fn readiness(&self) -> serde_json::Value {
        self.get_admin("/readyz").await.json().await.unwrap()
    }

    /// The value of one sample of `/metrics`, e.g. `hookrelay_spool_parked`
    /// or `hookrelay_queue_conflict{queue="q"}`; 0 when absent.
    pub(crate) async fn metric(&self, sample: &str) -> f64 {
        let text = self.get_admin("/metrics").await.text().await.unwrap();
        metrics::sample(&text, sample).unwrap_or(0.0)
    }

    /// POSTs a body that must be quarantined (422); returns its message id.
    pub(crate) async fn send_invalid(&self, body: impl Into<String>) -> String {
        self.answered_id(body, 422).await
    }

    /// POSTs a webhook that must be answered `status`; the id of its message.
    async fn answered_id(&self, body: impl Into<String>, status: u16) -> String {
        let response = self.post_webhook(body).await;
        assert_eq!(response.status(), status);
        response.json::<serde_json::Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Deletes `queue`, as an operator might at runtime.
    pub(crate) async fn delete_queue(&self, queue: &str) {
        self.channel
            .queue_delete(queue.into(), lapin::options::QueueDeleteOptions::default())
            .await
            .unwrap();
    }

    /// POSTs a webhook that must be accepted; returns its message id.
    pub(crate) async fn send(&self, body: impl Into<String>) -> String {
        self.answered_id(body, 200).await
    }

    /// Publishes `body` straight to `queue` (the default exchange), as a
    /// consumer or an operator's tool would, and waits for RabbitMQ's confirm.
    pub(crate) async fn publish_confirmed(
        &self,
        queue: &str,
        body: &[u8],
        properties: lapin::BasicProperties,
    ) {
        self.channel
            .confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await
            .unwrap();
        let confirm = self
            .channel
            .basic_publish(
                "".into(),
                queue.into(),
                lapin::options::BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(
            confirm.is_ack(),
            "RabbitMQ confirmed the publish to {queue}"
        );
    }

    /// What a failing consumer does: take the next message of `queue`, reject
    /// it without requeue (so RabbitMQ dead-letters it); returns its id.
    pub(crate) async fn reject_next(&self, queue: &str) -> String {
        let message = self
            .channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{queue} is empty"));
        message
            .delivery
            .acker
            .reject(lapin::options::BasicRejectOptions { requeue: false })
            .await
            .unwrap();
        message_id(&message)
    }

    /// Starts `hookrelay tail ARGS` for this relay and waits until it is
    /// bound (its first line on stderr).
    pub(crate) fn start_tail(&self, args: &[&str]) -> std::process::Child {
        self.start_tail_saying(args).0
    }

    /// [`TestApp::start_tail`], and the line in which tail said what it watches.
    pub(crate) fn start_tail_saying(&self, args: &[&str]) -> (std::process::Child, String) {
        use std::io::BufRead;
        let mut tail = self
            .command(&[&["tail"], args].concat())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("tail starts");
        let mut stderr = std::io::BufReader::new(tail.stderr.take().unwrap());
        let mut ready = String::new();
        stderr.read_line(&mut ready).unwrap();
        assert!(ready.starts_with("tailing"), "{ready}");
        // Keep reading, so that a later log line never meets a closed pipe.
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        (tail, ready)
    }

    /// The `hookrelay` binary with this relay's whole configuration: its
    /// settings as a TOML file (secrets masked there), and the secrets in the
    /// environment, which nothing else of the test's environment reaches.
    pub(crate) fn command(&self, args: &[&str]) -> std::process::Command {
        let folder = self.settings.spool.path.parent().expect("a spool folder");
        std::fs::create_dir_all(folder).expect("the test's folder");
        let config = folder.join("hookrelay.toml");
        std::fs::write(&config, self.settings.to_masked_toml()).expect("write the config");
        // The URI's password is masked in the file.
        let mut env = RelayEnv::default()
            .set(
                "HOOKRELAY_CONFIG",
                config.to_str().expect("a UTF-8 temp dir"),
            )
            .set("HOOKRELAY__AMQP__URI", AMQP_URL.as_str());
        if let Some(token) = &self.settings.server.path_token {
            env = env.set("HOOKRELAY__SERVER__PATH_TOKEN", token.expose());
        }
        if let Some(token) = &self.settings.admin.token {
            env = env.set("HOOKRELAY__ADMIN__TOKEN", token.expose());
        }
        binary::command(args, &env)
    }

    /// Runs the `hookrelay` binary (see [`TestApp::command`]) to completion.
    pub(crate) async fn run(&self, args: &[&str]) -> std::process::Output {
        let mut command = self.command(args);
        tokio::task::spawn_blocking(move || command.output().expect("the binary runs"))
            .await
            .unwrap()
    }

    /// POSTs `body` as JSON with the right client id.
    pub(crate) async fn post_webhook(&self, body: impl Into<String>) -> reqwest::Response {
        self.post(
            body,
            &[
                ("content-type", "application/json"),
                ("x-client-id", CLIENT_ID),
            ],
        )
        .await
    }

    /// POSTs `body` as [`TestApp::post_webhook`] does, with a W3C trace
    /// context, as a proxy that started a trace would.
    pub(crate) async fn post_traced(
        &self,
        body: impl Into<String>,
        traceparent: &str,
        tracestate: Option<&str>,
    ) -> reqwest::Response {
        let mut headers = vec![
            ("content-type", "application/json"),
            ("x-client-id", CLIENT_ID),
            ("traceparent", traceparent),
        ];
        headers.extend(tracestate.map(|state| ("tracestate", state)));
        self.post(body, &headers).await
    }

    /// POSTs `body` to the webhook path with exactly these headers.
    pub(crate) async fn post(
        &self,
        body: impl Into<String>,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        self.post_to(&self.settings.server.webhook_path, body, headers)
            .await
    }

    /// POSTs `body` to `path` on the public listener with exactly these headers.
    pub(crate) async fn post_to(
        &self,
        path: &str,
        body: impl Into<String>,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut request = self
            .http
            .post(format!("{}{path}", self.address))
            .body(body.into());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("the relay answers")
    }

    pub(crate) async fn get_admin(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.admin_address))
            .send()
            .await
            .expect("the admin listener answers")
    }

    /// Declares an exclusive queue bound to the relay's exchange with `patterns`;
    /// it disappears with the test's connection.
    pub(crate) async fn bind_queue(&self, patterns: &[&str]) -> String {
        self.bind_queue_with(FieldTable::default(), patterns).await
    }

    /// Declares an exclusive queue bound to `<exchange>.changes`, where the
    /// relay announces what it derives, with `patterns` (`account.#`).
    pub(crate) async fn bind_changes(&self, patterns: &[&str]) -> String {
        let changes = self.topology.changes_exchange().to_owned();
        self.bind_on(&changes, FieldTable::default(), patterns)
            .await
    }

    /// [`TestApp::bind_queue`], with queue arguments (a length limit, say).
    pub(crate) async fn bind_queue_with(&self, arguments: FieldTable, patterns: &[&str]) -> String {
        let exchange = self.exchange().to_owned();
        self.bind_on(&exchange, arguments, patterns).await
    }

    async fn bind_on(&self, exchange: &str, arguments: FieldTable, patterns: &[&str]) -> String {
        let name = format!("{}.probe-{}", self.exchange(), Uuid::now_v7());
        self.channel
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                arguments,
            )
            .await
            .expect("declare a probe queue");
        for pattern in patterns {
            self.channel
                .queue_bind(
                    name.as_str().into(),
                    exchange.into(),
                    (*pattern).into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .expect("bind the probe queue");
        }
        name
    }

    /// The next message in `queue`, waiting for one to arrive (up to 10 s,
    /// checking every 10 ms): for a message that must come.
    pub(crate) async fn next_message(&self, queue: &str) -> Option<BasicGetMessage> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let message = self.take(queue).await;
            if message.is_some() || Instant::now() > deadline {
                return message;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The next message in `queue` now, if any, without waiting: for what
    /// must not be there (a publish is routed before its confirm), and for
    /// taking what is known to have arrived.
    pub(crate) async fn take(&self, queue: &str) -> Option<BasicGetMessage> {
        self.channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
    }

    /// Every message in `queue` now, in order, taken.
    pub(crate) async fn take_all(&self, queue: &str) -> Vec<BasicGetMessage> {
        let mut taken = Vec::new();
        while let Some(message) = self.take(queue).await {
            taken.push(message);
        }
        taken
    }

    /// Whether `queue` exists, asked on a channel of its own (RabbitMQ closes
    /// the channel of a passive declare that finds nothing).
    pub(crate) async fn exists(&self, queue: &str) -> bool {
        let channel = self.connection.create_channel().await.expect("a channel");
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let found = channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
            .is_ok();
        let _ = channel.close(200, "checked".into()).await;
        found
    }

    /// How many messages `queue` holds now.
    pub(crate) async fn depth(&self, queue: &str) -> u32 {
        self.channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("the queue exists")
            .message_count()
    }

    /// Stops the relay gracefully and removes everything it declared.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        self.stopped = true;
        let result = self.shutdown_relay().await;
        delete_topology(&self.channel, &self.settings).await;
        let _ = self.connection.close(200, "test done".into()).await;
        if let Some(folder) = self.settings.spool.path.parent() {
            let _ = std::fs::remove_dir_all(folder);
        }
        result
    }

    /// Stops the relay gracefully and leaves what it declared, for a test
    /// with several relays on one exchange (the last one `stop`s).
    pub(crate) async fn stop_without_cleaning(mut self) {
        self.stopped = true;
        self.shutdown_relay()
            .await
            .expect("the relay stops cleanly");
        let _ = self.connection.close(200, "test done".into()).await;
    }

    /// Signals shutdown and waits for `run_until_stopped` to return.
    pub(crate) async fn shutdown_relay(&mut self) -> anyhow::Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        match self.running.take() {
            Some(running) => running.await.expect("the relay task does not panic"),
            None => Ok(()),
        }
    }

    pub(crate) fn public_socket(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for TestApp {
    /// A test that failed before `stop` still leaves nothing on the shared
    /// broker: every queue and exchange named after its exchange goes.
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        let prefix = self.exchange().to_owned();
        let _ = std::thread::spawn(move || delete_everything_named(&prefix)).join();
        if let Some(folder) = self.settings.spool.path.parent() {
            let _ = std::fs::remove_dir_all(folder);
        }
    }
}

/// Deletes the exchanges and queues a relay with `settings` declares.
pub(crate) async fn delete_topology(channel: &Channel, settings: &Settings) {
    // Every queue the exchange can have, whatever this test's settings say:
    // a relay process started with other settings (a config file, the
    // defaults' [accounts] on) may have declared the history or the
    // accounts queue, which would outlive the test.
    let mut every = settings.clone();
    every.history.enabled = true;
    every.accounts.enabled = true;
    let topology = Topology::of(&every);
    let consumer_queues = topology.consumer_queues().iter().flat_map(|q| {
        let tiers = (1..=q.retry.len()).map(|n| hookrelay::wire::retry::tier_queue(&q.name, n));
        std::iter::once(q.name.clone()).chain(tiers)
    });
    let own = topology.own_queues().into_iter().map(str::to_owned);
    // The announcer's lease, and the queue an earlier version's announcer read.
    let derived = [topology.announcer_lease(), topology.legacy_accounts_queue()];
    for queue in own.chain(consumer_queues).chain(derived) {
        let _ = channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await;
    }
    for exchange in topology.own_exchanges() {
        let _ = channel
            .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
            .await;
    }
}

/// An operator's policy on the shared broker, cleared when dropped (also when
/// the test fails).
pub(crate) struct Policy(String);

impl Policy {
    pub(crate) fn set(name: String, queue: &str, definition: &str) -> Policy {
        let pattern = format!("^{}$", queue.replace('.', "\\."));
        rabbitmqctl::run(&[
            "set_policy",
            &name,
            &pattern,
            definition,
            "--apply-to",
            "queues",
        ]);
        Policy(name)
    }
}

impl Drop for Policy {
    fn drop(&mut self) {
        // No assertion: this may run while a failed test unwinds.
        rabbitmqctl::best_effort(&["clear_policy", &self.0]);
    }
}

/// The type (`classic`, `quorum`, `stream`) of every queue whose name starts
/// with `prefix`, by name, as `rabbitmqctl list_queues` reports them.
pub(crate) async fn queue_types(prefix: &str) -> std::collections::BTreeMap<String, String> {
    rabbitmqctl::rows_async("list_queues", &["name", "type"])
        .await
        .into_iter()
        .filter_map(|row| match <[String; 2]>::try_from(row) {
            Ok([name, kind]) if name.starts_with(prefix) => Some((name, kind)),
            _ => None,
        })
        .collect()
}

/// The arguments of `queue`, as `rabbitmqctl list_queues` prints them.
pub(crate) async fn queue_arguments(queue: &str) -> String {
    rabbitmqctl::rows_async("list_queues", &["name", "arguments"])
        .await
        .into_iter()
        .find_map(|row| match <[String; 2]>::try_from(row) {
            Ok([name, arguments]) if name == queue => Some(arguments),
            _ => None,
        })
        .unwrap_or_default()
}

/// The names every binding from the exchange `source` leads to, sorted, as
/// `rabbitmqctl list_bindings` reports them.
pub(crate) async fn bindings_from(source: &str) -> Vec<String> {
    let mut destinations: Vec<String> =
        rabbitmqctl::rows_async("list_bindings", &["source_name", "destination_name"])
            .await
            .into_iter()
            .filter_map(|row| match <[String; 2]>::try_from(row) {
                Ok([from, to]) if from == source => Some(to),
                _ => None,
            })
            .collect();
    destinations.sort();
    destinations
}

/// Sends raw bytes to the relay and returns its status code, for requests a
/// well-behaved client cannot make (a lying Content-Length, say).
pub(crate) async fn raw_status(addr: SocketAddr, request: &[u8]) -> u16 {
    let stream = TcpStream::connect(addr).await.expect("connect");
    status_over(stream, request).await
}

/// Sends raw bytes over an open stream (plain or TLS) and returns the status code.
pub(crate) async fn status_over(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    request: &[u8],
) -> u16 {
    stream.write_all(request).await.expect("write");
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    while !response.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("the relay answers within 5 s")
            .expect("read");
        if n == 0 {
            break;
        }
        response.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&response);
    head.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"))
}

/// A complete raw webhook request: POST `path` with the client id and `body`.
pub(crate) fn raw_webhook(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\n\
         x-client-id: {CLIENT_ID}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// The message id of a delivered message.
pub(crate) fn message_id(message: &BasicGetMessage) -> String {
    message
        .delivery
        .properties
        .message_id()
        .as_ref()
        .expect("a message id")
        .to_string()
}

/// A header of a delivered message.
pub(crate) fn header(message: &BasicGetMessage, key: &str) -> Option<AMQPValue> {
    message
        .delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(key).cloned())
}

pub(crate) fn text_header(message: &BasicGetMessage, key: &str) -> String {
    match header(message, key) {
        Some(AMQPValue::LongString(s)) => s.to_string(),
        other => panic!("header {key} is not a string: {other:?}"),
    }
}
