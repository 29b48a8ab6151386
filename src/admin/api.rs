//! The console's JSON API under `/api/`, described in `docs/openapi.yaml`.
//! Each handler parses its query or body into the options of one library
//! function (the one the CLI calls for the same operation), runs it, and
//! answers what it found or did, as the CLI prints it with `--json`. An
//! action is logged with who took it and counted in
//! `hookrelay_console_actions_total`.

use std::time::{Duration, SystemTime};

use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tracing::info;

use super::Admin;
use super::auth::{ConsoleError, Operator};
use super::health::readiness;
use crate::accounts::{self, Book, Selection};
use crate::broker::{self, Topology};
use crate::history::index::Row;
use crate::history::{self, Filter, PointInTime, Recorded, Start};
use crate::replay::dead_letters::{self, ReplayOptions};
use crate::replay::{history as history_replay, quarantine};
use crate::spool::listing;
use crate::watch::inspect;
use crate::watch::render;
use crate::wire::account::StateName;
use crate::wire::topic::TopicPattern;

/// Events on a page when the query says nothing.
const DEFAULT_LIMIT: usize = 50;
/// The most events, messages or entries one answer holds.
const MAX_LIMIT: usize = 500;
/// How far an event's lookup searches the dead letters and the quarantine.
const LOCATE_DEPTH: u32 = 1000;

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    // Bad input gets the same JSON answer as every other refusal, not
    // actix's plain-text default.
    let bad = |err: &dyn std::fmt::Display| -> actix_web::Error {
        ConsoleError::BadRequest(err.to_string()).into()
    };
    cfg.service(
        web::scope("/api")
            .app_data(web::QueryConfig::default().error_handler(move |err, _| bad(&err)))
            .app_data(web::JsonConfig::default().error_handler(move |err, _| bad(&err)))
            .app_data(web::PathConfig::default().error_handler(move |err, _| bad(&err)))
            .route("/status", web::get().to(status))
            .route("/events", web::get().to(events))
            .route("/events/{message_id}", web::get().to(event))
            .route("/queues", web::get().to(queues))
            .route("/queues/{name}/messages", web::get().to(queue_messages))
            .route("/accounts", web::get().to(accounts_list))
            .route("/spool", web::get().to(spool))
            .route("/dead-letters/replay", web::post().to(replay_dead_letters))
            .route("/quarantine/redrive", web::post().to(redrive_quarantine))
            .route("/history/replay", web::post().to(replay_history))
            .route("/spool/retry", web::post().to(retry_spool))
            .default_service(web::to(|| async {
                Err::<HttpResponse, _>(ConsoleError::NotFound("no such API endpoint".to_owned()))
            })),
    );
}

type Answer = Result<HttpResponse, ConsoleError>;

/// A query or body value that must parse, or a 400 naming it.
fn parse<T: std::str::FromStr>(name: &str, value: Option<&str>) -> Result<Option<T>, ConsoleError>
where
    T::Err: std::fmt::Display,
{
    value
        .filter(|value| !value.is_empty())
        .map(|value| {
            value
                .parse()
                .map_err(|err| ConsoleError::BadRequest(format!("{name}: {err}")))
        })
        .transpose()
}

fn limit(value: Option<usize>, default: usize) -> Result<usize, ConsoleError> {
    match value.unwrap_or(default) {
        0 => Err(ConsoleError::BadRequest(
            "limit: must be at least 1".to_owned(),
        )),
        n => Ok(n.min(MAX_LIMIT)),
    }
}

fn time(name: &str, value: Option<&str>) -> Result<Option<SystemTime>, ConsoleError> {
    Ok(parse::<PointInTime>(name, value)?.map(|at| at.0))
}

fn history_stream(admin: &Admin) -> Result<String, ConsoleError> {
    Topology::of(&admin.settings)
        .history_stream()
        .map(str::to_owned)
        .ok_or_else(|| ConsoleError::Off("the history is off ([history] enabled = false)".into()))
}

async fn status(admin: web::Data<Admin>, _: Operator) -> Answer {
    let (_, mut body) = readiness(&admin);
    body["rates"] = json!(admin.rates.snapshot());
    if let Some(index) = admin.index.clone() {
        let rows = tokio::task::spawn_blocking(move || index.len())
            .await
            .map_err(|err| ConsoleError::Failed(err.into()))??;
        body["index"] = json!({
            "caught_up": admin.index.as_ref().is_some_and(|index| index.caught_up()),
            "rows": rows,
        });
    }
    if let Some(live) = &admin.accounts {
        body["accounts"] = json!({
            "caught_up": live.caught_up(),
            "accounts": live.read(Book::len),
        });
    }
    Ok(HttpResponse::Ok().json(body))
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct EventsQuery {
    pub account_id: Option<String>,
    pub user_id: Option<String>,
    pub client_id: Option<String>,
    pub routing_key: Option<String>,
    pub message_id: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub limit: Option<usize>,
    pub cursor: Option<u64>,
}

/// An event as the API shows it: `loginName` masked.
#[derive(Serialize)]
pub(super) struct EventView {
    pub offset: u64,
    pub message_id: Option<String>,
    pub routing_key: String,
    pub received_at: Option<String>,
    pub headers: Value,
    pub body: Box<serde_json::value::RawValue>,
}

impl EventView {
    /// `reveal`: show `loginName` as received (the caller logs it).
    pub(super) fn of(event: &Recorded, reveal: bool) -> EventView {
        EventView {
            offset: event.offset,
            message_id: event.message_id(),
            routing_key: event.routing_key.clone(),
            received_at: event.received_at_text(),
            headers: render::headers(event.properties.headers().as_ref()),
            body: render::body(&event.body, reveal),
        }
    }
}

fn nonempty(value: Option<String>) -> Option<String> {
    value.filter(|value| !value.is_empty())
}

/// Events from the history, newest first, a page at a time: from the
/// index once it has caught up with the stream, else from the stream.
pub(super) async fn search_events(
    admin: &Admin,
    query: EventsQuery,
) -> Result<Value, ConsoleError> {
    let stream = history_stream(admin)?;
    let filter = Filter {
        routing_keys: parse::<TopicPattern>("routing_key", query.routing_key.as_deref())?
            .into_iter()
            .collect(),
        user_id: nonempty(query.user_id),
        account_id: nonempty(query.account_id),
        client_id: nonempty(query.client_id),
        since: time("since", query.since.as_deref())?,
        until: time("until", query.until.as_deref())?,
        message_ids: nonempty(query.message_id).into_iter().collect(),
    };
    let limit = limit(query.limit, DEFAULT_LIMIT)?;
    if let Some(index) = admin.index.clone().filter(|index| index.caught_up()) {
        let found = tokio::task::spawn_blocking(move || index.search(&filter, query.cursor, limit))
            .await
            .map_err(|err| ConsoleError::Failed(err.into()))??;
        return Ok(json!({
            "events": found.rows,
            "next_cursor": found.next_cursor,
            "source": "index",
        }));
    }
    let page = broker::with_tool_connection(
        &admin.settings.amqp,
        "hookrelay-console",
        async |connection| history::newest(connection, &stream, filter, query.cursor, limit).await,
    )
    .await?;
    Ok(json!({
        "events": page.events.iter().map(Row::of).collect::<Vec<_>>(),
        "next_cursor": page.next_cursor,
        "source": "stream",
        "read": page.read,
    }))
}

async fn events(admin: web::Data<Admin>, _: Operator, query: web::Query<EventsQuery>) -> Answer {
    Ok(HttpResponse::Ok().json(search_events(&admin, query.into_inner()).await?))
}

/// One event and where it went: the queues bound to its routing key now,
/// and whether it sits in the dead letters or the quarantine. `reveal`
/// (logged, with who asked) shows its `loginName`.
pub(super) async fn locate_event(
    admin: &Admin,
    operator: &Operator,
    message_id: &str,
    reveal: bool,
) -> Result<Value, ConsoleError> {
    let stream = history_stream(admin)?;
    let indexed = match admin.index.clone().filter(|index| index.caught_up()) {
        Some(index) => {
            let id = message_id.to_owned();
            Some(
                tokio::task::spawn_blocking(move || index.find(&id))
                    .await
                    .map_err(|err| ConsoleError::Failed(err.into()))??,
            )
        }
        None => None,
    };
    let found = broker::with_tool_connection(
        &admin.settings.amqp,
        "hookrelay-console",
        async |connection| match indexed {
            Some(Some(row)) => history::index::at_offset(connection, &stream, row.offset).await,
            // The index has caught up and does not know it.
            Some(None) => Ok(None),
            None => {
                let filter = Filter {
                    message_ids: vec![message_id.to_owned()],
                    ..Filter::default()
                };
                let page = history::newest(connection, &stream, filter, None, 1).await?;
                Ok(page.events.into_iter().next())
            }
        },
    )
    .await?;
    let Some(event) = found.as_ref() else {
        return Err(ConsoleError::NotFound(format!(
            "no event {message_id} in the history (it keeps history.max_age)"
        )));
    };
    let topology = Topology::of(&admin.settings);
    let mut held = Vec::new();
    for queue in [topology.dead_letter_queue(), topology.quarantine_queue()] {
        let mut found = None;
        let summary = inspect::inspect(
            &admin.settings.amqp,
            queue,
            Some(LOCATE_DEPTH),
            false,
            topology.delivery_limit(queue),
            |message| {
                if message.message_id.as_deref() == Some(message_id) && found.is_none() {
                    found = Some(json!({
                        "queue": queue,
                        "position": message.position,
                        "reason": message.reason,
                        "headers": message.headers,
                    }));
                }
            },
        )
        .await?;
        held.push(json!({
            "queue": queue,
            "searched": summary.shown,
            "depth": summary.depth,
            "found": found,
        }));
    }
    if reveal {
        info!(by = %operator, message_id, "console: loginName revealed");
    }
    let bound = match event.routing_key.as_str() {
        history::QUARANTINED => vec![topology.quarantine_queue()],
        key => topology.consumer_queues_bound_to(key),
    };
    Ok(json!({
        "event": EventView::of(event, reveal),
        "bound_queues": bound,
        "held": held,
    }))
}

#[derive(Deserialize)]
pub(super) struct EventQuery {
    #[serde(default)]
    pub reveal: bool,
}

async fn event(
    admin: web::Data<Admin>,
    operator: Operator,
    path: web::Path<String>,
    query: web::Query<EventQuery>,
) -> Answer {
    let found = locate_event(&admin, &operator, &path, query.reveal).await?;
    Ok(HttpResponse::Ok().json(found))
}

/// The relay's own queues and every `[[queues]]` entry: depth, consumers,
/// and any conflict RabbitMQ reported.
pub(super) async fn queue_list(admin: &Admin) -> Result<Value, ConsoleError> {
    let topology = Topology::of(&admin.settings);
    let names = known_queues(&topology);
    let names: Vec<&str> = names.iter().map(|(name, _)| *name).collect();
    let stats = broker::with_tool_connection(
        &admin.settings.amqp,
        "hookrelay-console",
        async |connection| broker::queue_stats(connection, &names).await,
    )
    .await?;
    let conflicts = admin.broker.status().queue_conflicts;
    let queues: Vec<Value> = stats
        .into_iter()
        .zip(known_queues(&topology))
        .map(|(stats, (_, role))| {
            let conflict = conflicts
                .iter()
                .find(|c| c.queue.as_deref() == Some(stats.name.as_str()))
                .map(|c| json!({ "object": c.object, "reason": c.reason }));
            json!({
                "name": stats.name,
                "role": role,
                "messages": stats.messages,
                "consumers": stats.consumers,
                "error": stats.error,
                "conflict": conflict,
            })
        })
        .collect();
    Ok(json!({ "queues": queues }))
}

/// Every queue the console may show, with what it is for.
fn known_queues(topology: &Topology) -> Vec<(&str, &'static str)> {
    let mut queues = vec![
        (topology.dead_letter_queue(), "dead_letters"),
        (topology.quarantine_queue(), "quarantine"),
        (topology.unrouted(), "unrouted"),
    ];
    queues.extend(topology.history_stream().map(|q| (q, "history")));
    queues.extend(topology.accounts_queue().map(|q| (q, "accounts")));
    queues.extend(
        topology
            .consumer_queues()
            .iter()
            .map(|q| (q.name.as_str(), "consumer")),
    );
    queues
}

async fn queues(admin: web::Data<Admin>, _: Operator) -> Answer {
    Ok(HttpResponse::Ok().json(queue_list(&admin).await?))
}

#[derive(Deserialize)]
struct MessagesQuery {
    limit: Option<usize>,
}

/// What `hookrelay inspect` shows of a queue, every message put back in place.
pub(super) async fn peek(admin: &Admin, queue: &str, limit: usize) -> Result<Value, ConsoleError> {
    let topology = Topology::of(&admin.settings);
    let known = known_queues(&topology);
    match known.iter().find(|(name, _)| *name == queue) {
        None => {
            return Err(ConsoleError::NotFound(format!(
                "{queue} is not one of the relay's queues or a [[queues]] entry"
            )));
        }
        Some((_, "history")) => {
            return Err(ConsoleError::BadRequest(format!(
                "{queue} is the history stream: read it with /api/events"
            )));
        }
        // Its one consumer is this relay's announcer (or another's): a look
        // would take its next events from under it for a moment.
        Some((_, "accounts")) => {
            return Err(ConsoleError::BadRequest(format!(
                "{queue} is the account announcer's work queue: see /api/accounts"
            )));
        }
        Some(_) => {}
    }
    let mut messages = Vec::new();
    let summary = inspect::inspect(
        &admin.settings.amqp,
        queue,
        u32::try_from(limit).ok(),
        false,
        topology.delivery_limit(queue),
        |message| messages.push(message),
    )
    .await?;
    Ok(json!({ "messages": messages, "summary": summary }))
}

async fn queue_messages(
    admin: web::Data<Admin>,
    _: Operator,
    path: web::Path<String>,
    query: web::Query<MessagesQuery>,
) -> Answer {
    let limit = limit(query.limit, DEFAULT_LIMIT)?;
    Ok(HttpResponse::Ok().json(peek(&admin, &path, limit).await?))
}

#[derive(Deserialize)]
pub(super) struct AccountsQuery {
    pub state: Option<StateName>,
    pub client_id: Option<String>,
    pub provider: Option<String>,
    pub since: Option<String>,
}

/// Every account's state, as `hookrelay accounts --json` lists it.
pub(super) async fn account_list(
    admin: &Admin,
    query: AccountsQuery,
) -> Result<Value, ConsoleError> {
    if !admin.settings.accounts.enabled {
        return Err(ConsoleError::Off(
            "accounts are off ([accounts] enabled = false)".to_owned(),
        ));
    }
    history_stream(admin)?;
    let selection = Selection {
        state: query.state.map(|state| state.as_str().to_owned()),
        client_id: nonempty(query.client_id),
        provider: nonempty(query.provider),
        since: time("since", query.since.as_deref())?,
    };
    let listed = |book: &Book| {
        let shown: Vec<_> = book
            .entries()
            .filter(|entry| selection.admits(entry))
            .collect();
        json!({ "accounts": shown, "total": book.len() })
    };
    if let Some(live) = admin.accounts.as_ref().filter(|live| live.caught_up()) {
        let mut answer = live.read(listed);
        answer["source"] = json!("live");
        return Ok(answer);
    }
    let mut answer = listed(&accounts::book(&admin.settings).await?);
    answer["source"] = json!("history");
    Ok(answer)
}

async fn accounts_list(
    admin: web::Data<Admin>,
    _: Operator,
    query: web::Query<AccountsQuery>,
) -> Answer {
    Ok(HttpResponse::Ok().json(account_list(&admin, query.into_inner()).await?))
}

/// The spool: depth, the oldest entry's age, and its entries (parked first).
pub(super) async fn spool_state(admin: &Admin) -> Result<Value, ConsoleError> {
    let Some(spool) = &admin.spool else {
        return Ok(json!({ "enabled": false }));
    };
    let oldest = spool
        .oldest_age()
        .await
        .map_err(|err| ConsoleError::Failed(err.into()))?;
    let path = admin.settings.spool.path.clone();
    let mut entries = tokio::task::spawn_blocking(move || listing::list(&path))
        .await
        .map_err(|err| ConsoleError::Failed(err.into()))?
        .map_err(|err| ConsoleError::Failed(err.into()))?;
    let total = entries.len();
    entries.truncate(MAX_LIMIT);
    Ok(json!({
        "enabled": true,
        "depth": spool.depth(),
        "refused": spool.refused(),
        "parked": spool.parked(),
        "oldest_age_seconds": oldest.as_ref().map(Duration::as_secs_f64),
        "entries": entries,
        "entries_total": total,
    }))
}

async fn spool(admin: web::Data<Admin>, _: Operator) -> Answer {
    Ok(HttpResponse::Ok().json(spool_state(&admin).await?))
}

/// `POST /api/dead-letters/replay`: some message ids, or all of a reason,
/// a queue or a routing key, or everything with `all`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DeadLetterReplay {
    #[serde(default)]
    pub message_ids: Vec<String>,
    pub reason: Option<String>,
    pub from_queue: Option<String>,
    pub routing_key: Option<String>,
    #[serde(default)]
    pub all: bool,
    #[serde(default)]
    pub to_exchange: bool,
    #[serde(default)]
    pub dry_run: bool,
    pub limit: Option<usize>,
}

const DEATH_REASONS: [&str; 4] = ["rejected", "expired", "maxlen", "delivery_limit"];

async fn replay_dead(
    admin: &Admin,
    operator: &Operator,
    request: DeadLetterReplay,
) -> Result<Value, ConsoleError> {
    let reason = nonempty(request.reason);
    if let Some(reason) = &reason
        && !DEATH_REASONS.contains(&reason.as_str())
    {
        return Err(ConsoleError::BadRequest(format!(
            "reason: `{reason}` is not one of {}",
            DEATH_REASONS.join(", ")
        )));
    }
    let options = ReplayOptions {
        queue: None,
        to_exchange: request.to_exchange,
        routing_key: parse("routing_key", request.routing_key.as_deref())?,
        from_queue: nonempty(request.from_queue),
        reason,
        message_ids: request.message_ids,
        limit: request.limit,
        dry_run: request.dry_run,
    };
    let chosen = !options.message_ids.is_empty()
        || options.reason.is_some()
        || options.from_queue.is_some()
        || options.routing_key.is_some();
    if chosen == request.all {
        return Err(ConsoleError::BadRequest(
            "say which dead letters: message_ids, reason, from_queue or routing_key, or all: true \
             (not both)"
                .to_owned(),
        ));
    }
    let mut entries = Entries::new();
    let summary =
        dead_letters::replay(&admin.settings, &options, |entry| entries.add(entry)).await?;
    Ok(done(
        admin,
        operator,
        "dead_letters_replay",
        options.dry_run,
        &summary,
        &entries.0,
    ))
}

async fn replay_dead_letters(
    admin: web::Data<Admin>,
    operator: Operator,
    body: web::Json<DeadLetterReplay>,
) -> Answer {
    Ok(HttpResponse::Ok().json(replay_dead(&admin, &operator, body.into_inner()).await?))
}

/// `POST /api/quarantine/redrive`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Redrive {
    #[serde(default)]
    pub message_ids: Vec<String>,
    #[serde(default)]
    pub dry_run: bool,
    pub limit: Option<usize>,
}

async fn redrive(
    admin: &Admin,
    operator: &Operator,
    request: Redrive,
) -> Result<Value, ConsoleError> {
    let options = quarantine::Options {
        limit: request.limit,
        dry_run: request.dry_run,
        message_ids: request.message_ids,
    };
    let mut entries = Entries::new();
    let summary =
        quarantine::redrive(&admin.settings, &options, |entry| entries.add(entry)).await?;
    Ok(done(
        admin,
        operator,
        "quarantine_redrive",
        options.dry_run,
        &summary,
        &entries.0,
    ))
}

async fn redrive_quarantine(
    admin: web::Data<Admin>,
    operator: Operator,
    body: web::Json<Redrive>,
) -> Answer {
    Ok(HttpResponse::Ok().json(redrive(&admin, &operator, body.into_inner()).await?))
}

/// `POST /api/history/replay`: message ids or a time range, to one queue or
/// through the exchange.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryReplay {
    #[serde(default)]
    message_ids: Vec<String>,
    since: Option<String>,
    until: Option<String>,
    account_id: Option<String>,
    routing_key: Option<String>,
    to_queue: Option<String>,
    #[serde(default)]
    to_exchange: bool,
    #[serde(default)]
    dry_run: bool,
    limit: Option<usize>,
}

async fn replay_history(
    admin: web::Data<Admin>,
    operator: Operator,
    body: web::Json<HistoryReplay>,
) -> Answer {
    let request = body.into_inner();
    history_stream(&admin)?;
    let destination = match (nonempty(request.to_queue), request.to_exchange) {
        (Some(queue), false) => history_replay::Destination::Queue(queue),
        (None, true) => history_replay::Destination::Exchange,
        _ => {
            return Err(ConsoleError::BadRequest(
                "say where to: to_queue (one queue) or to_exchange: true (every queue bound to \
                 the event's routing key), not both"
                    .to_owned(),
            ));
        }
    };
    if let history_replay::Destination::Queue(queue) = &destination {
        let found = broker::with_tool_connection(
            &admin.settings.amqp,
            "hookrelay-console",
            async |connection| broker::queue_stats(connection, &[queue.as_str()]).await,
        )
        .await?;
        if let Some(error) = found.first().and_then(|stats| stats.error.as_ref()) {
            return Err(ConsoleError::NotFound(format!("to_queue: {error}")));
        }
    }
    let since = time("since", request.since.as_deref())?;
    if request.message_ids.is_empty() && since.is_none() {
        return Err(ConsoleError::BadRequest(
            "say which events: message_ids, or a time range (since, and until)".to_owned(),
        ));
    }
    let options = history_replay::Options {
        start: since.map_or(Start::First, Start::At),
        filter: Filter {
            routing_keys: parse::<TopicPattern>("routing_key", request.routing_key.as_deref())?
                .into_iter()
                .collect(),
            account_id: nonempty(request.account_id),
            since,
            until: time("until", request.until.as_deref())?,
            message_ids: request.message_ids,
            ..Filter::default()
        },
        destination,
        limit: request.limit,
        dry_run: request.dry_run,
    };
    let mut entries = Entries::new();
    let summary =
        history_replay::replay(&admin.settings, &options, |sent| entries.add(sent)).await?;
    Ok(HttpResponse::Ok().json(done(
        &admin,
        &operator,
        "history_replay",
        options.dry_run,
        &summary,
        &entries.0,
    )))
}

/// `POST /api/spool/retry`: parked webhooks, by `seq`, or all of them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SpoolRetry {
    #[serde(default)]
    pub seqs: Vec<i64>,
    #[serde(default)]
    pub all: bool,
}

async fn spool_retry(
    admin: &Admin,
    operator: &Operator,
    request: SpoolRetry,
) -> Result<Value, ConsoleError> {
    if admin.spool.is_none() {
        return Err(ConsoleError::Off(
            "the spool is off ([spool] enabled = false)".into(),
        ));
    }
    if request.seqs.is_empty() != request.all {
        return Err(ConsoleError::BadRequest(
            "say which parked webhooks: seqs, or all: true (not both)".to_owned(),
        ));
    }
    let path = admin.settings.spool.path.clone();
    let seqs = request.seqs.clone();
    let marked = tokio::task::spawn_blocking(move || listing::request_retry(&path, &seqs))
        .await
        .map_err(|err| ConsoleError::Failed(err.into()))?
        .map_err(|err| ConsoleError::Failed(err.into()))?;
    let summary = json!({
        "marked": marked,
        "not_parked": if request.all { 0 } else { request.seqs.len().saturating_sub(marked) },
    });
    acted(admin, operator, "spool_retry", false, &summary);
    Ok(json!({ "summary": summary }))
}

async fn retry_spool(
    admin: web::Data<Admin>,
    operator: Operator,
    body: web::Json<SpoolRetry>,
) -> Answer {
    Ok(HttpResponse::Ok().json(spool_retry(&admin, &operator, body.into_inner()).await?))
}

/// The entries an action reports, the first [`MAX_LIMIT`] of them.
struct Entries<T>(Vec<T>);

impl<T: Clone> Entries<T> {
    fn new() -> Entries<T> {
        Entries(Vec::new())
    }

    fn add(&mut self, entry: &T) {
        if self.0.len() < MAX_LIMIT {
            self.0.push(entry.clone());
        }
    }
}

/// Logs and counts an action, and answers what it did: its summary and
/// its entries, as the CLI prints them with `--json`.
fn done(
    admin: &Admin,
    operator: &Operator,
    action: &'static str,
    dry_run: bool,
    summary: &impl Serialize,
    entries: &[impl Serialize],
) -> Value {
    acted(admin, operator, action, dry_run, summary);
    json!({ "summary": summary, "entries": entries })
}

/// Logs and counts an action: who, what, and what came of it.
fn acted(
    admin: &Admin,
    operator: &Operator,
    action: &'static str,
    dry_run: bool,
    summary: &impl Serialize,
) {
    admin.metrics.console_action(action);
    let summary = serde_json::to_string(summary).unwrap_or_default();
    info!(by = %operator, action, dry_run, %summary, "console: action taken");
}
