//! Repeats are events: every copy of a webhook the sender delivers is
//! published, except a byte-identical copy that arrives while the first is
//! still being stored on the same relay, which is stored once. For every
//! client and body, the 2xx answers equal the messages published: the sender
//! (which stops sending only after a 2xx) never loses an event to us, and a
//! consumer gets one message per 2xx.

use std::time::Duration;

use serde_json::Value;

use crate::common::gate::Gate;
use crate::helpers::{
    AMQP_URL, TestApp, eventually, spawn_app, spawn_app_unready, sync_account, sync_error,
    test_settings, text_header,
};

/// The messages `queue` holds once `expected` arrived, each its id and its
/// `x-dedup-key`; panics after 10 s.
async fn taken(app: &TestApp, queue: &str, expected: usize) -> Vec<(String, String)> {
    let arrived = eventually(Duration::from_secs(10), || async {
        app.depth(queue).await as usize >= expected
    })
    .await;
    assert!(arrived, "{} of {expected} arrived", app.depth(queue).await);
    app.take_all(queue)
        .await
        .iter()
        .map(|m| (crate::helpers::message_id(m), text_header(m, "x-dedup-key")))
        .collect()
}

#[tokio::test]
async fn a_repeated_webhook_is_published_each_time_with_the_same_dedup_key() {
    let app = spawn_app(&[]).await;
    let queue = app.bind_queue(&["#"]).await;

    // The sender's automatic retry failing again: three identical webhooks.
    let mut ids = Vec::new();
    for _ in 0..3 {
        let response = app.post_webhook(sync_error("TemporaryFailureError")).await;
        assert_eq!(response.status(), 200);
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["status"], "accepted");
        assert_eq!(answer["stored"], "rabbitmq");
        ids.push(answer["id"].as_str().unwrap().to_owned());
    }
    let other = app.send(sync_error("LoginFailedError")).await;

    let published = taken(&app, &queue, 4).await;
    let published_ids: Vec<&str> = published.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(published_ids, [&ids[0], &ids[1], &ids[2], &other]);
    assert_eq!(
        published[0].1, published[2].1,
        "a repeat has the same x-dedup-key"
    );
    assert_ne!(
        published[0].1, published[3].1,
        "another error is another key"
    );
    assert!(published.iter().all(|(_, key)| key.len() == 64));
    assert_eq!(
        app.metric(r#"hookrelay_events_total{routing_key="sync.error.TemporaryFailureError"}"#)
            .await,
        3.0
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_copy_sent_while_the_first_is_in_flight_is_stored_once_and_answered_once() {
    // RabbitMQ stalls (the gate holds every byte): the first copy's publish
    // waits for its confirm, and the sender, timing out, sends it again.
    let mut gate = Gate::closed(&AMQP_URL).await;
    gate.open().await;
    // Long enough that a loaded machine never turns the stall into a
    // confirm timeout (which would spool the first copy: still one 2xx).
    let app = spawn_app_unready(test_settings(&[
        ("HOOKRELAY__AMQP__URI", gate.uri().as_str()),
        ("HOOKRELAY__AMQP__CONFIRM_TIMEOUT_MS", "60000"),
    ]))
    .await;
    app.wait_until_ready().await;
    let queue = app.bind_queue(&["#"]).await;

    gate.freeze();
    let first = tokio::spawn({
        let (http, url) = (app.http.clone(), webhook_url(&app));
        async move { post(&http, &url, sync_account()).await }
    });
    assert!(
        eventually(Duration::from_secs(10), || async { gate.held_bytes() > 0 }).await,
        "the first copy's publish is in the air"
    );
    let retry = tokio::spawn({
        let (http, url) = (app.http.clone(), webhook_url(&app));
        async move { post(&http, &url, sync_account()).await }
    });
    // The first copy hears at once that the retry answers for it.
    let (first_status, first_answer) = first.await.unwrap();
    assert_eq!(first_status, 503, "{first_answer}");
    assert_eq!(first_answer["error"], "superseded");
    gate.thaw();

    let (retry_status, retry_answer) = retry.await.unwrap();
    assert_eq!(retry_status, 200, "{retry_answer}");
    let published = taken(&app, &queue, 1).await;
    assert_eq!(published.len(), 1, "stored once");
    assert_eq!(
        retry_answer["id"],
        published[0].0.as_str(),
        "with the first copy's id"
    );
    assert_eq!(
        app.metric(r#"hookrelay_webhook_requests_total{outcome="superseded"}"#)
            .await,
        1.0
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn in_any_interleaving_of_identical_copies_the_2xx_answers_equal_the_messages_published() {
    let app = spawn_app(&[]).await;
    let queue = app.bind_queue(&["#"]).await;
    let body = sync_error("TemporaryFailureError");

    // Bursts of copies, each started a random moment after the one before:
    // some overlap with a copy in flight, some do not.
    let mut seed: u64 = std::process::id().into();
    let mut sent = Vec::new();
    for _ in 0..8 {
        let mut burst = Vec::new();
        for _ in 0..6 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let jitter = Duration::from_micros((seed >> 33) % 3_000);
            let (http, url, body) = (app.http.clone(), webhook_url(&app), body.clone());
            burst.push(tokio::spawn(async move {
                tokio::time::sleep(jitter).await;
                post(&http, &url, body).await
            }));
        }
        for copy in burst {
            sent.push(copy.await.unwrap());
        }
    }

    let answered_2xx: Vec<&Value> = sent
        .iter()
        .filter(|(status, _)| *status == 200)
        .map(|(_, answer)| answer)
        .collect();
    for (status, answer) in &sent {
        assert!(
            *status == 200 || (*status == 503 && answer["error"] == "superseded"),
            "{status} {answer}"
        );
    }
    let published = taken(&app, &queue, answered_2xx.len()).await;
    assert_eq!(
        published.len(),
        answered_2xx.len(),
        "one message per 2xx, of {} copies",
        sent.len()
    );
    let mut answered_ids: Vec<&str> = answered_2xx
        .iter()
        .map(|answer| answer["id"].as_str().unwrap())
        .collect();
    let mut published_ids: Vec<&str> = published.iter().map(|(id, _)| id.as_str()).collect();
    answered_ids.sort_unstable();
    published_ids.sort_unstable();
    assert_eq!(answered_ids, published_ids, "each 2xx names its message");
    app.stop().await.unwrap();
}

fn webhook_url(app: &TestApp) -> String {
    format!("{}{}", app.address, app.settings.server.webhook_path)
}

async fn post(http: &reqwest::Client, url: &str, body: String) -> (u16, Value) {
    let response = http
        .post(url)
        .header("content-type", "application/json")
        .header("x-client-id", crate::helpers::CLIENT_ID)
        .body(body)
        .send()
        .await
        .expect("the relay answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}
