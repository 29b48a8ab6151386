//! The audit, always on: as the relay's follower reads the history, every
//! relay's numbers are tallied, and numbers that stay missing past a grace
//! period (no event, no note explains them) are counted:
//! `hookrelay_audit_gaps` and `hookrelay_audit_missing`, the alert `HookrelayEventsMissing`, `/readyz`
//! and one ERROR line per change. Only what the follower read since the
//! relay started is tallied: `hookrelay audit` reckons with the whole history.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use super::notes::Note;

/// The default of `audit.missing_after`, for the tests here.
#[cfg(test)]
const GRACE: Duration = Duration::from_secs(120);

/// Every relay's numbers, as far as the follower has read.
#[derive(Debug, Default)]
pub struct Tally {
    relays: HashMap<String, Relay>,
}

#[derive(Debug, Default)]
struct Relay {
    /// The highest number seen.
    highest: u64,
    /// Numbers seen since the relay started.
    seen: u64,
    /// Missing numbers below `highest`: runs `from → (to, since when)`.
    missing: BTreeMap<u64, (u64, Instant)>,
    /// Runs that notes explain (ended runs' unsettled numbers), kept for
    /// numbers not missing yet: a note may reach the history before the
    /// event after the gap it explains.
    ended: Vec<(u64, u64)>,
    /// Burned numbers above `highest` when noted, likewise.
    burned_ahead: BTreeSet<u64>,
}

/// Numbers missing past the grace period, of one relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    pub relay_id: String,
    pub numbers: u64,
    /// Runs of consecutive missing numbers (a spooled number splits one).
    pub gaps: u64,
    /// The first run of them, for the log: `from`, `to`.
    pub first: (u64, u64),
}

impl Tally {
    /// A stored webhook of `relay`, number `seq`, read from the history.
    pub fn seen(&mut self, relay: &str, seq: u64, now: Instant) {
        let tallied = match self.relays.get_mut(relay) {
            Some(tallied) => tallied,
            None => self.relays.entry(relay.to_owned()).or_default(),
        };
        tallied.seen += 1;
        if tallied.highest == 0 {
            // The first number read since the start: what came before is
            // the whole audit's to reckon with.
            tallied.highest = seq;
        } else if seq > tallied.highest {
            if seq > tallied.highest + 1 {
                let (from, to) = (tallied.highest + 1, seq - 1);
                tallied.missing.insert(from, (to, now));
                tallied.explain_known(from, to);
            }
            tallied.highest = seq;
        } else {
            tallied.explain(seq, seq);
        }
    }

    /// A relay's note: burned numbers and ended runs explain their numbers.
    pub fn note(&mut self, note: &Note) {
        // A note may come before any event of its relay this tally has read.
        let tallied = self.relays.entry(note.relay_id().to_owned()).or_default();
        match note {
            Note::Burned { numbers, .. } => {
                for &number in numbers {
                    if number > tallied.highest {
                        tallied.burned_ahead.insert(number);
                    }
                    tallied.explain(number, number);
                }
            }
            Note::Started { ended, .. } => {
                for ended in ended {
                    tallied
                        .ended
                        .push((ended.unsettled_from, ended.reserved_to));
                    tallied.explain(ended.unsettled_from, ended.reserved_to);
                }
            }
        }
    }

    /// Numbers seen of `relay` since the start.
    pub fn seen_of(&self, relay: &str) -> u64 {
        self.relays.get(relay).map_or(0, |tallied| tallied.seen)
    }

    /// `relay`'s numbers missing for longer than `grace`, except those
    /// `spooled` says are in its spool.
    pub fn missing_of(
        &self,
        relay: &str,
        now: Instant,
        grace: Duration,
        spooled: impl Fn(u64) -> bool,
    ) -> Option<Missing> {
        let tallied = self.relays.get(relay)?;
        let (mut numbers, mut gaps) = (0, 0);
        let mut first = None;
        for (&from, &(to, since)) in &tallied.missing {
            if now.duration_since(since) < grace {
                continue;
            }
            let mut in_gap = false;
            for number in from..=to {
                let missing = !spooled(number);
                numbers += u64::from(missing);
                gaps += u64::from(missing && !in_gap);
                in_gap = missing;
            }
            if numbers > 0 {
                first.get_or_insert((from, to));
            }
        }
        Some(Missing {
            relay_id: relay.to_owned(),
            numbers,
            gaps,
            first: first?,
        })
    }
}

impl Relay {
    /// Takes out of a new missing run `[from, to]` what notes read before
    /// it explain.
    fn explain_known(&mut self, from: u64, to: u64) {
        let ended: Vec<(u64, u64)> = self
            .ended
            .iter()
            .copied()
            .filter(|&(start, end)| start <= to && end >= from)
            .collect();
        for (start, end) in ended {
            self.explain(start, end);
        }
        let burned: Vec<u64> = self.burned_ahead.range(from..=to).copied().collect();
        for number in burned {
            self.burned_ahead.remove(&number);
            self.explain(number, number);
        }
    }

    /// Takes `[from, to]` out of the missing runs.
    fn explain(&mut self, from: u64, to: u64) {
        let overlapping: Vec<u64> = self
            .missing
            .range(..=to)
            .filter(|(_, (end, _))| *end >= from)
            .map(|(&start, _)| start)
            .collect();
        for start in overlapping {
            let (end, since) = self.missing.remove(&start).expect("just found");
            if start < from {
                self.missing.insert(start, (from - 1, since));
            }
            if end > to {
                self.missing.insert(to + 1, (end, since));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::numbering::Previous;

    const NONE_SPOOLED: fn(u64) -> bool = |_| false;

    fn numbers(tally: &Tally, later: Instant) -> u64 {
        tally
            .missing_of("r", later, GRACE, NONE_SPOOLED)
            .map_or(0, |m| m.numbers)
    }

    #[test]
    fn a_number_that_stays_missing_past_the_grace_counts() {
        let (mut tally, now) = (Tally::default(), Instant::now());
        for seq in [7, 8, 10, 13] {
            tally.seen("r", seq, now);
        }
        assert_eq!(numbers(&tally, now), 0, "within the grace");
        let later = now + GRACE;
        let missing = tally.missing_of("r", later, GRACE, NONE_SPOOLED).unwrap();
        assert_eq!(
            (missing.numbers, missing.gaps, missing.first),
            (3, 2, (9, 9))
        );
        assert_eq!(tally.seen_of("r"), 4);
    }

    #[test]
    fn a_spooled_number_inside_a_run_leaves_two_gaps() {
        let (mut tally, now) = (Tally::default(), Instant::now());
        tally.seen("r", 1, now);
        tally.seen("r", 10, now);
        let missing = tally
            .missing_of("r", now + GRACE, GRACE, |seq| seq == 5)
            .unwrap();
        assert_eq!((missing.numbers, missing.gaps), (7, 2), "2-4 and 6-9");
    }

    #[test]
    fn late_events_notes_and_the_spool_explain_numbers() {
        let (mut tally, now) = (Tally::default(), Instant::now());
        tally.seen("r", 1, now);
        tally.seen("r", 100_010, now);
        tally.seen("r", 100_005, now); // late, out of order
        tally.note(&Note::Burned {
            relay_id: "r".into(),
            numbers: vec![100_003],
        });
        tally.note(&Note::Started {
            relay_id: "r".into(),
            first: 100_001,
            ended: vec![Previous {
                unsettled_from: 2,
                reserved_to: 100_000,
                clean: true,
            }],
        });
        let later = now + GRACE;
        let spooled = |seq: u64| seq == 100_008;
        let missing = tally.missing_of("r", later, GRACE, spooled).unwrap();
        // Left: 100,001-100,002, 100,004, 100,006-100,007, 100,009.
        assert_eq!(missing.numbers, 6, "{missing:?}");
        assert_eq!(missing.first, (100_001, 100_002));
    }

    #[test]
    fn a_note_read_before_the_gap_it_explains_still_explains_it() {
        let (mut tally, now) = (Tally::default(), Instant::now());
        tally.seen("r", 10, now);
        tally.note(&Note::Burned {
            relay_id: "r".into(),
            numbers: vec![11],
        });
        tally.note(&Note::Started {
            relay_id: "r".into(),
            first: 100_001,
            ended: vec![Previous {
                unsettled_from: 12,
                reserved_to: 100_000,
                clean: false,
            }],
        });
        tally.seen("r", 100_001, now);
        assert_eq!(numbers(&tally, now + GRACE), 0);
    }

    #[test]
    fn the_first_number_read_since_the_start_is_where_the_tally_begins() {
        let (mut tally, now) = (Tally::default(), Instant::now());
        tally.seen("r", 5_000, now);
        tally.seen("r", 5_001, now);
        assert_eq!(numbers(&tally, now + GRACE), 0);
    }
}
