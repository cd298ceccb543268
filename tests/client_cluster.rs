//! The client library in cluster mode: moved by the proxy from one node to another (two
//! in-process nodes on one real Redis), it resumes the room there without gap or duplicate, and
//! its CHAT whose ack was lost on the first node, resent to the second, is posted once.

mod common;

use std::time::Duration;

use chatrooms::client::Client;
use common::{
    TestServer, WAIT,
    proxy::{Fault, Proxy},
    recorder::{Recorder, Tap, fast},
    redis::RedisServer,
};
use tokio::time::timeout;

async fn node(redis: &RedisServer, name: &str) -> TestServer {
    let config = format!(
        "[cluster]\nengine = \"redis\"\nredis_urls = [{:?}]\nnode_id = \"{name}\"\n\
         [limits]\nrate_per_sec = 100000\nburst = 100000\nhistory = 1000\n",
        redis.url()
    );
    let server = TestServer::start(&config).await;
    server.wait_serving().await;
    server
}

/// Posts `content` as `client` and waits for its ack.
async fn post(client: &mut common::Client, content: &str) {
    let r#ref = client.chat("r", content).await;
    client.until(|m| m.r#ref == r#ref).await;
}

#[tokio::test]
async fn a_client_moved_to_another_node_resumes_there_and_its_resent_chat_posts_once() {
    let redis = RedisServer::start();
    let a = node(&redis, "a").await;
    let b = node(&redis, "b").await;
    let proxy = Proxy::start(a.addr).await;
    // Heartbeats far apart: the cut, not a missed PONG, moves the client.
    let options = fast(&proxy.addr.to_string(), "alice")
        .heartbeat(Duration::from_secs(30), Duration::from_secs(30));
    let (alice, events) = Client::connect(options).await.unwrap();
    let alice_events = Recorder::start(events);
    alice.join("r").await.unwrap();
    let mut bob = a.client("bob").await;
    bob.join("r").await;
    let mut observer = b.client("observer").await;
    observer.join("r").await;
    let observer = Tap::start(observer);
    for i in 0..5 {
        post(&mut bob, &format!("early {i}")).await;
    }
    alice_events.wait_messages("r", 5).await;

    // Alice stops hearing node a; the room goes on, her own CHAT included, its ack lost.
    proxy.inject(Fault::DropReplies);
    for i in 0..3 {
        post(&mut bob, &format!("away {i}")).await;
    }
    let reply = alice.send_post("r", "moved").await.unwrap();
    let accepted = observer.wait_content("moved").await;
    // Her next connection lands on node b.
    proxy.retarget(b.addr);
    proxy.inject(Fault::Cut);
    let ack = timeout(WAIT, reply)
        .await
        .unwrap()
        .expect("acked by node b");
    assert_eq!(
        (ack.seq, ack.id.as_str()),
        (accepted.seq, accepted.id.as_str())
    );
    b.wait_sessions(2).await; // the observer and alice
    for i in 0..2 {
        post(&mut bob, &format!("after {i}")).await;
    }
    alice_events.wait_content("r", "after 1").await;
    observer.wait_content("after 1").await;

    let mut expected: Vec<String> = (0..5).map(|i| format!("early {i}")).collect();
    expected.extend((0..3).map(|i| format!("away {i}")));
    expected.push("moved".into());
    expected.extend((0..2).map(|i| format!("after {i}")));
    let expected: Vec<(u64, String)> = (1..).zip(expected).collect();
    let room: Vec<(u64, String)> = observer
        .chats()
        .into_iter()
        .map(|m| (m.seq, m.content))
        .collect();
    assert_eq!(room, expected, "the resent CHAT is posted once");
    let seen: Vec<(u64, String)> = alice_events
        .messages("r")
        .into_iter()
        .map(|m| (m.seq, m.content))
        .collect();
    assert_eq!(
        seen, expected,
        "alice saw every message once, across the move"
    );
    assert_eq!(alice_events.resumed(), [("r".to_string(), 4, false)]);
}
