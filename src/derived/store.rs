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

use super::incidents::{self, Happened, Seen, Thresholds};
use crate::accounts::book::{
    Entry, Fold, Key, LastEvent, Report, SILENT_KEY, announcement, fold, millis, silence,
};
use crate::accounts::{Outcome, Selection, State};
use crate::audit::notes::Note;
use crate::history::index::{self, Found, Row};
use crate::history::{Filter, Recorded};
use crate::unpoisoned::Locked;
use crate::wire::account::{self, AccountChange, Reason, StateName};
use crate::wire::changes::{Announcement, Kind};
use crate::wire::client::{self, ClientSilent};
use crate::wire::envelope::Stamp;
use crate::wire::envelope::TraceContext;

/// Bumped when the tables change: a file of another version is started
/// over from the stream (the stream is the truth).
const SCHEMA: i64 = 3;
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
    /// `[providers]`: when failing accounts are a provider incident.
    pub incidents: Thresholds,
}

impl Derives {
    /// What `settings` derive from the history (the index with a console).
    pub fn of(settings: &crate::config::Settings) -> Derives {
        Derives {
            index: settings.admin.console_token().is_some(),
            accounts: settings.accounts.enabled,
            escalate_after: settings.accounts.temporary_failures_to_escalate,
            incidents: Thresholds {
                accounts: settings.providers.incident_accounts,
                window_ms: i64::try_from(settings.providers.incident_window.as_millis())
                    .unwrap_or(i64::MAX),
            },
        }
    }

    /// What a file fed otherwise must be started over for.
    fn signature(self) -> String {
        format!(
            "index={} accounts={} escalate_after={} incident_accounts={} incident_window_ms={}",
            self.index,
            self.accounts,
            self.escalate_after,
            self.incidents.accounts,
            self.incidents.window_ms
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
        } else if event.routing_key == client::SILENT {
            match serde_json::from_slice::<ClientSilent>(&event.body) {
                Ok(silent) => What::ClientSilenced(Box::new(silent)),
                Err(_) => What::Other,
            }
        } else if event.routing_key == SILENT_KEY {
            match serde_json::from_slice::<AccountChange>(&event.body) {
                Ok(change) => What::Silenced(Box::new(change)),
                Err(_) => What::Other,
            }
        } else if let Some(kind) = Kind::of(&event.routing_key) {
            match account::caused_by(event.properties.headers().as_ref()) {
                Some(caused_by) => What::Announced { caused_by, kind },
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
    /// An announcement (`account.*`, `provider.*`): what it pays.
    Announced { caused_by: String, kind: Kind },
    /// `account.silent`, which the announcing relay decided by its clock:
    /// the account is silent from here on in the history, if it had no
    /// event since the one the announcement names.
    Silenced(Box<AccountChange>),
    /// `client.silent`: its accounts whose latest event is older than
    /// `before` are silent from here on.
    ClientSilenced(Box<ClientSilent>),
    /// Anything else (a quarantined body).
    Other,
}

/// What one batch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Announcements owed from now on.
    pub changes: u64,
    /// Owed announcements the history now holds.
    pub paid: u64,
    /// Provider incidents open after the batch (with accounts derived).
    pub open_incidents: Option<u64>,
}

/// Something to announce, with what its message carries besides.
#[derive(Debug, Clone)]
pub struct Owed {
    /// Its place among everything owed: announced in this order (the
    /// order of the events that caused them).
    pub seq: u64,
    /// The offset of the event that caused it.
    pub offset: u64,
    pub announcement: Announcement,
    /// The causing event's `x-received-at`.
    pub received_at: Option<String>,
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
            for table in incidents::TABLE_NAMES {
                db.execute_batch(&format!("DROP TABLE IF EXISTS {table};"))?;
            }
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
             CREATE INDEX IF NOT EXISTS accounts_by_last_event ON accounts (applied_ms);
             CREATE TABLE IF NOT EXISTS owed (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 offset INTEGER NOT NULL,
                 kind TEXT NOT NULL,
                 caused_by TEXT NOT NULL,
                 announcement TEXT NOT NULL,
                 received_at TEXT,
                 traceparent TEXT,
                 tracestate TEXT,
                 UNIQUE (kind, caused_by)
             );",
        )?;
        db.execute_batch(incidents::TABLES)?;
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
        let incidents: String = incidents::TABLE_NAMES
            .iter()
            .map(|table| format!("DELETE FROM {table}; "))
            .collect();
        self.db().execute_batch(&format!(
            "BEGIN; DELETE FROM events; DELETE FROM accounts; DELETE FROM owed;
             DELETE FROM follower; {incidents}COMMIT;"
        ))?;
        Ok(())
    }

    /// Applies a batch of events, in stream order, and records the last one
    /// as the follower's position: all in one transaction.
    pub fn apply(&self, items: &[Item], derives: Derives) -> anyhow::Result<Applied> {
        self.apply_at(items, derives, millis(std::time::SystemTime::now()))
    }

    /// [`Store::apply`] at the time `now_ms` (the provider incidents it
    /// derives of events older than their window by then are not news).
    pub fn apply_at(
        &self,
        items: &[Item],
        derives: Derives,
        now_ms: i64,
    ) -> anyhow::Result<Applied> {
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
                            let effect = incident_effect(&tx, &entry, report, derives)?;
                            let owing = |announcement| Owing {
                                offset: item.offset,
                                announcement,
                                received_at: report.event.received_at.as_deref(),
                                trace: report.trace.as_ref(),
                            };
                            // An incident derived long after its events (a
                            // store started over: an upgrade, other
                            // [providers] settings) is history, not news: no
                            // relay announced it then, and nobody should
                            // hear of it now.
                            let news = report.received_ms.is_none_or(|at| {
                                at >= now_ms.saturating_sub(derives.incidents.window_ms)
                            });
                            if let Some(opened) = effect.opened.filter(|_| news) {
                                applied.changes += owe(&tx, owing(Announcement::Provider(opened)))?;
                            }
                            if let Some(transition) = transition {
                                let mut change = announcement(&entry, &transition, report);
                                change.incident = effect.incident;
                                applied.changes += owe(&tx, owing(Announcement::Account(change)))?;
                            }
                            if let Some(resolved) = effect.resolved.filter(|_| news) {
                                applied.changes +=
                                    owe(&tx, owing(Announcement::Provider(resolved)))?;
                            }
                            written.insert(entry.key.clone(), entry);
                        }
                    }
                    What::Silenced(change) => {
                        let key = Key {
                            client_id: change.client_id.clone(),
                            account_id: change.account_id.clone(),
                        };
                        let known = match written.get(&key).or_else(|| cache.get(&key)) {
                            Some(entry) => Some(entry.clone()),
                            None => account(&tx, &key)?,
                        };
                        let Some(entry) = known.filter(|e| e.state != State::Silent) else {
                            continue;
                        };
                        if let Some(silent) = silence(&entry, change) {
                            put_account(&tx, &silent)?;
                            written.insert(key, silent);
                        } else {
                            // The account had an event after the one the
                            // announcement names (it crossed the announcer's
                            // decision): consumers heard `silent`, so they
                            // hear its state again.
                            let back = back_from_silent(&entry, item.message_id.as_deref());
                            applied.changes += owe(
                                &tx,
                                Owing {
                                    offset: item.offset,
                                    announcement: Announcement::Account(back),
                                    received_at: entry.last_event.received_at.as_deref(),
                                    trace: None,
                                },
                            )?;
                        }
                    }
                    What::ClientSilenced(silent) => {
                        tx.prepare_cached(
                            "UPDATE accounts SET state = 'silent', reason = NULL, code = NULL, \
                             since = last_received_at, since_ms = applied_ms \
                             WHERE client_id = ?1 AND applied_ms < ?2 AND state IN ('ok', 'retrying')",
                        )?
                        .execute(params![silent.client_id, silent.before_ms])?;
                        // Read back from the transaction from now on.
                        cache.retain(|key, _| key.client_id != silent.client_id);
                        written.retain(|key, _| key.client_id != silent.client_id);
                    }
                    What::Announced { caused_by, kind } => {
                        let paid = tx
                            .prepare_cached("DELETE FROM owed WHERE kind = ?1 AND caused_by = ?2")?
                            .execute([kind.as_str(), caused_by])?;
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
            if derives.accounts {
                applied.open_incidents = Some(incidents::open_count(&tx)?);
            }
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

    /// What is owed, oldest cause first, after the place `after` ([`Owed::seq`]).
    pub fn owed_after(&self, after: Option<u64>, limit: usize) -> anyhow::Result<Vec<Owed>> {
        let db = self.db();
        let mut statement = db.prepare_cached(
            "SELECT seq, offset, announcement, received_at, traceparent, tracestate FROM owed
             WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let after = after.map_or(-1, offset_sql);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = statement.query_map(params![after, limit], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, Option<String>>(3)?,
                row.get::<_, Option<String>>(4)?,
                row.get::<_, Option<String>>(5)?,
            ))
        })?;
        let mut owed = Vec::new();
        for row in rows {
            let (seq, offset, announcement, received_at, traceparent, tracestate) = row?;
            owed.push(Owed {
                seq: u64::try_from(seq).unwrap_or(0),
                offset: u64::try_from(offset).unwrap_or(0),
                announcement: serde_json::from_str(&announcement)
                    .context("an owed announcement the store cannot read")?,
                received_at,
                trace: traceparent.map(|traceparent| TraceContext {
                    traceparent,
                    tracestate,
                }),
            });
        }
        Ok(owed)
    }

    /// Accounts whose latest event is older than `before_ms` and that may
    /// go silent ([`crate::accounts::book::may_go_silent`]), the longest
    /// silent first.
    pub fn silent_candidates(&self, before_ms: i64, limit: usize) -> anyhow::Result<Vec<Entry>> {
        let db = self.db();
        let mut statement = db.prepare_cached(&format!(
            "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE applied_ms < ?1 AND state IN ('ok', 'retrying') \
             ORDER BY applied_ms LIMIT ?2"
        ))?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let found = statement
            .query_map(params![before_ms, limit], read_entry)?
            .collect::<rusqlite::Result<Vec<Entry>>>()?;
        Ok(found)
    }

    /// Per client: of its accounts that may go silent, how many had no
    /// event since `before_ms`, and how many there are.
    pub fn silent_by_client(&self, before_ms: i64) -> anyhow::Result<Vec<(String, u64, u64)>> {
        let db = self.db();
        let mut statement = db.prepare_cached(
            "SELECT client_id, sum(applied_ms < ?1), count(*) FROM accounts \
             WHERE state IN ('ok', 'retrying') GROUP BY client_id",
        )?;
        let counted = statement
            .query_map([before_ms], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    u64::try_from(row.get::<_, i64>(1)?).unwrap_or(0),
                    u64::try_from(row.get::<_, i64>(2)?).unwrap_or(0),
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(counted)
    }

    /// Silent accounts per client, the most first.
    pub fn silent_clients(&self) -> anyhow::Result<Vec<(String, u64)>> {
        let db = self.db();
        let mut statement = db.prepare_cached(
            "SELECT client_id, count(*) AS silent FROM accounts WHERE state = 'silent' \
             GROUP BY client_id ORDER BY silent DESC",
        )?;
        let found = statement
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    u64::try_from(row.get::<_, i64>(1)?).unwrap_or(0),
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(found)
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

    /// At most `limit` provider incidents: the open ones, then the latest resolved.
    pub fn incidents(&self, limit: usize) -> anyhow::Result<Vec<incidents::Incident>> {
        Ok(incidents::list(&self.db(), limit)?)
    }

    /// The `limit` providers that need someone most, with their accounts by state.
    pub fn providers(&self, limit: usize) -> anyhow::Result<Vec<incidents::Provider>> {
        Ok(incidents::providers(&self.db(), limit)?)
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

/// Something to owe, and what of its cause it carries.
struct Owing<'a> {
    offset: u64,
    announcement: Announcement,
    received_at: Option<&'a str>,
    trace: Option<&'a TraceContext>,
}

fn owe(tx: &Transaction<'_>, owing: Owing<'_>) -> anyhow::Result<u64> {
    let Owing {
        offset,
        announcement,
        received_at,
        trace,
    } = owing;
    let added = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO owed (offset, kind, caused_by, announcement, received_at, \
             traceparent, tracestate) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            offset_sql(offset),
            announcement.kind().as_str(),
            announcement.caused_by(),
            serde_json::to_string(&announcement)?,
            received_at,
            trace.map(|t| t.traceparent.as_str()),
            trace.and_then(|t| t.tracestate.as_deref()),
        ])?;
    Ok(added as u64)
}

/// The change that tells consumers an account announced `silent` (by the
/// announcement `silenced`) was not: it is as `entry` says.
fn back_from_silent(entry: &Entry, silenced: Option<&str>) -> AccountChange {
    AccountChange {
        client_id: entry.key.client_id.clone(),
        account_id: entry.key.account_id.clone(),
        user_id: entry.user_id.clone(),
        provider: entry.provider.clone(),
        state: (&entry.state).into(),
        previous_state: Some(StateName::Silent),
        reason: entry.state.reason(),
        code: entry.state.code().map(str::to_owned),
        streak: entry.streak,
        since: entry.since.clone(),
        caused_by: silenced.unwrap_or_default().to_owned(),
        incident: None,
    }
}

/// What the event `report`, which left its account as `entry` says, did
/// to its provider's incidents.
fn incident_effect(
    tx: &Transaction<'_>,
    entry: &Entry,
    report: &Report,
    derives: Derives,
) -> rusqlite::Result<incidents::Effect> {
    let (Some(provider), Some(at_ms), Some(at)) = (
        entry.provider.as_deref(),
        report.received_ms,
        report.event.received_at.as_deref(),
    ) else {
        return Ok(incidents::Effect::default());
    };
    if let Outcome::Failed(code) = &report.outcome {
        incidents::count_error(tx, provider, code.as_str(), at_ms)?;
    }
    let happened = match (&report.outcome, &entry.state) {
        (Outcome::Synced, _) => Happened::Synced,
        (Outcome::Failed(code), State::ContactProvider { .. }) => Happened::Failed(code.as_str()),
        (Outcome::Failed(_), _) => Happened::Left,
    };
    incidents::apply(
        tx,
        &Seen {
            provider,
            client_id: &entry.key.client_id,
            account_id: &entry.key.account_id,
            happened,
            at_ms,
            at,
            message_id: &report.event.message_id,
        },
        derives.incidents,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::book::tests::event_at;

    const DERIVES: Derives = Derives {
        index: true,
        accounts: true,
        escalate_after: 3,
        incidents: Thresholds {
            accounts: 5,
            window_ms: 15 * 60 * 1000,
        },
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

    /// [`item`] of an account of `provider`.
    fn of_provider(
        offset: u64,
        id: &str,
        account: &str,
        key: &str,
        second: u32,
        provider: &str,
    ) -> Item {
        let mut event = event_at(id, account, key, second);
        event.offset = offset;
        event.body =
            format!(r#"{{"account":{{"id":"{account}","provider":"{provider}"}}}}"#).into_bytes();
        Item::of(event, DERIVES)
    }

    fn announced(offset: u64, caused_by: &str) -> Item {
        announced_kind(offset, caused_by, Kind::Account)
    }

    fn announced_kind(offset: u64, caused_by: &str, kind: Kind) -> Item {
        Item {
            offset,
            message_id: Some(format!("ann-{offset}")),
            row: None,
            what: What::Announced {
                caused_by: caused_by.to_owned(),
                kind,
            },
            audit: None,
        }
    }

    /// Everything owed, as `routing key (incident named)`, in order.
    fn owed(store: &Store) -> Vec<String> {
        store
            .owed_after(None, 1000)
            .unwrap()
            .into_iter()
            .map(|owed| match owed.announcement {
                Announcement::Account(change) => format!(
                    "{} {}{}",
                    change.routing_key(),
                    change.account_id,
                    change.incident.map_or("", |_| " (incident)")
                ),
                Announcement::Provider(incident) => format!(
                    "{} {} accounts={} recovered={} by={:?}",
                    incident.routing_key(),
                    incident.provider,
                    incident.accounts,
                    incident.recovered,
                    incident.resolved_by
                ),
            })
            .collect()
    }

    const CONNECTOR: &str = "sync.error.UnhandledConnectorError";

    /// Applies `items` as the follower does live: just after the latest.
    fn live(store: &Store, items: &[Item]) -> Applied {
        let latest = items
            .iter()
            .filter_map(|item| match &item.what {
                What::Report(report) => report.received_ms,
                _ => None,
            })
            .max()
            .unwrap_or(0);
        store.apply_at(items, DERIVES, latest + 1000).unwrap()
    }

    fn failing(n: u32, provider: &str) -> Vec<Item> {
        (0..n)
            .map(|n| {
                of_provider(
                    u64::from(n),
                    &format!("f-{n}"),
                    &format!("a-{n}"),
                    CONNECTOR,
                    n,
                    provider,
                )
            })
            .collect()
    }

    #[test]
    fn an_incident_derived_long_after_its_events_is_history_not_news() {
        // A store started over a day later (an upgrade) derives the incident
        // and owes no announcement of it.
        let (store, path) = store();
        let items = failing(5, "Bank");
        let events_day = humantime::parse_rfc3339("2026-11-30T00:00:00Z").unwrap();
        let a_day_later = millis(events_day) + 24 * 3_600_000;
        let applied = store.apply_at(&items, DERIVES, a_day_later).unwrap();
        assert_eq!(applied.open_incidents, Some(1));
        assert!(
            owed(&store)
                .iter()
                .all(|said| !said.starts_with("provider."))
        );
        std::fs::remove_file(path).ok();
    }

    #[test]
    fn an_account_that_failed_otherwise_since_is_not_counted() {
        // a-0's connector error is followed by a login failure: only four
        // accounts of the provider are still failing on the connector.
        let (store, path) = store();
        let mut items = failing(4, "Bank");
        items.insert(
            1,
            of_provider(9, "l-0", "a-0", "sync.error.LoginFailedError", 1, "Bank"),
        );
        items.push(of_provider(10, "f-9", "a-9", CONNECTOR, 5, "Bank"));
        let applied = live(&store, &items);
        assert_eq!(applied.open_incidents, Some(0), "{:#?}", owed(&store));
        std::fs::remove_file(path).ok();
    }

    #[test]
    fn five_accounts_of_one_provider_failing_open_one_incident_and_their_syncs_resolve_it() {
        let (store, path) = store();
        let mut items: Vec<Item> = (0..5)
            .map(|n| {
                of_provider(
                    n,
                    &format!("f-{n}"),
                    &format!("a-{n}"),
                    CONNECTOR,
                    n as u32,
                    "Bank",
                )
            })
            .collect();
        // Another provider's account, failing meanwhile, is in none.
        items.push(of_provider(5, "other", "b-1", CONNECTOR, 6, "Other Bank"));
        live(&store, &items);
        let heard = owed(&store);
        assert_eq!(
            heard[3..],
            [
                "account.contact_provider a-3",
                "provider.incident_opened Bank accounts=5 recovered=0 by=None",
                "account.contact_provider a-4 (incident)",
                "account.contact_provider b-1",
            ],
            "{heard:#?}"
        );
        let opening = store
            .owed_after(None, 100)
            .unwrap()
            .into_iter()
            .find_map(|owed| match owed.announcement {
                Announcement::Provider(incident) => Some(incident),
                Announcement::Account(_) => None,
            });
        let mut named: Vec<String> = opening
            .unwrap()
            .opened_with
            .into_iter()
            .map(|account| account.account_id)
            .collect();
        named.sort();
        assert_eq!(
            named,
            ["a-0", "a-1", "a-2", "a-3", "a-4"],
            "the opening names its accounts"
        );
        // The opening and the fifth account's change have one cause,
        // paid apart by kind.
        let applied = live(&store, &[announced_kind(6, "f-4", Kind::Provider)]);
        assert_eq!(applied.paid, 1);
        assert_eq!(applied.open_incidents, Some(1));
        assert!(owed(&store).contains(&"account.contact_provider a-4 (incident)".to_owned()));

        let syncs: Vec<Item> = (0..5)
            .map(|n| {
                of_provider(
                    7 + n,
                    &format!("s-{n}"),
                    &format!("a-{n}"),
                    "sync.account",
                    60 + n as u32,
                    "Bank",
                )
            })
            .collect();
        let applied = live(&store, &syncs);
        assert_eq!(applied.open_incidents, Some(0));
        let heard = owed(&store);
        assert_eq!(
            heard[heard.len() - 2..],
            [
                "account.ok a-4 (incident)",
                "provider.incident_resolved Bank accounts=5 recovered=5 by=Some(AccountsSynced)",
            ],
            "{heard:#?}"
        );
        std::fs::remove_file(path).ok();
    }

    #[test]
    fn four_accounts_or_five_too_far_apart_are_no_incident() {
        let (store, path) = store();
        let four: Vec<Item> = (0..4)
            .map(|n| {
                of_provider(
                    n,
                    &format!("f-{n}"),
                    &format!("a-{n}"),
                    CONNECTOR,
                    n as u32,
                    "Bank",
                )
            })
            .collect();
        live(&store, &four);
        // The fifth 15 minutes after the first: the first is out of the window.
        let fifth = of_provider(4, "f-4", "a-4", CONNECTOR, 15 * 60, "Bank");
        let applied = live(&store, &[fifth]);
        assert_eq!(applied.open_incidents, Some(0));
        assert!(
            owed(&store)
                .iter()
                .all(|said| !said.starts_with("provider."))
        );
        std::fs::remove_file(path).ok();
    }

    #[test]
    fn an_incident_with_no_failure_for_a_window_is_resolved_by_the_next_event() {
        let (store, path) = store();
        let five: Vec<Item> = (0..5)
            .map(|n| {
                of_provider(
                    n,
                    &format!("f-{n}"),
                    &format!("a-{n}"),
                    CONNECTOR,
                    n as u32,
                    "Bank",
                )
            })
            .collect();
        live(&store, &five);
        // One account syncs a minute later: recovered, still open.
        live(
            &store,
            &[of_provider(5, "s-0", "a-0", "sync.account", 60, "Bank")],
        );
        // A new account of the provider syncs a window after the last failure.
        let applied = live(
            &store,
            &[of_provider(
                6,
                "s-9",
                "a-9",
                "sync.account",
                4 + 15 * 60,
                "Bank",
            )],
        );
        assert_eq!(applied.open_incidents, Some(0));
        let heard = owed(&store);
        assert_eq!(
            heard.last().unwrap(),
            "provider.incident_resolved Bank accounts=5 recovered=1 by=Some(NoFailureForAWindow)"
        );
        std::fs::remove_file(path).ok();
    }

    #[test]
    fn changes_are_owed_until_the_history_holds_their_announcement() {
        let (store, path) = store();
        let applied = live(
            &store,
            &[
                item(0, "e-0", "a-1", "sync.error.LoginFailedError", 1),
                item(1, "e-1", "a-1", "sync.error.LoginFailedError", 2),
                item(2, "e-2", "a-2", "sync.account", 3),
            ],
        );
        assert_eq!(
            applied,
            Applied {
                changes: 2,
                paid: 0,
                open_incidents: Some(0),
            }
        );
        let owed = store.owed_after(None, 10).unwrap();
        let said: Vec<_> = owed
            .iter()
            .map(|o| (o.offset, o.announcement.routing_key()))
            .collect();
        assert_eq!(
            said,
            [
                (0, "account.needs_reconnect".to_owned()),
                (2, "account.ok".to_owned())
            ]
        );
        assert_eq!(
            store.owed_after(Some(owed[0].seq), 10).unwrap().len(),
            1,
            "after a cursor"
        );

        let applied = live(&store, &[announced(3, "e-0")]);
        assert_eq!(
            applied,
            Applied {
                changes: 0,
                paid: 1,
                open_incidents: Some(0),
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
        live(&store, &items);

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
    fn a_silent_account_read_back_is_silent_unless_an_event_crossed_it() {
        let (store, path) = store();
        live(
            &store,
            &[
                item(0, "e-1", "a-1", "sync.account", 1),
                item(1, "e-2", "a-2", "sync.account", 1),
            ],
        );
        let key = |account: &str| Key {
            client_id: "app-1".into(),
            account_id: account.into(),
        };
        let silenced = |offset: u64, account: &str| {
            let entry = store.account(&key(account)).unwrap().unwrap();
            Item {
                offset,
                message_id: Some(format!("silent-{account}")),
                row: None,
                what: What::Silenced(Box::new(crate::accounts::book::silenced(&entry))),
                audit: None,
            }
        };
        let (silent_1, silent_2) = (silenced(2, "a-1"), silenced(3, "a-2"));
        // a-2 syncs again before its announcement reaches the history.
        let owed_before = store.owed_count().unwrap();
        store
            .apply(
                &[silent_1, item(4, "e-3", "a-2", "sync.account", 5), silent_2],
                DERIVES,
            )
            .unwrap();
        assert_eq!(
            store.account(&key("a-1")).unwrap().unwrap().state,
            State::Silent
        );
        assert_eq!(
            store.account(&key("a-2")).unwrap().unwrap().state,
            State::Ok
        );
        let heard = owed(&store);
        assert_eq!(store.owed_count().unwrap(), owed_before + 1);
        assert_eq!(
            heard.last().unwrap(),
            "account.ok a-2",
            "heard back from silent"
        );
        // The next event of a silent account is a change.
        store
            .apply(&[item(6, "e-4", "a-1", "sync.account", 9)], DERIVES)
            .unwrap();
        assert_eq!(owed(&store).last().unwrap(), "account.ok a-1");
        std::fs::remove_file(path).ok();
    }

    #[test]
    fn an_account_that_needs_someone_never_goes_silent() {
        let (store, path) = store();
        live(
            &store,
            &[
                item(0, "e-1", "synced", "sync.account", 1),
                item(1, "e-2", "locked", "sync.error.LoginFailedError", 1),
            ],
        );
        let later = millis(std::time::SystemTime::now());
        let candidates: Vec<String> = store
            .silent_candidates(later, 10)
            .unwrap()
            .into_iter()
            .map(|entry| entry.key.account_id)
            .collect();
        assert_eq!(
            candidates,
            ["synced"],
            "needs_reconnect stays listed as such"
        );
        let counted = store.silent_by_client(later).unwrap();
        assert_eq!(counted, [("app-1".to_owned(), 1, 1)]);
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
