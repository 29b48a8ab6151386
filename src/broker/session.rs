//! One connection to RabbitMQ, ready to publish: the topology declared and a
//! small pool of channels in confirm mode open. The supervisor opens one,
//! hands it to publishers while it lasts, and declares the topology again
//! on it when asked.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use lapin::{Channel, Connection, Event};
use tracing::{info, warn};

use super::channels::Channels;
use super::connect::{CLOSE_TIMEOUT, connect_from};
use super::declare::{Conflict, Declared};
use super::names::Topology;
use super::status::{ConflictRetries, StatusBoard};
use crate::config::AmqpSettings;

/// How long declaring the whole topology may take: a broker that stops
/// answering must not leave the supervisor waiting instead of reconnecting.
const DECLARE_TIMEOUT: Duration = Duration::from_secs(15);

/// One connection with its topology declared and its publishing channels open.
pub(crate) struct Session {
    connection: Connection,
    channels: Channels,
}

/// Why there is no session.
#[derive(Debug)]
pub(super) enum Down {
    /// No node answered, or the connection broke.
    Lost(String),
    /// RabbitMQ refuses the relay's login (user, password, or the vhost):
    /// retrying cannot fix it, a human must.
    LoginRefused(String),
    /// RabbitMQ refuses the relay's own topology.
    Misconfigured(Vec<Conflict>),
}

/// What [`Session::open`] needs of the relay.
pub(super) struct Context<'a> {
    pub amqp: &'a AmqpSettings,
    pub topology: &'a Topology,
    pub status: &'a StatusBoard,
}

/// A session, the connection's events, and the index of the node it is on.
pub(super) type Opened = (Arc<Session>, BoxStream<'static, Event>, usize);

impl Session {
    /// Connects to the first node that answers from `first_node` on,
    /// declares the topology, and opens the publishing channels.
    pub(super) async fn open(
        context: &Context<'_>,
        first_node: usize,
        retries: &mut ConflictRetries,
    ) -> Result<Opened, Down> {
        let amqp = context.amqp;
        let (connection, node) = connect_from(amqp, amqp.connection_name(), first_node)
            .await
            .map_err(|err| match err.is_login_refused() {
                true => Down::LoginRefused(err.to_string()),
                false => Down::Lost(err.to_string()),
            })?;
        let events = connection.events_listener().boxed();
        match prepare(context, &connection, retries).await {
            Ok(channels) => {
                let session = Session {
                    connection,
                    channels,
                };
                Ok((Arc::new(session), events, node))
            }
            Err(down) => {
                let closing = connection.close(200, "hookrelay giving up".into());
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, closing).await;
                Err(down)
            }
        }
    }

    /// Declares the topology again, on this session's connection.
    pub(super) async fn declare(
        &self,
        context: &Context<'_>,
        retries: &mut ConflictRetries,
    ) -> Result<Declared, Down> {
        declare(context, &self.connection, retries).await
    }

    pub(super) fn connection(&self) -> &Connection {
        &self.connection
    }

    /// Whether RabbitMQ blocked publishers on this connection when it opened.
    pub(super) fn opened_blocked(&self) -> bool {
        self.connection.status().blocked()
    }

    /// The next publishing channel, round robin.
    pub(crate) fn channel(&self) -> Channel {
        self.channels.next()
    }

    /// RabbitMQ nacked a publish on `channel`: gives its slot a new channel
    /// (see [`super::channels`] for why). `Ok(true)` when it did.
    pub(crate) async fn replace_nacked(&self, channel: &Channel) -> lapin::Result<bool> {
        self.channels.replace(&self.connection, channel).await
    }

    /// What is wrong with this session, if anything.
    pub(super) fn problem(&self) -> Option<String> {
        if !self.connection.status().connected() {
            return Some("the connection is no longer open".to_owned());
        }
        self.channels
            .closed()
            .map(|id| format!("publishing channel {id} was closed"))
    }

    pub(super) async fn close(&self) {
        let closing = self.connection.close(200, "hookrelay closing".into());
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, closing).await;
    }
}

/// Declares the topology, then opens the publishing channels.
async fn prepare(
    context: &Context<'_>,
    connection: &Connection,
    retries: &mut ConflictRetries,
) -> Result<Channels, Down> {
    let report = declare(context, connection, retries).await?;
    if !report.created.is_empty() {
        info!(objects = ?report.created, "declared RabbitMQ objects that did not exist");
    }
    for outdated in &report.outdated {
        warn!(
            queue = %outdated.queue,
            "this queue of the relay's own was declared by an earlier version, without {}. It \
             works as it is; to update it, delete it while it is empty (rabbitmqctl \
             delete_queue) and the relay declares it again",
            outdated.lacks
        );
    }
    Channels::open(connection, context.amqp.channels)
        .await
        .map_err(|err| {
            Down::Lost(format!(
                "cannot open a publishing channel in confirm mode: {err}"
            ))
        })
}

/// Declares the topology and records what RabbitMQ refused: `Err` when the
/// relay's own objects are refused (or the connection fails).
async fn declare(
    context: &Context<'_>,
    connection: &Connection,
    retries: &mut ConflictRetries,
) -> Result<Declared, Down> {
    let status = context.status;
    let skip = retries.skip(&status.queue_conflicts());
    let declaring = context.topology.declare(connection, &skip);
    let report = tokio::time::timeout(DECLARE_TIMEOUT, declaring)
        .await
        .map_err(|_| {
            Down::Lost(format!(
                "RabbitMQ did not answer the topology declarations within {DECLARE_TIMEOUT:?}"
            ))
        })?
        .map_err(|err| Down::Lost(format!("cannot declare the topology: {err}")))?;
    if !report.own_conflicts.is_empty() {
        return Err(Down::Misconfigured(report.own_conflicts));
    }
    if let Some(history) = report.unavailable.first() {
        return Err(Down::Lost(format!(
            "RabbitMQ has not made the history stream available yet ({history}); \
             webhooks are spooled until it has. A moment after RabbitMQ starts this is \
             normal; if it lasts, the node that holds the stream is down: start it (or, \
             losing the history it holds, delete the stream so the relay declares it anew)"
        )));
    }
    // A skipped queue keeps the conflict it had.
    let mut conflicts = report.queue_conflicts.clone();
    conflicts.extend(
        status
            .queue_conflicts()
            .into_iter()
            .filter(|c| c.queue.as_ref().is_some_and(|q| report.skipped.contains(q))),
    );
    status.set_queue_conflicts(conflicts);
    status.set_queue_depths(context.topology, &report.depths);
    Ok(report)
}
