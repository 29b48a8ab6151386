//! One confirmed publish: a message is stored by RabbitMQ, or the caller learns
//! exactly why not.
//!
//! Every publish is `mandatory` and waits for the publisher confirm. An `Ack` is
//! not enough on its own: lapin attaches a `basic.return` (an unroutable
//! mandatory message) to the `Ack` that follows it, so a returned message counts
//! as a failure too.

use std::time::{Duration, Instant};

use bytes::Bytes;
use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation, PublisherConfirm};

use super::connection::{Broker, Session};

/// A message ready to publish: where it goes, its bytes and its properties.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The exchange; empty for the default exchange (direct to a queue).
    pub exchange: String,
    pub routing_key: String,
    /// The body as received: never re-serialised.
    pub body: Bytes,
    pub properties: BasicProperties,
}

/// Why RabbitMQ did not take responsibility for a message.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("not connected to RabbitMQ")]
    Disconnected,
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

/// Publishes through the supervised connection; cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    broker: Broker,
    confirm_timeout: Duration,
}

impl Publisher {
    pub fn new(broker: Broker) -> Publisher {
        let confirm_timeout = broker.amqp().confirm_timeout();
        Publisher {
            broker,
            confirm_timeout,
        }
    }

    /// Publishes persistently and waits for RabbitMQ's confirm.
    ///
    /// `Ok` means RabbitMQ has routed the message and written it to every
    /// durable queue it reached. On `Err` the message may still have been
    /// stored (a confirm that arrives after the timeout): delivery is
    /// at-least-once, and consumers de-duplicate on `message_id`.
    pub async fn publish(&self, message: &Outgoing) -> Result<(), PublishError> {
        let session = self.usable_session()?;
        let started = Instant::now();
        let result = publish_confirmed(session.channel(), message, self.confirm_timeout).await;
        self.broker.metrics().observe_publish(started.elapsed());
        self.notice(&result);
        result
    }

    /// Publishes `messages` in order on one channel, all in flight at once, then
    /// waits for each confirm: how a backlog drains quickly without being
    /// reordered. One result per message, in the same order.
    pub async fn publish_batch(
        &self,
        messages: &[Outgoing],
    ) -> Result<Vec<Result<(), PublishError>>, PublishError> {
        let session = self.usable_session()?;
        let channel = session.channel();
        let deadline = tokio::time::Instant::now() + self.confirm_timeout;
        let mut in_flight = Vec::with_capacity(messages.len());
        for message in messages {
            in_flight.push(tokio::time::timeout_at(deadline, send(channel, message)).await);
        }
        let mut results = Vec::with_capacity(messages.len());
        for sent in in_flight {
            let result = match sent {
                Ok(Ok(confirm)) => settle(
                    tokio::time::timeout_at(deadline, confirm).await,
                    self.confirm_timeout,
                ),
                Ok(Err(err)) => Err(PublishError::Channel(err)),
                Err(_elapsed) => Err(PublishError::ConfirmTimeout(self.confirm_timeout)),
            };
            self.notice(&result);
            results.push(result);
        }
        Ok(results)
    }

    fn usable_session(&self) -> Result<std::sync::Arc<Session>, PublishError> {
        let session = self.broker.session().ok_or(PublishError::Disconnected)?;
        if session.is_blocked() {
            return Err(PublishError::Blocked);
        }
        Ok(session)
    }

    /// A channel-level failure means the session is broken: tell the supervisor.
    fn notice(&self, result: &Result<(), PublishError>) {
        if matches!(
            result,
            Err(PublishError::Channel(_) | PublishError::NotConfirmed)
        ) {
            self.broker.report_trouble();
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
    let confirmation =
        tokio::time::timeout(timeout, async { send(channel, message).await?.await }).await;
    settle(confirmation, timeout)
}

/// Sends one persistent, `mandatory` publish; the returned future resolves to its confirm.
async fn send(channel: &Channel, message: &Outgoing) -> lapin::Result<PublisherConfirm> {
    channel
        .basic_publish(
            ShortString::from(message.exchange.as_str()),
            ShortString::from(message.routing_key.as_str()),
            BasicPublishOptions {
                mandatory: true,
                immediate: false,
            },
            &message.body,
            message.properties.clone(),
        )
        .await
}

/// Only an `Ack` without a returned message is success.
fn settle(
    confirmation: Result<lapin::Result<Confirmation>, tokio::time::error::Elapsed>,
    timeout: Duration,
) -> Result<(), PublishError> {
    match confirmation {
        Err(_elapsed) => Err(PublishError::ConfirmTimeout(timeout)),
        Ok(Err(err)) => Err(PublishError::Channel(err)),
        Ok(Ok(Confirmation::Ack(None))) => Ok(()),
        Ok(Ok(Confirmation::Ack(Some(returned)))) => Err(PublishError::Returned {
            code: returned.reply_code,
            text: returned.reply_text.to_string(),
        }),
        Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::Nack),
        Ok(Ok(Confirmation::NotRequested)) => Err(PublishError::NotConfirmed),
    }
}
