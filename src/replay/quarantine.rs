//! `hookrelay replay --from-quarantine`: the way back out of quarantine once
//! the cause is fixed (a relaxed rule, a hook the sender added, a newer relay).
//!
//! Each quarantined body is parsed again with the current parser. What parses
//! now is published exactly as the relay would have published it when it
//! arrived: the same `message_id`, the receipt headers kept on the quarantined
//! message (`x-client-id`, `x-source-ip`, `x-received-at`), the event's
//! routing key and headers, plus `x-replayed-from: quarantine` and its route
//! in `x-original-*`, through the entry exchange: one `Pass` over the
//! quarantine queue. What still fails stays in quarantine, in its place, and
//! the run reports why it fails now.

use bytes::Bytes;
use lapin::message::Delivery;
use schemars::JsonSchema;
use serde::Serialize;

use super::{Pass, QueueSource, Step, Verdict};
use crate::broker::{self, Outgoing, Topology, browse};
use crate::config::Settings;
use crate::event::Event;
use crate::wire::envelope::{Receipt, event_message};
use crate::wire::headers::{
    self, ORIGINAL_EXCHANGE, ORIGINAL_ROUTING_KEY, QUARANTINE_REASON, REPLAYED_FROM,
};

/// What one run does.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Send at most this many.
    pub limit: Option<usize>,
    /// List what would go and what would stay, change nothing.
    pub dry_run: bool,
    /// Only the bodies with these `message_id`s (the others stay, unreported);
    /// empty: every body.
    pub message_ids: Vec<String>,
}

/// One quarantined body and what became of it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[schemars(rename = "Redriven")]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
#[schemars(rename = "RedriveAction")]
pub enum Action {
    Redriven,
    WouldRedrive,
    Stays,
    Failed,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, JsonSchema)]
#[schemars(rename = "RedriveSummary")]
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
///
/// ```no_run
/// # async fn run() -> anyhow::Result<()> {
/// use hookrelay::config::Settings;
/// use hookrelay::replay::quarantine::{Options, redrive};
///
/// let settings = Settings::load(Some("relay.toml".as_ref()))?;
/// // What would parse now, without sending anything.
/// let dry_run = Options { dry_run: true, ..Options::default() };
/// let summary = redrive(&settings, &dry_run, |body| println!("{body:?}")).await?;
/// println!("{} would go, {} stay", summary.would_redrive, summary.stays);
/// # Ok(())
/// # }
/// ```
pub async fn redrive(
    settings: &Settings,
    options: &Options,
    mut report: impl FnMut(&Redrive),
) -> anyhow::Result<Summary> {
    let topology = Topology::of(settings);
    let pass = Pass {
        limit: options.limit,
        dry_run: options.dry_run,
        confirm_timeout: settings.amqp.confirm_timeout(),
    };
    broker::with_tool_connection(&settings.amqp, "hookrelay-redrive", async |connection| {
        let queue = topology.quarantine_queue();
        let mut source = QueueSource::open(connection, queue, "the quarantined copy").await?;
        let publisher = browse::confirming_channel(connection).await?;
        let decide = |delivery: &Delivery| {
            let id = delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.as_str());
            let chosen = options.message_ids.is_empty()
                || id.is_some_and(|id| options.message_ids.iter().any(|m| m == id));
            match chosen {
                true => {
                    let (verdict, entry) = decide(delivery, &topology);
                    (verdict, Some(entry))
                }
                false => (Verdict::Keep, None),
            }
        };
        let tally = pass
            .run(&mut source, &publisher, decide, |entry, step| {
                let Some(mut entry) = entry else {
                    return;
                };
                entry.action = match step {
                    Step::Kept => Action::Stays,
                    Step::WouldSend => Action::WouldRedrive,
                    Step::Sent => Action::Redriven,
                    Step::Failed(err) => {
                        entry.reason = Some(err.to_string());
                        Action::Failed
                    }
                };
                report(&entry);
            })
            .await?;
        Ok(Summary {
            redriven: tally.sent,
            would_redrive: tally.would_send,
            stays: tally.kept,
            failed: tally.failed,
            left: source.finish(&publisher).await?,
        })
    })
    .await
}

/// Whether a quarantined body goes on: only when it parses now, as the
/// event the relay would have published when it arrived.
fn decide(delivery: &Delivery, topology: &Topology) -> (Verdict, Redrive) {
    let properties = &delivery.properties;
    let headers = properties.headers().as_ref();
    let mut entry = Redrive {
        action: Action::Stays,
        message_id: properties.message_id().as_ref().map(|id| id.to_string()),
        routing_key: None,
        was: headers::text(headers, QUARANTINE_REASON),
        reason: None,
    };
    let parsed = Event::parse(&delivery.data)
        .map_err(|err| err.reason())
        .and_then(|event| {
            let mut receipt = Receipt::of(properties).map_err(|err| err.to_string())?;
            // Every event carries a trace context; an older relay stored
            // quarantined bodies without one.
            receipt.trace.get_or_insert_with(crate::traces::new_trace);
            Ok((event, receipt))
        });
    let (event, receipt) = match parsed {
        Ok(parsed) => parsed,
        Err(reason) => {
            entry.reason = Some(reason);
            return (Verdict::Keep, entry);
        }
    };
    let message = event_message(&event, &receipt, Bytes::from(delivery.data.clone()));
    entry.routing_key = Some(event.routing_key().as_str().to_owned());
    let address = topology.address(&message.kind);
    // Like every replay: where it came from, and its route, on which
    // consumers dispatch whatever way it travelled.
    let mut replayed = message.properties.headers().clone().unwrap_or_default();
    for (key, value) in [
        (REPLAYED_FROM, "quarantine"),
        (ORIGINAL_EXCHANGE, address.exchange),
        (ORIGINAL_ROUTING_KEY, address.routing_key),
    ] {
        headers::set_text(&mut replayed, key, value);
    }
    let outgoing = Outgoing {
        exchange: address.exchange.to_owned(),
        routing_key: address.routing_key.to_owned(),
        body: message.body,
        properties: message.properties.with_headers(replayed),
    };
    (Verdict::Send(Box::new(outgoing)), entry)
}
