//! Reading a queue without taking from it, as `hookrelay inspect` and
//! `hookrelay replay` do: count it, fetch its messages unacknowledged, send
//! some on, and put back what was not handled, in place. AMQP 0-9-1 has no
//! "peek"; an unacknowledged message stays the queue's until it is acked or
//! nacked, and a requeued one returns to its original position.

use anyhow::Context;
use lapin::{Channel, Connection};

use lapin::message::Delivery;
use lapin::options::{
    BasicGetOptions, BasicNackOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;

use super::refusal_text;

/// A channel on `connection` in confirm mode, to publish with confirms.
pub(crate) async fn confirming_channel(connection: &Connection) -> anyhow::Result<Channel> {
    let publisher = connection
        .create_channel()
        .await
        .context("cannot open a channel")?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .context("cannot enable publisher confirms")?;
    Ok(publisher)
}

/// How many messages `queue` holds; names a missing queue in RabbitMQ's words.
pub(crate) async fn depth(channel: &Channel, queue: &str) -> anyhow::Result<u32> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    Ok(channel
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
        .map_err(|err| anyhow::anyhow!("cannot open queue {queue}: {}", refusal_text(&err)))?
        .message_count())
}

/// A queue's depth and consumers, or why RabbitMQ would not say.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QueueStats {
    pub name: String,
    pub messages: Option<u32>,
    pub consumers: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The depth and consumers of each of `queues`, read with passive declares
/// (which change nothing); a missing queue says so in RabbitMQ's words.
pub async fn stats(connection: &Connection, queues: &[&str]) -> anyhow::Result<Vec<QueueStats>> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let mut channel = connection
        .create_channel()
        .await
        .context("cannot open a channel")?;
    let mut stats = Vec::with_capacity(queues.len());
    for &name in queues {
        match channel
            .queue_declare(name.into(), passive, FieldTable::default())
            .await
        {
            Ok(queue) => stats.push(QueueStats {
                name: name.to_owned(),
                messages: Some(queue.message_count()),
                consumers: Some(queue.consumer_count()),
                error: None,
            }),
            Err(err) => {
                stats.push(QueueStats {
                    name: name.to_owned(),
                    messages: None,
                    consumers: None,
                    error: Some(refusal_text(&err)),
                });
                // A refused passive declare closes the channel.
                channel = connection
                    .create_channel()
                    .await
                    .context("cannot open a channel")?;
            }
        }
    }
    super::close_channel(&channel, "done").await;
    Ok(stats)
}

/// The next message of `queue`, unacknowledged; `None` when it is empty.
pub(crate) async fn next(channel: &Channel, queue: &str) -> anyhow::Result<Option<Delivery>> {
    let message = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await
        .with_context(|| format!("cannot read from {queue}"))?;
    Ok(message.map(|message| message.delivery))
}

/// Puts back every message this channel got unacknowledged, up to `tag`, in
/// their places: one `basic.nack` with `multiple` and `requeue`.
pub(crate) async fn requeue_up_to(channel: &Channel, tag: u64) -> lapin::Result<()> {
    let options = BasicNackOptions {
        multiple: true,
        requeue: true,
    };
    channel.basic_nack(tag, options).await
}

/// Ends a pass over `queue` read on `reader`: puts back every message up to
/// `last_held` in its place, closes `reader`, and counts what `queue` holds
/// now (on `counter`, another channel).
pub(crate) async fn put_back(
    reader: &Channel,
    last_held: Option<u64>,
    counter: &Channel,
    queue: &str,
) -> anyhow::Result<u32> {
    if let Some(tag) = last_held {
        requeue_up_to(reader, tag)
            .await
            .with_context(|| format!("cannot return the messages that stay to {queue}"))?;
    }
    super::close_channel(reader, "done").await;
    depth(counter, queue).await
}
