//! Back-pressure and liveness: a member that stops reading is dropped, and its stream reset on
//! the wire and released at once, while everyone else receives everything; a silent session is
//! ended with UNAVAILABLE.

mod common;

use chatrooms::proto::Kind;
use common::{TestServer, sample, scrape, small_window_client};
use tonic::Code;

#[tokio::test]
async fn slow_consumer_is_reset_and_released_while_others_get_everything() {
    let server = TestServer::start(
        "[metrics]\nlisten = \"127.0.0.1:0\"\n\
         [session]\noutbound_queue = 128\n\
         [limits]\nhistory = 8\nhistory_on_join = 0\nrate_per_sec = 100000\nburst = 100000\n",
    )
    .await;
    const EVICTED: &str = "chat_sessions_ended_total{reason=\"slow_consumer\"}";
    let evicted_before = sample(&scrape(&server).await, EVICTED).unwrap_or(0.0);
    // A small HTTP/2 window keeps what the transport buffers for the idle reader small.
    let mut slow = small_window_client(server.endpoint(), "slow").await;
    slow.join("r").await;
    let mut readers = Vec::new();
    for i in 0..3 {
        let mut c = server.client(&format!("reader{i}")).await;
        c.join("r").await;
        readers.push(c);
    }
    let mut sender = server.client("sender").await;
    sender.join("r").await;

    // Well past what the slow member's transport and queue can hold (~50 KB + 128 messages).
    const TOTAL: usize = 500;
    let body = "x".repeat(1000);
    let mut reading = Vec::new();
    for mut reader in readers {
        reading.push(tokio::spawn(async move {
            let mut chats = Vec::new();
            let mut slow_left = false;
            while chats.len() < TOTAL || !slow_left {
                let m = reader.next().await;
                match m.kind() {
                    Kind::Chat => chats.push(m.seq),
                    Kind::Leave if m.user == "slow" => slow_left = true,
                    _ => {}
                }
            }
            chats
        }));
    }
    // At most 32 CHATs in flight, like a client with an ack window: readers that keep up are
    // never more than that behind, whatever the machine's load.
    let mut acked = 0;
    for n in 0..TOTAL {
        sender.chat("r", &format!("{n}{body}")).await;
        while acked + 32 <= n {
            if sender.next().await.kind() == Kind::Chat {
                acked += 1;
            }
        }
    }
    for r in reading {
        assert_eq!(r.await.unwrap(), (1..=TOTAL as u64).collect::<Vec<_>>());
    }
    // Still not reading, the slow member's stream is already gone from the server: its place,
    // its queue and what the transport buffered for it are released without its help.
    server.wait_sessions(1).await;
    // Counted under its reason (the recorder is process-wide: other tests only add to it).
    let evicted = sample(&scrape(&server).await, EVICTED).unwrap_or(0.0);
    assert!(
        evicted >= evicted_before + 1.0,
        "{evicted_before} → {evicted}"
    );
    // When it reads at last: what reached it before the reset, then the reset.
    let (received, status) = slow.drain_to_end().await;
    let status = status.expect("ended with a status");
    assert_eq!(
        status.code(),
        Code::Cancelled,
        "reset on the wire: {status:?}"
    );
    assert!(
        received.len() < TOTAL,
        "it was cut off, not served everything"
    );
}

#[tokio::test]
async fn idle_session_is_ended_with_unavailable() {
    let server = TestServer::start("[session]\nidle_timeout_ms = 300\n").await;
    let mut idle = server.client("idle").await;
    idle.join("r").await;
    let status = idle.expect_end(Code::Unavailable).await;
    assert_eq!(status.message(), "idle timeout");
    server.wait_sessions(0).await;
}

#[tokio::test]
async fn pings_keep_a_session_alive() {
    let server = TestServer::start("[session]\nidle_timeout_ms = 400\n").await;
    let mut busy = server.client("busy").await;
    let mut ticks = tokio::time::interval(std::time::Duration::from_millis(100));
    // Ten PINGs over ~1 s: more than twice the idle timeout.
    for _ in 0..10 {
        ticks.tick().await;
        busy.send_kind(Kind::Ping, "").await;
        busy.expect(Kind::Pong).await;
    }
    // Then silence ends it.
    busy.expect_end(Code::Unavailable).await;
}
