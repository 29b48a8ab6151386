//! What the relay announces through its own topic exchange
//! `<exchange>.changes`, never through the sender's: changes of an
//! account's state (`account.*`), provider incidents (`provider.*`), and a
//! client whose accounts all went silent (`client.silent`).
//! Both are derived from the history and land in it again, where each is
//! known by its cause (`x-caused-by`) and kind.

use std::time::SystemTime;

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::FieldTable;
use serde::{Deserialize, Serialize};

use super::account::{self, AccountChange, StateName};
use super::client;
use super::envelope::TraceContext;
use super::headers::{TRACEPARENT, TRACESTATE, set_text};
use super::provider::{self, IncidentKind, ProviderIncident};

/// The AMQP properties of every announcement: persistent JSON from
/// `hookrelay`, `message_id`, `headers`, and the trace context `trace`
/// continues (`traceparent`, and `tracestate` when there is one).
pub(crate) fn properties(
    message_id: uuid::Uuid,
    mut headers: FieldTable,
    trace: Option<&TraceContext>,
    now: SystemTime,
) -> BasicProperties {
    if let Some(trace) = trace {
        set_text(&mut headers, TRACEPARENT, &trace.traceparent);
        if let Some(state) = &trace.tracestate {
            set_text(&mut headers, TRACESTATE, state);
        }
    }
    let timestamp = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    BasicProperties::default()
        .with_message_id(message_id.to_string().into())
        .with_content_type("application/json".into())
        .with_app_id("hookrelay".into())
        .with_delivery_mode(2)
        .with_timestamp(timestamp)
        .with_headers(headers)
}

/// The kinds of announcement, as the routing key's first word says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Account,
    Provider,
    Client,
}

impl Kind {
    /// The kind of an announcement routed as `routing_key`; `None` for what
    /// the relay does not announce (the sender's events).
    pub fn of(routing_key: &str) -> Option<Kind> {
        if routing_key.starts_with(account::ROUTING_PREFIX) {
            Some(Kind::Account)
        } else if routing_key.starts_with(provider::ROUTING_PREFIX) {
            Some(Kind::Provider)
        } else if routing_key.starts_with(client::ROUTING_PREFIX) {
            Some(Kind::Client)
        } else {
            None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Account => "account",
            Kind::Provider => "provider",
            Kind::Client => "client",
        }
    }
}

/// Whether the relay announces messages routed as `routing_key` (through
/// `<exchange>.changes`).
pub fn is_announced(routing_key: &str) -> bool {
    Kind::of(routing_key).is_some()
}

/// Every routing key the relay announces.
pub fn routing_keys() -> Vec<String> {
    let accounts = StateName::ALL
        .iter()
        .map(|state| format!("{}{}", account::ROUTING_PREFIX, state.as_str()));
    let providers = IncidentKind::ALL
        .iter()
        .map(|kind| format!("{}{}", provider::ROUTING_PREFIX, kind.as_str()));
    accounts
        .chain(providers)
        .chain([client::SILENT.to_owned()])
        .collect()
}

/// One announcement, either kind, as the relay's store keeps it until the
/// history holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "body", rename_all = "snake_case")]
pub enum Announcement {
    Account(AccountChange),
    Provider(ProviderIncident),
}

impl Announcement {
    pub fn kind(&self) -> Kind {
        match self {
            Announcement::Account(_) => Kind::Account,
            Announcement::Provider(_) => Kind::Provider,
        }
    }

    pub fn routing_key(&self) -> String {
        match self {
            Announcement::Account(change) => change.routing_key(),
            Announcement::Provider(incident) => incident.routing_key(),
        }
    }

    /// The `message_id` of the event that caused it.
    pub fn caused_by(&self) -> &str {
        match self {
            Announcement::Account(change) => &change.caused_by,
            Announcement::Provider(incident) => &incident.caused_by,
        }
    }

    pub fn body(&self) -> Vec<u8> {
        match self {
            Announcement::Account(change) => change.body(),
            Announcement::Provider(incident) => incident.body(),
        }
    }

    /// Its AMQP properties; `received_at` and `trace` are the causing event's.
    pub fn properties(
        &self,
        now: SystemTime,
        received_at: Option<&str>,
        trace: Option<&TraceContext>,
    ) -> BasicProperties {
        match self {
            Announcement::Account(change) => change.properties(now, trace),
            Announcement::Provider(incident) => incident.properties(now, received_at, trace),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_announced_key_is_known_by_its_kind_and_events_are_not() {
        for key in routing_keys() {
            assert!(is_announced(&key), "{key}");
        }
        assert_eq!(Kind::of("account.ok"), Some(Kind::Account));
        assert_eq!(Kind::of("provider.incident_opened"), Some(Kind::Provider));
        assert_eq!(Kind::of("sync.account"), None);
        assert_eq!(Kind::of("sync.error.LoginFailedError"), None);
    }
}
