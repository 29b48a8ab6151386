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
use lapin::{BasicProperties, Channel, Confirmation};

use super::connection::Broker;

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
    pub async fn publish(&self, message: Outgoing) -> Result<(), PublishError> {
        let session = self.broker.session().ok_or(PublishError::Disconnected)?;
        if session.is_blocked() {
            return Err(PublishError::Blocked);
        }
        let started = Instant::now();
        let result = publish_confirmed(session.channel(), message, self.confirm_timeout).await;
        self.broker.metrics().observe_publish(started.elapsed());
        if matches!(
            result,
            Err(PublishError::Channel(_) | PublishError::NotConfirmed)
        ) {
            self.broker.report_trouble();
        }
        result
    }
}

/// Publishes `message` on `channel` (which must be in confirm mode) as
/// `mandatory`, and waits up to `timeout` for RabbitMQ's confirm. Only an `Ack`
/// without a returned message is success.
pub async fn publish_confirmed(
    channel: &Channel,
    message: Outgoing,
    timeout: Duration,
) -> Result<(), PublishError> {
    let confirmation = tokio::time::timeout(timeout, async {
        channel
            .basic_publish(
                ShortString::from(message.exchange),
                ShortString::from(message.routing_key),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                &message.body,
                message.properties,
            )
            .await?
            .await
    })
    .await;
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
