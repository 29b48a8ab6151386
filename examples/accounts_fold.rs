//! Benchmark: how long a relay's first start takes to fold the history into
//! its derived store, and what that costs in memory per account
//! (bench/accounts.sh).
//!
//! Fills a stream of its own with `--events` events of `--accounts` accounts
//! (published as the relay publishes them: the same headers, a UUIDv7 id, a
//! webhook body; a mix of outcomes), then reads it back with the history
//! reader into a new derived store (SQLite, in a temporary folder), in
//! batches as the relay's follower does, and prints one JSON line: events,
//! accounts, changes owed, seconds, events per second, and the process's
//! resident memory before and after (per account). Deletes the stream and
//! the store.
//!
//! ```text
//! cargo run --release --example accounts_fold -- --events 1000000 --accounts 1000000
//! ```

#[path = "support/history_fill.rs"]
mod history_fill;

use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use hookrelay::derived::store::{Derives, Item, Store};
use hookrelay::history::{Ends, Filter, Reader, Start};
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};

/// Events per transaction, as the relay's follower writes them.
const BATCH: usize = 2000;

#[derive(Parser)]
struct Args {
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
    /// Publishes awaiting their confirm at once while filling.
    #[arg(long, default_value_t = 2_000)]
    in_flight: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let connection = Connection::connect(&args.amqp_url, ConnectionProperties::default())
        .await
        .context("RabbitMQ")?;
    let stream = format!("bench-fold-{}.history", uuid::Uuid::now_v7());
    let channel = connection.create_channel().await?;
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(stream.as_str().into(), durable, arguments)
        .await?;

    let filled = Instant::now();
    history_fill::fill(
        &connection,
        &stream,
        args.events,
        args.accounts,
        args.in_flight,
        false,
    )
    .await?;
    let fill_seconds = filled.elapsed().as_secs_f64();

    let folder = std::env::temp_dir().join(&stream);
    let store = Store::open(&folder.join("history-index.sqlite"))?;
    // The defaults, without the console's index.
    let derives = Derives {
        index: false,
        ..Derives::of(&hookrelay::config::Settings::load(None)?)
    };
    let rss_before = history_fill::rss_kib();
    let started = Instant::now();
    let mut reader = Reader::open(
        &connection,
        &stream,
        Start::First,
        Ends::AtTheEnd,
        Filter::default(),
    )
    .await?;
    let mut batch = Vec::with_capacity(BATCH);
    let mut owed = 0;
    loop {
        let event = reader.next().await?;
        let end = event.is_none();
        batch.extend(event.map(|event| Item::of(event, derives)));
        if batch.len() == BATCH || (end && !batch.is_empty()) {
            owed += store.apply(&batch, derives)?.changes;
            batch.clear();
        }
        if end {
            break;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let read = reader.read();
    reader.close().await;
    let rss_after = history_fill::rss_kib();
    let accounts: u64 = store.count_by_state()?.iter().map(|(_, n)| n).sum();

    channel
        .queue_delete(stream.as_str().into(), QueueDeleteOptions::default())
        .await?;
    let _ = connection.close(200, "done".into()).await;
    drop(store);
    let _ = std::fs::remove_dir_all(&folder);
    println!(
        "{}",
        serde_json::json!({
            "events": read,
            "accounts": accounts,
            "owed": owed,
            "fill_seconds": fill_seconds,
            "fold_seconds": seconds,
            "events_per_second": read as f64 / seconds,
            "rss_before_kib": rss_before,
            "rss_after_kib": rss_after,
            "bytes_per_account": (rss_after.saturating_sub(rss_before) * 1024) as f64 / accounts.max(1) as f64,
        })
    );
    Ok(())
}
