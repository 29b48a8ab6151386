//! How the relay's long-running tasks (the broker's supervisor, the
//! history's follower, the account announcer) end a session with RabbitMQ
//! ([`Ended`]) and wait before the next ([`Backoff`], exponential with
//! jitter). The jitter keeps replicas
//! behind one balancer from reconnecting in lockstep after an outage.

use std::hash::{BuildHasher, Hasher, RandomState};
use std::time::Duration;

use crate::stopping::Stopping;

/// Why one session of a long-running task ended: it was asked to stop, or
/// it lost RabbitMQ (`E` says how) and tries again after a [`Backoff`].
#[derive(Debug)]
pub(crate) enum Ended<E> {
    Stopped,
    Lost(E),
}

/// Delays that double from `first` up to `max`, each between half and all of
/// that, until [`Backoff::reset`].
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    first: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub(crate) const fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max,
            failures: 0,
        }
    }

    /// The next delay, and one more failure counted.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let base = self
            .first
            .saturating_mul(1 << self.failures.min(16))
            .min(self.max);
        self.failures = self.failures.saturating_add(1);
        // Half fixed, half random: RandomState is seeded randomly per process.
        let random = RandomState::new().build_hasher().finish();
        let half = base / 2;
        half + half.mul_f64((random % 1000) as f64 / 1000.0)
    }

    /// After a success: the next failure waits `first` again.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }

    /// Sleeps `delay` (a [`Backoff::next_delay`]); `false` when `stop`
    /// turned true first (or its sender went away).
    pub(crate) async fn sleep(delay: Duration, stop: &mut Stopping) -> bool {
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = stop.stopped() => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_with_jitter_and_start_over_after_a_reset() {
        let (first, max) = (Duration::from_millis(100), Duration::from_secs(5));
        let mut backoff = Backoff::new(first, max);
        let delay = backoff.next_delay();
        assert!(delay >= first / 2 && delay <= first, "{delay:?}");
        let delays: Vec<Duration> = (0..20).map(|_| backoff.next_delay()).collect();
        assert!(delays.iter().all(|d| *d <= max));
        assert!(delays[19] >= max / 2);
        backoff.reset();
        assert!(backoff.next_delay() <= first);
    }
}
