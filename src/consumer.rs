//! A consumer of hookrelay's events for apps written in Rust: connect with the
//! relay's own configuration, get each event typed, say what became of it.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use hookrelay::config::Settings;
//! use hookrelay::consumer::{Consumer, Outcome, Received};
//!
//! let settings = Settings::load(Some("relay.toml".as_ref()))?;
//! Consumer::new(&settings, "reprompt-credentials")?
//!     .run(
//!         |incoming| async move {
//!             match &incoming.received {
//!                 Received::Event(event) => match event.error_code().map(|code| code.as_str()) {
//!                     Some("LoginFailedError") => Outcome::Ack, // ask the user to reconnect
//!                     _ => Outcome::DeadLetter("not for this consumer".to_owned()),
//!                 },
//!                 // A queue bound to `account.needs_reconnect`: asked once, not daily.
//!                 Received::AccountChange(change) => {
//!                     println!("ask user {} to reconnect {}", change.user_id, change.account_id);
//!                     Outcome::Ack
//!                 }
//!             }
//!         },
//!         tokio::signal::ctrl_c(),
//!     )
//!     .await
//! # }
//! ```
//!
//! What it does for the handler, following the protocol the book documents (docs/src/consumer.md)
//! for consumers in any language:
//! - declares the relay's topology (idempotently: relay or consumer may start
//!   first), with the queue's retry tiers `<name>.retry.<n>`;
//! - consumes with a prefetch and manual acks, and runs up to that many
//!   handlers at once;
//! - [`Outcome::Ack`]: acknowledges. [`Outcome::Retry`]: publishes a copy to
//!   the next retry tier (persistent, confirmed, `x-retry-attempt` one higher,
//!   the original route kept), then acknowledges; past the last tier it
//!   rejects instead, so RabbitMQ dead-letters it. [`Outcome::DeadLetter`]:
//!   rejects without requeue;
//! - a handler that panics gets its message back (`basic.nack` with requeue);
//!   on a quorum queue RabbitMQ dead-letters it after `delivery_limit`;
//! - reconnects by itself; on shutdown stops taking messages and lets the
//!   handlers in flight finish.
//!
//! Not de-duplication: delivery is at least once, and only the handler knows
//! where its work is recorded, so it records `message_id` there, in the same
//! transaction, and acks an id it already has.

use std::collections::HashMap;
use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use bytes::Bytes;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    BasicRejectOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};

use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::broker::{self, Outgoing, Topology, publish_confirmed};
use crate::config::{QueueSettings, Settings};
use crate::event::Event;
use crate::traces::consumer_context;
use crate::wire::account::{self, AccountChange};
use crate::wire::death::replay_count;
use crate::wire::envelope::TraceContext;
use crate::wire::headers::{self, ORIGINAL_ROUTING_KEY, RECEIVED_AT};
use crate::wire::retry::{retry_attempt, retry_headers, tier_queue};

/// Messages in flight at once, unless [`Consumer::prefetch`] says otherwise.
const DEFAULT_PREFETCH: u16 = 10;
/// The pause before reconnecting, doubled up to the maximum.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// What the handler decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Handled: acknowledge.
    Ack,
    /// Failed for now: try again after the next retry tier's delay (dead-
    /// lettered when there is none left).
    Retry,
    /// Cannot be handled: dead-letter it now, for `hookrelay replay` once
    /// fixed. The reason is logged.
    DeadLetter(String),
}

/// What a message holds: an event (`sync.*`) or an account's change of
/// state (`account.*`), whichever the queue is bound to.
#[derive(Debug, Clone)]
pub enum Received {
    /// A webhook, parsed with the relay's own rules.
    Event(Event),
    /// What the events of one account mean: one message per change.
    AccountChange(AccountChange),
}

/// One message, as the handler gets it.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub received: Received,
    /// The body as it was published: for an event, as the sender sent it,
    /// byte for byte.
    pub body: Bytes,
    pub message_id: String,
    /// The routing key it was first published with (`sync.error.…`), also
    /// after a retry or a replay.
    pub routing_key: String,
    /// 1 on the first delivery, then one more per retry.
    pub attempt: u32,
    /// How many times an operator replayed it.
    pub replays: u32,
    /// When the relay received the webhook.
    pub received_at: Option<SystemTime>,
    /// RabbitMQ delivered it before (a consumer crashed or disconnected).
    pub redelivered: bool,
    /// The trace it continues: a `process <queue>` span under the relay's
    /// publish (from the message's `traceparent`), made by the app's global
    /// tracer provider. The handler runs with it as the current context, so
    /// the app's own spans are its children.
    pub trace: opentelemetry::Context,
}

/// A consumer of one `[[queues]]` entry of the relay's configuration.
pub struct Consumer {
    settings: Settings,
    queue: QueueSettings,
    prefetch: u16,
}

/// Why a session with RabbitMQ ended.
enum Ended {
    Shutdown,
    Lost(anyhow::Error),
}

impl Consumer {
    /// A consumer of the `[[queues]]` entry named `queue`.
    pub fn new(settings: &Settings, queue: &str) -> anyhow::Result<Consumer> {
        let Some(entry) = settings.queues.iter().find(|q| q.name == queue) else {
            anyhow::bail!("no [[queues]] entry named {queue} in the configuration");
        };
        Ok(Consumer {
            settings: settings.clone(),
            queue: entry.clone(),
            prefetch: DEFAULT_PREFETCH,
        })
    }

    /// At most this many messages unacknowledged, and handlers running, at once.
    pub fn prefetch(mut self, prefetch: u16) -> Consumer {
        self.prefetch = prefetch.max(1);
        self
    }

    /// Consumes until `shutdown` resolves, then lets the handlers in flight
    /// finish and returns. Reconnects by itself when RabbitMQ goes away.
    pub async fn run<H, F>(self, handler: H, shutdown: impl Future) -> anyhow::Result<()>
    where
        H: Fn(Incoming) -> F + Send + Sync + 'static,
        F: Future<Output = Outcome> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let mut shutdown = std::pin::pin!(shutdown);
        let mut backoff = FIRST_BACKOFF;
        loop {
            match self.session(&handler, shutdown.as_mut()).await {
                Ended::Shutdown => return Ok(()),
                Ended::Lost(err) => {
                    warn!(error = %format!("{err:#}"), queue = %self.queue.name, retry_in_ms = backoff.as_millis() as u64, "consumer lost RabbitMQ; reconnecting");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = shutdown.as_mut() => return Ok(()),
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn session<H, F>(
        &self,
        handler: &Arc<H>,
        mut shutdown: std::pin::Pin<&mut impl Future>,
    ) -> Ended
    where
        H: Fn(Incoming) -> F + Send + Sync + 'static,
        F: Future<Output = Outcome> + Send + 'static,
    {
        let amqp = &self.settings.amqp;
        let name = amqp.tool_connection_name(&format!("hookrelay-consumer-{}", self.queue.name));
        let connection = tokio::select! {
            connection = broker::connect(amqp, name) => match connection {
                Ok(connection) => connection,
                Err(err) => return Ended::Lost(err.into()),
            },
            _ = shutdown.as_mut() => return Ended::Shutdown,
        };
        let ended = match self.open(&connection).await {
            Ok((channel, consumer)) => self.consume(&channel, consumer, handler, shutdown).await,
            Err(err) => Ended::Lost(err),
        };
        crate::broker::close(&connection, "consumer done").await;
        ended
    }

    /// Declares the topology, then starts consuming on a channel in confirm
    /// mode (for the retry copies).
    async fn open(&self, connection: &Connection) -> anyhow::Result<(Channel, lapin::Consumer)> {
        let topology = Topology::of(&self.settings);
        let report = topology
            .declare(connection, &HashSet::new())
            .await
            .context("cannot declare the topology")?;
        for conflict in report.own_conflicts.iter().chain(&report.queue_conflicts) {
            warn!(%conflict, "RabbitMQ refuses a declaration (the relay reports it too)");
        }
        // In confirm mode: retries and dead letters are published on it.
        let channel = broker::browse::confirming_channel(connection).await?;
        channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await
            .context("cannot set the prefetch")?;
        let consumer = channel
            .basic_consume(
                self.queue.name.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("cannot consume from {}", self.queue.name))?;
        info!(queue = %self.queue.name, prefetch = self.prefetch, "consuming");
        Ok((channel, consumer))
    }

    async fn consume<H, F>(
        &self,
        channel: &Channel,
        mut consumer: lapin::Consumer,
        handler: &Arc<H>,
        mut shutdown: std::pin::Pin<&mut impl Future>,
    ) -> Ended
    where
        H: Fn(Incoming) -> F + Send + Sync + 'static,
        F: Future<Output = Outcome> + Send + 'static,
    {
        let topology = Topology::of(&self.settings);
        let mut running: JoinSet<Outcome> = JoinSet::new();
        // Each running handler's delivery, and the event's first routing key.
        let mut in_flight: HashMap<tokio::task::Id, (Delivery, String)> = HashMap::new();
        let mut stopping = false;
        loop {
            tokio::select! {
                _ = shutdown.as_mut(), if !stopping => {
                    stopping = true;
                    let _ = channel
                        .basic_cancel(consumer.tag(), BasicCancelOptions::default())
                        .await;
                    if running.is_empty() {
                        return Ended::Shutdown;
                    }
                }
                delivery = consumer.next(), if !stopping => {
                    let delivery = match delivery {
                        Some(Ok(delivery)) => delivery,
                        Some(Err(err)) => return Ended::Lost(err.into()),
                        None => return Ended::Lost(anyhow::anyhow!("RabbitMQ cancelled the consumer")),
                    };
                    match incoming(&delivery, &self.queue.name) {
                        Ok(event) => {
                            let routing_key = event.routing_key.clone();
                            let trace = event.trace.clone();
                            let task = running.spawn(opentelemetry::context::FutureExt::with_context(handler(event), trace));
                            in_flight.insert(task.id(), (delivery, routing_key));
                        }
                        Err(reason) => {
                            let dead = Outcome::DeadLetter(reason);
                            if let Err(err) = self.settle(channel, &topology, delivery, "", dead).await {
                                return Ended::Lost(err);
                            }
                        }
                    }
                }
                Some(done) = running.join_next_with_id() => {
                    let (id, outcome) = match done {
                        Ok((id, outcome)) => (id, Ok(outcome)),
                        Err(err) => (err.id(), Err(err)),
                    };
                    let Some((delivery, routing_key)) = in_flight.remove(&id) else { continue };
                    let settled = match outcome {
                        Ok(outcome) => {
                            self.settle(channel, &topology, delivery, &routing_key, outcome).await
                        }
                        Err(panic) => {
                            warn!(error = %panic, queue = %self.queue.name, "the handler panicked; the message goes back to the queue");
                            delivery
                                .nack(BasicNackOptions { multiple: false, requeue: true })
                                .await
                                .map(drop)
                                .context("cannot return the message")
                        }
                    };
                    if let Err(err) = settled {
                        return Ended::Lost(err);
                    }
                    if stopping && running.is_empty() {
                        return Ended::Shutdown;
                    }
                }
            }
        }
    }

    /// Carries out what the handler decided about the event first published
    /// with `routing_key`.
    async fn settle(
        &self,
        channel: &Channel,
        topology: &Topology,
        delivery: Delivery,
        routing_key: &str,
        outcome: Outcome,
    ) -> anyhow::Result<()> {
        let headers = delivery.properties.headers().as_ref();
        let message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map_or_else(|| "-".to_owned(), |id| id.to_string());
        let outcome = match outcome {
            Outcome::Retry => {
                let next = retry_attempt(headers) + 1;
                let tier = usize::try_from(next).unwrap_or(usize::MAX);
                match self.queue.retry.get(tier.wrapping_sub(1)) {
                    Some(_) => {
                        // Kept when the copy carries them already (set at its
                        // first retry, or by a replay).
                        let exchange = match delivery.exchange.as_str() {
                            "" => topology.entry_exchange(),
                            exchange => exchange,
                        };
                        let copy = Outgoing {
                            exchange: String::new(),
                            routing_key: tier_queue(&self.queue.name, tier),
                            body: Bytes::from(delivery.data.clone()),
                            properties: delivery
                                .properties
                                .clone()
                                .with_delivery_mode(2)
                                .with_headers(retry_headers(headers, next, exchange, routing_key)),
                        };
                        publish_confirmed(channel, &copy, self.settings.amqp.confirm_timeout())
                            .await
                            .with_context(|| format!("cannot publish the retry of {message_id}"))?;
                        Outcome::Ack
                    }
                    None => Outcome::DeadLetter(format!(
                        "failed on attempt {next} of {}: no retry tier left",
                        self.queue.retry.len() + 1
                    )),
                }
            }
            outcome => outcome,
        };
        match outcome {
            Outcome::Ack | Outcome::Retry => delivery
                .ack(BasicAckOptions::default())
                .await
                .map(drop)
                .context("cannot acknowledge"),
            Outcome::DeadLetter(reason) => {
                warn!(%message_id, %reason, queue = %self.queue.name, "dead-lettering an event");
                delivery
                    .reject(BasicRejectOptions { requeue: false })
                    .await
                    .map(drop)
                    .context("cannot reject")
            }
        }
    }
}

impl Incoming {
    /// The event, when the message is one.
    pub fn event(&self) -> Option<&Event> {
        match &self.received {
            Received::Event(event) => Some(event),
            Received::AccountChange(_) => None,
        }
    }

    /// The change of an account's state, when the message is one.
    pub fn account_change(&self) -> Option<&AccountChange> {
        match &self.received {
            Received::AccountChange(change) => Some(change),
            Received::Event(_) => None,
        }
    }
}

/// The message and its metadata; `Err` with a reason for a body that is
/// neither an event nor an account change.
fn incoming(delivery: &Delivery, queue: &str) -> Result<Incoming, String> {
    let headers = delivery.properties.headers().as_ref();
    let published_as = headers::text(headers, ORIGINAL_ROUTING_KEY)
        .unwrap_or_else(|| delivery.routing_key.to_string());
    let (received, routing_key) = if published_as.starts_with(account::ROUTING_PREFIX) {
        let change: AccountChange = serde_json::from_slice(&delivery.data)
            .map_err(|err| format!("not an account change: {err}"))?;
        (Received::AccountChange(change), published_as)
    } else {
        let event = Event::parse(&delivery.data).map_err(|err| format!("not an event: {err}"))?;
        let routing_key = headers::text(headers, ORIGINAL_ROUTING_KEY)
            .unwrap_or_else(|| event.routing_key().as_str().to_owned());
        (Received::Event(event), routing_key)
    };
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map_or_else(String::new, |id| id.to_string());
    let trace = TraceContext::of(&delivery.properties);
    let trace = consumer_context(trace.as_ref(), queue, &routing_key, &message_id);
    Ok(Incoming {
        routing_key,
        received,
        body: Bytes::from(delivery.data.clone()),
        message_id,
        trace,
        attempt: u32::try_from(retry_attempt(headers) + 1).unwrap_or(u32::MAX),
        replays: u32::try_from(replay_count(headers)).unwrap_or(u32::MAX),
        received_at: headers::time(headers, RECEIVED_AT),
        redelivered: delivery.redelivered,
    })
}
