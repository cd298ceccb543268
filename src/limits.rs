//! Per-member rate limiting: a token bucket refilled continuously at `rate_per_sec` up to `burst`.
//! Pure and clock-injected so it is tested without waiting.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket: a new member may send a burst at once.
    pub fn full(burst: u32, now: Instant) -> TokenBucket {
        TokenBucket {
            tokens: f64::from(burst),
            last: now,
        }
    }

    /// Takes one token if there is one. `rate_per_sec` and `burst` are passed on every call so a
    /// reloaded limit applies at once.
    pub fn try_take(&mut self, now: Instant, rate_per_sec: f64, burst: u32) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate_per_sec).min(f64::from(burst));
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl TokenBucket {
    /// Takes one token, going into debt when there is none: returns how long until the debt is
    /// paid, which is when the caller may act (zero when a token was there). For a caller that
    /// waits instead of refusing, so exactly `rate_per_sec` requests pass once the burst is spent.
    pub fn take_or_owe(&mut self, now: Instant, rate_per_sec: f64, burst: u32) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate_per_sec).min(f64::from(burst)) - 1.0;
        self.last = now;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / rate_per_sec)
        }
    }

    /// How long from `now` until the bucket is full again (zero if it is).
    pub fn until_full(&self, now: Instant, rate_per_sec: f64, burst: u32) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        let missing = f64::from(burst) - (self.tokens + elapsed * rate_per_sec);
        if missing <= 0.0 || rate_per_sec <= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(missing / rate_per_sec)
    }

    /// Whether the bucket would be full at `now`, i.e. no different from a fresh one.
    pub fn is_full(&self, now: Instant, rate_per_sec: f64, burst: u32) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * rate_per_sec >= f64::from(burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refusal_then_refill() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(3, t0);
        assert!((0..3).all(|_| b.try_take(t0, 10.0, 3)));
        assert!(!b.try_take(t0, 10.0, 3));
        // 10/s: one token after 100 ms, not before.
        assert!(!b.try_take(t0 + Duration::from_millis(50), 10.0, 3));
        assert!(b.try_take(t0 + Duration::from_millis(100), 10.0, 3));
        assert!(!b.try_take(t0 + Duration::from_millis(100), 10.0, 3));
    }

    #[test]
    fn refill_is_capped_at_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(2, t0);
        let later = t0 + Duration::from_secs(3600);
        assert!(b.try_take(later, 100.0, 2));
        assert!(b.try_take(later, 100.0, 2));
        assert!(!b.try_take(later, 100.0, 2));
    }

    #[test]
    fn owed_tokens_are_paid_at_the_sustained_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(1, t0);
        assert_eq!(b.take_or_owe(t0, 4.0, 1), Duration::ZERO);
        assert_eq!(b.take_or_owe(t0, 4.0, 1), Duration::from_millis(250));
        assert_eq!(b.take_or_owe(t0, 4.0, 1), Duration::from_millis(500));
        // Once the debt is paid the bucket refills as usual, up to the burst.
        assert_eq!(
            b.take_or_owe(t0 + Duration::from_secs(10), 4.0, 1),
            Duration::ZERO
        );
        assert!(!b.try_take(t0 + Duration::from_secs(10), 4.0, 1));
    }

    #[test]
    fn until_full_is_the_refill_time_of_what_is_missing() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(4, t0);
        assert_eq!(b.until_full(t0, 2.0, 4), Duration::ZERO);
        assert!(b.try_take(t0, 2.0, 4));
        assert_eq!(b.until_full(t0, 2.0, 4), Duration::from_millis(500));
        assert_eq!(
            b.until_full(t0 + Duration::from_millis(200), 2.0, 4),
            Duration::from_millis(300)
        );
    }

    #[test]
    fn fullness_follows_refill() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(2, t0);
        assert!(b.is_full(t0, 1.0, 2));
        assert!(b.try_take(t0, 1.0, 2));
        assert!(!b.is_full(t0 + Duration::from_millis(500), 1.0, 2));
        assert!(b.is_full(t0 + Duration::from_secs(1), 1.0, 2));
    }

    #[test]
    fn sustained_rate_matches_configuration() {
        let t0 = Instant::now();
        let mut b = TokenBucket::full(1, t0);
        let mut accepted = 0;
        // One attempt per millisecond for 10 simulated seconds at 20/s: 1 burst + 200 refills.
        for ms in 0..10_000u64 {
            if b.try_take(t0 + Duration::from_millis(ms), 20.0, 1) {
                accepted += 1;
            }
        }
        assert!((200..=201).contains(&accepted), "{accepted}");
    }
}
