//! Opening and closing connections to RabbitMQ: the relay's (through its
//! supervisor) and the commands' (`replay`, `inspect`, `tail`, ...), which
//! each get one of their own for as long as they run.

use lapin::{Channel, Connection, ConnectionProperties};
use std::time::Duration;
use tracing::debug;

use crate::config::AmqpSettings;

/// How long one connection attempt may take (TCP, TLS, AMQP handshake).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long closing a connection may take before we give up on it.
pub(super) const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Not a `#[source]`: the message already says it, and anyhow's `{:#}`
    /// would print it, and its own source, again (three times in all).
    #[error("cannot connect to RabbitMQ at {uri}: {reason}")]
    Connect { uri: String, reason: lapin::Error },
    #[error("no answer from RabbitMQ at {uri} within {CONNECT_TIMEOUT:?}")]
    Timeout { uri: String },
    #[error("no RabbitMQ node is configured (amqp.uri)")]
    NoNodes,
}

impl ConnectError {
    /// Whether RabbitMQ refused the login itself (`ACCESS_REFUSED`: the user
    /// or password; `NOT_ALLOWED`: no access to the vhost), as opposed to a
    /// node that is down or unreachable.
    pub fn is_login_refused(&self) -> bool {
        use lapin::protocol::{AMQPErrorKind, AMQPHardError, AMQPSoftError};
        let ConnectError::Connect { reason, .. } = self else {
            return false;
        };
        match reason.kind() {
            lapin::ErrorKind::ProtocolError(amqp) => matches!(
                amqp.kind(),
                AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED)
                    | AMQPErrorKind::Hard(AMQPHardError::NOTALLOWED)
            ),
            _ => false,
        }
    }
}

/// Opens a connection under `name` (operators, and tests, see it in
/// `rabbitmqctl list_connections`) to the first node of `amqp.uri` that answers.
pub async fn connect(amqp: &AmqpSettings, name: String) -> Result<Connection, ConnectError> {
    connect_from(amqp, name, 0)
        .await
        .map(|(connection, _)| connection)
}

/// Tries the nodes in order starting at `first`, wrapping around; returns the
/// connection and the index of the node that answered.
pub(super) async fn connect_from(
    amqp: &AmqpSettings,
    name: String,
    first: usize,
) -> Result<(Connection, usize), ConnectError> {
    let nodes = amqp.uri.len();
    let mut last_error = None;
    for offset in 0..nodes {
        let index = (first + offset) % nodes;
        let uri = &amqp.uri[index];
        let properties = ConnectionProperties::default().with_connection_name(name.clone().into());
        let error = match tokio::time::timeout(
            CONNECT_TIMEOUT,
            Connection::connect(uri.expose(), properties),
        )
        .await
        {
            Ok(Ok(connection)) => return Ok((connection, index)),
            Ok(Err(reason)) => ConnectError::Connect {
                uri: uri.masked(),
                reason,
            },
            Err(_) => ConnectError::Timeout { uri: uri.masked() },
        };
        if nodes > 1 {
            debug!(error = %error, "RabbitMQ node unavailable; trying the next");
        }
        last_error = Some(error);
    }
    Err(last_error.unwrap_or(ConnectError::NoNodes))
}

/// Closes a command's connection, waiting at most `CLOSE_TIMEOUT`: lapin's
/// close can wait forever for RabbitMQ's close-ok when the socket went first
/// (seen under load: `hookrelay replay` finished its work, and hung there).
pub async fn close(connection: &Connection, why: &str) {
    let closing = connection.close(200, why.into());
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, closing).await;
}

/// Runs `work` on a connection of its own for `tool` (a command, not the
/// relay: its name in RabbitMQ's list says which), closed whatever `work`
/// returns.
pub async fn with_tool_connection<T>(
    amqp: &AmqpSettings,
    tool: &str,
    work: impl AsyncFnOnce(&Connection) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let connection = connect(amqp, amqp.tool_connection_name(tool)).await?;
    let result = work(&connection).await;
    close(&connection, &format!("{tool} done")).await;
    result
}

/// Closes a channel the same way: at most `CLOSE_TIMEOUT`.
pub(crate) async fn close_channel(channel: &Channel, why: &str) {
    let closing = channel.close(200, why.into());
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, closing).await;
}
