//! Every way a webhook request can be refused, each mapped once to a status code
//! and a JSON body that says why without leaking internals.

use actix_web::http::StatusCode;
use actix_web::http::header::{ALLOW, RETRY_AFTER};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use uuid::Uuid;

use crate::delivery::DeliveryError;
use crate::metrics::Outcome;
use crate::spool::SpoolError;

/// Seconds a sender should wait before retrying while RabbitMQ is unavailable.
const RETRY_AFTER_SECS: &str = "5";

#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    #[error("source address not allowed")]
    Forbidden,
    #[error("missing or unknown x-client-id")]
    Unauthorized,
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    #[error("body larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the body could not be read")]
    BodyUnreadable,
    #[error("the body did not arrive within {0:?}")]
    BodyTimeout(std::time::Duration),
    /// Not a valid event; kept in the quarantine queue under `id`.
    #[error("{reason}")]
    Quarantined { id: Uuid, reason: String },
    /// Neither RabbitMQ nor the spool took it; the sender should retry.
    #[error("temporarily unable to store the event; retry later")]
    NotStored(#[source] DeliveryError),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'static str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a Uuid>,
}

impl IngressError {
    pub fn outcome(&self) -> Outcome {
        match self {
            IngressError::Forbidden => Outcome::Forbidden,
            IngressError::Unauthorized => Outcome::Unauthorized,
            IngressError::UnsupportedMediaType => Outcome::UnsupportedMediaType,
            IngressError::PayloadTooLarge { .. } => Outcome::PayloadTooLarge,
            IngressError::BodyUnreadable => Outcome::BadRequest,
            IngressError::BodyTimeout(_) => Outcome::BodyTimeout,
            IngressError::Quarantined { .. } => Outcome::Quarantined,
            IngressError::NotStored(DeliveryError::NotSpooled {
                spool: SpoolError::Full { .. },
                ..
            }) => Outcome::SpoolFull,
            IngressError::NotStored(_) => Outcome::BrokerUnavailable,
        }
    }
}

impl ResponseError for IngressError {
    fn status_code(&self) -> StatusCode {
        match self {
            IngressError::Forbidden => StatusCode::FORBIDDEN,
            IngressError::Unauthorized => StatusCode::UNAUTHORIZED,
            IngressError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IngressError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            IngressError::BodyUnreadable => StatusCode::BAD_REQUEST,
            IngressError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            IngressError::Quarantined { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            IngressError::NotStored(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let id = match self {
            IngressError::Quarantined { id, .. } => Some(id),
            _ => None,
        };
        let mut response = HttpResponse::build(self.status_code());
        if matches!(self, IngressError::NotStored(_)) {
            response.insert_header((RETRY_AFTER, RETRY_AFTER_SECS));
        }
        response.json(ErrorBody {
            error: self.outcome().as_str(),
            message: self.to_string(),
            id,
        })
    }
}

/// 405 for any other method on the webhook path.
pub async fn method_not_allowed() -> HttpResponse {
    HttpResponse::MethodNotAllowed()
        .insert_header((ALLOW, "POST"))
        .json(ErrorBody {
            error: "method_not_allowed",
            message: "only POST is accepted here".to_owned(),
            id: None,
        })
}

/// 404 for every other path: the public listener serves the webhook path only.
pub async fn not_found() -> HttpResponse {
    HttpResponse::NotFound().json(ErrorBody {
        error: "not_found",
        message: "no such path".to_owned(),
        id: None,
    })
}
