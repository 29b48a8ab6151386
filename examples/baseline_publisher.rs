//! The benchmark's baseline: RabbitMQ's own ceiling for what the relay does per
//! webhook (one persistent, `mandatory`, confirmed publish), with the same
//! number of messages in flight as the load generator has HTTP connections.
//! `bench/run.sh` runs it beside the relay and compares, publishing to the
//! relay's entry fanout (`<exchange>.in`) so that RabbitMQ routes both the
//! same way.
//!
//! ```sh
//! cargo run --release --example baseline_publisher -- --exchange bench.in --messages 20000 --in-flight 32
//! cargo run --release --example baseline_publisher -- --exchange bench.in --messages 5000 --rate 1000
//! ```
//! Prints one JSON object: messages, errors, seconds, rate, p50/p99/p99.9 in ms.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use hookrelay::broker::{Outgoing, publish_confirmed};
use lapin::options::ConfirmSelectOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tokio::sync::Mutex;

#[derive(Debug, Parser)]
struct Args {
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    uri: String,
    #[arg(long)]
    exchange: String,
    #[arg(long, default_value = "sync.error.LoginFailedError")]
    routing_key: String,
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    /// Publishes awaiting their confirm at once (closed loop).
    #[arg(long, default_value_t = 32)]
    in_flight: usize,
    /// Publishing channels, as the relay's `amqp.channels`.
    #[arg(long, default_value_t = 4)]
    channels: usize,
    /// Open loop at this many messages per second instead of closed loop.
    #[arg(long)]
    rate: Option<u64>,
    /// Also write every message's start (seconds from the first) and latency
    /// (ms) to this CSV file, for latency over time.
    #[arg(long, value_name = "FILE")]
    timings: Option<std::path::PathBuf>,
}

const BODY: &[u8] = br#"{"hook":"SyncError","user":{"id":"user-8d1f","loginName":"someone@example.com"},"account":{"id":"acct-51c2","provider":"First Bank"},"error":"LoginFailedError"}"#;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let connection = Connection::connect(&args.uri, ConnectionProperties::default()).await?;
    let mut channels = Vec::new();
    for _ in 0..args.channels {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        channels.push(channel);
    }
    let run = Arc::new(Run {
        channels,
        message: message(&args),
        latencies: Mutex::new(Vec::with_capacity(args.messages)),
        errors: AtomicUsize::new(0),
    });
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();

    let mut tasks = Vec::new();
    match args.rate {
        None => {
            for _ in 0..args.in_flight {
                let (run, next, total) = (run.clone(), next.clone(), args.messages);
                tasks.push(tokio::spawn(async move {
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if n >= total {
                            break;
                        }
                        run.publish(n).await;
                    }
                }));
            }
        }
        Some(rate) => {
            let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
            for n in 0..args.messages {
                ticker.tick().await;
                let run = run.clone();
                tasks.push(tokio::spawn(async move { run.publish(n).await }));
            }
        }
    }
    for task in tasks {
        task.await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let timed = run.latencies.lock().await.clone();
    if let Some(file) = &args.timings {
        let mut csv = String::from("start_s,latency_ms\n");
        for (began, took) in &timed {
            let start = began.duration_since(started).as_secs_f64();
            let _ = writeln!(csv, "{start:.6},{:.3}", took.as_secs_f64() * 1000.0);
        }
        std::fs::write(file, csv)?;
    }
    let mut latencies: Vec<Duration> = timed.iter().map(|(_, took)| *took).collect();
    latencies.sort();
    // p is in [0, 1]: the index is within the list.
    #[allow(clippy::cast_sign_loss)]
    let percentile = |p: f64| {
        let index = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[index].as_secs_f64() * 1000.0
    };
    println!(
        "{}",
        serde_json::json!({
            "messages": latencies.len(),
            "errors": run.errors.load(Ordering::Relaxed),
            "seconds": seconds,
            "rate": latencies.len() as f64 / seconds,
            "p50_ms": percentile(0.50),
            "p99_ms": percentile(0.99),
            "p999_ms": percentile(0.999),
            "max_ms": latencies.last().map_or(0.0, |max| max.as_secs_f64() * 1000.0),
        })
    );
    connection.close(200, "done".into()).await?;
    Ok(())
}

/// What every publishing task shares.
struct Run {
    channels: Vec<lapin::Channel>,
    message: Outgoing,
    /// When each publish began, and how long it took to its confirm.
    latencies: Mutex<Vec<(Instant, Duration)>>,
    errors: AtomicUsize,
}

impl Run {
    /// One confirmed publish, timed from send to confirm.
    async fn publish(&self, n: usize) {
        let began = Instant::now();
        let channel = &self.channels[n % self.channels.len()];
        if publish_confirmed(channel, &self.message, Duration::from_secs(30))
            .await
            .is_err()
        {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.latencies.lock().await.push((began, began.elapsed()));
    }
}

/// A message shaped like the relay's: same body, same kind of headers.
fn message(args: &Args) -> Outgoing {
    let mut headers = FieldTable::default();
    for (key, value) in [
        ("x-client-id", "bench-client"),
        ("x-source-ip", "127.0.0.1"),
        ("x-received-at", "2026-11-27T10:00:00.000Z"),
        ("hook", "SyncError"),
        ("error", "LoginFailedError"),
        ("account-id", "acct-51c2"),
        ("user-id", "user-8d1f"),
    ] {
        headers.insert(key.into(), AMQPValue::LongString(value.into()));
    }
    headers.insert("x-error-known".into(), AMQPValue::Boolean(true));
    Outgoing {
        exchange: args.exchange.clone(),
        routing_key: args.routing_key.clone(),
        body: bytes::Bytes::from_static(BODY),
        properties: BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id("01a21c85-23f0-7087-9abb-810125844f8a".into())
            .with_timestamp(1_795_774_407)
            .with_app_id("hookrelay".into())
            .with_headers(headers),
    }
}
