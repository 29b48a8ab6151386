//! `hookrelay replay`: its flags, and how its results are printed.

use crate::config::Settings;
use crate::replay::{self, Action, Entry, ReplayOptions};
use crate::topic::TopicPattern;

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// The queue to replay from [default: <exchange>.dead-letter].
    #[arg(long, value_name = "NAME")]
    pub queue: Option<String>,
    /// Republish to the original exchange with the original routing key, so
    /// every queue bound to it gets the message again.
    #[arg(long)]
    pub to_exchange: bool,
    /// Only messages whose original routing key matches this topic pattern
    /// (`*` one word, `#` zero or more).
    #[arg(long, value_name = "PATTERN")]
    pub routing_key: Option<TopicPattern>,
    /// Only messages that died in this queue.
    #[arg(long, value_name = "NAME")]
    pub from_queue: Option<String>,
    /// Only messages that died for this reason.
    #[arg(long, value_enum)]
    pub reason: Option<DeathReason>,
    /// Replay at most N messages.
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// List what would be replayed, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// One JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum DeathReason {
    Rejected,
    Expired,
    Maxlen,
    #[value(name = "delivery_limit")]
    DeliveryLimit,
}

pub(super) async fn run(settings: Settings, args: ReplayArgs) -> anyhow::Result<()> {
    let options = ReplayOptions {
        queue: args.queue,
        to_exchange: args.to_exchange,
        routing_key: args.routing_key,
        from_queue: args.from_queue,
        reason: args.reason.map(|r| r.as_x_death().to_owned()),
        limit: args.limit,
        dry_run: args.dry_run,
    };
    let json = args.json;
    let summary = replay::replay(&settings, &options, |entry| {
        if json {
            println!("{}", serde_json::to_string(entry).unwrap_or_default());
        } else {
            println!("{}", entry_line(entry));
        }
    })
    .await?;
    if json {
        println!("{}", serde_json::json!({ "summary": summary }));
    } else if options.dry_run {
        println!(
            "would replay {}, skipped {}, left {}",
            summary.would_replay, summary.skipped, summary.left
        );
    } else {
        println!(
            "replayed {}, skipped {}, failed {}, left {}",
            summary.replayed, summary.skipped, summary.failed, summary.left
        );
    }
    if summary.failed > 0 {
        anyhow::bail!(
            "{} message(s) could not be replayed and were left in the queue (see above)",
            summary.failed
        );
    }
    Ok(())
}

fn entry_line(entry: &Entry) -> String {
    let action = match entry.action {
        Action::Replayed => "replayed",
        Action::WouldReplay => "would-replay",
        Action::Failed => "FAILED",
        Action::NoDeathRecord => "left",
    };
    let mut line = format!(
        "{action:<12} {} {} queue={} reason={} deaths={} died={}",
        entry.message_id.as_deref().unwrap_or("-"),
        entry.routing_key,
        entry.queue,
        if entry.reason.is_empty() {
            "-"
        } else {
            &entry.reason
        },
        entry.deaths,
        entry.died_at.as_deref().unwrap_or("-"),
    );
    if let Some(detail) = &entry.detail {
        line.push_str(": ");
        line.push_str(detail);
    }
    line
}

impl DeathReason {
    /// The reason as RabbitMQ writes it in `x-death`.
    fn as_x_death(self) -> &'static str {
        match self {
            DeathReason::Rejected => "rejected",
            DeathReason::Expired => "expired",
            DeathReason::Maxlen => "maxlen",
            DeathReason::DeliveryLimit => "delivery_limit",
        }
    }
}
