//! The public HTTP app: the webhook path and nothing else.
//!
//! `client_ip` decides who is calling, `webhook` runs the checks and the
//! publish, `copies` stores identical copies in flight once, `error` turns
//! every refusal into a status code and a JSON reason, `log_budget` keeps a
//! flood of refusals out of the log.

pub mod client_ip;
mod copies;
pub(crate) mod error;
mod log_budget;
pub(crate) mod tls;
mod webhook;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{HttpRequest, guard, web};
use subtle::ConstantTimeEq;

use crate::audit::numbering::{Numbering, Ticket};
use crate::config::ip_ranges::IpRanges;
use crate::config::{Secret, Settings};
use crate::delivery::Delivery;
use crate::metrics::Metrics;
use crate::traces::Traces;
use crate::wire::envelope::TraceContext;
use crate::wire::headers::{TRACEPARENT, TRACESTATE};
use error::IngressError;
use log_budget::LogBudget;

/// Lines per second about refused or failed webhooks (the metrics count all).
const LOG_LINES_PER_SECOND: u32 = 20;

/// What the webhook handler needs, shared by every HTTP worker.
pub struct Ingress {
    allowed_ips: IpRanges,
    trusted_proxies: IpRanges,
    client_ids: Vec<String>,
    max_headers: usize,
    max_header_bytes: usize,
    max_body_bytes: usize,
    body_timeout: Duration,
    delivery: Delivery,
    /// This relay's numbers: one for each webhook it stores (none with
    /// `[audit] enabled = false`).
    numbering: Option<Arc<Numbering>>,
    /// Identical copies in flight, stored once.
    copies: Arc<copies::Copies<webhook::Stored>>,
    traces: Arc<Traces>,
    metrics: Metrics,
    log_budget: LogBudget,
}

impl Ingress {
    pub fn new(
        settings: &Settings,
        delivery: Delivery,
        numbering: Option<Arc<Numbering>>,
        traces: Arc<Traces>,
        metrics: Metrics,
    ) -> Ingress {
        Ingress {
            allowed_ips: settings.ingress.allowed_ips.clone(),
            trusted_proxies: settings.ingress.trusted_proxies.clone(),
            client_ids: settings.ingress.client_ids.clone(),
            max_headers: settings.server.max_headers,
            max_header_bytes: settings.server.max_header_bytes,
            max_body_bytes: settings.server.max_body_bytes,
            body_timeout: settings.server.body_timeout(),
            delivery,
            numbering,
            copies: copies::Copies::new(),
            traces,
            metrics,
            log_budget: LogBudget::per_second(LOG_LINES_PER_SECOND),
        }
    }

    /// The next number, for a webhook about to be stored.
    fn number(&self) -> Option<Ticket> {
        self.numbering.as_ref().and_then(Numbering::take)
    }

    /// The caller's address, if it is on the allowlist: the first check for
    /// every request on the webhook path, whatever its method.
    fn allowed_client(&self, req: &HttpRequest) -> Result<IpAddr, IngressError> {
        let source_ip = self.client_ip(req);
        match source_ip {
            Some(ip) if self.allowed_ips.contains(ip) => Ok(ip),
            _ => Err(IngressError::Forbidden {
                source_ip,
                peer: req.peer_addr().map(|peer| peer.ip()),
            }),
        }
    }

    /// The caller's address; `None` when the connection has no IP peer.
    fn client_ip(&self, req: &HttpRequest) -> Option<IpAddr> {
        client_ip::of_request(req, &self.trusted_proxies)
    }

    /// The W3C trace context of the request, when a trusted proxy (the TCP
    /// peer is in `ingress.trusted_proxies`) sent it: anyone else's is
    /// ignored, as it would only name a trace nobody records.
    fn trusted_trace(&self, req: &HttpRequest) -> Option<TraceContext> {
        let peer = req.peer_addr()?.ip();
        if !self.trusted_proxies.contains(peer) {
            return None;
        }
        let text = |name| req.headers().get(name)?.to_str().ok().map(str::to_owned);
        Some(TraceContext {
            traceparent: text(TRACEPARENT)?,
            tracestate: text(TRACESTATE),
        })
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

    /// Refuses more headers, or more header bytes, than configured. Every
    /// value of a repeated header counts.
    fn check_header_limits(&self, req: &HttpRequest) -> Result<(), IngressError> {
        let headers = req.headers();
        let bytes: usize = headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len())
            .sum();
        if headers.len() > self.max_headers || bytes > self.max_header_bytes {
            return Err(IngressError::HeadersTooLarge {
                max_headers: self.max_headers,
                max_bytes: self.max_header_bytes,
            });
        }
        Ok(())
    }
}

/// Where webhooks are accepted: `server.webhook_path`, or with a
/// `server.path_token` the secret path `<webhook_path>/<token>`.
#[derive(Clone)]
pub struct WebhookPath {
    base: String,
    token: Option<Secret>,
}

impl WebhookPath {
    pub fn new(base: &str, token: Option<Secret>) -> WebhookPath {
        WebhookPath {
            base: base.trim_end_matches('/').to_owned(),
            token,
        }
    }

    /// Whether `path` is `<base>/<token>`, comparing the token in constant
    /// time (only its length can show through timing).
    fn is_secret_path(&self, path: &str) -> bool {
        let (Some(token), Some(presented)) = (
            &self.token,
            path.strip_prefix(self.base.as_str())
                .and_then(|rest| rest.strip_prefix('/')),
        ) else {
            return false;
        };
        token.expose().as_bytes().ct_eq(presented.as_bytes()).into()
    }
}

/// Routes: `POST <path>` to the handler, other methods there to 405 (403 for a
/// source that is not allowed, whatever the method), and any other path to
/// 404. With a path token, a wrong token is just another path: 404 whatever the
/// method, so a scanner learns nothing.
pub fn routes(path: WebhookPath) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        let resource = match &path.token {
            None => web::resource(path.base.clone()),
            Some(_) => {
                let pattern = format!("{}/{{token}}", path.base);
                web::resource(pattern).guard(guard::fn_guard(move |ctx| {
                    path.is_secret_path(ctx.head().uri.path())
                }))
            }
        };
        cfg.service(
            resource
                .route(web::post().to(webhook::receive))
                .default_service(web::to(webhook::other_method)),
        )
        .default_service(web::to(error::not_found));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret_path(token: &str) -> WebhookPath {
        WebhookPath::new("/webhooks/", Some(Secret::new(token)))
    }

    #[test]
    fn only_the_exact_token_opens_the_secret_path() {
        let path = secret_path("0123456789abcdef");
        assert!(path.is_secret_path("/webhooks/0123456789abcdef"));
        for other in [
            "/webhooks",
            "/webhooks/",
            "/webhooks/0123456789abcdeF",
            "/webhooks/0123456789abcde",
            "/webhooks/0123456789abcdef0",
            "/webhooks/0123456789abcdef/",
            "/other/0123456789abcdef",
        ] {
            assert!(!path.is_secret_path(other), "{other}");
        }
    }
}
