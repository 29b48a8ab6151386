//! Traces through the queue: the relay's spans reach an OTLP receiver (one
//! inside the test) with the right parents and attributes, and the published
//! message's `traceparent` is the publish span, in the same trace; a
//! `traceparent` is continued only from a trusted proxy.

use std::sync::{Arc, Mutex};

use actix_web::{App, HttpResponse, HttpServer, web};
use serde_json::Value;

use crate::helpers::{spawn_app, sync_account, text_header};

/// What a trusted proxy started: a trace the relay must continue.
const PROXY_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PROXY_SPAN: &str = "00f067aa0ba902b7";

type Received = Arc<Mutex<Vec<Value>>>;

/// An OTLP/HTTP receiver: keeps every JSON body posted to `/v1/traces`.
async fn otlp_receiver() -> (String, Received, actix_web::dev::ServerHandle) {
    let received: Received = Arc::default();
    let kept = web::Data::new(received.clone());
    let server = HttpServer::new(move || {
        App::new().app_data(kept.clone()).route(
            "/v1/traces",
            web::post().to(|body: web::Bytes, kept: web::Data<Received>| async move {
                let export: Value = serde_json::from_slice(&body).expect("OTLP JSON");
                kept.lock().unwrap().push(export);
                HttpResponse::Ok().json(serde_json::json!({}))
            }),
        )
    })
    .workers(1)
    .disable_signals()
    .bind("127.0.0.1:0")
    .unwrap();
    let address = format!("http://{}", server.addrs()[0]);
    let server = server.run();
    let handle = server.handle();
    tokio::spawn(server);
    (address, received, handle)
}

/// Every span received, flattened out of resource and scope.
fn spans(received: &Received) -> Vec<Value> {
    received
        .lock()
        .unwrap()
        .iter()
        .flat_map(|export| {
            export["resourceSpans"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .flat_map(|resource| {
            resource["scopeSpans"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .flat_map(|scope| scope["spans"].as_array().cloned().unwrap_or_default())
        .collect()
}

fn attribute(span: &Value, key: &str) -> Option<Value> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| a["value"].clone())
}

fn text_attribute(span: &Value, key: &str) -> String {
    attribute(span, key)
        .and_then(|value| value["stringValue"].as_str().map(str::to_owned))
        .unwrap_or_else(|| panic!("no {key} in {span}"))
}

#[tokio::test]
async fn a_webhooks_spans_are_exported_and_its_message_continues_the_trace() {
    let (endpoint, received, receiver) = otlp_receiver().await;
    let app = spawn_app(&[
        ("HOOKRELAY__TELEMETRY__OTLP_ENDPOINT", endpoint.as_str()),
        // The test is the trusted proxy in front of the relay.
        ("HOOKRELAY__INGRESS__TRUSTED_PROXIES", "127.0.0.1/32"),
    ])
    .await;
    let queue = app.bind_queue(&["sync.#"]).await;
    let traceparent = format!("00-{PROXY_TRACE}-{PROXY_SPAN}-01");
    let response = app
        .post_traced(sync_account(), &traceparent, Some("proxy=7"))
        .await;
    assert_eq!(response.status(), 200);
    let message = app.next_message(&queue).await.expect("the event");
    let traceparent = text_header(&message, "traceparent");
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(
        parts[1], PROXY_TRACE,
        "the proxy's trace goes on: {traceparent}"
    );
    assert_eq!(parts[3], "01", "sampled: the relay recorded its spans");
    assert_eq!(text_header(&message, "tracestate"), "proxy=7");
    let exchange = app.exchange().to_owned();
    // A stop exports what is buffered.
    app.stop().await.unwrap();
    receiver.stop(true).await;

    let spans = spans(&received);
    let in_trace: Vec<&Value> = spans
        .iter()
        .filter(|s| s["traceId"] == PROXY_TRACE)
        .collect();
    let server = in_trace
        .iter()
        .find(|s| s["kind"] == 2)
        .unwrap_or_else(|| panic!("no server span in {spans:?}"));
    let producer = in_trace
        .iter()
        .find(|s| s["kind"] == 4)
        .unwrap_or_else(|| panic!("no producer span in {spans:?}"));
    assert_eq!(server["parentSpanId"], PROXY_SPAN, "under the proxy's span");
    assert_eq!(server["name"], "POST /webhooks");
    assert_eq!(
        attribute(server, "http.response.status_code").unwrap()["intValue"],
        "200"
    );
    assert_eq!(producer["parentSpanId"], server["spanId"]);
    assert_eq!(
        producer["spanId"], parts[2],
        "the message names the publish span"
    );
    assert_eq!(text_attribute(producer, "messaging.system"), "rabbitmq");
    assert_eq!(
        text_attribute(producer, "messaging.destination.name"),
        format!("{exchange}.in")
    );
    assert_eq!(
        text_attribute(producer, "messaging.rabbitmq.destination.routing_key"),
        "sync.account"
    );
    assert_eq!(
        text_attribute(producer, "messaging.message.id"),
        crate::helpers::message_id(&message)
    );
    assert_eq!(text_attribute(producer, "hookrelay.delivered"), "published");
}

#[tokio::test]
async fn an_untrusted_traceparent_is_ignored() {
    let app = spawn_app(&[]).await;
    let queue = app.bind_queue(&["sync.#"]).await;
    let traceparent = format!("00-{PROXY_TRACE}-{PROXY_SPAN}-00");
    let response = app.post_traced(sync_account(), &traceparent, None).await;
    assert_eq!(response.status(), 200);
    let message = app.next_message(&queue).await.expect("the event");
    let traceparent = text_header(&message, "traceparent");
    assert_eq!(traceparent.len(), 55, "{traceparent}");
    assert!(!traceparent.contains(PROXY_TRACE), "a trace of its own");
    assert!(
        traceparent.ends_with("-01"),
        "{traceparent}: not the sender's flags"
    );
    app.stop().await.unwrap();
}
