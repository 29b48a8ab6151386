//! The private listener: liveness, readiness and Prometheus metrics.
//!
//! `/healthz` answers while the process runs. `/readyz` answers 200 only while
//! a webhook would be accepted right now (connected, topology declared, not
//! blocked by a resource alarm), so a load balancer can route around us.

use actix_web::http::header::CONTENT_TYPE;
use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::broker::{Broker, BrokerState};
use crate::metrics::Metrics;

/// What the admin handlers read.
pub struct Admin {
    pub broker: Broker,
    pub metrics: Metrics,
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
    let (mut response, status, broker) = match admin.broker.state() {
        BrokerState::Connected => (HttpResponse::Ok(), "ready", "connected"),
        BrokerState::Blocked => (HttpResponse::ServiceUnavailable(), "not_ready", "blocked"),
        BrokerState::Disconnected => (
            HttpResponse::ServiceUnavailable(),
            "not_ready",
            "disconnected",
        ),
    };
    response.json(json!({ "status": status, "broker": broker }))
}

async fn metrics(admin: web::Data<Admin>) -> HttpResponse {
    HttpResponse::Ok()
        // prometheus-client writes the OpenMetrics text format.
        .insert_header((
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ))
        .body(admin.metrics.encode())
}
