//! `hookrelay inspect QUEUE`: shows what a queue holds without taking it, so
//! an operator can read quarantined bodies, dead letters, unrouted events or a
//! consumer's backlog without the management UI.
//!
//! AMQP 0-9-1 has no "peek", so the messages are fetched with `basic.get`
//! unacknowledged, shown, and all put back with one `basic.nack` (`multiple`,
//! `requeue`): RabbitMQ returns requeued messages to their original places, so
//! the queue keeps its order and its depth. Two traces remain: the messages'
//! `redelivered` flag, and on a quorum queue one more delivery each
//! (`x-delivery-count`), which counts toward its delivery limit: RabbitMQ
//! dead-letters a message (or drops it, without a dead-letter target) when it
//! comes back after its limit-th delivery. So each message shown says how
//! many deliveries it has had, this one included, and which ones this look
//! pushed over the limit; the command warns before it starts.

use schemars::JsonSchema;
use std::ops::ControlFlow;

use anyhow::Context;
use lapin::Connection;
use lapin::types::FieldTable;
use serde::Serialize;
use serde_json::Value;

use crate::broker::{self, browse};
use crate::config::AmqpSettings;
use crate::watch::render::{self, Shown};
use crate::wire::death::Death;
use crate::wire::headers::{self, DELIVERY_COUNT, QUARANTINE_REASON};

/// One message as `inspect` shows it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[schemars(rename = "Message")]
pub struct Inspected {
    /// Its place in the queue, from 1.
    pub position: u32,
    pub message_id: Option<String>,
    pub routing_key: String,
    /// Why it is here: `x-quarantine-reason`, or the newest `x-death` entry.
    pub reason: Option<String>,
    pub redelivered: bool,
    /// On a queue that counts deliveries (quorum): how many this message has
    /// had, this inspection included.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliveries: Option<i64>,
    /// Putting it back dead-letters it: this inspection was its last delivery.
    pub over_the_limit: bool,
    pub headers: Value,
    /// The body as JSON when it is JSON, else as text; `loginName` redacted unless raw.
    #[schemars(with = "Value")]
    pub body: Box<serde_json::value::RawValue>,
}

/// What one run saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[schemars(rename = "LookSummary")]
pub struct Summary {
    pub shown: u32,
    /// Messages in the queue when the run started.
    pub depth: u32,
    /// Whether the queue counts deliveries (a quorum queue).
    pub counts_deliveries: bool,
    /// Messages this inspection pushed over their delivery limit: putting
    /// them back dead-lettered them.
    pub pushed_over: u32,
}

/// Shows up to `limit` messages of `queue`, oldest first, and puts them all
/// back. `delivery_limit` is the queue's, when known (see
/// [`Topology::delivery_limit`](crate::broker::Topology::delivery_limit)).
///
/// ```no_run
/// # async fn run() -> anyhow::Result<()> {
/// use hookrelay::broker::Topology;
/// use hookrelay::config::Settings;
/// use hookrelay::watch::inspect::inspect;
/// use hookrelay::watch::render::Shown;
///
/// let settings = Settings::load(Some("relay.toml".as_ref()))?;
/// let topology = Topology::of(&settings);
/// let queue = topology.dead_letter_queue();
/// let limit = topology.delivery_limit(queue);
/// let summary = inspect(&settings.amqp, queue, Some(10), Shown::Masked, limit, |message| {
///     println!("{:?} {} {:?}", message.message_id, message.routing_key, message.reason);
/// })
/// .await?;
/// println!("shown {} of {}", summary.shown, summary.depth);
/// # Ok(())
/// # }
/// ```
pub async fn inspect(
    amqp: &AmqpSettings,
    queue: &str,
    limit: Option<u32>,
    bodies: Shown,
    delivery_limit: Option<i64>,
    mut on_message: impl FnMut(Inspected),
) -> anyhow::Result<Summary> {
    broker::with_tool_connection(amqp, "hookrelay-inspect", async |connection| {
        let each = |message| {
            on_message(message);
            ControlFlow::Continue(())
        };
        inspect_on(connection, queue, limit, bodies, delivery_limit, each).await
    })
    .await
}

/// [`inspect`] on a connection the caller holds; `on_message` may stop the
/// look early (what was taken is put back either way).
pub(crate) async fn inspect_on(
    connection: &Connection,
    queue: &str,
    limit: Option<u32>,
    bodies: Shown,
    delivery_limit: Option<i64>,
    mut on_message: impl FnMut(Inspected) -> ControlFlow<()>,
) -> anyhow::Result<Summary> {
    let channel = connection
        .create_channel()
        .await
        .context("cannot open a channel")?;
    let depth = browse::depth(&channel, queue).await?;

    let (mut shown, mut pushed_over, mut counts_deliveries) = (0, 0, false);
    let mut last_tag = None;
    while shown < limit.map_or(depth, |limit| limit.min(depth)) {
        let Some(delivery) = browse::next(&channel, queue).await? else {
            break;
        };
        last_tag = Some(delivery.delivery_tag);
        shown += 1;
        let headers = delivery.properties.headers().as_ref();
        // RabbitMQ counts deliveries before this one; returning it counts this one.
        let deliveries = delivery_count(headers).map(|before| before + 1);
        counts_deliveries |= deliveries.is_some();
        let over_the_limit = deliveries
            .zip(delivery_limit)
            .is_some_and(|(deliveries, limit)| deliveries > limit);
        pushed_over += u32::from(over_the_limit);
        let next = on_message(Inspected {
            position: shown,
            message_id: delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.to_string()),
            routing_key: delivery.routing_key.to_string(),
            reason: reason(headers),
            redelivered: delivery.redelivered,
            deliveries,
            over_the_limit,
            headers: render::headers(headers),
            body: render::body(&delivery.data, bodies),
        });
        if next.is_break() {
            break;
        }
    }
    if let Some(tag) = last_tag {
        browse::requeue_up_to(&channel, tag)
            .await
            .context("cannot put the messages back (closing the connection returns them)")?;
    }
    broker::close_channel(&channel, "inspected").await;
    Ok(Summary {
        shown,
        depth,
        counts_deliveries,
        pushed_over,
    })
}

/// `x-delivery-count`, as a quorum queue writes it: deliveries so far.
fn delivery_count(headers: Option<&FieldTable>) -> Option<i64> {
    headers::integer(headers, DELIVERY_COUNT)
}

/// Why a message is where it is, from what the relay or RabbitMQ wrote on it.
fn reason(headers: Option<&FieldTable>) -> Option<String> {
    if let Some(reason) = headers::text(headers, QUARANTINE_REASON) {
        return Some(format!("quarantined: {reason}"));
    }
    Death::from_headers(headers).map(|death| {
        format!(
            "{} in {} ({} time{})",
            if death.reason.is_empty() {
                "died"
            } else {
                &death.reason
            },
            death.queue,
            death.count,
            if death.count == 1 { "" } else { "s" }
        )
    })
}
