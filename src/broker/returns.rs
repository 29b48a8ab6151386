//! Which publish a `basic.return` belongs to.
//!
//! RabbitMQ sends the return of an unroutable `mandatory` message before the
//! confirm of that message, and lapin (4.12, `acknowledgement.rs`) attaches it
//! to the next confirm it completes. An `ack` with `multiple` completes
//! several confirms at once, in no particular order, so a return can come
//! with another publish's confirm: that publish would be failed for nothing,
//! and the returned one counted as delivered (answered 2xx, or dropped from
//! the spool) while no queue holds it.
//!
//! So returns are matched by message id. A publish is [`Returns::watch`]ed
//! while its confirm is awaited; a return that comes with a confirm not its
//! own is passed to its owner:
//!
//! - still waiting, the owner fails when its confirm comes (its message is
//!   spooled and retried, as for its own return);
//! - already ended as delivered, the returned message itself is *rescued*:
//!   [`Returns::rescued`] hands it to the relay, which spools it as refused
//!   (see [`crate::delivery::Delivery::store_late_returns`]).
//!
//! A batch (the spool's drainer) takes every confirm of the batch apart
//! before it gives any verdict, so within a batch no owner has ended yet. A
//! confirm that times out is still awaited by a task of its own, so that a
//! return it carries is not dropped with it. What is left: a webhook whose
//! 200 went out just before another request's confirm brought its return is
//! spooled a moment after that 200, not before it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use lapin::message::BasicReturnMessage;
use lapin::types::ShortString;
use lapin::{BasicProperties, Confirmation};
use tokio::sync::mpsc;

use crate::unpoisoned::Locked;

/// What RabbitMQ said when it returned a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Refusal {
    pub code: u16,
    pub text: String,
}

/// A returned message whose publish had already ended as delivered.
#[derive(Debug)]
pub struct Rescued {
    pub exchange: String,
    pub routing_key: String,
    pub(super) body: Vec<u8>,
    pub(super) properties: BasicProperties,
    pub(super) refusal: Refusal,
}

/// The publishes in flight, by message id; one per publisher.
pub(super) struct Returns {
    in_flight: Mutex<HashMap<ShortString, InFlight>>,
    rescue: mpsc::UnboundedSender<Rescued>,
    rescued: Mutex<Option<mpsc::UnboundedReceiver<Rescued>>>,
}

/// The publishes of one message id in flight (a message spooled and sent
/// again may meet its first publish), and the return another publish's
/// confirm carried for them.
#[derive(Default)]
struct InFlight {
    publishes: u32,
    returned: Option<Refusal>,
}

/// One publish, watched until its confirm is sorted out.
pub(super) struct Watch {
    returns: Arc<Returns>,
    id: Option<ShortString>,
}

/// A confirm with the returns of other publishes taken out of it.
pub(super) struct OwnPart {
    verdict: Verdict,
    returned: Option<Refusal>,
}

impl Returns {
    pub(super) fn new() -> Arc<Returns> {
        let (rescue, rescued) = mpsc::unbounded_channel();
        Arc::new(Returns {
            in_flight: Mutex::new(HashMap::new()),
            rescue,
            rescued: Mutex::new(Some(rescued)),
        })
    }

    /// Watches the publish of a message with `properties` (a message without
    /// an id cannot be matched: it keeps only returns without an id).
    pub(super) fn watch(self: &Arc<Self>, properties: &BasicProperties) -> Watch {
        self.watching(properties.message_id().clone())
    }

    /// One more watch of the publish `watch` watches: for a task that goes on
    /// waiting for its confirm.
    pub(super) fn watch_again(self: &Arc<Self>, watch: &Watch) -> Watch {
        self.watching(watch.id.clone())
    }

    fn watching(self: &Arc<Self>, id: Option<ShortString>) -> Watch {
        if let Some(id) = &id {
            self.in_flight
                .locked()
                .entry(id.clone())
                .or_default()
                .publishes += 1;
        }
        Watch {
            returns: Arc::clone(self),
            id,
        }
    }

    /// The messages rescued, for the one task that stores them: `None` once
    /// taken.
    pub(super) fn rescued(&self) -> Option<mpsc::UnboundedReceiver<Rescued>> {
        self.rescued.locked().take()
    }

    /// Passes `returned` (another publish's) to its owner, or rescues it
    /// when its owner has ended.
    fn pass_to_owner(&self, returned: BasicReturnMessage) {
        let refusal = refusal(&returned);
        if let Some(id) = returned.properties.message_id()
            && let Some(owner) = self.in_flight.locked().get_mut(id)
        {
            owner.returned = Some(refusal);
            return;
        }
        let rescued = Rescued {
            exchange: returned.delivery.exchange.to_string(),
            routing_key: returned.delivery.routing_key.to_string(),
            body: returned.delivery.data,
            properties: returned.delivery.properties,
            refusal,
        };
        if let Err(lost) = self.rescue.send(rescued) {
            // Only once the relay has stopped: nothing publishes then.
            tracing::error!(
                message_id = lost
                    .0
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|id| id.as_str()),
                "RabbitMQ returned a message after the relay stopped storing returns: it is \
                 in no queue; ask the sender to send it again"
            );
        }
    }
}

/// What a confirm means for one publish, its returns sorted out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Stored by every queue it reached, and returned by none.
    Acked,
    /// No queue took it.
    Returned(Refusal),
    Nacked,
    /// The channel was not in confirm mode.
    NotRequested,
}

impl Verdict {
    /// A confirm taken as lapin attached its return: for a channel one
    /// caller uses for one publish at a time (a tool's, a note's).
    pub(super) fn as_attached(confirmation: Confirmation) -> Verdict {
        match confirmation {
            Confirmation::Ack(None) => Verdict::Acked,
            Confirmation::Ack(Some(returned)) => Verdict::Returned(refusal(&returned)),
            Confirmation::Nack(_) => Verdict::Nacked,
            Confirmation::NotRequested => Verdict::NotRequested,
        }
    }
}

impl Watch {
    /// Takes out of `confirmation` a return that is another publish's and
    /// passes it to its owner. A batch takes the own part of every confirm
    /// before it finishes any, so that a return passed within the batch is
    /// never too late for its owner.
    pub(super) fn own_part(&self, confirmation: Confirmation) -> OwnPart {
        let (verdict, returned) = match confirmation {
            Confirmation::Ack(returned) => (Verdict::Acked, returned),
            Confirmation::Nack(returned) => (Verdict::Nacked, returned),
            Confirmation::NotRequested => (Verdict::NotRequested, None),
        };
        let returned = match returned {
            Some(returned) if returned.properties.message_id() == &self.id => {
                Some(refusal(&returned))
            }
            Some(returned) => {
                self.returns.pass_to_owner(returned);
                None
            }
            None => None,
        };
        OwnPart { verdict, returned }
    }

    /// The verdict, with a return another publish's confirm passed to this
    /// one; stops watching.
    pub(super) fn finish(mut self, own: OwnPart) -> Verdict {
        let passed = self.stop();
        match (own.verdict, own.returned.or(passed)) {
            (Verdict::Acked, Some(refusal)) => Verdict::Returned(refusal),
            (verdict, _) => verdict,
        }
    }

    /// Stops watching; what another publish's confirm passed to this one.
    fn stop(&mut self) -> Option<Refusal> {
        let id = self.id.take()?;
        let mut in_flight = self.returns.in_flight.locked();
        let entry = in_flight.get_mut(&id)?;
        entry.publishes -= 1;
        let returned = entry.returned.take();
        if entry.publishes == 0 {
            in_flight.remove(&id);
        }
        returned
    }
}

impl Drop for Watch {
    /// A publish abandoned before its confirm (a request that ended): a
    /// return that comes for it later is rescued.
    fn drop(&mut self) {
        self.stop();
    }
}

fn refusal(returned: &BasicReturnMessage) -> Refusal {
    Refusal {
        code: returned.reply_code,
        text: returned.reply_text.to_string(),
    }
}
