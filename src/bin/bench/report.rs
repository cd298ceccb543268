//! What the user sees: the progress bar on stderr, the report (one JSON object, also rendered as
//! the summary table), and the single exit path [`finish`] that prints it, shared by `main` and
//! the watchdog thread that enforces the hard deadline.

use std::{
    borrow::Cow,
    fmt::Write as _,
    io::Write as _,
    sync::{Arc, atomic::Ordering::Relaxed},
};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Map, Value, json};

use crate::{
    EXIT_DEADLINE,
    cli::{Mode, Scenario},
    proc::{ProcessStats, cpu_seconds, total_cpu_s},
    shared::{Shared, lock},
    stats::{FIND_MAX_P99_MS, StepCounts, StepResult},
};

/// The progress bar on stderr; hidden under `--json` or when stderr is not a terminal, so scripts
/// and pipes only ever see the report.
pub struct Progress(ProgressBar);

impl Progress {
    pub fn new(visible: bool) -> Progress {
        if !visible {
            return Progress(ProgressBar::hidden());
        }
        let bar = ProgressBar::with_draw_target(Some(1), ProgressDrawTarget::stderr());
        // unwrap: a constant, valid template
        let style = ProgressStyle::with_template("{prefix:>8} [{bar:30}] {msg}")
            .unwrap()
            .progress_chars("=> ");
        bar.set_style(style);
        Progress(bar)
    }

    pub fn stage(&self, prefix: impl Into<Cow<'static, str>>, length: u64) {
        self.0.set_prefix(prefix);
        self.0.set_length(length.max(1));
        self.0.set_position(0);
        self.0.set_message("");
    }

    pub fn update(&self, position: u64, message: String) {
        self.0.set_position(position);
        self.0.set_message(message);
    }

    pub fn set_message(&self, message: &'static str) {
        self.0.set_message(message);
    }

    /// Runs `print` with the bar hidden, so a line written meanwhile does not garble it.
    pub fn suspend<R>(&self, print: impl FnOnce() -> R) -> R {
        self.0.suspend(print)
    }

    pub fn clear(&self) {
        self.0.finish_and_clear();
    }
}

/// The whole run as one JSON object (the `--json` line; the table is printed from it too).
pub fn build_report(shared: &Shared) -> Value {
    let p = &shared.params;
    let outcome = lock(&shared.outcome);
    let best = outcome
        .steps
        .iter()
        .filter(|s| s.ok)
        .max_by(|a, b| a.deliveries_per_sec.total_cmp(&b.deliveries_per_sec));
    let summary = match p.mode {
        Mode::Churn => {
            let churn = &shared.churn;
            StepResult::new(StepCounts {
                step: 0,
                rate: p.rate,
                sent: churn.sent.load(Relaxed),
                delivered: churn.received.load(Relaxed),
                expected: None,
                // Every round churns for `duration`.
                window: p.duration * p.rounds,
                latency: &lock(&churn.latency),
                streams_ended: 0,
                server_cpu_s: None,
                loadgen_cpu_s: None,
                partial: false,
            })
        }
        Mode::Idle | Mode::Stall => StepResult::empty(0.0),
        Mode::Window | Mode::FindMax => best
            .or(outcome.steps.last())
            .cloned()
            .unwrap_or_else(|| StepResult::empty(p.rate)),
        // Soak has one long window; fairness reports its flood run here (both are in `extra`).
        Mode::Soak | Mode::Fairness => outcome
            .steps
            .last()
            .cloned()
            .unwrap_or_else(|| StepResult::empty(p.rate)),
    };
    let mut report = json!({
        "scenario": p.scenario.map(Scenario::name),
        "server": p.servers.join(","),
        "sessions": p.sessions,
        "conns": p.conns,
        "rooms": p.rooms,
        "senders": p.senders,
        "rate": summary.rate,
        "size": p.size,
        "warmup_s": p.warmup.as_secs_f64(),
        "duration_s": p.duration.as_secs_f64(),
        "find_max": p.mode == Mode::FindMax,
        // Churn: JOINs over all cycles; otherwise the sessions counted as members.
        "joined": shared.joined.load(Relaxed),
        "join_s": outcome.join_s,
        "sent": summary.sent,
        "delivered": summary.delivered,
        "expected": summary.expected,
        "delivery_ratio": summary.delivery_ratio,
        "deliveries_per_sec": summary.deliveries_per_sec,
        "p50_ms": summary.p50_ms,
        "p90_ms": summary.p90_ms,
        "p99_ms": summary.p99_ms,
        "p999_ms": summary.p999_ms,
        "max_ms": summary.max_ms,
        "partial": summary.partial,
        "late": shared.late_total(),
        "error_codes": shared.error_codes.snapshot(),
        "ended_by_server": shared.ended_by_server.snapshot(),
        "transport_failures": shared.transport_failures.snapshot(),
        "loadgen_cpu_s": cpu_seconds("self"),
        // The measured window only (the process totals below include start-up and JOINs).
        "server_cpu_window_s": summary.server_cpu_s,
        "server_cpu_us_per_delivery": summary.server_cpu_us_per_delivery,
    });
    // unwrap: `json!` of an object literal is an object
    let fields = report.as_object_mut().unwrap();
    if !p.server_pids.is_empty() {
        let watched: Vec<ProcessStats> = p
            .server_pids
            .iter()
            .map(|&pid| ProcessStats::read(pid))
            .collect();
        insert_server_fields(fields, &watched);
    }
    if p.mode == Mode::Churn {
        fields.insert("cycles".into(), json!(shared.churn.cycles.load(Relaxed)));
        fields.insert("rounds".into(), json!(p.rounds));
    }
    if p.mode == Mode::FindMax {
        fields.insert("steps".into(), json!(outcome.steps));
        fields.insert(
            "max_ok_deliveries_per_sec".into(),
            json!(best.map(|s| s.deliveries_per_sec)),
        );
        fields.insert("max_ok_rate".into(), json!(best.map(|s| s.rate)));
    }
    for (key, value) in &outcome.extra {
        fields.insert(key.clone(), value.clone());
    }
    fields.insert("notes".into(), json!(outcome.notes));
    report
}

/// The report's fields of the `--server-pid` processes. `server_processes` lists each one and
/// `server_cpu_s` is their total CPU. A single process also keeps the flat `server_pid` and
/// `server_peak_rss_kb` that one-server reports have always had; several get no flat peak,
/// because peaks reached at different moments add up to no peak that ever was.
fn insert_server_fields(fields: &mut Map<String, Value>, watched: &[ProcessStats]) {
    if let [only] = watched {
        fields.insert("server_pid".into(), json!(only.pid));
        fields.insert("server_peak_rss_kb".into(), json!(only.peak_rss_kb));
    }
    fields.insert("server_cpu_s".into(), json!(total_cpu_s(watched)));
    fields.insert("server_processes".into(), json!(watched));
}

/// A JSON value for the table: numbers as they are, null as `-`.
fn show(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn show_counts(value: &Value) -> String {
    match value.as_object() {
        Some(map) if !map.is_empty() => map
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", "),
        _ => "none".to_owned(),
    }
}

/// The human summary of `report`.
fn render_table(report: &Value, mode: Mode) -> String {
    let r = |key: &str| show(&report[key]);
    let mut out = String::new();
    let mut line = |label: &str, text: String| {
        writeln!(out, "{label:<11} {text}").ok();
    };
    line(
        "chat-bench",
        format!(
            "scenario {} · {} sessions over {} connections to {} · {} rooms · {} senders · {} B",
            r("scenario"),
            r("sessions"),
            r("conns"),
            r("server"),
            r("rooms"),
            r("senders"),
            r("size")
        ),
    );
    line(
        "joined",
        format!("{}/{} in {} s", r("joined"), r("sessions"), r("join_s")),
    );
    match mode {
        Mode::Idle => {}
        Mode::Stall => line(
            "stall",
            format!(
                "{} stalled clients ({} mode, stream window {} B) over {} connections, one \
                 flooding sender each over {} connections, up to {} CHATs of {} B per room",
                r("sessions"),
                r("stall_mode"),
                r("stall_window"),
                r("conns"),
                r("sender_conns"),
                r("flood_messages"),
                r("size")
            ),
        ),
        Mode::Churn => line(
            "churn",
            format!(
                "{} round(s) of {} s, {} completed cycles at {} CHATs/s per sender",
                r("rounds"),
                r("duration_s"),
                r("cycles"),
                r("rate")
            ),
        ),
        Mode::Soak => line(
            "soak",
            format!(
                "{} s at {} CHATs/s per sender, a line every {} s",
                r("duration_s"),
                r("rate"),
                r("soak_interval_s")
            ),
        ),
        Mode::Window | Mode::FindMax | Mode::Fairness => line(
            "window",
            format!(
                "{} s warm-up + {} s measured at {} CHATs/s per sender",
                r("warmup_s"),
                r("duration_s"),
                r("rate")
            ),
        ),
    }
    if mode == Mode::Fairness {
        line(
            "rooms",
            "the figures below are those of rooms B..Z in the flood run".into(),
        );
    }
    if mode == Mode::Stall {
        render_stall(report, &mut line);
    }
    if !matches!(mode, Mode::Idle | Mode::Stall) {
        line("sent", r("sent"));
        line(
            "delivered",
            format!(
                "{} of {} expected (ratio {}), {} deliveries/s, {} late",
                r("delivered"),
                r("expected"),
                r("delivery_ratio"),
                r("deliveries_per_sec"),
                r("late")
            ),
        );
        line(
            "latency ms",
            format!(
                "p50 {} · p90 {} · p99 {} · p99.9 {} · max {}",
                r("p50_ms"),
                r("p90_ms"),
                r("p99_ms"),
                r("p999_ms"),
                r("max_ms")
            ),
        );
    }
    line("errors", show_counts(&report["error_codes"]));
    line("ended", show_counts(&report["ended_by_server"]));
    line("transport", show_counts(&report["transport_failures"]));
    let watched = report["server_processes"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    for process in watched {
        line(
            "server",
            format!(
                "pid {}: peak RSS {} kB, CPU {} s",
                show(&process["pid"]),
                show(&process["peak_rss_kb"]),
                show(&process["cpu_s"])
            ),
        );
    }
    if watched.len() > 1 {
        line(
            "server CPU",
            format!(
                "{} s, the {} processes together",
                r("server_cpu_s"),
                watched.len()
            ),
        );
    }
    if !report["server_cpu_us_per_delivery"].is_null() {
        line(
            "server CPU",
            format!(
                "{} s in the measured window: {} µs per delivery",
                r("server_cpu_window_s"),
                r("server_cpu_us_per_delivery")
            ),
        );
    }
    if !report["server_rss_joined_kb"].is_null() {
        line(
            "server RSS",
            format!(
                "{} kB at start, {} kB with the sessions joined: {} bytes per session",
                r("server_rss_start_kb"),
                r("server_rss_joined_kb"),
                r("server_rss_per_session_bytes")
            ),
        );
    }
    if !report["server_rss_before_kb"].is_null() {
        line(
            "server RSS",
            format!(
                "{} kB before, {} kB after ({} %, within 10%: {})",
                r("server_rss_before_kb"),
                r("server_rss_after_kb"),
                r("server_rss_change_pct"),
                r("server_rss_within_10pct")
            ),
        );
    }
    if !report["server_rss_rounds_kb"].is_null() {
        let list = |key: &str| {
            report[key]
                .as_array()
                .map(|kb| kb.iter().map(show).collect::<Vec<_>>().join(", "))
                .unwrap_or_default()
        };
        line(
            "server RSS",
            format!(
                "after each round as the sessions closed: {} kB; once steady: {} kB; over the \
                 last five rounds {} % (plateau, ≤ 6 %: {})",
                list("server_rss_rounds_closed_kb"),
                list("server_rss_rounds_kb"),
                r("server_rss_last5_growth_pct"),
                r("server_rss_plateau")
            ),
        );
    }
    if mode == Mode::Soak {
        line(
            "server RSS",
            format!(
                "{} kB at start, {} kB at end, max {} kB (growth {} %)",
                r("rss_start_kb"),
                r("rss_end_kb"),
                r("rss_max_kb"),
                r("rss_growth_pct")
            ),
        );
    }
    if mode == Mode::Fairness {
        render_fairness(report, &mut line);
    }
    line("loadgen", format!("CPU {} s", r("loadgen_cpu_s")));
    if let Some(steps) = report["steps"].as_array() {
        writeln!(
            out,
            "\n{:>4} {:>10} {:>9} {:>11} {:>11} {:>9} {:>12} {:>8} {:>8} {:>8} {:>8}  ok",
            "step",
            "rate/s",
            "sent",
            "delivered",
            "expected",
            "ratio",
            "deliv/s",
            "p50 ms",
            "p99 ms",
            "max ms",
            "µs/deliv"
        )
        .ok();
        for s in steps {
            let f = |key: &str| show(&s[key]);
            writeln!(
                out,
                "{:>4} {:>10} {:>9} {:>11} {:>11} {:>9} {:>12} {:>8} {:>8} {:>8} {:>8}  {}{}",
                f("step"),
                format!("{:.2}", s["rate"].as_f64().unwrap_or(0.0)),
                f("sent"),
                f("delivered"),
                f("expected"),
                f("delivery_ratio"),
                f("deliveries_per_sec"),
                f("p50_ms"),
                f("p99_ms"),
                f("max_ms"),
                f("server_cpu_us_per_delivery"),
                if s["ok"] == json!(true) { "yes" } else { "no" },
                if s["partial"] == json!(true) {
                    " (partial)"
                } else {
                    ""
                },
            )
            .ok();
        }
        writeln!(
            out,
            "max        {} deliveries/s with ratio 1.0 and p99 ≤ {FIND_MAX_P99_MS} ms (rate {})",
            r("max_ok_deliveries_per_sec"),
            r("max_ok_rate")
        )
        .ok();
    }
    for note in report["notes"].as_array().into_iter().flatten() {
        writeln!(out, "note        {}", show(note)).ok();
    }
    out
}

/// The stall lines of the table.
fn render_stall(report: &Value, line: &mut impl FnMut(&str, String)) {
    let r = |key: &str| show(&report[key]);
    let spread = |key: &str| {
        let s = &report[key];
        if s.is_null() {
            return "-".to_owned();
        }
        format!(
            "n {} · min {} · p50 {} · p99 {} · max {}",
            show(&s["n"]),
            show(&s["min"]),
            show(&s["p50"]),
            show(&s["p99"]),
            show(&s["max"])
        )
    };
    let target = |key: &str| match &report["targets"][key] {
        Value::Bool(true) => "met",
        Value::Bool(false) => "NOT met",
        _ => "n/a",
    };
    line(
        "streams",
        format!(
            "{} senders joined, {} stalled clients joined",
            r("senders_joined"),
            r("stalled_joined")
        ),
    );
    line(
        "flood",
        format!(
            "{} CHATs ({} MB) in {} s",
            r("flood_posted"),
            r("flood_mb"),
            r("flood_s")
        ),
    );
    line(
        "server RSS",
        format!(
            "{} kB at start, {} kB before the flood, peak {} kB (≤ 1 GiB: {}), {} kB at its end, \
             {} kB {} s after (limit {} kB: {})",
            r("server_rss_start_kb"),
            r("server_rss_before_flood_kb"),
            r("server_rss_peak_kb"),
            target("peak_rss_le_1gib"),
            r("server_rss_flood_end_kb"),
            r("server_rss_after_kb"),
            show(&report["settle_s"]),
            r("server_rss_back_limit_kb"),
            target("rss_back_after_5s")
        ),
    );
    line(
        "evicted",
        format!(
            "{} LEAVEs seen by the senders; flood start → LEAVE ms: {}",
            r("evicted_seen"),
            spread("flood_to_eviction_ms")
        ),
    );
    line(
        "reset",
        format!(
            "{} RST_STREAM seen; {} within 1 s of the LEAVE ({})",
            r("reset_seen"),
            r("reset_within_1s"),
            target("reset_within_1s_of_eviction")
        ),
    );
    line(
        "LEAVE→RST",
        format!("ms: {}", spread("eviction_to_reset_ms")),
    );
    line("flood→RST", format!("ms: {}", spread("flood_to_reset_ms")));
    if !report["resume_to_reset_ms"].is_null() {
        line(
            "resume→RST",
            format!("ms after reading again: {}", spread("resume_to_reset_ms")),
        );
    }
    line("stalled end", show_counts(&report["stalled_ends"]));
    line("sender end", show_counts(&report["sender_ends"]));
    let metrics = |key: &str| {
        let m = &report[key];
        if m.is_null() {
            return "-".to_owned();
        }
        format!(
            "open {}, slow_consumer {}",
            show(&m["sessions_open"]),
            show(&m["sessions_ended"]["slow_consumer"])
        )
    };
    line(
        "metrics",
        format!(
            "start: {}; before the flood: {}; after: {}; slow_consumer counted {} ({})",
            metrics("metrics_start"),
            metrics("metrics_before_flood"),
            metrics("metrics_after"),
            r("slow_consumer_counted"),
            target("slow_consumer_counted_n")
        ),
    );
    let o = &report["observer"];
    line(
        "observer",
        format!(
            "{} PINGs, {} PONGs within 1 s, {} missed ({}), {} late (> 100 ms); RTT p50 {} · \
             p99 {} · max {} ms",
            show(&o["pings"]),
            show(&o["answered_in_1s"]),
            show(&o["missed"]),
            target("observer_missed_none"),
            show(&o["late"]),
            show(&o["p50_ms"]),
            show(&o["p99_ms"]),
            show(&o["max_ms"])
        ),
    );
    let f = &report["fresh_client"];
    line(
        "fresh",
        format!(
            "served: {} in {} ms{}",
            target("fresh_client_served"),
            show(&f["ms"]),
            match &f["error"] {
                Value::String(e) => format!(" ({e})"),
                _ => String::new(),
            }
        ),
    );
}

/// The fairness lines of the table: rooms B..Z without and with the flood, and the flooder.
fn render_fairness(report: &Value, line: &mut impl FnMut(&str, String)) {
    let r = |key: &str| show(&report[key]);
    let run = |name: &str| {
        let run = &report[name];
        format!(
            "rooms B..Z p50 {} · p99 {} ms, delivered {} of {}",
            show(&run["p50_ms"]),
            show(&run["p99_ms"]),
            show(&run["delivered"]),
            show(&run["expected"])
        )
    };
    line("no flood", run("no_flood"));
    line("flood", run("flood"));
    line(
        "fairness",
        format!(
            "p99 flood/no-flood {} (p50 {}), target ≤ 2: {}",
            r("p99_ratio"),
            r("p50_ratio"),
            r("p99_within_2x")
        ),
    );
    line(
        "flooder",
        format!(
            "sent {} CHATs ({} /s), {} delivered in room A, {} ERROR replies, ended by the \
             server: {}",
            r("flooder_sent"),
            r("flooder_per_sec"),
            r("flooder_delivered"),
            r("flooder_errors"),
            r("flooder_ended")
        ),
    );
    line(
        "streams",
        format!(
            "streams of rooms B..Z ended: {}, of room A: {}",
            r("others_ended"),
            r("room_a_ended")
        ),
    );
}

/// Prints the report once (JSON line or table) and exits with `code`. Whoever comes first, `main`
/// or the watchdog, holds the print lock until the process is gone, so the output is never doubled.
pub fn finish(shared: &Shared, code: u8) -> ! {
    let _printing = lock(&shared.printing);
    shared.stopping.store(true, Relaxed);
    let in_progress = lock(&shared.window).take();
    if let Some(plan) = in_progress {
        let partial = shared.harvest(&plan, None, true);
        lock(&shared.outcome).steps.push(partial);
    }
    shared.progress.clear();
    let report = build_report(shared);
    let text = if shared.params.json {
        format!("{report}\n")
    } else {
        render_table(&report, shared.params.mode)
    };
    let mut stdout = std::io::stdout().lock();
    // Nothing sensible is left to do if stdout is gone; the exit code still tells.
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
    std::process::exit(i32::from(code));
}

/// A plain thread, not a task: it must fire even if the async runtime is wedged.
pub fn spawn_watchdog(shared: Arc<Shared>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            std::thread::sleep(shared.params.deadline);
            shared.note(format!(
                "hard deadline of {} s hit: results are partial",
                shared.params.deadline.as_secs_f64()
            ));
            finish(&shared, EXIT_DEADLINE);
        })
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(pid: u32, peak_rss_kb: u64, cpu_s: Option<f64>) -> ProcessStats {
        ProcessStats {
            pid,
            peak_rss_kb: Some(peak_rss_kb),
            cpu_s,
        }
    }

    /// A report holding only the watched processes' fields; the table shows the rest as `-`.
    fn report_of(watched: &[ProcessStats]) -> Value {
        let mut fields = Map::new();
        insert_server_fields(&mut fields, watched);
        Value::Object(fields)
    }

    fn server_lines(report: &Value) -> Vec<String> {
        render_table(report, Mode::Window)
            .lines()
            .filter(|line| line.starts_with("server"))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn one_watched_process_keeps_the_flat_fields_and_its_line() {
        let report = report_of(&[process(4242, 98_000, Some(15.02))]);
        assert_eq!(report["server_pid"], 4242);
        assert_eq!(report["server_peak_rss_kb"], 98_000);
        assert_eq!(report["server_cpu_s"], 15.02);
        assert_eq!(
            report["server_processes"],
            json!([{ "pid": 4242, "peak_rss_kb": 98_000, "cpu_s": 15.02 }])
        );
        // The line as it was before several pids were accepted, and no total line.
        assert_eq!(
            server_lines(&report),
            ["server      pid 4242: peak RSS 98000 kB, CPU 15.02 s"]
        );
    }

    #[test]
    fn several_watched_processes_get_a_line_each_and_the_total_cpu() {
        let report = report_of(&[
            process(11, 61_000, Some(8.61)),
            process(12, 60_500, Some(8.53)),
            process(13, 9_000, Some(0.51)),
        ]);
        assert_eq!(report["server_cpu_s"], 17.65);
        assert_eq!(report["server_processes"].as_array().map(Vec::len), Some(3));
        assert_eq!(report["server_processes"][2]["pid"], 13);
        // No single process is "the" server, and a sum of peaks is no peak.
        assert!(report.get("server_pid").is_none(), "{report}");
        assert!(report.get("server_peak_rss_kb").is_none(), "{report}");
        assert_eq!(
            server_lines(&report),
            [
                "server      pid 11: peak RSS 61000 kB, CPU 8.61 s",
                "server      pid 12: peak RSS 60500 kB, CPU 8.53 s",
                "server      pid 13: peak RSS 9000 kB, CPU 0.51 s",
                "server CPU  17.65 s, the 3 processes together",
            ]
        );
    }

    #[test]
    fn an_unreadable_process_leaves_the_total_unknown() {
        let gone = ProcessStats {
            pid: 12,
            peak_rss_kb: None,
            cpu_s: None,
        };
        let report = report_of(&[process(11, 61_000, Some(8.61)), gone]);
        assert_eq!(report["server_cpu_s"], Value::Null);
        assert_eq!(
            server_lines(&report)[1..],
            [
                "server      pid 12: peak RSS - kB, CPU - s",
                "server CPU  - s, the 2 processes together",
            ]
        );
    }

    #[test]
    fn the_window_cpu_per_delivery_gets_its_line() {
        let mut report = report_of(&[process(4242, 98_000, Some(15.02))]);
        report["server_cpu_window_s"] = json!(3.1);
        report["server_cpu_us_per_delivery"] = json!(1.55);
        assert_eq!(
            server_lines(&report),
            [
                "server      pid 4242: peak RSS 98000 kB, CPU 15.02 s",
                "server CPU  3.1 s in the measured window: 1.55 µs per delivery",
            ]
        );
    }

    #[test]
    fn without_watched_processes_there_is_no_server_line() {
        assert!(server_lines(&json!({})).is_empty());
    }
}
