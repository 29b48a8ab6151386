//! What a full queue does, as `hookrelay declare` reports it: RabbitMQ's
//! management API tells the policies in effect, which AMQP cannot.

use hookrelay::config::{QueueSettings, QueueType};

use crate::helpers::{MANAGEMENT_URL, Policy, spawn_app_unready, test_settings};

#[tokio::test]
async fn declare_names_the_queues_that_would_refuse_events_when_full() {
    // Arrange: three quorum queues. One bounded by an operator's policy (it
    // keeps the relay's reject-publish: it would nack), one by the relay's own
    // max_length (drop-head: it sheds), one unbounded.
    let mut settings =
        test_settings(&[("HOOKRELAY__AMQP__MANAGEMENT_URL", MANAGEMENT_URL.as_str())]);
    let exchange = settings.amqp.exchange.clone();
    let name = |queue: &str| format!("{exchange}.{queue}");
    let mut bounded = QueueSettings::new(&name("bounded"), &["sync.account"], QueueType::Quorum);
    bounded.max_length = Some(10);
    settings.queues = vec![
        QueueSettings::new(&name("policed"), &["sync.error.#"], QueueType::Quorum),
        bounded,
        QueueSettings::new(&name("open"), &["sync.#"], QueueType::Quorum),
    ];
    let _policy = Policy::set(
        format!("{exchange}-maxlen"),
        &name("policed"),
        r#"{"max-length":100}"#,
    );
    let app = spawn_app_unready(settings).await;
    app.wait_until_ready().await;

    // Act
    let declared = app.run(&["declare"]).await;

    // Assert
    let (stdout, stderr) = (
        String::from_utf8_lossy(&declared.stdout),
        String::from_utf8_lossy(&declared.stderr),
    );
    assert!(declared.status.success(), "{stdout}{stderr}");
    let reported: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("pushes back:"))
        .collect();
    assert_eq!(reported.len(), 1, "{stdout}{stderr}");
    assert!(
        reported[0].contains(&format!("queue {}", name("policed")))
            && reported[0].contains("reject-publish")
            && reported[0].contains(&format!("max-length 100 (policy {exchange}-maxlen)")),
        "{stderr}"
    );
    assert!(
        stdout.contains("checked the overflow of 6 queue(s): 1 would refuse events when full"),
        "three consumer queues and the relay's own three: {stdout}"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn without_the_management_api_declare_says_policies_were_not_checked() {
    let app = crate::helpers::spawn_app(&[]).await;

    let declared = app.run(&["declare"]).await;

    assert!(declared.status.success(), "{declared:?}");
    let stdout = String::from_utf8_lossy(&declared.stdout);
    assert!(
        stdout.contains("policies not checked: set amqp.management_url"),
        "{stdout}"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_bounded_queue_sheds_its_oldest_to_the_dead_letters_and_a_replay_returns_them_to_it_alone()
 {
    // Arrange: a queue the relay bounds to two messages, and an audit queue
    // bound to the same key.
    let mut settings = test_settings(&[]);
    let exchange = settings.amqp.exchange.clone();
    let (slow, audit) = (format!("{exchange}.slow"), format!("{exchange}.audit"));
    let mut bounded = QueueSettings::new(&slow, &["sync.account"], QueueType::Quorum);
    bounded.max_length = Some(2);
    settings.queues = vec![
        bounded,
        QueueSettings::new(&audit, &["sync.#"], QueueType::Classic),
    ];
    let app = spawn_app_unready(settings).await;
    app.wait_until_ready().await;

    // Act: four events into a queue of two; its consumer then catches up.
    let mut sent = Vec::new();
    for _ in 0..4 {
        sent.push(app.send(crate::helpers::sync_account()).await);
    }
    let dead_letters = format!("{exchange}.dead-letter");
    assert!(
        crate::helpers::eventually(std::time::Duration::from_secs(10), || async {
            app.depth(&dead_letters).await == 2
        })
        .await,
        "the two oldest were shed to the dead letters"
    );
    let mut kept = Vec::new();
    for message in app.take_all(&slow).await {
        kept.push(crate::helpers::message_id(&message));
    }
    assert_eq!(kept, sent[2..], "the queue kept the newest two");
    let replayed = app
        .run(&["replay", "--from-queue", &slow, "--reason", "maxlen"])
        .await;

    // Assert: the shed ones are back in their queue, oldest first, and
    // nowhere else: audit got each event once, and no refusal happened.
    assert!(replayed.status.success(), "{replayed:?}");
    let mut returned = Vec::new();
    for message in app.take_all(&slow).await {
        returned.push(crate::helpers::message_id(&message));
    }
    assert_eq!(returned, sent[..2]);
    assert_eq!(app.depth(&audit).await, 4, "no copies anywhere else");
    assert_eq!(app.metric("hookrelay_spool_refused").await, 0.0);
    app.stop().await.unwrap();
}
