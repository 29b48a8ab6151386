//! What each RabbitMQ object of the relay is declared with: pure functions
//! of the configuration, checked against a real broker by the topology tests.

use std::time::Duration;

use lapin::types::{AMQPValue, FieldTable, LongString};

use super::names::{HistoryStream, Topology};
use crate::config::{QueueSettings, QueueType};

/// The relay's own quorum queues' delivery limit: never reached in practice.
pub(super) const OWN_DELIVERY_LIMIT: i64 = 1_000_000;
pub(super) const OWN_DELIVERY_LIMIT_ARG: &str = "x-delivery-limit";

impl Topology {
    /// Arguments of the unrouted, dead-letter and quarantine queues: nothing
    /// for classic (so that queues declared by earlier versions still match).
    /// A quorum queue gets an explicit delivery limit so large it never
    /// matters: these queues have no dead-letter target, so a message over
    /// the limit would be dropped, and RabbitMQ 4 gives every quorum queue a
    /// limit of 20 (inspect and replay count as deliveries). Not `-1`: on
    /// 3.10 that dead-letters a message at its first return (checked).
    pub(super) fn own_queue_arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        if self.queue_type == QueueType::Quorum {
            args.insert("x-queue-type".into(), string("quorum"));
            args.insert(
                OWN_DELIVERY_LIMIT_ARG.into(),
                AMQPValue::LongLongInt(OWN_DELIVERY_LIMIT),
            );
        }
        args
    }

    /// How versions before the explicit delivery limit declared own queues.
    pub(super) fn earlier_own_queue_arguments(&self) -> Option<FieldTable> {
        (self.queue_type == QueueType::Quorum).then(|| {
            let mut args = FieldTable::default();
            args.insert("x-queue-type".into(), string("quorum"));
            args
        })
    }
}

impl HistoryStream {
    pub(super) fn arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), string("stream"));
        args.insert(
            "x-max-age".into(),
            string(&format!("{}s", self.max_age_secs)),
        );
        args.insert("x-max-length-bytes".into(), long(self.max_bytes));
        args
    }
}

/// Arguments of a consumer queue: dead-lettering into the DLX, and how a full
/// queue overflows. The rule is that a full queue must never push back on the
/// relay (a nack holds nothing else up, but each retry copies the event into
/// every other queue bound to its key), and must lose nothing:
///
/// - bounded by the relay (`max_length`, `max_length_bytes`), of either type:
///   `x-overflow: drop-head`, so the oldest message is dead-lettered (reason
///   `maxlen`) and every publish is confirmed. For a quorum queue this makes
///   dead-lettering at-most-once (RabbitMQ allows at-least-once only with
///   `reject-publish`), so `x-dead-letter-strategy` is left out.
/// - unbounded classic: no `x-overflow`, which is RabbitMQ's `drop-head`, so
///   that queues declared by earlier versions (or by a consumer, as the book
///   shows) still match. Only an operator's policy can bound it; one that
///   sets `overflow: reject-publish` makes it nack (the relay's refused lane
///   handles that).
/// - unbounded quorum: at-least-once dead-lettering (the default,
///   at-most-once, drops a dead letter whenever the DLX target is unavailable),
///   which requires `reject-publish`. Without a bound it never overflows; an
///   operator's `max-length` policy makes it nack, unless the policy also sets
///   `overflow: drop-head` (on a quorum queue a policy's `overflow` wins over
///   the argument). A delivery limit dead-letters a message that keeps coming
///   back (its consumer crashes on it) instead of redelivering it forever.
///
/// Checked on RabbitMQ 3.10.8 (docs/src/operating.md, "Slow and full consumers").
pub fn consumer_queue_arguments(queue: &QueueSettings, dlx: &str) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-dead-letter-exchange".into(), string(dlx));
    if queue.kind() == QueueType::Quorum {
        args.insert("x-queue-type".into(), string("quorum"));
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(i64::from(queue.delivery_limit)),
        );
        if !queue.is_bounded() {
            args.insert("x-dead-letter-strategy".into(), string("at-least-once"));
            args.insert("x-overflow".into(), string("reject-publish"));
        }
    }
    if let Some(max) = queue.max_length {
        args.insert("x-max-length".into(), long(max));
    }
    if let Some(max) = queue.max_length_bytes {
        args.insert("x-max-length-bytes".into(), long(max));
    }
    if queue.is_bounded() {
        args.insert("x-overflow".into(), string("drop-head"));
    }
    args
}

/// Arguments of retry tier `<name>.retry.<n>`: every message waits `delay`
/// (a queue-wide TTL, so they leave from the head in order: per-message TTLs
/// would hold each other up), then is dead-lettered back into `<name>`
/// through the default exchange.
pub(super) fn retry_tier_arguments(
    queue: &QueueSettings,
    kind: QueueType,
    delay: Duration,
) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-message-ttl".into(),
        AMQPValue::LongLongInt(delay.as_millis().min(i64::MAX as u128) as i64),
    );
    args.insert("x-dead-letter-exchange".into(), string(""));
    args.insert("x-dead-letter-routing-key".into(), string(&queue.name));
    if kind == QueueType::Quorum {
        quorum_arguments(&mut args);
    }
    args
}

/// A classic queue gets no `x-queue-type`, so one declared earlier without it
/// (by a consumer, say) still matches.
fn quorum_arguments(args: &mut FieldTable) {
    args.insert("x-queue-type".into(), string("quorum"));
    args.insert("x-dead-letter-strategy".into(), string("at-least-once"));
    args.insert("x-overflow".into(), string("reject-publish"));
}

fn long(value: u64) -> AMQPValue {
    AMQPValue::LongLongInt(i64::try_from(value).unwrap_or(i64::MAX))
}

pub(super) fn string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}
