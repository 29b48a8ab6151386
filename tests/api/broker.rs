//! The relay and its broker over time: topology, a connection closed by
//! RabbitMQ, a broker that is down at startup, and a graceful shutdown.

use std::time::Duration;

use hookrelay::config::{QueueSettings, QueueType};
use hookrelay::startup::{Application, BROKER_TASK, DRAIN_TASK};
use lapin::options::{BasicGetOptions, BasicRejectOptions};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::common::rabbitmqctl;
use crate::helpers::{
    TestApp, message_id, queue_types, spawn_app, spawn_app_unready, sync_account, sync_error,
    test_settings,
};

fn consumer_queue(name: String, binding: &str, kind: QueueType) -> QueueSettings {
    QueueSettings::new(&name, &[binding], kind)
}

#[tokio::test]
async fn configured_queues_receive_their_events_and_dead_letter_rejects() {
    // Arrange: a classic and a quorum consumer queue, as an operator would configure.
    let mut settings = test_settings(&[]);
    let exchange = settings.amqp.exchange.clone();
    settings.queues = vec![
        consumer_queue(
            format!("{exchange}.reprompt"),
            "sync.error.LoginFailedError",
            QueueType::Classic,
        ),
        consumer_queue(
            format!("{exchange}.balances"),
            "sync.account",
            QueueType::Quorum,
        ),
    ];
    let app = spawn_app_unready(settings).await;
    app.wait_until_ready().await;
    let reprompt = format!("{exchange}.reprompt");
    let balances = format!("{exchange}.balances");

    // Act
    assert_eq!(
        app.post_webhook(sync_error("LoginFailedError"))
            .await
            .status(),
        200
    );
    assert_eq!(app.post_webhook(sync_account()).await.status(), 200);

    // Assert: each queue got its own event...
    assert_eq!(app.depth(&balances).await, 1);
    let delivery = app
        .channel
        .basic_get(reprompt.as_str().into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .expect("the login failure reached its queue");
    assert_eq!(
        delivery.delivery.routing_key.as_str(),
        "sync.error.LoginFailedError"
    );
    // ...and a consumer's reject dead-letters into <exchange>.dead-letter.
    delivery
        .delivery
        .acker
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    let dead = app
        .next_message(app.topology.dead_letter_queue())
        .await
        .expect("dead-lettered");
    assert_eq!(
        dead.delivery.data,
        sync_error("LoginFailedError").as_bytes()
    );
    let types = queue_types(app.exchange()).await;
    assert_eq!(types[&balances], "quorum");
    assert_eq!(types[&reprompt], "classic");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn declaring_the_topology_again_is_harmless() {
    let mut settings = test_settings(&[]);
    let exchange = settings.amqp.exchange.clone();
    settings.queues = vec![consumer_queue(
        format!("{exchange}.q"),
        "sync.#",
        QueueType::Quorum,
    )];
    let first = spawn_app_unready(settings.clone()).await;
    first.wait_until_ready().await;

    // A second relay (a replica, with a spool of its own) declares the same names.
    let mut replica = settings;
    replica.spool.path = test_settings(&[]).spool.path;
    let second = spawn_app_unready(replica).await;
    second.wait_until_ready().await;

    assert_eq!(second.post_webhook(sync_account()).await.status(), 200);
    assert_eq!(first.depth(&format!("{exchange}.q")).await, 1);
    let mut second = second;
    second.shutdown_relay().await.unwrap();
    first.stop().await.unwrap();
}

#[tokio::test]
async fn the_relay_reconnects_after_rabbitmq_closes_its_connection() {
    let app = spawn_app(&[]).await;
    let queue = app.bind_queue(&["#"]).await;
    assert_eq!(app.post_webhook(sync_account()).await.status(), 200);

    close_connection_named(&app.settings.amqp.connection_name()).await;

    // No restart: within a few seconds it has a new connection.
    assert!(
        reconnected(&app).await,
        "the relay did not reconnect within 15 s of losing its connection"
    );
    assert_eq!(app.post_webhook(sync_account()).await.status(), 200);
    assert_eq!(app.depth(&queue).await, 2);
    app.stop().await.unwrap();
}

/// A port where "RabbitMQ" is down: nothing listens there until `forward` runs.
async fn closed_port() -> u16 {
    let gate = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = gate.local_addr().unwrap().port();
    drop(gate);
    port
}

#[tokio::test]
async fn without_rabbitmq_webhooks_are_spooled_and_published_when_it_appears() {
    let port = closed_port().await;
    let uri = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let app = spawn_app_unready(test_settings(&[("HOOKRELAY__AMQP__URI", &uri)])).await;

    // While it is down: still ready (the spool takes writes), and webhooks are accepted.
    let ready = app.get_admin("/readyz").await;
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(ready["broker"], "disconnected");
    let mut accepted = Vec::new();
    for body in [
        sync_account(),
        sync_error("LoginFailedError"),
        sync_account(),
    ] {
        let response = app.post_webhook(body).await;
        assert_eq!(response.status(), 200, "durable on disk, so accepted");
        accepted.push(
            response.json::<Value>().await.unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let metrics = app.get_admin("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("hookrelay_spool_depth 3"), "{metrics}");
    assert!(
        metrics.contains(r#"hookrelay_webhook_requests_total{outcome="spooled"} 3"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("hookrelay_broker_connected 0"),
        "{metrics}"
    );

    // RabbitMQ "comes back": the port now forwards to the real broker.
    tokio::spawn(forward(port, crate::helpers::AMQP_URL.clone()));
    let queue = wait_for_queue_bound_after_connect(&app).await;

    // The backlog arrives in arrival order, with the ids the sender was given.
    let mut delivered = Vec::new();
    while delivered.len() < accepted.len() {
        let id = app
            .next_message(app.topology.unrouted())
            .await
            .map(|m| message_id(&m))
            .expect("the spooled webhooks reach RabbitMQ");
        delivered.push(id);
    }
    assert_eq!(delivered, accepted);
    assert_eq!(app.post_webhook(sync_account()).await.status(), 200);
    assert_eq!(
        app.depth(&queue).await,
        1,
        "new webhooks flow directly again"
    );
    let metrics = app.get_admin("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("hookrelay_spool_depth 0"), "{metrics}");
    assert!(
        metrics.contains("hookrelay_spool_drained_total 3"),
        "{metrics}"
    );
    app.stop().await.unwrap();
}

/// Waits for the relay to connect and bind a probe queue to everything.
async fn wait_for_queue_bound_after_connect(app: &TestApp) -> String {
    assert!(app.broker_ready().await, "the relay connected within 10 s");
    // The spool drains in arrival order into <exchange>.unrouted (no queue was
    // bound while RabbitMQ was away); bind a probe for what comes next.
    assert!(
        crate::helpers::eventually(Duration::from_secs(30), || async {
            app.depth_of_spool().await == 0
        })
        .await,
        "the spool drained: {}",
        app.readiness().await
    );
    app.bind_queue(&["#"]).await
}

#[tokio::test]
async fn a_dead_first_node_fails_over_to_the_next() {
    let dead = format!("amqp://guest:guest@127.0.0.1:{}/%2f", closed_port().await);
    let nodes = format!("{dead},{}", *crate::helpers::AMQP_URL);
    let app = spawn_app_unready(test_settings(&[("HOOKRELAY__AMQP__URI", &nodes)])).await;

    app.wait_until_ready().await;
    let ready = app.readiness().await;
    let second: hookrelay::config::AmqpUri = crate::helpers::AMQP_URL.parse().unwrap();
    assert_eq!(ready["node"], second.masked().as_str(), "{ready}");
    assert!(
        !ready["node"].to_string().contains(":guest@"),
        "masked: {ready}"
    );

    let queue = app.bind_queue(&["#"]).await;
    assert_eq!(app.post_webhook(sync_account()).await.status(), 200);
    assert_eq!(app.depth(&queue).await, 1);
    let metrics = app.get_admin("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("hookrelay_spool_drained_total 0"),
        "published directly: {metrics}"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn with_the_spool_disabled_an_absent_rabbitmq_means_503() {
    let port = closed_port().await;
    let uri = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let settings = test_settings(&[
        ("HOOKRELAY__AMQP__URI", &uri),
        ("HOOKRELAY__SPOOL__ENABLED", "false"),
    ]);
    let app = spawn_app_unready(settings).await;

    let ready = app.get_admin("/readyz").await;
    assert_eq!(ready.status(), 503);
    assert_eq!(
        ready.json::<Value>().await.unwrap()["broker"],
        "disconnected"
    );
    assert_eq!(
        app.get_admin("/healthz").await.status(),
        200,
        "alive all the same"
    );
    let refused = app.post_webhook(sync_account()).await;
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "5");
    let answer: Value = refused.json().await.unwrap();
    assert_eq!(answer["error"], "broker_unavailable");
    assert!(
        !answer["message"]
            .as_str()
            .unwrap()
            .contains(&port.to_string()),
        "no internals"
    );

    tokio::spawn(forward(port, crate::helpers::AMQP_URL.clone()));
    app.wait_until_ready().await;
    let queue = app.bind_queue(&["#"]).await;
    assert_eq!(app.post_webhook(sync_account()).await.status(), 200);
    assert_eq!(app.depth(&queue).await, 1);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_full_spool_answers_503_and_says_so() {
    let port = closed_port().await;
    let uri = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    // Room for one webhook and its metadata, not two.
    let settings = test_settings(&[
        ("HOOKRELAY__AMQP__URI", &uri),
        ("HOOKRELAY__SPOOL__MAX_BYTES", "700"),
    ]);
    let app = spawn_app_unready(settings).await;

    assert_eq!(app.post_webhook(sync_account()).await.status(), 200);
    let refused = app.post_webhook(sync_account()).await;

    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "5");
    assert_eq!(
        refused.json::<Value>().await.unwrap()["error"],
        "spool_full"
    );
    let metrics = app.get_admin("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"hookrelay_webhook_requests_total{outcome="spool_full"} 1"#),
        "{metrics}"
    );
    let ready = app.get_admin("/readyz").await;
    assert_eq!(
        ready.status(),
        503,
        "neither RabbitMQ nor the spool can take a webhook"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn shutdown_finishes_in_flight_webhooks_before_closing_rabbitmq() {
    let mut app = spawn_app(&[]).await;
    let queue = app.bind_queue(&["#"]).await;
    let (first_done, mut first) = tokio::sync::mpsc::channel::<()>(200);
    let mut requests = JoinSet::new();
    for n in 0..100 {
        let http = app.http.clone();
        let url = format!("{}/webhooks", app.address);
        let first_done = first_done.clone();
        // A hundred events (identical copies in flight together would be
        // stored once, and only the newest answered 200).
        let body = sync_account().replace("acct-1", &format!("acct-{n}"));
        requests.spawn(async move {
            let response = http
                .post(url)
                .header("content-type", "application/json")
                .header("x-client-id", crate::helpers::CLIENT_ID)
                .body(body)
                .send()
                .await;
            let _ = first_done.try_send(());
            match response {
                Ok(r) => Some((r.status().as_u16(), r.json::<Value>().await.ok())),
                Err(_) => None, // not accepted before the listener closed: allowed
            }
        });
    }

    // Stop while requests are still arriving.
    first.recv().await;
    app.shutdown_relay().await.expect("a clean shutdown");

    let mut accepted = Vec::new();
    while let Some(result) = requests.join_next().await {
        if let Some((status, body)) = result.unwrap() {
            assert_eq!(status, 200, "an in-flight webhook was cut short: {body:?}");
            accepted.push(body.unwrap()["id"].as_str().unwrap().to_owned());
        }
    }
    assert!(!accepted.is_empty());
    let mut delivered = Vec::new();
    for message in app.take_all(&queue).await {
        delivered.push(message_id(&message));
    }
    for id in &accepted {
        assert!(
            delivered.contains(id),
            "200 for {id}, but it never reached RabbitMQ"
        );
    }
    println!("{} accepted before shutdown, all delivered", accepted.len());
    assert!(
        !open_connections()
            .await
            .contains(&app.settings.amqp.connection_name()),
        "the relay's connection is closed"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_background_task_that_dies_stops_the_relay_with_an_error() {
    for task in [DRAIN_TASK, BROKER_TASK] {
        let settings = test_settings(&[]);
        let application = Application::build(settings.clone()).await.unwrap();

        application.crash_task_for_test(task);
        let stopped = tokio::time::timeout(
            Duration::from_secs(15),
            application.run_until_stopped(std::future::pending()),
        )
        .await
        .unwrap_or_else(|_| panic!("the relay went on without its {task}"));

        let error = stopped.expect_err("an error, so the process exits non-zero");
        assert!(error.to_string().contains(task), "{error}");
        let (connection, channel) = crate::helpers::amqp().await;
        crate::helpers::delete_topology(&channel, &settings).await;
        let _ = connection.close(200, "done".into()).await;
        if let Some(folder) = settings.spool.path.parent() {
            let _ = std::fs::remove_dir_all(folder);
        }
    }
}

#[tokio::test]
async fn a_failed_startup_leaves_no_connection_behind() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let admin = taken.local_addr().unwrap().to_string();
    let settings = test_settings(&[("HOOKRELAY__SERVER__ADMIN_LISTEN", admin.as_str())]);

    let built = Application::build(settings.clone()).await;

    let error = built.err().expect("the admin port is taken");
    assert!(
        format!("{error:#}").contains("server.admin_listen"),
        "{error:#}"
    );
    // A relay built right after it, under the same connection name, connects:
    // a stray supervisor of the failed one, with its head start, would have
    // connected too by then.
    let mut good = settings.clone();
    good.server.admin_listen = "127.0.0.1:0".parse().unwrap();
    let app = spawn_app_unready(good).await;
    app.wait_until_ready().await;
    let name = settings.amqp.connection_name();
    assert_eq!(
        open_connections().await.matches(name.as_str()).count(),
        1,
        "a failed startup left a RabbitMQ connection behind"
    );
    app.stop().await.unwrap();
}

/// Waits for the relay's second successful connection.
async fn reconnected(app: &TestApp) -> bool {
    for _ in 0..150 {
        let connects = app.metric("hookrelay_broker_connects_total").await;
        if connects == 2.0 && app.broker_ready().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// What RabbitMQ knows of its open connections (their client properties,
/// which hold their names).
async fn open_connections() -> String {
    rabbitmqctl::run_async(&[
        "list_connections",
        "--no-table-headers",
        "client_properties",
    ])
    .await
}

/// Closes, from the broker side, only the connection with this name: other
/// tests share the broker.
async fn close_connection_named(name: &str) {
    let listing = rabbitmqctl::run_async(&[
        "list_connections",
        "--no-table-headers",
        "pid",
        "client_properties",
    ])
    .await;
    let needle = format!("{{\"connection_name\",\"{name}\"}}");
    let pid = listing
        .lines()
        .find(|line| line.contains(&needle))
        .and_then(|line| line.split('\t').next())
        .unwrap_or_else(|| panic!("no connection named {name} in {listing}"))
        .to_owned();
    rabbitmqctl::run_async(&["close_connection", &pid, "test: closed by the broker"]).await;
}

/// Listens on `port` and forwards every connection to the real broker.
async fn forward(port: u16, amqp_url: String) {
    let target = broker_address(&amqp_url);
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("rebind the gate port");
    loop {
        let (mut inbound, _) = listener.accept().await.unwrap();
        let target = target.clone();
        tokio::spawn(async move {
            if let Ok(mut outbound) = TcpStream::connect(target).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

fn broker_address(amqp_url: &str) -> String {
    let uri: lapin::uri::AMQPUri = amqp_url.parse().unwrap();
    format!("{}:{}", uri.authority.host, uri.authority.port)
}

#[tokio::test]
async fn a_nacked_webhook_is_spooled_its_channel_replaced_and_it_follows_once_there_is_room() {
    // A queue that takes one message and refuses (nacks) the next: the relay
    // cannot tell this nack from a channel RabbitMQ left in a bad state, so it
    // spools the webhook and gives the channel's slot a new channel.
    let app = spawn_app(&[]).await;
    let mut one_only = lapin::types::FieldTable::default();
    one_only.insert("x-max-length".into(), lapin::types::AMQPValue::LongInt(1));
    one_only.insert(
        "x-overflow".into(),
        lapin::types::AMQPValue::LongString("reject-publish".into()),
    );
    let full = app.bind_queue_with(one_only, &["#"]).await;

    let first = app.send(sync_account()).await;
    let second = app.send(sync_account()).await;

    assert_eq!(app.depth_of_spool().await, 1, "the nacked one is spooled");
    assert!(
        crate::helpers::eventually(Duration::from_secs(5), || async {
            app.metric("hookrelay_channels_replaced_total").await >= 1.0
        })
        .await,
        "the nacked channel was replaced"
    );
    let taken = app.next_message(&full).await.expect("the first arrived");
    assert_eq!(message_id(&taken), first);
    // Retried beside the flow (after 1 s), it follows once there is room.
    let drained = app.next_message(&full).await;
    let drained = drained.expect("the spooled webhook followed once there was room");
    assert_eq!(message_id(&drained), second);
    // Deleted from the spool once its confirm is in: a moment after it arrived.
    assert!(
        crate::helpers::eventually(Duration::from_secs(5), || async {
            app.depth_of_spool().await == 0
        })
        .await
    );
    app.stop().await.unwrap();
}
