//! Webhook rates over the last minutes, for the console's overview: the
//! request counters sampled every [`EVERY`], kept for [`WINDOW`], so a rate
//! is "how many since the oldest sample, per minute"; and one sample a
//! minute for the last [`HOUR`], for the overview's chart. Prometheus
//! computes the same from `/metrics`; this is for an operator without one.

use schemars::JsonSchema;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use strum::VariantArray;

use crate::metrics::{Metrics, Outcome};
use crate::unpoisoned::Locked;

/// How often the counters are sampled.
pub(crate) const EVERY: Duration = Duration::from_secs(10);
/// How far back a rate looks.
const WINDOW: Duration = Duration::from_secs(5 * 60);
/// Minutes the hour's chart shows.
const HOUR: usize = 60;
/// Hours the day's chart shows.
const DAY: usize = 24;

pub(crate) struct Rates {
    metrics: Metrics,
    samples: Mutex<VecDeque<Sample>>,
    /// One sample a minute, the newest last.
    minutes: Mutex<VecDeque<Sample>>,
    /// One sample an hour, the newest last.
    hours: Mutex<VecDeque<Sample>>,
}

#[derive(Clone)]
struct Sample {
    at: Instant,
    counts: Vec<u64>,
    /// The spool's depth then.
    spool: u64,
}

/// One column of a chart over time: each part's name and count.
pub(crate) type Column = Vec<(&'static str, u64)>;

/// Requests per minute by outcome, over the last `window_seconds`.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct Snapshot {
    pub window_seconds: u64,
    /// Every outcome, `accepted` first; 0 where nothing happened.
    pub per_minute: serde_json::Map<String, serde_json::Value>,
}

impl Rates {
    pub(crate) fn new(metrics: Metrics) -> Rates {
        let rates = Rates {
            metrics,
            samples: Mutex::new(VecDeque::new()),
            minutes: Mutex::new(VecDeque::new()),
            hours: Mutex::new(VecDeque::new()),
        };
        rates.sample();
        rates
    }

    /// Samples the counters every [`EVERY`], for as long as the relay runs.
    pub(crate) async fn run(self: std::sync::Arc<Self>) {
        let mut ticks = tokio::time::interval(EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            self.sample();
        }
    }

    fn counts(&self) -> Vec<u64> {
        Outcome::VARIANTS
            .iter()
            .map(|&outcome| self.metrics.requests(outcome))
            .collect()
    }

    fn sample(&self) {
        let sample = Sample {
            at: Instant::now(),
            counts: self.counts(),
            spool: self.metrics.spool_depth(),
        };
        let mut samples = self.samples.locked();
        while samples
            .front()
            .is_some_and(|oldest| sample.at.duration_since(oldest.at) > WINDOW)
        {
            samples.pop_front();
        }
        keep_every(&self.minutes, &sample, Duration::from_secs(60), HOUR);
        keep_every(&self.hours, &sample, Duration::from_secs(3600), DAY);
        samples.push_back(sample);
    }

    /// Webhooks in each of the last [`HOUR`] minutes, oldest first (the
    /// last one the minute so far; empty before the relay started), by
    /// outcome: each outcome's name and count.
    pub(crate) fn last_hour(&self) -> Vec<Column> {
        self.per(&self.minutes, HOUR)
    }

    /// The same for each of the last [`DAY`] hours.
    pub(crate) fn last_day(&self) -> Vec<Column> {
        self.per(&self.hours, DAY)
    }

    /// The spool's depth at each of the last [`HOUR`] minutes (and now).
    pub(crate) fn spool_last_hour(&self) -> Vec<Column> {
        let minutes = self.minutes.locked();
        let depths: Vec<u64> = minutes
            .iter()
            .map(|m| m.spool)
            .chain([self.metrics.spool_depth()])
            .collect();
        let shown = &depths[depths.len().saturating_sub(HOUR)..];
        std::iter::repeat_n(Vec::new(), HOUR - shown.len())
            .chain(shown.iter().map(|&depth| vec![("spooled", depth)]))
            .collect()
    }

    /// What happened between each two of `kept` (and since the last), the
    /// last `slots`, padded in front while there were fewer.
    fn per(&self, kept: &Mutex<VecDeque<Sample>>, slots: usize) -> Vec<Column> {
        let now = self.counts();
        let kept = kept.locked();
        let counts: Vec<&Vec<u64>> = kept.iter().map(|m| &m.counts).chain([&now]).collect();
        let periods: Vec<Column> = counts
            .windows(2)
            .map(|pair| {
                Outcome::VARIANTS
                    .iter()
                    .zip(pair[1].iter().zip(pair[0]))
                    .map(|(outcome, (after, before))| {
                        (outcome.as_str(), after.saturating_sub(*before))
                    })
                    .filter(|(_, count)| *count > 0)
                    .collect()
            })
            .collect();
        let shown = &periods[periods.len().saturating_sub(slots)..];
        std::iter::repeat_n(Vec::new(), slots - shown.len())
            .chain(shown.iter().cloned())
            .collect()
    }

    /// The rates now, against the oldest sample in the window.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let now = (Instant::now(), self.counts());
        let samples = self.samples.locked();
        let (since, before) = samples.front().map_or((now.0, now.1.clone()), |oldest| {
            (oldest.at, oldest.counts.clone())
        });
        let elapsed = now.0.duration_since(since);
        let minutes = elapsed.as_secs_f64() / 60.0;
        let per_minute = Outcome::VARIANTS
            .iter()
            .zip(now.1.iter().zip(before))
            .map(|(outcome, (now, before))| {
                let rate = if minutes > 0.0 {
                    // Counts fit f64's 53 bits for any realistic uptime.
                    #[allow(clippy::cast_precision_loss)]
                    let delta = now.saturating_sub(before) as f64;
                    (delta / minutes * 10.0).round() / 10.0
                } else {
                    0.0
                };
                (outcome.as_str().to_owned(), serde_json::json!(rate))
            })
            .collect();
        Snapshot {
            window_seconds: elapsed.as_secs(),
            per_minute,
        }
    }
}

/// Keeps `sample` in `kept` when the newest there is `every` old, and at
/// most `slots` + 1 of them.
fn keep_every(kept: &Mutex<VecDeque<Sample>>, sample: &Sample, every: Duration, slots: usize) {
    let mut kept = kept.locked();
    if kept
        .back()
        .is_none_or(|last| sample.at.duration_since(last.at) >= every)
    {
        if kept.len() > slots {
            kept.pop_front();
        }
        kept.push_back(sample.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_counts_what_happened_since_the_oldest_sample() {
        let metrics = Metrics::new();
        metrics.request(Outcome::Accepted);
        let rates = Rates::new(metrics.clone());
        {
            // As if the first sample were a minute old.
            let mut samples = rates.samples.lock().unwrap();
            samples[0].at -= Duration::from_secs(60);
        }
        for _ in 0..30 {
            metrics.request(Outcome::Accepted);
        }
        metrics.request(Outcome::Forbidden);
        let snapshot = rates.snapshot();
        assert!((60..62).contains(&snapshot.window_seconds));
        let accepted = snapshot.per_minute["accepted"].as_f64().unwrap();
        assert!((29.0..=30.0).contains(&accepted), "{accepted}");
        let forbidden = snapshot.per_minute["forbidden"].as_f64().unwrap();
        assert!((0.9..=1.0).contains(&forbidden), "{forbidden}");
        assert_eq!(snapshot.per_minute["spooled"].as_f64(), Some(0.0));
    }

    #[test]
    fn the_last_hour_is_sixty_minutes_the_newest_last() {
        let metrics = Metrics::new();
        let rates = Rates::new(metrics.clone());
        for _ in 0..3 {
            metrics.request(Outcome::Accepted);
        }
        metrics.request(Outcome::Forbidden);
        let hour = rates.last_hour();
        assert_eq!(hour.len(), HOUR);
        assert!(
            hour[..HOUR - 1].iter().all(Vec::is_empty),
            "before the start"
        );
        assert_eq!(hour[HOUR - 1], [("accepted", 3), ("forbidden", 1)]);
    }
}
