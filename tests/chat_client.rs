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
