//! The refused lane: webhooks RabbitMQ refused, kept in the spool and retried
//! beside the flow.
//!
//! A refusal is not an outage. RabbitMQ is there and took everything else; it
//! refused this one message, most often because one queue bound to its
//! routing key is full and set to refuse (`x-overflow: reject-publish`, by a
//! policy or by hand). The other queues bound to that key have already taken
//! it: RabbitMQ nacks the whole publish when one target refuses. So a refused
//! webhook must not wait at the head of the spool, where it would hold up
//! every consumer, and its retries must be few, since each one leaves another
//! copy in those other queues. It is retried on its own schedule
//! ([`RetryPolicy`]) and parked after `spool.max_refusals` refusals in all.
//!
//! [`Lane`] keeps, per routing key, how many refused webhooks wait, since
//! when and why: what `/readyz` shows, and what the log says once per change
//! (when a key starts being refused, when the first of its webhooks is
//! parked, when it is accepted again), never once per retry.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use tracing::{info, warn};

use crate::config::QueueSettings;
use crate::unpoisoned::Locked;
use crate::wire::topic::TopicPattern;

/// The key the lane's bookkeeping uses for a quarantined body, which has no
/// routing key (it goes straight to the quarantine queue).
pub const QUARANTINE: &str = "quarantine";

/// When a refused webhook is tried again, and when it is parked instead.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Refusals in all, the first one included, before it is parked.
    pub max_refusals: u32,
    /// The pause after the first refusal; four times longer after each next one.
    pub first_delay: Duration,
}

/// The longest pause between two attempts, whatever the policy.
const MAX_DELAY: Duration = Duration::from_secs(15 * 60);

impl RetryPolicy {
    /// After `refusals` refusals: `None` to park it, else how long to wait.
    pub fn next_attempt(&self, refusals: u32) -> Option<Duration> {
        if refusals >= self.max_refusals {
            return None;
        }
        let growth = 4u32.saturating_pow(refusals.saturating_sub(1));
        Some(self.first_delay.saturating_mul(growth).min(MAX_DELAY))
    }
}

/// One routing key whose webhooks RabbitMQ refuses, as `/readyz` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedKey {
    /// The routing key, or `quarantine`.
    pub routing_key: String,
    /// Refused webhooks of this key waiting for a retry.
    pub waiting: u64,
    /// When the first of them was refused.
    pub since: SystemTime,
    /// The last refusal, in RabbitMQ's words.
    pub reason: String,
    /// The configured queues bound to this key: one of them refuses.
    pub queues: Vec<String>,
}

/// The refused lane's bookkeeping, per routing key.
pub(super) struct Lane {
    pub policy: RetryPolicy,
    keys: Mutex<BTreeMap<String, Episode>>,
    /// The configured queues and their bindings, to name the suspects.
    bound: Vec<(String, Vec<TopicPattern>)>,
}

/// From the first refusal of a key until none of its webhooks waits.
#[derive(Debug)]
struct Episode {
    waiting: u64,
    since: SystemTime,
    reason: String,
    delivered: u64,
    parked: u64,
}

/// How a webhook left the lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LaneExit {
    Delivered,
    Parked,
}

impl Lane {
    pub(super) fn new(policy: RetryPolicy, queues: &[QueueSettings]) -> Lane {
        let bound = queues
            .iter()
            .map(|q| {
                let patterns = q.bindings.iter().filter_map(|b| b.parse().ok()).collect();
                (q.name.clone(), patterns)
            })
            .collect();
        Lane {
            policy,
            keys: Mutex::new(BTreeMap::new()),
            bound,
        }
    }

    /// Webhooks found in the lane when the spool was opened.
    pub(super) fn restore(&self, key: &str, waiting: u64, since: SystemTime, reason: String) {
        self.lock().insert(
            key.to_owned(),
            Episode {
                waiting,
                since,
                reason,
                delivered: 0,
                parked: 0,
            },
        );
    }

    /// A webhook of `key` entered the lane (refused for the first time).
    pub(super) fn entered(&self, key: &str, reason: &str) {
        let started = {
            let mut keys = self.lock();
            let episode = keys.entry(key.to_owned()).or_insert_with(|| Episode {
                waiting: 0,
                since: SystemTime::now(),
                reason: String::new(),
                delivered: 0,
                parked: 0,
            });
            episode.waiting += 1;
            reason.clone_into(&mut episode.reason);
            episode.waiting == 1 && episode.delivered == 0 && episode.parked == 0
        };
        if started {
            let queues = self.queues_bound_to(key);
            let first_retry = self.policy.next_attempt(1).unwrap_or_default();
            warn!(
                routing_key = key,
                %reason,
                queues = %describe(&queues),
                max_refusals = self.policy.max_refusals,
                first_retry_ms = first_retry.as_millis() as u64,
                "RabbitMQ refuses events with this routing key: most likely a queue bound to it is \
                 full and set to refuse new messages (overflow reject-publish, by a policy or its \
                 own arguments). They are kept in the spool and retried beside the flow, then \
                 parked; other events go through meanwhile. Each attempt leaves one more copy in \
                 the other queues bound to this key. Make room in the full queue (its consumer), \
                 or let it shed its oldest messages to the dead letters instead (docs/src/operating.md, \"Slow \
                 and full consumers\")"
            );
        }
    }

    /// A webhook of `key` in the lane was refused again.
    pub(super) fn refused_again(&self, key: &str, reason: &str) {
        if let Some(episode) = self.lock().get_mut(key) {
            reason.clone_into(&mut episode.reason);
        }
    }

    /// A webhook of `key` left the lane.
    pub(super) fn left(&self, key: &str, exit: LaneExit) {
        let mut keys = self.lock();
        let Some(episode) = keys.get_mut(key) else {
            return;
        };
        episode.waiting = episode.waiting.saturating_sub(1);
        match exit {
            LaneExit::Delivered => episode.delivered += 1,
            LaneExit::Parked => {
                episode.parked += 1;
                if episode.parked == 1 {
                    warn!(
                        routing_key = key,
                        refusals = self.policy.max_refusals,
                        reason = %episode.reason,
                        "a refused event of this routing key was refused spool.max_refusals \
                         times and is parked (on disk, out of the way), and so will the next ones \
                         be while its queue refuses: `hookrelay spool list` shows them, \
                         `hookrelay spool retry` sends them again once the queue has room"
                    );
                }
            }
        }
        if episode.waiting == 0 {
            let Episode {
                delivered, parked, ..
            } = *episode;
            keys.remove(key);
            info!(
                routing_key = key,
                delivered, parked, "no refused event of this routing key waits any more"
            );
        }
    }

    /// Every key with refused webhooks waiting, for `/readyz`.
    pub(super) fn view(&self) -> Vec<RefusedKey> {
        self.lock()
            .iter()
            .filter(|(_, episode)| episode.waiting > 0)
            .map(|(key, episode)| RefusedKey {
                routing_key: key.clone(),
                waiting: episode.waiting,
                since: episode.since,
                reason: episode.reason.clone(),
                queues: self.queues_bound_to(key),
            })
            .collect()
    }

    fn queues_bound_to(&self, key: &str) -> Vec<String> {
        self.bound
            .iter()
            .filter(|(_, patterns)| patterns.iter().any(|p| p.matches(key)))
            .map(|(name, _)| name.clone())
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Episode>> {
        self.keys.locked()
    }
}

fn describe(queues: &[String]) -> String {
    if queues.is_empty() {
        "none of the configured [[queues]]: a queue bound by hand".to_owned()
    } else {
        queues.join(", ")
    }
}

/// The lane's name for a row's routing key.
pub(super) fn lane_key<'a>(kind: &str, routing_key: &'a str) -> &'a str {
    if kind == "quarantine" {
        QUARANTINE
    } else {
        routing_key
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::QueueType;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_refusals: 5,
            first_delay: Duration::from_secs(1),
        }
    }

    #[test]
    fn retries_come_four_times_later_each_time_then_it_is_parked() {
        let attempts: Vec<Option<Duration>> = (1..=5).map(|n| policy().next_attempt(n)).collect();

        assert_eq!(
            attempts,
            [
                Some(Duration::from_secs(1)),
                Some(Duration::from_secs(4)),
                Some(Duration::from_secs(16)),
                Some(Duration::from_secs(64)),
                None,
            ]
        );
    }

    #[test]
    fn a_long_policy_still_waits_at_most_fifteen_minutes() {
        let long = RetryPolicy {
            max_refusals: 40,
            ..policy()
        };
        assert_eq!(long.next_attempt(30), Some(MAX_DELAY));
    }

    #[test]
    fn a_refused_key_names_the_configured_queues_bound_to_it_until_none_waits() {
        let queues = [
            QueueSettings::new(
                "reprompt",
                &["sync.error.LoginFailedError"],
                QueueType::Quorum,
            ),
            QueueSettings::new("audit", &["sync.#"], QueueType::Classic),
            QueueSettings::new("balances", &["sync.account"], QueueType::Classic),
        ];
        let lane = Lane::new(policy(), &queues);
        let key = "sync.error.LoginFailedError";

        lane.entered(key, "nack");
        lane.entered(key, "nack");
        let view = lane.view();
        assert_eq!(view.len(), 1);
        assert_eq!(view[0].waiting, 2);
        assert_eq!(view[0].queues, ["reprompt", "audit"]);

        lane.left(key, LaneExit::Delivered);
        lane.left(key, LaneExit::Parked);
        assert!(lane.view().is_empty(), "none waits: nothing to report");
    }
}
