//! What an earlier version of the relay left on the broker that this one
//! routes differently, found when the relay connects and said until it is
//! gone (`/readyz`'s `upgrade`, one WARN line per change):
//!
//! - `<exchange>.accounts`, the queue earlier versions copied every event
//!   into for their announcer. Nothing of this version reads it, so it would
//!   keep a copy of every event forever: it is deleted as soon as no relay
//!   consumes it (`if-unused`, so never from under a relay of the earlier
//!   version during a rolling upgrade). It holds copies only: every event is
//!   in the history and the consumer queues too.
//! - queues bound to `account.*` on the sender's exchange, where earlier
//!   versions announced account changes: they receive nothing now that
//!   changes go through `<exchange>.changes`. Only RabbitMQ's management API
//!   lists bindings, so this is checked when `amqp.management_url` is set.

use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection};
use tracing::info;

use super::connect::close_channel;
use super::management::Management;
use super::names::Topology;
use crate::config::AmqpSettings;
use crate::wire::account::ROUTING_PREFIX;

/// What was found, each as the sentence `/readyz` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Findings {
    /// The earlier announcer's queue, still consumed by an earlier relay.
    pub(crate) legacy_queue: Option<String>,
    /// Consumers' queues bound to `account.*` on the sender's exchange.
    pub(crate) old_route: Option<String>,
}

impl Findings {
    pub(crate) fn notices(&self) -> Vec<String> {
        self.legacy_queue
            .iter()
            .chain(&self.old_route)
            .cloned()
            .collect()
    }
}

/// Looks for what an earlier version left; deletes the earlier announcer's
/// queue once nothing consumes it. A check that cannot be made (the
/// connection fails, the management API does not answer) finds nothing.
pub(crate) async fn check(
    connection: &Connection,
    topology: &Topology,
    amqp: &AmqpSettings,
) -> Findings {
    Findings {
        legacy_queue: legacy_queue(connection, topology).await,
        old_route: old_route(topology, amqp).await,
    }
}

async fn legacy_queue(connection: &Connection, topology: &Topology) -> Option<String> {
    let queue = topology.legacy_accounts_queue();
    // A queue of the configuration is the user's, whatever its name.
    if topology.consumer_queues().iter().any(|q| q.name == queue) {
        return None;
    }
    let channel = connection.create_channel().await.ok()?;
    let found = retire(&channel, &queue, topology.changes_exchange()).await;
    close_channel(&channel, "upgrade checked").await;
    found
}

/// `Some(notice)` while a relay of an earlier version still consumes it.
async fn retire(channel: &Channel, queue: &str, changes: &str) -> Option<String> {
    let passive = QueueDeclareOptions {
        passive: true,
        durable: true,
        ..QueueDeclareOptions::default()
    };
    // Not found: the usual case (a new install, or already retired).
    let declared = channel
        .queue_declare(ShortString::from(queue), passive, FieldTable::default())
        .await
        .ok()?;
    if declared.consumer_count() > 0 {
        return Some(format!(
            "{queue} ({} messages) is the queue an earlier version's announcer reads; {} relay(s) \
             of that version still consume it. This version announces through the exchange \
             {} and deletes {queue} once none does (during a rolling upgrade both may \
             announce a change: the message ids are the same, so a consumer that records them \
             sees each change once)",
            declared.message_count(),
            declared.consumer_count(),
            changes,
        ));
    }
    let if_unused = QueueDeleteOptions {
        if_unused: true,
        ..QueueDeleteOptions::default()
    };
    if let Ok(messages) = channel
        .queue_delete(ShortString::from(queue), if_unused)
        .await
    {
        info!(
            queue,
            messages,
            "deleted the queue an earlier version's account announcer read (copies of events \
             the history keeps): this version announces from the history"
        );
    }
    None
}

async fn old_route(topology: &Topology, amqp: &AmqpSettings) -> Option<String> {
    let management = Management::new(amqp)?;
    let bindings = management.bindings_from(topology.exchange()).await.ok()?;
    let mut stale: Vec<String> = bindings
        .into_iter()
        .filter(|(_, pattern)| pattern.starts_with(ROUTING_PREFIX))
        .map(|(queue, pattern)| format!("{queue} ({pattern})"))
        .collect();
    if stale.is_empty() {
        return None;
    }
    stale.sort();
    Some(format!(
        "queues bound to account changes on the sender's exchange {} receive none any more: \
         this version announces them through {}. Bind them there instead (`changes = [...]` \
         in their [[queues]] entry, or queue.bind to {}), then remove the old binding: {}",
        topology.exchange(),
        topology.changes_exchange(),
        topology.changes_exchange(),
        stale.join(", ")
    ))
}
