//! What RabbitMQ recorded about a dead letter, and the headers a message gets
//! when it is sent again: replayed from the dead letters, or retried by a
//! consumer through a retry tier.
//!
//! RabbitMQ keeps `x-death`: one entry per (queue, reason), the most recent
//! first, so the entry for the original publish is the last one. A replay
//! drops the broker-owned death headers (RabbitMQ 3.13+ ignores or refuses
//! client-set ones), so each message carries its original exchange and routing
//! key in `x-original-exchange` / `x-original-routing-key` from its first replay
//! on: after a replay through the default exchange, `x-death` alone would only
//! know the queue's name.

use lapin::types::{AMQPValue, FieldTable, LongString};

/// Headers RabbitMQ owns; never copied into a replayed message.
const BROKER_OWNED: [&str; 2] = ["x-death", "x-delivery-count"];
const BROKER_OWNED_PREFIXES: [&str; 2] = ["x-first-death-", "x-last-death-"];

pub const REPLAY_COUNT: &str = "x-replay-count";
/// Which retry this copy is, from 1: set by the consumer that retries.
pub const RETRY_ATTEMPT: &str = "x-retry-attempt";
pub const ORIGINAL_EXCHANGE: &str = "x-original-exchange";
pub const ORIGINAL_ROUTING_KEY: &str = "x-original-routing-key";

/// The facts about one dead letter that a replay needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Death {
    /// The queue it most recently died in: where a replay sends it back.
    pub queue: String,
    /// `rejected`, `expired`, `maxlen` or `delivery_limit`.
    pub reason: String,
    /// How many times it died in that queue for that reason.
    pub count: i64,
    /// When it died, in seconds since the epoch, if recorded.
    pub time: Option<u64>,
    /// Where it was first published.
    pub original_exchange: String,
    pub original_routing_key: String,
}

impl Death {
    /// Reads `x-death` (or, failing that, the `x-first-death-*` /
    /// `x-last-death-*` headers). `None` when the message carries no record
    /// of having died.
    pub fn from_headers(headers: Option<&FieldTable>) -> Option<Death> {
        let headers = headers?;
        let mut death = from_x_death(headers).or_else(|| from_death_headers(headers))?;
        if let Some(exchange) = string(headers, ORIGINAL_EXCHANGE) {
            death.original_exchange = exchange;
        }
        if let Some(routing_key) = string(headers, ORIGINAL_ROUTING_KEY) {
            death.original_routing_key = routing_key;
        }
        Some(death)
    }
}

fn from_x_death(headers: &FieldTable) -> Option<Death> {
    let AMQPValue::FieldArray(entries) = headers.inner().get("x-death")? else {
        return None;
    };
    let tables: Vec<&FieldTable> = entries
        .as_slice()
        .iter()
        .filter_map(|entry| match entry {
            AMQPValue::FieldTable(table) => Some(table),
            _ => None,
        })
        .collect();
    let newest = tables.first()?;
    let oldest = tables.last()?;
    Some(Death {
        queue: string(newest, "queue")?,
        reason: string(newest, "reason").unwrap_or_default(),
        count: integer(newest.inner().get("count")).unwrap_or(1),
        time: match newest.inner().get("time") {
            Some(AMQPValue::Timestamp(t)) => Some(*t),
            _ => None,
        },
        original_exchange: string(oldest, "exchange").unwrap_or_default(),
        original_routing_key: first_routing_key(oldest).unwrap_or_default(),
    })
}

/// The fallback: headers RabbitMQ also sets, but not reliably across versions.
fn from_death_headers(headers: &FieldTable) -> Option<Death> {
    let queue =
        string(headers, "x-last-death-queue").or_else(|| string(headers, "x-first-death-queue"))?;
    Some(Death {
        queue,
        reason: string(headers, "x-last-death-reason")
            .or_else(|| string(headers, "x-first-death-reason"))
            .unwrap_or_default(),
        count: 1,
        time: None,
        original_exchange: string(headers, "x-first-death-exchange").unwrap_or_default(),
        original_routing_key: String::new(),
    })
}

/// The headers of a replayed message: everything the message had, less what
/// RabbitMQ owns, with `x-replay-count` incremented and the original route kept.
pub fn replay_headers(headers: Option<&FieldTable>, death: &Death) -> FieldTable {
    let mut replayed = FieldTable::default();
    let mut previous_replays = 0;
    if let Some(headers) = headers {
        for (key, value) in headers.inner() {
            let key_str = key.as_str();
            if key_str == REPLAY_COUNT {
                previous_replays = integer(Some(value)).unwrap_or(0);
            } else if !is_broker_owned(key_str) && key_str != RETRY_ATTEMPT {
                // A replayed message starts its retries again at attempt 1.
                replayed.insert(key.clone(), value.clone());
            }
        }
    }
    replayed.insert(
        REPLAY_COUNT.into(),
        AMQPValue::LongLongInt(previous_replays + 1),
    );
    replayed.insert(
        ORIGINAL_EXCHANGE.into(),
        long_string(&death.original_exchange),
    );
    replayed.insert(
        ORIGINAL_ROUTING_KEY.into(),
        long_string(&death.original_routing_key),
    );
    replayed
}

/// The headers of the copy a consumer publishes into a retry tier: the
/// message's own, less what RabbitMQ owns, with `x-retry-attempt` set to
/// `attempt` and the route it first took kept in `x-original-exchange` /
/// `x-original-routing-key` (after a retry it arrives through the default
/// exchange, and `x-death` would only know the tier).
pub fn retry_headers(
    headers: Option<&FieldTable>,
    attempt: i64,
    exchange: &str,
    routing_key: &str,
) -> FieldTable {
    let mut copied = FieldTable::default();
    if let Some(headers) = headers {
        for (key, value) in headers.inner() {
            if !is_broker_owned(key.as_str()) {
                copied.insert(key.clone(), value.clone());
            }
        }
    }
    copied.insert(RETRY_ATTEMPT.into(), AMQPValue::LongLongInt(attempt));
    if !copied.inner().contains_key(ORIGINAL_EXCHANGE) {
        copied.insert(ORIGINAL_EXCHANGE.into(), long_string(exchange));
        copied.insert(ORIGINAL_ROUTING_KEY.into(), long_string(routing_key));
    }
    copied
}

/// `x-retry-attempt` as a number (0 when absent: not retried yet).
pub fn retry_attempt(headers: Option<&FieldTable>) -> i64 {
    integer(headers.and_then(|h| h.inner().get(RETRY_ATTEMPT))).unwrap_or(0)
}

/// `x-replay-count` as a number (0 when absent).
pub fn replay_count(headers: Option<&FieldTable>) -> i64 {
    integer(headers.and_then(|h| h.inner().get(REPLAY_COUNT))).unwrap_or(0)
}

fn is_broker_owned(key: &str) -> bool {
    BROKER_OWNED.contains(&key) || BROKER_OWNED_PREFIXES.iter().any(|p| key.starts_with(p))
}

fn string(table: &FieldTable, key: &str) -> Option<String> {
    match table.inner().get(key)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

fn first_routing_key(entry: &FieldTable) -> Option<String> {
    match entry.inner().get("routing-keys")? {
        AMQPValue::FieldArray(keys) => keys.as_slice().iter().find_map(|key| match key {
            AMQPValue::LongString(s) => Some(s.to_string()),
            _ => None,
        }),
        _ => None,
    }
}

/// Any integer type: brokers and clients disagree on widths.
fn integer(value: Option<&AMQPValue>) -> Option<i64> {
    match value? {
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

fn long_string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

#[cfg(test)]
mod tests {
    use lapin::types::FieldArray;

    use super::*;

    fn entry(queue: &str, reason: &str, count: i64, exchange: &str, key: &str) -> AMQPValue {
        let mut table = FieldTable::default();
        table.insert("queue".into(), long_string(queue));
        table.insert("reason".into(), long_string(reason));
        table.insert("count".into(), AMQPValue::LongLongInt(count));
        table.insert("time".into(), AMQPValue::Timestamp(1_700_000_000));
        table.insert("exchange".into(), long_string(exchange));
        table.insert(
            "routing-keys".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![long_string(key)])),
        );
        AMQPValue::FieldTable(table)
    }

    fn headers(entries: Vec<AMQPValue>, extra: &[(&str, AMQPValue)]) -> FieldTable {
        let mut table = FieldTable::default();
        table.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::from(entries)),
        );
        for (key, value) in extra {
            table.insert((*key).into(), value.clone());
        }
        table
    }

    #[test]
    fn a_single_death_names_its_queue_and_original_route() {
        let h = headers(
            vec![entry("reprompt", "rejected", 1, "webhooks", "sync.error.X")],
            &[],
        );
        let death = Death::from_headers(Some(&h)).unwrap();
        assert_eq!(
            death,
            Death {
                queue: "reprompt".into(),
                reason: "rejected".into(),
                count: 1,
                time: Some(1_700_000_000),
                original_exchange: "webhooks".into(),
                original_routing_key: "sync.error.X".into(),
            }
        );
    }

    #[test]
    fn the_newest_entry_is_where_it_died_and_the_last_is_where_it_began() {
        let h = headers(
            vec![
                entry("retry", "expired", 3, "", "retry"),
                entry("reprompt", "rejected", 1, "webhooks", "sync.error.X"),
            ],
            &[],
        );
        let death = Death::from_headers(Some(&h)).unwrap();
        assert_eq!(death.queue, "retry");
        assert_eq!(death.reason, "expired");
        assert_eq!(death.count, 3);
        assert_eq!(death.original_exchange, "webhooks");
        assert_eq!(death.original_routing_key, "sync.error.X");
    }

    #[test]
    fn a_replayed_message_remembers_its_original_route() {
        // Died again after a replay through the default exchange.
        let h = headers(
            vec![entry("reprompt", "rejected", 1, "", "reprompt")],
            &[
                (ORIGINAL_EXCHANGE, long_string("webhooks")),
                (ORIGINAL_ROUTING_KEY, long_string("sync.error.X")),
            ],
        );
        let death = Death::from_headers(Some(&h)).unwrap();
        assert_eq!(death.queue, "reprompt");
        assert_eq!(death.original_exchange, "webhooks");
        assert_eq!(death.original_routing_key, "sync.error.X");
    }

    #[test]
    fn without_x_death_the_death_headers_are_a_fallback() {
        let mut h = FieldTable::default();
        h.insert("x-first-death-queue".into(), long_string("reprompt"));
        h.insert("x-first-death-reason".into(), long_string("rejected"));
        h.insert("x-first-death-exchange".into(), long_string("webhooks"));
        let death = Death::from_headers(Some(&h)).unwrap();
        assert_eq!(death.queue, "reprompt");
        assert_eq!(death.reason, "rejected");
        assert_eq!(death.original_exchange, "webhooks");
    }

    #[test]
    fn a_message_that_never_died_has_no_death() {
        assert_eq!(Death::from_headers(None), None);
        let mut h = FieldTable::default();
        h.insert("hook".into(), long_string("SyncAccount"));
        assert_eq!(Death::from_headers(Some(&h)), None);
    }

    #[test]
    fn replay_headers_drop_broker_state_and_count_replays() {
        let h = headers(
            vec![entry("reprompt", "rejected", 1, "webhooks", "sync.error.X")],
            &[
                ("hook", long_string("SyncError")),
                ("x-first-death-queue", long_string("reprompt")),
                ("x-last-death-reason", long_string("rejected")),
                ("x-delivery-count", AMQPValue::LongLongInt(2)),
            ],
        );
        let death = Death::from_headers(Some(&h)).unwrap();

        let once = replay_headers(Some(&h), &death);
        let keys: Vec<&str> = once.inner().keys().map(|k| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "hook",
                ORIGINAL_EXCHANGE,
                ORIGINAL_ROUTING_KEY,
                REPLAY_COUNT
            ],
            "sorted; nothing broker-owned"
        );
        assert_eq!(once.inner()[REPLAY_COUNT], AMQPValue::LongLongInt(1));
        assert_eq!(
            once.inner()[ORIGINAL_ROUTING_KEY],
            long_string("sync.error.X")
        );

        let twice = replay_headers(Some(&once), &death);
        assert_eq!(twice.inner()[REPLAY_COUNT], AMQPValue::LongLongInt(2));
    }
}
