//! `Application::build(settings)`: reads the TLS files, binds both listeners
//! and opens the spool, so a failed step leaves nothing running, and hands
//! back the real ports. `run_until_stopped` starts the background tasks (the
//! broker supervisor and the spool drainer), serves until a shutdown signal,
//! then drains in order (HTTP first, RabbitMQ last).
//!
//! The background tasks must run as long as the relay: one that ends on its
//! own (a panic, a bug) would leave a relay that answers 200 into a spool that
//! nobody drains. So `run_until_stopped` watches them, and when one ends it
//! says so in the log, stops the relay gracefully and returns an error: the
//! process exits non-zero, the orchestrator restarts it, and the spool (on
//! disk) is drained by the next run.

use std::collections::HashMap;
use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{App, HttpServer, web};
use anyhow::Context;
use futures_util::future::{BoxFuture, select_all};
use tokio::sync::Notify;
use tokio::task::{JoinError, JoinHandle};
use tracing::{error, info};

use crate::accounts::announcer::Announcer;
use crate::admin::{self, Admin, Console, Rates};
use crate::audit::{self, Keeping, numbering::Numbering};
use crate::broker::{Broker, Publisher, Topology};
use crate::config::Settings;
use crate::delivery::Delivery;
use crate::derived::{Derived, Derives};
use crate::ingress::tls;
use crate::ingress::{self, Ingress, WebhookPath};
use crate::metrics::Metrics;
use crate::spool::{Spool, drain};
use crate::stopping::Switch;
use crate::traces::Traces;

/// The background task that keeps the RabbitMQ connection and topology up.
pub const BROKER_TASK: &str = "broker supervisor";
/// The background task that publishes the spool.
pub const DRAIN_TASK: &str = "spool drainer";
/// The background task that announces changes of accounts' states.
pub const ANNOUNCER_TASK: &str = "account announcer";
/// The background task that follows the history into the relay's derived
/// store: the console's index, every account's state, the changes owed.
pub const FOLLOWER_TASK: &str = "history follower";
/// The background task that keeps the relay's numbers: the state file, and
/// the notes in the history the audit reads.
pub const AUDIT_TASK: &str = "audit keeper";
/// The background task that samples webhook rates for the console.
pub const RATES_TASK: &str = "console rates";
/// Stores what RabbitMQ returned with another publish's confirm.
pub const RESCUE_TASK: &str = "returned-message keeper";

pub struct Application {
    port: u16,
    admin_port: u16,
    public: Server,
    admin: Server,
    broker: Broker,
    spool: Option<Spool>,
    traces: Arc<Traces>,
    tasks: Tasks,
    stopping: Switch,
    rescue_stopping: Switch,
}

impl Application {
    /// Binds the listeners (port 0 picks a free port) and opens the spool.
    /// Webhooks are taken from here on (into the spool until RabbitMQ is
    /// connected by `run_until_stopped`).
    ///
    /// ```no_run
    /// # async fn run() -> anyhow::Result<()> {
    /// use hookrelay::config::Settings;
    /// use hookrelay::startup::{Application, shutdown_signal};
    ///
    /// let app = Application::build(Settings::load(None)?).await?;
    /// println!("webhooks on port {}", app.port());
    /// app.run_until_stopped(shutdown_signal()).await
    /// # }
    /// ```
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        if cfg!(feature = "bench-http-only") {
            tracing::warn!("built with bench-http-only: webhooks are answered 200 and DISCARDED");
        }
        // Every fallible step first: a failure here leaves no task behind.
        let listeners = Listeners::bind(&settings)?;
        let (port, admin_port) = listeners.ports()?;
        let metrics = Metrics::new();
        let spool = match &settings.spool {
            spool if spool.enabled => Some(Spool::open(spool, &settings.queues, metrics.clone())?),
            _ => None,
        };
        let derived = derived_store(&settings, metrics.clone())?;
        let numbering = numbering(&settings)?;
        // Every name the relay uses, built once and handed around.
        let topology = Topology::of(&settings);
        let broker = Broker::new(settings.amqp.clone(), topology.clone(), metrics.clone());
        let publisher = Publisher::new(broker.clone());
        let delivery = Delivery::new(publisher.clone(), spool.clone());
        let rescued = publisher
            .rescued()
            .map(|rescued| (delivery.clone(), rescued));
        let traces = Arc::new(Traces::new(&settings, topology, metrics.clone())?);
        let ingress = Ingress::new(
            &settings,
            delivery,
            numbering.clone(),
            traces.clone(),
            metrics.clone(),
        );
        let public = public_server(&settings, listeners.public, listeners.tls, ingress)?;
        let announcer = Announcer::new(
            broker.clone(),
            derived.as_ref().map(|(derived, _)| derived.clone()),
            settings.accounts.silent_after,
            metrics.clone(),
        );
        let console = console(&settings);
        let console_on = console.is_some();
        let rates = Arc::new(Rates::new(metrics.clone()));
        let (keeper_metrics, settings_spool_path) = (metrics.clone(), settings.spool.path.clone());
        let audit_missing_after = settings.audit.missing_after;
        let admin_state = Admin {
            numbering: numbering.clone(),
            broker: broker.clone(),
            metrics,
            spool: spool.clone(),
            settings: Arc::new(settings.clone()),
            console,
            rates: rates.clone(),
            derived: derived.as_ref().map(|(derived, _)| derived.clone()),
        };
        let admin = admin_server(listeners.admin, admin_state, console_on)?;

        // Nothing can fail from here on. The servers and the background
        // tasks start with `run_until_stopped`, which watches them.
        let mut tasks = Tasks::default();
        tasks.add(BROKER_TASK, broker.supervise());
        let stopping = Switch::new();
        // Stopped after everything that publishes: what they rescue last is
        // stored.
        let rescue_stopping = Switch::new();
        if let Some((delivery, rescued)) = rescued {
            let storing = delivery.store_late_returns(rescued, rescue_stopping.subscribe());
            tasks.add(RESCUE_TASK, storing);
        }
        if let Some(spool) = &spool {
            let draining = drain::run(
                spool.clone(),
                publisher,
                broker.clone(),
                stopping.subscribe(),
            );
            tasks.add(DRAIN_TASK, draining);
        }
        if let Some(announcer) = announcer {
            tasks.add(ANNOUNCER_TASK, announcer.run(stopping.subscribe()));
        }
        if console_on {
            tasks.add(RATES_TASK, rates.run());
        }
        if let Some(numbering) = numbering {
            let keeping = Keeping {
                broker: broker.clone(),
                stream: broker.topology().history_stream().map(str::to_owned),
                derived: derived.as_ref().map(|(derived, _)| derived.clone()),
                spool: spool.as_ref().map(|_| settings_spool_path.clone()),
                metrics: keeper_metrics,
                missing_after: audit_missing_after,
            };
            tasks.add(
                AUDIT_TASK,
                audit::keep(numbering, keeping, stopping.subscribe()),
            );
        }
        if let Some((derived, stream)) = derived {
            let following = derived.follow(broker.clone(), stream, stopping.subscribe());
            tasks.add(FOLLOWER_TASK, following);
        }
        Ok(Application {
            port,
            admin_port,
            public,
            admin,
            broker,
            spool,
            traces,
            tasks,
            stopping,
            rescue_stopping,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    /// Makes a background task panic, as a bug would: only for tests that
    /// check the relay does not go on without it.
    #[doc(hidden)]
    pub fn crash_task_for_test(&self, task: &str) {
        self.tasks.crash(task);
    }

    /// Connects to RabbitMQ and drains the spool in the background, and serves
    /// until `shutdown` resolves. Must run inside the process's main tokio
    /// runtime: the broker connection lives there. Then stops accepting, lets in-flight
    /// webhooks finish (their confirms or spool writes included), stops the
    /// drainer (what is still spooled stays on disk for the next start), and
    /// closes RabbitMQ cleanly. `Err` when a server or a background task ended
    /// on its own: the relay stopped because it could not keep its promise.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Application {
            public,
            admin,
            broker,
            spool,
            traces,
            mut tasks,
            stopping,
            rescue_stopping,
            ..
        } = self;
        let public_handle = public.handle();
        let admin_handle = admin.handle();
        let mut public = tokio::spawn(public);
        let mut admin = tokio::spawn(admin);
        tasks.start();

        let failure = tokio::select! {
            () = shutdown => None,
            result = &mut public => Some(server_failure("the public HTTP server", result)),
            result = &mut admin => Some(server_failure("the admin HTTP server", result)),
            (task, result) = tasks.first_ended() => {
                let how = match result {
                    Err(err) if err.is_panic() => "panicked",
                    _ => "returned",
                };
                error!(
                    task, how,
                    "a background task of the relay ended unexpectedly: stopping so that the \
                     relay is restarted (spooled webhooks stay on disk and are sent by the next run)"
                );
                Some(anyhow::anyhow!("the {task} task {how} unexpectedly"))
            }
        };
        info!("shutting down: finishing in-flight webhooks");
        public_handle.stop(true).await;
        admin_handle.stop(true).await;
        stopping.stop();
        tasks.finish(DRAIN_TASK).await;
        // After the servers and the drainer, the last publishers: a webhook
        // their confirms returned late is in the spool before it closes.
        rescue_stopping.stop();
        tasks.finish(RESCUE_TASK).await;
        tasks.finish(ANNOUNCER_TASK).await;
        tasks.finish(FOLLOWER_TASK).await;
        // After the servers: no webhook is in flight, so a clean stop.
        tasks.finish(AUDIT_TASK).await;
        if let Some(spool) = &spool
            && !spool.is_empty()
        {
            info!(
                depth = spool.depth(),
                "webhooks left in the spool for the next start"
            );
        }
        broker.shutdown();
        tasks.finish(BROKER_TASK).await;
        // The last spans, exported before the process ends (a blocking call).
        let _ = tokio::task::spawn_blocking(move || traces.shutdown()).await;
        info!("stopped");
        match failure {
            Some(failure) => Err(failure),
            None => Ok(()),
        }
    }
}
/// Both listeners bound, and the public one's TLS configuration read: the
/// steps that fail on a busy port or a bad certificate, before anything runs.
struct Listeners {
    public: TcpListener,
    admin: TcpListener,
    tls: Option<rustls::ServerConfig>,
}

impl Listeners {
    fn bind(settings: &Settings) -> anyhow::Result<Listeners> {
        let server = &settings.server;
        let tls = server.tls.as_ref().map(tls::server_config).transpose()?;
        let public = TcpListener::bind(server.listen)
            .with_context(|| format!("cannot bind server.listen {}", server.listen))?;
        let admin = TcpListener::bind(server.admin_listen)
            .with_context(|| format!("cannot bind server.admin_listen {}", server.admin_listen))?;
        Ok(Listeners { public, admin, tls })
    }

    /// The ports bound (the real ones when the configuration says 0).
    fn ports(&self) -> std::io::Result<(u16, u16)> {
        Ok((
            self.public.local_addr()?.port(),
            self.admin.local_addr()?.port(),
        ))
    }
}

/// The webhook listener: its workers, limits and timeouts, over TLS when
/// `server.tls` is set.
fn public_server(
    settings: &Settings,
    listener: TcpListener,
    tls: Option<rustls::ServerConfig>,
    ingress: Ingress,
) -> std::io::Result<Server> {
    let ingress = web::Data::new(ingress);
    let server = &settings.server;
    let webhook_path = WebhookPath::new(&server.webhook_path, server.path_token.clone());
    let public = HttpServer::new(move || {
        App::new()
            .app_data(ingress.clone())
            .configure(ingress::routes(webhook_path.clone()))
    })
    .workers(server.worker_count())
    .max_connections(server.max_connections_per_worker())
    .client_request_timeout(server.header_timeout())
    .keep_alive(Duration::from_secs(server.keep_alive_secs))
    .shutdown_timeout(server.shutdown_timeout_secs)
    .disable_signals();
    // A server does nothing until it is awaited: `run_until_stopped` does.
    let public = match tls {
        Some(tls) => public.listen_rustls_0_23(listener, tls)?,
        None => public.listen(listener)?,
    };
    Ok(public.run())
}

/// The console's token and how it is protected, when `admin.token` is set.
fn console(settings: &Settings) -> Option<Console> {
    let admin = &settings.admin;
    admin.console_token().map(|token| {
        Console::new(
            token.clone(),
            admin.protected_by,
            admin.public_origin.clone(),
            admin.trusted_proxies.clone(),
        )
    })
}

/// The admin listener: probes and metrics, and the console when it is on.
/// One worker: what it serves is light, and the console's heavy reads run
/// on threads of their own.
fn admin_server(listener: TcpListener, state: Admin, console_on: bool) -> std::io::Result<Server> {
    let state = web::Data::new(state);
    let routes = admin::routes(console_on);
    HttpServer::new(move || App::new().app_data(state.clone()).configure(routes.clone()))
        .workers(1)
        .disable_signals()
        .listen(listener)
        .map(|server| server.run())
}

/// The relay's identity and numbers, from its state file; none with
/// `[audit] enabled = false`.
fn numbering(settings: &Settings) -> anyhow::Result<Option<Arc<Numbering>>> {
    if !settings.audit.enabled {
        return Ok(None);
    }
    let path = settings.audit_state_path();
    let numbering = Numbering::open(&path, settings.audit.relay_id.as_deref())?;
    Ok(Some(Arc::new(numbering)))
}

/// The relay's derived store and the stream it follows, when it derives
/// anything: accounts (`[accounts]`), or the console's index (a console
/// token); both need the history.
fn derived_store(
    settings: &Settings,
    metrics: Metrics,
) -> anyhow::Result<Option<(Arc<Derived>, String)>> {
    let Some(stream) = Topology::of(settings).history_stream().map(str::to_owned) else {
        return Ok(None);
    };
    let derives = Derives::of(settings);
    if !derives.index && !derives.accounts {
        return Ok(None);
    }
    let derived = Derived::open(&settings.history_index_path(), derives, metrics)?;
    Ok(Some((derived, stream)))
}

fn server_failure(which: &str, result: Result<std::io::Result<()>, JoinError>) -> anyhow::Error {
    let why = match result {
        Ok(Ok(())) => "stopped".to_owned(),
        Ok(Err(err)) => err.to_string(),
        Err(err) => err.to_string(),
    };
    error!(server = which, %why, "an HTTP server ended unexpectedly: stopping");
    anyhow::anyhow!("{which} ended unexpectedly: {why}")
}

/// The relay's background tasks, by name, each of which must run until shutdown.
#[derive(Default)]
struct Tasks {
    /// Added, not started yet.
    pending: Vec<(&'static str, BoxFuture<'static, ()>)>,
    running: Vec<(&'static str, JoinHandle<()>)>,
    /// Test hooks: notifying one makes its task panic.
    crashes: HashMap<&'static str, Arc<Notify>>,
}

impl Tasks {
    fn add(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let crash = Arc::new(Notify::new());
        self.crashes.insert(name, crash.clone());
        let task = async move {
            tokio::select! {
                () = task => {}
                () = crash.notified() => panic!("{name}: failure injected by a test"),
            }
        };
        self.pending.push((name, Box::pin(task)));
    }

    /// Spawns the added tasks on the current runtime.
    fn start(&mut self) {
        for (name, task) in self.pending.drain(..) {
            self.running.push((name, tokio::spawn(task)));
        }
    }

    fn crash(&self, name: &str) {
        if let Some(crash) = self.crashes.get(name) {
            crash.notify_one();
        }
    }

    /// Resolves when a task ends, with its name; never, while there is none.
    async fn first_ended(&mut self) -> (&'static str, Result<(), JoinError>) {
        if self.running.is_empty() {
            return std::future::pending().await;
        }
        let (result, index, _) = select_all(self.running.iter_mut().map(|(_, h)| h)).await;
        let (name, _) = self.running.remove(index);
        (name, result)
    }

    /// Waits for the task `name` to end, if it still runs.
    async fn finish(&mut self, name: &str) {
        if let Some(index) = self.running.iter().position(|(n, _)| *n == name) {
            let (_, handle) = self.running.remove(index);
            let _ = handle.await;
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
