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

use super::{Filter, Reader, Recorded, STREAM_OFFSET, Start};
use crate::broker::{self, Outgoing, PublishError, browse, publish_confirmed};
use crate::config::Settings;
use crate::dead_letter::REPLAY_COUNT;

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
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub replayed: usize,
    pub would_replay: usize,
    pub failed: usize,
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
        if options.dry_run {
            summary.would_replay += 1;
            report(&sent);
            continue;
        }
        let outgoing = Outgoing {
            exchange: exchange.clone(),
            routing_key: queue.clone().unwrap_or_else(|| event.routing_key.clone()),
            properties: replayed_properties(&event),
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
    let _ = connection.close(200, "replay done".into()).await;
    Ok(summary)
}

/// The event's properties, persistent, with the replay recorded in its headers.
fn replayed_properties(event: &Recorded) -> lapin::BasicProperties {
    let mut headers = FieldTable::default();
    let mut replays = 0;
    if let Some(kept) = event.properties.headers() {
        for (key, value) in kept.inner() {
            match key.as_str() {
                // RabbitMQ's, on every message read from a stream.
                STREAM_OFFSET => {}
                REPLAY_COUNT => {
                    if let AMQPValue::LongLongInt(n) = value {
                        replays = *n;
                    }
                }
                _ => {
                    headers.insert(key.clone(), value.clone());
                }
            }
        }
    }
    headers.insert(REPLAY_COUNT.into(), AMQPValue::LongLongInt(replays + 1));
    headers.insert(
        REPLAYED_FROM.into(),
        AMQPValue::LongString(LongString::from("history")),
    );
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

        let properties = replayed_properties(&event);

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
    }
}
