//! What is quarantined and what is not, and the way back out: documented
//! fields routing does not need are flagged, not refused; ambiguous JSON is
//! refused; `replay --from-quarantine` sends on what parses after a fix.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString};
use serde_json::Value;
use uuid::Uuid;

use crate::helpers::{TestApp, header, message_id, spawn_app, text_header};

pub(crate) const WITHOUT_LOGIN: &str =
    r#"{"hook":"SyncAccount","user":{"id":"u-1"},"account":{"id":"a-1","provider":"Wallet"}}"#;

/// The message id and reason of a webhook answered 422.
async fn quarantined(app: &TestApp, body: &str) -> (String, String) {
    let response = app.post_webhook(body).await;
    assert_eq!(response.status(), 422, "{body}");
    let answer: Value = response.json().await.unwrap();
    (
        answer["id"].as_str().unwrap().to_owned(),
        answer["message"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn an_event_without_the_fields_routing_does_not_need_is_routed_and_flagged() {
    let app = spawn_app(&[]).await;

    let id = app.send(WITHOUT_LOGIN).await;

    let message = app
        .next_message(app.topology.unrouted())
        .await
        .expect("routed, not quarantined");
    assert_eq!(message_id(&message), id);
    assert_eq!(message.delivery.routing_key.as_str(), "sync.account");
    assert_eq!(
        text_header(&message, "x-schema-warnings"),
        "user.loginName missing"
    );
    assert_eq!(
        message.delivery.data,
        WITHOUT_LOGIN.as_bytes(),
        "byte for byte"
    );
    let metric = r#"hookrelay_schema_warnings_total{field="user.loginName",problem="missing"}"#;
    assert_eq!(app.metric(metric).await, 1.0);
    assert_eq!(app.depth(app.topology.quarantine_queue()).await, 0);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_body_with_a_key_twice_is_quarantined_naming_the_key() {
    let app = spawn_app(&[]).await;
    let body = r#"{"hook":"SyncAccount","user":{"id":"u-1","loginName":"jane"},"account":{"id":"a-1","provider":"Bank"},"hook":"SyncError"}"#;

    let (id, reason) = quarantined(&app, body).await;

    assert!(reason.contains("the key `hook` appears twice"), "{reason}");
    let kept = app
        .next_message(app.topology.quarantine_queue())
        .await
        .expect("quarantined");
    assert_eq!(message_id(&kept), id);
    assert_eq!(text_header(&kept, "x-quarantine-reason"), reason);
    assert!(app.take(app.topology.unrouted()).await.is_none());
    app.stop().await.unwrap();
}

/// Publishes `body` into the quarantine queue as an older relay, with a
/// stricter rule, did: its receipt headers and the reason it gave then.
pub(crate) async fn quarantined_by_an_older_relay(
    app: &TestApp,
    body: &str,
    reason: &str,
) -> String {
    let id = Uuid::now_v7().to_string();
    let mut headers = FieldTable::default();
    for (key, value) in [
        ("x-client-id", crate::helpers::CLIENT_ID),
        ("x-source-ip", "52.60.234.183"),
        ("x-received-at", "2026-11-27T10:00:00.000Z"),
        ("x-quarantine-reason", reason),
    ] {
        headers.insert(key.into(), AMQPValue::LongString(LongString::from(value)));
    }
    app.publish_confirmed(
        app.topology.quarantine_queue(),
        body.as_bytes(),
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(id.as_str().into())
            .with_headers(headers),
    )
    .await;
    id
}

#[tokio::test]
async fn replay_from_quarantine_sends_on_what_parses_now_and_keeps_the_rest_in_order() {
    let app = spawn_app(&[]).await;
    let quarantine = app.topology.quarantine_queue().to_owned();
    let relaxed =
        quarantined_by_an_older_relay(&app, WITHOUT_LOGIN, "`user.loginName` is missing").await;
    let (still_bad, _) = quarantined(
        &app,
        r#"{"hook":"SyncLater","user":{"id":"u"},"account":{"id":"a"}}"#,
    )
    .await;
    let no_receipt = Uuid::now_v7().to_string();
    app.publish_confirmed(
        &quarantine,
        WITHOUT_LOGIN.as_bytes(),
        BasicProperties::default().with_message_id(no_receipt.as_str().into()),
    )
    .await;

    let dry = app
        .run(&["replay", "--from-quarantine", "--dry-run", "--json"])
        .await;
    assert!(dry.status.success(), "{dry:?}");
    let listed: Vec<Value> = String::from_utf8_lossy(&dry.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(listed[0]["action"], "would_redrive");
    assert_eq!(listed[0]["message_id"], relaxed.as_str());
    assert_eq!(listed[0]["routing_key"], "sync.account");
    assert_eq!(listed[0]["was"], "`user.loginName` is missing");
    assert_eq!(listed[1]["action"], "stays");
    assert_eq!(listed[1]["message_id"], still_bad.as_str());
    assert!(
        listed[1]["reason"]
            .as_str()
            .unwrap()
            .contains("unknown hook `SyncLater`")
    );
    assert_eq!(listed[2]["action"], "stays");
    assert!(
        listed[2]["reason"]
            .as_str()
            .unwrap()
            .contains("x-client-id"),
        "{}",
        listed[2]
    );
    assert_eq!(listed[3]["summary"]["left"], 3, "a dry run changes nothing");

    let run = app.run(&["replay", "--from-quarantine"]).await;

    assert!(run.status.success(), "{run:?}");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        stdout.contains("re-driven 1, stays 2, failed 0, left 2"),
        "{stdout}"
    );
    let sent = app
        .next_message(app.topology.unrouted())
        .await
        .expect("sent on as the event it is");
    assert_eq!(message_id(&sent), relaxed);
    assert_eq!(sent.delivery.routing_key.as_str(), "sync.account");
    assert_eq!(text_header(&sent, "x-replayed-from"), "quarantine");
    assert_eq!(
        text_header(&sent, "x-received-at"),
        "2026-11-27T10:00:00.000Z"
    );
    assert_eq!(text_header(&sent, "x-source-ip"), "52.60.234.183");
    assert_eq!(text_header(&sent, "hook"), "SyncAccount");
    assert_eq!(
        text_header(&sent, "x-schema-warnings"),
        "user.loginName missing"
    );
    assert_eq!(header(&sent, "x-quarantine-reason"), None);
    assert_eq!(sent.delivery.properties.delivery_mode(), &Some(2));
    let left: Vec<String> = [
        app.next_message(&quarantine).await.unwrap(),
        app.next_message(&quarantine).await.unwrap(),
    ]
    .iter()
    .map(message_id)
    .collect();
    assert_eq!(left, [still_bad, no_receipt], "what stays keeps its order");
    app.stop().await.unwrap();
}
