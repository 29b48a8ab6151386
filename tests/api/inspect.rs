//! `hookrelay inspect`: what is in a queue and why, without taking it.

use hookrelay::config::{QueueSettings, QueueType};
use serde_json::Value;

use crate::helpers::{
    TestApp, message_id, spawn_app, spawn_app_unready, sync_error, test_settings,
};

/// What `inspect --json` printed: the messages, then the summary.
async fn inspect(app: &TestApp, queue: &str) -> (Vec<Value>, Value) {
    let output = app.run(&["inspect", queue, "--json"]).await;
    assert!(output.status.success(), "{output:?}");
    let mut lines: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let summary = lines.pop().expect("a summary")["summary"].clone();
    (lines, summary)
}

/// The ids in `queue`, in order, taking them.
async fn drain(app: &TestApp, queue: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for message in app.take_all(queue).await {
        ids.push(message_id(&message));
    }
    ids
}

#[tokio::test]
async fn inspect_shows_quarantined_bodies_and_leaves_the_queue_as_it_was() {
    let app = spawn_app(&[]).await;
    let quarantine = app.topology.quarantine_queue().to_owned();
    let mut ids = Vec::new();
    for body in [
        r#"{"hook":"SyncAccount","user":{"id":"u1","loginName":"alice@example.com"}}"#,
        "not json",
    ] {
        let response = app.post_webhook(body).await;
        assert_eq!(response.status(), 422);
        ids.push(
            response.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }

    let (shown, summary) = inspect(&app, &quarantine).await;

    assert_eq!(summary["shown"], 2);
    assert_eq!(summary["depth"], 2);
    assert_eq!(shown[0]["message_id"], ids[0].as_str());
    assert_eq!(shown[0]["reason"], "quarantined: `account` is missing");
    assert_eq!(shown[0]["body"]["user"]["loginName"], "[redacted]");
    assert_eq!(
        shown[0]["headers"]["x-client-id"],
        crate::helpers::CLIENT_ID
    );
    assert_eq!(shown[1]["message_id"], ids[1].as_str());
    assert!(
        shown[1]["reason"]
            .as_str()
            .unwrap()
            .contains("not valid JSON"),
        "{}",
        shown[1]
    );
    assert_eq!(shown[1]["body"], "not json");
    // Twice, to be sure a look leaves everything where it was.
    let (again, _) = inspect(&app, &quarantine).await;
    assert_eq!(again.len(), 2);
    let raw = app
        .run(&["inspect", &quarantine, "--raw", "--limit", "1"])
        .await;
    let text = String::from_utf8_lossy(&raw.stdout);
    assert!(
        text.contains("alice@example.com"),
        "--raw shows the body as sent: {text}"
    );
    assert_eq!(
        drain(&app, &quarantine).await,
        ids,
        "same messages, same order"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn inspect_says_why_a_dead_letter_died() {
    let mut settings = test_settings(&[]);
    let queue = format!("{}.reprompt", settings.amqp.exchange);
    settings.queues = vec![QueueSettings::new(
        &queue.clone(),
        &["sync.error.#"],
        QueueType::Classic,
    )];
    let app = spawn_app_unready(settings).await;
    app.wait_until_ready().await;
    let id = app.send(sync_error("LoginFailedError")).await;
    app.reject_next(&queue).await;
    let dead_letters = app.topology.dead_letter_queue().to_owned();
    assert!(
        crate::helpers::eventually(std::time::Duration::from_secs(5), || async {
            app.depth(&dead_letters).await == 1
        })
        .await
    );

    let (shown, _) = inspect(&app, &dead_letters).await;

    assert_eq!(shown[0]["message_id"], id.as_str());
    assert_eq!(
        shown[0]["reason"],
        format!("rejected in {queue} (1 time)").as_str()
    );
    assert_eq!(shown[0]["routing_key"], "sync.error.LoginFailedError");
    assert_eq!(app.depth(&dead_letters).await, 1, "left in place");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn inspecting_a_queue_that_does_not_exist_fails_clearly() {
    let app = spawn_app(&[]).await;
    let output = app.run(&["inspect", "no-such-queue-here"]).await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot open queue no-such-queue-here: NOT_FOUND - no queue"),
        "{stderr}"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn inspect_warns_before_it_counts_deliveries_and_says_which_it_pushed_over_the_limit() {
    // A quorum queue whose messages are dead-lettered after two deliveries.
    let mut settings = test_settings(&[]);
    let queue = format!("{}.reprompt", settings.amqp.exchange);
    let mut reprompt = QueueSettings::new(&queue, &["sync.error.#"], QueueType::Quorum);
    reprompt.delivery_limit = 2;
    settings.queues = vec![reprompt];
    let app = spawn_app_unready(settings).await;
    app.wait_until_ready().await;
    let id = app.send(sync_error("LoginFailedError")).await;

    let mut runs = Vec::new();
    for _ in 0..3 {
        let output = app.run(&["inspect", &queue]).await;
        assert!(output.status.success(), "{output:?}");
        runs.push((
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ));
    }

    for (stdout, stderr) in &runs {
        assert!(
            stderr.contains("is a quorum queue with a delivery limit of 2"),
            "warned before: {stderr}"
        );
        assert!(stdout.contains(&id), "{stdout}");
    }
    assert!(runs[0].0.contains("deliveries=1"), "{}", runs[0].0);
    assert!(runs[1].0.contains("deliveries=2"), "{}", runs[1].0);
    assert!(
        runs[2].0.contains("OVER ITS DELIVERY LIMIT"),
        "{}",
        runs[2].0
    );
    assert!(
        runs[2]
            .1
            .contains("1 message(s) had reached their delivery limit"),
        "{}",
        runs[2].1
    );
    let dead_letters = app.topology.dead_letter_queue().to_owned();
    assert!(
        crate::helpers::eventually(std::time::Duration::from_secs(5), || async {
            app.depth(&dead_letters).await == 1
        })
        .await,
        "RabbitMQ dead-lettered it, as the third inspect said"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn the_relays_own_quorum_queues_never_lose_a_message_to_inspection() {
    // Quorum own queues have no dead-letter target: over a delivery limit, a
    // message would be dropped. Their limit is explicit and out of reach
    // (RabbitMQ 4 would otherwise give them 20).
    let app = spawn_app(&[("HOOKRELAY__AMQP__QUEUE_TYPE", "quorum")]).await;
    let quarantine = app.topology.quarantine_queue().to_owned();
    assert_eq!(app.post_webhook("not json").await.status(), 422);

    for _ in 0..25 {
        let (shown, _) = inspect(&app, &quarantine).await;
        assert_eq!(shown.len(), 1);
    }

    let arguments = crate::helpers::queue_arguments(&quarantine).await;
    assert!(
        arguments.contains("x-delivery-limit") && arguments.contains("1000000"),
        "{arguments}"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn inspect_raw_shows_the_body_as_received_duplicate_keys_included() {
    let app = spawn_app(&[]).await;
    let quarantine = app.topology.quarantine_queue().to_owned();
    let body = r#"{"hook":"SyncAccount", "hook":"SyncError","user":{"id":"u1","loginName":"alice"},"account":{"id":"a1"},"error":"LoginFailedError"}"#;
    assert_eq!(app.post_webhook(body).await.status(), 422);

    let output = app.run(&["inspect", &quarantine, "--raw"]).await;

    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains(&format!("body={body}")), "{stdout}");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn inspect_into_a_reader_that_goes_away_ends_quietly() {
    let app = spawn_app(&[]).await;
    let quarantine = app.topology.quarantine_queue().to_owned();
    for _ in 0..20 {
        assert_eq!(app.post_webhook("not json").await.status(), 422);
    }
    let mut inspect = app.command(&["inspect", &quarantine]);
    let mut child = inspect
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();

    // What `| head -1` does: read one line, then close the pipe.
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
    drop(stdout);
    let output = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();

    assert!(first.starts_with("#1 "), "{first}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{:?}: {stderr}", output.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        crate::helpers::eventually(std::time::Duration::from_secs(5), || async {
            app.depth(&quarantine).await == 20
        })
        .await,
        "everything is back in the queue"
    );
    app.stop().await.unwrap();
}
