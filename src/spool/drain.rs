//! The drainer: one task that moves spooled messages into RabbitMQ and
//! deletes each only after its confirm. It serves both lanes of the spool.
//!
//! **The backlog** (what RabbitMQ could not take: an outage) goes oldest
//! first. A batch is published on one channel with every message in flight
//! at once (RabbitMQ keeps a channel's publish order). What RabbitMQ refuses
//! in a batch moves to the refused lane and holds up nothing. At the first
//! other failure (no confirm, a lost channel) the batch stops counting: a
//! message after it that RabbitMQ did confirm stays in the spool and is
//! published again after it, a duplicate with the same `message_id`, so the
//! last copy a consumer gets of each is in arrival order, though the first
//! may not be. After such a failure the drainer sends only the head, with a
//! growing pause, until it goes through.
//!
//! **The refused lane** (what RabbitMQ refused while it took the rest: a full
//! queue bound to the routing key pushes back) goes as each message falls
//! due, on its own schedule ([`super::RetryPolicy`]); a message refused
//! `spool.max_refusals` times in all is parked.

use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::{Refusal, Spool, Spooled};
use crate::broker::{Broker, PublishError, Publisher};
use crate::stopping::Stopping;
use crate::wire::envelope::Message;

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
pub(crate) async fn run(
    spool: Spool,
    publisher: Publisher,
    broker: Broker,
    mut shutdown: Stopping,
) {
    if !spool.is_empty() {
        info!(
            backlog = spool.backlog(),
            refused = spool.refused(),
            "spooled webhooks from an earlier run will be published first"
        );
    }
    let mut drainer = Drainer {
        spool,
        publisher,
        failures: 0,
        last_error: None,
        last_retry_check: Instant::now(),
    };
    while !shutdown.is_stopping() {
        tokio::select! {
            () = drainer.spool.wait_for_work(RETRY_CHECK) => {}
            () = shutdown.stopped() => break,
        }
        drainer.take_back_retries().await;
        if drainer.spool.is_empty() {
            continue;
        }
        if !broker.wait_until_connected(CONNECT_WAIT).await {
            continue;
        }
        let mut pause = None;
        if drainer.spool.has_backlog() {
            pause = drainer.drain_batch().await;
        }
        if pause.is_none() {
            pause = drainer.retry_refused().await;
        }
        if let Some(pause) = pause {
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = shutdown.stopped() => break,
            }
        }
    }
}

struct Drainer {
    spool: Spool,
    publisher: Publisher,
    /// Failed attempts in a row that were not refusals (an outage); while
    /// non-zero, only the head of the backlog is sent.
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

    /// Publishes the next batch of the backlog; `Some(pause)` after an outage.
    async fn drain_batch(&mut self) -> Option<Duration> {
        let limit = if self.failures > 0 { 1 } else { BATCH };
        let batch = match self.spool.oldest(limit).await {
            Ok(batch) if batch.is_empty() => return None,
            Ok(batch) => batch,
            Err(err) => return Some(self.failed(err.to_string())),
        };
        let results = match self.publish(&batch).await {
            Ok(results) => results,
            Err(err) => return Some(self.failed(err.to_string())),
        };
        let settled = settle(&batch, results);
        if let Some(pause) = self.record(settled).await {
            return Some(pause);
        }
        self.failures = 0;
        if self.last_error.take().is_some() {
            info!(backlog = self.spool.backlog(), "the spool drains again");
        }
        if !self.spool.has_backlog() {
            info!("spool drained");
        }
        None
    }

    /// Publishes the refused messages that are due; `Some(pause)` after an outage.
    async fn retry_refused(&mut self) -> Option<Duration> {
        let due = match self.spool.due(BATCH).await {
            Ok(due) if due.is_empty() => return None,
            Ok(due) => due,
            Err(err) => return Some(self.failed(err.to_string())),
        };
        let results = match self.publish(&due).await {
            Ok(results) => results,
            Err(err) => return Some(self.failed(err.to_string())),
        };
        self.record(settle(&due, results)).await
    }

    /// Publishes `batch` in order on one channel; one result per message.
    async fn publish(
        &self,
        batch: &[Spooled],
    ) -> Result<Vec<Result<(), PublishError>>, PublishError> {
        // The batch stays for its sequence numbers; the publish consumes its own copy.
        let messages: Vec<Message> = batch.iter().map(|s| s.message.clone()).collect();
        self.publisher.publish_batch(messages).await
    }

    /// Deletes what was delivered, moves what was refused to the refused lane
    /// (or parks it), and keeps the rest; `Some(pause)` after an outage.
    async fn record(&mut self, settled: Settled<'_>) -> Option<Duration> {
        if let Err(err) = self.spool.remove(settled.delivered).await {
            return Some(self.failed(err.to_string()));
        }
        for (spooled, err) in settled.refused {
            let message_id = spooled.message.properties.message_id().clone();
            match self.spool.was_refused(spooled.seq, err.to_string()).await {
                Ok(Refusal::RetryIn(retry_in)) => debug!(
                    message_id = message_id.as_ref().map(|id| id.as_str()),
                    retry_in_ms = retry_in.as_millis() as u64,
                    reason = %err,
                    "RabbitMQ refused a spooled webhook again"
                ),
                Ok(Refusal::Parked { refusals }) => debug!(
                    message_id = message_id.as_ref().map(|id| id.as_str()),
                    refusals,
                    reason = %err,
                    "RabbitMQ keeps refusing a webhook: parked"
                ),
                Err(store) => return Some(self.failed(store.to_string())),
            }
        }
        settled.outage.map(|err| self.failed(err.to_string()))
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

/// What became of one published batch.
#[derive(Debug)]
struct Settled<'a> {
    /// Confirmed, before the first outage: delete them.
    delivered: Vec<i64>,
    /// Refused by RabbitMQ itself, before the first outage: retry them beside the flow.
    refused: Vec<(&'a Spooled, PublishError)>,
    /// The first failure that was not a refusal: it and everything after it stay.
    outage: Option<PublishError>,
}

/// Sorts a batch's results: nothing after the first outage counts, so that
/// nothing overtakes a message that RabbitMQ could not take; a refusal
/// overtakes nothing and stops nothing.
fn settle(batch: &[Spooled], results: Vec<Result<(), PublishError>>) -> Settled<'_> {
    let mut settled = Settled {
        delivered: Vec::with_capacity(batch.len()),
        refused: Vec::new(),
        outage: None,
    };
    for (spooled, result) in batch.iter().zip(results) {
        match result {
            Ok(()) => settled.delivered.push(spooled.seq),
            Err(err) if err.is_refusal() => settled.refused.push((spooled, err)),
            Err(err) => {
                settled.outage = Some(err);
                break;
            }
        }
    }
    settled
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use lapin::BasicProperties;

    use super::*;
    use crate::wire::envelope::Kind;

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
    fn nothing_after_the_first_outage_counts_as_delivered() {
        let batch: Vec<Spooled> = (1..=4).map(spooled).collect();
        let timeout = PublishError::ConfirmTimeout(Duration::from_secs(5));
        let results = vec![Ok(()), Err(timeout), Ok(()), Ok(())];

        let settled = settle(&batch, results);

        assert_eq!(settled.delivered, [1]);
        assert!(settled.refused.is_empty());
        assert!(matches!(
            settled.outage,
            Some(PublishError::ConfirmTimeout(_))
        ));
    }

    #[test]
    fn a_refusal_in_a_batch_holds_up_nothing_after_it() {
        let batch: Vec<Spooled> = (1..=4).map(spooled).collect();
        let results = vec![Ok(()), Err(PublishError::Nack), Ok(()), Ok(())];

        let settled = settle(&batch, results);

        assert_eq!(settled.delivered, [1, 3, 4]);
        let refused: Vec<i64> = settled.refused.iter().map(|(s, _)| s.seq).collect();
        assert_eq!(refused, [2]);
        assert!(settled.outage.is_none());
    }

    #[test]
    fn a_whole_confirmed_batch_is_delivered() {
        let batch: Vec<Spooled> = (1..=3).map(spooled).collect();
        let settled = settle(&batch, vec![Ok(()), Ok(()), Ok(())]);
        assert_eq!(settled.delivered, [1, 2, 3]);
        assert!(settled.refused.is_empty() && settled.outage.is_none());
    }
}
