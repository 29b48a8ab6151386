//! The webhook path end to end: what each request gets back, and what reaches
//! RabbitMQ (and what must not).

use lapin::types::AMQPValue;
use serde_json::Value;

use crate::helpers::{
    CLIENT_ID, SENDER_IP, header, message_id, raw_status, spawn_app, sync_account, sync_error,
    text_header,
};

#[tokio::test]
async fn a_sync_account_is_published_persistent_and_byte_identical() {
    // Arrange
    let app = spawn_app(&[]).await;
    let everything = app.bind_queue(&["sync.#"]).await;
    let errors = app.bind_queue(&["sync.error.*"]).await;
    // Odd spacing and key order must survive: the body is published as received.
    let body = sync_account().replace(",", " ,\n ");

    // Act
    let response = app.post_webhook(body.clone()).await;

    // Assert
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["status"], "accepted");
    let id = answer["id"].as_str().expect("an id").to_owned();
    assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 7);

    let message = app
        .next_message(&everything)
        .await
        .expect("routed to sync.#");
    let props = &message.delivery.properties;
    assert_eq!(message.delivery.routing_key.as_str(), "sync.account");
    assert_eq!(
        message.delivery.data,
        body.as_bytes(),
        "body byte-identical"
    );
    assert_eq!(props.delivery_mode(), &Some(2), "persistent");
    assert_eq!(props.message_id().as_ref().unwrap().as_str(), id);
    assert_eq!(
        props.content_type().as_ref().unwrap().as_str(),
        "application/json"
    );
    assert_eq!(props.app_id().as_ref().unwrap().as_str(), "hookrelay");
    assert!(props.timestamp().is_some());
    assert_eq!(text_header(&message, "hook"), "SyncAccount");
    assert_eq!(text_header(&message, "user-id"), "user-1");
    assert_eq!(text_header(&message, "account-id"), "acct-1");
    assert_eq!(text_header(&message, "x-client-id"), CLIENT_ID);
    assert_eq!(text_header(&message, "x-source-ip"), "127.0.0.1");
    assert!(text_header(&message, "x-received-at").ends_with('Z'));
    assert_eq!(header(&message, "error"), None);
    let headers = format!("{:?}", props.headers());
    assert!(
        !headers.contains("alice") && !headers.contains("loginName"),
        "{headers}"
    );

    assert!(app.take(&errors).await.is_none(), "not a sync.error");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_sync_error_is_routed_by_its_code() {
    let app = spawn_app(&[]).await;
    let everything = app.bind_queue(&["sync.#"]).await;
    let errors = app.bind_queue(&["sync.error.*"]).await;

    let response = app.post_webhook(sync_error("LoginFailedError")).await;

    assert_eq!(response.status(), 200);
    let message = app
        .next_message(&errors)
        .await
        .expect("routed to sync.error.*");
    assert_eq!(
        message.delivery.routing_key.as_str(),
        "sync.error.LoginFailedError"
    );
    assert_eq!(text_header(&message, "hook"), "SyncError");
    assert_eq!(text_header(&message, "error"), "LoginFailedError");
    assert_eq!(
        header(&message, "x-error-known"),
        Some(AMQPValue::Boolean(true))
    );
    assert!(
        app.next_message(&everything).await.is_some(),
        "also matches sync.#"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn an_undocumented_error_code_is_still_routed_and_flagged() {
    let app = spawn_app(&[]).await;
    let errors = app.bind_queue(&["sync.error.*"]).await;

    let response = app.post_webhook(sync_error("BrandNewError")).await;

    assert_eq!(response.status(), 200);
    let message = app.next_message(&errors).await.expect("routed");
    assert_eq!(
        message.delivery.routing_key.as_str(),
        "sync.error.BrandNewError"
    );
    assert_eq!(
        header(&message, "x-error-known"),
        Some(AMQPValue::Boolean(false))
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn an_event_nobody_is_bound_to_lands_in_unrouted() {
    let app = spawn_app(&[]).await;
    let errors_only = app.bind_queue(&["sync.error.*"]).await;

    let response = app.post_webhook(sync_account()).await;

    assert_eq!(response.status(), 200, "kept, so accepted");
    let unrouted = app.topology.unrouted();
    let message = app.next_message(unrouted).await.expect("kept in unrouted");
    assert_eq!(message.delivery.routing_key.as_str(), "sync.account");
    assert_eq!(message.delivery.data, sync_account().as_bytes());
    assert!(app.take(&errors_only).await.is_none());
    app.stop().await.unwrap();
}

#[tokio::test]
async fn invalid_events_are_quarantined_and_answered_422() {
    let app = spawn_app(&[]).await;
    let everything = app.bind_queue(&["#"]).await;
    let quarantine = app.topology.quarantine_queue();
    let cases = [
        ("{not json", "not valid JSON"),
        (r#"{"hook":"SyncAccount"}"#, "`user` is missing"),
        (
            &sync_account().replace("SyncAccount", "SyncSomething"),
            "unknown hook",
        ),
        (&sync_error("Login.Failed.#"), "`error` must match"),
        (
            &sync_account().replace(r#""id":"user-1""#, r#""id":"""#),
            "`user.id` must not be empty",
        ),
    ];

    for (body, reason) in cases {
        let response = app.post_webhook(body).await;

        assert_eq!(response.status(), 422, "{body}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["error"], "quarantined");
        assert!(
            answer["message"].as_str().unwrap().contains(reason),
            "{answer}"
        );
        let message = app.next_message(quarantine).await.expect("quarantined");
        assert_eq!(message.delivery.data, body.as_bytes());
        assert!(text_header(&message, "x-quarantine-reason").contains(reason));
        assert_eq!(message_id(&message), answer["id"].as_str().unwrap());
        assert!(!format!("{:?}", message.delivery.properties.headers()).contains("alice"));
    }
    assert_eq!(app.depth(&everything).await, 0, "nothing was routed");
    app.stop().await.unwrap();
}

/// A request the relay must refuse, and how.
struct Refusal {
    what: &'static str,
    body: String,
    headers: Vec<(&'static str, &'static str)>,
    status: u16,
    error: &'static str,
}

#[tokio::test]
async fn refused_requests_get_their_status_and_publish_nothing() {
    let app = spawn_app(&[]).await;
    let everything = app.bind_queue(&["#"]).await;
    let json = ("content-type", "application/json");
    let id = ("x-client-id", CLIENT_ID);
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(70 * 1024));
    let case =
        |what, body: &str, headers: &[(&'static str, &'static str)], status, error| Refusal {
            what,
            body: body.to_owned(),
            headers: headers.to_vec(),
            status,
            error,
        };
    let cases = [
        case(
            "no client id",
            &sync_account(),
            &[json],
            401,
            "unauthorized",
        ),
        case(
            "wrong client id",
            &sync_account(),
            &[json, ("x-client-id", "test-clienT")],
            401,
            "unauthorized",
        ),
        case(
            "a prefix of the client id",
            &sync_account(),
            &[json, ("x-client-id", "test")],
            401,
            "unauthorized",
        ),
        case(
            "no content type",
            &sync_account(),
            &[id],
            415,
            "unsupported_media_type",
        ),
        case(
            "text/plain",
            &sync_account(),
            &[id, ("content-type", "text/plain")],
            415,
            "unsupported_media_type",
        ),
        case(
            "json look-alike",
            &sync_account(),
            &[id, ("content-type", "application/jsonp")],
            415,
            "unsupported_media_type",
        ),
        case(
            "over max_body_bytes",
            &big,
            &[json, id],
            413,
            "payload_too_large",
        ),
    ];

    for refusal in cases {
        let response = app.post(refusal.body, &refusal.headers).await;

        assert_eq!(response.status(), refusal.status, "{}", refusal.what);
        let answer: Value = response.json().await.expect("a JSON error body");
        assert_eq!(answer["error"], refusal.error, "{}", refusal.what);
        assert!(answer["message"].is_string(), "{}", refusal.what);
    }
    let quarantine = app.topology.quarantine_queue();
    assert_eq!(app.depth(&everything).await, 0);
    assert_eq!(app.depth(quarantine).await, 0);
    assert_eq!(app.depth(app.topology.unrouted()).await, 0);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn json_with_a_charset_is_accepted() {
    let app = spawn_app(&[]).await;
    let response = app
        .post(
            sync_account(),
            &[
                ("content-type", "Application/JSON; charset=utf-8"),
                ("x-client-id", CLIENT_ID),
            ],
        )
        .await;
    assert_eq!(response.status(), 200);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_declared_oversize_body_is_refused_before_it_is_read() {
    let app = spawn_app(&[]).await;
    // Announces 10 MB but sends none of it: only the header can have been read.
    let request = format!(
        "POST /webhooks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nx-client-id: {CLIENT_ID}\r\nContent-Length: 10000000\r\n\r\n"
    );

    let status = raw_status(app.public_socket(), request.as_bytes()).await;

    assert_eq!(status, 413);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn an_undeclared_oversize_chunked_body_is_refused() {
    let app = spawn_app(&[("HOOKRELAY__SERVER__MAX_BODY_BYTES", "100")]).await;
    let chunk = "x".repeat(80);
    let request = format!(
        "POST /webhooks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nx-client-id: {CLIENT_ID}\r\nTransfer-Encoding: chunked\r\n\r\n50\r\n{chunk}\r\n50\r\n{chunk}\r\n0\r\n\r\n"
    );

    let status = raw_status(app.public_socket(), request.as_bytes()).await;

    assert_eq!(status, 413);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn the_public_listener_serves_only_the_webhook_path() {
    let app = spawn_app(&[]).await;
    let url = format!("{}/webhooks", app.address);

    let get = app.http.get(&url).send().await.unwrap();
    assert_eq!(get.status(), 405);
    assert_eq!(get.headers()["allow"], "POST");
    let put = app
        .http
        .put(&url)
        .body(sync_account())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 405);
    for path in ["/", "/metrics", "/healthz", "/webhooks/extra"] {
        let response = app
            .http
            .get(format!("{}{path}", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404, "{path}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["error"], "not_found");
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn the_webhook_path_is_configurable() {
    let app = spawn_app(&[("HOOKRELAY__SERVER__WEBHOOK_PATH", "/hooks/sync")]).await;
    assert_eq!(app.post_webhook(sync_account()).await.status(), 200);
    let old = app
        .http
        .post(format!("{}/webhooks", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(old.status(), 404);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn any_of_several_client_ids_is_accepted() {
    let app = spawn_app(&[("HOOKRELAY__INGRESS__CLIENT_IDS", "first-app, second-app")]).await;
    let queue = app.bind_queue(&["#"]).await;
    for id in ["first-app", "second-app"] {
        let response = app
            .post(
                sync_account(),
                &[("content-type", "application/json"), ("x-client-id", id)],
            )
            .await;
        assert_eq!(response.status(), 200, "{id}");
        let message = app.next_message(&queue).await.unwrap();
        assert_eq!(text_header(&message, "x-client-id"), id);
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn the_sender_is_identified_through_a_trusted_proxy() {
    // The test connects from 127.0.0.1, which plays the proxy.
    let app = spawn_app(&[
        ("HOOKRELAY__INGRESS__ALLOWED_IPS", SENDER_IP),
        ("HOOKRELAY__INGRESS__TRUSTED_PROXIES", "127.0.0.1/32"),
    ])
    .await;
    let queue = app.bind_queue(&["#"]).await;
    let json = ("content-type", "application/json");
    let id = ("x-client-id", CLIENT_ID);

    let via_proxy = app
        .post(sync_account(), &[json, id, ("x-forwarded-for", SENDER_IP)])
        .await;
    assert_eq!(via_proxy.status(), 200);
    let message = app.next_message(&queue).await.unwrap();
    assert_eq!(text_header(&message, "x-source-ip"), SENDER_IP);

    // The sender's address to the left of an untrusted hop is a forgery.
    let forged = format!("{SENDER_IP}, 203.0.113.50");
    let spoofed = app
        .post(sync_account(), &[json, id, ("x-forwarded-for", &forged)])
        .await;
    assert_eq!(spoofed.status(), 403);
    let no_header = app.post(sync_account(), &[json, id]).await;
    assert_eq!(no_header.status(), 403, "the proxy itself is not allowed");
    assert_eq!(app.depth(&queue).await, 0);
    app.stop().await.unwrap();
}
