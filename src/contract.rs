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

/// The AMQP headers the relay sets on every event (RabbitMQ adds its own,
/// such as `x-death`, to dead letters).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Headers {
    pub hook: Hook,
    /// `user.id`.
    #[serde(rename = "user-id")]
    pub user_id: String,
    /// `account.id`.
    #[serde(rename = "account-id")]
    pub account_id: String,
    /// A `SyncError`'s `error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "String", regex(pattern = r"^[A-Za-z][A-Za-z0-9_]{0,63}$"))]
    pub error: Option<String>,
    /// Whether the sender documents that `error` (a `SyncError` only).
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
    /// When the relay received it, RFC 3339 with milliseconds.
    #[serde(rename = "x-received-at")]
    #[schemars(extend("format" = "date-time"))]
    pub received_at: String,
    /// The documented fields the body goes without, e.g.
    /// `user.loginName missing; account.provider not a string`.
    #[serde(
        rename = "x-schema-warnings",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "String")]
    pub schema_warnings: Option<String>,
    /// Which retry this copy is, from 1 (set by the consumer that retried it).
    #[serde(
        rename = "x-retry-attempt",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(schema_with = "count")]
    pub retry_attempt: Option<u32>,
    /// How many times an operator replayed it.
    #[serde(
        rename = "x-replay-count",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(schema_with = "count")]
    pub replay_count: Option<u32>,
    /// Where a replay took it from.
    #[serde(
        rename = "x-replayed-from",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "ReplayedFrom")]
    pub replayed_from: Option<ReplayedFrom>,
    /// The exchange it was first published to, once it travelled another way
    /// (a retry, a replay).
    #[serde(
        rename = "x-original-exchange",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "String")]
    pub original_exchange: Option<String>,
    /// Its first routing key, likewise.
    #[serde(
        rename = "x-original-routing-key",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "String")]
    pub original_routing_key: Option<String>,
}

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
    /// A UUIDv7, unique per webhook, the `id` the sender was answered with:
    /// de-duplicate on it (delivery is at-least-once).
    #[schemars(extend("format" = "uuid"))]
    pub message_id: String,
    /// When the relay received it, in seconds since the epoch.
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

/// The AsyncAPI 3.0 document of the events published to the topic exchange
/// `exchange`, with the AMQP 0-9-1 bindings 0.3.0.
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
    ] {
        // Named types come back as references to their definitions.
        if schema.get("$ref").is_none() {
            schemas.insert(name.to_owned(), schema.to_value());
        }
    }
    schemas.extend(generator.take_definitions(true));

    let exchange_binding = json!({
        "amqp": {
            "is": "routingKey",
            "exchange": {"name": exchange, "type": "topic", "durable": true, "autoDelete": false, "vhost": "/"},
            "bindingVersion": "0.3.0",
        }
    });
    let receive_binding = json!({
        "amqp": {"deliveryMode": 2, "mandatory": true, "timestamp": true, "ack": true, "bindingVersion": "0.3.0"}
    });
    let message = |name: &str, summary: &str| {
        json!({
            "name": name,
            "title": name,
            "summary": summary,
            "contentType": "application/json",
            "headers": {"$ref": "#/components/schemas/Headers"},
            "payload": {"$ref": format!("#/components/schemas/{name}")},
            "x-amqp-properties": {"$ref": "#/components/schemas/Properties"},
            "bindings": {"amqp": {"messageType": name, "bindingVersion": "0.3.0"}},
        })
    };
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "hookrelay events",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The sync webhooks hookrelay publishes to RabbitMQ, one message per webhook: the body exactly as the sender sent it, persistent, with the headers and properties below. Bind a queue to the topic exchange with the routing keys you want (`sync.error.*`, `sync.#`); delivery is at-least-once, so de-duplicate on `message_id`. Generated from hookrelay's Rust types (src/contract.rs): do not edit by hand.",
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
            "syncAccount": {
                "address": "sync.account",
                "title": "An account synced",
                "messages": {"syncAccount": {"$ref": "#/components/messages/SyncAccount"}},
                "bindings": exchange_binding,
            },
            "syncError": {
                "address": "sync.error.{code}",
                "title": "An account failed to sync",
                "parameters": {"code": {"description": "The SyncError's `error`: one word, `^[A-Za-z][A-Za-z0-9_]{0,63}$`, so it cannot add `.`, `*` or `#` to the routing key."}},
                "messages": {"syncError": {"$ref": "#/components/messages/SyncError"}},
                "bindings": exchange_binding,
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
        },
        "components": {
            "messages": {
                "SyncAccount": message("SyncAccount", "An account synced successfully."),
                "SyncError": message("SyncError", "An account failed to sync; `error` says why."),
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
    fn the_committed_document_is_the_one_the_types_give() {
        let committed =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/asyncapi.yaml"))
                .expect("docs/asyncapi.yaml");
        let committed: Value = serde_yaml_ng::from_str(&committed).expect("YAML");
        assert!(
            committed == asyncapi("webhooks"),
            "docs/asyncapi.yaml is stale: run `cargo run --example asyncapi > docs/asyncapi.yaml`"
        );
    }
}
