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
use serde_json::json;

use super::Admin;
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
    let (serving, body) = readiness(&admin);
    let mut response = if serving {
        HttpResponse::Ok()
    } else {
        HttpResponse::ServiceUnavailable()
    };
    response.json(body)
}

/// Whether a webhook would be accepted now, and `/readyz`'s body.
pub(super) fn readiness(admin: &Admin) -> (bool, serde_json::Value) {
    let broker = admin.broker.status();
    let spool_takes_writes = admin.spool.as_ref().is_some_and(Spool::has_room);
    let parked = admin.spool.as_ref().map_or(0, Spool::parked);
    let refused = admin
        .spool
        .as_ref()
        .map(Spool::refused_keys)
        .unwrap_or_default();
    let connected = broker.state == BrokerState::Connected;
    let status = if !connected && !spool_takes_writes {
        "not_ready"
    } else if !connected || !broker.queue_conflicts.is_empty() || parked > 0 || !refused.is_empty()
    {
        "degraded"
    } else {
        "ready"
    };
    let conflicts: Vec<_> = broker
        .queue_conflicts
        .iter()
        .map(|c| json!({ "queue": c.queue, "object": c.object, "reason": c.reason }))
        .collect();
    let mut body = json!({
        "status": status,
        "broker": broker.state.as_str(),
        "queue_conflicts": conflicts,
        "refused": refused.iter().map(|key| json!({
            "routing_key": key.routing_key,
            "waiting": key.waiting,
            "since": humantime::format_rfc3339_millis(key.since).to_string(),
            "reason": key.reason,
            "queues": key.queues,
        })).collect::<Vec<_>>(),
    });
    if let Some(reason) = &broker.reason {
        body["reason"] = json!(reason);
    }
    if let Some(node) = &broker.node {
        body["node"] = json!(node);
    }
    if let Some(spool) = &admin.spool {
        body["spool"] = json!({
            "depth": spool.depth(),
            "refused": spool.refused(),
            "parked": parked,
            "accepting": spool_takes_writes,
        });
    }
    if let Some(dedup) = &admin.dedup {
        body["dedup"] = json!({
            "window_seconds": dedup.window().as_secs(),
            "keys": dedup.len(),
        });
        // Only the history brings back the keys of before a restart and
        // those of other relays: without it, there is nothing to catch up on.
        if admin.settings.history.enabled {
            body["dedup"]["caught_up"] = json!(dedup.caught_up());
        }
    }
    (status != "not_ready", body)
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
