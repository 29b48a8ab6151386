//! The one place that knows RabbitMQ names: the relay's own exchanges and
//! queues, the consumer queues of the configuration, and where each kind of
//! [`Message`](crate::wire::envelope::Message) is published.
//!
//! ```text
//! every event ─► <exchange>.in (fanout: the entry point, one publish per webhook)
//!                  ├─► stream <exchange>.history (with [history] on): every event, kept for days
//!                  ├─► watchers (hookrelay tail, without history) bind here: they see everything, route nothing
//!                  └─► <exchange> (topic) ─► consumer queues ([[queues]], bound by routing key)
//!                        └─ no consumer queue matches ─► alternate exchange <exchange>.unrouted
//!                                                          (fanout) ─► queue <exchange>.unrouted
//! consumer queues ─ rejected/expired ─► <exchange>.dlx (topic) ─#─► queue <exchange>.dead-letter
//! quarantined bodies ─► default exchange ─► queue <exchange>.quarantine (+ a copy to the history)
//! ```
//!
//! Watchers bind to the entry fanout, never to the topic exchange: a queue
//! bound to the topic exchange with `#` would match every event, and the
//! alternate exchange would never fire.
//!
//! [`Topology::declare`] declares everything idempotently and reports instead
//! of stopping at the first refusal: which objects were missing (deleted while
//! the relay ran), which of the relay's own objects RabbitMQ refuses (the relay
//! cannot publish: `misconfigured`), and which consumer queues, or history
//! stream, it refuses (reported; publishing goes on).
//!
//! A trap of the entry fanout: while anything besides the topic exchange is
//! bound to it (the history stream, a watcher), a `mandatory` publish counts
//! as routed even when the topic exchange or `<exchange>.unrouted` was
//! deleted. The event is then kept only in the history (or the watcher's
//! queue), so the relay does not rely on returns alone: it declares its
//! topology again every `amqp.topology_check_secs`.

use std::collections::HashSet;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::{
    ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ExchangeKind};

use crate::config::{HistorySettings, QueueSettings, QueueType, Settings};
use crate::wire::envelope::Kind;

/// The relay's RabbitMQ names, derived from `amqp.exchange`, and its consumer queues.
#[derive(Debug, Clone)]
pub struct Topology {
    entry: String,
    exchange: String,
    unrouted: String,
    dead_letter_exchange: String,
    dead_letter_queue: String,
    quarantine: String,
    queues: Vec<QueueSettings>,
    /// The type of the relay's own queues and of retry tiers.
    queue_type: QueueType,
    history: Option<HistoryStream>,
    /// Own queues this broker holds in an earlier version's form: declared
    /// that way from then on, so RabbitMQ does not log a refusal at every check.
    outdated: Arc<Mutex<HashSet<String>>>,
}

/// The stream every event is kept in, and its retention.
#[derive(Debug, Clone)]
struct HistoryStream {
    name: String,
    max_age_secs: u64,
    max_bytes: u64,
}

/// Where one message is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address<'a> {
    /// Empty for the default exchange (straight to the queue named by the key).
    pub exchange: &'a str,
    pub routing_key: &'a str,
}

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
    /// The relay's own queues found as an earlier version declared them:
    /// accepted (they work), and reported once, with how to update them.
    pub outdated: Vec<Outdated>,
}

/// One of the relay's own queues, declared by an earlier version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outdated {
    pub queue: String,
    /// What it lacks, and what that costs.
    pub lacks: &'static str,
}

/// The relay's own quorum queues' delivery limit: never reached in practice.
const OWN_DELIVERY_LIMIT: i64 = 1_000_000;
const OWN_DELIVERY_LIMIT_ARG: &str = "x-delivery-limit";

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
            entry: format!("{exchange}.in"),
            exchange: exchange.to_owned(),
            unrouted: format!("{exchange}.unrouted"),
            dead_letter_exchange: format!("{exchange}.dlx"),
            dead_letter_queue: format!("{exchange}.dead-letter"),
            quarantine: format!("{exchange}.quarantine"),
            queues: queues.to_vec(),
            queue_type: QueueType::Classic,
            history: None,
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
    pub fn own_exchanges(&self) -> [&str; 4] {
        [
            &self.entry,
            &self.exchange,
            &self.unrouted,
            &self.dead_letter_exchange,
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
        ];
        for object in own {
            let earlier = match &object {
                Object::Queue(name, _) => self.earlier_own_queue_arguments().map(|a| (*name, a)),
                _ => None,
            };
            let Some(conflict) = declarer.ensure(object, &mut report.created).await? else {
                continue;
            };
            // Refused: perhaps the queue an earlier version declared. It works;
            // accept it, and say once how to update it.
            if let Some((name, arguments)) = earlier
                && conflict.reason.contains(OWN_DELIVERY_LIMIT_ARG)
                && declarer
                    .ensure(Object::Queue(name, arguments), &mut report.created)
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

        // Not fatal when refused (a retention changed in the configuration
        // cannot change an existing stream): reported like a consumer queue,
        // and bound anyway, so the history goes on with the stream there is.
        if let Some(history) = &self.history {
            if skip.contains(&history.name) && declarer.queue_exists(&history.name).await? {
                report.skipped.push(history.name.clone());
            } else {
                let stream = Object::Queue(&history.name, history.arguments());
                if let Some(conflict) = declarer.ensure(stream, &mut report.created).await? {
                    report
                        .queue_conflicts
                        .push(conflict.for_queue(&history.name));
                }
            }
            let binding = Object::QueueBinding(&history.name, &self.entry, "");
            if let Some(conflict) = declarer.ensure(binding, &mut report.created).await? {
                report
                    .queue_conflicts
                    .push(conflict.for_queue(&history.name));
            }
        }

        for queue in &self.queues {
            let skipped = skip.contains(&queue.name) && declarer.queue_exists(&queue.name).await?;
            if skipped {
                report.skipped.push(queue.name.clone());
            } else {
                let arguments = consumer_queue_arguments(queue, &self.dead_letter_exchange);
                let declared =
                    declarer.ensure(Object::Queue(&queue.name, arguments), &mut report.created);
                if let Some(conflict) = declared.await? {
                    let conflict = self.explain(&mut declarer, queue, conflict).await?;
                    report.queue_conflicts.push(conflict.for_queue(&queue.name));
                }
            }
            // Bound even when its declaration was refused: a queue that exists
            // with other arguments is still the user's queue, and its events
            // should reach it while the conflict lasts.
            for pattern in &queue.bindings {
                let binding = Object::QueueBinding(&queue.name, &self.exchange, pattern);
                if let Some(conflict) = declarer.ensure(binding, &mut report.created).await? {
                    report.queue_conflicts.push(conflict.for_queue(&queue.name));
                }
            }
            for (n, delay) in queue.retry.iter().enumerate() {
                let tier = crate::wire::retry::tier_queue(&queue.name, n + 1);
                let arguments = retry_tier_arguments(queue, self.tier_type(queue), *delay);
                let declared =
                    declarer.ensure(Object::Queue(&tier, arguments), &mut report.created);
                if let Some(conflict) = declared.await? {
                    report.queue_conflicts.push(conflict.for_queue(&queue.name));
                }
            }
        }
        declarer.close().await;
        Ok(report)
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
            let mut ignored = Vec::new();
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

    /// Arguments of the unrouted, dead-letter and quarantine queues: nothing
    /// for classic (so that queues declared by earlier versions still match).
    /// A quorum queue gets an explicit delivery limit so large it never
    /// matters: these queues have no dead-letter target, so a message over
    /// the limit would be dropped, and RabbitMQ 4 gives every quorum queue a
    /// limit of 20 (inspect and replay count as deliveries). Not `-1`: on
    /// 3.10 that dead-letters a message at its first return (checked).
    fn own_queue_arguments(&self) -> FieldTable {
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
    fn earlier_own_queue_arguments(&self) -> Option<FieldTable> {
        (self.queue_type == QueueType::Quorum).then(|| {
            let mut args = FieldTable::default();
            args.insert("x-queue-type".into(), string("quorum"));
            args
        })
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

    fn lock_outdated(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.outdated.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A retry tier is quorum when its queue is, or when the relay's own
    /// queues are: a tier holds messages too, and must survive a node loss.
    fn tier_type(&self, queue: &QueueSettings) -> QueueType {
        match (queue.kind(), self.queue_type) {
            (QueueType::Quorum, _) | (_, QueueType::Quorum) => QueueType::Quorum,
            _ => QueueType::Classic,
        }
    }
}

impl HistoryStream {
    fn arguments(&self) -> FieldTable {
        let mut args = FieldTable::default();
        args.insert("x-queue-type".into(), string("stream"));
        args.insert(
            "x-max-age".into(),
            string(&format!("{}s", self.max_age_secs)),
        );
        args.insert(
            "x-max-length-bytes".into(),
            AMQPValue::LongLongInt(self.max_bytes.min(i64::MAX as u64) as i64),
        );
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
///   that queues declared by earlier versions (or by a consumer, as the README
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
/// Checked on RabbitMQ 3.10.8 (README, "Slow and full consumers").
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
pub fn retry_tier_arguments(queue: &QueueSettings, kind: QueueType, delay: Duration) -> FieldTable {
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
    AMQPValue::LongLongInt(value.min(i64::MAX as u64) as i64)
}

fn string(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

impl Conflict {
    fn for_queue(mut self, queue: &str) -> Conflict {
        self.queue = Some(queue.to_owned());
        self
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

    /// Declares `object`, noting in `created` what did not exist before.
    /// `Some` when RabbitMQ refused it.
    async fn ensure(
        &mut self,
        object: Object<'_>,
        created: &mut Vec<String>,
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
                .map(drop),
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
                    created.push(description);
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
pub fn refusal_text(err: &lapin::Error) -> String {
    match err.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => amqp.get_message().to_string(),
        _ => err.to_string(),
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
            ["hooks.in", "hooks", "hooks.unrouted", "hooks.dlx"]
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
        };
        let with_history = topology.with_history(&settings);
        assert_eq!(with_history.history_stream(), Some("hooks.history"));
        assert_eq!(with_history.own_queues().last(), Some(&"hooks.history"));
        assert_eq!(with_history.reported_queues(), ["hooks.history"]);
    }
}
