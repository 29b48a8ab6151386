//! The message the relay publishes when an account's state changes
//! (`account.<state>`): what the sender's outcomes mean for the account, for
//! consumers that would otherwise each fold `sync.*` themselves.
//!
//! `sync.*` is what the sender said, one message per webhook; `account.*` is
//! what it means, one message per change: five daily `LoginFailedError`s of
//! one account are one `account.needs_reconnect`. Its body is JSON the relay
//! writes ([`AccountChange`]); it never holds `loginName`.

use std::time::SystemTime;

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::FieldTable;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::contract::{Persistent, Travel};
use super::envelope::TraceContext;
use super::headers::{
    ACCOUNT_ID, CAUSED_BY, CLIENT_ID, RECEIVED_AT, TRACEPARENT, TRACESTATE, USER_ID, set_text, text,
};

/// Every `account.*` routing key starts with this.
pub const ROUTING_PREFIX: &str = "account.";

/// The headers an `account.*` message carries, for consumers that filter on
/// headers, and for the relay's own bookkeeping (`x-caused-by`):
/// `x-received-at` is the causing event's (the change's time), and so are
/// `traceparent` (and `tracestate`, when the event had one). It carries no
/// `x-source-ip`, `hook`, `error` or `x-dedup-key`: the relay sent it, and
/// its body says what happened.
pub const HEADERS: [&str; 7] = [
    CLIENT_ID,
    ACCOUNT_ID,
    USER_ID,
    CAUSED_BY,
    RECEIVED_AT,
    TRACEPARENT,
    TRACESTATE,
];

/// The namespace of the UUIDv5 message ids of `account.*` messages.
const NAMESPACE: Uuid = Uuid::from_u128(0x3f6c_2a0e_8b1d_4e57_9a2c_6d0f_1b7e_4c93);

/// What an account needs, as in the routing key `account.<state>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StateName {
    /// Synced: nothing to do.
    Ok,
    /// The user must reconnect the account (`reason`: credentials or verification).
    NeedsReconnect,
    /// Temporary failures, which the sender retries by itself (`streak` in a row).
    Retrying,
    /// The sender's support must look at it, with the account id.
    ContactProvider,
    /// An error code the sender does not document yet (`code`).
    Unknown,
    /// It needed nobody (`ok`, `retrying`) and had no event for
    /// `accounts.silent_after` (26 h: the sender syncs every account daily):
    /// the sender stopped syncing it. Its next event moves it back.
    Silent,
}

impl StateName {
    /// Every state, in the order a listing shows them.
    pub const ALL: [StateName; 6] = [
        StateName::NeedsReconnect,
        StateName::ContactProvider,
        StateName::Unknown,
        StateName::Silent,
        StateName::Retrying,
        StateName::Ok,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StateName::Ok => "ok",
            StateName::NeedsReconnect => "needs_reconnect",
            StateName::Retrying => "retrying",
            StateName::ContactProvider => "contact_provider",
            StateName::Unknown => "unknown",
            StateName::Silent => "silent",
        }
    }
}

/// Why the account is in its state, where there is more than one reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// `needs_reconnect` after a `LoginFailedError`: new credentials.
    Credentials,
    /// `needs_reconnect` after a `SecurityQuestionError`: a verification step.
    Verification,
    /// `contact_provider`: `TemporaryFailureError`s in a row reached
    /// `accounts.temporary_failures_to_escalate`.
    RepeatedTemporaryFailures,
    /// `contact_provider`: an `UnhandledConnectorError` or `UnknownConnectorError`.
    ConnectorError,
}

impl std::str::FromStr for StateName {
    type Err = String;

    fn from_str(s: &str) -> Result<StateName, String> {
        StateName::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| format!("`{s}` is not a state"))
    }
}

impl Reason {
    pub const ALL: [Reason; 4] = [
        Reason::Credentials,
        Reason::Verification,
        Reason::RepeatedTemporaryFailures,
        Reason::ConnectorError,
    ];

    /// The reason named `s` (as [`Reason::as_str`] writes it).
    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|reason| reason.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Credentials => "credentials",
            Reason::Verification => "verification",
            Reason::RepeatedTemporaryFailures => "repeated_temporary_failures",
            Reason::ConnectorError => "connector_error",
        }
    }
}

/// The body of an `account.<state>` message: one change of one account's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AccountChange {
    /// The sender's `x-client-id` of the account's events.
    #[schemars(length(min = 1))]
    pub client_id: String,
    #[schemars(length(min = 1))]
    pub account_id: String,
    pub user_id: String,
    /// `account.provider` of the latest event that named one.
    pub provider: Option<String>,
    /// The state now; also the routing key's last word.
    pub state: StateName,
    /// The state before; `null` for an account's first event the relay saw.
    pub previous_state: Option<StateName>,
    pub reason: Option<Reason>,
    /// The error code of the event that caused the change; `null` for a `SyncAccount`.
    pub code: Option<String>,
    /// `TemporaryFailureError`s in a row, that event included.
    pub streak: u32,
    /// When the relay received the event that caused the change (RFC 3339):
    /// the account has been in this state since then.
    pub since: Option<String>,
    /// The `message_id` of the `sync.*` event that caused the change (also
    /// the `x-caused-by` header).
    pub caused_by: String,
    /// The open provider incident the change belongs to (its
    /// `provider.incident_opened` came first), if any: the account failed
    /// because the sender's connector for its provider did, not because of
    /// anything its user did. Absent from announcements made before 0.2.
    #[serde(default)]
    pub incident: Option<String>,
}

/// The AMQP headers of an `account.*` message: those the relay publishes it
/// with (`x-client-id`, `account-id`, `user-id`, `x-caused-by`,
/// `x-received-at`, `traceparent`, and `tracestate` when the cause had one),
/// and, like every message, those a consumer's retry, an
/// operator's replay or RabbitMQ add on the way. Nothing else: a test
/// compares real changes, as published, back from a retry tier, dead-lettered
/// and replayed, with this type, both ways.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountHeaders {
    /// The client id of the account's events.
    #[serde(rename = "x-client-id")]
    pub client_id: String,
    #[serde(rename = "account-id")]
    pub account_id: String,
    #[serde(rename = "user-id")]
    pub user_id: String,
    /// The `message_id` of the `sync.*` event that caused the change.
    #[serde(rename = "x-caused-by")]
    pub caused_by: String,
    /// When the relay received the event that caused the change (RFC 3339,
    /// milliseconds): the change's time, as `since` in the body.
    #[serde(rename = "x-received-at")]
    #[schemars(extend("format" = "date-time"))]
    pub received_at: String,
    /// The causing event's W3C trace context: the announcement belongs to
    /// its trace.
    #[schemars(regex(pattern = r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"))]
    pub traceparent: String,
    /// The causing event's W3C trace state, when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
    /// What a retry, a replay or RabbitMQ added on the way.
    #[serde(flatten)]
    pub travel: Travel,
}

/// The AMQP basic properties of an `account.*` message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AccountProperties {
    /// A UUIDv5 of the cause and the new state: the same whichever relay
    /// announces the change. De-duplicate on it, as on an event's.
    #[schemars(
        extend("format" = "uuid"),
        regex(pattern = r"^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
    )]
    pub message_id: String,
    #[serde(flatten)]
    pub persistent: Persistent,
}

impl AccountChange {
    /// `account.<state>`.
    pub fn routing_key(&self) -> String {
        format!("{ROUTING_PREFIX}{}", self.state.as_str())
    }

    /// The same for every announcement of this change, by any relay: a
    /// UUIDv5 of the cause and the new state, so consumers de-duplicate on
    /// `message_id` as for `sync.*`.
    pub fn message_id(&self) -> Uuid {
        let name = format!("{}/{}", self.caused_by, self.state.as_str());
        Uuid::new_v5(&NAMESPACE, name.as_bytes())
    }

    /// The AMQP properties: persistent JSON, the headers of [`HEADERS`];
    /// `trace` is the causing event's, which the announcement continues.
    pub fn properties(&self, now: SystemTime, trace: Option<&TraceContext>) -> BasicProperties {
        let mut headers = FieldTable::default();
        set_text(&mut headers, CLIENT_ID, &self.client_id);
        set_text(&mut headers, ACCOUNT_ID, &self.account_id);
        set_text(&mut headers, USER_ID, &self.user_id);
        set_text(&mut headers, CAUSED_BY, &self.caused_by);
        if let Some(since) = &self.since {
            set_text(&mut headers, RECEIVED_AT, since);
        }
        super::changes::properties(self.message_id(), headers, trace, now)
    }

    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an AccountChange serialises")
    }
}

/// The `x-caused-by` header of an `account.*` message.
pub fn caused_by(headers: Option<&FieldTable>) -> Option<String> {
    text(headers, CAUSED_BY)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(state: StateName) -> AccountChange {
        AccountChange {
            client_id: "app-1".into(),
            account_id: "a-1".into(),
            user_id: "u-1".into(),
            provider: Some("Bank".into()),
            state,
            previous_state: None,
            reason: None,
            code: None,
            streak: 0,
            since: None,
            caused_by: "0192f0c4-0000-7000-8000-000000000001".into(),
            incident: None,
        }
    }

    #[test]
    fn the_same_change_has_the_same_id_and_another_state_another() {
        let ok = change(StateName::Ok);
        assert_eq!(ok.message_id(), change(StateName::Ok).message_id());
        assert_ne!(ok.message_id(), change(StateName::Retrying).message_id());
        assert_eq!(ok.message_id().get_version_num(), 5);
        assert_eq!(ok.routing_key(), "account.ok");
    }

    #[test]
    fn the_headers_name_the_account_and_the_cause() {
        let mut ok = change(StateName::Ok);
        ok.since = Some("2026-11-30T00:00:00.000Z".into());
        let trace = TraceContext {
            traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            tracestate: Some("vendor=1".into()),
        };
        let properties = ok.properties(SystemTime::UNIX_EPOCH, Some(&trace));
        let headers = properties.headers().as_ref();
        assert_eq!(
            caused_by(headers).as_deref(),
            Some("0192f0c4-0000-7000-8000-000000000001")
        );
        let names: Vec<&str> = headers
            .unwrap()
            .inner()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(names.len(), HEADERS.len());
        assert!(HEADERS.iter().all(|h| names.contains(h)), "{names:?}");
    }
}
