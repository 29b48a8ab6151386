//! Benchmark: how long the account announcer's fold of the history takes on
//! start, and what it holds in memory per account (bench/accounts.sh).
//!
//! Fills a stream of its own with `--events` events of `--accounts` accounts
//! (published as the relay publishes them: the same headers, a UUIDv7 id, a
//! webhook body; a mix of outcomes), then reads it back with the history
//! reader into a [`Ledger`], as an announcer does when it takes over, and
//! prints one JSON line: events, accounts, seconds, events per second, and
//! the process's resident memory before and after (per account). Deletes
//! the stream.
//!
//! ```text
//! cargo run --release --example accounts_fold -- --events 1000000 --accounts 100000
//! ```

use std::time::{Instant, SystemTime};

use anyhow::Context;
use clap::Parser;
use hookrelay::accounts::Ledger;
use hookrelay::history::{Filter, Reader, Start};
use hookrelay::wire::headers::{self, ACCOUNT_ID, CLIENT_ID, RECEIVED_AT, USER_ID};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};

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

/// The outcomes of the events, in turn: mostly syncs, some failures.
const OUTCOMES: [&str; 8] = [
    "sync.account",
    "sync.account",
    "sync.account",
    "sync.account",
    "sync.error.TemporaryFailureError",
    "sync.account",
    "sync.error.LoginFailedError",
    "sync.error.TemporaryFailureError",
];

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
    fill(&connection, &stream, &args).await?;
    let fill_seconds = filled.elapsed().as_secs_f64();

    let rss_before = rss_kib();
    let started = Instant::now();
    let mut ledger = Ledger::new(3);
    let mut reader =
        Reader::open(&connection, &stream, Start::First, false, Filter::default()).await?;
    while let Some(event) = reader.next().await? {
        ledger.fold(&event);
    }
    let seconds = started.elapsed().as_secs_f64();
    let read = reader.read();
    reader.close().await;
    let rss_after = rss_kib();
    let accounts = ledger.book().len() as u64;

    channel
        .queue_delete(stream.as_str().into(), QueueDeleteOptions::default())
        .await?;
    let _ = connection.close(200, "done".into()).await;
    println!(
        "{}",
        serde_json::json!({
            "events": read,
            "accounts": accounts,
            "owed": ledger.owed(),
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

/// Publishes the events to the stream through a fanout of its own, confirmed, `in_flight` at once.
async fn fill(connection: &Connection, stream: &str, args: &Args) -> anyhow::Result<()> {
    let channel = connection.create_channel().await?;
    let entry = format!("{stream}.in");
    channel
        .exchange_declare(
            entry.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            stream.into(),
            entry.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut pending = std::collections::VecDeque::new();
    for n in 0..args.events {
        let account = n % args.accounts;
        let outcome = OUTCOMES[usize::try_from((n / args.accounts) % 8).unwrap_or(0)];
        let mut found = FieldTable::default();
        headers::set_text(&mut found, CLIENT_ID, "bench-client");
        headers::set_text(&mut found, ACCOUNT_ID, &format!("acct-{account:08}"));
        headers::set_text(&mut found, USER_ID, &format!("user-{account:08}"));
        headers::set_text(
            &mut found,
            RECEIVED_AT,
            &humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        );
        let body = match outcome.strip_prefix("sync.error.") {
            Some(code) => format!(
                r#"{{"hook":"SyncError","user":{{"id":"user-{account:08}","loginName":"someone@example.com"}},"account":{{"id":"acct-{account:08}","provider":"First Bank"}},"error":"{code}"}}"#
            ),
            None => format!(
                r#"{{"hook":"SyncAccount","user":{{"id":"user-{account:08}","loginName":"someone@example.com"}},"account":{{"id":"acct-{account:08}","provider":"First Bank"}}}}"#
            ),
        };
        let properties = BasicProperties::default()
            .with_message_id(uuid::Uuid::now_v7().to_string().into())
            .with_delivery_mode(2)
            .with_headers(found);
        // Through a fanout, as the relay's entry exchange: the stream keeps
        // the routing key, which says the outcome.
        let confirm = channel
            .basic_publish(
                entry.as_str().into(),
                outcome.into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                properties,
            )
            .await?;
        pending.push_back(confirm);
        if pending.len() >= args.in_flight {
            pending.pop_front().expect("one").await?;
        }
    }
    for confirm in pending {
        confirm.await?;
    }
    channel
        .exchange_delete(entry.as_str().into(), ExchangeDeleteOptions::default())
        .await?;
    Ok(())
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmRSS:"))
                .and_then(|line| line.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
