//! `--soak DURATION`: the configured load (sessions, rooms, senders, rate) as one long window, and
//! every `--soak-interval` one line: elapsed time, the server's VmRSS, deliveries and delivery ratio
//! so far, p99 of the last interval, ERRORs and server-ended streams so far. The report that follows
//! adds the server's RSS at start, end and peak and its growth, to show leaks over time.

use std::{io::Write as _, sync::Arc};

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::{
    client::Requests,
    proc::total_rss_kb,
    shared::{Shared, lock},
    stats::{quantile_ms, round},
    window::Running,
};

/// What the soak lines have seen so far.
struct Soak {
    /// The watched processes, whose VmRSS the lines sum; empty without `--server-pid`.
    pids: Vec<u32>,
    /// When the window started (elapsed times count from here).
    start: Instant,
    lines: u64,
    last_line: Instant,
    /// Deliveries at the previous line, for the interval's rate.
    last_delivered: u64,
    rss_start_kb: Option<u64>,
    rss_max_kb: Option<u64>,
}

impl Soak {
    fn rss_kb(&self) -> Option<u64> {
        total_rss_kb(&self.pids)
    }

    /// Prints the line for the interval that ends `now`, and keeps the report's RSS fields
    /// current, so a run cut by the deadline still reports them.
    fn line(&mut self, shared: &Shared, now: Instant) {
        self.lines += 1;
        let rss_kb = self.rss_kb();
        self.rss_max_kb = self.rss_max_kb.max(rss_kb);
        // The interval's latency, taken out of the tallies (the window's total keeps a copy).
        let latency = shared.drain_latency();
        let delivered = shared.delivered_now();
        let expected = shared.expected_now();
        let seconds = now.saturating_duration_since(self.last_line).as_secs_f64();
        let per_sec = if seconds > 0.0 {
            round(
                (delivered - self.last_delivered.min(delivered)) as f64 / seconds,
                1,
            )
        } else {
            0.0
        };
        self.last_line = now;
        self.last_delivered = delivered;
        let line = json!({
            "soak_line": self.lines,
            "elapsed_s": round(now.saturating_duration_since(self.start).as_secs_f64(), 1),
            "server_rss_kb": rss_kb,
            "sent": shared.sent_now(),
            "delivered": delivered,
            "expected": expected,
            // CHATs still in flight at this instant count as not (yet) delivered.
            "delivery_ratio": (expected > 0).then(|| round(delivered as f64 / expected as f64, 6)),
            "interval_deliveries_per_sec": per_sec,
            "interval_p50_ms": quantile_ms(&latency, 0.5),
            "interval_p99_ms": quantile_ms(&latency, 0.99),
            "errors": shared.error_codes.total(),
            "ended_by_server": shared.ended_by_server.total(),
            "transport_failures": shared.transport_failures.total(),
        });
        let text = if shared.params.json {
            line.to_string()
        } else {
            render_line(&line)
        };
        print_line(shared, &text);
        self.record(shared, rss_kb);
    }

    /// The soak's fields of the report, with `rss_end_kb` the latest reading.
    fn record(&self, shared: &Shared, rss_end_kb: Option<u64>) {
        let growth = self
            .rss_start_kb
            .zip(rss_end_kb)
            .filter(|(start, _)| *start > 0)
            .map(|(start, end)| round((end as f64 / start as f64 - 1.0) * 100.0, 2));
        let p = &shared.params;
        let mut outcome = lock(&shared.outcome);
        let extra = &mut outcome.extra;
        extra.insert("soak_s".into(), json!(p.duration.as_secs_f64()));
        extra.insert(
            "soak_interval_s".into(),
            json!(p.soak_interval.as_secs_f64()),
        );
        extra.insert("soak_lines".into(), json!(self.lines));
        extra.insert("rss_start_kb".into(), json!(self.rss_start_kb));
        extra.insert("rss_end_kb".into(), json!(rss_end_kb));
        extra.insert("rss_max_kb".into(), json!(self.rss_max_kb.max(rss_end_kb)));
        extra.insert("rss_growth_pct".into(), json!(growth));
    }
}

/// The table form of a soak line.
fn render_line(line: &Value) -> String {
    let show = |key: &str| match &line[key] {
        Value::Null => "-".to_owned(),
        value => value.to_string(),
    };
    format!(
        "soak {:>8} s  server RSS {} kB  delivered {} of {} (ratio {})  {}/s  p99 {} ms  \
         errors {}  ended {}",
        show("elapsed_s"),
        show("server_rss_kb"),
        show("delivered"),
        show("expected"),
        show("delivery_ratio"),
        show("interval_deliveries_per_sec"),
        show("interval_p99_ms"),
        show("errors"),
        show("ended_by_server")
    )
}

/// Writes one line to stdout, under the print lock so it never lands inside the report.
fn print_line(shared: &Shared, text: &str) {
    let _printing = lock(&shared.printing);
    shared.progress.suspend(|| {
        let mut stdout = std::io::stdout().lock();
        // A closed stdout is no reason to stop the soak; the report's exit code still tells.
        let _ = writeln!(stdout, "{text}").and_then(|()| stdout.flush());
    });
}

/// Runs the soak: one window of `--soak` length with a line every `--soak-interval` and a last
/// line at its end, then the usual settle and harvest.
pub async fn soak(shared: &Arc<Shared>, requests: &Requests) -> anyhow::Result<()> {
    let p = &shared.params;
    if p.server_pids.is_empty() {
        shared.note("soak: pass --server-pid to follow the server's RSS");
        if !p.json {
            print_line(
                shared,
                "soak: no --server-pid given, so the server's RSS is not followed",
            );
        }
    }
    let mut window = Running::start(shared, requests, 0, p.rate, None);
    let start = window.plan.start;
    let mut soak = Soak {
        pids: p.server_pids.clone(),
        start,
        lines: 0,
        last_line: start,
        last_delivered: 0,
        rss_start_kb: None,
        rss_max_kb: None,
    };
    soak.rss_start_kb = soak.rss_kb();
    soak.rss_max_kb = soak.rss_start_kb;
    soak.record(shared, soak.rss_start_kb);

    let mut next_line = start + p.soak_interval;
    let outcome = window
        .watch(shared, |now| {
            if now >= next_line {
                soak.line(shared, now);
                while next_line <= now {
                    next_line += p.soak_interval;
                }
            }
            Some(next_line)
        })
        .await;
    if outcome.is_ok() {
        // The last interval, whole or not, ends with the soak.
        soak.line(shared, window.plan.measure_end.max(Instant::now()));
        window.settle(shared).await;
        soak.record(shared, soak.rss_kb());
    }
    window.finish(shared, outcome.is_err());
    outcome
}
