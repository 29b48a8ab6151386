//! `hookrelay accounts`: which accounts need the user (reconnect), which need
//! the sender's support, and which need nothing; or one account's timeline.
//! Folded from the history on each run; `loginName` is never read.

use super::output::say;
use crate::accounts::{self, Selection};
use crate::config::Settings;
use crate::history::PointInTime;
use crate::wire::account::StateName;

#[derive(Debug, clap::Args)]
pub struct AccountsArgs {
    /// Show this account's timeline: each of its events and the state it left
    /// the account in.
    #[arg(value_name = "ACCOUNT_ID")]
    pub account_id: Option<String>,
    /// Only accounts in this state: ok, needs_reconnect, retrying,
    /// contact_provider, unknown.
    #[arg(long, value_name = "STATE")]
    pub state: Option<StateName>,
    /// Only accounts of this client app (`x-client-id`).
    #[arg(long, value_name = "ID")]
    pub client_id: Option<String>,
    /// Only accounts at this provider (`account.provider`).
    #[arg(long, value_name = "NAME")]
    pub provider: Option<String>,
    /// Only accounts in their state since this time or later: RFC 3339 or a
    /// duration ago (90m, 2h, 7d).
    #[arg(long, value_name = "TIME")]
    pub since: Option<PointInTime>,
    /// One JSON object per line instead of text.
    #[arg(long)]
    pub json: bool,
}

pub(super) async fn run(settings: Settings, args: AccountsArgs) -> anyhow::Result<()> {
    if let Some(account_id) = &args.account_id {
        let steps = accounts::timeline(&settings, account_id, args.client_id.as_deref()).await?;
        for step in &steps {
            if args.json {
                say!("{}", serde_json::to_string(step).unwrap_or_default());
            } else {
                say!(
                    "{} {} {} -> {}{} streak={}",
                    step.event.received_at.as_deref().unwrap_or("-"),
                    step.event.message_id,
                    step.event.routing_key,
                    step.entry.state,
                    match (step.changed, step.late) {
                        (true, _) => " (changed)",
                        (false, true) => " (late: older than an event before it; changed nothing)",
                        (false, false) => "",
                    },
                    step.entry.streak,
                );
            }
        }
        eprintln!("{} event(s) of account {account_id}", steps.len());
        return Ok(());
    }
    let book = accounts::book(&settings).await?;
    let mut shown = 0;
    let selection = Selection {
        state: args.state,
        client_id: args.client_id.clone(),
        provider: args.provider.clone(),
        since: args.since.map(|at| at.0),
    };
    for entry in book.entries().filter(|entry| selection.admits(entry)) {
        shown += 1;
        if args.json {
            say!("{}", serde_json::to_string(entry).unwrap_or_default());
        } else {
            say!(
                "{} since {} streak={} client={} account={} user={} provider={} last={} {} {}",
                entry.state,
                entry.since.as_deref().unwrap_or("-"),
                entry.streak,
                entry.key.client_id,
                entry.key.account_id,
                entry.user_id,
                entry.provider.as_deref().unwrap_or("-"),
                entry.last_event.routing_key,
                entry.last_event.received_at.as_deref().unwrap_or("-"),
                entry.last_event.message_id,
            );
        }
    }
    eprintln!("shown {shown} of {} account(s)", book.len());
    Ok(())
}
