//! What RabbitMQ recorded about a dead letter, and the headers a message gets
//! when an operator replays it.
//!
//! RabbitMQ keeps `x-death`: one entry per (queue, reason), the most recent
//! first, so the entry for the original publish is the last one. A replay
//! drops the broker-owned death headers (RabbitMQ 3.13+ ignores or refuses
//! client-set ones), so each message carries its original exchange and routing
//! key in `x-original-exchange` / `x-original-routing-key` from its first replay
//! on: after a replay through the default exchange, `x-death` alone would only
//! know the queue's name.

use amq_protocol::types::{AMQPValue, FieldTable};

use super::headers::{
    self, DEATH, FIRST_DEATH_EXCHANGE, FIRST_DEATH_QUEUE, FIRST_DEATH_REASON, LAST_DEATH_QUEUE,
    LAST_DEATH_REASON, ORIGINAL_EXCHANGE, ORIGINAL_ROUTING_KEY, REPLAY_COUNT, RETRY_ATTEMPT,
};

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
        let table = headers?;
        let mut death = from_x_death(table).or_else(|| from_death_headers(headers))?;
        if let Some(exchange) = headers::text(headers, ORIGINAL_EXCHANGE) {
            death.original_exchange = exchange;
        }
        if let Some(routing_key) = headers::text(headers, ORIGINAL_ROUTING_KEY) {
            death.original_routing_key = routing_key;
        }
        Some(death)
    }
}

fn from_x_death(headers: &FieldTable) -> Option<Death> {
    let AMQPValue::FieldArray(entries) = headers.inner().get(DEATH)? else {
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
    let newest = Some(*tables.first()?);
    let oldest = Some(*tables.last()?);
    Some(Death {
        queue: headers::text(newest, "queue")?,
        reason: headers::text(newest, "reason").unwrap_or_default(),
        count: headers::integer(newest, "count").unwrap_or(1),
        time: match headers::get(newest, "time") {
            Some(AMQPValue::Timestamp(t)) => Some(*t),
            _ => None,
        },
        original_exchange: headers::text(oldest, "exchange").unwrap_or_default(),
        original_routing_key: first_routing_key(oldest).unwrap_or_default(),
    })
}

/// The fallback: headers RabbitMQ also sets, but not reliably across versions.
fn from_death_headers(headers: Option<&FieldTable>) -> Option<Death> {
    let text = |key| headers::text(headers, key);
    Some(Death {
        queue: text(LAST_DEATH_QUEUE).or_else(|| text(FIRST_DEATH_QUEUE))?,
        reason: text(LAST_DEATH_REASON)
            .or_else(|| text(FIRST_DEATH_REASON))
            .unwrap_or_default(),
        count: 1,
        time: None,
        original_exchange: text(FIRST_DEATH_EXCHANGE).unwrap_or_default(),
        original_routing_key: String::new(),
    })
}

fn first_routing_key(entry: Option<&FieldTable>) -> Option<String> {
    match headers::get(entry, "routing-keys")? {
        AMQPValue::FieldArray(keys) => keys.as_slice().iter().find_map(headers::value_text),
        _ => None,
    }
}

/// The headers of a replayed message: everything the message had, less what
/// RabbitMQ owns and `x-retry-attempt` (a replayed message starts its retries
/// again at attempt 1), with `x-replay-count` incremented and the original
/// route kept.
pub fn replay_headers(headers: Option<&FieldTable>, death: &Death) -> FieldTable {
    let mut replayed = headers::copied(headers, &[REPLAY_COUNT, RETRY_ATTEMPT]);
    replayed.insert(
        REPLAY_COUNT.into(),
        AMQPValue::LongLongInt(replay_count(headers) + 1),
    );
    headers::set_text(&mut replayed, ORIGINAL_EXCHANGE, &death.original_exchange);
    headers::set_text(
        &mut replayed,
        ORIGINAL_ROUTING_KEY,
        &death.original_routing_key,
    );
    replayed
}

/// `x-replay-count` as a number (0 when absent).
pub fn replay_count(headers: Option<&FieldTable>) -> i64 {
    headers::integer(headers, REPLAY_COUNT).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use amq_protocol::types::{FieldArray, LongString};

    use super::*;
    use crate::headers::DELIVERY_COUNT;

    fn long_string(value: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(value))
    }

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
            DEATH.into(),
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
        h.insert(FIRST_DEATH_QUEUE.into(), long_string("reprompt"));
        h.insert(FIRST_DEATH_REASON.into(), long_string("rejected"));
        h.insert(FIRST_DEATH_EXCHANGE.into(), long_string("webhooks"));
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
                (FIRST_DEATH_QUEUE, long_string("reprompt")),
                (LAST_DEATH_REASON, long_string("rejected")),
                (DELIVERY_COUNT, AMQPValue::LongLongInt(2)),
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
