//! `hookrelay replay`: its flags, and how its results are printed. It replays
//! dead letters; with `--from-history`, events kept in the history; with
//! `--from-quarantine`, quarantined bodies that parse now.

use super::HistoryFilterArgs;
use super::output::say;
use crate::config::Settings;
use crate::history;
use crate::replay::dead_letters::{self, Action, Entry, ReplayOptions};
use crate::replay::history::{self as history_replay, Destination, Sent};
use crate::replay::quarantine::{self, Redrive};
use crate::wire::topic::TopicPattern;
use std::fmt::Write as _;

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// The queue to replay from [default: <exchange>.dead-letter].
    #[arg(long, value_name = "NAME", conflicts_with = "from_history")]
    pub queue: Option<String>,
    /// Republish to the original exchange with the original routing key, so
    /// every queue bound to it gets the message again (from the history:
    /// through the topic exchange).
    #[arg(long)]
    pub to_exchange: bool,
    /// Replay events kept in the history (the stream <exchange>.history)
    /// instead of dead letters; needs --to-queue or --to-exchange.
    #[arg(long)]
    pub from_history: bool,
    /// Send quarantined bodies that parse now (after a fix) on to the
    /// exchange, as the events they are, with their original message ids;
    /// what still fails stays in quarantine.
    #[arg(long, conflicts_with_all = ["from_history", "to_exchange", "routing_key"])]
    pub from_quarantine: bool,
    /// With --from-history: send the events to this queue only (through the
    /// default exchange), e.g. a new consumer's.
    #[arg(long, value_name = "NAME", conflicts_with = "to_exchange")]
    pub to_queue: Option<String>,
    /// With --from-history: which events.
    #[command(flatten)]
    pub history: HistoryFilterArgs,
    /// Only messages whose original routing key matches this topic pattern
    /// (`*` one word, `#` zero or more).
    #[arg(long, value_name = "PATTERN")]
    pub routing_key: Option<TopicPattern>,
    /// Only messages that died in this queue.
    #[arg(long, value_name = "NAME", conflicts_with = "from_history")]
    pub from_queue: Option<String>,
    /// Only messages that died for this reason.
    #[arg(long, value_enum, conflicts_with = "from_history")]
    pub reason: Option<DeathReason>,
    /// Only the message with this `message_id` (repeat for several).
    #[arg(long = "message-id", value_name = "ID")]
    pub message_ids: Vec<String>,
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
    if args.from_history {
        return from_history(settings, args).await;
    }
    if args.from_quarantine {
        return from_quarantine(settings, args).await;
    }
    if args.history.is_set() || args.to_queue.is_some() {
        anyhow::bail!(
            "--since, --until, --user-id, --account-id, --client-id and --to-queue read the \
             history: add --from-history"
        );
    }
    let options = ReplayOptions {
        queue: args.queue,
        to_exchange: args.to_exchange,
        routing_key: args.routing_key,
        from_queue: args.from_queue,
        reason: args.reason.map(|r| r.as_x_death().to_owned()),
        message_ids: args.message_ids,
        limit: args.limit,
        dry_run: args.dry_run,
    };
    let json = args.json;
    let summary = dead_letters::replay(&settings, &options, |entry| {
        if json {
            say!("{}", serde_json::to_string(entry).unwrap_or_default());
        } else {
            say!("{}", entry_line(entry));
        }
    })
    .await?;
    if json {
        say!("{}", serde_json::json!({ "summary": summary }));
    } else if options.dry_run {
        say!(
            "would replay {}, skipped {}, left {}",
            summary.would_replay,
            summary.skipped,
            summary.left
        );
    } else {
        say!(
            "replayed {}, skipped {}, failed {}, left {}",
            summary.replayed,
            summary.skipped,
            summary.failed,
            summary.left
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

async fn from_history(settings: Settings, args: ReplayArgs) -> anyhow::Result<()> {
    let destination = match (args.to_queue, args.to_exchange) {
        (Some(queue), false) => Destination::Queue(queue),
        (None, true) => Destination::Exchange,
        _ => anyhow::bail!(
            "--from-history needs a destination: --to-queue NAME (one queue) or --to-exchange \
             (every queue bound to the event's routing key)"
        ),
    };
    let options = history_replay::Options {
        start: args.history.start(),
        filter: history::Filter {
            message_ids: args.message_ids,
            ..args.history.filter(args.routing_key.into_iter().collect())
        },
        destination,
        limit: args.limit,
        dry_run: args.dry_run,
    };
    let json = args.json;
    let summary = history_replay::replay(&settings, &options, |sent| {
        if json {
            say!("{}", serde_json::to_string(sent).unwrap_or_default());
        } else {
            say!("{}", sent_line(sent));
        }
    })
    .await?;
    if json {
        say!("{}", serde_json::json!({ "summary": summary }));
    } else if options.dry_run {
        say!(
            "would replay {}, skipped {}",
            summary.would_replay,
            summary.skipped
        );
    } else {
        say!(
            "replayed {}, skipped {}, failed {}",
            summary.replayed,
            summary.skipped,
            summary.failed
        );
    }
    if summary.failed > 0 {
        anyhow::bail!(
            "an event could not be replayed (see above); the ones after it were not tried"
        );
    }
    Ok(())
}

async fn from_quarantine(settings: Settings, args: ReplayArgs) -> anyhow::Result<()> {
    if args.queue.is_some() || args.to_queue.is_some() || args.history.is_set() {
        anyhow::bail!(
            "--from-quarantine reads <exchange>.quarantine and sends to the exchange: it takes only --message-id, --limit, --dry-run and --json"
        );
    }
    let options = quarantine::Options {
        limit: args.limit,
        dry_run: args.dry_run,
        message_ids: args.message_ids,
    };
    let json = args.json;
    let summary = quarantine::redrive(&settings, &options, |entry| {
        if json {
            say!("{}", serde_json::to_string(entry).unwrap_or_default());
        } else {
            say!("{}", redrive_line(entry));
        }
    })
    .await?;
    if json {
        say!("{}", serde_json::json!({ "summary": summary }));
    } else if options.dry_run {
        say!(
            "would re-drive {}, stays {}, left {}",
            summary.would_redrive,
            summary.stays,
            summary.left
        );
    } else {
        say!(
            "re-driven {}, stays {}, failed {}, left {}",
            summary.redriven,
            summary.stays,
            summary.failed,
            summary.left
        );
    }
    if summary.failed > 0 {
        anyhow::bail!(
            "{} body(ies) parse now but could not be sent (see above); they stay in quarantine",
            summary.failed
        );
    }
    Ok(())
}

fn redrive_line(entry: &Redrive) -> String {
    let action = match entry.action {
        quarantine::Action::Redriven => "re-driven",
        quarantine::Action::WouldRedrive => "would-redrive",
        quarantine::Action::Stays => "stays",
        quarantine::Action::Failed => "FAILED",
    };
    let mut line = format!(
        "{action:<13} {} {}",
        entry.message_id.as_deref().unwrap_or("-"),
        entry.routing_key.as_deref().unwrap_or("-"),
    );
    if let Some(reason) = &entry.reason {
        line.push_str(": ");
        line.push_str(reason);
    }
    if let Some(was) = &entry.was {
        let _ = write!(line, " (was: {was})");
    }
    line
}

fn sent_line(sent: &Sent) -> String {
    let action = match sent.action {
        history_replay::Action::Replayed => "replayed",
        history_replay::Action::WouldReplay => "would-replay",
        history_replay::Action::Failed => "FAILED",
        history_replay::Action::Skipped => "skipped",
    };
    let mut line = format!(
        "{action:<12} {} {} received={} offset={}",
        sent.message_id.as_deref().unwrap_or("-"),
        sent.routing_key,
        sent.received_at.as_deref().unwrap_or("-"),
        sent.offset,
    );
    if let Some(detail) = &sent.detail {
        line.push_str(": ");
        line.push_str(detail);
    }
    line
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
