//! `hookrelay audit`: accounts for every number each relay gave a stored
//! webhook, from the history (see [`crate::audit`]). Exits non-zero when a
//! number is lost.

use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::Args;

use super::output::say;
use crate::audit::reckoning::{Fate, Reckoning, reckon};
use crate::audit::scan;
use crate::broker::{Topology, with_tool_connection};
use crate::config::Settings;
use crate::history::{PointInTime, Start};

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Read the history from this time: RFC 3339 or a duration ago (90m,
    /// 7d). Default: all of it (what the stream keeps).
    #[arg(long)]
    pub since: Option<PointInTime>,
    /// Only this relay (its `x-relay-id`).
    #[arg(long)]
    pub relay: Option<String>,
    /// A gap younger than this may still be in flight: not a loss yet.
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    pub grace: Duration,
    /// One JSON object per relay instead of text.
    #[arg(long)]
    pub json: bool,
}

pub(super) async fn run(settings: Settings, args: AuditArgs) -> anyhow::Result<()> {
    let topology = Topology::of(&settings);
    let stream = topology
        .history_stream()
        .context("the audit reads the history, which is off ([history] enabled = false)")?
        .to_owned();
    let start = args.since.map_or(Start::First, |since| Start::At(since.0));
    let relay = args.relay.as_deref();
    // The spool this host can read, first: what waits there is not lost,
    // and what leaves it meanwhile is in the history read after.
    let path = &settings.spool.path;
    let spooled = match settings.spool.enabled && path.exists() {
        true => scan::spool(path, relay)
            .with_context(|| format!("cannot read the spool {}", path.display()))?,
        false => Default::default(),
    };
    let mut relays = with_tool_connection(&settings.amqp, "hookrelay-audit", async |connection| {
        scan::history(connection, &stream, start, relay).await
    })
    .await?;
    for (id, numbers) in spooled {
        relays.entry(id).or_default().spooled.extend(numbers);
    }
    let now = SystemTime::now();
    let reckonings: Vec<Reckoning> = relays
        .iter()
        .map(|(id, facts)| reckon(id, facts, now, args.grace))
        .collect();
    for reckoning in &reckonings {
        match args.json {
            true => say!("{}", serde_json::to_string(reckoning)?),
            false => print(reckoning),
        }
    }
    let lost: u64 = reckonings.iter().map(|r| r.lost).sum();
    if !args.json {
        say!(
            "{} relay(s); {lost} stored webhook(s) missing from the history",
            reckonings.len()
        );
    }
    match lost {
        0 => Ok(()),
        _ => anyhow::bail!(
            "{lost} webhook(s) a relay stored are not in the history: see the LOST gaps above"
        ),
    }
}

fn print(reckoning: &Reckoning) {
    let range = match (reckoning.first, reckoning.last) {
        (Some(first), Some(last)) => format!("numbers {first} to {last}"),
        _ => "no numbers".to_owned(),
    };
    say!(
        "relay {}: {} in the history ({range}), {} lost",
        reckoning.relay_id,
        reckoning.seen,
        reckoning.lost
    );
    for gap in &reckoning.gaps {
        let numbers = match gap.from == gap.to {
            true => gap.from.to_string(),
            false => format!("{} to {}", gap.from, gap.to),
        };
        let between = match (&gap.after, &gap.before) {
            (Some(after), Some(before)) => format!(" (between {after} and {before})"),
            _ => String::new(),
        };
        say!("  {numbers}{between}: {}", what(gap.fate));
    }
    if reckoning.spooled_after_last > 0 {
        say!(
            "  {} more in this host's spool, not yet in RabbitMQ",
            reckoning.spooled_after_last
        );
    }
}

fn what(fate: Fate) -> &'static str {
    match fate {
        Fate::Burned => {
            "never stored (the request was answered 503 or abandoned; the relay noted it)"
        }
        Fate::Spooled => "in this host's spool, not yet in RabbitMQ",
        Fate::NeverHandedOut => "never handed out (reserved by a run that stopped cleanly)",
        Fate::UnsettledAtACrash => {
            "in flight when the relay stopped uncleanly (a crash or a kill): those requests were \
             not answered 2xx unless stored, and none of these is stored"
        }
        Fate::Recent => "recent: may still be in flight (see --grace)",
        Fate::Lost => "LOST: stored by the relay, and not in the history",
    }
}
