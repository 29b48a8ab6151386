//! The private listener: liveness, readiness and Prometheus metrics.
//!
//! `/healthz` answers while the process runs. `/readyz` answers 200 while a
//! webhook would be accepted right now: RabbitMQ connected (topology declared,
//! not blocked by a resource alarm), or else the spool taking writes. Its body
//! says which, so a load balancer can route around us and an operator can see
//! that we are running on the spool.

use actix_web::http::header::CONTENT_TYPE;
use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::broker::{Broker, BrokerState};
use crate::metrics::Metrics;
use crate::spool::Spool;

/// What the admin handlers read.
pub struct Admin {
    pub broker: Broker,
    pub metrics: Metrics,
    pub spool: Option<Spool>,
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics));
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

async fn readyz(admin: web::Data<Admin>) -> HttpResponse {
    let broker = admin.broker.state();
    let spool_takes_writes = admin.spool.as_ref().is_some_and(Spool::has_room);
    let ready = broker == BrokerState::Connected || spool_takes_writes;
    let mut body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "broker": match broker {
            BrokerState::Connected => "connected",
            BrokerState::Blocked => "blocked",
            BrokerState::Disconnected => "disconnected",
        },
    });
    if let Some(spool) = &admin.spool {
        body["spool"] = json!({ "depth": spool.depth(), "accepting": spool_takes_writes });
    }
    let mut response = if ready {
        HttpResponse::Ok()
    } else {
        HttpResponse::ServiceUnavailable()
    };
    response.json(body)
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
