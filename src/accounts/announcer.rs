//! The account announcer: a background task of the relay that publishes one
//! `account.<state>` message per change of an account's state.
//!
//! Every event also lands in the queue `<exchange>.accounts` (bound to the
//! entry fanout, declared with the topology). Each relay consumes it, and
//! RabbitMQ's single active consumer gives its messages to one relay at a
//! time: with several relays on one broker, one announces, the others stand
//! by and take over when it goes away. The announcer that takes over folds
//! the whole history first, so it knows every account's state and which
//! changes the history holds no announcement of ([`Ledger`]), then for each
//! event of the queue: applies it, publishes the change it made (persistent,
//! confirmed, through the entry fanout like every event, so it is in the
//! history too), and only then acknowledges the event. A relay that stops
//! between the two leaves the event in the queue, and its successor finds the
//! announcement in the history: nothing is announced twice, nothing skipped.
//!
//! There is no database: the history is the record. An account silent for
//! longer than the history keeps events (`history.max_age`) is forgotten; its
//! next event is announced as a change from nothing (`previous_state: null`).

use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use futures_util::StreamExt;
use lapin::Acker;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::ledger::Ledger;
use crate::broker::{self, Broker, BrokerState, Outgoing, Topology, publish_confirmed};
use crate::config::Settings;
use crate::history::{Filter, Reader, Recorded, Start};
use crate::metrics::Metrics;
use crate::wire::account::AccountChange;

/// Events of the queue in flight at once: the announcer takes them one by
/// one, this many are on their way.
const PREFETCH: u16 = 200;
/// Events handled before they are acknowledged together (one frame, not one
/// per event): an announcer that stops before its ack leaves them in the
/// queue, and the next one finds each folded (and its change, if any,
/// announced) in the history.
const ACK_EVERY: u32 = 100;
/// How long the queue stays quiet before what was handled is acknowledged.
const ACK_IDLE: Duration = Duration::from_millis(50);
/// The pause before trying again, doubled up to the maximum.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(15);
/// How long to wait for the relay's own connection (which declares the queue)
/// before looking again.
const BROKER_WAIT: Duration = Duration::from_secs(5);

/// What the announcer needs from the relay.
pub(crate) struct Announcer {
    settings: Settings,
    topology: Topology,
    broker: Broker,
    metrics: Metrics,
}

/// The latest event handled and not acknowledged yet, and how many are.
#[derive(Default)]
struct Acks {
    last: Option<Acker>,
    count: u32,
}

impl Acks {
    fn handled(&mut self, acker: Acker) {
        self.last = Some(acker);
        self.count += 1;
    }

    fn pending(&self) -> bool {
        self.last.is_some()
    }

    /// Acknowledges every event handled so far.
    async fn flush(&mut self) -> anyhow::Result<()> {
        if let Some(last) = self.last.take() {
            last.ack(BasicAckOptions { multiple: true })
                .await
                .context("cannot acknowledge the events of the accounts queue")?;
        }
        self.count = 0;
        Ok(())
    }
}

/// Why a session with RabbitMQ ended.
enum Ended {
    Stopped,
    Lost(anyhow::Error),
}

impl Announcer {
    /// `None` unless `[accounts]` and `[history]` are both on.
    pub(crate) fn new(settings: &Settings, broker: Broker, metrics: Metrics) -> Option<Announcer> {
        let topology = broker.topology().clone();
        topology.accounts_queue()?;
        Some(Announcer {
            settings: settings.clone(),
            topology,
            broker,
            metrics,
        })
    }

    /// Announces until `stop` turns true.
    pub(crate) async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut backoff = FIRST_BACKOFF;
        let mut failing = false;
        while !*stop.borrow() {
            // The relay's own connection declares the queue: wait for it, so a
            // start does not begin with a refused consume.
            let connected = tokio::select! {
                connected = self.broker.wait_until_connected(BROKER_WAIT) => connected,
                _ = stop.changed() => break,
            };
            if !connected {
                continue;
            }
            let began = Instant::now();
            let ended = self.session(&mut stop).await;
            // A session that lasted was a recovery: the next loss is news,
            // and is retried quickly again.
            if began.elapsed() > MAX_BACKOFF {
                backoff = FIRST_BACKOFF;
                failing = false;
            }
            match ended {
                Ended::Stopped => break,
                Ended::Lost(err) => {
                    self.metrics.accounts_announcing(false);
                    let error = format!("{err:#}");
                    // When RabbitMQ is gone the relay already says so, once.
                    if self.broker.state() == BrokerState::Connected && !failing {
                        warn!(%error, retry_in_ms = backoff.as_millis() as u64,
                            "the account announcer lost RabbitMQ; account changes wait in \
                             their queue until it is back");
                        failing = true;
                    } else {
                        debug!(%error, "account announcer session ended");
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => break,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        self.metrics.accounts_announcing(false);
    }

    async fn session(&self, stop: &mut watch::Receiver<bool>) -> Ended {
        let amqp = &self.settings.amqp;
        let name = amqp.tool_connection_name("hookrelay-accounts");
        let connection = match broker::connect(amqp, name).await {
            Ok(connection) => connection,
            Err(err) => return Ended::Lost(err.into()),
        };
        let ended = match self.announce(&connection, stop).await {
            Ok(()) => Ended::Stopped,
            Err(err) => Ended::Lost(err),
        };
        broker::close(&connection, "account announcer done").await;
        ended
    }

    /// Stands by until RabbitMQ makes this relay the active consumer (its
    /// first delivery), folds the history, then announces until stopped.
    async fn announce(
        &self,
        connection: &Connection,
        stop: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let queue = self.topology.accounts_queue().expect("checked by new");
        let stream = self.topology.history_stream().expect("accounts need it");
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        channel
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await?;
        let mut consumer = channel
            .basic_consume(
                queue.into(),
                "hookrelay-accounts".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("cannot consume {queue}"))?;

        let first = tokio::select! {
            delivery = consumer.next() => delivery,
            _ = stop.changed() => return Ok(()),
        };
        let first = first.context("RabbitMQ cancelled the consumer")??;
        self.metrics.accounts_announcing(true);
        let started = Instant::now();
        let mut ledger = Ledger::new(self.settings.accounts.temporary_failures_to_escalate);
        ledger.expect_first(
            first
                .properties
                .message_id()
                .as_ref()
                .map(ToString::to_string),
        );
        let mut reader =
            Reader::open(connection, stream, Start::First, false, Filter::default()).await?;
        while let Some(event) = reader.next().await.context("folding the history")? {
            ledger.fold(&event);
        }
        info!(
            events = reader.read(),
            accounts = ledger.book().len(),
            owed = ledger.owed(),
            took_ms = started.elapsed().as_millis() as u64,
            "this relay announces account changes: history folded"
        );
        reader.close().await;

        let mut acks = Acks::default();
        self.handle(&channel, &mut ledger, first, &mut acks).await?;
        loop {
            let delivery = tokio::select! {
                delivery = consumer.next() => delivery,
                // Nothing more for now: acknowledge what was handled.
                () = tokio::time::sleep(ACK_IDLE), if acks.pending() => {
                    acks.flush().await?;
                    continue;
                }
                _ = stop.changed() => return acks.flush().await,
            };
            let delivery = delivery.context("RabbitMQ cancelled the consumer")??;
            self.handle(&channel, &mut ledger, delivery, &mut acks)
                .await?;
        }
    }

    /// Applies one event of the queue; announces the change it made, then
    /// acknowledges it (with the events before it, in one frame).
    async fn handle(
        &self,
        channel: &Channel,
        ledger: &mut Ledger,
        delivery: Delivery,
        acks: &mut Acks,
    ) -> anyhow::Result<()> {
        let event = Recorded {
            offset: 0,
            routing_key: delivery.routing_key.to_string(),
            properties: delivery.properties,
            body: delivery.data,
        };
        let announced = match ledger.take(&event) {
            Some(change) => {
                self.publish(channel, &change).await?;
                true
            }
            None => false,
        };
        acks.handled(delivery.acker);
        if announced || acks.count >= ACK_EVERY {
            acks.flush().await?;
        }
        Ok(())
    }

    async fn publish(&self, channel: &Channel, change: &AccountChange) -> anyhow::Result<()> {
        let outgoing = Outgoing {
            exchange: self.topology.entry_exchange().to_owned(),
            routing_key: change.routing_key(),
            body: change.body().into(),
            properties: change.properties(SystemTime::now()),
        };
        publish_confirmed(channel, &outgoing, self.settings.amqp.confirm_timeout())
            .await
            .with_context(|| format!("cannot announce {}", outgoing.routing_key))?;
        self.metrics.account_change_announced(change.state.as_str());
        info!(
            client_id = %change.client_id,
            account_id = %change.account_id,
            state = change.state.as_str(),
            previous_state = change.previous_state.map(|s| s.as_str()),
            code = change.code.as_deref(),
            streak = change.streak,
            caused_by = %change.caused_by,
            "account change announced"
        );
        Ok(())
    }
}
