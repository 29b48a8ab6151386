//! `hookrelay replay`: puts dead letters back where they died, once the
//! consumer that rejected them is fixed; one `Pass` over the dead-letter
//! queue (or another), with the safety rules the pass keeps.
//!
//! By default a dead letter goes back to the queue it died in, through the
//! default exchange, so only the consumer that failed sees it again;
//! `--to-exchange` instead republishes it to its original exchange and routing
//! key. It keeps its id and headers, less RabbitMQ's, with `x-replay-count`
//! one higher and its original route in `x-original-*`. A message without a
//! death record is left in place and reported.

use schemars::JsonSchema;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use lapin::message::Delivery;
use serde::Serialize;

use super::{Pass, QueueSource, Step, Verdict};
use crate::broker::{self, Outgoing, Topology, browse};
use crate::config::Settings;
use crate::wire::death::{Death, replay_headers};
use crate::wire::topic::TopicPattern;

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
    /// Only these `message_id`s; empty: any.
    pub message_ids: Vec<String>,
    pub limit: Option<usize>,
    pub dry_run: bool,
}

/// One visited message worth reporting (non-matching ones are only counted).
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[schemars(rename = "DeadLetterReplayed")]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(rename = "DeadLetterAction")]
pub enum Action {
    Replayed,
    WouldReplay,
    Failed,
    /// No `x-death` record: left in place, reported.
    NoDeathRecord,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[schemars(rename = "DeadLetterReplaySummary")]
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
///
/// ```no_run
/// # async fn run() -> anyhow::Result<()> {
/// use hookrelay::config::Settings;
/// use hookrelay::replay::dead_letters::{ReplayOptions, replay};
///
/// let settings = Settings::load(Some("relay.toml".as_ref()))?;
/// // The login failures that died in reprompt-credentials, back to it.
/// let options = ReplayOptions {
///     routing_key: Some("sync.error.LoginFailedError".parse()?),
///     from_queue: Some("reprompt-credentials".to_owned()),
///     ..ReplayOptions::default()
/// };
/// let summary = replay(&settings, &options, |entry| println!("{entry:?}")).await?;
/// println!("replayed {}, failed {}", summary.replayed, summary.failed);
/// # Ok(())
/// # }
/// ```
pub async fn replay(
    settings: &Settings,
    options: &ReplayOptions,
    mut report: impl FnMut(&Entry),
) -> anyhow::Result<Summary> {
    let topology = Topology::of(settings);
    let queue = options
        .queue
        .clone()
        .unwrap_or_else(|| topology.dead_letter_queue().to_owned());
    let destination = match options.to_exchange {
        true => Destination::Exchange {
            entry: topology.entry_exchange(),
            topic: topology.exchange(),
        },
        false => Destination::Queue,
    };
    let pass = Pass {
        limit: options.limit,
        dry_run: options.dry_run,
        confirm_timeout: settings.amqp.confirm_timeout(),
    };
    broker::with_tool_connection(&settings.amqp, "hookrelay-replay", async |connection| {
        let mut source = QueueSource::open(connection, &queue, "the dead letter").await?;
        let publisher = browse::confirming_channel(connection).await?;
        let decide = |delivery: &Delivery| decide(delivery, &queue, options, destination);
        let tally = pass
            .run(&mut source, &publisher, decide, |entry, step| {
                if let Some(mut entry) = entry {
                    entry.action = match step {
                        Step::Kept => entry.action,
                        Step::WouldSend => Action::WouldReplay,
                        Step::Sent => Action::Replayed,
                        Step::Failed(err) => {
                            entry.detail = Some(err.to_string());
                            Action::Failed
                        }
                    };
                    report(&entry);
                }
            })
            .await?;
        Ok(Summary {
            replayed: tally.sent,
            would_replay: tally.would_send,
            skipped: tally.kept,
            failed: tally.failed,
            left: source.finish(&publisher).await?,
        })
    })
    .await
}

/// Whether to send a dead letter on, and the entry reported for it (none for
/// one filtered out: those are only counted).
fn decide(
    delivery: &Delivery,
    queue: &str,
    options: &ReplayOptions,
    destination: Destination<'_>,
) -> (Verdict, Option<Entry>) {
    let headers = delivery.properties.headers().as_ref();
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|id| id.to_string());
    if !options.message_ids.is_empty()
        && !message_id
            .as_ref()
            .is_some_and(|id| options.message_ids.contains(id))
    {
        return (Verdict::Keep, None);
    }
    let Some(death) = Death::from_headers(headers) else {
        let entry = Entry {
            action: Action::NoDeathRecord,
            message_id,
            routing_key: delivery.routing_key.to_string(),
            queue: queue.to_owned(),
            reason: String::new(),
            deaths: 0,
            died_at: None,
            detail: Some("no x-death header: left in place".to_owned()),
        };
        return (Verdict::Keep, Some(entry));
    };
    if !selected(&death, options) {
        return (Verdict::Keep, None);
    }
    let properties = delivery.properties.clone();
    let mut replayed = replay_headers(properties.headers().as_ref(), &death);
    // An event (an account change carries no `hook`) an older relay published.
    if replayed.contains_key(crate::wire::headers::HOOK) {
        super::every_events_headers(&mut replayed, &delivery.data);
    }
    let outgoing = replayed_message(
        &death,
        destination,
        delivery.data.clone().into(),
        properties.with_headers(replayed).with_delivery_mode(2),
    );
    let entry = Entry {
        action: Action::WouldReplay,
        message_id,
        routing_key: death.original_routing_key.clone(),
        queue: death.queue.clone(),
        reason: death.reason.clone(),
        deaths: death.count,
        died_at: death.time.map(|secs| {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
        }),
        detail: (!options.dry_run).then(|| {
            format!(
                "to exchange `{}` key `{}`",
                outgoing.exchange, outgoing.routing_key
            )
        }),
    };
    (Verdict::Send(Box::new(outgoing)), Some(entry))
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
