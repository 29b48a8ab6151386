//! `hookrelay::consumer` against the real RabbitMQ: retries through the retry
//! tiers, dead-lettering past the last one, a crash mid-message.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hookrelay::config::{QueueSettings, QueueType};
use hookrelay::consumer::{self, Consumer, Incoming, Outcome};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::helpers::{TestApp, eventually, spawn_app_unready, sync_error, test_settings};

/// What the handler saw: attempt number and when.
type Seen = Arc<Mutex<Vec<(u32, Instant, Incoming)>>>;

/// A relay whose queue `<exchange>.reprompt` has retry tiers of `delays`.
async fn relay(kind: QueueType, delays: &[Duration]) -> (TestApp, QueueSettings) {
    relay_bound(&[], "sync.error.#", kind, delays).await
}

/// A relay with `env`, whose queue `<exchange>.reprompt` is bound to `pattern`.
async fn relay_bound(
    env: &[(&str, &str)],
    pattern: &str,
    kind: QueueType,
    delays: &[Duration],
) -> (TestApp, QueueSettings) {
    let mut settings = test_settings(env);
    let name = format!("{}.reprompt", settings.amqp.exchange);
    let mut queue = QueueSettings::new(&name, &[pattern], kind);
    // What the relay announces is bound on its own exchange.
    if pattern.starts_with("account.") {
        queue.changes = std::mem::take(&mut queue.bindings);
    }
    queue.retry = delays.to_vec();
    settings.queues = vec![queue.clone()];
    let app = spawn_app_unready(settings).await;
    app.wait_until_ready().await;
    (app, queue)
}

/// Runs a consumer of `queue` whose handler answers `decide(attempt)`, and
/// records what it saw; stops when the sender is dropped or fires.
fn consume(
    app: &TestApp,
    queue: &QueueSettings,
    decide: impl Fn(u32) -> Outcome + Send + Sync + 'static,
) -> (Seen, oneshot::Sender<()>, JoinHandle<anyhow::Result<()>>) {
    let settings = consumer::settings(&app.settings, &queue.name).unwrap();
    run_recording(Consumer::new(settings).prefetch(4), decide)
}

/// Runs `consumer` with a handler that records what it saw and answers
/// `decide(attempt)`; stops when the sender is dropped or fires.
fn run_recording(
    consumer: Consumer,
    decide: impl Fn(u32) -> Outcome + Send + Sync + 'static,
) -> (Seen, oneshot::Sender<()>, JoinHandle<anyhow::Result<()>>) {
    let seen: Seen = Arc::default();
    let (stop, stopped) = oneshot::channel::<()>();
    let recorded = seen.clone();
    let decide = Arc::new(decide);
    let running = tokio::spawn(consumer.run(
        move |incoming: Incoming| {
            let (recorded, decide) = (recorded.clone(), decide.clone());
            async move {
                let attempt = incoming.attempt;
                recorded
                    .lock()
                    .unwrap()
                    .push((attempt, Instant::now(), incoming));
                decide(attempt)
            }
        },
        async {
            let _ = stopped.await;
        },
    ));
    (seen, stop, running)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handler_that_fails_twice_succeeds_on_attempt_3_after_both_delays() {
    let delays = [Duration::from_millis(300), Duration::from_millis(600)];
    let (app, queue) = relay(QueueType::Classic, &delays).await;
    let (seen, stop, running) = consume(&app, &queue, |attempt| match attempt {
        1 | 2 => Outcome::Retry,
        _ => Outcome::Ack,
    });

    let id = app.send(sync_error("LoginFailedError")).await;

    assert!(
        eventually(Duration::from_secs(15), || async {
            seen.lock().unwrap().len() == 3
        })
        .await,
        "three attempts"
    );
    let seen = seen.lock().unwrap().clone();
    let attempts: Vec<u32> = seen.iter().map(|(attempt, ..)| *attempt).collect();
    assert_eq!(attempts, [1, 2, 3]);
    assert!(seen[1].1 - seen[0].1 >= delays[0], "waited the first tier");
    assert!(seen[2].1 - seen[1].1 >= delays[1], "waited the second tier");
    for (_, _, incoming) in &seen {
        assert_eq!(incoming.message_id, id);
        assert_eq!(
            incoming.routing_key, "sync.error.LoginFailedError",
            "the first route, kept"
        );
        assert_eq!(
            incoming.event().unwrap().error_code().unwrap().as_str(),
            "LoginFailedError"
        );
    }
    let _ = stop.send(());
    running.await.unwrap().unwrap();
    assert_eq!(app.depth(&queue.name).await, 0, "acknowledged");
    assert_eq!(app.depth(app.topology.dead_letter_queue()).await, 0);
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handler_that_always_fails_leaves_the_message_dead_lettered_after_the_last_tier() {
    let delays = [Duration::from_millis(100), Duration::from_millis(100)];
    let (app, queue) = relay(QueueType::Quorum, &delays).await;
    let (seen, stop, running) = consume(&app, &queue, |_| Outcome::Retry);

    let id = app.send(sync_error("LoginFailedError")).await;

    let dead_letters = app.topology.dead_letter_queue().to_owned();
    assert!(
        eventually(Duration::from_secs(15), || async {
            app.depth(&dead_letters).await == 1
        })
        .await,
        "dead-lettered"
    );
    let attempts: Vec<u32> = seen.lock().unwrap().iter().map(|(a, ..)| *a).collect();
    assert_eq!(attempts, [1, 2, 3], "once per tier, then no more");
    let _ = stop.send(());
    running.await.unwrap().unwrap();

    // `hookrelay replay` puts it back where it died, starting again at attempt 1.
    let (seen, stop, running) = consume(&app, &queue, |_| Outcome::Ack);
    let replayed = app.run(&["replay"]).await;
    assert!(replayed.status.success(), "{replayed:?}");
    assert!(
        eventually(Duration::from_secs(10), || async {
            !seen.lock().unwrap().is_empty()
        })
        .await
    );
    let (attempt, _, incoming) = seen.lock().unwrap()[0].clone();
    assert_eq!((attempt, incoming.replays), (1, 1));
    assert_eq!(incoming.message_id, id);
    assert_eq!(
        incoming.routing_key, "sync.error.LoginFailedError",
        "the first route, kept"
    );
    let _ = stop.send(());
    running.await.unwrap().unwrap();
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_handler_that_crashes_mid_message_gets_it_again() {
    let (app, queue) = relay(QueueType::Quorum, &[]).await;
    let (seen, stop, running) = consume(&app, &queue, |attempt| {
        let crashed_before = CRASHED.swap(true, std::sync::atomic::Ordering::SeqCst);
        assert!(
            crashed_before,
            "the handler crashes on its first message (attempt {attempt})"
        );
        Outcome::Ack
    });

    let id = app.send(sync_error("LoginFailedError")).await;

    assert!(
        eventually(Duration::from_secs(10), || async {
            seen.lock().unwrap().len() == 2
        })
        .await,
        "delivered again"
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen[1].2.message_id, id);
    assert!(seen[1].2.redelivered, "RabbitMQ says it is a redelivery");
    let _ = stop.send(());
    running.await.unwrap().unwrap();
    assert_eq!(app.depth(&queue.name).await, 0);
    app.stop().await.unwrap();
}

static CRASHED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[tokio::test(flavor = "multi_thread")]
async fn a_message_that_keeps_crashing_its_consumer_ends_in_the_dead_letters() {
    let mut settings = test_settings(&[]);
    let name = format!("{}.poison", settings.amqp.exchange);
    let mut queue = QueueSettings::new(&name, &["sync.error.#"], QueueType::Quorum);
    queue.delivery_limit = 2;
    settings.queues = vec![queue.clone()];
    let app = spawn_app_unready(settings).await;
    app.wait_until_ready().await;
    let (seen, stop, running) = consume(&app, &queue, |_| panic!("a poison message"));

    app.send(sync_error("LoginFailedError")).await;

    let dead_letters = app.topology.dead_letter_queue().to_owned();
    assert!(
        eventually(Duration::from_secs(15), || async {
            app.depth(&dead_letters).await == 1
        })
        .await,
        "dead-lettered by RabbitMQ after the delivery limit"
    );
    assert_eq!(
        seen.lock().unwrap().len(),
        3,
        "the first delivery and 2 more"
    );
    let _ = stop.send(());
    running.await.unwrap().unwrap();
    let inspected = app.run(&["inspect", &dead_letters, "--json"]).await;
    let first = String::from_utf8_lossy(&inspected.stdout)
        .lines()
        .next()
        .unwrap()
        .to_owned();
    assert!(first.contains("delivery_limit in"), "{first}");
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_of_account_changes_gets_each_one_typed_once() {
    let (app, queue) = relay_bound(&[], "account.needs_reconnect", QueueType::Quorum, &[]).await;
    let (seen, stop, running) = consume(&app, &queue, |_| Outcome::Ack);

    let first = app.send(sync_error("LoginFailedError")).await;
    app.send(sync_error("LoginFailedError")).await;
    app.send(sync_error("SecurityQuestionError")).await;

    assert!(
        eventually(Duration::from_secs(15), || async {
            seen.lock().unwrap().len() == 2
        })
        .await,
        "two changes: credentials, then verification"
    );
    // Handled concurrently (prefetch 4): in the order they were caused.
    let mut seen = seen.lock().unwrap().clone();
    seen.sort_by_key(|(.., incoming)| incoming.account_change().unwrap().caused_by.clone());
    let change = seen[0].2.account_change().expect("an account change");
    assert_eq!(seen[0].2.routing_key, "account.needs_reconnect");
    assert_eq!(change.caused_by, first);
    assert_eq!(change.account_id, "acct-1");
    assert!(seen[0].2.event().is_none());
    let reasons: Vec<_> = seen
        .iter()
        .map(|(.., incoming)| {
            serde_json::to_value(incoming.account_change().unwrap().reason).unwrap()
        })
        .collect();
    assert_eq!(reasons, ["credentials", "verification"]);
    let _ = stop.send(());
    running.await.unwrap().unwrap();
    assert_eq!(app.depth(&queue.name).await, 0, "acknowledged");
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_handler_continues_the_trace_the_relay_started() {
    use opentelemetry::trace::TraceContextExt;

    let proxy_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let trusted = [("HOOKRELAY__INGRESS__TRUSTED_PROXIES", "127.0.0.1/32")];
    let (app, queue) = relay_bound(&trusted, "sync.error.#", QueueType::Classic, &[]).await;
    let (seen, stop, running) = consume(&app, &queue, |_| Outcome::Ack);
    let traceparent = format!("00-{proxy_trace}-00f067aa0ba902b7-01");
    let response = app
        .post_traced(sync_error("LoginFailedError"), &traceparent, None)
        .await;
    assert_eq!(response.status(), 200);
    assert!(
        eventually(Duration::from_secs(10), || async {
            !seen.lock().unwrap().is_empty()
        })
        .await
    );

    let trace = seen.lock().unwrap()[0].2.trace.clone();
    let span = trace.span();
    let context = span.span_context();
    assert_eq!(context.trace_id().to_string(), proxy_trace);
    assert!(
        context.is_sampled(),
        "the relay's sampling decision goes on"
    );
    drop(stop);
    running.await.unwrap().unwrap();
    app.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_given_only_an_address_and_a_queue_finds_its_retry_tiers() {
    // What `hookrelay-consumer` alone is given: no relay configuration.
    let mut settings = test_settings(&[]);
    let name = format!("{}.reprompt", settings.amqp.exchange);
    let mut own = consumer::Settings::new(settings.amqp.uri[0].expose(), &name);
    own.exchange.clone_from(&settings.amqp.exchange);
    // Started before the relay declares its queue: it keeps trying until it can.
    let (seen, stop, running) = run_recording(Consumer::new(own), |attempt| match attempt {
        1 => Outcome::Retry,
        _ => Outcome::Ack,
    });

    let mut queue = QueueSettings::new(&name, &["sync.error.#"], QueueType::Classic);
    queue.retry = vec![Duration::from_millis(100)];
    settings.queues = vec![queue];
    let app = spawn_app_unready(settings).await;
    app.wait_until_ready().await;
    let id = app.send(sync_error("LoginFailedError")).await;

    assert!(
        eventually(Duration::from_secs(30), || async {
            seen.lock().unwrap().len() == 2
        })
        .await,
        "handled once the relay declared the queue, and retried through the tier it learned"
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.iter()
            .map(|(attempt, ..)| *attempt)
            .collect::<Vec<_>>(),
        [1, 2]
    );
    assert!(
        seen.iter()
            .all(|(_, _, incoming)| incoming.message_id == id)
    );
    let _ = stop.send(());
    running.await.unwrap().unwrap();
    assert_eq!(app.depth(&name).await, 0, "acknowledged");
    app.stop().await.unwrap();
}
