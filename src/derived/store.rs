//! The relay's SQLite file of what it derives from the history: the index
//! of events (for the console), every account's state, the account changes
//! not announced yet, and how far the follower has read. The follower
//! writes one transaction per batch of events, its position included, so a
//! crash loses a suffix of what it read and the next start reads exactly
//! that suffix again: nothing is applied twice or skipped.
//!
//! Memory does not grow with accounts: they live in the file (SQLite's page
//! cache is bounded by `CACHE_KIB` per connection).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Mutex;

use anyhow::Context;
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::accounts::book::{Entry, Fold, Key, LastEvent, Report, announcement, fold, millis};
use crate::accounts::{Selection, State};
use crate::audit::notes::Note;
use crate::history::index::{self, Found, Row};
use crate::history::{Filter, Recorded};
use crate::unpoisoned::Locked;
use crate::wire::account::{self, AccountChange, ROUTING_PREFIX, Reason, StateName};
use crate::wire::envelope::Stamp;
use crate::wire::envelope::TraceContext;

/// Bumped when the tables change: a file of another version is started
/// over from the stream (the stream is the truth).
const SCHEMA: i64 = 2;
/// SQLite's page cache per connection: what the file costs in memory, at most.
const CACHE_KIB: i64 = 8 * 1024;
/// Accounts the follower keeps in memory besides, so that an account that
/// syncs again and again is not read back from the file for every event
/// (a few hundred bytes each): emptied when full.
const CACHED_ACCOUNTS: usize = 32 * 1024;

/// Which tables the follower feeds, as this relay's settings say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Derives {
    /// The console's index of events (with a console token).
    pub index: bool,
    /// Accounts and the changes to announce (with `[accounts]` on).
    pub accounts: bool,
    /// `accounts.temporary_failures_to_escalate`.
    pub escalate_after: u32,
}

impl Derives {
    /// What a file fed otherwise must be started over for.
    fn signature(self) -> String {
        format!(
            "index={} accounts={} escalate_after={}",
            self.index, self.accounts, self.escalate_after
        )
    }
}

/// Where the follower stopped: the last offset applied, and that event's
/// message id (to tell the same stream from one deleted and declared again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub offset: u64,
    pub message_id: Option<String>,
}

/// One event of the history, as the follower hands it over.
#[derive(Debug)]
pub struct Item {
    pub offset: u64,
    pub message_id: Option<String>,
    /// Its index row, when indexing.
    pub row: Option<Row>,
    pub what: What,
    /// What the always-on audit tallies of it.
    pub audit: Option<Audited>,
}

/// What an event or a note tells the audit's tally.
#[derive(Debug)]
pub enum Audited {
    /// A stored webhook: its relay and number.
    Stored(Stamp),
    /// A relay's note.
    Note(Note),
}

impl Audited {
    fn of(event: &Recorded, note: bool) -> Option<Audited> {
        match note {
            true => Note::of(&event.properties, &event.body).map(Audited::Note),
            false => Stamp::of(event.properties.headers().as_ref()).map(Audited::Stored),
        }
    }
}

impl Item {
    /// What the store needs of one event, as a relay that derives
    /// `derives` reads it.
    pub fn of(event: Recorded, derives: Derives) -> Item {
        // A relay's note is read (its offset counts toward catching up) and
        // neither indexed nor folded: it is not an event.
        let note = event.routing_key == crate::history::RELAY_NOTE;
        let row = (derives.index && !note).then(|| Row::of(&event));
        let audit = Audited::of(&event, note);
        let what = if !derives.accounts || note {
            What::Other
        } else if event.routing_key.starts_with(ROUTING_PREFIX) {
            match account::caused_by(event.properties.headers().as_ref()) {
                Some(caused_by) => What::Announced { caused_by },
                None => What::Other,
            }
        } else {
            let offset = event.offset;
            let message_id = event.message_id();
            return Item {
                offset,
                message_id,
                row,
                audit,
                what: match Report::taking(event) {
                    Some(report) => What::Report(Box::new(report)),
                    None => What::Other,
                },
            };
        };
        Item {
            offset: event.offset,
            message_id: event.message_id(),
            row,
            what,
            audit,
        }
    }
}

/// What an event means to the accounts.
#[derive(Debug)]
pub enum What {
    /// A `sync.*` event.
    Report(Box<Report>),
    /// An announcement (`account.*`): the change it pays.
    Announced { caused_by: String },
    /// Anything else (a quarantined body).
    Other,
}

/// What one batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Changes owed from now on.
    pub changes: u64,
    /// Owed changes the history now holds the announcement of.
    pub paid: u64,
}

/// A change to announce, with what its announcement carries besides.
#[derive(Debug, Clone)]
pub struct Owed {
    /// The offset of the event that caused it: announced in this order.
    pub offset: u64,
    pub change: AccountChange,
    /// The causing event's trace context, continued by the announcement.
    pub trace: Option<TraceContext>,
}

/// One page of accounts, in key order.
#[derive(Debug)]
pub struct AccountsPage {
    pub accounts: Vec<Entry>,
    /// Pass as `after` for the next page; `None` on the last.
    pub next: Option<Key>,
}

/// One connection to the file: the follower's, or the readers'.
pub struct Store {
    db: Mutex<Connection>,
    /// The follower's accounts as the file holds them (committed), by key.
    cache: Mutex<HashMap<Key, Entry>>,
}

fn offset_sql(offset: u64) -> i64 {
    i64::try_from(offset).unwrap_or(i64::MAX)
}

impl Store {
    /// Opens (or creates) the file at `path` for the follower, starting it
    /// over if an earlier version wrote it.
    pub fn open(path: &Path) -> anyhow::Result<Store> {
        if let Some(folder) = path.parent() {
            std::fs::create_dir_all(folder)
                .with_context(|| format!("cannot create {}", folder.display()))?;
        }
        let db = Connection::open(path)
            .with_context(|| format!("cannot open the history index {}", path.display()))?;
        // The stream is the truth: a write lost to a crash is read again.
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "NORMAL")?;
        db.pragma_update(None, "cache_size", -CACHE_KIB)?;
        // A checkpoint truncates the write-ahead log back to this size.
        db.pragma_update(None, "journal_size_limit", 4 * 1024 * 1024)?;
        let version: i64 = db.pragma_query_value(None, "user_version", |row| row.get(0))?;
        if version != SCHEMA {
            db.execute_batch(
                "DROP TABLE IF EXISTS events; DROP TABLE IF EXISTS accounts;
                 DROP TABLE IF EXISTS owed; DROP TABLE IF EXISTS follower;",
            )?;
        }
        index::create(&db)?;
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS follower (
                 id INTEGER PRIMARY KEY CHECK (id = 0),
                 offset INTEGER NOT NULL,
                 message_id TEXT,
                 derives TEXT NOT NULL
             );
             CREATE TABLE IF NOT EXISTS accounts (
                 client_id TEXT NOT NULL,
                 account_id TEXT NOT NULL,
                 user_id TEXT NOT NULL,
                 provider TEXT,
                 state TEXT NOT NULL,
                 reason TEXT,
                 code TEXT,
                 streak INTEGER NOT NULL,
                 since TEXT,
                 since_ms INTEGER,
                 last_message_id TEXT NOT NULL,
                 last_routing_key TEXT NOT NULL,
                 last_received_at TEXT,
                 applied_ms INTEGER,
                 PRIMARY KEY (client_id, account_id)
             ) WITHOUT ROWID;
             CREATE INDEX IF NOT EXISTS accounts_by_state ON accounts (state, client_id, account_id);
             CREATE TABLE IF NOT EXISTS owed (
                 offset INTEGER PRIMARY KEY,
                 caused_by TEXT NOT NULL UNIQUE,
                 change TEXT NOT NULL,
                 traceparent TEXT,
                 tracestate TEXT
             );",
        )?;
        db.pragma_update(None, "user_version", SCHEMA)?;
        Ok(Store::with(db))
    }

    /// A second connection to a file [`Store::open`] made, for readers:
    /// WAL lets them read while the follower writes.
    pub fn open_reader(path: &Path) -> anyhow::Result<Store> {
        let db = Connection::open(path)
            .with_context(|| format!("cannot read the history index {}", path.display()))?;
        db.pragma_update(None, "cache_size", -CACHE_KIB)?;
        Ok(Store::with(db))
    }

    fn with(db: Connection) -> Store {
        Store {
            db: Mutex::new(db),
            cache: Mutex::default(),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Entry>> {
        self.cache.locked()
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.locked()
    }

    /// Where the follower stopped, if the file was fed as `derives` says.
    pub fn position(&self, derives: Derives) -> anyhow::Result<Option<Position>> {
        let found: Option<(i64, Option<String>, String)> = self
            .db()
            .query_row(
                "SELECT offset, message_id, derives FROM follower WHERE id = 0",
                [],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .optional()?;
        Ok(found.filter(|(_, _, fed)| *fed == derives.signature()).map(
            |(offset, message_id, _)| Position {
                offset: u64::try_from(offset).unwrap_or(0),
                message_id,
            },
        ))
    }

    /// Forgets everything derived: the follower reads the stream from its
    /// first event again.
    pub fn start_over(&self) -> anyhow::Result<()> {
        self.cache().clear();
        self.db().execute_batch(
            "BEGIN; DELETE FROM events; DELETE FROM accounts; DELETE FROM owed;
             DELETE FROM follower; COMMIT;",
        )?;
        Ok(())
    }

    /// Applies a batch of events, in stream order, and records the last one
    /// as the follower's position: all in one transaction.
    pub fn apply(&self, items: &[Item], derives: Derives) -> anyhow::Result<Applied> {
        let Some(last) = items.last() else {
            return Ok(Applied::default());
        };
        let mut cache = self.cache();
        // What this batch changes, merged into the cache once committed.
        let mut written: HashMap<Key, Entry> = HashMap::new();
        let applied = (|| {
            let mut db = self.db();
            let tx = db.transaction()?;
            let mut applied = Applied::default();
            for item in items {
                if let (true, Some(row)) = (derives.index, &item.row) {
                    index::insert(&tx, row)?;
                }
                if !derives.accounts {
                    continue;
                }
                match &item.what {
                    What::Report(report) => {
                        let known =
                            match written.get(&report.key).or_else(|| cache.get(&report.key)) {
                                Some(entry) => Some(entry.clone()),
                                None => account(&tx, &report.key)?,
                            };
                        if let Fold::Applied { entry, transition } =
                            fold(known.as_ref(), report, derives.escalate_after)
                        {
                            put_account(&tx, &entry)?;
                            if let Some(transition) = transition {
                                let change = announcement(&entry, &transition, report);
                                applied.changes +=
                                    owe(&tx, item.offset, &change, report.trace.as_ref())?;
                            }
                            written.insert(entry.key.clone(), entry);
                        }
                    }
                    What::Announced { caused_by } => {
                        let paid = tx
                            .prepare_cached("DELETE FROM owed WHERE caused_by = ?1")?
                            .execute([caused_by])?;
                        applied.paid += paid as u64;
                    }
                    What::Other => {}
                }
            }
            tx.prepare_cached(
                "INSERT OR REPLACE INTO follower (id, offset, message_id, derives) \
                 VALUES (0, ?1, ?2, ?3)",
            )?
            .execute(params![
                offset_sql(last.offset),
                last.message_id,
                derives.signature()
            ])?;
            tx.commit()?;
            anyhow::Ok(applied)
        })();
        match &applied {
            Ok(_) => {
                if cache.len() + written.len() > CACHED_ACCOUNTS {
                    cache.clear();
                }
                cache.extend(written);
            }
            // Not committed: the cache must not run ahead of the file.
            Err(_) => cache.clear(),
        }
        applied
    }

    /// Drops the index rows older than the stream's first event.
    pub fn prune_before(&self, first: u64) -> anyhow::Result<usize> {
        Ok(index::prune_before(&self.db(), first)?)
    }

    /// Changes owed, oldest cause first, after the cause at offset `after`.
    pub fn owed_after(&self, after: Option<u64>, limit: usize) -> anyhow::Result<Vec<Owed>> {
        let db = self.db();
        let mut statement = db.prepare_cached(
            "SELECT offset, change, traceparent, tracestate FROM owed
             WHERE offset > ?1 ORDER BY offset LIMIT ?2",
        )?;
        let after = after.map_or(-1, offset_sql);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = statement.query_map(params![after, limit], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, Option<String>>(2)?,
                row.get::<_, Option<String>>(3)?,
            ))
        })?;
        let mut owed = Vec::new();
        for row in rows {
            let (offset, change, traceparent, tracestate) = row?;
            owed.push(Owed {
                offset: u64::try_from(offset).unwrap_or(0),
                change: serde_json::from_str(&change)
                    .context("an owed change the store cannot read")?,
                trace: traceparent.map(|traceparent| TraceContext {
                    traceparent,
                    tracestate,
                }),
            });
        }
        Ok(owed)
    }

    /// How many changes are owed.
    pub fn owed_count(&self) -> anyhow::Result<u64> {
        let count: i64 = self
            .db()
            .query_row("SELECT count(*) FROM owed", [], |row| row.get(0))?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// One account.
    pub fn account(&self, key: &Key) -> anyhow::Result<Option<Entry>> {
        Ok(account(&self.db(), key)?)
    }

    /// The accounts `selection` admits, in key order, after `after`.
    pub fn accounts(
        &self,
        selection: &Selection,
        after: Option<&Key>,
        limit: usize,
    ) -> anyhow::Result<AccountsPage> {
        let mut conditions = Vec::new();
        let mut values: Vec<rusqlite::types::Value> = Vec::new();
        let mut push = |condition: &str, value: rusqlite::types::Value| {
            values.push(value);
            conditions.push(condition.replace('?', &format!("?{}", values.len())));
        };
        if let Some(state) = selection.state {
            push("state = ?", state.as_str().to_owned().into());
        }
        if let Some(client_id) = &selection.client_id {
            push("client_id = ?", client_id.clone().into());
        }
        if let Some(provider) = &selection.provider {
            push("provider = ?", provider.clone().into());
        }
        if let Some(since) = selection.since {
            push("since_ms >= ?", millis(since).into());
        }
        if let Some(after) = after {
            values.push(after.client_id.clone().into());
            values.push(after.account_id.clone().into());
            let (a, b) = (values.len() - 1, values.len());
            conditions.push(format!("(client_id, account_id) > (?{a}, ?{b})"));
        }
        let mut sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts");
        if !conditions.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conditions.join(" AND "));
        }
        let _ = write!(
            sql,
            " ORDER BY client_id, account_id LIMIT {}",
            limit.saturating_add(1)
        );
        let db = self.db();
        let mut statement = db.prepare_cached(&sql)?;
        let mut accounts = statement
            .query_map(rusqlite::params_from_iter(values), read_entry)?
            .collect::<rusqlite::Result<Vec<Entry>>>()?;
        let next = (accounts.len() > limit).then(|| {
            accounts.truncate(limit);
            accounts.last().map(|entry| entry.key.clone())
        });
        Ok(AccountsPage {
            accounts,
            next: next.flatten(),
        })
    }

    /// Accounts in each state (states without any left out).
    pub fn count_by_state(&self) -> anyhow::Result<Vec<(StateName, u64)>> {
        let db = self.db();
        let mut statement =
            db.prepare_cached("SELECT state, count(*) FROM accounts GROUP BY state")?;
        let rows = statement.query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
        })?;
        let mut counts = Vec::new();
        for row in rows {
            let (state, count) = row?;
            if let Ok(state) = state.parse::<StateName>() {
                counts.push((state, u64::try_from(count).unwrap_or(0)));
            }
        }
        counts.sort_by_key(|(state, _)| StateName::ALL.iter().position(|s| s == state));
        Ok(counts)
    }

    /// Index rows held.
    pub fn indexed(&self) -> anyhow::Result<u64> {
        Ok(index::len(&self.db())?)
    }

    /// The newest `limit` indexed events that pass `filter`, older than `before`.
    pub fn search(
        &self,
        filter: &Filter,
        before: Option<u64>,
        limit: usize,
    ) -> anyhow::Result<Found> {
        Ok(index::search(&self.db(), filter, before, limit)?)
    }

    /// The index row of `message_id`.
    pub fn find(&self, message_id: &str) -> anyhow::Result<Option<Row>> {
        Ok(index::find(&self.db(), message_id)?)
    }
}

const ACCOUNT_COLUMNS: &str = "client_id, account_id, user_id, provider, state, reason, code, \
                               streak, since, last_message_id, last_routing_key, \
                               last_received_at, applied_ms, since_ms";

fn account(db: &Connection, key: &Key) -> rusqlite::Result<Option<Entry>> {
    db.prepare_cached(&format!(
        "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE client_id = ?1 AND account_id = ?2"
    ))?
    .query_row([&key.client_id, &key.account_id], read_entry)
    .optional()
}

fn read_entry(row: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
    let name: String = row.get(4)?;
    let reason: Option<String> = row.get(5)?;
    let code: Option<String> = row.get(6)?;
    let state = name
        .parse::<StateName>()
        .ok()
        .and_then(|name| {
            State::from_parts(
                name,
                reason.as_deref().and_then(Reason::parse),
                code.as_deref(),
            )
        })
        .ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                4,
                rusqlite::types::Type::Text,
                format!("no state {name} ({reason:?}, {code:?})").into(),
            )
        })?;
    Ok(Entry {
        key: Key {
            client_id: row.get(0)?,
            account_id: row.get(1)?,
        },
        user_id: row.get(2)?,
        provider: row.get(3)?,
        state,
        streak: u32::try_from(row.get::<_, i64>(7)?).unwrap_or(u32::MAX),
        since: row.get(8)?,
        last_event: LastEvent {
            message_id: row.get(9)?,
            routing_key: row.get(10)?,
            received_at: row.get(11)?,
        },
        applied_ms: row.get(12)?,
        since_ms: row.get(13)?,
    })
}

fn put_account(tx: &Transaction<'_>, entry: &Entry) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO accounts (client_id, account_id, user_id, provider, state, reason, code, \
         streak, since, since_ms, last_message_id, last_routing_key, last_received_at, \
         applied_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14) \
         ON CONFLICT (client_id, account_id) DO UPDATE SET user_id = ?3, provider = ?4, \
         state = ?5, reason = ?6, code = ?7, streak = ?8, since = ?9, since_ms = ?10, \
         last_message_id = ?11, last_routing_key = ?12, last_received_at = ?13, \
         applied_ms = ?14",
    )?
    .execute(params![
        entry.key.client_id,
        entry.key.account_id,
        entry.user_id,
        entry.provider,
        entry.state.name(),
        entry.state.reason().map(Reason::as_str),
        entry.state.code(),
        entry.streak,
        entry.since,
        entry.since_ms,
        entry.last_event.message_id,
        entry.last_event.routing_key,
        entry.last_event.received_at,
        entry.applied_ms,
    ])?;
    Ok(())
}

fn owe(
    tx: &Transaction<'_>,
    offset: u64,
    change: &AccountChange,
    trace: Option<&TraceContext>,
) -> anyhow::Result<u64> {
    let added = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO owed (offset, caused_by, change, traceparent, tracestate) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![
            offset_sql(offset),
            change.caused_by,
            serde_json::to_string(change)?,
            trace.map(|t| t.traceparent.as_str()),
            trace.and_then(|t| t.tracestate.as_deref()),
        ])?;
    Ok(added as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::book::tests::event_at;

    const DERIVES: Derives = Derives {
        index: true,
        accounts: true,
        escalate_after: 3,
    };

    fn store() -> (Store, std::path::PathBuf) {
        let path =
            std::env::temp_dir().join(format!("hookrelay-derived-{}.sqlite", uuid::Uuid::now_v7()));
        (Store::open(&path).unwrap(), path)
    }

    fn item(offset: u64, id: &str, account: &str, key: &str, second: u32) -> Item {
        let mut event = event_at(id, account, key, second);
        event.offset = offset;
        Item::of(event, DERIVES)
    }

    fn announced(offset: u64, caused_by: &str) -> Item {
        Item {
            offset,
            message_id: Some(format!("ann-{offset}")),
            row: None,
            what: What::Announced {
                caused_by: caused_by.to_owned(),
            },
            audit: None,
        }
    }

    #[test]
    fn changes_are_owed_until_the_history_holds_their_announcement() {
        let (store, path) = store();
        let applied = store
            .apply(
                &[
                    item(0, "e-0", "a-1", "sync.error.LoginFailedError", 1),
                    item(1, "e-1", "a-1", "sync.error.LoginFailedError", 2),
                    item(2, "e-2", "a-2", "sync.account", 3),
                ],
                DERIVES,
            )
            .unwrap();
        assert_eq!(
            applied,
            Applied {
                changes: 2,
                paid: 0
            }
        );
        let owed = store.owed_after(None, 10).unwrap();
        let said: Vec<_> = owed
            .iter()
            .map(|o| (o.offset, o.change.routing_key()))
            .collect();
        assert_eq!(
            said,
            [
                (0, "account.needs_reconnect".to_owned()),
                (2, "account.ok".to_owned())
            ]
        );
        assert_eq!(
            store.owed_after(Some(0), 10).unwrap().len(),
            1,
            "after a cursor"
        );

        let applied = store.apply(&[announced(3, "e-0")], DERIVES).unwrap();
        assert_eq!(
            applied,
            Applied {
                changes: 0,
                paid: 1
            }
        );
        assert_eq!(store.owed_count().unwrap(), 1);
        assert_eq!(
            store.position(DERIVES).unwrap(),
            Some(Position {
                offset: 3,
                message_id: Some("ann-3".into())
            })
        );
        std::fs::remove_file(path).ok();
    }

    #[test]
    fn accounts_are_kept_on_disk_and_listed_a_page_at_a_time() {
        let (store, path) = store();
        let items: Vec<Item> = (0..5)
            .map(|n| {
                let key = if n == 3 {
                    "sync.error.LoginFailedError"
                } else {
                    "sync.account"
                };
                item(n, &format!("e-{n}"), &format!("a-{n}"), key, 1)
            })
            .collect();
        store.apply(&items, DERIVES).unwrap();

        let everyone = Selection::default();
        let first = store.accounts(&everyone, None, 2).unwrap();
        assert_eq!(first.accounts.len(), 2);
        let second = store.accounts(&everyone, first.next.as_ref(), 2).unwrap();
        let third = store.accounts(&everyone, second.next.as_ref(), 2).unwrap();
        assert_eq!(third.accounts.len(), 1);
        assert_eq!(third.next, None);
        let needing = Selection {
            state: Some(StateName::NeedsReconnect),
            ..Selection::default()
        };
        let page = store.accounts(&needing, None, 10).unwrap();
        assert_eq!(page.accounts[0].key.account_id, "a-3");
        assert_eq!(
            store.count_by_state().unwrap(),
            [(StateName::NeedsReconnect, 1), (StateName::Ok, 4)]
        );
        assert_eq!(store.indexed().unwrap(), 5);

        // Reopened (a restart), it resumes; fed otherwise, it starts over.
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.position(DERIVES).unwrap().map(|p| p.offset), Some(4));
        let other = Derives {
            index: false,
            ..DERIVES
        };
        assert_eq!(store.position(other).unwrap(), None);
        store.start_over().unwrap();
        assert_eq!(store.accounts(&everyone, None, 10).unwrap().accounts, []);
        std::fs::remove_file(path).ok();
    }

    #[test]
    fn a_late_event_is_indexed_and_owes_nothing() {
        let (store, path) = store();
        store
            .apply(
                &[
                    item(0, "synced", "a-1", "sync.account", 20),
                    item(1, "late", "a-1", "sync.error.LoginFailedError", 10),
                ],
                DERIVES,
            )
            .unwrap();
        let key = Key {
            client_id: "app-1".into(),
            account_id: "a-1".into(),
        };
        assert_eq!(store.account(&key).unwrap().unwrap().state, State::Ok);
        assert_eq!(store.owed_count().unwrap(), 1, "the first sync only");
        assert_eq!(store.indexed().unwrap(), 2);
        std::fs::remove_file(path).ok();
    }
}
