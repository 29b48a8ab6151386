//! `POST <webhook_path>`: the checks in the order the promise needs them, then
//! the confirmed publish.
//!
//! Source address (403), client id (401), content type (415) and size (413) are
//! all decided before the body is read, so a refused request costs no body
//! read and no broker round trip. Only once the event is durable (confirmed by
//! RabbitMQ, or fsync'd to the spool) do we answer 200, and only one copy
//! of a webhook in flight here is answered 200 for it (see [`super::copies`]).

use std::net::IpAddr;
use std::time::{Instant, SystemTime};

use actix_web::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use bytes::Bytes;
use serde::Serialize;
use tracing::{Level, Span, debug, field, info, info_span, warn};
use uuid::Uuid;

use super::Ingress;
use super::copies::Answer;
use super::error::IngressError;
use crate::audit::numbering::Ticket;
use crate::delivery::{Delivered, DeliveryError};
use crate::event::{Event, ParseError};
use crate::metrics::Outcome;
use crate::traces::WebhookTrace;
use crate::wire::envelope::{Kind, Receipt, event_message, quarantine_message};

/// The answer to a webhook that is durable.
#[derive(Serialize)]
struct Accepted {
    status: &'static str,
    /// The stored message's `message_id`.
    id: Uuid,
    /// Where it is now: `rabbitmq` (confirmed) or `spool` (on the relay's
    /// disk, published once RabbitMQ takes it). Both are durable.
    stored: &'static str,
}

/// How one store of a webhook ended: the message it stored, and where.
#[derive(Debug)]
pub(super) struct Stored {
    message_id: Uuid,
    delivered: Result<Delivered, DeliveryError>,
}

/// How often a copy may find the flight it joined failed and store itself.
const ATTEMPTS: u32 = 2;

/// What is known of a webhook so far, for the span of its log lines, and
/// its trace (see [`crate::traces`]) once the sender is authenticated.
///
/// The log span is built only when a line is written: a span entered around
/// the whole request cost a measurable share of the relay's CPU
/// (BENCHMARKS.md) for lines that are rarely written.
#[derive(Default)]
struct WebhookContext<'a> {
    log: LogFields,
    trace: Option<WebhookTrace<'a>>,
}

/// The fields of a webhook's log lines.
#[derive(Default)]
struct LogFields {
    source_ip: Option<IpAddr>,
    message_id: Option<Uuid>,
}

impl LogFields {
    fn span(&self, outcome: Option<Outcome>) -> Span {
        info_span!(
            "webhook",
            source_ip = self.source_ip.map(field::display),
            message_id = self.message_id.map(field::display),
            outcome = outcome.map(Outcome::as_str),
        )
    }
}

/// Handles one webhook, then counts and logs its outcome.
pub(super) async fn receive(
    req: HttpRequest,
    payload: web::Payload,
    ingress: web::Data<Ingress>,
) -> Result<HttpResponse, IngressError> {
    let started = Instant::now();
    let mut known = WebhookContext::default();
    let result = accept(&req, payload, &ingress, &mut known).await;
    let outcome = result
        .as_ref()
        .map_or_else(IngressError::outcome, |(_, outcome)| *outcome);
    if let Some(trace) = known.trace.take() {
        let status = result
            .as_ref()
            .map_or_else(|err| err.status_code(), |(response, _)| response.status());
        trace.end(status.as_u16(), outcome.as_str());
    }
    ingress.metrics.request(outcome);
    if result.is_ok() {
        ingress.metrics.observe_webhook(started.elapsed());
    }
    if outcome == Outcome::Accepted {
        // At debug: one info line per accepted webhook is a large share of
        // the relay's CPU (BENCHMARKS.md); the metrics count them, and
        // `RUST_LOG=info,hookrelay=debug` brings the lines back.
        if tracing::enabled!(Level::DEBUG) {
            known
                .log
                .span(Some(outcome))
                .in_scope(|| debug!("webhook accepted"));
        }
    } else if let Some(dropped) = ingress.log_budget.admit() {
        // Everything else can come in floods (a scanner, an outage): logged
        // within a budget, counted in full by the metrics.
        known
            .log
            .span(Some(outcome))
            .in_scope(|| log_outcome(&result, dropped));
    }
    result.map(|(response, _)| response)
}

fn log_outcome(result: &Result<(HttpResponse, Outcome), IngressError>, dropped: u64) {
    if dropped > 0 {
        warn!(
            dropped,
            "lines about refused or spooled webhooks were left out (over the log budget)"
        );
    }
    match result {
        Ok(_) => info!("webhook accepted into the spool"),
        Err(IngressError::NotStored(err)) => {
            warn!(error = %err, "webhook refused: it could not be stored");
        }
        Err(IngressError::Quarantined { reason, .. }) => warn!(%reason, "webhook quarantined"),
        // Named, so a sender whose addresses changed, or a proxy missing from
        // ingress.trusted_proxies, can be told from a scanner.
        Err(err @ IngressError::Forbidden { source_ip, peer }) => info!(
            reason = %err,
            source_ip = source_ip.map(field::display),
            peer = peer.map(field::display),
            "webhook refused"
        ),
        Err(err) => info!(reason = %err, "webhook refused"),
    }
}

async fn accept<'a>(
    req: &HttpRequest,
    payload: web::Payload,
    ingress: &'a web::Data<Ingress>,
    known: &mut WebhookContext<'a>,
) -> Result<(HttpResponse, Outcome), IngressError> {
    let received_at = SystemTime::now();
    let source_ip = ingress.allowed_client(req)?;
    known.log.source_ip = Some(source_ip);
    ingress.check_header_limits(req)?;
    let client_id = ingress.authenticate(req)?;
    let parent = ingress.trusted_trace(req);
    let trace = known
        .trace
        .insert(ingress.traces.webhook(parent.as_ref(), received_at));
    let body = json_body(req, payload, ingress).await?;

    let receipt = Receipt::new(client_id, source_ip, received_at);
    known.log.message_id = Some(receipt.message_id);
    let event = match Event::parse(&body) {
        Ok(event) => event,
        Err(reason) => return Err(quarantine(ingress, reason, receipt, body, trace).await),
    };
    ingress.metrics.schema_warnings(event.warnings());
    if let Some(code) = event.error_code().filter(|code| !code.is_known()) {
        known.log.span(None).in_scope(|| {
            warn!(
                code = code.as_str(),
                "undocumented error code; routed anyway"
            );
        });
    }
    let stored = store(ingress, client_id, &body, &event, receipt, trace).await?;
    answer(stored, known)
}

/// The body of a request that says it is JSON, read within the body
/// timeout and the size limit.
async fn json_body(
    req: &HttpRequest,
    payload: web::Payload,
    ingress: &Ingress,
) -> Result<Bytes, IngressError> {
    if !is_json(req) {
        return Err(IngressError::UnsupportedMediaType);
    }
    tokio::time::timeout(
        ingress.body_timeout,
        read_body(req, payload, ingress.max_body_bytes),
    )
    .await
    .map_err(|_| IngressError::BodyTimeout(ingress.body_timeout))?
}

/// A body from an authenticated sender that is not an event: stored in the
/// quarantine (nothing is dropped), and answered 422 with the reason, or
/// 503 when it could not be stored.
async fn quarantine(
    ingress: &Ingress,
    reason: ParseError,
    mut receipt: Receipt,
    body: Bytes,
    trace: &mut WebhookTrace<'_>,
) -> IngressError {
    receipt.trace = Some(trace.publish(|| Kind::Quarantine, receipt.message_id));
    let number = ingress.number();
    receipt.stamp = number.as_ref().map(Ticket::stamp);
    // In a task of its own, as an event's flight is: a sender that hangs up
    // neither cancels a publish RabbitMQ may already hold (nor the confirm
    // that may carry another's return) nor burns the number of a stored body.
    let (delivery, why, stamped, copy) = (
        ingress.delivery.clone(),
        reason.clone(),
        receipt.clone(),
        body.clone(),
    );
    let delivering = tokio::spawn(async move {
        let message = || quarantine_message(&why, &stamped, copy.clone());
        let delivered = delivery.deliver(message).await;
        if let Some(number) = number
            && delivered.is_ok()
        {
            number.stored();
        }
        delivered
    });
    let delivered = match delivering.await {
        Ok(delivered) => delivered,
        Err(panicked) => std::panic::resume_unwind(panicked.into_panic()),
    };
    trace.delivered(delivered.as_ref());
    match delivered {
        Ok(_) => IngressError::Quarantined {
            id: receipt.message_id,
            reason,
        },
        Err(err) => IngressError::NotStored(Box::new(err)),
    }
}

/// What the sender hears for a stored event: 200 and where it is, or why
/// it was not stored.
fn answer(
    stored: Stored,
    known: &mut WebhookContext<'_>,
) -> Result<(HttpResponse, Outcome), IngressError> {
    // A copy that joined another's flight answers with that message's id.
    known.log.message_id = Some(stored.message_id);
    let outcome = match stored.delivered {
        Ok(Delivered::Published) => Outcome::Accepted,
        // Said once per routing key by the spool's refused lane, not
        // once per webhook.
        Ok(Delivered::Refused { .. }) => Outcome::Refused,
        Ok(Delivered::Spooled { why, .. }) => {
            if let Some(why) = why {
                known
                    .log
                    .span(None)
                    .in_scope(|| warn!(error = %why, "RabbitMQ did not confirm; spooled"));
            }
            Outcome::Spooled
        }
        Err(err) => return Err(IngressError::NotStored(Box::new(err))),
    };
    let accepted = Accepted {
        status: "accepted",
        id: stored.message_id,
        stored: match outcome {
            Outcome::Accepted => "rabbitmq",
            _ => "spool",
        },
    };
    Ok((HttpResponse::Ok().json(accepted), outcome))
}

/// Stores the event, once for every identical copy in flight on this relay
/// (see [`super::copies`]): the message this request answers for, or why
/// it answers for none.
async fn store(
    ingress: &web::Data<Ingress>,
    client_id: &str,
    body: &Bytes,
    event: &Event,
    mut receipt: Receipt,
    trace: &mut WebhookTrace<'_>,
) -> Result<Stored, IngressError> {
    for attempt in 1..=ATTEMPTS {
        let start = || {
            receipt.trace =
                Some(trace.publish(|| Kind::Event(event.routing_key()), receipt.message_id));
            let span = trace.take_publish();
            let (ingress, event, receipt, body) = (
                ingress.clone(),
                event.clone(),
                receipt.clone(),
                body.clone(),
            );
            async move {
                // Taken here, where the webhook is stored: a copy that joins
                // another's flight shares its number, as it shares its message.
                let number = ingress.number();
                let mut receipt = receipt;
                receipt.stamp = number.as_ref().map(Ticket::stamp);
                let message = || event_message(&event, &receipt, body.clone());
                let delivered = ingress.delivery.deliver(message).await;
                span.delivered(&ingress.traces, delivered.as_ref());
                if delivered.is_ok() {
                    ingress.metrics.event(&event);
                    if let Some(number) = number {
                        number.stored();
                    }
                }
                Stored {
                    message_id: receipt.message_id,
                    delivered,
                }
            }
        };
        match ingress.copies.store(client_id, body, start).await {
            Answer::Superseded => return Err(IngressError::Superseded),
            // The copy this one joined was not stored: this one stores itself.
            Answer::Landed {
                outcome: Stored {
                    delivered: Err(_), ..
                },
                started: false,
            }
            | Answer::Abandoned
                if attempt < ATTEMPTS =>
            {
                receipt.message_id = Uuid::now_v7();
            }
            Answer::Landed { outcome, .. } => return Ok(outcome),
            Answer::Abandoned => break,
        }
    }
    Err(IngressError::Interrupted)
}

/// Any method but POST on the webhook path: 403 for a source that is not
/// allowed (a stranger learns nothing about the path), else 405. Counted like
/// every other answer.
pub(super) async fn other_method(
    req: HttpRequest,
    ingress: web::Data<Ingress>,
) -> Result<HttpResponse, IngressError> {
    let result = ingress
        .allowed_client(&req)
        .and(Err(IngressError::MethodNotAllowed));
    if let Err(err) = &result {
        ingress.metrics.request(err.outcome());
    }
    result
}

/// `application/json`, with or without parameters such as `charset`.
fn is_json(req: &HttpRequest) -> bool {
    req.headers()
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// Reads at most `limit` bytes; a declared Content-Length over the limit is
/// refused before a single body byte is read.
async fn read_body(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
) -> Result<Bytes, IngressError> {
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(IngressError::PayloadTooLarge { limit });
    }
    match payload.to_bytes_limited(limit).await {
        Ok(Ok(body)) => Ok(body),
        Ok(Err(_)) => Err(IngressError::BodyUnreadable),
        Err(_) => Err(IngressError::PayloadTooLarge { limit }),
    }
}
