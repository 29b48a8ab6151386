//! Accounts that need someone: `hookrelay accounts` folds the history into
//! each account's state, as the sender's spec reads, and the relay announces
//! each change once as an `account.<state>` message, across restarts and
//! relays.

use std::collections::BTreeMap;
use std::process::Output;
use std::time::{Duration, Instant};

use hookrelay::wire::account::AccountChange;
use serde_json::Value;

use crate::helpers::{TestApp, spawn_app, spawn_app_unready, test_env};

const ACCOUNTS_ON: (&str, &str) = ("HOOKRELAY__ACCOUNTS__ENABLED", "true");

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
    let app = spawn_app(&[ACCOUNTS_ON]).await;
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
    let flaky = all.iter().find(|a| a["account_id"] == "flaky").unwrap();
    assert_eq!(flaky["streak"], 4);
    assert_eq!(flaky["because"]["reason"], "repeated_temporary_failures");
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
    let app = spawn_app(&[ACCOUNTS_ON]).await;
    let queue = app.bind_queue(&["account.#"]).await;
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
            .with(&[ACCOUNTS_ON])
            .set("HOOKRELAY__SPOOL__PATH", spool.to_str().unwrap())
            .settings(None)
    };
    // `first` announces (it consumes the accounts queue first); `second` stands by.
    let mut first = spawn_app_unready(relay(1)).await;
    first.wait_until_ready().await;
    let queue = first.bind_queue(&["account.#"]).await;
    let second = spawn_app_unready(relay(2)).await;
    second.wait_until_ready().await;

    first.send(webhook(Some("LoginFailedError"), "r1")).await;
    let mut heard = announcements_until(&first, &queue, "r1").await;
    // Both relays take webhooks; one folds them. (Were both to fold, each
    // would see part of r2's streak, and the third failure would not escalate.)
    second.send(webhook(Some("LoginFailedError"), "r1")).await;
    for relay in [&first, &second, &first] {
        relay
            .send(webhook(Some("TemporaryFailureError"), "r2"))
            .await;
    }
    second.send(webhook(None, "barrier-1")).await;
    heard.extend(announcements_until(&first, &queue, "barrier-1").await);

    // The announcer stops: the other relay takes over, folds the history,
    // and goes on where it stopped.
    first.shutdown_relay().await.unwrap();
    second.send(webhook(None, "r1")).await;
    second
        .send(webhook(Some("TemporaryFailureError"), "r2"))
        .await;
    second.send(webhook(None, "r3")).await;
    heard.extend(announcements_until(&first, &queue, "r3").await);
    assert_eq!(second.metric("hookrelay_accounts_announcing").await, 1.0);

    // The first comes back (a restart) and stands by; the second stops, so
    // the restarted one folds a history that holds every announcement.
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
