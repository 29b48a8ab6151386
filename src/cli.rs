//! The commands and their flags: `serve` (the default), `declare`,
//! `check-config`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::broker::{self, topology};
use crate::config::Settings;
use crate::startup::{Application, shutdown_signal};
use crate::telemetry;

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
        broker = %settings.amqp.uri,
        "hookrelay listening"
    );
    app.run_until_stopped(shutdown_signal()).await
}

async fn declare(settings: Settings) -> anyhow::Result<()> {
    let connection = broker::connect(&settings.amqp).await?;
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
