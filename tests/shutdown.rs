//! Shutdown order: every CHAT already accepted reaches the connected sessions, then each stream
//! ends with UNAVAILABLE "server shutting down", and the server stops even though clients keep
//! their request streams open.

mod common;

use chatrooms::proto::Kind;
use common::TestServer;
use tonic::Code;

#[tokio::test]
async fn shutdown_delivers_accepted_messages_then_ends_streams_with_unavailable() {
    let server = TestServer::start("").await;
    let (mut ada, mut bob) = server.pair_in("r", "ada", "bob").await;
    for n in 0..20 {
        ada.chat("r", &n.to_string()).await;
    }
    for _ in 0..20 {
        ada.expect(Kind::Chat).await; // all 20 accepted; bob has not read any yet
    }
    let addr = server.addr;
    // Neither client half-closes: the server must still finish on its own.
    server.shutdown().await;

    let (received, status) = bob.drain_to_end().await;
    let contents: Vec<String> = received
        .iter()
        .filter(|m| m.kind() == Kind::Chat)
        .map(|m| m.content.clone())
        .collect();
    assert_eq!(contents, (0..20).map(|n| n.to_string()).collect::<Vec<_>>());
    let status = status.expect("ended with a status");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "server shutting down");
    ada.expect_end(Code::Unavailable).await;

    // Nothing listens any more.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
