//! The private listener: liveness, readiness and metrics.

use serde_json::Value;

use crate::helpers::{spawn_app, sync_account};

#[tokio::test]
async fn health_and_readiness_while_connected() {
    let app = spawn_app(&[]).await;

    let health = app.get_admin("/healthz").await;
    assert_eq!(health.status(), 200);
    let ready = app.get_admin("/readyz").await;
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    assert_eq!(body["broker"], "connected");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn metrics_count_outcomes_and_publish_latency() {
    let app = spawn_app(&[]).await;
    assert_eq!(app.post_webhook(sync_account()).await.status(), 200);
    assert_eq!(app.post_webhook("{").await.status(), 422);
    assert_eq!(app.post(sync_account(), &[]).await.status(), 401);

    let response = app.get_admin("/metrics").await;

    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    for line in [
        r#"hookrelay_webhook_requests_total{outcome="accepted"} 1"#,
        r#"hookrelay_webhook_requests_total{outcome="quarantined"} 1"#,
        r#"hookrelay_webhook_requests_total{outcome="unauthorized"} 1"#,
        "hookrelay_publish_duration_seconds_count 2",
        "hookrelay_broker_connected 1",
    ] {
        assert!(text.contains(line), "missing `{line}` in:\n{text}");
    }
    assert!(!text.contains("alice"), "no personal data in metrics");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn the_admin_listener_does_not_serve_webhooks() {
    let app = spawn_app(&[]).await;
    let response = app
        .http
        .post(format!("{}/webhooks", app.admin_address))
        .body(sync_account())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    app.stop().await.unwrap();
}
