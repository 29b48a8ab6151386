//! The `hookrelay` binary as an operator runs it: its commands, its logs, and
//! SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde_json::Value;
use uuid::Uuid;

use hookrelay::broker::Topology;
use hookrelay::config::Settings;

use crate::common::env::RelayEnv;
use crate::common::{binary, metrics};
use crate::helpers::{
    AMQP_URL, CLIENT_ID, amqp, delete_everything_named, delete_topology, sync_account,
    test_settings,
};

/// A test that fails before its own clean-up still leaves nothing on the
/// shared broker: everything named after its exchange goes.
struct CleanUpIfFailed(String);

impl Drop for CleanUpIfFailed {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let prefix = self.0.clone();
            let _ = std::thread::spawn(move || delete_everything_named(&prefix)).join();
        }
    }
}

fn hookrelay(args: &[&str], env: &[(&str, &str)]) -> Command {
    binary::command(args, &RelayEnv::default().with(env))
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    hookrelay(args, env).output().expect("the binary runs")
}

#[test]
fn check_config_prints_the_settings_with_the_password_masked() {
    let output = run(
        &["check-config"],
        &[
            ("HOOKRELAY__INGRESS__CLIENT_IDS", "app-1"),
            ("HOOKRELAY__AMQP__URI", "amqp://relay:hunter2@mq:5672/%2f"),
            ("HOOKRELAY__SERVER__PATH_TOKEN", "tokentokentoken-secret"),
        ],
    );

    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.contains("amqp://relay:****@mq:5672/%2f"), "{stdout}");
    assert!(stdout.contains(r#"path_token = "****""#), "{stdout}");
    assert!(!stdout.contains("hunter2"));
    assert!(!stdout.contains("secret"));
    assert!(stdout.contains("app-1"));
}

#[test]
fn a_bad_setting_stops_startup_with_one_line_naming_the_key() {
    let cases: [(&[(&str, &str)], &str); 3] = [
        (&[], "ingress.client_ids"),
        (
            &[
                ("HOOKRELAY__INGRESS__CLIENT_IDS", "a"),
                ("HOOKRELAY__INGRESS__ALLOWED_IPS", "300.1.1.1"),
            ],
            "ingress.allowed_ips",
        ),
        (
            &[
                ("HOOKRELAY__INGRESS__CLIENT_IDS", "a"),
                ("HOOKRELAY__SERVER__PORT", "1"),
            ],
            "port",
        ),
    ];
    for (env, key) in cases {
        let output = run(&["serve"], env);

        assert!(!output.status.success(), "{key}");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(key), "{stderr}");
    }
}

#[test]
fn a_config_file_can_be_given_by_flag_or_environment() {
    let dir = std::env::temp_dir().join(format!("hookrelay-bin-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("relay.toml");
    std::fs::write(&file, "[ingress]\nclient_ids = [\"from-file\"]\n").unwrap();
    let path = file.to_str().unwrap();

    for output in [
        run(&["check-config", "--config", path], &[]),
        run(&["check-config"], &[("HOOKRELAY_CONFIG", path)]),
    ] {
        assert!(output.status.success(), "{output:?}");
        assert!(
            String::from_utf8(output.stdout)
                .unwrap()
                .contains("from-file")
        );
    }
}

#[test]
fn every_command_has_help() {
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["declare", "--help"],
        &["check-config", "--help"],
        &["tail", "--help"],
        &["inspect", "--help"],
        &["replay", "--help"],
        &["spool", "list", "--help"],
        &["spool", "retry", "--help"],
    ] {
        let output = run(args, &[]);
        assert!(output.status.success(), "{args:?}");
        assert!(
            String::from_utf8(output.stdout).unwrap().contains("Usage"),
            "{args:?}"
        );
    }
}

#[tokio::test]
async fn declare_creates_the_topology_and_exits() {
    let settings = test_settings(&[]);
    let _cleanup = CleanUpIfFailed(settings.amqp.exchange.clone());
    let exchange = settings.amqp.exchange.clone();
    let env = [
        ("HOOKRELAY__INGRESS__CLIENT_IDS", "a".to_owned()),
        ("HOOKRELAY__AMQP__URI", AMQP_URL.clone()),
        ("HOOKRELAY__AMQP__EXCHANGE", exchange.clone()),
    ];

    let output = tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        run(&["declare"], &env)
    })
    .await
    .unwrap();

    assert!(output.status.success(), "{output:?}");
    let (connection, channel) = amqp().await;
    let topology = Topology::of(&settings);
    for exchange in topology.own_exchanges() {
        let passive = ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        };
        channel
            .exchange_declare(
                exchange.into(),
                lapin::ExchangeKind::Topic,
                passive,
                FieldTable::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("exchange {exchange} exists: {e}"));
    }
    for queue in topology.own_queues() {
        let declared = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        channel
            .queue_declare(queue.into(), declared, FieldTable::default())
            .await
            .unwrap_or_else(|e| panic!("{queue} exists: {e}"));
    }
    delete_topology(&channel, &settings).await;
    let _ = connection.close(200, "done".into()).await;
}

/// `queue` declared as a plain classic queue, and a config file (in a folder
/// of its own) that declares it as quorum: a conflict RabbitMQ refuses.
async fn a_classic_queue_configured_as_quorum(
    channel: &lapin::Channel,
    queue: &str,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue.into(), durable, FieldTable::default())
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(format!("hookrelay-config-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("relay.toml");
    let toml =
        format!("[[queues]]\nname = \"{queue}\"\nbindings = [\"sync.#\"]\ntype = \"quorum\"\n");
    std::fs::write(&file, toml).unwrap();
    (dir, file)
}

#[tokio::test]
async fn declare_names_every_conflict_and_exits_non_zero() {
    // A consumer queue that exists as classic, configured as quorum, and a
    // quarantine queue (the relay's own) that exists with a length limit.
    let settings = test_settings(&[]);
    let _cleanup = CleanUpIfFailed(settings.amqp.exchange.clone());
    let exchange = settings.amqp.exchange.clone();
    let queue = format!("{exchange}.reprompt");
    let (connection, channel) = amqp().await;
    let (dir, file) = a_classic_queue_configured_as_quorum(&channel, &queue).await;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let mut limited = FieldTable::default();
    limited.insert("x-max-length".into(), lapin::types::AMQPValue::LongInt(10));
    let quarantine = Topology::of(&settings).quarantine_queue().to_owned();
    channel
        .queue_declare(quarantine.as_str().into(), durable, limited)
        .await
        .unwrap();
    let env = [
        ("HOOKRELAY__INGRESS__CLIENT_IDS", "a".to_owned()),
        ("HOOKRELAY__AMQP__URI", AMQP_URL.clone()),
        ("HOOKRELAY__AMQP__EXCHANGE", exchange.clone()),
        ("HOOKRELAY_CONFIG", file.to_str().unwrap().to_owned()),
    ];

    let output = tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        run(&["declare"], &env)
    })
    .await
    .unwrap();

    assert!(!output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let refused: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("refused:"))
        .collect();
    assert_eq!(refused.len(), 2, "{stderr}");
    assert!(
        refused.iter().any(|l| l.contains(&format!("queue {queue}"))
            && l.contains("exists as a classic queue and [[queues]] says quorum")
            && l.contains("PRECONDITION_FAILED")),
        "says what differs, not only RabbitMQ's first inequivalent argument: {stderr}"
    );
    assert!(
        refused
            .iter()
            .any(|l| l.contains(&format!("queue {quarantine}")) && l.contains("x-max-length")),
        "{stderr}"
    );
    delete_topology(&channel, &settings).await;
    let _ = channel
        .queue_delete(queue.as_str().into(), Default::default())
        .await;
    let _ = connection.close(200, "done".into()).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn declare_fails_clearly_when_rabbitmq_is_unreachable() {
    let output = run(
        &["declare"],
        &[
            ("HOOKRELAY__INGRESS__CLIENT_IDS", "a"),
            (
                "HOOKRELAY__AMQP__URI",
                "amqp://guest:secret@127.0.0.1:1/%2f",
            ),
        ],
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(
        stderr.contains("cannot connect to RabbitMQ at amqp://guest:****@127.0.0.1:1"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("Connection refused").count(),
        1,
        "said once: {stderr}"
    );
    assert!(!stderr.contains("secret"));
}

#[test]
fn a_typo_in_the_configuration_is_answered_in_its_own_terms() {
    let dir = std::env::temp_dir().join(format!("hookrelay-typo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        (
            "type = \"qorum\"\nbindings = [\"sync.#\"]",
            "`qorum` is not a queue type: use \"classic\" or \"quorum\"",
        ),
        (
            "bindings = [\"sync.acount\"]",
            "`sync.acount` (queue q) matches no routing key the sender's events have",
        ),
        (
            "bindings = [\"account.#\"]",
            "list it under `changes` instead (`changes = [\"account.#\"]`)",
        ),
        (
            "changes = [\"account.needs_reconect\"]",
            "`account.needs_reconect` (queue q) matches nothing the relay announces",
        ),
    ];
    for (n, (queue, said)) in cases.iter().enumerate() {
        let file = dir.join(format!("{n}.toml"));
        std::fs::write(&file, format!("[[queues]]\nname = \"q\"\n{queue}\n")).unwrap();

        let output = run(
            &["check-config", "--config", file.to_str().unwrap()],
            &[("HOOKRELAY__INGRESS__CLIENT_IDS", "a")],
        );

        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success());
        assert!(stderr.contains(said), "{stderr}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A running `hookrelay serve`, its stderr lines arriving on a channel.
struct Relay {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Relay {
    fn start(env: &[(&str, &str)]) -> Relay {
        let mut child = hookrelay(&["serve"], env)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("the relay starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Relay {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Every log line written during `period`.
    fn lines_for(&mut self, period: Duration) -> Vec<String> {
        let deadline = Instant::now() + period;
        let mut lines = Vec::new();
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(line.clone());
            lines.push(line);
        }
        lines
    }

    /// The first log line for which `pick` returns something, within 10 s.
    fn wait_for<T>(&mut self, mut pick: impl FnMut(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).unwrap_or_else(|_| {
                panic!(
                    "log line not seen within 10 s; saw:\n{}",
                    self.seen.join("\n")
                )
            });
            self.seen.push(line.clone());
            if let Some(found) = pick(&line) {
                return found;
            }
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

fn json(line: &str) -> Option<Value> {
    serde_json::from_str(line).ok()
}

/// `hookrelay serve` with JSON logs, against the test exchange of `settings`,
/// once it has logged its port and connected to RabbitMQ.
fn serve(settings: &Settings, env: &[(&str, &str)]) -> (Relay, u64) {
    let base = [
        ("HOOKRELAY__INGRESS__CLIENT_IDS", CLIENT_ID),
        ("HOOKRELAY__INGRESS__ALLOWED_IPS", "127.0.0.1"),
        ("HOOKRELAY__SERVER__LISTEN", "127.0.0.1:0"),
        ("HOOKRELAY__SERVER__ADMIN_LISTEN", "127.0.0.1:0"),
        ("HOOKRELAY__AMQP__URI", AMQP_URL.as_str()),
        ("HOOKRELAY__AMQP__EXCHANGE", settings.amqp.exchange.as_str()),
        ("HOOKRELAY__LOG_FORMAT", "json"),
        (
            "HOOKRELAY__SPOOL__PATH",
            settings.spool.path.to_str().unwrap(),
        ),
    ];
    let mut relay = Relay::start(&[&base, env].concat());
    let port = relay.wait_for(|line| json(line)?.get("port")?.as_u64());
    relay.wait_for(|line| {
        json(line)?["message"]
            .as_str()?
            .contains("connected to RabbitMQ")
            .then_some(())
    });
    (relay, port)
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_logs_json_and_drains_on_sigterm() {
    let settings = test_settings(&[]);
    let _cleanup = CleanUpIfFailed(settings.amqp.exchange.clone());
    let (mut relay, port) = serve(&settings, &[("RUST_LOG", "info,hookrelay=debug")]);

    let response = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/webhooks"))
        .header("content-type", "application/json")
        .header("x-client-id", CLIENT_ID)
        .body(sync_account())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // One line per request, in its span: message id, outcome and source address.
    let logged = relay.wait_for(|line| {
        let entry = json(line)?;
        (entry["message"] == "webhook accepted").then_some(entry)
    });
    assert_eq!(logged["span"]["message_id"], id.as_str());
    assert_eq!(logged["span"]["outcome"], "accepted");
    assert_eq!(logged["span"]["source_ip"], "127.0.0.1");

    let status = Command::new("kill")
        .args(["-TERM", &relay.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    relay.wait_for(|line| (json(line)?["message"] == "stopped").then_some(()));
    let exit = relay.child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");

    for line in &relay.seen {
        assert!(json(line).is_some(), "not JSON: {line}");
        assert!(
            !line.contains("alice"),
            "personal data in a log line: {line}"
        );
    }

    let (connection, channel) = amqp().await;
    delete_topology(&channel, &settings).await;
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_refusals_logs_a_few_lines_and_never_the_path_token() {
    const TOKEN: &str = "0f9e8d7c6b5a49382716a5b4c3d2e1f0";
    let settings = test_settings(&[]);
    let _cleanup = CleanUpIfFailed(settings.amqp.exchange.clone());
    // Everything at debug, actix's own lines included: none may show the token.
    let (mut relay, port) = serve(
        &settings,
        &[
            ("RUST_LOG", "debug"),
            ("HOOKRELAY__SERVER__PATH_TOKEN", TOKEN),
        ],
    );
    let http = reqwest::Client::new();
    let post = |path: String, client_id: &'static str| {
        http.post(format!("http://127.0.0.1:{port}{path}"))
            .header("content-type", "application/json")
            .header("x-client-id", client_id)
            .body(sync_account())
            .send()
    };

    let secret = format!("/webhooks/{TOKEN}");
    assert_eq!(post(secret.clone(), CLIENT_ID).await.unwrap().status(), 200);
    let near_miss = format!("/webhooks/{}", &TOKEN[..31]);
    assert_eq!(post(near_miss, CLIENT_ID).await.unwrap().status(), 404);
    let flood_began = Instant::now();
    for _ in 0..300 {
        assert_eq!(post(secret.clone(), "wrong").await.unwrap().status(), 401);
    }
    // Past the one-second window, the next refusal logged reports what was
    // left out. On a loaded machine the flood spans several windows, and the
    // last one's count is reported only by a line written after it: keep
    // refusing, slower than the budget, until a line has said what was left
    // out and every refusal so far is accounted for.
    let mut sent = 300;
    let deadline = Instant::now() + Duration::from_secs(30);
    let refused_lines = |relay: &Relay| {
        relay
            .seen
            .iter()
            .filter(|line| line.contains("webhook refused"))
            .count() as u64
    };
    let dropped_reported = |relay: &Relay| -> u64 {
        relay
            .seen
            .iter()
            .filter_map(|line| json(line)?["dropped"].as_u64())
            .sum()
    };
    while dropped_reported(&relay) == 0 || refused_lines(&relay) + dropped_reported(&relay) < sent {
        assert!(
            Instant::now() < deadline,
            "{} refusals logged and {} counted as left out, of {sent}",
            refused_lines(&relay),
            dropped_reported(&relay)
        );
        assert_eq!(post(secret.clone(), "wrong").await.unwrap().status(), 401);
        sent += 1;
        relay.lines_for(Duration::from_millis(200));
    }
    let flood_took = flood_began.elapsed();

    let _ = Command::new("kill")
        .args(["-TERM", &relay.child.id().to_string()])
        .status();
    relay.wait_for(|line| (json(line)?["message"] == "stopped").then_some(()));
    let refused = relay
        .seen
        .iter()
        .filter(|line| line.contains("webhook refused"))
        .count() as u64;
    let dropped: u64 = relay
        .seen
        .iter()
        .filter_map(|line| json(line)?["dropped"].as_u64())
        .sum();
    // 20 lines a second at most (a window begun is a window counted),
    // however long a loaded machine took to send the refusals.
    let windows = flood_took.as_secs() + 2;
    assert!(
        refused <= 20 * windows,
        "{refused} lines for {sent} refusals in {flood_took:?}"
    );
    assert_eq!(
        refused + dropped,
        sent,
        "every refusal is logged or counted"
    );
    for line in &relay.seen {
        assert!(
            !line.contains(&TOKEN[..16]),
            "the token in a log line: {line}"
        );
    }

    let (connection, channel) = amqp().await;
    delete_topology(&channel, &settings).await;
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_consumer_queue_is_logged_once_not_at_every_check() {
    let settings = test_settings(&[]);
    let _cleanup = CleanUpIfFailed(settings.amqp.exchange.clone());
    let queue = format!("{}.reprompt", settings.amqp.exchange);
    let (connection, channel) = amqp().await;
    let (dir, file) = a_classic_queue_configured_as_quorum(&channel, &queue).await;

    // Checked every second: four checks in the next four seconds.
    let (mut relay, _) = serve(
        &settings,
        &[
            ("HOOKRELAY_CONFIG", file.to_str().unwrap()),
            ("HOOKRELAY__AMQP__TOPOLOGY_CHECK_SECS", "1"),
        ],
    );
    relay.lines_for(Duration::from_secs(4));

    let about_the_queue: Vec<&String> = relay
        .seen
        .iter()
        .filter(|line| json(line).is_some_and(|entry| entry["queue"] == queue.as_str()))
        .collect();
    assert_eq!(about_the_queue.len(), 1, "{:#?}", relay.seen);
    let entry = json(about_the_queue[0]).unwrap();
    assert_eq!(entry["level"], "WARN");
    assert!(
        entry["reason"]
            .as_str()
            .unwrap()
            .contains("PRECONDITION_FAILED")
    );
    assert!(
        relay.seen.iter().all(|line| !line.contains("\"ERROR\"")),
        "an expected refusal is not an ERROR line: {:#?}",
        relay.seen
    );
    assert!(
        !relay
            .seen
            .iter()
            .any(|line| line.contains("not connected to RabbitMQ")),
        "{:#?}",
        relay.seen
    );

    drop(relay);
    delete_topology(&channel, &settings).await;
    let _ = channel
        .queue_delete(queue.as_str().into(), Default::default())
        .await;
    let _ = connection.close(200, "done".into()).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn every_command_logs_like_serve() {
    let settings = test_settings(&[]);
    let _cleanup = CleanUpIfFailed(settings.amqp.exchange.clone());
    let quarantine = Topology::of(&settings).quarantine_queue().to_owned();
    let base = [
        ("HOOKRELAY__INGRESS__CLIENT_IDS", "a"),
        ("HOOKRELAY__AMQP__URI", AMQP_URL.as_str()),
        ("HOOKRELAY__AMQP__EXCHANGE", settings.amqp.exchange.as_str()),
        ("HOOKRELAY__LOG_FORMAT", "json"),
        ("RUST_LOG", "debug"),
    ];
    let commands: [&[&str]; 4] = [
        &["declare"],
        &["inspect", &quarantine],
        &["replay", "--dry-run", "--queue", &quarantine],
        &["tail", "--count", "0"],
    ];

    for args in commands {
        let args: Vec<String> = args.iter().map(std::string::ToString::to_string).collect();
        let env: Vec<(String, String)> = base
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let output = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            run(&args, &env)
        })
        .await
        .unwrap();

        assert!(output.status.success(), "{output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr
                .lines()
                .any(|line| json(line).is_some_and(|entry| entry["level"].is_string())),
            "no JSON log line: {stderr}"
        );
    }
    let (connection, channel) = amqp().await;
    delete_topology(&channel, &settings).await;
    let _ = connection.close(200, "done".into()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_returned_message_is_logged_without_its_body() {
    // Without history, and with no check to repair it first, a deleted
    // unrouted queue makes RabbitMQ return the next unmatched event. Every
    // line logged, lapin's own frames included.
    let settings = test_settings(&[]);
    let _cleanup = CleanUpIfFailed(settings.amqp.exchange.clone());
    let (mut relay, port) = serve(
        &settings,
        &[
            ("HOOKRELAY__HISTORY__ENABLED", "false"),
            ("HOOKRELAY__AMQP__TOPOLOGY_CHECK_SECS", "3600"),
            ("RUST_LOG", "trace"),
        ],
    );
    let (connection, channel) = amqp().await;
    let unrouted = Topology::of(&settings).unrouted().to_owned();
    channel
        .queue_delete(unrouted.as_str().into(), Default::default())
        .await
        .unwrap();

    let response = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/webhooks"))
        .header("content-type", "application/json")
        .header("x-client-id", CLIENT_ID)
        .body(sync_account())
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), 200);
    relay.wait_for(|line| line.contains("312 NO_ROUTE").then_some(()));
    relay.lines_for(Duration::from_secs(1));
    // lapin would print the body as byte values: look for those too.
    let as_bytes = |text: &str| {
        text.bytes()
            .map(|b| b.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    for line in &relay.seen {
        for secret in ["alice", "loginName"] {
            assert!(
                !line.contains(secret),
                "personal data in a log line: {line}"
            );
            assert!(
                !line.contains(&as_bytes(secret)),
                "personal data, as bytes, in a log line: {line}"
            );
        }
    }
    drop(relay);
    delete_topology(&channel, &settings).await;
    let _ = connection.close(200, "done".into()).await;
}

/// The ERROR lines among what `relay` wrote.
fn errors(relay: &Relay) -> Vec<&String> {
    relay
        .seen
        .iter()
        .filter(|line| json(line).is_some_and(|entry| entry["level"] == "ERROR"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fresh_start_on_a_clean_broker_logs_no_error_at_any_verbosity() {
    for rust_log in [None, Some("info"), Some("debug")] {
        // A new exchange each time: everything is declared from nothing,
        // after passive declares that find nothing (lapin logs those as
        // errors, which are never written).
        let settings = test_settings(&[]);
        let _cleanup = CleanUpIfFailed(settings.amqp.exchange.clone());
        let env: Vec<(&str, &str)> = rust_log
            .map(|level| ("RUST_LOG", level))
            .into_iter()
            .collect();

        let (mut relay, _) = serve(&settings, &env);
        relay.child.kill().unwrap();
        relay.lines_for(Duration::from_millis(200));

        assert!(
            errors(&relay).is_empty(),
            "RUST_LOG={rust_log:?}: {:#?}",
            errors(&relay)
        );
        let (connection, channel) = amqp().await;
        delete_topology(&channel, &settings).await;
        let _ = connection.close(200, "done".into()).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_password_is_one_error_line_not_one_per_retry() {
    let settings = test_settings(&[]);
    let wrong = AMQP_URL.replacen("guest:guest", "guest:wrong-password", 1);
    let spool = settings.spool.path.to_str().unwrap().to_owned();
    let mut relay = Relay::start(&[
        ("HOOKRELAY__INGRESS__CLIENT_IDS", CLIENT_ID),
        ("HOOKRELAY__SERVER__LISTEN", "127.0.0.1:0"),
        ("HOOKRELAY__SERVER__ADMIN_LISTEN", "127.0.0.1:0"),
        ("HOOKRELAY__AMQP__URI", wrong.as_str()),
        ("HOOKRELAY__AMQP__EXCHANGE", settings.amqp.exchange.as_str()),
        ("HOOKRELAY__LOG_FORMAT", "json"),
        ("HOOKRELAY__SPOOL__PATH", spool.as_str()),
        ("RUST_LOG", "info"),
    ]);
    let admin_port = relay.wait_for(|line| json(line)?.get("admin_port")?.as_u64());

    // Act: let it retry a few times (backoff 0.1 s, doubling).
    let failures = || async move {
        let admin = format!("http://127.0.0.1:{admin_port}");
        let text = metrics::scrape(&reqwest::Client::new(), &admin).await?;
        metrics::sample(&text, "hookrelay_broker_connect_failures_total")
    };
    assert!(
        crate::helpers::eventually(Duration::from_secs(20), || async {
            failures().await.unwrap_or(0.0) >= 4.0
        })
        .await,
        "the relay retried"
    );
    relay.child.kill().unwrap();
    relay.lines_for(Duration::from_millis(200));

    // Assert: one ERROR, the relay's own, saying what to check.
    let errors = errors(&relay);
    assert_eq!(errors.len(), 1, "{:#?}", relay.seen);
    let entry = json(errors[0]).unwrap();
    assert_eq!(entry["target"], "hookrelay::broker::status");
    assert!(
        entry["message"]
            .as_str()
            .unwrap()
            .contains("refuses the relay's login")
    );
    assert!(entry["reason"].as_str().unwrap().contains("ACCESS_REFUSED"));
    assert!(
        !relay
            .seen
            .iter()
            .any(|line| line.contains("wrong-password"))
    );
    let _ = std::fs::remove_dir_all(settings.spool.path.parent().unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_sender_is_logged_with_its_address_and_the_peer() {
    // The relay sits behind a proxy on 127.0.0.1, which says the request came
    // from 203.0.113.7: not on the allowlist (a sender whose addresses changed).
    let settings = test_settings(&[]);
    let _cleanup = CleanUpIfFailed(settings.amqp.exchange.clone());
    let (mut relay, port) = serve(
        &settings,
        &[
            ("HOOKRELAY__INGRESS__ALLOWED_IPS", "52.60.234.183"),
            ("HOOKRELAY__INGRESS__TRUSTED_PROXIES", "127.0.0.1/32"),
        ],
    );

    let answer = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/webhooks"))
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-client-id", CLIENT_ID)
        .send()
        .await
        .unwrap();

    assert_eq!(answer.status(), 403);
    let body = answer.text().await.unwrap();
    assert!(
        !body.contains("203.0.113.7"),
        "the stranger learns nothing: {body}"
    );
    let line = relay.wait_for(|line| {
        let entry = json(line)?;
        (entry["message"] == "webhook refused").then_some(entry)
    });
    assert_eq!(line["source_ip"], "203.0.113.7", "{line}");
    assert_eq!(line["peer"], "127.0.0.1", "{line}");
    drop(relay);
    let (connection, channel) = amqp().await;
    delete_topology(&channel, &settings).await;
    let _ = connection.close(200, "done".into()).await;
}
