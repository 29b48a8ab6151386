//! Every AMQP header name on hookrelay's messages, and one way to read each
//! kind of value back.
//!
//! The relay's own headers are written by [`envelope`](super::envelope) (on
//! every message) and by the replay and retry protocols; RabbitMQ adds its
//! own on the way. [`RELAYS`] lists the first kind, [`RABBITMQS`] the second:
//! the contract names exactly these (a unit test in `contract` holds it, and
//! `tests/api/contract.rs` that real messages carry them).
//!
//! Readers accept every encoding a writer may choose: a string as a long or a
//! short string, an integer of any width (RabbitMQ writes 64 bits, pika the
//! narrowest that fits, our consumer library 64).

use std::time::SystemTime;

use amq_protocol::types::{AMQPValue, FieldTable, LongString};

/// `SyncAccount` or `SyncError`.
pub const HOOK: &str = "hook";
/// `user.id` of the body.
pub const USER_ID: &str = "user-id";
/// `account.id` of the body.
pub const ACCOUNT_ID: &str = "account-id";
/// A `SyncError`'s code.
pub const ERROR: &str = "error";
/// Whether the sender documents that code (a boolean).
pub const ERROR_KNOWN: &str = "x-error-known";
/// The `x-client-id` the request carried.
pub const CLIENT_ID: &str = "x-client-id";
/// The address the webhook came from.
pub const SOURCE_IP: &str = "x-source-ip";
/// When the relay received it, RFC 3339 with milliseconds.
pub const RECEIVED_AT: &str = "x-received-at";
/// What identifies the event, hashed (see [`dedup_key`](super::dedup_key)): the same for the
/// sender's retries of one webhook, so consumers can tell a retry from a new event.
pub const DEDUP_KEY: &str = "x-dedup-key";
/// W3C trace context (`00-<trace id>-<span id>-<flags>`): the relay's publish,
/// for consumers to continue the trace.
pub const TRACEPARENT: &str = "traceparent";
/// W3C trace state, passed on from a trusted proxy's trace.
pub const TRACESTATE: &str = "tracestate";
/// The documented fields the body goes without.
pub const SCHEMA_WARNINGS: &str = "x-schema-warnings";
/// Why a body was quarantined (quarantined bodies only: not events).
pub const QUARANTINE_REASON: &str = "x-quarantine-reason";
/// Which retry a copy is, from 1: written by the consumer that retries.
pub const RETRY_ATTEMPT: &str = "x-retry-attempt";
/// How many times an operator replayed a message.
pub const REPLAY_COUNT: &str = "x-replay-count";
/// Where a replay took a message from: `history` or `quarantine`.
pub const REPLAYED_FROM: &str = "x-replayed-from";
/// The exchange a message was first published to, once it travelled another way.
pub const ORIGINAL_EXCHANGE: &str = "x-original-exchange";
/// Its routing key as the relay published it, once it travelled another way.
pub const ORIGINAL_ROUTING_KEY: &str = "x-original-routing-key";
/// On an `account.*` or `provider.*` message: the `message_id` of the event
/// that caused it.
pub const CAUSED_BY: &str = "x-caused-by";
/// On a `provider.*` message: the incident's `account.provider`.
pub const PROVIDER: &str = "provider";
/// The relay that stored the webhook: its identity, the same across its restarts.
pub const RELAY_ID: &str = "x-relay-id";
/// The webhook's number among those that relay stored, from 1, one higher
/// each time, never given twice (a 64-bit integer): `hookrelay audit` finds
/// every gap.
pub const RELAY_SEQ: &str = "x-relay-seq";
/// On a relay's note in the history (never on an event): what kind of note
/// (see the relay's `audit` module).
pub const RELAY_NOTE: &str = "x-relay-note";

/// RabbitMQ's: every time the message died, newest first.
pub const DEATH: &str = "x-death";
/// RabbitMQ's, on a quorum queue: deliveries before this one.
pub const DELIVERY_COUNT: &str = "x-delivery-count";
/// RabbitMQ's, on every message read from a stream: its offset.
pub const STREAM_OFFSET: &str = "x-stream-offset";
/// RabbitMQ's, beside `x-death`: where and why it first and last died (not
/// reliably across versions: 3.10 writes `x-last-death-*` from the second
/// death only).
pub const FIRST_DEATH_QUEUE: &str = "x-first-death-queue";
pub const FIRST_DEATH_REASON: &str = "x-first-death-reason";
pub const FIRST_DEATH_EXCHANGE: &str = "x-first-death-exchange";
pub const LAST_DEATH_QUEUE: &str = "x-last-death-queue";
pub const LAST_DEATH_REASON: &str = "x-last-death-reason";
pub const LAST_DEATH_EXCHANGE: &str = "x-last-death-exchange";

/// The headers the relay, its replays and the retry protocol write on events
/// (not [`QUARANTINE_REASON`]: a quarantined body never reaches a consumer).
pub const RELAYS: [&str; 19] = [
    HOOK,
    USER_ID,
    ACCOUNT_ID,
    ERROR,
    ERROR_KNOWN,
    CLIENT_ID,
    SOURCE_IP,
    RECEIVED_AT,
    DEDUP_KEY,
    TRACEPARENT,
    TRACESTATE,
    SCHEMA_WARNINGS,
    RELAY_ID,
    RELAY_SEQ,
    RETRY_ATTEMPT,
    REPLAY_COUNT,
    REPLAYED_FROM,
    ORIGINAL_EXCHANGE,
    ORIGINAL_ROUTING_KEY,
];

/// The headers RabbitMQ writes on messages a consumer gets (not the stream
/// offset, which only a stream reader sees).
pub const RABBITMQS: [&str; 8] = [
    DEATH,
    FIRST_DEATH_EXCHANGE,
    FIRST_DEATH_QUEUE,
    FIRST_DEATH_REASON,
    LAST_DEATH_EXCHANGE,
    LAST_DEATH_QUEUE,
    LAST_DEATH_REASON,
    DELIVERY_COUNT,
];

/// Whether RabbitMQ owns `key`: never copied into a message sent again
/// (RabbitMQ 3.13+ ignores or refuses client-set death headers).
pub fn is_broker_owned(key: &str) -> bool {
    key == DEATH
        || key == DELIVERY_COUNT
        || key.starts_with("x-first-death-")
        || key.starts_with("x-last-death-")
}

/// The header `key` of `headers`.
pub fn get<'a>(headers: Option<&'a FieldTable>, key: &str) -> Option<&'a AMQPValue> {
    headers?.inner().get(key)
}

/// A string header, long or short.
pub fn text(headers: Option<&FieldTable>, key: &str) -> Option<String> {
    value_text(get(headers, key)?)
}

/// A string value, long or short.
pub fn value_text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

/// An integer header of any width.
pub fn integer(headers: Option<&FieldTable>, key: &str) -> Option<i64> {
    value_integer(get(headers, key)?)
}

/// An integer value of any width: brokers and clients disagree on widths.
pub fn value_integer(value: &AMQPValue) -> Option<i64> {
    match value {
        AMQPValue::ShortShortInt(n) => Some((*n).into()),
        AMQPValue::ShortShortUInt(n) => Some((*n).into()),
        AMQPValue::ShortInt(n) => Some((*n).into()),
        AMQPValue::ShortUInt(n) => Some((*n).into()),
        AMQPValue::LongInt(n) => Some((*n).into()),
        AMQPValue::LongUInt(n) => Some((*n).into()),
        AMQPValue::LongLongInt(n) => Some(*n),
        _ => None,
    }
}

/// `x-received-at` (or another RFC 3339 header) as a time.
pub fn time(headers: Option<&FieldTable>, key: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(&text(headers, key)?).ok()
}

/// Sets a string header (as AMQP long strings, the only kind the relay writes).
pub fn set_text(headers: &mut FieldTable, key: &str, value: &str) {
    headers.insert(key.into(), AMQPValue::LongString(LongString::from(value)));
}

/// `headers` without RabbitMQ's own, and without `also`: the start of a copy
/// sent again.
pub fn copied(headers: Option<&FieldTable>, also: &[&str]) -> FieldTable {
    let mut copy = FieldTable::default();
    for (key, value) in headers.map(|h| h.inner().iter()).into_iter().flatten() {
        if !is_broker_owned(key.as_str()) && !also.contains(&key.as_str()) {
            copy.insert(key.clone(), value.clone());
        }
    }
    copy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_read_at_any_width() {
        let mut headers = FieldTable::default();
        for (key, value) in [
            ("a", AMQPValue::ShortShortUInt(3)),
            ("b", AMQPValue::LongInt(3)),
            ("c", AMQPValue::LongLongInt(3)),
        ] {
            headers.insert(key.into(), value);
        }
        for key in ["a", "b", "c"] {
            assert_eq!(integer(Some(&headers), key), Some(3), "{key}");
        }
        set_text(&mut headers, "d", "3");
        assert_eq!(
            integer(Some(&headers), "d"),
            None,
            "a string is not a number"
        );
    }

    #[test]
    fn a_copy_leaves_what_rabbitmq_owns() {
        let mut headers = FieldTable::default();
        for key in [
            HOOK,
            DEATH,
            DELIVERY_COUNT,
            FIRST_DEATH_QUEUE,
            LAST_DEATH_REASON,
            RETRY_ATTEMPT,
        ] {
            set_text(&mut headers, key, "x");
        }
        let copy = copied(Some(&headers), &[RETRY_ATTEMPT]);
        let keys: Vec<&str> = copy.inner().keys().map(|k| k.as_str()).collect();
        assert_eq!(keys, [HOOK]);
        assert!(RABBITMQS.iter().all(|key| is_broker_owned(key)));
        assert!(!RELAYS.iter().any(|key| is_broker_owned(key)));
        assert!(!is_broker_owned(QUARANTINE_REASON));
    }
}
