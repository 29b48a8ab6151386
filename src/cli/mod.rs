//! The commands and their flags, and how their results are printed: `serve`
//! (the default), `declare` and `check-config` here; `replay` in `replay.rs`;
//! `tail`, `events` and `inspect`, which look without changing anything, in
//! `watch.rs`;
//! `spool list|retry` in `spool.rs`.
//!
//! Every command logs the same way (`log_format`, `RUST_LOG`) to stderr, so
//! their warnings are seen and their output on stdout stays clean.

mod accounts;
mod audit;
mod output;
mod replay;
mod spool;
mod watch;

use std::collections::HashSet;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::broker;
use crate::broker::Topology;
use crate::broker::management::{Management, SetBy};
use crate::config::Settings;
use crate::history::{Filter, PointInTime, Start};
use crate::startup::{Application, shutdown_signal};
use crate::telemetry;
use crate::wire::topic::TopicPattern;
use output::say;

/// Relays sync webhooks into RabbitMQ: allowlisted, typed, durable, confirmed.
#[derive(Debug, Parser)]
#[command(name = "hookrelay", version, about, long_about = None)]
pub struct Cli {
    /// A TOML file layered over the built-in defaults (see config/default.toml);
    /// `HOOKRELAY__<SECTION>__<KEY>` environment variables override both.
    #[arg(
        long,
        short,
        global = true,
        env = "HOOKRELAY_CONFIG",
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the relay: the public webhook listener and the admin listener (default).
    Serve,
    /// Declare the exchanges, queues and bindings in RabbitMQ, then exit;
    /// non-zero, naming each one, when RabbitMQ refuses any.
    Declare,
    /// Print the effective configuration, secrets masked, then exit.
    CheckConfig,
    /// Put dead letters back into the queue they died in (or, with
    /// --to-exchange, through their original exchange and routing key).
    ///
    /// Each message is republished with a publisher confirm before its dead
    /// letter is acknowledged: a crash may duplicate a message, never lose one.
    /// Messages that are not replayed stay in the queue in their order.
    Replay(replay::ReplayArgs),
    /// Print events as they enter the relay: from the end of the history
    /// stream (with the history on), else from a temporary queue on the entry
    /// fanout. Either way watching changes no routing and takes nothing.
    Tail(watch::TailArgs),
    /// List events from the history (the stream EXCHANGE.history), oldest
    /// first, filtered; to the end of the history, or on with --follow.
    Events(watch::EventsArgs),
    /// Show the messages of a queue (quarantine, dead letters, unrouted, or any
    /// consumer queue) without taking them: id, routing key, why it is there,
    /// headers and body. They stay in the queue, in their order.
    Inspect(watch::InspectArgs),
    /// List accounts by what they need: the user to reconnect
    /// (needs_reconnect), the sender's support (contact_provider), or nothing;
    /// with ACCOUNT_ID, that account's timeline. Folded from the history.
    Accounts(accounts::AccountsArgs),
    /// Account for every webhook each relay stored: read the history and
    /// print, per relay, the numbers seen and every gap with what became of
    /// it. Exits non-zero when a stored webhook is not in the history.
    Audit(audit::AuditArgs),
    /// The local spool: list what waits in it or is parked, retry parked webhooks.
    #[command(subcommand)]
    Spool(spool::SpoolCommand),
}

/// Runs the chosen command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::load(cli.config.as_deref())?;
    telemetry::init(settings.log_format);
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(settings).await,
        Command::Declare => declare(settings).await,
        Command::CheckConfig => {
            print!("{}", settings.to_masked_toml());
            Ok(())
        }
        Command::Replay(args) => replay::run(settings, args).await,
        Command::Tail(args) => watch::tail(settings, args).await,
        Command::Events(args) => watch::events(settings, args).await,
        Command::Inspect(args) => watch::inspect(settings, args).await,
        Command::Accounts(args) => accounts::run(settings, args).await,
        Command::Spool(command) => spool::run(settings, command),
        Command::Audit(args) => audit::run(settings, args).await,
    }
}

/// The filters the commands that read the history share (`events`,
/// `replay --from-history`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct HistoryFilterArgs {
    /// Only events received at or after this time: RFC 3339
    /// (2026-11-28T06:00:00Z) or a duration ago (90m, 2h, 7d). Default: the
    /// oldest event kept.
    #[arg(long, value_name = "TIME")]
    pub since: Option<PointInTime>,
    /// Only events received at or before this time (same forms).
    #[arg(long, value_name = "TIME")]
    pub until: Option<PointInTime>,
    /// Only events of this user (`user.id`).
    #[arg(long, value_name = "ID")]
    pub user_id: Option<String>,
    /// Only events of this account (`account.id`).
    #[arg(long, value_name = "ID")]
    pub account_id: Option<String>,
    /// Only events the sender sent with this `x-client-id`.
    #[arg(long, value_name = "ID")]
    pub client_id: Option<String>,
}

impl HistoryFilterArgs {
    fn is_set(&self) -> bool {
        self.since.is_some()
            || self.until.is_some()
            || self.user_id.is_some()
            || self.account_id.is_some()
            || self.client_id.is_some()
    }

    /// Where a read starts: at `--since`, else at the oldest event kept.
    fn start(&self) -> Start {
        self.since.map_or(Start::First, |since| Start::At(since.0))
    }

    fn filter(&self, routing_keys: Vec<TopicPattern>) -> Filter {
        Filter {
            routing_keys,
            user_id: self.user_id.clone(),
            account_id: self.account_id.clone(),
            client_id: self.client_id.clone(),
            since: self.since.map(|at| at.0),
            until: self.until.map(|at| at.0),
            message_ids: Vec::new(),
            notes: false,
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    for warning in settings.warnings() {
        tracing::warn!(what = %warning, "the configuration needs a look");
    }
    let app = Application::build(settings.clone()).await?;
    tracing::info!(
        listen = %settings.server.listen,
        port = app.port(),
        admin_port = app.admin_port(),
        path = %settings.server.webhook_path,
        exchange = %settings.amqp.exchange,
        broker = %settings.amqp.uri.iter().map(|u| u.masked()).collect::<Vec<_>>().join(","),
        "hookrelay listening"
    );
    app.run_until_stopped(shutdown_signal()).await
}

async fn declare(settings: Settings) -> anyhow::Result<()> {
    let topology = Topology::of(&settings);
    let report = broker::with_tool_connection(&settings.amqp, "hookrelay-declare", async |c| {
        let report = topology.declare(c, &HashSet::new()).await;
        report.context("cannot declare the topology")
    })
    .await?;
    for created in &report.created {
        say!("created {created}");
    }
    let refused: Vec<_> = report
        .own_conflicts
        .iter()
        .chain(&report.queue_conflicts)
        .collect();
    for conflict in &refused {
        eprintln!("refused: {conflict}");
    }
    if !refused.is_empty() {
        anyhow::bail!(
            "RabbitMQ refused {} declaration(s), listed above: make the configuration match \
             what exists, or delete what exists so it can be declared as configured",
            refused.len()
        );
    }
    say!(
        "declared exchange {} (entry {}) with {}, {}, {} and {} consumer queue(s)",
        topology.exchange(),
        topology.entry_exchange(),
        topology.unrouted(),
        topology.dead_letter_queue(),
        topology.quarantine_queue(),
        topology.consumer_queues().len()
    );
    check_overflow(&settings).await
}

/// Says which queues would refuse events when full (and push back on the
/// relay), from the policies in effect: only the management API knows them.
async fn check_overflow(settings: &Settings) -> anyhow::Result<()> {
    let Some(management) = Management::new(&settings.amqp) else {
        say!(
            "policies not checked: set amqp.management_url for `declare` to report queues that \
             would refuse events when full (docs/src/operating.md, \"Slow and full consumers\")"
        );
        return Ok(());
    };
    let topology = Topology::of(settings);
    let mut queues = management
        .queues_bound_to(topology.exchange())
        .await
        .context("cannot read the queues bound to the exchange")?;
    let own = [
        topology.unrouted(),
        topology.dead_letter_queue(),
        topology.quarantine_queue(),
    ];
    queues.extend(own.iter().map(|q| (*q).to_owned()));
    let policies = management.policies().await;
    let mut pushing_back = 0;
    for queue in &queues {
        let state = management
            .queue(queue, &policies)
            .await
            .with_context(|| format!("cannot read queue {queue}"))?;
        let overflow = state.overflow();
        if own.contains(&queue.as_str()) && !overflow.limits.is_empty() {
            pushing_back += 1;
            eprintln!(
                "limited: the relay's own queue {queue} has {}: what does not fit is refused or \
                 dropped (overflow {}). Remove the limit from its policy",
                overflow.limits.join(", "),
                overflow.mode
            );
        } else if overflow.pushes_back() {
            pushing_back += 1;
            let set_by = match &overflow.set_by {
                SetBy::Argument => "its own x-overflow argument".to_owned(),
                SetBy::Policy(name) => format!("policy {name}"),
                SetBy::Default => "the default".to_owned(),
            };
            eprintln!(
                "pushes back: queue {queue} ({}) overflows by {} (set by {set_by}) with {}: when \
                 it is full, RabbitMQ refuses the events routed to it. Each is retried beside the \
                 flow, copied again into the other queues bound to its key at each attempt, then \
                 parked. To make it shed its oldest messages to the dead letters instead, see \
                 docs/src/operating.md, \"Slow and full consumers\"",
                state.kind,
                overflow.mode,
                overflow.limits.join(", ")
            );
        }
    }
    say!(
        "checked the overflow of {} queue(s): {pushing_back} would refuse events when full",
        queues.len()
    );
    Ok(())
}
