//! `docs/openapi.yaml`, the console API's contract, generated: the paths,
//! their parameters and refusals are written here, beside each other; every
//! body and answer's schema comes from the type the handler takes or
//! answers (`admin::answers`, the request bodies of `admin::api`). So
//! the document cannot say what the code does not:
//! `cargo run --example openapi > docs/openapi.yaml` writes it, and a test
//! fails while the committed file differs. CI runs schemathesis with it
//! against a live relay.

use schemars::generate::{Contract, SchemaGenerator, SchemaSettings};
use schemars::{JsonSchema, Schema};
use serde_json::{Map, Value, json};

use super::answers::{
    AccountPage, DeadLettersReplayed, EventPage, HistoryReplayed, Journey, Messages, Providers,
    QuarantineRedriven, Queues, Refusal, SpoolRetried, SpoolState, Status,
};
use super::api::{
    DEFAULT_LIMIT, DeadLetterReplay, HistoryReplay, LOCATE_DEPTH, LookBody, MAX_LIMIT, Redrive,
    SpoolRetry,
};
use crate::spool::listing::MAX_EXAMINED;

/// What the document says before its paths.
const ABOUT: &str = "The operator console's JSON API, on the relay's admin listener (`server.admin_listen`), on only when `admin.token` (or `admin.token_file`) is set. Every endpoint takes `Authorization: Bearer <token>`; a missing or wrong token gets 401 and is counted in `hookrelay_console_unauthorized_total`, and too many from one address get 429. A `POST` that carries an `Origin` other than the console's own (`admin.public_origin`, else its host) gets 403 (from a browser session, an `Origin` is required). Every refusal is JSON: `{\"error\": <code>, \"reason\": <text>}`.\n\nEach endpoint calls the library function the CLI calls for the same operation (`hookrelay events`, `inspect`, `accounts`, `replay`, `spool list|retry`) and answers what the CLI prints with `--json`. `user.loginName` is masked (`[redacted]`) unless one event is asked for with `reveal=true`, which is logged with who asked. A `GET` changes nothing, on the relay or on RabbitMQ.\n\nGenerated from hookrelay's Rust types (src/admin/openapi.rs, src/admin/answers.rs): do not edit by hand. CI runs schemathesis against a live relay with this file (`.ci/run`): no answer may be a 5xx, and every answer must match its schema.";

/// The OpenAPI 3.1 document of the console's API.
///
/// ```
/// let document = hookrelay::openapi::document();
/// assert_eq!(document["openapi"], "3.1.0");
/// assert!(document["components"]["schemas"]["Journey"].is_object());
/// ```
pub fn document() -> Value {
    let generator = |contract| {
        SchemaGenerator::new(SchemaSettings::draft2020_12().with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.contract = contract;
        }))
    };
    let mut doc = Doc {
        answers: generator(Contract::Serialize),
        bodies: generator(Contract::Deserialize),
    };
    let paths = paths(&mut doc);
    doc.answers.subschema_for::<Refusal>();
    let mut schemas = doc.answers.take_definitions(true);
    let bodies = doc.bodies.take_definitions(true);
    // A type both sent and taken would be described twice, once per
    // contract: none is, and this keeps it so.
    assert!(
        bodies.keys().all(|name| !schemas.contains_key(name)),
        "a type is both an answer and a request body"
    );
    schemas.extend(bodies);
    schemas.sort_keys();
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "hookrelay console API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": ABOUT,
        },
        "servers": [{"url": "http://127.0.0.1:9090"}],
        "security": [{"token": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "token": {"type": "http", "scheme": "bearer", "description": "The relay's `admin.token`"},
            },
            "responses": refusal_responses(),
            "schemas": schemas,
        },
    })
}

/// The generators every schema of the document comes from, so that each
/// type is described once, under `#/components/schemas`: an answer as the
/// relay serialises it (a field it leaves out when empty is not required),
/// a request body as it deserialises one (a field with a default is not
/// required).
struct Doc {
    answers: SchemaGenerator,
    bodies: SchemaGenerator,
}

impl Doc {
    /// A 200 that answers `T`.
    fn answer<T: JsonSchema>(&mut self, description: &str) -> Value {
        let schema: Schema = self.answers.subschema_for::<T>();
        json!({
            "description": description,
            "content": {"application/json": {"schema": schema}},
        })
    }

    /// A JSON request body of type `T`.
    fn body<T: JsonSchema>(&mut self, required: bool) -> Value {
        let schema: Schema = self.bodies.subschema_for::<T>();
        json!({
            "required": required,
            "content": {"application/json": {"schema": schema}},
        })
    }
}

/// Every refusal the API gives, by the HTTP status it comes with.
const REFUSALS: [(&str, &str, &str); 8] = [
    (
        "400",
        "BadRequest",
        "A parameter or body the API cannot take, named in `reason`",
    ),
    ("401", "Unauthorized", "No token, or a wrong one"),
    (
        "403",
        "CrossOrigin",
        "A POST from another origin (or a browser session's POST without one)",
    ),
    ("404", "NotFound", "No such event, queue or endpoint"),
    (
        "409",
        "Off",
        "What was asked needs a part of the relay that is off (the history, accounts, the spool)",
    ),
    (
        "429",
        "Throttled",
        "Too many wrong tokens from this address lately; wait `Retry-After` seconds",
    ),
    (
        "502",
        "Failed",
        "RabbitMQ or the spool could not do it; `reason` says why",
    ),
    (
        "503",
        "CatchingUp",
        "The relay is still reading the history into its store; ask again",
    ),
];

fn refusal_responses() -> Value {
    let mut responses = Map::new();
    for (_, name, description) in REFUSALS {
        let mut response = json!({
            "description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Refusal"}}},
        });
        let header = match name {
            "Unauthorized" => Some((
                "WWW-Authenticate",
                json!({"type": "string", "const": "Bearer"}),
            )),
            "Throttled" | "CatchingUp" => Some(("Retry-After", json!({"type": "string"}))),
            _ => None,
        };
        if let Some((header, schema)) = header {
            response["headers"] = json!({ header: {"schema": schema} });
        }
        responses.insert(name.to_owned(), response);
    }
    Value::Object(responses)
}

/// An operation's responses: `ok`, and the refusals with these statuses
/// (401 and 429 always: every endpoint takes the token).
fn responses(ok: Value, statuses: &[&str]) -> Value {
    let mut responses = Map::new();
    responses.insert("200".to_owned(), ok);
    for (status, name, _) in REFUSALS {
        if ["401", "429"].contains(&status) || statuses.contains(&status) {
            responses.insert(
                status.to_owned(),
                json!({"$ref": format!("#/components/responses/{name}")}),
            );
        }
    }
    Value::Object(responses)
}

fn query(name: &str, schema: Value, description: Option<&str>) -> Value {
    let mut parameter = json!({"name": name, "in": "query", "schema": schema});
    if let Some(description) = description {
        parameter["description"] = json!(description);
    }
    parameter
}

fn text_query(name: &str) -> Value {
    query(name, json!({"type": "string"}), None)
}

fn path_parameter(name: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}})
}

fn limit(default: usize) -> Value {
    query(
        "limit",
        json!({"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": default}),
        Some("More than the maximum is taken as the maximum"),
    )
}

fn reveal() -> Value {
    query(
        "reveal",
        json!({"type": "boolean", "default": false}),
        Some("Show `user.loginName` as received; the relay logs who asked"),
    )
}

fn paths(doc: &mut Doc) -> Value {
    let journey = doc.answer::<Journey>("The event and where it can have gone");
    let messages = doc.answer::<Messages>("The depth, and the messages when looked at");
    json!({
        "/api/status": {"get": {
            "summary": "What /readyz says, plus webhook rates over the last minutes and what the relay's store holds",
            "operationId": "status",
            "responses": responses(doc.answer::<Status>("The relay's state (also when it is not ready; see `status`)"), &["502"]),
        }},
        "/api/events": {"get": {
            "summary": "Events from the history, newest first, a page at a time",
            "description": "From the relay's index of the history (`source: index`) once it has caught up with the stream; until then from the stream itself, read from `since` (or its oldest event) up to `cursor`, keeping the newest `limit` events that pass the filters.",
            "operationId": "events",
            "parameters": [
                text_query("account_id"),
                text_query("user_id"),
                text_query("client_id"),
                query("routing_key", json!({"type": "string"}), Some("A topic pattern (`*` one word, `#` zero or more)")),
                text_query("message_id"),
                query("since", json!({"type": "string"}), Some("RFC 3339, or a duration ago (`90m`, `7d`)")),
                query("until", json!({"type": "string"}), Some("RFC 3339, or a duration ago")),
                limit(DEFAULT_LIMIT),
                query("cursor", json!({"type": "integer", "minimum": 0}), Some("The `next_cursor` of the page before (a stream offset)")),
            ],
            "responses": responses(doc.answer::<EventPage>("One page"), &["400", "409", "502"]),
        }},
        "/api/events/{message_id}": {"get": {
            "summary": "One event, and where it can have gone",
            "description": "The event and the queues bound to its routing key now. A GET reads no queue, so `held` is null and `search` says how to look for the event in the dead letters, the quarantine and the unrouted queue.",
            "operationId": "event",
            "parameters": [path_parameter("message_id"), reveal()],
            "responses": responses(journey.clone(), &["400", "404", "409", "502"]),
        }},
        "/api/events/{message_id}/held": {"post": {
            "summary": "One event, where it can have gone, and whether a queue holds it",
            "description": format!("As the GET, and the dead letters, the quarantine and the unrouted queue searched for the event (the first {LOCATE_DEPTH} messages of each, on one connection, each put back in place at once; quorum queues are not searched). Logged with who asked."),
            "operationId": "searchEvent",
            "parameters": [path_parameter("message_id"), reveal()],
            "responses": responses(journey, &["400", "403", "404", "409", "502"]),
        }},
        "/api/queues": {"get": {
            "summary": "The relay's own queues and every [[queues]] entry",
            "operationId": "queues",
            "responses": responses(doc.answer::<Queues>("Depth, consumers and any conflict of each"), &["502"]),
        }},
        "/api/queues/{name}/messages": {
            "get": {
                "summary": "One of those queues' depth, and how to look at its messages; reads no message",
                "description": "A GET changes nothing, so it reads no message: a look takes each one and puts it back (RabbitMQ marks it redelivered, and a quorum queue counts a delivery, dead-lettering one past its delivery limit). It answers the depth, with `look` saying what a look would cost: POST to the same address to look.",
                "operationId": "queueMessages",
                "parameters": [path_parameter("name"), limit(DEFAULT_LIMIT)],
                "responses": responses(messages.clone(), &["400", "404", "502"]),
            },
            "post": {
                "summary": "Look at a queue's messages, counting a delivery of each on a quorum queue",
                "description": "The messages, each taken and put back in its place: on a quorum queue each message shown counts one delivery toward its delivery limit (`summary.counts_deliveries`; `pushed_over` says how many that look sent to the dead letters). An empty body looks at the default number. Logged with who asked.",
                "operationId": "lookAtQueue",
                "parameters": [path_parameter("name")],
                "requestBody": doc.body::<LookBody>(false),
                "responses": responses(messages, &["400", "403", "404", "502"]),
            },
        },
        "/api/accounts": {"get": {
            "summary": "Accounts by what they need, a page at a time, in key order",
            "description": "From the relay's store of what it derives from the history (every account's state, in event time), as `hookrelay accounts` lists them. Until that store has caught up with the history (after a first start), 503 with `Retry-After`.",
            "operationId": "accounts",
            "parameters": [
                query("state", json!({"type": "string", "enum": crate::wire::account::StateName::ALL.map(|s| s.as_str())}), None),
                text_query("client_id"),
                text_query("provider"),
                query("since", json!({"type": "string"}), Some("In this state since then at least: RFC 3339, or a duration ago")),
                limit(MAX_LIMIT),
                query("cursor", json!({"type": "string"}), Some("The `next_cursor` of the page before")),
            ],
            "responses": responses(doc.answer::<AccountPage>("One page of the accounts that match"), &["400", "409", "502", "503"]),
        }},
        "/api/providers": {"get": {
            "summary": "Providers by what their accounts need, and the provider incidents",
            "description": "From the relay's store of what it derives from the history: each provider (`account.provider`) with its accounts by state (the providers whose accounts need someone most first, at most `limit`), and the provider incidents (open first, then the latest resolved). Until that store has caught up with the history, 503 with `Retry-After`.",
            "operationId": "providers",
            "parameters": [limit(MAX_LIMIT)],
            "responses": responses(doc.answer::<Providers>("Providers and incidents"), &["400", "409", "503"]),
        }},
        "/api/spool": {"get": {
            "summary": "The local spool (it answers while RabbitMQ is away)",
            "operationId": "spool",
            "parameters": [
                text_query("account_id"),
                text_query("message_id"),
                limit(DEFAULT_LIMIT),
                query("cursor", json!({"type": "string", "pattern": "^[0-9]+$"}), Some("The `next_cursor` of the page before")),
            ],
            "responses": responses(doc.answer::<SpoolState>(&format!("Depth, oldest age and a page of entries in the order they were spooled (parked ones keep their place). A page reads at most {MAX_EXAMINED} rows: with a filter it may come back short, with a `next_cursor`.")), &["400", "502"]),
        }},
        "/api/dead-letters/replay": {"post": {
            "summary": "Replay dead letters to the queues they died in (or the exchange)",
            "description": "Say which: `message_ids`, `reason` (`rejected`, `expired`, `maxlen` or `delivery_limit`), `from_queue` or `routing_key` (all that are given must hold), or `all: true`; not both.",
            "operationId": "replayDeadLetters",
            "requestBody": doc.body::<DeadLetterReplay>(true),
            "responses": responses(doc.answer::<DeadLettersReplayed>("What was replayed, as `hookrelay replay --json` says"), &["400", "403", "502"]),
        }},
        "/api/quarantine/redrive": {"post": {
            "summary": "Send on the quarantined bodies that parse now",
            "operationId": "redriveQuarantine",
            "requestBody": doc.body::<Redrive>(true),
            "responses": responses(doc.answer::<QuarantineRedriven>("What was re-driven and what stays"), &["400", "403", "502"]),
        }},
        "/api/history/replay": {"post": {
            "summary": "Replay events from the history, to one queue or through the exchange",
            "description": "Which: `message_ids`, or a time range (`since`, `until`), narrowed by `account_id` and `routing_key`. Where: `to_queue` or `to_exchange: true`, not both.",
            "operationId": "replayHistory",
            "requestBody": doc.body::<HistoryReplay>(true),
            "responses": responses(doc.answer::<HistoryReplayed>("What was replayed"), &["400", "403", "404", "409", "502"]),
        }},
        "/api/spool/retry": {"post": {
            "summary": "Send parked webhooks again",
            "operationId": "retrySpool",
            "requestBody": doc.body::<SpoolRetry>(true),
            "responses": responses(doc.answer::<SpoolRetried>("How many were marked to be sent again"), &["400", "403", "409", "502"]),
        }},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_document_is_the_generated_one() {
        let committed: Value = serde_yaml_ng::from_str(include_str!("../../docs/openapi.yaml"))
            .expect("docs/openapi.yaml");
        assert!(
            committed == document(),
            "docs/openapi.yaml is stale: run `cargo run --example openapi > docs/openapi.yaml`"
        );
    }

    #[test]
    fn a_look_body_refuses_what_it_does_not_know() {
        // deny_unknown_fields on the type is additionalProperties: false in
        // the document: the two cannot say different things.
        let document = document();
        assert_eq!(
            document["components"]["schemas"]["LookBody"]["additionalProperties"],
            false
        );
    }
}
