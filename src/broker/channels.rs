//! The publishing channels of one connection: a small pool in confirm mode,
//! handed out round robin, and the replacement of a channel RabbitMQ nacks on.
//!
//! Why a nacked channel is replaced: a channel keeps its own view of every
//! queue it publishes to. After a node of a cluster is lost, RabbitMQ 3.10 can
//! leave a channel with the dead node's history-stream leader, and then nacks
//! every publish on that channel while a fresh channel works (fixed in later
//! RabbitMQ, rabbitmq-server#9165). The cluster tests ran into it: half the
//! channels nacked for as long as the test ran, so webhooks kept going
//! through the spool. A nack is rare otherwise, so a new channel per nack (at
//! most one a second per slot) costs nothing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::unpoisoned::{Locked, ReadWrite};
use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection};

/// A slot is given a new channel at most this often.
const REPLACE_AT_MOST_EVERY: Duration = Duration::from_secs(1);
/// A replaced channel is closed this long after, so that confirms of
/// publishes still in flight on it arrive.
const CLOSE_REPLACED_AFTER: Duration = Duration::from_secs(30);

pub(crate) struct Channels {
    slots: Vec<Slot>,
    next: AtomicUsize,
}

struct Slot {
    channel: RwLock<Channel>,
    replaced_at: Mutex<Option<Instant>>,
}

impl Channels {
    /// Opens `count` channels on `connection`, each in confirm mode.
    pub(super) async fn open(connection: &Connection, count: usize) -> lapin::Result<Channels> {
        let mut slots = Vec::with_capacity(count);
        for _ in 0..count {
            slots.push(Slot {
                channel: RwLock::new(confirming(connection).await?),
                replaced_at: Mutex::new(None),
            });
        }
        Ok(Channels {
            slots,
            next: AtomicUsize::new(0),
        })
    }

    /// The next channel, round robin.
    pub(super) fn next(&self) -> Channel {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        read(&self.slots[i % self.slots.len()]).clone()
    }

    /// The id of a channel that is no longer open, if any.
    pub(super) fn closed(&self) -> Option<u16> {
        self.slots
            .iter()
            .map(read)
            .find(|c| !c.status().connected())
            .map(|c| c.id())
    }

    /// Puts a new channel in the slot of `nacked`, unless that slot was given
    /// one less than a second ago (or `nacked` is no longer in the pool).
    /// `Ok(true)` when it did.
    pub(super) async fn replace(
        &self,
        connection: &Connection,
        nacked: &Channel,
    ) -> lapin::Result<bool> {
        let Some(slot) = self.slots.iter().find(|s| read(s).id() == nacked.id()) else {
            return Ok(false);
        };
        {
            let mut replaced_at = slot.replaced_at.locked();
            if replaced_at.is_some_and(|at| at.elapsed() < REPLACE_AT_MOST_EVERY) {
                return Ok(false);
            }
            *replaced_at = Some(Instant::now());
        }
        let fresh = confirming(connection).await?;
        let old = std::mem::replace(&mut *slot.channel.writing(), fresh);
        tokio::spawn(async move {
            tokio::time::sleep(CLOSE_REPLACED_AFTER).await;
            let _ = old
                .close(200, "hookrelay: replaced after a nack".into())
                .await;
        });
        Ok(true)
    }
}

fn read(slot: &Slot) -> std::sync::RwLockReadGuard<'_, Channel> {
    // A panic elsewhere while holding the lock leaves a valid channel behind.
    slot.channel.reading()
}

async fn confirming(connection: &Connection) -> lapin::Result<Channel> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}
