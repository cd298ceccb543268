//! The `chat-bench` binary against an in-process server: a tiny run delivers every CHAT it
//! expects, and the generator refuses to target anything but loopback.

mod common;

use std::{process::Stdio, time::Duration};

use common::TestServer;
use serde_json::Value;
use tokio::{process::Command, time::timeout};

/// Rooms of the generator lift the per-member rate limit, as in the shipped configuration.
const BENCH_ROOMS: &str = "[rooms.\"bench-*\"]\nrate_per_sec = 100000\nburst = 100000\n";
/// Bound on one chat-bench run in these tests (its own plan is ~4 s).
const RUN_LIMIT: Duration = Duration::from_secs(25);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_run_delivers_everything_it_expects() {
    let server = TestServer::start(BENCH_ROOMS).await;
    let run = Command::new(env!("CARGO_BIN_EXE_chat-bench"))
        .args(["--server", &server.addr.to_string()])
        .args(["--sessions", "20", "--conns", "2", "--rooms", "2"])
        .args(["--senders", "4", "--rate", "20", "--size", "48"])
        .args([
            "--warmup",
            "1",
            "--duration",
            "2",
            "--deadline",
            "20",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let output = timeout(RUN_LIMIT, run)
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
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one JSON line: {stdout}");
    let report: Value = serde_json::from_str(lines[0]).expect("the line is JSON");

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
