//! Shutdown order: every CHAT already accepted reaches the connected sessions, then each stream
//! ends with UNAVAILABLE "server shutting down", and the server stops even though clients keep
//! their request streams open.

mod common;

use chatrooms::proto::Kind;
use common::{TestServer, small_window_client};
use tonic::Code;

const TOTAL: u64 = 300;

#[tokio::test]
async fn shutdown_delivers_accepted_messages_then_ends_streams_with_unavailable() {
    // bob reads nothing until the end and has a small HTTP/2 window: most of the messages are
    // still in the server's queue for him when shutdown begins, so only a drain delivers them
    // (a queue of 1 MiB holds all ~300 KB of them).
    let server = TestServer::start(
        "[session]\noutbound_queue_bytes = 1048576\n\
         [limits]\nrate_per_sec = 100000\nburst = 100000\n",
    )
    .await;
    let mut ada = server.client("ada").await;
    ada.join("r").await;
    let mut bob = small_window_client(server.endpoint(), "bob").await;
    bob.join("r").await;
    ada.expect(Kind::Join).await;
    let body = "x".repeat(1000);
    for n in 0..TOTAL {
        ada.chat("r", &format!("{n} {body}")).await;
    }
    for _ in 0..TOTAL {
        ada.expect(Kind::Chat).await; // all accepted
    }
    let addr = server.addr;
    // Neither client half-closes: the server must still finish on its own. It waits for bob's
    // queue to drain, so bob reads concurrently with the shutdown.
    let stopping = tokio::spawn(server.shutdown());

    let (received, status) = bob.drain_to_end().await;
    let seqs: Vec<u64> = received
        .iter()
        .filter(|m| m.kind() == Kind::Chat)
        .map(|m| m.seq)
        .collect();
    assert_eq!(seqs, (1..=TOTAL).collect::<Vec<_>>());
    let status = status.expect("ended with a status");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "server shutting down");
    ada.expect_end(Code::Unavailable).await;
    stopping.await.unwrap();

    // Nothing listens any more.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
