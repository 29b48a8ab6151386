//! The private listener (`server.admin_listen`): health, readiness and
//! metrics for machines ([`health`]), and, when `admin.token` is set, the
//! operator console for people: a JSON API under `/api/` (`api`, described
//! in `docs/openapi.yaml`) and server-rendered pages (`pages`), both behind
//! `auth`. The console calls the same library functions as the CLI
//! (`replay`, `history`, `accounts`, `watch::inspect`, `spool::listing`);
//! nothing here reimplements them.

mod api;
mod auth;
mod health;
mod pages;
mod rates;

use std::sync::Arc;

use actix_web::web;

use crate::accounts::LiveBook;
use crate::broker::Broker;
use crate::config::Settings;
use crate::dedup::Dedup;
use crate::history::Index;
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
    /// The history's index, while the console and the history are on.
    pub index: Option<Arc<Index>>,
    /// Every account's state, kept current, while accounts are on too.
    pub accounts: Option<Arc<LiveBook>>,
    /// The dedup keys of the window, unless `ingress.dedup_window` is 0.
    pub dedup: Option<Arc<Dedup>>,
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
