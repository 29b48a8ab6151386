//! The event history: every event kept in the stream `<exchange>.history`,
//! listed and filtered by `hookrelay events`, watched by `tail` without a
//! binding, and sent again by `hookrelay replay --from-history`.

use std::process::Output;
use std::time::{Duration, SystemTime};

use hookrelay::broker::Topology;
use hookrelay::config::{QueueSettings, QueueType};
use lapin::options::{ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::Value;

use crate::helpers::{
    CLIENT_ID, TestApp, eventually, header, message_id, spawn_app, spawn_app_unready,
    test_settings, text_header,
};

const OTHER_CLIENT: &str = "other-client";

fn event(hook_error: Option<&str>, user: &str, account: &str) -> String {
    let error = hook_error.map_or(String::new(), |code| format!(r#","error":"{code}""#));
    let hook = if hook_error.is_some() {
        "SyncError"
    } else {
        "SyncAccount"
    };
    format!(
        r#"{{"hook":"{hook}","user":{{"id":"{user}","loginName":"jane@example.com"}},"account":{{"id":"{account}","provider":"Big Bank"}}{error}}}"#
    )
}

/// A relay with two client ids, so that `--client-id` has something to tell apart.
async fn relay() -> TestApp {
    let clients = format!("{CLIENT_ID},{OTHER_CLIENT}");
    spawn_app(&[("HOOKRELAY__INGRESS__CLIENT_IDS", clients.as_str())]).await
}

/// The JSON lines a command printed.
fn json_lines(output: &Output) -> Vec<Value> {
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// What the sender sent, of the lines `events` printed: the history also
/// keeps the relay's announcements (`account.*`), which come a moment
/// after the webhooks that caused them.
fn webhooks(listed: Vec<Value>) -> Vec<Value> {
    listed
        .into_iter()
        .filter(|line| {
            !line["routing_key"]
                .as_str()
                .unwrap()
                .starts_with("account.")
        })
        .collect()
}

/// The message ids of the webhooks `events --json ARGS` lists.
async fn events(app: &TestApp, args: &[&str]) -> Vec<String> {
    let output = app.run(&[&["events", "--json"], args].concat()).await;
    webhooks(json_lines(&output))
        .iter()
        .map(|line| line["message_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn events_lists_every_event_kept_and_each_filter_narrows_it() {
    let app = relay().await;
    let account = app.send(event(None, "u-1", "a-1")).await;
    let login = app
        .send(event(Some("LoginFailedError"), "u-2", "a-2"))
        .await;
    let other = app
        .post(
            event(Some("SecurityQuestionError"), "u-2", "a-3"),
            &[
                ("content-type", "application/json"),
                ("x-client-id", OTHER_CLIENT),
            ],
        )
        .await;
    assert_eq!(other.status(), 200);
    let other = other.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let listed = webhooks(json_lines(&app.run(&["events", "--json"]).await));
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[0]["message_id"], account.as_str());
    assert_eq!(listed[0]["routing_key"], "sync.account");
    assert!(listed[0]["received_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(listed[0]["headers"]["account-id"], "a-1");
    assert_eq!(listed[0]["body"]["user"]["loginName"], "[redacted]");
    assert_eq!(listed[1]["message_id"], login.as_str());
    assert_eq!(listed[2]["message_id"], other.as_str());

    let cases: [(&[&str], Vec<&String>); 6] = [
        (&["--routing-key", "sync.error.*"], vec![&login, &other]),
        (&["--routing-key", "sync.account"], vec![&account]),
        (&["--user-id", "u-2"], vec![&login, &other]),
        (&["--account-id", "a-2"], vec![&login]),
        (&["--client-id", OTHER_CLIENT], vec![&other]),
        (
            &[
                "--user-id",
                "u-2",
                "--routing-key",
                "sync.#",
                "--limit",
                "1",
            ],
            vec![&login],
        ),
    ];
    for (args, expected) in cases {
        let expected: Vec<String> = expected.into_iter().cloned().collect();
        assert_eq!(events(&app, args).await, expected, "{args:?}");
    }

    let raw = app.run(&["events", "--raw", "--account-id", "a-1"]).await;
    let text = String::from_utf8_lossy(&raw.stdout);
    assert!(text.contains(&account), "{text}");
    assert!(text.contains("jane@example.com"), "--raw: {text}");
    let plain = app.run(&["events", "--account-id", "a-1"]).await;
    let text = String::from_utf8_lossy(&plain.stdout);
    assert!(text.contains("user=u-1 account=a-1"), "{text}");
    assert!(
        !text.contains("jane@example.com"),
        "redacted by default: {text}"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn since_a_time_after_every_event_lists_none_and_fails_not() {
    // RabbitMQ attaches a read at a time after its last chunk past the end,
    // and sends nothing: the read ends empty, it does not stall.
    let app = relay().await;
    app.send(event(None, "u-1", "a-1")).await;
    let later = humantime::format_rfc3339_millis(SystemTime::now() + Duration::from_secs(3600));
    assert_eq!(
        events(&app, &["--since", &later.to_string()]).await,
        Vec::<String>::new()
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn since_and_until_select_by_when_the_relay_received_the_webhook() {
    let app = relay().await;
    let before = app.send(event(None, "u-1", "a-1")).await;
    // Received before its answer: at or before the cut, to the millisecond.
    let cut_at = SystemTime::now();
    let cut = humantime::format_rfc3339_millis(cut_at).to_string();
    // The next one is received in a later millisecond: wait for the clock.
    while SystemTime::now() < cut_at + Duration::from_millis(2) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let after = app.send(event(None, "u-1", "a-1")).await;

    assert_eq!(
        events(&app, &["--since", &cut]).await,
        std::slice::from_ref(&after)
    );
    assert_eq!(
        events(&app, &["--until", &cut]).await,
        std::slice::from_ref(&before)
    );
    assert_eq!(events(&app, &["--since", "1h"]).await, [before, after]);
    assert!(
        events(&app, &["--since", "2099-01-01T00:00:00Z"])
            .await
            .is_empty()
    );
    let wrong = app.run(&["events", "--since", "yesterday"]).await;
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("RFC 3339"));
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn follow_waits_for_new_events() {
    let app = relay().await;
    app.send(event(None, "u-1", "a-old")).await;
    let mut command = app.command(&[
        "events",
        "--follow",
        "--json",
        "--account-id",
        "a-new",
        "--limit",
        "1",
    ]);
    // It prints the event sent after it started: so it did not stop at the
    // end of the history, but waited.
    let following = tokio::task::spawn_blocking(move || command.output().unwrap());
    let new = app.send(event(None, "u-1", "a-new")).await;

    let output = tokio::time::timeout(Duration::from_secs(10), following)
        .await
        .expect("printed and stopped at --limit")
        .unwrap();
    let listed = json_lines(&output);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["message_id"], new.as_str());
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn with_history_tail_reads_the_stream_and_binds_nothing() {
    let app = relay().await;
    let tail = app.start_tail(&["--count", "1", "--json", "sync.#"]);

    let bound_to_entry = crate::helpers::bindings_from(app.topology.entry_exchange()).await;
    let id = app.send(event(None, "u-1", "a-1")).await;

    let mut expected = vec![
        app.topology.exchange().to_owned(),
        app.topology.history_stream().unwrap().to_owned(),
    ];
    expected.sort();
    assert_eq!(bound_to_entry, expected, "tail added no binding");
    let output = tokio::task::spawn_blocking(move || tail.wait_with_output().unwrap())
        .await
        .unwrap();
    let shown = json_lines(&output);
    assert_eq!(shown[0]["message_id"], id.as_str());
    let unrouted = app
        .next_message(app.topology.unrouted())
        .await
        .expect("routed as ever");
    assert_eq!(message_id(&unrouted), id);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_history_stream_with_other_retention_is_reported_and_still_used() {
    let settings = test_settings(&[("HOOKRELAY__HISTORY__MAX_AGE", "7d")]);
    let stream = Topology::of(&settings).history_stream().unwrap().to_owned();
    let (connection, channel) = crate::helpers::amqp().await;
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    // As an earlier configuration declared it: 1 day instead of 7.
    args.insert("x-max-age".into(), AMQPValue::LongString("1D".into()));
    args.insert("x-max-length-bytes".into(), AMQPValue::LongLongInt(1 << 30));
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(stream.as_str().into(), durable, args)
        .await
        .unwrap();

    let app = spawn_app_unready(settings).await;

    assert!(app.broker_ready().await, "the relay runs");
    let id = app.send(event(None, "u-1", "a-1")).await;
    let ready = app.readiness().await;
    assert_eq!(
        ready["queue_conflicts"][0]["queue"],
        stream.as_str(),
        "{ready}"
    );
    assert!(
        ready["queue_conflicts"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("x-max-age"),
        "{ready}"
    );
    assert_eq!(
        events(&app, &[]).await,
        [id],
        "the existing stream keeps the history"
    );
    let _ = connection.close(200, "done".into()).await;
    app.stop().await.unwrap();
}

/// A relay with the consumer queue `<exchange>.synced` bound to `sync.account`.
async fn relay_with_accounts_queue(extra: &[(&str, &str)]) -> (TestApp, String) {
    let mut settings = test_settings(extra);
    let accounts = format!("{}.synced", settings.amqp.exchange);
    settings.queues = vec![QueueSettings::new(
        &accounts.clone(),
        &["sync.account"],
        QueueType::Classic,
    )];
    let app = spawn_app_unready(settings).await;
    app.wait_until_ready().await;
    (app, accounts)
}

/// The ids in `queue`, taking them, with the messages themselves.
async fn take_all(app: &TestApp, queue: &str) -> Vec<lapin::message::BasicGetMessage> {
    let mut taken = Vec::new();
    for message in app.take_all(queue).await {
        taken.push(message);
    }
    taken
}

#[tokio::test]
async fn replay_from_history_fills_one_queue_with_what_the_filters_select() {
    let (app, accounts) = relay_with_accounts_queue(&[]).await;
    let fresh = format!("{}.fresh-consumer", app.exchange());
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    app.channel
        .queue_declare(fresh.as_str().into(), durable, FieldTable::default())
        .await
        .unwrap();
    app.send(event(None, "u-1", "a-1")).await;
    let first = app
        .send(event(Some("LoginFailedError"), "u-2", "a-2"))
        .await;
    let second = app
        .send(event(Some("TemporaryFailureError"), "u-3", "a-3"))
        .await;
    let selection = [
        "--from-history",
        "--since",
        "1h",
        "--routing-key",
        "sync.error.*",
    ];

    let dry = json_lines(
        &app.run(
            &[
                &["replay", "--json", "--dry-run", "--to-queue", &fresh],
                &selection[..],
            ]
            .concat(),
        )
        .await,
    );
    assert_eq!(dry.len(), 3, "two events and the summary: {dry:?}");
    assert_eq!(dry[0]["action"], "would_replay");
    assert_eq!(dry[2]["summary"]["would_replay"], 2);
    assert_eq!(app.depth(&fresh).await, 0, "a dry run sends nothing");

    let limited = app
        .run(
            &[
                &["replay", "--to-queue", &fresh, "--limit", "1"],
                &selection[..],
            ]
            .concat(),
        )
        .await;
    assert!(limited.status.success(), "{limited:?}");
    let replayed = app
        .run(&[&["replay", "--to-queue", &fresh], &selection[..]].concat())
        .await;
    assert!(replayed.status.success(), "{replayed:?}");
    assert!(String::from_utf8_lossy(&replayed.stdout).contains("replayed 2, skipped 0, failed 0"));

    let got = take_all(&app, &fresh).await;
    let ids: Vec<String> = got.iter().map(message_id).collect();
    assert_eq!(
        ids,
        [first.clone(), first, second],
        "--limit 1, then both, in order"
    );
    assert_eq!(text_header(&got[0], "x-replayed-from"), "history");
    assert_eq!(
        header(&got[0], "x-replay-count"),
        Some(AMQPValue::LongLongInt(1))
    );
    assert_eq!(text_header(&got[0], "hook"), "SyncError");
    assert_eq!(got[0].delivery.properties.delivery_mode(), &Some(2));
    // It arrives with the queue's name as its routing key: the original is kept.
    assert_eq!(
        text_header(&got[0], "x-original-routing-key"),
        "sync.error.LoginFailedError"
    );
    assert_eq!(
        text_header(&got[0], "x-original-exchange"),
        app.topology.entry_exchange()
    );
    assert_eq!(
        take_all(&app, &accounts).await.len(),
        1,
        "no other queue got anything"
    );
    app.channel
        .queue_delete(fresh.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    app.stop().await.unwrap();
}

#[tokio::test]
async fn replay_from_history_to_the_exchange_reaches_every_bound_queue_once_more() {
    let (app, accounts) = relay_with_accounts_queue(&[]).await;
    let id = app.send(event(None, "u-1", "a-1")).await;
    assert_eq!(take_all(&app, &accounts).await.len(), 1);

    let replayed = app
        .run(&[
            "replay",
            "--from-history",
            "--account-id",
            "a-1",
            "--to-exchange",
        ])
        .await;

    assert!(replayed.status.success(), "{replayed:?}");
    let got = take_all(&app, &accounts).await;
    assert_eq!(
        got.iter().map(message_id).collect::<Vec<_>>(),
        std::slice::from_ref(&id)
    );
    assert_eq!(
        events(&app, &[]).await,
        [id],
        "the history holds it once, not twice"
    );

    let nowhere = app
        .run(&["replay", "--from-history", "--since", "1h"])
        .await;
    assert!(!nowhere.status.success());
    assert!(String::from_utf8_lossy(&nowhere.stderr).contains("--to-queue"));
    let missing = app
        .run(&[
            "replay",
            "--from-history",
            "--to-queue",
            "no-such-queue-here",
        ])
        .await;
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("NOT_FOUND"));
    app.stop().await.unwrap();
}

#[tokio::test]
async fn with_history_an_event_that_met_a_deleted_exchange_is_kept_and_can_be_sent_again() {
    // The history stream makes the publish count as routed, so the relay's
    // periodic check (here every second) is what repairs the topology.
    let (app, accounts) =
        relay_with_accounts_queue(&[("HOOKRELAY__AMQP__TOPOLOGY_CHECK_SECS", "1")]).await;
    let deleted_at =
        humantime::format_rfc3339_seconds(SystemTime::now() - Duration::from_secs(1)).to_string();
    app.channel
        .exchange_delete(app.exchange().into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();

    let lost = app.send(event(None, "u-1", "a-1")).await;

    assert!(
        eventually(Duration::from_secs(10), || async {
            app.metric("hookrelay_topology_redeclared_total").await >= 1.0
        })
        .await
    );
    assert_eq!(
        events(&app, &[]).await,
        std::slice::from_ref(&lost),
        "kept in the history"
    );
    let replayed = app
        .run(&[
            "replay",
            "--from-history",
            "--since",
            &deleted_at,
            "--to-exchange",
        ])
        .await;
    assert!(replayed.status.success(), "{replayed:?}");
    let got = take_all(&app, &accounts).await;
    assert_eq!(got.iter().map(message_id).collect::<Vec<_>>(), [lost]);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn without_history_the_history_commands_say_so() {
    let app = spawn_app(&[("HOOKRELAY__HISTORY__ENABLED", "false")]).await;
    let mut command = app.command(&["events"]);
    command.env("HOOKRELAY__HISTORY__ENABLED", "false");
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("history is off"));
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_quarantined_body_is_in_the_history_and_events_says_what_it_read() {
    let app = relay().await;
    let kept = app.send(event(None, "u-1", "a-1")).await;
    let quarantined = app.send_invalid(r#"{"hook":"SyncAccount"}"#).await;

    // The event's account change is announced, and kept, a moment later.
    let announced = eventually(Duration::from_secs(30), || async {
        json_lines(
            &app.run(&["events", "--json", "--routing-key", "account.#"])
                .await,
        )
        .len()
            == 1
    })
    .await;
    assert!(announced, "the account change is in the history");
    let all = app.run(&["events", "--json"]).await;
    let none = app.run(&["events", "--account-id", "nobody"]).await;
    let replayed = app
        .run(&["replay", "--from-history", "--to-exchange", "--dry-run"])
        .await;

    let everything = json_lines(&all);
    assert_eq!(everything.len(), 3, "{everything:?}");
    assert_eq!(everything[2]["routing_key"], "account.ok");
    let listed = webhooks(everything);
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(listed[0]["message_id"], kept.as_str());
    assert_eq!(listed[1]["message_id"], quarantined.as_str());
    assert_eq!(listed[1]["routing_key"], "quarantine");
    assert!(
        listed[1]["headers"]["x-quarantine-reason"]
            .as_str()
            .is_some_and(|reason| reason.contains("`user` is missing")),
        "{}",
        listed[1]
    );
    assert!(none.status.success());
    assert!(none.stdout.is_empty(), "nothing matched");
    let said = String::from_utf8_lossy(&none.stderr);
    assert!(said.contains("shown 0 event(s); 3 read from"), "{said}");
    let replay = String::from_utf8_lossy(&replayed.stdout);
    assert!(
        replay.contains("would replay 2, skipped 1"),
        "a quarantined body is not an event to replay: {replay}"
    );
    app.stop().await.unwrap();
}
