//! Benchmark: fills an existing history stream (a relay's
//! `<exchange>.history`) with `--events` events of `--accounts` accounts,
//! published as the relay publishes them, through a fanout of its own bound
//! to the stream alone (so the relay's consumer queues get no copies).
//! `bench/console.sh` fills a console relay's history with it.
//!
//! ```text
//! cargo run --release --example history_fill -- --stream bench.history --events 1000000
//! ```

#[path = "support/history_fill.rs"]
#[allow(dead_code)] // rss_kib is accounts_fold's
mod history_fill;

use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use lapin::{Connection, ConnectionProperties};

#[derive(Parser)]
struct Args {
    /// The stream to fill; it must exist.
    #[arg(long)]
    stream: String,
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    #[arg(long, default_value_t = 100_000)]
    accounts: u64,
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp_url: String,
    /// Publishes awaiting their confirm at once.
    #[arg(long, default_value_t = 2_000)]
    in_flight: usize,
    /// Each account's first event with its announcement, as a relay makes
    /// it: nothing is owed after the fill.
    #[arg(long)]
    announced: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let connection = Connection::connect(&args.amqp_url, ConnectionProperties::default())
        .await
        .context("RabbitMQ")?;
    let started = Instant::now();
    history_fill::fill(
        &connection,
        &args.stream,
        args.events,
        args.accounts,
        args.in_flight,
        args.announced,
    )
    .await?;
    let seconds = started.elapsed().as_secs_f64();
    let _ = connection.close(200, "done".into()).await;
    println!(
        "{}",
        serde_json::json!({ "events": args.events, "accounts": args.accounts, "fill_seconds": seconds })
    );
    Ok(())
}
