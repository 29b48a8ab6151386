//! Getting an accepted webhook to RabbitMQ: publish it now, or keep it in the
//! spool and publish it later. Either way it is durable before the sender
//! hears 200.
//!
//! Which lane of the spool depends on why RabbitMQ did not take it. When it
//! could not (down, blocked, no confirm), the message joins the backlog, and
//! while the backlog holds anything new messages queue behind it instead of
//! overtaking it, so RabbitMQ receives them in arrival order. When RabbitMQ
//! refused this one message while it takes the rest (a full queue bound to
//! its routing key pushes back), the message goes to the refused lane and is
//! retried beside the flow: the next webhooks are published at once, so one
//! full queue costs only its own consumer.

use std::fmt;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc::UnboundedReceiver;
use tracing::{debug, error, warn};

use crate::backoff::Backoff;
use crate::broker::{PublishError, Publisher, Rescued};
use crate::spool::{Spool, SpoolError};
use crate::stopping::Stopping;
use crate::wire::envelope::Message;

/// How often a returned webhook is published again when there is no spool.
const REPUBLISH_TRIES: u32 = 6;

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
    /// On local disk, in the backlog; the drainer publishes it. `why`: the
    /// publish error, if one was tried first.
    Spooled {
        why: Option<PublishError>,
        write: SpoolWrite,
    },
    /// RabbitMQ refused it: on local disk, in the refused lane, retried
    /// beside the flow.
    Refused {
        why: PublishError,
        write: SpoolWrite,
    },
}

/// When the spool write began and how long it took (fsync included): the
/// trace's spool span.
#[derive(Debug, Clone, Copy)]
pub struct SpoolWrite {
    pub started: SystemTime,
    pub took: Duration,
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
    /// every webhook in case it fails (a measurable share of the relay's
    /// instructions per webhook: BENCHMARKS.md).
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
        let publish_error = if spool.has_backlog() {
            None
        } else {
            match self.publisher.publish(build()).await {
                Ok(()) => return Ok(Delivered::Published),
                Err(err) => Some(err),
            }
        };
        let (started, clock) = (SystemTime::now(), Instant::now());
        let stored = match &publish_error {
            Some(err) if err.is_refusal() => spool.append_refused(&build(), err.to_string()).await,
            _ => spool.append(&build()).await,
        };
        let write = SpoolWrite {
            started,
            took: clock.elapsed(),
        };
        match (stored, publish_error) {
            (Ok(()), Some(why)) if why.is_refusal() => Ok(Delivered::Refused { why, write }),
            (Ok(()), why) => Ok(Delivered::Spooled { why, write }),
            (Err(spool), publish) => Err(DeliveryError::NotSpooled { publish, spool }),
        }
    }

    /// Stores what RabbitMQ returned after its publish had ended as
    /// delivered (its return came with another publish's confirm: see
    /// `broker::returns`), as a refusal: in the spool's refused lane, retried
    /// like any refused webhook. Without a spool it is published again, with
    /// backoff while the topology is being declared again. Runs until `stop`,
    /// then stores what is left: stopped after the publishing has.
    pub(crate) async fn store_late_returns(
        self,
        mut rescued: UnboundedReceiver<Rescued>,
        mut stop: Stopping,
    ) {
        loop {
            let returned = tokio::select! {
                returned = rescued.recv() => returned,
                () = stop.stopped() => rescued.try_recv().ok(),
            };
            let Some(returned) = returned else { return };
            let (message, why) = match self.publisher.rescued_message(returned) {
                Ok(rescued) => rescued,
                Err(other) => {
                    warn!(
                        exchange = other.exchange,
                        routing_key = other.routing_key,
                        "RabbitMQ returned a message of the relay's own (not a webhook) after \
                         its publish was confirmed; the topology is declared again"
                    );
                    continue;
                }
            };
            let id = message.properties.message_id().clone();
            let id = id.as_ref().map(|id| id.as_str());
            let stored = match &self.spool {
                Some(spool) => spool
                    .append_refused(&message, why.to_string())
                    .await
                    .map_err(|err| err.to_string()),
                None => self.publish_again(message).await,
            };
            match stored {
                Ok(()) => debug!(
                    message_id = id,
                    "a webhook returned with another's confirm is stored again"
                ),
                Err(err) => error!(
                    message_id = id,
                    error = err,
                    "RabbitMQ returned a webhook after it was answered as stored, and it cannot be \
                     stored again: it is in no queue. Find it with `hookrelay events --message-id` \
                     when the history is on, and ask the sender to send it again"
                ),
            }
        }
    }

    /// Without a spool: publishes `message` again while the topology is
    /// declared again (a few tries over about ten seconds).
    async fn publish_again(&self, message: Message) -> Result<(), String> {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(3));
        let mut tries = 0;
        loop {
            tries += 1;
            match self.publisher.publish(message.clone()).await {
                Ok(()) => return Ok(()),
                Err(err) if tries >= REPUBLISH_TRIES => return Err(err.to_string()),
                Err(_) => tokio::time::sleep(backoff.next_delay()).await,
            }
        }
    }
}
