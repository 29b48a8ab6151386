//! `hookrelay replay --from-history`: sends events kept in the history again,
//! to one queue (say, a new consumer's, which should start with the last day
//! of `sync.error.*`), or through the topic exchange, so every queue bound to
//! the event's routing key gets it again.
//!
//! One `Pass` over the history stream: each event is republished with its
//! `message_id` and headers, plus `x-replayed-from: history`, `x-replay-count`
//! one higher and its route in `x-original-*`. The history itself is not
//! touched (nothing leaves a stream), and a replayed event does not enter it
//! a second time: it is published past the entry exchange. A quarantined body
//! the history keeps is skipped: it is not an event.

use bytes::Bytes;
use lapin::types::AMQPValue;
use schemars::JsonSchema;
use serde::Serialize;

use super::{Pass, Source, Step, Verdict};
use crate::broker::{self, Outgoing, Topology, browse};
use crate::config::Settings;
use crate::history::{Ends, Filter, QUARANTINED, Reader, Recorded, Start};
use crate::wire::changes::is_announced;
use crate::wire::death::replay_count;
use crate::wire::headers::{
    self, ORIGINAL_EXCHANGE, ORIGINAL_ROUTING_KEY, REPLAY_COUNT, REPLAYED_FROM, STREAM_OFFSET,
};

/// Where replayed events go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// One queue, through the default exchange.
    Queue(String),
    /// The topic exchange: every queue bound to the event's routing key.
    Exchange,
}

/// What to replay, and where to.
#[derive(Debug, Clone)]
pub struct Options {
    pub start: Start,
    pub filter: Filter,
    pub destination: Destination,
    pub limit: Option<usize>,
    pub dry_run: bool,
}

/// One event the run sent, would send, or failed to send.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[schemars(rename = "HistoryReplayed")]
pub struct Sent {
    pub action: Action,
    pub message_id: Option<String>,
    pub routing_key: String,
    pub received_at: Option<String>,
    /// Its place in the history stream.
    pub offset: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(rename = "HistoryReplayAction")]
pub enum Action {
    Replayed,
    WouldReplay,
    Failed,
    /// A quarantined body the history keeps for the record: not an event.
    Skipped,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[schemars(rename = "HistoryReplaySummary")]
pub struct Summary {
    pub replayed: usize,
    pub would_replay: usize,
    pub failed: usize,
    pub skipped: usize,
}

/// Runs one replay from the history; `report` sees each event as it goes.
///
/// ```no_run
/// # async fn run() -> anyhow::Result<()> {
/// use hookrelay::config::Settings;
/// use hookrelay::history::{Filter, Start};
/// use hookrelay::replay::history::{Destination, Options, replay};
///
/// let settings = Settings::load(Some("relay.toml".as_ref()))?;
/// // A new consumer's queue starts with the last day of login failures.
/// let options = Options {
///     start: Start::At(std::time::SystemTime::now() - std::time::Duration::from_secs(86_400)),
///     filter: Filter {
///         routing_keys: vec!["sync.error.LoginFailedError".parse()?],
///         ..Filter::default()
///     },
///     destination: Destination::Queue("reprompt-credentials".to_owned()),
///     limit: None,
///     dry_run: false,
/// };
/// let summary = replay(&settings, &options, |sent| println!("{sent:?}")).await?;
/// println!("replayed {}", summary.replayed);
/// # Ok(())
/// # }
/// ```
pub async fn replay(
    settings: &Settings,
    options: &Options,
    mut report: impl FnMut(&Sent),
) -> anyhow::Result<Summary> {
    let topology = Topology::of(settings);
    let Some(stream) = topology.history_stream() else {
        anyhow::bail!(
            "the history is off ([history] enabled = false): there is nothing to replay from"
        );
    };
    let pass = Pass {
        limit: options.limit,
        dry_run: options.dry_run,
        confirm_timeout: settings.amqp.confirm_timeout(),
    };
    let name = "hookrelay-replay-history";
    broker::with_tool_connection(&settings.amqp, name, async |connection| {
        let publisher = browse::confirming_channel(connection).await?;
        if let Destination::Queue(queue) = &options.destination {
            browse::depth(&publisher, queue).await?;
        }
        let reader = Reader::open(
            connection,
            stream,
            options.start,
            Ends::AtTheEnd,
            options.filter.clone(),
        )
        .await?;
        let mut source = HistorySource(reader);
        let decide = |event: &Recorded| decide(event, &options.destination, &topology);
        let tally = pass
            .run(&mut source, &publisher, decide, |mut sent, step| {
                sent.action = match step {
                    Step::Kept => Action::Skipped,
                    Step::WouldSend => Action::WouldReplay,
                    Step::Sent => Action::Replayed,
                    Step::Failed(err) => {
                        sent.detail = Some(err.to_string());
                        Action::Failed
                    }
                };
                report(&sent);
            })
            .await;
        source.0.close().await;
        let tally = tally?;
        Ok(Summary {
            replayed: tally.sent,
            would_replay: tally.would_send,
            failed: tally.failed,
            skipped: tally.kept,
        })
    })
    .await
}

/// The history as a pass's source: nothing leaves a stream, so nothing is
/// kept or taken.
struct HistorySource(Reader);

impl Source for HistorySource {
    type Item = Recorded;

    async fn next(&mut self) -> anyhow::Result<Option<Recorded>> {
        self.0.next().await
    }

    fn keep(&mut self, _: &Recorded) {}

    async fn taken(&mut self, _: Recorded) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Every event goes, as it was published; a quarantined body the history
/// keeps for the record stays.
fn decide(event: &Recorded, destination: &Destination, topology: &Topology) -> (Verdict, Sent) {
    let mut sent = Sent {
        action: Action::WouldReplay,
        message_id: event.message_id(),
        routing_key: event.routing_key.clone(),
        received_at: event.received_at_text(),
        offset: event.offset,
        detail: None,
    };
    if event.routing_key == QUARANTINED {
        sent.detail = Some(
            "a quarantined body, not an event: `replay --from-quarantine` sends on those that \
             parse now"
                .to_owned(),
        );
        return (Verdict::Keep, sent);
    }
    // An announcement goes back through the relay's own exchange (which
    // keeps a copy in the history: harmless, its cause is paid already), a
    // webhook through the topic exchange (not the entry fanout: no second
    // copy in the history).
    let announced = is_announced(&event.routing_key);
    let (exchange, routing_key) = match destination {
        Destination::Queue(queue) => (String::new(), queue.clone()),
        Destination::Exchange if announced => (
            topology.changes_exchange().to_owned(),
            event.routing_key.clone(),
        ),
        Destination::Exchange => (topology.exchange().to_owned(), event.routing_key.clone()),
    };
    let first_exchange = match announced {
        true => topology.changes_exchange(),
        false => topology.entry_exchange(),
    };
    let outgoing = Outgoing {
        exchange,
        routing_key,
        properties: replayed_properties(event, first_exchange),
        body: Bytes::from(event.body.clone()),
    };
    (Verdict::Send(Box::new(outgoing)), sent)
}

/// The event's properties, persistent, with the replay recorded in its
/// headers, and the route it first took (`x-original-exchange`: the
/// exchange it was published to; `x-original-routing-key`) unless an earlier
/// replay recorded it: sent to a queue through the default exchange, the
/// message's own routing key is then that queue's name, and consumers
/// dispatch on the original.
fn replayed_properties(event: &Recorded, first_exchange: &str) -> lapin::BasicProperties {
    let kept = event.properties.headers().as_ref();
    // The stream offset is RabbitMQ's, on every message read from a stream.
    let mut headers = headers::copied(kept, &[STREAM_OFFSET, REPLAY_COUNT]);
    headers.insert(
        REPLAY_COUNT.into(),
        AMQPValue::LongLongInt(replay_count(kept) + 1),
    );
    headers::set_text(&mut headers, REPLAYED_FROM, "history");
    if !is_announced(&event.routing_key) {
        super::every_events_headers(&mut headers, &event.body);
    }
    if !headers.contains_key(ORIGINAL_ROUTING_KEY) {
        headers::set_text(&mut headers, ORIGINAL_EXCHANGE, first_exchange);
        headers::set_text(&mut headers, ORIGINAL_ROUTING_KEY, &event.routing_key);
    }
    event
        .properties
        .clone()
        .with_headers(headers)
        .with_delivery_mode(2)
}

#[cfg(test)]
mod tests {
    use lapin::BasicProperties;
    use lapin::types::FieldTable;

    use super::*;
    use crate::event::Event;
    use crate::wire::dedup_key::DedupKey;
    use crate::wire::headers::{CLIENT_ID, DEDUP_KEY, TRACEPARENT};

    #[test]
    fn a_replayed_event_keeps_its_id_and_headers_and_says_where_it_came_from() {
        let mut headers = FieldTable::default();
        headers.insert("hook".into(), AMQPValue::LongString("SyncAccount".into()));
        headers.insert(STREAM_OFFSET.into(), AMQPValue::LongLongInt(41));
        headers.insert(REPLAY_COUNT.into(), AMQPValue::LongLongInt(1));
        let event = Recorded {
            offset: 41,
            routing_key: "sync.account".to_owned(),
            properties: BasicProperties::default()
                .with_message_id("id-1".into())
                .with_headers(headers),
            body: b"{}".to_vec(),
        };

        let properties = replayed_properties(&event, "hooks.in");

        assert_eq!(properties.message_id().as_ref().unwrap().as_str(), "id-1");
        assert_eq!(properties.delivery_mode(), &Some(2));
        let headers = properties.headers().as_ref().unwrap().inner();
        assert_eq!(headers["hook"], AMQPValue::LongString("SyncAccount".into()));
        assert_eq!(headers[REPLAY_COUNT], AMQPValue::LongLongInt(2));
        assert_eq!(
            headers[REPLAYED_FROM],
            AMQPValue::LongString("history".into())
        );
        assert!(!headers.contains_key(STREAM_OFFSET));
        assert_eq!(
            headers[ORIGINAL_ROUTING_KEY],
            AMQPValue::LongString("sync.account".into()),
            "sent to a queue, its routing key is the queue's: the original is kept"
        );
        assert_eq!(
            headers[ORIGINAL_EXCHANGE],
            AMQPValue::LongString("hooks.in".into())
        );
    }

    #[test]
    fn an_event_an_older_relay_accepted_is_replayed_with_every_events_headers() {
        let body =
            br#"{"hook":"SyncAccount","user":{"id":"u1"},"account":{"id":"a1","provider":"Bank"}}"#;
        let mut headers = FieldTable::default();
        headers.insert(CLIENT_ID.into(), AMQPValue::LongString("app".into()));
        let older = |routing_key: &str| Recorded {
            offset: 7,
            routing_key: routing_key.to_owned(),
            properties: BasicProperties::default().with_headers(headers.clone()),
            body: body.to_vec(),
        };

        let properties = replayed_properties(&older("sync.account"), "hooks.in");

        let headers = properties.headers().as_ref().unwrap().inner();
        let expected = DedupKey::of(&Event::parse(body).unwrap(), "app").to_hex();
        assert_eq!(headers[DEDUP_KEY], AMQPValue::LongString(expected.into()));
        let trace = headers::text(properties.headers().as_ref(), TRACEPARENT).unwrap();
        assert!(
            trace.starts_with("00-") && trace.ends_with("-01"),
            "{trace}"
        );
        // An account change has neither: the relay writes its own headers.
        let change = replayed_properties(&older("account.ok"), "hooks.changes");
        let change = change.headers().as_ref().unwrap().inner();
        assert!(!change.contains_key(DEDUP_KEY) && !change.contains_key(TRACEPARENT));
    }
}
