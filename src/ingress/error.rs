//! Every way a webhook request can be refused, each mapped once to a status code
//! and a JSON body that says why without leaking internals.

use actix_web::http::StatusCode;
use actix_web::http::header::{ALLOW, RETRY_AFTER};
use actix_web::{HttpResponse, ResponseError, web};
use serde::Serialize;
use uuid::Uuid;

use super::Ingress;
use crate::delivery::DeliveryError;
use crate::event::ParseError;
use crate::metrics::Outcome;
use crate::spool::SpoolError;

/// Seconds a sender should wait before retrying while RabbitMQ is unavailable.
const RETRY_AFTER_SECS: &str = "5";

#[derive(Debug, thiserror::Error)]
pub(crate) enum IngressError {
    /// The address the request came from (the TCP peer, or what trusted
    /// proxies saw), and the peer itself: for the log, never for the answer.
    #[error("source address not allowed")]
    Forbidden {
        source_ip: Option<std::net::IpAddr>,
        peer: Option<std::net::IpAddr>,
    },
    #[error("only POST is accepted here")]
    MethodNotAllowed,
    #[error("missing or unknown x-client-id")]
    Unauthorized,
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    #[error("body larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("more than {max_headers} headers or {max_bytes} bytes of headers")]
    HeadersTooLarge {
        max_headers: usize,
        max_bytes: usize,
    },
    #[error("the body could not be read")]
    BodyUnreadable,
    #[error("the body did not arrive within {0:?}")]
    BodyTimeout(std::time::Duration),
    /// Not a valid event; kept in the quarantine queue under `id`.
    #[error("{reason}")]
    Quarantined { id: Uuid, reason: ParseError },
    /// Neither RabbitMQ nor the spool took it; the sender should retry.
    #[error("temporarily unable to store the event; retry later")]
    NotStored(#[source] Box<DeliveryError>),
    /// An identical copy arrived while this one was being stored: that
    /// copy's answer stands for the one message stored (see `copies`).
    #[error(
        "an identical copy of this webhook arrived while it was being stored: the event is \
         stored once, and that copy's answer stands for it; retry if it got none"
    )]
    Superseded,
    /// Storing it was interrupted (the relay is stopping); the sender should retry.
    #[error("storing the event was interrupted (the relay is stopping); retry later")]
    Interrupted,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'static str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a Uuid>,
}

impl IngressError {
    pub(crate) fn outcome(&self) -> Outcome {
        match self {
            IngressError::Forbidden { .. } => Outcome::Forbidden,
            IngressError::MethodNotAllowed => Outcome::MethodNotAllowed,
            IngressError::Unauthorized => Outcome::Unauthorized,
            IngressError::UnsupportedMediaType => Outcome::UnsupportedMediaType,
            IngressError::PayloadTooLarge { .. } => Outcome::PayloadTooLarge,
            IngressError::HeadersTooLarge { .. } => Outcome::HeadersTooLarge,
            IngressError::BodyUnreadable => Outcome::BadRequest,
            IngressError::BodyTimeout(_) => Outcome::BodyTimeout,
            IngressError::Quarantined { .. } => Outcome::Quarantined,
            IngressError::NotStored(err)
                if matches!(
                    **err,
                    DeliveryError::NotSpooled {
                        spool: SpoolError::Full { .. },
                        ..
                    }
                ) =>
            {
                Outcome::SpoolFull
            }
            IngressError::NotStored(_) => Outcome::BrokerUnavailable,
            IngressError::Superseded => Outcome::Superseded,
            IngressError::Interrupted => Outcome::Interrupted,
        }
    }
}

impl ResponseError for IngressError {
    fn status_code(&self) -> StatusCode {
        match self {
            IngressError::Forbidden { .. } => StatusCode::FORBIDDEN,
            IngressError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            IngressError::Unauthorized => StatusCode::UNAUTHORIZED,
            IngressError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IngressError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            IngressError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            IngressError::BodyUnreadable => StatusCode::BAD_REQUEST,
            IngressError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            IngressError::Quarantined { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            IngressError::NotStored(_) | IngressError::Superseded | IngressError::Interrupted => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    fn error_response(&self) -> HttpResponse {
        let id = match self {
            IngressError::Quarantined { id, .. } => Some(id),
            _ => None,
        };
        let mut response = HttpResponse::build(self.status_code());
        match self {
            IngressError::NotStored(_) | IngressError::Interrupted => {
                response.insert_header((RETRY_AFTER, RETRY_AFTER_SECS));
            }
            // The newer copy's answer is the one that counts; should this
            // one still be heard, a retry soon is harmless.
            IngressError::Superseded => {
                response.insert_header((RETRY_AFTER, "1"));
            }
            IngressError::MethodNotAllowed => {
                response.insert_header((ALLOW, "POST"));
            }
            // A stranger gets one answer per connection, not a kept-alive
            // connection to probe with.
            IngressError::Forbidden { .. } => {
                response.force_close();
            }
            _ => {}
        }
        response.json(ErrorBody {
            error: self.outcome().as_str(),
            message: self.to_string(),
            id,
        })
    }
}

/// 404 for every other path: the public listener serves the webhook path only.
/// Counted, so a scan (or a sender with a stale path token) shows in metrics;
/// never logged, since the path may hold a guess at the token.
pub(crate) async fn not_found(ingress: web::Data<Ingress>) -> HttpResponse {
    ingress.metrics.request(Outcome::NotFound);
    HttpResponse::NotFound().json(ErrorBody {
        error: Outcome::NotFound.as_str(),
        message: "no such path".to_owned(),
        id: None,
    })
}
