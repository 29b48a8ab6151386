//! The one place that knows RabbitMQ names: the relay's own exchanges and
//! queues, the consumer queues of the configuration, and where each kind of
//! [`Message`](crate::wire::envelope::Message) is published.
//!
//! ```text
//! every event ─► <exchange>.in (fanout: the entry point, one publish per webhook)
//!                  ├─► stream <exchange>.history (with [history] on): every event, kept for days
//!                  ├─► watchers (hookrelay tail, without history) bind here: they see everything, route nothing
//!                  └─► <exchange> (topic) ─► consumer queues ([[queues]] bindings, by routing key)
//!                        └─ no consumer queue matches ─► alternate exchange <exchange>.unrouted
//!                                                          (fanout) ─► queue <exchange>.unrouted
//! what the relay derives (account.<state>) ─► <exchange>.changes (topic)
//!                  ├─#─► stream <exchange>.history (the derived layer reads its own announcements back)
//!                  └─► consumer queues ([[queues]] changes, by routing key); nothing else: no
//!                      alternate exchange, so a change nobody subscribed to is only in the history
//! consumer queues ─ rejected/expired ─► <exchange>.dlx (topic) ─#─► queue <exchange>.dead-letter
//! quarantined bodies ─► default exchange ─► queue <exchange>.quarantine (+ a copy to the history)
//! the one announcer among relays holds the exclusive queue <exchange>.announcer (a lease)
//! ```
//!
//! Two kinds of truth, two exchanges: `<exchange>` carries only what the
//! sender said, so a consumer bound there with `#` gets webhooks and nothing
//! else, and nothing of the relay's lands in `<exchange>.unrouted`.
//!
//! Watchers bind to the entry fanout, never to the topic exchange: a queue
//! bound to the topic exchange with `#` would match every event, and the
//! alternate exchange would never fire.
//!
//! Names only, and pure: what each object is declared with is in
//! [`arguments`](super::arguments), declaring it in [`declare`](super::declare).
//!
//! A trap of the entry fanout: while anything besides the topic exchange is
//! bound to it (the history stream, a watcher), a `mandatory` publish counts
//! as routed even when the topic exchange or `<exchange>.unrouted` was
//! deleted. The event is then kept only in the history (or the watcher's
//! queue), so the relay does not rely on returns alone: it declares its
//! topology again every `amqp.topology_check_secs`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use super::arguments::OWN_DELIVERY_LIMIT;
use crate::config::{HistorySettings, QueueSettings, QueueType, Settings};
use crate::unpoisoned::Locked;
use crate::wire::envelope::Kind;
use crate::wire::topic::TopicPattern;

/// The relay's RabbitMQ names, derived from `amqp.exchange`, and its consumer queues.
#[derive(Debug, Clone)]
pub struct Topology {
    pub(super) entry: String,
    pub(super) exchange: String,
    pub(super) unrouted: String,
    pub(super) dead_letter_exchange: String,
    pub(super) dead_letter_queue: String,
    pub(super) quarantine: String,
    pub(super) queues: Vec<QueueSettings>,
    /// The type of the relay's own queues and of retry tiers.
    pub(super) queue_type: QueueType,
    pub(super) history: Option<HistoryStream>,
    /// The topic exchange of what the relay derives (`account.<state>`).
    pub(super) changes: String,
    /// Own queues this broker holds in an earlier version's form: declared
    /// that way from then on, so RabbitMQ does not log a refusal at every check.
    pub(super) outdated: Arc<Mutex<HashSet<String>>>,
}

/// The stream every event is kept in, and its retention.
#[derive(Debug, Clone)]
pub(super) struct HistoryStream {
    pub(super) name: String,
    pub(super) max_age_secs: u64,
    pub(super) max_bytes: u64,
}

/// Where one message is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address<'a> {
    /// Empty for the default exchange (straight to the queue named by the key).
    pub exchange: &'a str,
    pub routing_key: &'a str,
}

impl Topology {
    /// Every RabbitMQ name the relay with these settings uses: its own, its
    /// consumer queues', and the history's when it is on.
    pub fn of(settings: &Settings) -> Topology {
        let topology = Topology::new(&settings.amqp.exchange, &settings.queues)
            .with_queue_type(settings.amqp.queue_type);
        match settings.history.enabled {
            true => topology.with_history(&settings.history),
            false => topology,
        }
    }

    pub fn new(exchange: &str, queues: &[QueueSettings]) -> Topology {
        Topology {
            entry: crate::wire::retry::entry_exchange(exchange),
            exchange: exchange.to_owned(),
            unrouted: format!("{exchange}.unrouted"),
            dead_letter_exchange: format!("{exchange}.dlx"),
            dead_letter_queue: format!("{exchange}.dead-letter"),
            quarantine: format!("{exchange}.quarantine"),
            queues: queues.to_vec(),
            queue_type: QueueType::Classic,
            history: None,
            changes: format!("{exchange}.changes"),
            outdated: Arc::default(),
        }
    }

    /// With the relay's own queues, and every retry tier, of type `kind`.
    pub fn with_queue_type(mut self, kind: QueueType) -> Topology {
        self.queue_type = kind;
        self
    }

    /// With the event history stream `<exchange>.history`.
    pub fn with_history(mut self, settings: &HistorySettings) -> Topology {
        self.history = Some(HistoryStream {
            name: format!("{}.history", self.exchange),
            max_age_secs: settings.max_age.as_secs().max(1),
            max_bytes: settings.max_bytes.as_u64(),
        });
        self
    }

    /// The topic exchange the relay announces what it derives through
    /// (`account.<state>`), apart from the sender's events.
    pub fn changes_exchange(&self) -> &str {
        &self.changes
    }

    /// The exclusive queue the relay that announces holds: while it does,
    /// no other relay can declare it (see `accounts::announcer`).
    pub fn announcer_lease(&self) -> String {
        format!("{}.announcer", self.exchange)
    }

    /// The queue earlier versions fed every event to for their announcer:
    /// this one deletes it once no relay of theirs consumes it.
    pub fn legacy_accounts_queue(&self) -> String {
        format!("{}.accounts", self.exchange)
    }

    /// What a queue this topology declares is for: the label `role` of
    /// `hookrelay_queue_messages`. `None` for the history stream (its
    /// declare does not count its events) and for names it does not declare.
    pub fn queue_role(&self, queue: &str) -> Option<&'static str> {
        if queue == self.dead_letter_queue {
            Some("dead_letters")
        } else if queue == self.quarantine {
            Some("quarantine")
        } else if queue == self.unrouted {
            Some("unrouted")
        } else if self.queues.iter().any(|q| q.name == queue) {
            Some("consumer")
        } else if self.queues.iter().any(|q| {
            (1..=q.retry.len()).any(|n| crate::wire::retry::tier_queue(&q.name, n) == queue)
        }) {
            Some("retry_tier")
        } else {
            None
        }
    }

    /// The history stream, when the history is on.
    pub fn history_stream(&self) -> Option<&str> {
        self.history.as_ref().map(|h| h.name.as_str())
    }

    /// Where a message of this kind is published.
    pub fn address<'a>(&'a self, kind: &'a Kind) -> Address<'a> {
        match kind {
            Kind::Event(routing_key) => Address {
                exchange: &self.entry,
                routing_key: routing_key.as_str(),
            },
            Kind::Quarantine => Address {
                exchange: "",
                routing_key: &self.quarantine,
            },
        }
    }

    /// The fanout every event is published to; watchers bind here.
    pub fn entry_exchange(&self) -> &str {
        &self.entry
    }

    /// The topic exchange consumer queues bind to.
    pub fn exchange(&self) -> &str {
        &self.exchange
    }

    /// The alternate exchange of the topic exchange, and its queue (same name).
    pub fn unrouted(&self) -> &str {
        &self.unrouted
    }

    /// The exchange consumer queues dead-letter into.
    pub fn dead_letter_exchange(&self) -> &str {
        &self.dead_letter_exchange
    }

    pub fn dead_letter_queue(&self) -> &str {
        &self.dead_letter_queue
    }

    /// Where bodies that fail to parse are kept for a human.
    pub fn quarantine_queue(&self) -> &str {
        &self.quarantine
    }

    pub fn consumer_queues(&self) -> &[QueueSettings] {
        &self.queues
    }

    /// The relay's own exchanges.
    pub fn own_exchanges(&self) -> [&str; 5] {
        [
            &self.entry,
            &self.exchange,
            &self.unrouted,
            &self.dead_letter_exchange,
            &self.changes,
        ]
    }

    /// The relay's own queues, the history stream included.
    pub fn own_queues(&self) -> Vec<&str> {
        let mut queues = vec![
            self.unrouted.as_str(),
            &self.dead_letter_queue,
            &self.quarantine,
        ];
        queues.extend(self.history_stream());
        queues
    }

    /// The queues whose refusal by RabbitMQ is reported, not fatal: the
    /// consumer queues and the history stream.
    pub fn reported_queues(&self) -> Vec<&str> {
        let mut queues: Vec<&str> = self.queues.iter().map(|q| q.name.as_str()).collect();
        queues.extend(self.history_stream());
        queues
    }

    /// The consumer queues whose configured bindings match `routing_key`:
    /// their `changes` for what the relay announces, else their `bindings`.
    pub fn consumer_queues_bound_to(&self, routing_key: &str) -> Vec<&str> {
        let announced = crate::wire::changes::is_announced(routing_key);
        self.queues
            .iter()
            .filter(|queue| {
                let patterns = match announced {
                    true => &queue.changes,
                    false => &queue.bindings,
                };
                patterns.iter().any(|binding| {
                    binding
                        .parse::<TopicPattern>()
                        .is_ok_and(|pattern| pattern.matches(routing_key))
                })
            })
            .map(|queue| queue.name.as_str())
            .collect()
    }

    /// The delivery limit of `queue`, when the relay declares it as a quorum
    /// queue: each delivery that comes back (a consumer's reject with
    /// requeue, `inspect` putting it back) counts, and on the return after
    /// the limit-th the message is dead-lettered. `None` for a classic queue
    /// or one the relay does not declare.
    pub fn delivery_limit(&self, queue: &str) -> Option<i64> {
        let own = [&self.unrouted, &self.dead_letter_queue, &self.quarantine];
        if own.contains(&&queue.to_owned()) {
            return (self.queue_type == QueueType::Quorum).then_some(OWN_DELIVERY_LIMIT);
        }
        self.queues
            .iter()
            .find(|q| q.name == queue && q.kind() == QueueType::Quorum)
            .map(|q| i64::from(q.delivery_limit))
    }

    pub(super) fn lock_outdated(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.outdated.locked()
    }

    /// A retry tier is quorum when its queue is, or when the relay's own
    /// queues are: a tier holds messages too, and must survive a node loss.
    pub(super) fn tier_type(&self, queue: &QueueSettings) -> QueueType {
        match (queue.kind(), self.queue_type) {
            (QueueType::Quorum, _) | (_, QueueType::Quorum) => QueueType::Quorum,
            _ => QueueType::Classic,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_enter_through_the_fanout_and_quarantine_goes_straight_to_its_queue() {
        let topology = Topology::new("webhooks", &[]);
        let event = Kind::Event("sync.error.LoginFailedError".parse().unwrap());

        assert_eq!(
            topology.address(&event),
            Address {
                exchange: "webhooks.in",
                routing_key: "sync.error.LoginFailedError"
            }
        );
        assert_eq!(
            topology.address(&Kind::Quarantine),
            Address {
                exchange: "",
                routing_key: "webhooks.quarantine"
            }
        );
    }

    #[test]
    fn every_name_derives_from_the_exchange() {
        let topology = Topology::new("hooks", &[]);
        assert_eq!(
            topology.own_exchanges(),
            [
                "hooks.in",
                "hooks",
                "hooks.unrouted",
                "hooks.dlx",
                "hooks.changes"
            ]
        );
        assert_eq!(
            topology.own_queues(),
            ["hooks.unrouted", "hooks.dead-letter", "hooks.quarantine"]
        );
        assert_eq!(topology.history_stream(), None);
        let settings = crate::config::HistorySettings {
            enabled: true,
            max_age: std::time::Duration::from_secs(3600),
            max_bytes: bytesize::ByteSize::mib(10),
            index_path: None,
        };
        let with_history = topology.with_history(&settings);
        assert_eq!(with_history.history_stream(), Some("hooks.history"));
        assert_eq!(with_history.own_queues().last(), Some(&"hooks.history"));
        assert_eq!(with_history.reported_queues(), ["hooks.history"]);
    }
}
