//! The retry protocol between a consumer and its queue's retry tiers: for
//! tier n (from 1) of queue `q`, the queue `q.retry.n` holds a copy for the
//! tier's delay, then RabbitMQ dead-letters it back into `q`. The consumer
//! publishes the copy (through the default exchange) with the headers below,
//! waits for the confirm, then acknowledges the original. Any consumer can
//! follow it: `docs/asyncapi.yaml` describes it, `hookrelay::consumer` and
//! `examples/python/consumer.py` carry it out.

use amq_protocol::types::{AMQPValue, FieldTable};

use super::headers::{self, ORIGINAL_EXCHANGE, ORIGINAL_ROUTING_KEY, RETRY_ATTEMPT};

/// The fanout exchange of the relay whose topic exchange is `exchange`: every
/// event enters there, and `x-original-exchange` names it.
pub fn entry_exchange(exchange: &str) -> String {
    format!("{exchange}.in")
}

/// The queue of retry tier `tier` (from 1) of `queue`.
pub fn tier_queue(queue: &str, tier: usize) -> String {
    format!("{queue}.retry.{tier}")
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
    let mut copied = headers::copied(headers, &[]);
    copied.insert(RETRY_ATTEMPT.into(), AMQPValue::LongLongInt(attempt));
    if !copied.inner().contains_key(ORIGINAL_EXCHANGE) {
        headers::set_text(&mut copied, ORIGINAL_EXCHANGE, exchange);
        headers::set_text(&mut copied, ORIGINAL_ROUTING_KEY, routing_key);
    }
    copied
}

/// `x-retry-attempt` as a number (0 when absent: not retried yet).
pub fn retry_attempt(headers: Option<&FieldTable>) -> i64 {
    headers::integer(headers, RETRY_ATTEMPT).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::headers::{DEATH, HOOK};

    #[test]
    fn a_retry_copy_counts_the_attempt_and_keeps_the_first_route() {
        let mut original = FieldTable::default();
        headers::set_text(&mut original, HOOK, "SyncError");
        headers::set_text(&mut original, DEATH, "RabbitMQ's");

        let first = retry_headers(Some(&original), 1, "hooks.in", "sync.error.X");
        assert_eq!(retry_attempt(Some(&first)), 1);
        assert_eq!(
            headers::text(Some(&first), ORIGINAL_ROUTING_KEY).as_deref(),
            Some("sync.error.X")
        );
        assert!(!first.inner().contains_key(DEATH));

        // Back from tier 1, it arrives with the queue's name as routing key.
        let second = retry_headers(Some(&first), 2, "", "reprompt");
        assert_eq!(retry_attempt(Some(&second)), 2);
        assert_eq!(
            headers::text(Some(&second), ORIGINAL_ROUTING_KEY).as_deref(),
            Some("sync.error.X")
        );
        assert_eq!(tier_queue("reprompt", 2), "reprompt.retry.2");
    }
}
