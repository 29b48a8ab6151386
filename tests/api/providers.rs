//! Provider incidents: many accounts of one provider failing at once is the
//! sender's connector, not its users. The relay announces one
//! `provider.incident_opened` and one `provider.incident_resolved` through
//! `<exchange>.changes`, and the account changes of the incident name it;
//! across relays and restarts, each once.

use std::time::{Duration, Instant};

use hookrelay::wire::account::AccountChange;
use hookrelay::wire::provider::{IncidentKind, ProviderIncident, ResolvedBy};

use crate::helpers::{TestApp, spawn_app, spawn_app_unready, test_env};

fn webhook(error: Option<&str>, account: &str, provider: &str) -> String {
    let hook = match error {
        Some(code) => format!(r#""hook":"SyncError","error":"{code}""#),
        None => r#""hook":"SyncAccount""#.to_owned(),
    };
    format!(
        r#"{{{hook},"user":{{"id":"u-{account}","loginName":"jane@example.com"}},"account":{{"id":"{account}","provider":"{provider}"}}}}"#
    )
}

const BROKEN: Option<&str> = Some("UnhandledConnectorError");

/// What the relay announced.
#[derive(Debug)]
enum Heard {
    Account(AccountChange),
    Provider(ProviderIncident),
}

impl Heard {
    /// `account-id state (incident)` or `provider kind accounts=n`.
    fn said(&self) -> String {
        match self {
            Heard::Account(change) => format!(
                "{} {}{}",
                change.account_id,
                change.state.as_str(),
                if change.incident.is_some() {
                    " (incident)"
                } else {
                    ""
                }
            ),
            Heard::Provider(incident) => format!(
                "{} {} accounts={} recovered={}",
                incident.provider,
                incident.kind.as_str(),
                incident.accounts,
                incident.recovered
            ),
        }
    }
}

/// What `queue` received until an account change of `account` (sent last as
/// a barrier: the announcer goes in the order of the events). Panics after 30 s.
async fn heard_until(app: &TestApp, queue: &str, account: &str) -> Vec<Heard> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut heard = Vec::new();
    while !heard
        .iter()
        .any(|h| matches!(h, Heard::Account(c) if c.account_id == account))
    {
        assert!(
            Instant::now() < deadline,
            "no announcement for {account}; heard {heard:#?}"
        );
        match app.take(queue).await {
            Some(message) => heard.push(
                match message
                    .delivery
                    .routing_key
                    .as_str()
                    .starts_with("provider.")
                {
                    true => Heard::Provider(serde_json::from_slice(&message.data).unwrap()),
                    false => Heard::Account(serde_json::from_slice(&message.data).unwrap()),
                },
            ),
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    heard
}

fn said(heard: &[Heard]) -> Vec<String> {
    heard.iter().map(Heard::said).collect()
}

#[tokio::test]
async fn five_accounts_of_one_provider_failing_open_one_incident_and_their_syncs_resolve_it() {
    let app = spawn_app(&[]).await;
    let queue = app
        .bind_changes(&["provider.#", "account.contact_provider", "account.ok"])
        .await;

    // Four accounts of Big Bank and two of another bank fail: no incident.
    for account in ["b-1", "b-2", "o-1", "b-3", "b-4", "o-2"] {
        let provider = match account.starts_with('b') {
            true => "Big Bank",
            false => "Other Bank",
        };
        app.send(webhook(BROKEN, account, provider)).await;
    }
    app.send(webhook(None, "barrier-1", "Big Bank")).await;
    let four = heard_until(&app, &queue, "barrier-1").await;
    assert_eq!(
        said(&four),
        [
            "b-1 contact_provider",
            "b-2 contact_provider",
            "o-1 contact_provider",
            "b-3 contact_provider",
            "b-4 contact_provider",
            "o-2 contact_provider",
            "barrier-1 ok",
        ],
        "four accounts are no incident"
    );

    // The fifth opens it; another failure joins it; the other bank's is in none.
    let opened_by = app.send(webhook(BROKEN, "b-5", "Big Bank")).await;
    app.send(webhook(BROKEN, "b-6", "Big Bank")).await;
    app.send(webhook(BROKEN, "o-3", "Other Bank")).await;
    app.send(webhook(None, "barrier-2", "Other Bank")).await;
    let opened = heard_until(&app, &queue, "barrier-2").await;
    assert_eq!(
        said(&opened),
        [
            "Big Bank incident_opened accounts=5 recovered=0",
            "b-5 contact_provider (incident)",
            "b-6 contact_provider (incident)",
            "o-3 contact_provider",
            "barrier-2 ok",
        ]
    );
    let Heard::Provider(incident) = &opened[0] else {
        unreachable!()
    };
    assert_eq!(incident.kind, IncidentKind::IncidentOpened);
    assert_eq!(incident.code, "UnhandledConnectorError");
    assert_eq!(incident.caused_by, opened_by);
    let mut opened_with: Vec<&str> = incident
        .opened_with
        .iter()
        .map(|account| account.account_id.as_str())
        .collect();
    opened_with.sort_unstable();
    assert_eq!(
        opened_with,
        ["b-1", "b-2", "b-3", "b-4", "b-5"],
        "it names the accounts whose changes came before it"
    );
    let Heard::Account(change) = &opened[1] else {
        unreachable!()
    };
    assert_eq!(change.incident.as_ref(), Some(&incident.incident));
    assert_eq!(app.metric("hookrelay_provider_incidents_open").await, 1.0);

    // Five of its six accounts sync again: the fifth resolves it.
    for account in ["b-1", "b-2", "b-3", "b-4", "b-5"] {
        app.send(webhook(None, account, "Big Bank")).await;
    }
    app.send(webhook(None, "barrier-3", "Big Bank")).await;
    let resolved = heard_until(&app, &queue, "barrier-3").await;
    assert_eq!(
        said(&resolved),
        [
            "b-1 ok (incident)",
            "b-2 ok (incident)",
            "b-3 ok (incident)",
            "b-4 ok (incident)",
            "b-5 ok (incident)",
            "Big Bank incident_resolved accounts=6 recovered=5",
            "barrier-3 ok",
        ]
    );
    let Heard::Provider(done) = &resolved[5] else {
        unreachable!()
    };
    assert_eq!(done.incident, incident.incident);
    assert_eq!(done.resolved_by, Some(ResolvedBy::AccountsSynced));
    assert!(done.duration_seconds.is_some());
    assert_eq!(app.metric("hookrelay_provider_incidents_open").await, 0.0);
    assert_eq!(
        app.metric(r#"hookrelay_provider_incidents_announced_total{kind="incident_opened"}"#)
            .await,
        1.0
    );
    // The history keeps both, for an operator with a shell.
    let listed = app
        .run(&["events", "--routing-key", "provider.#", "--json"])
        .await;
    assert!(listed.status.success(), "{listed:?}");
    let keys: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["routing_key"].to_string()
        })
        .collect();
    assert_eq!(
        keys,
        [
            r#""provider.incident_opened""#,
            r#""provider.incident_resolved""#
        ]
    );
    app.stop().await.unwrap();
}

#[tokio::test]
async fn a_second_relay_and_a_restart_announce_each_incident_message_once() {
    let exchange = format!("test-{}", uuid::Uuid::now_v7());
    let relay = |n: u32| {
        let spool = std::env::temp_dir()
            .join(&exchange)
            .join(format!("spool-{n}.sqlite"));
        test_env(&exchange)
            .set("HOOKRELAY__SPOOL__PATH", spool.to_str().unwrap())
            .settings(None)
    };
    // `first` announces (it takes the lease first); `second` stands by.
    let mut first = spawn_app_unready(relay(1)).await;
    first.wait_until_ready().await;
    let queue = first.bind_changes(&["provider.#", "account.ok"]).await;
    let second = spawn_app_unready(relay(2)).await;
    second.wait_until_ready().await;

    // The failures come through both relays; the incident opens once.
    for n in 1..=5 {
        let relay = if n % 2 == 0 { &first } else { &second };
        relay
            .send(webhook(BROKEN, &format!("b-{n}"), "Big Bank"))
            .await;
    }
    second.send(webhook(None, "barrier-1", "Other Bank")).await;
    let mut heard = heard_until(&first, &queue, "barrier-1").await;

    // The announcer stops; the second takes over and announces the rest.
    first.shutdown_relay().await.unwrap();
    for n in 1..=5 {
        second
            .send(webhook(None, &format!("b-{n}"), "Big Bank"))
            .await;
    }
    second.send(webhook(None, "barrier-2", "Other Bank")).await;
    heard.extend(heard_until(&first, &queue, "barrier-2").await);

    // The first comes back (it resumes from its store) and takes over.
    let restarted = spawn_app_unready(relay(1)).await;
    restarted.wait_until_ready().await;
    second.stop_without_cleaning().await;
    restarted
        .send(webhook(None, "barrier-3", "Other Bank"))
        .await;
    heard.extend(heard_until(&first, &queue, "barrier-3").await);

    assert_eq!(
        said(&heard),
        [
            "Big Bank incident_opened accounts=5 recovered=0",
            "barrier-1 ok",
            "b-1 ok (incident)",
            "b-2 ok (incident)",
            "b-3 ok (incident)",
            "b-4 ok (incident)",
            "b-5 ok (incident)",
            "Big Bank incident_resolved accounts=5 recovered=5",
            "barrier-2 ok",
            "barrier-3 ok",
        ],
        "each once, in order"
    );
    restarted.stop_without_cleaning().await;
    first.stop().await.unwrap();
}
