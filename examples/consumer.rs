//! A consumer of hookrelay's events, as an app built on the sync API would
//! write one with `hookrelay::consumer`: it asks users to reconnect their
//! account when a sync failed for want of their credentials or an answer to a
//! security question.
//!
//! It takes its queue from the relay's own configuration (the first
//! `[[queues]]` entry, or `--queue NAME`). The library declares it as the
//! relay does (either may start first), consumes with manual acknowledgements
//! and a prefetch window, retries through the queue's retry tiers what fails
//! for now, and dead-letters what cannot be handled into
//! `<exchange>.dead-letter`, where `hookrelay replay` picks it up once the
//! consumer is fixed.
//!
//! ```sh
//! cargo run --release --example consumer -- --config config/hookrelay.toml
//! cargo run --release --example consumer -- --config config/hookrelay.toml --broken   # simulate a bug
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context;
use clap::Parser;
use hookrelay::config::Settings;
use hookrelay::consumer::{Consumer, Incoming, Outcome, Received};
use tokio::sync::Notify;

#[derive(Debug, Parser)]
#[command(about = "Example consumer: re-prompts users whose account sync needs them")]
struct Args {
    /// The relay's configuration file (for the broker URI and the queues).
    #[arg(long, env = "HOOKRELAY_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// The consumer queue to use [default: the first [[queues]] entry].
    #[arg(long, value_name = "NAME")]
    queue: Option<String>,
    /// Simulate a bug: every message fails and is dead-lettered.
    #[arg(long)]
    broken: bool,
    /// Exit after handling N messages.
    #[arg(long, value_name = "N")]
    count: Option<usize>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let settings = Settings::load(args.config.as_deref())?;
    let queue = match &args.queue {
        Some(queue) => queue.clone(),
        None => settings
            .queues
            .first()
            .map(|q| q.name.clone())
            .context("no consumer queue: add a [[queues]] entry to the configuration")?,
    };
    println!("consuming {queue}");

    let handled = Arc::new(AtomicUsize::new(0));
    let enough = Arc::new(Notify::new());
    let (count, broken) = (args.count, args.broken);
    let handler = {
        let (handled, enough) = (handled.clone(), enough.clone());
        move |incoming: Incoming| {
            let outcome = handle(&incoming, broken);
            if count.is_some_and(|count| handled.fetch_add(1, Ordering::SeqCst) + 1 >= count) {
                enough.notify_one();
            }
            async move { outcome }
        }
    };
    let stop = async {
        tokio::select! {
            () = enough.notified() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    Consumer::new(&settings, &queue)?
        .prefetch(10)
        .run(handler, stop)
        .await
}

/// The business logic, on the typed event. It never prints the body's
/// `loginName`: it is personal data.
fn handle(incoming: &Incoming, broken: bool) -> Outcome {
    let id = &incoming.message_id;
    if broken {
        println!("rejected {id}: simulated bug");
        return Outcome::DeadLetter("simulated bug".to_owned());
    }
    let event = match &incoming.received {
        Received::Event(event) => event,
        // A queue bound to `account.*`: one message per change of an
        // account's state, not one per daily sync.
        Received::AccountChange(change) => {
            println!(
                "{id}: account {} of user {} is now {}",
                change.account_id,
                change.user_id,
                change.state.as_str()
            );
            return Outcome::Ack;
        }
    };
    let (user, account) = (event.user_id(), event.account_id());
    let replays = match incoming.replays {
        0 => String::new(),
        n => format!(" (replay {n})"),
    };
    match event.error_code().map(hookrelay::event::ErrorCode::as_str) {
        Some("LoginFailedError") => {
            println!(
                "{id}: asking user {user} to re-enter credentials for account {account}{replays}"
            );
            Outcome::Ack
        }
        Some("SecurityQuestionError") => {
            println!(
                "{id}: asking user {user} to answer the security question for account {account}{replays}"
            );
            Outcome::Ack
        }
        other => {
            let why = format!("no handler for {} {}", event.hook(), other.unwrap_or("-"));
            println!("rejected {id}: {why}");
            Outcome::DeadLetter(why)
        }
    }
}
