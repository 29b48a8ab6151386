//! `hookrelay replay --from-quarantine`: the way back out of quarantine once
//! the cause is fixed (a relaxed rule, a hook the sender added, a newer relay).
//!
//! Each quarantined body is parsed again with the current parser. What parses
//! now is published exactly as the relay would have published it when it
//! arrived: the same `message_id`, the receipt headers kept on the quarantined
//! message (`x-client-id`, `x-source-ip`, `x-received-at`), the event's
//! routing key and headers, plus `x-replayed-from: quarantine`; persistent,
//! `mandatory`, confirmed, through the entry exchange. The quarantined copy is
//! acknowledged only after the confirm. What still fails stays in quarantine,
//! in its place, and the run reports why it fails now.

use bytes::Bytes;
use lapin::types::{AMQPValue, LongString};
use serde::Serialize;

use crate::broker::{self, Outgoing, PublishError, browse};
use crate::config::Settings;
use crate::dead_letter::{ORIGINAL_EXCHANGE, ORIGINAL_ROUTING_KEY};
use crate::envelope::{QUARANTINE_REASON, Receipt, event_message};
use crate::event::Event;
use crate::history::replay::REPLAYED_FROM;

/// What one run does.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Send at most this many.
    pub limit: Option<usize>,
    /// List what would go and what would stay, change nothing.
    pub dry_run: bool,
}

/// One quarantined body and what became of it.
#[derive(Debug, Clone, Serialize)]
pub struct Redrive {
    pub action: Action,
    pub message_id: Option<String>,
    /// The routing key it has now, when it parses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routing_key: Option<String>,
    /// Why it was quarantined.
    pub was: Option<String>,
    /// Why it stays, or why it could not be sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Redriven,
    WouldRedrive,
    Stays,
    Failed,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub redriven: usize,
    pub would_redrive: usize,
    pub stays: usize,
    pub failed: usize,
    /// Bodies in quarantine when the run ended.
    pub left: u32,
}

/// Re-drives the quarantine; `report` sees each body as it is handled. A run
/// visits each body present when it starts at most once, in order.
pub async fn redrive(
    settings: &Settings,
    options: Options,
    mut report: impl FnMut(&Redrive),
) -> anyhow::Result<Summary> {
    let topology = settings.topology();
    let queue = topology.quarantine_queue();
    let amqp = &settings.amqp;
    let connection = broker::connect(amqp, amqp.tool_connection_name("hookrelay-redrive")).await?;
    let (reader, publisher) = browse::reader_and_publisher(&connection).await?;
    let at_start = browse::depth(&reader, queue).await?;

    let mut summary = Summary::default();
    let mut last_held = None;
    for _ in 0..at_start {
        if options
            .limit
            .is_some_and(|limit| summary.redriven + summary.would_redrive >= limit)
        {
            break;
        }
        let Some(delivery) = browse::next(&reader, queue).await? else {
            break;
        };
        let properties = &delivery.properties;
        let mut entry = Redrive {
            action: Action::Stays,
            message_id: properties.message_id().as_ref().map(|id| id.to_string()),
            routing_key: None,
            was: match properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get(QUARANTINE_REASON))
            {
                Some(AMQPValue::LongString(reason)) => Some(reason.to_string()),
                _ => None,
            },
            reason: None,
        };
        let parsed = Event::parse(&delivery.data)
            .map_err(|err| err.reason())
            .and_then(|event| {
                let receipt = Receipt::of(properties).map_err(|err| err.to_string())?;
                Ok((event, receipt))
            });
        let (event, receipt) = match parsed {
            Ok(parsed) => parsed,
            Err(reason) => {
                last_held = Some(delivery.delivery_tag);
                summary.stays += 1;
                entry.reason = Some(reason);
                report(&entry);
                continue;
            }
        };
        let mut message = event_message(&event, &receipt, Bytes::from(delivery.data.clone()));
        entry.routing_key = Some(event.routing_key().as_str().to_owned());
        if options.dry_run {
            last_held = Some(delivery.delivery_tag);
            summary.would_redrive += 1;
            entry.action = Action::WouldRedrive;
            report(&entry);
            continue;
        }
        let address = topology.address(&message.kind);
        // Like every replay: where it came from, and its route, on which
        // consumers dispatch whatever way it travelled.
        let mut headers = message.properties.headers().clone().unwrap_or_default();
        for (key, value) in [
            (REPLAYED_FROM, "quarantine"),
            (ORIGINAL_EXCHANGE, address.exchange),
            (ORIGINAL_ROUTING_KEY, address.routing_key),
        ] {
            headers.insert(key.into(), AMQPValue::LongString(LongString::from(value)));
        }
        message.properties = message.properties.with_headers(headers);
        let outgoing = Outgoing {
            exchange: address.exchange.to_owned(),
            routing_key: address.routing_key.to_owned(),
            body: message.body,
            properties: message.properties,
        };
        let sent = browse::forward(
            &publisher,
            &delivery.acker,
            &outgoing,
            amqp.confirm_timeout(),
            "the quarantined copy",
        )
        .await?;
        match sent {
            Ok(()) => {
                summary.redriven += 1;
                entry.action = Action::Redriven;
                report(&entry);
            }
            Err(err) => {
                last_held = Some(delivery.delivery_tag);
                summary.failed += 1;
                entry.action = Action::Failed;
                entry.reason = Some(err.to_string());
                report(&entry);
                if matches!(err, PublishError::Channel(_)) {
                    break;
                }
            }
        }
    }
    summary.left = browse::put_back(&reader, last_held, &publisher, queue).await?;
    crate::broker::close(&connection, "redrive done").await;
    Ok(summary)
}
