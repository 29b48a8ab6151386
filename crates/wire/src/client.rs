//! The message the relay publishes when most of a client app's accounts
//! went silent together (`client.silent`): the sender stopped sending to us
//! (a lapsed plan, changed sender addresses, a proxy in the way), one
//! incident, not thousands of `account.silent` messages.
//!
//! The announcing relay decides it by its clock, like `account.silent`:
//! when, of a client's accounts that are not silent yet, at least
//! [`MIN_ACCOUNTS`] and more than half have had no event for
//! `accounts.silent_after`. Every relay reads it back from the history and
//! marks each of those accounts (their latest event before `before`) silent.

use std::time::SystemTime;

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::FieldTable;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::contract::{Persistent, Travel};
use super::envelope::TraceContext;
use super::headers::{CLIENT_ID, RECEIVED_AT, TRACEPARENT, TRACESTATE, set_text};

/// Every `client.*` routing key starts with this.
pub const ROUTING_PREFIX: &str = "client.";

/// The routing key.
pub const SILENT: &str = "client.silent";

/// Silent accounts of one client, at least, before they are one incident.
pub const MIN_ACCOUNTS: u64 = 10;

/// The headers a `client.silent` message carries: `x-received-at` is the
/// time the accounts' latest events are older than (`before`).
pub const HEADERS: [&str; 4] = [CLIENT_ID, RECEIVED_AT, TRACEPARENT, TRACESTATE];

/// The namespace of the UUIDv5 message ids of `client.*` messages.
const NAMESPACE: Uuid = Uuid::from_u128(0x6b2f_0c91_d4e3_4a78_8f15_3e9a_c0d7_2b64);

/// The body of a `client.silent` message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ClientSilent {
    /// The sender's `x-client-id` whose webhooks stopped.
    #[schemars(length(min = 1))]
    pub client_id: String,
    /// Its accounts that went silent with it (each now `silent`).
    pub accounts: u64,
    /// Its accounts that were not silent before (these included).
    pub of: u64,
    /// The accounts' latest events are older than this (RFC 3339): the
    /// relay's clock, less `accounts.silent_after`.
    pub before: String,
    /// The same in milliseconds since the epoch.
    pub before_ms: i64,
}

/// The AMQP headers of a `client.silent` message, and what a retry, a
/// replay or RabbitMQ add on the way. Nothing else.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientHeaders {
    #[serde(rename = "x-client-id")]
    pub client_id: String,
    /// `before`, as in the body.
    #[serde(rename = "x-received-at")]
    #[schemars(extend("format" = "date-time"))]
    pub received_at: String,
    /// A trace of its own (no event caused it).
    #[schemars(regex(pattern = r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"))]
    pub traceparent: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
    #[serde(flatten)]
    pub travel: Travel,
}

/// The AMQP basic properties of a `client.silent` message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ClientProperties {
    /// A UUIDv5 of the client and `before`. De-duplicate on it.
    #[schemars(
        extend("format" = "uuid"),
        regex(pattern = r"^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
    )]
    pub message_id: String,
    #[serde(flatten)]
    pub persistent: Persistent,
}

impl ClientSilent {
    pub fn message_id(&self) -> Uuid {
        let name = format!("{}/silent/{}", self.client_id, self.before_ms);
        Uuid::new_v5(&NAMESPACE, name.as_bytes())
    }

    /// The AMQP properties: persistent JSON, the headers of [`HEADERS`].
    pub fn properties(&self, now: SystemTime, trace: &TraceContext) -> BasicProperties {
        let mut headers = FieldTable::default();
        set_text(&mut headers, CLIENT_ID, &self.client_id);
        set_text(&mut headers, RECEIVED_AT, &self.before);
        super::changes::properties(self.message_id(), headers, Some(trace), now)
    }

    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a ClientSilent serialises")
    }
}

/// Whether `silent` of a client's `active` accounts (not silent before)
/// are one `client.silent` rather than as many `account.silent`s.
pub fn is_one_incident(silent: u64, active: u64) -> bool {
    silent >= MIN_ACCOUNTS && silent * 2 > active
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_of_at_least_ten_accounts_are_one_incident() {
        assert!(is_one_incident(10, 12));
        assert!(!is_one_incident(9, 9), "too few to say the client stopped");
        assert!(!is_one_incident(50, 100), "half is not most");
        assert!(is_one_incident(51, 100));
    }
}
