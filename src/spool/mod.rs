//! The local spool: accepted webhooks that RabbitMQ could not confirm, kept on
//! disk until it can.
//!
//! It is an SQLite database (WAL, `synchronous=FULL`), so an append has been
//! fsync'd when it returns and survives a crash of the relay or the machine.
//! Each row is exactly what will be published: exchange, routing key, body, and
//! the AMQP properties in AMQP's own wire encoding (the spec's format, via
//! amq-protocol, so nothing is re-derived or re-serialised on the way out).
//! Rows come back out in insertion order; [`drain`] publishes them and deletes
//! each only after RabbitMQ confirmed it.

pub mod drain;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use amq_protocol::protocol::basic::{gen_properties, parse_properties};
use bytes::Bytes;
use lapin::BasicProperties;
use rusqlite::{Connection, params};
use tokio::sync::Notify;

use crate::broker::Outgoing;
use crate::metrics::Metrics;

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS spool (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        exchange    TEXT    NOT NULL,
        routing_key TEXT    NOT NULL,
        properties  BLOB    NOT NULL,
        body        BLOB    NOT NULL,
        size        INTEGER NOT NULL, -- bytes counted against spool.max_bytes
        spooled_at  INTEGER NOT NULL  -- milliseconds since the epoch
    );";

/// A cheap, cloneable handle on the spool.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

struct Inner {
    db: Mutex<Connection>,
    /// Rows in the table; changed only while holding `db`, in the same step as
    /// the row, so it never runs behind the drainer.
    entries: AtomicU64,
    bytes: AtomicU64,
    max_bytes: u64,
    /// Set when an append was refused for lack of room; cleared when a drain frees some.
    full: AtomicBool,
    /// Woken on every append, so the drainer sleeps while there is nothing to do.
    appended: Notify,
    metrics: Metrics,
}

/// A spooled message and its place in line.
#[derive(Debug, Clone)]
pub struct Spooled {
    pub seq: i64,
    pub message: Outgoing,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("the spool is full ({max_bytes} bytes)")]
    Full { max_bytes: u64 },
    #[error("spool storage failed: {0}")]
    Storage(#[from] rusqlite::Error),
    #[error("a spooled message's properties cannot be decoded")]
    Corrupt,
    #[error("cannot encode the message's properties")]
    Encode,
    #[error("the spool task panicked")]
    Task,
}

impl Spool {
    /// Opens (or creates) the spool at `path`, creating its folder.
    pub fn open(path: &Path, max_bytes: u64, metrics: Metrics) -> anyhow::Result<Spool> {
        use anyhow::Context;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create the spool folder {}", parent.display()))?;
        }
        let db = Connection::open(path)
            .with_context(|| format!("cannot open the spool {}", path.display()))?;
        // WAL: appends do not block reads; FULL: every commit is fsync'd.
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "FULL")?;
        db.execute_batch(SCHEMA)
            .with_context(|| format!("cannot initialise the spool {}", path.display()))?;
        let (entries, bytes): (i64, i64) = db.query_row(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM spool",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        let (entries, bytes) = (entries.max(0) as u64, bytes.max(0) as u64);
        metrics.spool_state(entries, bytes);
        Ok(Spool {
            inner: Arc::new(Inner {
                db: Mutex::new(db),
                entries: AtomicU64::new(entries),
                bytes: AtomicU64::new(bytes),
                max_bytes,
                full: AtomicBool::new(bytes >= max_bytes),
                appended: Notify::new(),
                metrics,
            }),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.depth() == 0
    }

    /// How many messages wait in the spool.
    pub fn depth(&self) -> u64 {
        self.inner.entries.load(Ordering::SeqCst)
    }

    /// Whether the spool takes writes: false from a refused append until a
    /// drain frees room.
    pub fn has_room(&self) -> bool {
        !self.inner.full.load(Ordering::SeqCst)
    }

    /// Appends `message`; when this returns `Ok`, it is on disk.
    pub async fn append(&self, message: &Outgoing) -> Result<(), SpoolError> {
        let properties = encode_properties(&message.properties)?;
        let size = (message.exchange.len()
            + message.routing_key.len()
            + properties.len()
            + message.body.len()) as u64;
        // Reserve the room first, so concurrent appends cannot overshoot the bound.
        let reserved = self.inner.bytes.fetch_add(size, Ordering::SeqCst) + size;
        if reserved > self.inner.max_bytes {
            self.inner.bytes.fetch_sub(size, Ordering::SeqCst);
            self.inner.full.store(true, Ordering::SeqCst);
            return Err(SpoolError::Full {
                max_bytes: self.inner.max_bytes,
            });
        }
        let (exchange, routing_key, body) = (
            message.exchange.clone(),
            message.routing_key.clone(),
            message.body.clone(),
        );
        let started = Instant::now();
        let result = self
            .blocking(move |db, inner| {
                db.execute(
                    "INSERT INTO spool (exchange, routing_key, properties, body, size, spooled_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![exchange, routing_key, properties, &body[..], size as i64, now_millis()],
                )?;
                inner.entries.fetch_add(1, Ordering::SeqCst);
                Ok(())
            })
            .await;
        self.inner.metrics.observe_spool_write(started.elapsed());
        if result.is_err() {
            self.inner.bytes.fetch_sub(size, Ordering::SeqCst);
        }
        self.publish_state();
        self.inner.appended.notify_one();
        result
    }

    /// The oldest `limit` messages, oldest first.
    pub async fn oldest(&self, limit: usize) -> Result<Vec<Spooled>, SpoolError> {
        self.blocking(move |db, _| {
            let mut statement = db.prepare_cached(
                "SELECT seq, exchange, routing_key, properties, body FROM spool ORDER BY seq LIMIT ?1",
            )?;
            let rows = statement.query_map([limit as i64], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, Vec<u8>>(3)?,
                    row.get::<_, Vec<u8>>(4)?,
                ))
            })?;
            let mut spooled = Vec::new();
            for row in rows {
                let (seq, exchange, routing_key, properties, body) = row?;
                spooled.push(Spooled {
                    seq,
                    message: Outgoing {
                        exchange,
                        routing_key,
                        body: Bytes::from(body),
                        properties: decode_properties(&properties)?,
                    },
                });
            }
            Ok(spooled)
        })
        .await
    }

    /// Deletes delivered messages, in one transaction.
    pub async fn remove(&self, seqs: Vec<i64>) -> Result<(), SpoolError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let removed = self
            .blocking(move |db, inner| {
                let tx = db.transaction()?;
                let (mut rows, mut freed) = (0u64, 0u64);
                {
                    let mut delete =
                        tx.prepare_cached("DELETE FROM spool WHERE seq = ?1 RETURNING size")?;
                    for seq in seqs {
                        if let Some(row) = delete.query([seq])?.next()? {
                            rows += 1;
                            freed += row.get::<_, i64>(0)?.max(0) as u64;
                        }
                    }
                }
                tx.commit()?;
                inner.entries.fetch_sub(rows, Ordering::SeqCst);
                inner.bytes.fetch_sub(freed, Ordering::SeqCst);
                Ok(rows)
            })
            .await?;
        self.inner.full.store(false, Ordering::SeqCst);
        self.inner.metrics.spool_drained(removed);
        self.publish_state();
        Ok(())
    }

    fn publish_state(&self) {
        self.inner.metrics.spool_state(
            self.inner.entries.load(Ordering::SeqCst),
            self.inner.bytes.load(Ordering::SeqCst),
        );
    }

    /// How long the oldest message has waited.
    pub async fn oldest_age(&self) -> Result<Option<Duration>, SpoolError> {
        if self.is_empty() {
            return Ok(None);
        }
        let spooled_at: Option<i64> = self
            .blocking(|db, _| {
                Ok(db
                    .query_row(
                        "SELECT spooled_at FROM spool ORDER BY seq LIMIT 1",
                        [],
                        |row| row.get(0),
                    )
                    .ok())
            })
            .await?;
        Ok(spooled_at
            .map(|at| Duration::from_millis(now_millis().saturating_sub(at).max(0) as u64)))
    }

    /// Returns at once while the spool holds messages, else at the next append.
    pub async fn wait_for_entries(&self) {
        let appended = self.inner.appended.notified();
        if self.is_empty() {
            appended.await;
        }
    }

    /// Runs `work` on the blocking pool: SQLite calls block, fsync above all.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection, &Inner) -> Result<T, SpoolError> + Send + 'static,
    ) -> Result<T, SpoolError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || work(&mut lock(&inner.db), &inner))
            .await
            .map_err(|_| SpoolError::Task)?
    }
}

/// The lock, even if a thread panicked while holding it: SQLite's own
/// transactions keep the data consistent.
fn lock(db: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    db.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn encode_properties(properties: &BasicProperties) -> Result<Vec<u8>, SpoolError> {
    cookie_factory::r#gen(gen_properties(properties), Vec::new())
        .map(|(bytes, _)| bytes)
        .map_err(|_| SpoolError::Encode)
}

fn decode_properties(bytes: &[u8]) -> Result<BasicProperties, SpoolError> {
    parse_properties(bytes)
        .map(|(_, properties)| properties)
        .map_err(|_| SpoolError::Corrupt)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use lapin::types::{AMQPValue, FieldTable};

    use super::*;

    fn temp_path() -> PathBuf {
        std::env::temp_dir()
            .join(format!("hookrelay-spool-test-{}", uuid::Uuid::now_v7()))
            .join("spool.sqlite")
    }

    fn message(n: u32) -> Outgoing {
        let mut headers = FieldTable::default();
        headers.insert("hook".into(), AMQPValue::LongString("SyncError".into()));
        headers.insert("x-error-known".into(), AMQPValue::Boolean(false));
        Outgoing {
            exchange: "webhooks".into(),
            routing_key: format!("sync.error.E{n}"),
            body: Bytes::from(format!(r#"{{"n":{n}}}"#)),
            properties: BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id(format!("id-{n}").into())
                .with_timestamp(1_700_000_000)
                .with_headers(headers),
        }
    }

    #[tokio::test]
    async fn messages_come_back_whole_and_in_order() {
        let spool = Spool::open(&temp_path(), 1 << 20, Metrics::new()).unwrap();
        for n in 0..3 {
            spool.append(&message(n)).await.unwrap();
        }

        let spooled = spool.oldest(10).await.unwrap();

        assert_eq!(spool.depth(), 3);
        let keys: Vec<&str> = spooled
            .iter()
            .map(|s| s.message.routing_key.as_str())
            .collect();
        assert_eq!(keys, ["sync.error.E0", "sync.error.E1", "sync.error.E2"]);
        let first = &spooled[0].message;
        assert_eq!(first.body, message(0).body);
        assert_eq!(
            first.properties,
            message(0).properties,
            "properties survive byte for byte"
        );
    }

    #[tokio::test]
    async fn removed_messages_are_gone_and_the_rest_stay_in_order() {
        let spool = Spool::open(&temp_path(), 1 << 20, Metrics::new()).unwrap();
        for n in 0..4 {
            spool.append(&message(n)).await.unwrap();
        }
        let first_two: Vec<i64> = spool
            .oldest(2)
            .await
            .unwrap()
            .iter()
            .map(|s| s.seq)
            .collect();

        spool.remove(first_two).await.unwrap();

        assert_eq!(spool.depth(), 2);
        let left: Vec<String> = spool
            .oldest(10)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.message.routing_key)
            .collect();
        assert_eq!(left, ["sync.error.E2", "sync.error.E3"]);
    }

    #[tokio::test]
    async fn the_spool_survives_reopening() {
        let path = temp_path();
        {
            let spool = Spool::open(&path, 1 << 20, Metrics::new()).unwrap();
            spool.append(&message(7)).await.unwrap();
        }

        let reopened = Spool::open(&path, 1 << 20, Metrics::new()).unwrap();

        assert_eq!(reopened.depth(), 1);
        assert_eq!(
            reopened.oldest(1).await.unwrap()[0].message.routing_key,
            "sync.error.E7"
        );
    }

    #[tokio::test]
    async fn a_full_spool_refuses_and_frees_room_as_it_drains() {
        let one = {
            let m = message(0);
            (m.exchange.len()
                + m.routing_key.len()
                + encode_properties(&m.properties).unwrap().len()
                + m.body.len()) as u64
        };
        let spool = Spool::open(&temp_path(), 2 * one, Metrics::new()).unwrap();
        spool.append(&message(0)).await.unwrap();
        spool.append(&message(1)).await.unwrap();

        let refused = spool.append(&message(2)).await;

        assert!(
            matches!(refused, Err(SpoolError::Full { .. })),
            "{refused:?}"
        );
        assert_eq!(spool.depth(), 2);
        let oldest = spool.oldest(1).await.unwrap()[0].seq;
        spool.remove(vec![oldest]).await.unwrap();
        assert!(spool.has_room());
        spool.append(&message(2)).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn counts_stay_true_while_appends_and_drains_race() {
        // A drain can delete a row before its append has returned.
        let spool = Spool::open(&temp_path(), 1 << 24, Metrics::new()).unwrap();
        let appends: Vec<_> = (0..300)
            .map(|n| {
                let spool = spool.clone();
                tokio::spawn(async move { spool.append(&message(n)).await.unwrap() })
            })
            .collect();
        let drainer = {
            let spool = spool.clone();
            tokio::spawn(async move {
                let mut drained = 0;
                while drained < 300 {
                    let seqs: Vec<i64> = spool
                        .oldest(16)
                        .await
                        .unwrap()
                        .iter()
                        .map(|s| s.seq)
                        .collect();
                    drained += seqs.len();
                    spool.remove(seqs).await.unwrap();
                }
                drained
            })
        };
        for append in appends {
            append.await.unwrap();
        }

        assert_eq!(drainer.await.unwrap(), 300);
        assert_eq!(spool.depth(), 0);
        assert_eq!(spool.inner.bytes.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn waiting_for_entries_returns_at_once_when_not_empty() {
        let spool = Spool::open(&temp_path(), 1 << 20, Metrics::new()).unwrap();
        spool.append(&message(0)).await.unwrap();
        tokio::time::timeout(Duration::from_secs(1), spool.wait_for_entries())
            .await
            .expect("not empty: no wait");
    }
}
