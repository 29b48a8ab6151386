//! The event contract: what a consumer receives, body and headers, as Rust
//! types, from which the JSON Schemas of `docs/asyncapi.yaml` are generated
//! (`cargo run --example asyncapi > docs/asyncapi.yaml`; a test fails while
//! the committed document and these types disagree).
//!
//! The body is the sender's, byte for byte; these types say what the relay
//! guarantees about it, which is [`Event::parse`](crate::event::Event::parse)'s
//! rule: `hook`, `user.id`, `account.id` (and `error` for a `SyncError`) are
//! there; `user.loginName` and `account.provider` usually are, but nothing is
//! promised about them (see `x-schema-warnings`); other fields may appear.
//! Consumers in Rust can read a body into them ([`Payload`]).

use schemars::{JsonSchema, Schema, SchemaGenerator, generate::SchemaSettings, json_schema};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::account::{AccountChange, AccountHeaders, AccountProperties};
use super::client::{ClientHeaders, ClientProperties, ClientSilent};
use super::headers::{
    ACCOUNT_ID, CLIENT_ID, DEDUP_KEY, ERROR, ERROR_KNOWN, HOOK, RECEIVED_AT, SOURCE_IP,
    TRACEPARENT, USER_ID,
};
use super::provider::{ProviderHeaders, ProviderIncident, ProviderProperties};

/// The body of a `SyncAccount` webhook: an account synced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SyncAccount {
    pub hook: SyncAccountHook,
    pub user: User,
    pub account: Account,
}

/// The body of a `SyncError` webhook: an account failed to sync, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SyncError {
    pub hook: SyncErrorHook,
    pub user: User,
    pub account: Account,
    /// Why the sync failed: a documented code (`LoginFailedError`,
    /// `SecurityQuestionError`, `TemporaryFailureError`,
    /// `UnhandledConnectorError`, `UnknownConnectorError`) or another word
    /// the sender added (then the `x-error-known` header is false).
    #[schemars(regex(pattern = r"^[A-Za-z][A-Za-z0-9_]{0,63}$"))]
    pub error: String,
}

/// Either body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Payload {
    SyncError(SyncError),
    SyncAccount(SyncAccount),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SyncAccountHook {
    SyncAccount,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SyncErrorHook {
    SyncError,
}

/// The user whose account it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct User {
    #[schemars(length(min = 1))]
    pub id: String,
    /// The user's login: personal data, never in a header or a log line.
    /// Usually a string; the relay does not check it (an event without it
    /// carries `x-schema-warnings`).
    #[serde(rename = "loginName", default, skip_serializing_if = "Option::is_none")]
    pub login_name: Option<Value>,
}

/// The account that synced, or failed to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Account {
    #[schemars(length(min = 1))]
    pub id: String,
    /// The institution. Usually a string; the relay does not check it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<Value>,
}

/// The AMQP headers of an event: the relay's, on every event (the schemas
/// `SyncAccountHeaders` and `SyncErrorHeaders` say which each kind must
/// carry), those of a retry or a replay, and those RabbitMQ adds on the way.
/// Nothing else: a test compares real messages of every kind with this type,
/// both ways.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Headers {
    pub hook: Hook,
    /// `user.id`.
    #[serde(rename = "user-id")]
    pub user_id: String,
    /// `account.id`.
    #[serde(rename = "account-id")]
    pub account_id: String,
    /// A `SyncError`'s `error`: always there on a `SyncError`, never on a
    /// `SyncAccount`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String", regex(pattern = r"^[A-Za-z][A-Za-z0-9_]{0,63}$"))]
    pub error: Option<String>,
    /// Whether the sender documents that `error`: always there on a
    /// `SyncError`. False for a code the sender added since: the event is
    /// routed like any other (`sync.error.<code>`), and the relay announces
    /// the account as `account.unknown`. Not a failure of yours to retry:
    /// handle it as your app decides for codes it does not know yet.
    #[serde(
        rename = "x-error-known",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "bool")]
    pub error_known: Option<bool>,
    /// The sender's `x-client-id` the request carried.
    #[serde(rename = "x-client-id")]
    pub client_id: String,
    /// The address the webhook came from, IPv4 or IPv6.
    #[serde(rename = "x-source-ip")]
    pub source_ip: String,
    /// When the relay received it, RFC 3339 with milliseconds: finer than
    /// the `timestamp` property (whole seconds), for ordering an account's
    /// events.
    #[serde(rename = "x-received-at")]
    #[schemars(extend("format" = "date-time"))]
    pub received_at: String,
    /// What identifies the event, hashed: the same for every copy of one
    /// webhook the sender delivers. 64 lowercase hex digits, the SHA-256 of
    /// hook, `x-client-id`, user id, account id, provider and error code
    /// (absent ones, and a `provider` that is not a string, as empty), each
    /// written as its UTF-8 length in decimal, `:`, and its bytes. The relay
    /// publishes every copy (a repeat is an event: a `TemporaryFailureError`
    /// that keeps happening), each with its own `message_id` and this key; a
    /// consumer that wants to drop the sender's retries of one webhook
    /// compares keys. On every event this version publishes or replays (a
    /// replay adds it to an event an older relay accepted); only a message
    /// an older relay published, still waiting in a queue, lacks it.
    #[serde(
        rename = "x-dedup-key",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "String", regex(pattern = r"^[0-9a-f]{64}$"))]
    pub dedup_key: Option<String>,
    /// W3C trace context of the relay's publish, `00-<trace id>-<span id>-<flags>`:
    /// continue the trace from it (a consumer span whose parent it is). A new
    /// trace per webhook, or the one a proxy the relay trusts
    /// (`ingress.trusted_proxies`) started, with its flags; a new trace is
    /// flagged sampled (`01`), so that your consumer records its side, also
    /// when the relay exports no spans of its own (`telemetry.otlp_endpoint`
    /// unset: the parent span is then absent from your backend). On every
    /// event this version publishes or replays (a replay starts a new trace
    /// for an event an older relay accepted without one); only a message an
    /// older relay published, still waiting in a queue, lacks it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        with = "String",
        regex(pattern = r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
    )]
    pub traceparent: Option<String>,
    /// W3C trace state, passed on from a trusted proxy's trace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String")]
    pub tracestate: Option<String>,
    /// The relay that stored the webhook: an identity it keeps across
    /// restarts (beside its spool, or `audit.relay_id`). With
    /// `x-relay-seq`. On every event this version stores; only a message an
    /// older relay published lacks them.
    #[serde(
        rename = "x-relay-id",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "String", length(min = 1))]
    pub relay_id: Option<String>,
    /// The webhook's number among those that relay stored (published or
    /// spooled, quarantined bodies included), from 1, one higher each time
    /// and never given twice: a 64-bit integer. `hookrelay audit` reads the
    /// history and accounts for every number. A consumer that reads a whole
    /// stream may use it to notice a gap; in a queue, numbers of one relay
    /// arrive out of order (webhooks in flight together, retries, replays)
    /// and interleave with other relays'. A replay keeps it.
    #[serde(
        rename = "x-relay-seq",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "u64", range(min = 1))]
    pub relay_seq: Option<u64>,
    /// The documented fields the body goes without, e.g.
    /// `user.loginName missing; account.provider not a string`.
    #[serde(
        rename = "x-schema-warnings",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "String")]
    pub schema_warnings: Option<String>,
    /// What a retry, a replay or RabbitMQ added on the way.
    #[serde(flatten)]
    pub travel: Travel,
}

/// The headers a message gains on its way, whatever its kind (an event or an
/// account change): from a consumer that sent it to a retry tier, from an
/// operator's replay, and RabbitMQ's when it died.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Travel {
    /// Which retry this copy is, from 1: set by the consumer that sent it to
    /// a retry tier (`<queue>.retry.<n>`, see the retry tier channel). An AMQP
    /// integer whose width is the writer's (hookrelay's consumer library
    /// writes 64 bits, pika 32): read any width. A replay removes it: a
    /// replayed message starts its retries again at 1.
    #[serde(
        rename = "x-retry-attempt",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(schema_with = "count")]
    pub retry_attempt: Option<u32>,
    /// How many times an operator replayed it (a 64-bit integer).
    #[serde(
        rename = "x-replay-count",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(schema_with = "count")]
    pub replay_count: Option<u32>,
    /// Where a replay took it from: the history stream or the quarantine
    /// (absent for a replayed dead letter, which has `x-death`).
    #[serde(
        rename = "x-replayed-from",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "ReplayedFrom")]
    pub replayed_from: Option<ReplayedFrom>,
    /// The exchange it was first published to (an event's entry fanout
    /// `<exchange>.in`, an account change's `<exchange>.changes`), on every
    /// message that travelled another way: back
    /// from a retry tier, or replayed (from the dead letters, the history or
    /// the quarantine). With `x-original-routing-key`.
    #[serde(
        rename = "x-original-exchange",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "String")]
    pub original_exchange: Option<String>,
    /// Its routing key as the relay published it. A message sent to one
    /// queue (a retry, `replay --to-queue`) arrives with that queue's name
    /// as its routing key: dispatch on this header when it is there, else on
    /// the routing key.
    #[serde(
        rename = "x-original-routing-key",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "String")]
    pub original_routing_key: Option<String>,
    /// RabbitMQ's: every time the message died (rejected, expired in a retry
    /// tier, `maxlen`, `delivery_limit`), newest first. On dead letters, and
    /// on copies back from a retry tier (they expired there).
    #[serde(rename = "x-death", default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Vec<Value>")]
    pub death: Option<Vec<Value>>,
    /// RabbitMQ's, with `x-death`: where and why it first died.
    #[serde(
        rename = "x-first-death-exchange",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "String")]
    pub first_death_exchange: Option<String>,
    #[serde(
        rename = "x-first-death-queue",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "String")]
    pub first_death_queue: Option<String>,
    #[serde(
        rename = "x-first-death-reason",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "String")]
    pub first_death_reason: Option<String>,
    /// RabbitMQ's, with `x-death` (3.10 writes them from the second death).
    #[serde(
        rename = "x-last-death-exchange",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "String")]
    pub last_death_exchange: Option<String>,
    #[serde(
        rename = "x-last-death-queue",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "String")]
    pub last_death_queue: Option<String>,
    #[serde(
        rename = "x-last-death-reason",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "String")]
    pub last_death_reason: Option<String>,
    /// RabbitMQ's, on a quorum queue: deliveries before this one (a classic
    /// queue does not write it; nor, on some versions, a first delivery).
    #[serde(
        rename = "x-delivery-count",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "u32")]
    pub delivery_count: Option<u64>,
}

/// The headers every event carries, and those only a `SyncError` carries.
pub fn required_headers(hook: Hook) -> &'static [&'static str] {
    match hook {
        Hook::SyncAccount => EVERY_EVENT,
        Hook::SyncError => &SYNC_ERROR,
    }
}

/// The headers a `SyncError` carries: every event's (the first eight), then
/// its code's two. `x-dedup-key` and `traceparent` are on every event this
/// version publishes or replays.
const SYNC_ERROR: [&str; 10] = [
    HOOK,
    USER_ID,
    ACCOUNT_ID,
    CLIENT_ID,
    SOURCE_IP,
    RECEIVED_AT,
    DEDUP_KEY,
    TRACEPARENT,
    ERROR,
    ERROR_KNOWN,
];
/// The headers every event carries.
const EVERY_EVENT: &[&str] = SYNC_ERROR.split_at(8).0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Hook {
    SyncAccount,
    SyncError,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReplayedFrom {
    History,
    Quarantine,
}

/// The AMQP basic properties of every event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Properties {
    /// A UUIDv7, unique per webhook, the `id` the sender was answered with;
    /// its first 48 bits are the receipt time in milliseconds. Delivery is
    /// at-least-once: de-duplicate on it (see the document's description for
    /// how long, and when to record it).
    #[schemars(
        extend("format" = "uuid"),
        regex(pattern = r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
    )]
    pub message_id: String,
    #[serde(flatten)]
    pub persistent: Persistent,
}

/// The AMQP basic properties every message of the relay's carries beside
/// its `message_id`: an event's and an account change's alike.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Persistent {
    /// When the relay received the webhook (for an account change: when it
    /// announced it), in seconds since the epoch.
    #[schemars(with = "i64", range(min = 0))]
    pub timestamp: u64,
    pub content_type: ContentType,
    pub app_id: AppId,
    /// Persistent.
    #[schemars(with = "i64", range(min = 2, max = 2))]
    pub delivery_mode: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ContentType {
    #[serde(rename = "application/json")]
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AppId {
    #[serde(rename = "hookrelay")]
    Hookrelay,
}

/// The schema of a count from 1, an AMQP integer header.
fn count(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "integer", "minimum": 1})
}

/// What a consumer must know and AsyncAPI has no field for: the document's
/// description.
const GUIDE: &str = "The sync webhooks hookrelay publishes to RabbitMQ, one message per webhook: the body exactly as the sender sent it, persistent, with the headers and properties below. The names use the default `amqp.exchange`, `webhooks`: with another, replace it everywhere.\n\n**Where events are.** The relay publishes every event to the fanout exchange `webhooks.in` (the `entry` channel), which feeds the topic exchange `webhooks` (and the history stream `webhooks.history`). Bind your queue to `webhooks` with the routing keys you want: `sync.account`, `sync.error.<code>` (`sync.error.*`, `sync.#`).\n\n**Which routing key.** A message sent to one queue (back from a retry tier, or by `hookrelay replay`) arrives with that queue's name as its routing key; it then carries `x-original-routing-key` (and `x-original-exchange`, the entry exchange). Dispatch on `x-original-routing-key` when it is there, else on the routing key.\n\n**At least once: de-duplicate on `message_id`.** Record an id once you have *handled* the event, not when you receive it: a replayed dead letter keeps its id, and recording on receipt would throw the replay away. Keep ids at least as long as the relay's history (`history.max_age`, 7 days by default): `hookrelay replay --from-history` can bring back ids that old.\n\n**Repeats and retries: `x-dedup-key`.** Every webhook the sender delivers is published, each with its own `message_id`: a repeat is an event (a `TemporaryFailureError` that keeps happening, an on-demand sync). The one exception: a byte-identical copy that reaches a relay while the first is still being stored there is stored once. So a consumer gets one message for every 2xx the sender heard; a retry after an answer lost in the network arrives twice (at least once), with the same `x-dedup-key`. To drop such retries, remember the keys of handled events for as long as you care; count every message when repeats matter to you (the relay's own account states do).\n\n**Order.** Events reach a queue in the order the relay accepted them (webhooks in flight at the same moment have no order between them), except that a message that travelled again (from a retry tier, a replay, or a retry by the relay after RabbitMQ refused it) arrives after later ones. There is no sequence number per account: to order one account's events compare `x-received-at` (milliseconds) or `message_id` (a UUIDv7, time-ordered to the millisecond); `timestamp` has whole seconds only.\n\n**Acknowledge, retry, dead-letter.** Handled: ack. Failed for now (a dependency down): publish a copy (same body and properties, persistent) to the default exchange with routing key `<queue>.retry.<n>`, header `x-retry-attempt` = n (one more than the message's own, from 1) and `x-original-exchange`/`x-original-routing-key` kept or set, wait for the publisher confirm, then ack the original; after the tier's delay RabbitMQ puts the copy back into `<queue>` (with `x-death`). Learn how many tiers your queue has by declaring `<queue>.retry.1`, `.2`, … passively until one does not exist. Past the last tier, or for what you cannot handle: reject without requeue, and RabbitMQ dead-letters it into `webhooks.dead-letter`, where an operator replays it to your queue once fixed.\n\n**What it means for the account: `account.<state>`.** Besides one `sync.*` message per webhook (what the sender said), the relay publishes one `account.<state>` message per change of an account's state (what it means: `ok`, `needs_reconnect`, `retrying`, `contact_provider`, `unknown`, `silent`), through its own topic exchange `webhooks.changes`, never through `webhooks`: a queue bound to `webhooks` with `#` gets webhooks only. Bind your queue to `webhooks.changes` (`account.needs_reconnect` to ask a user once, not daily; `account.#` for all; a `[[queues]]` entry's `changes`). Its body is JSON the relay writes (never `loginName`); `caused_by` (and the header `x-caused-by`) is the causing event's `message_id`; its own `message_id` is a UUIDv5, the same whichever relay announces it. It carries `x-client-id`, `account-id`, `user-id`, `x-received-at` (the causing event's: the change's time) and the causing event's `traceparent` (and `tracestate`), and none of an event's other headers. States follow event time (`x-received-at`): an event that reaches the history after a newer one of its account (spooled while RabbitMQ was away, re-driven from the quarantine) changes nothing and is not announced. Each change is announced once, in the order of the events that caused them, across relays and restarts. A change no queue binds is kept in the history only (`webhooks.changes` has no alternate exchange).\n\n**Silent accounts: `account.silent`.** The one change no event causes: an account that needs nobody (`ok`, `retrying`) and has had no event for `accounts.silent_after` (26 h; the sender syncs every account daily) is announced `silent` once (an account that needs its user or the sender's support stays in that state), by the relay's clock; its `caused_by` is the account's latest event (so the id is the same whichever relay announces it), `since` and `x-received-at` that event's time, and its `traceparent` starts a trace of its own. Its next event moves it back (a change like any, `previous_state: silent`). If an event crossed the announcement, the relay announces the account's state again at once, `caused_by` naming the `account.silent` message.\n\n**A client gone quiet: `client.silent`.** When most of one client's accounts that need nobody (at least 10, more than half of them) have had no event for `accounts.silent_after`, the relay announces one `client.silent` instead of as many `account.silent`s: the sender stopped sending to us (a lapsed plan, changed sender addresses, a proxy). Each of those accounts is `silent` from then on (their latest event is older than `before`), and comes back with its next event (a change like any). Its `message_id` is a UUIDv5 of the client and `before`; it carries `x-client-id`, `x-received-at` (`before`) and a `traceparent` of its own.\n\n**When it is the bank's connector, not the user: `provider.<kind>`.** When at least `providers.incident_accounts` (5) distinct accounts of one `account.provider` are put in `contact_provider` (a connector error, or temporary failures that kept happening) within `providers.incident_window` (15 min, in event time), the relay announces one `provider.incident_opened` through `webhooks.changes`, and one `provider.incident_resolved` when as many of its accounts synced again, or when an event of the provider comes a whole window after its last failure. While it is open, the `account.*` changes of its accounts carry its id in `incident` (the accounts that failed before it opened were announced without it: `opened_with` lists them): hold per-user messages for those, since the user can do nothing. Same rules as account changes: UUIDv5 `message_id` per incident and kind, `x-caused-by`, the causing event's `x-received-at` and `traceparent`, and a `provider` header; each announced once across relays and restarts. Bind `provider.#` on `webhooks.changes`.\n\n**Unknown error codes.** The sender adds codes over time; an unknown one is routed like any (`sync.error.<code>`) with `x-error-known: false`, and the relay announces the account as `account.unknown` (with the `code`): a new code may be one the user can act on, or one for the sender's support, and until someone reads what it means nobody can say which. Handle it as your app decides for unknown codes (show it to your support, for example), and ack it: do not retry it.\n\nGenerated from hookrelay's Rust types (crates/wire/src/contract.rs): do not edit by hand.";

/// The AsyncAPI 3.0 document of the events published through `exchange`
/// (its entry fanout `<exchange>.in` and the topic exchange itself), with
/// the AMQP 0-9-1 bindings 0.3.0.
///
/// ```
/// let document = hookrelay_wire::contract::asyncapi("webhooks");
/// assert_eq!(document["asyncapi"], "3.0.0");
/// assert!(document["channels"]["syncError"].is_object());
/// ```
pub fn asyncapi(exchange: &str) -> Value {
    let mut schemas = Map::new();
    let mut generator = SchemaGenerator::new(
        SchemaSettings::draft07().with(|s| s.definitions_path = "/components/schemas".into()),
    );
    for (name, schema) in [
        ("SyncAccount", generator.subschema_for::<SyncAccount>()),
        ("SyncError", generator.subschema_for::<SyncError>()),
        ("Headers", generator.subschema_for::<Headers>()),
        ("Properties", generator.subschema_for::<Properties>()),
        ("AccountChange", generator.subschema_for::<AccountChange>()),
        (
            "AccountHeaders",
            generator.subschema_for::<AccountHeaders>(),
        ),
        (
            "AccountProperties",
            generator.subschema_for::<AccountProperties>(),
        ),
        (
            "ProviderIncident",
            generator.subschema_for::<ProviderIncident>(),
        ),
        (
            "ProviderHeaders",
            generator.subschema_for::<ProviderHeaders>(),
        ),
        (
            "ProviderProperties",
            generator.subschema_for::<ProviderProperties>(),
        ),
        ("ClientSilent", generator.subschema_for::<ClientSilent>()),
        ("ClientHeaders", generator.subschema_for::<ClientHeaders>()),
        (
            "ClientProperties",
            generator.subschema_for::<ClientProperties>(),
        ),
    ] {
        // Named types come back as references to their definitions.
        if schema.get("$ref").is_none() {
            schemas.insert(name.to_owned(), schema.to_value());
        }
    }
    schemas.extend(generator.take_definitions(true));
    // Which headers each kind of event carries: `Headers` says what each
    // means, these what each kind must have.
    for (hook, name) in [
        (Hook::SyncAccount, "SyncAccount"),
        (Hook::SyncError, "SyncError"),
    ] {
        let mut kind = json!({
            "allOf": [{"$ref": "#/components/schemas/Headers"}],
            "properties": {"hook": {"const": name}},
            "required": required_headers(hook),
        });
        if hook == Hook::SyncAccount {
            kind["not"] =
                json!({"anyOf": [{"required": ["error"]}, {"required": ["x-error-known"]}]});
        }
        schemas.insert(format!("{name}Headers"), kind);
    }

    let topic = json!({
        "amqp": {
            "is": "routingKey",
            "exchange": {"name": exchange, "type": "topic", "durable": true, "autoDelete": false, "vhost": "/"},
            "bindingVersion": "0.3.0",
        }
    });
    let queue = |name: String| {
        json!({
            "amqp": {
                "is": "queue",
                "queue": {"name": name, "durable": true, "exclusive": false, "autoDelete": false, "vhost": "/"},
                "bindingVersion": "0.3.0",
            }
        })
    };
    let receive_binding = json!({
        "amqp": {"deliveryMode": 2, "mandatory": true, "timestamp": true, "ack": true, "bindingVersion": "0.3.0"}
    });
    let message = |name: &str, summary: &str| {
        json!({
            "name": name,
            "title": name,
            "summary": summary,
            "contentType": "application/json",
            "headers": {"$ref": format!("#/components/schemas/{name}Headers")},
            "payload": {"$ref": format!("#/components/schemas/{name}")},
            "x-amqp-properties": {"$ref": "#/components/schemas/Properties"},
            "bindings": {"amqp": {"messageType": name, "bindingVersion": "0.3.0"}},
        })
    };
    // A channel that carries both kinds of event.
    let both = || {
        json!({
            "syncAccount": {"$ref": "#/components/messages/SyncAccount"},
            "syncError": {"$ref": "#/components/messages/SyncError"},
        })
    };
    // A channel of a consumer's: whatever its queue binds, announcements too.
    let every_kind = || {
        let mut messages = both();
        messages["accountChange"] = json!({"$ref": "#/components/messages/AccountChange"});
        messages["providerIncident"] = json!({"$ref": "#/components/messages/ProviderIncident"});
        messages["clientSilent"] = json!({"$ref": "#/components/messages/ClientSilent"});
        messages
    };
    let changes = json!({"amqp": {
        "is": "routingKey",
        "exchange": {"name": format!("{exchange}.changes"), "type": "topic", "durable": true, "autoDelete": false, "vhost": "/"},
        "bindingVersion": "0.3.0",
    }});
    // An announcement `name`, whose headers and properties are `<kind>Headers`
    // and `<kind>Properties`.
    let announced = |name: &str, kind: &str, summary: &str| {
        json!({
            "name": name,
            "title": name,
            "summary": summary,
            "contentType": "application/json",
            "headers": {"$ref": format!("#/components/schemas/{kind}Headers")},
            "payload": {"$ref": format!("#/components/schemas/{name}")},
            "x-amqp-properties": {"$ref": format!("#/components/schemas/{kind}Properties")},
            "bindings": {"amqp": {"messageType": name, "bindingVersion": "0.3.0"}},
        })
    };
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "hookrelay events",
            "version": env!("CARGO_PKG_VERSION"),
            "description": GUIDE,
        },
        "defaultContentType": "application/json",
        "servers": {
            "rabbitmq": {
                "host": "localhost:5672",
                "protocol": "amqp",
                "protocolVersion": "0.9.1",
                "description": "The RabbitMQ the relay publishes to.",
            }
        },
        "channels": {
            "entry": {
                "address": null,
                "title": "Where the relay publishes every event",
                "description": format!("The fanout exchange `{exchange}.in`: bound to the topic exchange `{exchange}` (and to the history stream `{exchange}.history`). `x-original-exchange` names it. Consumers bind to the topic exchange, not here."),
                "messages": both(),
                "bindings": {"amqp": {
                    "is": "routingKey",
                    "exchange": {"name": format!("{exchange}.in"), "type": "fanout", "durable": true, "autoDelete": false, "vhost": "/"},
                    "bindingVersion": "0.3.0",
                }},
            },
            "syncAccount": {
                "address": "sync.account",
                "title": "An account synced",
                "messages": {"syncAccount": {"$ref": "#/components/messages/SyncAccount"}},
                "bindings": topic,
            },
            "syncError": {
                "address": "sync.error.{code}",
                "title": "An account failed to sync",
                "parameters": {"code": {"description": "The SyncError's `error`: one word, `^[A-Za-z][A-Za-z0-9_]{0,63}$`, so it cannot add `.`, `*` or `#` to the routing key. The sender documents LoginFailedError, SecurityQuestionError, TemporaryFailureError, UnhandledConnectorError and UnknownConnectorError; another word is routed the same way, with `x-error-known: false`."}},
                "messages": {"syncError": {"$ref": "#/components/messages/SyncError"}},
                "bindings": topic,
            },
            "accountChange": {
                "address": "account.{state}",
                "title": "An account's state changed",
                "description": format!("What the sender's outcomes mean for one account, published by the relay once per change (with `[accounts]` and `[history]` on, the default) through its own topic exchange `{exchange}.changes`: five daily `LoginFailedError`s of an account are one `account.needs_reconnect`. Bind `account.needs_reconnect` on `{exchange}.changes` to ask users to reconnect, `account.contact_provider` to open a ticket with the sender's support (with the account id), `account.#` for all."),
                "parameters": {"state": {"description": "The new state: `ok`, `needs_reconnect` (the user must reconnect: `reason` credentials or verification), `retrying` (temporary failures, which the sender retries by itself), `contact_provider` (the sender's support must look at it: `reason` repeated_temporary_failures or connector_error), `unknown` (an error code the sender does not document yet: `code`), `silent` (no event for `accounts.silent_after`: the sender stopped syncing it)."}},
                "messages": {"accountChange": {"$ref": "#/components/messages/AccountChange"}},
                "bindings": changes.clone(),
            },
            "providerIncident": {
                "address": "provider.{kind}",
                "title": "A provider incident opened or resolved",
                "description": format!("Many accounts of one provider failing at once: the sender's connector for that bank, not its users. Published by the relay (with `[accounts]` and `[history]` on, the default) through `{exchange}.changes`, once when it opens and once when it is resolved. Bind `provider.#` on `{exchange}.changes`."),
                "parameters": {"kind": {"description": "`incident_opened` or `incident_resolved`."}},
                "messages": {"providerIncident": {"$ref": "#/components/messages/ProviderIncident"}},
                "bindings": changes.clone(),
            },
            "clientSilent": {
                "address": "client.silent",
                "title": "Most of a client's accounts went silent together",
                "description": format!("The sender stopped sending to us: one message instead of an `account.silent` per account. Published by the relay (with `[accounts]` and `[history]` on, the default) through `{exchange}.changes`. Bind `client.silent` on `{exchange}.changes`."),
                "messages": {"clientSilent": {"$ref": "#/components/messages/ClientSilent"}},
                "bindings": changes,
            },
            "retryTier": {
                "address": "{queue}.retry.{n}",
                "title": "A retry tier of a consumer queue",
                "description": "Declared by the relay for a `[[queues]]` entry with `retry` delays: a queue whose messages wait that tier's delay, then are dead-lettered back into `{queue}` through the default exchange. A consumer publishes a copy here (default exchange, routing key = the tier's name) to retry it later: an event or, for a queue that binds `changes`, an account change, with its own headers kept. Find a queue's tiers by declaring `{queue}.retry.1`, `.2`, … passively until one does not exist.",
                "parameters": {
                    "queue": {"description": "The consumer queue's name."},
                    "n": {"description": "The tier, from 1; `x-retry-attempt` of the copy."},
                },
                "messages": every_kind(),
                "bindings": queue("{queue}.retry.{n}".to_owned()),
            },
            "deadLetters": {
                "address": format!("{exchange}.dead-letter"),
                "title": "What consumers rejected, or what expired or overflowed",
                "description": format!("Bound to the dead-letter exchange `{exchange}.dlx` with `#`: every consumer queue the relay declares dead-letters there. Events and account changes alike, each with its own headers and `x-death` (which queue, why: rejected, expired, maxlen, delivery_limit). `hookrelay replay` sends them back to the queue they died in."),
                "messages": every_kind(),
                "bindings": queue(format!("{exchange}.dead-letter")),
            },
        },
        "operations": {
            "receiveSyncAccount": {
                "action": "receive",
                "channel": {"$ref": "#/channels/syncAccount"},
                "messages": [{"$ref": "#/channels/syncAccount/messages/syncAccount"}],
                "bindings": receive_binding,
            },
            "receiveSyncError": {
                "action": "receive",
                "channel": {"$ref": "#/channels/syncError"},
                "messages": [{"$ref": "#/channels/syncError/messages/syncError"}],
                "bindings": receive_binding,
            },
            "receiveAccountChange": {
                "action": "receive",
                "channel": {"$ref": "#/channels/accountChange"},
                "messages": [{"$ref": "#/channels/accountChange/messages/accountChange"}],
                "bindings": receive_binding,
            },
            "receiveProviderIncident": {
                "action": "receive",
                "channel": {"$ref": "#/channels/providerIncident"},
                "messages": [{"$ref": "#/channels/providerIncident/messages/providerIncident"}],
                "bindings": receive_binding,
            },
            "receiveClientSilent": {
                "action": "receive",
                "channel": {"$ref": "#/channels/clientSilent"},
                "messages": [{"$ref": "#/channels/clientSilent/messages/clientSilent"}],
                "bindings": receive_binding,
            },
            "sendToRetryTier": {
                "action": "send",
                "title": "Retry a message later",
                "channel": {"$ref": "#/channels/retryTier"},
                "messages": [
                    {"$ref": "#/channels/retryTier/messages/syncAccount"},
                    {"$ref": "#/channels/retryTier/messages/syncError"},
                    {"$ref": "#/channels/retryTier/messages/accountChange"},
                    {"$ref": "#/channels/retryTier/messages/providerIncident"},
                    {"$ref": "#/channels/retryTier/messages/clientSilent"},
                ],
                "bindings": {"amqp": {"deliveryMode": 2, "mandatory": true, "ack": true, "bindingVersion": "0.3.0"}},
            },
        },
        "components": {
            "messages": {
                "SyncAccount": message("SyncAccount", "An account synced successfully."),
                "SyncError": message("SyncError", "An account failed to sync; `error` says why."),
                "AccountChange": announced("AccountChange", "Account", "An account's state changed; the body says from what, to what, and which event caused it."),
                "ClientSilent": announced("ClientSilent", "Client", "Most of a client's accounts went silent together: the sender stopped sending to us."),
                "ProviderIncident": announced("ProviderIncident", "Provider", "A provider incident opened or was resolved: many accounts of one provider failing at once, the sender's connector."),
            },
            "schemas": schemas,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Event;

    const ACCOUNT: &str = r#"{"hook":"SyncAccount","user":{"id":"u1","loginName":"jane"},"account":{"id":"a1","provider":"Bank"}}"#;
    const ERROR: &str = r#"{"hook":"SyncError","user":{"id":"u1","loginName":"jane"},"account":{"id":"a1","provider":"Bank"},"error":"LoginFailedError"}"#;

    fn schemas() -> Value {
        asyncapi("webhooks")["components"]["schemas"].clone()
    }

    /// The body without the field at `path` (`user.loginName`).
    fn without(body: &str, path: &str) -> String {
        let mut value: Value = serde_json::from_str(body).unwrap();
        let (parent, key) = path
            .rsplit_once('.')
            .map_or((None, path), |(p, k)| (Some(p), k));
        let object = match parent {
            Some(parent) => value[parent].as_object_mut().unwrap(),
            None => value.as_object_mut().unwrap(),
        };
        object.remove(key);
        value.to_string()
    }

    #[test]
    fn the_contract_names_exactly_the_headers_of_the_wire_protocol() {
        let schema = serde_json::to_value(schemars::schema_for!(Headers)).unwrap();
        let named: std::collections::BTreeSet<&str> = schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let written: std::collections::BTreeSet<&str> = crate::headers::RELAYS
            .into_iter()
            .chain(crate::headers::RABBITMQS)
            .collect();
        assert_eq!(named, written);
    }

    #[test]
    fn the_schemas_require_exactly_what_the_parser_requires() {
        let schemas = schemas();
        for (name, body) in [("SyncAccount", ACCOUNT), ("SyncError", ERROR)] {
            let schema = &schemas[name];
            let mut paths = Vec::new();
            for (field, field_schema) in schema["properties"].as_object().unwrap() {
                paths.push((
                    field.clone(),
                    schema["required"]
                        .as_array()
                        .unwrap()
                        .contains(&json!(field)),
                ));
                let nested = field_schema
                    .get("$ref")
                    .and_then(Value::as_str)
                    .map(|r| schemas[r.rsplit('/').next().unwrap()].clone());
                if let Some(nested) = nested.filter(|n| n["properties"].is_object()) {
                    for (inner, _) in nested["properties"].as_object().unwrap() {
                        let required = nested["required"]
                            .as_array()
                            .unwrap()
                            .contains(&json!(inner));
                        paths.push((format!("{field}.{inner}"), required));
                    }
                }
            }
            assert!(paths.len() >= 6, "{name}: {paths:?}");
            for (path, required) in paths {
                let parsed = Event::parse(without(body, &path).as_bytes());
                assert_eq!(
                    parsed.is_err(),
                    required,
                    "{name} without {path}: the schema says required={required}, the parser {parsed:?}"
                );
            }
        }
    }

    #[test]
    fn bodies_read_into_the_contract_types() {
        let account: Payload = serde_json::from_str(ACCOUNT).unwrap();
        assert!(matches!(account, Payload::SyncAccount(_)));
        let Payload::SyncError(error) = serde_json::from_str(ERROR).unwrap() else {
            panic!("a SyncError");
        };
        assert_eq!(error.error, "LoginFailedError");
        assert_eq!(error.user.login_name, Some(json!("jane")));
        let bare: Payload = serde_json::from_str(
            r#"{"hook":"SyncAccount","user":{"id":"u1"},"account":{"id":"a1"},"extra":1}"#,
        )
        .unwrap();
        assert!(matches!(bare, Payload::SyncAccount(a) if a.user.login_name.is_none()));
    }

    #[test]
    fn descriptions_are_written_for_readers_of_the_document_not_of_rustdoc() {
        fn descriptions<'a>(value: &'a Value, found: &mut Vec<&'a str>) {
            match value {
                Value::Object(map) => {
                    for (key, inner) in map {
                        match (key.as_str(), inner) {
                            ("description", Value::String(text)) => found.push(text),
                            _ => descriptions(inner, found),
                        }
                    }
                }
                Value::Array(items) => items.iter().for_each(|i| descriptions(i, found)),
                _ => {}
            }
        }
        let document = asyncapi("webhooks");
        let mut found = Vec::new();
        descriptions(&document, &mut found);
        assert!(found.len() > 20, "{}", found.len());
        let linked: Vec<&&str> = found
            .iter()
            .filter(|d| d.contains("[`") || d.contains("](") || d.contains("crate::"))
            .collect();
        assert!(
            linked.is_empty(),
            "rustdoc links in descriptions: {linked:#?}"
        );
    }

    #[test]
    fn account_changes_travel_the_retry_and_dead_letter_channels_like_events() {
        let document = asyncapi("webhooks");
        for channel in ["retryTier", "deadLetters"] {
            let messages = document["channels"][channel]["messages"]
                .as_object()
                .unwrap();
            assert!(
                ["syncAccount", "syncError", "accountChange"]
                    .iter()
                    .all(|m| messages.contains_key(*m)),
                "{channel}: {messages:?}"
            );
        }
        let closed = &document["components"]["schemas"]["AccountHeaders"];
        assert_eq!(closed["additionalProperties"], json!(false), "{closed}");
        assert!(closed["properties"]["x-death"].is_object(), "{closed}");
    }

    #[test]
    fn the_committed_document_is_the_one_the_types_give() {
        let committed = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/asyncapi.yaml"
        ))
        .expect("docs/asyncapi.yaml");
        let committed: Value = serde_yaml_ng::from_str(&committed).expect("YAML");
        assert!(
            committed == asyncapi("webhooks"),
            "docs/asyncapi.yaml is stale: run `cargo run --example asyncapi > docs/asyncapi.yaml`"
        );
    }
}
