//! The sender's retries: a webhook that repeats one accepted within
//! `ingress.dedup_window` is answered 200 `duplicate` with the first one's id
//! and not published again; every event carries its `x-dedup-key`; the keys
//! outlive a restart and reach a second relay through the history.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{
    TestApp, eventually, spawn_app_unready, sync_account, sync_error, test_env, text_header,
};

const WINDOW_ON: (&str, &str) = ("HOOKRELAY__INGRESS__DEDUP_WINDOW", "10m");

/// A relay on `exchange` with the window on and a spool of its own, so that
/// several can share the exchange.
async fn relay(exchange: &str, n: u32) -> TestApp {
    let spool = std::env::temp_dir()
        .join(exchange)
        .join(format!("spool-{n}.sqlite"));
    let settings = test_env(exchange)
        .with(&[WINDOW_ON])
        .set("HOOKRELAY__SPOOL__PATH", spool.to_str().unwrap())
        .settings(None);
    let app = spawn_app_unready(settings).await;
    app.wait_until_ready().await;
    app
}

/// POSTs a webhook that must be answered 200; returns its JSON answer.
async fn answer(app: &TestApp, body: String) -> Value {
    let response = app.post_webhook(body).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// Waits until the relay has read the window's keys back from the history.
async fn caught_up(app: &TestApp) -> bool {
    eventually(Duration::from_secs(30), || async {
        app.readiness().await["dedup"]["caught_up"] == true
    })
    .await
}

#[tokio::test]
async fn a_retry_is_answered_duplicate_with_the_first_id_and_published_once() {
    let exchange = format!("test-{}", uuid::Uuid::now_v7());
    let app = relay(&exchange, 1).await;
    let queue = app.bind_queue(&["#"]).await;

    let first = answer(&app, sync_account()).await;
    assert_eq!(first["status"], "accepted");
    let retry = answer(&app, sync_account()).await;
    assert_eq!(retry["status"], "duplicate");
    assert_eq!(
        retry["id"], first["id"],
        "the duplicate names the first message"
    );
    // Another error code is another event, though the account is the same.
    let other = answer(&app, sync_error("LoginFailedError")).await;
    assert_eq!(other["status"], "accepted");

    assert!(
        eventually(Duration::from_secs(10), || async {
            app.depth(&queue).await == 2
        })
        .await
    );
    let messages = app.take_all(&queue).await;
    assert_eq!(messages.len(), 2, "the retry was not published");
    let keys: Vec<String> = messages
        .iter()
        .map(|m| text_header(m, "x-dedup-key"))
        .collect();
    assert_ne!(keys[0], keys[1]);
    assert!(keys.iter().all(|key| key.len() == 64));
    assert_eq!(
        app.metric(r#"hookrelay_webhook_requests_total{outcome="duplicate"}"#)
            .await,
        1.0
    );
    assert_eq!(
        app.metric(r#"hookrelay_events_total{routing_key="sync.account"}"#)
            .await,
        1.0
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn the_keys_outlive_a_restart_and_reach_another_relay() {
    let exchange = format!("test-{}", uuid::Uuid::now_v7());
    let first = relay(&exchange, 1).await;
    let accepted = answer(&first, sync_account()).await;
    first.stop_without_cleaning().await;

    // A new process remembers nothing of its own: it reads the window back.
    let restarted = relay(&exchange, 2).await;
    assert!(
        caught_up(&restarted).await,
        "{}",
        restarted.readiness().await
    );
    let retry = answer(&restarted, sync_account()).await;
    assert_eq!(retry["status"], "duplicate");
    assert_eq!(retry["id"], accepted["id"]);

    // A second relay beside it learns what the first accepts.
    let beside = relay(&exchange, 3).await;
    let queue = restarted.bind_queue(&["#"]).await;
    assert!(caught_up(&beside).await);
    let new = answer(&restarted, sync_error("TemporaryFailureError")).await;
    assert_eq!(new["status"], "accepted");
    let seen_beside = eventually(Duration::from_secs(10), || async {
        beside.readiness().await["dedup"]["keys"] == 2
    })
    .await;
    assert!(seen_beside, "{}", beside.readiness().await);
    let retry_beside = answer(&beside, sync_error("TemporaryFailureError")).await;
    assert_eq!(retry_beside["status"], "duplicate");
    assert_eq!(retry_beside["id"], new["id"]);

    // The event once, though the retry reached another relay.
    assert!(
        eventually(Duration::from_secs(10), || async {
            restarted.depth(&queue).await == 1
        })
        .await
    );
    beside.stop_without_cleaning().await;
    restarted.stop().await.unwrap();
}
