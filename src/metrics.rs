//! Prometheus metrics, recorded where an outcome is decided and served by the
//! admin listener. Label values come from fixed enums, never from request data.

use std::sync::Arc;
use std::time::Duration;

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::event::{Event, KNOWN_ERROR_CODES, SchemaWarning};
use crate::wire::envelope::Kind;

/// How one webhook request ended; the label of `hookrelay_webhook_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, strum::VariantArray)]
pub enum Outcome {
    /// Parsed and confirmed by RabbitMQ: 200.
    Accepted,
    /// An identical copy (same client id, same bytes) arrived while this one
    /// was being stored: stored once, the newer copy answers 200 for it and
    /// this one gets 503 (see `ingress::copies`). Not a failure.
    Superseded,
    /// Not a valid event, kept in the quarantine queue: 422.
    Quarantined,
    /// The source address is not allowed: 403.
    Forbidden,
    /// Missing or wrong `x-client-id`: 401.
    Unauthorized,
    /// Not JSON: 415.
    UnsupportedMediaType,
    /// Over `max_body_bytes`: 413.
    PayloadTooLarge,
    /// Over `max_headers` or `max_header_bytes`: 431.
    HeadersTooLarge,
    /// Another method than POST on the webhook path, from an allowed source: 405.
    MethodNotAllowed,
    /// Any other path (a wrong path token included): 404.
    NotFound,
    /// The body could not be read: 400.
    BadRequest,
    /// The body did not arrive within `server.body_timeout_ms`: 408.
    BodyTimeout,
    /// RabbitMQ could not confirm, so it was written to the local spool: 200.
    Spooled,
    /// RabbitMQ refused it (a queue bound to its routing key pushes back), so
    /// it was written to the spool's refused lane and is retried beside the
    /// flow: 200.
    Refused,
    /// RabbitMQ could not confirm and there is no spool (or it failed to write): 503.
    BrokerUnavailable,
    /// RabbitMQ could not confirm and the spool is full: 503.
    SpoolFull,
    /// Storing it was interrupted by the relay stopping: 503.
    Interrupted,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Superseded => "superseded",
            Outcome::Quarantined => "quarantined",
            Outcome::Forbidden => "forbidden",
            Outcome::Unauthorized => "unauthorized",
            Outcome::UnsupportedMediaType => "unsupported_media_type",
            Outcome::PayloadTooLarge => "payload_too_large",
            Outcome::HeadersTooLarge => "headers_too_large",
            Outcome::MethodNotAllowed => "method_not_allowed",
            Outcome::NotFound => "not_found",
            Outcome::BadRequest => "bad_request",
            Outcome::BodyTimeout => "body_timeout",
            Outcome::Spooled => "spooled",
            Outcome::Refused => "refused",
            Outcome::BrokerUnavailable => "broker_unavailable",
            Outcome::SpoolFull => "spool_full",
            Outcome::Interrupted => "interrupted",
        }
    }
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// The buckets of a webhook's and a publish's time, in seconds. A confirmed
/// persistent publish takes a few milliseconds, so the steps are fine from
/// 1 to 50 ms (at most a quarter apart), for a p99 read within them that
/// means something; coarser on to 10 s, where only failures land.
const LATENCY_BUCKETS: [f64; 34] = [
    0.000_25, 0.000_5, 0.000_75, 0.001, 0.001_25, 0.001_5, 0.001_75, 0.002, 0.002_5, 0.003,
    0.003_5, 0.004, 0.005, 0.006, 0.007, 0.008, 0.01, 0.012_5, 0.015, 0.017_5, 0.02, 0.025, 0.03,
    0.035, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// A documented field an event went without, and how.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct WarningLabel {
    field: &'static str,
    problem: &'static str,
}

/// A routing key, from a fixed set (see [`routing_key_label`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RoutingKeyLabel {
    routing_key: &'static str,
}

/// The label of a message's routing key: `sync.account`, `sync.error.<code>`
/// for the codes the sender documents, `sync.error.other` for any other code
/// (the sender may add codes: the set must stay bounded), `quarantine` for a
/// body that is not an event.
pub(crate) fn routing_key_label(kind: &Kind) -> &'static str {
    let Kind::Event(key) = kind else {
        return "quarantine";
    };
    let key = key.as_str();
    if key == "sync.account" {
        return "sync.account";
    }
    ERROR_KEYS
        .into_iter()
        .find(|known| *known == key)
        .unwrap_or("sync.error.other")
}

/// The routing keys of the documented error codes, in [`KNOWN_ERROR_CODES`]' order.
const ERROR_KEYS: [&str; KNOWN_ERROR_CODES.len()] = [
    "sync.error.LoginFailedError",
    "sync.error.SecurityQuestionError",
    "sync.error.TemporaryFailureError",
    "sync.error.UnhandledConnectorError",
    "sync.error.UnknownConnectorError",
];

/// Every value of the label `routing_key`, quarantine aside.
const ROUTING_KEY_LABELS: [&str; ERROR_KEYS.len() + 2] = [
    "sync.account",
    ERROR_KEYS[0],
    ERROR_KEYS[1],
    ERROR_KEYS[2],
    ERROR_KEYS[3],
    ERROR_KEYS[4],
    "sync.error.other",
];

/// [`routing_key_label`] of an event, without building its routing key.
fn event_label(event: &Event) -> &'static str {
    match event.error_code() {
        None => "sync.account",
        Some(code) => KNOWN_ERROR_CODES
            .iter()
            .position(|known| *known == code.as_str())
            .map_or("sync.error.other", |at| ERROR_KEYS[at]),
    }
}

/// A consumer queue's name: from the configuration, never from a request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct QueueLabel {
    queue: String,
}

/// A cheap, cloneable handle on the process's metrics.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    requests: Family<OutcomeLabel, Counter>,
    webhook_seconds: Histogram,
    publish_seconds: Histogram,
    broker_connected: Gauge,
    broker_connects: Counter,
    broker_connect_failures: Counter,
    broker_state: Family<StateLabel, Gauge>,
    queue_conflict: Family<QueueLabel, Gauge>,
    topology_redeclared: Counter,
    channels_replaced: Counter,
    publish_refused: Family<RoutingKeyLabel, Counter>,
    schema_warnings: Family<WarningLabel, Counter>,
    spool_depth: Gauge,
    spool_refused: Gauge,
    spool_parked: Gauge,
    spool_bytes: Gauge,
    spool_oldest_age: Gauge<f64, std::sync::atomic::AtomicU64>,
    spool_drained: Counter,
    spool_write_seconds: Histogram,
    spool_commits: Counter,
    account_changes: Family<AccountStateLabel, Counter>,
    accounts_announcing: Gauge,
    account_changes_owed: Gauge,
    provider_incidents: Family<IncidentKindLabel, Counter>,
    provider_incidents_open: Gauge,
    audit_missing: Gauge,
    audit_gaps: Family<RelayLabel, Gauge>,
    console_unauthorized: Counter,
    console_throttled: Counter,
    console_actions: Family<ActionLabel, Counter>,
    events: Family<RoutingKeyLabel, Counter>,
    queue_messages: Family<QueueRoleLabel, Gauge>,
    trace_exports: Family<ResultLabel, Counter>,
}

/// How an attempt ended: `ok` or `failed`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// A queue the relay declares (its name from the configuration or its
/// exchange) and what it is for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct QueueRoleLabel {
    queue: String,
    role: &'static str,
}

/// A relay's id (`x-relay-id`): this relay's own, one series per process.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RelayLabel {
    relay: String,
}

/// The version running, for `hookrelay_build_info`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BuildLabel {
    version: &'static str,
}

/// An operator's action in the console, from a fixed set.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ActionLabel {
    action: &'static str,
}

/// A provider incident message's kind (`provider.<kind>`), from a fixed enum.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct IncidentKindLabel {
    kind: &'static str,
}

/// An account state's name (`account.<state>`), from a fixed enum.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct AccountStateLabel {
    state: &'static str,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("hookrelay");
        let requests = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "webhook_requests",
            "Webhook requests by outcome",
            requests.clone(),
        );
        let webhook_seconds = Histogram::new(LATENCY_BUCKETS.iter().copied());
        registry.register(
            "webhook_duration_seconds",
            "Time the relay spent on a webhook it accepted, from its handler's start (the \
             request head read) to the answer: the body, the checks and the confirmed publish or \
             spool write",
            webhook_seconds.clone(),
        );
        let publish_seconds = Histogram::new(LATENCY_BUCKETS.iter().copied());
        registry.register(
            "publish_duration_seconds",
            "Time from publish to RabbitMQ's confirm (or failure)",
            publish_seconds.clone(),
        );
        let broker_connected = Gauge::default();
        registry.register(
            "broker_connected",
            "1 while the RabbitMQ connection and topology are up",
            broker_connected.clone(),
        );
        let broker_connects = Counter::default();
        registry.register(
            "broker_connects",
            "Successful connections to RabbitMQ, the first one included",
            broker_connects.clone(),
        );
        let broker_connect_failures = Counter::default();
        registry.register(
            "broker_connect_failures",
            "Attempts to connect to RabbitMQ (and declare the topology) that failed; the relay \
             retries with backoff",
            broker_connect_failures.clone(),
        );
        let broker_state = Family::<StateLabel, Gauge>::default();
        registry.register(
            "broker_state",
            "1 for the broker state the relay is in: connected, blocked, misconfigured (RabbitMQ \
             refuses the relay's own topology) or disconnected",
            broker_state.clone(),
        );
        let queue_conflict = Family::<QueueLabel, Gauge>::default();
        registry.register(
            "queue_conflict",
            "1 while RabbitMQ refuses to declare or bind this configured consumer queue",
            queue_conflict.clone(),
        );
        let topology_redeclared = Counter::default();
        registry.register(
            "topology_redeclared",
            "Exchanges and queues of the relay found missing while it ran, and declared again",
            topology_redeclared.clone(),
        );
        let channels_replaced = Counter::default();
        registry.register(
            "channels_replaced",
            "Publishing channels replaced by new ones after RabbitMQ nacked a publish on them",
            channels_replaced.clone(),
        );
        let publish_refused = Family::<RoutingKeyLabel, Counter>::default();
        registry.register(
            "publish_refused",
            "Publishes RabbitMQ refused (a nack, a return), by routing key: each one has also \
             left a copy in the other queues bound to that key. The webhook is retried beside \
             the flow, at most spool.max_refusals times in all",
            publish_refused.clone(),
        );
        let schema_warnings = Family::<WarningLabel, Counter>::default();
        registry.register(
            "schema_warnings",
            "Events accepted without a documented field the relay does not need (user.loginName, \
             account.provider), or with another type, by field and problem",
            schema_warnings.clone(),
        );
        let spool_depth = Gauge::default();
        registry.register(
            "spool_depth",
            "Webhooks waiting in the local spool (the outage backlog and the refused ones)",
            spool_depth.clone(),
        );
        let spool_refused = Gauge::default();
        registry.register(
            "spool_refused",
            "Webhooks RabbitMQ refused (a queue bound to their routing key pushes back), waiting \
             in the spool for a retry beside the flow",
            spool_refused.clone(),
        );
        let spool_parked = Gauge::default();
        registry.register(
            "spool_parked",
            "Webhooks RabbitMQ refused spool.max_refusals times, set aside on disk \
             (hookrelay spool list)",
            spool_parked.clone(),
        );
        let spool_bytes = Gauge::default();
        registry.register(
            "spool_bytes",
            "Bytes held by the local spool",
            spool_bytes.clone(),
        );
        let spool_oldest_age = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "spool_oldest_age_seconds",
            "How long the oldest spooled webhook has waited (0 when empty)",
            spool_oldest_age.clone(),
        );
        let spool_drained = Counter::default();
        registry.register(
            "spool_drained",
            "Spooled webhooks published to RabbitMQ and removed from the spool",
            spool_drained.clone(),
        );
        // 0.1 ms to about 1.6 s: an fsync'd SQLite commit.
        let spool_write_seconds = Histogram::new(exponential_buckets(0.000_1, 2.0, 15));
        registry.register(
            "spool_write_duration_seconds",
            "Time to append one webhook to the spool, fsync included",
            spool_write_seconds.clone(),
        );
        let spool_commits = Counter::default();
        registry.register(
            "spool_commits",
            "Transactions that wrote appends to the spool, each one fsync; several appends waiting together share one",
            spool_commits.clone(),
        );
        let account_changes = Family::<AccountStateLabel, Counter>::default();
        registry.register(
            "account_changes_announced",
            "Changes of an account's state this relay announced (account.<state>), by new state",
            account_changes.clone(),
        );
        let accounts_announcing = Gauge::default();
        registry.register(
            "accounts_announcing",
            "1 while this relay is the one announcing account changes (it holds the lease \
             <exchange>.announcer, which RabbitMQ gives to one relay at a time); 0 while another \
             does, or while this one is catching up with the history",
            accounts_announcing.clone(),
        );
        let account_changes_owed = Gauge::default();
        registry.register(
            "account_changes_owed",
            "Changes of accounts' states this relay's store has read in the history and not yet \
             seen announced there: what the announcing relay still has to publish",
            account_changes_owed.clone(),
        );
        let provider_incidents = Family::<IncidentKindLabel, Counter>::default();
        registry.register(
            "provider_incidents_announced",
            "Provider incident messages this relay announced (provider.<kind>), by kind: \
             incident_opened, incident_resolved",
            provider_incidents.clone(),
        );
        let provider_incidents_open = Gauge::default();
        registry.register(
            "provider_incidents_open",
            "Provider incidents open in this relay's store: many accounts of one provider \
             failing at once (the sender's connector). The providers are on the console and in \
             `hookrelay accounts --incidents`, never in a label",
            provider_incidents_open.clone(),
        );
        let audit_missing = Gauge::default();
        registry.register(
            "audit_missing",
            "Numbers relays gave stored webhooks that this relay's follower has not found in the \
             history, nor explained by a note or its own spool, for longer than \
             audit.missing_after: a stored webhook may be lost (run `hookrelay audit`)",
            audit_missing.clone(),
        );
        let audit_gaps = Family::<RelayLabel, Gauge>::default();
        registry.register(
            "audit_gaps",
            "Runs of consecutive numbers this relay gave stored webhooks that its follower has \
             not found in the history, nor explained by a note or its spool, for longer than \
             audit.missing_after, by relay: each may be a lost webhook (run `hookrelay audit`)",
            audit_gaps.clone(),
        );
        let console_unauthorized = Counter::default();
        registry.register(
            "console_unauthorized",
            "Console requests (API or login) refused for a missing or wrong admin token or session",
            console_unauthorized.clone(),
        );
        let console_throttled = Counter::default();
        registry.register(
            "console_throttled",
            "Addresses braked (429 for a while) after too many wrong console tokens in a row",
            console_throttled.clone(),
        );
        let console_actions = Family::<ActionLabel, Counter>::default();
        registry.register(
            "console_actions",
            "Actions taken from the console (replays, re-drives, spool retries), dry runs included",
            console_actions.clone(),
        );
        let events = Family::<RoutingKeyLabel, Counter>::default();
        registry.register(
            "events",
            "Events made durable (published, or spooled), by routing key: sync.account, \
             sync.error.<code> for the documented codes, sync.error.other for any other",
            events.clone(),
        );
        let queue_messages = Family::<QueueRoleLabel, Gauge>::default();
        registry.register(
            "queue_messages",
            "Messages in each queue the relay declares (role: consumer, retry_tier, \
             dead_letters, quarantine, unrouted, accounts), as RabbitMQ answered the relay's \
             last topology check (every amqp.topology_check_secs while connected)",
            queue_messages.clone(),
        );
        let trace_exports = Family::<ResultLabel, Counter>::default();
        registry.register(
            "trace_exports",
            "Batches of spans sent to telemetry.otlp_endpoint, by result (ok, failed: the \
             batch is dropped)",
            trace_exports.clone(),
        );
        for result in ["ok", "failed"] {
            trace_exports
                .get_or_create(&ResultLabel { result })
                .inc_by(0);
        }
        let build_info = Family::<BuildLabel, Gauge>::default();
        registry.register(
            "build_info",
            "1, labelled with the version of hookrelay running",
            build_info.clone(),
        );
        build_info
            .get_or_create(&BuildLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        // Every label value of a fixed set is exposed at 0 from the start:
        // `increase()` cannot see a counter's first step when the series
        // appears at 1, and an alert on it would miss the first event.
        for outcome in <Outcome as strum::VariantArray>::VARIANTS {
            requests
                .get_or_create(&OutcomeLabel { outcome: *outcome })
                .inc_by(0);
        }
        for routing_key in ROUTING_KEY_LABELS {
            events
                .get_or_create(&RoutingKeyLabel { routing_key })
                .inc_by(0);
            publish_refused
                .get_or_create(&RoutingKeyLabel { routing_key })
                .inc_by(0);
        }
        Metrics {
            inner: Arc::new(Inner {
                registry,
                requests,
                webhook_seconds,
                publish_seconds,
                broker_connected,
                broker_connects,
                broker_connect_failures,
                broker_state,
                queue_conflict,
                topology_redeclared,
                channels_replaced,
                publish_refused,
                schema_warnings,
                spool_depth,
                spool_refused,
                spool_parked,
                spool_bytes,
                spool_oldest_age,
                spool_drained,
                spool_write_seconds,
                spool_commits,
                account_changes,
                accounts_announcing,
                account_changes_owed,
                provider_incidents,
                provider_incidents_open,
                audit_missing,
                audit_gaps,
                console_unauthorized,
                console_throttled,
                console_actions,
                events,
                queue_messages,
                trace_exports,
            }),
        }
    }

    pub fn request(&self, outcome: Outcome) {
        self.inner
            .requests
            .get_or_create(&OutcomeLabel { outcome })
            .inc();
    }

    /// Webhook requests that ended in `outcome` so far.
    pub fn requests(&self, outcome: Outcome) -> u64 {
        self.inner
            .requests
            .get(&OutcomeLabel { outcome })
            .map_or(0, |counter| counter.get())
    }

    /// Events made durable so far, by routing key label.
    pub fn events_by_key(&self) -> Vec<(&'static str, u64)> {
        ROUTING_KEY_LABELS
            .iter()
            .map(|&routing_key| {
                let count = self
                    .inner
                    .events
                    .get(&RoutingKeyLabel { routing_key })
                    .map_or(0, |counter| counter.get());
                (routing_key, count)
            })
            .collect()
    }

    /// The spool's depth, as last set.
    pub fn spool_depth(&self) -> u64 {
        u64::try_from(self.inner.spool_depth.get()).unwrap_or(0)
    }

    /// One event made durable.
    pub fn event(&self, event: &Event) {
        let label = RoutingKeyLabel {
            routing_key: event_label(event),
        };
        self.inner.events.get_or_create(&label).inc();
    }

    /// One batch of spans exported, or not.
    pub fn trace_export(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.inner
            .trace_exports
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// Messages in a queue the relay declares.
    pub fn queue_messages(&self, queue: &str, role: &'static str, messages: u32) {
        let label = QueueRoleLabel {
            queue: queue.to_owned(),
            role,
        };
        self.inner
            .queue_messages
            .get_or_create(&label)
            .set(i64::from(messages));
    }

    /// A console request without a valid token or session.
    pub fn console_unauthorized(&self) {
        self.inner.console_unauthorized.inc();
    }

    /// An address braked for guessing the console's token.
    pub fn console_throttled(&self) {
        self.inner.console_throttled.inc();
    }

    /// An action taken from the console.
    pub fn console_action(&self, action: &'static str) {
        let label = ActionLabel { action };
        self.inner.console_actions.get_or_create(&label).inc();
    }

    /// How long an accepted webhook took, handler start to answer.
    pub fn observe_webhook(&self, elapsed: Duration) {
        self.inner.webhook_seconds.observe(elapsed.as_secs_f64());
    }

    pub fn observe_publish(&self, elapsed: Duration) {
        self.inner.publish_seconds.observe(elapsed.as_secs_f64());
    }

    pub fn broker_connected(&self, connected: bool) {
        self.inner.broker_connected.set(i64::from(connected));
        if connected {
            self.inner.broker_connects.inc();
        }
    }

    /// One failed attempt to connect and declare.
    pub fn broker_connect_failed(&self) {
        self.inner.broker_connect_failures.inc();
    }

    /// Sets `hookrelay_broker_state`: 1 for `state`, 0 for every other
    /// variant (all of them, by construction: a state added to the enum is
    /// reported too).
    pub fn broker_state<S>(&self, state: S)
    where
        S: strum::VariantArray + Copy + PartialEq + Into<&'static str>,
    {
        for each in S::VARIANTS {
            self.inner
                .broker_state
                .get_or_create(&StateLabel {
                    state: (*each).into(),
                })
                .set(i64::from(*each == state));
        }
    }

    pub fn queue_conflict(&self, queue: &str, conflict: bool) {
        self.inner
            .queue_conflict
            .get_or_create(&QueueLabel {
                queue: queue.to_owned(),
            })
            .set(i64::from(conflict));
    }

    pub fn schema_warnings(&self, warnings: &[SchemaWarning]) {
        for warning in warnings {
            let label = WarningLabel {
                field: warning.field.as_str(),
                problem: warning.problem.as_str(),
            };
            self.inner.schema_warnings.get_or_create(&label).inc();
        }
    }

    pub fn topology_redeclared(&self, objects: u64) {
        self.inner.topology_redeclared.inc_by(objects);
    }

    pub fn channel_replaced(&self) {
        self.inner.channels_replaced.inc();
    }

    /// One refused publish of a message of this kind.
    pub fn publish_refused(&self, kind: &Kind) {
        let label = RoutingKeyLabel {
            routing_key: routing_key_label(kind),
        };
        self.inner.publish_refused.get_or_create(&label).inc();
    }

    /// One `account.<state>` announced.
    pub fn account_change_announced(&self, state: &'static str) {
        let label = AccountStateLabel { state };
        self.inner.account_changes.get_or_create(&label).inc();
    }

    /// One `provider.<kind>` announced.
    pub fn provider_incident_announced(&self, kind: &'static str) {
        let label = IncidentKindLabel { kind };
        self.inner.provider_incidents.get_or_create(&label).inc();
    }

    /// Provider incidents open, as the derived store counts them.
    pub fn provider_incidents_open(&self, open: u64) {
        self.inner
            .provider_incidents_open
            .set(i64::try_from(open).unwrap_or(i64::MAX));
    }

    pub fn accounts_announcing(&self, active: bool) {
        self.inner.accounts_announcing.set(i64::from(active));
    }

    /// Whether this relay announces account changes now.
    pub fn is_announcing(&self) -> bool {
        self.inner.accounts_announcing.get() == 1
    }

    /// Changes owed, as the derived store counts them.
    pub fn account_changes_owed(&self, owed: u64) {
        self.inner
            .account_changes_owed
            .set(i64::try_from(owed).unwrap_or(i64::MAX));
    }

    /// What the audit found missing of `relay`'s numbers: how many, in how
    /// many gaps.
    pub fn audit_missing(&self, relay: &str, numbers: u64, gaps: u64) {
        let gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        self.inner.audit_missing.set(gauge(numbers));
        self.inner
            .audit_gaps
            .get_or_create(&RelayLabel {
                relay: relay.to_owned(),
            })
            .set(gauge(gaps));
    }

    pub fn spool_state(&self, depth: u64, refused: u64, parked: u64, bytes: u64) {
        let gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        self.inner.spool_depth.set(gauge(depth));
        self.inner.spool_refused.set(gauge(refused));
        self.inner.spool_parked.set(gauge(parked));
        self.inner.spool_bytes.set(gauge(bytes));
    }

    pub fn spool_oldest_age(&self, age: Option<Duration>) {
        self.inner
            .spool_oldest_age
            .set(age.map_or(0.0, |a| a.as_secs_f64()));
    }

    pub fn spool_drained(&self, count: u64) {
        self.inner.spool_drained.inc_by(count);
    }

    /// One commit of spool appends (one fsync).
    pub fn spool_committed(&self) {
        self.inner.spool_commits.inc();
    }

    pub fn observe_spool_write(&self, elapsed: Duration) {
        self.inner
            .spool_write_seconds
            .observe(elapsed.as_secs_f64());
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::BrokerState;

    #[test]
    fn between_1_and_50_ms_latency_buckets_are_at_most_a_quarter_apart() {
        let fine: Vec<f64> = LATENCY_BUCKETS
            .iter()
            .copied()
            .filter(|&le| (0.001..=0.05).contains(&le))
            .collect();
        assert_eq!((fine[0], fine[fine.len() - 1]), (0.001, 0.05));
        for pair in fine.windows(2) {
            assert!(pair[1] / pair[0] <= 1.25 + 1e-9, "{pair:?}");
        }
        assert!(LATENCY_BUCKETS.is_sorted());
    }

    #[test]
    fn recorded_values_appear_in_the_exposition() {
        let metrics = Metrics::new();
        metrics.request(Outcome::Accepted);
        metrics.request(Outcome::Accepted);
        metrics.request(Outcome::Forbidden);
        metrics.observe_publish(Duration::from_millis(3));
        metrics.broker_connected(true);
        metrics.broker_state(BrokerState::Misconfigured);
        metrics.queue_conflict("reprompt", true);
        let text = metrics.encode();
        assert!(
            text.contains(r#"hookrelay_webhook_requests_total{outcome="accepted"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"hookrelay_webhook_requests_total{outcome="forbidden"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("hookrelay_publish_duration_seconds_count 1"),
            "{text}"
        );
        assert!(text.contains("hookrelay_broker_connected 1"), "{text}");
        assert!(text.contains("hookrelay_broker_connects_total 1"), "{text}");
        assert!(
            text.contains(r#"hookrelay_broker_state{state="misconfigured"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"hookrelay_broker_state{state="connected"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"hookrelay_queue_conflict{queue="reprompt"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn every_metric_the_alert_rules_and_the_dashboard_name_is_exposed() {
        // A renamed metric would leave an alert that never fires, silently.
        let metrics = Metrics::new();
        metrics.queue_messages("q", "consumer", 1);
        metrics.queue_conflict("q", false);
        metrics.broker_state(BrokerState::Connected);
        metrics.audit_missing("r", 0, 0);
        let text = metrics.encode();
        let families: std::collections::HashSet<&str> = text
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|line| line.split(' ').next())
            .collect();
        let name = regex::Regex::new(r"\bhookrelay_[a-z_]+\b").unwrap();
        let mut checked = 0;
        for file in [
            "deploy/prometheus/hookrelay.rules.yml",
            "deploy/grafana/hookrelay.json",
        ] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
            let named = std::fs::read_to_string(path).unwrap();
            for found in name.find_iter(&named) {
                let sample = found.as_str();
                let family = ["_total", "_bucket", "_count", "_sum"]
                    .into_iter()
                    .find_map(|suffix| sample.strip_suffix(suffix))
                    .unwrap_or(sample);
                assert!(
                    families.contains(sample) || families.contains(family),
                    "{file} names {sample}, which the relay does not expose"
                );
                checked += 1;
            }
        }
        assert!(checked > 20, "only {checked} names found");
    }

    #[test]
    fn counters_of_a_fixed_label_set_start_at_zero() {
        let text = Metrics::new().encode();
        for sample in [
            r#"hookrelay_webhook_requests_total{outcome="quarantined"} 0"#,
            r#"hookrelay_webhook_requests_total{outcome="superseded"} 0"#,
            r#"hookrelay_events_total{routing_key="sync.account"} 0"#,
            r#"hookrelay_events_total{routing_key="sync.error.other"} 0"#,
            r#"hookrelay_publish_refused_total{routing_key="sync.error.LoginFailedError"} 0"#,
            r#"hookrelay_build_info{version=""#,
        ] {
            assert!(text.contains(sample), "{sample} missing from\n{text}");
        }
    }

    #[test]
    fn routing_key_labels_are_a_fixed_set() {
        let label = |key: &str| routing_key_label(&Kind::Event(key.parse().unwrap()));

        assert_eq!(label("sync.account"), "sync.account");
        assert_eq!(
            label("sync.error.LoginFailedError"),
            "sync.error.LoginFailedError"
        );
        assert_eq!(label("sync.error.BrandNewError"), "sync.error.other");
        assert_eq!(routing_key_label(&Kind::Quarantine), "quarantine");
        for code in KNOWN_ERROR_CODES {
            assert_eq!(
                label(&format!("sync.error.{code}")),
                format!("sync.error.{code}")
            );
        }
    }
}
