//! Getting an accepted webhook to RabbitMQ: publish it now, or keep it in the
//! spool and publish it later. Either way it is durable before the sender
//! hears 200.
//!
//! While the spool holds anything, new messages queue behind it instead of
//! overtaking it, so RabbitMQ receives them in arrival order.

use crate::broker::{Outgoing, PublishError, Publisher};
use crate::spool::{Spool, SpoolError};

/// Publishes through the broker, falling back to the spool when there is one.
#[derive(Clone)]
pub struct Delivery {
    publisher: Publisher,
    spool: Option<Spool>,
}

/// Where a durable message is now.
#[derive(Debug)]
pub enum Delivered {
    /// Confirmed by RabbitMQ.
    Published,
    /// On local disk; the drainer publishes it. The publish error, if one was
    /// tried first.
    Spooled(Option<PublishError>),
}

/// The message is not durable anywhere: the sender must retry.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// No spool, and RabbitMQ did not confirm.
    #[error(transparent)]
    Unconfirmed(PublishError),
    /// RabbitMQ did not confirm and the spool could not take it.
    #[error("RabbitMQ did not confirm ({publish}) and {spool}")]
    NotSpooled {
        publish: String,
        #[source]
        spool: SpoolError,
    },
}

impl Delivery {
    pub fn new(publisher: Publisher, spool: Option<Spool>) -> Delivery {
        Delivery { publisher, spool }
    }

    /// Makes `message` durable: confirmed by RabbitMQ, or fsync'd to the spool.
    pub async fn deliver(&self, message: Outgoing) -> Result<Delivered, DeliveryError> {
        // Only `bench/run.sh` builds this feature: it measures what HTTP and the
        // checks cost on their own. Such a binary stores nothing.
        if cfg!(feature = "bench-http-only") {
            return Ok(Delivered::Published);
        }
        let Some(spool) = &self.spool else {
            return match self.publisher.publish(&message).await {
                Ok(()) => Ok(Delivered::Published),
                Err(err) => Err(DeliveryError::Unconfirmed(err)),
            };
        };
        let publish_error = if spool.is_empty() {
            match self.publisher.publish(&message).await {
                Ok(()) => return Ok(Delivered::Published),
                Err(err) => Some(err),
            }
        } else {
            None
        };
        match spool.append(&message).await {
            Ok(()) => Ok(Delivered::Spooled(publish_error)),
            Err(spool) => Err(DeliveryError::NotSpooled {
                publish: publish_error.map_or_else(
                    || "older webhooks are still spooled".to_owned(),
                    |e| e.to_string(),
                ),
                spool,
            }),
        }
    }
}
