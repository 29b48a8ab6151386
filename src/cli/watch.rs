//! `hookrelay tail`, `hookrelay events` and `hookrelay inspect`: the commands
//! that look at messages without changing where they go; their flags and
//! their output.

use super::output::say;
use anyhow::Context;
use serde::Serialize;
use serde_json::Value;

use super::HistoryFilterArgs;
use crate::broker;
use crate::broker::Topology;
use crate::config::Settings;
use crate::history::{Ends, Reader, Recorded};
use crate::watch::inspect::{self, Inspected};
use crate::watch::render::{self, Shown};
use crate::watch::tail::{self, TailOptions, Tailed};
use crate::wire::headers::{ACCOUNT_ID, CLIENT_ID, USER_ID};
use crate::wire::topic::TopicPattern;

#[derive(Debug, clap::Args)]
pub struct TailArgs {
    /// Routing-key patterns to watch (`*` one word, `#` zero or more).
    #[arg(value_name = "PATTERN", default_value = "#")]
    pub patterns: Vec<TopicPattern>,
    /// Exit after N messages.
    #[arg(long, value_name = "N")]
    pub count: Option<usize>,
    /// One JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
    /// Show bodies as they are; by default `user.loginName` (personal data) is redacted.
    #[arg(long)]
    pub raw: bool,
}

#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    #[command(flatten)]
    pub filter: HistoryFilterArgs,
    /// Only events whose routing key matches this topic pattern
    /// (`sync.error.*`, `sync.#`).
    #[arg(long, value_name = "PATTERN")]
    pub routing_key: Option<TopicPattern>,
    /// Stop after N events.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Keep going: print new events as they arrive (until --until, if given).
    #[arg(long)]
    pub follow: bool,
    /// One JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
    /// Show bodies as they are; by default `user.loginName` (personal data) is redacted.
    #[arg(long)]
    pub raw: bool,
}

/// One event as `events --json` prints it.
#[derive(Debug, Serialize)]
struct Listed {
    message_id: Option<String>,
    routing_key: String,
    received_at: Option<String>,
    /// Its place in the history stream.
    offset: u64,
    headers: Value,
    body: Box<serde_json::value::RawValue>,
}

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The queue, e.g. `webhooks.quarantine`, `webhooks.dead-letter`,
    /// `webhooks.unrouted` or a consumer queue.
    #[arg(value_name = "QUEUE")]
    pub queue: String,
    /// Show at most N messages, from the head of the queue.
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
    /// One JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
    /// Show bodies as they are; by default `user.loginName` (personal data) is redacted.
    #[arg(long)]
    pub raw: bool,
}

pub(super) async fn tail(settings: Settings, args: TailArgs) -> anyhow::Result<()> {
    let options = TailOptions {
        patterns: args.patterns,
        count: args.count,
        raw: args.raw,
    };
    let watched: Vec<String> = options.patterns.iter().map(|p| p.to_string()).collect();
    let json = args.json;
    let tailing = tail::tail(
        &settings,
        &options,
        |source| {
            eprintln!(
                "tailing {source} for {} (Ctrl-C to stop)",
                watched.join(" ")
            );
        },
        |message: Tailed| {
            if json {
                say!("{}", serde_json::to_string(&message).unwrap_or_default());
            } else {
                say!(
                    "{} {} headers={} body={}",
                    message.routing_key,
                    message.message_id.as_deref().unwrap_or("-"),
                    message.headers,
                    message.body
                );
            }
        },
    );
    tokio::select! {
        result = tailing => result,
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

pub(super) async fn events(settings: Settings, args: EventsArgs) -> anyhow::Result<()> {
    let topology = Topology::of(&settings);
    let Some(stream) = topology.history_stream() else {
        anyhow::bail!("the history is off ([history] enabled = false)");
    };
    broker::with_tool_connection(&settings.amqp, "hookrelay-events", async |connection| {
        let filter = args.filter.filter(args.routing_key.into_iter().collect());
        let ends = match args.follow {
            true => Ends::Following,
            false => Ends::AtTheEnd,
        };
        let mut reader =
            Reader::open(connection, stream, args.filter.start(), ends, filter).await?;
        let mut shown = 0;
        let reading = async {
            while args.limit.is_none_or(|limit| shown < limit) {
                let Some(event) = reader.next().await? else {
                    break;
                };
                print_event(&event, args.json, args.raw);
                shown += 1;
            }
            anyhow::Ok(())
        };
        tokio::select! {
            result = reading => result.context("reading the history")?,
            _ = tokio::signal::ctrl_c() => {}
        }
        // On stderr, so that stdout stays one event per line; said even when
        // nothing matched, so an empty answer is told from a read that did not run.
        eprintln!(
            "shown {shown} event(s); {} read from {stream}",
            reader.read()
        );
        Ok(())
    })
    .await
}

fn print_event(event: &Recorded, json: bool, raw: bool) {
    let headers = event.properties.headers().as_ref();
    let body = render::body(&event.body, Shown::as_received_if(raw));
    if json {
        let listed = Listed {
            message_id: event.message_id(),
            routing_key: event.routing_key.clone(),
            received_at: event.received_at_text(),
            offset: event.offset,
            headers: render::headers(headers),
            body,
        };
        say!("{}", serde_json::to_string(&listed).unwrap_or_default());
    } else {
        let header = |key: &str| {
            render::headers(headers)[key]
                .as_str()
                .unwrap_or("-")
                .to_owned()
        };
        say!(
            "{} {} {} user={} account={} client={} body={}",
            event.received_at_text().as_deref().unwrap_or("-"),
            event.message_id().as_deref().unwrap_or("-"),
            event.routing_key,
            header(USER_ID),
            header(ACCOUNT_ID),
            header(CLIENT_ID),
            body
        );
    }
}

pub(super) async fn inspect(settings: Settings, args: InspectArgs) -> anyhow::Result<()> {
    let json = args.json;
    let delivery_limit = Topology::of(&settings).delivery_limit(&args.queue);
    if let Some(limit) = delivery_limit {
        eprintln!(
            "warning: {} is a quorum queue with a delivery limit of {limit}: inspecting it counts \
             one delivery of every message shown, and RabbitMQ dead-letters a message that comes \
             back after its {limit}th. Each message shown says how many it has had",
            args.queue
        );
    }
    let summary = inspect::inspect(
        &settings.amqp,
        &args.queue,
        args.limit,
        Shown::as_received_if(args.raw),
        delivery_limit,
        |message: Inspected| {
            if json {
                say!("{}", serde_json::to_string(&message).unwrap_or_default());
            } else {
                let deliveries = match (message.deliveries, message.over_the_limit) {
                    (Some(_), true) => {
                        " OVER ITS DELIVERY LIMIT: putting it back dead-letters it".to_owned()
                    }
                    (Some(n), false) => format!(" deliveries={n}"),
                    (None, _) => String::new(),
                };
                say!(
                    "#{} {} {} reason={}{}{deliveries}\n    headers={}\n    body={}",
                    message.position,
                    message.message_id.as_deref().unwrap_or("-"),
                    if message.routing_key.is_empty() {
                        "-"
                    } else {
                        &message.routing_key
                    },
                    message.reason.as_deref().unwrap_or("-"),
                    if message.redelivered {
                        " (redelivered)"
                    } else {
                        ""
                    },
                    message.headers,
                    message.body
                );
            }
        },
    )
    .await?;
    if json {
        say!("{}", serde_json::json!({ "summary": summary }));
    } else {
        say!(
            "shown {} of {} message(s) in {}; all left in place",
            summary.shown,
            summary.depth,
            args.queue
        );
    }
    if summary.pushed_over > 0 {
        eprintln!(
            "warning: {} message(s) had reached their delivery limit: putting them back \
             dead-lettered them (see <exchange>.dead-letter, reason delivery_limit)",
            summary.pushed_over
        );
    } else if summary.counts_deliveries && delivery_limit.is_none() {
        eprintln!(
            "warning: {} counts deliveries (a quorum queue): this inspection counted one for each \
             message shown. Its delivery limit is not the relay's to know (on RabbitMQ 4 the \
             default is 20)",
            args.queue
        );
    }
    Ok(())
}
