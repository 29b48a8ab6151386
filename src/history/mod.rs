//! The event history: with `[history]` on, every event the relay publishes
//! also lands in the RabbitMQ stream `<exchange>.history` (bound to the entry
//! fanout, so routing does not change), kept for `history.max_age` and
//! `history.max_bytes`. This module reads it back, for `hookrelay events`,
//! `hookrelay tail` and `hookrelay replay --from-history`
//! ([`replay::history`](crate::replay::history)).
//!
//! A stream is read over AMQP 0-9-1 with a consumer that names its starting
//! point (`x-stream-offset`: `first`, `next`, or a timestamp), a prefetch and
//! manual acks (an ack only grants credit: nothing leaves a stream). RabbitMQ
//! 3.10 cannot filter a stream on the server side, so the filters are applied
//! here, on headers the relay wrote (`user-id`, `account-id`, `x-client-id`),
//! the routing key and `x-received-at`: a read costs the stream from its
//! starting point to its end.
//!
//! Without `follow`, a read ends at the end of the stream as it was when the
//! read began: the offset of its last message is looked up first (a consumer
//! at `last` gets the last chunk), and the read waits for it however long
//! RabbitMQ pauses, unless nothing comes for [`STALL`]: then it fails, saying
//! where it stopped, rather than end as if it had read everything. With
//! `follow`, it goes on with new events.

mod follow;
pub mod index;
mod search;

pub(crate) use follow::{Follower, follow};
pub use search::{Page, newest};

use std::str::FromStr;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, Consumer};

use crate::wire::headers::{
    self, ACCOUNT_ID, CLIENT_ID, QUARANTINE_REASON, RECEIVED_AT, STREAM_OFFSET, USER_ID, text,
};
use crate::wire::topic::TopicPattern;

/// Deliveries RabbitMQ may send ahead of our acks.
const PREFETCH: u16 = 1000;
/// Acknowledge (grant credit) after this many deliveries, all at once.
const ACK_EVERY: u64 = 250;
/// How long a read without `follow` waits for the next delivery before it
/// gives up, short of the end it knows of.
pub const STALL: Duration = Duration::from_secs(60);
/// How long a one-off read (events, replay, audit) waits for the first
/// message of the stream's last chunk. AMQP has no "end of stream" signal,
/// so only an empty stream waits it out; a busy broker that answers late
/// must not be taken for an empty one (a read would then print nothing).
pub(crate) const END_WAIT_ONCE: Duration = Duration::from_secs(5);
/// The same wait for the follower, which reads on whatever it decides: a
/// late answer only makes it say "caught up" a moment early.
pub(crate) const END_WAIT_FOLLOWING: Duration = Duration::from_secs(1);
/// How long the rest of the last chunk may lag behind its first message:
/// RabbitMQ sends a chunk in one go, up to the prefetch (the read
/// acknowledges as it goes for the rest), so this is mostly the client's own
/// delay in a loaded process.
const LAST_CHUNK_GAP: Duration = Duration::from_millis(500);
/// How long the last chunk is read at most, from its first message.
const LAST_CHUNK_AT_MOST: Duration = Duration::from_secs(3);
/// The routing key events shows for a quarantined body (a 422'd webhook).
pub const QUARANTINED: &str = "quarantine";
/// The routing key a relay's note shows (see [`crate::audit::notes`]).
pub const RELAY_NOTE: &str = "relay.note";

/// Where in the stream a read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The oldest event kept.
    First,
    /// The next event to arrive.
    Next,
    /// The last chunk of events written (one or more).
    Last,
    /// The first event written at or after this time.
    At(SystemTime),
    /// The event at this offset (or the first after it the stream holds).
    Offset(u64),
}

/// Which events a read hands over; every condition set must hold.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Any of these topic patterns on the routing key; empty: any key.
    pub routing_keys: Vec<TopicPattern>,
    pub user_id: Option<String>,
    pub account_id: Option<String>,
    pub client_id: Option<String>,
    /// Received by the relay at or after this time.
    pub since: Option<SystemTime>,
    /// Received by the relay at or before this time.
    pub until: Option<SystemTime>,
    /// Any of these `message_id`s; empty: any.
    pub message_ids: Vec<String>,
    /// The relays' notes about their numbers too (`hookrelay audit` reads
    /// them); no reader but the audit's wants them.
    pub notes: bool,
}

/// A point in time as an operator writes it: RFC 3339
/// (`2026-11-28T06:00:00Z`) or a duration ago (`90m`, `2h`, `7d`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PointInTime(pub SystemTime);

/// A string that is neither RFC 3339 nor a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "expected a time (RFC 3339, e.g. 2026-11-28T06:00:00Z) or a duration ago (e.g. 90m, 2h, 7d)"
)]
pub struct InvalidTime;

/// One event read from the history.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Its place in the stream.
    pub offset: u64,
    pub routing_key: String,
    pub properties: BasicProperties,
    pub body: Vec<u8>,
}

/// A read of the history, one event at a time.
pub struct Reader {
    channel: Channel,
    consumer: Consumer,
    filter: Filter,
    follow: bool,
    stream: String,
    /// The offset of the last event when the read began; `None` when the
    /// stream was empty (then only `follow` reads anything).
    end: Option<u64>,
    /// The offset of the last delivery.
    seen: Option<u64>,
    /// Deliveries so far, filtered out or not.
    read: u64,
    done: bool,
    /// Whether the read starts at a time: RabbitMQ sends nothing when every
    /// chunk was stored before it.
    starts_at_a_time: bool,
    unacked: u64,
    last_tag: u64,
}

/// Where a read of the history stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ends {
    /// At the stream's end as it is when the read starts.
    AtTheEnd,
    /// Never: it waits for new events (until `filter.until`, if set).
    Following,
}

impl Reader {
    /// Starts reading `stream` at `start`, to its end as it is now or
    /// following it, as `ends` says.
    ///
    /// ```no_run
    /// # async fn run() -> anyhow::Result<()> {
    /// use hookrelay::broker::{Topology, with_tool_connection};
    /// use hookrelay::config::Settings;
    /// use hookrelay::history::{Ends, Filter, Reader, Start};
    ///
    /// let settings = Settings::load(Some("relay.toml".as_ref()))?;
    /// let topology = Topology::of(&settings);
    /// let stream = topology.history_stream().expect("[history] is on");
    /// // Did we get the webhook for account a-7?
    /// let filter = Filter { account_id: Some("a-7".to_owned()), ..Filter::default() };
    /// with_tool_connection(&settings.amqp, "my-console", async |connection| {
    ///     let mut reader = Reader::open(connection, stream, Start::First, Ends::AtTheEnd, filter).await?;
    ///     while let Some(event) = reader.next().await? {
    ///         println!("{:?} {} {:?}", event.message_id(), event.routing_key, event.received_at());
    ///     }
    ///     reader.close().await;
    ///     Ok(())
    /// })
    /// .await
    /// # }
    /// ```
    pub async fn open(
        connection: &Connection,
        stream: &str,
        start: Start,
        ends: Ends,
        filter: Filter,
    ) -> anyhow::Result<Reader> {
        let follow = ends == Ends::Following;
        let last = if follow {
            None
        } else {
            last_event(connection, stream, END_WAIT_ONCE).await?
        };
        // A start after the last event: RabbitMQ sends nothing, so there is
        // nothing to wait for. (A start at a time after the last chunk was
        // stored is found out by the first wait: see `next_delivery`. The
        // events' own times cannot tell: a drained spool or an announcement
        // stores old times late.)
        let after_the_end = match (start, &last) {
            (Start::Offset(offset), Some(last)) => last.offset < offset,
            _ => false,
        };
        let channel = connection
            .create_channel()
            .await
            .context("cannot open a channel")?;
        let consumer = consume(&channel, stream, start).await?;
        Ok(Reader {
            channel,
            consumer,
            filter,
            follow,
            stream: stream.to_owned(),
            done: !follow && (last.is_none() || after_the_end),
            starts_at_a_time: matches!(start, Start::At(_)),
            end: last.map(|last| last.offset),
            seen: None,
            read: 0,
            unacked: 0,
            last_tag: 0,
        })
    }

    /// How many events were read so far, whether they passed the filter or not.
    pub fn read(&self) -> u64 {
        self.read
    }

    /// The next event that passes the filter; `None` at the end.
    pub async fn next(&mut self) -> anyhow::Result<Option<Recorded>> {
        while !self.done {
            let Some(delivery) = self.next_delivery().await? else {
                self.done = true;
                break;
            };
            let offset = offset(delivery.properties.headers().as_ref()).unwrap_or(0);
            self.seen = Some(offset);
            if let Some(end) = self.end {
                if offset > end {
                    self.done = true;
                    break;
                }
                self.done = offset == end;
            }
            let headers = delivery.properties.headers().as_ref();
            let quarantined = headers.is_some_and(|h| h.inner().contains_key(QUARANTINE_REASON));
            let note = crate::audit::notes::is_note(headers);
            // Events read: a relay's note is not one.
            self.read += u64::from(!note);
            let recorded = Recorded {
                offset,
                // A quarantined body's copy and a relay's note came through
                // the default exchange, their routing key the stream's name:
                // say what each is instead.
                routing_key: match (quarantined, note) {
                    (true, _) => QUARANTINED.to_owned(),
                    (false, true) => RELAY_NOTE.to_owned(),
                    (false, false) => delivery.routing_key.to_string(),
                },
                properties: delivery.properties,
                body: delivery.data,
            };
            if self.filter.admits(&recorded) {
                return Ok(Some(recorded));
            }
        }
        Ok(None)
    }

    /// The next delivery, acknowledging in batches; `None` when there is
    /// nothing more to wait for.
    async fn next_delivery(&mut self) -> anyhow::Result<Option<lapin::message::Delivery>> {
        let next = self.consumer.next();
        let delivery = if self.follow {
            match self.filter.until {
                Some(until) => {
                    let left = until.duration_since(SystemTime::now()).unwrap_or_default();
                    match tokio::time::timeout(left, next).await {
                        Ok(delivery) => delivery,
                        Err(_) => return Ok(None),
                    }
                }
                None => next.await,
            }
        } else if self.starts_at_a_time && self.seen.is_none() {
            // Attached after every chunk (each stored before the start's
            // time): nothing comes, as from an empty stream.
            match tokio::time::timeout(END_WAIT_ONCE, next).await {
                Ok(delivery) => delivery,
                Err(_) => return Ok(None),
            }
        } else {
            match tokio::time::timeout(STALL, next).await {
                Ok(delivery) => delivery,
                Err(_) => return stalled(&self.stream, self.seen, self.end),
            }
        };
        let Some(delivery) = delivery else {
            anyhow::bail!("RabbitMQ ended the stream consumer");
        };
        let delivery = delivery.context("the connection to RabbitMQ was lost")?;
        self.last_tag = delivery.delivery_tag;
        self.unacked += 1;
        if self.unacked >= ACK_EVERY {
            self.ack().await?;
        }
        Ok(Some(delivery))
    }

    async fn ack(&mut self) -> anyhow::Result<()> {
        if self.unacked > 0 {
            self.channel
                .basic_ack(self.last_tag, BasicAckOptions { multiple: true })
                .await
                .context("cannot acknowledge stream deliveries")?;
            self.unacked = 0;
        }
        Ok(())
    }

    pub async fn close(mut self) {
        let _ = self.ack().await;
        crate::broker::close_channel(&self.channel, "history read").await;
    }
}

impl Filter {
    /// Whether `event` passes every condition that is set.
    pub fn admits(&self, event: &Recorded) -> bool {
        let headers = event.properties.headers().as_ref();
        let same = |wanted: &Option<String>, key: &str| {
            wanted
                .as_ref()
                .is_none_or(|wanted| text(headers, key).as_deref() == Some(wanted.as_str()))
        };
        let received = || event.received_at();
        (self.notes || event.routing_key != RELAY_NOTE)
            && (self.routing_keys.is_empty()
                || self
                    .routing_keys
                    .iter()
                    .any(|p| p.matches(&event.routing_key)))
            && same(&self.user_id, USER_ID)
            && same(&self.account_id, ACCOUNT_ID)
            && same(&self.client_id, CLIENT_ID)
            && (self.message_ids.is_empty()
                || event
                    .properties
                    .message_id()
                    .as_ref()
                    .is_some_and(|id| self.message_ids.iter().any(|m| m == id.as_str())))
            && self
                .since
                .is_none_or(|since| received().is_some_and(|at| at >= since))
            && self
                .until
                .is_none_or(|until| received().is_some_and(|at| at <= until))
    }
}

impl Recorded {
    pub fn message_id(&self) -> Option<String> {
        self.properties
            .message_id()
            .as_ref()
            .map(|id| id.to_string())
    }

    /// When the relay received the webhook (`x-received-at`).
    pub fn received_at(&self) -> Option<SystemTime> {
        headers::time(self.properties.headers().as_ref(), RECEIVED_AT)
    }

    /// `x-received-at` as written.
    pub fn received_at_text(&self) -> Option<String> {
        text(self.properties.headers().as_ref(), RECEIVED_AT)
    }
}

impl FromStr for PointInTime {
    type Err = InvalidTime;

    fn from_str(s: &str) -> Result<PointInTime, InvalidTime> {
        if let Ok(at) = humantime::parse_rfc3339_weak(s) {
            return Ok(PointInTime(at));
        }
        let ago = humantime::parse_duration(s).map_err(|_| InvalidTime)?;
        SystemTime::now()
            .checked_sub(ago)
            .map(PointInTime)
            .ok_or(InvalidTime)
    }
}

/// Starts a stream consumer on `channel` (a prefetch is required) at `start`.
async fn consume(channel: &Channel, stream: &str, start: Start) -> anyhow::Result<Consumer> {
    channel
        .basic_qos(PREFETCH, BasicQosOptions { global: false })
        .await
        .context("cannot set a prefetch")?;
    let mut arguments = FieldTable::default();
    let offset = match start {
        Start::First => AMQPValue::LongString("first".into()),
        Start::Next => AMQPValue::LongString("next".into()),
        Start::Last => AMQPValue::LongString("last".into()),
        Start::At(at) => AMQPValue::Timestamp(
            at.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        ),
        Start::Offset(offset) => AMQPValue::LongLongInt(i64::try_from(offset).unwrap_or(i64::MAX)),
    };
    arguments.insert(STREAM_OFFSET.into(), offset);
    channel
        .basic_consume(
            ShortString::from(stream),
            "hookrelay-history".into(),
            BasicConsumeOptions::default(),
            arguments,
        )
        .await
        .with_context(|| {
            format!("cannot read the history stream {stream} (is [history] enabled on the relay?)")
        })
}

/// The last event in `stream` when a read began.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LastEvent {
    pub(crate) offset: u64,
}

/// The last event in `stream`, or `None` when nothing came within
/// `first_within` (an empty stream): a consumer at `last` gets the whole
/// last chunk, whose highest offset it is.
pub(crate) async fn last_event(
    connection: &Connection,
    stream: &str,
    first_within: Duration,
) -> anyhow::Result<Option<LastEvent>> {
    let channel = connection
        .create_channel()
        .await
        .context("cannot open a channel")?;
    let mut consumer = consume(&channel, stream, Start::Last).await?;
    let mut last: Option<LastEvent> = None;
    let mut wait = first_within;
    let mut unacked = 0;
    // Under a steady flow, new events keep coming within the gap: the end is
    // wherever the read is after a while (later than the end at the start,
    // which only makes the read go a little further).
    let mut deadline = None;
    while let Ok(Some(delivery)) = tokio::time::timeout(wait, consumer.next()).await {
        let delivery = delivery.context("the connection to RabbitMQ was lost")?;
        // A chunk may hold more than the prefetch: keep the credit flowing.
        unacked += 1;
        if unacked >= ACK_EVERY {
            delivery
                .acker
                .ack(BasicAckOptions { multiple: true })
                .await
                .context("cannot acknowledge stream deliveries")?;
            unacked = 0;
        }
        if let Some(offset) = offset(delivery.properties.headers().as_ref()) {
            last = Some(LastEvent {
                offset: last.map_or(offset, |last| last.offset.max(offset)),
            });
        }
        let deadline = *deadline.get_or_insert_with(|| Instant::now() + LAST_CHUNK_AT_MOST);
        wait = LAST_CHUNK_GAP.min(deadline.saturating_duration_since(Instant::now()));
    }
    crate::broker::close_channel(&channel, "found the end").await;
    Ok(last)
}

/// Nothing came for [`STALL`]: the end, if the read had reached it (or knew
/// of none); else an error that says where it stopped.
fn stalled<T>(stream: &str, seen: Option<u64>, end: Option<u64>) -> anyhow::Result<Option<T>> {
    match end {
        Some(end) if seen.is_none_or(|seen| seen < end) => anyhow::bail!(
            "the read of {stream} stalled: RabbitMQ sent nothing for {}s, at offset {} of {end}. \
             What was printed is only part of it; run it again (narrow it with --since/--until)",
            STALL.as_secs(),
            seen.map_or_else(|| "none read yet".to_owned(), |seen| seen.to_string()),
        ),
        _ => Ok(None),
    }
}

fn offset(headers: Option<&FieldTable>) -> Option<u64> {
    u64::try_from(headers::integer(headers, STREAM_OFFSET)?).ok()
}

#[cfg(test)]
mod tests {
    use lapin::types::LongString;

    use super::*;

    fn event(key: &str, account: &str, received_at: &str) -> Recorded {
        let mut headers = FieldTable::default();
        for (name, value) in [
            ("user-id", "u-1"),
            ("account-id", account),
            ("x-client-id", "app"),
            ("x-received-at", received_at),
        ] {
            headers.insert(name.into(), AMQPValue::LongString(LongString::from(value)));
        }
        Recorded {
            offset: 0,
            routing_key: key.to_owned(),
            properties: BasicProperties::default().with_headers(headers),
            body: Vec::new(),
        }
    }

    fn at(rfc3339: &str) -> SystemTime {
        humantime::parse_rfc3339(rfc3339).unwrap()
    }

    #[test]
    fn a_read_that_stalls_short_of_its_end_fails_saying_where() {
        let err = stalled::<()>("hooks.history", Some(41), Some(99)).unwrap_err();
        assert!(err.to_string().contains("at offset 41 of 99"), "{err}");
        assert!(stalled::<()>("hooks.history", None, Some(0)).is_err());
        assert!(
            stalled::<()>("hooks.history", Some(99), Some(99))
                .unwrap()
                .is_none()
        );
        assert!(
            stalled::<()>("hooks.history", None, None)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn every_condition_set_must_hold() {
        let login_failed = event(
            "sync.error.LoginFailedError",
            "a-7",
            "2026-11-28T06:00:00.000Z",
        );
        let cases = [
            (Filter::default(), true),
            (
                Filter {
                    routing_keys: vec!["sync.error.*".parse().unwrap()],
                    ..Filter::default()
                },
                true,
            ),
            (
                Filter {
                    routing_keys: vec!["sync.account".parse().unwrap()],
                    ..Filter::default()
                },
                false,
            ),
            (
                Filter {
                    routing_keys: vec!["sync.account".parse().unwrap(), "sync.#".parse().unwrap()],
                    ..Filter::default()
                },
                true,
            ),
            (
                Filter {
                    account_id: Some("a-7".to_owned()),
                    user_id: Some("u-1".to_owned()),
                    client_id: Some("app".to_owned()),
                    ..Filter::default()
                },
                true,
            ),
            (
                Filter {
                    account_id: Some("a-8".to_owned()),
                    ..Filter::default()
                },
                false,
            ),
            (
                Filter {
                    since: Some(at("2026-11-28T06:00:00Z")),
                    until: Some(at("2026-11-28T06:00:00Z")),
                    ..Filter::default()
                },
                true,
            ),
            (
                Filter {
                    since: Some(at("2026-11-28T06:00:01Z")),
                    ..Filter::default()
                },
                false,
            ),
            (
                Filter {
                    until: Some(at("2026-11-28T05:59:59Z")),
                    ..Filter::default()
                },
                false,
            ),
        ];
        for (filter, admitted) in cases {
            assert_eq!(filter.admits(&login_failed), admitted, "{filter:?}");
        }
    }

    #[test]
    fn a_point_in_time_is_rfc3339_or_a_duration_ago() {
        assert_eq!(
            "2026-11-28T06:00:00Z".parse::<PointInTime>().unwrap(),
            PointInTime(at("2026-11-28T06:00:00Z"))
        );
        let ago = "2h".parse::<PointInTime>().unwrap().0;
        let expected = SystemTime::now() - Duration::from_secs(7200);
        let off = expected
            .duration_since(ago)
            .unwrap_or_else(|e| e.duration());
        assert!(off < Duration::from_secs(5), "{off:?}");
        assert!("yesterday".parse::<PointInTime>().is_err());
    }
}
