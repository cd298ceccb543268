//! Numbers of a run: latency histograms (HDR, microseconds), counts by name (ERROR codes, stream
//! ends, transport failures) and [`StepResult`], the figures of one measured window that the
//! report and `--find-max` judge it by.

use std::{collections::BTreeMap, sync::Mutex, time::Duration};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::shared::lock;

/// A `--find-max` window passes when every expected CHAT arrived and p99 is at most this.
pub const FIND_MAX_P99_MS: f64 = 100.0;
/// Two significant digits (≤ 1% error, below run-to-run noise) keep a per-session histogram at a
/// few KiB; three digits would cost ~40 KiB each, 400 MB for the 10,000-session scenarios.
const LATENCY_SIGFIG: u8 = 2;
/// Latencies are clamped here (1 h) so a bogus timestamp cannot grow a histogram without bound.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// An auto-resizing histogram of microseconds: it only grows to the largest value recorded.
pub fn new_histogram() -> Histogram<u64> {
    // unwrap: 2 significant digits is within hdrhistogram's 0..=5
    Histogram::new(LATENCY_SIGFIG).unwrap()
}

pub fn record_latency(histogram: &mut Histogram<u64>, latency_us: u64) {
    // Cannot fail: the histogram auto-resizes and the value is clamped to a sane range.
    let _ = histogram.record(latency_us.min(MAX_LATENCY_US));
}

/// `quantile` of `latency` in milliseconds (3 decimals), or `None` when nothing was recorded.
pub fn quantile_ms(latency: &Histogram<u64>, quantile: f64) -> Option<f64> {
    (!latency.is_empty()).then(|| round(latency.value_at_quantile(quantile) as f64 / 1_000.0, 3))
}

pub fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

/// Counts by name (ERROR codes, status codes, failure descriptions); these events are rare, so
/// one mutex for all sessions costs nothing.
#[derive(Default)]
pub struct Counts(Mutex<BTreeMap<String, u64>>);

impl Counts {
    pub fn add(&self, key: impl Into<String>) {
        *lock(&self.0).entry(key.into()).or_default() += 1;
    }

    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        lock(&self.0).clone()
    }

    /// All counts together.
    pub fn total(&self) -> u64 {
        lock(&self.0).values().sum()
    }
}

/// The result of one measured window (the whole run without `--find-max`).
#[derive(Debug, Clone, Serialize)]
pub struct StepResult {
    pub step: u8,
    pub rate: f64,
    pub sent: u64,
    pub delivered: u64,
    pub expected: Option<u64>,
    pub delivery_ratio: Option<f64>,
    pub deliveries_per_sec: f64,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// Streams that ended during the window.
    pub streams_ended: u64,
    /// CPU seconds spent during the measured part of the window; the server's are those of all
    /// the `--server-pid` processes together.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loadgen_cpu_s: Option<f64>,
    /// The server's CPU microseconds per delivery counted in the window: what one delivery
    /// costs, which stays comparable across rates where the CPU seconds do not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_us_per_delivery: Option<f64>,
    /// The share of this machine's cores the server and `chat-bench` used together in the
    /// window (1.0: all of them). Near 1, a failed window says as much about the machine as
    /// about the server: the generator took what the server lacked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cores_busy: Option<f64>,
    /// Everything expected arrived, p99 within [`FIND_MAX_P99_MS`], no stream ended.
    pub ok: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
}

/// The raw numbers a [`StepResult`] is computed from.
pub struct StepCounts<'a> {
    pub step: u8,
    pub rate: f64,
    pub sent: u64,
    pub delivered: u64,
    pub expected: Option<u64>,
    pub window: Duration,
    pub latency: &'a Histogram<u64>,
    pub streams_ended: u64,
    pub server_cpu_s: Option<f64>,
    pub loadgen_cpu_s: Option<f64>,
    pub partial: bool,
}

impl StepResult {
    pub fn new(c: StepCounts<'_>) -> StepResult {
        let ms = |quantile: f64| quantile_ms(c.latency, quantile);
        let delivery_ratio = c
            .expected
            .filter(|e| *e > 0)
            .map(|e| round(c.delivered as f64 / e as f64, 6));
        let seconds = c.window.as_secs_f64();
        let p99_ms = ms(0.99);
        StepResult {
            step: c.step,
            rate: c.rate,
            sent: c.sent,
            delivered: c.delivered,
            expected: c.expected,
            delivery_ratio,
            deliveries_per_sec: if seconds > 0.0 {
                round(c.delivered as f64 / seconds, 1)
            } else {
                0.0
            },
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms,
            p999_ms: ms(0.999),
            max_ms: (!c.latency.is_empty()).then(|| round(c.latency.max() as f64 / 1_000.0, 3)),
            streams_ended: c.streams_ended,
            server_cpu_s: c.server_cpu_s,
            loadgen_cpu_s: c.loadgen_cpu_s,
            server_cpu_us_per_delivery: c
                .server_cpu_s
                .filter(|_| c.delivered > 0)
                .map(|cpu| round(cpu * 1e6 / c.delivered as f64, 3)),
            cores_busy: cores_busy(
                c.server_cpu_s,
                c.loadgen_cpu_s,
                seconds,
                std::thread::available_parallelism().map_or(1, usize::from),
            ),
            ok: !c.partial
                && c.expected.is_some_and(|e| e > 0 && c.delivered == e)
                && p99_ms.is_some_and(|p| p <= FIND_MAX_P99_MS)
                && c.streams_ended == 0,
            partial: c.partial,
        }
    }

    /// A run that measured nothing (idle, or stopped before its first window).
    pub fn empty(rate: f64) -> StepResult {
        StepResult::new(StepCounts {
            step: 0,
            rate,
            sent: 0,
            delivered: 0,
            expected: Some(0),
            window: Duration::ZERO,
            latency: &new_histogram(),
            streams_ended: 0,
            server_cpu_s: None,
            loadgen_cpu_s: None,
            partial: false,
        })
    }
}

/// The share of `cores` that `server_cpu_s` and `loadgen_cpu_s` together fill over `seconds`.
fn cores_busy(
    server_cpu_s: Option<f64>,
    loadgen_cpu_s: Option<f64>,
    seconds: f64,
    cores: usize,
) -> Option<f64> {
    let used = server_cpu_s? + loadgen_cpu_s?;
    (seconds > 0.0).then(|| round(used / (seconds * cores as f64), 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_passes_only_when_complete_and_fast() {
        let mut latency = new_histogram();
        for us in [500, 1_000, 2_000] {
            record_latency(&mut latency, us);
        }
        let counts = |delivered, streams_ended| StepCounts {
            step: 0,
            rate: 10.0,
            sent: 10,
            delivered,
            expected: Some(100),
            window: Duration::from_secs(2),
            latency: &latency,
            streams_ended,
            server_cpu_s: None,
            loadgen_cpu_s: None,
            partial: false,
        };
        let full = StepResult::new(counts(100, 0));
        assert!(full.ok);
        assert_eq!(full.delivery_ratio, Some(1.0));
        assert_eq!(full.deliveries_per_sec, 50.0);
        assert!(!StepResult::new(counts(99, 0)).ok);
        assert!(!StepResult::new(counts(100, 1)).ok);
    }

    #[test]
    fn server_cpu_is_divided_by_the_deliveries_of_the_window() {
        let latency = new_histogram();
        let counts = |delivered, server_cpu_s| StepCounts {
            step: 0,
            rate: 20.0,
            sent: 10_000,
            delivered,
            expected: Some(delivered),
            window: Duration::from_secs(10),
            latency: &latency,
            streams_ended: 0,
            server_cpu_s,
            loadgen_cpu_s: None,
            partial: false,
        };
        // 2,000,000 deliveries for 3.1 CPU seconds: 1.55 µs each.
        let step = StepResult::new(counts(2_000_000, Some(3.1)));
        assert_eq!(step.server_cpu_us_per_delivery, Some(1.55));
        assert_eq!(
            StepResult::new(counts(0, Some(3.1))).server_cpu_us_per_delivery,
            None
        );
        assert_eq!(
            StepResult::new(counts(2_000_000, None)).server_cpu_us_per_delivery,
            None
        );
    }

    #[test]
    fn cores_busy_is_the_share_of_the_machine_both_processes_used() {
        // 6.5 + 11.5 CPU-s over 10 s of a 2-core machine: 90 % of it.
        assert_eq!(cores_busy(Some(6.5), Some(11.5), 10.0, 2), Some(0.9));
        assert_eq!(cores_busy(Some(2.0), Some(2.0), 10.0, 8), Some(0.05));
        assert_eq!(cores_busy(None, Some(2.0), 10.0, 2), None);
        assert_eq!(cores_busy(Some(2.0), Some(2.0), 0.0, 2), None);
    }
}
