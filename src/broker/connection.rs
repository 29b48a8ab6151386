//! The process's one RabbitMQ connection, kept up by a supervisor task.
//!
//! The supervisor connects, declares the topology, opens a small pool of
//! channels in confirm mode and publishes that [`Session`] to everyone holding
//! a [`Broker`]. When the connection fails (an error event, a closed channel
//! reported by a publisher, or a status check), the session is withdrawn at
//! once, so requests fail fast with 503 instead of waiting on a dead socket, and
//! the supervisor reconnects with jittered exponential backoff. The relay starts
//! and serves while RabbitMQ is down; nobody has to restart it.
//!
//! Everything here is spawned on the runtime that calls [`Broker::start`]: the
//! process's main runtime, which outlives the HTTP workers' own runtimes.

use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection, ConnectionProperties, Event};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::topology;
use crate::config::{AmqpSettings, QueueSettings};
use crate::metrics::Metrics;

/// How long one connection attempt may take (TCP, TLS, AMQP handshake).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
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
    queues: Vec<QueueSettings>,
    metrics: Metrics,
    /// The live session, or `None` while (re)connecting.
    session: watch::Sender<Option<Arc<Session>>>,
    /// Poked by publishers that saw an operation fail, so the supervisor looks now.
    trouble: Notify,
    shutdown: watch::Sender<bool>,
    supervisor: Mutex<Option<JoinHandle<()>>>,
}

/// One connection with its topology declared and its publishing channels open.
pub(crate) struct Session {
    connection: Connection,
    channels: Vec<Channel>,
    next_channel: AtomicUsize,
    /// Set while RabbitMQ blocks publishers (a memory or disk alarm).
    blocked: AtomicBool,
}

/// What `/readyz` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerState {
    Connected,
    /// Connected, but RabbitMQ refuses publishes until an alarm clears.
    Blocked,
    Disconnected,
}

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot connect to RabbitMQ at {uri}: {source}")]
    Connect { uri: String, source: lapin::Error },
    #[error("no answer from RabbitMQ at {uri} within {CONNECT_TIMEOUT:?}")]
    Timeout { uri: String },
    #[error("cannot declare the topology: {0}")]
    Topology(lapin::Error),
    #[error("cannot open a publishing channel: {0}")]
    Channel(lapin::Error),
    #[error("no RabbitMQ node is configured (amqp.uri)")]
    NoNodes,
}

enum Ended {
    Shutdown,
    Lost(String),
}

impl Broker {
    /// Starts the supervisor on the current tokio runtime; it returns at once,
    /// connected or not.
    pub fn start(amqp: AmqpSettings, queues: Vec<QueueSettings>, metrics: Metrics) -> Broker {
        let broker = Broker {
            inner: Arc::new(Inner {
                amqp,
                queues,
                metrics,
                session: watch::Sender::new(None),
                trouble: Notify::new(),
                shutdown: watch::Sender::new(false),
                supervisor: Mutex::new(None),
            }),
        };
        let handle = tokio::spawn(supervise(broker.inner.clone()));
        *broker.inner.supervisor.lock().expect("supervisor lock") = Some(handle);
        broker
    }

    pub fn state(&self) -> BrokerState {
        match &*self.inner.session.borrow() {
            None => BrokerState::Disconnected,
            Some(session) if session.blocked.load(Ordering::Relaxed) => BrokerState::Blocked,
            Some(_) => BrokerState::Connected,
        }
    }

    /// Waits until a session is up; false if `timeout` passes first.
    pub async fn wait_until_connected(&self, timeout: Duration) -> bool {
        let mut session = self.inner.session.subscribe();
        tokio::time::timeout(timeout, session.wait_for(Option::is_some))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Stops reconnecting and closes the connection cleanly. Call it after the
    /// HTTP server has finished its in-flight requests.
    pub async fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
        let handle = self
            .inner
            .supervisor
            .lock()
            .expect("supervisor lock")
            .take();
        if let Some(handle) = handle {
            let _ = handle.await;
        }
    }

    pub(crate) fn session(&self) -> Option<Arc<Session>> {
        self.inner.session.borrow().clone()
    }

    /// Tells the supervisor that an operation failed, so it checks the session now.
    pub(crate) fn report_trouble(&self) {
        self.inner.trouble.notify_one();
    }

    pub fn amqp(&self) -> &AmqpSettings {
        &self.inner.amqp
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }
}

impl Session {
    /// The next publishing channel, round robin.
    pub(crate) fn channel(&self) -> &Channel {
        let i = self.next_channel.fetch_add(1, Ordering::Relaxed);
        &self.channels[i % self.channels.len()]
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
            .iter()
            .find(|c| !c.status().connected())
            .map(|c| format!("channel {} is no longer open", c.id()))
    }

    async fn close(&self) {
        let closing = self.connection.close(200, "hookrelay closing".into());
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, closing).await;
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
            Ok(Err(source)) => ConnectError::Connect {
                uri: uri.masked(),
                source,
            },
            Err(_) => ConnectError::Timeout { uri: uri.masked() },
        };
        if nodes > 1 {
            warn!(error = %error, "RabbitMQ node unavailable; trying the next");
        }
        last_error = Some(error);
    }
    Err(last_error.unwrap_or(ConnectError::NoNodes))
}

async fn supervise(inner: Arc<Inner>) {
    let mut shutdown = inner.shutdown.subscribe();
    let mut backoff = Backoff::default();
    let mut next_node = 0;
    while !*shutdown.borrow_and_update() {
        let opened = tokio::select! {
            opened = open_session(&inner.amqp, &inner.queues, next_node) => opened,
            _ = shutdown.changed() => break,
        };
        let (session, events, node) = match opened {
            Ok(opened) => opened,
            Err(err) => {
                let delay = backoff.next_delay();
                warn!(error = %err, retry_in_ms = delay.as_millis() as u64, "RabbitMQ unavailable");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => continue,
                    _ = shutdown.changed() => break,
                }
            }
        };
        backoff.reset();
        // When this node fails, try the next one first.
        next_node = (node + 1) % inner.amqp.uri.len();
        info!(
            connection = %inner.amqp.connection_name(),
            node = %inner.amqp.uri[node],
            "connected to RabbitMQ; topology declared"
        );
        inner.session.send_replace(Some(session.clone()));
        inner.metrics.broker_connected(true);

        let ended = watch_session(&session, events, &inner.trouble, &mut shutdown).await;

        inner.session.send_replace(None);
        inner.metrics.broker_connected(false);
        session.close().await;
        match ended {
            Ended::Shutdown => {
                info!("RabbitMQ connection closed");
                break;
            }
            Ended::Lost(reason) => warn!(%reason, "lost the RabbitMQ connection; reconnecting"),
        }
    }
}

async fn open_session(
    amqp: &AmqpSettings,
    queues: &[QueueSettings],
    first_node: usize,
) -> Result<(Arc<Session>, BoxStream<'static, Event>, usize), ConnectError> {
    let (connection, node) = connect_from(amqp, amqp.connection_name(), first_node).await?;
    let events = connection.events_listener().boxed();
    match open_channels(&connection, amqp, queues).await {
        Ok(channels) => {
            let session = Session {
                blocked: AtomicBool::new(connection.status().blocked()),
                connection,
                channels,
                next_channel: AtomicUsize::new(0),
            };
            Ok((Arc::new(session), events, node))
        }
        Err(err) => {
            let _ = tokio::time::timeout(
                CLOSE_TIMEOUT,
                connection.close(200, "hookrelay giving up".into()),
            )
            .await;
            Err(err)
        }
    }
}

async fn open_channels(
    connection: &Connection,
    amqp: &AmqpSettings,
    queues: &[QueueSettings],
) -> Result<Vec<Channel>, ConnectError> {
    let mut channels = Vec::with_capacity(amqp.channels);
    for _ in 0..amqp.channels {
        let channel = connection
            .create_channel()
            .await
            .map_err(ConnectError::Channel)?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(ConnectError::Channel)?;
        channels.push(channel);
    }
    topology::declare(&channels[0], amqp, queues)
        .await
        .map_err(ConnectError::Topology)?;
    Ok(channels)
}

async fn watch_session(
    session: &Session,
    mut events: BoxStream<'static, Event>,
    trouble: &Notify,
    shutdown: &mut watch::Receiver<bool>,
) -> Ended {
    let mut health_check = tokio::time::interval(HEALTH_CHECK_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return Ended::Shutdown,
            event = events.next() => match event {
                Some(Event::Error(err)) => return Ended::Lost(err.to_string()),
                Some(Event::ConnectionBlocked(reason)) => {
                    warn!(%reason, "RabbitMQ blocks publishing (resource alarm)");
                    session.blocked.store(true, Ordering::Relaxed);
                }
                Some(Event::ConnectionUnblocked) => {
                    info!("RabbitMQ accepts publishing again");
                    session.blocked.store(false, Ordering::Relaxed);
                }
                Some(_) => {}
                None => return Ended::Lost("connection events ended".to_owned()),
            },
            _ = trouble.notified() => if let Some(problem) = session.problem() {
                return Ended::Lost(problem);
            },
            _ = health_check.tick() => if let Some(problem) = session.problem() {
                return Ended::Lost(problem);
            },
        }
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
