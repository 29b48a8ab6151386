//! The relay's side of the audit, for as long as it runs: the settled mark
//! written every [`MARK_EVERY`], the run's start noted in the history once
//! RabbitMQ is reachable, burned numbers noted as they come; at a clean
//! stop, the last burned numbers noted and the state file closed.

use std::sync::Arc;
use std::time::Duration;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use tracing::{error, info, warn};

use super::notes::{self, Note};
use super::numbering::{MARK_EVERY, Numbering};
use crate::broker::{Broker, BrokerState};
use crate::derived::Derived;
use crate::metrics::Metrics;
use crate::spool::listing;
use crate::stopping::Stopping;

/// How often burned numbers are noted, at most.
const NOTE_EVERY: Duration = Duration::from_secs(1);
/// How long a stopping relay tries to note its last burned numbers.
const LAST_NOTE_WITHIN: Duration = Duration::from_secs(5);
/// Burned numbers in one note at most (a long outage without a spool burns
/// many).
const BURNED_PER_NOTE: usize = 10_000;
/// How often the follower's tally is looked at for missing numbers.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// What the keeper reads besides its numbering.
pub(crate) struct Keeping {
    pub broker: Broker,
    /// The history stream, where notes go (none while the history is off).
    pub stream: Option<String>,
    /// The follower's tally, when the relay follows the history.
    pub derived: Option<Arc<Derived>>,
    /// This relay's spool file: what waits there is not missing.
    pub spool: Option<PathBuf>,
    pub metrics: Metrics,
    /// `audit.missing_after`.
    pub missing_after: Duration,
}

/// Keeps `numbering`'s file and notes until `stopping` turns true (after
/// the HTTP servers have stopped: nothing is in flight any more). `stream`:
/// the history stream, where notes go (none while the history is off).
pub(crate) async fn keep(numbering: Arc<Numbering>, keeping: Keeping, mut stopping: Stopping) {
    let Keeping {
        broker,
        stream,
        derived,
        spool,
        metrics,
        missing_after,
    } = keeping;
    let relay_id = numbering.relay().to_string();
    let mut started = stream.as_ref().map(|_| Note::Started {
        relay_id: relay_id.clone(),
        first: numbering.first(),
        ended: numbering.ended(),
    });
    let mut mark = tokio::time::interval(MARK_EVERY);
    let mut note = tokio::time::interval(NOTE_EVERY);
    let mut check = tokio::time::interval(CHECK_EVERY);
    let mut seen_before = false;
    let mut failing = Failing::default();
    loop {
        tokio::select! {
            _ = mark.tick() => {
                let numbering = numbering.clone();
                let marked = tokio::task::spawn_blocking(move || numbering.mark()).await;
                let marked = marked.unwrap_or_else(|err| Err(err.into()));
                failing.said("write the relay state file", marked);
            }
            _ = note.tick() => {
                let Some(stream) = stream.as_deref() else {
                    // No history, no audit: burned numbers have nowhere to
                    // be noted, and nothing to be reckoned with.
                    numbering.noted(&numbering.burned());
                    continue;
                };
                if broker.status().state != BrokerState::Connected {
                    continue;
                }
                if let Some(note) = &started {
                    let written = notes::write(broker.amqp(), stream, note).await;
                    let noted = match written {
                        Ok(()) => numbering.ends_noted(),
                        Err(err) => Err(err),
                    };
                    if failing.said("note the run's start in the history", noted) {
                        started = None;
                    }
                }
                if started.is_none() {
                    let noted = note_burned(&numbering, &broker, stream, &relay_id).await;
                    failing.said("note burned numbers in the history", noted);
                }
                continue;
            }
            _ = check.tick(), if derived.is_some() => {
                if let Some(derived) = &derived {
                    let found = Found { spool: spool.as_deref(), metrics: &metrics, after: missing_after };
                    check_missing(&numbering, derived, found, &mut seen_before).await;
                }
            }
            () = stopping.stopped() => break,
        }
    }
    if let Some(stream) = stream.as_deref()
        && started.is_none()
    {
        let last = note_burned(&numbering, &broker, stream, &relay_id);
        let noted = tokio::time::timeout(LAST_NOTE_WITHIN, last).await;
        let noted = noted.unwrap_or_else(|_| Err(anyhow::anyhow!("RabbitMQ did not confirm")));
        failing.said("note the last burned numbers in the history", noted);
    }
    failing.said("close the relay state file", numbering.close());
}

/// Looks at the follower's tally for this relay's numbers missing past
/// `after`, except those in its spool. Each relay vouches for its own: it
/// alone can read its spool, and another's refused or parked webhooks are
/// that relay's to report. A count is taken as found when two checks in a
/// row see it, so a webhook drained from the spool between a check's two
/// reads is no alarm.
async fn check_missing(
    numbering: &Numbering,
    derived: &Derived,
    found: Found<'_>,
    seen_before: &mut bool,
) {
    let Found {
        spool,
        metrics,
        after,
    } = found;
    let relay = numbering.relay().to_string();
    let now = Instant::now();
    let mut missing = derived.tally().missing_of(&relay, now, after, |_| false);
    if missing.is_some()
        && let Some(spool) = spool.filter(|spool| spool.exists())
    {
        // Rarely: only while something is missing.
        let path = spool.to_owned();
        let listed = tokio::task::spawn_blocking(move || listing::list(&path)).await;
        let spooled: HashSet<u64> = match listed {
            Ok(Ok(listed)) => listed
                .into_iter()
                .filter(|entry| entry.relay_id.as_deref() == Some(relay.as_str()))
                .filter_map(|entry| entry.relay_seq)
                .collect(),
            _ => HashSet::new(),
        };
        missing = derived
            .tally()
            .missing_of(&relay, now, after, |seq| spooled.contains(&seq));
    }
    let confirmed = std::mem::replace(seen_before, missing.is_some());
    let missing: Vec<_> = missing.filter(|_| confirmed).into_iter().collect();
    let numbers: u64 = missing.iter().map(|m| m.numbers).sum();
    let gaps: u64 = missing.iter().map(|m| m.gaps).sum();
    metrics.audit_missing(&relay, numbers, gaps);
    if !numbering.found_missing(missing.clone()) {
        return;
    }
    if missing.is_empty() {
        info!("audit: every webhook this relay stored is in the history again");
    }
    for relay in &missing {
        error!(
            relay = relay.relay_id,
            numbers = relay.numbers,
            first_from = relay.first.0,
            first_to = relay.first.1,
            "audit: webhooks this relay stored have been missing from the history for over \
             {} s, with nothing to explain them: they may be lost. Run `hookrelay audit` \
             on this host to see every gap",
            after.as_secs()
        );
    }
}

/// Where a check looks, what it sets, and after how long a number counts.
struct Found<'a> {
    spool: Option<&'a Path>,
    metrics: &'a Metrics,
    after: Duration,
}

/// Notes the burned numbers not yet noted, if any.
async fn note_burned(
    numbering: &Numbering,
    broker: &Broker,
    stream: &str,
    relay_id: &str,
) -> anyhow::Result<()> {
    for numbers in numbering.burned().chunks(BURNED_PER_NOTE) {
        let note = Note::Burned {
            relay_id: relay_id.to_owned(),
            numbers: numbers.to_vec(),
        };
        notes::write(broker.amqp(), stream, &note).await?;
        numbering.noted(numbers);
    }
    Ok(())
}

/// Says a failure once, until the same step succeeds again.
#[derive(Default)]
struct Failing {
    said: std::collections::HashSet<&'static str>,
}

impl Failing {
    /// Whether `result` is a success; a failure is warned of once.
    fn said(&mut self, what: &'static str, result: anyhow::Result<()>) -> bool {
        match result {
            Ok(()) => {
                self.said.remove(what);
                true
            }
            Err(err) => {
                if self.said.insert(what) {
                    warn!(
                        error = format!("{err:#}"),
                        "audit: cannot {what}; retrying (the audit may report numbers of this \
                         relay as unsettled meanwhile; webhooks are relayed as usual)"
                    );
                }
                false
            }
        }
    }
}
