//! Sending messages again: dead letters back where they died
//! ([`dead_letters`]), quarantined bodies that parse now ([`quarantine`]),
//! events kept in the history ([`history`]). Each is one `Pass` over its
//! `Source`, with its own rule for what to send and where.
//!
//! A pass, for each message of its source, in order:
//! - decides: keep it where it is (filtered out, or it cannot go), or send
//!   it on as a given message;
//! - in a dry run, keeps it and reports what it would send;
//! - sends it persistent, `mandatory`, and waits for RabbitMQ's confirm;
//! - only then takes it from its source (acknowledges it, for a queue): at
//!   every moment one of the two places holds it, so a crash can duplicate a
//!   message, never lose it;
//! - after a refusal, keeps it and goes on; after a channel error (a missing
//!   exchange or queue closes the channel), stops, since nothing after it
//!   could be sent either.
//!
//! A queue source (`QueueSource`) reads with `basic.get`, at most as many
//! messages as the queue held at the start (a pass never loops on its own
//! output), and puts back what it kept in one `basic.nack`, so the kept
//! messages keep their places and their order.

pub mod dead_letters;
pub mod history;
pub mod quarantine;

use std::time::Duration;

use anyhow::Context;
use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use lapin::{Channel, Connection};

use crate::broker::{Outgoing, PublishError, browse, publish_confirmed};

/// What a pass does with one message.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// Leave it where it is.
    Keep,
    /// Send it on, as this.
    Send(Box<Outgoing>),
}

/// What became of one message.
#[derive(Debug)]
pub(crate) enum Step {
    /// Left where it is, as decided.
    Kept,
    /// A dry run: it would have been sent.
    WouldSend,
    /// Sent, confirmed, and taken from its source.
    Sent,
    /// RabbitMQ did not take it: left where it is.
    Failed(PublishError),
}

/// What a pass did, message by message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    pub sent: usize,
    pub would_send: usize,
    pub kept: usize,
    pub failed: usize,
}

/// Where a pass reads from.
pub(crate) trait Source {
    type Item;
    /// The next message, `None` at the end of the pass.
    async fn next(&mut self) -> anyhow::Result<Option<Self::Item>>;
    /// Leaves `item` where it is.
    fn keep(&mut self, item: &Self::Item);
    /// `item`'s copy is confirmed: take it from the source.
    async fn taken(&mut self, item: Self::Item) -> anyhow::Result<()>;
}

/// One pass: how many to send at most, and whether to send at all.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pass {
    pub limit: Option<usize>,
    pub dry_run: bool,
    /// How long to wait for each confirm.
    pub confirm_timeout: Duration,
}

impl Pass {
    /// Runs the pass over `source`, sending on `publisher` (a channel in
    /// confirm mode). `decide` says what to do with each message, and makes
    /// what `report` then gets with the step it came to.
    pub(crate) async fn run<S: Source, E>(
        &self,
        source: &mut S,
        publisher: &Channel,
        mut decide: impl FnMut(&S::Item) -> (Verdict, E),
        mut report: impl FnMut(E, &Step),
    ) -> anyhow::Result<Tally> {
        let mut tally = Tally::default();
        while self
            .limit
            .is_none_or(|limit| tally.sent + tally.would_send < limit)
        {
            let Some(item) = source.next().await? else {
                break;
            };
            let (verdict, entry) = decide(&item);
            let step = match verdict {
                Verdict::Keep => {
                    source.keep(&item);
                    tally.kept += 1;
                    Step::Kept
                }
                Verdict::Send(_) if self.dry_run => {
                    source.keep(&item);
                    tally.would_send += 1;
                    Step::WouldSend
                }
                Verdict::Send(outgoing) => {
                    match publish_confirmed(publisher, &outgoing, self.confirm_timeout).await {
                        Ok(()) => {
                            source.taken(item).await?;
                            tally.sent += 1;
                            Step::Sent
                        }
                        Err(err) => {
                            source.keep(&item);
                            tally.failed += 1;
                            Step::Failed(err)
                        }
                    }
                }
            };
            let stop = matches!(step, Step::Failed(PublishError::Channel(_)));
            report(entry, &step);
            if stop {
                break;
            }
        }
        Ok(tally)
    }
}

/// A queue read without taking from it: what a pass keeps goes back in place.
pub(crate) struct QueueSource {
    reader: Channel,
    queue: String,
    /// Messages still to visit: the queue's depth at the start, so a pass
    /// never reads what it sent itself.
    remaining: u32,
    last_kept: Option<u64>,
    /// What a message of this queue is, for an error message.
    what: &'static str,
}

impl QueueSource {
    /// Opens `queue` on a channel of its own; `what` names its messages.
    pub(crate) async fn open(
        connection: &Connection,
        queue: &str,
        what: &'static str,
    ) -> anyhow::Result<QueueSource> {
        let reader = connection
            .create_channel()
            .await
            .context("cannot open a channel")?;
        let remaining = browse::depth(&reader, queue).await?;
        Ok(QueueSource {
            reader,
            queue: queue.to_owned(),
            remaining,
            last_kept: None,
            what,
        })
    }

    /// Puts back what the pass kept, in place, and counts what the queue
    /// holds now (on `counter`, another channel).
    pub(crate) async fn finish(self, counter: &Channel) -> anyhow::Result<u32> {
        browse::put_back(&self.reader, self.last_kept, counter, &self.queue).await
    }
}

impl Source for QueueSource {
    type Item = Delivery;

    async fn next(&mut self) -> anyhow::Result<Option<Delivery>> {
        if self.remaining == 0 {
            return Ok(None);
        }
        self.remaining -= 1;
        browse::next(&self.reader, &self.queue).await
    }

    fn keep(&mut self, item: &Delivery) {
        self.last_kept = Some(item.delivery_tag);
    }

    async fn taken(&mut self, item: Delivery) -> anyhow::Result<()> {
        item.acker
            .ack(BasicAckOptions::default())
            .await
            .map(drop)
            .with_context(|| format!("sent on, but cannot acknowledge {}", self.what))
    }
}

/// What every event carries and one an older relay accepted may lack: its
/// `x-dedup-key` (from the body and `x-client-id`, as the relay computes it
/// on receipt) and a `traceparent` (a new trace), so that a replayed event
/// holds to the contract as a new one does (from the history or the dead
/// letters alike).
pub(super) fn every_events_headers(headers: &mut lapin::types::FieldTable, body: &[u8]) {
    use crate::wire::headers::{self, CLIENT_ID, DEDUP_KEY, TRACEPARENT};
    if !headers.contains_key(DEDUP_KEY)
        && let Some(client_id) = headers::text(Some(&*headers), CLIENT_ID)
        && let Ok(parsed) = crate::event::Event::parse(body)
    {
        let key = crate::wire::dedup_key::DedupKey::of(&parsed, &client_id).to_hex();
        headers::set_text(headers, DEDUP_KEY, &key);
    }
    if !headers.contains_key(TRACEPARENT) {
        let trace = crate::traces::new_trace();
        headers::set_text(headers, TRACEPARENT, &trace.traceparent);
    }
}
