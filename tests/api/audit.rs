//! `hookrelay audit` on the real broker: every webhook a relay stores is
//! numbered, and the audit accounts for every number from the history.

use std::time::{Duration, SystemTime};

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::Value;

use crate::common::gate::Gate;
use crate::helpers::{
    AMQP_URL, TestApp, eventually, header, spawn_app, spawn_app_unready, sync_account, sync_error,
    test_env,
};

/// What `hookrelay audit --json --grace 0s` says of each relay, and whether
/// it exited with success.
async fn audit(app: &TestApp, extra: &[&str]) -> (Vec<Value>, bool) {
    let mut args = vec!["audit", "--json", "--grace", "0s"];
    args.extend(extra);
    let output = app.run(&args).await;
    let relays = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).expect("one JSON object per relay"))
        .collect();
    (relays, output.status.success())
}

fn relay_seq(message: &lapin::message::BasicGetMessage) -> i64 {
    match header(message, "x-relay-seq") {
        Some(AMQPValue::LongLongInt(seq)) => seq,
        other => panic!("x-relay-seq is {other:?}"),
    }
}

#[tokio::test]
async fn every_webhook_a_relay_stores_is_numbered_and_accounted_for() {
    let app = spawn_app(&[]).await;
    let queue = app.bind_queue(&["#"]).await;
    for body in [
        sync_account(),
        sync_error("LoginFailedError"),
        sync_account(),
    ] {
        app.send(body).await;
    }
    // A body that is not an event is stored too: in the quarantine.
    let quarantined = app.post_webhook(r#"{"hook":"SyncAccount"}"#).await;
    assert_eq!(quarantined.status(), 422);

    let messages = app.take_all(&queue).await;
    let numbers: Vec<i64> = messages.iter().map(relay_seq).collect();
    assert_eq!(
        numbers,
        [1, 2, 3],
        "the events, numbered in the order stored"
    );

    let (relays, success) = audit(&app, &[]).await;
    assert!(success, "{relays:?}");
    assert_eq!(relays.len(), 1, "{relays:?}");
    let relay = &relays[0];
    assert_eq!(relay["seen"], 4, "the quarantined body included: {relay}");
    assert_eq!(
        (relay["first"].as_u64(), relay["last"].as_u64()),
        (Some(1), Some(4))
    );
    assert_eq!(relay["gaps"], serde_json::json!([]), "{relay}");
    assert_eq!(relay["lost"], 0);
    // The relay's own tally agrees: all four read back, none missing.
    let read_back = eventually(Duration::from_secs(30), || async {
        app.readiness().await["audit"]["in_the_history_since_start"] == 4
    })
    .await;
    let ready = app.readiness().await;
    assert!(read_back, "{ready}");
    assert_eq!(ready["audit"]["stored_since_start"], 4, "{ready}");
    assert_eq!(ready["audit"]["missing"], 0, "{ready}");
    app.stop().await.unwrap();
}

/// Puts webhooks of a made-up relay, numbered `numbers`, straight into the
/// history, received an hour ago.
async fn made_up_relay(app: &TestApp, relay: &str, numbers: &[i64]) {
    let stream = app.topology.history_stream().unwrap().to_owned();
    let an_hour_ago =
        humantime::format_rfc3339_millis(SystemTime::now() - Duration::from_secs(3600));
    for &seq in numbers {
        let mut headers = FieldTable::default();
        headers.insert("x-relay-id".into(), AMQPValue::LongString(relay.into()));
        headers.insert("x-relay-seq".into(), AMQPValue::LongLongInt(seq));
        headers.insert(
            "x-received-at".into(),
            AMQPValue::LongString(an_hour_ago.to_string().into()),
        );
        let properties = BasicProperties::default().with_headers(headers);
        app.publish_confirmed(&stream, sync_account().as_bytes(), properties)
            .await;
    }
}

#[tokio::test]
async fn a_number_missing_from_the_history_is_reported_lost_with_a_failing_status() {
    let app = spawn_app(&[]).await;
    let relay = format!("made-up-{}", uuid::Uuid::now_v7());
    made_up_relay(&app, &relay, &[1, 2, 4]).await;

    let (relays, success) = audit(&app, &["--relay", &relay]).await;
    assert!(!success, "a loss fails the audit: {relays:?}");
    assert_eq!(relays.len(), 1, "--relay keeps that relay only: {relays:?}");
    assert_eq!(relays[0]["lost"], 1);
    let gap = &relays[0]["gaps"][0];
    assert_eq!(
        (gap["from"].as_u64(), gap["to"].as_u64()),
        (Some(3), Some(3))
    );
    assert_eq!(gap["fate"], "lost");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_running_relay_counts_a_number_of_its_own_that_stays_missing_and_says_so() {
    let app = spawn_app(&[("HOOKRELAY__AUDIT__MISSING_AFTER", "1s")]).await;
    app.send(sync_account()).await;
    let relay = app.readiness().await["audit"]["relay_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Another relay's gap is that relay's to report, not this one's.
    let other = format!("made-up-{}", uuid::Uuid::now_v7());
    made_up_relay(&app, &other, &[1, 2, 4]).await;
    // Its own number 3 reaches the history, and 2 never does (as a webhook
    // RabbitMQ lost would).
    made_up_relay(&app, &relay, &[3]).await;
    let gaps = format!("hookrelay_audit_gaps{{relay=\"{relay}\"}}");
    let counted = eventually(Duration::from_secs(30), || async {
        app.metric("hookrelay_audit_missing").await == 1.0 && app.metric(&gaps).await == 1.0
    })
    .await;
    let ready = app.readiness().await;
    assert!(counted, "{ready}");
    assert_eq!(ready["status"], "degraded", "{ready}");
    assert_eq!(ready["audit"]["missing_of"][0]["first_from"], 2, "{ready}");
    assert_eq!(
        ready["audit"]["missing_of"].as_array().map(Vec::len),
        Some(1),
        "its own only: {ready}"
    );

    // The missing one arrives after all (a late event): nothing is missing.
    made_up_relay(&app, &relay, &[2]).await;
    let cleared = eventually(Duration::from_secs(30), || async {
        app.metric("hookrelay_audit_missing").await == 0.0 && app.metric(&gaps).await == 0.0
    })
    .await;
    let ready = app.readiness().await;
    assert!(cleared, "{ready}");
    assert_eq!(ready["status"], "ready", "{ready}");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_spooled_webhook_is_accounted_for_until_it_reaches_the_history() {
    let exchange = format!("test-{}", uuid::Uuid::now_v7());
    let mut gate = Gate::closed(&AMQP_URL).await;
    gate.open().await;
    let settings = test_env(&exchange)
        .set("HOOKRELAY__AMQP__URI", gate.uri())
        .settings(None);
    let app = spawn_app_unready(settings).await;
    app.wait_until_ready().await;
    app.send(sync_account()).await;
    gate.close();
    assert!(app.saw_rabbitmq_go().await, "the relay saw RabbitMQ go");
    let spooled: Value = app.post_webhook(sync_account()).await.json().await.unwrap();
    assert_eq!(spooled["stored"], "spool");

    // The audit reads RabbitMQ directly, and this host's spool.
    let (relays, success) = audit(&app, &[]).await;
    assert!(success, "{relays:?}");
    assert_eq!(relays[0]["seen"], 1, "{relays:?}");
    assert_eq!(relays[0]["spooled_after_last"], 1, "{relays:?}");

    gate.open().await;
    assert!(
        eventually(Duration::from_secs(30), || async {
            app.depth_of_spool().await == 0
        })
        .await,
        "the spool drained once RabbitMQ is back"
    );
    let (relays, success) = audit(&app, &[]).await;
    assert!(success, "{relays:?}");
    assert_eq!(relays[0]["seen"], 2, "{relays:?}");
    assert_eq!(relays[0]["spooled_after_last"], 0, "{relays:?}");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_restarted_relay_goes_on_after_its_block_and_the_skip_is_explained() {
    let app = spawn_app(&[]).await;
    let settings = app.settings.clone();
    app.send(sync_account()).await;
    app.stop_without_cleaning().await;

    let app = spawn_app_unready(settings).await;
    app.wait_until_ready().await;
    app.send(sync_account()).await;
    // The restart's note is in the history once the relay has written it.
    let explained = eventually(Duration::from_secs(30), || async {
        let (relays, success) = audit(&app, &[]).await;
        success && relays[0]["gaps"][0]["fate"] == "never_handed_out"
    })
    .await;
    let (relays, _) = audit(&app, &[]).await;
    assert!(explained, "{relays:?}");
    let relay = &relays[0];
    assert_eq!(relay["seen"], 2);
    assert_eq!(relay["lost"], 0);
    let gap = &relay["gaps"][0];
    assert_eq!(gap["from"], 2, "{relay}");
    assert!(gap["to"].as_u64().unwrap() >= 2, "{relay}");
    assert_eq!(relay["gaps"].as_array().unwrap().len(), 1, "{relay}");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_quarantined_body_the_history_missed_is_stored_again_and_audits_clean() {
    // The history stream deleted (an operator's mistake): a quarantined
    // body reaches its queue, but its copy for the history is returned. The
    // relay's topology check (here every second) declares the stream again.
    let app = spawn_app(&[("HOOKRELAY__AMQP__TOPOLOGY_CHECK_SECS", "1")]).await;
    app.delete_queue(app.topology.history_stream().unwrap())
        .await;

    let id = app.send_invalid(r#"{"hook":"SyncAccount"}"#).await;

    let in_the_history = eventually(Duration::from_secs(30), || async {
        let listed = app.run(&["events", "--json"]).await;
        listed.status.success() && String::from_utf8_lossy(&listed.stdout).contains(&id)
    })
    .await;
    assert!(in_the_history, "the quarantined body reaches the history");
    assert!(
        eventually(Duration::from_secs(30), || async {
            app.depth_of_spool().await == 0
        })
        .await
    );
    let (relays, success) = audit(&app, &[]).await;
    assert!(success, "nothing lost: {relays:?}");
    assert!(relays.iter().all(|relay| relay["lost"] == 0), "{relays:?}");
    app.stop().await.unwrap();
}
