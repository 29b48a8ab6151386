//! The public listener under hostile input: forged headers, slow and greedy
//! clients, a secret path, TLS. Nothing gets in and nothing knocks it over.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{self, RootCertStore};

use crate::helpers::{
    CLIENT_ID, SENDER_IP, TestApp, raw_status, raw_webhook, spawn_app, status_over, sync_account,
};

#[tokio::test]
async fn an_unlisted_peer_cannot_get_in_with_forged_headers() {
    let app = spawn_app(&[("HOOKRELAY__INGRESS__ALLOWED_IPS", SENDER_IP)]).await;
    let queue = app.bind_queue(&["#"]).await;
    let json = ("content-type", "application/json");
    let id = ("x-client-id", CLIENT_ID);
    let forgeries: [&[(&str, &str)]; 4] = [
        &[("x-forwarded-for", SENDER_IP)],
        &[("x-real-ip", SENDER_IP)],
        &[("forwarded", "for=52.60.234.183")],
        &[
            ("x-forwarded-for", "203.0.113.1"),
            ("x-forwarded-for", SENDER_IP),
        ],
    ];

    for forged in forgeries {
        let mut headers = vec![json, id];
        headers.extend_from_slice(forged);
        let response = app.post(sync_account(), &headers).await;
        assert_eq!(response.status(), 403, "{forged:?}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["error"], "forbidden");
    }
    assert_eq!(app.depth(&queue).await, 0);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn the_source_check_comes_before_the_client_id_check() {
    let app = spawn_app(&[("HOOKRELAY__INGRESS__ALLOWED_IPS", SENDER_IP)]).await;
    // No client id, no content type: still 403, because the address is checked first.
    let response = app.post("garbage", &[]).await;
    assert_eq!(response.status(), 403);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn strangers_get_403_whatever_the_method_and_every_answer_is_counted() {
    let stranger = spawn_app(&[("HOOKRELAY__INGRESS__ALLOWED_IPS", SENDER_IP)]).await;
    let sender = spawn_app(&[]).await;
    let methods = ["GET", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "POST"];

    for method in methods {
        let request = |app: &TestApp| {
            let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            app.http
                .request(method, format!("{}/webhooks", app.address))
                .send()
        };
        let refused = request(&stranger).await.unwrap();
        assert_eq!(refused.status(), 403, "{method} from a stranger");
        if method != "POST" {
            let answered = request(&sender).await.unwrap();
            assert_eq!(answered.status(), 405, "{method} from the sender");
            assert_eq!(answered.headers()["allow"], "POST");
        }
    }

    let forbidden = r#"hookrelay_webhook_requests_total{outcome="forbidden"}"#;
    assert_eq!(stranger.metric(forbidden).await, methods.len() as f64);
    let not_allowed = r#"hookrelay_webhook_requests_total{outcome="method_not_allowed"}"#;
    assert_eq!(sender.metric(not_allowed).await, (methods.len() - 1) as f64);
    stranger.stop().await.unwrap();
    sender.stop().await.unwrap();
}

#[tokio::test]
async fn a_body_that_trickles_in_is_cut_off_with_408() {
    let app = spawn_app(&[("HOOKRELAY__SERVER__BODY_TIMEOUT_MS", "300")]).await;
    let queue = app.bind_queue(&["#"]).await;
    // Declares 100 bytes, sends 10, then nothing: a slow POST.
    let request = format!(
        "POST /webhooks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nx-client-id: {CLIENT_ID}\r\nContent-Length: 100\r\n\r\n{{\"hook\":\"S"
    );

    let started = std::time::Instant::now();
    let status = raw_status(app.public_socket(), request.as_bytes()).await;

    assert_eq!(status, 408);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "cut off promptly"
    );
    assert_eq!(app.depth(&queue).await, 0);
    let metrics = app.get_admin("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"outcome="body_timeout"} 1"#),
        "{metrics}"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn ipv4_mapped_addresses_match_ipv4_entries_both_ways() {
    // On a dual-stack listener ([::]), an IPv4 sender's peer address arrives
    // as ::ffff:127.0.0.1; the allowlist says 127.0.0.1.
    let dual_stack = spawn_app(&[("HOOKRELAY__SERVER__LISTEN", "[::]:0")]).await;
    assert_eq!(dual_stack.post_webhook(sync_account()).await.status(), 200);
    dual_stack.stop().await.unwrap();

    // And an allowlist written in mapped form admits the plain IPv4 peer.
    let mapped_entry = spawn_app(&[("HOOKRELAY__INGRESS__ALLOWED_IPS", "::ffff:127.0.0.1")]).await;
    assert_eq!(
        mapped_entry.post_webhook(sync_account()).await.status(),
        200
    );
    mapped_entry.stop().await.unwrap();

    // A mapped stranger is still a stranger.
    let stranger = spawn_app(&[
        ("HOOKRELAY__SERVER__LISTEN", "[::]:0"),
        ("HOOKRELAY__INGRESS__ALLOWED_IPS", SENDER_IP),
    ])
    .await;
    assert_eq!(stranger.post_webhook(sync_account()).await.status(), 403);
    stranger.stop().await.unwrap();
}

#[tokio::test]
async fn a_stranger_is_refused_and_disconnected() {
    let app = spawn_app(&[("HOOKRELAY__INGRESS__ALLOWED_IPS", SENDER_IP)]).await;
    let mut stream = TcpStream::connect(app.public_socket()).await.unwrap();
    // No body and keep-alive: nothing would stop the connection being reused.
    let request = raw_webhook("/webhooks", "").replace("Connection: close", "X: y");

    let status = status_over(&mut stream, request.as_bytes()).await;

    assert_eq!(status, 403);
    // The stranger cannot keep the connection for another try.
    let mut rest = Vec::new();
    // (Sooner than keep_alive_secs, after which any idle connection is closed.)
    let read = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the relay closed the connection");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn too_many_headers_or_header_bytes_get_431() {
    let app = spawn_app(&[
        ("HOOKRELAY__SERVER__MAX_HEADERS", "20"),
        ("HOOKRELAY__SERVER__MAX_HEADER_BYTES", "2048"),
    ])
    .await;
    let queue = app.bind_queue(&["#"]).await;
    let json = ("content-type", "application/json");
    let id = ("x-client-id", CLIENT_ID);
    let names: Vec<String> = (0..30).map(|i| format!("x-filler-{i}")).collect();
    let many: Vec<(&str, &str)> = names.iter().map(|name| (name.as_str(), "1")).collect();
    let long = "a".repeat(4096);

    let too_many = [vec![json, id], many].concat();
    let too_long = vec![json, id, ("x-filler", long.as_str())];
    for headers in [too_many, too_long] {
        let response = app.post(sync_account(), &headers).await;
        assert_eq!(response.status(), 431);
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["error"], "headers_too_large");
    }

    assert_eq!(app.post_webhook(sync_account()).await.status(), 200);
    assert_eq!(app.depth(&queue).await, 1, "only the ordinary request");
    let metrics = app.get_admin("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(r#"outcome="headers_too_large"} 2"#),
        "{metrics}"
    );
    app.stop().await.unwrap();
}

/// Opens `count` connections that never send a byte.
async fn idle_connections(app: &TestApp, count: usize) -> Vec<TcpStream> {
    let mut idle = Vec::with_capacity(count);
    for _ in 0..count {
        idle.push(TcpStream::connect(app.public_socket()).await.unwrap());
    }
    idle
}

/// A relay with one HTTP worker and room for `max` connections, every one of
/// them taken by someone who says nothing.
async fn full_of_idle_connections(
    max: usize,
    header_timeout_ms: &str,
) -> (TestApp, Vec<TcpStream>) {
    let max_connections = max.to_string();
    let app = spawn_app(&[
        ("HOOKRELAY__SERVER__WORKERS", "1"),
        (
            "HOOKRELAY__SERVER__MAX_CONNECTIONS",
            max_connections.as_str(),
        ),
        ("HOOKRELAY__SERVER__HEADER_TIMEOUT_MS", header_timeout_ms),
    ])
    .await;
    let idle = idle_connections(&app, max).await;
    (app, idle)
}

#[tokio::test]
async fn hundreds_of_idle_connections_do_not_keep_the_sender_out() {
    let app = spawn_app(&[]).await;
    let _idle = idle_connections(&app, 500).await;

    let response = tokio::time::timeout(Duration::from_secs(10), app.post_webhook(sync_account()))
        .await
        .expect("the sender is served while 500 idle connections are open");

    assert_eq!(response.status(), 200);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn max_connections_holds_back_connections_beyond_it() {
    let (app, idle) = full_of_idle_connections(5, "30000").await;
    // The relay has accepted all five before the sixth arrives.
    assert!(
        crate::helpers::eventually(Duration::from_secs(10), || async {
            not_yet_accepted(app.port) == Some(0)
        })
        .await,
        "the relay accepts the first five"
    );

    let held_back = tokio::time::timeout(
        Duration::from_millis(1500),
        raw_status(
            app.public_socket(),
            raw_webhook("/webhooks", &sync_account()).as_bytes(),
        ),
    )
    .await;
    assert!(held_back.is_err(), "a sixth connection is not served");

    drop(idle);
    assert_eq!(app.post_webhook(sync_account()).await.status(), 200);
    app.stop().await.unwrap();
}

/// Connections the kernel completed on the listening socket of `port` that
/// the relay has not accepted yet: the `rx_queue` of a socket in state LISTEN
/// (`0A`) in `/proc/net/tcp`.
fn not_yet_accepted(port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let local_port = fields.get(1)?.rsplit(':').next()?;
        let listening = fields.get(3)? == &"0A";
        (listening && u16::from_str_radix(local_port, 16).ok()? == port)
            .then(|| u64::from_str_radix(fields.get(4)?.split(':').nth(1)?, 16).ok())
            .flatten()
    })
}

#[tokio::test]
async fn idle_connections_are_shed_after_the_header_timeout() {
    let (app, mut idle) = full_of_idle_connections(20, "500").await;

    // (Well before actix's own default header timeout of 5 s.)
    let response = tokio::time::timeout(Duration::from_secs(3), app.post_webhook(sync_account()))
        .await
        .expect("the sender is served once the idle connections are shed");
    assert_eq!(response.status(), 200);

    for stream in &mut idle {
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest));
        assert!(closed.await.is_ok(), "an idle connection was closed");
    }
    app.stop().await.unwrap();
}

const TOKEN: &str = "3f1c9a0e7b2d4c58a6e1f0b9d2c7e4a1";

#[tokio::test]
async fn with_a_path_token_only_the_secret_path_accepts_webhooks() {
    let app = spawn_app(&[("HOOKRELAY__SERVER__PATH_TOKEN", TOKEN)]).await;
    let queue = app.bind_queue(&["#"]).await;
    let headers = [
        ("content-type", "application/json"),
        ("x-client-id", CLIENT_ID),
    ];
    let secret = format!("/webhooks/{TOKEN}");
    let wrong = format!("/webhooks/{}", TOKEN.replace('3', "4"));
    let short = format!("/webhooks/{}", &TOKEN[..31]);

    for path in ["/webhooks", "/webhooks/", wrong.as_str(), short.as_str()] {
        let response = app.post_to(path, sync_account(), &headers).await;
        assert_eq!(response.status(), 404, "{path}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["error"], "not_found");
        // Any method: a wrong token must look exactly like a missing path.
        let get = app.http.get(format!("{}{path}", app.address)).send().await;
        assert_eq!(get.unwrap().status(), 404, "GET {path}");
    }
    let get = app
        .http
        .get(format!("{}{secret}", app.address))
        .send()
        .await;
    assert_eq!(get.unwrap().status(), 405);
    let response = app.post_to(&secret, sync_account(), &headers).await;
    assert_eq!(response.status(), 200);

    assert_eq!(app.depth(&queue).await, 1);
    let metrics = app.get_admin("/metrics").await.text().await.unwrap();
    assert!(metrics.contains(r#"outcome="not_found"} 8"#), "{metrics}");
    assert!(!metrics.contains(TOKEN));
    app.stop().await.unwrap();
}

#[tokio::test]
async fn with_tls_the_webhook_arrives_over_https_only() {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = std::env::temp_dir().join(format!("hookrelay-tls-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let app = spawn_app(&[
        ("HOOKRELAY__SERVER__TLS__CERT", cert.to_str().unwrap()),
        ("HOOKRELAY__SERVER__TLS__KEY", key.to_str().unwrap()),
    ])
    .await;
    let queue = app.bind_queue(&["#"]).await;
    let request = raw_webhook("/webhooks", &sync_account());

    let mut roots = RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(app.public_socket()).await.unwrap();
    let server_name = ServerName::try_from("localhost").unwrap();
    let tls = TlsConnector::from(Arc::new(client))
        .connect(server_name, tcp)
        .await
        .expect("a TLS handshake with the relay's certificate");
    assert_eq!(status_over(tls, request.as_bytes()).await, 200);
    assert_eq!(app.depth(&queue).await, 1);

    // Plain HTTP on the TLS port gets no HTTP answer, and publishes nothing.
    let mut plain = TcpStream::connect(app.public_socket()).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut plain, request.as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer)).await;
    assert!(!answer.starts_with(b"HTTP/1.1 200"));
    assert_eq!(app.depth(&queue).await, 1);

    app.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn an_unreadable_tls_file_stops_startup_naming_the_setting() {
    let mut settings = crate::helpers::test_settings(&[
        ("HOOKRELAY__SERVER__TLS__CERT", "/nonexistent/cert.pem"),
        ("HOOKRELAY__SERVER__TLS__KEY", "/nonexistent/key.pem"),
    ]);
    settings.spool.enabled = false;
    let err = hookrelay::startup::Application::build(settings)
        .await
        .err()
        .expect("startup fails");
    assert!(format!("{err:#}").contains("server.tls.cert"), "{err:#}");
}
