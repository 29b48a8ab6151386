//! What the dedup check costs a webhook: the key (a SHA-256 of six fields),
//! the claim and the note that the event is durable, for new events (each
//! one a new key, the map growing as it would over a busy window), and for
//! retries (a key already seen). Also the memory a key holds.
//!
//! ```sh
//! cargo run --release --example dedup_cost [-- KEYS]
//! ```
//! BENCHMARKS.md has its figures.

use std::time::{Duration, Instant};

use hookrelay::dedup::{Claim, Dedup, DedupKey};
use hookrelay::event::Event;
use uuid::Uuid;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kib| kib.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let keys: usize = std::env::args()
        .nth(1)
        .map_or(600_000, |n| n.parse().expect("KEYS: a number"));
    // Parsed before the clock starts: parsing is not the check's cost.
    let events: Vec<Event> = (0..keys)
        .map(|n| {
            let body = format!(
                r#"{{"hook":"SyncError","user":{{"id":"user-{n}","loginName":"someone@example.com"}},"account":{{"id":"acct-{n}","provider":"First Bank"}},"error":"LoginFailedError"}}"#
            );
            Event::parse(body.as_bytes()).expect("a valid event")
        })
        .collect();
    let dedup = Dedup::new(Duration::from_secs(600)).expect("a window");
    let before = rss_kib();

    let started = Instant::now();
    for event in &events {
        let key = DedupKey::of(event, "bench-client");
        match dedup.claim(&key).await {
            Claim::New(claimed) => claimed.durable(Uuid::now_v7()),
            Claim::Duplicate(_) => panic!("every key is new"),
        }
    }
    let new = started.elapsed();
    let grown = rss_kib().saturating_sub(before);

    let started = Instant::now();
    for event in &events {
        let key = DedupKey::of(event, "bench-client");
        assert!(matches!(dedup.claim(&key).await, Claim::Duplicate(_)));
    }
    let retries = started.elapsed();

    let started = Instant::now();
    for event in &events {
        std::hint::black_box(DedupKey::of(event, "bench-client"));
    }
    let hashing = started.elapsed();

    let per = |total: Duration| total.as_nanos() as f64 / keys as f64;
    println!("{keys} keys in a 10-minute window");
    println!(
        "new event (key + claim + durable): {:.0} ns per webhook",
        per(new)
    );
    println!(
        "retry (key + claim, a duplicate): {:.0} ns per webhook",
        per(retries)
    );
    println!("of which the key alone: {:.0} ns", per(hashing));
    println!(
        "memory: {} KiB for {keys} keys, {:.0} B per key",
        grown,
        grown as f64 * 1024.0 / keys as f64
    );
}
