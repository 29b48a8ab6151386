//! A consumer of hookrelay's events, as an app built on the sync API would
//! write one: it asks users to reconnect their account when a sync failed for
//! want of their credentials or an answer to a security question.
//!
//! It takes its queue from the relay's own configuration (the first
//! `[[queues]]` entry, or `--queue NAME`), declares it exactly as the relay does
//! (so either may start first), consumes with manual acknowledgements and a
//! prefetch window, and rejects without requeueing what it cannot handle, so
//! that RabbitMQ dead-letters it into `<exchange>.dead-letter`, where
//! `hookrelay replay` picks it up once the consumer is fixed.
//!
//! ```sh
//! cargo run --example consumer -- --config config/hookrelay.toml
//! cargo run --example consumer -- --config config/hookrelay.toml --broken   # simulate a bug
//! ```

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Parser;
use futures_util::StreamExt;
use hookrelay::broker::consumer_queue_arguments;
use hookrelay::config::Settings;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};

/// How many unacknowledged messages RabbitMQ may push to us at once.
const PREFETCH: u16 = 10;

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
    let Some(queue) = settings
        .queues
        .iter()
        .find(|q| args.queue.as_ref().is_none_or(|name| *name == q.name))
    else {
        bail!("no such consumer queue: add a [[queues]] entry to the configuration");
    };

    let name = settings
        .amqp
        .tool_connection_name("hookrelay-example-consumer");
    let connection = hookrelay::broker::connect(&settings.amqp, name).await?;
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;

    let arguments = consumer_queue_arguments(queue, settings.topology().dead_letter_exchange());
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue.name.as_str().into(), durable, arguments)
        .await
        .with_context(|| format!("cannot declare {}", queue.name))?;
    for pattern in &queue.bindings {
        channel
            .queue_bind(
                queue.name.as_str().into(),
                settings.amqp.exchange.as_str().into(),
                pattern.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }

    let mut deliveries = channel
        .basic_consume(
            queue.name.as_str().into(),
            "example-consumer".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    println!("consuming {} (prefetch {PREFETCH})", queue.name);

    let mut handled = 0;
    while args.count.is_none_or(|count| handled < count) {
        let Some(delivery) = deliveries.next().await else {
            break;
        };
        let delivery = delivery.context("lost the connection to RabbitMQ")?;
        match handle(&delivery, args.broken) {
            Ok(()) => {
                delivery.ack(BasicAckOptions::default()).await?;
            }
            Err(why) => {
                println!("rejected {}: {why}", message_id(&delivery));
                // requeue=false: RabbitMQ dead-letters it instead of redelivering it forever.
                delivery
                    .reject(BasicRejectOptions { requeue: false })
                    .await?;
            }
        }
        handled += 1;
    }
    connection.close(200, "done".into()).await?;
    Ok(())
}

/// The business logic. It dispatches on the relay's `hook` and `error`
/// headers, not on the routing key: a message replayed into this queue arrives
/// with the queue's name as its routing key. It never reads the body's
/// `loginName`, so no personal data is printed.
fn handle(delivery: &Delivery, broken: bool) -> Result<(), String> {
    if broken {
        return Err("simulated bug".to_owned());
    }
    let user = header(delivery, "user-id").ok_or("no user-id header")?;
    let account = header(delivery, "account-id").ok_or("no account-id header")?;
    let replays = match delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-replay-count").cloned())
    {
        Some(AMQPValue::LongLongInt(n)) => format!(" (replay {n})"),
        _ => String::new(),
    };
    let hook = header(delivery, "hook").unwrap_or_default();
    let error = header(delivery, "error").unwrap_or_default();
    match (hook.as_str(), error.as_str()) {
        ("SyncError", "LoginFailedError") => {
            println!(
                "{}: asking user {user} to re-enter credentials for account {account}{replays}",
                message_id(delivery)
            );
            Ok(())
        }
        ("SyncError", "SecurityQuestionError") => {
            println!(
                "{}: asking user {user} to answer the security question for account {account}{replays}",
                message_id(delivery)
            );
            Ok(())
        }
        _ => Err(format!("no handler for {hook} {error}")),
    }
}

fn header(delivery: &Delivery, key: &str) -> Option<String> {
    match delivery.properties.headers().as_ref()?.inner().get(key)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        _ => None,
    }
}

fn message_id(delivery: &Delivery) -> String {
    delivery
        .properties
        .message_id()
        .as_ref()
        .map_or_else(|| "-".to_owned(), |id| id.to_string())
}
