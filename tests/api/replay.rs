//! The dead-letter loop: a consumer rejects, RabbitMQ dead-letters, the
//! operator replays; and `tail`.

use hookrelay::config::{QueueSettings, QueueType};
use hookrelay::replay::dead_letters::{Action, Entry, ReplayOptions, Summary, replay};
use lapin::BasicProperties;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, QueueDeleteOptions};
use lapin::types::AMQPValue;
use serde_json::Value;

use crate::helpers::{
    TestApp, header, message_id, spawn_app_unready, sync_account, sync_error, test_settings,
};

/// A relay with two consumer queues bound to the same error: `reprompt` (the
/// one that fails) and `audit` (a bystander that must not see replays).
async fn two_consumers() -> (TestApp, String, String) {
    let mut settings = test_settings(&[]);
    let exchange = settings.amqp.exchange.clone();
    let reprompt = format!("{exchange}.reprompt");
    let audit = format!("{exchange}.audit");
    settings.queues = vec![
        QueueSettings::new(&reprompt.clone(), &["sync.error.*"], QueueType::Classic),
        QueueSettings::new(&audit.clone(), &["sync.error.*"], QueueType::Quorum),
    ];
    let app = spawn_app_unready(settings).await;
    app.wait_until_ready().await;
    (app, reprompt, audit)
}

impl TestApp {
    fn dead_letters(&self) -> String {
        self.topology.dead_letter_queue().to_owned()
    }

    /// Empties `queue`, returning the message ids in order.
    async fn drain(&self, queue: &str) -> Vec<String> {
        let mut ids = Vec::new();
        while let Some(message) = self
            .channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await
            .unwrap()
        {
            message
                .delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .unwrap();
            ids.push(message_id(&message));
        }
        ids
    }

    /// A dead letter for `body`: sent, then rejected from `queue`; `others` drained.
    pub(crate) async fn dead_letter(&self, body: String, queue: &str, others: &[&str]) -> String {
        let id = self.send(body).await;
        assert_eq!(self.reject_next(queue).await, id);
        for other in others {
            self.drain(other).await;
        }
        self.wait_for_depth(&self.dead_letters(), None).await;
        id
    }

    /// Waits (up to 10 s) until `queue` holds `expected` messages (or, with
    /// `None`, any).
    async fn wait_for_depth(&self, queue: &str, expected: Option<u32>) -> u32 {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let depth = self.depth(queue).await;
            if expected.map_or(depth > 0, |e| depth == e) {
                return depth;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{queue} never reached {expected:?} messages (has {depth})"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    async fn replay(&self, options: ReplayOptions) -> (Summary, Vec<Entry>) {
        let mut entries = Vec::new();
        let summary = replay(&self.settings, &options, |e| entries.push(e.clone()))
            .await
            .expect("the replay runs");
        (summary, entries)
    }
}

#[tokio::test]
async fn a_replay_returns_the_message_to_the_queue_it_died_in_only() {
    // Arrange: reprompt rejects the event, audit handled it.
    let (app, reprompt, audit) = two_consumers().await;
    let body = sync_error("LoginFailedError");
    let id = app.dead_letter(body.clone(), &reprompt, &[&audit]).await;

    // Act
    let (summary, entries) = app.replay(ReplayOptions::default()).await;

    // Assert
    assert_eq!(
        (
            summary.replayed,
            summary.skipped,
            summary.failed,
            summary.left
        ),
        (1, 0, 0, 0)
    );
    assert_eq!(entries[0].action, Action::Replayed);
    assert_eq!(entries[0].queue, reprompt);
    assert_eq!(entries[0].routing_key, "sync.error.LoginFailedError");
    assert_eq!(entries[0].reason, "rejected");
    assert_eq!(
        app.depth(&audit).await,
        0,
        "the bystander gets no duplicate"
    );
    let again = app.next_message(&reprompt).await.expect("back in reprompt");
    assert_eq!(again.delivery.data, body.as_bytes());
    assert_eq!(message_id(&again), id);
    assert_eq!(again.delivery.properties.delivery_mode(), &Some(2));
    assert_eq!(
        header(&again, "x-replay-count"),
        Some(AMQPValue::LongLongInt(1))
    );
    assert_eq!(
        header(&again, "x-death"),
        None,
        "broker-owned headers are dropped"
    );
    assert!(header(&again, "hook").is_some(), "our own headers are kept");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_second_round_trip_counts_two_replays() {
    let (app, reprompt, audit) = two_consumers().await;
    let id = app
        .dead_letter(sync_error("LoginFailedError"), &reprompt, &[&audit])
        .await;
    app.replay(ReplayOptions::default()).await;

    // The consumer is still broken: it dies again, and is replayed again.
    assert_eq!(app.reject_next(&reprompt).await, id);
    app.wait_for_depth(&app.dead_letters(), Some(1)).await;
    let (summary, entries) = app.replay(ReplayOptions::default()).await;

    assert_eq!(summary.replayed, 1);
    assert_eq!(
        entries[0].routing_key, "sync.error.LoginFailedError",
        "original key survives"
    );
    let message = app.next_message(&reprompt).await.unwrap();
    assert_eq!(message_id(&message), id);
    assert_eq!(
        header(&message, "x-replay-count"),
        Some(AMQPValue::LongLongInt(2))
    );
    assert_eq!(app.depth(&audit).await, 0);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn to_exchange_republishes_through_the_original_route() {
    let (app, reprompt, audit) = two_consumers().await;
    app.dead_letter(sync_error("LoginFailedError"), &reprompt, &[&audit])
        .await;

    let options = ReplayOptions {
        to_exchange: true,
        ..Default::default()
    };
    let (summary, _) = app.replay(options).await;

    assert_eq!(summary.replayed, 1);
    assert_eq!(app.depth(&reprompt).await, 1);
    assert_eq!(
        app.depth(&audit).await,
        1,
        "every bound queue gets it again"
    );
    let history = app.run(&["events", "--json"]).await;
    assert_eq!(
        String::from_utf8_lossy(&history.stdout).lines().count(),
        1,
        "through the topic exchange, not the entry fanout: the history holds it once"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_routing_key_filter_replays_matches_and_keeps_the_rest_in_order() {
    let (app, reprompt, audit) = two_consumers().await;
    let mut ids = Vec::new();
    for code in [
        "LoginFailedError",
        "SecurityQuestionError",
        "LoginFailedError",
        "TemporaryFailureError",
        "LoginFailedError",
    ] {
        ids.push(
            app.dead_letter(sync_error(code), &reprompt, &[&audit])
                .await,
        );
    }
    app.wait_for_depth(&app.dead_letters(), Some(5)).await;

    let options = ReplayOptions {
        routing_key: Some("sync.error.LoginFailedError".parse().unwrap()),
        ..Default::default()
    };
    let (summary, _) = app.replay(options).await;

    assert_eq!((summary.replayed, summary.skipped, summary.left), (3, 2, 2));
    assert_eq!(
        app.drain(&reprompt).await,
        [ids[0].clone(), ids[2].clone(), ids[4].clone()]
    );
    assert_eq!(
        app.drain(&app.dead_letters()).await,
        [ids[1].clone(), ids[3].clone()],
        "the others stay, in their order"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_reason_filter_leaves_other_deaths_alone() {
    let (app, reprompt, audit) = two_consumers().await;
    // An expired dead letter, from a queue with a 1 ms TTL bound to sync.account.
    let mut args = lapin::types::FieldTable::default();
    args.insert("x-message-ttl".into(), AMQPValue::LongInt(1));
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(app.topology.dead_letter_exchange().into()),
    );
    let expiring = format!("{}.expiring", app.exchange());
    app.channel
        .queue_declare(expiring.as_str().into(), Default::default(), args)
        .await
        .unwrap();
    app.channel
        .queue_bind(
            expiring.as_str().into(),
            app.exchange().into(),
            "sync.account".into(),
            Default::default(),
            Default::default(),
        )
        .await
        .unwrap();
    app.send(sync_account()).await;
    app.wait_for_depth(&app.dead_letters(), Some(1)).await;
    let rejected = app
        .dead_letter(sync_error("LoginFailedError"), &reprompt, &[&audit])
        .await;
    app.wait_for_depth(&app.dead_letters(), Some(2)).await;

    let options = ReplayOptions {
        reason: Some("rejected".into()),
        ..Default::default()
    };
    let (summary, entries) = app.replay(options).await;

    assert_eq!((summary.replayed, summary.skipped, summary.left), (1, 1, 1));
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].message_id.as_deref(), Some(rejected.as_str()));
    let left = app.next_message(&app.dead_letters()).await.unwrap();
    assert_eq!(left.delivery.routing_key.as_str(), "sync.account");
    app.channel
        .queue_delete(expiring.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    app.stop().await.unwrap();
}

#[tokio::test]
async fn limit_stops_after_n_replays() {
    let (app, reprompt, audit) = two_consumers().await;
    for _ in 0..3 {
        app.dead_letter(sync_error("LoginFailedError"), &reprompt, &[&audit])
            .await;
    }
    app.wait_for_depth(&app.dead_letters(), Some(3)).await;

    let (summary, _) = app
        .replay(ReplayOptions {
            limit: Some(2),
            ..Default::default()
        })
        .await;

    assert_eq!((summary.replayed, summary.left), (2, 1));
    assert_eq!(app.depth(&reprompt).await, 2);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_dry_run_lists_and_changes_nothing() {
    let (app, reprompt, audit) = two_consumers().await;
    let first = app
        .dead_letter(sync_error("LoginFailedError"), &reprompt, &[&audit])
        .await;
    let second = app
        .dead_letter(sync_error("SecurityQuestionError"), &reprompt, &[&audit])
        .await;
    app.wait_for_depth(&app.dead_letters(), Some(2)).await;

    let (summary, entries) = app
        .replay(ReplayOptions {
            dry_run: true,
            ..Default::default()
        })
        .await;

    assert_eq!(
        (summary.would_replay, summary.replayed, summary.left),
        (2, 0, 2)
    );
    let listed: Vec<_> = entries
        .iter()
        .map(|e| (e.action, e.message_id.clone().unwrap()))
        .collect();
    assert_eq!(
        listed,
        [
            (Action::WouldReplay, first.clone()),
            (Action::WouldReplay, second.clone())
        ]
    );
    assert!(
        entries
            .iter()
            .all(|e| e.deaths == 1 && e.died_at.is_some() && e.queue == reprompt)
    );
    assert_eq!(app.depth(&reprompt).await, 0);
    assert_eq!(app.drain(&app.dead_letters()).await, [first, second]);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_message_without_x_death_is_left_in_place_and_reported() {
    let (app, _, _) = two_consumers().await;
    app.channel
        .basic_publish(
            "".into(),
            app.dead_letters().as_str().into(),
            BasicPublishOptions::default(),
            b"{}",
            BasicProperties::default().with_message_id("stray".into()),
        )
        .await
        .unwrap();
    app.wait_for_depth(&app.dead_letters(), Some(1)).await;

    let (summary, entries) = app.replay(ReplayOptions::default()).await;

    assert_eq!((summary.replayed, summary.skipped, summary.left), (0, 1, 1));
    assert_eq!(entries[0].action, Action::NoDeathRecord);
    assert_eq!(entries[0].message_id.as_deref(), Some("stray"));
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_replay_that_cannot_be_routed_fails_and_keeps_the_message() {
    let (app, reprompt, audit) = two_consumers().await;
    app.dead_letter(sync_error("LoginFailedError"), &reprompt, &[&audit])
        .await;
    // The queue it died in is gone: the replay has nowhere to go.
    app.channel
        .queue_delete(reprompt.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();

    let (summary, entries) = app.replay(ReplayOptions::default()).await;

    assert_eq!((summary.replayed, summary.failed, summary.left), (0, 1, 1));
    assert_eq!(entries[0].action, Action::Failed);
    assert!(
        entries[0].detail.as_deref().unwrap().contains("NO_ROUTE"),
        "{entries:?}"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn the_replay_command_exits_0_on_an_empty_queue_and_1_on_a_failure() {
    let (app, reprompt, audit) = two_consumers().await;
    let empty = app.run(&["replay"]).await;
    assert!(empty.status.success(), "{empty:?}");
    assert_eq!(
        String::from_utf8_lossy(&empty.stdout).trim(),
        "replayed 0, skipped 0, failed 0, left 0"
    );

    app.dead_letter(sync_error("LoginFailedError"), &reprompt, &[&audit])
        .await;
    let dry = app.run(&["replay", "--dry-run", "--json"]).await;
    let lines: Vec<Value> = String::from_utf8_lossy(&dry.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["action"], "would_replay");
    assert_eq!(lines[1]["summary"]["would_replay"], 1);

    app.channel
        .queue_delete(reprompt.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    let failed = app.run(&["replay"]).await;
    assert!(!failed.status.success());
    assert!(
        String::from_utf8_lossy(&failed.stderr).contains("could not be replayed"),
        "{failed:?}"
    );
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn tail_prints_exactly_what_was_sent() {
    let app = crate::helpers::spawn_app(&[]).await;
    let tail = app.start_tail(&["--count", "2", "--json", "sync.#"]);

    let first = app.send(sync_account()).await;
    let second = app.send(sync_error("SecurityQuestionError")).await;

    let output = tokio::task::spawn_blocking(move || tail.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(output.status.success());
    let lines: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["message_id"], first.as_str());
    assert_eq!(lines[0]["routing_key"], "sync.account");
    assert_eq!(lines[0]["body"]["hook"], "SyncAccount");
    assert_eq!(
        lines[0]["body"]["user"]["loginName"], "[redacted]",
        "personal data"
    );
    assert_eq!(lines[1]["message_id"], second.as_str());
    assert_eq!(lines[1]["routing_key"], "sync.error.SecurityQuestionError");
    assert_eq!(lines[1]["headers"]["error"], "SecurityQuestionError");
    app.stop().await.unwrap();
}
