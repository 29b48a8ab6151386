//! `hookrelay tail`: watch events go by, handing over each event whose
//! routing key matches one of the patterns (matched here).
//!
//! With the history on, tail reads the history stream from its end, as a
//! stream consumer, and binds nothing at all. Without it, it binds a
//! temporary, exclusive, auto-deleted queue to the entry fanout
//! `<exchange>.in`, never to the topic exchange: bound there with `#`, it would
//! match every event, and events that no consumer queue wants would stop
//! falling through to `<exchange>.unrouted`. Either way watching never changes
//! where an event goes, leaves nothing behind and takes nothing from a
//! consumer.

use anyhow::Context;
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde::Serialize;
use serde_json::Value;

use lapin::Connection;

use crate::broker::{self, Topology};
use crate::config::Settings;
use crate::history::{Ends, Filter, Reader, Start};
use crate::watch::render::{self, Shown};
use crate::wire::topic::TopicPattern;

/// What to watch.
#[derive(Debug, Clone)]
pub struct TailOptions {
    /// Routing-key patterns; an event matching any of them is shown.
    pub patterns: Vec<TopicPattern>,
    /// Stop after this many events.
    pub count: Option<usize>,
    /// Show `user.loginName` as it is.
    pub raw: bool,
}

/// One message as `tail` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Tailed {
    pub routing_key: String,
    pub message_id: Option<String>,
    pub headers: Value,
    /// The body as JSON when it is JSON (key order kept), else as text.
    pub body: Box<serde_json::value::RawValue>,
}

/// Tails until `count` events were seen (or forever). `on_ready` runs once
/// tail listens, before the first event can arrive, with what it reads.
///
/// ```no_run
/// # async fn run() -> anyhow::Result<()> {
/// use hookrelay::config::Settings;
/// use hookrelay::watch::tail::{TailOptions, tail};
///
/// let settings = Settings::load(Some("relay.toml".as_ref()))?;
/// let options = TailOptions {
///     patterns: vec!["sync.error.*".parse()?],
///     count: Some(5),
///     raw: false,
/// };
/// tail(&settings, &options, |source| eprintln!("reading {source}"), |event| {
///     println!("{} {}", event.routing_key, event.body);
/// })
/// .await
/// # }
/// ```
pub async fn tail(
    settings: &Settings,
    options: &TailOptions,
    on_ready: impl FnOnce(&str),
    on_message: impl FnMut(Tailed),
) -> anyhow::Result<()> {
    let topology = Topology::of(settings);
    broker::with_tool_connection(
        &settings.amqp,
        "hookrelay-tail",
        async |connection| match topology.history_stream() {
            Some(stream) => from_history(connection, stream, options, on_ready, on_message).await,
            None => {
                let entry = topology.entry_exchange();
                from_entry_exchange(connection, entry, options, on_ready, on_message).await
            }
        },
    )
    .await
}

/// Reads the history stream from its end.
async fn from_history(
    connection: &Connection,
    stream: &str,
    options: &TailOptions,
    on_ready: impl FnOnce(&str),
    mut on_message: impl FnMut(Tailed),
) -> anyhow::Result<()> {
    let filter = Filter {
        routing_keys: options.patterns.clone(),
        ..Filter::default()
    };
    let mut reader = Reader::open(connection, stream, Start::Next, Ends::Following, filter).await?;
    on_ready(&format!("the history stream {stream}"));
    let mut seen = 0;
    while options.count.is_none_or(|count| seen < count) {
        let Some(event) = reader.next().await? else {
            break;
        };
        on_message(Tailed {
            routing_key: event.routing_key.clone(),
            message_id: event.message_id(),
            headers: render::headers(event.properties.headers().as_ref()),
            body: render::body(&event.body, Shown::as_received_if(options.raw)),
        });
        seen += 1;
    }
    reader.close().await;
    Ok(())
}

/// Reads a temporary queue bound to the entry fanout.
async fn from_entry_exchange(
    connection: &Connection,
    entry: &str,
    options: &TailOptions,
    on_ready: impl FnOnce(&str),
    mut on_message: impl FnMut(Tailed),
) -> anyhow::Result<()> {
    let channel = connection
        .create_channel()
        .await
        .context("cannot open a channel")?;
    let temporary = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    let queue = channel
        .queue_declare("".into(), temporary, FieldTable::default())
        .await
        .context("cannot declare a temporary queue")?;
    channel
        .queue_bind(
            queue.name().clone(),
            entry.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .with_context(|| {
            format!(
                "cannot bind to exchange {entry} (is the relay running? or run `hookrelay declare`)"
            )
        })?;
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let mut consumer = channel
        .basic_consume(
            queue.name().clone(),
            "hookrelay-tail".into(),
            no_ack,
            FieldTable::default(),
        )
        .await
        .context("cannot consume")?;
    on_ready(&format!("exchange {entry}"));

    let mut seen = 0;
    while options.count.is_none_or(|count| seen < count) {
        let Some(delivery) = consumer.next().await else {
            break;
        };
        let delivery = delivery.context("the connection to RabbitMQ was lost")?;
        let routing_key = delivery.routing_key.as_str();
        if !options.patterns.iter().any(|p| p.matches(routing_key)) {
            continue;
        }
        let properties = &delivery.properties;
        on_message(Tailed {
            routing_key: routing_key.to_owned(),
            message_id: properties.message_id().as_ref().map(|id| id.to_string()),
            headers: render::headers(properties.headers().as_ref()),
            body: render::body(&delivery.data, Shown::as_received_if(options.raw)),
        });
        seen += 1;
    }
    Ok(())
}
