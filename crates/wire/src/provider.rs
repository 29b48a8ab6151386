//! The message the relay publishes when one provider's connector fails for
//! many accounts at once (`provider.incident_opened`), and when it works
//! again (`provider.incident_resolved`): one incident at the sender, one
//! message each, instead of hundreds of `account.contact_provider`s that
//! support would have to add up by hand.
//!
//! An incident is derived from the history in event time (`x-received-at`),
//! like an account's state: at least `providers.incident_accounts` distinct
//! accounts of one `account.provider` put in `contact_provider` (a connector
//! error, or temporary failures that kept happening) within
//! `providers.incident_window` open one; it is resolved when as many of its
//! accounts have synced again, or when an event of the provider comes a
//! whole window after its last failure. While it is open, the
//! `account.*` changes of its accounts name it (`incident`).

use std::time::SystemTime;

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::FieldTable;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::contract::{Persistent, Travel};
use super::envelope::TraceContext;
use super::headers::{CAUSED_BY, PROVIDER, RECEIVED_AT, TRACEPARENT, TRACESTATE, set_text};

/// Every `provider.*` routing key starts with this.
pub const ROUTING_PREFIX: &str = "provider.";

/// The headers a `provider.*` message carries: `x-received-at` is the
/// causing event's (the incident's opening or resolution time), and so are
/// `traceparent` (and `tracestate`, when the event had one).
pub const HEADERS: [&str; 5] = [PROVIDER, CAUSED_BY, RECEIVED_AT, TRACEPARENT, TRACESTATE];

/// The namespace of the UUIDv5 ids of incidents and of their messages.
const NAMESPACE: Uuid = Uuid::from_u128(0x9d1e_47b2_53c8_4a0f_b6e1_2c7d_80f4_a51b);

/// What happened to the incident, as in the routing key `provider.<kind>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum IncidentKind {
    /// Enough accounts of one provider failed within the window.
    IncidentOpened,
    /// Enough of its accounts synced again, or none failed for a window.
    IncidentResolved,
}

impl IncidentKind {
    pub const ALL: [IncidentKind; 2] =
        [IncidentKind::IncidentOpened, IncidentKind::IncidentResolved];

    pub fn as_str(self) -> &'static str {
        match self {
            IncidentKind::IncidentOpened => "incident_opened",
            IncidentKind::IncidentResolved => "incident_resolved",
        }
    }
}

/// Why an incident was resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResolvedBy {
    /// `providers.incident_accounts` of its accounts synced again.
    AccountsSynced,
    /// An event of the provider came a whole window after the last failure.
    NoFailureForAWindow,
}

/// Accounts an `incident_opened` lists at most.
pub const LISTED_AT_MOST: usize = 100;

/// One account of an incident.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct IncidentAccount {
    pub client_id: String,
    pub account_id: String,
}

/// The body of a `provider.*` message: one provider incident, opened or resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProviderIncident {
    /// The incident's id, the same whichever relay derives it (a UUIDv5 of
    /// the event that opened it); the `incident` of the `account.*` changes
    /// it caused.
    #[schemars(length(min = 1))]
    pub incident: String,
    pub kind: IncidentKind,
    /// `account.provider` of the accounts' events.
    #[schemars(length(min = 1))]
    pub provider: String,
    /// The error code of the event that opened it.
    pub code: String,
    /// Distinct accounts that failed in it so far.
    pub accounts: u32,
    /// On `incident_opened`: the accounts that opened it (their changes
    /// were announced before it existed, so they do not name it); at most
    /// 100, the latest failures first. Empty on `incident_resolved`.
    #[serde(default)]
    pub opened_with: Vec<IncidentAccount>,
    /// Of those, how many synced again since.
    pub recovered: u32,
    /// When the relay received the first failure it counts (RFC 3339).
    pub first_seen: String,
    /// When the relay received the event that opened it (RFC 3339).
    pub opened_at: String,
    /// When it received the event that resolved it; `null` while open.
    pub resolved_at: Option<String>,
    /// Why it was resolved; `null` while open.
    pub resolved_by: Option<ResolvedBy>,
    /// From its first failure to its resolution, in seconds; `null` while open.
    pub duration_seconds: Option<u64>,
    /// The `message_id` of the `sync.*` event that caused this message
    /// (also the `x-caused-by` header).
    pub caused_by: String,
}

/// The AMQP headers of a `provider.*` message, and those a retry, a replay
/// or RabbitMQ add on the way. Nothing else.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderHeaders {
    /// `account.provider` of the incident's accounts.
    pub provider: String,
    /// The `message_id` of the `sync.*` event that caused this message.
    #[serde(rename = "x-caused-by")]
    pub caused_by: String,
    /// When the relay received the event that caused this message (RFC
    /// 3339, milliseconds).
    #[serde(rename = "x-received-at")]
    #[schemars(extend("format" = "date-time"))]
    pub received_at: String,
    /// The causing event's W3C trace context.
    #[schemars(regex(pattern = r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"))]
    pub traceparent: String,
    /// The causing event's W3C trace state, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
    /// What a retry, a replay or RabbitMQ added on the way.
    #[serde(flatten)]
    pub travel: Travel,
}

/// The AMQP basic properties of a `provider.*` message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProviderProperties {
    /// A UUIDv5 of the incident and the kind: the same whichever relay
    /// announces it. De-duplicate on it.
    #[schemars(
        extend("format" = "uuid"),
        regex(pattern = r"^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
    )]
    pub message_id: String,
    #[serde(flatten)]
    pub persistent: Persistent,
}

/// The id of the incident that the event `opened_by` (its `message_id`) opened.
pub fn incident_id(opened_by: &str) -> String {
    Uuid::new_v5(&NAMESPACE, format!("incident/{opened_by}").as_bytes()).to_string()
}

impl ProviderIncident {
    /// `provider.<kind>`.
    pub fn routing_key(&self) -> String {
        format!("{ROUTING_PREFIX}{}", self.kind.as_str())
    }

    /// The same for every announcement of this message, by any relay.
    pub fn message_id(&self) -> Uuid {
        let name = format!("{}/{}", self.incident, self.kind.as_str());
        Uuid::new_v5(&NAMESPACE, name.as_bytes())
    }

    /// The AMQP properties: persistent JSON, the headers of [`HEADERS`];
    /// `received_at` and `trace` are the causing event's.
    pub fn properties(
        &self,
        now: SystemTime,
        received_at: Option<&str>,
        trace: Option<&TraceContext>,
    ) -> BasicProperties {
        let mut headers = FieldTable::default();
        set_text(&mut headers, PROVIDER, &self.provider);
        set_text(&mut headers, CAUSED_BY, &self.caused_by);
        if let Some(at) = received_at {
            set_text(&mut headers, RECEIVED_AT, at);
        }
        super::changes::properties(self.message_id(), headers, trace, now)
    }

    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a ProviderIncident serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opened() -> ProviderIncident {
        ProviderIncident {
            incident: incident_id("m-5"),
            kind: IncidentKind::IncidentOpened,
            provider: "Bank".into(),
            code: "UnhandledConnectorError".into(),
            accounts: 5,
            opened_with: Vec::new(),
            recovered: 0,
            first_seen: "2026-11-30T00:00:01.000Z".into(),
            opened_at: "2026-11-30T00:00:05.000Z".into(),
            resolved_at: None,
            resolved_by: None,
            duration_seconds: None,
            caused_by: "m-5".into(),
        }
    }

    #[test]
    fn opened_and_resolved_are_two_messages_of_one_incident() {
        let opened = opened();
        let resolved = ProviderIncident {
            kind: IncidentKind::IncidentResolved,
            opened_with: Vec::new(),
            caused_by: "m-9".into(),
            ..opened.clone()
        };
        assert_eq!(opened.routing_key(), "provider.incident_opened");
        assert_eq!(resolved.routing_key(), "provider.incident_resolved");
        assert_eq!(opened.message_id(), opened.clone().message_id());
        assert_ne!(opened.message_id(), resolved.message_id());
        assert_eq!(opened.incident, incident_id("m-5"));
        assert_ne!(incident_id("m-5"), incident_id("m-6"));
    }

    #[test]
    fn the_headers_name_the_provider_and_the_cause() {
        let trace = TraceContext {
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            tracestate: Some("vendor=1".into()),
        };
        let properties = opened().properties(
            SystemTime::UNIX_EPOCH,
            Some("2026-11-30T00:00:05.000Z"),
            Some(&trace),
        );
        let names: Vec<&str> = properties
            .headers()
            .as_ref()
            .unwrap()
            .inner()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(names.len(), HEADERS.len());
        assert!(HEADERS.iter().all(|h| names.contains(h)), "{names:?}");
    }
}
