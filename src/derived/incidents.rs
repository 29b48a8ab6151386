//! Provider incidents, derived in the follower's transaction beside the
//! accounts: many accounts of one provider put in `contact_provider` within
//! a window are one incident at the sender's connector, announced once
//! opened and once resolved ([`ProviderIncident`]).
//!
//! The rule, in event time (`x-received-at`), per provider
//! (`account.provider`; an account that never named one is in none):
//!
//! - A **failure** is an event that leaves its account in
//!   `contact_provider` (a connector error, or temporary failures that kept
//!   happening). With no incident open, the provider's failing accounts are
//!   kept (the latest failure of each); once `incident_accounts` of them
//!   failed within `incident_window` of this one, an incident opens, caused
//!   by this event, with all of them in it. With one open, the account joins
//!   it (or fails again in it).
//! - A **sync** (`SyncAccount`) takes the account off the failing list; in
//!   an open incident it counts as recovered, and `incident_accounts`
//!   recovered resolve it.
//! - Any event of the provider a whole window after the incident's last
//!   failure resolves it first (nothing failed for a window).
//!
//! Late events (older than their account's latest) change nothing here
//! either: the caller does not pass them.

use std::collections::BTreeMap;

use rusqlite::{OptionalExtension, Transaction, params};
use schemars::JsonSchema;
use serde::Serialize;

use crate::wire::provider::{
    IncidentAccount, IncidentKind, LISTED_AT_MOST, ProviderIncident, ResolvedBy, incident_id,
};

/// The tables, created with the store's.
pub(super) const TABLES: &str = "
    CREATE TABLE IF NOT EXISTS provider_failing (
        provider TEXT NOT NULL,
        client_id TEXT NOT NULL,
        account_id TEXT NOT NULL,
        code TEXT NOT NULL,
        at_ms INTEGER NOT NULL,
        at TEXT NOT NULL,
        PRIMARY KEY (provider, client_id, account_id)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS incidents (
        id TEXT PRIMARY KEY,
        provider TEXT NOT NULL,
        code TEXT NOT NULL,
        accounts INTEGER NOT NULL,
        recovered INTEGER NOT NULL,
        first_seen_ms INTEGER NOT NULL,
        first_seen TEXT NOT NULL,
        opened_at TEXT NOT NULL,
        last_failure_ms INTEGER NOT NULL,
        resolved_at TEXT,
        resolved_by TEXT,
        duration_seconds INTEGER,
        opened_by TEXT NOT NULL
    );
    CREATE UNIQUE INDEX IF NOT EXISTS incidents_open
        ON incidents (provider) WHERE resolved_at IS NULL;
    CREATE TABLE IF NOT EXISTS provider_errors (
        provider TEXT NOT NULL,
        code TEXT NOT NULL,
        hour INTEGER NOT NULL,
        count INTEGER NOT NULL,
        PRIMARY KEY (provider, code, hour)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS incident_accounts (
        incident TEXT NOT NULL,
        client_id TEXT NOT NULL,
        account_id TEXT NOT NULL,
        recovered INTEGER NOT NULL,
        PRIMARY KEY (incident, client_id, account_id)
    ) WITHOUT ROWID;";

/// The tables' names, for starting over.
pub(super) const TABLE_NAMES: [&str; 4] = [
    "provider_failing",
    "incidents",
    "incident_accounts",
    "provider_errors",
];

/// An hour in milliseconds: errors are counted per provider, code and hour.
const HOUR_MS: i64 = 3_600_000;
/// Hours of error counts kept.
const HOURS_KEPT: i64 = 48;

/// Counts one error of `code` of an account of `provider`, in the hour of
/// `at_ms` (event time). A new hour drops the counts older than
/// [`HOURS_KEPT`]: the table stays providers × codes × hours small.
pub(super) fn count_error(
    tx: &Transaction<'_>,
    provider: &str,
    code: &str,
    at_ms: i64,
) -> rusqlite::Result<()> {
    let hour = at_ms.div_euclid(HOUR_MS);
    let added = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO provider_errors (provider, code, hour, count) \
             VALUES (?1, ?2, ?3, 1)",
        )?
        .execute(params![provider, code, hour])?;
    if added == 0 {
        tx.prepare_cached(
            "UPDATE provider_errors SET count = count + 1 \
             WHERE provider = ?1 AND code = ?2 AND hour = ?3",
        )?
        .execute(params![provider, code, hour])?;
    } else {
        tx.prepare_cached("DELETE FROM provider_errors WHERE hour < ?1")?
            .execute([hour - HOURS_KEPT])?;
    }
    Ok(())
}

/// `providers.incident_accounts` and `providers.incident_window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub accounts: u32,
    pub window_ms: i64,
}

/// One event of an account of `provider`, as the incidents see it.
#[derive(Debug)]
pub(super) struct Seen<'a> {
    pub provider: &'a str,
    pub client_id: &'a str,
    pub account_id: &'a str,
    pub happened: Happened<'a>,
    /// `x-received-at`, in milliseconds and as written.
    pub at_ms: i64,
    pub at: &'a str,
    /// The event's `message_id`.
    pub message_id: &'a str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Happened<'a> {
    /// Left the account in `contact_provider`, with this code.
    Failed(&'a str),
    Synced,
    /// A failure that left the account outside `contact_provider` (a
    /// `LoginFailedError`, say): it is no longer one of the provider's
    /// failing accounts.
    Left,
}

/// What the event did to the provider's incident.
#[derive(Debug, Default)]
pub(super) struct Effect {
    /// The open incident the account's change belongs to.
    pub incident: Option<String>,
    /// To announce before the account's change.
    pub opened: Option<ProviderIncident>,
    /// To announce after it.
    pub resolved: Option<ProviderIncident>,
}

/// An open incident, as the fold works on it.
struct Open {
    id: String,
    code: String,
    accounts: u32,
    recovered: u32,
    first_seen_ms: i64,
    first_seen: String,
    opened_at: String,
    last_failure_ms: i64,
}

impl Open {
    fn message(&self, provider: &str, kind: IncidentKind, caused_by: &str) -> ProviderIncident {
        ProviderIncident {
            incident: self.id.clone(),
            kind,
            provider: provider.to_owned(),
            code: self.code.clone(),
            accounts: self.accounts,
            opened_with: Vec::new(),
            recovered: self.recovered,
            first_seen: self.first_seen.clone(),
            opened_at: self.opened_at.clone(),
            resolved_at: None,
            resolved_by: None,
            duration_seconds: None,
            caused_by: caused_by.to_owned(),
        }
    }
}

/// Applies one (not late) event of an account of a provider.
pub(super) fn apply(
    tx: &Transaction<'_>,
    seen: &Seen<'_>,
    thresholds: Thresholds,
) -> rusqlite::Result<Effect> {
    let mut effect = Effect::default();
    let mut open = open_incident(tx, seen.provider)?;
    if let Some(incident) = open.take_if(|i| seen.at_ms - i.last_failure_ms >= thresholds.window_ms)
    {
        effect.resolved = Some(resolve(
            tx,
            seen,
            incident,
            ResolvedBy::NoFailureForAWindow,
        )?);
    }
    match (seen.happened, open) {
        (Happened::Failed(_), Some(mut incident)) => {
            join(tx, &mut incident, seen)?;
            effect.incident = Some(incident.id);
        }
        (Happened::Failed(code), None) => {
            tx.prepare_cached(
                "INSERT INTO provider_failing (provider, client_id, account_id, code, at_ms, at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO UPDATE SET code = ?4, \
                 at_ms = max(at_ms, ?5), at = CASE WHEN ?5 >= at_ms THEN ?6 ELSE at END",
            )?
            .execute(params![
                seen.provider,
                seen.client_id,
                seen.account_id,
                code,
                seen.at_ms,
                seen.at
            ])?;
            if let Some(opened) = open_if_enough(tx, seen, code, thresholds)? {
                effect.incident = Some(opened.incident.clone());
                effect.opened = Some(opened);
            }
        }
        (Happened::Synced, open) => {
            tx.prepare_cached(
                "DELETE FROM provider_failing \
                 WHERE provider = ?1 AND client_id = ?2 AND account_id = ?3",
            )?
            .execute(params![seen.provider, seen.client_id, seen.account_id])?;
            if let Some(mut incident) = open {
                let recovered = tx
                    .prepare_cached(
                        "UPDATE incident_accounts SET recovered = 1 WHERE incident = ?1 \
                         AND client_id = ?2 AND account_id = ?3 AND recovered = 0",
                    )?
                    .execute(params![incident.id, seen.client_id, seen.account_id])?;
                if recovered > 0 {
                    incident.recovered += 1;
                    effect.incident = Some(incident.id.clone());
                    if incident.recovered >= thresholds.accounts {
                        effect.resolved =
                            Some(resolve(tx, seen, incident, ResolvedBy::AccountsSynced)?);
                    } else {
                        save(tx, &incident)?;
                    }
                }
            }
        }
        (Happened::Left, _) => {
            tx.prepare_cached(
                "DELETE FROM provider_failing \
                 WHERE provider = ?1 AND client_id = ?2 AND account_id = ?3",
            )?
            .execute(params![seen.provider, seen.client_id, seen.account_id])?;
        }
    }
    Ok(effect)
}

fn open_incident(tx: &Transaction<'_>, provider: &str) -> rusqlite::Result<Option<Open>> {
    tx.prepare_cached(
        "SELECT id, code, accounts, recovered, first_seen_ms, first_seen, opened_at, \
         last_failure_ms FROM incidents WHERE provider = ?1 AND resolved_at IS NULL",
    )?
    .query_row([provider], |row| {
        Ok(Open {
            id: row.get(0)?,
            code: row.get(1)?,
            accounts: row.get(2)?,
            recovered: row.get(3)?,
            first_seen_ms: row.get(4)?,
            first_seen: row.get(5)?,
            opened_at: row.get(6)?,
            last_failure_ms: row.get(7)?,
        })
    })
    .optional()
}

fn save(tx: &Transaction<'_>, incident: &Open) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "UPDATE incidents SET accounts = ?2, recovered = ?3, last_failure_ms = ?4 WHERE id = ?1",
    )?
    .execute(params![
        incident.id,
        incident.accounts,
        incident.recovered,
        incident.last_failure_ms
    ])?;
    Ok(())
}

/// The failing account in the open incident: new to it, or failing again
/// after it had recovered.
fn join(tx: &Transaction<'_>, incident: &mut Open, seen: &Seen<'_>) -> rusqlite::Result<()> {
    let was: Option<bool> = tx
        .prepare_cached(
            "SELECT recovered FROM incident_accounts \
             WHERE incident = ?1 AND client_id = ?2 AND account_id = ?3",
        )?
        .query_row(
            params![incident.id, seen.client_id, seen.account_id],
            |row| row.get(0),
        )
        .optional()?;
    match was {
        None => incident.accounts += 1,
        Some(true) => incident.recovered = incident.recovered.saturating_sub(1),
        Some(false) => {}
    }
    tx.prepare_cached(
        "INSERT INTO incident_accounts (incident, client_id, account_id, recovered) \
         VALUES (?1, ?2, ?3, 0) ON CONFLICT DO UPDATE SET recovered = 0",
    )?
    .execute(params![incident.id, seen.client_id, seen.account_id])?;
    incident.last_failure_ms = incident.last_failure_ms.max(seen.at_ms);
    save(tx, incident)
}

/// Opens an incident when enough of the provider's accounts failed within
/// the window up to this event; its failing accounts move into it.
fn open_if_enough(
    tx: &Transaction<'_>,
    seen: &Seen<'_>,
    code: &str,
    thresholds: Thresholds,
) -> rusqlite::Result<Option<ProviderIncident>> {
    let from = seen.at_ms - thresholds.window_ms;
    tx.prepare_cached("DELETE FROM provider_failing WHERE provider = ?1 AND at_ms <= ?2")?
        .execute(params![seen.provider, from])?;
    let (count, first_seen_ms, first_seen): (u32, Option<i64>, Option<String>) = tx
        .prepare_cached(
            "SELECT count(*), min(at_ms), (SELECT at FROM provider_failing WHERE provider = ?1 \
             ORDER BY at_ms LIMIT 1) FROM provider_failing WHERE provider = ?1",
        )?
        .query_row([seen.provider], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })?;
    if count < thresholds.accounts {
        return Ok(None);
    }
    let incident = Open {
        id: incident_id(seen.message_id),
        code: code.to_owned(),
        accounts: count,
        recovered: 0,
        first_seen_ms: first_seen_ms.unwrap_or(seen.at_ms),
        first_seen: first_seen.unwrap_or_else(|| seen.at.to_owned()),
        opened_at: seen.at.to_owned(),
        last_failure_ms: seen.at_ms,
    };
    tx.prepare_cached(
        "INSERT INTO incidents (id, provider, code, accounts, recovered, first_seen_ms, \
         first_seen, opened_at, last_failure_ms, opened_by) \
         VALUES (?1, ?2, ?3, ?4, 0, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        incident.id,
        seen.provider,
        incident.code,
        incident.accounts,
        incident.first_seen_ms,
        incident.first_seen,
        incident.opened_at,
        incident.last_failure_ms,
        seen.message_id,
    ])?;
    tx.prepare_cached(
        "INSERT INTO incident_accounts (incident, client_id, account_id, recovered) \
         SELECT ?1, client_id, account_id, 0 FROM provider_failing WHERE provider = ?2",
    )?
    .execute(params![incident.id, seen.provider])?;
    let limit = i64::try_from(LISTED_AT_MOST).unwrap_or(i64::MAX);
    let opened_with = tx
        .prepare_cached(
            "SELECT client_id, account_id FROM provider_failing WHERE provider = ?1 \
             ORDER BY at_ms DESC, client_id, account_id LIMIT ?2",
        )?
        .query_map(params![seen.provider, limit], |row| {
            Ok(IncidentAccount {
                client_id: row.get(0)?,
                account_id: row.get(1)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    tx.prepare_cached("DELETE FROM provider_failing WHERE provider = ?1")?
        .execute([seen.provider])?;
    Ok(Some(ProviderIncident {
        opened_with,
        ..incident.message(seen.provider, IncidentKind::IncidentOpened, seen.message_id)
    }))
}

fn resolve(
    tx: &Transaction<'_>,
    seen: &Seen<'_>,
    incident: Open,
    by: ResolvedBy,
) -> rusqlite::Result<ProviderIncident> {
    let seconds = ((seen.at_ms - incident.first_seen_ms) / 1000).max(0);
    let by_name = match by {
        ResolvedBy::AccountsSynced => "accounts_synced",
        ResolvedBy::NoFailureForAWindow => "no_failure_for_a_window",
    };
    tx.prepare_cached(
        "UPDATE incidents SET recovered = ?2, resolved_at = ?3, resolved_by = ?4, \
         duration_seconds = ?5 WHERE id = ?1",
    )?
    .execute(params![
        incident.id,
        incident.recovered,
        seen.at,
        by_name,
        seconds
    ])?;
    Ok(ProviderIncident {
        resolved_at: Some(seen.at.to_owned()),
        resolved_by: Some(by),
        duration_seconds: Some(u64::try_from(seconds).unwrap_or(0)),
        ..incident.message(
            seen.provider,
            IncidentKind::IncidentResolved,
            seen.message_id,
        )
    })
}

/// Incidents open now.
pub(super) fn open_count(db: &rusqlite::Connection) -> rusqlite::Result<u64> {
    let open: i64 = db
        .prepare_cached("SELECT count(*) FROM incidents WHERE resolved_at IS NULL")?
        .query_row([], |row| row.get(0))?;
    Ok(u64::try_from(open).unwrap_or(0))
}

/// One provider incident, as the store holds it (the console's Providers page).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Incident {
    pub incident: String,
    pub provider: String,
    /// The error code of the event that opened it.
    pub code: String,
    pub accounts: u32,
    pub recovered: u32,
    pub first_seen: String,
    pub opened_at: String,
    /// Null while open.
    pub resolved_at: Option<String>,
    /// `accounts_synced` or `no_failure_for_a_window`; null while open.
    pub resolved_by: Option<String>,
    pub duration_seconds: Option<u64>,
}

/// At most `limit` incidents: the open ones, then the most recent resolved.
pub(super) fn list(db: &rusqlite::Connection, limit: usize) -> rusqlite::Result<Vec<Incident>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    db.prepare_cached(
        "SELECT id, provider, code, accounts, recovered, first_seen, opened_at, resolved_at, \
         resolved_by, duration_seconds FROM incidents \
         ORDER BY resolved_at IS NOT NULL, first_seen_ms DESC LIMIT ?1",
    )?
    .query_map([limit], |row| {
        Ok(Incident {
            incident: row.get(0)?,
            provider: row.get(1)?,
            code: row.get(2)?,
            accounts: row.get(3)?,
            recovered: row.get(4)?,
            first_seen: row.get(5)?,
            opened_at: row.get(6)?,
            resolved_at: row.get(7)?,
            resolved_by: row.get(8)?,
            duration_seconds: row
                .get::<_, Option<i64>>(9)?
                .map(|s| u64::try_from(s).unwrap_or(0)),
        })
    })?
    .collect()
}

/// One provider: its accounts by state, and its open incident.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Provider {
    pub provider: String,
    pub accounts: u64,
    /// Accounts in each state (states without any left out).
    pub by_state: BTreeMap<String, u64>,
    /// The id of its open incident, if any.
    pub open_incident: Option<String>,
    /// Errors of its accounts in the last 24 hours (event time, whole
    /// hours), by code.
    pub errors_24h: BTreeMap<String, u64>,
}

/// The `limit` providers with the most accounts that need someone (then
/// the most accounts), each with its accounts by state.
pub(super) fn providers(
    db: &rusqlite::Connection,
    limit: usize,
) -> rusqlite::Result<Vec<Provider>> {
    let mut found: BTreeMap<String, Provider> = BTreeMap::new();
    let mut statement = db.prepare_cached(
        "SELECT provider, state, count(*) FROM accounts WHERE provider IS NOT NULL \
         GROUP BY provider, state",
    )?;
    let rows = statement.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, i64>(2)?,
        ))
    })?;
    for row in rows {
        let (name, state, count) = row?;
        let count = u64::try_from(count).unwrap_or(0);
        let provider = found.entry(name.clone()).or_insert_with(|| Provider {
            provider: name,
            accounts: 0,
            by_state: BTreeMap::new(),
            open_incident: None,
            errors_24h: BTreeMap::new(),
        });
        provider.accounts += count;
        provider.by_state.insert(state, count);
    }
    let mut open =
        db.prepare_cached("SELECT provider, id FROM incidents WHERE resolved_at IS NULL")?;
    for row in open.query_map([], |row| {
        Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
    })? {
        let (name, id) = row?;
        if let Some(provider) = found.get_mut(&name) {
            provider.open_incident = Some(id);
        }
    }
    let now_ms = crate::accounts::book::millis(std::time::SystemTime::now());
    let mut errors = db.prepare_cached(
        "SELECT provider, code, sum(count) FROM provider_errors WHERE hour > ?1 \
         GROUP BY provider, code",
    )?;
    let rows = errors.query_map([now_ms.div_euclid(HOUR_MS) - 24], |row| {
        Ok((
            row.get::<_, String>(0)?,
            row.get::<_, String>(1)?,
            row.get::<_, i64>(2)?,
        ))
    })?;
    for row in rows {
        let (name, code, count) = row?;
        if let Some(provider) = found.get_mut(&name) {
            provider
                .errors_24h
                .insert(code, u64::try_from(count).unwrap_or(0));
        }
    }
    let mut providers: Vec<Provider> = found.into_values().collect();
    let needing = |p: &Provider| p.accounts - p.by_state.get("ok").copied().unwrap_or(0);
    providers.sort_by(|a, b| {
        (b.open_incident.is_some(), needing(b), b.accounts)
            .cmp(&(a.open_incident.is_some(), needing(a), a.accounts))
            .then_with(|| a.provider.cmp(&b.provider))
    });
    providers.truncate(limit);
    Ok(providers)
}
