//! Liveness, readiness and Prometheus metrics: what machines ask.
//!
//! `/healthz` answers while the process runs. `/readyz` answers 200 while a
//! webhook would be accepted right now: RabbitMQ connected (topology declared,
//! not blocked by a resource alarm), or else the spool taking writes; 503
//! otherwise, so a load balancer can route around us. Its body tells the whole
//! truth: `ready` only when nothing needs a human, `degraded` (still 200) while
//! webhooks are accepted but something does (running on the spool, a consumer
//! queue RabbitMQ refuses, a routing key whose events RabbitMQ refuses, parked
//! webhooks), with RabbitMQ's own reasons, and which node of `amqp.uri` it is
//! connected to.

use actix_web::http::header::CONTENT_TYPE;
use actix_web::{HttpResponse, web};
use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Serialize;
use serde_json::json;

use super::Admin;
use crate::audit::numbering::Numbering;
use crate::broker::BrokerState;
use crate::spool::Spool;

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics));
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

async fn readyz(admin: web::Data<Admin>) -> HttpResponse {
    let body = readiness(&admin);
    let mut response = if body.serving() {
        HttpResponse::Ok()
    } else {
        HttpResponse::ServiceUnavailable()
    };
    response.json(body)
}

/// `/readyz`'s body (and the first part of `/api/status`'s).
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct Readiness {
    pub status: ReadyState,
    /// The connection to RabbitMQ: `connected`, `connecting`, `blocked`, …
    pub broker: &'static str,
    /// Why it is not connected, in RabbitMQ's or the network's words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The node of `amqp.uri` the relay is connected to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Declarations RabbitMQ refused (a `[[queues]]` entry that disagrees
    /// with the queue it has).
    pub queue_conflicts: Vec<Conflict>,
    /// Routing keys whose events RabbitMQ refuses, waiting in the spool.
    pub refused: Vec<Refused>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spool: Option<SpoolReadiness>,
    /// What an earlier version left that this one routes differently, and
    /// what to do.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub upgrade: Vec<String>,
    /// How far the relay has read the history into its store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history_follower: Option<Follower>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accounts: Option<AccountsReadiness>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditReadiness>,
}

/// The relay's numbers, and what the always-on audit found missing.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct AuditReadiness {
    /// This relay's `x-relay-id`.
    pub relay_id: String,
    /// Webhooks it numbered and stored since it started.
    pub stored_since_start: u64,
    /// Of its own, read back from the history by its follower since it
    /// started (when it follows the history).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_the_history_since_start: Option<u64>,
    /// This relay's numbers missing from the history for longer than
    /// `audit.missing_after`, unexplained: stored webhooks that may be lost
    /// (status `degraded`).
    pub missing: u64,
    /// The first numbers missing.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing_of: Vec<MissingOf>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct MissingOf {
    pub relay_id: String,
    pub numbers: u64,
    pub first_from: u64,
    pub first_to: u64,
}

/// `ready` only when nothing needs a human; `degraded` (still 200) while
/// webhooks are accepted but something does; `not_ready` (503) when a
/// webhook would be refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema, strum::IntoStaticStr)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub(crate) enum ReadyState {
    Ready,
    Degraded,
    NotReady,
}

/// A declaration RabbitMQ refused.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct Conflict {
    /// The consumer queue it is about, if one.
    pub queue: Option<String>,
    /// `queue <name>`, `exchange <name>` or `binding <from> -> <to>`.
    pub object: String,
    /// RabbitMQ's reply.
    pub reason: String,
}

/// A routing key whose events RabbitMQ refuses.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct Refused {
    pub routing_key: String,
    /// Its refused webhooks waiting for a retry.
    pub waiting: u64,
    /// When the first of them was refused, RFC 3339.
    pub since: String,
    /// The last refusal, in RabbitMQ's words.
    pub reason: String,
    /// The configured queues bound to this key: one of them refuses.
    pub queues: Vec<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct SpoolReadiness {
    pub depth: u64,
    pub refused: u64,
    pub parked: u64,
    /// Whether it takes webhooks now (it has room).
    pub accepting: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct Follower {
    pub caught_up: bool,
    /// The offset of the last event applied; null before the first.
    pub offset: Option<u64>,
}

/// The accounts: `/readyz` has `owed` and `announcing`; `/api/status` adds
/// what the relay's store holds.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct AccountsReadiness {
    /// Changes not announced yet.
    pub owed: u64,
    /// Whether this relay announces (holds the lease).
    pub announcing: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caught_up: Option<bool>,
    /// Accounts known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accounts: Option<u64>,
    /// Accounts in each state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by_state: Option<BTreeMap<String, u64>>,
}

impl Readiness {
    /// Whether a webhook would be accepted now.
    pub(crate) fn serving(&self) -> bool {
        self.status != ReadyState::NotReady
    }
}

/// What the relay can say of itself now: `/readyz`'s body.
pub(super) fn readiness(admin: &Admin) -> Readiness {
    let broker = admin.broker.status();
    let spool_takes_writes = admin.spool.as_ref().is_some_and(Spool::has_room);
    let parked = admin.spool.as_ref().map_or(0, Spool::parked);
    let refused = admin
        .spool
        .as_ref()
        .map(Spool::refused_keys)
        .unwrap_or_default();
    let audit = admin
        .numbering
        .as_ref()
        .map(|numbering| audit_readiness(admin, numbering));
    let missing = audit.as_ref().is_some_and(|audit| audit.missing > 0);
    let connected = broker.state == BrokerState::Connected;
    let status = if !connected && !spool_takes_writes {
        ReadyState::NotReady
    } else if !connected
        || !broker.queue_conflicts.is_empty()
        || parked > 0
        || !refused.is_empty()
        || broker.upgrade_needs_action
        || missing
    {
        ReadyState::Degraded
    } else {
        ReadyState::Ready
    };
    Readiness {
        status,
        broker: broker.state.as_str(),
        reason: broker.reason.clone(),
        node: broker.node.clone(),
        queue_conflicts: broker
            .queue_conflicts
            .iter()
            .map(|c| Conflict {
                queue: c.queue.clone(),
                object: c.object.clone(),
                reason: c.reason.clone(),
            })
            .collect(),
        refused: refused
            .into_iter()
            .map(|key| Refused {
                since: humantime::format_rfc3339_millis(key.since).to_string(),
                routing_key: key.routing_key,
                waiting: key.waiting,
                reason: key.reason,
                queues: key.queues,
            })
            .collect(),
        spool: admin.spool.as_ref().map(|spool| SpoolReadiness {
            depth: spool.depth(),
            refused: spool.refused(),
            parked,
            accepting: spool_takes_writes,
        }),
        upgrade: broker.upgrade.clone(),
        history_follower: admin.derived.as_ref().map(|derived| Follower {
            caught_up: derived.caught_up(),
            offset: derived.applied(),
        }),
        accounts: admin
            .derived
            .as_ref()
            .filter(|derived| derived.derives().accounts)
            .map(|derived| AccountsReadiness {
                owed: derived.owed(),
                announcing: admin.metrics.is_announcing(),
                caught_up: None,
                accounts: None,
                by_state: None,
            }),
        audit,
    }
}

fn audit_readiness(admin: &Admin, numbering: &Numbering) -> AuditReadiness {
    let relay_id = numbering.relay().to_string();
    let missing = numbering.missing();
    AuditReadiness {
        stored_since_start: numbering.stored(),
        in_the_history_since_start: admin
            .derived
            .as_ref()
            .map(|derived| derived.tally().seen_of(&relay_id)),
        relay_id,
        missing: missing.iter().map(|m| m.numbers).sum(),
        missing_of: missing
            .into_iter()
            .map(|m| MissingOf {
                relay_id: m.relay_id,
                numbers: m.numbers,
                first_from: m.first.0,
                first_to: m.first.1,
            })
            .collect(),
    }
}

async fn metrics(admin: web::Data<Admin>) -> HttpResponse {
    if let Some(spool) = &admin.spool {
        // The age is read at scrape time: it grows while nothing happens.
        admin
            .metrics
            .spool_oldest_age(spool.oldest_age().await.ok().flatten());
    }
    HttpResponse::Ok()
        // prometheus-client writes the OpenMetrics text format.
        .insert_header((
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ))
        .body(admin.metrics.encode())
}
