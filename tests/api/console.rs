//! The operator console on the admin listener: its API through HTTP against
//! the real broker (every endpoint, its token, its origin check), and its
//! pages behind a login.

use hookrelay::config::{QueueSettings, QueueType};
use reqwest::header::{CONTENT_TYPE, COOKIE, LOCATION, ORIGIN, SET_COOKIE, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use std::time::Duration;

use crate::helpers::{
    TestApp, eventually, spawn_app, spawn_app_unready, sync_error, test_settings,
};

const TOKEN: &str = "console-test-token-0123456789";

/// A relay with the console on and two consumer queues bound to the same
/// errors: `reprompt` (the one that fails) and `audit` (a bystander).
async fn console_relay() -> (TestApp, String, String) {
    let mut settings = test_settings(&[
        ("HOOKRELAY__ADMIN__TOKEN", TOKEN),
        ("HOOKRELAY__ACCOUNTS__ENABLED", "true"),
    ]);
    let exchange = settings.amqp.exchange.clone();
    let reprompt = format!("{exchange}.reprompt");
    let audit = format!("{exchange}.audit");
    settings.queues = vec![
        QueueSettings::new(&reprompt, &["sync.error.*"], QueueType::Classic),
        QueueSettings::new(&audit, &["sync.error.*"], QueueType::Classic),
    ];
    let app = spawn_app_unready(settings).await;
    app.wait_until_ready().await;
    (app, reprompt, audit)
}

fn event(account: &str, code: &str) -> String {
    format!(
        r#"{{"hook":"SyncError","user":{{"id":"u-{account}","loginName":"jane@example.com"}},"account":{{"id":"{account}","provider":"Big Bank"}},"error":"{code}"}}"#
    )
}

impl TestApp {
    /// A request to the console's API with the token.
    async fn api(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.admin_address))
            .bearer_auth(TOKEN);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("the admin listener answers");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn api_get(&self, path: &str) -> Value {
        let (status, body) = self.api(Method::GET, path, None).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        body
    }

    async fn api_post(&self, path: &str, body: Value) -> Value {
        let (status, answer) = self.api(Method::POST, path, Some(body)).await;
        assert_eq!(status, StatusCode::OK, "POST {path}: {answer}");
        answer
    }

    fn own_origin(&self) -> String {
        self.admin_address.clone()
    }

    /// Logs in through the form as a browser would; the session cookie.
    async fn log_in(&self) -> String {
        let response = no_redirects()
            .post(format!("{}/login", self.admin_address))
            .header(ORIGIN, self.own_origin())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(format!("token={TOKEN}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        let cookie = response.headers()[SET_COOKIE].to_str().unwrap().to_owned();
        assert!(cookie.contains("HttpOnly"), "{cookie}");
        assert!(cookie.contains("SameSite=Strict"), "{cookie}");
        cookie.split(';').next().unwrap().to_owned()
    }
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

#[tokio::test]
async fn the_console_is_off_without_a_token() {
    let app = spawn_app(&[]).await;

    assert_eq!(
        app.get_admin("/api/status").await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(app.get_admin("/").await.status(), StatusCode::NOT_FOUND);
    assert_eq!(app.get_admin("/readyz").await.status(), StatusCode::OK);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn every_endpoint_answers_401_without_the_token_or_with_a_wrong_one_and_counts_it() {
    let (app, _, _) = console_relay().await;
    let endpoints = [
        (Method::GET, "/api/status"),
        (Method::GET, "/api/events"),
        (Method::GET, "/api/events/some-id"),
        (Method::GET, "/api/queues"),
        (Method::GET, "/api/queues/any/messages"),
        (Method::GET, "/api/accounts"),
        (Method::GET, "/api/spool"),
        (Method::POST, "/api/dead-letters/replay"),
        (Method::POST, "/api/quarantine/redrive"),
        (Method::POST, "/api/history/replay"),
        (Method::POST, "/api/spool/retry"),
    ];
    for (method, path) in &endpoints {
        for token in [None, Some("console-test-token-012345678X")] {
            let mut request = app
                .http
                .request(method.clone(), format!("{}{path}", app.admin_address))
                .json(&json!({ "all": true }));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let response = request.send().await.unwrap();
            assert_eq!(
                response.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {path}"
            );
            assert_eq!(response.headers()[WWW_AUTHENTICATE], "Bearer");
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["error"], "unauthorized", "{method} {path}: {body}");
        }
    }
    let refused = app.metric("hookrelay_console_unauthorized_total").await;
    assert_eq!(refused, (endpoints.len() * 2) as f64);
    // The health endpoints stay open.
    assert_eq!(app.get_admin("/metrics").await.status(), StatusCode::OK);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_dead_letter_replayed_from_the_api_goes_back_to_its_queue_only() {
    let (app, reprompt, audit) = console_relay().await;
    let replayed = app
        .dead_letter(event("a-1", "LoginFailedError"), &reprompt, &[&audit])
        .await;
    let other = app
        .dead_letter(event("a-2", "LoginFailedError"), &reprompt, &[&audit])
        .await;

    let dry = app
        .api_post(
            "/api/dead-letters/replay",
            json!({ "message_ids": [replayed], "dry_run": true }),
        )
        .await;
    assert_eq!(dry["summary"]["would_replay"], 1, "{dry}");
    assert_eq!(app.depth(app.topology.dead_letter_queue()).await, 2);

    let done = app
        .api_post(
            "/api/dead-letters/replay",
            json!({ "message_ids": [replayed] }),
        )
        .await;

    assert_eq!(done["summary"]["replayed"], 1, "{done}");
    assert_eq!(done["entries"][0]["message_id"], replayed.as_str());
    assert_eq!(done["entries"][0]["queue"], reprompt.as_str());
    let back: Vec<String> = app
        .take_all(&reprompt)
        .await
        .iter()
        .map(crate::helpers::message_id)
        .collect();
    assert_eq!(back, [replayed]);
    assert_eq!(
        app.depth(&audit).await,
        0,
        "the bystander must not see a replay"
    );
    let left = app
        .api_get(&format!(
            "/api/queues/{}/messages",
            app.topology.dead_letter_queue()
        ))
        .await;
    assert_eq!(left["messages"].as_array().unwrap().len(), 1, "{left}");
    assert_eq!(left["messages"][0]["message_id"], other.as_str());
    assert_eq!(
        app.metric("hookrelay_console_actions_total{action=\"dead_letters_replay\"}")
            .await,
        2.0
    );

    // Nothing chosen is refused rather than taken as "everything".
    let (status, body) = app
        .api(Method::POST, "/api/dead-letters/replay", Some(json!({})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(app.depth(app.topology.dead_letter_queue()).await, 1);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_cross_origin_post_from_a_session_is_refused_and_replays_nothing() {
    let (app, reprompt, audit) = console_relay().await;
    app.dead_letter(event("a-1", "LoginFailedError"), &reprompt, &[&audit])
        .await;
    let session = app.log_in().await;
    let replay_all = |origin: Option<&str>| {
        let mut request = app
            .http
            .post(format!("{}/api/dead-letters/replay", app.admin_address))
            .header(COOKIE, &session)
            .json(&json!({ "all": true }));
        if let Some(origin) = origin {
            request = request.header(ORIGIN, origin);
        }
        request.send()
    };

    let foreign = replay_all(Some("https://evil.example")).await.unwrap();
    assert_eq!(foreign.status(), StatusCode::FORBIDDEN);
    let body: Value = foreign.json().await.unwrap();
    assert_eq!(body["error"], "cross_origin");
    let without = replay_all(None).await.unwrap();
    assert_eq!(without.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        app.depth(app.topology.dead_letter_queue()).await,
        1,
        "nothing replayed"
    );

    let own = replay_all(Some(&app.own_origin())).await.unwrap();
    assert_eq!(own.status(), StatusCode::OK);
    assert_eq!(app.depth(app.topology.dead_letter_queue()).await, 0);
    assert_eq!(app.depth(&reprompt).await, 1);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn events_are_found_by_account_newest_first_a_page_at_a_time_with_login_names_masked() {
    let (app, reprompt, audit) = console_relay().await;
    let mut sent = Vec::new();
    for code in [
        "LoginFailedError",
        "TemporaryFailureError",
        "SecurityQuestionError",
    ] {
        sent.push(app.send(event("a-7", code)).await);
    }
    app.send(event("a-8", "LoginFailedError")).await;
    app.take_all(&reprompt).await;
    let dead = app
        .dead_letter(event("a-7", "LoginFailedError"), &reprompt, &[&audit])
        .await;
    sent.push(dead.clone());

    // The index follows the stream a moment behind.
    let listed = eventually(Duration::from_secs(30), || async {
        let all = app
            .api_get("/api/events?account_id=a-7&routing_key=sync.%23")
            .await;
        all["events"].as_array().is_some_and(|e| e.len() == 4)
    })
    .await;
    assert!(listed, "the four events of a-7 are listed");
    let first = app
        .api_get("/api/events?account_id=a-7&routing_key=sync.%23&limit=3")
        .await;
    let ids = |page: &Value| -> Vec<String> {
        page["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["message_id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        ids(&first),
        [&sent[3], &sent[2], &sent[1]].map(String::clone)
    );
    let cursor = first["next_cursor"].as_u64().expect("an older page");
    let second = app
        .api_get(&format!(
            "/api/events?account_id=a-7&routing_key=sync.%23&limit=3&cursor={cursor}"
        ))
        .await;
    assert_eq!(ids(&second), [sent[0].clone()]);
    assert!(second["next_cursor"].is_null());
    assert!(!first.to_string().contains("jane@example.com"));

    let journey = app.api_get(&format!("/api/events/{dead}")).await;
    assert_eq!(
        journey["event"]["routing_key"],
        "sync.error.LoginFailedError"
    );
    assert_eq!(journey["bound_queues"], json!([reprompt, audit]));
    assert_eq!(
        journey["held"][0]["queue"],
        app.topology.dead_letter_queue()
    );
    let reason = journey["held"][0]["found"]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(
        reason.starts_with(&format!("rejected in {reprompt}")),
        "{journey}"
    );
    assert!(journey["held"][1]["found"].is_null());
    assert_eq!(journey["event"]["body"]["user"]["loginName"], "[redacted]");
    assert!(!journey.to_string().contains("jane@example.com"));
    let revealed = app
        .api_get(&format!("/api/events/{dead}?reveal=true"))
        .await;
    assert_eq!(
        revealed["event"]["body"]["user"]["loginName"],
        "jane@example.com"
    );
    let (status, _) = app.api(Method::GET, "/api/events/no-such-id", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = app
        .api(Method::GET, "/api/events?since=yesterday", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn status_queues_accounts_and_spool_say_what_the_cli_says() {
    let (app, reprompt, audit) = console_relay().await;
    app.send(event("a-1", "LoginFailedError")).await;
    app.send(event("a-2", "UnhandledConnectorError")).await;

    let status = app.api_get("/api/status").await;
    assert_eq!(status["status"], "ready", "{status}");
    assert!(
        status["rates"]["per_minute"]["accepted"].is_number(),
        "{status}"
    );

    let queues = app.api_get("/api/queues").await;
    let listed = |name: &str| {
        queues["queues"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} in {queues}"))
    };
    assert_eq!(listed(&reprompt)["messages"], 2);
    assert_eq!(listed(&reprompt)["role"], "consumer");
    assert_eq!(listed(&audit)["messages"], 2);
    assert_eq!(
        listed(app.topology.dead_letter_queue())["role"],
        "dead_letters"
    );
    let (status, _) = app
        .api(Method::GET, "/api/queues/not-ours/messages", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let peeked = app
        .api_get(&format!("/api/queues/{reprompt}/messages?limit=1"))
        .await;
    assert_eq!(peeked["summary"]["shown"], 1);
    assert_eq!(app.depth(&reprompt).await, 2, "inspecting moves nothing");

    // The console's book of accounts follows the history a moment behind.
    let live = eventually(Duration::from_secs(30), || async {
        let all = app.api_get("/api/accounts").await;
        all["source"] == "live" && all["total"] == 2
    })
    .await;
    assert!(live, "the live book holds both accounts");
    let needs_user = app.api_get("/api/accounts?state=needs_reconnect").await;
    assert_eq!(
        needs_user["accounts"][0]["account_id"], "a-1",
        "{needs_user}"
    );
    assert_eq!(needs_user["accounts"].as_array().unwrap().len(), 1);
    let needs_sender = app.api_get("/api/accounts?state=contact_provider").await;
    assert_eq!(
        needs_sender["accounts"][0]["account_id"], "a-2",
        "{needs_sender}"
    );
    let (status, _) = app
        .api(Method::GET, "/api/accounts?state=asleep", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let spool = app.api_get("/api/spool").await;
    assert_eq!(spool["enabled"], true);
    assert_eq!(spool["depth"], 0);
    let retried = app
        .api_post("/api/spool/retry", json!({ "all": true }))
        .await;
    assert_eq!(retried["summary"]["marked"], 0);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn history_replays_to_one_queue_and_quarantine_redrives_from_the_api() {
    let (app, reprompt, audit) = console_relay().await;
    let id = app.send(sync_error("LoginFailedError")).await;
    app.take_all(&reprompt).await;
    app.take_all(&audit).await;

    let replayed = app
        .api_post(
            "/api/history/replay",
            json!({ "message_ids": [id], "to_queue": reprompt }),
        )
        .await;
    assert_eq!(replayed["summary"]["replayed"], 1, "{replayed}");
    assert_eq!(app.depth(&reprompt).await, 1);
    assert_eq!(app.depth(&audit).await, 0);
    let (status, _) = app
        .api(
            Method::POST,
            "/api/history/replay",
            Some(json!({ "message_ids": [id] })),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a destination is required");

    let quarantined = app.post_webhook(r#"{"hook":"SyncAccount"}"#).await;
    assert_eq!(quarantined.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let answer: Value = quarantined.json().await.unwrap();
    let kept = answer["id"].as_str().unwrap().to_owned();
    let redrive = app
        .api_post("/api/quarantine/redrive", json!({ "dry_run": true }))
        .await;
    assert_eq!(redrive["summary"]["stays"], 1, "{redrive}");
    assert_eq!(redrive["entries"][0]["message_id"], kept.as_str());
    assert_eq!(redrive["entries"][0]["action"], "stays");
    let other = app
        .api_post(
            "/api/quarantine/redrive",
            json!({ "message_ids": ["another"], "dry_run": true }),
        )
        .await;
    assert_eq!(other["entries"], json!([]), "only the chosen are reported");
    assert_eq!(app.depth(app.topology.quarantine_queue()).await, 1);
    app.stop().await.unwrap();
}

#[tokio::test]
async fn the_pages_need_a_login_and_a_wrong_token_gets_no_session() {
    let (app, _, _) = console_relay().await;
    let client = no_redirects();
    let anonymous = client
        .get(format!("{}/", app.admin_address))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::SEE_OTHER);
    assert_eq!(anonymous.headers()[LOCATION], "/login");

    let wrong = client
        .post(format!("{}/login", app.admin_address))
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body("token=not-the-token-at-all")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(wrong.headers().get(SET_COOKIE).is_none());

    let session = app.log_in().await;
    for page in [
        "/",
        "/events?account_id=a-1",
        "/dead-letters",
        "/quarantine",
        "/accounts",
        "/spool",
    ] {
        let response = client
            .get(format!("{}{page}", app.admin_address))
            .header(COOKIE, &session)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{page}");
        assert!(response.text().await.unwrap().contains("<nav>"), "{page}");
    }
    let out = client
        .post(format!("{}/logout", app.admin_address))
        .header(COOKIE, &session)
        .header(ORIGIN, app.own_origin())
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    let after = client
        .get(format!("{}/", app.admin_address))
        .header(COOKIE, &session)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), StatusCode::SEE_OTHER, "the session ended");
    app.stop().await.unwrap();
}

impl TestApp {
    /// Waits until the index has caught up and lists `count` events.
    async fn indexed(&self, count: usize) -> bool {
        eventually(Duration::from_secs(30), || async {
            let page = self.api_get("/api/events?limit=500").await;
            page["source"] == "index" && page["events"].as_array().is_some_and(|e| e.len() == count)
        })
        .await
    }
}

#[tokio::test]
async fn the_index_resumes_after_a_restart_and_starts_over_when_the_stream_does() {
    let settings = test_settings(&[("HOOKRELAY__ADMIN__TOKEN", TOKEN)]);
    let app = spawn_app_unready(settings.clone()).await;
    app.wait_until_ready().await;
    for code in [
        "LoginFailedError",
        "TemporaryFailureError",
        "LoginFailedError",
    ] {
        app.send(event("a-1", code)).await;
    }
    assert!(app.indexed(3).await, "three events indexed");
    app.stop_without_cleaning().await;

    let app = spawn_app_unready(settings.clone()).await;
    app.wait_until_ready().await;
    let fourth = app.send(event("a-2", "LoginFailedError")).await;
    assert!(
        app.indexed(4).await,
        "the fourth indexed after the three, none twice"
    );
    let status = app.api_get("/api/status").await;
    assert_eq!(status["index"]["rows"], 4, "{status}");
    let found = app.api_get("/api/events?account_id=a-2").await;
    assert_eq!(found["events"][0]["message_id"], fourth.as_str());
    // The stream deleted (an operator's action): the relay declares it
    // again, empty, and the index must not answer with what it no longer holds.
    let stream = app.topology.history_stream().unwrap().to_owned();
    app.channel
        .queue_delete(
            stream.as_str().into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await
        .unwrap();
    app.stop_without_cleaning().await;
    let app = spawn_app_unready(settings).await;
    app.wait_until_ready().await;
    let fresh = app.send(event("a-3", "LoginFailedError")).await;
    assert!(app.indexed(1).await, "only the new stream's event");
    let found = app.api_get("/api/events").await;
    assert_eq!(found["events"][0]["message_id"], fresh.as_str());
    app.stop().await.unwrap();
}
