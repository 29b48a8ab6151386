//! `hookrelay::consumer`: the consumer library, a crate of its own
//! ([`hookrelay_consumer`], which needs nothing of the relay), and its
//! settings read from the relay's configuration, for an app that keeps one
//! file for both.
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use hookrelay::config::Settings;
//! use hookrelay::consumer::{self, Consumer, Outcome};
//!
//! let relay = Settings::load(Some("relay.toml".as_ref()))?;
//! Consumer::new(consumer::settings(&relay, "reprompt-credentials")?)
//!     .run(|_incoming| async { Outcome::Ack }, tokio::signal::ctrl_c())
//!     .await
//! # }
//! ```

pub use hookrelay_consumer::*;

use crate::config::Settings as RelaySettings;

/// What a consumer of the `[[queues]]` entry named `queue` needs, from the
/// relay's configuration: its nodes, its exchange and its confirm timeout.
pub fn settings(relay: &RelaySettings, queue: &str) -> anyhow::Result<Settings> {
    anyhow::ensure!(
        relay.queues.iter().any(|entry| entry.name == queue),
        "no [[queues]] entry named {queue} in the configuration"
    );
    let amqp = &relay.amqp;
    let mut settings = Settings::new(String::new(), queue);
    settings.nodes = amqp.uri.iter().map(|uri| uri.expose().to_owned()).collect();
    settings.exchange.clone_from(&amqp.exchange);
    settings.confirm_timeout = amqp.confirm_timeout();
    settings.connection_name = amqp.tool_connection_name(&format!("hookrelay-consumer-{queue}"));
    Ok(settings)
}
