//! [`Backoff`]: how long the client waits before each reconnect attempt: exponential with full
//! jitter (a uniformly random wait up to a ceiling that doubles per attempt), so a server
//! restart is not met by every client at the same instant.

use std::{
    hash::{BuildHasher, Hasher},
    time::Duration,
};

/// Attempt counter and ceiling of the reconnect waits.
#[derive(Debug)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    /// Attempts since the last connection that the server answered.
    attempt: u32,
    /// Stirred into each draw, so two draws never hash the same input.
    draws: u64,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max: max.max(initial),
            attempt: 0,
            draws: 0,
        }
    }

    /// The next attempt's number (from 1) and the wait before it: uniform in
    /// `[0, min(max, initial × 2^(attempt-1))]`.
    pub(crate) fn next(&mut self) -> (u32, Duration) {
        self.attempt = self.attempt.saturating_add(1);
        let ceiling = self.ceiling(self.attempt);
        (self.attempt, ceiling.mul_f64(self.fraction()))
    }

    /// The server answered: the next break starts from the first attempt again.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }

    fn ceiling(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(32);
        self.initial
            .checked_mul(1u32 << doublings.min(31))
            .map_or(self.max, |d| d.min(self.max))
    }

    /// A uniform draw in [0, 1]. std's `RandomState` is seeded randomly per thread and per
    /// instance, which is plenty for spreading reconnects; no RNG crate needed.
    fn fraction(&mut self) -> f64 {
        self.draws = self.draws.wrapping_add(1);
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(self.draws);
        // The top 53 bits make an exactly representable f64 in [0, 1].
        (hasher.finish() >> 11) as f64 / ((1u64 << 53) - 1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_doubles_from_the_initial_wait_up_to_the_max() {
        let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let ceilings: Vec<u128> = (1..=9).map(|a| backoff.ceiling(a).as_millis()).collect();
        assert_eq!(
            ceilings,
            [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000]
        );
        assert_eq!(backoff.ceiling(u32::MAX), Duration::from_secs(10));
    }

    #[test]
    fn waits_are_jittered_within_the_ceiling_and_reset_starts_over() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let mut waits = Vec::new();
        for expected in 1..=12 {
            let (attempt, wait) = backoff.next();
            assert_eq!(attempt, expected);
            assert!(wait <= backoff.ceiling(attempt), "{wait:?} at {attempt}");
            waits.push(wait);
        }
        // Full jitter: the draws are spread, not the ceiling each time.
        let at_max = waits[7..].iter().filter(|w| **w == Duration::from_secs(10));
        assert!(at_max.count() < 5, "{waits:?}");
        waits.sort();
        waits.dedup();
        assert!(waits.len() > 10, "draws repeat: {waits:?}");
        backoff.reset();
        assert_eq!(backoff.next().0, 1);
    }
}
