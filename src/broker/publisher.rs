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
use super::returns::{OwnPart, Rescued, Returns, Verdict, Watch};
use super::session::Session;
use super::status::BrokerState;
use super::supervisor::Broker;
use crate::unpoisoned::Locked;
use crate::wire::envelope::{Kind, Message, Stamp};
use tracing::{debug, warn};

/// How long a confirm is still awaited after its publish timed out, for a
/// return of another publish it may carry.
const LATE_CONFIRM_WAIT: Duration = Duration::from_secs(60);

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
    /// it is not one the relay publishes for a webhook. A return means the
    /// topology is damaged: it is declared again at once, either way.
    pub fn rescued_message(
        &self,
        rescued: Rescued,
    ) -> Result<(Message, PublishError), Box<Rescued>> {
        self.broker.request_repair();
        let topology = self.broker.topology();
        let to_queue = |queue: Option<&str>| {
            rescued.exchange.is_empty() && queue == Some(rescued.routing_key.as_str())
        };
        let kind = if rescued.exchange == topology.entry_exchange() {
            match rescued.routing_key.parse() {
                Ok(key) => Kind::Event(key),
                Err(_) => return Err(Box::new(rescued)),
            }
        } else if to_queue(Some(topology.quarantine_queue())) || to_queue(topology.history_stream())
        {
            // A quarantined body, or its copy for the history: stored again,
            // it goes to both.
            Kind::Quarantine
        } else {
            return Err(Box::new(rescued));
        };
        self.broker.metrics().publish_refused(&kind);
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
        let mut result = self
            .publish_watched(&channel, address, &message.body, message.properties)
            .await;
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
        let address = Address {
            exchange: &copy.exchange,
            routing_key: &copy.routing_key,
        };
        let properties = copy.properties.clone();
        let kept = self
            .publish_watched(channel, address, &copy.body, properties)
            .await;
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
            let sent = self
                .sent(
                    &channel,
                    address,
                    &message.body,
                    message.properties,
                    deadline,
                )
                .await;
            in_flight.push((message.kind, watch, sent));
        }
        // Every confirm of the batch, and the returns in them passed to their
        // owners, before any verdict: a return that came with a later confirm
        // of the batch is never too late for its owner.
        let mut confirmed = Vec::with_capacity(in_flight.len());
        for (kind, watch, sent) in in_flight {
            let own = match sent {
                Ok(confirm) => self.own_part(&watch, confirm, deadline).await,
                Err(err) => Err(err),
            };
            confirmed.push((kind, watch, own));
        }
        let mut results = Vec::with_capacity(confirmed.len());
        for ((kind, watch, own), copy) in confirmed.into_iter().zip(copies) {
            let mut result = match own {
                Ok(own) => verdict_result(watch.finish(own)),
                Err(err) => Err(err),
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

    /// Sends one message and waits for its verdict, returns matched by
    /// message id.
    async fn publish_watched(
        &self,
        channel: &Channel,
        address: Address<'_>,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        let deadline = tokio::time::Instant::now() + self.confirm_timeout;
        let watch = self.returns.watch(&properties);
        let confirm = self
            .sent(channel, address, body, properties, deadline)
            .await?;
        let own = self.own_part(&watch, confirm, deadline).await?;
        verdict_result(watch.finish(own))
    }

    /// Sends one message by `deadline`: the confirm to wait for.
    async fn sent(
        &self,
        channel: &Channel,
        address: Address<'_>,
        body: &[u8],
        properties: BasicProperties,
        deadline: tokio::time::Instant,
    ) -> Result<PublisherConfirm, PublishError> {
        match tokio::time::timeout_at(deadline, send(channel, address, body, properties)).await {
            Ok(Ok(confirm)) => Ok(confirm),
            Ok(Err(err)) => Err(PublishError::Channel(err)),
            Err(_elapsed) => Err(PublishError::ConfirmTimeout(self.confirm_timeout)),
        }
    }

    /// Waits for `confirm` until `deadline`, and passes a return in it that is
    /// another publish's to its owner. Past the deadline the publish has
    /// failed, but its confirm may still carry another's return: a task of
    /// its own keeps waiting for it, for [`LATE_CONFIRM_WAIT`] (a confirm
    /// dropped would take that return with it, unread).
    async fn own_part(
        &self,
        watch: &Watch,
        mut confirm: PublisherConfirm,
        deadline: tokio::time::Instant,
    ) -> Result<OwnPart, PublishError> {
        match tokio::time::timeout_at(deadline, &mut confirm).await {
            Ok(Ok(confirmation)) => Ok(watch.own_part(confirmation)),
            Ok(Err(err)) => Err(PublishError::Channel(err)),
            Err(_elapsed) => {
                let watch = self.returns.watch_again(watch);
                tokio::spawn(async move {
                    if let Ok(Ok(confirmation)) =
                        tokio::time::timeout(LATE_CONFIRM_WAIT, confirm).await
                    {
                        watch.own_part(confirmation);
                    }
                });
                Err(PublishError::ConfirmTimeout(self.confirm_timeout))
            }
        }
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
    settle(confirmation, timeout)
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
            Ok(Ok(confirm)) => settle(tokio::time::timeout_at(deadline, confirm).await, timeout),
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

/// For a channel one caller uses for one publish at a time (a tool's, a
/// note's): only an `Ack` without a returned message is success.
fn settle(
    confirmation: Result<lapin::Result<Confirmation>, tokio::time::error::Elapsed>,
    timeout: Duration,
) -> Result<(), PublishError> {
    match confirmation {
        Err(_elapsed) => Err(PublishError::ConfirmTimeout(timeout)),
        Ok(Err(err)) => Err(PublishError::Channel(err)),
        Ok(Ok(confirmation)) => verdict_result(Verdict::as_attached(confirmation)),
    }
}

fn verdict_result(verdict: Verdict) -> Result<(), PublishError> {
    match verdict {
        Verdict::Acked => Ok(()),
        Verdict::Returned(refusal) => Err(PublishError::Returned {
            code: refusal.code,
            text: refusal.text,
        }),
        Verdict::Nacked => Err(PublishError::Nack),
        Verdict::NotRequested => Err(PublishError::NotConfirmed),
    }
}
