//! A budget of log lines per second for refused and failed webhooks.
//!
//! Metrics count every refusal; the log only needs to show that they happen. A
//! flood of refused requests (a scanner, a misconfigured sender, an outage)
//! would otherwise write one line each and could fill the disk, so past the
//! budget lines are dropped and the next line written says how many were.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::unpoisoned::Locked;

const WINDOW: Duration = Duration::from_secs(1);

pub(super) struct LogBudget {
    per_window: u32,
    window: Mutex<Window>,
}

struct Window {
    started: Instant,
    written: u32,
    dropped: u64,
}

impl LogBudget {
    pub(super) fn per_second(lines: u32) -> LogBudget {
        LogBudget {
            per_window: lines,
            window: Mutex::new(Window {
                started: Instant::now(),
                written: 0,
                dropped: 0,
            }),
        }
    }

    /// `Some(dropped)` when a line may be written now, `dropped` being how many
    /// were dropped since the last one written; `None` when over budget.
    pub(super) fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        // The window holds only counters, so a panic elsewhere cannot leave it
        // inconsistent: a poisoned lock is still good to use.
        let mut window = self.window.locked();
        if now.saturating_duration_since(window.started) >= WINDOW {
            window.started = now;
            window.written = 0;
        }
        if window.written < self.per_window {
            window.written += 1;
            Some(std::mem::take(&mut window.dropped))
        } else {
            window.dropped += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_writes_the_budget_then_reports_what_it_dropped() {
        let budget = LogBudget::per_second(3);
        let start = Instant::now();
        let first_second: Vec<_> = (0..10).map(|_| budget.admit_at(start)).collect();
        assert_eq!(
            first_second,
            [
                Some(0),
                Some(0),
                Some(0),
                None,
                None,
                None,
                None,
                None,
                None,
                None
            ]
        );

        let next_second = start + WINDOW;
        assert_eq!(budget.admit_at(next_second), Some(7), "the 7 dropped lines");
        assert_eq!(budget.admit_at(next_second), Some(0), "reported once");
    }
}
