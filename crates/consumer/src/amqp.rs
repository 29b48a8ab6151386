//! The few things the consumer asks of RabbitMQ beyond consuming: a
//! connection to the first node that answers, whether a queue exists, and
//! one confirmed publish.

use std::time::Duration;

use anyhow::Context;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

use crate::Settings;

/// How long one connection attempt may take (TCP, TLS, AMQP handshake).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long RabbitMQ may take to answer a declaration.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long closing may take: lapin's close can wait forever for a
/// close-ok when the socket went first.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// A connection to the first of `settings.nodes` that answers.
pub(crate) async fn connect(settings: &Settings) -> anyhow::Result<Connection> {
    let mut last_error = anyhow::anyhow!("no RabbitMQ node is configured");
    for uri in &settings.nodes {
        let properties = ConnectionProperties::default()
            .with_connection_name(settings.connection_name.clone().into());
        last_error =
            match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(uri, properties)).await
            {
                Ok(Ok(connection)) => return Ok(connection),
                Ok(Err(err)) => anyhow::Error::new(err).context("cannot connect to RabbitMQ"),
                Err(_) => anyhow::anyhow!("no answer from RabbitMQ within {CONNECT_TIMEOUT:?}"),
            };
    }
    Err(last_error)
}

pub(crate) async fn close(connection: &Connection, why: &str) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, connection.close(200, why.into())).await;
}

/// Whether `queue` exists, by a passive declaration on a channel of its own
/// (RabbitMQ answers 404 and closes the channel when it does not). Any
/// other failure is an error, not an absence.
pub(crate) async fn exists(connection: &Connection, queue: &str) -> anyhow::Result<bool> {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    let channel = connection
        .create_channel()
        .await
        .context("cannot open a channel")?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let declared = tokio::time::timeout(
        ANSWER_TIMEOUT,
        channel.queue_declare(queue.into(), passive, FieldTable::default()),
    )
    .await
    .map_err(|_| {
        anyhow::anyhow!("RabbitMQ did not say within {ANSWER_TIMEOUT:?} whether {queue} exists")
    })?;
    match declared {
        Ok(_) => {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, channel.close(200, "looked".into())).await;
            Ok(true)
        }
        Err(err) => match err.kind() {
            lapin::ErrorKind::ProtocolError(amqp)
                if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)) =>
            {
                Ok(false)
            }
            _ => {
                Err(anyhow::Error::new(err).context(format!("cannot tell whether {queue} exists")))
            }
        },
    }
}

/// How many retry tiers `queue` has, knowing it has at least `known`: the
/// contract's way, declaring `<queue>.retry.<n>` passively until one is
/// missing.
pub(crate) async fn tiers_from(
    connection: &Connection,
    queue: &str,
    known: usize,
) -> anyhow::Result<usize> {
    let mut tiers = known;
    while exists(
        connection,
        &hookrelay_wire::retry::tier_queue(queue, tiers + 1),
    )
    .await?
    {
        tiers += 1;
    }
    Ok(tiers)
}

/// A channel in confirm mode.
pub(crate) async fn confirming_channel(connection: &Connection) -> anyhow::Result<Channel> {
    let channel = connection
        .create_channel()
        .await
        .context("cannot open a channel")?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .context("cannot put the channel in confirm mode")?;
    Ok(channel)
}

/// Publishes `body` to `queue` through the default exchange, mandatory, and
/// waits for RabbitMQ's confirm: only an ack of a message not returned is
/// success.
pub(crate) async fn publish_confirmed(
    channel: &Channel,
    queue: &str,
    body: &[u8],
    properties: BasicProperties,
    timeout: Duration,
) -> anyhow::Result<()> {
    let mandatory = BasicPublishOptions {
        mandatory: true,
        immediate: false,
    };
    let confirmation = tokio::time::timeout(timeout, async {
        channel
            .basic_publish("".into(), queue.into(), mandatory, body, properties)
            .await?
            .await
    })
    .await
    .map_err(|_| anyhow::anyhow!("no confirm from RabbitMQ within {timeout:?}"))??;
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(returned)) => {
            anyhow::bail!(
                "RabbitMQ returned it: {} {}",
                returned.reply_code,
                returned.reply_text
            )
        }
        Confirmation::Nack(_) => anyhow::bail!("RabbitMQ refused it (nack)"),
        Confirmation::NotRequested => anyhow::bail!("the channel is not in confirm mode"),
    }
}
