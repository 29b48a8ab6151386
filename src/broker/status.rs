//! What the relay says about its broker: the state it is in and why, and the
//! consumer queues RabbitMQ refuses. `/readyz` reads it, the metrics mirror
//! it, and the log tells each change once, with what to do, never once per
//! retry.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use super::declare::Conflict;
use super::names::Topology;
use crate::metrics::Metrics;

/// How often a consumer queue that RabbitMQ refused is declared again. Every
/// refusal is an error line in RabbitMQ's own log, so not at every check.
const CONFLICT_RETRY: Duration = Duration::from_secs(60);

/// The broker's state as `/readyz` and the metrics report it, by the name
/// [`BrokerState::as_str`] gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::VariantArray, strum::IntoStaticStr)]
#[strum(serialize_all = "lowercase")]
pub enum BrokerState {
    Connected,
    /// Connected, but RabbitMQ refuses publishes until an alarm clears.
    Blocked,
    /// RabbitMQ refuses the relay's own exchanges or queues: nothing can be
    /// published until an operator fixes them; webhooks are spooled.
    Misconfigured,
    Disconnected,
}

impl BrokerState {
    /// `connected`, `blocked`, `misconfigured` or `disconnected`.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// The broker's state, why, and the consumer queues RabbitMQ refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub state: BrokerState,
    /// Why the state is not `connected`, in RabbitMQ's or the OS's words.
    pub reason: Option<String>,
    /// Consumer queues (or bindings) RabbitMQ refused; publishing goes on.
    pub queue_conflicts: Vec<Conflict>,
    /// The node of `amqp.uri` the relay is connected to (password masked).
    pub node: Option<String>,
    /// What an earlier version left that this one routes differently, and
    /// what to do (see `upgrade`).
    pub upgrade: Vec<String>,
    /// Whether some of it needs a human (a consumer that receives nothing).
    pub upgrade_needs_action: bool,
}

/// The current [`Status`], and the one place that changes it.
pub(super) struct StatusBoard {
    status: watch::Sender<Status>,
    /// Whether the state is `blocked`, read on every publish.
    blocked: AtomicBool,
    metrics: Metrics,
    /// Where events of a refused queue go when it does not exist.
    unrouted: String,
    /// The queues whose refusal is reported: consumer queues, the history.
    reported: Vec<String>,
}

impl StatusBoard {
    pub(super) fn new(topology: &Topology, metrics: Metrics) -> StatusBoard {
        let reported: Vec<String> = topology
            .reported_queues()
            .into_iter()
            .map(str::to_owned)
            .collect();
        for queue in &reported {
            metrics.queue_conflict(queue, false);
        }
        metrics.broker_state(BrokerState::Disconnected);
        StatusBoard {
            status: watch::Sender::new(Status {
                state: BrokerState::Disconnected,
                reason: Some("not connected yet".to_owned()),
                queue_conflicts: Vec::new(),
                node: None,
                upgrade: Vec::new(),
                upgrade_needs_action: false,
            }),
            blocked: AtomicBool::new(false),
            metrics,
            unrouted: topology.unrouted().to_owned(),
            reported,
        }
    }

    pub(super) fn get(&self) -> Status {
        self.status.borrow().clone()
    }

    pub(super) fn state(&self) -> BrokerState {
        self.status.borrow().state
    }

    /// Whether RabbitMQ blocks publishers now: cheap enough for every publish.
    pub(super) fn is_blocked(&self) -> bool {
        self.blocked.load(Ordering::Relaxed)
    }

    /// Records that RabbitMQ blocks publishers on the connected session
    /// (`Some(alarm)`) or accepts them again (`None`); logs each change.
    pub(super) fn set_blocked(&self, alarm: Option<String>) {
        let (state, reason) = match &alarm {
            Some(alarm) => (
                BrokerState::Blocked,
                Some(format!(
                    "RabbitMQ blocks publishing (a resource alarm: {alarm})"
                )),
            ),
            None => (BrokerState::Connected, None),
        };
        self.blocked.store(alarm.is_some(), Ordering::Relaxed);
        let changed = self.status.send_if_modified(|status| {
            let changed = status.state != state;
            status.state = state;
            status.reason.clone_from(&reason);
            changed
        });
        self.metrics.broker_state(state);
        match (changed, alarm) {
            (true, Some(alarm)) => warn!(
                %alarm,
                "RabbitMQ blocks publishing (a memory or disk alarm): webhooks are spooled until \
                 it clears (rabbitmq-diagnostics alarms says which)"
            ),
            (true, None) => info!("RabbitMQ accepts publishing again"),
            (false, _) => {}
        }
    }

    /// Messages in each queue as the last declaration found them.
    pub(super) fn set_queue_depths(&self, topology: &Topology, depths: &[(String, u32)]) {
        for (queue, messages) in depths {
            if let Some(role) = topology.queue_role(queue) {
                self.metrics.queue_messages(queue, role, *messages);
            }
        }
    }

    /// The consumer queues RabbitMQ refuses now.
    pub(super) fn queue_conflicts(&self) -> Vec<Conflict> {
        self.status.borrow().queue_conflicts.clone()
    }

    /// Records a state; logs it only when it changed.
    pub(super) fn set_state(&self, state: BrokerState, reason: Option<String>) {
        self.blocked
            .store(state == BrokerState::Blocked, Ordering::Relaxed);
        let changed = self.status.send_if_modified(|status| {
            let changed = status.state != state || status.reason != reason;
            status.state = state;
            status.reason.clone_from(&reason);
            changed
        });
        self.metrics.broker_state(state);
        if !changed {
            debug!(?state, ?reason, "RabbitMQ state unchanged");
            return;
        }
        let reason = reason.unwrap_or_default();
        match state {
            // The supervisor says where it connected to.
            BrokerState::Connected | BrokerState::Blocked => {}
            BrokerState::Disconnected => warn!(
                %reason,
                "not connected to RabbitMQ: webhooks are spooled and published once the relay \
                 has reconnected, which it retries with backoff (if this lasts, check that \
                 RabbitMQ runs and amqp.uri is right)"
            ),
            BrokerState::Misconfigured => error!(
                %reason,
                "RabbitMQ refuses the relay's own exchanges or queues: NOTHING is published \
                 and every webhook is spooled until this is fixed. Delete or correct the object \
                 named (rabbitmqctl delete_queue / delete_exchange), or set another \
                 amqp.exchange; the relay retries by itself"
            ),
        }
    }

    /// Records that RabbitMQ refuses the relay's login: disconnected, and the
    /// one state of it that only a human can fix, so it is logged as an
    /// error (once, while the reason stays the same).
    pub(super) fn set_login_refused(&self, reason: String) {
        self.blocked.store(false, Ordering::Relaxed);
        let reason = Some(reason);
        let changed = self.status.send_if_modified(|status| {
            let changed = status.state != BrokerState::Disconnected || status.reason != reason;
            status.state = BrokerState::Disconnected;
            status.reason.clone_from(&reason);
            changed
        });
        self.metrics.broker_state(BrokerState::Disconnected);
        if changed {
            error!(
                reason = reason.as_deref().unwrap_or_default(),
                "RabbitMQ refuses the relay's login: webhooks are spooled until it is fixed. Check \
                 the user, password and vhost in amqp.uri, and that the user may use that vhost \
                 (rabbitmqctl list_permissions); the relay keeps retrying with backoff"
            );
        }
    }

    /// Records the node connected to, or none. The supervisor logs it.
    pub(super) fn set_node(&self, node: Option<String>) {
        self.status.send_if_modified(|status| {
            let changed = status.node != node;
            status.node = node;
            changed
        });
    }

    /// Records what an earlier version left; logs each notice once, when it appears.
    pub(super) fn set_upgrade(&self, found: &super::upgrade::Findings) {
        let notices = found.notices();
        let previous = self.status.borrow().upgrade.clone();
        for notice in notices.iter().filter(|n| !previous.contains(n)) {
            warn!(notice = %notice, "left by an earlier version of the relay");
        }
        self.status.send_if_modified(|status| {
            let changed = status.upgrade != notices;
            status.upgrade = notices;
            status.upgrade_needs_action = found.old_route.is_some();
            changed
        });
    }

    /// Records the consumer queues RabbitMQ refuses; logs each that appears or goes.
    pub(super) fn set_queue_conflicts(&self, conflicts: Vec<Conflict>) {
        let previous = self.queue_conflicts();
        for conflict in conflicts.iter().filter(|c| !previous.contains(c)) {
            warn!(
                queue = conflict.queue.as_deref().unwrap_or_default(),
                object = %conflict.object,
                reason = %conflict.reason,
                "RabbitMQ refuses a consumer queue as configured; publishing goes on (its \
                 events reach the existing queue if it is bound, else {}). Make its \
                 [[queues]] entry match the queue, or delete the queue so the relay declares \
                 it; retried every {}s",
                self.unrouted,
                CONFLICT_RETRY.as_secs()
            );
        }
        for queue in &self.reported {
            let refused = |c: &Conflict| c.queue.as_deref() == Some(queue.as_str());
            let now = conflicts.iter().any(refused);
            if !now && previous.iter().any(refused) {
                info!(%queue, "consumer queue declared as configured");
            }
            self.metrics.queue_conflict(queue, now);
        }
        self.status.send_if_modified(|status| {
            let changed = status.queue_conflicts != conflicts;
            status.queue_conflicts = conflicts;
            changed
        });
    }
}

/// When a consumer queue that RabbitMQ refused is declared again.
#[derive(Default)]
pub(super) struct ConflictRetries {
    last: Option<Instant>,
}

impl ConflictRetries {
    /// The refused queues not to declare this time: none once `CONFLICT_RETRY`
    /// has passed since the last full declaration.
    pub(super) fn skip(&mut self, conflicts: &[Conflict]) -> HashSet<String> {
        if self
            .last
            .is_none_or(|last| last.elapsed() >= CONFLICT_RETRY)
        {
            self.last = Some(Instant::now());
            return HashSet::new();
        }
        conflicts.iter().filter_map(|c| c.queue.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{QueueSettings, QueueType};

    fn conflict(queue: &str) -> Conflict {
        Conflict {
            object: format!("queue {queue}"),
            queue: Some(queue.to_owned()),
            reason: "PRECONDITION_FAILED - inequivalent arg".to_owned(),
        }
    }

    #[test]
    fn refused_queues_are_declared_again_only_every_so_often() {
        let mut retries = ConflictRetries::default();

        assert!(
            retries.skip(&[conflict("q")]).is_empty(),
            "first time: declare all"
        );
        assert!(
            retries.skip(&[conflict("q")]).contains("q"),
            "soon after: skip it"
        );
        retries.last = Some(Instant::now() - CONFLICT_RETRY);
        assert!(
            retries.skip(&[conflict("q")]).is_empty(),
            "after CONFLICT_RETRY: declare it again"
        );
    }

    #[test]
    fn a_refused_queue_shows_in_the_status_and_the_metric_until_it_clears() {
        let queue = QueueSettings::new("reprompt", &["#"], QueueType::Quorum);
        let metrics = Metrics::new();
        let board = StatusBoard::new(&Topology::new("hooks", &[queue]), metrics.clone());
        let gauge = r#"hookrelay_queue_conflict{queue="reprompt"}"#;
        assert!(metrics.encode().contains(&format!("{gauge} 0")));

        board.set_queue_conflicts(vec![conflict("reprompt")]);
        assert_eq!(board.get().queue_conflicts, [conflict("reprompt")]);
        assert!(metrics.encode().contains(&format!("{gauge} 1")));

        board.set_queue_conflicts(Vec::new());
        assert!(board.get().queue_conflicts.is_empty());
        assert!(metrics.encode().contains(&format!("{gauge} 0")));
    }
}
