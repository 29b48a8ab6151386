//! What the relay publishes for a webhook: a [`Message`] that says what it is
//! (an event with its routing key, or a quarantined body), the body exactly as
//! received, and AMQP properties and headers built from the parsed event and
//! the request. Which exchange or queue it goes to is not decided here: the
//! broker's `Topology` (in the relay) decides that at publish time.
//!
//! The user's login name is personal data: it stays in the body, never in the
//! properties.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::{AMQPValue, FieldTable, ShortString};
use bytes::Bytes;
use uuid::Uuid;

use super::dedup_key::DedupKey;
use super::headers::{
    ACCOUNT_ID, CLIENT_ID, DEDUP_KEY, ERROR, ERROR_KNOWN, HOOK, QUARANTINE_REASON, RECEIVED_AT,
    RELAY_ID, RELAY_SEQ, SCHEMA_WARNINGS, SOURCE_IP, TRACEPARENT, TRACESTATE, USER_ID, integer,
    set_text, text, time,
};
use crate::event::{Event, ParseError, RoutingKey};

/// `delivery_mode` 2: RabbitMQ writes the message to disk in durable queues.
const PERSISTENT: u8 = 2;
const APP_ID: &str = "hookrelay";
const CONTENT_TYPE: &str = "application/json";

/// The facts about one accepted request that travel with its message.
#[derive(Debug, Clone)]
pub struct Receipt {
    /// A UUIDv7: unique, and sorts by time, so consumers can de-duplicate and order.
    pub message_id: Uuid,
    /// The configured client id the request matched.
    pub client_id: String,
    pub source_ip: IpAddr,
    pub received_at: SystemTime,
    /// The trace the message continues (the relay's `traces` module makes and continues it).
    pub trace: Option<TraceContext>,
    /// Which relay stored it, and its number there.
    pub stamp: Option<Stamp>,
}

/// A stored webhook's place among those one relay stored: `x-relay-id` and
/// `x-relay-seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    pub relay: std::sync::Arc<str>,
    pub seq: u64,
}

impl Stamp {
    /// The stamp a message carries, if any.
    pub fn of(headers: Option<&FieldTable>) -> Option<Stamp> {
        Some(Stamp {
            relay: text(headers, RELAY_ID)?.into(),
            seq: u64::try_from(integer(headers, RELAY_SEQ)?).ok()?,
        })
    }
}

/// W3C trace context, as it travels in a message's headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// `00-<trace id>-<span id>-<flags>`.
    pub traceparent: String,
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// The trace context a message carries, if any.
    pub fn of(properties: &BasicProperties) -> Option<TraceContext> {
        let headers = properties.headers().as_ref();
        Some(TraceContext {
            traceparent: text(headers, TRACEPARENT)?,
            tracestate: text(headers, TRACESTATE),
        })
    }

    /// The headers a W3C propagator reads, by name.
    pub fn carrier(&self) -> std::collections::HashMap<String, String> {
        let mut carrier = std::collections::HashMap::with_capacity(2);
        carrier.insert(TRACEPARENT.to_owned(), self.traceparent.clone());
        if let Some(state) = &self.tracestate {
            carrier.insert(TRACESTATE.to_owned(), state.clone());
        }
        carrier
    }
}

/// A message without the receipt the relay writes on every message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no readable `{0}`: not a message the relay published")]
pub struct NoReceipt(&'static str);

impl Receipt {
    pub fn new(client_id: &str, source_ip: IpAddr, received_at: SystemTime) -> Receipt {
        Receipt {
            message_id: Uuid::now_v7(),
            client_id: client_id.to_owned(),
            source_ip,
            received_at,
            trace: None,
            stamp: None,
        }
    }

    /// The receipt a message the relay published carries (`message_id`,
    /// `x-client-id`, `x-source-ip`, `x-received-at`): how a quarantined body
    /// is sent on, later, as the event it now parses to.
    pub fn of(properties: &BasicProperties) -> Result<Receipt, NoReceipt> {
        let headers = properties.headers().as_ref();
        let message_id = properties
            .message_id()
            .as_ref()
            .and_then(|id| id.as_str().parse().ok())
            .ok_or(NoReceipt("message_id"))?;
        let client_id = text(headers, CLIENT_ID).ok_or(NoReceipt(CLIENT_ID))?;
        let source_ip = text(headers, SOURCE_IP)
            .and_then(|ip| ip.parse().ok())
            .ok_or(NoReceipt(SOURCE_IP))?;
        let received_at = time(headers, RECEIVED_AT).ok_or(NoReceipt(RECEIVED_AT))?;
        Ok(Receipt {
            message_id,
            client_id,
            source_ip,
            received_at,
            trace: TraceContext::of(properties),
            stamp: Stamp::of(headers),
        })
    }
}

/// A message the relay publishes, and keeps in its spool until RabbitMQ confirms it.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub kind: Kind,
    /// The body as received: never re-serialised.
    pub body: Bytes,
    pub properties: BasicProperties,
}

/// What a message is, which decides where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A valid event, for the consumers bound to its routing key.
    Event(RoutingKey),
    /// A body that is not a valid event, for a human.
    Quarantine,
}

/// The message for a valid event, routed by what happened.
pub fn event_message(event: &Event, receipt: &Receipt, body: Bytes) -> Message {
    let mut headers = receipt_headers(receipt);
    set_text(&mut headers, HOOK, event.hook());
    if let Some(code) = event.error_code() {
        set_text(&mut headers, ERROR, code.as_str());
        headers.insert(ERROR_KNOWN.into(), AMQPValue::Boolean(code.is_known()));
    }
    set_text(&mut headers, ACCOUNT_ID, event.account_id());
    set_text(&mut headers, USER_ID, event.user_id());
    set_text(
        &mut headers,
        DEDUP_KEY,
        &DedupKey::of(event, &receipt.client_id).to_hex(),
    );
    if !event.warnings().is_empty() {
        let warnings: Vec<String> = event.warnings().iter().map(|w| w.to_string()).collect();
        set_text(&mut headers, SCHEMA_WARNINGS, &warnings.join("; "));
    }
    Message {
        kind: Kind::Event(event.routing_key()),
        body,
        properties: properties(receipt, headers),
    }
}

/// The message for a body that is not a valid event, with the reason.
pub fn quarantine_message(reason: &ParseError, receipt: &Receipt, body: Bytes) -> Message {
    let mut headers = receipt_headers(receipt);
    set_text(&mut headers, QUARANTINE_REASON, &reason.reason());
    Message {
        kind: Kind::Quarantine,
        body,
        properties: properties(receipt, headers),
    }
}

fn receipt_headers(receipt: &Receipt) -> FieldTable {
    let mut headers = FieldTable::default();
    set_text(&mut headers, CLIENT_ID, &receipt.client_id);
    set_text(&mut headers, SOURCE_IP, &receipt.source_ip.to_string());
    set_text(
        &mut headers,
        RECEIVED_AT,
        &humantime::format_rfc3339_millis(receipt.received_at).to_string(),
    );
    if let Some(stamp) = &receipt.stamp {
        set_text(&mut headers, RELAY_ID, &stamp.relay);
        // A number never reaches 2^63: a relay storing a million webhooks a
        // second would take 292,000 years.
        let seq = i64::try_from(stamp.seq).unwrap_or(i64::MAX);
        headers.insert(RELAY_SEQ.into(), AMQPValue::LongLongInt(seq));
    }
    if let Some(trace) = &receipt.trace {
        set_text(&mut headers, TRACEPARENT, &trace.traceparent);
        if let Some(state) = &trace.tracestate {
            set_text(&mut headers, TRACESTATE, state);
        }
    }
    headers
}

fn properties(receipt: &Receipt, headers: FieldTable) -> BasicProperties {
    let timestamp = receipt
        .received_at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_content_type(ShortString::from(CONTENT_TYPE))
        .with_message_id(ShortString::from(receipt.message_id.to_string()))
        .with_timestamp(timestamp)
        .with_app_id(ShortString::from(APP_ID))
        .with_headers(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = r#"{"hook":"SyncError","user":{"id":"u1","loginName":"alice@example.com"},"account":{"id":"a1","provider":"bank"},"error":"NewCode"}"#;

    fn receipt() -> Receipt {
        Receipt::new("app-1", "52.60.234.183".parse().unwrap(), UNIX_EPOCH)
    }

    fn header<'a>(message: &'a Message, key: &str) -> Option<&'a AMQPValue> {
        message
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(key))
    }

    fn text(value: Option<&AMQPValue>) -> String {
        match value {
            Some(AMQPValue::LongString(s)) => s.to_string(),
            other => panic!("not a string header: {other:?}"),
        }
    }

    #[test]
    fn an_event_keeps_its_body_and_gets_routing_headers() {
        let event = Event::parse(BODY.as_bytes()).unwrap();
        let message = event_message(&event, &receipt(), Bytes::from(BODY));

        assert_eq!(
            message.kind,
            Kind::Event("sync.error.NewCode".parse().unwrap())
        );
        assert_eq!(message.body, BODY.as_bytes());
        assert_eq!(message.properties.delivery_mode(), &Some(2));
        assert_eq!(
            message.properties.app_id().as_ref().unwrap().as_str(),
            "hookrelay"
        );
        assert_eq!(message.properties.timestamp(), &Some(0));
        assert_eq!(text(header(&message, "hook")), "SyncError");
        assert_eq!(text(header(&message, "error")), "NewCode");
        assert_eq!(
            header(&message, "x-error-known"),
            Some(&AMQPValue::Boolean(false))
        );
        assert_eq!(text(header(&message, "user-id")), "u1");
        assert_eq!(text(header(&message, "account-id")), "a1");
        assert_eq!(text(header(&message, "x-client-id")), "app-1");
        assert_eq!(text(header(&message, "x-source-ip")), "52.60.234.183");
        assert_eq!(
            text(header(&message, "x-received-at")),
            "1970-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn a_message_built_again_from_its_receipt_is_the_same_message() {
        // Delivery builds a webhook's message a second time when the publish
        // failed and the spool needs it: the spooled copy must be what the
        // sender's 200 names, down to the id and the time.
        let receipt = Receipt::new("app-1", "52.60.234.183".parse().unwrap(), SystemTime::now());
        let event = Event::parse(BODY.as_bytes()).unwrap();
        let published = event_message(&event, &receipt, Bytes::from(BODY));
        let spooled = event_message(&event, &receipt, Bytes::from(BODY));
        assert_eq!(published, spooled);

        let reason = Event::parse(b"{}").unwrap_err();
        assert_eq!(
            quarantine_message(&reason, &receipt, Bytes::from("{}")),
            quarantine_message(&reason, &receipt, Bytes::from("{}"))
        );
    }

    #[test]
    fn personal_data_never_becomes_a_header() {
        let event = Event::parse(BODY.as_bytes()).unwrap();
        let message = event_message(&event, &receipt(), Bytes::from(BODY));
        let headers = format!("{:?}", message.properties.headers());
        assert!(!headers.contains("alice"), "{headers}");
        assert!(!headers.to_lowercase().contains("login"), "{headers}");
    }

    #[test]
    fn missing_optional_fields_are_listed_in_a_header() {
        let body =
            r#"{"hook":"SyncAccount","user":{"id":"u1"},"account":{"id":"a1","provider":7}}"#;
        let event = Event::parse(body.as_bytes()).unwrap();
        let message = event_message(&event, &receipt(), Bytes::from(body));
        assert_eq!(
            text(header(&message, SCHEMA_WARNINGS)),
            "user.loginName missing; account.provider not a string"
        );
        let complete = Event::parse(BODY.as_bytes()).unwrap();
        let message = event_message(&complete, &receipt(), Bytes::from(BODY));
        assert_eq!(header(&message, SCHEMA_WARNINGS), None);
    }

    #[test]
    fn the_receipt_reads_back_from_the_message_it_made() {
        let sent = Receipt::new("app-1", "52.60.234.183".parse().unwrap(), SystemTime::now());
        let reason = Event::parse(b"{}").unwrap_err();
        let message = quarantine_message(&reason, &sent, Bytes::from("{}"));

        let read = Receipt::of(&message.properties).unwrap();

        assert_eq!(read.message_id, sent.message_id);
        assert_eq!(read.client_id, "app-1");
        assert_eq!(read.source_ip, sent.source_ip);
        let drift = sent.received_at.duration_since(read.received_at).unwrap();
        assert!(
            drift < std::time::Duration::from_millis(1),
            "kept to the millisecond"
        );
        assert_eq!(
            Receipt::of(&BasicProperties::default()).err(),
            Some(NoReceipt("message_id"))
        );
    }

    #[test]
    fn a_quarantined_body_is_marked_with_the_reason() {
        let reason = Event::parse(b"{}").unwrap_err();
        let message = quarantine_message(&reason, &receipt(), Bytes::from("{}"));
        assert_eq!(message.kind, Kind::Quarantine);
        assert_eq!(
            text(header(&message, "x-quarantine-reason")),
            reason.reason()
        );
        assert_eq!(message.properties.delivery_mode(), &Some(2));
    }
}
