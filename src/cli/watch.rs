//! `hookrelay tail` and `hookrelay inspect`: the commands that look at
//! messages without changing where they go; their flags and their output.

use crate::config::Settings;
use crate::inspect::{self, Inspected};
use crate::tail::{self, TailOptions, Tailed};
use crate::topic::TopicPattern;

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
    let entry = settings.topology().entry_exchange().to_owned();
    let json = args.json;
    let tailing = tail::tail(
        &settings,
        &options,
        || {
            eprintln!(
                "tailing exchange {entry} for {} (Ctrl-C to stop)",
                watched.join(" ")
            )
        },
        |message: Tailed| {
            if json {
                println!("{}", serde_json::to_string(&message).unwrap_or_default());
            } else {
                println!(
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

pub(super) async fn inspect(settings: Settings, args: InspectArgs) -> anyhow::Result<()> {
    let json = args.json;
    let summary = inspect::inspect(
        &settings.amqp,
        &args.queue,
        args.limit,
        args.raw,
        |message: Inspected| {
            if json {
                println!("{}", serde_json::to_string(&message).unwrap_or_default());
            } else {
                println!(
                    "#{} {} {} reason={}{}\n    headers={}\n    body={}",
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
        println!("{}", serde_json::json!({ "summary": summary }));
    } else {
        println!(
            "shown {} of {} message(s) in {}; all left in place",
            summary.shown, summary.depth, args.queue
        );
    }
    Ok(())
}
