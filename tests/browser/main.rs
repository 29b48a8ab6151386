//! The console in a real browser: Debian's headless chromium, driven over
//! WebDriver (chromedriver) by fantoccini. An operator logs in, finds an
//! account's event, opens the dead letter it became, replays it, and the
//! message arrives back in the one queue that failed it.
//!
//! It needs `chromium` and `chromium-driver` (`.ci/run` installs them):
//!
//! ```sh
//! cargo test --features browser-tests --test browser
//! ```
//!
//! With `CONSOLE_SCREENSHOT=<file.png>` it saves what the browser showed
//! after the replay (the README's screenshot is one); with
//! `CONSOLE_CHARTS=<folder>`, the overview's and the Providers page's
//! charts (`console-overview.png`, `console-providers.png` in `docs/`).
//!
//! A second test draws the charts from webhooks it sent, and reads the
//! numbers back from each bar.

#[path = "../common/mod.rs"]
mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use hookrelay::config::{QueueSettings, QueueType};
use hookrelay::startup::Application;
use hyper_util::client::legacy::connect::HttpConnector;
use lapin::options::{BasicGetOptions, BasicRejectOptions};
use lapin::{Channel, Connection, ConnectionProperties};
use serde_json::json;
use tokio::sync::oneshot;

use common::env::{RelayEnv, amqp_url};
use common::wait::eventually;

const TOKEN: &str = "browser-test-token-0123456789";
const CLIENT_ID: &str = "browser-test";
/// How long the browser may take for one step, on a loaded machine.
const STEP: Duration = Duration::from_secs(30);

/// chromedriver on a port of its own, stopped on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    async fn start() -> Driver {
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian's chromium-driver) is installed");
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let ready = eventually(STEP, || async {
            http.get(format!("{url}/status"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        assert!(ready, "chromedriver did not answer on {url}");
        Driver { child, url }
    }

    async fn browser(&self) -> Client {
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            json!({
                "binary": std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned()),
                "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                         "--disable-gpu", "--window-size=1100,760"],
            }),
        );
        ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .expect("a chromium session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The element `locator` finds once the page shows it; fails saying `what`.
async fn shown(
    browser: &Client,
    locator: Locator<'_>,
    what: &str,
) -> fantoccini::elements::Element {
    browser
        .wait()
        .at_most(STEP)
        .for_element(locator)
        .await
        .unwrap_or_else(|err| panic!("{what}: {err}"))
}

async fn click(browser: &Client, locator: Locator<'_>) {
    browser.find(locator).await.unwrap().click().await.unwrap();
}

/// Deletes every queue and exchange of the test's relay when the test ends,
/// passed or failed.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let prefix = self.0.clone();
        let _ =
            std::thread::spawn(move || common::cleanup::delete_everything_named(&prefix)).join();
    }
}

/// Takes the next message of `queue`, `None` when it is empty.
async fn get(channel: &Channel, queue: &str) -> Option<lapin::message::BasicGetMessage> {
    channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
}

/// Logs in to the console at `console`, up to the overview.
async fn log_in(browser: &Client, console: &str) {
    browser.goto(&format!("{console}/")).await.unwrap();
    let token = shown(browser, Locator::Css("input[name=token]"), "the login form").await;
    token.send_keys(TOKEN).await.unwrap();
    click(browser, Locator::Css("form button")).await;
    shown(
        browser,
        Locator::XPath("//h1[text()='Overview']"),
        "the overview, logged in",
    )
    .await;
}

/// A relay of its own with the console on, running until `stop` is sent.
struct Relay {
    port: u16,
    console: String,
    stop: oneshot::Sender<()>,
    running: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Relay {
    async fn start(settings: hookrelay::config::Settings) -> Relay {
        let app = Application::build(settings)
            .await
            .expect("the relay builds");
        let (port, admin_port) = (app.port(), app.admin_port());
        let console = format!("http://127.0.0.1:{admin_port}");
        let (stop, stopped) = oneshot::channel::<()>();
        let running = tokio::spawn(app.run_until_stopped(async {
            let _ = stopped.await;
        }));
        let http = reqwest::Client::new();
        let connected = eventually(STEP, || async {
            let ready = http.get(format!("{console}/readyz")).send().await;
            match ready {
                Ok(r) => r
                    .json::<serde_json::Value>()
                    .await
                    .is_ok_and(|b| b["broker"] == "connected"),
                Err(_) => false,
            }
        })
        .await;
        assert!(connected, "the relay did not connect to RabbitMQ");
        Relay {
            port,
            console,
            stop,
            running,
        }
    }

    async fn send(&self, body: String) -> serde_json::Value {
        reqwest::Client::new()
            .post(format!("http://127.0.0.1:{}/webhooks", self.port))
            .header("content-type", "application/json")
            .header("x-client-id", CLIENT_ID)
            .body(body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.running.await.unwrap().unwrap();
    }
}

/// `(data-label, data-count)` of every bar of the charts on the page.
async fn bars(browser: &Client) -> Vec<(String, u64)> {
    let mut found = Vec::new();
    for bar in browser.find_all(Locator::Css("tr.bar")).await.unwrap() {
        let label = bar.attr("data-label").await.unwrap().unwrap_or_default();
        let count = bar.attr("data-count").await.unwrap().unwrap_or_default();
        found.push((label, count.parse().unwrap_or(0)));
    }
    found
}

#[tokio::test]
async fn the_overview_and_the_providers_page_draw_what_was_sent() {
    let exchange = format!("browser-{}", uuid::Uuid::now_v7());
    let _cleanup = Cleanup(exchange.clone());
    let spool = std::env::temp_dir().join(&exchange).join("spool.sqlite");
    let settings = RelayEnv::new(CLIENT_ID, &exchange, &spool, &amqp_url())
        .set("HOOKRELAY__SERVER__LISTEN", "127.0.0.1:0")
        .set("HOOKRELAY__SERVER__ADMIN_LISTEN", "127.0.0.1:0")
        .set("HOOKRELAY__ADMIN__TOKEN", TOKEN)
        .settings(None);
    let relay = Relay::start(settings).await;
    // Big Bank's connector breaks for five accounts (an incident); Small
    // Bank has one account that needs a reconnect and two that synced.
    let webhook = |error: Option<&str>, account: &str, provider: &str| {
        let hook = match error {
            Some(code) => format!(r#""hook":"SyncError","error":"{code}""#),
            None => r#""hook":"SyncAccount""#.to_owned(),
        };
        format!(
            r#"{{{hook},"user":{{"id":"u-{account}","loginName":"jane@example.com"}},"account":{{"id":"{account}","provider":"{provider}"}}}}"#
        )
    };
    for n in 1..=5 {
        let broken = Some("UnhandledConnectorError");
        relay
            .send(webhook(broken, &format!("big-{n}"), "Big Bank"))
            .await;
    }
    relay
        .send(webhook(Some("LoginFailedError"), "small-1", "Small Bank"))
        .await;
    relay.send(webhook(None, "small-2", "Small Bank")).await;
    relay.send(webhook(None, "small-3", "Small Bank")).await;
    let http = reqwest::Client::new();
    let derived = eventually(STEP, || async {
        let answer = http
            .get(format!("{}/api/providers", relay.console))
            .bearer_auth(TOKEN)
            .send()
            .await;
        match answer {
            Ok(answer) => answer
                .json::<serde_json::Value>()
                .await
                .is_ok_and(|found| found["incidents"][0]["provider"] == "Big Bank"),
            Err(_) => false,
        }
    })
    .await;
    assert!(derived, "the relay derived the incident");

    let driver = Driver::start().await;
    let browser = driver.browser().await;
    log_in(&browser, &relay.console).await;
    let charts = std::env::var("CONSOLE_CHARTS").ok();

    // The overview: accounts by state, and the webhooks of the last hour.
    let by_state = bars(&browser).await;
    assert!(
        by_state.contains(&("contact_provider".to_owned(), 5)),
        "{by_state:?}"
    );
    assert!(
        by_state.contains(&("needs_reconnect".to_owned(), 1)),
        "{by_state:?}"
    );
    assert!(by_state.contains(&("ok".to_owned(), 2)), "{by_state:?}");
    for chart in ["#minutes", "#hours"] {
        let mut accepted = 0;
        for part in browser
            .find_all(Locator::Css(&format!("{chart} g.column rect.accepted")))
            .await
            .unwrap()
        {
            let count = part.attr("data-count").await.unwrap().unwrap_or_default();
            accepted += count.parse::<u64>().unwrap_or(0);
        }
        assert_eq!(
            accepted, 8,
            "{chart}'s columns hold the eight webhooks accepted"
        );
    }
    assert!(
        by_state.contains(&("sync.error.UnhandledConnectorError".to_owned(), 5)),
        "events by routing key: {by_state:?}"
    );
    assert!(
        by_state.contains(&("sync.account".to_owned(), 2)),
        "{by_state:?}"
    );
    let open = browser
        .find_all(Locator::Css("tr.incident[data-provider='Big Bank']"))
        .await
        .unwrap();
    assert_eq!(open.len(), 1, "the open incident is on the overview");
    if let Some(folder) = &charts {
        let png = browser.screenshot().await.unwrap();
        std::fs::write(format!("{folder}/console-overview.png"), png).unwrap();
    }

    // The Providers page: a bar per provider, its accounts by state.
    browser
        .goto(&format!("{}/providers", relay.console))
        .await
        .unwrap();
    shown(
        &browser,
        Locator::XPath("//h1[text()='Providers']"),
        "the Providers page",
    )
    .await;
    let providers = bars(&browser).await;
    assert_eq!(
        providers,
        [
            ("Big Bank".to_owned(), 5),
            ("Small Bank".to_owned(), 3),
            // The errors chart: five connector errors, one login failure.
            ("Big Bank".to_owned(), 5),
            ("Small Bank".to_owned(), 1),
        ],
        "one bar per provider the test used in each chart, the one with an incident first"
    );
    let big = browser
        .find(Locator::Css(
            "tr.bar[data-label='Big Bank'] rect.contact_provider",
        ))
        .await
        .unwrap();
    assert_eq!(big.attr("data-count").await.unwrap().as_deref(), Some("5"));
    let small = browser
        .find(Locator::Css(
            "tr.bar[data-label='Small Bank'] rect.needs_reconnect",
        ))
        .await
        .unwrap();
    assert_eq!(
        small.attr("data-count").await.unwrap().as_deref(),
        Some("1")
    );
    // Errors of the last 24 hours, by provider and code.
    let broken = browser
        .find(Locator::Css(
            "#errors tr.bar[data-label='Big Bank'] rect.UnhandledConnectorError",
        ))
        .await
        .unwrap();
    assert_eq!(
        broken.attr("data-count").await.unwrap().as_deref(),
        Some("5")
    );
    let login = browser
        .find(Locator::Css(
            "#errors tr.bar[data-label='Small Bank'] rect.LoginFailedError",
        ))
        .await
        .unwrap();
    assert_eq!(
        login.attr("data-count").await.unwrap().as_deref(),
        Some("1")
    );
    if let Some(folder) = &charts {
        let png = browser.screenshot().await.unwrap();
        std::fs::write(format!("{folder}/console-providers.png"), png).unwrap();
    }
    assert!(
        !browser.source().await.unwrap().contains("jane@example.com"),
        "no personal data"
    );

    // An account's page: its state now and its timeline.
    browser
        .goto(&format!("{}/accounts/{CLIENT_ID}/small-1", relay.console))
        .await
        .unwrap();
    let now = shown(
        &browser,
        Locator::XPath("//p[starts-with(., 'Now: ')]"),
        "the account's state",
    )
    .await;
    assert!(now.text().await.unwrap().contains("needs_reconnect"));
    let timeline = browser
        .find(Locator::XPath(
            "//tr[td[contains(., 'sync.error.LoginFailedError')]]",
        ))
        .await
        .expect("its event in its timeline")
        .text()
        .await
        .unwrap();
    assert!(timeline.contains("changed"), "{timeline}");

    browser.close().await.unwrap();
    relay.stop().await;
}

#[tokio::test]
async fn an_operator_finds_an_accounts_event_and_replays_its_dead_letter_from_the_browser() {
    let exchange = format!("browser-{}", uuid::Uuid::now_v7());
    let _cleanup = Cleanup(exchange.clone());
    let reprompt = format!("{exchange}.reprompt");
    let audit = format!("{exchange}.audit");
    let spool = std::env::temp_dir().join(&exchange).join("spool.sqlite");
    let mut settings = RelayEnv::new(CLIENT_ID, &exchange, &spool, &amqp_url())
        .set("HOOKRELAY__SERVER__LISTEN", "127.0.0.1:0")
        .set("HOOKRELAY__SERVER__ADMIN_LISTEN", "127.0.0.1:0")
        .set("HOOKRELAY__ADMIN__TOKEN", TOKEN)
        .settings(None);
    settings.queues = vec![
        QueueSettings::new(&reprompt, &["sync.error.#"], QueueType::Classic),
        QueueSettings::new(&audit, &["sync.error.#"], QueueType::Classic),
    ];
    let connection = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("RabbitMQ on AMQP_URL");
    let channel = connection.create_channel().await.unwrap();
    let relay = Relay::start(settings).await;
    let console = relay.console.clone();
    let http = reqwest::Client::new();

    // A login failure for account a-browser; the reprompt consumer fails it.
    let answer = relay
        .send(r#"{"hook":"SyncError","user":{"id":"u-browser","loginName":"jane@example.com"},"account":{"id":"a-browser","provider":"Big Bank"},"error":"LoginFailedError"}"#.to_owned())
        .await;
    let id = answer["id"].as_str().expect("accepted").to_owned();
    let failed = channel
        .basic_get(reprompt.as_str().into(), BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .expect("the event in reprompt");
    assert_eq!(
        failed.properties.message_id().as_ref().map(|m| m.as_str()),
        Some(id.as_str())
    );
    failed
        .delivery
        .acker
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    assert!(
        get(&channel, &audit).await.is_some(),
        "the bystander got its copy"
    );
    let dead_letters = format!("{exchange}.dead-letter");
    let dead = eventually(STEP, || async {
        channel
            .queue_declare(
                dead_letters.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .is_ok_and(|q| q.message_count() == 1)
    })
    .await;
    assert!(dead, "the rejected event was dead-lettered");

    // The console's index follows the history a moment behind.
    let listed = eventually(STEP, || async {
        let page = http
            .get(format!(
                "{console}/api/events?account_id=a-browser&routing_key=sync.%23"
            ))
            .bearer_auth(TOKEN)
            .send()
            .await;
        match page {
            Ok(page) => page
                .json::<serde_json::Value>()
                .await
                .is_ok_and(|page| page["events"][0]["message_id"] == id.as_str()),
            Err(_) => false,
        }
    })
    .await;
    assert!(listed, "the event is in the console's index");

    let driver = Driver::start().await;
    let browser = driver.browser().await;

    log_in(&browser, &console).await;

    // Find the account's event, and open it.
    browser.goto(&format!("{console}/events")).await.unwrap();
    let account = shown(
        &browser,
        Locator::Css("input[name=account_id]"),
        "the search form",
    )
    .await;
    account.send_keys("a-browser").await.unwrap();
    click(&browser, Locator::XPath("//button[text()='Search']")).await;
    // The page before the search lists the newest events, this one among
    // them: wait for the search's answer, or the link found is the old
    // page's and goes stale as the new one loads.
    let searched = eventually(STEP, || async {
        browser
            .current_url()
            .await
            .is_ok_and(|url| url.as_str().contains("account_id=a-browser"))
    })
    .await;
    assert!(searched, "the search's page loads");
    let link = shown(
        &browser,
        Locator::LinkText(&id),
        "the account's event is listed",
    )
    .await;
    link.click().await.unwrap();
    // The page reads no queue until asked: a look takes messages and puts
    // them back.
    shown(
        &browser,
        Locator::XPath("//button[starts-with(text(), 'Look for it')]"),
        "the event page offers to look for it",
    )
    .await
    .click()
    .await
    .unwrap();
    let held = shown(
        &browser,
        Locator::XPath("//strong[text()='held here']"),
        "the event page says it sits in the dead letters",
    )
    .await;
    assert!(held.text().await.unwrap().contains("held here"));
    assert!(
        !browser.source().await.unwrap().contains("jane@example.com"),
        "loginName is masked"
    );

    // Open the dead letters, pick it, replay it.
    browser
        .goto(&format!("{console}/dead-letters"))
        .await
        .unwrap();
    shown(
        &browser,
        Locator::XPath("//button[text()='Look at them']"),
        "the dead letters' depth, and a button to look",
    )
    .await
    .click()
    .await
    .unwrap();
    let pick = shown(
        &browser,
        Locator::Css(&format!("input[name=pick][value='{id}']")),
        "the dead letter is listed",
    )
    .await;
    pick.click().await.unwrap();
    click(
        &browser,
        Locator::XPath("//button[text()='Replay selected']"),
    )
    .await;
    browser
        .accept_alert()
        .await
        .expect("a confirmation before replaying");
    let replayed = eventually(STEP, || async {
        match browser.find(Locator::Id("result")).await {
            Ok(result) => result
                .text()
                .await
                .is_ok_and(|text| text.contains("Done: replayed 1,")),
            Err(_) => false,
        }
    })
    .await;
    if let Ok(path) = std::env::var("CONSOLE_SCREENSHOT") {
        std::fs::write(&path, browser.screenshot().await.unwrap()).unwrap();
    }
    assert!(
        replayed,
        "the page says it replayed one: {}",
        browser.source().await.unwrap()
    );

    // Back in the queue that failed it, and only there.
    let back = get(&channel, &reprompt)
        .await
        .expect("the replayed event in reprompt");
    assert_eq!(
        back.properties.message_id().as_ref().map(|m| m.as_str()),
        Some(id.as_str())
    );
    assert!(
        get(&channel, &audit).await.is_none(),
        "the bystander saw no replay"
    );

    browser.close().await.unwrap();
    relay.stop().await;
}
