//! The real binary under signals: SIGHUP reloads limits into rooms that are already open without
//! dropping anyone, ignores a broken file and logs the changes it cannot apply at once; SIGTERM
//! refuses new streams and exits 0 within the grace period even when a client has stopped
//! reading.

mod common;

use std::time::Duration;

use chatrooms::proto::Kind;
use common::{Client, WAIT, process::Process, small_window_client};
use tokio::time::{Instant, timeout};
use tonic::Code;

fn room_config(max_message_bytes: usize) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"\"\n\
         [rooms.\"r\"]\nmax_message_bytes = {max_message_bytes}\n"
    )
}

#[tokio::test]
async fn sighup_reload_changes_an_open_rooms_limits_and_ignores_a_broken_file() {
    let mut server = Process::start("reload", &room_config(10)).await;
    let mut ada = server.client("ada").await;
    ada.join("r").await;
    ada.chat("r", &"x".repeat(15)).await;
    ada.expect_error("message_too_large").await;

    std::fs::write(&server.config, room_config(20)).unwrap();
    server.signal(libc::SIGHUP);
    server.wait_log("config reloaded").await;
    ada.chat("r", &"x".repeat(15)).await;
    assert_eq!(
        ada.expect(Kind::Chat).await.content.len(),
        15,
        "same stream, new limit"
    );

    std::fs::write(&server.config, "[limits\nbroken = ").unwrap();
    server.signal(libc::SIGHUP);
    server.wait_log("config reload failed").await;
    ada.chat("r", &"y".repeat(20)).await;
    assert_eq!(
        ada.expect(Kind::Chat).await.content.len(),
        20,
        "old config stays"
    );
    ada.chat("r", &"z".repeat(21)).await;
    ada.expect_error("message_too_large").await;

    server.signal(libc::SIGTERM);
    let status = timeout(WAIT, server.child.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(0));
}

/// The log says what a reload could not apply everywhere: keys open sessions keep (their queue)
/// and keys only a restart changes (the thread pools), each by name.
#[tokio::test]
async fn sighup_logs_changes_that_wait_for_new_sessions_or_a_restart() {
    let mut server = Process::start("reload-log", &room_config(10)).await;
    let changed = "[server]\nlisten = \"127.0.0.1:0\"\nio_threads = 3\n[metrics]\nlisten = \"\"\n\
                   [session]\noutbound_queue = 2048\n";
    std::fs::write(&server.config, changed).unwrap();
    server.signal(libc::SIGHUP);
    server.wait_log("config reloaded").await;
    let line = server.wait_log("session.outbound_queue").await;
    assert!(line.contains("sessions opened from now on"), "{line}");
    let line = server.wait_log("server.io_threads").await;
    assert!(line.contains("needs a restart"), "{line}");

    server.signal(libc::SIGTERM);
    let status = timeout(WAIT, server.child.wait()).await.unwrap().unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn sigterm_refuses_new_streams_and_exits_within_the_grace_period_despite_a_stalled_reader() {
    let grace = Duration::from_millis(1500);
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_grace_ms = {}\n[metrics]\nlisten = \"\"\n\
         [session]\noutbound_queue_bytes = 1048576\n\
         [limits]\nrate_per_sec = 100000\nburst = 100000\n",
        grace.as_millis()
    );
    let mut server = Process::start("term", &config).await;
    // A reader that stops reading, with a window far smaller than what is sent to it.
    let mut stalled = small_window_client(server.endpoint(), "stalled").await;
    stalled.join("r").await;
    let mut sender = server.client("sender").await;
    sender.join("r").await;
    let body = "x".repeat(1000);
    for _ in 0..300 {
        sender.chat("r", &body).await;
    }
    for _ in 0..300 {
        sender.expect(Kind::Chat).await; // accepted: now queued for the stalled reader
    }

    let asked = Instant::now();
    server.signal(libc::SIGTERM);
    server.wait_log("refusing new streams").await;
    // Whether the listener is still open or already closed, a new stream is UNAVAILABLE.
    let late = Client::try_open(server.endpoint().connect_lazy(), "late").await;
    let refused = match late {
        Err(status) => status,
        Ok(mut client) => {
            client.send_kind(Kind::Ping, "").await;
            client.expect_end(Code::Unavailable).await
        }
    };
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    // Refused by admission (the transport still accepts while sessions drain), not by a closed
    // listener, which would be UNAVAILABLE too.
    assert_eq!(refused.message(), "server shutting down", "{refused:?}");

    let status = timeout(grace + Duration::from_secs(5), server.child.wait())
        .await
        .expect("exits on its own")
        .unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        asked.elapsed() < grace + Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    drop(stalled);
}
