//! The console's pages: server-rendered HTML from the same data as the API
//! (each page calls the function its API endpoint calls), plain and small
//! enough for a phone at 3 a.m. No build chain: `maud` writes the HTML
//! (escaping every value), and the few buttons that act post JSON to the API
//! with a line of plain JavaScript, after a confirmation.

use actix_web::http::header::ContentType;
use actix_web::{HttpResponse, web};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde::Deserialize;
use serde_json::Value;

use super::Admin;
use super::api::{self, AccountsQuery, EventQuery, EventsQuery};
use super::auth::{ConsoleError, Operator};
use super::health::readiness;
use crate::broker::Topology;

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(overview))
        .route("/events", web::get().to(events))
        .route("/events/{message_id}", web::get().to(event))
        .route("/dead-letters", web::get().to(dead_letters))
        .route("/quarantine", web::get().to(quarantine))
        .route("/accounts", web::get().to(accounts))
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
            style { (PreEscaped(STYLE)) }
            @if script { script { (PreEscaped(SCRIPT)) } }
        }
    }
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

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

async fn overview(admin: web::Data<Admin>, _: Operator) -> Result<HttpResponse, ConsoleError> {
    let (_, ready) = readiness(&admin);
    let rates = admin.rates.snapshot();
    let queues = api::queue_list(&admin).await.ok();
    let status = text(&ready["status"]);
    let body = html! {
        p { "Status: " strong class=(status) { (status) } " · RabbitMQ " (text(&ready["broker"]))
            @if let Some(reason) = ready.get("reason") { " (" (text(reason)) ")" } }
        @if let Some(spool) = ready.get("spool") {
            p { "Spool: " (text(&spool["depth"])) " waiting, " (text(&spool["parked"])) " parked, "
                (text(&spool["refused"])) " refused by RabbitMQ" }
        }
        @if let Some(index) = &admin.index {
            p { "Event index: "
                @if index.caught_up() { "caught up with the history" } @else { "catching up (event searches read the history meanwhile)" } }
        }
        @for conflict in ready["queue_conflicts"].as_array().into_iter().flatten() {
            p .not_ready { "Queue conflict on " (text(&conflict["queue"])) ": " (text(&conflict["reason"])) }
        }
        h2 { "Webhooks per minute (last " (rates.window_seconds) " s)" }
        table { tr { th { "outcome" } th { "per minute" } }
            @for (outcome, rate) in &rates.per_minute {
                tr { td { (outcome) } td { (text(rate)) } }
            }
        }
        h2 { "Queues" }
        @if let Some(queues) = queues {
            table { tr { th { "queue" } th { "role" } th { "messages" } th { "consumers" } th { "problem" } }
                @for queue in queues["queues"].as_array().into_iter().flatten() {
                    tr { td { (text(&queue["name"])) } td { (text(&queue["role"])) }
                         td { (text(&queue["messages"])) } td { (text(&queue["consumers"])) }
                         td .not_ready { (text(&queue["error"])) " " (text(&queue["conflict"])) } }
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
) -> Result<HttpResponse, ConsoleError> {
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
    let next = found["next_cursor"].as_u64();
    let body = html! {
        form method="get" action="/events" {
            input name="account_id" placeholder="account id" value=(value(&form.account_id));
            input name="user_id" placeholder="user id" value=(value(&form.user_id));
            input name="message_id" placeholder="message id" value=(value(&form.message_id));
            button { "Search" }
        }
        table { tr { th { "received" } th { "routing key" } th { "account" } th { "user" } th { "message id" } }
            @for event in found["events"].as_array().into_iter().flatten() {
                tr {
                    td { (text(&event["received_at"])) }
                    td { (text(&event["routing_key"])) }
                    td { (text(&event["account_id"])) }
                    td { (text(&event["user_id"])) }
                    td { a href={ "/events/" (text(&event["message_id"])) } { (text(&event["message_id"])) } }
                }
            }
        }
        @if let Some(next) = next {
            p { a href={ "/events?account_id=" (value(&form.account_id)) "&user_id=" (value(&form.user_id)) "&cursor=" (next) } { "Older events" } }
        }
        p { small { "From the " (text(&found["source"])) "." } }
    };
    Ok(page("Events", body))
}

async fn event(
    admin: web::Data<Admin>,
    operator: Operator,
    path: web::Path<String>,
    query: web::Query<EventQuery>,
) -> Result<HttpResponse, ConsoleError> {
    let found = api::locate_event(&admin, &operator, &path, query.reveal).await?;
    let event = &found["event"];
    let body = html! {
        p { strong { (text(&event["routing_key"])) } " received " (text(&event["received_at"])) }
        h2 { "Where it went" }
        ul {
            @for queue in found["bound_queues"].as_array().into_iter().flatten() {
                li { "bound now: " (text(queue)) }
            }
            @for held in found["held"].as_array().into_iter().flatten() {
                li { (text(&held["queue"])) ": "
                    @if held["found"].is_null() { "not there (searched " (text(&held["searched"])) " of " (text(&held["depth"])) ")" }
                    @else { strong { "held here" } ", reason " (text(&held["found"]["reason"])) }
                }
            }
        }
        h2 { "Headers" }
        pre { (serde_json::to_string_pretty(&event["headers"]).unwrap_or_default()) }
        @if query.reveal {
            h2 { "Body, as received (this reveal is logged)" }
        } @else {
            h2 { "Body (loginName masked: " a href="?reveal=true" { "reveal it" } ", which is logged)" }
        }
        pre { (serde_json::to_string_pretty(&event["body"]).unwrap_or_default()) }
    };
    Ok(page(&format!("Event {}", path.as_str()), body))
}

/// A queue's messages with checkboxes, and the buttons that act on them.
fn messages_table(found: &Value, pickable: bool) -> Markup {
    html! {
        p { "Showing " (text(&found["summary"]["shown"])) " of " (text(&found["summary"]["depth"])) " (all put back in place)." }
        @if found["summary"]["counts_deliveries"] == true {
            p .degraded { "A quorum queue counts deliveries: this look counted one for each message shown ("
                (text(&found["summary"]["pushed_over"])) " pushed over its delivery limit, and so dead-lettered)." }
        }
        table { tr { @if pickable { th {} } th { "message id" } th { "routing key" } th { "reason" } th { "body" } }
            @for message in found["messages"].as_array().into_iter().flatten() {
                tr {
                    @if pickable { td { input type="checkbox" name="pick" value=(text(&message["message_id"])); } }
                    td { a href={ "/events/" (text(&message["message_id"])) } { (text(&message["message_id"])) } }
                    td { (text(&message["routing_key"])) }
                    td { (text(&message["reason"])) }
                    td { code { (message["body"].to_string()) } }
                }
            }
        }
    }
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
) -> Result<HttpResponse, ConsoleError> {
    let found = api::peek(admin, queue, 200).await?;
    let body = html! {
        p { (about) }
        (buttons)
        (messages_table(&found, pickable))
    };
    Ok(page(title, body))
}

async fn dead_letters(admin: web::Data<Admin>, _: Operator) -> Result<HttpResponse, ConsoleError> {
    let queue = Topology::of(&admin.settings).dead_letter_queue().to_owned();
    let buttons = html! {
        button onclick="act('/api/dead-letters/replay', {message_ids: selected()}, 'Replay the selected dead letters to the queues they died in?')" { "Replay selected" }
        button onclick="act('/api/dead-letters/replay', {all: true}, 'Replay EVERY dead letter to the queue it died in?')" { "Replay all" }
    };
    let about = "Replaying sends a dead letter back to the queue it died in only, so only the consumer that failed sees it again.";
    queue_page(&admin, "Dead letters", &queue, about, buttons, true).await
}

async fn quarantine(admin: web::Data<Admin>, _: Operator) -> Result<HttpResponse, ConsoleError> {
    let queue = Topology::of(&admin.settings).quarantine_queue().to_owned();
    let buttons = html! {
        button onclick="act('/api/quarantine/redrive', {dry_run: true}, 'See what would be re-driven?')" { "Dry run" }
        button onclick="act('/api/quarantine/redrive', {message_ids: selected()}, 'Re-drive the selected bodies, if they parse now?')" { "Re-drive selected" }
        button onclick="act('/api/quarantine/redrive', {}, 'Re-drive every body that parses now?')" { "Re-drive all" }
    };
    let about = "Bodies that were not valid events. Re-driving sends on those that parse now (after a fix); the rest stay.";
    queue_page(&admin, "Quarantine", &queue, about, buttons, true).await
}

async fn accounts(
    admin: web::Data<Admin>,
    _: Operator,
    query: web::Query<AccountsQuery>,
) -> Result<HttpResponse, ConsoleError> {
    let found = api::account_list(&admin, query.into_inner()).await?;
    let list = found["accounts"].as_array().cloned().unwrap_or_default();
    let group =
        |state: &str| -> Vec<&Value> { list.iter().filter(|a| a["state"] == state).collect() };
    let table = |rows: Vec<&Value>| {
        html! {
            table { tr { th { "account" } th { "user" } th { "client" } th { "provider" } th { "since" } th { "why" } th { "last event" } }
                @for account in rows {
                    tr { td { a href={ "/events?account_id=" (text(&account["account_id"])) } { (text(&account["account_id"])) } }
                         td { (text(&account["user_id"])) } td { (text(&account["client_id"])) }
                         td { (text(&account["provider"])) } td { (text(&account["since"])) }
                         td { (why(account)) }
                         td { (text(&account["last_event"]["routing_key"])) } }
                }
            }
        }
    };
    let body = html! {
        h2 { "The user must reconnect" }
        (table(group("needs_reconnect")))
        h2 { "The sender's support must look" }
        (table(group("contact_provider")))
        h2 { "Retrying (temporary failures)" }
        (table(group("retrying")))
        p { small { (list.len()) " of " (text(&found["total"])) " accounts shown; the others are ok." } }
    };
    Ok(page("Accounts", body))
}

/// Why an account is in its state, in its state's own fields.
fn why(account: &Value) -> String {
    let parts = [
        &account["reason"],
        &account["because"]["reason"],
        &account["because"]["code"],
        &account["code"],
    ];
    let words: Vec<String> = parts
        .into_iter()
        .filter(|part| !part.is_null())
        .map(text)
        .collect();
    words.join(" ")
}

async fn spool(admin: web::Data<Admin>, _: Operator) -> Result<HttpResponse, ConsoleError> {
    let found = api::spool_state(&admin).await?;
    let body = html! {
        @if found["enabled"] == false { p { "The spool is off." } } @else {
            p { (text(&found["depth"])) " waiting, " (text(&found["parked"])) " parked; oldest "
                (text(&found["oldest_age_seconds"])) " s old." }
            button onclick="act('/api/spool/retry', {all: true}, 'Send every parked webhook again?')" { "Retry all parked" }
            table { tr { th { "seq" } th { "state" } th { "routing key" } th { "spooled" } th { "last error" } th {} }
                @for entry in found["entries"].as_array().into_iter().flatten() {
                    tr { td { (text(&entry["seq"])) } td { (text(&entry["state"])) }
                         td { (text(&entry["routing_key"])) } td { (text(&entry["spooled_at"])) }
                         td { (text(&entry["last_error"])) }
                         td { @if entry["state"] == "parked" {
                             button onclick={ "act('/api/spool/retry', {seqs: [" (text(&entry["seq"])) "]}, 'Send this parked webhook again?')" } { "Retry" }
                         } } }
                }
            }
        }
    };
    Ok(page("Spool", body))
}
