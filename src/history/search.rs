//! The newest events first, a page at a time, as the console lists them.
//!
//! RabbitMQ 3.10 reads a stream forwards only and cannot filter it on the
//! server, so a page reads from the filter's `since` (or the oldest event)
//! up to the page's cursor and keeps only the last `limit` events that pass
//! the filter: memory is one page, whatever the stream holds; time is the
//! stream from `since` on. The cursor is a stream offset, the same on every
//! relay and across restarts.

use std::collections::VecDeque;

use lapin::Connection;

use super::{Ends, Filter, Reader, Recorded, Start};

/// One page of events, newest first.
#[derive(Debug)]
pub struct Page {
    pub events: Vec<Recorded>,
    /// Pass as `before` for the next, older page; `None` on the oldest page.
    pub next_cursor: Option<u64>,
    /// Events read from the stream to make this page, passed or not.
    pub read: u64,
}

/// The newest `limit` events of `stream` that pass `filter`, older than the
/// offset `before` when given.
pub async fn newest(
    connection: &Connection,
    stream: &str,
    filter: Filter,
    before: Option<u64>,
    limit: usize,
) -> anyhow::Result<Page> {
    let start = filter.since.map_or(Start::First, Start::At);
    let mut reader = Reader::open(connection, stream, start, Ends::AtTheEnd, filter).await?;
    let mut kept = VecDeque::with_capacity(limit.saturating_add(1).min(1024));
    let mut older = false;
    while let Some(event) = reader.next().await? {
        if before.is_some_and(|before| event.offset >= before) {
            break;
        }
        kept.push_back(event);
        if kept.len() > limit {
            kept.pop_front();
            older = true;
        }
    }
    let read = reader.read();
    reader.close().await;
    Ok(Page {
        next_cursor: if older {
            kept.front().map(|oldest| oldest.offset)
        } else {
            None
        },
        events: kept.into_iter().rev().collect(),
        read,
    })
}
