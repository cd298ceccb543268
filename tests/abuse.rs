//! Abuse limits (part of the security work): sessions per user, streams per client IP, new
//! streams per second per IP, and the size of JOINED's member list. Each refuses exactly the
//! stream over the limit with RESOURCE_EXHAUSTED, and places come back when streams end.

mod common;

use chatrooms::proto::Kind;
use common::{Client, TestServer, sample, scrape};
use std::time::{Duration, Instant};

use tonic::Code;

#[tokio::test]
async fn sessions_per_user_refuses_exactly_the_one_over_the_limit() {
    let server = TestServer::start("[server]\nmax_sessions_per_user = 2\n").await;
    let mut first = server.client("eve").await;
    first.join("r").await;
    let mut second = server.client("eve").await;
    second.join("r").await;
    let mut third = server.client("eve").await;
    third.send_kind(Kind::Ping, "").await;
    let status = third.expect_end(Code::ResourceExhausted).await;
    assert!(
        status.message().contains("max_sessions_per_user"),
        "{status:?}"
    );
    // Other users are not affected, and a place comes back when a session ends.
    server.client("adam").await.join("r").await;
    drop(first);
    server.wait_session_actors(1).await; // only `second` is left
    let mut again = server.client("eve").await;
    again.join("r").await;
}

#[tokio::test]
async fn streams_per_ip_refuses_exactly_the_one_over_the_limit() {
    let server = TestServer::start("[server]\nmax_streams_per_ip = 3\n").await;
    let channel = server.channel().await;
    let mut held = Vec::new();
    for i in 0..3 {
        let mut c = Client::open(channel.clone(), &format!("u{i}")).await;
        c.join("r").await;
        held.push(c);
    }
    let refused = Client::try_open(channel.clone(), "u3")
        .await
        .err()
        .expect("refused");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused.message().contains("max_streams_per_ip"),
        "{refused:?}"
    );
    held.pop();
    server.wait_sessions(2).await;
    let mut back = Client::open(channel, "u4").await;
    back.join("r").await;
}

#[tokio::test]
async fn new_streams_per_ip_per_second_is_a_token_bucket() {
    let server = TestServer::start(
        "[server]\nnew_streams_per_ip_per_sec = 0.001\nnew_streams_per_ip_burst = 4\n",
    )
    .await;
    let channel = server.channel().await;
    for i in 0..4 {
        let c = Client::open(channel.clone(), &format!("u{i}")).await;
        drop(c); // closing does not give the token back: it is a rate, not a count
    }
    let refused = Client::try_open(channel, "u4")
        .await
        .err()
        .expect("refused");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(refused.message().contains("new streams"), "{refused:?}");
}

#[tokio::test]
async fn joined_lists_at_most_max_members_listed_names_and_always_the_joiner() {
    let server = TestServer::start("[limits]\nmax_members_listed = 3\n").await;
    let mut held = Vec::new();
    for name in ["a", "b", "c", "d"] {
        let mut c = server.client(name).await;
        c.join("big").await;
        held.push(c);
    }
    let mut zed = server.client("zed").await;
    let joined = zed.join("big").await;
    assert_eq!(joined.members, vec!["a", "b", "zed"]);
}

#[tokio::test]
async fn a_ping_flood_is_paced_by_the_session_request_budget_and_nothing_is_lost() {
    let server = TestServer::start(
        "[metrics]\nlisten = \"127.0.0.1:0\"\n[session]\nrequests_per_sec = 20\nrequests_burst = 5\n",
    )
    .await;
    let mut flooder = server.client("flood").await;
    let mut observer = server.client("watch").await;
    let started = Instant::now();
    let mut refs = Vec::new();
    for _ in 0..45 {
        refs.push(flooder.send_kind(Kind::Ping, "").await);
    }
    // Another session is not held back by this one's budget: its PONG comes while the flood
    // is still being paced.
    let watch_ref = observer.send_kind(Kind::Ping, "").await;
    assert_eq!(observer.expect(Kind::Pong).await.r#ref, watch_ref);
    let observed = started.elapsed();
    for r#ref in &refs {
        let pong = flooder.expect(Kind::Pong).await;
        assert_eq!(&pong.r#ref, r#ref, "every PING answered, in order");
    }
    // 40 PINGs beyond the burst of 5 at 20/s cannot all be answered in under 2 s (a lower
    // bound, so a slow machine cannot fail it), and the observer was answered before that.
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(1900), "{took:?}");
    assert!(observed < took, "{observed:?} {took:?}");
    let throttled = sample(&scrape(&server).await, "chat_requests_throttled_total");
    assert!(throttled.is_some_and(|n| n >= 20.0), "{throttled:?}");
}

#[tokio::test]
async fn the_shipped_configuration_caps_sessions_per_user() {
    let server = TestServer::start("").await;
    let max = chatrooms::config::Config::default()
        .server
        .max_sessions_per_user;
    assert!(max > 0 && max <= 64, "a cap a person never reaches: {max}");
    let channel = server.channel().await;
    let mut held = Vec::new();
    for _ in 0..max {
        let mut c = Client::open(channel.clone(), "eve").await;
        c.send_kind(Kind::Ping, "").await;
        c.expect(Kind::Pong).await;
        held.push(c);
    }
    let mut over = Client::open(channel.clone(), "eve").await;
    over.send_kind(Kind::Ping, "").await;
    over.expect_end(Code::ResourceExhausted).await;
    let mut other = Client::open(channel, "adam").await;
    other.join("r").await;
}
