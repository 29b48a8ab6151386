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
//! own is handed over to its owner:
//!
//! - still waiting, the owner fails when its confirm comes (its message is
//!   spooled and retried, as for its own return);
//! - already ended as delivered, the returned message itself is *rescued*:
//!   [`Returns::rescued`] hands it to the relay, which spools it as refused
//!   (see [`crate::delivery::Delivery::keep_rescued`]).

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
    /// `None` while waiting; the refusal another publish's confirm carried.
    in_flight: Mutex<HashMap<ShortString, Option<Refusal>>>,
    rescue: mpsc::UnboundedSender<Rescued>,
    rescued: Mutex<Option<mpsc::UnboundedReceiver<Rescued>>>,
}

/// One publish, watched until its confirm is sorted out.
pub(super) struct Watch {
    returns: Arc<Returns>,
    id: Option<ShortString>,
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
    /// an id cannot be matched, and keeps what lapin attached).
    pub(super) fn watch(self: &Arc<Self>, properties: &BasicProperties) -> Watch {
        let id = properties.message_id().clone();
        if let Some(id) = &id {
            self.in_flight.locked().insert(id.clone(), None);
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

    /// Hands `returned` (another publish's) over to its owner, or rescues it
    /// when its owner has ended.
    fn hand_over(&self, returned: BasicReturnMessage) {
        let refusal = refusal(&returned);
        if let Some(id) = returned.properties.message_id()
            && let Some(owner) = self.in_flight.locked().get_mut(id)
        {
            *owner = Some(refusal);
            return;
        }
        // Nobody stores it if this fails: the receiver is gone only when the
        // relay stops.
        let _ = self.rescue.send(Rescued {
            exchange: returned.delivery.exchange.to_string(),
            routing_key: returned.delivery.routing_key.to_string(),
            body: returned.delivery.data,
            properties: returned.delivery.properties,
            refusal,
        });
    }
}

/// What a confirm means for one publish, its returns sorted out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Sorted {
    /// Stored by every queue it reached, and returned by none.
    Acked,
    /// No queue took it.
    Returned(Refusal),
    Nacked,
    /// The channel was not in confirm mode.
    NotRequested,
}

impl Sorted {
    /// A confirm taken as lapin attached its return: for a channel one
    /// caller uses for one publish at a time (a tool's, a note's).
    pub(super) fn as_attached(confirmation: Confirmation) -> Sorted {
        match confirmation {
            Confirmation::Ack(None) => Sorted::Acked,
            Confirmation::Ack(Some(returned)) => Sorted::Returned(refusal(&returned)),
            Confirmation::Nack(_) => Sorted::Nacked,
            Confirmation::NotRequested => Sorted::NotRequested,
        }
    }
}

impl Watch {
    /// The confirm as far as this publish goes: a return that is another's
    /// is handed over to it; one another publish's confirm carried for this
    /// one is taken in.
    pub(super) fn sort(self, confirmation: Confirmation) -> Sorted {
        let (sorted, returned) = match confirmation {
            Confirmation::Ack(returned) => (Sorted::Acked, returned),
            Confirmation::Nack(returned) => (Sorted::Nacked, returned),
            Confirmation::NotRequested => (Sorted::NotRequested, None),
        };
        let own = match returned {
            Some(returned) if self.id.is_none() || returned.properties.message_id() == &self.id => {
                Some(refusal(&returned))
            }
            Some(returned) => {
                self.returns.hand_over(returned);
                None
            }
            None => None,
        };
        let handed_over = self.end();
        match (sorted, own.or(handed_over)) {
            (Sorted::Acked, Some(refusal)) => Sorted::Returned(refusal),
            (sorted, _) => sorted,
        }
    }

    /// Stops watching; what another publish's confirm handed over, if any.
    fn end(mut self) -> Option<Refusal> {
        let id = self.id.take()?;
        self.returns.in_flight.locked().remove(&id).flatten()
    }
}

impl Drop for Watch {
    /// A publish abandoned before its confirm (a request that ended, a
    /// timeout): a return that comes for it later is rescued.
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.returns.in_flight.locked().remove(&id);
        }
    }
}

fn refusal(returned: &BasicReturnMessage) -> Refusal {
    Refusal {
        code: returned.reply_code,
        text: returned.reply_text.to_string(),
    }
}
