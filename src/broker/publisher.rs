//! One confirmed publish: a message is stored by RabbitMQ, or the caller learns
//! exactly why not.
//!
//! Every publish is `mandatory` and waits for the publisher confirm. An `Ack` is
//! not enough on its own: lapin attaches a `basic.return` (an unroutable
//! mandatory message) to the `Ack` that follows it, so a returned message counts
//! as a failure too (matched to its own publish by message id: see
//! [`super::returns`]). Events enter through the entry fanout, so "returned" means
//! that no queue at all took the message: not a consumer queue, not the
//! unrouted queue. That only happens when the relay's own topology was damaged
//! (a queue or exchange deleted), so a return also asks the supervisor to
//! declare the topology again at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;
use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation, PublisherConfirm};

use super::names::Address;
use super::returns::{Rescued, Returns, Sorted};
use super::session::Session;
use super::status::BrokerState;
use super::supervisor::Broker;
use crate::unpoisoned::Locked;
use crate::wire::envelope::{Kind, Message, Stamp};
use tracing::{debug, warn};

/// A message addressed by name, for the tools that republish what they read
/// (`hookrelay replay`) and the benchmark's baseline publisher.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The exchange; empty for the default exchange (direct to a queue).
    pub exchange: String,
    pub routing_key: String,
    pub body: Bytes,
    pub properties: BasicProperties,
}

/// Why RabbitMQ did not take responsibility for a message.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("not connected to RabbitMQ")]
    Disconnected,
    #[error("RabbitMQ refuses the relay's own topology (see /readyz)")]
    Misconfigured,
    #[error("RabbitMQ blocks publishing (resource alarm)")]
    Blocked,
    #[error("RabbitMQ refused the message (nack)")]
    Nack,
    #[error("RabbitMQ returned the message: {code} {text}")]
    Returned { code: u16, text: String },
    #[error("no confirm from RabbitMQ within {0:?}")]
    ConfirmTimeout(Duration),
    #[error("publishing failed: {0}")]
    Channel(lapin::Error),
    #[error("the channel is not in confirm mode")]
    NotConfirmed,
}

impl PublishError {
    /// Whether RabbitMQ answered about this very message (a nack, a return,
    /// a channel it closed over this publish), as opposed to not being there
    /// to ask or a channel that was already gone. Only such refusals count
    /// toward parking a spooled message.
    pub fn is_refusal(&self) -> bool {
        match self {
            PublishError::Nack | PublishError::Returned { .. } => true,
            PublishError::Channel(err) => err.is_amqp_soft_error(),
            _ => false,
        }
    }
}

/// Publishes through the supervised connection; cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    broker: Broker,
    confirm_timeout: Duration,
    returns: Arc<Returns>,
}

impl Publisher {
    pub fn new(broker: Broker) -> Publisher {
        let confirm_timeout = broker.amqp().confirm_timeout();
        Publisher {
            broker,
            confirm_timeout,
            returns: Returns::new(),
        }
    }

    /// Returned messages whose publish had already ended as delivered (see
    /// [`super::returns`]), for the one task that stores them; `None` once
    /// taken.
    pub fn rescued(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Rescued>> {
        self.returns.rescued()
    }

    /// The message `rescued` was, for the spool; the rescued message back when
    /// it is not one the relay publishes as a webhook (a history copy, a note).
    /// A return means the topology is damaged: it is declared again at once.
    pub fn rescued_message(
        &self,
        rescued: Rescued,
    ) -> Result<(Message, PublishError), Box<Rescued>> {
        let topology = self.broker.topology();
        let kind = if rescued.exchange == topology.entry_exchange() {
            match rescued.routing_key.parse() {
                Ok(key) => Kind::Event(key),
                Err(_) => return Err(Box::new(rescued)),
            }
        } else if rescued.exchange.is_empty() && rescued.routing_key == topology.quarantine_queue()
        {
            Kind::Quarantine
        } else {
            return Err(Box::new(rescued));
        };
        self.broker.metrics().publish_refused(&kind);
        self.broker.request_repair();
        let why = PublishError::Returned {
            code: rescued.refusal.code,
            text: rescued.refusal.text,
        };
        let message = Message {
            kind,
            body: Bytes::from(rescued.body),
            properties: rescued.properties,
        };
        Ok((message, why))
    }

    /// Publishes persistently where the topology sends this kind of message,
    /// and waits for RabbitMQ's confirm.
    ///
    /// `Ok` means RabbitMQ has routed the message and written it to every
    /// durable queue it reached. On `Err` the message may still have been
    /// stored (a confirm that arrives after the timeout): delivery is
    /// at-least-once, and consumers de-duplicate on `message_id`.
    ///
    /// The message is consumed: lapin takes the properties by value. A caller
    /// that must keep the message if the publish fails builds it again then
    /// (see [`Delivery`](crate::delivery::Delivery)).
    pub async fn publish(&self, message: Message) -> Result<(), PublishError> {
        let session = self.usable_session()?;
        let channel = session.channel();
        let started = Instant::now();
        let address = self.broker.topology().address(&message.kind);
        let copy = self.history_copy(&message);
        let watch = self.returns.watch(&message.properties);
        let confirmation = tokio::time::timeout(self.confirm_timeout, async {
            send(&channel, address, &message.body, message.properties)
                .await?
                .await
        })
        .await;
        let mut result = settle(confirmation, self.confirm_timeout, |c| watch.sort(c));
        if result.is_ok()
            && let Some(copy) = copy
        {
            result = self.keep_in_history(&channel, copy).await;
        }
        self.broker.metrics().observe_publish(started.elapsed());
        self.notice(&result, &message.kind, &session, channel);
        result
    }

    /// A quarantined body goes straight to its queue, not through the entry
    /// fanout (no consumer must get it), so the history stream would not
    /// have it, and neither `events` nor `tail` could show a 422'd webhook.
    /// It is copied there too, through the default exchange.
    fn history_copy(&self, message: &Message) -> Option<Outgoing> {
        let stream = self.broker.topology().history_stream()?;
        matches!(message.kind, Kind::Quarantine).then(|| Outgoing {
            exchange: String::new(),
            routing_key: stream.to_owned(),
            body: message.body.clone(),
            properties: message.properties.clone(),
        })
    }

    /// Publishes the history's copy of a quarantined body. The body is already
    /// in its queue, but a body the history lacks is one `events` cannot show
    /// and `hookrelay audit` would count as lost: a failure here fails the
    /// publish, so the body is spooled and published again, copy included
    /// (its queue may then hold it twice, under one message id).
    async fn keep_in_history(&self, channel: &Channel, copy: Outgoing) -> Result<(), PublishError> {
        let kept = publish_confirmed(channel, &copy, self.confirm_timeout).await;
        if let Err(err) = &kept {
            let stamp = Stamp::of(copy.properties.headers().as_ref());
            warn!(
                error = %err,
                message_id = copy.properties.message_id().as_ref().map(|id| id.as_str()),
                relay_seq = stamp.map(|stamp| stamp.seq),
                "a quarantined body is in its queue but not in the history: it is stored \
                 again, and its queue may hold it twice"
            );
        }
        kept
    }

    /// Publishes `messages` in order on one channel, all in flight at once, then
    /// waits for each confirm: how a backlog drains quickly without being
    /// reordered. One result per message, in the same order.
    pub async fn publish_batch(
        &self,
        messages: Vec<Message>,
    ) -> Result<Vec<Result<(), PublishError>>, PublishError> {
        let session = self.usable_session()?;
        let channel = session.channel();
        let topology = self.broker.topology();
        let deadline = tokio::time::Instant::now() + self.confirm_timeout;
        let mut in_flight = Vec::with_capacity(messages.len());
        let mut copies = Vec::new();
        for message in messages {
            let address = topology.address(&message.kind);
            copies.push(self.history_copy(&message));
            let watch = self.returns.watch(&message.properties);
            let sent = send(&channel, address, &message.body, message.properties);
            let sent = tokio::time::timeout_at(deadline, sent).await;
            in_flight.push((message.kind, watch, sent));
        }
        let mut results = Vec::with_capacity(in_flight.len());
        for ((kind, watch, sent), copy) in in_flight.into_iter().zip(copies) {
            let mut result = match sent {
                Ok(Ok(confirm)) => settle(
                    tokio::time::timeout_at(deadline, confirm).await,
                    self.confirm_timeout,
                    |c| watch.sort(c),
                ),
                Ok(Err(err)) => Err(PublishError::Channel(err)),
                Err(_elapsed) => Err(PublishError::ConfirmTimeout(self.confirm_timeout)),
            };
            if result.is_ok()
                && let Some(copy) = copy
            {
                result = self.keep_in_history(&channel, copy).await;
            }
            self.notice(&result, &kind, &session, channel.clone());
            results.push(result);
        }
        Ok(results)
    }

    fn usable_session(&self) -> Result<Arc<Session>, PublishError> {
        let Some(session) = self.broker.session() else {
            return Err(match self.broker.state() {
                BrokerState::Misconfigured => PublishError::Misconfigured,
                _ => PublishError::Disconnected,
            });
        };
        if self.broker.is_blocked() {
            return Err(PublishError::Blocked);
        }
        Ok(session)
    }

    /// A channel-level failure means the session is broken, and a returned
    /// message means the topology is: tell the supervisor either way. A nack
    /// may mean the channel is (see [`super::channels`]): replace it, in the
    /// background, so the caller can spool the message at once. Every
    /// refusal is counted by routing key: each left copies in the queues that
    /// did take it.
    fn notice(
        &self,
        result: &Result<(), PublishError>,
        kind: &Kind,
        session: &Arc<Session>,
        channel: Channel,
    ) {
        if result.as_ref().is_err_and(PublishError::is_refusal) {
            self.broker.metrics().publish_refused(kind);
        }
        match result {
            Err(err @ (PublishError::Channel(_) | PublishError::NotConfirmed)) => {
                self.broker.report_trouble(err.to_string());
            }
            Err(PublishError::Returned { .. }) => self.broker.request_repair(),
            Err(PublishError::Nack) => {
                let (session, metrics) = (session.clone(), self.broker.metrics().clone());
                tokio::spawn(async move {
                    match session.replace_nacked(&channel).await {
                        Ok(true) => {
                            metrics.channel_replaced();
                            debug!(
                                channel = channel.id(),
                                "publishing channel replaced after a nack"
                            );
                        }
                        Ok(false) => {}
                        // The connection is failing: the supervisor finds out.
                        Err(err) => debug!(error = %err, "cannot replace a nacked channel"),
                    }
                });
            }
            _ => {}
        }
    }
}

/// Publishes `message` on `channel` (which must be in confirm mode) and waits
/// up to `timeout` for RabbitMQ's confirm.
pub async fn publish_confirmed(
    channel: &Channel,
    message: &Outgoing,
    timeout: Duration,
) -> Result<(), PublishError> {
    let address = Address {
        exchange: &message.exchange,
        routing_key: &message.routing_key,
    };
    let confirmation = tokio::time::timeout(timeout, async {
        send(channel, address, &message.body, message.properties.clone())
            .await?
            .await
    })
    .await;
    settle(confirmation, timeout, Sorted::as_attached)
}

/// Publishes `messages` on `channel` (in confirm mode, used by this caller
/// alone) all in flight at once, then waits up to `timeout` for their
/// confirms: one result per message, in order.
pub async fn publish_all(
    channel: &Channel,
    messages: &[Outgoing],
    timeout: Duration,
) -> Vec<Result<(), PublishError>> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut in_flight = Vec::with_capacity(messages.len());
    for message in messages {
        let address = Address {
            exchange: &message.exchange,
            routing_key: &message.routing_key,
        };
        let sent = send(channel, address, &message.body, message.properties.clone());
        in_flight.push(tokio::time::timeout_at(deadline, sent).await);
    }
    let mut results = Vec::with_capacity(in_flight.len());
    for sent in in_flight {
        results.push(match sent {
            Ok(Ok(confirm)) => settle(
                tokio::time::timeout_at(deadline, confirm).await,
                timeout,
                Sorted::as_attached,
            ),
            Ok(Err(err)) => Err(PublishError::Channel(err)),
            Err(_elapsed) => Err(PublishError::ConfirmTimeout(timeout)),
        });
    }
    results
}

/// Keeps a channel's publishes in the order of their numbers. lapin numbers
/// a publish (the delivery tag its confirm is matched by) and then queues its
/// frames, two steps under two locks; two threads publishing on one channel
/// at once (the HTTP workers and the spool drainer share the channels) can
/// queue their frames in the other order than their numbers. RabbitMQ numbers
/// publishes as they arrive, so each then gets the other's confirm: a nack
/// taken for an ack drops a refused event from the spool as delivered, an
/// ack taken for a nack retries a delivered one. Both steps happen in the
/// publish's first poll, without a yield between them, so that first poll is
/// taken under this lock: a few microseconds per publish, for the process.
static PUBLISH_ORDER: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Sends one persistent, `mandatory` publish; the returned future resolves to its confirm.
async fn send(
    channel: &Channel,
    address: Address<'_>,
    body: &[u8],
    properties: BasicProperties,
) -> lapin::Result<PublisherConfirm> {
    let mut publish = std::pin::pin!(channel.basic_publish(
        ShortString::from(address.exchange),
        ShortString::from(address.routing_key),
        BasicPublishOptions {
            mandatory: true,
            immediate: false,
        },
        body,
        properties,
    ));
    let first = {
        let _in_order = PUBLISH_ORDER.locked();
        publish.as_mut().now_or_never()
    };
    match first {
        Some(sent) => sent,
        // Numbered and queued; what is left is waiting for the frames to go out.
        None => publish.await,
    }
}

/// Only an `Ack` without a returned message is success; `sort` says which
/// return is this publish's.
fn settle(
    confirmation: Result<lapin::Result<Confirmation>, tokio::time::error::Elapsed>,
    timeout: Duration,
    sort: impl FnOnce(Confirmation) -> Sorted,
) -> Result<(), PublishError> {
    match confirmation {
        Err(_elapsed) => Err(PublishError::ConfirmTimeout(timeout)),
        Ok(Err(err)) => Err(PublishError::Channel(err)),
        Ok(Ok(confirmation)) => match sort(confirmation) {
            Sorted::Acked => Ok(()),
            Sorted::Returned(refusal) => Err(PublishError::Returned {
                code: refusal.code,
                text: refusal.text,
            }),
            Sorted::Nacked => Err(PublishError::Nack),
            Sorted::NotRequested => Err(PublishError::NotConfirmed),
        },
    }
}
