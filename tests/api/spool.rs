//! The spool when RabbitMQ refuses one message for good (a full queue bound
//! to its routing key pushes back): it must hold up nothing else, be retried a
//! bounded number of times beside the flow, then be parked, listed and sent
//! again by the operator.

use std::time::Duration;

use hookrelay::config::{QueueSettings, QueueType};
use lapin::options::{QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::Value;

use crate::helpers::{
    TestApp, eventually, message_id, spawn_app_unready, sync_account, sync_error, test_settings,
};

const SOON: Duration = Duration::from_secs(20);

/// A relay whose `<exchange>.all` queue sees everything, and a queue that
/// makes RabbitMQ nack every `sync.error.Poison` (length 0, reject-publish).
async fn relay_with_a_poisoned_route(max_refusals: &str) -> (TestApp, String, String) {
    let mut settings = test_settings(&[("HOOKRELAY__SPOOL__MAX_REFUSALS", max_refusals)]);
    let all = format!("{}.all", settings.amqp.exchange);
    settings.queues = vec![QueueSettings::new(&all.clone(), &["#"], QueueType::Classic)];
    let app = spawn_app_unready(settings).await;
    app.wait_until_ready().await;
    let full = format!("{}.full", app.exchange());
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(0));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    app.channel
        .queue_declare(full.as_str().into(), QueueDeclareOptions::default(), args)
        .await
        .unwrap();
    app.channel
        .queue_bind(
            full.as_str().into(),
            app.exchange().into(),
            "sync.error.Poison".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    (app, all, full)
}

/// The ids in `queue`, in order, first occurrences only.
async fn distinct_ids(app: &TestApp, queue: &str) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for message in app.take_all(queue).await {
        let id = message_id(&message);
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    ids
}

#[tokio::test]
async fn a_message_rabbitmq_keeps_refusing_is_parked_and_nothing_overtakes_it() {
    let (app, all, full) = relay_with_a_poisoned_route("3").await;

    let poison = app.send(sync_error("Poison")).await; // nacked: spooled
    let first = app.send(sync_account()).await; // spooled behind it
    let second = app.send(sync_account()).await;

    assert!(
        eventually(SOON, || async {
            app.metric("hookrelay_spool_parked").await == 1.0 && app.depth_of_spool().await == 0
        })
        .await,
        "the refused message is parked and the rest drained: {}",
        app.readiness().await
    );
    // `all` got a copy of the poison at each refused attempt (the nack is
    // about the `full` queue), the first one before the others.
    assert_eq!(
        distinct_ids(&app, &all).await,
        [poison.clone(), first, second]
    );
    let ready = app.readiness().await;
    assert_eq!(ready["spool"]["parked"], 1, "{ready}");
    assert_eq!(ready["status"], "degraded", "{ready}");

    let listed = app.run(&["spool", "list", "--json"]).await;
    assert!(listed.status.success(), "{listed:?}");
    let parked: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(parked["state"], "parked");
    assert_eq!(parked["message_id"], poison.as_str());
    assert_eq!(parked["routing_key"], "sync.error.Poison");
    assert_eq!(parked["refusals"], 3);
    assert!(
        parked["last_error"].as_str().unwrap().contains("nack"),
        "{parked}"
    );

    // Fixed: the queue that refused is gone. Retry sends it again.
    app.channel
        .queue_delete(full.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    let retried = app.run(&["spool", "retry", "--all"]).await;
    assert!(retried.status.success(), "{retried:?}");
    assert!(
        eventually(SOON, || async {
            app.metric("hookrelay_spool_parked").await == 0.0 && app.depth_of_spool().await == 0
        })
        .await,
        "{}",
        app.readiness().await
    );
    assert_eq!(distinct_ids(&app, &all).await, [poison]);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn while_a_refused_message_waits_for_its_retry_the_others_go_through() {
    // Many refusals allowed: the poison stays in the refused lane for a while.
    let (app, all, full) = relay_with_a_poisoned_route("1000").await;

    let poison = app.send(sync_error("Poison")).await;
    let first = app.send(sync_account()).await;
    let second = app.send(sync_account()).await;

    assert!(
        eventually(SOON, || async {
            app.metric(r#"hookrelay_publish_refused_total{routing_key="sync.error.other"}"#)
                .await
                >= 2.0
        })
        .await,
        "the poison is retried"
    );
    let listed = app.run(&["spool", "list", "--json"]).await;
    let entries: Vec<Value> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(entries.len(), 1, "only the poison waits: {entries:?}");
    assert_eq!(entries[0]["message_id"], poison.as_str());
    assert_eq!(entries[0]["state"], "refused");
    assert!(entries[0]["retry_at"].is_string(), "{entries:?}");
    assert_eq!(
        distinct_ids(&app, &all).await,
        [poison, first, second],
        "the others were published at once, behind the poison's first copy"
    );
    let ready = app.readiness().await;
    assert_eq!(ready["status"], "degraded", "{ready}");
    assert_eq!(ready["refused"][0]["routing_key"], "sync.error.Poison");
    assert_eq!(ready["refused"][0]["waiting"], 1);
    app.channel
        .queue_delete(full.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_second_relay_on_the_same_spool_file_refuses_to_start_naming_the_holder() {
    let first = crate::helpers::spawn_app(&[]).await;
    let mut settings = test_settings(&[]);
    settings.spool.path = first.settings.spool.path.clone();

    let second = hookrelay::startup::Application::build(settings).await;

    let err = format!(
        "{:#}",
        second.err().expect("the second relay refuses to start")
    );
    assert!(
        err.contains(&first.settings.spool.path.display().to_string())
            && err.contains(&format!("pid {}", std::process::id()))
            && err.contains("publish everything twice"),
        "{err}"
    );
    first.stop().await.unwrap();
}
