//! The reckoning of one relay's numbers: what the history holds, what the
//! relay's notes say, what its spool still holds, and so every number
//! between the first and the last the history holds, accounted for. Pure:
//! [`super::scan`] gathers the facts.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::notes::Note;
use super::numbering::Previous;

/// What is known of one relay's numbers.
#[derive(Debug, Default)]
pub struct Facts {
    /// Numbers in the history, each with when the relay received it.
    pub seen: BTreeMap<u64, Option<SystemTime>>,
    /// The first number the read met: the reckoning starts there (none:
    /// from the lowest seen).
    pub floor: Option<u64>,
    /// How runs ended, as the runs after them noted.
    pub ended: Vec<Previous>,
    /// Numbers burned (noted in the history).
    pub burned: BTreeSet<u64>,
    /// Numbers in the spool this audit could read.
    pub spooled: BTreeSet<u64>,
}

impl Facts {
    /// Takes one note of this relay's into account.
    pub fn note(&mut self, note: Note) {
        match note {
            Note::Started { first, ended, .. } => {
                // A run's start read is where its numbers begin: a first
                // number that reached the history after the second is
                // still reckoned with.
                self.floor = Some(self.floor.map_or(first, |floor| floor.min(first)));
                self.ended.extend(ended);
            }
            Note::Burned { numbers, .. } => self.burned.extend(numbers),
        }
    }
}

/// What became of a run of missing numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fate {
    /// Taken by a request that ended without storing its webhook (a 503):
    /// never stored, as the relay noted.
    Burned,
    /// Still in the relay's spool: stored, not yet in RabbitMQ.
    Spooled,
    /// Reserved by a run that stopped cleanly, never handed out.
    NeverHandedOut,
    /// Not settled when a run stopped without a clean stop (a crash, a
    /// kill): handed out to requests in flight at that moment, which were
    /// not answered 2xx unless stored, or never handed out.
    UnsettledAtACrash,
    /// Newer than the grace period: the request may still be in flight.
    Recent,
    /// None of the above: a webhook the relay stored is not in the history.
    Lost,
}

impl Fate {
    pub fn is_loss(self) -> bool {
        self == Fate::Lost
    }
}

/// A run of consecutive missing numbers with one fate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gap {
    pub from: u64,
    pub to: u64,
    pub fate: Fate,
    /// When the relay received the numbers on either side (RFC 3339): the
    /// gap's time range.
    pub after: Option<String>,
    pub before: Option<String>,
}

/// One relay's reckoning.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reckoning {
    pub relay_id: String,
    /// Distinct numbers the history holds.
    pub seen: u64,
    pub first: Option<u64>,
    pub last: Option<u64>,
    pub gaps: Vec<Gap>,
    /// Numbers missing for which no explanation holds.
    pub lost: u64,
    /// Numbers after the last in the history that are still in the spool.
    pub spooled_after_last: u64,
}

/// Accounts for every number from the floor (the first the read met) to
/// the last `facts.seen` holds: what the stream dropped by age, or what came
/// before `--since`, is below the floor, never a gap.
pub fn reckon(relay_id: &str, facts: &Facts, now: SystemTime, grace: Duration) -> Reckoning {
    let mut gaps: Vec<Gap> = Vec::new();
    let mut previous: Option<(u64, Option<SystemTime>)> = None;
    let floor = facts.floor.unwrap_or(0);
    for (&number, &received) in facts.seen.range(floor..) {
        if let Some((before, before_received)) = previous
            && number > before + 1
        {
            let recent = received
                .and_then(|at| now.duration_since(at).ok())
                .is_none_or(|age| age < grace);
            // A restart's skip is one ended run's whole block: said at once,
            // not number by number.
            let (from, to) = (before + 1, number - 1);
            if let Some(fate) = covered(facts, from, to) {
                gaps.push(Gap {
                    from,
                    to,
                    fate,
                    after: before_received.map(rfc3339),
                    before: received.map(rfc3339),
                });
                previous = Some((number, received));
                continue;
            }
            for missing in from..=to {
                let fate = fate(facts, missing, recent);
                match gaps.last_mut() {
                    Some(gap) if gap.fate == fate && gap.to + 1 == missing => gap.to = missing,
                    _ => gaps.push(Gap {
                        from: missing,
                        to: missing,
                        fate,
                        after: before_received.map(rfc3339),
                        before: received.map(rfc3339),
                    }),
                }
            }
        }
        previous = Some((number, received));
    }
    let last = facts.seen.keys().next_back().copied();
    Reckoning {
        relay_id: relay_id.to_owned(),
        seen: facts.seen.range(floor..).count() as u64,
        first: facts.seen.range(floor..).next().map(|(&first, _)| first),
        last,
        lost: gaps
            .iter()
            .filter(|gap| gap.fate.is_loss())
            .map(|gap| gap.to - gap.from + 1)
            .sum(),
        gaps,
        spooled_after_last: facts
            .spooled
            .iter()
            .filter(|&&n| last.is_none_or(|last| n > last))
            .count() as u64,
    }
}

/// The fate of a whole run of missing numbers, when one ended run's
/// unsettled numbers hold all of it and nothing in it was burned or spooled.
fn covered(facts: &Facts, from: u64, to: u64) -> Option<Fate> {
    if facts.burned.range(from..=to).next().is_some()
        || facts.spooled.range(from..=to).next().is_some()
    {
        return None;
    }
    let ended = facts
        .ended
        .iter()
        .find(|ended| ended.unsettled_from <= from && to <= ended.reserved_to)?;
    Some(match ended.clean {
        true => Fate::NeverHandedOut,
        false => Fate::UnsettledAtACrash,
    })
}

fn fate(facts: &Facts, number: u64, recent: bool) -> Fate {
    if facts.burned.contains(&number) {
        return Fate::Burned;
    }
    if facts.spooled.contains(&number) {
        return Fate::Spooled;
    }
    let ended = facts
        .ended
        .iter()
        .find(|previous| (previous.unsettled_from..=previous.reserved_to).contains(&number));
    match ended {
        Some(previous) if previous.clean => Fate::NeverHandedOut,
        Some(_) => Fate::UnsettledAtACrash,
        None if recent => Fate::Recent,
        None => Fate::Lost,
    }
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const AN_HOUR: Duration = Duration::from_secs(3600);

    fn seen(numbers: &[u64], at: SystemTime) -> BTreeMap<u64, Option<SystemTime>> {
        numbers.iter().map(|&n| (n, Some(at))).collect()
    }

    fn fates(reckoning: &Reckoning) -> Vec<(u64, u64, Fate)> {
        reckoning
            .gaps
            .iter()
            .map(|g| (g.from, g.to, g.fate))
            .collect()
    }

    #[test]
    fn a_number_missing_without_an_explanation_is_a_loss() {
        let now = SystemTime::now();
        let facts = Facts {
            seen: seen(&[1, 2, 4], now - AN_HOUR),
            ..Facts::default()
        };
        let reckoning = reckon("r", &facts, now, Duration::from_secs(60));
        assert_eq!(fates(&reckoning), [(3, 3, Fate::Lost)]);
        assert_eq!(reckoning.lost, 1);
        assert_eq!(
            (reckoning.first, reckoning.last, reckoning.seen),
            (Some(1), Some(4), 3)
        );
    }

    #[test]
    fn burned_spooled_and_restarted_numbers_are_explained() {
        let now = SystemTime::now();
        let mut facts = Facts {
            seen: seen(&[1, 3, 5, 9, 20, 22], now - AN_HOUR),
            floor: Some(1),
            burned: [2].into(),
            spooled: [4, 30].into(),
            ..Facts::default()
        };
        // A clean stop after 5 (reserved to 8), a crash after 9 (settled
        // below 10, reserved to 19).
        facts.note(Note::Started {
            relay_id: "r".into(),
            first: 9,
            ended: vec![Previous {
                unsettled_from: 6,
                reserved_to: 8,
                clean: true,
            }],
        });
        facts.note(Note::Started {
            relay_id: "r".into(),
            first: 20,
            ended: vec![Previous {
                unsettled_from: 10,
                reserved_to: 19,
                clean: false,
            }],
        });
        let reckoning = reckon("r", &facts, now, Duration::from_secs(60));
        assert_eq!(
            fates(&reckoning),
            [
                (2, 2, Fate::Burned),
                (4, 4, Fate::Spooled),
                (6, 8, Fate::NeverHandedOut),
                (10, 19, Fate::UnsettledAtACrash),
                (21, 21, Fate::Lost),
            ]
        );
        assert_eq!(reckoning.lost, 1);
        assert_eq!(reckoning.spooled_after_last, 1);
    }

    #[test]
    fn an_older_number_that_arrives_late_does_not_reckon_back_to_the_streams_start() {
        let now = SystemTime::now();
        let mut facts = Facts {
            seen: seen(&[1_000, 1_001, 1_002], now - AN_HOUR),
            floor: Some(1_000),
            ..Facts::default()
        };
        // A webhook parked in the spool for days, retried after the stream
        // dropped its neighbours by age.
        facts.seen.insert(7, Some(now - AN_HOUR));
        let reckoning = reckon("r", &facts, now, Duration::from_secs(60));
        assert_eq!(reckoning.lost, 0, "{reckoning:?}");
        assert_eq!((reckoning.first, reckoning.seen), (Some(1_000), 3));
    }

    #[test]
    fn a_runs_start_note_reckons_from_its_first_number() {
        let now = SystemTime::now();
        let mut facts = Facts {
            seen: seen(&[2, 3], now - AN_HOUR),
            floor: Some(2),
            ..Facts::default()
        };
        facts.note(Note::Started {
            relay_id: "r".into(),
            first: 1,
            ended: Vec::new(),
        });
        let reckoning = reckon("r", &facts, now, Duration::from_secs(60));
        assert_eq!(reckoning.first, Some(2));
        facts.seen.insert(1, Some(now - AN_HOUR));
        let reckoning = reckon("r", &facts, now, Duration::from_secs(60));
        assert_eq!(
            (reckoning.first, reckoning.seen, reckoning.lost),
            (Some(1), 3, 0)
        );
    }

    #[test]
    fn a_gap_younger_than_the_grace_may_still_be_in_flight() {
        let now = SystemTime::now();
        let facts = Facts {
            seen: seen(&[1, 3], now - Duration::from_secs(5)),
            ..Facts::default()
        };
        let reckoning = reckon("r", &facts, now, Duration::from_secs(60));
        assert_eq!(fates(&reckoning), [(2, 2, Fate::Recent)]);
        assert_eq!(reckoning.lost, 0);
        let later = reckon("r", &facts, now + AN_HOUR, Duration::from_secs(60));
        assert_eq!(
            later.lost, 1,
            "a gap that stays is a loss once the grace is over"
        );
    }
}
