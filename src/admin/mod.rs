//! The private listener (`server.admin_listen`): health, readiness and
//! metrics for machines ([`health`]), and, when `admin.token` is set, the
//! operator console for people: a JSON API under `/api/` (`api`, described
//! in `docs/openapi.yaml`) and server-rendered pages (`pages`), both behind
//! `auth`. The console calls the same library functions as the CLI
//! (`replay`, `history`, `accounts`, `watch::inspect`, `spool::listing`);
//! nothing here reimplements them.

mod answers;
mod api;
mod auth;
mod charts;
mod health;
pub mod openapi;
mod pages;
mod rates;

use std::sync::Arc;

use actix_web::web;

use crate::audit::numbering::Numbering;
use crate::broker::{Broker, Topology};
use crate::config::Settings;
use crate::derived::Derived;
use crate::metrics::Metrics;
use crate::spool::Spool;

pub(crate) use auth::Console;
pub(crate) use rates::Rates;

/// What the admin handlers read.
pub(crate) struct Admin {
    pub broker: Broker,
    pub metrics: Metrics,
    pub spool: Option<Spool>,
    pub settings: Arc<Settings>,
    /// `None` while the console is off (no `admin.token`).
    pub console: Option<Console>,
    pub rates: Arc<Rates>,
    /// What the relay derives from the history (the console's index, every
    /// account's state), while the history is on.
    pub derived: Option<Arc<Derived>>,
    /// The relay's numbers (none with `[audit] enabled = false`).
    pub numbering: Option<Arc<Numbering>>,
}

impl Admin {
    /// The relay's names, built once at start (the broker's own).
    pub(crate) fn topology(&self) -> &Topology {
        self.broker.topology()
    }
}

/// The admin listener's routes: health always, the console when it is on.
pub(crate) fn routes(console: bool) -> impl Fn(&mut web::ServiceConfig) + Clone {
    move |cfg| {
        health::routes(cfg);
        if console {
            api::routes(cfg);
            auth::routes(cfg);
            pages::routes(cfg);
        }
    }
}
