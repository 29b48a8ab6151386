//! The sender's retries, recognised. Its webhooks carry no id: when it times
//! out and sends a webhook again, the retry would be published as a new
//! event. Each event gets a [`DedupKey`] (the `x-dedup-key` header) from what
//! identifies it, and within `ingress.dedup_window` a webhook whose key was
//! already accepted is answered 200 `duplicate` with the first one's id, and
//! not published again.
//!
//! A key is claimed before the publish and becomes "seen" only once the event
//! is durable: a retry that arrives while the first copy is still in flight
//! waits for its outcome, so it is never answered "duplicate" for an event
//! that then failed to be stored (a 2xx means durable).
//!
//! The keys of the window outlive a restart, and reach the other relays on
//! the same exchange, through the history stream: [`Dedup::follow`] reads it
//! from one window ago and keeps reading. What it cannot close is the gap of
//! a few milliseconds between one relay's publish and another reading it: a
//! retry that lands on another relay inside that gap is published twice, and
//! consumers, who see the same `x-dedup-key` on both, can drop the second.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use tokio::sync::watch;
use uuid::Uuid;

use crate::broker;
use crate::event::Event;
use crate::history::{self, Filter, Reader, Start};
use crate::wire::headers::{DEDUP_KEY, RECEIVED_AT, text, time};

/// Keys kept at most, so a flood cannot grow the map without end: at 1000
/// webhooks a second for a 10-minute window, 600 000 are needed.
const MAX_KEYS: usize = 1_000_000;

/// The SHA-256 of what identifies an event (64 hex digits in `x-dedup-key`):
/// hook, client id, user id, account id, provider and error code, never
/// `loginName`. Each field is hashed as its UTF-8 length in decimal, `:`,
/// and its bytes (an absent provider or error code as the empty string), so
/// no two lists of fields hash alike; docs/src/consumer.md shows it in Python.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DedupKey([u8; 32]);

impl DedupKey {
    pub fn of(event: &Event, client_id: &str) -> DedupKey {
        let fields = [
            event.hook(),
            client_id,
            event.user_id(),
            event.account_id(),
            event.provider().unwrap_or(""),
            event.error_code().map_or("", |code| code.as_str()),
        ];
        let mut hash = Sha256::new();
        let mut digits = [0u8; 20];
        for field in fields {
            hash.update(decimal(field.len(), &mut digits));
            hash.update(b":");
            hash.update(field);
        }
        DedupKey(hash.finalize().into())
    }

    /// The key as the `x-dedup-key` header writes it: 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut hex = String::with_capacity(64);
        for byte in self.0 {
            hex.push(char::from(DIGITS[usize::from(byte >> 4)]));
            hex.push(char::from(DIGITS[usize::from(byte & 0xf)]));
        }
        hex
    }

    /// A key read back from an `x-dedup-key` header.
    pub fn from_hex(hex: &str) -> Option<DedupKey> {
        let bytes = hex.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let nibble = |c: u8| char::from(c).to_digit(16).map(|d| d as u8);
        let mut key = [0u8; 32];
        for (byte, pair) in key.iter_mut().zip(bytes.chunks_exact(2)) {
            *byte = nibble(pair[0])? << 4 | nibble(pair[1])?;
        }
        Some(DedupKey(key))
    }
}

/// `n` in decimal ASCII, written at the end of `buffer`.
fn decimal(mut n: usize, buffer: &mut [u8; 20]) -> &[u8] {
    let mut start = buffer.len();
    loop {
        start -= 1;
        buffer[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buffer[start..];
        }
    }
}

/// The keys accepted within the window, and those being published now.
pub struct Dedup {
    window: Duration,
    state: Mutex<State>,
    caught_up: AtomicBool,
}

#[derive(Default)]
struct State {
    keys: HashMap<DedupKey, Seen>,
    /// Seen keys in the order they were noted, for expiry.
    order: VecDeque<(SystemTime, DedupKey)>,
}

enum Seen {
    /// Being published: wait for its sender to drop, then look again.
    InFlight(watch::Receiver<()>),
    /// Durable, as this message.
    Done { id: Uuid, at: SystemTime },
}

/// What [`Dedup::claim`] decided.
pub enum Claim<'a> {
    /// A new event: publish it, then [`Claimed::durable`].
    New(Claimed<'a>),
    /// A retry of this message, which is durable.
    Duplicate(Uuid),
}

/// A key being published by this request. Dropped without
/// [`Claimed::durable`], it is forgotten, and a waiting retry is published.
pub struct Claimed<'a> {
    dedup: &'a Dedup,
    key: DedupKey,
    /// Dropped with the claim: wakes the retries waiting on it.
    _in_flight: watch::Sender<()>,
    durable: bool,
}

impl Dedup {
    /// `None` when `window` is zero: the check is off.
    pub fn new(window: Duration) -> Option<Dedup> {
        (!window.is_zero()).then(|| Dedup {
            window,
            state: Mutex::default(),
            caught_up: AtomicBool::new(false),
        })
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    /// Whether the follower has read the history up to a moment ago.
    pub fn caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }

    /// Claims `key` for a publish, unless it was accepted within the window.
    /// Waits while another request is publishing the same key.
    pub async fn claim(&self, key: &DedupKey) -> Claim<'_> {
        loop {
            let mut waiting = {
                let mut state = self.lock();
                let now = SystemTime::now();
                state.expire(now, self.window);
                match state.keys.entry(*key) {
                    Entry::Occupied(seen) => match seen.get() {
                        Seen::Done { id, at } if self.within(*at, now) => {
                            return Claim::Duplicate(*id);
                        }
                        Seen::InFlight(waiting) => waiting.clone(),
                        Seen::Done { .. } => {
                            let (sender, receiver) = watch::channel(());
                            *seen.into_mut() = Seen::InFlight(receiver);
                            return Claim::New(self.claimed(key, sender));
                        }
                    },
                    Entry::Vacant(vacant) => {
                        let (sender, receiver) = watch::channel(());
                        vacant.insert(Seen::InFlight(receiver));
                        return Claim::New(self.claimed(key, sender));
                    }
                }
            };
            // Ends when the claim is dropped, whatever its outcome.
            let _ = waiting.changed().await;
        }
    }

    fn claimed(&self, key: &DedupKey, sender: watch::Sender<()>) -> Claimed<'_> {
        Claimed {
            dedup: self,
            key: *key,
            _in_flight: sender,
            durable: false,
        }
    }

    /// Notes a key read back from the history, unless it is known already.
    pub fn remember(&self, key: DedupKey, id: Uuid, at: SystemTime) {
        let now = SystemTime::now();
        if !self.within(at, now) {
            return;
        }
        let mut state = self.lock();
        if let Entry::Vacant(vacant) = state.keys.entry(key) {
            vacant.insert(Seen::Done { id, at });
            state.order.push_back((at, key));
            state.expire(now, self.window);
        }
    }

    /// Keys held now, in flight or seen.
    pub fn len(&self) -> usize {
        self.lock().keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn within(&self, at: SystemTime, now: SystemTime) -> bool {
        now.duration_since(at).unwrap_or_default() <= self.window
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps the window's keys of every relay on the stream until `stopping`
    /// turns true: from one window ago at start, then as they land.
    pub async fn follow(
        self: Arc<Self>,
        broker: broker::Broker,
        stream: String,
        stopping: watch::Receiver<bool>,
    ) {
        history::follow(&*self, broker, stream, stopping).await;
    }
}

impl history::Follower for Dedup {
    const WHAT: &'static str = "dedup keys";
    const MEANWHILE: &'static str = "retries of webhooks accepted before a restart, or by another relay, are not recognised meanwhile";
    const CONNECTION: &'static str = "hookrelay-dedup";

    fn caught_up_flag(&self) -> &AtomicBool {
        &self.caught_up
    }

    async fn read(&self, connection: &lapin::Connection, stream: &str) -> anyhow::Result<()> {
        let end = history::last_event(connection, stream)
            .await?
            .map(|last| last.offset);
        let since = SystemTime::now() - self.window;
        let mut reader = Reader::open(
            connection,
            stream,
            Start::At(since),
            true,
            Filter::default(),
        )
        .await?;
        if end.is_none() {
            self.caught_up.store(true, Ordering::Release);
        }
        while let Some(event) = reader.next().await? {
            let headers = event.properties.headers().as_ref();
            let id = event
                .properties
                .message_id()
                .as_ref()
                .and_then(|id| id.as_str().parse().ok());
            let key = text(headers, DEDUP_KEY).and_then(|hex| DedupKey::from_hex(&hex));
            if let (Some(key), Some(id), Some(at)) = (key, id, time(headers, RECEIVED_AT)) {
                self.remember(key, id, at);
            }
            if end.is_some_and(|end| event.offset >= end) {
                self.caught_up.store(true, Ordering::Release);
            }
        }
        anyhow::bail!("the history read ended")
    }
}

impl Claimed<'_> {
    /// The event is durable (confirmed or spooled): retries are duplicates of it.
    pub fn durable(mut self, id: Uuid) {
        let mut state = self.dedup.lock();
        let at = SystemTime::now();
        state.keys.insert(self.key, Seen::Done { id, at });
        state.order.push_back((at, self.key));
        self.durable = true;
    }
}

impl Drop for Claimed<'_> {
    fn drop(&mut self) {
        if !self.durable {
            self.dedup.lock().keys.remove(&self.key);
        }
    }
}

impl State {
    /// Forgets the seen keys older than the window, and the oldest beyond
    /// [`MAX_KEYS`]. A key in flight is never forgotten here.
    fn expire(&mut self, now: SystemTime, window: Duration) {
        while let Some((at, _)) = self.order.front() {
            let expired = now.duration_since(*at).unwrap_or_default() > window;
            if !expired && self.order.len() <= MAX_KEYS {
                break;
            }
            let Some((at, key)) = self.order.pop_front() else {
                break;
            };
            // Only the note it was: the key may have been claimed again since.
            if let Entry::Occupied(seen) = self.keys.entry(key)
                && matches!(seen.get(), Seen::Done { at: noted, .. } if *noted == at)
            {
                seen.remove();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(body: &str) -> Event {
        Event::parse(body.as_bytes()).unwrap()
    }

    const ACCOUNT: &str = r#"{"hook":"SyncAccount","user":{"id":"u1","loginName":"alice"},"account":{"id":"a1","provider":"bank"}}"#;

    fn key() -> DedupKey {
        DedupKey::of(&event(ACCOUNT), "app")
    }

    #[test]
    fn the_key_is_what_identifies_the_event_and_not_the_login_name() {
        let same = DedupKey::of(&event(&ACCOUNT.replace("alice", "bob")), "app");
        assert_eq!(key(), same);
        assert_eq!(key().to_hex().len(), 64);
        assert_eq!(DedupKey::from_hex(&key().to_hex()), Some(key()));
        assert_eq!(DedupKey::from_hex("not hex"), None);
        for other in [
            DedupKey::of(&event(ACCOUNT), "other-app"),
            DedupKey::of(&event(&ACCOUNT.replace("\"u1\"", "\"u2\"")), "app"),
            DedupKey::of(&event(&ACCOUNT.replace("\"a1\"", "\"a2\"")), "app"),
            DedupKey::of(&event(&ACCOUNT.replace("bank", "other bank")), "app"),
            DedupKey::of(
                &event(
                    &ACCOUNT
                        .replace("SyncAccount", "SyncError")
                        .replace("\"bank\"}", "\"bank\"},\"error\":\"LoginFailedError\""),
                ),
                "app",
            ),
        ] {
            assert_ne!(key(), other);
        }
    }

    #[test]
    fn the_key_is_the_documented_hash() {
        // The recipe of docs/src/consumer.md, spelled out: a consumer in
        // another language computes the same key.
        let mut hash = Sha256::new();
        hash.update(b"11:SyncAccount3:app2:u12:a14:bank0:");
        let expected: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(key().to_hex(), expected);
    }

    #[tokio::test]
    async fn a_key_is_a_duplicate_once_durable_and_only_within_the_window() {
        let dedup = Dedup::new(Duration::from_secs(60)).unwrap();
        let id = Uuid::now_v7();
        let Claim::New(claimed) = dedup.claim(&key()).await else {
            panic!("a first webhook is new");
        };
        claimed.durable(id);
        assert!(matches!(dedup.claim(&key()).await, Claim::Duplicate(first) if first == id));

        let old = SystemTime::now() - Duration::from_secs(120);
        let dedup = Dedup::new(Duration::from_secs(60)).unwrap();
        dedup.remember(key(), id, old);
        assert!(matches!(dedup.claim(&key()).await, Claim::New(_)));
        assert!(Dedup::new(Duration::ZERO).is_none());
    }

    #[tokio::test]
    async fn a_failed_publish_leaves_the_key_free() {
        let dedup = Dedup::new(Duration::from_secs(60)).unwrap();
        let Claim::New(claimed) = dedup.claim(&key()).await else {
            panic!("a first webhook is new");
        };
        drop(claimed);
        assert!(dedup.is_empty());
        assert!(matches!(dedup.claim(&key()).await, Claim::New(_)));
    }

    #[tokio::test]
    async fn a_retry_in_flight_waits_for_the_first_outcome() {
        let dedup = Arc::new(Dedup::new(Duration::from_secs(60)).unwrap());
        let Claim::New(first) = dedup.claim(&key()).await else {
            panic!("a first webhook is new");
        };
        let retry = {
            let dedup = dedup.clone();
            tokio::spawn(async move {
                match dedup.claim(&key()).await {
                    Claim::Duplicate(id) => Some(id),
                    Claim::New(_) => None,
                }
            })
        };
        tokio::task::yield_now().await;
        assert!(
            !retry.is_finished(),
            "the retry waits while the first is in flight"
        );
        let id = Uuid::now_v7();
        first.durable(id);
        assert_eq!(retry.await.unwrap(), Some(id));
    }

    #[tokio::test]
    async fn a_retry_in_flight_is_published_when_the_first_fails() {
        let dedup = Arc::new(Dedup::new(Duration::from_secs(60)).unwrap());
        let Claim::New(first) = dedup.claim(&key()).await else {
            panic!("a first webhook is new");
        };
        let retry = {
            let dedup = dedup.clone();
            tokio::spawn(async move { matches!(dedup.claim(&key()).await, Claim::New(_)) })
        };
        tokio::task::yield_now().await;
        drop(first);
        assert!(retry.await.unwrap(), "the retry is published itself");
    }
}
