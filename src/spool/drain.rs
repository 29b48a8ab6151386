//! The drainer: one task that moves spooled messages into RabbitMQ, oldest
//! first, and deletes each only after its confirm.
//!
//! A batch is published on one channel with every message in flight at once
//! (RabbitMQ keeps a channel's publish order), then the confirmed ones up to
//! the first failure are deleted in one transaction. The batch stops counting
//! at its first failure, so nothing overtakes a message that failed: a message
//! after it that RabbitMQ did confirm stays in the spool and is published again
//! (a duplicate with the same `message_id`, never a reordering). After a
//! failure the drainer sends only the head, with a growing pause, until it goes
//! through; a head that RabbitMQ itself refuses `spool.max_refusals` times (a
//! nack, a return, a channel error: not an outage) is parked, and the rest
//! drain.

use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{info, warn};

use super::{Spool, Spooled};
use crate::broker::{Broker, PublishError, Publisher};
use crate::envelope::Message;

/// Messages per batch: enough to fill the pipe, few enough to bound memory.
const BATCH: usize = 256;
/// The pause after the first failure, doubled after each next one.
const FIRST_PAUSE: Duration = Duration::from_millis(500);
const MAX_PAUSE: Duration = Duration::from_secs(5);
/// How long to wait for a connection before looking at the shutdown flag again.
const CONNECT_WAIT: Duration = Duration::from_secs(1);
/// How often to look for parked messages that `hookrelay spool retry` marked.
const RETRY_CHECK: Duration = Duration::from_secs(1);

/// Drains until `shutdown` turns true. Run it as a task of its own.
pub async fn run(
    spool: Spool,
    publisher: Publisher,
    broker: Broker,
    max_refusals: u32,
    mut shutdown: watch::Receiver<bool>,
) {
    if !spool.is_empty() {
        info!(
            depth = spool.depth(),
            "spooled webhooks from an earlier run will be published first"
        );
    }
    let mut drainer = Drainer {
        spool,
        publisher,
        max_refusals,
        failures: 0,
        last_error: None,
        last_retry_check: Instant::now(),
    };
    while !*shutdown.borrow_and_update() {
        tokio::select! {
            _ = drainer.spool.wait_for_entries(RETRY_CHECK) => {}
            _ = shutdown.changed() => break,
        }
        drainer.take_back_retries().await;
        if drainer.spool.is_empty() {
            continue;
        }
        if !broker.wait_until_connected(CONNECT_WAIT).await {
            continue;
        }
        if let Some(pause) = drainer.drain_batch().await {
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.changed() => break,
            }
        }
    }
}

struct Drainer {
    spool: Spool,
    publisher: Publisher,
    max_refusals: u32,
    /// Failed attempts in a row; while non-zero, only the head is sent.
    failures: u32,
    /// The last failure logged, so a repeated one is not logged again.
    last_error: Option<String>,
    last_retry_check: Instant,
}

impl Drainer {
    async fn take_back_retries(&mut self) {
        if self.last_retry_check.elapsed() < RETRY_CHECK && !self.spool.is_empty() {
            return;
        }
        self.last_retry_check = Instant::now();
        if let Err(err) = self.spool.take_back_retries().await {
            warn!(error = %err, "cannot read the spool's retry requests");
        }
    }

    /// Publishes the next batch; `Some(pause)` when it failed.
    async fn drain_batch(&mut self) -> Option<Duration> {
        let limit = if self.failures > 0 { 1 } else { BATCH };
        let batch = match self.spool.oldest(limit).await {
            Ok(batch) if batch.is_empty() => return None,
            Ok(batch) => batch,
            Err(err) => return Some(self.failed(err.to_string())),
        };
        // The batch stays for its sequence numbers and, if the head is
        // refused, its message id; the publish consumes its own copy.
        let messages: Vec<Message> = batch.iter().map(|s| s.message.clone()).collect();
        let results = match self.publisher.publish_batch(messages).await {
            Ok(results) => results,
            Err(err) => return Some(self.failed(err.to_string())),
        };
        let (confirmed, failure) = confirmed_prefix(&batch, results);
        if let Err(err) = self.spool.remove(confirmed).await {
            return Some(self.failed(err.to_string()));
        }
        let Some((head, err)) = failure else {
            self.failures = 0;
            if self.last_error.take().is_some() {
                info!(depth = self.spool.depth(), "the spool drains again");
            }
            if self.spool.is_empty() {
                info!("spool drained");
            }
            return None;
        };
        if err.is_refusal() && self.refused_too_often(head, &err).await {
            return None;
        }
        Some(self.failed(err.to_string()))
    }

    /// Counts a refusal of `head`; parks it after `max_refusals`. True when parked.
    async fn refused_too_often(&mut self, head: &Spooled, err: &PublishError) -> bool {
        let refusals = match self.spool.refused(head.seq, err.to_string()).await {
            Ok(refusals) => refusals,
            Err(_) => return false,
        };
        if refusals < self.max_refusals {
            return false;
        }
        if let Err(park) = self.spool.park(head.seq).await {
            warn!(error = %park, "cannot park a refused webhook");
            return false;
        }
        let message_id = head
            .message
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.to_string());
        warn!(
            message_id = message_id.as_deref().unwrap_or("-"),
            refusals,
            reason = %err,
            "RabbitMQ keeps refusing a spooled webhook: parked (kept on disk, out of the way) so \
             the rest drain; `hookrelay spool list` shows it, `hookrelay spool retry` sends it again"
        );
        self.failures = 0;
        true
    }

    /// Notes a failure and says how long to pause; logs it unless it repeats.
    fn failed(&mut self, error: String) -> Duration {
        let pause = FIRST_PAUSE
            .saturating_mul(1 << self.failures.min(10))
            .min(MAX_PAUSE);
        self.failures = self.failures.saturating_add(1);
        if self.last_error.as_ref() != Some(&error) {
            warn!(%error, depth = self.spool.depth(), retry_in_ms = pause.as_millis() as u64, "cannot drain the spool yet");
            self.last_error = Some(error);
        }
        pause
    }
}

/// The sequence numbers confirmed before the first failure, and that failure.
fn confirmed_prefix(
    batch: &[Spooled],
    results: Vec<Result<(), PublishError>>,
) -> (Vec<i64>, Option<(&Spooled, PublishError)>) {
    let mut confirmed = Vec::with_capacity(batch.len());
    for (spooled, result) in batch.iter().zip(results) {
        match result {
            Ok(()) => confirmed.push(spooled.seq),
            Err(err) => return (confirmed, Some((spooled, err))),
        }
    }
    (confirmed, None)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use lapin::BasicProperties;

    use super::*;
    use crate::envelope::Kind;

    fn spooled(seq: i64) -> Spooled {
        Spooled {
            seq,
            message: Message {
                kind: Kind::Quarantine,
                body: Bytes::new(),
                properties: BasicProperties::default(),
            },
        }
    }

    #[test]
    fn nothing_after_the_first_failure_counts_as_delivered() {
        let batch: Vec<Spooled> = (1..=4).map(spooled).collect();
        let results = vec![Ok(()), Err(PublishError::Nack), Ok(()), Ok(())];

        let (confirmed, failure) = confirmed_prefix(&batch, results);

        assert_eq!(confirmed, [1]);
        let (head, err) = failure.expect("a failure");
        assert_eq!(head.seq, 2);
        assert!(matches!(err, PublishError::Nack));
    }

    #[test]
    fn a_whole_confirmed_batch_is_delivered() {
        let batch: Vec<Spooled> = (1..=3).map(spooled).collect();
        let (confirmed, failure) = confirmed_prefix(&batch, vec![Ok(()), Ok(()), Ok(())]);
        assert_eq!(confirmed, [1, 2, 3]);
        assert!(failure.is_none());
    }
}
