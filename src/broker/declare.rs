//! Declaring the topology: everything idempotently, reporting instead of
//! stopping at the first refusal: which objects were missing (deleted while
//! the relay ran), which of the relay's own objects RabbitMQ refuses (the relay
//! cannot publish: `misconfigured`), and which consumer queues, or history
//! stream, it refuses (reported; publishing goes on).

use std::collections::HashSet;
use std::fmt;

use lapin::options::{
    ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection, ExchangeKind};

use super::arguments::{
    OWN_DELIVERY_LIMIT_ARG, consumer_queue_arguments, retry_tier_arguments, string,
};
use super::names::Topology;
use crate::config::{QueueSettings, QueueType};

/// What RabbitMQ refused to declare, in its own words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// `queue <name>`, `exchange <name>` or `binding <from> -> <to>`.
    pub object: String,
    /// The queue's name, when the conflict is about a consumer queue.
    pub queue: Option<String>,
    /// RabbitMQ's reply, e.g. `PRECONDITION_FAILED - inequivalent arg ...`.
    pub reason: String,
}

/// What one declaration found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Declared {
    /// Objects that did not exist and were created.
    pub created: Vec<String>,
    /// The relay's own objects that RabbitMQ refused: publishing cannot work.
    pub own_conflicts: Vec<Conflict>,
    /// Consumer queues (or their bindings) that RabbitMQ refused.
    pub queue_conflicts: Vec<Conflict>,
    /// Consumer queues with a known conflict that were not declared again.
    pub skipped: Vec<String>,
    /// The history stream, when RabbitMQ says it is not available (yet): a
    /// broker that has just started answers so for a moment. A publish then
    /// would reach the consumers' queues and not the history, which must
    /// hold every event: publishing waits until it is there.
    pub unavailable: Vec<Conflict>,
    /// The relay's own queues found as an earlier version declared them:
    /// accepted (they work), and reported once, with how to update them.
    pub outdated: Vec<Outdated>,
    /// Messages in each queue declared, as RabbitMQ answered the declare
    /// (for the history stream, not a count of its events).
    pub depths: Vec<(String, u32)>,
}

/// One of the relay's own queues, declared by an earlier version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outdated {
    pub queue: String,
    /// What it lacks, and what that costs.
    pub lacks: &'static str,
}

const DURABLE_EXCHANGE: ExchangeDeclareOptions = ExchangeDeclareOptions {
    passive: false,
    durable: true,
    auto_delete: false,
    internal: false,
    nowait: false,
};

const DURABLE_QUEUE: QueueDeclareOptions = QueueDeclareOptions {
    passive: false,
    durable: true,
    exclusive: false,
    auto_delete: false,
    nowait: false,
};

impl Topology {
    /// Declares everything on channels of `connection`, and says what it found.
    /// Consumer queues named in `skip` (known conflicts: RabbitMQ logs every
    /// refusal, so they are retried less often) are only bound, unless they
    /// no longer exist.
    ///
    /// `Err` only when the connection itself fails; every refusal RabbitMQ
    /// answers with a channel error is in the report.
    pub async fn declare(
        &self,
        connection: &Connection,
        skip: &HashSet<String>,
    ) -> Result<Declared, lapin::Error> {
        let mut declarer = Declarer::open(connection).await?;
        let mut report = Declared::default();
        self.declare_own(&mut declarer, &mut report).await?;
        self.declare_history(&mut declarer, &mut report, skip)
            .await?;
        for queue in &self.queues {
            self.declare_consumer_queue(&mut declarer, &mut report, queue, skip)
                .await?;
        }
        declarer.close().await;
        Ok(report)
    }

    /// The relay's own exchanges and queues: the entry, the topic exchange
    /// and its alternate, the dead letters, the quarantine, the changes.
    async fn declare_own(
        &self,
        declarer: &mut Declarer<'_>,
        report: &mut Declared,
    ) -> Result<(), lapin::Error> {
        // The alternate exchange before the exchange that names it.
        let own = [
            Object::Exchange(&self.unrouted, ExchangeKind::Fanout, FieldTable::default()),
            self.own_queue(&self.unrouted),
            Object::QueueBinding(&self.unrouted, &self.unrouted, ""),
            Object::Exchange(&self.exchange, ExchangeKind::Topic, {
                let mut args = FieldTable::default();
                args.insert("alternate-exchange".into(), string(&self.unrouted));
                args
            }),
            Object::Exchange(&self.entry, ExchangeKind::Fanout, FieldTable::default()),
            Object::ExchangeBinding(&self.exchange, &self.entry),
            Object::Exchange(
                &self.dead_letter_exchange,
                ExchangeKind::Topic,
                FieldTable::default(),
            ),
            self.own_queue(&self.dead_letter_queue),
            Object::QueueBinding(&self.dead_letter_queue, &self.dead_letter_exchange, "#"),
            self.own_queue(&self.quarantine),
            // No alternate exchange: a change no consumer subscribed to is
            // kept by the history alone, and nothing piles up unrouted.
            Object::Exchange(&self.changes, ExchangeKind::Topic, FieldTable::default()),
        ];
        for object in own {
            let earlier = match &object {
                Object::Queue(name, _) => self.earlier_own_queue_arguments().map(|a| (*name, a)),
                _ => None,
            };
            let Some(conflict) = declarer.ensure(object, report).await? else {
                continue;
            };
            // Refused: perhaps the queue an earlier version declared. It works;
            // accept it, and say once how to update it.
            if let Some((name, arguments)) = earlier
                && conflict.reason.contains(OWN_DELIVERY_LIMIT_ARG)
                && declarer
                    .ensure(Object::Queue(name, arguments), report)
                    .await?
                    .is_none()
            {
                self.lock_outdated().insert(name.to_owned());
                report.outdated.push(Outdated {
                    queue: name.to_owned(),
                    lacks: "an explicit delivery limit: on RabbitMQ 4 it would get the default \
                            of 20, and a message inspected or replayed 20 times would be dropped",
                });
                continue;
            }
            report.own_conflicts.push(conflict);
        }
        Ok(())
    }

    /// The history stream and its bindings, when the history is on.
    async fn declare_history(
        &self,
        declarer: &mut Declarer<'_>,
        report: &mut Declared,
        skip: &HashSet<String>,
    ) -> Result<(), lapin::Error> {
        // Not fatal when refused (a retention changed in the configuration
        // cannot change an existing stream): reported like a consumer queue,
        // and bound anyway, so the history goes on with the stream there is.
        if let Some(history) = &self.history {
            if skip.contains(&history.name) && declarer.queue_exists(&history.name).await? {
                report.skipped.push(history.name.clone());
            } else {
                let stream = Object::Queue(&history.name, history.arguments());
                if let Some(conflict) = declarer.ensure(stream, report).await? {
                    let conflict = conflict.for_queue(&history.name);
                    if conflict.is_unavailable() {
                        report.unavailable.push(conflict);
                        return Ok(());
                    }
                    report.queue_conflicts.push(conflict);
                }
            }
            // Every event, and every change the relay announces: the derived
            // layer reads its own announcements back from here.
            let bindings = [
                Object::QueueBinding(&history.name, &self.entry, ""),
                Object::QueueBinding(&history.name, &self.changes, "#"),
            ];
            for binding in bindings {
                if let Some(conflict) = declarer.ensure(binding, report).await? {
                    report
                        .queue_conflicts
                        .push(conflict.for_queue(&history.name));
                }
            }
        }
        Ok(())
    }

    /// One `[[queues]]` entry: its retry tiers, the queue, its bindings.
    async fn declare_consumer_queue(
        &self,
        declarer: &mut Declarer<'_>,
        report: &mut Declared,
        queue: &QueueSettings,
        skip: &HashSet<String>,
    ) -> Result<(), lapin::Error> {
        // The retry tiers before the queue: a consumer that finds the
        // queue learns its tiers from what exists (the contract's way),
        // so they must be there first.
        for (n, delay) in queue.retry.iter().enumerate() {
            let tier = crate::wire::retry::tier_queue(&queue.name, n + 1);
            let arguments = retry_tier_arguments(queue, self.tier_type(queue), *delay);
            let declared = declarer.ensure(Object::Queue(&tier, arguments), report);
            if let Some(conflict) = declared.await? {
                report.queue_conflicts.push(conflict.for_queue(&queue.name));
            }
        }
        let skipped = skip.contains(&queue.name) && declarer.queue_exists(&queue.name).await?;
        if skipped {
            report.skipped.push(queue.name.clone());
        } else {
            let arguments = consumer_queue_arguments(queue, &self.dead_letter_exchange);
            let declared = declarer.ensure(Object::Queue(&queue.name, arguments), report);
            if let Some(conflict) = declared.await? {
                let conflict = self.explain(declarer, queue, conflict).await?;
                report.queue_conflicts.push(conflict.for_queue(&queue.name));
            }
        }
        // Bound even when its declaration was refused: a queue that exists
        // with other arguments is still the user's queue, and its events
        // should reach it while the conflict lasts.
        let bindings = (queue.bindings.iter().map(|p| (&self.exchange, p)))
            .chain(queue.changes.iter().map(|p| (&self.changes, p)));
        for (exchange, pattern) in bindings {
            let binding = Object::QueueBinding(&queue.name, exchange, pattern);
            if let Some(conflict) = declarer.ensure(binding, report).await? {
                report.queue_conflicts.push(conflict.for_queue(&queue.name));
            }
        }
        Ok(())
    }

    /// RabbitMQ names only the first argument that differs, so a queue that
    /// exists as classic while the configuration says quorum is refused for
    /// `x-overflow`. If the queue takes the other type's arguments as this
    /// version declares them, say that instead.
    async fn explain(
        &self,
        declarer: &mut Declarer<'_>,
        queue: &QueueSettings,
        conflict: Conflict,
    ) -> Result<Conflict, lapin::Error> {
        if !conflict.reason.contains("inequivalent arg") {
            return Ok(conflict);
        }
        let (configured, other) = match queue.kind() {
            QueueType::Classic => ("classic", QueueType::Quorum),
            QueueType::Quorum => ("quorum", QueueType::Classic),
        };
        let mut as_other = queue.clone();
        as_other.kind = Some(other);
        let mut probes = vec![consumer_queue_arguments(
            &as_other,
            &self.dead_letter_exchange,
        )];
        // A classic queue a consumer declared itself, with no arguments.
        if other == QueueType::Classic {
            probes.push(FieldTable::default());
        }
        let mut is_other = false;
        for arguments in probes {
            let mut ignored = Declared::default();
            let probe = Object::Queue(&queue.name, arguments);
            if declarer.ensure(probe, &mut ignored).await?.is_none() {
                is_other = true;
                break;
            }
        }
        if !is_other {
            return Ok(conflict);
        }
        let other = match other {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        };
        Ok(Conflict {
            reason: format!(
                "the queue exists as a {other} queue and [[queues]] says {configured}: RabbitMQ \
                 cannot change a queue's type. Set type = \"{other}\", or let its consumer \
                 drain it, delete it, and the relay declares it as {configured} (RabbitMQ's \
                 words: {})",
                conflict.reason
            ),
            ..conflict
        })
    }

    /// The unrouted, dead-letter or quarantine queue, as this version
    /// declares it, or as an earlier one did if that is what the broker holds.
    fn own_queue<'a>(&self, name: &'a str) -> Object<'a> {
        let earlier = self.lock_outdated().contains(name);
        match self.earlier_own_queue_arguments().filter(|_| earlier) {
            Some(arguments) => Object::Queue(name, arguments),
            None => Object::Queue(name, self.own_queue_arguments()),
        }
    }
}

impl Conflict {
    fn for_queue(mut self, queue: &str) -> Conflict {
        self.queue = Some(queue.to_owned());
        self
    }

    /// Whether RabbitMQ refused it for now, not for what it is: the queue's
    /// node is down, or has not started it yet. (Its reply code alone,
    /// `NOT_FOUND`, also means a queue that does not exist; the text says
    /// which.)
    fn is_unavailable(&self) -> bool {
        self.reason.starts_with("NOT_FOUND") && self.reason.contains("down or inaccessible")
    }
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.object, self.reason)
    }
}

/// One thing to declare.
enum Object<'a> {
    Exchange(&'a str, ExchangeKind, FieldTable),
    Queue(&'a str, FieldTable),
    /// queue, exchange, pattern
    QueueBinding(&'a str, &'a str, &'a str),
    /// destination, source
    ExchangeBinding(&'a str, &'a str),
}

impl Object<'_> {
    fn describe(&self) -> String {
        match self {
            Object::Exchange(name, ..) => format!("exchange {name}"),
            Object::Queue(name, _) => format!("queue {name}"),
            Object::QueueBinding(queue, exchange, pattern) => {
                format!("binding {exchange} -> queue {queue} ({pattern})")
            }
            Object::ExchangeBinding(destination, source) => {
                format!("binding {source} -> exchange {destination}")
            }
        }
    }
}

/// Declares on one channel, and opens a new one whenever RabbitMQ closes it
/// with a channel error (a refused or passive declare), so one refusal does
/// not stop the rest.
struct Declarer<'c> {
    connection: &'c Connection,
    channel: Channel,
}

impl<'c> Declarer<'c> {
    async fn open(connection: &'c Connection) -> Result<Declarer<'c>, lapin::Error> {
        Ok(Declarer {
            connection,
            channel: connection.create_channel().await?,
        })
    }

    /// Declares `object`, noting in `report` what did not exist before and
    /// how many messages a queue holds. `Some` when RabbitMQ refused it.
    async fn ensure(
        &mut self,
        object: Object<'_>,
        report: &mut Declared,
    ) -> Result<Option<Conflict>, lapin::Error> {
        let existed = match &object {
            Object::Exchange(name, ..) => self.exchange_exists(name).await?,
            Object::Queue(name, _) => self.queue_exists(name).await?,
            // Bindings cannot be looked up over AMQP; binding again is harmless.
            Object::QueueBinding(..) | Object::ExchangeBinding(..) => true,
        };
        let description = object.describe();
        let result = match object {
            Object::Exchange(name, kind, args) => {
                self.channel
                    .exchange_declare(ShortString::from(name), kind, DURABLE_EXCHANGE, args)
                    .await
            }
            Object::Queue(name, args) => self
                .channel
                .queue_declare(ShortString::from(name), DURABLE_QUEUE, args)
                .await
                .map(|queue| report.depths.push((name.to_owned(), queue.message_count()))),
            Object::QueueBinding(queue, exchange, pattern) => {
                self.channel
                    .queue_bind(
                        ShortString::from(queue),
                        ShortString::from(exchange),
                        ShortString::from(pattern),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
            }
            Object::ExchangeBinding(destination, source) => {
                self.channel
                    .exchange_bind(
                        ShortString::from(destination),
                        ShortString::from(source),
                        ShortString::from(""),
                        ExchangeBindOptions::default(),
                        FieldTable::default(),
                    )
                    .await
            }
        };
        match self.refusal(result).await? {
            Some(reason) => Ok(Some(Conflict {
                object: description,
                queue: None,
                reason,
            })),
            None => {
                if !existed {
                    report.created.push(description);
                }
                Ok(None)
            }
        }
    }

    async fn exchange_exists(&mut self, name: &str) -> Result<bool, lapin::Error> {
        let passive = ExchangeDeclareOptions {
            passive: true,
            ..DURABLE_EXCHANGE
        };
        let result = self
            .channel
            .exchange_declare(
                ShortString::from(name),
                ExchangeKind::Fanout,
                passive,
                FieldTable::default(),
            )
            .await;
        Ok(self.refusal(result).await?.is_none())
    }

    async fn queue_exists(&mut self, name: &str) -> Result<bool, lapin::Error> {
        let passive = QueueDeclareOptions {
            passive: true,
            ..DURABLE_QUEUE
        };
        let result = self
            .channel
            .queue_declare(ShortString::from(name), passive, FieldTable::default())
            .await
            .map(drop);
        Ok(self.refusal(result).await?.is_none())
    }

    /// RabbitMQ's words when it refused with a channel error (after which the
    /// channel is closed, so a new one is opened); `Err` for anything else.
    async fn refusal(
        &mut self,
        result: Result<(), lapin::Error>,
    ) -> Result<Option<String>, lapin::Error> {
        match result {
            Ok(()) => Ok(None),
            Err(err) if err.is_amqp_soft_error() => {
                self.channel = self.connection.create_channel().await?;
                Ok(Some(refusal_text(&err)))
            }
            Err(err) => Err(err),
        }
    }

    async fn close(self) {
        super::close_channel(&self.channel, "declared").await;
    }
}

/// RabbitMQ's own reply text (`PRECONDITION_FAILED - inequivalent arg ...`),
/// without lapin's prefix.
pub(crate) fn refusal_text(err: &lapin::Error) -> String {
    match err.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => amqp.get_message().to_string(),
        _ => err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conflict(reason: &str) -> Conflict {
        Conflict {
            object: "queue webhooks.history".to_owned(),
            queue: Some("webhooks.history".to_owned()),
            reason: reason.to_owned(),
        }
    }

    #[test]
    fn a_stream_its_node_has_not_started_is_unavailable_not_refused() {
        // RabbitMQ 3.13's reply to a declare just after it started, seen in
        // the compose check (scripts/compose-check.sh).
        let starting = conflict(
            "NOT_FOUND - home node 'rabbit@rabbitmq' of durable queue 'webhooks.history' \
             in vhost '/' is down or inaccessible",
        );
        assert!(starting.is_unavailable());
        let retention = conflict(
            "PRECONDITION_FAILED - inequivalent arg 'x-max-age' for queue 'webhooks.history' \
             in vhost '/': received the value '1D' of type 'longstr' but current is '7D'",
        );
        assert!(!retention.is_unavailable());
    }
}
