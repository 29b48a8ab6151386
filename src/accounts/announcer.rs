//! The account announcer: a background task of the relay that publishes
//! each change of an account's state once, as an `account.<state>` message
//! through `<exchange>.changes` (which the history stream is bound to, so
//! every announcement is in the history too).
//!
//! What to announce comes from the relay's derived store
//! ([`crate::derived`]): its follower owes a change when it applies the
//! event that caused it, and pays it when it reads the announcement back
//! from the history (`x-caused-by`). Every relay derives the same states and
//! owes the same changes from the same stream; one of them announces:
//!
//! - **One at a time.** The relays take turns through a lease: the durable
//!   queue `<exchange>.announcer`, with RabbitMQ's single active consumer and
//!   one token message in it. Only the active consumer receives the token,
//!   and it holds it (never acknowledged) for as long as its connection
//!   lives; when that connection goes, RabbitMQ gives the token to the next
//!   relay at once. Standing by costs no polling and no write per event.
//! - **Only once caught up.** A relay competes for the lease only once its
//!   follower has read the history to its end (a fresh relay folds first).
//! - **Exactly once.** On taking the lease, the announcer first waits until
//!   its follower has applied the stream up to its end as it is *now*: every
//!   announcement a predecessor had confirmed is in the history before that
//!   end (its connection, which published them, is gone), so whatever the
//!   store still owes was not announced. Within its turn it publishes each
//!   owed change once (a cursor over the owed changes, in event order). A
//!   nack or a missing confirm is not a guess: it waits for the history
//!   again, then announces what is still owed.
//!
//! Announcements are pipelined ([`PIPELINE`] in flight), so the announcer
//! keeps up with a relay whose every webhook changes an account.
//!
//! **Silent accounts** are the one change no event causes: the announcing
//! relay looks, by its clock, for accounts whose latest event is older than
//! `accounts.silent_after` and announces `account.silent` for each
//! (`x-caused-by` is that latest event, so any relay would give it the same
//! id). Every relay's follower reads it back from the history and marks the
//! account silent then, if it had no event since. After a round of them the
//! announcer waits for its follower to read the history to its end, as on
//! taking the lease, so no account is announced silent twice. When most of
//! one client's accounts went silent together (at least ten, more than
//! half), it announces one `client.silent` for them instead: the sender
//! stopped sending to us, one incident, not thousands of messages.

use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection};
use std::sync::Arc;
use tracing::{debug, info, warn};

use crate::backoff::{Backoff, Ended};
use crate::broker::{self, Broker, BrokerState, Outgoing, Topology, publish_all};
use crate::config::AmqpSettings;
use crate::derived::{Derived, Owed};
use crate::history;
use crate::metrics::Metrics;
use crate::stopping::Stopping;
use crate::wire::account::StateName;
use crate::wire::changes::Announcement;
use crate::wire::client::{self, ClientSilent};

/// Announcements in flight at once.
const PIPELINE: usize = 64;
/// Owed changes read from the store at once.
const OWED_PAGE: usize = 512;
/// How often a relay that is not caught up looks again.
const CATCH_UP_POLL: Duration = Duration::from_millis(200);
/// The pause before trying again, doubled up to the maximum.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(15);

/// What the announcer needs from the relay.
pub(crate) struct Announcer {
    amqp: AmqpSettings,
    topology: Topology,
    broker: Broker,
    derived: Arc<Derived>,
    /// `accounts.silent_after`; zero: never.
    silent_after: Duration,
    metrics: Metrics,
}

/// Why a round of announcing ended.
enum Round {
    Stopped,
    /// RabbitMQ did not take an announcement.
    Lost(anyhow::Error),
    /// Time to look for silent accounts.
    SilentDue,
    /// This many accounts were announced silent.
    Silent(usize),
}

impl Announcer {
    /// `None` unless the relay derives accounts (and so follows the history).
    pub(crate) fn new(
        broker: Broker,
        derived: Option<Arc<Derived>>,
        silent_after: Duration,
        metrics: Metrics,
    ) -> Option<Announcer> {
        let derived = derived.filter(|derived| derived.derives().accounts)?;
        Some(Announcer {
            amqp: broker.amqp().clone(),
            topology: broker.topology().clone(),
            broker,
            derived,
            silent_after,
            metrics,
        })
    }

    /// How often the announcer looks for silent accounts: a tenth of
    /// `silent_after` (an account is announced at most that late), between
    /// 200 ms and a minute.
    fn silent_every(&self) -> Option<Duration> {
        (!self.silent_after.is_zero()).then(|| {
            (self.silent_after / 10).clamp(Duration::from_millis(200), Duration::from_secs(60))
        })
    }

    /// Stands by, announces when its turn comes, until `stop` turns true.
    pub(crate) async fn run(self, mut stop: Stopping) {
        let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
        let mut failing = false;
        loop {
            if !self.ready(&mut stop).await {
                break;
            }
            let began = Instant::now();
            let ended = self.turn(&mut stop).await;
            self.metrics.accounts_announcing(false);
            // A turn that lasted was a recovery: the next loss is news, and
            // is retried quickly again.
            if began.elapsed() > MAX_BACKOFF {
                backoff.reset();
                failing = false;
            }
            let delay = backoff.next_delay();
            match ended {
                Ended::Stopped => break,
                Ended::Lost(err) => {
                    let error = format!("{err:#}");
                    // When RabbitMQ is gone the relay already says so, once.
                    if self.broker.state() == BrokerState::Connected && !failing {
                        warn!(%error, retry_in_ms = delay.as_millis() as u64,
                            "the account announcer lost its connection; changes wait in the \
                             history index until this relay or another announces them");
                        failing = true;
                    } else {
                        debug!(%error, "account announcer turn ended");
                    }
                }
            }
            if !Backoff::sleep(delay, &mut stop).await {
                break;
            }
        }
        self.metrics.accounts_announcing(false);
    }

    /// Waits until the relay is connected (its own connection declares the
    /// changes exchange) and its follower has caught up: false when stopped.
    async fn ready(&self, stop: &mut Stopping) -> bool {
        let ready = async {
            self.broker.connected().await;
            while !self.derived.caught_up() {
                tokio::time::sleep(CATCH_UP_POLL).await;
            }
        };
        tokio::select! {
            () = ready => true,
            () = stop.stopped() => false,
        }
    }

    /// One connection: stands by for the lease, then announces while it
    /// holds it; ends when stopped, whatever it was doing.
    async fn turn(&self, stop: &mut Stopping) -> Ended<anyhow::Error> {
        let name = self.amqp.tool_connection_name("hookrelay-announcer");
        let connection = match broker::connect(&self.amqp, name).await {
            Ok(connection) => connection,
            Err(err) => return Ended::Lost(err.into()),
        };
        let mut stopped = stop.clone();
        let ended = tokio::select! {
            result = self.hold_and_announce(&connection, stop) => match result {
                Ok(()) => Ended::Stopped,
                Err(err) => Ended::Lost(err),
            },
            () = stopped.stopped() => Ended::Stopped,
        };
        // Closing hands the lease to the next relay at once.
        broker::close(&connection, "account announcer done").await;
        ended
    }

    async fn hold_and_announce(
        &self,
        connection: &Connection,
        stop: &mut Stopping,
    ) -> anyhow::Result<()> {
        let lease = self.topology.announcer_lease();
        let channel = connection.create_channel().await?;
        let declared = channel
            .queue_declare(
                ShortString::from(lease.as_str()),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                self.lease_arguments(),
            )
            .await
            .with_context(|| format!("cannot declare the announcer's lease {lease}"))?;
        // The token: one is enough; two (relays that started together) do
        // no harm, since the active consumer receives them all.
        if declared.message_count() == 0 && declared.consumer_count() == 0 {
            put_token(&channel, &lease).await?;
        }
        channel.basic_qos(1, BasicQosOptions::default()).await?;
        let mut token = channel
            .basic_consume(
                ShortString::from(lease.as_str()),
                "hookrelay-announcer".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("cannot consume the announcer's lease {lease}"))?;
        // Standing by: RabbitMQ gives the token to one relay at a time.
        token
            .next()
            .await
            .context("RabbitMQ cancelled the announcer's lease consumer")??;
        self.metrics.accounts_announcing(true);
        info!(
            owed = self.derived.owed(),
            "this relay announces account changes now (it holds {lease})"
        );
        let publisher = connection.create_channel().await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let mut lease_lost = Box::pin(async move {
            // Cancelled by RabbitMQ (the lease queue deleted), or the
            // connection closed: the turn is over.
            let _ = token.next().await;
        });
        tokio::select! {
            result = self.announce(connection, &publisher, stop) => result,
            () = &mut lease_lost => anyhow::bail!("the announcer's lease {lease} was lost"),
        }
    }

    /// Single active consumer; quorum on a cluster (`amqp.queue_type`), so
    /// the lease outlives the node it was declared on.
    fn lease_arguments(&self) -> FieldTable {
        let mut arguments = FieldTable::default();
        if self.amqp.queue_type == crate::config::QueueType::Quorum {
            arguments.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
        }
        arguments.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        arguments
    }

    /// Announces what the store owes, once each, until stopped.
    async fn announce(
        &self,
        connection: &Connection,
        channel: &Channel,
        stop: &mut Stopping,
    ) -> anyhow::Result<()> {
        let stream = self
            .topology
            .history_stream()
            .context("accounts are derived from the history")?;
        let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
        let mut silent_due = self.silent_every().map(|every| {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks
        });
        // Where this turn is in what is owed: from the start again only
        // once the history holds everything announced so far.
        let mut cursor = None;
        let mut read_history = true;
        loop {
            if read_history {
                // What a predecessor confirmed (or this relay, in the last
                // round) is in the history before its end.
                let end = history::last_event(connection, stream, history::END_WAIT_ONCE).await?;
                if let Some(end) = end {
                    tokio::select! {
                        () = self.derived.applied_through(end.offset) => {}
                        () = stop.stopped() => return Ok(()),
                    }
                }
                cursor = None;
            }
            let round = self
                .announce_owed(channel, &mut cursor, silent_due.as_mut(), stop)
                .await?;
            let round = match round {
                Round::SilentDue => self.announce_silent(channel).await?,
                round => round,
            };
            read_history = true;
            match round {
                Round::Stopped => return Ok(()),
                Round::Silent(0) => read_history = false,
                Round::SilentDue | Round::Silent(_) => {}
                Round::Lost(err) => {
                    let delay = backoff.next_delay();
                    warn!(error = %err, retry_in_ms = delay.as_millis() as u64,
                        "RabbitMQ did not take an account change; announcing it again once the \
                         history says what it holds");
                    if !Backoff::sleep(delay, stop).await {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Publishes the owed changes after a cursor, in order, until RabbitMQ
    /// does not take one (a nack, a return, no confirm in time: `Lost`),
    /// `silent_due` ticks while nothing is owed, or the relay stops.
    async fn announce_owed(
        &self,
        channel: &Channel,
        cursor: &mut Option<u64>,
        mut silent_due: Option<&mut tokio::time::Interval>,
        stop: &mut Stopping,
    ) -> anyhow::Result<Round> {
        loop {
            let after = *cursor;
            let owed = self
                .derived
                .read(move |store| store.owed_after(after, OWED_PAGE))
                .await?;
            debug!(
                owed = owed.len(),
                ?cursor,
                "account announcer: owed changes read"
            );
            if owed.is_empty() {
                let tick = async {
                    match silent_due.as_mut() {
                        Some(ticks) => ticks.tick().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = self.derived.owed_changed() => continue,
                    _ = tick => return Ok(Round::SilentDue),
                    () = stop.stopped() => return Ok(Round::Stopped),
                }
            }
            for window in owed.chunks(PIPELINE) {
                let now = SystemTime::now();
                let messages: Vec<Outgoing> =
                    window.iter().map(|owed| self.outgoing(owed, now)).collect();
                let results = publish_all(channel, &messages, self.amqp.confirm_timeout()).await;
                for (owed, result) in window.iter().zip(results) {
                    if let Err(err) = result {
                        return Ok(Round::Lost(err.into()));
                    }
                    *cursor = Some(owed.seq);
                    self.announced(&owed.announcement);
                }
                if stop.is_stopping() {
                    return Ok(Round::Stopped);
                }
            }
        }
    }

    /// Announces `account.silent` for the accounts whose latest event is
    /// older than `silent_after` (a page of them; the next round takes the
    /// rest). `Silent(n)` when done: after any, the caller waits for the
    /// history.
    async fn announce_silent(&self, channel: &Channel) -> anyhow::Result<Round> {
        let now = SystemTime::now();
        let before = crate::accounts::book::millis(now - self.silent_after);
        // Most of a client's accounts at once: one client.silent instead.
        let clients = self
            .derived
            .read(move |store| store.silent_by_client(before))
            .await?;
        let mut whole = Vec::new();
        for (client_id, silent, active) in clients {
            if client::is_one_incident(silent, active) {
                whole.push(ClientSilent {
                    client_id,
                    accounts: silent,
                    of: active,
                    before: humantime::format_rfc3339_millis(now - self.silent_after).to_string(),
                    before_ms: before,
                });
            }
        }
        if !whole.is_empty() {
            let messages: Vec<Outgoing> = whole
                .iter()
                .map(|silent| Outgoing {
                    exchange: self.topology.changes_exchange().to_owned(),
                    routing_key: client::SILENT.to_owned(),
                    body: silent.body().into(),
                    properties: silent.properties(now, &crate::traces::new_trace()),
                })
                .collect();
            let results = publish_all(channel, &messages, self.amqp.confirm_timeout()).await;
            for (silent, result) in whole.iter().zip(results) {
                if let Err(err) = result {
                    return Ok(Round::Lost(err.into()));
                }
                warn!(client_id = %silent.client_id, accounts = silent.accounts, of = silent.of,
                    "no webhook for most of this client's accounts for accounts.silent_after: the \
                     sender stopped sending to us (check the webhook URL and the plan in the \
                     sender's dashboard, and the forbidden requests: its addresses may have \
                     changed); announced once as client.silent");
            }
            // The rest once the history holds these.
            return Ok(Round::Silent(whole.len()));
        }
        let silent = self
            .derived
            .read(move |store| store.silent_candidates(before, OWED_PAGE))
            .await?;
        let mut announced = 0;
        for window in silent.chunks(PIPELINE) {
            let messages: Vec<Outgoing> = window
                .iter()
                .map(|entry| {
                    let change = crate::accounts::book::silenced(entry);
                    // No event caused it: a trace of its own.
                    let trace = crate::traces::new_trace();
                    Outgoing {
                        exchange: self.topology.changes_exchange().to_owned(),
                        routing_key: change.routing_key(),
                        body: change.body().into(),
                        properties: change.properties(now, Some(&trace)),
                    }
                })
                .collect();
            let results = publish_all(channel, &messages, self.amqp.confirm_timeout()).await;
            for (entry, result) in window.iter().zip(results) {
                if let Err(err) = result {
                    return Ok(Round::Lost(err.into()));
                }
                announced += 1;
                self.metrics
                    .account_change_announced(StateName::Silent.as_str());
                debug!(
                    client_id = %entry.key.client_id,
                    account_id = %entry.key.account_id,
                    "account announced silent"
                );
            }
        }
        Ok(Round::Silent(announced))
    }

    fn outgoing(&self, owed: &Owed, now: SystemTime) -> Outgoing {
        let announcement = &owed.announcement;
        Outgoing {
            exchange: self.topology.changes_exchange().to_owned(),
            routing_key: announcement.routing_key(),
            body: announcement.body().into(),
            properties: announcement.properties(
                now,
                owed.received_at.as_deref(),
                owed.trace.as_ref(),
            ),
        }
    }

    /// Counts and logs one announcement RabbitMQ confirmed.
    fn announced(&self, announcement: &Announcement) {
        match announcement {
            Announcement::Account(change) => {
                self.metrics.account_change_announced(change.state.as_str());
                debug!(
                    client_id = %change.client_id,
                    account_id = %change.account_id,
                    state = change.state.as_str(),
                    caused_by = %change.caused_by,
                    "account change announced"
                );
            }
            Announcement::Provider(incident) => {
                self.metrics
                    .provider_incident_announced(incident.kind.as_str());
                // Rare, and what support asks first: is it the bank's connector?
                info!(
                    provider = %incident.provider,
                    incident = %incident.incident,
                    kind = incident.kind.as_str(),
                    accounts = incident.accounts,
                    recovered = incident.recovered,
                    code = %incident.code,
                    "provider incident announced"
                );
            }
        }
    }
}

/// Puts the lease's token in its queue, persistent and confirmed.
async fn put_token(channel: &Channel, lease: &str) -> anyhow::Result<()> {
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    channel
        .basic_publish(
            "".into(),
            ShortString::from(lease),
            BasicPublishOptions::default(),
            b"the account announcer's turn: whoever holds this announces",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await?
        .await?;
    Ok(())
}
