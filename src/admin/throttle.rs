//! Throttling of failed admin authentication, per client address. After `[admin]
//! max_failed_auth` refusals within `failed_auth_interval_ms` (counted from the first of them), an
//! address is refused with RESOURCE_EXHAUSTED until that interval is over, without its token being
//! looked at, so guessing costs the server next to nothing and proves nothing. The WARN lines of
//! refusals are limited the same way: at most one per interval per address, carrying the count of
//! those not written. Only [`AdminAuth`](super::AdminAuth) uses it.

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, Ipv6Addr},
    sync::{Arc, Mutex, MutexGuard, Weak},
    time::{Duration, Instant},
};

use tracing::warn;

/// Addresses tracked at once. Refusals from further addresses share one record ("others"), so a
/// flood from many addresses cannot grow the table without bound; a record is forgotten once its
/// interval is over.
pub const MAX_TRACKED: usize = 4096;

/// Who a refusal is counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// An IPv4 address, or the /64 network of an IPv6 address: one host usually holds a whole
    /// /64, and counting its addresses one by one would give it 2^64 budgets.
    Ip(IpAddr),
    /// Peers without a known address, and every address beyond [`MAX_TRACKED`].
    Others,
}

impl Source {
    pub fn of(peer: Option<IpAddr>) -> Source {
        match peer {
            Some(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::Ip(IpAddr::V4(v4)),
                None => {
                    let network = u128::from(v6) & !((1u128 << 64) - 1);
                    Source::Ip(IpAddr::V6(Ipv6Addr::from(network)))
                }
            },
            Some(ip) => Source::Ip(ip),
            None => Source::Others,
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Ip(IpAddr::V6(network)) => write!(f, "{network}/64"),
            Source::Ip(ip) => write!(f, "{ip}"),
            Source::Others => f.write_str("others"),
        }
    }
}

/// The limits in force, read from the live configuration at every call (`[admin]` reloads).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// 0: never throttled (the log lines are still limited).
    pub max_failures: u32,
    pub interval: Duration,
}

/// A call refused unchecked.
#[derive(Debug, PartialEq)]
pub struct Throttled {
    /// Until the address's interval is over.
    pub retry_after: Duration,
    /// `Some(suppressed)`: write a line now, saying how many refusals went unwritten before it.
    pub log: Option<u64>,
}

#[derive(Debug)]
struct Record {
    /// Start of the counting window: the first refusal after the previous window was over.
    window_start: Instant,
    failures: u32,
    /// When this source's last line was written.
    logged_at: Option<Instant>,
    /// Refusals not written since that line.
    suppressed: u64,
}

impl Record {
    fn window_over(&self, now: Instant, interval: Duration) -> bool {
        now.saturating_duration_since(self.window_start) >= interval
    }

    fn may_log(&self, now: Instant, interval: Duration) -> bool {
        self.logged_at
            .is_none_or(|at| now.saturating_duration_since(at) >= interval)
    }

    /// `Some(suppressed)` when a line may be written now; otherwise the refusal is counted for
    /// the next line.
    fn log_or_count(&mut self, now: Instant, interval: Duration) -> Option<u64> {
        if self.may_log(now, interval) {
            self.logged_at = Some(now);
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

#[derive(Debug, Default)]
struct State {
    records: HashMap<Source, Record>,
    /// Interval of the last refusal, for the sweeper's period.
    interval: Duration,
    /// Whether a sweeper task is running: one at most, and only while there are records.
    sweeping: bool,
}

/// The failed-authentication records of one server.
#[derive(Debug, Default)]
pub struct AuthThrottle {
    // A std mutex: the interceptor is synchronous, every critical section is a map lookup or
    // an insert, and the sweeper holds it only while it walks the bounded table.
    state: Mutex<State>,
}

impl AuthThrottle {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves counts only; they are still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Before the token is looked at: `Err` while `source` is throttled.
    pub fn check(&self, source: Source, limits: Limits, now: Instant) -> Result<(), Throttled> {
        if limits.max_failures == 0 {
            return Ok(());
        }
        let mut state = self.lock();
        let source = state.tracked(source);
        let Some(record) = state.records.get_mut(&source) else {
            return Ok(());
        };
        if record.window_over(now, limits.interval) || record.failures < limits.max_failures {
            return Ok(());
        }
        let retry_after = (record.window_start + limits.interval).saturating_duration_since(now);
        Err(Throttled {
            retry_after,
            log: record.log_or_count(now, limits.interval),
        })
    }

    /// Counts a refused authentication of `source`. `Some(suppressed)`: write its line now.
    pub fn failed(self: &Arc<Self>, source: Source, limits: Limits, now: Instant) -> Option<u64> {
        let mut state = self.lock();
        state.interval = limits.interval;
        let source = state.tracked(source);
        let record = state.records.entry(source).or_insert(Record {
            window_start: now,
            failures: 0,
            logged_at: None,
            suppressed: 0,
        });
        if record.window_over(now, limits.interval) {
            record.window_start = now;
            record.failures = 0;
        }
        record.failures = record.failures.saturating_add(1);
        let log = record.log_or_count(now, limits.interval);
        if !state.sweeping {
            state.sweeping = start_sweeper(Arc::downgrade(self));
        }
        log
    }

    /// A call that passed: its source's failures are forgiven (an operator who mistyped), its
    /// log limit is kept.
    pub fn succeeded(&self, source: Source) {
        let mut state = self.lock();
        let source = state.tracked(source);
        if let Some(record) = state.records.get_mut(&source) {
            record.failures = 0;
        }
    }

    /// Forgets every record whose window and log interval are over, and returns those that had
    /// refusals not written yet, for one last line each.
    fn sweep(&self, now: Instant) -> Vec<(Source, u64)> {
        let mut state = self.lock();
        let interval = state.interval;
        let mut unwritten = Vec::new();
        state.records.retain(|source, record| {
            let over = record.window_over(now, interval) && record.may_log(now, interval);
            if over && record.suppressed > 0 {
                unwritten.push((*source, record.suppressed));
            }
            !over
        });
        if state.records.is_empty() {
            state.sweeping = false;
        }
        unwritten
    }

    #[cfg(test)]
    fn tracked_count(&self) -> usize {
        self.lock().records.len()
    }
}

impl State {
    /// `source`, or [`Source::Others`] when the table is full and `source` is not in it.
    fn tracked(&self, source: Source) -> Source {
        if self.records.len() < MAX_TRACKED || self.records.contains_key(&source) {
            source
        } else {
            Source::Others
        }
    }
}

/// Starts the task that forgets old records and writes their last line; false when there is no
/// runtime to run it on (the table then waits for the next server's runtime call).
fn start_sweeper(throttle: Weak<AuthThrottle>) -> bool {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return false;
    };
    // Weak: a server that is dropped frees its table, and the task ends at its next wake-up.
    runtime.spawn(async move {
        loop {
            let Some(interval) = throttle.upgrade().map(|t| t.lock().interval) else {
                return;
            };
            tokio::time::sleep(interval.max(Duration::from_millis(100))).await;
            let Some(table) = throttle.upgrade() else {
                return;
            };
            for (source, suppressed) in table.sweep(Instant::now()) {
                warn!(peer = %source, suppressed, "admin calls refused: authentication failures not logged before");
            }
            if !table.lock().sweeping {
                return;
            }
        }
    });
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_failures: 3,
        interval: Duration::from_secs(6),
    };

    fn ip(last: u8) -> Source {
        Source::of(Some(IpAddr::from([192, 0, 2, last])))
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn an_address_is_throttled_after_max_failures_until_its_interval_is_over() {
        let throttle = Arc::new(AuthThrottle::default());
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(throttle.check(ip(1), LIMITS, t0 + ms(i)).is_ok());
            throttle.failed(ip(1), LIMITS, t0 + ms(i));
        }
        let throttled = throttle.check(ip(1), LIMITS, t0 + ms(1000)).unwrap_err();
        assert_eq!(throttled.retry_after, ms(5000));
        assert!(
            throttle.check(ip(2), LIMITS, t0 + ms(1000)).is_ok(),
            "others unaffected"
        );
        // Refusals while throttled do not extend it: the interval runs from the first failure.
        assert!(throttle.check(ip(1), LIMITS, t0 + ms(5999)).is_err());
        assert!(throttle.check(ip(1), LIMITS, t0 + ms(6000)).is_ok());
        // A new window starts with a clean count.
        throttle.failed(ip(1), LIMITS, t0 + ms(6000));
        assert!(throttle.check(ip(1), LIMITS, t0 + ms(6001)).is_ok());
    }

    #[test]
    fn zero_max_failures_never_throttles_and_a_success_forgives() {
        let throttle = Arc::new(AuthThrottle::default());
        let t0 = Instant::now();
        let off = Limits {
            max_failures: 0,
            ..LIMITS
        };
        for i in 0..100 {
            throttle.failed(ip(1), off, t0 + ms(i));
        }
        assert!(throttle.check(ip(1), off, t0 + ms(100)).is_ok());
        for i in 0..2 {
            throttle.failed(ip(2), LIMITS, t0 + ms(i));
        }
        throttle.succeeded(ip(2));
        for i in 0..2 {
            throttle.failed(ip(2), LIMITS, t0 + ms(10 + i));
        }
        assert!(throttle.check(ip(2), LIMITS, t0 + ms(20)).is_ok());
    }

    #[test]
    fn one_line_per_interval_per_address_with_the_count_of_the_others() {
        let throttle = Arc::new(AuthThrottle::default());
        let t0 = Instant::now();
        assert_eq!(throttle.failed(ip(1), LIMITS, t0), Some(0));
        assert_eq!(throttle.failed(ip(1), LIMITS, t0 + ms(1)), None);
        assert_eq!(throttle.failed(ip(2), LIMITS, t0 + ms(1)), Some(0));
        assert_eq!(throttle.failed(ip(1), LIMITS, t0 + ms(2)), None);
        // Throttled refusals count among the unwritten ones too.
        let throttled = throttle.check(ip(1), LIMITS, t0 + ms(3)).unwrap_err();
        assert_eq!(throttled.log, None);
        assert_eq!(throttle.failed(ip(1), LIMITS, t0 + ms(6000)), Some(3));
        assert_eq!(throttle.failed(ip(1), LIMITS, t0 + ms(6001)), None);
        // What was never written is handed to the sweeper once the address's records are over.
        assert!(throttle.sweep(t0 + ms(7000)).is_empty(), "still current");
        let last = throttle.sweep(t0 + ms(12_000));
        assert_eq!(last, vec![(ip(1), 1)]);
        assert_eq!(throttle.tracked_count(), 0);
    }

    #[test]
    fn the_table_is_bounded_and_further_addresses_share_one_record() {
        let throttle = Arc::new(AuthThrottle::default());
        let t0 = Instant::now();
        for n in 0..MAX_TRACKED as u32 {
            let source = Source::of(Some(IpAddr::V4((0x0a00_0000 + n).into())));
            throttle.failed(source, LIMITS, t0);
        }
        assert_eq!(throttle.tracked_count(), MAX_TRACKED);
        for n in 0..3 {
            let source = Source::of(Some(IpAddr::from([198, 51, 100, n])));
            throttle.failed(source, LIMITS, t0);
        }
        assert_eq!(throttle.tracked_count(), MAX_TRACKED + 1);
        let late = Source::of(Some(IpAddr::from([198, 51, 100, 200])));
        assert!(
            throttle.check(late, LIMITS, t0).is_err(),
            "shares the full record"
        );
        throttle.sweep(t0 + LIMITS.interval);
        assert_eq!(throttle.tracked_count(), 0);
    }

    #[test]
    fn ipv6_addresses_count_by_their_64_network() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(Source::of(Some(a)), Source::of(Some(b)));
        assert_ne!(Source::of(Some(a)), Source::of(Some(c)));
        assert_eq!(Source::of(Some(a)).to_string(), "2001:db8:1:2::/64");
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(Source::of(Some(mapped)), ip(1));
        assert_eq!(Source::of(None), Source::Others);
    }
}
