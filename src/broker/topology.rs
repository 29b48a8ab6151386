//! The exchanges and queues the relay relies on, declared idempotently on every
//! (re)connection and by `hookrelay declare`.
//!
//! ```text
//! <exchange> (topic) ──no binding matches──► <exchange>.unrouted (fanout) ──► queue <exchange>.unrouted
//!     └── consumer queues ([[queues]]) ──rejected/expired──► <exchange>.dlx (topic) ──#──► queue <exchange>.dead-letter
//! default exchange ──► queue <exchange>.quarantine   (bodies that are not valid events)
//! ```

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

use crate::config::{AmqpSettings, QueueSettings, QueueType};

const DURABLE_EXCHANGE: ExchangeDeclareOptions = ExchangeDeclareOptions {
    passive: false,
    durable: true,
    auto_delete: false,
    internal: false,
    nowait: false,
};

const DURABLE_QUEUE: QueueDeclareOptions = QueueDeclareOptions {
    passive: false,
    durable: true,
    exclusive: false,
    auto_delete: false,
    nowait: false,
};

/// Declares everything; a clash with an existing declaration (406
/// PRECONDITION_FAILED) comes back as the error, naming the object.
pub async fn declare(
    channel: &Channel,
    amqp: &AmqpSettings,
    queues: &[QueueSettings],
) -> Result<(), lapin::Error> {
    let unrouted = amqp.unrouted();
    exchange(
        channel,
        &unrouted,
        ExchangeKind::Fanout,
        FieldTable::default(),
    )
    .await?;
    queue(channel, &unrouted, FieldTable::default()).await?;
    bind(channel, &unrouted, &unrouted, "").await?;

    let mut args = FieldTable::default();
    args.insert("alternate-exchange".into(), string(&unrouted));
    exchange(channel, &amqp.exchange, ExchangeKind::Topic, args).await?;

    let dlx = amqp.dead_letter_exchange();
    exchange(channel, &dlx, ExchangeKind::Topic, FieldTable::default()).await?;
    queue(channel, &amqp.dead_letter_queue(), FieldTable::default()).await?;
    bind(channel, &amqp.dead_letter_queue(), &dlx, "#").await?;

    queue(channel, &amqp.quarantine_queue(), FieldTable::default()).await?;

    for consumer in queues {
        queue(
            channel,
            &consumer.name,
            consumer_queue_arguments(consumer, &dlx),
        )
        .await?;
        for pattern in &consumer.bindings {
            bind(channel, &consumer.name, &amqp.exchange, pattern).await?;
        }
    }
    Ok(())
}

/// Arguments of a consumer queue: dead-lettering into the DLX, and for quorum
/// queues at-least-once dead-lettering (the default, at-most-once, drops a dead
/// letter whenever the DLX target is unavailable), which RabbitMQ only allows
/// together with `reject-publish` overflow.
pub fn consumer_queue_arguments(queue: &QueueSettings, dlx: &str) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-dead-letter-exchange".into(), string(dlx));
    // A classic queue gets no `x-queue-type`, so one declared earlier without it
    // (by a consumer, say) still matches.
    if queue.kind == QueueType::Quorum {
        args.insert("x-queue-type".into(), string("quorum"));
        args.insert("x-dead-letter-strategy".into(), string("at-least-once"));
        args.insert("x-overflow".into(), string("reject-publish"));
    }
    args
}

fn string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

async fn exchange(
    channel: &Channel,
    name: &str,
    kind: ExchangeKind,
    args: FieldTable,
) -> Result<(), lapin::Error> {
    channel
        .exchange_declare(ShortString::from(name), kind, DURABLE_EXCHANGE, args)
        .await
}

async fn queue(channel: &Channel, name: &str, args: FieldTable) -> Result<(), lapin::Error> {
    channel
        .queue_declare(ShortString::from(name), DURABLE_QUEUE, args)
        .await
        .map(drop)
}

async fn bind(
    channel: &Channel,
    queue: &str,
    exchange: &str,
    pattern: &str,
) -> Result<(), lapin::Error> {
    channel
        .queue_bind(
            ShortString::from(queue),
            ShortString::from(exchange),
            ShortString::from(pattern),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}
