//! Refusals, parking, and the retries `hookrelay spool retry` asks for.
//!
//! A row RabbitMQ refused moves from the backlog into the refused lane, and
//! after `spool.max_refusals` refusals (or when this version cannot decode it)
//! into the `parked` table, where it keeps its room: it is still on disk.
//! `hookrelay spool retry`, another process, marks parked rows; the relay
//! notices the file changed (SQLite's `data_version`) and moves them to the
//! back of the backlog.

use std::sync::atomic::Ordering;

use rusqlite::{OptionalExtension, params};

use super::refused::{LaneExit, lane_key};
use super::{Db, Inner, Refusal, Spool, SpoolError, now_millis};

impl Spool {
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
                                u32::try_from(row.get::<_, i64>(0)?.max(0)).unwrap_or(u32::MAX),
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
                        // In the lane now (retry_at set), whichever lane it
                        // came from: `park` takes it from there, so a row
                        // parked at its first refusal (max_refusals = 1)
                        // leaves the backlog's count once, not twice.
                        db.connection.execute(
                            "UPDATE spool SET refusals = ?2, retry_at = COALESCE(retry_at, ?3) \
                             WHERE seq = ?1",
                            params![seq, refusals, now_millis()],
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
}

/// Moves the row at `seq` to the parked table with `reason`, in the caller's
/// lock. Parked rows keep their room: they are still on disk.
pub(super) fn park(db: &mut Db, inner: &Inner, seq: i64, reason: &str) -> Result<(), SpoolError> {
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
        inner
            .lane
            .left(lane_key(&kind, &routing_key), LaneExit::Parked);
    } else {
        inner.backlog.fetch_sub(1, Ordering::SeqCst);
    }
    inner.parked.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

/// Moves marked parked rows back into the backlog, if another process wrote.
pub(super) fn take_back_retries(db: &mut Db, inner: &Inner) -> Result<u64, SpoolError> {
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
