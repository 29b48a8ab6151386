//! `Application::build(settings)`: binds both listeners, starts the broker
//! supervisor, and hands back the real ports and a future that runs until a
//! shutdown signal, then drains in order (HTTP first, RabbitMQ last).

use std::future::Future;
use std::net::TcpListener;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::{App, HttpServer, web};
use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

use crate::admin::{self, Admin};
use crate::broker::{Broker, Publisher};
use crate::config::Settings;
use crate::delivery::Delivery;
use crate::ingress::{self, Ingress, WebhookPath};
use crate::metrics::Metrics;
use crate::spool::{Spool, drain};
use crate::tls;

pub struct Application {
    port: u16,
    admin_port: u16,
    public: Server,
    admin: Server,
    broker: Broker,
    spool: Option<Spool>,
    drainer: Option<JoinHandle<()>>,
    stop_draining: watch::Sender<bool>,
}

impl Application {
    /// Binds the listeners (port 0 picks a free port) and starts connecting to
    /// RabbitMQ in the background. Must run inside the process's main tokio
    /// runtime: the broker connection lives there.
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        if cfg!(feature = "bench-http-only") {
            tracing::warn!("built with bench-http-only: webhooks are answered 200 and DISCARDED");
        }
        // Read before anything starts, so a bad file stops startup cleanly.
        let tls_config = settings
            .server
            .tls
            .as_ref()
            .map(tls::server_config)
            .transpose()?;
        let metrics = Metrics::new();
        let broker = Broker::start(
            settings.amqp.clone(),
            settings.queues.clone(),
            metrics.clone(),
        );

        let listener = TcpListener::bind(settings.server.listen)
            .with_context(|| format!("cannot bind server.listen {}", settings.server.listen))?;
        let admin_listener =
            TcpListener::bind(settings.server.admin_listen).with_context(|| {
                format!(
                    "cannot bind server.admin_listen {}",
                    settings.server.admin_listen
                )
            })?;
        let port = listener.local_addr()?.port();
        let admin_port = admin_listener.local_addr()?.port();

        let publisher = Publisher::new(broker.clone());
        let spool = match &settings.spool {
            spool if spool.enabled => {
                Some(Spool::open(&spool.path, spool.max_bytes, metrics.clone())?)
            }
            _ => None,
        };
        let stop_draining = watch::Sender::new(false);
        let drainer = spool.clone().map(|spool| {
            drain::start(
                spool,
                publisher.clone(),
                broker.clone(),
                stop_draining.subscribe(),
            )
        });
        let delivery = Delivery::new(publisher, spool.clone());
        let ingress = web::Data::new(Ingress::new(&settings, delivery, metrics.clone()));
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
        let public = match tls_config {
            Some(tls_config) => public.listen_rustls_0_23(listener, tls_config)?,
            None => public.listen(listener)?,
        }
        .run();

        let admin_state = web::Data::new(Admin {
            broker: broker.clone(),
            metrics,
            spool: spool.clone(),
        });
        let admin = HttpServer::new(move || {
            App::new()
                .app_data(admin_state.clone())
                .configure(admin::routes)
        })
        .workers(1)
        .disable_signals()
        .listen(admin_listener)?
        .run();

        Ok(Application {
            port,
            admin_port,
            public,
            admin,
            broker,
            spool,
            drainer,
            stop_draining,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets in-flight
    /// webhooks finish (their confirms or spool writes included), stops the
    /// drainer (what is still spooled stays on disk for the next start), and
    /// closes RabbitMQ cleanly.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let public_handle = self.public.handle();
        let admin_handle = self.admin.handle();
        let mut public = tokio::spawn(self.public);
        let mut admin = tokio::spawn(self.admin);

        let early_exit = tokio::select! {
            _ = shutdown => None,
            result = &mut public => Some(result),
            result = &mut admin => Some(result),
        };
        info!("shutting down: finishing in-flight webhooks");
        public_handle.stop(true).await;
        admin_handle.stop(true).await;
        self.stop_draining.send_replace(true);
        if let Some(drainer) = self.drainer {
            let _ = drainer.await;
        }
        if let Some(spool) = &self.spool
            && !spool.is_empty()
        {
            info!(
                depth = spool.depth(),
                "webhooks left in the spool for the next start"
            );
        }
        self.broker.shutdown().await;
        info!("stopped");
        match early_exit {
            Some(result) => Ok(result.context("an HTTP server panicked")??),
            None => Ok(()),
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
