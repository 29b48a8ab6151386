//! Every account's state, folded from the events the history keeps, in
//! **event time**: the time the relay received each webhook
//! (`x-received-at`), not the order events reach the history. A webhook that
//! waited in a relay's spool while RabbitMQ was away, or a quarantined body
//! re-driven later, reaches the history after newer events of its account:
//! it goes into the account's timeline, but it changes no state and causes no
//! announcement, since what came after it is the newer truth.
//!
//! [`fold`] is the one rule, for one account; [`Book`] applies it to every
//! account in memory (`hookrelay accounts`, a timeline), the relay's
//! derived store ([`crate::derived`]) in SQLite.

use schemars::JsonSchema;
use std::collections::{BTreeMap, btree_map};

use serde::Serialize;

use crate::history::Recorded;
use crate::wire::account::{AccountChange, StateName};
use crate::wire::envelope::TraceContext;
use crate::wire::headers::{self, ACCOUNT_ID, CLIENT_ID, USER_ID};

use super::state::{Account, Outcome, State, Transition};

/// An account, as the sender names it to one client app.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, JsonSchema)]
pub struct Key {
    pub client_id: String,
    pub account_id: String,
}

/// One event as a listing shows it: its message id, routing key and
/// `x-received-at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct LastEvent {
    pub message_id: String,
    pub routing_key: String,
    pub received_at: Option<String>,
}

/// What the fold reads of one `sync.*` event of the history.
#[derive(Debug, Clone)]
pub struct Report {
    pub key: Key,
    pub user_id: String,
    pub outcome: Outcome,
    pub event: LastEvent,
    /// `x-received-at` in milliseconds since the epoch: the event's time.
    pub received_ms: Option<i64>,
    /// The trace the event's message carries, continued by its announcement.
    pub trace: Option<TraceContext>,
    /// Read only for `account.provider`, and only when the account changes:
    /// the body also holds personal data (`user.loginName`).
    body: Vec<u8>,
}

impl Report {
    /// The report of a `sync.*` event; `None` for anything else (a
    /// quarantined body, an announcement) or an event without its account.
    pub fn of(event: &Recorded) -> Option<Report> {
        Report::taking(event.clone())
    }

    /// [`Report::of`], keeping the event's body rather than copying it.
    pub fn taking(event: Recorded) -> Option<Report> {
        let outcome = outcome(&event.routing_key)?;
        let found = event.properties.headers().as_ref();
        let received_at = event.received_at_text();
        Some(Report {
            key: Key {
                client_id: headers::text(found, CLIENT_ID)?,
                account_id: headers::text(found, ACCOUNT_ID)?,
            },
            user_id: headers::text(found, USER_ID).unwrap_or_default(),
            outcome,
            received_ms: received_at
                .as_deref()
                .and_then(|at| humantime::parse_rfc3339_weak(at).ok())
                .map(millis),
            trace: TraceContext::of(&event.properties),
            event: LastEvent {
                message_id: event.message_id().unwrap_or_default(),
                routing_key: event.routing_key,
                received_at,
            },
            body: event.body,
        })
    }

    /// The report of an event as the console's index holds it (no body:
    /// its provider is not known).
    pub fn of_row(row: &crate::history::index::Row) -> Option<Report> {
        let received_at = row.received_at.clone();
        Some(Report {
            key: Key {
                client_id: row.client_id.clone()?,
                account_id: row.account_id.clone()?,
            },
            user_id: row.user_id.clone().unwrap_or_default(),
            outcome: outcome(&row.routing_key)?,
            received_ms: received_at
                .as_deref()
                .and_then(|at| humantime::parse_rfc3339_weak(at).ok())
                .map(millis),
            trace: None,
            event: LastEvent {
                message_id: row.message_id.clone().unwrap_or_default(),
                routing_key: row.routing_key.clone(),
                received_at,
            },
            body: Vec::new(),
        })
    }

    /// `account.provider` of the body, if it names one (a string).
    pub fn provider(&self) -> Option<String> {
        provider(&self.body)
    }
}

/// One account in the book: its state and the events behind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
#[schemars(rename = "Account")]
pub struct Entry {
    #[serde(flatten)]
    pub key: Key,
    pub user_id: String,
    /// `account.provider` of the event that last changed the account's
    /// state (or of the first later one that named one).
    pub provider: Option<String>,
    /// `state`, `reason`, `code`, as announced.
    #[serde(flatten)]
    pub state: State,
    /// Temporary failures in a row.
    pub streak: u32,
    /// `x-received-at` of the event that put the account in this state.
    pub since: Option<String>,
    /// The same in milliseconds since the epoch, for selections by time.
    #[serde(skip)]
    pub since_ms: Option<i64>,
    /// The latest event applied (the newest in event time).
    pub last_event: LastEvent,
    /// Its `x-received-at` in milliseconds: an event older than this is late.
    #[serde(skip)]
    pub applied_ms: Option<i64>,
}

/// What one event did to its account. Returned and matched at once, never
/// kept in bulk: the size of `Applied` costs nothing a box would save.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)]
pub enum Fold {
    /// Older than the latest event applied (or that event again): kept in
    /// the timeline, the account unchanged, nothing announced.
    Late,
    /// Applied: the account as it is now, and its change, if any.
    Applied {
        entry: Entry,
        transition: Option<Transition>,
    },
}

/// Applies `report` to the account as `known` has it (`None`: never seen);
/// `escalate_after` is `accounts.temporary_failures_to_escalate`.
pub fn fold(known: Option<&Entry>, report: &Report, escalate_after: u32) -> Fold {
    if let Some(known) = known
        && is_late(known, report)
    {
        return Fold::Late;
    }
    let account = known.map(|entry| Account {
        state: entry.state.clone(),
        streak: entry.streak,
    });
    let (account, transition) = Account::apply(account.as_ref(), &report.outcome, escalate_after);
    let provider = match known {
        Some(known) if transition.is_none() && known.provider.is_some() => known.provider.clone(),
        Some(known) => report.provider().or_else(|| known.provider.clone()),
        None => report.provider(),
    };
    let (since, since_ms) = match known {
        Some(known) if transition.is_none() => (known.since.clone(), known.since_ms),
        _ => (report.event.received_at.clone(), report.received_ms),
    };
    Fold::Applied {
        entry: Entry {
            key: report.key.clone(),
            user_id: report.user_id.clone(),
            provider,
            state: account.state,
            streak: account.streak,
            since,
            since_ms,
            last_event: report.event.clone(),
            applied_ms: report.received_ms.or(known.and_then(|k| k.applied_ms)),
        },
        transition,
    }
}

/// Older than the latest event applied, or that very event again (a
/// message the relay published twice: publishing is at least once). Two
/// events in the same millisecond are taken in the order they came.
fn is_late(known: &Entry, report: &Report) -> bool {
    match (known.applied_ms, report.received_ms) {
        (Some(applied), Some(received)) => {
            received < applied
                || (received == applied && report.event.message_id == known.last_event.message_id)
        }
        _ => report.event.message_id == known.last_event.message_id,
    }
}

/// The announcement of `transition`, which `report`'s event caused and
/// which left the account as `entry` says.
pub fn announcement(entry: &Entry, transition: &Transition, report: &Report) -> AccountChange {
    let code = match &report.outcome {
        Outcome::Failed(code) => Some(code.as_str().to_owned()),
        Outcome::Synced => None,
    };
    AccountChange {
        client_id: entry.key.client_id.clone(),
        account_id: entry.key.account_id.clone(),
        user_id: entry.user_id.clone(),
        provider: entry.provider.clone(),
        state: (&transition.state).into(),
        previous_state: transition.previous.as_ref().map(Into::into),
        reason: transition.state.reason(),
        code,
        streak: transition.streak,
        since: entry.since.clone(),
        caused_by: report.event.message_id.clone(),
        incident: None,
    }
}

/// The routing key of what the announcing relay decides by its clock.
pub const SILENT_KEY: &str = "account.silent";

/// The announcement that `entry`, whose latest event is too old, is
/// silent: caused by that event (so every relay gives it the same id), in
/// the state since then.
pub fn silenced(entry: &Entry) -> AccountChange {
    AccountChange {
        client_id: entry.key.client_id.clone(),
        account_id: entry.key.account_id.clone(),
        user_id: entry.user_id.clone(),
        provider: entry.provider.clone(),
        state: StateName::Silent,
        previous_state: Some((&entry.state).into()),
        reason: None,
        code: None,
        streak: entry.streak,
        since: entry.last_event.received_at.clone(),
        caused_by: entry.last_event.message_id.clone(),
        incident: None,
    }
}

/// Whether an account in `state` can go silent: only one that needs nobody
/// (`ok`, or `retrying`, which the sender retries by itself). An account
/// that needs its user or the sender's support keeps saying so however long
/// the sender stays quiet about it: that is what support lists.
pub fn may_go_silent(state: &State) -> bool {
    matches!(state, State::Ok | State::Retrying)
}

/// `entry` once the history holds `change`, an `account.silent` the
/// announcing relay decided: silent since its latest event, if it had none
/// since the one `change` names (`None`: the announcement crossed a newer
/// event, or the account is silent already).
pub fn silence(entry: &Entry, change: &AccountChange) -> Option<Entry> {
    (may_go_silent(&entry.state) && entry.last_event.message_id == change.caused_by).then(|| {
        Entry {
            state: State::Silent,
            since: change.since.clone(),
            since_ms: change
                .since
                .as_deref()
                .and_then(|at| humantime::parse_rfc3339_weak(at).ok())
                .map(millis),
            ..entry.clone()
        }
    })
}

/// The accounts of every client app, by key, in memory.
#[derive(Debug, Default)]
pub struct Book {
    accounts: BTreeMap<Key, Entry>,
    escalate_after: u32,
}

impl Book {
    /// An empty book; `escalate_after` is
    /// `accounts.temporary_failures_to_escalate`.
    pub fn new(escalate_after: u32) -> Book {
        Book {
            accounts: BTreeMap::new(),
            escalate_after,
        }
    }

    /// Applies one event from the history (see [`fold`]): its report and
    /// what it did, or `None` for what is not a `sync.*` event (an
    /// `account.silent` read back is applied too, see [`silence`]).
    pub fn apply(&mut self, event: &Recorded) -> Option<(Report, Fold)> {
        if event.routing_key == SILENT_KEY {
            self.silence(event);
            return None;
        }
        if event.routing_key == crate::wire::client::SILENT {
            self.silence_client(event);
            return None;
        }
        let report = Report::of(event)?;
        let folded = match self.accounts.entry(report.key.clone()) {
            btree_map::Entry::Vacant(vacant) => {
                let folded = fold(None, &report, self.escalate_after);
                if let Fold::Applied { entry, .. } = &folded {
                    vacant.insert(entry.clone());
                }
                folded
            }
            btree_map::Entry::Occupied(mut occupied) => {
                let folded = fold(Some(occupied.get()), &report, self.escalate_after);
                if let Fold::Applied { entry, .. } = &folded {
                    *occupied.get_mut() = entry.clone();
                }
                folded
            }
        };
        Some((report, folded))
    }

    fn silence(&mut self, event: &Recorded) {
        let Ok(change) = serde_json::from_slice::<AccountChange>(&event.body) else {
            return;
        };
        let key = Key {
            client_id: change.client_id.clone(),
            account_id: change.account_id.clone(),
        };
        if let Some(entry) = self.accounts.get_mut(&key)
            && let Some(silent) = silence(entry, &change)
        {
            *entry = silent;
        }
    }

    /// A `client.silent` read back: the client's accounts whose latest
    /// event is older than its `before` are silent.
    fn silence_client(&mut self, event: &Recorded) {
        let Ok(silent) = serde_json::from_slice::<crate::wire::client::ClientSilent>(&event.body)
        else {
            return;
        };
        for entry in self.accounts.values_mut().filter(|entry| {
            entry.key.client_id == silent.client_id
                && may_go_silent(&entry.state)
                && entry.applied_ms.is_some_and(|at| at < silent.before_ms)
        }) {
            entry.state = State::Silent;
            entry.since.clone_from(&entry.last_event.received_at);
            entry.since_ms = entry.applied_ms;
        }
    }

    /// Every account, in key order.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.accounts.values()
    }

    pub fn get(&self, key: &Key) -> Option<&Entry> {
        self.accounts.get(key)
    }

    pub fn len(&self) -> usize {
        self.accounts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.accounts.is_empty()
    }
}

/// Milliseconds since the epoch.
pub(crate) fn millis(at: std::time::SystemTime) -> i64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `account.provider` of a webhook body, if it names one. Only that field is
/// read: the body also holds personal data (`user.loginName`).
fn provider(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Body {
        account: Option<AccountPart>,
    }
    #[derive(serde::Deserialize)]
    struct AccountPart {
        provider: Option<serde_json::Value>,
    }
    let body: Body = serde_json::from_slice(body).ok()?;
    match body.account?.provider? {
        serde_json::Value::String(provider) if !provider.is_empty() => Some(provider),
        _ => None,
    }
}

/// The outcome a routing key reports: `sync.account`, `sync.error.<code>`.
pub(super) fn outcome(routing_key: &str) -> Option<Outcome> {
    match routing_key.strip_prefix("sync.")? {
        "account" => Some(Outcome::Synced),
        rest => {
            let code = rest.strip_prefix("error.")?;
            crate::event::ErrorCode::parse(code)
                .ok()
                .map(Outcome::Failed)
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use lapin::BasicProperties;
    use lapin::types::FieldTable;

    use super::*;
    use crate::wire::account::StateName;

    /// An event of `account`, as the history holds it, received at
    /// 2026-11-30T00:00:<second>Z.
    pub(crate) fn event_at(id: &str, account: &str, routing_key: &str, second: u32) -> Recorded {
        let mut found = FieldTable::default();
        headers::set_text(&mut found, CLIENT_ID, "app-1");
        headers::set_text(&mut found, ACCOUNT_ID, account);
        headers::set_text(&mut found, USER_ID, "u-1");
        headers::set_text(
            &mut found,
            headers::RECEIVED_AT,
            &format!("2026-11-30T00:{:02}:{:02}.000Z", second / 60, second % 60),
        );
        Recorded {
            offset: 0,
            routing_key: routing_key.to_owned(),
            properties: BasicProperties::default()
                .with_message_id(id.into())
                .with_headers(found),
            body: format!(r#"{{"account":{{"id":"{account}","provider":"Bank {id}"}}}}"#)
                .into_bytes(),
        }
    }

    /// `account_id state` of each change `events` made, in order.
    fn heard(book: &mut Book, events: &[Recorded]) -> Vec<String> {
        events
            .iter()
            .filter_map(|e| book.apply(e))
            .filter_map(|(report, folded)| match folded {
                Fold::Applied {
                    transition: Some(t),
                    ..
                } => Some(format!("{} {}", report.key.account_id, t.state)),
                _ => None,
            })
            .collect()
    }

    fn key(account: &str) -> Key {
        Key {
            client_id: "app-1".into(),
            account_id: account.into(),
        }
    }

    #[test]
    fn accounts_are_folded_apart_and_a_message_seen_twice_counts_once() {
        let mut book = Book::new(3);
        let events = [
            event_at("1", "a-1", "sync.error.TemporaryFailureError", 1),
            event_at("2", "a-2", "sync.error.LoginFailedError", 2),
            event_at("3", "a-1", "sync.error.TemporaryFailureError", 3),
            event_at("3", "a-1", "sync.error.TemporaryFailureError", 3), // published twice
            event_at("4", "a-2", "sync.error.LoginFailedError", 4),
            event_at("5", "a-1", "sync.error.TemporaryFailureError", 5),
        ];
        assert_eq!(
            heard(&mut book, &events),
            [
                "a-1 retrying",
                "a-2 needs_reconnect (credentials)",
                "a-1 contact_provider (repeated_temporary_failures)",
            ]
        );
        let a1 = book.get(&key("a-1")).unwrap();
        assert_eq!(a1.streak, 3);
        assert_eq!(a1.since.as_deref(), Some("2026-11-30T00:00:05.000Z"));
        // Still needs a reconnect since the first failure, not the latest.
        let a2 = book.get(&key("a-2")).unwrap();
        assert_eq!(a2.since.as_deref(), Some("2026-11-30T00:00:02.000Z"));
        assert_eq!(a2.last_event.message_id, "4");
        // Read at the change, not at every repeat of it.
        assert_eq!(a2.provider.as_deref(), Some("Bank 2"));
    }

    #[test]
    fn repeats_are_events_each_counted() {
        // "if this error keeps happening for the same account, contact us":
        // three identical webhooks a moment apart are three failures.
        let mut book = Book::new(3);
        let events: Vec<Recorded> = (1..=3)
            .map(|n| {
                event_at(
                    &format!("t{n}"),
                    "a-1",
                    "sync.error.TemporaryFailureError",
                    n,
                )
            })
            .collect();
        assert_eq!(
            heard(&mut book, &events),
            [
                "a-1 retrying",
                "a-1 contact_provider (repeated_temporary_failures)"
            ]
        );
    }

    #[test]
    fn a_late_event_changes_nothing_and_is_not_announced() {
        // A LoginFailedError spooled by one relay (received at 10) reaches
        // the history after a SyncAccount another relay received at 20.
        let mut book = Book::new(3);
        let synced = event_at("s", "a-1", "sync.account", 20);
        let late = event_at("l", "a-1", "sync.error.LoginFailedError", 10);
        assert_eq!(heard(&mut book, &[synced, late.clone()]), ["a-1 ok"]);
        let entry = book.get(&key("a-1")).unwrap();
        assert_eq!(entry.state, State::Ok);
        assert_eq!(
            entry.last_event.message_id, "s",
            "the newest event stays the last"
        );
        let (_, folded) = book.apply(&late).unwrap();
        assert_eq!(folded, Fold::Late);

        // In the same millisecond, arrival order decides.
        let tied = event_at("t", "a-1", "sync.error.LoginFailedError", 20);
        assert_eq!(
            heard(&mut book, &[tied]),
            ["a-1 needs_reconnect (credentials)"]
        );
    }

    #[test]
    fn the_announcement_names_the_cause_the_code_and_the_previous_state() {
        let mut book = Book::new(3);
        book.apply(&event_at("1", "a-1", "sync.account", 1));
        let (report, folded) = book
            .apply(&event_at(
                "2",
                "a-1",
                "sync.error.UnhandledConnectorError",
                2,
            ))
            .unwrap();
        let Fold::Applied {
            entry,
            transition: Some(transition),
        } = folded
        else {
            panic!("a change");
        };
        let change = announcement(&entry, &transition, &report);
        assert_eq!(change.routing_key(), "account.contact_provider");
        assert_eq!(change.previous_state, Some(StateName::Ok));
        assert_eq!(change.code.as_deref(), Some("UnhandledConnectorError"));
        assert_eq!(change.caused_by, "2");
        assert_eq!(change.since.as_deref(), Some("2026-11-30T00:00:02.000Z"));
        assert_eq!(change.provider.as_deref(), Some("Bank 2"));
    }

    #[test]
    fn what_is_not_a_sync_event_is_left_out() {
        let mut book = Book::new(3);
        assert!(book.apply(&event_at("1", "a-1", "quarantine", 1)).is_none());
        assert!(book.apply(&event_at("2", "a-1", "account.ok", 2)).is_none());
        assert!(book.is_empty());
    }
}
