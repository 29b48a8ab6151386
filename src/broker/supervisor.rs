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

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use lapin::Event;
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use super::declare::Conflict;
use super::names::Topology;
use super::session::{Context, Down, Session};
use super::status::{BrokerState, ConflictRetries, Status, StatusBoard};
use super::upgrade;
use crate::backoff::{Backoff, Ended};
use crate::config::AmqpSettings;
use crate::metrics::Metrics;
use crate::stopping::{Stopping, Switch};

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
    shutdown: Switch,
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
                shutdown: Switch::new(),
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
        self.inner.status.state()
    }

    /// The state, its reason and the refused consumer queues.
    pub fn status(&self) -> Status {
        self.inner.status.get()
    }

    /// Whether RabbitMQ blocks publishers now (a memory or disk alarm).
    pub(crate) fn is_blocked(&self) -> bool {
        self.inner.status.is_blocked()
    }

    /// Waits until a session is up; false if `timeout` passes first.
    pub async fn wait_until_connected(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.connected())
            .await
            .is_ok()
    }

    /// Waits until a session is up (its topology declared), however long
    /// that takes.
    pub async fn connected(&self) {
        let mut session = self.inner.session.subscribe();
        if session.wait_for(Option::is_some).await.is_err() {
            // The supervisor is gone: there will be no session.
            std::future::pending::<()>().await;
        }
    }

    /// Tells the supervisor to stop reconnecting and close the connection
    /// cleanly; [`Broker::supervise`] returns once it has. Call it after the
    /// HTTP server has finished its in-flight requests.
    pub fn shutdown(&self) {
        self.inner.shutdown.stop();
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

impl Inner {
    fn context(&self) -> Context<'_> {
        Context {
            amqp: &self.amqp,
            topology: &self.topology,
            status: &self.status,
        }
    }
}

async fn supervise(inner: Arc<Inner>) {
    let mut shutdown = inner.shutdown.subscribe();
    let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
    let mut next_node = 0;
    let mut retries = ConflictRetries::default();
    while !shutdown.is_stopping() {
        let context = inner.context();
        let opened = tokio::select! {
            opened = Session::open(&context, next_node, &mut retries) => opened,
            () = shutdown.stopped() => break,
        };
        let (session, events, node) = match opened {
            Ok(opened) => opened,
            Err(down) => {
                inner.metrics.broker_connect_failed();
                record(&inner, down);
                tokio::select! {
                    () = tokio::time::sleep(backoff.next_delay()) => continue,
                    () = shutdown.stopped() => break,
                }
            }
        };
        backoff.reset();
        // When this node fails, try the next one first.
        next_node = (node + 1) % inner.amqp.uri.len();
        inner.session.send_replace(Some(session.clone()));
        inner.metrics.broker_connected(true);
        inner.status.set_state(BrokerState::Connected, None);
        if session.opened_blocked() {
            inner
                .status
                .set_blocked(Some("already when connecting".to_owned()));
        }
        inner.status.set_node(Some(inner.amqp.uri[node].masked()));
        info!(
            connection = %inner.amqp.connection_name(),
            node = %inner.amqp.uri[node],
            "connected to RabbitMQ; topology declared"
        );
        check_upgrade(&inner, &session).await;

        let ended = watch_session(&inner, &session, events, &mut retries, &mut shutdown).await;

        inner.session.send_replace(None);
        inner.metrics.broker_connected(false);
        inner.status.set_node(None);
        session.close().await;
        match ended {
            Ended::Stopped => {
                info!("RabbitMQ connection closed");
                break;
            }
            Ended::Lost(down) => record(&inner, down),
        }
    }
}

/// Looks for what an earlier version left, and says so (see `upgrade`).
async fn check_upgrade(inner: &Inner, session: &Session) {
    let found = upgrade::check(session.connection(), &inner.topology, &inner.amqp).await;
    inner.status.set_upgrade(&found);
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

async fn watch_session(
    inner: &Inner,
    session: &Session,
    mut events: BoxStream<'static, Event>,
    retries: &mut ConflictRetries,
    shutdown: &mut Stopping,
) -> Ended<Down> {
    let mut health_check = tokio::time::interval(HEALTH_CHECK_INTERVAL);
    let check_every = inner.amqp.topology_check_interval();
    let mut topology_check =
        tokio::time::interval_at(tokio::time::Instant::now() + check_every, check_every);
    // Since when the topology is known to have been whole.
    let mut last_good_check = std::time::SystemTime::now();
    loop {
        let why = tokio::select! {
            () = shutdown.stopped() => return Ended::Stopped,
            event = events.next() => match event {
                // lapin also reports each channel that RabbitMQ closed (a refused
                // declare, a publish to a missing exchange): the operation itself
                // got that error, and a closed publishing channel is found by the
                // checks below. Only a connection-level error ends the session.
                Some(Event::Error(err)) if err.is_amqp_soft_error() => continue,
                Some(Event::Error(err)) => return Ended::Lost(Down::Lost(err.to_string())),
                Some(Event::ConnectionBlocked(reason)) => {
                    inner.status.set_blocked(Some(reason));
                    continue;
                }
                Some(Event::ConnectionUnblocked) => {
                    inner.status.set_blocked(None);
                    continue;
                }
                Some(_) => continue,
                None => return Ended::Lost(Down::Lost("connection events ended".to_owned())),
            },
            () = inner.trouble.notified() => {
                if let Some(problem) = session.problem() {
                    let what = inner.last_trouble.lock().expect("trouble lock").take();
                    let reason = match what {
                        Some(what) => format!("{problem} ({what})"),
                        None => problem,
                    };
                    return Ended::Lost(Down::Lost(reason));
                }
                continue;
            }
            _ = health_check.tick() => match session.problem() {
                Some(problem) => return Ended::Lost(Down::Lost(problem)),
                None => continue,
            },
            _ = topology_check.tick() => "periodic check",
            () = inner.repair.notified() => "RabbitMQ returned a message as unroutable",
        };
        let started = Instant::now();
        match session.declare(&inner.context(), retries).await {
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
            Err(down) => return Ended::Lost(down),
        }
        // Said until it is gone; nothing to look for once it is.
        if !inner.status.get().upgrade.is_empty() {
            check_upgrade(inner, session).await;
        }
        last_good_check = std::time::SystemTime::now();
    }
}
