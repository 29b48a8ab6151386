//! The spool's writer thread: group commit.
//!
//! Every append goes through one thread, which takes the appends waiting at
//! that moment (at least one, at most [`APPENDS_PER_COMMIT`]), commits them in
//! one transaction, one fsync, and only then answers each. While it commits,
//! the next ones queue. So during an outage, when webhooks pile in, they
//! share the disk's slowest operation instead of queueing for it one by one.

use std::sync::atomic::Ordering;

use rusqlite::params;
use tokio::sync::{mpsc, oneshot};

use super::store::Row;
use std::sync::Arc;

use super::{Db, Inner, SpoolError, lock, now_millis};

/// Appends that wait for the writer at most: more wait for room, in order.
pub(super) const APPENDS_WAITING: usize = 1024;
/// Appends committed together at most: one transaction stays short.
const APPENDS_PER_COMMIT: usize = 256;

/// One append for the writer thread, and where to say it is on disk.
pub(super) struct Append {
    pub row: Row,
    pub body: bytes::Bytes,
    /// `Some` for a webhook RabbitMQ refused: it enters the refused lane.
    pub refused: Option<Refused>,
    /// The room this row takes in the spool's byte count: kept once committed.
    pub reservation: Reservation,
    pub done: oneshot::Sender<Result<(), SpoolError>>,
}

/// Why RabbitMQ refused it, and when to try again.
pub(super) struct Refused {
    pub reason: String,
    pub retry_at: i64,
}

/// Runs until every [`Spool`](super::Spool) handle is dropped.
pub(super) fn run(inner: &Inner, mut waiting: mpsc::Receiver<Append>) {
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
                let refused = batch.iter().filter(|a| a.refused.is_some()).count() as u64;
                let backlog = batch.len() as u64 - refused;
                inner.backlog.fetch_add(backlog, Ordering::SeqCst);
                inner.refused.fetch_add(refused, Ordering::SeqCst);
            }
            result
        };
        if result.is_ok() {
            inner.metrics.spool_committed();
            for append in &batch {
                if let Some(refused) = &append.refused {
                    inner.lane.entered(append.row.lane_key(), &refused.reason);
                }
            }
        }
        let failed = result.err().map(|err| err.to_string());
        for append in batch {
            let answer = match &failed {
                None => {
                    append.reservation.keep();
                    Ok(())
                }
                // The reservation is dropped with the append: room given back.
                Some(reason) => Err(SpoolError::Commit(reason.clone())),
            };
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
            "INSERT INTO spool (kind, routing_key, properties, body, size, spooled_at, refusals, last_error, retry_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        let now = now_millis();
        for Append {
            row, body, refused, ..
        } in batch
        {
            insert.execute(params![
                row.kind,
                row.routing_key,
                row.properties,
                &body[..],
                i64::try_from(row.size).unwrap_or(i64::MAX),
                now,
                i64::from(refused.is_some()),
                refused.as_ref().map(|r| r.reason.as_str()),
                refused.as_ref().map(|r| r.retry_at),
            ])?;
        }
    }
    tx.commit()
}

/// Room taken in the spool's byte count for one append. It travels with the
/// append to the writer: given back when dropped, unless the writer committed
/// the row (then the row holds the room until it is drained).
pub(super) struct Reservation {
    inner: Arc<Inner>,
    size: u64,
    kept: bool,
}

impl Reservation {
    /// Reserves first, so concurrent appends cannot overshoot the bound.
    pub(super) fn take(inner: &Arc<Inner>, size: u64) -> Result<Reservation, SpoolError> {
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

    pub(super) fn keep(mut self) {
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
