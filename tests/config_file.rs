//! Configuration end to end: per-room overrides and globs from TOML change what a running server
//! allows, and the real binary refuses bad files with one line and exit code 2.

mod common;

use std::{io::Write, process::Command};

use chatrooms::proto::Kind;
use common::{Client, TestServer};
use tonic::Code;

const OVERRIDES: &str = r#"
[limits]
max_message_bytes = 10

[rooms."tiny"]
max_members = 1

[rooms."big-*"]
max_message_bytes = 20

[rooms."big-exact"]
max_message_bytes = 5
"#;

#[tokio::test]
async fn per_room_overrides_and_globs_from_toml_apply() {
    let server = TestServer::start(OVERRIDES).await;
    let mut a = server.client("a").await;
    let mut b = server.client("b").await;

    // Exact override: max_members = 1.
    a.join("tiny").await;
    b.send_kind(Kind::Join, "tiny").await;
    b.expect_error("room_full").await;

    // Glob override: 20 bytes in any big-* room, 10 elsewhere, 5 in the exact big-exact.
    let fifteen = "x".repeat(15);
    for (room, accepted) in [("big-1", true), ("other", false), ("big-exact", false)] {
        a.join(room).await;
        a.chat(room, &fifteen).await;
        let reply = a.next().await;
        if accepted {
            assert_eq!(reply.kind(), Kind::Chat, "{room}: {reply:?}");
        } else {
            assert_eq!(reply.code, "message_too_large", "{room}: {reply:?}");
        }
    }
    a.chat("big-exact", "12345").await;
    assert_eq!(a.expect(Kind::Chat).await.room, "big-exact");
}

#[tokio::test]
async fn max_sessions_refuses_the_stream_over_the_limit() {
    let server = TestServer::start("[server]\nmax_sessions = 2\n").await;
    let mut a = server.client("a").await;
    let _b = server.client("b").await;
    // The stream over the limit is refused at once; the others still work.
    let refused = Client::try_open(server.channel().await, "c")
        .await
        .err()
        .expect("refused");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    a.send_kind(Kind::Ping, "").await;
    a.expect(Kind::Pong).await;
    drop(a);
    server.wait_sessions(1).await;
    let mut d = server.client("d").await;
    d.send_kind(Kind::Ping, "").await;
    d.expect(Kind::Pong).await;
}

fn run_binary_with(config: &str) -> (Option<i32>, String) {
    let mut file = tempfile();
    file.1.write_all(config.as_bytes()).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_chatrooms"))
        .arg("--config")
        .arg(&file.0)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&file.0);
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A fresh file under the target directory (no extra crate for one temp file).
fn tempfile() -> (std::path::PathBuf, std::fs::File) {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join(format!(
        "config-{}-{}.toml",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let file = std::fs::File::create(&path).unwrap();
    (path, file)
}

#[test]
fn config_errors_exit_with_code_2_and_one_line_naming_file_and_key() {
    for (config, key) in [
        ("[server]\nlisen = \"127.0.0.1:1\"\n", "lisen"),
        ("[limits]\nmax_members = \"lots\"\n", "limits.max_members"),
        ("[limits]\nmax_members = 0\n", "limits.max_members"),
        (
            "[limits]\nhistory = 5\nhistory_on_join = 10\n",
            "limits.history_on_join",
        ),
        ("[rooms.\"x\"]\nburst = -1\n", "rooms.\"x\".burst"),
        ("[server\n", "line 1"),
    ] {
        let (code, stderr) = run_binary_with(config);
        assert_eq!(code, Some(2), "{config:?}: {stderr}");
        let line = stderr.trim_end();
        assert_eq!(line.lines().count(), 1, "one line: {stderr}");
        assert!(line.contains("config-"), "names the file: {line}");
        assert!(line.contains(key), "{config:?} should name {key}: {line}");
        assert!(!line.contains("panicked"), "{line}");
    }
}

#[test]
fn missing_config_file_exits_with_code_2() {
    let output = Command::new(env!("CARGO_BIN_EXE_chatrooms"))
        .env("CHATROOMS_CONFIG", "/nonexistent/chatrooms.toml")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/chatrooms.toml"), "{stderr}");
}
