//! Accounts that need someone: `hookrelay accounts` folds the history into
//! each account's state, as the sender's spec reads, in event time, and the
//! relay announces each change once as an `account.<state>` message through
//! `<exchange>.changes`, across restarts and relays. What the sender said is
//! published as it said it, whatever the accounts make of it.

use std::collections::BTreeMap;
use std::process::Output;
use std::time::{Duration, Instant};

use hookrelay::config::{QueueSettings, QueueType};
use hookrelay::wire::account::AccountChange;
use serde_json::Value;

use crate::common::gate::Gate;
use crate::helpers::{
    AMQP_URL, TestApp, eventually, message_id, spawn_app, spawn_app_unready, test_env,
};

fn webhook(error: Option<&str>, account: &str) -> String {
    match error {
        Some(code) => format!(
            r#"{{"hook":"SyncError","user":{{"id":"u-{account}","loginName":"jane@example.com"}},"account":{{"id":"{account}","provider":"Big Bank"}},"error":"{code}"}}"#
        ),
        None => format!(
            r#"{{"hook":"SyncAccount","user":{{"id":"u-{account}","loginName":"jane@example.com"}},"account":{{"id":"{account}","provider":"Big Bank"}}}}"#
        ),
    }
}

fn json_lines(output: &Output) -> Vec<Value> {
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
        .collect()
}

fn states(listed: &[Value]) -> Vec<(String, String)> {
    let mut states: Vec<(String, String)> = listed
        .iter()
        .map(|account| {
            (
                account["account_id"].as_str().unwrap().to_owned(),
                account["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    states.sort();
    states
}

#[tokio::test]
async fn accounts_are_listed_by_what_they_need() {
    let app = spawn_app(&[]).await;
    // reconnected: three daily login failures, then the user reconnected.
    // flaky: temporary failures that keep happening. broken: a connector
    // error. locked: a login failure, still waiting for the user.
    let sent = [
        (Some("LoginFailedError"), "reconnected"),
        (Some("TemporaryFailureError"), "flaky"),
        (Some("LoginFailedError"), "reconnected"),
        (Some("TemporaryFailureError"), "flaky"),
        (Some("UnknownConnectorError"), "broken"),
        (Some("LoginFailedError"), "reconnected"),
        (Some("TemporaryFailureError"), "flaky"),
        (Some("SecurityQuestionError"), "locked"),
        (None, "reconnected"),
        (Some("TemporaryFailureError"), "flaky"),
    ];
    for (error, account) in sent {
        app.send(webhook(error, account)).await;
    }

    let all = json_lines(&app.run(&["accounts", "--json"]).await);
    let needs_user = json_lines(
        &app.run(&["accounts", "--state", "needs_reconnect", "--json"])
            .await,
    );
    let timeline = json_lines(&app.run(&["accounts", "reconnected", "--json"]).await);

    assert_eq!(
        states(&all),
        [
            ("broken".into(), "contact_provider".into()),
            ("flaky".into(), "contact_provider".into()),
            ("locked".into(), "needs_reconnect".into()),
            ("reconnected".into(), "ok".into()),
        ]
    );
    assert_eq!(
        states(&needs_user),
        [("locked".into(), "needs_reconnect".into())]
    );
    assert_eq!(needs_user[0]["reason"], "verification");
    assert_eq!(needs_user[0]["code"], "SecurityQuestionError");
    let flaky = all.iter().find(|a| a["account_id"] == "flaky").unwrap();
    assert_eq!(flaky["streak"], 4);
    assert_eq!(flaky["reason"], "repeated_temporary_failures");
    let broken = all.iter().find(|a| a["account_id"] == "broken").unwrap();
    assert_eq!(broken["reason"], "connector_error");
    assert_eq!(broken["code"], "UnknownConnectorError");
    assert_eq!(flaky["provider"], "Big Bank");
    // The timeline: four events, two changes (needs_reconnect, then ok).
    let changes: Vec<&str> = timeline
        .iter()
        .filter(|step| step["changed"] == true)
        .map(|step| step["state"].as_str().unwrap())
        .collect();
    assert_eq!(timeline.len(), 4);
    assert_eq!(changes, ["needs_reconnect", "ok"]);
    // Personal data is never shown.
    let printed = format!("{all:?}{timeline:?}");
    assert!(!printed.contains("jane@example.com"), "{printed}");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn with_accounts_off_the_command_says_so() {
    let app = spawn_app(&[("HOOKRELAY__ACCOUNTS__ENABLED", "false")]).await;

    let listed = app.run(&["accounts"]).await;

    assert!(!listed.status.success());
    let stderr = String::from_utf8_lossy(&listed.stderr);
    assert!(stderr.contains("[accounts] enabled = false"), "{stderr}");
    app.stop().await.unwrap();
}

/// The announcements taken from `queue` until one for `account` arrives
/// (sent last as a barrier: the announcer takes events in order, so every
/// change before it has been announced by then). Panics after 30 s.
async fn announcements_until(app: &TestApp, queue: &str, account: &str) -> Vec<AccountChange> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut heard = Vec::new();
    while !heard
        .iter()
        .any(|c: &AccountChange| c.account_id == account)
    {
        assert!(
            Instant::now() < deadline,
            "no announcement for {account}; heard {heard:?}"
        );
        match app.take(queue).await {
            Some(message) => heard.push(serde_json::from_slice(&message.data).unwrap()),
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    heard
}

/// `account_id state` of each announcement, in order.
fn said(heard: &[AccountChange]) -> Vec<String> {
    heard
        .iter()
        .map(|c| format!("{} {}", c.account_id, c.state.as_str()))
        .collect()
}

#[tokio::test]
async fn each_change_of_an_accounts_state_is_announced_once() {
    let app = spawn_app(&[]).await;
    let queue = app.bind_changes(&["account.#"]).await;
    let mut ids = BTreeMap::new();
    let sent = [
        (Some("LoginFailedError"), "relogin"),
        (Some("LoginFailedError"), "relogin"),
        (Some("LoginFailedError"), "relogin"),
        (None, "relogin"),
        (Some("TemporaryFailureError"), "flaky"),
        (Some("TemporaryFailureError"), "flaky"),
        (Some("TemporaryFailureError"), "flaky"),
        (Some("TemporaryFailureError"), "flaky"),
        (Some("UnknownConnectorError"), "broken"),
        (Some("SecurityQuestionError"), "locked"),
        (None, "barrier"),
    ];
    for (n, (error, account)) in sent.into_iter().enumerate() {
        ids.insert(n, app.send(webhook(error, account)).await);
    }

    let heard = announcements_until(&app, &queue, "barrier").await;

    assert_eq!(
        said(&heard),
        [
            "relogin needs_reconnect",
            "relogin ok",
            "flaky retrying",
            "flaky contact_provider",
            "broken contact_provider",
            "locked needs_reconnect",
            "barrier ok",
        ]
    );
    let escalated = &heard[3];
    assert_eq!(
        escalated.caused_by, ids[&6],
        "at the third temporary failure"
    );
    assert_eq!(escalated.streak, 3);
    assert_eq!(
        serde_json::to_value(escalated.reason).unwrap(),
        "repeated_temporary_failures"
    );
    assert_eq!(heard[0].code.as_deref(), Some("LoginFailedError"));
    assert_eq!(
        heard[1].previous_state.map(|s| s.as_str()),
        Some("needs_reconnect")
    );
    assert_eq!(heard[4].code.as_deref(), Some("UnknownConnectorError"));
    assert_eq!(heard[0].provider.as_deref(), Some("Big Bank"));
    // What `hookrelay accounts` lists is what was announced.
    let needs_user = json_lines(
        &app.run(&["accounts", "--state", "needs_reconnect", "--json"])
            .await,
    );
    assert_eq!(
        states(&needs_user),
        [("locked".into(), "needs_reconnect".into())]
    );
    assert_eq!(
        app.metric(r#"hookrelay_account_changes_announced_total{state="contact_provider"}"#)
            .await,
        2.0
    );
    assert_eq!(app.metric("hookrelay_accounts_announcing").await, 1.0);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_restart_and_a_second_relay_announce_nothing_twice() {
    let exchange = format!("test-{}", uuid::Uuid::now_v7());
    let relay = |n: u32| {
        let spool = std::env::temp_dir()
            .join(&exchange)
            .join(format!("spool-{n}.sqlite"));
        test_env(&exchange)
            .set("HOOKRELAY__SPOOL__PATH", spool.to_str().unwrap())
            .settings(None)
    };
    // `first` announces (it takes the lease first); `second` stands by.
    let mut first = spawn_app_unready(relay(1)).await;
    first.wait_until_ready().await;
    let queue = first.bind_changes(&["account.#"]).await;
    let second = spawn_app_unready(relay(2)).await;
    second.wait_until_ready().await;

    first.send(webhook(Some("LoginFailedError"), "r1")).await;
    let mut heard = announcements_until(&first, &queue, "r1").await;
    // Both relays take webhooks; each folds the whole history (so each sees
    // r2's whole streak); one announces.
    second.send(webhook(Some("LoginFailedError"), "r1")).await;
    for relay in [&first, &second, &first] {
        relay
            .send(webhook(Some("TemporaryFailureError"), "r2"))
            .await;
    }
    second.send(webhook(None, "barrier-1")).await;
    heard.extend(announcements_until(&first, &queue, "barrier-1").await);

    // The announcer stops: the other relay takes over and goes on where it
    // stopped.
    first.shutdown_relay().await.unwrap();
    second.send(webhook(None, "r1")).await;
    second
        .send(webhook(Some("TemporaryFailureError"), "r2"))
        .await;
    second.send(webhook(None, "r3")).await;
    heard.extend(announcements_until(&first, &queue, "r3").await);
    assert_eq!(second.metric("hookrelay_accounts_announcing").await, 1.0);

    // The first comes back (a restart: it resumes from its store) and stands
    // by; the second stops, so the restarted one takes over.
    let restarted = spawn_app_unready(relay(1)).await;
    restarted.wait_until_ready().await;
    second.stop_without_cleaning().await;
    restarted
        .send(webhook(Some("SecurityQuestionError"), "r4"))
        .await;
    heard.extend(announcements_until(&first, &queue, "r4").await);

    assert_eq!(
        said(&heard),
        [
            "r1 needs_reconnect",
            "r2 retrying",
            "r2 contact_provider",
            "barrier-1 ok",
            "r1 ok",
            "r3 ok",
            "r4 needs_reconnect",
        ],
        "each change once, in order"
    );
    assert_eq!(restarted.metric("hookrelay_accounts_announcing").await, 1.0);
    restarted.stop_without_cleaning().await;
    first.stop().await.unwrap();
}

/// The messages in `queue` once `count` arrived: each its routing key and
/// message id. Panics after 30 s.
async fn arrived(app: &TestApp, queue: &str, count: usize) -> Vec<(String, String)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got = Vec::new();
    while got.len() < count {
        assert!(
            Instant::now() < deadline,
            "{} of {count} arrived: {got:?}",
            got.len()
        );
        match app.take(queue).await {
            Some(message) => got.push((
                message.delivery.routing_key.to_string(),
                message_id(&message),
            )),
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    got
}

#[tokio::test]
async fn temporary_failures_that_keep_happening_are_each_published_and_escalate_once() {
    let app = spawn_app(&[]).await;
    let errors = app.bind_queue(&["sync.error.#"]).await;
    let changes = app.bind_changes(&["account.#"]).await;

    // The sender's automatic retry, failing again and again: three identical webhooks.
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            app.send(webhook(Some("TemporaryFailureError"), "flaky"))
                .await,
        );
    }
    app.send(webhook(None, "barrier")).await;

    let published = arrived(&app, &errors, 3).await;
    assert_eq!(
        published,
        ids.iter()
            .map(|id| ("sync.error.TemporaryFailureError".to_owned(), id.clone()))
            .collect::<Vec<_>>(),
        "what the sender said, three times"
    );
    let heard = announcements_until(&app, &changes, "barrier").await;
    assert_eq!(
        said(&heard),
        ["flaky retrying", "flaky contact_provider", "barrier ok"],
        "what it means: escalated once, at the third"
    );
    assert_eq!(heard[1].caused_by, ids[2]);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn an_on_demand_sync_after_a_failure_is_published_and_the_account_is_ok_again() {
    let app = spawn_app(&[]).await;
    let everything = app.bind_queue(&["#"]).await;
    let changes = app.bind_changes(&["account.#"]).await;

    // The daily sync, a login failure, and the user reconnected (the spec's
    // POST /accounts/:id/sync), a moment apart.
    let sync = app.send(webhook(None, "a-1")).await;
    let failed = app.send(webhook(Some("LoginFailedError"), "a-1")).await;
    let again = app.send(webhook(None, "a-1")).await;

    let published = arrived(&app, &everything, 3).await;
    assert_eq!(
        published,
        [
            ("sync.account".to_owned(), sync),
            ("sync.error.LoginFailedError".to_owned(), failed),
            ("sync.account".to_owned(), again.clone()),
        ]
    );
    let heard: Vec<String> = arrived(&app, &changes, 3)
        .await
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    assert_eq!(
        heard,
        ["account.ok", "account.needs_reconnect", "account.ok"]
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn announcements_keep_to_their_own_exchange_and_nothing_piles_up_unrouted() {
    // A fresh install: no queue bound to account changes.
    let app = spawn_app(&[]).await;
    let everything = app.bind_queue(&["#"]).await;
    for n in 0..3 {
        app.send(webhook(Some("LoginFailedError"), &format!("a-{n}")))
            .await;
    }
    let barrier = app.send(webhook(None, "barrier")).await;

    let got = arrived(&app, &everything, 4).await;
    assert!(
        got.iter().all(|(key, _)| key.starts_with("sync.")),
        "a `#` binding on the sender's exchange gets webhooks only: {got:?}"
    );
    assert_eq!(got[3].1, barrier);
    // Each change was announced (four: three needs_reconnect, one ok)...
    assert!(
        eventually(Duration::from_secs(30), || async {
            app.metric("hookrelay_account_changes_owed").await == 0.0
                && app
                    .metric(r#"hookrelay_account_changes_announced_total{state="ok"}"#)
                    .await
                    == 1.0
        })
        .await,
        "the announcements went out"
    );
    // ...and none of them landed in the sender's unrouted queue.
    assert_eq!(app.depth(app.topology.unrouted()).await, 0);
    assert_eq!(app.metric("hookrelay_accounts_announcing").await, 1.0);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_configured_queue_bound_to_account_changes_starts_and_receives_them() {
    let mut settings = crate::helpers::test_settings(&[]);
    let support = format!("{}.support", settings.amqp.exchange);
    let mut queue = QueueSettings::new(&support, &[], QueueType::Quorum);
    queue.changes = vec!["account.#".to_owned()];
    settings.queues = vec![queue];
    let app = spawn_app_unready(settings).await;
    app.wait_until_ready().await;
    assert_eq!(app.readiness().await["status"], "ready");

    let caused_by = app
        .send(webhook(Some("UnhandledConnectorError"), "broken"))
        .await;

    let change = app
        .next_message(&support)
        .await
        .expect("the configured queue receives the change");
    assert_eq!(
        change.delivery.routing_key.as_str(),
        "account.contact_provider"
    );
    assert_eq!(
        crate::helpers::text_header(&change, "x-caused-by"),
        caused_by
    );
    let ready = app.readiness().await;
    assert!(
        ready["queue_conflicts"].as_array().unwrap().is_empty(),
        "{ready}"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_late_event_from_a_spool_changes_nothing_and_is_not_announced() {
    // Relay `late` cannot reach RabbitMQ: it spools a LoginFailedError. The
    // account then syncs through relay `on_time`. When `late` drains its
    // spool, the failure reaches the history after the newer sync.
    let exchange = format!("test-{}", uuid::Uuid::now_v7());
    let mut gate = Gate::closed(&AMQP_URL).await;
    let relay = |n: u32, uri: &str| {
        let spool = std::env::temp_dir()
            .join(&exchange)
            .join(format!("spool-{n}.sqlite"));
        test_env(&exchange)
            .set("HOOKRELAY__SPOOL__PATH", spool.to_str().unwrap())
            .set("HOOKRELAY__AMQP__URI", uri)
            .settings(None)
    };
    let on_time = spawn_app_unready(relay(1, &AMQP_URL)).await;
    on_time.wait_until_ready().await;
    let changes = on_time.bind_changes(&["account.#"]).await;
    let everything = on_time.bind_queue(&["#"]).await;
    let late = spawn_app_unready(relay(2, &gate.uri())).await;

    let spooled = late
        .post_webhook(webhook(Some("LoginFailedError"), "a-1"))
        .await;
    assert_eq!(spooled.status(), 200);
    let spooled: Value = spooled.json().await.unwrap();
    assert_eq!(spooled["stored"], "spool");
    let synced = on_time.send(webhook(None, "a-1")).await;
    gate.open().await;
    late.wait_until_ready().await;

    let got = arrived(&on_time, &everything, 2).await;
    assert_eq!(got[0].1, synced);
    assert_eq!(
        got[1].1,
        spooled["id"].as_str().unwrap(),
        "drained after the sync"
    );
    on_time.send(webhook(None, "barrier")).await;
    let heard = announcements_until(&on_time, &changes, "barrier").await;
    assert_eq!(
        said(&heard),
        ["a-1 ok", "barrier ok"],
        "nothing announced for the late failure"
    );
    let listed = json_lines(&on_time.run(&["accounts", "--json"]).await);
    assert_eq!(
        states(&listed),
        [("a-1".into(), "ok".into()), ("barrier".into(), "ok".into())]
    );
    let timeline = json_lines(&on_time.run(&["accounts", "a-1", "--json"]).await);
    let late_steps: Vec<bool> = timeline.iter().map(|s| s["late"] == true).collect();
    assert_eq!(
        late_steps,
        [false, true],
        "the failure is in the timeline, marked late"
    );
    late.stop_without_cleaning().await;
    on_time.stop().await.unwrap();
}

#[tokio::test]
async fn an_account_with_no_event_for_a_while_is_announced_silent_once_and_its_next_event_brings_it_back()
 {
    // Two relays: the one holding the lease decides by its clock; both read
    // the decision back from the history.
    let exchange = format!("test-{}", uuid::Uuid::now_v7());
    let relay = |n: u32| {
        let spool = std::env::temp_dir()
            .join(&exchange)
            .join(format!("spool-{n}.sqlite"));
        test_env(&exchange)
            .set("HOOKRELAY__SPOOL__PATH", spool.to_str().unwrap())
            .set("HOOKRELAY__ACCOUNTS__SILENT_AFTER", "2s")
            .settings(None)
    };
    let mut first = spawn_app_unready(relay(1)).await;
    first.wait_until_ready().await;
    let queue = first.bind_changes(&["account.#"]).await;
    let second = spawn_app_unready(relay(2)).await;
    second.wait_until_ready().await;

    second.send(webhook(None, "quiet")).await;
    let mut heard = announcements_until(&first, &queue, "quiet").await;
    // Two seconds without an event, and a look every 200 ms: silent.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !heard.iter().any(|c| c.state.as_str() == "silent") {
        assert!(Instant::now() < deadline, "never silent: {heard:?}");
        match first.take(&queue).await {
            Some(message) => heard.push(serde_json::from_slice(&message.data).unwrap()),
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let listed = json_lines(
        &second
            .run(&["accounts", "--state", "silent", "--json"])
            .await,
    );
    // The announcer goes, and comes back (a restart: it resumes from its
    // store) as the other stops: each took the lease in turn, and neither
    // announced it again (each read the announcement back).
    first.shutdown_relay().await.unwrap();
    second.send(webhook(None, "barrier")).await;
    heard.extend(announcements_until(&first, &queue, "barrier").await);
    let restarted = spawn_app_unready(relay(1)).await;
    restarted.wait_until_ready().await;
    second.stop_without_cleaning().await;
    restarted.send(webhook(None, "quiet")).await;
    heard.extend(
        announcements_until(&first, &queue, "quiet")
            .await
            .into_iter()
            .filter(|c| c.account_id == "quiet"),
    );
    // The barrier may have gone silent meanwhile: its own affair.
    heard.retain(|c| c.account_id == "quiet" || c.state.as_str() == "ok");

    assert_eq!(
        said(&heard),
        ["quiet ok", "quiet silent", "barrier ok", "quiet ok"],
        "silent once across a handover and a restart, then back with its next event"
    );
    let silent = &heard[1];
    assert_eq!(silent.previous_state.map(|s| s.as_str()), Some("ok"));
    assert_eq!(
        silent.caused_by, heard[0].caused_by,
        "named by its last event"
    );
    assert_eq!(heard[3].previous_state.map(|s| s.as_str()), Some("silent"));
    assert_eq!(
        states(&listed),
        [("quiet".to_owned(), "silent".to_owned())],
        "the CLI lists it"
    );
    restarted.stop_without_cleaning().await;
    first.stop().await.unwrap();
}

#[tokio::test]
async fn most_of_a_clients_accounts_gone_quiet_are_one_client_silent_not_one_message_each() {
    let app = spawn_app(&[("HOOKRELAY__ACCOUNTS__SILENT_AFTER", "5s")]).await;
    let queue = app.bind_changes(&["client.silent", "account.#"]).await;
    let accounts: Vec<String> = (1..=12).map(|n| format!("quiet-{n}")).collect();
    for account in &accounts {
        app.send(webhook(None, account)).await;
    }
    // Twelve changes to ok, then, five seconds on, one client.silent.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut keys = Vec::new();
    let mut silent = None;
    while silent.is_none() {
        assert!(Instant::now() < deadline, "no client.silent: {keys:?}");
        match app.take(&queue).await {
            Some(message) => {
                let key = message.delivery.routing_key.to_string();
                if key == "client.silent" {
                    silent = Some(serde_json::from_slice::<Value>(&message.data).unwrap());
                }
                keys.push(key);
            }
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let listed = json_lines(&app.run(&["accounts", "--state", "silent", "--json"]).await);
    // One comes back with its next event.
    app.send(webhook(None, "quiet-1")).await;
    let back = announcements_until(&app, &queue, "quiet-1").await;

    let mut expected = vec!["account.ok".to_owned(); 12];
    expected.push("client.silent".to_owned());
    assert_eq!(keys, expected, "no account.silent for any of them");
    let silent = silent.unwrap();
    assert_eq!(silent["accounts"], 12);
    assert_eq!(silent["client_id"], "test-client");
    assert_eq!(listed.len(), 12, "each of them silent: {listed:?}");
    assert_eq!(said(&back), ["quiet-1 ok"]);
    assert_eq!(back[0].previous_state.map(|s| s.as_str()), Some("silent"));
    app.stop().await.unwrap();
}
