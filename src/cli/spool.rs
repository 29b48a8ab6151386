//! `hookrelay spool list|retry`: what waits in the local spool, what is
//! parked and why, and sending parked webhooks again. Reads the spool file
//! (`spool.path`) directly, so it works whether the relay runs or not.

use super::output::say;
use anyhow::Context;
use clap::Subcommand;

use crate::config::Settings;
use crate::spool::listing::{self, Listed, State};

#[derive(Debug, Subcommand)]
pub enum SpoolCommand {
    /// List parked webhooks, then spooled ones (waiting in the backlog, or
    /// refused by RabbitMQ and waiting for a retry), oldest first (no bodies).
    List {
        /// Only parked webhooks.
        #[arg(long)]
        parked: bool,
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Send parked webhooks again: the relay moves them to the back of the
    /// spool (within a second, or when it next starts).
    Retry {
        /// The `seq` of each parked webhook to retry, as `spool list` shows it.
        #[arg(value_name = "SEQ", required_unless_present = "all")]
        seqs: Vec<i64>,
        /// Every parked webhook.
        #[arg(long, conflicts_with = "seqs")]
        all: bool,
    },
}

pub(super) fn run(settings: Settings, command: SpoolCommand) -> anyhow::Result<()> {
    let path = &settings.spool.path;
    let context = || format!("cannot read the spool {} (spool.path)", path.display());
    match command {
        SpoolCommand::List { parked, json } => {
            let listed = listing::list(path).with_context(context)?;
            let shown: Vec<&Listed> = listed
                .iter()
                .filter(|l| !parked || l.state == State::Parked)
                .collect();
            for entry in &shown {
                if json {
                    say!("{}", serde_json::to_string(entry).unwrap_or_default());
                } else {
                    say!("{}", line(entry));
                }
            }
            if !json {
                let count = |state| listed.iter().filter(|l| l.state == state).count();
                say!(
                    "{} parked, {} refused (waiting for a retry), {} spooled",
                    count(State::Parked),
                    count(State::Refused),
                    count(State::Spooled)
                );
            }
            Ok(())
        }
        SpoolCommand::Retry { seqs, all } => {
            let seqs = if all { Vec::new() } else { seqs };
            let marked = listing::request_retry(path, &seqs).with_context(context)?;
            say!(
                "marked {marked} parked webhook(s) to be sent again; the relay takes them back \
                 within a second (or when it next starts)"
            );
            if !all && marked < seqs.len() {
                anyhow::bail!(
                    "{} of the given seq(s) are not parked (see `hookrelay spool list --parked`)",
                    seqs.len() - marked
                );
            }
            Ok(())
        }
    }
}

fn line(entry: &Listed) -> String {
    let state = match entry.state {
        State::Parked if entry.retry_requested => "parked(retry)",
        State::Parked => "parked",
        State::Spooled => "spooled",
        State::Refused => "refused",
    };
    let mut line = format!(
        "{state:<13} seq={} {} {} spooled={} refusals={}",
        entry.seq,
        entry.message_id.as_deref().unwrap_or("-"),
        entry.routing_key.as_deref().unwrap_or(&entry.kind),
        entry.spooled_at,
        entry.refusals,
    );
    if let Some(at) = &entry.retry_at {
        line.push_str(" retry_at=");
        line.push_str(at);
    }
    if let Some(error) = &entry.last_error {
        line.push_str(": ");
        line.push_str(error);
    }
    line
}
