//! The public HTTP app: the webhook path and nothing else.
//!
//! `client_ip` decides who is calling, `webhook` runs the checks and the
//! publish, `error` turns every refusal into a status code and a JSON reason.

pub mod client_ip;
pub mod error;
pub mod webhook;

use std::net::IpAddr;
use std::time::Duration;

use actix_web::{HttpRequest, web};
use subtle::ConstantTimeEq;

use crate::config::Settings;
use crate::delivery::Delivery;
use crate::ip_ranges::IpRanges;
use crate::metrics::Metrics;
use error::IngressError;

/// What the webhook handler needs, shared by every HTTP worker.
pub struct Ingress {
    allowed_ips: IpRanges,
    trusted_proxies: IpRanges,
    client_ids: Vec<String>,
    max_body_bytes: usize,
    body_timeout: Duration,
    exchange: String,
    quarantine_queue: String,
    delivery: Delivery,
    metrics: Metrics,
}

impl Ingress {
    pub fn new(settings: &Settings, delivery: Delivery, metrics: Metrics) -> Ingress {
        Ingress {
            allowed_ips: settings.ingress.allowed_ips.clone(),
            trusted_proxies: settings.ingress.trusted_proxies.clone(),
            client_ids: settings.ingress.client_ids.clone(),
            max_body_bytes: settings.server.max_body_bytes,
            body_timeout: settings.server.body_timeout(),
            exchange: settings.amqp.exchange.clone(),
            quarantine_queue: settings.amqp.quarantine_queue(),
            delivery,
            metrics,
        }
    }

    /// The caller's address; `None` when the connection has no IP peer.
    fn client_ip(&self, req: &HttpRequest) -> Option<IpAddr> {
        let peer = req.peer_addr()?.ip();
        let forwarded_for = req
            .headers()
            .get_all("x-forwarded-for")
            // An unreadable value is garbage, which stops the walk (fails closed).
            .map(|value| value.to_str().unwrap_or(""));
        Some(client_ip::resolve(
            peer,
            forwarded_for,
            &self.trusted_proxies,
        ))
    }

    /// The configured client id that `x-client-id` matches. Every id is
    /// compared in constant time, so timing does not reveal a near miss.
    fn authenticate(&self, req: &HttpRequest) -> Result<&str, IngressError> {
        let presented = req
            .headers()
            .get("x-client-id")
            .ok_or(IngressError::Unauthorized)?
            .as_bytes();
        let mut matched = None;
        for id in &self.client_ids {
            if bool::from(id.as_bytes().ct_eq(presented)) {
                matched = Some(id.as_str());
            }
        }
        matched.ok_or(IngressError::Unauthorized)
    }
}

/// Routes: `POST <path>` to the handler, other methods there to 405, and any
/// other path to 404.
pub fn routes(path: String) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.service(
            web::resource(path)
                .route(web::post().to(webhook::receive))
                .default_service(web::to(error::method_not_allowed)),
        )
        .default_service(web::to(error::not_found));
    }
}
