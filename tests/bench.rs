//! The `chat-bench` binary against an in-process server: a tiny run delivers every CHAT it
//! expects and reports each watched process, a tiny soak prints its interval lines and a complete
//! summary, a tiny fairness run measures both of its windows, tiny churn rounds report the
//! server's RSS after each, a tiny stall run sees every stalled stream reset, and the generator
//! refuses to target anything but loopback.

mod common;

use std::{
    process::{Output, Stdio},
    time::Duration,
};

use common::TestServer;
use serde_json::Value;
use tokio::{process::Command, time::timeout};

/// Rooms of the generator lift the per-member rate limit, as in the shipped configuration.
const BENCH_ROOMS: &str = "[rooms.\"bench-*\"]\nrate_per_sec = 100000\nburst = 100000\n";
/// Bound on one chat-bench run in these tests (the plans are 4 to 10 s; each passes a
/// `--deadline` below this).
const RUN_LIMIT: Duration = Duration::from_secs(30);

/// Runs chat-bench with `args` (bounded by [`RUN_LIMIT`]), checks it succeeded, and returns its
/// stdout lines parsed as JSON.
async fn run_bench(args: &[&str]) -> Vec<Value> {
    let run = Command::new(env!("CARGO_BIN_EXE_chat-bench"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let output: Output = timeout(RUN_LIMIT, run)
        .await
        .expect("chat-bench ends on its own")
        .expect("chat-bench starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit {:?}\nstdout: {stdout}\nstderr: {stderr}",
        output.status
    );
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("every line is JSON"))
        .collect()
}

/// A server with its `/metrics` endpoint on, and chat-bench's one JSON report of `scenario`
/// against it (`args` added; `--deadline 25`).
async fn run_metered(scenario: &str, args: &[&str]) -> (TestServer, Value) {
    let server = TestServer::start(&format!(
        "{BENCH_ROOMS}[metrics]\nlisten = \"127.0.0.1:0\"\n"
    ))
    .await;
    let metrics = format!("http://{}/metrics", server.metrics_addr.unwrap());
    let address = server.addr.to_string();
    let mut all = vec![
        "--server",
        &address,
        "--scenario",
        scenario,
        "--metrics-url",
        &metrics,
        "--deadline",
        "25",
        "--json",
    ];
    all.extend_from_slice(args);
    let mut lines = run_bench(&all).await;
    assert_eq!(lines.len(), 1, "exactly one JSON line: {lines:?}");
    (server, lines.remove(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_run_delivers_everything_it_expects_and_reports_each_watched_process() {
    let server = TestServer::start(BENCH_ROOMS).await;
    let addr = server.addr.to_string();
    // This process (the server runs in it) and its parent stand in for a cluster's processes:
    // both live as long as the run.
    let (me, parent) = (std::process::id(), std::os::unix::process::parent_id());
    let watched = format!("{me},{parent}");
    let lines = run_bench(&[
        "--server",
        &addr,
        "--sessions",
        "20",
        "--conns",
        "2",
        "--rooms",
        "2",
        "--senders",
        "4",
        "--rate",
        "20",
        "--size",
        "48",
        "--warmup",
        "1",
        "--duration",
        "2",
        "--deadline",
        "20",
        "--server-pid",
        &watched,
        "--json",
    ])
    .await;
    assert_eq!(lines.len(), 1, "exactly one JSON line: {lines:?}");
    let report = &lines[0];

    assert_eq!(report["sessions"], 20, "{report}");
    assert_eq!(report["joined"], 20, "{report}");
    let sent = report["sent"].as_u64().expect("sent is a count");
    // 4 senders × 20/s × 2 s measured; pacing may shift a tick in or out of the window.
    assert!((150..=170).contains(&sent), "{report}");
    // Two rooms of 10 members, 2 senders each: every CHAT reaches 10 members.
    assert_eq!(report["expected"], sent * 10, "{report}");
    assert_eq!(report["delivered"], report["expected"], "{report}");
    assert_eq!(report["delivery_ratio"], 1.0, "{report}");
    assert!(report["p99_ms"].as_f64().is_some(), "{report}");
    for empty in ["error_codes", "ended_by_server", "transport_failures"] {
        assert_eq!(report[empty], serde_json::json!({}), "{empty}: {report}");
    }
    assert_eq!(report["notes"], serde_json::json!([]), "{report}");

    let processes = report["server_processes"].as_array().expect("a list");
    let pids: Vec<_> = processes.iter().map(|p| p["pid"].clone()).collect();
    assert_eq!(pids, [me, parent], "{report}");
    let mut cpu_sum = 0.0;
    for process in processes {
        assert!(
            process["peak_rss_kb"].as_u64().is_some_and(|kb| kb > 0),
            "{report}"
        );
        cpu_sum += process["cpu_s"].as_f64().expect("cpu_s is seconds");
    }
    // The server did the run's work inside this process.
    assert!(processes[0]["cpu_s"].as_f64() > Some(0.0), "{report}");
    let total = report["server_cpu_s"].as_f64().expect("the total CPU");
    assert!((total - cpu_sum).abs() < 0.011, "{report}");
    // The measured window's CPU, divided by that window's deliveries.
    let window_cpu = report["server_cpu_window_s"]
        .as_f64()
        .expect("the window's CPU");
    let per_delivery = report["server_cpu_us_per_delivery"]
        .as_f64()
        .expect("µs per delivery");
    let delivered = report["delivered"].as_f64().expect("a count");
    assert!(
        (per_delivery - window_cpu * 1e6 / delivered).abs() < 0.001,
        "{report}"
    );
    // Neither process alone is the server.
    assert_eq!(report["server_pid"], Value::Null, "{report}");
    assert_eq!(report["server_peak_rss_kb"], Value::Null, "{report}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_soak_prints_interval_lines_and_a_complete_summary() {
    let server = TestServer::start(BENCH_ROOMS).await;
    // The server runs in this process, so this process's RSS is the server's.
    let pid = std::process::id().to_string();
    let lines = run_bench(&[
        "--server",
        &server.addr.to_string(),
        "--sessions",
        "10",
        "--conns",
        "1",
        "--rate",
        "20",
        "--soak",
        "3s",
        "--soak-interval",
        "1s",
        "--server-pid",
        &pid,
        "--deadline",
        "25",
        "--json",
    ])
    .await;
    let (summary, intervals) = lines.split_last().expect("at least the summary line");
    assert!(intervals.len() >= 2, "{lines:?}");
    for (n, line) in intervals.iter().enumerate() {
        assert_eq!(line["soak_line"], n as u64 + 1, "{line}");
        assert!(line["elapsed_s"].as_f64().is_some(), "{line}");
        assert!(
            line["server_rss_kb"].as_u64().is_some_and(|kb| kb > 0),
            "{line}"
        );
        assert!(line["delivered"].as_u64().is_some(), "{line}");
        assert_eq!(line["errors"], 0, "{line}");
        assert_eq!(line["ended_by_server"], 0, "{line}");
    }
    assert!(
        intervals.last().unwrap()["interval_p99_ms"]
            .as_f64()
            .is_some(),
        "{lines:?}"
    );

    assert_eq!(summary["joined"], 10, "{summary}");
    // 10 senders × 20/s × 3 s into one room of 10.
    let sent = summary["sent"].as_u64().expect("sent is a count");
    assert!((580..=620).contains(&sent), "{summary}");
    assert_eq!(summary["expected"], sent * 10, "{summary}");
    assert_eq!(summary["delivered"], summary["expected"], "{summary}");
    assert_eq!(summary["delivery_ratio"], 1.0, "{summary}");
    assert!(summary["p99_ms"].as_f64().is_some(), "{summary}");
    assert_eq!(summary["soak_lines"], intervals.len(), "{summary}");
    for kb in ["rss_start_kb", "rss_end_kb", "rss_max_kb"] {
        assert!(
            summary[kb].as_u64().is_some_and(|kb| kb > 0),
            "{kb}: {summary}"
        );
    }
    assert!(summary["rss_growth_pct"].as_f64().is_some(), "{summary}");
    // One watched process keeps the flat fields, and is also the one entry of the list.
    assert_eq!(summary["server_pid"].to_string(), pid, "{summary}");
    // Only above zero: the kernel updates VmHWM lazily, so it can trail the largest VmRSS the
    // soak sampled (by a few hundred kB in practice).
    assert!(
        summary["server_peak_rss_kb"]
            .as_u64()
            .is_some_and(|kb| kb > 0),
        "{summary}"
    );
    assert!(summary["server_cpu_s"].as_f64() > Some(0.0), "{summary}");
    let processes = summary["server_processes"].as_array().expect("a list");
    assert_eq!(processes.len(), 1, "{summary}");
    assert_eq!(processes[0]["pid"], summary["server_pid"], "{summary}");
    assert_eq!(processes[0]["cpu_s"], summary["server_cpu_s"], "{summary}");
    assert_eq!(
        summary["ended_by_server"],
        serde_json::json!({}),
        "{summary}"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_fairness_run_measures_both_windows() {
    let server = TestServer::start(BENCH_ROOMS).await;
    let lines = run_bench(&[
        "--server",
        &server.addr.to_string(),
        "--scenario",
        "fairness",
        "--rooms",
        "6",
        "--sessions",
        "24",
        "--conns",
        "1",
        "--warmup",
        "0.5",
        "--duration",
        "1.5",
        "--settle",
        "1",
        "--deadline",
        "25",
        "--json",
    ])
    .await;
    assert_eq!(lines.len(), 1, "exactly one JSON line: {lines:?}");
    let report = &lines[0];
    assert_eq!(report["scenario"], "fairness", "{report}");
    assert_eq!(report["joined"], 24, "{report}");
    for run in ["no_flood", "flood"] {
        let run = &report[run];
        assert!(run["p50_ms"].as_f64().is_some(), "{run}");
        assert!(run["p99_ms"].as_f64().is_some(), "{run}");
        assert_eq!(run["partial"], Value::Null, "{run}");
        // Rooms B..F: 5 paced senders at 10/s for 1.5 s, each CHAT to the 4 members of its room.
        let sent = run["sent"].as_u64().expect("sent is a count");
        assert!((70..=80).contains(&sent), "{run}");
        assert_eq!(run["expected"], sent * 4, "{run}");
    }
    for key in ["no_flood_p99_ms", "flood_p99_ms", "p99_ratio"] {
        assert!(
            report[key].as_f64().is_some_and(|v| v > 0.0),
            "{key}: {report}"
        );
    }
    // The flooder outpaces a paced sender (15 CHATs in the window) many times over.
    let flooder_sent = report["flooder_sent"].as_u64().expect("flooder_sent");
    assert!(flooder_sent > 150, "{report}");
    assert!(report["flooder_errors"].as_u64().is_some(), "{report}");
    assert_eq!(report["others_ended"], 0, "{report}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_churn_rounds_read_the_servers_rss_after_each_round() {
    // The server runs in this process, so this process's RSS is the server's.
    let pid = std::process::id().to_string();
    let (server, report) = run_metered(
        "churn",
        &[
            "--sessions",
            "20",
            "--conns",
            "2",
            "--rate",
            "20",
            "--duration",
            "0.5",
            "--rounds",
            "3",
            "--settle",
            "0",
            "--server-pid",
            &pid,
        ],
    )
    .await;
    let report = &report;
    assert_eq!(report["rounds"], 3, "{report}");
    for key in ["server_rss_rounds_closed_kb", "server_rss_rounds_kb"] {
        let rounds = report[key].as_array().expect("a list");
        assert_eq!(rounds.len(), 3, "{key}: {report}");
        assert!(
            rounds.iter().all(|kb| kb.as_u64().is_some_and(|kb| kb > 0)),
            "{key}: {report}"
        );
    }
    // Growth is reported over five rounds after at least one warm-up round.
    assert_eq!(
        report["server_rss_last5_growth_pct"],
        Value::Null,
        "{report}"
    );
    // Each round runs whole cycles: 20 sessions, 5 CHATs at 20/s take 0.25 s a cycle.
    assert!(
        report["cycles"].as_u64().is_some_and(|n| n >= 3 * 20),
        "{report}"
    );
    assert_eq!(report["error_codes"], serde_json::json!({}), "{report}");
    server.wait_sessions(0).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_stall_run_sees_every_stalled_stream_reset_and_its_observer_answered() {
    let (server, report) = run_metered(
        "stall",
        &[
            "--sessions",
            "20",
            "--duration",
            "5",
            // Evicted streams are reset 250 ms after their LEAVE, and their sessions end then.
            "--settle",
            "1",
        ],
    )
    .await;
    let report = &report;
    assert_eq!(report["reset_seen"], 20, "{report}");
    assert_eq!(report["evicted_seen"], 20, "{report}");
    assert_eq!(
        report["metrics_after"]["sessions_ended"]["slow_consumer"], 20,
        "{report}"
    );
    // The observer (on a thread of its own) PINGed throughout and its stream stayed open.
    let observer = &report["observer"];
    assert!(
        observer["pings"].as_u64().is_some_and(|n| n > 0),
        "{report}"
    );
    assert!(
        observer["answered_in_1s"].as_u64().is_some_and(|n| n > 0),
        "{report}"
    );
    assert_eq!(observer["ended"], Value::Null, "{report}");
    assert_eq!(report["fresh_client"]["served"], true, "{report}");
    server.shutdown().await;
}

#[test]
fn non_loopback_servers_are_refused() {
    for server in [
        "10.1.2.3:50051",
        "http://example.com:80",
        "127.0.0.1:1,192.168.0.1:2",
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_chat-bench"))
            .args(["--server", server, "--sessions", "1", "--json"])
            .output()
            .expect("chat-bench starts");
        assert!(!output.status.success(), "{server} was accepted");
        assert!(output.stdout.is_empty(), "no report for a refused run");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("loopback"), "{server}: {stderr}");
    }
}
