//! Every account's state kept current, for the console: the whole history
//! folded once when the relay starts (in the background), then each event
//! as it lands. `hookrelay accounts` folds the history on every run, which
//! takes minutes with a million events; a page at 3 a.m. cannot wait for
//! that.
//!
//! After a lost connection the book is folded again from the first event:
//! the stream is the truth, and a fold cannot skip or repeat an event that
//! way. Until a fold has reached the end of the stream it saw when it began
//! ([`LiveBook::caught_up`]), readers fold the history themselves.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::Book;
use crate::broker;
use crate::history::{self, Filter, Reader, Start};

/// The book and whether it is current.
pub struct LiveBook {
    book: Mutex<Book>,
    escalate_after: u32,
    caught_up: AtomicBool,
}

impl LiveBook {
    pub fn new(escalate_after: u32) -> LiveBook {
        LiveBook {
            book: Mutex::new(Book::new(escalate_after)),
            escalate_after,
            caught_up: AtomicBool::new(false),
        }
    }

    /// Whether the book holds every event of the stream up to a moment ago.
    pub fn caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }

    /// Reads the book as it is now.
    pub fn read<T>(&self, f: impl FnOnce(&Book) -> T) -> T {
        f(&self.book.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Keeps the book current until `stopping` turns true.
    pub async fn follow(
        self: Arc<Self>,
        broker: broker::Broker,
        stream: String,
        stopping: watch::Receiver<bool>,
    ) {
        history::follow(&*self, broker, stream, stopping).await;
    }

    async fn fold(&self, connection: &lapin::Connection, stream: &str) -> anyhow::Result<()> {
        let end = history::last_event(connection, stream)
            .await?
            .map(|last| last.offset);
        let mut fresh = Book::new(self.escalate_after);
        let mut reader =
            Reader::open(connection, stream, Start::First, true, Filter::default()).await?;
        // Folded aside until the end it saw, then swapped in whole: readers
        // never see half a history.
        if let Some(end) = end {
            while let Some(event) = reader.next().await? {
                fresh.apply(&event);
                if event.offset >= end {
                    break;
                }
            }
        }
        *self.book.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
        self.caught_up.store(true, Ordering::Release);
        while let Some(event) = reader.next().await? {
            self.book
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .apply(&event);
        }
        anyhow::bail!("the history read ended")
    }
}

impl history::Follower for LiveBook {
    const WHAT: &'static str = "account book";
    const MEANWHILE: &'static str = "the console folds the history per request meanwhile";
    const CONNECTION: &'static str = "hookrelay-accounts-view";

    fn caught_up_flag(&self) -> &AtomicBool {
        &self.caught_up
    }

    async fn read(&self, connection: &lapin::Connection, stream: &str) -> anyhow::Result<()> {
        self.fold(connection, stream).await
    }
}
