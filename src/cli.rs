//! The commands and their flags: `serve` (the default), `declare`,
//! `check-config`, `replay`, `tail`; and how their results are printed.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::broker::{self, topology};
use crate::config::Settings;
use crate::replay::{self, Action, Entry, ReplayOptions};
use crate::startup::{Application, shutdown_signal};
use crate::tail;
use crate::telemetry;
use crate::topic::TopicPattern;

/// Relays sync webhooks into RabbitMQ: allowlisted, typed, durable, confirmed.
#[derive(Debug, Parser)]
#[command(name = "hookrelay", version, about, long_about = None)]
pub struct Cli {
    /// A TOML file layered over the built-in defaults (see config/default.toml);
    /// HOOKRELAY__<SECTION>__<KEY> environment variables override both.
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
    /// Declare the exchanges and queues in RabbitMQ, then exit.
    Declare,
    /// Print the effective configuration, secrets masked, then exit.
    CheckConfig,
    /// Put dead letters back into the queue they died in (or, with
    /// --to-exchange, through their original exchange and routing key).
    ///
    /// Each message is republished with a publisher confirm before its dead
    /// letter is acknowledged: a crash may duplicate a message, never lose one.
    /// Messages that are not replayed stay in the queue in their order.
    Replay(ReplayArgs),
    /// Print events as they pass through the exchange, from a temporary queue
    /// bound with the given patterns.
    Tail(TailArgs),
}

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

#[derive(Debug, clap::Args)]
pub struct TailArgs {
    /// Routing-key patterns to watch.
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

/// Runs the chosen command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::load(cli.config.as_deref())?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(settings).await,
        Command::Declare => declare(settings).await,
        Command::CheckConfig => {
            print!("{}", settings.to_masked_toml());
            Ok(())
        }
        Command::Replay(args) => replay(settings, args).await,
        Command::Tail(args) => tail(settings, args).await,
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    telemetry::init(settings.log_format);
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
    let name = settings.amqp.tool_connection_name("hookrelay-declare");
    let connection = broker::connect(&settings.amqp, name).await?;
    let channel = connection
        .create_channel()
        .await
        .context("cannot open a channel")?;
    topology::declare(&channel, &settings.amqp, &settings.queues)
        .await
        .context("cannot declare the topology")?;
    connection
        .close(200, "topology declared".into())
        .await
        .context("cannot close the connection")?;
    println!(
        "declared exchange {} with {}, {}, {} and {} consumer queue(s)",
        settings.amqp.exchange,
        settings.amqp.unrouted(),
        settings.amqp.dead_letter_queue(),
        settings.amqp.quarantine_queue(),
        settings.queues.len()
    );
    Ok(())
}

async fn replay(settings: Settings, args: ReplayArgs) -> anyhow::Result<()> {
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
    let summary = replay::replay(&settings.amqp, &options, |entry| {
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

async fn tail(settings: Settings, args: TailArgs) -> anyhow::Result<()> {
    let patterns: Vec<String> = args.patterns.iter().map(|p| p.to_string()).collect();
    let exchange = settings.amqp.exchange.clone();
    let json = args.json;
    let tailing = tail::tail(
        &settings.amqp,
        &args.patterns,
        args.count,
        args.raw,
        || {
            eprintln!(
                "tailing exchange {exchange} for {} (Ctrl-C to stop)",
                patterns.join(" ")
            )
        },
        |message| {
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
