//! A consumer of hookrelay's events, as an app built on the sync API would
//! write one with `hookrelay-consumer`: it asks users to reconnect their
//! account when a sync failed for want of their credentials or an answer to a
//! security question.
//!
//! It needs RabbitMQ's address and its queue's name, nothing of the relay's
//! configuration. The relay declares the queue (a `[[queues]]` entry) and
//! its retry tiers; the library consumes with manual acknowledgements and a
//! prefetch window, retries through those tiers what fails for now, and
//! dead-letters what cannot be handled into `<exchange>.dead-letter`, where
//! `hookrelay replay` picks it up once the consumer is fixed.
//!
//! ```sh
//! cargo run --release -p hookrelay-consumer --example consumer -- --queue reprompt-credentials
//! cargo run --release -p hookrelay-consumer --example consumer -- --queue reprompt-credentials --broken   # simulate a bug
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use clap::Parser;
use hookrelay_consumer::wire::event::ErrorCode;
use hookrelay_consumer::{Consumer, Incoming, Outcome, Received, Settings};
use tokio::sync::Notify;

#[derive(Debug, Parser)]
#[command(about = "Example consumer: re-prompts users whose account sync needs them")]
struct Args {
    /// RabbitMQ's AMQP URI.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    uri: String,
    /// The queue to consume: a `[[queues]]` entry of the relay's.
    #[arg(long, value_name = "NAME")]
    queue: String,
    /// The relay's `amqp.exchange`.
    #[arg(long, default_value = "webhooks")]
    exchange: String,
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
    let mut settings = Settings::new(args.uri, &args.queue);
    settings.exchange = args.exchange;
    println!("consuming {}", args.queue);

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
    Consumer::new(settings).run(handler, stop).await
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
        // A queue bound to `provider.*`: one message when a bank's connector
        // breaks for many accounts at once, one when it works again.
        Received::ProviderIncident(incident) => {
            println!(
                "{id}: provider {} {} ({} accounts, code {})",
                incident.provider,
                incident.kind.as_str(),
                incident.accounts,
                incident.code
            );
            return Outcome::Ack;
        }
        // `client.silent`: most of the client's accounts went quiet at once.
        Received::ClientSilent(silent) => {
            println!(
                "{id}: no webhooks for {} of {} accounts of {} since {}",
                silent.accounts, silent.of, silent.client_id, silent.before
            );
            return Outcome::Ack;
        }
    };
    let (user, account) = (event.user_id(), event.account_id());
    let replays = match incoming.replays {
        0 => String::new(),
        n => format!(" (replay {n})"),
    };
    match event.error_code().map(ErrorCode::as_str) {
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
