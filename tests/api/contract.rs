//! The event contract against real messages: every kind a consumer can meet
//! (an event as published, from a quorum queue, a dead letter, a replayed
//! dead letter, a copy back from a retry tier, an event replayed from the
//! history to a queue and to the exchange, a body redriven from the
//! quarantine) is read into `hookrelay::wire::contract`'s types, from which
//! `docs/asyncapi.yaml` is generated (a unit test holds the two equal). Both
//! ways: no header outside the contract, and no header of the relay's in the
//! contract that no real message carried. Every replayed one keeps its
//! original route.

use std::collections::BTreeSet;
use std::time::Duration;

use hookrelay::config::{QueueSettings, QueueType};
use hookrelay::wire::account::{AccountChange, AccountHeaders, AccountProperties, HEADERS};
use hookrelay::wire::contract::{Headers, Hook, Payload, Properties, required_headers};
use hookrelay::wire::headers::RABBITMQS;
use hookrelay::wire::retry::retry_headers;
use lapin::message::BasicGetMessage;
use lapin::options::{BasicGetOptions, BasicNackOptions};
use serde_json::{Value, json};

use crate::helpers::{
    TestApp, eventually, spawn_app_unready, sync_account, sync_error, test_settings,
};

/// Reads `message` into the contract, saying what does not fit; returns the
/// header names it carried.
fn fits(kind: &str, message: &BasicGetMessage) -> BTreeSet<String> {
    let properties = &message.delivery.properties;
    let headers = hookrelay::watch::render::headers(properties.headers().as_ref());
    let parsed: Headers = serde_json::from_value(headers.clone())
        .unwrap_or_else(|err| panic!("{kind}: headers outside the contract: {err}\n{headers}"));
    for required in required_headers(parsed.hook) {
        assert!(
            headers.get(required).is_some(),
            "{kind}: a {:?} without `{required}`: {headers}",
            parsed.hook
        );
    }
    if parsed.hook == Hook::SyncAccount {
        assert!(headers.get("error").is_none() && headers.get("x-error-known").is_none());
    }
    let props = properties_json(properties);
    let _: Properties = serde_json::from_value(props.clone())
        .unwrap_or_else(|err| panic!("{kind}: properties outside the contract: {err}\n{props}"));
    let id = props["message_id"].as_str().unwrap_or_default();
    let version = id.as_bytes().get(14).copied();
    assert_eq!(version, Some(b'7'), "{kind}: a UUIDv7 message_id: {id}");
    let _: Payload = serde_json::from_slice(&message.delivery.data)
        .unwrap_or_else(|err| panic!("{kind}: a body outside the contract: {err}"));
    headers
        .as_object()
        .map(|h| h.keys().cloned().collect())
        .unwrap_or_default()
}

/// The basic properties the contract describes, as JSON.
fn properties_json(properties: &lapin::BasicProperties) -> Value {
    json!({
        "message_id": properties.message_id().as_ref().map(std::string::ToString::to_string),
        "timestamp": properties.timestamp(),
        "content_type": properties.content_type().as_ref().map(std::string::ToString::to_string),
        "app_id": properties.app_id().as_ref().map(std::string::ToString::to_string),
        "delivery_mode": properties.delivery_mode(),
    })
}

/// A replayed message keeps the route the relay first gave it, whichever way
/// it travelled: consumers dispatch on it.
fn kept_its_route(kind: &str, message: &BasicGetMessage, app: &TestApp, routing_key: &str) {
    let headers = hookrelay::watch::render::headers(message.delivery.properties.headers().as_ref());
    assert_eq!(
        (
            headers["x-original-exchange"].as_str(),
            headers["x-original-routing-key"].as_str()
        ),
        (Some(app.topology.entry_exchange()), Some(routing_key)),
        "{kind}: {headers}"
    );
}

async fn taken(app: &TestApp, queue: &str, kind: &str) -> BasicGetMessage {
    app.next_message(queue)
        .await
        .unwrap_or_else(|| panic!("{kind}: nothing in {queue}"))
}

/// What a consumer's retry does with `message`: a copy into `queue`'s first
/// tier, made as the consumer library makes it; returns the copy once it is
/// back in `queue`.
async fn retried(app: &TestApp, queue: &str, message: &BasicGetMessage) -> BasicGetMessage {
    let properties = &message.delivery.properties;
    let headers = retry_headers(
        properties.headers().as_ref(),
        1,
        message.delivery.exchange.as_str(),
        message.delivery.routing_key.as_str(),
    );
    app.publish_confirmed(
        &format!("{queue}.retry.1"),
        &message.delivery.data,
        properties.clone().with_headers(headers),
    )
    .await;
    taken(app, queue, "back from a retry tier").await
}

/// What a failing consumer does with the one message waiting in `queue`:
/// rejects it. Returns the dead letter, looked at where it waits: hand it to
/// [`put_back`] once read.
async fn dead_lettered(app: &TestApp, queue: &str) -> BasicGetMessage {
    let dead_letters = app.topology.dead_letter_queue();
    assert!(holds(app, queue, 1).await, "one message in {queue}");
    app.reject_next(queue).await;
    assert!(holds(app, dead_letters, 1).await, "dead-lettered");
    app.channel
        .basic_get(dead_letters.into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .expect("the dead letter")
}

/// Whether `queue` holds `depth` messages within a few seconds.
async fn holds(app: &TestApp, queue: &str, depth: u32) -> bool {
    eventually(Duration::from_secs(10), || async {
        app.depth(queue).await == depth
    })
    .await
}

/// Puts a message looked at back where it was.
async fn put_back(message: BasicGetMessage) {
    message
        .delivery
        .acker
        .nack(BasicNackOptions {
            multiple: false,
            requeue: true,
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn every_kind_of_message_a_consumer_can_meet_matches_the_contract_both_ways() {
    // Arrange: a quorum queue with a retry tier, and a classic queue bound
    // to everything.
    // The test is also a proxy the relay trusts, to send a trace context.
    let mut settings = test_settings(&[("HOOKRELAY__INGRESS__TRUSTED_PROXIES", "127.0.0.1/32")]);
    let exchange = settings.amqp.exchange.clone();
    let (reprompt, all) = (format!("{exchange}.reprompt"), format!("{exchange}.all"));
    let mut queue = QueueSettings::new(&reprompt, &["sync.error.#"], QueueType::Quorum);
    queue.retry = vec![Duration::from_millis(100)];
    settings.queues = vec![queue, QueueSettings::new(&all, &["#"], QueueType::Classic)];
    let app = spawn_app_unready(settings).await;
    app.wait_until_ready().await;
    let mut seen = BTreeSet::new();

    // Events as published: each kind of body, one with a documented field missing.
    app.send(sync_account()).await;
    app.send(sync_error("LoginFailedError")).await;
    app.send(sync_error("BrandNewError")).await;
    app.send(r#"{"hook":"SyncAccount","user":{"id":"u-2"},"account":{"id":"a-2"}}"#)
        .await;
    // Through the trusted proxy, which started a trace with a trace state.
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let traced = app
        .post_traced(sync_account(), traceparent, Some("proxy=7"))
        .await;
    assert_eq!(traced.status(), 200);
    for n in 0..5 {
        seen.extend(fits(
            "published",
            &taken(&app, &all, &format!("published #{n}")).await,
        ));
    }

    // From a quorum queue (RabbitMQ counts deliveries there).
    seen.extend(fits(
        "from a quorum queue",
        &taken(&app, &reprompt, "quorum").await,
    ));

    // A copy back from a retry tier, made as the consumer library makes it.
    let original = taken(&app, &reprompt, "to retry").await;
    seen.extend(fits(
        "back from a retry tier",
        &retried(&app, &reprompt, &original).await,
    ));

    // A dead letter (rejected by reprompt's consumer), looked at where it
    // waits, then replayed.
    app.send(sync_error("TemporaryFailureError")).await;
    app.take_all(&all).await;
    let dead = dead_lettered(&app, &reprompt).await;
    seen.extend(fits("a dead letter", &dead));
    put_back(dead).await;
    let replayed = app.run(&["replay"]).await;
    assert!(replayed.status.success(), "{replayed:?}");
    let message = taken(&app, &reprompt, "replayed").await;
    seen.extend(fits("a replayed dead letter", &message));
    kept_its_route(
        "a replayed dead letter",
        &message,
        &app,
        "sync.error.TemporaryFailureError",
    );

    // Replayed from the history, to one queue.
    let from_history = app
        .run(&[
            "replay",
            "--from-history",
            "--routing-key",
            "sync.account",
            "--limit",
            "1",
            "--to-queue",
            &all,
        ])
        .await;
    assert!(from_history.status.success(), "{from_history:?}");
    let message = taken(&app, &all, "from history").await;
    seen.extend(fits("replayed from the history to a queue", &message));
    kept_its_route(
        "from the history to a queue",
        &message,
        &app,
        "sync.account",
    );

    // Replayed from the history to the exchange: every bound queue gets it
    // with its own routing key, and the same headers.
    let to_exchange = app
        .run(&[
            "replay",
            "--from-history",
            "--routing-key",
            "sync.error.BrandNewError",
            "--to-exchange",
        ])
        .await;
    assert!(to_exchange.status.success(), "{to_exchange:?}");
    let message = taken(&app, &all, "to the exchange").await;
    assert_eq!(
        message.delivery.routing_key.as_str(),
        "sync.error.BrandNewError"
    );
    seen.extend(fits("replayed from the history to the exchange", &message));
    kept_its_route(
        "from the history to the exchange",
        &message,
        &app,
        "sync.error.BrandNewError",
    );
    taken(&app, &reprompt, "to the exchange, reprompt's copy").await;

    // Redriven from the quarantine once it parses.
    crate::quarantine::quarantined_by_an_older_relay(
        &app,
        crate::quarantine::WITHOUT_LOGIN,
        "`user.loginName` is missing",
    )
    .await;
    let redriven = app.run(&["replay", "--from-quarantine"]).await;
    assert!(redriven.status.success(), "{redriven:?}");
    let message = taken(&app, &all, "redriven").await;
    seen.extend(fits("redriven from the quarantine", &message));
    kept_its_route(
        "redriven from the quarantine",
        &message,
        &app,
        "sync.account",
    );

    // Assert, the other way: every header of the relay's that the contract
    // names was on a real message. RabbitMQ's are checked one way only:
    // which it writes depends on its version (3.10 writes no
    // `x-last-death-*` on a first death).
    let schema: Value = serde_json::to_value(schemars::schema_for!(Headers)).unwrap();
    let named: BTreeSet<String> = schema["properties"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let never: Vec<&String> = named
        .iter()
        .filter(|h| !RABBITMQS.contains(&h.as_str()) && !seen.contains(*h))
        .collect();
    assert!(
        never.is_empty(),
        "the contract names headers no message carried: {never:?}; seen {seen:?}"
    );
    app.stop().await.unwrap();
}

/// Reads the account change `message` into the contract (closed headers,
/// properties, a body that is exactly the contract's fields), saying what
/// does not fit; returns the header names it carried.
fn fits_as_a_change(kind: &str, message: &BasicGetMessage) -> (AccountHeaders, BTreeSet<String>) {
    let properties = &message.delivery.properties;
    let headers = hookrelay::watch::render::headers(properties.headers().as_ref());
    let parsed: AccountHeaders = serde_json::from_value(headers.clone())
        .unwrap_or_else(|err| panic!("{kind}: headers outside the contract: {err}\n{headers}"));
    let props = properties_json(properties);
    let _: AccountProperties = serde_json::from_value(props.clone())
        .unwrap_or_else(|err| panic!("{kind}: properties outside the contract: {err}\n{props}"));
    let id = props["message_id"].as_str().unwrap();
    assert_eq!(id.as_bytes()[14], b'5', "{kind}: a UUIDv5 message_id: {id}");
    // Every field of the body is in the contract, and every field of the
    // contract in the body.
    let body: Value = serde_json::from_slice(&message.delivery.data).unwrap();
    let change: AccountChange = serde_json::from_value(body.clone())
        .unwrap_or_else(|err| panic!("{kind}: a body outside the contract: {err}\n{body}"));
    assert_eq!(serde_json::to_value(&change).unwrap(), body, "{kind}");
    assert!(
        !String::from_utf8_lossy(&message.delivery.data).contains("alice@example.com"),
        "{kind}: loginName in a change"
    );
    let names = headers.as_object().unwrap().keys().cloned().collect();
    (parsed, names)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_kind_of_account_change_a_consumer_can_meet_matches_the_contract_both_ways() {
    // Arrange: a consumer's quorum queue that binds account changes, with a
    // retry tier. The test is a proxy the relay trusts, with a trace state,
    // so that every header the contract names is there (`tracestate` only
    // comes from one).
    let mut settings = test_settings(&[("HOOKRELAY__INGRESS__TRUSTED_PROXIES", "127.0.0.1/32")]);
    let reconnect = format!("{}.reconnect", settings.amqp.exchange);
    let mut queue = QueueSettings::new(&reconnect, &[], QueueType::Quorum);
    queue.changes = vec!["account.#".to_owned()];
    queue.retry = vec![Duration::from_millis(100)];
    settings.queues = vec![queue];
    let app = spawn_app_unready(settings).await;
    app.wait_until_ready().await;
    let changes = app.topology.changes_exchange().to_owned();
    let mut seen = BTreeSet::new();

    let cause_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{cause_trace}-00f067aa0ba902b7-01");
    let answer = app
        .post_traced(
            sync_error("LoginFailedError"),
            &traceparent,
            Some("vendor=1"),
        )
        .await;
    assert_eq!(answer.status(), 200);
    let caused_by = answer.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // As published: exactly the headers the relay writes.
    let message = taken(&app, &reconnect, "an account change").await;
    assert_eq!(
        message.delivery.routing_key.as_str(),
        "account.needs_reconnect"
    );
    let (parsed, names) = fits_as_a_change("as published", &message);
    let relays: BTreeSet<String> = names
        .iter()
        .filter(|h| !RABBITMQS.contains(&h.as_str()))
        .cloned()
        .collect();
    assert_eq!(
        relays,
        HEADERS.iter().map(|h| (*h).to_owned()).collect(),
        "exactly the relay's headers of a change as published (and, from a quorum queue, RabbitMQ's count)"
    );
    assert_eq!(parsed.caused_by, caused_by);
    assert!(
        parsed.traceparent.contains(cause_trace),
        "the change continues its cause's trace: {}",
        parsed.traceparent
    );
    assert_eq!(parsed.tracestate.as_deref(), Some("vendor=1"));
    seen.extend(names);

    // A copy back from a retry tier, made as the consumer library makes it.
    let retried = retried(&app, &reconnect, &message).await;
    let (parsed, names) = fits_as_a_change("back from a retry tier", &retried);
    assert_eq!(parsed.travel.retry_attempt, Some(1));
    assert!(parsed.travel.death.is_some(), "it expired in the tier");
    seen.extend(names);

    // The user reconnected; the consumer fails on the news and rejects it: a
    // dead letter, looked at where it waits, then replayed to the queue it
    // died in.
    app.send(sync_account()).await;
    let dead = dead_lettered(&app, &reconnect).await;
    let (_, names) = fits_as_a_change("a dead letter", &dead);
    seen.extend(names);
    put_back(dead).await;
    let replayed = app.run(&["replay"]).await;
    assert!(replayed.status.success(), "{replayed:?}");
    let message = taken(&app, &reconnect, "a replayed dead letter").await;
    let (parsed, names) = fits_as_a_change("a replayed dead letter", &message);
    assert_eq!(parsed.travel.replay_count, Some(1));
    seen.extend(names);

    // Replayed from the history to the queue: it keeps the route the relay
    // first gave it.
    let from_history = app
        .run(&[
            "replay",
            "--from-history",
            "--routing-key",
            "account.needs_reconnect",
            "--limit",
            "1",
            "--to-queue",
            &reconnect,
        ])
        .await;
    assert!(from_history.status.success(), "{from_history:?}");
    let message = taken(&app, &reconnect, "from the history").await;
    let (parsed, names) = fits_as_a_change("replayed from the history", &message);
    assert_eq!(
        (
            parsed.travel.original_exchange.as_deref(),
            parsed.travel.original_routing_key.as_deref()
        ),
        (Some(changes.as_str()), Some("account.needs_reconnect"))
    );
    seen.extend(names);

    // Assert, the other way: every header of the relay's that the contract
    // names for a change was on a real one (RabbitMQ's depend on its version).
    let schema: Value = serde_json::to_value(schemars::schema_for!(AccountHeaders)).unwrap();
    let never: Vec<&String> = schema["properties"]
        .as_object()
        .unwrap()
        .keys()
        .filter(|h| !RABBITMQS.contains(&h.as_str()) && !seen.contains(*h))
        .collect();
    assert!(
        never.is_empty(),
        "the contract names headers no change carried: {never:?}; seen {seen:?}"
    );
    app.stop().await.unwrap();
}
