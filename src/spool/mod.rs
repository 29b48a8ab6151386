//! The local spool: accepted webhooks that RabbitMQ could not confirm, kept on
//! disk until it can.
//!
//! It is an SQLite database (WAL, `synchronous=FULL`), so an append has been
//! fsync'd when it returns and survives a crash of the relay or the machine.
//! Appends go through one writer thread that commits every append waiting at
//! that moment in one transaction, so one fsync serves them all (group
//! commit): during an outage, when webhooks pile in, they share the disk's
//! slowest operation instead of queueing for it one by one.
//! Each row is a [`Message`] exactly as it will be published (`store.rs` has
//! the schema). Rows come back out in insertion order; [`drain`] publishes them
//! and deletes each only after RabbitMQ confirmed it.
//!
//! A message that RabbitMQ keeps refusing (`spool.max_refusals` times) is
//! *parked*: moved to a table of its own, still on disk, so it stops holding up
//! the rest. `hookrelay spool list` shows both tables and `hookrelay spool
//! retry` marks parked messages to be sent again ([`listing`]); the relay moves
//! them back to the end of the spool, whether it was running at the time or
//! starts later.

pub mod drain;
pub mod listing;
mod store;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::envelope::Message;
use crate::metrics::Metrics;
use store::Row;

/// A cheap, cloneable handle on the spool.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
    /// To the writer thread; it ends when the last handle is dropped.
    appends: mpsc::Sender<Append>,
}

/// Appends that wait for the writer at most: more wait for room, in order.
const APPENDS_WAITING: usize = 1024;
/// Appends committed together at most: one transaction stays short.
const APPENDS_PER_COMMIT: usize = 256;

/// One append for the writer thread, and where to say it is on disk.
struct Append {
    row: Row,
    body: bytes::Bytes,
    done: oneshot::Sender<Result<(), SpoolError>>,
}

struct Inner {
    db: Mutex<Db>,
    /// Rows in the spool table; changed only while holding `db`, in the same
    /// step as the row, so it never runs behind the drainer.
    entries: AtomicU64,
    /// Rows in the parked table.
    parked: AtomicU64,
    /// Bytes of both tables: parked messages still take room on the disk.
    bytes: AtomicU64,
    max_bytes: u64,
    /// Set when an append was refused for lack of room; cleared when a drain frees some.
    full: AtomicBool,
    /// Woken on every append, so the drainer sleeps while there is nothing to do.
    appended: Notify,
    metrics: Metrics,
}

struct Db {
    connection: Connection,
    /// SQLite's `data_version` when another process last changed the file
    /// (`hookrelay spool retry`), so a check costs one pragma.
    seen_version: Option<i64>,
}

/// A spooled message and its place in line.
#[derive(Debug, Clone)]
pub struct Spooled {
    pub seq: i64,
    pub message: Message,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("the spool is full ({max_bytes} bytes)")]
    Full { max_bytes: u64 },
    #[error("spool storage failed: {0}")]
    Storage(#[from] rusqlite::Error),
    #[error("a spooled message cannot be decoded")]
    Corrupt,
    #[error("cannot encode the message's properties")]
    Encode,
    #[error("the spool was written by a newer hookrelay (schema version {0}); upgrade to read it")]
    NewerSchema(i32),
    #[error("the spool task panicked")]
    Task,
    /// A commit of several appends failed: each of them gets this.
    #[error("spool storage failed: {0}")]
    Commit(String),
}

impl Spool {
    /// Opens (or creates) the spool at `path`, creating its folder, and takes
    /// back the parked messages that `hookrelay spool retry` marked meanwhile.
    pub fn open(path: &Path, max_bytes: u64, metrics: Metrics) -> anyhow::Result<Spool> {
        use anyhow::Context;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create the spool folder {}", parent.display()))?;
        }
        let connection = store::open(path, true)
            .with_context(|| format!("cannot open the spool {}", path.display()))?;
        let inner = Arc::new(Inner {
            db: Mutex::new(Db {
                connection,
                seen_version: None,
            }),
            entries: AtomicU64::new(0),
            parked: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            max_bytes,
            full: AtomicBool::new(false),
            appended: Notify::new(),
            metrics,
        });
        let (appends, waiting) = mpsc::channel(APPENDS_WAITING);
        let writer = inner.clone();
        std::thread::Builder::new()
            .name("spool-writer".to_owned())
            .spawn(move || write_appends(&writer, waiting))
            .context("cannot start the spool's writer thread")?;
        let spool = Spool { inner, appends };
        {
            let mut db = lock(&spool.inner.db);
            let count = |table: &str| -> rusqlite::Result<(u64, u64)> {
                db.connection.query_row(
                    &format!("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM {table}"),
                    [],
                    |row| {
                        Ok((
                            row.get::<_, i64>(0)?.max(0) as u64,
                            row.get::<_, i64>(1)?.max(0) as u64,
                        ))
                    },
                )
            };
            let (entries, spooled_bytes) = count("spool")?;
            let (parked, parked_bytes) = count("parked")?;
            let bytes = spooled_bytes + parked_bytes;
            spool.inner.entries.store(entries, Ordering::SeqCst);
            spool.inner.parked.store(parked, Ordering::SeqCst);
            spool.inner.bytes.store(bytes, Ordering::SeqCst);
            spool.inner.full.store(bytes >= max_bytes, Ordering::SeqCst);
            take_back_retries(&mut db, &spool.inner)?;
        }
        spool.publish_state();
        Ok(spool)
    }

    pub fn is_empty(&self) -> bool {
        self.depth() == 0
    }

    /// How many messages wait in the spool (parked ones not included).
    pub fn depth(&self) -> u64 {
        self.inner.entries.load(Ordering::SeqCst)
    }

    /// How many messages are parked.
    pub fn parked(&self) -> u64 {
        self.inner.parked.load(Ordering::SeqCst)
    }

    /// Whether the spool takes writes: false from a refused append until a
    /// drain frees room.
    pub fn has_room(&self) -> bool {
        !self.inner.full.load(Ordering::SeqCst)
    }

    /// Appends `message`; when this returns `Ok`, it is on disk.
    pub async fn append(&self, message: &Message) -> Result<(), SpoolError> {
        let row = Row::of(message)?;
        let size = row.size;
        // Reserve the room first, so concurrent appends cannot overshoot the bound.
        let reserved = self.inner.bytes.fetch_add(size, Ordering::SeqCst) + size;
        if reserved > self.inner.max_bytes {
            self.inner.bytes.fetch_sub(size, Ordering::SeqCst);
            self.inner.full.store(true, Ordering::SeqCst);
            return Err(SpoolError::Full {
                max_bytes: self.inner.max_bytes,
            });
        }
        let started = Instant::now();
        let (done, committed) = oneshot::channel();
        let append = Append {
            row,
            body: message.body.clone(),
            done,
        };
        let result = match self.appends.send(append).await {
            Ok(()) => committed.await.unwrap_or(Err(SpoolError::Task)),
            Err(_) => Err(SpoolError::Task),
        };
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
            let mut statement = db.connection.prepare_cached(
                "SELECT seq, kind, routing_key, properties, body FROM spool ORDER BY seq LIMIT ?1",
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
                let (seq, kind, routing_key, properties, body) = row?;
                spooled.push(Spooled {
                    seq,
                    message: store::message(&kind, &routing_key, &properties, body)?,
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
                let tx = db.connection.transaction()?;
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

    /// Records that RabbitMQ refused the message at `seq`, and why; returns
    /// how many times it has been refused.
    pub async fn refused(&self, seq: i64, reason: String) -> Result<u32, SpoolError> {
        self.blocking(move |db, _| {
            let refusals = db
                .connection
                .query_row(
                    "UPDATE spool SET refusals = refusals + 1, last_error = ?2 WHERE seq = ?1 RETURNING refusals",
                    params![seq, reason],
                    |row| row.get::<_, i64>(0),
                )
                .optional()?;
            Ok(refusals.unwrap_or(0).clamp(0, u32::MAX as i64) as u32)
        })
        .await
    }

    /// Moves the message at `seq` to the parked table, so the rest can drain.
    pub async fn park(&self, seq: i64) -> Result<(), SpoolError> {
        self.blocking(move |db, inner| {
            let tx = db.connection.transaction()?;
            let moved = tx.execute(
                "INSERT INTO parked (seq, kind, routing_key, properties, body, size, spooled_at, refusals, last_error, parked_at)
                 SELECT seq, kind, routing_key, properties, body, size, spooled_at, refusals, COALESCE(last_error, ''), ?2
                 FROM spool WHERE seq = ?1",
                params![seq, now_millis()],
            )?;
            tx.execute("DELETE FROM spool WHERE seq = ?1", [seq])?;
            tx.commit()?;
            inner.entries.fetch_sub(moved as u64, Ordering::SeqCst);
            inner.parked.fetch_add(moved as u64, Ordering::SeqCst);
            Ok(())
        })
        .await?;
        self.publish_state();
        Ok(())
    }

    /// Moves the parked messages that `hookrelay spool retry` marked back to
    /// the end of the spool; returns how many. Costs one pragma when nothing
    /// else wrote to the file since the last call.
    pub async fn take_back_retries(&self) -> Result<u64, SpoolError> {
        let taken = self.blocking(take_back_retries).await?;
        if taken > 0 {
            self.publish_state();
            self.inner.appended.notify_one();
        }
        Ok(taken)
    }

    fn publish_state(&self) {
        self.inner.metrics.spool_state(
            self.inner.entries.load(Ordering::SeqCst),
            self.inner.parked.load(Ordering::SeqCst),
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
                    .connection
                    .query_row(
                        "SELECT spooled_at FROM spool ORDER BY seq LIMIT 1",
                        [],
                        |row| row.get(0),
                    )
                    .optional()?)
            })
            .await?;
        Ok(spooled_at
            .map(|at| Duration::from_millis(now_millis().saturating_sub(at).max(0) as u64)))
    }

    /// Returns at once while the spool holds messages, else at the next
    /// append or after `idle`, whichever comes first.
    pub async fn wait_for_entries(&self, idle: Duration) {
        let appended = self.inner.appended.notified();
        if self.is_empty() {
            let _ = tokio::time::timeout(idle, appended).await;
        }
    }

    /// Runs `work` on the blocking pool: SQLite calls block, fsync above all.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Db, &Inner) -> Result<T, SpoolError> + Send + 'static,
    ) -> Result<T, SpoolError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || work(&mut lock(&inner.db), &inner))
            .await
            .map_err(|_| SpoolError::Task)?
    }
}

/// The writer thread: takes the appends waiting at that moment (at least one,
/// at most [`APPENDS_PER_COMMIT`]), commits them in one transaction, one
/// fsync, and only then answers each. While it commits, the next ones queue.
fn write_appends(inner: &Inner, mut waiting: mpsc::Receiver<Append>) {
    while let Some(first) = waiting.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < APPENDS_PER_COMMIT {
            match waiting.try_recv() {
                Ok(append) => batch.push(append),
                Err(_) => break,
            }
        }
        let result = {
            let mut db = lock(&inner.db);
            let result = commit(&mut db, &batch);
            // Counted under the lock, before a drainer can delete these rows.
            if result.is_ok() {
                inner
                    .entries
                    .fetch_add(batch.len() as u64, Ordering::SeqCst);
            }
            result
        };
        if result.is_ok() {
            inner.metrics.spool_committed();
        }
        let failed = result.err().map(|err| err.to_string());
        for append in batch {
            let answer = failed
                .clone()
                .map_or(Ok(()), |reason| Err(SpoolError::Commit(reason)));
            // The appender may be gone (its request was cancelled): the row
            // stays, and is published like any other.
            let _ = append.done.send(answer);
        }
    }
}

fn commit(db: &mut Db, batch: &[Append]) -> rusqlite::Result<()> {
    let tx = db.connection.transaction()?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO spool (kind, routing_key, properties, body, size, spooled_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?;
        let now = now_millis();
        for Append { row, body, .. } in batch {
            insert.execute(params![
                row.kind,
                row.routing_key,
                row.properties,
                &body[..],
                row.size as i64,
                now
            ])?;
        }
    }
    tx.commit()
}

/// Moves marked parked rows back into the spool, if another process wrote.
fn take_back_retries(db: &mut Db, inner: &Inner) -> Result<u64, SpoolError> {
    let version: i64 = db
        .connection
        .pragma_query_value(None, "data_version", |row| row.get(0))?;
    if db.seen_version == Some(version) {
        return Ok(0);
    }
    let tx = db.connection.transaction()?;
    // New sequence numbers: they go to the back of the line, in parked order.
    let taken = tx.execute(
        "INSERT INTO spool (kind, routing_key, properties, body, size, spooled_at)
         SELECT kind, routing_key, properties, body, size, spooled_at
         FROM parked WHERE retry_requested = 1 ORDER BY seq",
        [],
    )? as u64;
    tx.execute("DELETE FROM parked WHERE retry_requested = 1", [])?;
    tx.commit()?;
    db.seen_version = Some(version);
    inner.entries.fetch_add(taken, Ordering::SeqCst);
    inner.parked.fetch_sub(taken, Ordering::SeqCst);
    if taken > 0 {
        tracing::info!(
            count = taken,
            "parked webhooks are back in the spool, as `hookrelay spool retry` asked"
        );
    }
    Ok(taken)
}

/// The lock, even if a thread panicked while holding it: SQLite's own
/// transactions keep the data consistent.
fn lock(db: &Mutex<Db>) -> MutexGuard<'_, Db> {
    db.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use bytes::Bytes;
    use lapin::BasicProperties;
    use lapin::types::{AMQPValue, FieldTable};

    use super::*;
    use crate::envelope::Kind;

    fn key(message: &Message) -> String {
        match &message.kind {
            Kind::Event(key) => key.as_str().to_owned(),
            Kind::Quarantine => "quarantine".to_owned(),
        }
    }

    /// The routing keys of what the spool holds, oldest first.
    async fn keys(spool: &Spool) -> Vec<String> {
        let spooled = spool.oldest(10).await.unwrap();
        spooled.iter().map(|s| key(&s.message)).collect()
    }

    fn temp_path() -> PathBuf {
        std::env::temp_dir()
            .join(format!("hookrelay-spool-test-{}", uuid::Uuid::now_v7()))
            .join("spool.sqlite")
    }

    fn message(n: u32) -> Message {
        let mut headers = FieldTable::default();
        headers.insert("hook".into(), AMQPValue::LongString("SyncError".into()));
        headers.insert("x-error-known".into(), AMQPValue::Boolean(false));
        Message {
            kind: Kind::Event(format!("sync.error.E{n}").parse().unwrap()),
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
        assert_eq!(
            keys(&spool).await,
            ["sync.error.E0", "sync.error.E1", "sync.error.E2"]
        );
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
        let left = keys(&spool).await;
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
            key(&reopened.oldest(1).await.unwrap()[0].message),
            "sync.error.E7"
        );
    }

    #[tokio::test]
    async fn a_full_spool_refuses_and_frees_room_as_it_drains() {
        let one = Row::of(&message(0)).unwrap().size;
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

    fn commits(metrics: &Metrics) -> u64 {
        let text = metrics.encode();
        let line = text
            .lines()
            .find(|line| line.starts_with("hookrelay_spool_commits_total "))
            .expect("the commits counter is exported");
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    #[tokio::test]
    async fn an_append_alone_is_committed_alone_before_it_returns() {
        let metrics = Metrics::new();
        let spool = Spool::open(&temp_path(), 1 << 20, metrics.clone()).unwrap();

        for n in 0..3 {
            spool.append(&message(n)).await.unwrap();
            assert_eq!(commits(&metrics), u64::from(n) + 1);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn appends_that_wait_together_share_one_commit() {
        let metrics = Metrics::new();
        let spool = Spool::open(&temp_path(), 1 << 24, metrics.clone()).unwrap();
        // The database is busy (the drainer holds it, say) while 64 webhooks
        // arrive: they all wait for the same next commit.
        let (held, holding) = oneshot::channel();
        let busy = {
            let inner = spool.inner.clone();
            std::thread::spawn(move || {
                let _db = lock(&inner.db);
                held.send(()).unwrap();
                std::thread::sleep(Duration::from_millis(300));
            })
        };
        holding.await.unwrap();
        let appends: Vec<_> = (0..64)
            .map(|n| {
                let spool = spool.clone();
                tokio::spawn(async move { spool.append(&message(n)).await })
            })
            .collect();
        for append in appends {
            append.await.unwrap().unwrap();
        }
        busy.join().unwrap();

        assert_eq!(spool.depth(), 64);
        assert_eq!(spool.oldest(100).await.unwrap().len(), 64);
        // The writer may have taken the first arrivals before it met the
        // lock: those are one commit, everything after them the next.
        assert!(
            commits(&metrics) <= 2,
            "64 appends took {} commits",
            commits(&metrics)
        );
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
        let started = Instant::now();
        spool.wait_for_entries(Duration::from_secs(5)).await;
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "not empty: no wait"
        );
    }

    #[tokio::test]
    async fn a_refused_message_is_parked_and_the_rest_keep_their_order() {
        let spool = Spool::open(&temp_path(), 1 << 20, Metrics::new()).unwrap();
        for n in 0..3 {
            spool.append(&message(n)).await.unwrap();
        }
        let head = spool.oldest(1).await.unwrap()[0].seq;

        assert_eq!(spool.refused(head, "nack".to_owned()).await.unwrap(), 1);
        assert_eq!(
            spool.refused(head, "nack again".to_owned()).await.unwrap(),
            2
        );
        spool.park(head).await.unwrap();

        assert_eq!((spool.depth(), spool.parked()), (2, 1));
        let left = keys(&spool).await;
        assert_eq!(left, ["sync.error.E1", "sync.error.E2"]);
    }

    #[tokio::test]
    async fn a_retry_asked_by_another_process_puts_parked_messages_at_the_back() {
        let path = temp_path();
        let spool = Spool::open(&path, 1 << 20, Metrics::new()).unwrap();
        for n in 0..2 {
            spool.append(&message(n)).await.unwrap();
        }
        let head = spool.oldest(1).await.unwrap()[0].seq;
        spool.park(head).await.unwrap();
        assert_eq!(
            spool.take_back_retries().await.unwrap(),
            0,
            "nothing asked yet"
        );

        // What `hookrelay spool retry --all` does, from its own connection.
        assert_eq!(listing::request_retry(&path, &[]).unwrap(), 1);
        let taken = spool.take_back_retries().await.unwrap();

        assert_eq!(taken, 1);
        assert_eq!((spool.depth(), spool.parked()), (2, 0));
        let order = keys(&spool).await;
        assert_eq!(order, ["sync.error.E1", "sync.error.E0"]);
    }

    #[tokio::test]
    async fn a_retry_asked_while_the_relay_was_stopped_is_taken_at_startup() {
        let path = temp_path();
        {
            let spool = Spool::open(&path, 1 << 20, Metrics::new()).unwrap();
            spool.append(&message(0)).await.unwrap();
            let head = spool.oldest(1).await.unwrap()[0].seq;
            spool.park(head).await.unwrap();
        }
        listing::request_retry(&path, &[]).unwrap();

        let reopened = Spool::open(&path, 1 << 20, Metrics::new()).unwrap();

        assert_eq!((reopened.depth(), reopened.parked()), (1, 0));
    }
}
