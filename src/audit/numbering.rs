//! The relay's identity and its numbers: every webhook it stores gets the
//! next number, and no number is given twice, across restarts and crashes.
//!
//! Numbers are reserved in blocks: the end of the block is written to the
//! state file, fsync'd, before any number of it is handed out, so a relay
//! that crashes starts its next run after the whole block (one fsync per
//! [`BLOCK`] webhooks). Beside it the file holds the *settled* mark (every
//! number below it was stored, or burned: taken by a request that ended
//! without storing it) and the burned numbers not yet noted in the history.
//! The keeper (`audit::keeper`) writes it every [`MARK_EVERY`] when it
//! changed, off the lock the requests take. So after a crash the numbers
//! between the mark and the block's end are the only ones whose fate the
//! relay cannot tell: handed out within the last moment before it stopped,
//! or never handed out. The next run says so in the history, and the audit
//! reports them as such, never as settled.
//!
//! Every write of the file takes `writing` first, then reads the state: the
//! file never goes back to an older reservation than one already written.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::tally::Missing;
use crate::unpoisoned::Locked;
use crate::wire::envelope::Stamp;

/// Numbers reserved with one fsync.
pub const BLOCK: u64 = 100_000;
/// How often the keeper writes the settled mark.
pub const MARK_EVERY: Duration = Duration::from_millis(100);

/// What the state file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    relay_id: String,
    /// The last number reserved: none above it was handed out.
    reserved_to: u64,
    /// Every number below it is settled (stored, or burned and noted).
    settled_below: u64,
    /// Whether the run that wrote it stopped cleanly (nothing in flight).
    clean: bool,
    /// Runs before it whose end is not yet noted in the history.
    #[serde(default)]
    ended: Vec<Previous>,
    /// Burned numbers not yet noted in the history.
    #[serde(default)]
    burned: Vec<u64>,
}

/// How a run before this one ended, as its state file says: the numbers
/// `[unsettled_from, reserved_to]` of it were not settled when it stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Previous {
    pub unsettled_from: u64,
    pub reserved_to: u64,
    /// A clean stop settles everything it handed out: the unsettled numbers
    /// were never handed out.
    pub clean: bool,
}

/// The relay's numbering: one per process, shared by every request.
pub struct Numbering {
    relay: Arc<str>,
    path: PathBuf,
    /// The first number of this run.
    first: u64,
    inner: Mutex<Inner>,
    /// Whether the last reservation failed (said once).
    failing: AtomicBool,
    /// Taken before `inner` by every write of the file; holds the last
    /// state written.
    writing: Mutex<Option<State>>,
    /// Held for as long as the numbering lives (see `file_lock`).
    _lock: fs::File,
    /// Webhooks numbered and stored since the start.
    stored: AtomicU64,
    /// What the always-on audit found missing last ([`super::tally`]).
    missing: Mutex<Vec<Missing>>,
}

struct Inner {
    next: u64,
    reserved_to: u64,
    /// Handed out, not yet stored or burned.
    in_flight: BTreeSet<u64>,
    /// Burned, not yet said in the history.
    burned: BTreeSet<u64>,
    /// Runs before this one whose end is not yet said in the history.
    ended: Vec<Previous>,
}

impl Inner {
    /// Every number below it is stored, or burned (and so in the file, or
    /// in the history).
    fn settled_below(&self) -> u64 {
        self.in_flight.first().copied().unwrap_or(self.next)
    }
}

/// A number handed out to one request: [`Ticket::stored`] once the webhook
/// is durable; dropped without it (a 503, a request that ended), the number
/// is burned.
pub struct Ticket {
    numbering: Arc<Numbering>,
    seq: u64,
    stored: bool,
}

impl Numbering {
    /// Opens the state file at `path` (made if missing, with `configured` or
    /// a new identity) and reserves this run's first block. The runs before
    /// whose end is not noted yet ([`Numbering::ended`]) are kept in the file
    /// until [`Numbering::ends_noted`].
    pub fn open(path: &Path, configured: Option<&str>) -> anyhow::Result<Numbering> {
        // One relay per file: two giving the same numbers would be worse
        // than none.
        let lock = crate::file_lock::hold(
            path,
            "the relay state file",
            "give each relay its own (audit.state_path, or spool.path)",
        )?;
        let text = match fs::read_to_string(path) {
            Ok(text) => Some(text),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
            Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
        };
        let (relay, ended, burned) = match text {
            Some(text) => {
                let state: State = serde_json::from_str(&text)
                    .with_context(|| format!("{} is not a relay state file", path.display()))?;
                if let Some(configured) = configured.filter(|id| *id != state.relay_id) {
                    anyhow::bail!(
                        "audit.relay_id is {configured}, but {} belongs to relay {}: a relay keeps \
                         its identity (its numbers go on from where they stopped): set \
                         audit.relay_id to that, or to a new identity with a new state file \
                         (never reuse an identity without its file: its numbers would start \
                         again at 1)",
                        path.display(),
                        state.relay_id
                    );
                }
                let previous = Previous {
                    unsettled_from: state.settled_below,
                    reserved_to: state.reserved_to,
                    clean: state.clean,
                };
                let mut ended = state.ended;
                ended.push(previous);
                (state.relay_id, ended, state.burned.into_iter().collect())
            }
            None => {
                if let Some(configured) = configured {
                    tracing::warn!(
                        relay_id = configured,
                        state_file = %path.display(),
                        "audit: a new state file for a configured relay id: its numbers start \
                         at 1. If a relay ran with this id before (a lost volume, or replicas \
                         sharing one id), the audit will mix two series of numbers: give this \
                         relay an id of its own"
                    );
                }
                (
                    configured.map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned),
                    Vec::new(),
                    BTreeSet::new(),
                )
            }
        };
        let first = ended.last().map_or(1, |previous| previous.reserved_to + 1);
        let numbering = Numbering {
            relay: relay.into(),
            path: path.to_owned(),
            first,
            inner: Mutex::new(Inner {
                next: first,
                reserved_to: first + BLOCK - 1,
                in_flight: BTreeSet::new(),
                burned,
                ended,
            }),
            failing: AtomicBool::new(false),
            writing: Mutex::new(None),
            _lock: lock,
            stored: AtomicU64::new(0),
            missing: Mutex::new(Vec::new()),
        };
        numbering.mark_synced()?;
        Ok(numbering)
    }

    /// The relay's identity, `x-relay-id`.
    pub fn relay(&self) -> &Arc<str> {
        &self.relay
    }

    /// The first number of this run.
    pub fn first(&self) -> u64 {
        self.first
    }

    /// The next number, for one webhook about to be stored. Once every
    /// [`BLOCK`] numbers the next block is reserved first (one small write
    /// and fsync, under the lock: the requests of that moment wait for it).
    /// `None` when the block cannot be reserved (the file cannot be
    /// written): the webhook is stored without a number, which the audit
    /// cannot see, and that is said at ERROR, once until it works again.
    pub fn take(self: &Arc<Self>) -> Option<Ticket> {
        let mut inner = self.inner.locked();
        if inner.next > inner.reserved_to {
            // The file first, in the writers' order: `writing`, then `inner`.
            drop(inner);
            let mut written = self.writing.locked();
            inner = self.inner.locked();
            if inner.next > inner.reserved_to {
                let mut state = self.state(&inner, false);
                state.reserved_to = inner.reserved_to + BLOCK;
                match self.write(&mut written, state, true) {
                    Ok(()) => {
                        inner.reserved_to += BLOCK;
                        if self.failing.swap(false, Ordering::Relaxed) {
                            tracing::info!("audit: webhooks are numbered again");
                        }
                    }
                    Err(err) => {
                        if !self.failing.swap(true, Ordering::Relaxed) {
                            tracing::error!(
                                error = format!("{err:#}"),
                                "audit: cannot reserve numbers: webhooks are stored WITHOUT \
                                 x-relay-seq, which `hookrelay audit` cannot account for; make \
                                 the state file writable"
                            );
                        }
                        return None;
                    }
                }
            }
        }
        let seq = inner.next;
        inner.next += 1;
        inner.in_flight.insert(seq);
        drop(inner);
        Some(Ticket {
            numbering: Arc::clone(self),
            seq,
            stored: false,
        })
    }

    /// The runs before this one whose end is not yet noted in the history.
    pub fn ended(&self) -> Vec<Previous> {
        self.inner.locked().ended.clone()
    }

    /// Those runs' ends are noted in the history now.
    pub fn ends_noted(&self) -> anyhow::Result<()> {
        let mut written = self.writing.locked();
        let mut inner = self.inner.locked();
        inner.ended.clear();
        let state = self.state(&inner, false);
        drop(inner);
        self.write(&mut written, state, true)
    }

    /// Webhooks numbered and stored since the start.
    pub fn stored(&self) -> u64 {
        self.stored.load(Ordering::Relaxed)
    }

    /// What the always-on audit found missing last.
    pub fn missing(&self) -> Vec<Missing> {
        self.missing.locked().clone()
    }

    /// Keeps what the always-on audit found missing; whether it changed.
    pub fn found_missing(&self, missing: Vec<Missing>) -> bool {
        let mut kept = self.missing.locked();
        let changed = *kept != missing;
        *kept = missing;
        changed
    }

    /// Burned numbers not yet said in the history.
    pub fn burned(&self) -> Vec<u64> {
        self.inner.locked().burned.iter().copied().collect()
    }

    /// These burned numbers are said in the history now.
    pub fn noted(&self, numbers: &[u64]) {
        let mut inner = self.inner.locked();
        for number in numbers {
            inner.burned.remove(number);
        }
    }

    /// Writes the file when its state changed since the last write (with
    /// fsync: a power loss must not leave half a file). Blocking: the
    /// keeper calls it off the async workers.
    pub fn mark(&self) -> anyhow::Result<()> {
        let mut written = self.writing.locked();
        let state = self.state(&self.inner.locked(), false);
        if written.as_ref() == Some(&state) {
            return Ok(());
        }
        self.write(&mut written, state, true)
    }

    fn mark_synced(&self) -> anyhow::Result<()> {
        let mut written = self.writing.locked();
        let state = self.state(&self.inner.locked(), false);
        self.write(&mut written, state, true)
    }

    /// After a clean stop (no request in flight): the mark at the next
    /// number, and the file says it was clean; burned numbers not noted
    /// yet stay in it, for the next run to note.
    pub fn close(&self) -> anyhow::Result<()> {
        let mut written = self.writing.locked();
        let inner = self.inner.locked();
        let state = self.state(&inner, inner.in_flight.is_empty());
        drop(inner);
        self.write(&mut written, state, true)
    }

    /// What the file says of `inner`.
    fn state(&self, inner: &Inner, clean: bool) -> State {
        State {
            relay_id: self.relay.to_string(),
            reserved_to: inner.reserved_to,
            settled_below: inner.settled_below(),
            clean,
            ended: inner.ended.clone(),
            burned: inner.burned.iter().copied().collect(),
        }
    }

    /// Writes `state`, the caller holding `writing` (`written`).
    fn write(&self, written: &mut Option<State>, state: State, sync: bool) -> anyhow::Result<()> {
        let text = serde_json::to_vec(&state).expect("a state serialises");
        write_file(&self.path, &text, sync).with_context(|| {
            format!("cannot write the relay state file {}", self.path.display())
        })?;
        *written = Some(state);
        Ok(())
    }

    fn settle(&self, seq: u64, stored: bool) {
        if stored {
            self.stored.fetch_add(1, Ordering::Relaxed);
        }
        let mut inner = self.inner.locked();
        inner.in_flight.remove(&seq);
        if !stored {
            inner.burned.insert(seq);
        }
    }
}

impl Ticket {
    /// `x-relay-id` and `x-relay-seq` for the webhook's message.
    pub fn stamp(&self) -> Stamp {
        Stamp {
            relay: Arc::clone(&self.numbering.relay),
            seq: self.seq,
        }
    }

    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// The webhook is durable: the number is settled.
    pub fn stored(mut self) {
        self.stored = true;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.numbering.settle(self.seq, self.stored);
    }
}

/// Replaces `path` with `contents`: written beside it, then renamed over it,
/// so a crash leaves the old file or the new one, never half of one.
fn write_file(path: &Path, contents: &[u8], sync: bool) -> std::io::Result<()> {
    let temporary = path.with_extension("tmp");
    let mut file = fs::File::create(&temporary)?;
    file.write_all(contents)?;
    if sync {
        file.sync_all()?;
    }
    fs::rename(&temporary, path)?;
    if sync && let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder of its own, removed after the test.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new() -> Scratch {
            let dir =
                std::env::temp_dir().join(format!("hookrelay-numbering-{}", uuid::Uuid::now_v7()));
            fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// The relay's numbering, and the end of the run before it.
    fn numbering(dir: &Path) -> (Arc<Numbering>, Option<Previous>) {
        let numbering = Numbering::open(&dir.join("relay.state"), None).unwrap();
        let previous = numbering.ended().last().copied();
        (Arc::new(numbering), previous)
    }

    fn state(dir: &Path) -> State {
        let text = fs::read_to_string(dir.join("relay.state")).unwrap();
        serde_json::from_str::<State>(&text).unwrap()
    }

    #[test]
    fn numbers_go_on_after_a_restart_and_are_never_given_twice() {
        let dir = Scratch::new();
        let (first, previous) = numbering(dir.path());
        assert_eq!(previous, None);
        let taken: Vec<u64> = (0..3)
            .map(|_| first.take().unwrap())
            .map(|t| {
                let seq = t.seq();
                t.stored();
                seq
            })
            .collect();
        assert_eq!(taken, [1, 2, 3]);
        first.close().unwrap();
        let relay = first.relay().clone();
        drop(first);

        let (second, previous) = numbering(dir.path());
        assert_eq!(second.relay(), &relay, "the identity is kept");
        assert_eq!(
            previous,
            Some(Previous {
                unsettled_from: 4,
                reserved_to: BLOCK,
                clean: true
            })
        );
        assert_eq!(
            second.take().unwrap().seq(),
            BLOCK + 1,
            "after the whole block"
        );
    }

    #[test]
    fn a_crash_leaves_unsettled_only_what_was_in_flight_or_never_handed_out() {
        let dir = Scratch::new();
        let (crashed, _) = numbering(dir.path());
        let one = crashed.take().unwrap();
        let two = crashed.take().unwrap();
        let three = crashed.take().unwrap();
        one.stored();
        three.stored();
        crashed.mark().unwrap();
        // Two is still in flight when the process dies: what the next run
        // finds is the file as it is now.
        let after_the_crash = Scratch::new();
        fs::copy(
            dir.path().join("relay.state"),
            after_the_crash.path().join("relay.state"),
        )
        .unwrap();
        drop(two);

        let (_, previous) = numbering(after_the_crash.path());
        assert_eq!(
            previous,
            Some(Previous {
                unsettled_from: 2,
                reserved_to: BLOCK,
                clean: false
            })
        );
    }

    #[test]
    fn a_number_dropped_without_being_stored_is_burned_until_noted() {
        let dir = Scratch::new();
        let (numbering, _) = numbering(dir.path());
        let refused = numbering.take().unwrap();
        numbering.take().unwrap().stored();
        drop(refused);
        assert_eq!(numbering.burned(), [1]);
        numbering.mark().unwrap();
        assert_eq!(
            state(dir.path()).burned,
            [1],
            "kept in the file until noted"
        );
        assert_eq!(state(dir.path()).settled_below, 3);

        numbering.noted(&[1]);
        assert!(numbering.burned().is_empty());
        numbering.close().unwrap();
        let closed = state(dir.path());
        assert_eq!((closed.settled_below, closed.clean), (3, true));
        assert!(closed.burned.is_empty());
    }

    #[test]
    fn a_runs_end_is_kept_until_it_is_noted() {
        let dir = Scratch::new();
        let (first, _) = numbering(dir.path());
        first.close().unwrap();
        drop(first);
        // A second run that never reached RabbitMQ: its note was not written.
        let (second, _) = numbering(dir.path());
        second.close().unwrap();
        drop(second);
        let (third, _) = numbering(dir.path());
        assert_eq!(third.ended().len(), 2, "both runs' ends, to be noted");
        third.ends_noted().unwrap();
        third.close().unwrap();
        drop(third);
        let (fourth, _) = numbering(dir.path());
        assert_eq!(fourth.ended().len(), 1, "only the third's");
    }

    #[test]
    fn a_configured_identity_must_be_the_files() {
        let dir = Scratch::new();
        let path = dir.path().join("relay.state");
        let numbering = Numbering::open(&path, Some("relay-a")).unwrap();
        assert_eq!(&**numbering.relay(), "relay-a");
        drop(numbering);
        let err = Numbering::open(&path, Some("relay-b")).err().unwrap();
        assert!(
            err.to_string().contains("belongs to relay relay-a"),
            "{err}"
        );
    }
}
