//! The history's index, for the console: what identifies each event
//! (offset, message id, routing key, time, account, user, client app) in the
//! relay's derived store ([`crate::derived`]), so that "the newest 50" and
//! "everything of account X" answer from an index instead of a read of the
//! whole stream (RabbitMQ 3.10 cannot filter a stream on the server).
//!
//! The stream stays the truth; the store's follower writes these rows as it
//! reads it, prunes those older than the stream's first event, and starts
//! over when the stream is not the one it followed. It holds no body and no
//! `loginName`.

use schemars::JsonSchema;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, params_from_iter};
use serde::Serialize;

use super::{Ends, Filter, Reader, Recorded, Start};
use crate::wire::headers::{ACCOUNT_ID, CLIENT_ID, USER_ID, text};
use crate::wire::topic::TopicPattern;

/// One event as the index knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Row {
    pub offset: u64,
    pub message_id: Option<String>,
    pub routing_key: String,
    /// `x-received-at`, RFC 3339 with milliseconds.
    pub received_at: Option<String>,
    pub account_id: Option<String>,
    pub user_id: Option<String>,
    pub client_id: Option<String>,
}

impl Row {
    pub fn of(event: &Recorded) -> Row {
        let headers = event.properties.headers().as_ref();
        Row {
            offset: event.offset,
            message_id: event.message_id(),
            routing_key: event.routing_key.clone(),
            received_at: event
                .received_at()
                .map(|at| humantime::format_rfc3339_millis(at).to_string()),
            account_id: text(headers, ACCOUNT_ID),
            user_id: text(headers, USER_ID),
            client_id: text(headers, CLIENT_ID),
        }
    }
}

/// The newest rows that pass a filter, older than a cursor.
#[derive(Debug)]
pub struct Found {
    /// Newest first.
    pub rows: Vec<Row>,
    /// Pass as `before` for the next, older page.
    pub next_cursor: Option<u64>,
}

fn millis(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn offset_sql(offset: u64) -> i64 {
    i64::try_from(offset).unwrap_or(i64::MAX)
}

/// Creates the index's table, if it is not there.
pub(crate) fn create(db: &Connection) -> rusqlite::Result<()> {
    db.execute_batch(
        "CREATE TABLE IF NOT EXISTS events (
             offset INTEGER PRIMARY KEY,
             message_id TEXT,
             routing_key TEXT NOT NULL,
             received_ms INTEGER,
             account_id TEXT,
             user_id TEXT,
             client_id TEXT
         );
         CREATE INDEX IF NOT EXISTS by_account ON events (account_id, offset);
         CREATE INDEX IF NOT EXISTS by_user ON events (user_id, offset);
         CREATE INDEX IF NOT EXISTS by_message ON events (message_id);",
    )
}

/// Adds one row (an offset already held is replaced).
pub(crate) fn insert(db: &Connection, row: &Row) -> rusqlite::Result<()> {
    let received = row
        .received_at
        .as_deref()
        .and_then(|at| humantime::parse_rfc3339_weak(at).ok())
        .map(millis);
    db.prepare_cached(
        "INSERT OR REPLACE INTO events
         (offset, message_id, routing_key, received_ms, account_id, user_id, client_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(rusqlite::params![
        offset_sql(row.offset),
        row.message_id,
        row.routing_key,
        received,
        row.account_id,
        row.user_id,
        row.client_id,
    ])?;
    Ok(())
}

/// Drops the rows before `first` (the stream's first offset).
pub(crate) fn prune_before(db: &Connection, first: u64) -> rusqlite::Result<usize> {
    db.execute("DELETE FROM events WHERE offset < ?1", [offset_sql(first)])
}

/// Rows held.
pub(crate) fn len(db: &Connection) -> rusqlite::Result<u64> {
    let count: i64 = db.query_row("SELECT count(*) FROM events", [], |row| row.get(0))?;
    Ok(u64::try_from(count).unwrap_or(0))
}

/// The row of `message_id`, if indexed.
pub(crate) fn find(db: &Connection, message_id: &str) -> rusqlite::Result<Option<Row>> {
    let filter = Filter {
        message_ids: vec![message_id.to_owned()],
        ..Filter::default()
    };
    Ok(search(db, &filter, None, 1)?.rows.into_iter().next())
}

/// The newest `limit` rows that pass `filter`, older than `before`.
pub(crate) fn search(
    db: &Connection,
    filter: &Filter,
    before: Option<u64>,
    limit: usize,
) -> rusqlite::Result<Found> {
    let mut conditions = Vec::new();
    let mut values: Vec<rusqlite::types::Value> = Vec::new();
    let mut equal = |column: &str, value: &Option<String>| {
        if let Some(value) = value {
            values.push(value.clone().into());
            conditions.push(format!("{column} = ?{}", values.len()));
        }
    };
    equal("account_id", &filter.account_id);
    equal("user_id", &filter.user_id);
    equal("client_id", &filter.client_id);
    if let [message_id] = filter.message_ids.as_slice() {
        values.push(message_id.clone().into());
        conditions.push(format!("message_id = ?{}", values.len()));
    }
    if let Some(before) = before {
        values.push(offset_sql(before).into());
        conditions.push(format!("offset < ?{}", values.len()));
    }
    if let Some(since) = filter.since {
        values.push(millis(since).into());
        conditions.push(format!("received_ms >= ?{}", values.len()));
    }
    if let Some(until) = filter.until {
        values.push(millis(until).into());
        conditions.push(format!("received_ms <= ?{}", values.len()));
    }
    let mut sql = "SELECT offset, message_id, routing_key, received_ms, account_id, user_id, \
                   client_id FROM events"
        .to_owned();
    if !conditions.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    sql.push_str(" ORDER BY offset DESC");
    let mut statement = db.prepare_cached(&sql)?;
    let mut rows = statement.query(params_from_iter(values))?;
    let mut found = Vec::new();
    let mut more = false;
    while let Some(row) = rows.next()? {
        let row = Row {
            offset: u64::try_from(row.get::<_, i64>(0)?).unwrap_or(0),
            message_id: row.get(1)?,
            routing_key: row.get(2)?,
            received_at: row.get::<_, Option<i64>>(3)?.map(|ms| {
                let at = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
                humantime::format_rfc3339_millis(at).to_string()
            }),
            account_id: row.get(4)?,
            user_id: row.get(5)?,
            client_id: row.get(6)?,
        };
        if !admits_key(&filter.routing_keys, &row.routing_key)
            || (filter.message_ids.len() > 1
                && !row
                    .message_id
                    .as_ref()
                    .is_some_and(|id| filter.message_ids.contains(id)))
        {
            continue;
        }
        if found.len() == limit {
            more = true;
            break;
        }
        found.push(row);
    }
    Ok(Found {
        next_cursor: if more {
            found.last().map(|row| row.offset)
        } else {
            None
        },
        rows: found,
    })
}

/// Whether a routing key passes any of `patterns` (none: any).
fn admits_key(patterns: &[TopicPattern], key: &str) -> bool {
    patterns.is_empty() || patterns.iter().any(|p| p.matches(key))
}

/// Every message of the stream, a relay's notes included: the follower's
/// position may be a note, and the stream's first message may be one.
fn everything() -> Filter {
    Filter {
        notes: true,
        ..Filter::default()
    }
}

/// The message at `offset` (an event, or a relay's note), if the stream
/// still holds it.
pub(crate) async fn at_offset(
    connection: &lapin::Connection,
    stream: &str,
    offset: u64,
) -> anyhow::Result<Option<Recorded>> {
    let mut reader = Reader::open(
        connection,
        stream,
        Start::Offset(offset),
        Ends::AtTheEnd,
        everything(),
    )
    .await?;
    let mut found = None;
    while let Some(event) = reader.next().await? {
        if event.offset >= offset {
            found = (event.offset == offset).then_some(event);
            break;
        }
    }
    reader.close().await;
    Ok(found)
}

/// The stream's first offset, `None` while it is empty.
pub(crate) async fn first_offset(
    connection: &lapin::Connection,
    stream: &str,
) -> anyhow::Result<Option<u64>> {
    let mut reader = Reader::open(
        connection,
        stream,
        Start::First,
        Ends::AtTheEnd,
        everything(),
    )
    .await?;
    let first = reader.next().await?.map(|event| event.offset);
    reader.close().await;
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(offset: u64, account: &str, key: &str) -> Row {
        Row {
            offset,
            message_id: Some(format!("m-{offset}")),
            routing_key: key.to_owned(),
            received_at: Some(format!("2026-12-01T00:00:{:02}.000Z", offset % 60)),
            account_id: Some(account.to_owned()),
            user_id: Some(format!("u-{account}")),
            client_id: Some("app".to_owned()),
        }
    }

    fn index() -> Connection {
        let db = Connection::open_in_memory().unwrap();
        create(&db).unwrap();
        db
    }

    #[test]
    fn an_account_is_found_newest_first_a_page_at_a_time() {
        let db = index();
        for n in 0..10 {
            insert(
                &db,
                &row(n, if n % 3 == 0 { "a-1" } else { "a-2" }, "sync.account"),
            )
            .unwrap();
        }
        let filter = Filter {
            account_id: Some("a-1".into()),
            ..Filter::default()
        };

        let first = search(&db, &filter, None, 2).unwrap();
        let offsets: Vec<u64> = first.rows.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, [9, 6]);
        assert_eq!(first.next_cursor, Some(6));
        let second = search(&db, &filter, first.next_cursor, 2).unwrap();
        let offsets: Vec<u64> = second.rows.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, [3, 0]);
        assert_eq!(second.next_cursor, None);
        assert_eq!(
            find(&db, "m-4").unwrap().unwrap().account_id.as_deref(),
            Some("a-2")
        );
    }

    #[test]
    fn patterns_times_and_pruning_narrow_what_is_found() {
        let db = index();
        for row in [
            row(1, "a", "sync.account"),
            row(2, "a", "sync.error.LoginFailedError"),
            row(3, "a", "account.needs_reconnect"),
        ] {
            insert(&db, &row).unwrap();
        }
        let errors = Filter {
            routing_keys: vec!["sync.error.*".parse().unwrap()],
            ..Filter::default()
        };
        assert_eq!(search(&db, &errors, None, 10).unwrap().rows[0].offset, 2);
        let since = Filter {
            since: Some(humantime::parse_rfc3339("2026-12-01T00:00:02Z").unwrap()),
            ..Filter::default()
        };
        assert_eq!(search(&db, &since, None, 10).unwrap().rows.len(), 2);
        assert_eq!(prune_before(&db, 3).unwrap(), 2);
        assert_eq!(len(&db).unwrap(), 1);
    }
}
