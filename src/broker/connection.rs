//! The process's one RabbitMQ connection, kept up by a supervisor task.
//!
//! The supervisor connects, declares the topology, opens a small pool of
//! channels in confirm mode and publishes that [`Session`] to everyone holding
//! a [`Broker`]. While connected, it declares the topology again every
//! `amqp.topology_check_secs`, and at once when RabbitMQ returns a publish of
//! ours as unroutable, so a queue or exchange deleted by an operator is back
//! within seconds and the spooled messages follow it. When the connection
//! fails (an error event, a closed channel reported by a publisher, or a status
//! check), the session is withdrawn at once, so webhooks go to the spool
//! instead of waiting on a dead socket, and the supervisor reconnects with
//! jittered exponential backoff. The relay starts and serves while RabbitMQ is
//! down; nobody has to restart it. What state it is in, and what the relay says
//! about it, is [`super::status`]'s business.
//!
//! The supervisor runs on the runtime that spawns [`Broker::supervise`]: the
//! process's main runtime, which outlives the HTTP workers' own runtimes.

use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use lapin::{Channel, Connection, ConnectionProperties, Event};
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use super::channels::Channels;
use super::status::{BrokerState, ConflictRetries, Status, StatusBoard};
use super::topology::{Conflict, Declared, Topology};
use crate::config::AmqpSettings;
use crate::metrics::Metrics;

/// How long one connection attempt may take (TCP, TLS, AMQP handshake).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long declaring the whole topology may take: a broker that stops
/// answering must not leave the supervisor waiting instead of reconnecting.
const DECLARE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long closing a connection may take before we give up on it.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the supervisor double-checks a session it has heard nothing about.
const HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// The first reconnection delay, doubled after each failure up to the maximum.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A cheap, cloneable handle on the supervised connection.
#[derive(Clone)]
pub struct Broker {
    inner: Arc<Inner>,
}

struct Inner {
    amqp: AmqpSettings,
    topology: Topology,
    metrics: Metrics,
    /// The live session, or `None` while (re)connecting or misconfigured.
    session: watch::Sender<Option<Arc<Session>>>,
    status: StatusBoard,
    /// Poked by publishers that saw a channel fail, so the supervisor looks now.
    trouble: Notify,
    /// What the last such failure said, for the log line.
    last_trouble: Mutex<Option<String>>,
    /// Poked when RabbitMQ returned a message of ours: check the topology now.
    repair: Notify,
    shutdown: watch::Sender<bool>,
}

/// One connection with its topology declared and its publishing channels open.
pub(crate) struct Session {
    connection: Connection,
    channels: Channels,
    /// Set while RabbitMQ blocks publishers (a memory or disk alarm).
    blocked: AtomicBool,
}

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

/// Why there is no session.
#[derive(Debug)]
enum Down {
    /// No node answered, or the connection broke.
    Lost(String),
    /// RabbitMQ refuses the relay's login (user, password, or the vhost):
    /// retrying cannot fix it, a human must.
    LoginRefused(String),
    /// RabbitMQ refuses the relay's own topology.
    Misconfigured(Vec<Conflict>),
}

enum Ended {
    Shutdown,
    Down(Down),
}

impl Broker {
    /// A broker that is not connected yet; [`Broker::supervise`] connects it.
    pub fn new(amqp: AmqpSettings, topology: Topology, metrics: Metrics) -> Broker {
        Broker {
            inner: Arc::new(Inner {
                status: StatusBoard::new(&topology, metrics.clone()),
                amqp,
                topology,
                metrics,
                session: watch::Sender::new(None),
                trouble: Notify::new(),
                last_trouble: Mutex::new(None),
                repair: Notify::new(),
                shutdown: watch::Sender::new(false),
            }),
        }
    }

    /// The supervisor: connects, keeps the connection and the topology up,
    /// and returns only after [`Broker::shutdown`]. Spawn it on the process's
    /// main runtime.
    pub fn supervise(&self) -> impl Future<Output = ()> + Send + 'static {
        supervise(self.inner.clone())
    }

    pub fn state(&self) -> BrokerState {
        self.status().state
    }

    /// The state, its reason and the refused consumer queues.
    pub fn status(&self) -> Status {
        let mut status = self.inner.status.get();
        if status.state == BrokerState::Connected
            && self.session().is_some_and(|session| session.is_blocked())
        {
            status.state = BrokerState::Blocked;
            status.reason = Some("RabbitMQ blocks publishing (a memory or disk alarm)".to_owned());
        }
        status
    }

    /// Waits until a session is up; false if `timeout` passes first.
    pub async fn wait_until_connected(&self, timeout: Duration) -> bool {
        let mut session = self.inner.session.subscribe();
        tokio::time::timeout(timeout, session.wait_for(Option::is_some))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Tells the supervisor to stop reconnecting and close the connection
    /// cleanly; [`Broker::supervise`] returns once it has. Call it after the
    /// HTTP server has finished its in-flight requests.
    pub fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
    }

    pub(crate) fn session(&self) -> Option<Arc<Session>> {
        self.inner.session.borrow().clone()
    }

    /// Tells the supervisor that an operation failed, so it checks the session now.
    pub(crate) fn report_trouble(&self, what: String) {
        *self.inner.last_trouble.lock().expect("trouble lock") = Some(what);
        self.inner.trouble.notify_one();
    }

    /// Tells the supervisor that RabbitMQ returned a message of ours as
    /// unroutable: something of the topology is gone, declare it again now.
    pub(crate) fn request_repair(&self) {
        self.inner.repair.notify_one();
    }

    pub fn amqp(&self) -> &AmqpSettings {
        &self.inner.amqp
    }

    pub fn topology(&self) -> &Topology {
        &self.inner.topology
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }
}

impl Session {
    /// The next publishing channel, round robin.
    pub(crate) fn channel(&self) -> Channel {
        self.channels.next()
    }

    /// RabbitMQ nacked a publish on `channel`: gives its slot a new channel
    /// (see [`super::channels`] for why). `Ok(true)` when it did.
    pub(crate) async fn replace_nacked(&self, channel: &Channel) -> lapin::Result<bool> {
        self.channels.replace(&self.connection, channel).await
    }

    pub(crate) fn is_blocked(&self) -> bool {
        self.blocked.load(Ordering::Relaxed)
    }

    /// What is wrong with this session, if anything.
    fn problem(&self) -> Option<String> {
        if !self.connection.status().connected() {
            return Some("the connection is no longer open".to_owned());
        }
        self.channels
            .closed()
            .map(|id| format!("publishing channel {id} was closed"))
    }

    async fn close(&self) {
        let closing = self.connection.close(200, "hookrelay closing".into());
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, closing).await;
    }
}

/// Opens a connection under `name` (operators, and tests, see it in
/// `rabbitmqctl list_connections`) to the first node of `amqp.uri` that answers.
/// Closes a command's connection, waiting at most [`CLOSE_TIMEOUT`]: lapin's
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

/// Closes a channel the same way: at most [`CLOSE_TIMEOUT`].
pub async fn close_channel(channel: &Channel, why: &str) {
    let closing = channel.close(200, why.into());
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, closing).await;
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

pub async fn connect(amqp: &AmqpSettings, name: String) -> Result<Connection, ConnectError> {
    connect_from(amqp, name, 0)
        .await
        .map(|(connection, _)| connection)
}

/// Tries the nodes in order starting at `first`, wrapping around; returns the
/// connection and the index of the node that answered.
async fn connect_from(
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

async fn supervise(inner: Arc<Inner>) {
    let mut shutdown = inner.shutdown.subscribe();
    let mut backoff = Backoff::default();
    let mut next_node = 0;
    let mut retries = ConflictRetries::default();
    while !*shutdown.borrow_and_update() {
        let opened = tokio::select! {
            opened = open_session(&inner, next_node, &mut retries) => opened,
            _ = shutdown.changed() => break,
        };
        let (session, events, node) = match opened {
            Ok(opened) => opened,
            Err(down) => {
                inner.metrics.broker_connect_failed();
                record(&inner, down);
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => continue,
                    _ = shutdown.changed() => break,
                }
            }
        };
        backoff.reset();
        // When this node fails, try the next one first.
        next_node = (node + 1) % inner.amqp.uri.len();
        inner.session.send_replace(Some(session.clone()));
        inner.metrics.broker_connected(true);
        inner.status.set_state(BrokerState::Connected, None);
        inner.status.set_node(Some(inner.amqp.uri[node].masked()));
        info!(
            connection = %inner.amqp.connection_name(),
            node = %inner.amqp.uri[node],
            "connected to RabbitMQ; topology declared"
        );

        let ended = watch_session(&inner, &session, events, &mut retries, &mut shutdown).await;

        inner.session.send_replace(None);
        inner.metrics.broker_connected(false);
        inner.status.set_node(None);
        session.close().await;
        match ended {
            Ended::Shutdown => {
                info!("RabbitMQ connection closed");
                break;
            }
            Ended::Down(down) => record(&inner, down),
        }
    }
}

fn record(inner: &Inner, down: Down) {
    match down {
        Down::Lost(reason) => inner
            .status
            .set_state(BrokerState::Disconnected, Some(reason)),
        Down::LoginRefused(reason) => inner.status.set_login_refused(reason),
        Down::Misconfigured(conflicts) => {
            let reason = conflicts
                .iter()
                .map(Conflict::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            inner
                .status
                .set_state(BrokerState::Misconfigured, Some(reason));
        }
    }
}

async fn open_session(
    inner: &Inner,
    first_node: usize,
    retries: &mut ConflictRetries,
) -> Result<(Arc<Session>, BoxStream<'static, Event>, usize), Down> {
    let (connection, node) = connect_from(&inner.amqp, inner.amqp.connection_name(), first_node)
        .await
        .map_err(|err| match err.is_login_refused() {
            true => Down::LoginRefused(err.to_string()),
            false => Down::Lost(err.to_string()),
        })?;
    let events = connection.events_listener().boxed();
    match prepare(inner, &connection, retries).await {
        Ok(channels) => {
            let session = Session {
                blocked: AtomicBool::new(connection.status().blocked()),
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

/// Declares the topology, then opens the publishing channels.
async fn prepare(
    inner: &Inner,
    connection: &Connection,
    retries: &mut ConflictRetries,
) -> Result<Channels, Down> {
    let report = declare(inner, connection, retries).await?;
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
    Channels::open(connection, inner.amqp.channels)
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
    inner: &Inner,
    connection: &Connection,
    retries: &mut ConflictRetries,
) -> Result<Declared, Down> {
    let skip = retries.skip(&inner.status.queue_conflicts());
    let report = tokio::time::timeout(DECLARE_TIMEOUT, inner.topology.declare(connection, &skip))
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
    // A skipped queue keeps the conflict it had.
    let mut conflicts = report.queue_conflicts.clone();
    conflicts.extend(
        inner
            .status
            .queue_conflicts()
            .into_iter()
            .filter(|c| c.queue.as_ref().is_some_and(|q| report.skipped.contains(q))),
    );
    inner.status.set_queue_conflicts(conflicts);
    Ok(report)
}

async fn watch_session(
    inner: &Inner,
    session: &Session,
    mut events: BoxStream<'static, Event>,
    retries: &mut ConflictRetries,
    shutdown: &mut watch::Receiver<bool>,
) -> Ended {
    let mut health_check = tokio::time::interval(HEALTH_CHECK_INTERVAL);
    let check_every = inner.amqp.topology_check_interval();
    let mut topology_check =
        tokio::time::interval_at(tokio::time::Instant::now() + check_every, check_every);
    // Since when the topology is known to have been whole.
    let mut last_good_check = std::time::SystemTime::now();
    loop {
        let why = tokio::select! {
            _ = shutdown.changed() => return Ended::Shutdown,
            event = events.next() => match event {
                // lapin also reports each channel that RabbitMQ closed (a refused
                // declare, a publish to a missing exchange): the operation itself
                // got that error, and a closed publishing channel is found by the
                // checks below. Only a connection-level error ends the session.
                Some(Event::Error(err)) if err.is_amqp_soft_error() => continue,
                Some(Event::Error(err)) => return Ended::Down(Down::Lost(err.to_string())),
                Some(Event::ConnectionBlocked(reason)) => {
                    warn!(%reason, "RabbitMQ blocks publishing (resource alarm): webhooks are spooled until it clears");
                    session.blocked.store(true, Ordering::Relaxed);
                    inner.metrics.broker_state(BrokerState::Blocked);
                    continue;
                }
                Some(Event::ConnectionUnblocked) => {
                    info!("RabbitMQ accepts publishing again");
                    session.blocked.store(false, Ordering::Relaxed);
                    inner.metrics.broker_state(BrokerState::Connected);
                    continue;
                }
                Some(_) => continue,
                None => return Ended::Down(Down::Lost("connection events ended".to_owned())),
            },
            _ = inner.trouble.notified() => {
                if let Some(problem) = session.problem() {
                    let what = inner.last_trouble.lock().expect("trouble lock").take();
                    let reason = match what {
                        Some(what) => format!("{problem} ({what})"),
                        None => problem,
                    };
                    return Ended::Down(Down::Lost(reason));
                }
                continue;
            }
            _ = health_check.tick() => match session.problem() {
                Some(problem) => return Ended::Down(Down::Lost(problem)),
                None => continue,
            },
            _ = topology_check.tick() => "periodic check",
            _ = inner.repair.notified() => "RabbitMQ returned a message as unroutable",
        };
        let started = Instant::now();
        match declare(inner, &session.connection, retries).await {
            Ok(report) if !report.created.is_empty() => {
                inner
                    .metrics
                    .topology_redeclared(report.created.len() as u64);
                let since = humantime::format_rfc3339_seconds(last_good_check).to_string();
                match inner.topology.history_stream() {
                    // The history stream made every publish count as routed:
                    // nothing came back to the spool, but the history has it.
                    Some(_) => warn!(
                        objects = ?report.created,
                        trigger = why,
                        %since,
                        "RabbitMQ objects of the relay were missing (deleted while it ran?) and \
                         are declared again. Events that arrived meanwhile and found no queue \
                         are in the history: `hookrelay events --since {since}` lists them, \
                         `hookrelay replay --from-history --since {since} --to-exchange` sends \
                         them again (a duplicate for queues that had them)"
                    ),
                    None => warn!(
                        objects = ?report.created,
                        trigger = why,
                        "RabbitMQ objects of the relay were missing (deleted while it ran?) and \
                         are declared again; spooled messages follow"
                    ),
                }
            }
            Ok(_) => {
                debug!(trigger = why, took = ?started.elapsed(), "topology checked");
            }
            Err(down) => return Ended::Down(down),
        }
        last_good_check = std::time::SystemTime::now();
    }
}

/// Exponential backoff with jitter, so replicas do not reconnect in lockstep.
#[derive(Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    fn next_delay(&mut self) -> Duration {
        let base = FIRST_BACKOFF
            .saturating_mul(1 << self.failures.min(16))
            .min(MAX_BACKOFF);
        self.failures = self.failures.saturating_add(1);
        // Half fixed, half random: RandomState is seeded randomly per process.
        let random = RandomState::new().build_hasher().finish();
        let half = base / 2;
        half + half.mul_f64((random % 1000) as f64 / 1000.0)
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_and_resets() {
        let mut backoff = Backoff::default();
        let first = backoff.next_delay();
        assert!(
            first >= FIRST_BACKOFF / 2 && first <= FIRST_BACKOFF,
            "{first:?}"
        );
        let delays: Vec<Duration> = (0..20).map(|_| backoff.next_delay()).collect();
        assert!(delays.iter().all(|d| *d <= MAX_BACKOFF));
        assert!(delays[19] >= MAX_BACKOFF / 2);
        backoff.reset();
        assert!(backoff.next_delay() <= FIRST_BACKOFF);
    }
}
