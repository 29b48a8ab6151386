//! An index of the history, for the console: what identifies each event
//! (offset, message id, routing key, time, account, user, client app) in a
//! SQLite file of this relay's, so that "the newest 50" and "everything of
//! account X" answer from an index instead of a read of the whole stream
//! (RabbitMQ 3.10 cannot filter a stream on the server).
//!
//! The stream stays the truth; the index follows it ([`Index::follow`], a task
//! of the relay) and is rebuilt from it whenever it cannot be trusted:
//! - across restarts it resumes after the last offset it holds, once it has
//!   checked that the stream still has the same event at that offset (a
//!   stream deleted and declared again starts its offsets over: then the
//!   index starts over too);
//! - across relays each keeps its own file, following the same stream;
//! - rows older than the stream's first event (dropped by `max_age` or
//!   `max_bytes`) are pruned every [`PRUNE_EVERY`].
//!
//! It holds no body and no `loginName`. Until it has caught up with the end
//! of the stream it saw when it started ([`Index::caught_up`]), readers use
//! the stream instead.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use rusqlite::{Connection, OptionalExtension, params_from_iter};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tracing::info;

use super::{Filter, Reader, Recorded, Start};
use crate::wire::headers::{ACCOUNT_ID, CLIENT_ID, USER_ID, text};
use crate::wire::topic::TopicPattern;

/// Rows written in one transaction at most.
const BATCH: usize = 2000;
/// How long a partial batch waits for more before it is written.
const FLUSH_AFTER: Duration = Duration::from_millis(200);
/// How often rows the stream no longer holds are dropped.
pub const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// SQLite's page cache for the index: what it costs in memory, at most.
const CACHE_KIB: i64 = 16 * 1024;

/// One event as the index knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
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

/// The index file and how far it has followed the stream.
pub struct Index {
    db: Mutex<Connection>,
    caught_up: AtomicBool,
}

fn millis(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn offset_sql(offset: u64) -> i64 {
    i64::try_from(offset).unwrap_or(i64::MAX)
}

impl Index {
    /// Opens (or creates) the index at `path`.
    pub fn open(path: &Path) -> anyhow::Result<Index> {
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
        // A checkpoint truncates the write-ahead log back to this size, so
        // the log does not keep the size of the largest burst on disk.
        db.pragma_update(None, "journal_size_limit", 4 * 1024 * 1024)?;
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
        )?;
        Ok(Index {
            db: Mutex::new(db),
            caught_up: AtomicBool::new(false),
        })
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the index has reached the end of the stream it saw when it
    /// started following it: from then on it answers for the stream.
    pub fn caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }

    /// Rows held.
    pub fn len(&self) -> anyhow::Result<u64> {
        let count: i64 = self
            .db()
            .query_row("SELECT count(*) FROM events", [], |row| row.get(0))?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    pub fn is_empty(&self) -> anyhow::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// The last row: where to resume, and what to check there.
    pub fn last(&self) -> anyhow::Result<Option<(u64, Option<String>)>> {
        Ok(self
            .db()
            .query_row(
                "SELECT offset, message_id FROM events ORDER BY offset DESC LIMIT 1",
                [],
                |row| Ok((row.get::<_, i64>(0)?, row.get::<_, Option<String>>(1)?)),
            )
            .optional()?
            .map(|(offset, id)| (u64::try_from(offset).unwrap_or(0), id)))
    }

    /// Adds rows (an offset already held is replaced).
    pub fn insert(&self, rows: &[Row]) -> anyhow::Result<()> {
        let mut db = self.db();
        let tx = db.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT OR REPLACE INTO events
                 (offset, message_id, routing_key, received_ms, account_id, user_id, client_id)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for row in rows {
                let received = row
                    .received_at
                    .as_deref()
                    .and_then(|at| humantime::parse_rfc3339_weak(at).ok())
                    .map(millis);
                insert.execute(rusqlite::params![
                    offset_sql(row.offset),
                    row.message_id,
                    row.routing_key,
                    received,
                    row.account_id,
                    row.user_id,
                    row.client_id,
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Drops the rows before `first` (the stream's first offset).
    pub fn prune_before(&self, first: u64) -> anyhow::Result<usize> {
        Ok(self
            .db()
            .execute("DELETE FROM events WHERE offset < ?1", [offset_sql(first)])?)
    }

    /// Drops every row: the stream is not the one indexed.
    pub fn clear(&self) -> anyhow::Result<()> {
        self.db().execute("DELETE FROM events", [])?;
        Ok(())
    }

    /// The row of `message_id`, if indexed.
    pub fn find(&self, message_id: &str) -> anyhow::Result<Option<Row>> {
        let filter = Filter {
            message_ids: vec![message_id.to_owned()],
            ..Filter::default()
        };
        Ok(self.search(&filter, None, 1)?.rows.into_iter().next())
    }

    /// The newest `limit` rows that pass `filter`, older than `before`.
    pub fn search(
        &self,
        filter: &Filter,
        before: Option<u64>,
        limit: usize,
    ) -> anyhow::Result<Found> {
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
        let db = self.db();
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

    /// Follows `stream` into the index until `stopping` turns true: resumes
    /// after the last row (or starts over, see the module's doc), writes in
    /// batches, prunes what the stream dropped; after a lost connection it
    /// says so once and tries again.
    pub async fn follow(
        self: std::sync::Arc<Self>,
        broker: crate::broker::Broker,
        stream: String,
        stopping: watch::Receiver<bool>,
    ) {
        super::follow(&*self, broker, stream, stopping).await;
    }

    async fn follow_on(&self, connection: &lapin::Connection, stream: &str) -> anyhow::Result<()> {
        let start = match self.last()? {
            None => Start::First,
            Some((offset, id)) => {
                if at_offset(connection, stream, offset)
                    .await?
                    .is_some_and(|event| event.message_id() == id)
                {
                    Start::Offset(offset + 1)
                } else {
                    info!(
                        stream,
                        "history index: the stream is not the one indexed; rebuilding"
                    );
                    self.clear()?;
                    Start::First
                }
            }
        };
        let end = super::last_event(connection, stream)
            .await?
            .map(|last| last.offset);
        if end.is_none_or(|end| matches!(start, Start::Offset(next) if next > end)) {
            self.caught_up.store(true, Ordering::Release);
        }
        let reader = Reader::open(connection, stream, start, true, Filter::default()).await?;
        // The reader runs in a task of its own, so that waiting for a batch to
        // fill never cancels a read half-way.
        let (events, mut received) = mpsc::channel::<Row>(BATCH);
        let reading = tokio::spawn(async move {
            let mut reader = reader;
            while let Some(event) = reader.next().await? {
                if events.send(Row::of(&event)).await.is_err() {
                    break;
                }
            }
            anyhow::Ok(())
        });
        let mut batch = Vec::with_capacity(BATCH);
        let mut prune = tokio::time::interval(PRUNE_EVERY);
        let result = loop {
            tokio::select! {
                row = received.recv() => match row {
                    Some(row) => {
                        batch.push(row);
                        if batch.len() < BATCH {
                            continue;
                        }
                    }
                    None => break Err(anyhow::anyhow!("the stream read ended")),
                },
                () = tokio::time::sleep(FLUSH_AFTER), if !batch.is_empty() => {}
                _ = prune.tick() => {
                    if let Some(first) = first_offset(connection, stream).await? {
                        self.prune_before(first)?;
                    }
                    continue;
                }
            }
            let last = batch.last().map(|row| row.offset);
            self.insert(&batch)?;
            batch.clear();
            if end.zip(last).is_some_and(|(end, last)| last >= end) {
                self.caught_up.store(true, Ordering::Release);
            }
        };
        reading.abort();
        match reading.await {
            Ok(Err(err)) => Err(err),
            _ => result,
        }
    }
}

/// Whether a routing key passes any of `patterns` (none: any).
fn admits_key(patterns: &[TopicPattern], key: &str) -> bool {
    patterns.is_empty() || patterns.iter().any(|p| p.matches(key))
}

/// The event at `offset`, if the stream still holds it.
pub(crate) async fn at_offset(
    connection: &lapin::Connection,
    stream: &str,
    offset: u64,
) -> anyhow::Result<Option<Recorded>> {
    let mut reader = Reader::open(
        connection,
        stream,
        Start::Offset(offset),
        false,
        Filter::default(),
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
async fn first_offset(connection: &lapin::Connection, stream: &str) -> anyhow::Result<Option<u64>> {
    let mut reader =
        Reader::open(connection, stream, Start::First, false, Filter::default()).await?;
    let first = reader.next().await?.map(|event| event.offset);
    reader.close().await;
    Ok(first)
}

impl super::Follower for Index {
    const WHAT: &'static str = "history index";
    const MEANWHILE: &'static str = "the console reads the stream meanwhile";
    const CONNECTION: &'static str = "hookrelay-index";

    fn caught_up_flag(&self) -> &AtomicBool {
        &self.caught_up
    }

    async fn read(&self, connection: &lapin::Connection, stream: &str) -> anyhow::Result<()> {
        self.follow_on(connection, stream).await
    }
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

    fn index() -> (Index, std::path::PathBuf) {
        let path =
            std::env::temp_dir().join(format!("hookrelay-index-{}.sqlite", uuid::Uuid::now_v7()));
        (Index::open(&path).unwrap(), path)
    }

    #[test]
    fn an_account_is_found_newest_first_a_page_at_a_time() {
        let (index, path) = index();
        let rows: Vec<Row> = (0..10)
            .map(|n| row(n, if n % 3 == 0 { "a-1" } else { "a-2" }, "sync.account"))
            .collect();
        index.insert(&rows).unwrap();
        let filter = Filter {
            account_id: Some("a-1".into()),
            ..Filter::default()
        };

        let first = index.search(&filter, None, 2).unwrap();
        let offsets: Vec<u64> = first.rows.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, [9, 6]);
        assert_eq!(first.next_cursor, Some(6));
        let second = index.search(&filter, first.next_cursor, 2).unwrap();
        let offsets: Vec<u64> = second.rows.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, [3, 0]);
        assert_eq!(second.next_cursor, None);
        assert_eq!(
            index.find("m-4").unwrap().unwrap().account_id.as_deref(),
            Some("a-2")
        );
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn patterns_times_and_pruning_narrow_what_is_found() {
        let (index, path) = index();
        index
            .insert(&[
                row(1, "a", "sync.account"),
                row(2, "a", "sync.error.LoginFailedError"),
                row(3, "a", "account.needs_reconnect"),
            ])
            .unwrap();
        let errors = Filter {
            routing_keys: vec!["sync.error.*".parse().unwrap()],
            ..Filter::default()
        };
        assert_eq!(index.search(&errors, None, 10).unwrap().rows[0].offset, 2);
        let since = Filter {
            since: Some(humantime::parse_rfc3339("2026-12-01T00:00:02Z").unwrap()),
            ..Filter::default()
        };
        assert_eq!(index.search(&since, None, 10).unwrap().rows.len(), 2);
        assert_eq!(index.prune_before(3).unwrap(), 2);
        assert_eq!(index.len().unwrap(), 1);
        assert_eq!(index.last().unwrap(), Some((3, Some("m-3".to_owned()))));
        index.clear().unwrap();
        assert!(index.is_empty().unwrap());
        std::fs::remove_file(path).unwrap();
    }
}
