//! The drainer: one task that moves spooled messages into RabbitMQ, oldest
//! first, and deletes each only after its confirm.
//!
//! A batch is published on one channel with every message in flight at once
//! (RabbitMQ keeps a channel's publish order), then the confirmed ones are
//! deleted in one transaction. A message that fails stays at the head of the
//! spool and is tried again after a pause; it keeps its `message_id`, so a
//! consumer can drop the duplicate that a late confirm may cause.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::Spool;
use crate::broker::{Broker, Outgoing, Publisher};
use crate::config::AmqpSettings;

/// Messages per batch: enough to fill the pipe, few enough to bound memory.
const BATCH: usize = 256;
/// The pause after a failed batch, so a broken broker is not hammered.
const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// How long to wait for a connection before looking at the shutdown flag again.
const CONNECT_WAIT: Duration = Duration::from_secs(1);

/// Starts draining on the current runtime until `shutdown` turns true.
pub fn start(
    spool: Spool,
    publisher: Publisher,
    broker: Broker,
    shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(drain(spool, publisher, broker, shutdown))
}

async fn drain(
    spool: Spool,
    publisher: Publisher,
    broker: Broker,
    mut shutdown: watch::Receiver<bool>,
) {
    if !spool.is_empty() {
        info!(
            depth = spool.depth(),
            "spooled webhooks from an earlier run will be published first"
        );
    }
    while !*shutdown.borrow_and_update() {
        tokio::select! {
            _ = spool.wait_for_entries() => {}
            _ = shutdown.changed() => break,
        }
        if !broker.wait_until_connected(CONNECT_WAIT).await {
            continue;
        }
        if let Err(err) = drain_batch(&spool, &publisher, broker.amqp()).await {
            warn!(error = %err, depth = spool.depth(), "cannot drain the spool yet");
            tokio::select! {
                _ = tokio::time::sleep(RETRY_PAUSE) => {}
                _ = shutdown.changed() => break,
            }
        } else if spool.is_empty() {
            info!("spool drained");
        }
    }
}

/// Publishes the oldest batch; `Err` when any message of it was not confirmed.
async fn drain_batch(
    spool: &Spool,
    publisher: &Publisher,
    amqp: &AmqpSettings,
) -> anyhow::Result<()> {
    let batch = spool.oldest(BATCH).await?;
    if batch.is_empty() {
        return Ok(());
    }
    let quarantine = amqp.quarantine_queue();
    let (seqs, messages): (Vec<i64>, Vec<Outgoing>) = batch
        .into_iter()
        .map(|spooled| {
            (
                spooled.seq,
                retarget(spooled.message, &amqp.exchange, &quarantine),
            )
        })
        .unzip();
    let results = publisher.publish_batch(&messages).await?;
    let mut first_error = None;
    let mut confirmed = Vec::with_capacity(seqs.len());
    for (seq, result) in seqs.into_iter().zip(results) {
        match result {
            Ok(()) => confirmed.push(seq),
            Err(err) => {
                first_error.get_or_insert(err);
            }
        }
    }
    spool.remove(confirmed).await?;
    match first_error {
        Some(err) => Err(err.into()),
        None => Ok(()),
    }
}

/// Points a spooled message at the current topology. The spool only ever holds
/// events (for the exchange) and quarantined bodies (for the quarantine queue,
/// through the default exchange); if the exchange was renamed between runs, the
/// old names no longer exist and a message addressed to them would block the
/// spool forever, while the current ones are declared on every connection.
fn retarget(mut message: Outgoing, exchange: &str, quarantine_queue: &str) -> Outgoing {
    if message.exchange.is_empty() {
        quarantine_queue.clone_into(&mut message.routing_key);
    } else {
        exchange.clone_into(&mut message.exchange);
    }
    message
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use lapin::BasicProperties;

    use super::*;
    use crate::config::Settings;

    fn outgoing(exchange: &str, routing_key: &str) -> Outgoing {
        Outgoing {
            exchange: exchange.to_owned(),
            routing_key: routing_key.to_owned(),
            body: bytes::Bytes::new(),
            properties: BasicProperties::default(),
        }
    }

    #[test]
    fn spooled_messages_follow_a_renamed_exchange() {
        let env = HashMap::from([
            ("HOOKRELAY__INGRESS__CLIENT_IDS".to_owned(), "a".to_owned()),
            ("HOOKRELAY__AMQP__EXCHANGE".to_owned(), "new".to_owned()),
        ]);
        let amqp = Settings::load_with_env(None, env).unwrap().amqp;

        let (exchange, quarantine) = (&amqp.exchange, amqp.quarantine_queue());
        let event = retarget(outgoing("old", "sync.account"), exchange, &quarantine);
        let quarantined = retarget(outgoing("", "old.quarantine"), exchange, &quarantine);

        assert_eq!(
            (event.exchange.as_str(), event.routing_key.as_str()),
            ("new", "sync.account")
        );
        assert_eq!(
            (
                quarantined.exchange.as_str(),
                quarantined.routing_key.as_str()
            ),
            ("", "new.quarantine")
        );
    }
}
