//! The console's pages: server-rendered HTML from the same data as the API
//! (each page calls the function its API endpoint calls), plain and small
//! enough for a phone at 3 a.m. No build chain: `maud` writes the HTML
//! (escaping every value), and the few buttons that act post JSON to the API
//! with a line of plain JavaScript, after a confirmation.

use actix_web::http::header::ContentType;
use actix_web::{HttpResponse, web};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde::Deserialize;

use super::Admin;
use super::answers::Messages;
use super::api::{self, AccountsQuery, EventQuery, EventsQuery, Look, ProvidersQuery, Search};
use super::auth::{ConsoleError, Operator};
use super::charts::{self, Bar};
use super::health::readiness;
use crate::accounts::State;
use crate::spool::listing;
use crate::wire::account::{Reason, StateName};
use tracing::info;

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(overview))
        .route("/events", web::get().to(events))
        .route("/events/{message_id}", web::get().to(event))
        .route("/events/{message_id}", web::post().to(event_searched))
        .route("/dead-letters", web::get().to(dead_letters))
        .route("/dead-letters", web::post().to(dead_letters_looked))
        .route("/quarantine", web::get().to(quarantine))
        .route("/quarantine", web::post().to(quarantine_looked))
        .route("/accounts", web::get().to(accounts))
        .route("/providers", web::get().to(providers))
        .route("/accounts/{client_id}/{account_id}", web::get().to(account))
        .route("/spool", web::get().to(spool));
}

const STYLE: &str = "
body{font:15px/1.4 system-ui,sans-serif;margin:0;color:#222}
nav{background:#223;padding:.5em;display:flex;flex-wrap:wrap;gap:.8em;align-items:center}
nav a{color:#fff;text-decoration:none}nav form{margin-left:auto}
main{padding:.8em;max-width:70em}
table{border-collapse:collapse;width:100%;font-size:13px}
td,th{border-bottom:1px solid #ddd;padding:.3em;text-align:left;vertical-align:top;word-break:break-all}
.ready{color:#070}.degraded{color:#a60}.not_ready{color:#b00}
pre{background:#f4f4f4;padding:.5em;overflow-x:auto;font-size:12px}
input,select,button{font-size:15px;padding:.3em;margin:.1em}
.result{background:#eef;padding:.5em;white-space:pre-wrap}.result:empty{display:none}
";

/// Posts JSON to the API, shows the answer, offers a reload.
const SCRIPT: &str = r#"
async function act(path, body, question) {
  if (!confirm(question)) return;
  const out = document.getElementById('result');
  out.textContent = 'working...';
  const response = await fetch(path, {method: 'POST', headers: {'content-type': 'application/json'}, body: JSON.stringify(body)});
  const answer = await response.json();
  const said = answer.summary ? Object.entries(answer.summary).map(([k, v]) => k.replace('_', ' ') + ' ' + v).join(', ') : answer.reason;
  out.textContent = (response.ok ? 'Done: ' : 'Refused: ') + said + '. Reload the page to see what is left.';
}
function selected() {
  return Array.from(document.querySelectorAll('input[name=pick]:checked')).map(box => box.value);
}
"#;

/// A page's `<head>`; the script only where there is something to act on.
fn head(title: &str, script: bool) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { "hookrelay: " (title) }
            style { (PreEscaped(STYLE)) (PreEscaped(charts::STYLE)) }
            @if script { script { (PreEscaped(SCRIPT)) } }
        }
    }
}

/// A console error, answered as a page (the same status, the reason in
/// words, and what to do) rather than the API's JSON: a page is what an
/// operator opened.
#[derive(Debug)]
pub(super) struct PageError(ConsoleError);

impl From<ConsoleError> for PageError {
    fn from(err: ConsoleError) -> PageError {
        PageError(err)
    }
}

impl std::fmt::Display for PageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl actix_web::ResponseError for PageError {
    fn status_code(&self) -> actix_web::http::StatusCode {
        self.0.status_code()
    }

    fn error_response(&self) -> HttpResponse {
        if matches!(self.0, ConsoleError::Unauthorized { .. }) {
            return self.0.error_response();
        }
        let hint = match self.0.status_code().as_u16() {
            502 => {
                "RabbitMQ could not be asked. What is local still answers: the Events page from the relay's index (once it has caught up), the Spool page, the Accounts page."
            }
            503 => "The relay is still reading its history; this page answers in a moment.",
            _ => "",
        };
        let body = html! {
            p .not_ready { (self.0.to_string()) }
            @if !hint.is_empty() { p { (hint) } }
        };
        let mut response = page("Not now", body);
        *response.status_mut() = self.0.status_code();
        response
    }
}

/// A value for a link's query string: an id with `&`, `#`, `+` or `%` in
/// it must reach the next page as it is.
fn encoded(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn page(title: &str, body: Markup) -> HttpResponse {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, true))
            body {
                nav {
                    a href="/" { "Overview" }
                    a href="/events" { "Events" }
                    a href="/dead-letters" { "Dead letters" }
                    a href="/quarantine" { "Quarantine" }
                    a href="/accounts" { "Accounts" }
                    a href="/providers" { "Providers" }
                    a href="/spool" { "Spool" }
                    form method="post" action="/logout" { button { "Log out" } }
                }
                main {
                    h1 { (title) }
                    div #result .result {}
                    (body)
                }
            }
        }
    };
    HttpResponse::Ok()
        .content_type(ContentType::html())
        .body(markup.into_string())
}

/// The login form, with what went wrong if anything.
pub(super) fn login(problem: Option<&str>) -> HttpResponse {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            (head("log in", false))
            body { main {
                h1 { "hookrelay console" }
                @if let Some(problem) = problem { p .not_ready { (problem) } }
                form method="post" action="/login" {
                    label { "Admin token " input type="password" name="token" autofocus autocomplete="current-password"; }
                    button { "Log in" }
                }
            } }
        }
    };
    HttpResponse::Ok()
        .content_type(ContentType::html())
        .body(markup.into_string())
}

/// A value that may be missing, as a cell shows it: `-` when it is.
fn or_dash(value: Option<impl std::fmt::Display>) -> String {
    value.map_or_else(|| "-".to_owned(), |value| value.to_string())
}

async fn overview(admin: web::Data<Admin>, _: Operator) -> Result<HttpResponse, PageError> {
    let ready = readiness(&admin);
    let rates = admin.rates.snapshot();
    let queues = api::queue_list(&admin).await.ok();
    // Both from the relay's store, once it answers for the accounts.
    let incidents = api::provider_list(&admin, ProvidersQuery { limit: Some(1) })
        .await
        .ok();
    let (by_state, silent_clients) = match (&admin.derived, &incidents) {
        (Some(derived), Some(_)) => derived
            .read(|store| Ok((store.count_by_state()?, store.silent_clients()?)))
            .await
            .ok()
            .unzip(),
        _ => (None, None),
    };
    let last_hour = admin.rates.last_hour();
    let refused_last_hour = |outcome: &str| -> u64 {
        last_hour
            .iter()
            .flatten()
            .filter(|(name, _)| *name == outcome)
            .map(|(_, count)| count)
            .sum()
    };
    let status: &str = ready.status.into();
    let body = html! {
        p { "Status: " strong class=(status) { (status) } " · RabbitMQ " (ready.broker)
            @if let Some(reason) = &ready.reason { " (" (reason) ")" } }
        @if let Some(spool) = &ready.spool {
            p { "Spool: " (spool.depth) " waiting, " (spool.parked) " parked, "
                (spool.refused) " refused by RabbitMQ" }
        }
        @if let Some(follower) = &ready.history_follower {
            p { "History follower: "
                @if follower.caught_up { "caught up with the history" } @else { "catching up (event searches read the history, accounts wait, meanwhile)" } }
        }
        @if let Some(audit) = &ready.audit {
            p class=(if audit.missing > 0 { "not_ready" } else { "" }) { "Audit (relay " (audit.relay_id) "): stored since start " (audit.stored_since_start)
                @if let Some(read) = audit.in_the_history_since_start { "; read back from the history " (read) }
                "; in the spool " (ready.spool.as_ref().map_or(0, |spool| spool.depth))
                "; missing " (audit.missing)
                @if audit.missing > 0 { " (run hookrelay audit)" } }
        }
        @for notice in &ready.upgrade {
            p .not_ready { "Upgrade: " (notice) }
        }
        @for conflict in &ready.queue_conflicts {
            p .not_ready { "Queue conflict on " (or_dash(conflict.queue.as_ref())) ": " (conflict.reason) }
        }
        @if let Some(silent) = silent_clients.as_ref().filter(|s| !s.is_empty()) {
            h2 .not_ready { "Silent accounts, by client" }
            p { "No webhook for accounts.silent_after: if most of a client's accounts are here, the sender stopped sending to us (its plan, its webhook URL, its addresses: forbidden requests in the last hour " (refused_last_hour("forbidden")) ", wrong client id " (refused_last_hour("unauthorized")) ")." }
            table { tr { th { "client" } th { "silent accounts" } }
                @for (client, count) in silent {
                    tr { td { a href={ "/accounts?state=silent&client_id=" (encoded(client)) } { (client) } } td { (count) } }
                }
            }
        }
        @if let Some(found) = &incidents {
            @let open: Vec<_> = found.incidents.iter().filter(|i| i.resolved_at.is_none()).collect();
            @if !open.is_empty() {
                h2 .not_ready { "Provider incidents open" }
                (incidents_table(&open))
                p { a href="/providers" { "Every provider" } }
            }
        }
        div .charts {
            section { h2 { "Webhooks per minute, the last hour" }
                div #minutes { (charts::columns(&last_hour, ("an hour ago", "now"))) } }
            @if let Some(by_state) = &by_state {
                section { h2 { "Accounts by state" }
                    (charts::horizontal(&by_state.iter().map(|(state, count)| Bar {
                        label: state.as_str().to_owned(),
                        parts: vec![(state.as_str(), *count)],
                        href: Some(format!("/accounts?state={}", state.as_str())),
                    }).collect::<Vec<_>>())) }
            }
            section { h2 { "Webhooks per hour, the last 24 hours" }
                div #hours { (charts::columns(&admin.rates.last_day(), ("a day ago", "this hour"))) } }
            section { h2 { "Events by routing key, since the start" }
                div #keys { (charts::horizontal(&admin.metrics.events_by_key().into_iter().map(|(key, count)| Bar {
                    label: key.to_owned(),
                    parts: vec![(match key.strip_prefix("sync.error.") {
                        Some(code) => charts::code_class(code),
                        None => "ok",
                    }, count)],
                    href: None,
                }).collect::<Vec<_>>())) } }
            section { h2 { "The spool's depth, each minute of the last hour" }
                div #spool { (charts::columns(&admin.rates.spool_last_hour(), ("an hour ago", "now"))) } }
            @if let Some(found) = &incidents {
                @if found.incidents.iter().all(|i| i.resolved_at.is_some()) {
                    section { h2 { "Provider incidents open" }
                        p { "None: no provider's accounts are failing together. " a href="/providers" { "Every provider" } } }
                }
            }
        }
        h2 { "Webhooks per minute (last " (rates.window_seconds) " s)" }
        table { tr { th { "outcome" } th { "per minute" } }
            @for (outcome, rate) in &rates.per_minute {
                tr { td { (outcome) } td { (rate) } }
            }
        }
        h2 { "Queues" }
        @if let Some(queues) = queues {
            table { tr { th { "queue" } th { "role" } th { "messages" } th { "consumers" } th { "problem" } }
                @for queue in &queues.queues {
                    tr { td { (queue.name) } td { (<&str>::from(queue.role)) }
                         td { (or_dash(queue.messages)) } td { (or_dash(queue.consumers)) }
                         td .not_ready { (queue.error.as_deref().unwrap_or_default()) " "
                             @if let Some(conflict) = &queue.conflict { (conflict.object) ": " (conflict.reason) } } }
                }
            }
        } @else { p .not_ready { "RabbitMQ cannot be asked right now." } }
    };
    Ok(page("Overview", body))
}

#[derive(Deserialize)]
struct EventsForm {
    account_id: Option<String>,
    user_id: Option<String>,
    message_id: Option<String>,
    cursor: Option<u64>,
}

async fn events(
    admin: web::Data<Admin>,
    _: Operator,
    form: web::Query<EventsForm>,
) -> Result<HttpResponse, PageError> {
    let form = form.into_inner();
    let value = |v: &Option<String>| v.clone().unwrap_or_default();
    let query = EventsQuery {
        account_id: form.account_id.clone(),
        user_id: form.user_id.clone(),
        message_id: form.message_id.clone(),
        cursor: form.cursor,
        ..EventsQuery::default()
    };
    let found = api::search_events(&admin, query).await?;
    let next = found.next_cursor;
    let body = html! {
        form method="get" action="/events" {
            input name="account_id" placeholder="account id" value=(value(&form.account_id));
            input name="user_id" placeholder="user id" value=(value(&form.user_id));
            input name="message_id" placeholder="message id" value=(value(&form.message_id));
            button { "Search" }
        }
        table { tr { th { "received" } th { "routing key" } th { "account" } th { "user" } th { "message id" } }
            @for event in &found.events {
                tr {
                    td { (or_dash(event.received_at.as_ref())) }
                    td { (event.routing_key) }
                    td { (or_dash(event.account_id.as_ref())) }
                    td { (or_dash(event.user_id.as_ref())) }
                    td { a href={ "/events/" (or_dash(event.message_id.as_ref())) } { (or_dash(event.message_id.as_ref())) } }
                }
            }
        }
        @if let Some(next) = next {
            p { a href={ "/events?account_id=" (encoded(&value(&form.account_id))) "&user_id=" (encoded(&value(&form.user_id))) "&cursor=" (next) } { "Older events" } }
        }
        p { small { "From the " (<&str>::from(found.source)) "." } }
        @if let Some(behind) = &found.behind { p .degraded { (behind) } }
    };
    Ok(page("Events", body))
}

async fn event(
    admin: web::Data<Admin>,
    operator: Operator,
    path: web::Path<String>,
    query: web::Query<EventQuery>,
) -> Result<HttpResponse, PageError> {
    event_page(&admin, &operator, &path, query.reveal, Search::NotSearched).await
}

/// The page after "look for it": a POST, as the search takes each message
/// of the queues searched and puts it back.
async fn event_searched(
    admin: web::Data<Admin>,
    operator: Operator,
    path: web::Path<String>,
    query: web::Query<EventQuery>,
) -> Result<HttpResponse, PageError> {
    info!(by = %operator, message_id = %path, "console: searched the queues that may hold an event");
    event_page(&admin, &operator, &path, query.reveal, Search::Searched).await
}

async fn event_page(
    admin: &Admin,
    operator: &Operator,
    path: &str,
    reveal: bool,
    search: Search,
) -> Result<HttpResponse, PageError> {
    let found = api::locate_event(admin, operator, path, reveal, search).await?;
    let event = &found.event;
    let body = html! {
        p { strong { (event.routing_key) } " received " (or_dash(event.received_at.as_ref())) }
        h2 { "Where it went" }
        p { small { "Queues bound to its routing key now, from " (found.bound_queues_from) ":" } }
        ul {
            @for queue in &found.bound_queues {
                li { "bound now: " (queue) }
            }
            @if found.bound_queues.is_empty() {
                li { "no queue is bound to it now" }
            }
        }
        p { small { "Where it may be held:" } }
        @if search == Search::NotSearched {
            form method="post" {
                button type="submit" { "Look for it in the dead letters, the quarantine and the unrouted queue" }
                " (each message looked at is taken and put back)"
            }
        }
        ul {
            @for held in found.held.iter().flatten() {
                li { (held.queue) ": "
                    @if let Some(why) = &held.not_searched { "not searched (" (why) ")" }
                    @else if let Some(here) = &held.found { strong { "held here" } ", reason " (or_dash(here.reason.as_ref())) }
                    @else { "not there (searched " (held.searched) " of " (or_dash(held.depth)) ")" }
                }
            }
        }
        h2 { "Headers" }
        pre { (serde_json::to_string_pretty(&event.headers).unwrap_or_default()) }
        @if reveal {
            h2 { "Body, as received (this reveal is logged)" }
        } @else {
            h2 { "Body (loginName masked: " a href="?reveal=true" { "reveal it" } ", which is logged)" }
        }
        pre { (pretty(&event.body)) }
    };
    Ok(page(&format!("Event {path}"), body))
}

/// A queue's messages with checkboxes, and the buttons that act on them.
fn messages_table(found: &Messages, pickable: bool) -> Markup {
    let summary = &found.summary;
    html! {
        @if let Some(look) = &found.look {
            p { (summary.depth) " messages. " (look) }
            form method="post" { button type="submit" { "Look at them" } }
        } @else {
            p { "Showing " (summary.shown) " of " (summary.depth) " (all put back in place)." }
        }
        @if summary.counts_deliveries {
            p .degraded { "A quorum queue counts deliveries: this look counted one for each message shown ("
                (summary.pushed_over) " pushed over its delivery limit, and so dead-lettered)." }
        }
        table { tr { @if pickable { th {} } th { "message id" } th { "routing key" } th { "reason" } th { "body" } }
            @for message in &found.messages {
                tr {
                    @if pickable { td { input type="checkbox" name="pick" value=(or_dash(message.message_id.as_ref())); } }
                    td { a href={ "/events/" (or_dash(message.message_id.as_ref())) } { (or_dash(message.message_id.as_ref())) } }
                    td { (message.routing_key) }
                    td { (or_dash(message.reason.as_ref())) }
                    td { code { (message.body.get()) } }
                }
            }
        }
    }
}

/// A body as JSON, indented, or as it is when it is not JSON.
fn pretty(body: &serde_json::value::RawValue) -> String {
    serde_json::from_str::<serde_json::Value>(body.get())
        .and_then(|value| serde_json::to_string_pretty(&value))
        .unwrap_or_else(|_| body.get().to_owned())
}

/// A queue of the relay's with its messages, what it is for, and the
/// buttons that act on it.
async fn queue_page(
    admin: &Admin,
    title: &str,
    queue: &str,
    about: &str,
    buttons: Markup,
    pickable: bool,
    look: Look,
) -> Result<HttpResponse, PageError> {
    let found = api::peek(admin, queue, 200, look).await?;
    let body = html! {
        p { (about) }
        (buttons)
        (messages_table(&found, pickable))
    };
    Ok(page(title, body))
}

async fn dead_letters(admin: web::Data<Admin>, _: Operator) -> Result<HttpResponse, PageError> {
    dead_letters_page(&admin, Look::Depth).await
}

/// The page after "look at them" on a quorum queue: a POST, as it counts a
/// delivery of each message shown.
async fn dead_letters_looked(
    admin: web::Data<Admin>,
    operator: Operator,
) -> Result<HttpResponse, PageError> {
    info!(by = %operator, "console: looked at the dead letters, counting deliveries");
    dead_letters_page(&admin, Look::Messages).await
}

async fn dead_letters_page(admin: &Admin, look: Look) -> Result<HttpResponse, PageError> {
    let queue = admin.topology().dead_letter_queue().to_owned();
    let buttons = html! {
        button onclick="act('/api/dead-letters/replay', {message_ids: selected()}, 'Replay the selected dead letters to the queues they died in?')" { "Replay selected" }
        button onclick="act('/api/dead-letters/replay', {all: true}, 'Replay EVERY dead letter to the queue it died in?')" { "Replay all" }
    };
    let about = "Replaying sends a dead letter back to the queue it died in only, so only the consumer that failed sees it again.";
    queue_page(admin, "Dead letters", &queue, about, buttons, true, look).await
}

async fn quarantine(admin: web::Data<Admin>, _: Operator) -> Result<HttpResponse, PageError> {
    quarantine_page(&admin, Look::Depth).await
}

async fn quarantine_looked(
    admin: web::Data<Admin>,
    operator: Operator,
) -> Result<HttpResponse, PageError> {
    info!(by = %operator, "console: looked at the quarantine, counting deliveries");
    quarantine_page(&admin, Look::Messages).await
}

async fn quarantine_page(admin: &Admin, look: Look) -> Result<HttpResponse, PageError> {
    let queue = admin.topology().quarantine_queue().to_owned();
    let buttons = html! {
        button onclick="act('/api/quarantine/redrive', {dry_run: true}, 'See what would be re-driven?')" { "Dry run" }
        button onclick="act('/api/quarantine/redrive', {message_ids: selected()}, 'Re-drive the selected bodies, if they parse now?')" { "Re-drive selected" }
        button onclick="act('/api/quarantine/redrive', {}, 'Re-drive every body that parses now?')" { "Re-drive all" }
    };
    let about = "Bodies that were not valid events. Re-driving sends on those that parse now (after a fix); the rest stay.";
    queue_page(admin, "Quarantine", &queue, about, buttons, true, look).await
}

/// Who needs whom: a section per state that needs someone, each a page of
/// accounts; `?state=` shows one state, a page at a time (`cursor`).
async fn accounts(
    admin: web::Data<Admin>,
    _: Operator,
    query: web::Query<AccountsQuery>,
) -> Result<HttpResponse, PageError> {
    const SECTIONS: [(StateName, &str); 5] = [
        (StateName::NeedsReconnect, "The user must reconnect"),
        (StateName::ContactProvider, "The sender's support must look"),
        (
            StateName::Unknown,
            "An error code the sender does not document",
        ),
        (
            StateName::Silent,
            "Silent (no event for accounts.silent_after: is the sender still syncing them?)",
        ),
        (
            StateName::Retrying,
            "Retrying (temporary failures, retried by the sender)",
        ),
    ];
    const PER_SECTION: usize = 100;
    let query = query.into_inner();
    let shown: Vec<(StateName, &str)> = match query.state {
        Some(state) => vec![(
            state,
            SECTIONS
                .iter()
                .find(|(s, _)| *s == state)
                .map_or("Synced", |(_, title)| title),
        )],
        None => SECTIONS.to_vec(),
    };
    let mut sections = Vec::new();
    for (state, title) in shown {
        let page = api::account_list(
            &admin,
            AccountsQuery {
                state: Some(state),
                limit: Some(query.limit.unwrap_or(PER_SECTION)),
                cursor: query.cursor.clone().filter(|_| query.state.is_some()),
                client_id: query.client_id.clone(),
                provider: query.provider.clone(),
                since: query.since.clone(),
            },
        )
        .await?;
        sections.push((state, title, page));
    }
    let body = html! {
        @for (state, title, page) in &sections {
            h2 { (title) }
            table { tr { th { "account" } th { "user" } th { "client" } th { "provider" } th { "since" } th { "why" } th { "streak" } th { "last event" } }
                @for account in &page.accounts {
                    tr { td { a href={ "/accounts/" (encoded(&account.key.client_id)) "/" (encoded(&account.key.account_id)) } { (account.key.account_id) } }
                         td { (account.user_id) } td { (account.key.client_id) }
                         td { (or_dash(account.provider.as_ref())) } td { (or_dash(account.since.as_ref())) }
                         td { (why(&account.state)) } td { (account.streak) }
                         td { (account.last_event.routing_key) " " (or_dash(account.last_event.received_at.as_ref())) } }
                }
            }
            @if let Some(cursor) = &page.next_cursor {
                p { a href={ "/accounts?state=" (state.as_str()) "&cursor=" (encoded(cursor))
                    @if let Some(client) = &query.client_id { "&client_id=" (encoded(client)) }
                    @if let Some(provider) = &query.provider { "&provider=" (encoded(provider)) } } { "more" } }
            }
        }
        p { small { "Accounts that are ok are not listed; " a href="/accounts?state=ok" { "list them" } "." } }
    };
    Ok(page("Accounts", body))
}

/// One account: its state now, and its timeline (the state each of its
/// latest events left it in), from the relay's store and index.
async fn account(
    admin: web::Data<Admin>,
    _: Operator,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, PageError> {
    const SHOWN: usize = 200;
    let (client_id, account_id) = path.into_inner();
    let (entry, steps) = api::account_timeline(&admin, &client_id, &account_id, SHOWN).await?;
    let body = html! {
        @match &entry {
            None => p .not_ready { "The relay's store has no account " (account_id) " of " (client_id) "." },
            Some(entry) => {
                p { "Client " (entry.key.client_id) " · user " (entry.user_id) " · provider " (or_dash(entry.provider.as_ref())) }
                p { "Now: " strong { (entry.state.name()) } " " (why(&entry.state)) " since " (or_dash(entry.since.as_ref()))
                    @if entry.streak > 0 { " · " (entry.streak) " temporary failures in a row" } }
            }
        }
        h2 { "Timeline, newest first" }
        @if steps.is_empty() { p { "No event of it in the relay's index (the console's index follows the history; it holds what the stream still keeps)." } }
        table { tr { th { "received" } th { "event" } th { "state after it" } th { "" } }
            @for step in steps.iter().rev() {
                tr { td { (or_dash(step.event.received_at.as_ref())) }
                     td { a href={ "/events/" (encoded(&step.event.message_id)) } { (step.event.routing_key) } }
                     td { (step.entry.state.name()) " " (why(&step.entry.state)) }
                     td { @if step.late { "late: older than an event applied before it, changed nothing" }
                          @else if step.changed { strong { "changed" } } } }
            }
        }
        @if steps.len() == SHOWN { p { small { "Its latest " (SHOWN) " events (the state of the oldest shown as if it were its first)." } } }
        p { a href={ "/events?account_id=" (encoded(&account_id)) } { "Its events, and where each went" } }
    };
    Ok(page(&format!("Account {account_id}"), body))
}

/// Each provider's accounts by state, and the provider incidents.
async fn providers(admin: web::Data<Admin>, _: Operator) -> Result<HttpResponse, PageError> {
    const SHOWN: usize = 50;
    let found = api::provider_list(&admin, ProvidersQuery { limit: Some(SHOWN) }).await?;
    let bars: Vec<Bar> = found
        .providers
        .iter()
        .map(|provider| Bar {
            label: provider.provider.clone(),
            parts: StateName::ALL
                .iter()
                .map(|state| {
                    let count = provider.by_state.get(state.as_str()).copied().unwrap_or(0);
                    (state.as_str(), count)
                })
                .collect(),
            href: Some(format!(
                "/accounts?provider={}",
                encoded(&provider.provider)
            )),
        })
        .collect();
    let errors: Vec<Bar> = found
        .providers
        .iter()
        .filter(|provider| !provider.errors_24h.is_empty())
        .map(|provider| {
            let mut parts: Vec<(&'static str, u64)> = Vec::new();
            for (code, count) in &provider.errors_24h {
                let class = charts::code_class(code);
                match parts.iter_mut().find(|(c, _)| *c == class) {
                    Some((_, sum)) => *sum += count,
                    None => parts.push((class, *count)),
                }
            }
            Bar {
                label: provider.provider.clone(),
                parts,
                href: Some(format!(
                    "/accounts?provider={}",
                    encoded(&provider.provider)
                )),
            }
        })
        .collect();
    let incidents: Vec<_> = found.incidents.iter().collect();
    let body = html! {
        h2 { "Provider incidents" }
        @if incidents.is_empty() { p { "None yet: no provider's accounts failed together." } }
        @else { (incidents_table(&incidents)) }
        h2 { "Accounts by provider and state" }
        p .legend { @for state in StateName::ALL { span { svg width="10" height="10" { rect class=(state.as_str()) width="10" height="10" {} } " " (state.as_str()) } } }
        (charts::horizontal(&bars))
        h2 { "Errors in the last 24 hours, by provider and code" }
        @if errors.is_empty() { p { "None." } } @else {
            p .legend { @for code in charts::CODES { span { svg width="10" height="10" { rect class=(code) width="10" height="10" {} } " " (code) } } }
            div #errors { (charts::horizontal(&errors)) }
        }
        @if found.providers.len() == SHOWN { p { small { "The " (SHOWN) " providers whose accounts need someone most." } } }
    };
    Ok(page("Providers", body))
}

fn incidents_table(incidents: &[&crate::derived::incidents::Incident]) -> Markup {
    html! {
        table { tr { th { "provider" } th { "code" } th { "accounts" } th { "synced again" } th { "first failure" } th { "opened" } th { "resolved" } }
            @for incident in incidents {
                tr .incident data-provider=(incident.provider) {
                    td { a href={ "/accounts?provider=" (encoded(&incident.provider)) } { (incident.provider) } }
                    td { (incident.code) } td { (incident.accounts) } td { (incident.recovered) }
                    td { (incident.first_seen) } td { (incident.opened_at) }
                    td { @match &incident.resolved_at {
                        Some(at) => { (at) " (" (incident.resolved_by.as_deref().unwrap_or_default().replace('_', " ")) ", " (incident.duration_seconds.unwrap_or(0)) " s)" },
                        None => strong .not_ready { "open" },
                    } }
                }
            }
        }
    }
}

/// Why an account is in its state: its reason and the error code behind it.
fn why(state: &State) -> String {
    let reason = state.reason().map(Reason::as_str);
    [reason, state.code()]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ")
}

/// What waits in the spool, searchable by account or message id: the
/// spool is local, so this answers while RabbitMQ is away.
async fn spool(
    admin: web::Data<Admin>,
    _: Operator,
    query: web::Query<api::SpoolQuery>,
) -> Result<HttpResponse, PageError> {
    let query = query.into_inner();
    let (account, message) = (
        query.account_id.clone().unwrap_or_default(),
        query.message_id.clone().unwrap_or_default(),
    );
    let found = api::spool_state(&admin, query).await?;
    let body = html! {
        @if let Some(found) = &found.contents {
            p { (found.depth) " waiting, " (found.parked) " parked; oldest "
                (or_dash(found.oldest_age_seconds)) " s old." }
            form method="get" {
                input name="account_id" placeholder="account id" value=(account);
                input name="message_id" placeholder="message id" value=(message);
                button type="submit" { "Find" }
            }
            button onclick="act('/api/spool/retry', {all: true}, 'Send every parked webhook again?')" { "Retry all parked" }
            table { tr { th { "seq" } th { "state" } th { "message id" } th { "account" } th { "routing key" } th { "spooled" } th { "last error" } th {} }
                @for entry in &found.entries {
                    tr { td { (entry.seq) } td { (<&str>::from(entry.state)) }
                         td { (or_dash(entry.message_id.as_ref())) } td { (or_dash(entry.account_id.as_ref())) }
                         td { (or_dash(entry.routing_key.as_ref())) } td { (entry.spooled_at) }
                         td { (or_dash(entry.last_error.as_ref())) }
                         td { @if entry.state == listing::State::Parked {
                             button onclick={ "act('/api/spool/retry', {seqs: [" (entry.seq) "]}, 'Send this parked webhook again?')" } { "Retry" }
                         } } }
                }
            }
            @if let Some(next) = &found.next_cursor {
                p { a href={ "/spool?account_id=" (encoded(&account)) "&message_id=" (encoded(&message)) "&cursor=" (next) } { "Next page" } }
            }
        } @else { p { "The spool is off." } }
    };
    Ok(page("Spool", body))
}
