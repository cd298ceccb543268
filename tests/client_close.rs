//! Ending a library client: `close()` still answers what was queued, half-closes and ends the
//! events with `Closed(None)`, and the server's session goes; a client whose every handle,
//! event stream and reply is dropped while its server is away stops instead of reconnecting
//! for requests nobody waits for.

mod common;

use std::time::Duration;

use chatrooms::client::Client;
use common::{
    TestServer,
    proxy::{Fault, Proxy},
    recorder::{Recorder, fast},
};

#[tokio::test]
async fn close_answers_what_was_queued_and_ends_the_session() {
    let server = TestServer::start("").await;
    let (alice, events) = Client::connect(fast(&server.addr.to_string(), "alice"))
        .await
        .unwrap();
    let alice_events = Recorder::start(events);
    alice.join("r").await.unwrap();
    let reply = alice.send_post("r", "last words").await.unwrap();
    alice.close().await;
    assert_eq!(reply.await.unwrap().seq, 1);
    assert_eq!(alice_events.closed().await, None);
    server.wait_sessions(0).await;
    assert!(alice.post("r", "too late").await.is_err());
}

#[tokio::test]
async fn a_client_dropped_while_its_server_is_away_stops_reconnecting() {
    let server = TestServer::start("").await;
    let proxy = Proxy::start(server.addr).await;
    let (alice, events) = Client::connect(fast(&proxy.addr.to_string(), "alice"))
        .await
        .unwrap();
    alice.join("r").await.unwrap();
    // The server goes away: nothing listens where the proxy sends new connections.
    let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    proxy.retarget(gone.local_addr().unwrap());
    drop(gone);
    proxy.inject(Fault::Cut);
    let reconnecting = proxy.accepted();
    proxy.wait_accepted_over(reconnecting).await;
    // A CHAT is pending when everything is dropped: its reply, the handle, the events.
    drop(alice.send_post("r", "into the void").await.unwrap());
    drop(alice);
    drop(events);
    // Nobody can learn the outcome of anything any more: the client stops trying. (With the
    // test's backoff, at most 100 ms, a client still trying would connect several times.)
    // One attempt may be under way as the last handle goes.
    let settled = proxy.accepted() + 1;
    let quiet = tokio::time::timeout(Duration::from_millis(600), proxy.accepted_over(settled));
    assert!(
        quiet.await.is_err(),
        "still reconnecting: {} connections",
        proxy.accepted()
    );
}
