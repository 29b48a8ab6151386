//! Every account's state, folded from the events the history keeps: what
//! `hookrelay accounts` lists, and what the relay rebuilds on start (no
//! database of its own: the history stream is the record).

use std::collections::{BTreeMap, btree_map};
use std::hash::{DefaultHasher, Hash, Hasher};

use serde::Serialize;

use crate::event::ErrorCode;
use crate::history::Recorded;
use crate::wire::headers::{self, ACCOUNT_ID, CLIENT_ID, USER_ID};

use super::state::{Account, Outcome, State, Transition};

/// How many message ids an account remembers, so that an event delivered
/// twice (publishing is at least once) is applied once.
const REMEMBERED_IDS: usize = 8;

/// An account, as the sender names it to one client app.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Key {
    pub client_id: String,
    pub account_id: String,
}

impl Key {
    /// The account an event is about (its `x-client-id` and `account-id`).
    pub fn of(event: &Recorded) -> Option<Key> {
        let found = event.properties.headers().as_ref();
        Some(Key {
            client_id: headers::text(found, CLIENT_ID)?,
            account_id: headers::text(found, ACCOUNT_ID)?,
        })
    }
}

/// One account in the book: its state and the events behind it.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    #[serde(flatten)]
    pub key: Key,
    pub user_id: String,
    /// `account.provider` of the event that last changed the account's
    /// state (or of the first later one that named one): read from the body
    /// only then, not for every daily event.
    pub provider: Option<String>,
    #[serde(flatten)]
    pub state: State,
    /// Temporary failures in a row.
    pub streak: u32,
    /// `x-received-at` of the event that put the account in this state.
    pub since: Option<String>,
    /// The latest event: its message id, routing key and `x-received-at`.
    pub last_event: LastEvent,
    #[serde(skip)]
    seen: Seen,
}

/// The message ids of an account's latest events, as 64-bit hashes in a
/// ring: 72 bytes per account, where the ids themselves would take ten times
/// that. A false match (an event taken for one already applied) needs two of
/// eight ids of one account to share a 64-bit hash.
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    ids: [u64; REMEMBERED_IDS],
    next: usize,
}

impl Seen {
    fn id(message_id: &str) -> u64 {
        let mut hasher = DefaultHasher::new();
        message_id.hash(&mut hasher);
        // 0 marks an empty slot.
        hasher.finish().max(1)
    }

    fn contains(&self, id: u64) -> bool {
        self.ids.contains(&id)
    }

    fn with(mut self, id: Option<u64>) -> Seen {
        if let Some(id) = id {
            self.ids[self.next] = id;
            self.next = (self.next + 1) % REMEMBERED_IDS;
        }
        self
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct LastEvent {
    pub message_id: String,
    pub routing_key: String,
    pub received_at: Option<String>,
}

/// The accounts of every client app, by key.
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

    /// Applies one event from the history. Returns the account's key and its
    /// transition when its state changed; nothing for what is not a sync
    /// event (a quarantined body, an `account.*` message) or for an event
    /// already applied.
    pub fn apply(&mut self, event: &Recorded) -> Option<(Key, Transition)> {
        let outcome = outcome(&event.routing_key)?;
        let key = Key::of(event)?;
        let message_id = event.message_id();
        let seen = message_id.as_deref().map(Seen::id);
        let last_event = || LastEvent {
            message_id: message_id.clone().unwrap_or_default(),
            routing_key: event.routing_key.clone(),
            received_at: event.received_at_text(),
        };
        let user_id =
            || headers::text(event.properties.headers().as_ref(), USER_ID).unwrap_or_default();
        match self.accounts.entry(key) {
            btree_map::Entry::Vacant(vacant) => {
                let (account, transition) = Account::apply(None, &outcome, self.escalate_after);
                let last_event = last_event();
                let key = vacant.key().clone();
                vacant.insert(Entry {
                    key: key.clone(),
                    user_id: user_id(),
                    provider: provider(&event.body),
                    state: account.state,
                    streak: account.streak,
                    since: last_event.received_at.clone(),
                    last_event,
                    seen: Seen::default().with(seen),
                });
                transition.map(|transition| (key, transition))
            }
            btree_map::Entry::Occupied(mut occupied) => {
                let entry = occupied.get_mut();
                if seen.is_some_and(|id| entry.seen.contains(id)) {
                    return None;
                }
                let known = Account {
                    state: entry.state.clone(),
                    streak: entry.streak,
                };
                let (account, transition) =
                    Account::apply(Some(&known), &outcome, self.escalate_after);
                entry.last_event = last_event();
                if transition.is_some() {
                    entry.since = entry.last_event.received_at.clone();
                }
                entry.user_id = user_id();
                if (transition.is_some() || entry.provider.is_none())
                    && let Some(provider) = provider(&event.body)
                {
                    entry.provider = Some(provider);
                }
                entry.state = account.state;
                entry.streak = account.streak;
                entry.seen = std::mem::take(&mut entry.seen).with(seen);
                transition.map(|transition| (occupied.key().clone(), transition))
            }
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
            ErrorCode::parse(code).ok().map(Outcome::Failed)
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use lapin::BasicProperties;
    use lapin::types::FieldTable;

    use super::*;

    /// An event of `account`, as the history holds it.
    pub(in crate::accounts) fn event(id: &str, account: &str, routing_key: &str) -> Recorded {
        let mut found = FieldTable::default();
        headers::set_text(&mut found, CLIENT_ID, "app-1");
        headers::set_text(&mut found, ACCOUNT_ID, account);
        headers::set_text(&mut found, USER_ID, "u-1");
        headers::set_text(
            &mut found,
            headers::RECEIVED_AT,
            &format!("2026-11-30T0{id}:00:00Z"),
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

    #[test]
    fn accounts_are_folded_apart_and_an_event_seen_twice_counts_once() {
        let mut book = Book::new(3);
        let heard: Vec<_> = [
            event("1", "a-1", "sync.error.TemporaryFailureError"),
            event("2", "a-2", "sync.error.LoginFailedError"),
            event("3", "a-1", "sync.error.TemporaryFailureError"),
            event("3", "a-1", "sync.error.TemporaryFailureError"), // delivered twice
            event("4", "a-2", "sync.error.LoginFailedError"),
            event("5", "a-1", "sync.error.TemporaryFailureError"),
        ]
        .iter()
        .filter_map(|e| book.apply(e))
        .map(|(key, t)| format!("{} {}", key.account_id, t.state))
        .collect();

        assert_eq!(
            heard,
            [
                "a-1 retrying",
                "a-2 needs_reconnect (Credentials)",
                "a-1 contact_provider (RepeatedTemporaryFailures)",
            ]
        );
        let key = |account: &str| Key {
            client_id: "app-1".into(),
            account_id: account.into(),
        };
        let a1 = book.get(&key("a-1")).unwrap();
        assert_eq!(a1.streak, 3);
        assert_eq!(a1.since.as_deref(), Some("2026-11-30T05:00:00Z"));
        // Still needs a reconnect since the first failure, not the latest.
        let a2 = book.get(&key("a-2")).unwrap();
        assert_eq!(a2.since.as_deref(), Some("2026-11-30T02:00:00Z"));
        assert_eq!(a2.last_event.message_id, "4");
        // Read at the change, not at every repeat of it.
        assert_eq!(a2.provider.as_deref(), Some("Bank 2"));
    }

    #[test]
    fn what_is_not_a_sync_event_is_left_out() {
        let mut book = Book::new(3);
        assert!(book.apply(&event("1", "a-1", "quarantine")).is_none());
        assert!(book.apply(&event("2", "a-1", "account.ok")).is_none());
        assert!(book.is_empty());
    }
}
