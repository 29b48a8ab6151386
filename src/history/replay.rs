//! `hookrelay replay --from-history`: sends events kept in the history again,
//! to one queue (say, a new consumer's, which should start with the last day
//! of `sync.error.*`), or through the topic exchange, so every queue bound to
//! the event's routing key gets it again.
//!
//! Each event is republished persistent, `mandatory`, with a publisher
//! confirm, with its `message_id` and headers, plus `x-replayed-from:
//! history` and `x-replay-count` one higher. The history itself is not
//! touched (nothing leaves a stream), and a replayed event does not enter it
//! a second time: it is published past the entry exchange.

use bytes::Bytes;
use lapin::types::{AMQPValue, FieldTable, LongString};
use serde::Serialize;

use super::{Filter, QUARANTINED, Reader, Recorded, STREAM_OFFSET, Start};
use crate::broker::{self, Outgoing, PublishError, browse, publish_confirmed};
use crate::config::Settings;
use crate::dead_letter::{ORIGINAL_EXCHANGE, ORIGINAL_ROUTING_KEY, REPLAY_COUNT, replay_count};

/// The header that says a message came back from the history.
pub const REPLAYED_FROM: &str = "x-replayed-from";

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
#[derive(Debug, Clone, Serialize)]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Replayed,
    WouldReplay,
    Failed,
    /// A quarantined body the history keeps for the record: not an event.
    Skipped,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub replayed: usize,
    pub would_replay: usize,
    pub failed: usize,
    pub skipped: usize,
}

/// Runs one replay from the history; `report` sees each event as it goes.
/// Stops at the first event RabbitMQ does not take, which is reported.
pub async fn replay(
    settings: &Settings,
    options: &Options,
    mut report: impl FnMut(&Sent),
) -> anyhow::Result<Summary> {
    let topology = settings.topology();
    let Some(stream) = topology.history_stream() else {
        anyhow::bail!(
            "the history is off ([history] enabled = false): there is nothing to replay from"
        );
    };
    let amqp = &settings.amqp;
    let connection =
        broker::connect(amqp, amqp.tool_connection_name("hookrelay-replay-history")).await?;
    let publisher = browse::confirming_channel(&connection).await?;
    let (exchange, queue) = match &options.destination {
        Destination::Queue(queue) => {
            browse::depth(&publisher, queue).await?;
            (String::new(), Some(queue.clone()))
        }
        Destination::Exchange => (topology.exchange().to_owned(), None),
    };

    let mut reader = Reader::open(
        &connection,
        stream,
        options.start,
        false,
        options.filter.clone(),
    )
    .await?;
    let mut summary = Summary::default();
    while options
        .limit
        .is_none_or(|limit| summary.replayed + summary.would_replay < limit)
    {
        let Some(event) = reader.next().await? else {
            break;
        };
        let mut sent = Sent {
            action: Action::WouldReplay,
            message_id: event.message_id(),
            routing_key: event.routing_key.clone(),
            received_at: event.received_at_text(),
            offset: event.offset,
            detail: None,
        };
        if event.routing_key == QUARANTINED {
            summary.skipped += 1;
            sent.action = Action::Skipped;
            sent.detail = Some(
                "a quarantined body, not an event: `replay --from-quarantine` sends on those \
                 that parse now"
                    .to_owned(),
            );
            report(&sent);
            continue;
        }
        if options.dry_run {
            summary.would_replay += 1;
            report(&sent);
            continue;
        }
        let outgoing = Outgoing {
            exchange: exchange.clone(),
            routing_key: queue.clone().unwrap_or_else(|| event.routing_key.clone()),
            properties: replayed_properties(&event, topology.entry_exchange()),
            body: Bytes::from(event.body),
        };
        match publish_confirmed(&publisher, &outgoing, amqp.confirm_timeout()).await {
            Ok(()) => {
                summary.replayed += 1;
                sent.action = Action::Replayed;
                report(&sent);
            }
            Err(err) => {
                summary.failed += 1;
                sent.action = Action::Failed;
                sent.detail = Some(err.to_string());
                report(&sent);
                if matches!(err, PublishError::Channel(_)) {
                    break;
                }
            }
        }
    }
    reader.close().await;
    crate::broker::close(&connection, "replay done").await;
    Ok(summary)
}

/// The event's properties, persistent, with the replay recorded in its
/// headers, and the route it first took (`x-original-exchange`: the entry
/// exchange it was published to; `x-original-routing-key`) unless an earlier
/// replay recorded it: sent to a queue through the default exchange, the
/// message's own routing key is then that queue's name, and consumers
/// dispatch on the original.
fn replayed_properties(event: &Recorded, entry_exchange: &str) -> lapin::BasicProperties {
    let mut headers = FieldTable::default();
    let kept = event.properties.headers().as_ref();
    for (key, value) in kept.map(|h| h.inner().iter()).into_iter().flatten() {
        // RabbitMQ's, on every message read from a stream; and ours, set below.
        if key.as_str() != STREAM_OFFSET && key.as_str() != REPLAY_COUNT {
            headers.insert(key.clone(), value.clone());
        }
    }
    headers.insert(
        REPLAY_COUNT.into(),
        AMQPValue::LongLongInt(replay_count(kept) + 1),
    );
    headers.insert(
        REPLAYED_FROM.into(),
        AMQPValue::LongString(LongString::from("history")),
    );
    if !headers.contains_key(ORIGINAL_ROUTING_KEY) {
        headers.insert(
            ORIGINAL_EXCHANGE.into(),
            AMQPValue::LongString(LongString::from(entry_exchange)),
        );
        headers.insert(
            ORIGINAL_ROUTING_KEY.into(),
            AMQPValue::LongString(LongString::from(event.routing_key.as_str())),
        );
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

    use super::*;

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
}
