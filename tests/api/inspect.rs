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
    while let Some(message) = app.next_message(queue).await {
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
