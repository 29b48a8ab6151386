//! The derived layer: what the relay reads off the history, as opposed to
//! what the sender said. Each relay follows the history stream once, with
//! one follower, into a SQLite file of its own ([`Store`]):
//!
//! ```text
//! <exchange>.history ──► follower (one consumer per relay, resumes from its offset)
//!                          ├─► index     (with a console: offset, id, key, time, account, user, client)
//!                          ├─► accounts  (state, streak, last event in event time)
//!                          └─► owed      (changes not announced yet; paid when the history
//!                                         holds their announcement, x-caused-by)
//! the announcer (one relay at a time) ──► owed changes ──► <exchange>.changes ──► history
//! ```
//!
//! The stream is the truth: the file resumes after a restart from the last
//! offset it applied (once it has checked that the stream still holds the
//! same event there), and starts over when the stream was deleted and
//! declared again, or when this relay's settings derive other things. No
//! write per event lands on RabbitMQ: every relay derives the same states
//! and owes the same changes from the same stream, so whichever relay
//! announces, it announces what is owed and nothing twice
//! (the accounts' announcer).

mod follower;
pub mod incidents;
pub mod store;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{Notify, watch};

pub use store::{AccountsPage, Applied, Derives, Owed, Store};

use crate::audit::tally::Tally;
use crate::broker::Broker;
use crate::metrics::Metrics;
use crate::stopping::Stopping;
use crate::unpoisoned::Locked;

/// The relay's derived store, and how far its follower has read.
pub struct Derived {
    /// One relay per file (see `file_lock`).
    _held: std::fs::File,
    /// The follower's connection to the file.
    writer: Arc<Store>,
    /// Everyone else's: the console, the announcer.
    reader: Arc<Store>,
    derives: Derives,
    caught_up: AtomicBool,
    /// The last offset applied (committed to the file).
    applied: watch::Sender<Option<u64>>,
    /// Poked when changes became owed or were paid.
    owed_changed: Notify,
    owed: AtomicU64,
    metrics: Metrics,
    /// Every relay's numbers, as far as the follower has read.
    tally: Mutex<Tally>,
}

impl Derived {
    /// Opens (or creates) the file at `path`, fed as `derives` says.
    pub fn open(path: &Path, derives: Derives, metrics: Metrics) -> anyhow::Result<Arc<Derived>> {
        if let Some(folder) = path.parent() {
            std::fs::create_dir_all(folder)?;
        }
        let held = crate::file_lock::hold(
            path,
            "the history index",
            "each relay follows the history into a file of its own. Give each relay its own \
             history.index_path (or its own spool.path, which it sits beside)",
        )?;
        let writer = Store::open(path)?;
        let reader = Store::open_reader(path)?;
        let owed = reader.owed_count()?;
        metrics.account_changes_owed(owed);
        Ok(Arc::new(Derived {
            _held: held,
            writer: Arc::new(writer),
            reader: Arc::new(reader),
            derives,
            caught_up: AtomicBool::new(false),
            applied: watch::Sender::new(None),
            owed_changed: Notify::new(),
            owed: AtomicU64::new(owed),
            metrics,
            tally: Mutex::new(Tally::default()),
        }))
    }

    pub fn derives(&self) -> Derives {
        self.derives
    }

    /// Whether the follower has read the stream up to the end it saw when
    /// its session began: from then on the file answers for the stream.
    pub fn caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }

    /// The last offset applied, if any.
    pub fn applied(&self) -> Option<u64> {
        *self.applied.borrow()
    }

    /// Changes owed now.
    pub fn owed(&self) -> u64 {
        self.owed.load(Ordering::Acquire)
    }

    /// Waits until the follower has applied the event at `offset`.
    pub async fn applied_through(&self, offset: u64) {
        let mut applied = self.applied.subscribe();
        // The sender lives as long as `self`.
        let _ = applied.wait_for(|a| a.is_some_and(|a| a >= offset)).await;
    }

    /// Waits until changes become owed or are paid.
    pub async fn owed_changed(&self) {
        self.owed_changed.notified().await;
    }

    /// Runs `read` on the readers' connection, off the async workers (a
    /// query must not hold up `/healthz` or a webhook).
    pub async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Store) -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || read(&reader)).await?
    }

    /// Follows `stream` into the file until `stopping` turns true; after a
    /// lost connection it says so once and resumes where it stopped.
    pub(crate) async fn follow(
        self: Arc<Self>,
        broker: Broker,
        stream: String,
        stopping: Stopping,
    ) {
        crate::history::follow(&*self, broker, stream, stopping).await;
    }

    /// Writes a batch in the follower's transaction, off the async workers.
    async fn write(&self, items: Vec<store::Item>) -> anyhow::Result<Applied> {
        self.tally_up(&items);
        let (writer, derives) = (self.writer.clone(), self.derives);
        let last = items.last().map(|item| item.offset);
        let applied = tokio::task::spawn_blocking(move || writer.apply(&items, derives)).await??;
        tracing::debug!(
            ?last,
            changes = applied.changes,
            paid = applied.paid,
            "history follower: batch applied"
        );
        if let Some(open) = applied.open_incidents {
            self.metrics.provider_incidents_open(open);
        }
        if applied.changes > 0 || applied.paid > 0 {
            let owed = self.owed.load(Ordering::Acquire) + applied.changes;
            let owed = owed.saturating_sub(applied.paid);
            self.owed.store(owed, Ordering::Release);
            self.metrics.account_changes_owed(owed);
            self.owed_changed.notify_one();
        }
        if last.is_some() {
            self.applied.send_replace(last);
        }
        Ok(applied)
    }

    /// Tallies the batch's numbers and notes (see [`Tally`]).
    fn tally_up(&self, items: &[store::Item]) {
        let now = Instant::now();
        let mut tally = self.tally.locked();
        for item in items {
            match &item.audit {
                Some(store::Audited::Stored(stamp)) => tally.seen(&stamp.relay, stamp.seq, now),
                Some(store::Audited::Note(note)) => tally.note(note),
                None => {}
            }
        }
    }

    /// The tally of every relay's numbers, for a look.
    pub(crate) fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally.locked()
    }

    /// After starting over: nothing applied, nothing owed.
    async fn start_over(&self) -> anyhow::Result<()> {
        let writer = self.writer.clone();
        tokio::task::spawn_blocking(move || writer.start_over()).await??;
        self.owed.store(0, Ordering::Release);
        self.metrics.account_changes_owed(0);
        self.applied.send_replace(None);
        Ok(())
    }
}

impl crate::history::Follower for Derived {
    const WHAT: &'static str = "history follower";
    const MEANWHILE: &'static str = "the console's lists, account states and announcements wait \
                                     meanwhile; webhooks are relayed as usual";
    const CONNECTION: &'static str = "hookrelay-follower";

    fn caught_up_flag(&self) -> &AtomicBool {
        &self.caught_up
    }

    async fn read(&self, connection: &lapin::Connection, stream: &str) -> anyhow::Result<()> {
        follower::session(self, connection, stream).await
    }
}
