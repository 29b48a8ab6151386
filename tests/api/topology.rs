//! The topology under what operators do: watching with `tail`, a consumer
//! queue that disagrees with the configuration, the relay's own objects
//! refused or deleted at runtime. Nothing accepted may be lost, and
//! `/readyz` and `/metrics` must say what is going on.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::StreamExt;
use hookrelay::broker::Topology;
use hookrelay::broker::consumer_queue_arguments;
use hookrelay::config::{QueueSettings, QueueType};
use lapin::options::{
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::Value;

use crate::helpers::{
    TestApp, eventually, message_id, queue_types, spawn_app, spawn_app_unready, sync_account,
    sync_error, test_settings,
};

const SOON: Duration = Duration::from_secs(10);

fn consumer_queue(name: &str, binding: &str, kind: QueueType) -> QueueSettings {
    QueueSettings::new(name, &[binding], kind)
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

/// Waits for `id` to arrive in `queue`, taking the messages before it.
async fn arrives(app: &TestApp, queue: &str, id: &str) {
    let deadline = std::time::Instant::now() + SOON;
    let mut seen = Vec::new();
    // A deleted queue is back once the relay has declared it again.
    assert!(
        eventually(SOON, || app.exists(queue)).await,
        "{queue} was not declared again"
    );
    while std::time::Instant::now() < deadline {
        match app.take(queue).await {
            Some(message) => {
                seen.push(message_id(&message));
                if seen.last().map(String::as_str) == Some(id) {
                    return;
                }
            }
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    panic!(
        "{id} did not reach {queue} (saw {seen:?}); the relay says {}",
        app.readiness().await
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn watching_with_tail_changes_no_routing() {
    // Both ways tail watches: from the history stream, and (history off) from
    // a temporary queue bound to the entry fanout.
    for history in ["true", "false"] {
        // No consumer queue: a SyncAccount can only fall through to unrouted.
        let app = spawn_app(&[("HOOKRELAY__HISTORY__ENABLED", history)]).await;
        let (tail, said) = app.start_tail_saying(&["--count", "1", "--json", "#"]);
        let expected = match history {
            "true" => app.topology.history_stream().unwrap().to_owned(),
            _ => app.topology.entry_exchange().to_owned(),
        };
        assert!(said.contains(&expected), "history {history}: {said}");

        let id = app.send(sync_account()).await;

        let output = tokio::task::spawn_blocking(move || tail.wait_with_output().unwrap())
            .await
            .unwrap();
        let shown: Value = serde_json::from_slice(&output.stdout).expect("tail printed the event");
        assert_eq!(shown["message_id"], id.as_str(), "tail shows it");
        arrives(&app, app.topology.unrouted(), &id).await;
        app.stop().await.unwrap();
    }
}

#[tokio::test]
async fn a_consumer_queue_rabbitmq_refuses_is_named_and_publishing_goes_on() {
    // `reprompt` exists as a classic queue (as an earlier config declared it);
    // the configuration now says quorum, which RabbitMQ refuses.
    let mut settings = test_settings(&[]);
    let exchange = settings.amqp.exchange.clone();
    let (reprompt, balances) = (
        format!("{exchange}.reprompt"),
        format!("{exchange}.balances"),
    );
    let (connection, channel) = crate::helpers::amqp().await;
    let classic = consumer_queue(&reprompt, "sync.error.LoginFailedError", QueueType::Classic);
    let dlx = Topology::of(&settings).dead_letter_exchange().to_owned();
    channel
        .queue_declare(
            reprompt.as_str().into(),
            durable(),
            consumer_queue_arguments(&classic, &dlx),
        )
        .await
        .unwrap();
    settings.queues = vec![
        consumer_queue(&reprompt, "sync.error.LoginFailedError", QueueType::Quorum),
        consumer_queue(&balances, "sync.account", QueueType::Classic),
    ];

    let app = spawn_app_unready(settings).await;

    assert!(app.broker_ready().await, "connected despite the conflict");
    let account = app.send(sync_account()).await;
    let failure = app.send(sync_error("LoginFailedError")).await;
    assert_eq!(app.depth_of_spool().await, 0, "published, not spooled");
    arrives(&app, &balances, &account).await;
    arrives(&app, &reprompt, &failure).await; // bound, though refused
    let ready = app.readiness().await;
    assert_eq!(ready["status"], "degraded", "{ready}");
    assert_eq!(ready["broker"], "connected", "{ready}");
    let conflict = &ready["queue_conflicts"][0];
    assert_eq!(conflict["queue"], reprompt.as_str(), "{ready}");
    let reason = conflict["reason"].as_str().unwrap();
    assert!(reason.contains("PRECONDITION_FAILED"), "{reason}");
    assert!(reason.contains("inequivalent arg"), "{reason}");
    assert_eq!(
        app.metric(&format!("hookrelay_queue_conflict{{queue=\"{reprompt}\"}}"))
            .await,
        1.0
    );
    assert_eq!(
        app.metric(&format!("hookrelay_queue_conflict{{queue=\"{balances}\"}}"))
            .await,
        0.0
    );
    let _ = connection.close(200, "done".into()).await;
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_refused_object_of_the_relays_own_is_misconfigured_and_loses_nothing() {
    // The quarantine queue exists with a length limit the relay does not set.
    let settings = test_settings(&[]);
    let quarantine = Topology::of(&settings).quarantine_queue().to_owned();
    let (connection, channel) = crate::helpers::amqp().await;
    let mut limited = FieldTable::default();
    limited.insert("x-max-length".into(), AMQPValue::LongInt(10));
    channel
        .queue_declare(quarantine.as_str().into(), durable(), limited)
        .await
        .unwrap();

    let app = spawn_app_unready(settings).await;

    assert!(
        eventually(SOON, || async {
            app.readiness().await["broker"] == "misconfigured"
        })
        .await,
        "{}",
        app.readiness().await
    );
    let ready = app.readiness().await;
    assert_eq!(
        ready["status"], "degraded",
        "accepting, on the spool: {ready}"
    );
    assert!(
        ready["reason"].as_str().unwrap().contains(&quarantine),
        "{ready}"
    );
    assert_eq!(
        app.metric(r#"hookrelay_broker_state{state="misconfigured"}"#)
            .await,
        1.0
    );
    let id = app.send(sync_account()).await;
    assert_eq!(app.depth_of_spool().await, 1);

    // The operator removes the queue that disagrees; the relay recovers alone.
    channel
        .queue_delete(quarantine.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    assert!(app.broker_ready().await, "{}", app.readiness().await);
    arrives(&app, app.topology.unrouted(), &id).await;
    assert_eq!(app.readiness().await["status"], "ready");
    let _ = connection.close(200, "done".into()).await;
    app.stop().await.unwrap();
}

/// A relay whose periodic topology check is too slow to matter, so that what
/// brings a deleted object back is the relay noticing its own message returned.
/// Without history: a stream bound to the entry exchange makes every publish
/// count as routed (see `history.rs` for that case).
async fn relay_with_a_consumer_queue() -> (TestApp, String) {
    let mut settings = test_settings(&[
        ("HOOKRELAY__AMQP__TOPOLOGY_CHECK_SECS", "3600"),
        ("HOOKRELAY__HISTORY__ENABLED", "false"),
    ]);
    let queue = format!("{}.accounts", settings.amqp.exchange);
    settings.queues = vec![consumer_queue(&queue, "sync.account", QueueType::Classic)];
    let app = spawn_app_unready(settings).await;
    app.wait_until_ready().await;
    (app, queue)
}

#[tokio::test]
async fn deleting_the_quarantine_queue_at_runtime_loses_nothing() {
    let (app, _) = relay_with_a_consumer_queue().await;
    let quarantine = app.topology.quarantine_queue().to_owned();
    app.delete_queue(&quarantine).await;

    for _ in 0..2 {
        let id = app.send_invalid(r#"{"hook":"SyncAccount"}"#).await;
        arrives(&app, &quarantine, &id).await;
    }
    assert!(eventually(SOON, || async { app.depth_of_spool().await == 0 }).await);
    assert!(app.metric("hookrelay_topology_redeclared_total").await >= 1.0);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn deleting_the_unrouted_queue_at_runtime_loses_nothing() {
    let (app, _) = relay_with_a_consumer_queue().await;
    let unrouted = app.topology.unrouted().to_owned();
    app.channel
        .queue_delete(unrouted.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();

    // Nobody is bound to this code: it can only fall through to unrouted.
    for _ in 0..2 {
        let id = app.send(sync_error("NobodyWantsThis")).await;
        arrives(&app, &unrouted, &id).await;
    }
    assert!(eventually(SOON, || async { app.depth_of_spool().await == 0 }).await);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn deleting_either_exchange_at_runtime_loses_nothing() {
    for which in ["topic", "entry"] {
        let (app, accounts) = relay_with_a_consumer_queue().await;
        let exchange = match which {
            "topic" => app.topology.exchange().to_owned(),
            _ => app.topology.entry_exchange().to_owned(),
        };
        app.channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await
            .unwrap();

        // The consumer queue's binding went with a deleted topic exchange:
        // the relay declares both again.
        for _ in 0..2 {
            let id = app.send(sync_account()).await;
            arrives(&app, &accounts, &id).await;
        }
        assert!(
            eventually(SOON, || async { app.depth_of_spool().await == 0 }).await,
            "{which}"
        );
        app.stop().await.unwrap();
    }
}

#[tokio::test]
async fn the_periodic_check_restores_a_deleted_exchange_that_nothing_reports() {
    // A queue bound to the entry fanout (as `tail` is) makes every publish
    // count as routed, so deleting the topic exchange returns nothing: only
    // the relay's own check can notice.
    let mut settings = test_settings(&[("HOOKRELAY__AMQP__TOPOLOGY_CHECK_SECS", "1")]);
    let accounts = format!("{}.accounts", settings.amqp.exchange);
    settings.queues = vec![consumer_queue(
        &accounts,
        "sync.account",
        QueueType::Classic,
    )];
    let app = spawn_app_unready(settings).await;
    app.wait_until_ready().await;
    let watcher = format!("{}.watcher", app.exchange());
    let temporary = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    app.channel
        .queue_declare(watcher.as_str().into(), temporary, FieldTable::default())
        .await
        .unwrap();
    app.channel
        .queue_bind(
            watcher.as_str().into(),
            app.topology.entry_exchange().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    app.channel
        .exchange_delete(app.exchange().into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();

    assert!(
        eventually(SOON, || async {
            app.metric("hookrelay_topology_redeclared_total").await >= 1.0
        })
        .await,
        "the check found the exchange missing"
    );
    let id = app.send(sync_account()).await;
    arrives(&app, &accounts, &id).await;
    app.stop().await.unwrap();
}

#[tokio::test]
async fn on_a_cluster_the_relays_own_queues_and_retry_tiers_are_quorum() {
    // amqp.queue_type = "quorum"; a consumer queue that stays classic on
    // purpose still gets quorum retry tiers: they hold messages too.
    let mut settings = test_settings(&[("HOOKRELAY__AMQP__QUEUE_TYPE", "quorum")]);
    let exchange = settings.amqp.exchange.clone();
    let mut reprompt = consumer_queue(
        &format!("{exchange}.reprompt"),
        "sync.error.*",
        QueueType::Classic,
    );
    reprompt.retry = vec![Duration::from_secs(1)];
    settings.queues = vec![reprompt];

    let app = spawn_app_unready(settings).await;
    assert!(app.broker_ready().await, "{}", app.readiness().await);
    let id = app.send(sync_account()).await;
    arrives(&app, app.topology.unrouted(), &id).await;
    // The announcer's lease, declared once its relay has read the history.
    assert!(
        crate::helpers::eventually(Duration::from_secs(30), || async {
            app.metric("hookrelay_accounts_announcing").await == 1.0
        })
        .await
    );

    let types = queue_types(&format!("{exchange}.")).await;
    let expected = [
        (format!("{exchange}.announcer"), "quorum"),
        (format!("{exchange}.dead-letter"), "quorum"),
        (format!("{exchange}.history"), "stream"),
        (format!("{exchange}.quarantine"), "quorum"),
        (format!("{exchange}.reprompt"), "classic"),
        (format!("{exchange}.reprompt.retry.1"), "quorum"),
        (format!("{exchange}.unrouted"), "quorum"),
    ];
    let expected = expected
        .iter()
        .map(|(name, kind)| (name.clone(), (*kind).to_owned()))
        .collect();
    assert_eq!(types, expected);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn own_quorum_queues_an_earlier_version_declared_are_accepted_not_misconfigured() {
    // The quarantine queue as versions before the explicit delivery limit
    // declared it: quorum, nothing else. RabbitMQ refuses to change it.
    let settings = test_settings(&[("HOOKRELAY__AMQP__QUEUE_TYPE", "quorum")]);
    let quarantine = Topology::of(&settings).quarantine_queue().to_owned();
    let (connection, channel) = crate::helpers::amqp().await;
    let mut earlier = FieldTable::default();
    earlier.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(quarantine.as_str().into(), durable(), earlier)
        .await
        .unwrap();

    let app = spawn_app_unready(settings).await;

    assert!(app.broker_ready().await, "{}", app.readiness().await);
    assert_eq!(app.readiness().await["status"], "ready");
    assert_eq!(app.post_webhook("not json").await.status(), 422);
    assert_eq!(app.depth(&quarantine).await, 1, "it is used as it is");
    let _ = connection.close(200, "done".into()).await;
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn with_many_publishes_in_flight_every_return_fails_its_own_publish() {
    // Without the history (which takes every publish) and with the unrouted
    // queue deleted, RabbitMQ returns an event no queue is bound to. It
    // confirms many publishes with one `ack multiple`, and lapin hands a
    // return to whichever of them it completes first: the relay must match
    // each return to its own webhook, so that none is answered 200 while no
    // queue holds it. The events that are routed go to a transient queue,
    // which RabbitMQ confirms at once, as it does a return: so both kinds
    // share the same `ack multiple`. (The relay declares the unrouted queue
    // again at the first return: each round has a moment of returns.)
    let (app, _) = relay_with_a_consumer_queue().await;
    let routed = app.bind_queue(&["sync.error.Routed"]).await;
    let unrouted = app.topology.unrouted().to_owned();
    for round in 0..3 {
        app.delete_queue(&unrouted).await;
        let accepted = burst_of_routed_and_unbound(&app, round).await;
        assert!(eventually(SOON, || app.exists(&unrouted)).await);
        // Each in its queue, sooner or later: a returned one is stored again
        // from the spool once the unrouted queue is back.
        let (mut delivered, mut fell_through) = (HashSet::new(), HashSet::new());
        let missing = |delivered: &HashSet<String>, fell_through: &HashSet<String>| {
            accepted
                .iter()
                .filter(|(bound, id)| match bound {
                    true => !delivered.contains(id),
                    false => !fell_through.contains(id),
                })
                .cloned()
                .collect::<Vec<_>>()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut lost = missing(&delivered, &fell_through);
        while !lost.is_empty() && std::time::Instant::now() < deadline {
            delivered.extend(app.take_all(&routed).await.iter().map(message_id));
            fell_through.extend(app.take_all(&unrouted).await.iter().map(message_id));
            lost = missing(&delivered, &fell_through);
            if !lost.is_empty() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        assert!(
            lost.is_empty(),
            "round {round}: answered 200 and in no queue: {lost:?}; the relay says {}",
            app.readiness().await
        );
    }
    assert!(
        app.metric("hookrelay_topology_redeclared_total").await >= 3.0,
        "RabbitMQ returned some in every round"
    );
    app.stop().await.unwrap();
}

/// 400 webhooks, 64 in flight, every other one to a key no queue is bound
/// to: whether each went to a bound key, and its id.
async fn burst_of_routed_and_unbound(app: &TestApp, round: usize) -> Vec<(bool, String)> {
    let webhook = |i: usize| {
        let code = ["Routed", "NobodyWantsThis"][i % 2];
        format!(
            r#"{{"hook":"SyncError","user":{{"id":"u-{round}-{i}"}},"account":{{"id":"a-{i}","provider":"First Bank"}},"error":"{code}"}}"#
        )
    };
    futures_util::stream::iter(0..400)
        .map(|i| async move {
            let answer = app.post_webhook(webhook(i)).await;
            assert_eq!(answer.status(), 200, "webhook {i}");
            let id = answer.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned();
            (i % 2 == 0, id)
        })
        .buffer_unordered(64)
        .collect()
        .await
}
