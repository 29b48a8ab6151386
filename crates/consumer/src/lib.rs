//! A consumer of hookrelay's events for apps written in Rust: connect to
//! RabbitMQ, get each event typed, say what became of it. It needs the
//! broker's address and the queue's name, nothing of the relay's own
//! configuration.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use hookrelay_consumer::{Consumer, Outcome, Received, Settings};
//!
//! let settings = Settings::new("amqp://guest:guest@127.0.0.1:5672/%2f", "reprompt-credentials");
//! Consumer::new(settings)
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
//!                 // A queue bound to `provider.#`: the bank's connector, not the user.
//!                 Received::ProviderIncident(incident) => {
//!                     println!("{}: {:?} ({} accounts)", incident.provider, incident.kind, incident.accounts);
//!                     Outcome::Ack
//!                 }
//!                 // `client.silent`: the sender stopped sending to us.
//!                 Received::ClientSilent(silent) => {
//!                     println!("no webhooks for {} accounts of {}", silent.accounts, silent.client_id);
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
//! What it does for the handler, following the protocol the book documents
//! (docs/src/consumer.md) for consumers in any language:
//! - waits for its queue, which the relay declares from its `[[queues]]`
//!   entry (with the retry tiers `<name>.retry.<n>`), and learns how many
//!   retry tiers it has by declaring them passively, as the contract says;
//! - consumes with a prefetch and manual acks, and runs up to that many
//!   handlers at once;
//! - [`Outcome::Ack`]: acknowledges. [`Outcome::Retry`]: publishes a copy to
//!   the next retry tier (persistent, confirmed, `x-retry-attempt` one higher,
//!   the original route kept), then acknowledges; past the last tier it
//!   rejects instead, so RabbitMQ dead-letters it. [`Outcome::DeadLetter`]:
//!   rejects without requeue;
//! - a handler that panics gets its message back (`basic.nack` with requeue);
//!   on a quorum queue RabbitMQ dead-letters it after `delivery_limit`;
//! - continues the trace the relay started (a `process <queue>` span, through
//!   the app's global tracer provider);
//! - reconnects by itself; on shutdown stops taking messages and lets the
//!   handlers in flight finish.
//!
//! Not de-duplication: delivery is at least once, and only the handler knows
//! where its work is recorded, so it records `message_id` there, in the same
//! transaction, and acks an id it already has.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
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

use hookrelay_wire::account::{self, AccountChange};
use hookrelay_wire::client::{self, ClientSilent};
use hookrelay_wire::death::replay_count;
use hookrelay_wire::envelope::TraceContext;
use hookrelay_wire::event::Event;
use hookrelay_wire::headers::{self, ORIGINAL_ROUTING_KEY, RECEIVED_AT};
use hookrelay_wire::provider::{self, ProviderIncident};
use hookrelay_wire::retry::{entry_exchange, retry_attempt, retry_headers, tier_queue};

mod amqp;
mod settings;
mod trace;

/// The wire protocol the events and account changes are read with.
pub use hookrelay_wire as wire;
pub use settings::Settings;
use trace::consumer_context;

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

/// What a message holds: an event (`sync.*`), an account's change of
/// state (`account.*`) or a provider incident (`provider.*`), whichever the
/// queue is bound to.
#[derive(Debug, Clone)]
pub enum Received {
    /// A webhook, parsed with the relay's own rules.
    Event(Event),
    /// What the events of one account mean: one message per change.
    AccountChange(AccountChange),
    /// Many accounts of one provider failing at once (the sender's
    /// connector), opened or resolved: one message each.
    ProviderIncident(ProviderIncident),
    /// Most of a client's accounts went silent together: the sender
    /// stopped sending to us.
    ClientSilent(ClientSilent),
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

/// A consumer of one queue the relay declared (a `[[queues]]` entry).
pub struct Consumer {
    settings: Settings,
}

/// The queue as RabbitMQ has it: how many retry tiers the relay declared
/// (looked for again before a message is dead-lettered for want of one:
/// the relay may have added a tier since).
struct Queue {
    tiers: AtomicUsize,
}

/// Why a session with RabbitMQ ended.
enum Ended {
    Shutdown,
    Lost(anyhow::Error),
}

impl Consumer {
    /// A consumer of `settings.queue`.
    pub fn new(settings: Settings) -> Consumer {
        Consumer { settings }
    }

    /// At most this many messages unacknowledged, and handlers running, at once.
    pub fn prefetch(mut self, prefetch: u16) -> Consumer {
        self.settings.prefetch = prefetch.max(1);
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
            let began = std::time::Instant::now();
            let ended = self.session(&handler, shutdown.as_mut()).await;
            // A session that lasted was a recovery: the next loss is retried
            // quickly again.
            if began.elapsed() > MAX_BACKOFF {
                backoff = FIRST_BACKOFF;
            }
            match ended {
                Ended::Shutdown => return Ok(()),
                Ended::Lost(err) => {
                    warn!(error = %format!("{err:#}"), queue = %self.settings.queue, retry_in_ms = backoff.as_millis() as u64, "consumer lost RabbitMQ; reconnecting");
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
        let connection = tokio::select! {
            connection = amqp::connect(&self.settings) => match connection {
                Ok(connection) => connection,
                Err(err) => return Ended::Lost(err),
            },
            _ = shutdown.as_mut() => return Ended::Shutdown,
        };
        let opened = tokio::select! {
            opened = self.open(&connection) => opened,
            _ = shutdown.as_mut() => {
                amqp::close(&connection, "consumer done").await;
                return Ended::Shutdown;
            }
        };
        let ended = match opened {
            Ok((queue, channel, consumer)) => {
                self.consume(&connection, &queue, &channel, consumer, handler, shutdown)
                    .await
            }
            Err(err) => Ended::Lost(err),
        };
        amqp::close(&connection, "consumer done").await;
        ended
    }

    /// Finds the queue and its retry tiers, then starts consuming on a
    /// channel in confirm mode (for the retry copies).
    async fn open(
        &self,
        connection: &Connection,
    ) -> anyhow::Result<(Queue, Channel, lapin::Consumer)> {
        let queue = &self.settings.queue;
        if !amqp::exists(connection, queue).await? {
            anyhow::bail!(
                "RabbitMQ has no queue {queue}: the relay declares it from its [[queues]] \
                 entry (start the relay, or check the name)"
            );
        }
        let tiers = amqp::tiers_from(connection, queue, 0).await?;
        let channel = amqp::confirming_channel(connection).await?;
        channel
            .basic_qos(self.settings.prefetch.max(1), BasicQosOptions::default())
            .await
            .context("cannot set the prefetch")?;
        let consumer = channel
            .basic_consume(
                self.settings.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("cannot consume from {}", self.settings.queue))?;
        info!(queue = %self.settings.queue, prefetch = self.settings.prefetch, retry_tiers = tiers, "consuming");
        let tiers = AtomicUsize::new(tiers);
        Ok((Queue { tiers }, channel, consumer))
    }

    async fn consume<H, F>(
        &self,
        connection: &Connection,
        queue: &Queue,
        channel: &Channel,
        mut consumer: lapin::Consumer,
        handler: &Arc<H>,
        mut shutdown: std::pin::Pin<&mut impl Future>,
    ) -> Ended
    where
        H: Fn(Incoming) -> F + Send + Sync + 'static,
        F: Future<Output = Outcome> + Send + 'static,
    {
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
                    match incoming(&delivery, &self.settings.queue) {
                        Ok(event) => {
                            let routing_key = event.routing_key.clone();
                            let trace = event.trace.clone();
                            let task = running.spawn(opentelemetry::context::FutureExt::with_context(handler(event), trace));
                            in_flight.insert(task.id(), (delivery, routing_key));
                        }
                        Err(reason) => {
                            let dead = Outcome::DeadLetter(reason);
                            if let Err(err) = self.settle(connection, queue, channel, delivery, "", dead).await {
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
                            self.settle(connection, queue, channel, delivery, &routing_key, outcome).await
                        }
                        Err(panic) => {
                            warn!(error = %panic, queue = %self.settings.queue, "the handler panicked; the message goes back to the queue");
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
        connection: &Connection,
        queue: &Queue,
        channel: &Channel,
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
                let mut tiers = queue.tiers.load(Ordering::Relaxed);
                if tier > tiers {
                    tiers = amqp::tiers_from(connection, &self.settings.queue, tiers).await?;
                    queue.tiers.store(tiers, Ordering::Relaxed);
                }
                match tier <= tiers {
                    true => {
                        // Kept when the copy carries them already (set at its
                        // first retry, or by a replay).
                        let exchange = match delivery.exchange.as_str() {
                            "" => entry_exchange(&self.settings.exchange),
                            exchange => exchange.to_owned(),
                        };
                        let properties = delivery
                            .properties
                            .clone()
                            .with_delivery_mode(2)
                            .with_headers(retry_headers(headers, next, &exchange, routing_key));
                        let tier = tier_queue(&self.settings.queue, tier);
                        amqp::publish_confirmed(
                            channel,
                            &tier,
                            &delivery.data,
                            properties,
                            self.settings.confirm_timeout,
                        )
                        .await
                        .with_context(|| {
                            format!("cannot publish the retry of {message_id} to {tier}")
                        })?;
                        Outcome::Ack
                    }
                    false => Outcome::DeadLetter(format!(
                        "failed on attempt {next} of {}: no retry tier left",
                        tiers + 1
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
                warn!(%message_id, %reason, queue = %self.settings.queue, "dead-lettering an event");
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
            Received::AccountChange(_)
            | Received::ProviderIncident(_)
            | Received::ClientSilent(_) => None,
        }
    }

    /// The change of an account's state, when the message is one.
    pub fn account_change(&self) -> Option<&AccountChange> {
        match &self.received {
            Received::AccountChange(change) => Some(change),
            Received::Event(_) | Received::ProviderIncident(_) | Received::ClientSilent(_) => None,
        }
    }

    /// The provider incident, when the message is one.
    pub fn provider_incident(&self) -> Option<&ProviderIncident> {
        match &self.received {
            Received::ProviderIncident(incident) => Some(incident),
            Received::Event(_) | Received::AccountChange(_) | Received::ClientSilent(_) => None,
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
    } else if published_as.starts_with(provider::ROUTING_PREFIX) {
        let incident: ProviderIncident = serde_json::from_slice(&delivery.data)
            .map_err(|err| format!("not a provider incident: {err}"))?;
        (Received::ProviderIncident(incident), published_as)
    } else if published_as.starts_with(client::ROUTING_PREFIX) {
        let silent: ClientSilent = serde_json::from_slice(&delivery.data)
            .map_err(|err| format!("not a client.silent: {err}"))?;
        (Received::ClientSilent(silent), published_as)
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
