//! Getting an accepted webhook to RabbitMQ: publish it now, or keep it in the
//! spool and publish it later. Either way it is durable before the sender
//! hears 200.
//!
//! While the spool holds anything, new messages queue behind it instead of
//! overtaking it, so RabbitMQ receives them in arrival order.

use std::fmt;

use crate::broker::{PublishError, Publisher};
use crate::envelope::Message;
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
    /// The spool could not take it, after RabbitMQ did not confirm it (or
    /// without asking RabbitMQ, when older messages were still spooled).
    #[error("{} and {spool}", NotPublished(publish))]
    NotSpooled {
        publish: Option<PublishError>,
        #[source]
        spool: SpoolError,
    },
}

/// Why a message that then failed to spool was not published.
struct NotPublished<'a>(&'a Option<PublishError>);

impl fmt::Display for NotPublished<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(err) => write!(f, "RabbitMQ did not confirm ({err})"),
            None => f.write_str("older webhooks are still spooled"),
        }
    }
}

impl Delivery {
    pub fn new(publisher: Publisher, spool: Option<Spool>) -> Delivery {
        Delivery { publisher, spool }
    }

    /// Makes the message `build` returns durable: confirmed by RabbitMQ, or
    /// fsync'd to the spool.
    ///
    /// `build` is called once for the publish, which consumes the message, and
    /// once more only if the message must go to the spool after all. Building
    /// it twice on that rare path costs less than cloning its properties for
    /// every webhook in case it fails: the clone and its drop were about 6 % of
    /// the relay's instructions per webhook (BENCHMARKS.md).
    pub async fn deliver(&self, build: impl Fn() -> Message) -> Result<Delivered, DeliveryError> {
        // Only `bench/run.sh` builds this feature: it measures what HTTP and the
        // checks cost on their own. Such a binary stores nothing.
        if cfg!(feature = "bench-http-only") {
            drop(build());
            return Ok(Delivered::Published);
        }
        let Some(spool) = &self.spool else {
            return match self.publisher.publish(build()).await {
                Ok(()) => Ok(Delivered::Published),
                Err(err) => Err(DeliveryError::Unconfirmed(err)),
            };
        };
        let publish_error = if spool.is_empty() {
            match self.publisher.publish(build()).await {
                Ok(()) => return Ok(Delivered::Published),
                Err(err) => Some(err),
            }
        } else {
            None
        };
        match spool.append(&build()).await {
            Ok(()) => Ok(Delivered::Spooled(publish_error)),
            Err(spool) => Err(DeliveryError::NotSpooled {
                publish: publish_error,
                spool,
            }),
        }
    }
}
