//! The `chat-client` binary driven by a script on stdin against an in-process server.

mod common;

use std::process::Stdio;

use chatrooms::proto::Kind;
use common::{TestServer, WAIT};
use tokio::{io::AsyncWriteExt, process::Command, time::timeout};

#[tokio::test]
async fn scripted_chat_client_joins_posts_and_prints_the_room() {
    let server = TestServer::start("").await;
    let mut watcher = server.client("watcher").await;
    watcher.join("general").await;

    let mut child = Command::new(env!("CARGO_BIN_EXE_chat-client"))
        .args([
            "--server",
            &format!("http://{}", server.addr),
            "--user",
            "alice",
        ])
        .args(["--room", "general"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b"hello from a script\n/join second\n/room second\nin the second room\n/leave general\n")
        .await
        .unwrap();
    drop(stdin); // end of input: the client half-closes

    let output = timeout(WAIT, child.wait_with_output())
        .await
        .expect("client exits after its input ends")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("[general] alice: hello from a script"),
        "{stdout}"
    );
    assert!(
        stdout.contains("[second] alice: in the second room"),
        "{stdout}"
    );
    assert!(stdout.contains("* you left general"), "{stdout}");

    assert_eq!(watcher.expect(Kind::Join).await.user, "alice");
    assert_eq!(
        watcher.expect(Kind::Chat).await.content,
        "hello from a script"
    );
    assert_eq!(watcher.expect(Kind::Leave).await.user, "alice");
}

/// A line the client library refuses (over its content limit) is reported on stderr in one
/// line, and the lines after it are still posted.
#[tokio::test]
async fn a_line_too_long_to_send_is_reported_and_the_next_lines_still_go() {
    let server = TestServer::start("").await;
    let mut watcher = server.client("watcher").await;
    watcher.join("general").await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_chat-client"))
        .args(["--server", &server.addr.to_string(), "--user", "alice"])
        .args(["--room", "general"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let long = "x".repeat(2 << 20);
    let script = format!("before\n{long}\nafter\n");
    stdin.write_all(script.as_bytes()).await.unwrap();
    drop(stdin);
    let output = timeout(WAIT, child.wait_with_output())
        .await
        .expect("client exits after its input ends")
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert_eq!(
        stderr.lines().collect::<Vec<_>>(),
        ["! not sent: content is 2097152 bytes, over the client's limit of 1046528"],
    );
    assert!(stdout.contains("[general] alice: after"), "{stdout}");
    assert_eq!(watcher.expect(Kind::Join).await.user, "alice");
    assert_eq!(watcher.expect(Kind::Chat).await.content, "before");
    assert_eq!(watcher.expect(Kind::Chat).await.content, "after");
}

/// A running `chat-client` whose stdout lines are collected as they come.
struct Running {
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    lines: tokio::sync::watch::Receiver<Vec<String>>,
}

impl Running {
    fn start(server: &str, user: &str, room: &str) -> Running {
        use tokio::io::{AsyncBufReadExt, BufReader};
        let mut child = Command::new(env!("CARGO_BIN_EXE_chat-client"))
            .args(["--server", server, "--user", user, "--room", room])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let (tx, lines) = tokio::sync::watch::channel(Vec::new());
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = stdout.next_line().await {
                tx.send_modify(|lines| lines.push(line));
            }
        });
        Running {
            child,
            stdin,
            lines,
        }
    }

    /// Waits for a line equal to `line`, or starting with it when it ends in `…`.
    async fn wait_line(&self, line: &str) {
        let mut lines = self.lines.clone();
        let matches = |l: &String| match line.strip_suffix('…') {
            Some(prefix) => l.starts_with(prefix),
            None => l == line,
        };
        let seen = timeout(WAIT, lines.wait_for(|lines| lines.iter().any(matches))).await;
        assert!(
            seen.is_ok(),
            "no line {line:?} in {:#?}",
            self.lines.borrow()
        );
    }

    fn lines(&self) -> Vec<String> {
        self.lines.borrow().clone()
    }
}

#[tokio::test]
async fn chat_client_given_host_port_says_when_it_reconnects_and_what_it_missed() {
    use common::proxy::{Fault, Proxy};
    let first = TestServer::start("").await;
    let proxy = Proxy::start(first.addr).await;
    let mut cli = Running::start(&proxy.addr.to_string(), "alice", "r");
    cli.wait_line("* you joined r (1 here: alice)").await;
    let mut bob = first.client("bob").await;
    bob.join("r").await;
    bob.chat("r", "seen live").await;
    cli.wait_line("[r] bob: seen live").await;

    // Alice hears nothing more (her requests still go through), bob posts twice, then the cut.
    proxy.inject(Fault::DropReplies);
    for content in ["missed 1", "missed 2"] {
        let r#ref = bob.chat("r", content).await;
        bob.until(|m| m.r#ref == r#ref).await;
    }
    proxy.inject(Fault::Cut);
    cli.wait_line("* reconnecting… (attempt 1 in …").await;
    cli.wait_line("[r] bob: missed 1 (earlier)").await;
    cli.wait_line("[r] bob: missed 2 (earlier)").await;
    cli.wait_line("* back, 2 missed messages replayed (r)")
        .await;

    // Moved to another, empty server: the room started over, its old history is gone.
    let second = TestServer::start("").await;
    proxy.retarget(second.addr);
    proxy.inject(Fault::Cut);
    cli.wait_line("* back, 0 missed messages replayed (r)")
        .await;
    cli.wait_line("* some messages are no longer available (r)")
        .await;
    let mut carol = second.client("carol").await;
    carol.join("r").await;
    carol.chat("r", "new server").await;
    cli.wait_line("[r] carol: new server").await;

    drop(cli.stdin.take()); // end of input
    let status = timeout(WAIT, cli.child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{:#?}", cli.lines());
    let lines = cli.lines();
    let once = |line: &str| lines.iter().filter(|l| *l == line).count() == 1;
    assert!(
        once("[r] bob: seen live") && once("[r] bob: missed 1 (earlier)"),
        "{lines:#?}"
    );
}

/// Runs `chat-client` with `args` and RUST_BACKTRACE=1 until it exits; (code, stderr).
async fn run_failing(args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_chat-client"))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let output = timeout(WAIT, output).await.expect("exits").unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn chat_client_errors_are_one_line_without_a_backtrace() {
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refused = closed.local_addr().unwrap().to_string();
    drop(closed);
    let (code, stderr) = run_failing(&["--server", &refused, "--user", "alice"]).await;
    assert_eq!(code, Some(1));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!("chat-client: cannot connect to {refused}: ")),
        "{stderr}"
    );
    assert!(stderr.to_lowercase().contains("refused"), "{stderr}");

    let (code, stderr) = run_failing(&["--server", "ftp://h:1", "--user", "alice"]).await;
    assert_eq!(code, Some(1));
    assert_eq!(
        stderr,
        "chat-client: invalid server address \"ftp://h:1\": unsupported scheme \"ftp\": \
         use host:port, http:// or https://\n"
    );

    // Kicked by an operator: PERMISSION_DENIED ends it, in one line, with no retry.
    let server =
        TestServer::start(&format!("[admin]\ntoken = \"{}\"\n", common::admin::TOKEN)).await;
    let mut watcher = server.client("watcher").await;
    watcher.join("r").await;
    let cli = Running::start(&server.addr.to_string(), "mallory", "r");
    cli.wait_line("* you joined r (2 here: mallory, watcher)")
        .await;
    use chatrooms::proto::admin::{KickMode, KickRequest, kick_request::Target};
    common::admin::admin(&server, Some(common::admin::TOKEN))
        .await
        .kick(KickRequest {
            target: Some(Target::User("mallory".into())),
            mode: KickMode::Disconnect.into(),
            reason: "spam".into(),
            ..KickRequest::default()
        })
        .await
        .unwrap();
    let output = timeout(WAIT, cli.child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "chat-client: the server ended the session: PERMISSION_DENIED: kicked: spam\n"
    );
    assert_eq!(watcher.expect(Kind::Join).await.user, "mallory");
    assert_eq!(watcher.expect(Kind::Leave).await.user, "mallory");
}
