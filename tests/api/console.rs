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
    let mut settings = test_settings(&[("HOOKRELAY__ADMIN__TOKEN", TOKEN)]);
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

/// A relay with the console on, behind a proxy it trusts (the test): each
/// request says with `X-Forwarded-For` which address it came from, as a TLS
/// proxy in front of the console would.
async fn console_behind_a_proxy() -> TestApp {
    spawn_app(&[
        ("HOOKRELAY__ADMIN__TOKEN", TOKEN),
        ("HOOKRELAY__ADMIN__TRUSTED_PROXIES", "127.0.0.1/32"),
    ])
    .await
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
    // Each wrong token comes from an address of its own: one address's
    // guesses are braked (below).
    let app = console_behind_a_proxy().await;
    let endpoints = [
        (Method::GET, "/api/status"),
        (Method::GET, "/api/events"),
        (Method::GET, "/api/events/some-id"),
        (Method::GET, "/api/queues"),
        (Method::GET, "/api/queues/any/messages"),
        (Method::POST, "/api/queues/any/messages"),
        (Method::GET, "/api/accounts"),
        (Method::GET, "/api/spool"),
        (Method::POST, "/api/dead-letters/replay"),
        (Method::POST, "/api/quarantine/redrive"),
        (Method::POST, "/api/history/replay"),
        (Method::POST, "/api/spool/retry"),
    ];
    for (n, (method, path)) in endpoints.iter().enumerate() {
        for token in [None, Some("console-test-token-012345678X")] {
            let mut request = app
                .http
                .request(method.clone(), format!("{}{path}", app.admin_address))
                .header("x-forwarded-for", format!("192.0.2.{n}"))
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
        .api_post(
            &format!("/api/queues/{}/messages", app.topology.dead_letter_queue()),
            json!({}),
        )
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

    // A GET takes nothing from any queue: where it may be held is a POST.
    let at_a_glance = app.api_get(&format!("/api/events/{dead}")).await;
    assert!(at_a_glance["held"].is_null(), "{at_a_glance}");
    assert!(
        at_a_glance["search"].as_str().unwrap().contains("POST"),
        "{at_a_glance}"
    );
    let journey = app
        .api_post(&format!("/api/events/{dead}/held"), json!({}))
        .await;
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
    // Two temporary failures in a row: retrying, a streak of two.
    app.send(event("a-3", "TemporaryFailureError")).await;
    app.send(event("a-3", "TemporaryFailureError")).await;

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
    assert_eq!(listed(&reprompt)["messages"], 4);
    assert_eq!(listed(&reprompt)["role"], "consumer");
    assert_eq!(listed(&audit)["messages"], 4);
    assert_eq!(
        listed(app.topology.dead_letter_queue())["role"],
        "dead_letters"
    );
    let (status, _) = app
        .api(Method::GET, "/api/queues/not-ours/messages", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let peeked = app
        .api_post(
            &format!("/api/queues/{reprompt}/messages"),
            json!({ "limit": 1 }),
        )
        .await;
    assert_eq!(peeked["summary"]["shown"], 1);
    assert_eq!(app.depth(&reprompt).await, 4, "inspecting moves nothing");
    let (status, body) = app
        .api(
            Method::POST,
            &format!("/api/queues/{reprompt}/messages"),
            Some(json!({ "limt": 5 })),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_request")),
        "a look it cannot read is refused, not taken as the default: {body}"
    );

    // The relay's accounts follow the history a moment behind; until they
    // have caught up with it, the answer is 503 and when to ask again.
    let caught_up = eventually(Duration::from_secs(30), || async {
        let (status, all) = app.api(Method::GET, "/api/accounts", None).await;
        match status {
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(all["error"], "catching_up", "{all}");
                false
            }
            _ => all["accounts"].as_array().is_some_and(|a| a.len() == 3),
        }
    })
    .await;
    assert!(caught_up, "the relay's accounts hold the three accounts");
    // One vocabulary and one shape: the API, `hookrelay accounts --json`
    // and its text, and the page.
    let api = app.api_get("/api/accounts").await["accounts"].clone();
    let cli = app.run(&["accounts", "--json"]).await;
    assert!(cli.status.success(), "{cli:?}");
    let cli: Vec<Value> = String::from_utf8(cli.stdout)
        .unwrap()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect();
    for account in api.as_array().unwrap() {
        let same = cli
            .iter()
            .find(|c| c["account_id"] == account["account_id"])
            .unwrap_or_else(|| panic!("{account} in {cli:?}"));
        for field in ["state", "reason", "code", "streak", "since"] {
            assert_eq!(same[field], account[field], "{field}: {same} / {account}");
        }
    }
    let text = app.run(&["accounts"]).await;
    let text = String::from_utf8(text.stdout).unwrap();
    for words in [
        "needs_reconnect (credentials)",
        "contact_provider (connector_error: UnhandledConnectorError)",
        "retrying",
        "streak=2",
    ] {
        assert!(text.contains(words), "{words:?} in {text}");
    }
    assert!(
        !text.contains("ConnectorError(") && !text.contains("Credentials"),
        "no Rust names: {text}"
    );
    let session = app.log_in().await;
    let page = app
        .http
        .get(format!("{}/accounts", app.admin_address))
        .header(COOKIE, &session)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let retrying_row = page
        .split("<tr>")
        .find(|row| row.contains(">a-3<"))
        .unwrap_or_else(|| panic!("a-3 on the page: {page}"));
    assert!(
        retrying_row.contains("<td>2</td>"),
        "its streak: {retrying_row}"
    );
    let status = app.api_get("/api/status").await;
    assert_eq!(
        status["accounts"]["by_state"]["needs_reconnect"], 1,
        "{status}"
    );
    assert_eq!(
        status["accounts"]["by_state"]["contact_provider"], 1,
        "{status}"
    );
    // What /readyz says of them, the same way.
    assert!(status["accounts"]["owed"].is_u64(), "{status}");
    assert!(status["accounts"]["announcing"].is_boolean(), "{status}");
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
    // The accounts page answers once the relay's store has read the
    // history (503 and Retry-After until then).
    assert!(
        eventually(Duration::from_secs(30), || async {
            app.readiness().await["history_follower"]["caught_up"] == true
        })
        .await,
        "the follower caught up"
    );
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
    /// Waits until the index has caught up and lists `count` webhooks, none
    /// twice; on time out, says what the API and the follower said last.
    /// (The relay's own announcements, `account.*`, are in the index too,
    /// whenever the announcer gets to them: not counted.)
    async fn indexed(&self, count: usize) -> bool {
        let there = eventually(Duration::from_secs(30), || async {
            let page = self.api_get("/api/events?limit=500").await;
            let ids: Vec<&str> = page["events"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| !e["routing_key"].as_str().unwrap().starts_with("account."))
                .map(|e| e["message_id"].as_str().unwrap())
                .collect();
            let distinct: std::collections::BTreeSet<&str> = ids.iter().copied().collect();
            page["source"] == "index" && ids.len() == count && distinct.len() == count
        })
        .await;
        if !there {
            let page = self.api_get("/api/events?limit=500").await;
            let status = self.api_get("/api/status").await;
            eprintln!("not indexed: /api/events said {page}; /api/status said {status}");
        }
        there
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
    // A row per event listed, no hidden copy (read until an announcement
    // landing in between has settled).
    assert!(
        eventually(Duration::from_secs(10), || async {
            let rows = app.api_get("/api/status").await["index"]["rows"].clone();
            let listed = app.api_get("/api/events?limit=500").await["events"]
                .as_array()
                .map(Vec::len);
            rows.as_u64().map(|rows| rows as usize) == listed
        })
        .await,
        "a row per event"
    );
    let found = app.api_get("/api/events?account_id=a-2").await;
    assert_eq!(found["events"][0]["message_id"], fourth.as_str());
    // The stream deleted (an operator's action): the relay declares it
    // again, empty, and the index must not answer with what it no longer holds.
    app.delete_queue(app.topology.history_stream().unwrap())
        .await;
    app.stop_without_cleaning().await;
    let app = spawn_app_unready(settings).await;
    app.wait_until_ready().await;
    let fresh = app.send(event("a-3", "LoginFailedError")).await;
    assert!(app.indexed(1).await, "only the new stream's event");
    let found = app.api_get("/api/events").await;
    assert_eq!(found["events"][0]["message_id"], fresh.as_str());
    app.stop().await.unwrap();
}

/// A ready relay with `extra` set and a `[[queues]]` entry `<exchange>.reprompt`
/// of `kind`, bound to `sync.error.*`; and that queue's name.
async fn relay_with_reprompt(extra: &[(&str, &str)], kind: QueueType) -> (TestApp, String) {
    let mut settings = test_settings(extra);
    let reprompt = format!("{}.reprompt", settings.amqp.exchange);
    settings.queues = vec![QueueSettings::new(&reprompt, &["sync.error.*"], kind)];
    let app = spawn_app_unready(settings).await;
    app.wait_until_ready().await;
    (app, reprompt)
}

#[tokio::test]
async fn a_look_at_a_quorum_queue_spends_no_delivery_and_a_counted_look_says_it_does() {
    // A consumer's quorum queue: RabbitMQ dead-letters a message after its
    // 20th delivery, and a look at a message is a delivery.
    let (app, reprompt) =
        relay_with_reprompt(&[("HOOKRELAY__ADMIN__TOKEN", TOKEN)], QueueType::Quorum).await;
    app.send(event("a-1", "LoginFailedError")).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.depth(&reprompt).await == 1
        })
        .await
    );

    for n in 0..25 {
        let looked = app
            .api_get(&format!("/api/queues/{reprompt}/messages"))
            .await;
        assert_eq!(looked["summary"]["depth"], 1, "look {n}: {looked}");
        assert_eq!(looked["messages"], json!([]), "look {n}: {looked}");
        assert!(
            looked["look"].as_str().unwrap().contains("POST"),
            "{looked}"
        );
    }
    assert_eq!(app.depth(&reprompt).await, 1, "still in its queue");
    assert_eq!(app.depth(app.topology.dead_letter_queue()).await, 0);

    let counted = app
        .api_post(&format!("/api/queues/{reprompt}/messages"), json!({}))
        .await;
    assert_eq!(counted["summary"]["shown"], 1, "{counted}");
    assert_eq!(counted["summary"]["counts_deliveries"], true, "{counted}");
    let message = app.next_message(&reprompt).await.expect("still there");
    let headers = hookrelay::watch::render::headers(message.delivery.properties.headers().as_ref());
    assert_eq!(
        headers["x-delivery-count"], 1,
        "the counted look was one delivery, the 25 looks none: {headers}"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_quarantined_body_that_is_not_json_is_shown_with_its_login_name_masked() {
    let (app, _, _) = console_relay().await;
    let truncated = r#"{"hook":"SyncAccount","user":{"id":"u-1","loginName":"jane@example.com"},"account":{"id":"#;
    let answer = app.post_webhook(truncated).await;
    assert_eq!(answer.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let quarantine = app.topology.quarantine_queue().to_owned();
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.depth(&quarantine).await == 1
        })
        .await
    );

    let api = app
        .api_post(&format!("/api/queues/{quarantine}/messages"), json!({}))
        .await
        .to_string();
    assert!(!api.contains("jane@example.com"), "{api}");
    assert!(api.contains("u-1"), "the rest is shown: {api}");
    let session = app.log_in().await;
    let page = app
        .http
        .post(format!("{}/quarantine", app.admin_address))
        .header(COOKIE, &session)
        .header(ORIGIN, app.own_origin())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!page.contains("jane@example.com"), "{page}");
    assert!(page.contains("u-1"), "{page}");
    app.stop().await.unwrap();
}

#[tokio::test]
async fn thirty_wrong_tokens_from_one_address_are_braked_said_once_and_counted() {
    let app = console_behind_a_proxy().await;
    // An operator logged in before the guessing began, from that address.
    let session = app.log_in().await;
    let page_from = |address: &'static str, cookie: &str| {
        no_redirects()
            .get(format!("{}/", app.admin_address))
            .header("x-forwarded-for", address)
            .header(COOKIE, cookie)
            .send()
    };
    let status_from = |address: &'static str, token: &'static str| {
        app.http
            .get(format!("{}/api/status", app.admin_address))
            .header("x-forwarded-for", address)
            .bearer_auth(token)
            .send()
    };

    let mut answers = Vec::new();
    for _ in 0..30 {
        let answer = status_from("192.0.2.7", "not-the-console-token-at-all")
            .await
            .unwrap();
        let retry_after = answer
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
        answers.push((answer.status().as_u16(), retry_after));
    }

    assert!(
        answers[..10].iter().all(|a| *a == (401, None)),
        "{answers:?}"
    );
    assert!(
        answers[10..]
            .iter()
            .all(|(status, wait)| *status == 429 && wait.is_some_and(|s| (1..=60).contains(&s))),
        "{answers:?}"
    );
    let braked = status_from("192.0.2.7", TOKEN).await.unwrap();
    assert_eq!(
        braked.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "braked, whatever it sends"
    );
    let body: Value = braked.json().await.unwrap();
    assert_eq!(body["error"], "throttled", "{body}");
    let other = status_from("192.0.2.8", TOKEN).await.unwrap();
    assert_eq!(other.status(), StatusCode::OK, "another address is not");
    assert_eq!(
        page_from("192.0.2.7", &session).await.unwrap().status(),
        StatusCode::OK,
        "a live session is no guess: the brake does not lock it out"
    );
    // A session this relay does not know (it restarted) is sent to the login
    // form and dropped, never counted as a guess.
    for _ in 0..30 {
        let stale = page_from("192.0.2.9", "hookrelay_session=gone-since-a-restart")
            .await
            .unwrap();
        assert_eq!(stale.status(), StatusCode::SEE_OTHER);
        let dropped = stale.headers()[SET_COOKIE].to_str().unwrap();
        assert!(dropped.contains("Max-Age=0"), "{dropped}");
    }
    assert_eq!(
        app.metric("hookrelay_console_throttled_total").await,
        1.0,
        "one brake, said once"
    );
    assert_eq!(
        app.metric("hookrelay_console_unauthorized_total").await,
        40.0,
        "the wrong tokens before the brake, and the stale sessions"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn behind_a_tls_proxy_the_public_origin_is_checked_and_cookies_are_secure() {
    // nginx rewrites Host to the upstream's address by default: the
    // browser's Origin is the public URL, never the Host the relay sees.
    let public = "https://relay.example.com";
    let app = spawn_app(&[
        ("HOOKRELAY__ADMIN__TOKEN", TOKEN),
        ("HOOKRELAY__ADMIN__PUBLIC_ORIGIN", public),
    ])
    .await;
    let log_in_from = |origin: String| {
        no_redirects()
            .post(format!("{}/login", app.admin_address))
            .header(ORIGIN, origin)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(format!("token={TOKEN}"))
            .send()
    };

    let through_proxy = log_in_from(public.to_owned()).await.unwrap();
    assert_eq!(through_proxy.status(), StatusCode::SEE_OTHER);
    let cookie = through_proxy.headers()[SET_COOKIE].to_str().unwrap();
    assert!(cookie.contains("Secure"), "{cookie}");
    let session = cookie.split(';').next().unwrap().to_owned();
    let replay = |origin: String| {
        app.http
            .post(format!("{}/api/spool/retry", app.admin_address))
            .header(COOKIE, &session)
            .header(ORIGIN, origin)
            .json(&json!({ "all": true }))
            .send()
    };
    assert_eq!(
        replay(public.to_owned()).await.unwrap().status(),
        StatusCode::OK
    );

    let by_host = replay(app.own_origin()).await.unwrap();
    assert_eq!(by_host.status(), StatusCode::FORBIDDEN);
    let body: Value = by_host.json().await.unwrap();
    assert_eq!(body["error"], "cross_origin");
    assert!(
        body["reason"].as_str().unwrap().contains(public),
        "it names the origin it expects: {body}"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn an_events_page_names_every_queue_bound_now_and_finds_it_in_the_unrouted_queue() {
    let management = [
        ("HOOKRELAY__ADMIN__TOKEN", TOKEN),
        ("HOOKRELAY__AMQP__MANAGEMENT_URL", "http://127.0.0.1:15672"),
    ];
    let (app, reprompt) = relay_with_reprompt(&management, QueueType::Classic).await;
    // The README's way to consume: a queue of the consumer's own.
    let own = app.bind_queue(&["sync.error.LoginFailedError"]).await;

    let failed = app.send(event("a-1", "LoginFailedError")).await;
    // No queue takes a SyncAccount here: it goes to the unrouted queue.
    let unrouted = app.send(crate::helpers::sync_account()).await;
    assert!(app.indexed(2).await, "both in the index");

    let found = app.api_get(&format!("/api/events/{failed}")).await;
    let bound: Vec<&str> = found["bound_queues"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        bound.contains(&own.as_str()) && bound.contains(&reprompt.as_str()),
        "the consumer's own queue and the configured one: {found}"
    );
    assert!(
        found["bound_queues_from"]
            .as_str()
            .unwrap()
            .contains("RabbitMQ"),
        "{found}"
    );

    let lost = app
        .api_post(&format!("/api/events/{unrouted}/held"), json!({}))
        .await;
    assert_eq!(lost["bound_queues"], json!([]), "{lost}");
    let held_in = |queue: &str| {
        lost["held"]
            .as_array()
            .unwrap()
            .iter()
            .find(|held| held["queue"] == queue)
            .cloned()
            .unwrap_or_else(|| panic!("{queue} searched: {lost}"))
    };
    assert!(
        held_in(app.topology.unrouted())["found"].is_object(),
        "{lost}"
    );
    assert!(held_in(app.topology.dead_letter_queue())["found"].is_null());
    assert_eq!(
        app.depth(app.topology.unrouted()).await,
        1,
        "the search put it back"
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn while_rabbitmq_is_away_the_console_answers_from_what_is_local() {
    let exchange = format!("test-{}", uuid::Uuid::now_v7());
    let mut gate = crate::common::gate::Gate::closed(&crate::helpers::AMQP_URL).await;
    gate.open().await;
    let settings = crate::helpers::test_env(&exchange)
        .set("HOOKRELAY__AMQP__URI", gate.uri())
        .set("HOOKRELAY__ADMIN__TOKEN", TOKEN)
        .settings(None);
    let app = spawn_app_unready(settings.clone()).await;
    app.wait_until_ready().await;
    let before = app.send(event("a-1", "LoginFailedError")).await;
    assert!(app.indexed(1).await);

    gate.close();
    assert!(app.saw_rabbitmq_go().await, "the relay saw RabbitMQ go");
    let spooled = app
        .post_webhook(event("a-2", "TemporaryFailureError"))
        .await;
    assert_eq!(spooled.status(), StatusCode::OK);
    let spooled: Value = spooled.json().await.unwrap();
    assert_eq!(spooled["stored"], "spool");
    let spooled_id = spooled["id"].as_str().unwrap();

    // The events, from the index.
    let session = app.log_in().await;
    let get_page = |path: &str| {
        app.http
            .get(format!("{}{path}", app.admin_address))
            .header(COOKIE, &session)
            .send()
    };
    let events = get_page("/events?account_id=a-1").await.unwrap();
    assert_eq!(events.status(), StatusCode::OK);
    assert!(events.text().await.unwrap().contains(&before));
    // The spool, by account.
    let spool = get_page("/spool?account_id=a-2").await.unwrap();
    let spool = spool.text().await.unwrap();
    assert!(
        spool.contains(spooled_id) && spool.contains("a-2"),
        "{spool}"
    );
    let of_a2 = app.api_get("/api/spool?account_id=a-2").await;
    assert_eq!(of_a2["entries"][0]["message_id"], spooled_id, "{of_a2}");
    let of_a1 = app.api_get("/api/spool?account_id=a-1").await;
    assert_eq!(of_a1["entries"], json!([]), "{of_a1}");
    // A page that needs RabbitMQ is a page that says so.
    let dead_letters = get_page("/dead-letters").await.unwrap();
    assert_eq!(dead_letters.status(), StatusCode::BAD_GATEWAY);
    assert!(
        dead_letters.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(
        dead_letters
            .text()
            .await
            .unwrap()
            .contains("RabbitMQ could not be asked")
    );

    // A relay started while RabbitMQ is still away, on the store the first
    // one left: its follower cannot catch up, and the events come from its
    // index all the same, said to be behind.
    app.stop_without_cleaning().await;
    let app = spawn_app_unready(settings).await;
    let found = app.api_get("/api/events?account_id=a-1").await;
    assert_eq!(found["source"], "index", "{found}");
    assert!(found["behind"].is_string(), "{found}");
    assert_eq!(found["events"][0]["message_id"], before.as_str(), "{found}");

    gate.open().await;
    assert!(
        eventually(Duration::from_secs(30), || async {
            app.depth_of_spool().await == 0
        })
        .await,
        "the first relay's spool drained once RabbitMQ is back"
    );
    app.stop().await.unwrap();
}
