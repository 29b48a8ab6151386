//! The console's JSON API under `/api/`, described in `docs/openapi.yaml`.
//! Each handler parses its query or body into the options of one library
//! function (the one the CLI calls for the same operation), runs it, and
//! answers what it found or did, as the CLI prints it with `--json`. An
//! action is logged with who took it and counted in
//! `hookrelay_console_actions_total`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix_web::{HttpResponse, web};
use percent_encoding::{NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::answers::{
    AccountPage, DeadLettersReplayed, Done, EventPage, EventView, Held, HeldHere, IndexState,
    Journey, Messages, Providers, QuarantineRedriven, QueueConflict, QueueRole, QueueState, Queues,
    Source, SpoolContents, SpoolRetried, SpoolRetrySummary, SpoolState, Status,
};
use tracing::info;

use super::Admin;
use super::auth::{ConsoleError, Operator};
use super::health::readiness;
use crate::accounts::{self, Selection};
use crate::broker::{self, Topology};
use crate::derived::Derived;
use crate::history::index::Row;
use crate::history::{self, Filter, PointInTime, Recorded, Start};
use crate::replay::dead_letters::{self, ReplayOptions};
use crate::replay::{history as history_replay, quarantine};
use crate::spool::listing;
use crate::watch::inspect;
use crate::watch::render::{self, Shown};
use crate::wire::account::StateName;
use crate::wire::topic::TopicPattern;

/// Events on a page when the query says nothing.
pub(super) const DEFAULT_LIMIT: usize = 50;
/// The most events, messages or entries one answer holds.
pub(super) const MAX_LIMIT: usize = 500;
/// How deep an event's lookup searches each queue that may hold it (the
/// dead letters, the quarantine, the unrouted): the messages looked at are
/// held (out of a concurrent replay's reach) until the search of that queue
/// ends.
pub(super) const LOCATE_DEPTH: u32 = 500;

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
            .route("/events/{message_id}/held", web::post().to(event_held))
            .route("/queues", web::get().to(queues))
            .route("/queues/{name}/messages", web::get().to(queue_messages))
            .route("/queues/{name}/messages", web::post().to(look_at_queue))
            .route("/accounts", web::get().to(accounts_list))
            .route("/providers", web::get().to(providers))
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

/// How long a console request waits for RabbitMQ to answer what it asked (a
/// look, a search, a queue's depth) before saying so: a broker that took
/// the connection and then stopped answering must not hang a page.
const RABBITMQ_DEADLINE: Duration = Duration::from_secs(15);

/// Runs `work` on a connection of the console's own, within
/// [`RABBITMQ_DEADLINE`]; one that runs out closes its connection, which
/// puts back whatever it held.
async fn ask_rabbitmq<T>(
    admin: &Admin,
    work: impl AsyncFnOnce(&lapin::Connection) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let asked = broker::with_tool_connection(&admin.settings.amqp, "hookrelay-console", work);
    tokio::time::timeout(RABBITMQ_DEADLINE, asked)
        .await
        .unwrap_or_else(|_| {
            Err(anyhow::anyhow!(
                "RabbitMQ did not answer within {} s",
                RABBITMQ_DEADLINE.as_secs()
            ))
        })
}

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
    admin
        .topology()
        .history_stream()
        .map(str::to_owned)
        .ok_or_else(|| ConsoleError::Off("the history is off ([history] enabled = false)".into()))
}

/// What `/readyz` says, the rates, and what the relay's store holds.
pub(super) async fn status_of(admin: &Admin) -> Result<Status, ConsoleError> {
    let mut status = Status {
        ready: readiness(admin),
        rates: admin.rates.snapshot(),
        index: None,
    };
    if let Some(derived) = &admin.derived {
        let derives = derived.derives();
        let (indexed, by_state) = derived
            .read(move |store| {
                let indexed = derives.index.then(|| store.indexed()).transpose()?;
                let by_state = derives
                    .accounts
                    .then(|| store.count_by_state())
                    .transpose()?;
                Ok((indexed, by_state))
            })
            .await?;
        status.index = indexed.map(|rows| IndexState {
            caught_up: derived.caught_up(),
            rows,
        });
        // What /readyz says of the accounts (`owed`, `announcing`), and more.
        if let (Some(by_state), Some(accounts)) = (by_state, status.ready.accounts.as_mut()) {
            let by_state: BTreeMap<String, u64> = by_state
                .into_iter()
                .map(|(state, count)| (state.as_str().to_owned(), count))
                .collect();
            accounts.caught_up = Some(derived.caught_up());
            accounts.accounts = Some(by_state.values().sum());
            accounts.by_state = Some(by_state);
        }
    }
    Ok(status)
}

async fn status(admin: web::Data<Admin>, _: Operator) -> Answer {
    Ok(HttpResponse::Ok().json(status_of(&admin).await?))
}

/// The derived store, when it indexes events and has caught up.
fn index(admin: &Admin) -> Option<&Arc<Derived>> {
    admin
        .derived
        .as_ref()
        .filter(|derived| derived.derives().index && derived.caught_up())
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

impl EventView {
    /// `reveal`: show `loginName` as received (the caller logs it).
    pub(super) fn of(event: &Recorded, reveal: bool) -> EventView {
        EventView {
            offset: event.offset,
            message_id: event.message_id(),
            routing_key: event.routing_key.clone(),
            received_at: event.received_at_text(),
            headers: render::headers(event.properties.headers().as_ref()),
            body: render::body(&event.body, Shown::as_received_if(reveal)),
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
) -> Result<EventPage, ConsoleError> {
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
        notes: false,
    };
    let limit = limit(query.limit, DEFAULT_LIMIT)?;
    if let Some(index) = index(admin) {
        let cursor = query.cursor;
        let found = index
            .read(move |store| store.search(&filter, cursor, limit))
            .await?;
        return Ok(EventPage {
            events: found.rows,
            next_cursor: found.next_cursor,
            source: Source::Index,
            behind: None,
            read: None,
        });
    }
    let read = ask_rabbitmq(admin, async |connection| {
        history::newest(connection, &stream, filter.clone(), query.cursor, limit).await
    })
    .await;
    match read {
        Ok(page) => Ok(EventPage {
            events: page.events.iter().map(Row::of).collect(),
            next_cursor: page.next_cursor,
            source: Source::Stream,
            behind: None,
            read: Some(page.read),
        }),
        // RabbitMQ away: what the index holds (it resumes from its file) is
        // better than nothing, said to be behind.
        Err(err) => {
            let Some(index) = admin.derived.clone().filter(|d| d.derives().index) else {
                return Err(err.into());
            };
            let cursor = query.cursor;
            let found = index
                .read(move |store| store.search(&filter, cursor, limit))
                .await?;
            Ok(EventPage {
                events: found.rows,
                next_cursor: found.next_cursor,
                source: Source::Index,
                behind: Some(format!(
                    "the index may be behind the history, which cannot be read now: {err:#}"
                )),
                read: None,
            })
        }
    }
}

async fn events(admin: web::Data<Admin>, _: Operator, query: web::Query<EventsQuery>) -> Answer {
    Ok(HttpResponse::Ok().json(search_events(&admin, query.into_inner()).await?))
}

/// Whether a lookup of an event also searches the queues that may hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Search {
    /// A GET: nothing is taken from any queue.
    NotSearched,
    /// A POST: the dead letters, the quarantine and the unrouted queue are
    /// searched, each message taken and put back.
    Searched,
}

/// One event and where it went: every queue bound to its routing key now
/// (through the management API when `amqp.management_url` is set, else the
/// configured ones, saying so), and, with [`Search::Searched`], whether it sits
/// in the dead letters, the quarantine or the unrouted queue. One
/// connection; each queue searched at most [`LOCATE_DEPTH`] deep, put back as
/// soon as the event is found. A quorum queue is not searched (a look would
/// count a delivery of each message). `reveal` (logged, with who asked)
/// shows its `loginName`.
pub(super) async fn locate_event(
    admin: &Admin,
    operator: &Operator,
    message_id: &str,
    reveal: bool,
    search: Search,
) -> Result<Journey, ConsoleError> {
    let stream = history_stream(admin)?;
    let indexed = match index(admin) {
        Some(index) => {
            let id = message_id.to_owned();
            Some(index.read(move |store| store.find(&id)).await?)
        }
        None => None,
    };
    let topology = admin.broker.topology().clone();
    let (found, held) = ask_rabbitmq(admin, async |connection| {
        let found = match &indexed {
            Some(Some(row)) => history::index::at_offset(connection, &stream, row.offset).await?,
            // The index has caught up and does not know it.
            Some(None) => None,
            None => {
                let filter = Filter {
                    message_ids: vec![message_id.to_owned()],
                    ..Filter::default()
                };
                let page = history::newest(connection, &stream, filter, None, 1).await?;
                page.events.into_iter().next()
            }
        };
        if found.is_none() || search == Search::NotSearched {
            return Ok((found, Vec::new()));
        }
        let mut held = Vec::new();
        for queue in [
            topology.dead_letter_queue(),
            topology.quarantine_queue(),
            topology.unrouted(),
        ] {
            held.push(search_queue(connection, &topology, queue, message_id).await?);
        }
        anyhow::Ok((found, held))
    })
    .await?;
    let Some(event) = found.as_ref() else {
        return Err(ConsoleError::NotFound(format!(
            "no event {message_id} in the history (it keeps history.max_age)"
        )));
    };
    if reveal {
        info!(by = %operator, message_id, "console: loginName revealed");
    }
    let (bound, bound_from) = bound_queues(admin, &topology, &event.routing_key).await;
    let searched = search == Search::Searched;
    Ok(Journey {
        event: EventView::of(event, reveal),
        bound_queues: bound,
        bound_queues_from: bound_from,
        search: (!searched).then(|| {
            format!(
                "POST /api/events/{message_id}/held to look for it in the dead letters, the \
                 quarantine and the unrouted queue (each message looked at is taken and put back)"
            )
        }),
        held: searched.then_some(held),
    })
}

/// Whether `queue` holds the message `message_id`, looked for at most
/// [`LOCATE_DEPTH`] deep.
async fn search_queue(
    connection: &lapin::Connection,
    topology: &Topology,
    queue: &str,
    message_id: &str,
) -> anyhow::Result<Held> {
    if topology.delivery_limit(queue).is_some() {
        return Ok(Held {
            queue: queue.to_owned(),
            searched: 0,
            depth: None,
            found: None,
            not_searched: Some(
                "a quorum queue: a look counts a delivery of each message (POST \
                 /api/queues/{name}/messages to look)"
                    .to_owned(),
            ),
        });
    }
    let mut found = None;
    let summary = inspect::inspect_on(
        connection,
        queue,
        Some(LOCATE_DEPTH),
        Shown::Masked,
        None,
        |message| {
            if message.message_id.as_deref() != Some(message_id) {
                return std::ops::ControlFlow::Continue(());
            }
            found = Some(HeldHere {
                queue: queue.to_owned(),
                position: message.position,
                reason: message.reason,
                headers: message.headers,
            });
            std::ops::ControlFlow::Break(())
        },
    )
    .await?;
    Ok(Held {
        queue: queue.to_owned(),
        searched: summary.shown,
        depth: Some(summary.depth),
        found,
        not_searched: None,
    })
}

/// The queues bound to `routing_key` now: from RabbitMQ's management API
/// when there is one (every queue, a consumer's own included), else from
/// the configuration; and which of the two it is.
async fn bound_queues(
    admin: &Admin,
    topology: &Topology,
    routing_key: &str,
) -> (Vec<String>, String) {
    if routing_key == history::QUARANTINED {
        return (
            vec![topology.quarantine_queue().to_owned()],
            "the quarantine".to_owned(),
        );
    }
    let configured = || {
        topology
            .consumer_queues_bound_to(routing_key)
            .into_iter()
            .map(str::to_owned)
            .collect()
    };
    let Some(management) = broker::management::Management::new(&admin.settings.amqp) else {
        return (
            configured(),
            "the configuration only ([[queues]]): set amqp.management_url to see every queue \
             bound, a consumer's own included"
                .to_owned(),
        );
    };
    let exchange = match crate::wire::changes::is_announced(routing_key) {
        true => topology.changes_exchange(),
        false => topology.exchange(),
    };
    match management.bindings_from(exchange).await {
        Ok(bindings) => {
            let mut queues: Vec<String> = bindings
                .into_iter()
                .filter(|(_, pattern)| {
                    pattern
                        .parse::<TopicPattern>()
                        .is_ok_and(|pattern| pattern.matches(routing_key))
                })
                .map(|(queue, _)| queue)
                .collect();
            queues.sort();
            queues.dedup();
            (queues, format!("RabbitMQ's bindings of {exchange}, now"))
        }
        Err(err) => (
            configured(),
            format!("the configuration only: the management API did not answer ({err})"),
        ),
    }
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
    let found = locate_event(&admin, &operator, &path, query.reveal, Search::NotSearched).await?;
    Ok(HttpResponse::Ok().json(found))
}

/// The same, and the queues that may hold it searched.
async fn event_held(
    admin: web::Data<Admin>,
    operator: Operator,
    path: web::Path<String>,
    query: web::Query<EventQuery>,
) -> Answer {
    let found = locate_event(&admin, &operator, &path, query.reveal, Search::Searched).await?;
    info!(by = %operator, message_id = %path, "console: searched the queues that may hold an event");
    Ok(HttpResponse::Ok().json(found))
}

/// The relay's own queues and every `[[queues]]` entry: depth, consumers,
/// and any conflict RabbitMQ reported.
pub(super) async fn queue_list(admin: &Admin) -> Result<Queues, ConsoleError> {
    let topology = admin.topology();
    let names = known_queues(topology);
    let names: Vec<&str> = names.iter().map(|(name, _)| *name).collect();
    let stats = ask_rabbitmq(admin, async |connection| {
        broker::queue_stats(connection, &names).await
    })
    .await?;
    let conflicts = admin.broker.status().queue_conflicts;
    let queues = stats
        .into_iter()
        .zip(known_queues(topology))
        .map(|(stats, (_, role))| QueueState {
            conflict: conflicts
                .iter()
                .find(|c| c.queue.as_deref() == Some(stats.name.as_str()))
                .map(|c| QueueConflict {
                    object: c.object.clone(),
                    reason: c.reason.clone(),
                }),
            name: stats.name,
            role,
            messages: stats.messages,
            consumers: stats.consumers,
            error: stats.error,
        })
        .collect();
    Ok(Queues { queues })
}

/// Every queue the console may show, with what it is for.
fn known_queues(topology: &Topology) -> Vec<(&str, QueueRole)> {
    let mut queues = vec![
        (topology.dead_letter_queue(), QueueRole::DeadLetters),
        (topology.quarantine_queue(), QueueRole::Quarantine),
        (topology.unrouted(), QueueRole::Unrouted),
    ];
    queues.extend(topology.history_stream().map(|q| (q, QueueRole::History)));
    queues.extend(
        topology
            .consumer_queues()
            .iter()
            .map(|q| (q.name.as_str(), QueueRole::Consumer)),
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

/// What a look at a queue may do. A GET changes nothing, on the API or on
/// RabbitMQ: it answers a queue's depth. Showing messages means taking each
/// and putting it back (RabbitMQ marks it redelivered, hides it meanwhile,
/// and a quorum queue counts a delivery toward its limit): a POST.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Look {
    /// A GET: the depth, and how to look.
    Depth,
    /// A POST that says so: the messages, each put back in place.
    Messages,
}

/// What `hookrelay inspect` shows of a queue, every message put back in
/// place; with [`Look::Depth`], its depth only, and how to look.
pub(super) async fn peek(
    admin: &Admin,
    queue: &str,
    limit: usize,
    look: Look,
) -> Result<Messages, ConsoleError> {
    let topology = admin.topology();
    let known = known_queues(topology);
    match known.iter().find(|(name, _)| *name == queue) {
        None => {
            return Err(ConsoleError::NotFound(format!(
                "{queue} is not one of the relay's queues or a [[queues]] entry"
            )));
        }
        Some((_, QueueRole::History)) => {
            return Err(ConsoleError::BadRequest(format!(
                "{queue} is the history stream: read it with /api/events"
            )));
        }
        Some(_) => {}
    }
    let delivery_limit = topology.delivery_limit(queue);
    if look == Look::Depth {
        let depth = ask_rabbitmq(admin, async |connection| {
            broker::queue_stats(connection, &[queue]).await
        })
        .await?
        .first()
        .and_then(|stats| stats.messages)
        .unwrap_or(0);
        let what = match delivery_limit {
            Some(limit) => format!(
                "{queue} is a quorum queue: a look counts one delivery of each message shown, \
                 and after {limit} RabbitMQ dead-letters it."
            ),
            None => format!(
                "A look takes each message of {queue} and puts it back: RabbitMQ marks it \
                 redelivered, and hides it from consumers and replays while it is looked at."
            ),
        };
        return Ok(Messages {
            look: Some(format!("{what} POST to this address to look.")),
            messages: Vec::new(),
            summary: inspect::Summary {
                shown: 0,
                depth,
                counts_deliveries: delivery_limit.is_some(),
                pushed_over: 0,
            },
        });
    }
    let mut messages = Vec::new();
    let summary = ask_rabbitmq(admin, async |connection| {
        let limit = u32::try_from(limit).ok();
        inspect::inspect_on(
            connection,
            queue,
            limit,
            Shown::Masked,
            delivery_limit,
            |message| {
                messages.push(message);
                std::ops::ControlFlow::Continue(())
            },
        )
        .await
    })
    .await?;
    Ok(Messages {
        look: None,
        messages,
        summary,
    })
}

async fn queue_messages(
    admin: web::Data<Admin>,
    _: Operator,
    path: web::Path<String>,
    query: web::Query<MessagesQuery>,
) -> Answer {
    let limit = limit(query.limit, DEFAULT_LIMIT)?;
    Ok(HttpResponse::Ok().json(peek(&admin, &path, limit, Look::Depth).await?))
}

/// A look's body: how many messages at most.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct LookBody {
    limit: Option<usize>,
}

/// A look at a queue's messages, each taken and put back (counting a
/// delivery on a quorum queue); logged with who asked. An empty body looks
/// at the default number; a body must be `{"limit": n}` and nothing else.
async fn look_at_queue(
    admin: web::Data<Admin>,
    operator: Operator,
    path: web::Path<String>,
    body: web::Bytes,
) -> Answer {
    let asked: LookBody = match body.is_empty() {
        true => LookBody::default(),
        false => serde_json::from_slice(&body)
            .map_err(|err| ConsoleError::BadRequest(format!("the body: {err}")))?,
    };
    let limit = limit(asked.limit, DEFAULT_LIMIT)?;
    let found = peek(&admin, &path, limit, Look::Messages).await?;
    info!(by = %operator, queue = %path, shown = found.summary.shown,
        counted_deliveries = found.summary.counts_deliveries,
        "console: looked at a queue's messages, each put back");
    Ok(HttpResponse::Ok().json(found))
}

#[derive(Deserialize)]
pub(super) struct AccountsQuery {
    pub state: Option<StateName>,
    pub client_id: Option<String>,
    pub provider: Option<String>,
    pub since: Option<String>,
    pub limit: Option<usize>,
    /// `client_id/account_id` of the last account of the page before
    /// (`next_cursor` of its answer).
    pub cursor: Option<String>,
}

/// The accounts a selection admits, a page at a time, in key order, from
/// the relay's derived store: 503 until it has caught up with the history.
pub(super) async fn account_list(
    admin: &Admin,
    query: AccountsQuery,
) -> Result<AccountPage, ConsoleError> {
    let derived = accounts_store(admin)?;
    let selection = Selection {
        state: query.state,
        client_id: nonempty(query.client_id),
        provider: nonempty(query.provider),
        since: time("since", query.since.as_deref())?,
    };
    let after = match nonempty(query.cursor) {
        Some(cursor) => Some(parse_account_cursor(&cursor)?),
        None => None,
    };
    let limit = limit(query.limit, MAX_LIMIT)?;
    let page = derived
        .read(move |store| store.accounts(&selection, after.as_ref(), limit))
        .await?;
    Ok(AccountPage {
        accounts: page.accounts,
        next_cursor: page.next.map(|key| account_cursor(&key)),
    })
}

/// The relay's derived store, once it answers for the accounts: off with
/// accounts or the history off, 503 while it catches up.
fn accounts_store(admin: &Admin) -> Result<std::sync::Arc<crate::derived::Derived>, ConsoleError> {
    if !admin.settings.accounts.enabled {
        return Err(ConsoleError::Off(
            "accounts are off ([accounts] enabled = false)".to_owned(),
        ));
    }
    history_stream(admin)?;
    let Some(derived) = admin.derived.clone() else {
        return Err(ConsoleError::Off("the history is off".to_owned()));
    };
    if !derived.caught_up() {
        return Err(ConsoleError::CatchingUp(
            "the relay is still reading the history into its accounts (after a first start, \
             or a new stream): ask again in a moment"
                .to_owned(),
        ));
    }
    Ok(derived)
}

#[derive(Deserialize)]
pub(super) struct ProvidersQuery {
    pub limit: Option<usize>,
}

/// Incidents listed at most: the open ones first, then the latest resolved.
const INCIDENTS_SHOWN: usize = 20;

/// Each provider's accounts by state, and the provider incidents.
pub(super) async fn provider_list(
    admin: &Admin,
    query: ProvidersQuery,
) -> Result<Providers, ConsoleError> {
    let derived = accounts_store(admin)?;
    let limit = limit(query.limit, MAX_LIMIT)?;
    let (providers, incidents) = derived
        .read(move |store| Ok((store.providers(limit)?, store.incidents(INCIDENTS_SHOWN)?)))
        .await?;
    Ok(Providers {
        providers,
        incidents,
    })
}

async fn providers(
    admin: web::Data<Admin>,
    _: Operator,
    query: web::Query<ProvidersQuery>,
) -> Answer {
    Ok(HttpResponse::Ok().json(provider_list(&admin, query.into_inner()).await?))
}

/// One account as the store has it, and its timeline from the index:
/// its latest `limit` events, oldest first, each with the state it left it in.
pub(super) async fn account_timeline(
    admin: &Admin,
    client_id: &str,
    account_id: &str,
    limit: usize,
) -> Result<(Option<accounts::Entry>, Vec<accounts::Step>), ConsoleError> {
    let derived = accounts_store(admin)?;
    let key = accounts::Key {
        client_id: client_id.to_owned(),
        account_id: account_id.to_owned(),
    };
    let filter = crate::history::Filter {
        account_id: Some(account_id.to_owned()),
        client_id: Some(client_id.to_owned()),
        routing_keys: vec!["sync.#".parse().expect("a topic pattern")],
        ..crate::history::Filter::default()
    };
    let escalate_after = admin.settings.accounts.temporary_failures_to_escalate;
    let indexed = derived.derives().index;
    let (entry, mut rows) = derived
        .read(move |store| {
            let rows = match indexed {
                true => store.search(&filter, None, limit)?.rows,
                false => Vec::new(),
            };
            Ok((store.account(&key)?, rows))
        })
        .await?;
    rows.reverse();
    Ok((entry, accounts::timeline_of_rows(&rows, escalate_after)))
}

/// An account's place in a listing: `client_id/account_id`, each
/// percent-encoded (an id may hold a `/`).
fn account_cursor(key: &accounts::Key) -> String {
    let encode = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
    format!("{}/{}", encode(&key.client_id), encode(&key.account_id))
}

fn parse_account_cursor(cursor: &str) -> Result<accounts::Key, ConsoleError> {
    let bad =
        || ConsoleError::BadRequest(format!("cursor: `{cursor}` is not a cursor this API gave"));
    let decode = |s: &str| {
        percent_decode_str(s)
            .decode_utf8()
            .map(|s| s.into_owned())
            .map_err(|_| bad())
    };
    let (client, account) = cursor.split_once('/').ok_or_else(bad)?;
    Ok(accounts::Key {
        client_id: decode(client)?,
        account_id: decode(account)?,
    })
}

async fn accounts_list(
    admin: web::Data<Admin>,
    _: Operator,
    query: web::Query<AccountsQuery>,
) -> Answer {
    Ok(HttpResponse::Ok().json(account_list(&admin, query.into_inner()).await?))
}

/// Which spooled webhooks a listing shows.
#[derive(Debug, Default, Deserialize)]
pub(super) struct SpoolQuery {
    pub account_id: Option<String>,
    pub message_id: Option<String>,
    pub limit: Option<usize>,
    /// `next_cursor` of the page before.
    pub cursor: Option<String>,
}

/// The spool: depth, the oldest entry's age, and a page of its entries in
/// the order they were spooled, those of one account or one message id when
/// asked (reading at most `listing::MAX_EXAMINED` rows per page: a page of a
/// filter may come back short, with a cursor to read on). The spool is
/// local: this answers while RabbitMQ is away, when it matters most.
pub(super) async fn spool_state(
    admin: &Admin,
    query: SpoolQuery,
) -> Result<SpoolState, ConsoleError> {
    let Some(spool) = &admin.spool else {
        return Ok(SpoolState {
            enabled: false,
            contents: None,
        });
    };
    let limit = limit(query.limit, DEFAULT_LIMIT)?;
    let after: Option<i64> = parse("cursor", query.cursor.as_deref())?;
    let oldest = spool
        .oldest_age()
        .await
        .map_err(|err| ConsoleError::Failed(err.into()))?;
    let path = admin.settings.spool.path.clone();
    let (account_id, message_id) = (nonempty(query.account_id), nonempty(query.message_id));
    let page = tokio::task::spawn_blocking(move || {
        listing::page(&path, after, limit, |entry| {
            account_id
                .as_ref()
                .is_none_or(|id| entry.account_id.as_ref() == Some(id))
                && message_id
                    .as_ref()
                    .is_none_or(|id| entry.message_id.as_ref() == Some(id))
        })
    })
    .await
    .map_err(|err| ConsoleError::Failed(err.into()))?
    .map_err(|err| ConsoleError::Failed(err.into()))?;
    Ok(SpoolState {
        enabled: true,
        contents: Some(SpoolContents {
            depth: spool.depth(),
            refused: spool.refused(),
            parked: spool.parked(),
            oldest_age_seconds: oldest.as_ref().map(Duration::as_secs_f64),
            entries: page.listed,
            examined: page.examined,
            next_cursor: page.next.map(|seq| seq.to_string()),
        }),
    })
}

async fn spool(admin: web::Data<Admin>, _: Operator, query: web::Query<SpoolQuery>) -> Answer {
    Ok(HttpResponse::Ok().json(spool_state(&admin, query.into_inner()).await?))
}

/// `POST /api/dead-letters/replay`: some message ids, or all of a reason,
/// a queue or a routing key, or everything with `all`.
#[derive(Debug, Default, Deserialize, JsonSchema)]
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
) -> Result<DeadLettersReplayed, ConsoleError> {
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
    Ok(answer_action(
        admin,
        operator,
        "dead_letters_replay",
        options.dry_run,
        summary,
        entries,
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
#[derive(Debug, Default, Deserialize, JsonSchema)]
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
) -> Result<QuarantineRedriven, ConsoleError> {
    let options = quarantine::Options {
        limit: request.limit,
        dry_run: request.dry_run,
        message_ids: request.message_ids,
    };
    let mut entries = Entries::new();
    let summary =
        quarantine::redrive(&admin.settings, &options, |entry| entries.add(entry)).await?;
    Ok(answer_action(
        admin,
        operator,
        "quarantine_redrive",
        options.dry_run,
        summary,
        entries,
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
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct HistoryReplay {
    #[serde(default)]
    message_ids: Vec<String>,
    /// RFC 3339, or a duration ago (`90m`, `7d`).
    since: Option<String>,
    until: Option<String>,
    account_id: Option<String>,
    /// A topic pattern.
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
        let found = ask_rabbitmq(&admin, async |connection| {
            broker::queue_stats(connection, &[queue.as_str()]).await
        })
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
    Ok(HttpResponse::Ok().json(answer_action(
        &admin,
        &operator,
        "history_replay",
        options.dry_run,
        summary,
        entries,
    )))
}

/// `POST /api/spool/retry`: parked webhooks, by `seq`, or all of them.
#[derive(Debug, Default, Deserialize, JsonSchema)]
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
) -> Result<SpoolRetried, ConsoleError> {
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
    let summary = SpoolRetrySummary {
        marked,
        not_parked: match request.all {
            true => 0,
            false => request.seqs.len().saturating_sub(marked),
        },
    };
    record_action(admin, operator, "spool_retry", false, &summary);
    Ok(SpoolRetried { summary })
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
fn answer_action<S: Serialize, E>(
    admin: &Admin,
    operator: &Operator,
    action: &'static str,
    dry_run: bool,
    summary: S,
    entries: Entries<E>,
) -> Done<S, E> {
    record_action(admin, operator, action, dry_run, &summary);
    Done {
        summary,
        entries: entries.0,
    }
}

/// Logs and counts an action: who, what, and what came of it.
fn record_action(
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
