//! The local spool: accepted webhooks that RabbitMQ could not confirm, kept on
//! disk until it can.
//!
//! It is an SQLite database (WAL, `synchronous=FULL`), so an append has been
//! fsync'd when it returns and survives a crash of the relay or the machine.
//! Appends go through one writer thread that commits every append waiting at
//! that moment in one transaction (`writer`: group commit). Each row is a
//! [`Message`] exactly as it will be published (`store.rs` has the schema).
//!
//! A row is in one of two lanes, and `drain` publishes both:
//!
//! - the **backlog**: what RabbitMQ could not take at all (down, blocked, no
//!   confirm). It is published in arrival order, and while it holds anything
//!   new webhooks queue behind it instead of overtaking it.
//! - the **refused lane** (`refused`): what RabbitMQ refused while it took
//!   everything else (a full queue bound to the routing key pushes back). Each
//!   is retried on its own schedule, beside the flow: it holds up nothing.
//!
//! A webhook refused `spool.max_refusals` times in all, or a row this version
//! cannot decode, is *parked* (`parking`): moved to a table of its own,
//! still on disk. One relay holds a spool file at a time (`lock`).
//! `hookrelay spool list` shows every table and `hookrelay spool retry` marks
//! parked rows to be sent again ([`listing`]); the relay moves them back to the
//! end of the backlog, whether it was running at the time or starts later.

pub(crate) mod drain;
pub mod listing;
mod parking;
mod refused;
mod store;
mod writer;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{Notify, mpsc, oneshot};
use tracing::warn;

use crate::config::{QueueSettings, SpoolSettings};
use crate::metrics::Metrics;
use crate::unpoisoned::Locked;
use crate::wire::envelope::Message;
use parking::{park, take_back_retries};
use refused::{Lane, LaneExit, lane_key};
pub use refused::{QUARANTINE, RefusedKey, RetryPolicy};
use store::Row;
use writer::{APPENDS_WAITING, Append, Reservation};

/// A cheap, cloneable handle on the spool.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
    /// To the writer thread; it ends when the last handle is dropped.
    appends: mpsc::Sender<Append>,
    /// One relay per spool file: held while any handle lives (not by the
    /// writer thread, which ends a moment after the last handle).
    _lock: Arc<std::fs::File>,
}

struct Inner {
    db: Mutex<Db>,
    /// Rows of each lane and of the parked table; changed only while holding
    /// `db`, in the same step as the rows, so they never run behind the drainer.
    backlog: AtomicU64,
    refused: AtomicU64,
    parked: AtomicU64,
    /// Bytes of every table: parked messages still take room on the disk.
    bytes: AtomicU64,
    max_bytes: u64,
    /// Set when an append was refused for lack of room; cleared when a drain frees some.
    full: AtomicBool,
    /// Woken on every append, so the drainer sleeps while there is nothing to do.
    appended: Notify,
    lane: Lane,
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

/// What became of a message RabbitMQ refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// In the refused lane, tried again after this long.
    RetryIn(Duration),
    /// Refused `spool.max_refusals` times: parked.
    Parked { refusals: u32 },
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("the spool is full ({max_bytes} bytes)")]
    Full { max_bytes: u64 },
    #[error("spool storage failed: {0}")]
    Storage(#[from] rusqlite::Error),
    #[error("a spooled message cannot be decoded: {0}")]
    Corrupt(String),
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
    /// Opens (or creates) the spool at `settings.path`, creating its folder,
    /// and takes back the parked messages that `hookrelay spool retry` marked
    /// meanwhile. `queues` are the configured consumer queues, named in the
    /// log when a routing key bound to them is refused.
    pub fn open(
        settings: &SpoolSettings,
        queues: &[QueueSettings],
        metrics: Metrics,
    ) -> anyhow::Result<Spool> {
        use anyhow::Context;
        let path = &settings.path;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create the spool folder {}", parent.display()))?;
        }
        let held = crate::file_lock::hold(
            path,
            "the spool",
            "two relays on one spool would publish everything twice. Give each relay its own \
             spool.path",
        )?;
        let connection = store::open(path, true)
            .with_context(|| format!("cannot open the spool {}", path.display()))?;
        let policy = RetryPolicy {
            max_refusals: settings.max_refusals,
            first_delay: settings.refused_retry_delay,
        };
        let inner = Arc::new(Inner {
            db: Mutex::new(Db {
                connection,
                seen_version: None,
            }),
            backlog: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            parked: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            max_bytes: settings.max_bytes,
            full: AtomicBool::new(false),
            appended: Notify::new(),
            lane: Lane::new(policy, queues),
            metrics,
        });
        let (appends, waiting) = mpsc::channel(APPENDS_WAITING);
        let writer = inner.clone();
        std::thread::Builder::new()
            .name("spool-writer".to_owned())
            .spawn(move || writer::run(&writer, waiting))
            .context("cannot start the spool's writer thread")?;
        let spool = Spool {
            inner,
            appends,
            _lock: Arc::new(held),
        };
        {
            let mut db = lock(&spool.inner.db);
            spool.inner.restore_counts(&db.connection)?;
            take_back_retries(&mut db, &spool.inner)?;
        }
        spool.publish_state();
        Ok(spool)
    }

    /// How many messages wait in the spool, in either lane (parked ones not included).
    pub fn depth(&self) -> u64 {
        self.backlog() + self.refused()
    }

    pub fn is_empty(&self) -> bool {
        self.depth() == 0
    }

    /// How many wait in the backlog: while any does, new webhooks queue behind it.
    pub fn backlog(&self) -> u64 {
        self.inner.backlog.load(Ordering::SeqCst)
    }

    pub fn has_backlog(&self) -> bool {
        self.backlog() > 0
    }

    /// How many RabbitMQ refused and wait for a retry beside the flow.
    pub fn refused(&self) -> u64 {
        self.inner.refused.load(Ordering::SeqCst)
    }

    /// How many messages are parked.
    pub fn parked(&self) -> u64 {
        self.inner.parked.load(Ordering::SeqCst)
    }

    /// Per routing key, the refused webhooks waiting for a retry.
    pub fn refused_keys(&self) -> Vec<RefusedKey> {
        self.inner.lane.view()
    }

    /// When a refused message is tried again, and when it is parked.
    pub fn retry_policy(&self) -> RetryPolicy {
        self.inner.lane.policy
    }

    /// Whether the spool takes writes: false from a refused append until a
    /// drain frees room.
    pub fn has_room(&self) -> bool {
        !self.inner.full.load(Ordering::SeqCst)
    }

    /// Appends `message` to the backlog; when this returns `Ok`, it is on disk.
    pub async fn append(&self, message: &Message) -> Result<(), SpoolError> {
        self.write(message, None).await
    }

    /// Appends a message RabbitMQ refused (for `reason`) to the refused lane,
    /// to be tried again beside the flow; when this returns `Ok`, it is on disk.
    pub async fn append_refused(
        &self,
        message: &Message,
        reason: String,
    ) -> Result<(), SpoolError> {
        let retry_in = self.inner.lane.policy.next_attempt(1).unwrap_or_default();
        let refused = writer::Refused {
            reason,
            retry_at: now_millis().saturating_add(retry_in.as_millis() as i64),
        };
        self.write(message, Some(refused)).await
    }

    async fn write(
        &self,
        message: &Message,
        refused: Option<writer::Refused>,
    ) -> Result<(), SpoolError> {
        let row = Row::of(message)?;
        let reservation = Reservation::take(&self.inner, row.size)?;
        let started = Instant::now();
        let (done, committed) = oneshot::channel();
        let append = Append {
            row,
            body: message.body.clone(),
            refused,
            reservation,
            done,
        };
        // If this future is dropped before the writer has the append (its
        // request was cancelled), the reservation inside it is dropped too
        // and gives the room back; once the writer has it, the writer decides.
        let result = match self.appends.send(append).await {
            Ok(()) => committed.await.unwrap_or(Err(SpoolError::Task)),
            Err(_) => Err(SpoolError::Task),
        };
        self.inner.metrics.observe_spool_write(started.elapsed());
        self.publish_state();
        self.inner.appended.notify_one();
        result
    }

    /// The oldest `limit` messages of the backlog, oldest first. A row that
    /// cannot be decoded (a later version's, a damaged one) is parked with its
    /// reason instead of stopping the rest.
    pub async fn oldest(&self, limit: usize) -> Result<Vec<Spooled>, SpoolError> {
        self.read(
            "SELECT seq, kind, routing_key, properties, body FROM spool
             WHERE retry_at IS NULL ORDER BY seq LIMIT ?1",
            limit,
        )
        .await
    }

    /// Refused messages whose retry is due, oldest first. Free while none
    /// waits: the drainer asks after every batch of the backlog, and a query
    /// would wait for the writer's fsync'd commit to release the file.
    pub async fn due(&self, limit: usize) -> Result<Vec<Spooled>, SpoolError> {
        if self.refused() == 0 {
            return Ok(Vec::new());
        }
        self.read(
            "SELECT seq, kind, routing_key, properties, body FROM spool
             WHERE retry_at IS NOT NULL AND retry_at <= ?2 ORDER BY seq LIMIT ?1",
            limit,
        )
        .await
    }

    async fn read(&self, query: &'static str, limit: usize) -> Result<Vec<Spooled>, SpoolError> {
        let (spooled, parked) = self
            .blocking(move |db, inner| {
                let rows: Vec<(i64, Result<Message, SpoolError>)> = {
                    let mut statement = db.connection.prepare_cached(query)?;
                    let due_by = now_millis();
                    let params = params![i64::try_from(limit).unwrap_or(i64::MAX), due_by];
                    let count = statement.parameter_count();
                    let rows = statement.query_map(&params[..count], |row| {
                        let seq = row.get(0)?;
                        let message = store::message(
                            &row.get::<_, String>(1)?,
                            &row.get::<_, String>(2)?,
                            &row.get::<_, Vec<u8>>(3)?,
                            row.get(4)?,
                        );
                        Ok((seq, message))
                    })?;
                    rows.collect::<rusqlite::Result<_>>()?
                };
                let (mut spooled, mut parked) = (Vec::with_capacity(rows.len()), Vec::new());
                for (seq, message) in rows {
                    match message {
                        Ok(message) => spooled.push(Spooled { seq, message }),
                        Err(err) => {
                            park(db, inner, seq, &err.to_string())?;
                            parked.push((seq, err));
                        }
                    }
                }
                Ok((spooled, parked))
            })
            .await?;
        for (seq, err) in parked {
            warn!(
                seq,
                error = %err,
                "a spooled webhook cannot be decoded by this version: parked (kept on disk, out \
                 of the way) so the rest drain; `hookrelay spool list` shows it"
            );
        }
        if !spooled.is_empty() || self.parked() > 0 {
            self.publish_state();
        }
        Ok(spooled)
    }

    /// How long until the first refused message is due; `None` when none waits.
    pub async fn until_due(&self) -> Result<Option<Duration>, SpoolError> {
        if self.refused() == 0 {
            return Ok(None);
        }
        let at: Option<i64> = self
            .blocking(|db, _| {
                Ok(db.connection.query_row(
                    "SELECT MIN(retry_at) FROM spool WHERE retry_at IS NOT NULL",
                    [],
                    |row| row.get(0),
                )?)
            })
            .await?;
        Ok(at.map(|at| {
            Duration::from_millis(at.saturating_sub(now_millis()).max(0).cast_unsigned())
        }))
    }

    /// Deletes delivered messages, in one transaction. A refused message that
    /// got through means its queue has room again: the other refused messages
    /// of its routing key are made due at once.
    pub async fn remove(&self, seqs: Vec<i64>) -> Result<(), SpoolError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let removed = self
            .blocking(move |db, inner| {
                let tx = db.connection.transaction()?;
                let (mut backlog, mut lane, mut freed) = (0u64, Vec::new(), 0u64);
                {
                    let mut delete = tx.prepare_cached(
                        "DELETE FROM spool WHERE seq = ?1
                         RETURNING size, retry_at IS NOT NULL, kind, routing_key",
                    )?;
                    for seq in seqs {
                        if let Some(row) = delete.query([seq])?.next()? {
                            freed += row.get::<_, i64>(0)?.max(0).cast_unsigned();
                            if row.get::<_, bool>(1)? {
                                lane.push((row.get::<_, String>(2)?, row.get::<_, String>(3)?));
                            } else {
                                backlog += 1;
                            }
                        }
                    }
                    let mut retry_now = tx.prepare_cached(
                        "UPDATE spool SET retry_at = ?3
                         WHERE retry_at > ?3 AND kind = ?1 AND routing_key = ?2",
                    )?;
                    let now = now_millis();
                    for (kind, routing_key) in &lane {
                        retry_now.execute(params![kind, routing_key, now])?;
                    }
                }
                tx.commit()?;
                inner.backlog.fetch_sub(backlog, Ordering::SeqCst);
                inner.refused.fetch_sub(lane.len() as u64, Ordering::SeqCst);
                inner.bytes.fetch_sub(freed, Ordering::SeqCst);
                for (kind, routing_key) in &lane {
                    inner
                        .lane
                        .left(lane_key(kind, routing_key), LaneExit::Delivered);
                }
                Ok(backlog + lane.len() as u64)
            })
            .await?;
        self.inner.full.store(false, Ordering::SeqCst);
        self.inner.metrics.spool_drained(removed);
        self.publish_state();
        Ok(())
    }

    pub(super) fn publish_state(&self) {
        self.inner.metrics.spool_state(
            self.depth(),
            self.refused(),
            self.parked(),
            self.inner.bytes.load(Ordering::SeqCst),
        );
    }

    /// How long the oldest message waiting (in either lane) has waited.
    pub async fn oldest_age(&self) -> Result<Option<Duration>, SpoolError> {
        if self.is_empty() {
            return Ok(None);
        }
        let spooled_at: Option<i64> = self
            .blocking(|db, _| {
                Ok(db
                    .connection
                    .query_row("SELECT MIN(spooled_at) FROM spool", [], |row| row.get(0))
                    .optional()?
                    .flatten())
            })
            .await?;
        Ok(spooled_at.map(|at| {
            Duration::from_millis(now_millis().saturating_sub(at).max(0).cast_unsigned())
        }))
    }

    /// Returns at once while the backlog holds messages, else at the next
    /// append, when the first refused message is due, or after `idle`,
    /// whichever comes first.
    pub async fn wait_for_work(&self, idle: Duration) {
        let appended = self.inner.appended.notified();
        if self.has_backlog() {
            return;
        }
        let due = self.until_due().await.ok().flatten();
        let wait = due.map_or(idle, |due| due.min(idle));
        if !wait.is_zero() {
            let _ = tokio::time::timeout(wait, appended).await;
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

impl Inner {
    /// The counts and the refused lane's bookkeeping, from the file.
    fn restore_counts(&self, db: &Connection) -> rusqlite::Result<()> {
        let count = |query: &str| -> rusqlite::Result<(u64, u64)> {
            db.query_row(query, [], |row| {
                Ok((
                    row.get::<_, i64>(0)?.max(0).cast_unsigned(),
                    row.get::<_, i64>(1)?.max(0).cast_unsigned(),
                ))
            })
        };
        let (backlog, backlog_bytes) =
            count("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM spool WHERE retry_at IS NULL")?;
        let (refused, refused_bytes) =
            count("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM spool WHERE retry_at IS NOT NULL")?;
        let (parked, parked_bytes) = count("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM parked")?;
        let bytes = backlog_bytes + refused_bytes + parked_bytes;
        self.backlog.store(backlog, Ordering::SeqCst);
        self.refused.store(refused, Ordering::SeqCst);
        self.parked.store(parked, Ordering::SeqCst);
        self.bytes.store(bytes, Ordering::SeqCst);
        self.full.store(bytes >= self.max_bytes, Ordering::SeqCst);
        let mut keys = db.prepare(
            "SELECT kind, routing_key, COUNT(*), MIN(spooled_at), MAX(COALESCE(last_error, ''))
             FROM spool WHERE retry_at IS NOT NULL GROUP BY kind, routing_key",
        )?;
        let rows = keys.query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, i64>(2)?,
                row.get::<_, i64>(3)?,
                row.get::<_, String>(4)?,
            ))
        })?;
        for row in rows {
            let (kind, routing_key, waiting, since, reason) = row?;
            let since = UNIX_EPOCH + Duration::from_millis(since.max(0).cast_unsigned());
            self.lane.restore(
                lane_key(&kind, &routing_key),
                waiting.max(0).cast_unsigned(),
                since,
                reason,
            );
        }
        Ok(())
    }
}

/// The lock, even if a thread panicked while holding it: SQLite's own
/// transactions keep the data consistent.
fn lock(db: &Mutex<Db>) -> MutexGuard<'_, Db> {
    db.locked()
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests;
