//! `hookrelay replay`: puts dead letters back where they died, once the
//! consumer that rejected them is fixed.
//!
//! Safety rules, in the order they apply to one message:
//! - it is read with `basic.get` and stays unacknowledged, so a crash leaves it
//!   in the dead-letter queue (a duplicate is possible, a loss is not);
//! - by default it goes back to the queue it died in, through the default
//!   exchange, so only the consumer that failed sees it again; `--to-exchange`
//!   instead republishes to its original exchange and routing key;
//! - it is republished persistent, `mandatory`, with a publisher confirm, and
//!   the dead letter is acknowledged only after that confirm;
//! - messages that do not match, or fail, are held unacknowledged and requeued
//!   together at the end, so they keep their relative order;
//! - at most as many messages as the queue held at the start are visited, so a
//!   run never loops on its own output.

use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use lapin::Connection;
use serde::Serialize;

use crate::broker::Topology;
use crate::broker::{self, Outgoing, PublishError, browse};
use crate::config::{AmqpSettings, Settings};
use crate::dead_letter::{Death, replay_headers};
use crate::topic::TopicPattern;

/// What to replay, and where to.
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    /// The queue to read; the dead-letter queue when `None`.
    pub queue: Option<String>,
    pub to_exchange: bool,
    pub routing_key: Option<TopicPattern>,
    pub from_queue: Option<String>,
    /// As RabbitMQ spells it in `x-death`: `rejected`, `expired`, `maxlen`, `delivery_limit`.
    pub reason: Option<String>,
    pub limit: Option<usize>,
    pub dry_run: bool,
}

/// One visited message worth reporting (non-matching ones are only counted).
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub action: Action,
    pub message_id: Option<String>,
    /// The original routing key.
    pub routing_key: String,
    /// The queue it died in.
    pub queue: String,
    pub reason: String,
    pub deaths: i64,
    /// When it last died, RFC 3339.
    pub died_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Replayed,
    WouldReplay,
    Failed,
    /// No `x-death` record: left in place, reported.
    NoDeathRecord,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub replayed: usize,
    pub would_replay: usize,
    /// Visited and left in place: filtered out, or without a death record.
    pub skipped: usize,
    pub failed: usize,
    /// Messages in the queue when the run ended.
    pub left: u32,
}

/// Runs one replay; `report` sees each entry as it happens. A message that
/// cannot be replayed is counted in `failed`, not returned as an error.
pub async fn replay(
    settings: &Settings,
    options: &ReplayOptions,
    mut report: impl FnMut(&Entry),
) -> anyhow::Result<Summary> {
    let amqp = &settings.amqp;
    let name = amqp.tool_connection_name("hookrelay-replay");
    let connection = broker::connect(amqp, name).await?;
    let queue = options
        .queue
        .clone()
        .unwrap_or_else(|| settings.topology().dead_letter_queue().to_owned());
    let result = replay_on(&connection, amqp, &queue, options, &mut report).await;
    crate::broker::close(&connection, "replay done").await;
    result
}

async fn replay_on(
    connection: &Connection,
    amqp: &AmqpSettings,
    queue: &str,
    options: &ReplayOptions,
    report: &mut impl FnMut(&Entry),
) -> anyhow::Result<Summary> {
    let (reader, publisher) = browse::reader_and_publisher(connection).await?;
    let at_start = browse::depth(&reader, queue).await?;
    let topology = Topology::new(&amqp.exchange, &[]);
    let destination = match options.to_exchange {
        true => Destination::Exchange {
            entry: topology.entry_exchange(),
            topic: topology.exchange(),
        },
        false => Destination::Queue,
    };

    let mut summary = Summary::default();
    let mut last_held = None;
    for _ in 0..at_start {
        if options
            .limit
            .is_some_and(|limit| summary.replayed + summary.would_replay >= limit)
        {
            break;
        }
        let Some(delivery) = browse::next(&reader, queue).await? else {
            break;
        };
        let headers = delivery.properties.headers().as_ref();
        let message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.to_string());

        let Some(death) = Death::from_headers(headers) else {
            last_held = Some(delivery.delivery_tag);
            summary.skipped += 1;
            report(&Entry {
                action: Action::NoDeathRecord,
                message_id,
                routing_key: delivery.routing_key.to_string(),
                queue: queue.to_owned(),
                reason: String::new(),
                deaths: 0,
                died_at: None,
                detail: Some("no x-death header: left in place".to_owned()),
            });
            continue;
        };
        let mut entry = Entry {
            action: Action::WouldReplay,
            message_id,
            routing_key: death.original_routing_key.clone(),
            queue: death.queue.clone(),
            reason: death.reason.clone(),
            deaths: death.count,
            died_at: death.time.map(|secs| {
                humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs))
                    .to_string()
            }),
            detail: None,
        };
        if !selected(&death, options) {
            last_held = Some(delivery.delivery_tag);
            summary.skipped += 1;
            continue;
        }
        if options.dry_run {
            last_held = Some(delivery.delivery_tag);
            summary.would_replay += 1;
            report(&entry);
            continue;
        }

        let outgoing = replayed_message(&death, destination, delivery.data.into(), {
            let properties = delivery.properties.clone();
            let headers = replay_headers(properties.headers().as_ref(), &death);
            properties.with_headers(headers).with_delivery_mode(2)
        });
        entry.detail = Some(format!(
            "to exchange `{}` key `{}`",
            outgoing.exchange, outgoing.routing_key
        ));
        let sent = browse::forward(
            &publisher,
            &delivery.acker,
            &outgoing,
            amqp.confirm_timeout(),
            "the dead letter",
        )
        .await?;
        match sent {
            Ok(()) => {
                summary.replayed += 1;
                entry.action = Action::Replayed;
                report(&entry);
            }
            Err(err) => {
                last_held = Some(delivery.delivery_tag);
                summary.failed += 1;
                entry.action = Action::Failed;
                entry.detail = Some(err.to_string());
                report(&entry);
                // A channel error (e.g. a missing exchange) closes the channel:
                // nothing after it could be published either.
                if matches!(err, PublishError::Channel(_)) {
                    break;
                }
            }
        }
    }

    summary.left = browse::put_back(&reader, last_held, &publisher, queue).await?;
    Ok(summary)
}

fn selected(death: &Death, options: &ReplayOptions) -> bool {
    options
        .routing_key
        .as_ref()
        .is_none_or(|pattern| pattern.matches(&death.original_routing_key))
        && options
            .from_queue
            .as_ref()
            .is_none_or(|queue| *queue == death.queue)
        && options
            .reason
            .as_ref()
            .is_none_or(|reason| *reason == death.reason)
}

/// Where a replayed dead letter goes.
#[derive(Debug, Clone, Copy)]
enum Destination<'a> {
    /// Back to the queue it died in, alone (through the default exchange).
    Queue,
    /// Its original exchange and routing key. An event the relay published
    /// entered through the entry fanout; it goes to the topic exchange
    /// instead, which routes it the same way without a second copy in the
    /// history stream (and in watchers' queues).
    Exchange { entry: &'a str, topic: &'a str },
}

fn replayed_message(
    death: &Death,
    destination: Destination<'_>,
    body: Bytes,
    properties: lapin::BasicProperties,
) -> Outgoing {
    let (exchange, routing_key) = match destination {
        Destination::Exchange { entry, topic } => (
            if death.original_exchange == entry {
                topic.to_owned()
            } else {
                death.original_exchange.clone()
            },
            death.original_routing_key.clone(),
        ),
        Destination::Queue => (String::new(), death.queue.clone()),
    };
    Outgoing {
        exchange,
        routing_key,
        body,
        properties,
    }
}
