//! The local spool: accepted webhooks that RabbitMQ could not confirm, kept on
//! disk until it can.
//!
//! It is an SQLite database (WAL, `synchronous=FULL`), so an append has been
//! fsync'd when it returns and survives a crash of the relay or the machine.
//! Appends go through one writer thread that commits every append waiting at
//! that moment in one transaction ([`writer`]: group commit). Each row is a
//! [`Message`] exactly as it will be published (`store.rs` has the schema).
//!
//! A row is in one of two lanes, and [`drain`] publishes both:
//!
//! - the **backlog**: what RabbitMQ could not take at all (down, blocked, no
//!   confirm). It is published in arrival order, and while it holds anything
//!   new webhooks queue behind it instead of overtaking it.
//! - the **refused lane** ([`refused`]): what RabbitMQ refused while it took
//!   everything else (a full queue bound to the routing key pushes back). Each
//!   is retried on its own schedule, beside the flow: it holds up nothing.
//!
//! A webhook refused `spool.max_refusals` times in all, or a row this version
//! cannot decode, is *parked*: moved to a table of its own, still on disk.
//! `hookrelay spool list` shows every table and `hookrelay spool retry` marks
//! parked rows to be sent again ([`listing`]); the relay moves them back to the
//! end of the backlog, whether it was running at the time or starts later.

pub mod drain;
pub mod listing;
mod refused;
mod store;
mod writer;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{Notify, mpsc, oneshot};
use tracing::warn;

use crate::config::{QueueSettings, SpoolSettings};
use crate::metrics::Metrics;
use crate::wire::envelope::Message;
use refused::{Lane, Left};
pub use refused::{QUARANTINE, RefusedKey, RetryPolicy};
use store::Row;
use writer::{APPENDS_WAITING, Append};

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
        let held = lock_spool(path)?;
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
                    let params = params![limit as i64, due_by];
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
        Ok(at.map(|at| Duration::from_millis(at.saturating_sub(now_millis()).max(0) as u64)))
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
                            freed += row.get::<_, i64>(0)?.max(0) as u64;
                            if row.get::<_, bool>(1)? {
                                lane.push((row.get::<_, String>(2)?, row.get::<_, String>(3)?));
                            } else {
                                backlog += 1;
                            }
                        }
                    }
                    let mut hurry = tx.prepare_cached(
                        "UPDATE spool SET retry_at = ?3
                         WHERE retry_at > ?3 AND kind = ?1 AND routing_key = ?2",
                    )?;
                    let now = now_millis();
                    for (kind, routing_key) in &lane {
                        hurry.execute(params![kind, routing_key, now])?;
                    }
                }
                tx.commit()?;
                inner.backlog.fetch_sub(backlog, Ordering::SeqCst);
                inner.refused.fetch_sub(lane.len() as u64, Ordering::SeqCst);
                inner.bytes.fetch_sub(freed, Ordering::SeqCst);
                for (kind, routing_key) in &lane {
                    inner
                        .lane
                        .left(lane_key(kind, routing_key), Left::Delivered);
                }
                Ok(backlog + lane.len() as u64)
            })
            .await?;
        self.inner.full.store(false, Ordering::SeqCst);
        self.inner.metrics.spool_drained(removed);
        self.publish_state();
        Ok(())
    }

    /// Records that RabbitMQ refused the message at `seq` (in either lane),
    /// and why: it is retried beside the flow, or parked once it has been
    /// refused `spool.max_refusals` times.
    pub async fn was_refused(&self, seq: i64, reason: String) -> Result<Refusal, SpoolError> {
        let refusal = self
            .blocking(move |db, inner| {
                let found = db
                    .connection
                    .query_row(
                        "SELECT refusals, retry_at IS NOT NULL, kind, routing_key FROM spool WHERE seq = ?1",
                        [seq],
                        |row| {
                            Ok((
                                row.get::<_, i64>(0)?.clamp(0, u32::MAX as i64) as u32,
                                row.get::<_, bool>(1)?,
                                row.get::<_, String>(2)?,
                                row.get::<_, String>(3)?,
                            ))
                        },
                    )
                    .optional()?;
                let Some((before, in_lane, kind, routing_key)) = found else {
                    return Ok(Refusal::Parked { refusals: 0 });
                };
                let refusals = before.saturating_add(1);
                let key = lane_key(&kind, &routing_key);
                if !in_lane {
                    // From the backlog into the lane.
                    inner.backlog.fetch_sub(1, Ordering::SeqCst);
                    inner.refused.fetch_add(1, Ordering::SeqCst);
                    inner.lane.entered(key, &reason);
                } else {
                    inner.lane.refused_again(key, &reason);
                }
                match inner.lane.policy.next_attempt(refusals) {
                    Some(retry_in) => {
                        db.connection.execute(
                            "UPDATE spool SET refusals = ?2, last_error = ?3, retry_at = ?4 WHERE seq = ?1",
                            params![
                                seq,
                                refusals,
                                reason,
                                now_millis().saturating_add(retry_in.as_millis() as i64)
                            ],
                        )?;
                        Ok(Refusal::RetryIn(retry_in))
                    }
                    None => {
                        db.connection.execute(
                            "UPDATE spool SET refusals = ?2 WHERE seq = ?1",
                            params![seq, refusals],
                        )?;
                        park(db, inner, seq, &reason)?;
                        Ok(Refusal::Parked { refusals })
                    }
                }
            })
            .await?;
        self.publish_state();
        Ok(refusal)
    }

    /// Moves the parked messages that `hookrelay spool retry` marked back to
    /// the end of the backlog; returns how many. Costs one pragma when nothing
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
        Ok(spooled_at
            .map(|at| Duration::from_millis(now_millis().saturating_sub(at).max(0) as u64)))
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
                    row.get::<_, i64>(0)?.max(0) as u64,
                    row.get::<_, i64>(1)?.max(0) as u64,
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
            let since = UNIX_EPOCH + Duration::from_millis(since.max(0) as u64);
            self.lane.restore(
                lane_key(&kind, &routing_key),
                waiting.max(0) as u64,
                since,
                reason,
            );
        }
        Ok(())
    }
}

/// Locks `<path>.lock` for the life of the process, and writes who holds it
/// there. Two relays draining one spool would publish everything twice, and
/// disagree about what is in it, so a second one refuses to start, naming
/// the holder. The lock is the kernel's (`flock`): it goes with the process,
/// however it ends. `hookrelay spool list` and `spool retry` do not take it:
/// they only read, or mark rows for the relay to take back.
fn lock_spool(path: &Path) -> anyhow::Result<std::fs::File> {
    use anyhow::Context;
    use std::io::{Read, Seek, Write};
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let lock_path = std::path::PathBuf::from(lock_path);
    let mut file = std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .with_context(|| format!("cannot open the spool's lock file {}", lock_path.display()))?;
    if let Err(err) = file.try_lock() {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        return Err(match err {
            std::fs::TryLockError::WouldBlock => anyhow::anyhow!(
                "the spool {} is in use by another relay ({}): two relays on one spool would \
                 publish everything twice. Give each relay its own spool.path",
                path.display(),
                holder.trim()
            ),
            std::fs::TryLockError::Error(err) => anyhow::Error::new(err).context(format!(
                "cannot lock the spool's lock file {}",
                lock_path.display()
            )),
        });
    }
    let host = gethostname::gethostname();
    let since = humantime::format_rfc3339_seconds(SystemTime::now());
    file.set_len(0)?;
    file.rewind()?;
    writeln!(
        file,
        "pid {} on {} since {since}",
        std::process::id(),
        host.to_string_lossy()
    )?;
    Ok(file)
}

/// Room taken in the spool's byte count for one append. It travels with the
/// append to the writer: given back when dropped, unless the writer committed
/// the row (then the row holds the room until it is drained).
struct Reservation {
    inner: Arc<Inner>,
    size: u64,
    kept: bool,
}

impl Reservation {
    /// Reserves first, so concurrent appends cannot overshoot the bound.
    fn take(inner: &Arc<Inner>, size: u64) -> Result<Reservation, SpoolError> {
        let reserved = inner.bytes.fetch_add(size, Ordering::SeqCst) + size;
        let reservation = Reservation {
            inner: inner.clone(),
            size,
            kept: false,
        };
        if reserved > inner.max_bytes {
            inner.full.store(true, Ordering::SeqCst);
            return Err(SpoolError::Full {
                max_bytes: inner.max_bytes,
            });
        }
        Ok(reservation)
    }

    fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.kept {
            self.inner.bytes.fetch_sub(self.size, Ordering::SeqCst);
        }
    }
}

/// Moves the row at `seq` to the parked table with `reason`, in the caller's
/// lock. Parked rows keep their room: they are still on disk.
fn park(db: &mut Db, inner: &Inner, seq: i64, reason: &str) -> Result<(), SpoolError> {
    let tx = db.connection.transaction()?;
    let lane: Option<(bool, String, String)> = tx
        .query_row(
            "SELECT retry_at IS NOT NULL, kind, routing_key FROM spool WHERE seq = ?1",
            [seq],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .optional()?;
    let Some((in_lane, kind, routing_key)) = lane else {
        return Ok(());
    };
    tx.execute(
        "INSERT INTO parked (seq, kind, routing_key, properties, body, size, spooled_at, refusals, last_error, parked_at)
         SELECT seq, kind, routing_key, properties, body, size, spooled_at, refusals, ?2, ?3
         FROM spool WHERE seq = ?1",
        params![seq, reason, now_millis()],
    )?;
    tx.execute("DELETE FROM spool WHERE seq = ?1", [seq])?;
    tx.commit()?;
    if in_lane {
        inner.refused.fetch_sub(1, Ordering::SeqCst);
        inner.lane.left(lane_key(&kind, &routing_key), Left::Parked);
    } else {
        inner.backlog.fetch_sub(1, Ordering::SeqCst);
    }
    inner.parked.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

/// The lane's name for a row's routing key.
fn lane_key<'a>(kind: &str, routing_key: &'a str) -> &'a str {
    if kind == "quarantine" {
        QUARANTINE
    } else {
        routing_key
    }
}

/// Moves marked parked rows back into the backlog, if another process wrote.
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
    inner.backlog.fetch_add(taken, Ordering::SeqCst);
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
    use std::path::{Path, PathBuf};

    use bytes::Bytes;
    use lapin::BasicProperties;
    use lapin::types::{AMQPValue, FieldTable};

    use super::*;
    use crate::wire::envelope::Kind;

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

    /// A spool at `path` that parks after three refusals.
    fn open_at(path: &Path, max_bytes: u64, metrics: Metrics) -> Spool {
        let settings = SpoolSettings {
            enabled: true,
            path: path.to_owned(),
            max_bytes,
            max_refusals: 3,
            refused_retry_delay: Duration::from_millis(100),
        };
        Spool::open(&settings, &[], metrics).unwrap()
    }

    /// Parks the row at `seq`, as the drainer does after too many refusals.
    async fn park_now(spool: &Spool, seq: i64) {
        spool
            .blocking(move |db, inner| park(db, inner, seq, "nack"))
            .await
            .unwrap();
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
    async fn a_second_spool_on_the_same_file_is_refused_naming_the_holder() {
        let path = temp_path();
        let first = open_at(&path, 1 << 20, Metrics::new());
        let settings = SpoolSettings {
            enabled: true,
            path: path.clone(),
            max_bytes: 1 << 20,
            max_refusals: 3,
            refused_retry_delay: Duration::from_secs(1),
        };

        let second = Spool::open(&settings, &[], Metrics::new());

        let err = format!("{:#}", second.err().expect("refused"));
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(first);
        Spool::open(&settings, &[], Metrics::new()).expect("free again once the first is gone");
    }

    #[tokio::test]
    async fn messages_come_back_whole_and_in_order() {
        let spool = open_at(&temp_path(), 1 << 20, Metrics::new());
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
        let spool = open_at(&temp_path(), 1 << 20, Metrics::new());
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
            let spool = open_at(&path, 1 << 20, Metrics::new());
            spool.append(&message(7)).await.unwrap();
        }

        let reopened = open_at(&path, 1 << 20, Metrics::new());

        assert_eq!(reopened.depth(), 1);
        assert_eq!(
            key(&reopened.oldest(1).await.unwrap()[0].message),
            "sync.error.E7"
        );
    }

    #[tokio::test]
    async fn a_full_spool_refuses_and_frees_room_as_it_drains() {
        let one = Row::of(&message(0)).unwrap().size;
        let spool = open_at(&temp_path(), 2 * one, Metrics::new());
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
        let spool = open_at(&temp_path(), 1 << 20, metrics.clone());

        for n in 0..3 {
            spool.append(&message(n)).await.unwrap();
            assert_eq!(commits(&metrics), u64::from(n) + 1);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn appends_that_wait_together_share_one_commit() {
        let metrics = Metrics::new();
        let spool = open_at(&temp_path(), 1 << 24, metrics.clone());
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
        let spool = open_at(&temp_path(), 1 << 24, Metrics::new());
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
    async fn waiting_for_work_returns_at_once_while_the_backlog_holds_messages() {
        let spool = open_at(&temp_path(), 1 << 20, Metrics::new());
        spool.append(&message(0)).await.unwrap();
        let started = Instant::now();
        spool.wait_for_work(Duration::from_secs(5)).await;
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "not empty: no wait"
        );
    }

    #[tokio::test]
    async fn a_refused_message_waits_beside_the_backlog_not_at_its_head() {
        let spool = open_at(&temp_path(), 1 << 20, Metrics::new());

        spool
            .append_refused(&message(0), "nack".to_owned())
            .await
            .unwrap();
        spool.append(&message(1)).await.unwrap();

        assert_eq!((spool.backlog(), spool.refused()), (1, 1));
        assert_eq!(keys(&spool).await, ["sync.error.E1"], "the backlog goes on");
        assert!(
            spool.due(10).await.unwrap().is_empty(),
            "not due before its delay"
        );
        let refused = spool.refused_keys();
        assert_eq!(refused.len(), 1);
        assert_eq!(
            (refused[0].routing_key.as_str(), refused[0].waiting),
            ("sync.error.E0", 1)
        );
        let due_in = spool.until_due().await.unwrap().expect("one waits");
        assert!(due_in <= Duration::from_millis(100), "{due_in:?}");
    }

    #[tokio::test]
    async fn a_message_refused_max_refusals_times_is_parked_and_the_rest_keep_their_order() {
        let spool = open_at(&temp_path(), 1 << 20, Metrics::new());
        for n in 0..3 {
            spool.append(&message(n)).await.unwrap();
        }
        let head = spool.oldest(1).await.unwrap()[0].seq;

        let first = spool.was_refused(head, "nack".to_owned()).await.unwrap();
        let second = spool.was_refused(head, "nack".to_owned()).await.unwrap();
        let third = spool.was_refused(head, "nack".to_owned()).await.unwrap();

        assert_eq!(first, Refusal::RetryIn(Duration::from_millis(100)));
        assert_eq!(second, Refusal::RetryIn(Duration::from_millis(400)));
        assert_eq!(third, Refusal::Parked { refusals: 3 });
        assert_eq!(
            (spool.backlog(), spool.refused(), spool.parked()),
            (2, 0, 1)
        );
        assert!(spool.refused_keys().is_empty());
        assert_eq!(keys(&spool).await, ["sync.error.E1", "sync.error.E2"]);
    }

    #[tokio::test]
    async fn a_refused_message_that_gets_through_hurries_the_others_of_its_key() {
        let spool = open_at(&temp_path(), 1 << 20, Metrics::new());
        spool.append(&message(0)).await.unwrap();
        spool.append(&message(0)).await.unwrap();
        let both: Vec<i64> = spool
            .oldest(2)
            .await
            .unwrap()
            .iter()
            .map(|s| s.seq)
            .collect();
        spool.was_refused(both[0], "nack".to_owned()).await.unwrap();
        // The second waits 4 times longer, as if refused twice.
        spool.was_refused(both[1], "nack".to_owned()).await.unwrap();
        spool.was_refused(both[1], "nack".to_owned()).await.unwrap();
        assert!(
            eventually_due(&spool, 1).await,
            "the first falls due after its delay"
        );

        spool.remove(vec![both[0]]).await.unwrap();

        let due = spool.due(10).await.unwrap();
        assert_eq!(
            due.iter().map(|s| s.seq).collect::<Vec<_>>(),
            [both[1]],
            "its key has room again: the other one is due at once"
        );
    }

    /// Waits (up to 5 s) until `count` refused messages are due.
    async fn eventually_due(spool: &Spool, count: usize) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if spool.due(10).await.unwrap().len() >= count {
                return true;
            }
            spool.wait_for_work(Duration::from_millis(50)).await;
        }
        false
    }

    #[tokio::test]
    async fn a_row_this_version_cannot_decode_is_parked_and_the_rest_drain() {
        let path = temp_path();
        let spool = open_at(&path, 1 << 20, Metrics::new());
        for n in 0..3 {
            spool.append(&message(n)).await.unwrap();
        }
        // A key an older version accepted and this one does not, say.
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute(
                "UPDATE spool SET routing_key = 'not a key' WHERE seq = (SELECT MIN(seq) FROM spool)",
                [],
            )
            .unwrap();

        let oldest = spool.oldest(10).await.unwrap();

        assert_eq!(
            oldest.iter().map(|s| key(&s.message)).collect::<Vec<_>>(),
            ["sync.error.E1", "sync.error.E2"]
        );
        assert_eq!((spool.backlog(), spool.parked()), (2, 1));
        let parked = listing::list(&path).unwrap();
        let reason = parked[0].last_error.as_deref().unwrap_or_default();
        assert!(reason.contains("not a key"), "{reason}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn appends_cancelled_before_the_writer_took_them_give_their_room_back() {
        let spool = open_at(&temp_path(), 1 << 30, Metrics::new());
        let size = Row::of(&message(0)).unwrap().size;
        // The writer is stuck on the database while 1,500 senders arrive: 1,024
        // fit in its queue, up to 256 are in its hands, the rest wait for room.
        let (held, holding) = oneshot::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let busy = {
            let inner = spool.inner.clone();
            std::thread::spawn(move || {
                let _db = lock(&inner.db);
                held.send(()).unwrap();
                released.recv().unwrap();
            })
        };
        holding.await.unwrap();
        let appends: Vec<_> = (0..1500)
            .map(|_| {
                let spool = spool.clone();
                tokio::spawn(async move { spool.append(&message(0)).await })
            })
            .collect();
        let waiting = || spool.appends.capacity() == 0;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !waiting() && Instant::now() < deadline {
            tokio::task::yield_now().await;
        }
        assert!(waiting(), "the writer's queue filled up");

        // Their senders go away (actix drops the handler's future).
        for append in &appends {
            append.abort();
        }
        for append in appends {
            let _ = append.await;
        }
        release.send(()).unwrap();
        busy.join().unwrap();
        spool.append(&message(1)).await.unwrap();

        let rows = spool.depth();
        assert!(
            rows < 1501,
            "some appends never reached the writer: {rows} rows"
        );
        assert_eq!(
            spool.inner.bytes.load(Ordering::SeqCst),
            rows * size,
            "the byte count matches the rows on disk"
        );
    }

    #[tokio::test]
    async fn a_retry_asked_by_another_process_puts_parked_messages_at_the_back() {
        let path = temp_path();
        let spool = open_at(&path, 1 << 20, Metrics::new());
        for n in 0..2 {
            spool.append(&message(n)).await.unwrap();
        }
        let head = spool.oldest(1).await.unwrap()[0].seq;
        park_now(&spool, head).await;
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
            let spool = open_at(&path, 1 << 20, Metrics::new());
            spool.append(&message(0)).await.unwrap();
            let head = spool.oldest(1).await.unwrap()[0].seq;
            park_now(&spool, head).await;
        }
        listing::request_retry(&path, &[]).unwrap();

        let reopened = open_at(&path, 1 << 20, Metrics::new());

        assert_eq!((reopened.depth(), reopened.parked()), (1, 0));
    }
}
