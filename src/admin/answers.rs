//! What the console's JSON API answers, as types: each `/api/` endpoint
//! serialises one of these, `docs/openapi.yaml` takes its schemas from them
//! ([`super::openapi`]), and the pages read the same fields. A field renamed
//! here is renamed everywhere or fails to compile; it cannot show up blank
//! on a page or drift from the document.

use schemars::JsonSchema;
use serde::Serialize;
use serde_json::Value;

use super::health::Readiness;
use super::rates::Snapshot;
use crate::accounts::book::Entry as AccountEntry;
use crate::derived::incidents::{Incident, Provider};
use crate::history::index::Row;
use crate::replay::{dead_letters, history as history_replay, quarantine};
use crate::spool::listing::Listed;
use crate::watch::inspect::{Inspected, Summary as LookSummary};

/// Every refusal: `{"error": <code>, "reason": <text>}`.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct Refusal {
    pub error: RefusalCode,
    /// What was wrong, in words, naming the parameter when one was.
    pub reason: String,
}

/// Why a request was refused; the HTTP status says the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum RefusalCode {
    Unauthorized,
    CrossOrigin,
    Throttled,
    NotFound,
    BadRequest,
    Off,
    CatchingUp,
    Failed,
}

/// `GET /api/status`: what `/readyz` says, the webhook rates, and what the
/// relay's store holds.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct Status {
    #[serde(flatten)]
    pub ready: Readiness,
    pub rates: Snapshot,
    /// The console's index of the history, when it keeps one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<IndexState>,
}

/// How far the console's index has come.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct IndexState {
    pub caught_up: bool,
    pub rows: u64,
}

/// `GET /api/events`: one page of events, newest first.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct EventPage {
    pub events: Vec<Row>,
    /// Pass as `cursor` for the next page; null on the last.
    pub next_cursor: Option<u64>,
    pub source: Source,
    /// Why the answer may be behind the history: it came from the index
    /// while the stream could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub behind: Option<String>,
    /// From the stream only: the events read for this page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read: Option<u64>,
}

/// Where a page of events came from: the relay's index of the history
/// once it has caught up with the stream (it follows a moment behind), the
/// stream itself before; the index too, with `behind`, while the stream
/// cannot be read (RabbitMQ away).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema, strum::IntoStaticStr)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub(crate) enum Source {
    Index,
    Stream,
}

/// An event as the API shows it: `loginName` masked unless revealed.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct EventView {
    pub offset: u64,
    pub message_id: Option<String>,
    pub routing_key: String,
    /// `x-received-at`, RFC 3339 with milliseconds.
    pub received_at: Option<String>,
    /// Its AMQP headers, as JSON.
    pub headers: Value,
    /// The body: JSON as received, or text when it is not JSON.
    #[schemars(with = "Value")]
    pub body: Box<serde_json::value::RawValue>,
}

/// `GET /api/events/{message_id}` (and its `POST …/held`): one event, and
/// where it can have gone.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct Journey {
    pub event: EventView,
    /// Every queue bound to the event's routing key now.
    pub bound_queues: Vec<String>,
    /// Where that list comes from: RabbitMQ's bindings, or the
    /// configuration only.
    pub bound_queues_from: String,
    /// On a GET, how to search the queues that may hold the event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search: Option<String>,
    /// The dead letters, the quarantine and the unrouted queue, and whether
    /// each holds the event; null on a GET (a search reads messages).
    pub held: Option<Vec<Held>>,
}

/// Whether one queue holds an event.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct Held {
    pub queue: String,
    /// Messages looked at.
    pub searched: u32,
    /// Messages in the queue when the search began; null when not searched.
    pub depth: Option<u32>,
    /// Where the event sits in it, if it does.
    pub found: Option<HeldHere>,
    /// Why this queue was not searched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_searched: Option<String>,
}

/// The event, found in a queue.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct HeldHere {
    pub queue: String,
    /// Its place in the queue, from 1.
    pub position: u32,
    /// Why it is there: `x-quarantine-reason`, or the newest `x-death`.
    pub reason: Option<String>,
    pub headers: Value,
}

/// `GET /api/queues`.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct Queues {
    pub queues: Vec<QueueState>,
}

/// One of the relay's queues or a `[[queues]]` entry, as RabbitMQ has it.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct QueueState {
    pub name: String,
    pub role: QueueRole,
    /// Null when RabbitMQ could not say (see `error`).
    pub messages: Option<u32>,
    pub consumers: Option<u32>,
    pub error: Option<String>,
    /// A declaration RabbitMQ refused for this queue.
    pub conflict: Option<QueueConflict>,
}

/// What a queue is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema, strum::IntoStaticStr)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub(crate) enum QueueRole {
    DeadLetters,
    Quarantine,
    Unrouted,
    History,
    Consumer,
}

/// A declaration RabbitMQ refused: what, and in its words why.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct QueueConflict {
    /// `queue <name>`, `exchange <name>` or `binding <from> -> <to>`.
    pub object: String,
    pub reason: String,
}

/// `GET` and `POST /api/queues/{name}/messages`.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct Messages {
    /// On a GET, why no message is shown and what a look would cost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub look: Option<String>,
    /// Oldest first, each put back in place.
    pub messages: Vec<Inspected>,
    pub summary: LookSummary,
}

/// `GET /api/accounts`: one page, in key order.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct AccountPage {
    pub accounts: Vec<AccountEntry>,
    /// Pass as `cursor` for the next page; null on the last.
    pub next_cursor: Option<String>,
}

/// `GET /api/providers`: each provider's accounts by state, and the
/// provider incidents.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct Providers {
    /// The providers whose accounts need someone most first.
    pub providers: Vec<Provider>,
    /// The open incidents first, then the latest resolved.
    pub incidents: Vec<Incident>,
}

/// `GET /api/spool`.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct SpoolState {
    pub enabled: bool,
    /// Absent when the spool is off.
    #[serde(flatten)]
    pub contents: Option<SpoolContents>,
}

/// What the spool holds.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct SpoolContents {
    /// Webhooks waiting to be published, refused ones included.
    pub depth: u64,
    /// Refused by RabbitMQ, waiting for a retry beside the flow.
    pub refused: u64,
    /// Refused `spool.max_refusals` times and moved aside.
    pub parked: u64,
    pub oldest_age_seconds: Option<f64>,
    /// A page, in the order they were spooled (parked ones keep their place).
    pub entries: Vec<Listed>,
    /// Rows read for this page, admitted by the filter or not.
    pub examined: usize,
    /// Where the next page starts; null on the last.
    pub next_cursor: Option<String>,
}

/// What an action did, as the CLI prints it with `--json`: its summary and
/// its entries (the first 500).
#[derive(Debug, Serialize, JsonSchema)]
#[schemars(rename = "Done_{S}")]
pub(crate) struct Done<S, E> {
    pub summary: S,
    pub entries: Vec<E>,
}

/// `POST /api/dead-letters/replay`.
pub(crate) type DeadLettersReplayed = Done<dead_letters::Summary, dead_letters::Entry>;
/// `POST /api/quarantine/redrive`.
pub(crate) type QuarantineRedriven = Done<quarantine::Summary, quarantine::Redrive>;
/// `POST /api/history/replay`.
pub(crate) type HistoryReplayed = Done<history_replay::Summary, history_replay::Sent>;

/// `POST /api/spool/retry`.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct SpoolRetried {
    pub summary: SpoolRetrySummary,
}

/// How many parked webhooks were marked to be sent again.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct SpoolRetrySummary {
    pub marked: usize,
    /// Of the `seqs` asked for, how many were not parked.
    pub not_parked: usize,
}
