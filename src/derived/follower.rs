//! One session of the follower: from where the file stopped (or the stream's
//! first event), every event into the store in batches, until the
//! connection fails or the relay stops.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::info;

use super::Derived;
use super::store::Item;
use crate::history::index::{at_offset, first_offset};
use crate::history::{self, Ends, Filter, Reader, Start};

/// Events written in one transaction at most.
const BATCH: usize = 2000;
/// How long the first event of a batch waits for the rest before it is
/// written: the latency of an account change, at most.
const FLUSH_AFTER: Duration = Duration::from_millis(50);
/// How often index rows the stream no longer holds are dropped.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

pub(super) async fn session(
    derived: &Derived,
    connection: &lapin::Connection,
    stream: &str,
) -> anyhow::Result<()> {
    let start = resume_point(derived, connection, stream).await?;
    let end = history::last_event(connection, stream, history::END_WAIT_FOLLOWING)
        .await?
        .map(|last| last.offset);
    if end.is_none_or(|end| matches!(start, Start::Offset(next) if next > end)) {
        derived
            .caught_up
            .store(true, std::sync::atomic::Ordering::Release);
    }
    let reader = Reader::open(
        connection,
        stream,
        start,
        Ends::Following,
        // Notes too: the stream's last message may be one, and the
        // follower has caught up only once it has read that far.
        Filter {
            notes: true,
            ..Filter::default()
        },
    )
    .await?;
    // The reader runs in a task of its own, so that waiting for a batch to
    // fill never cancels a read half-way.
    let (items, mut received) = mpsc::channel::<Item>(BATCH);
    let derives = derived.derives;
    let reading = AbortOnDrop(tokio::spawn(async move {
        let mut reader = reader;
        while let Some(event) = reader.next().await? {
            if items.send(Item::of(event, derives)).await.is_err() {
                break;
            }
        }
        anyhow::Ok(())
    }));
    let mut batch = Vec::with_capacity(BATCH);
    let mut flush_at = Instant::now();
    let mut prune = tokio::time::interval(PRUNE_EVERY);
    let ended = loop {
        let room = BATCH - batch.len();
        tokio::select! {
            // Everything the reader has handed over, in one wake-up.
            taken = received.recv_many(&mut batch, room) => match taken {
                0 => break anyhow::anyhow!("the stream read ended"),
                taken => {
                    if batch.len() == taken {
                        flush_at = Instant::now() + FLUSH_AFTER;
                    }
                    if batch.len() < BATCH {
                        continue;
                    }
                }
            },
            () = tokio::time::sleep_until(flush_at), if !batch.is_empty() => {}
            _ = prune.tick(), if derives.index => {
                if let Some(first) = first_offset(connection, stream).await? {
                    let writer = derived.writer.clone();
                    tokio::task::spawn_blocking(move || writer.prune_before(first)).await??;
                }
                continue;
            }
        }
        let taken = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
        let last = taken.last().map(|item| item.offset);
        derived.write(taken).await?;
        if end.zip(last).is_some_and(|(end, last)| last >= end) {
            derived
                .caught_up
                .store(true, std::sync::atomic::Ordering::Release);
        }
    };
    match reading.finish().await {
        Some(Err(err)) => Err(err),
        _ => Err(ended),
    }
}

/// After the last event applied, if the stream still holds it there; else
/// the stream's first event, with the file started over.
async fn resume_point(
    derived: &Derived,
    connection: &lapin::Connection,
    stream: &str,
) -> anyhow::Result<Start> {
    let position = {
        let writer = derived.writer.clone();
        let derives = derived.derives;
        tokio::task::spawn_blocking(move || writer.position(derives)).await??
    };
    if let Some(position) = position {
        let there = at_offset(connection, stream, position.offset).await?;
        if there.is_some_and(|event| event.message_id() == position.message_id) {
            derived.applied.send_replace(Some(position.offset));
            return Ok(Start::Offset(position.offset + 1));
        }
        info!(
            stream,
            offset = position.offset,
            "history follower: the stream no longer holds the event it stopped at (deleted and \
             declared again, or kept for less time than this relay was away); starting over \
             from its first event"
        );
    }
    derived.start_over().await?;
    Ok(Start::First)
}

/// The reader's task, stopped with the session however it ends.
struct AbortOnDrop(JoinHandle<anyhow::Result<()>>);

impl AbortOnDrop {
    /// Stops the task; what it ended with, if it had ended on its own.
    async fn finish(mut self) -> Option<anyhow::Result<()>> {
        self.0.abort();
        (&mut self.0).await.ok()
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
