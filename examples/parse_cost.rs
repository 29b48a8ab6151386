//! What parsing one webhook body costs, in ns: serde_json's own `Value`
//! (which keeps the last of duplicate keys), the relay's strict check alone
//! (which refuses them and keeps nothing), and the whole `Event::parse`. `bench/run.sh` runs it; alone:
//!
//! ```sh
//! cargo run --release --example parse_cost -- 1000000
//! ```
//! Prints one JSON object.

use std::hint::black_box;
use std::time::Instant;

use hookrelay::event::Event;
use hookrelay::event::strict_json;

const BODY: &[u8] = br#"{"hook":"SyncError","user":{"id":"user-8d1f","loginName":"someone@example.com"},"account":{"id":"acct-51c2","provider":"First Bank"},"error":"LoginFailedError"}"#;

/// Nanoseconds per call of `parse`, the best of 5 runs of `n` calls.
fn ns_per_call(n: u32, mut parse: impl FnMut()) -> f64 {
    (0..5)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..n {
                parse();
            }
            started.elapsed().as_nanos() as f64 / f64::from(n)
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let n = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(200_000);
    let loose = ns_per_call(n, || {
        black_box(serde_json::from_slice::<serde_json::Value>(black_box(BODY)).unwrap());
    });
    let strict = ns_per_call(n, || {
        black_box(strict_json::check(black_box(BODY)).is_ok());
    });
    let event = ns_per_call(n, || {
        black_box(Event::parse(black_box(BODY)).unwrap());
    });
    println!(
        "{}",
        serde_json::json!({
            "calls": n,
            "serde_json_value_ns": loose,
            "strict_json_ns": strict,
            "event_parse_ns": event,
        })
    );
}
