//! The client library (`chatrooms::client`) against the in-process server, through a
//! fault-injecting proxy: over many cuts, stalls and mid-frame cuts with another user posting
//! the whole time, every message is delivered once and every typed CHAT is posted once; a CHAT
//! whose ack was lost is resent and the room holds it once; a server restarted on the same
//! port is followed, the lost history reported and the new seqs delivered; a room left before
//! its first CHAT is resumed from its start, whole; heartbeats keep a quiet session past the
//! idle timeout.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use chatrooms::client::{Client, Event};
use common::{
    TestServer, WAIT,
    proxy::{Fault, Proxy},
    recorder::{Recorder, Tap, fast},
};
use tokio::time::{interval, timeout};

/// Room for everything posted in a test to stay retained (so resumes are whole), and no rate
/// limit in the way.
const CONFIG: &str = "[session]\noutbound_queue = 4096\noutbound_queue_bytes = 1048576\n\
    [limits]\nrate_per_sec = 100000\nburst = 100000\nhistory = 2000\nhistory_bytes = 524288\n";

/// Faults injected in the long run, each one noticed and repaired before the next.
const ROUNDS: usize = 20;

/// Posts to `room` as `client` every few milliseconds, each after the previous one's ack,
/// until `stop`; returns the contents posted.
async fn post_until(mut client: common::Client, room: &str, stop: Arc<AtomicBool>) -> Vec<String> {
    client.join(room).await;
    let mut posted = Vec::new();
    let mut pace = interval(Duration::from_millis(4));
    while !stop.load(Ordering::Relaxed) {
        pace.tick().await;
        let content = format!("{} {}", client.user, posted.len());
        let r#ref = client.chat(room, &content).await;
        client.until(|m| m.r#ref == r#ref).await;
        posted.push(content);
    }
    posted
}

#[tokio::test]
async fn over_many_faults_every_message_arrives_once_and_every_typed_chat_lands_once() {
    let server = TestServer::start(CONFIG).await;
    let proxy = Proxy::start(server.addr).await;
    let (alice, events) = Client::connect(fast(&proxy.addr.to_string(), "alice"))
        .await
        .unwrap();
    let alice_events = Recorder::start(events);
    alice.join("r").await.unwrap();
    let mut observer = server.client("observer").await;
    observer.join("r").await;
    let observer = Tap::start(observer);

    let stop = Arc::new(AtomicBool::new(false));
    let bob = tokio::spawn(post_until(server.client("bob").await, "r", stop.clone()));
    // Alice types the whole time too, without waiting for acks; they are collected at the end.
    let typist = tokio::spawn({
        let (alice, stop) = (alice.clone(), stop.clone());
        async move {
            let mut replies = Vec::new();
            let mut pace = interval(Duration::from_millis(15));
            while !stop.load(Ordering::Relaxed) {
                pace.tick().await;
                let content = format!("alice {}", replies.len());
                let reply = alice.send_post("r", content.clone()).await.unwrap();
                replies.push((content, reply));
            }
            let mut acks = Vec::new();
            for (content, reply) in replies {
                let ack = timeout(WAIT, reply).await.expect("acked in time");
                acks.push((content, ack.expect("every typed CHAT is acked")));
            }
            acks
        }
    });

    let faults = [
        Fault::Cut,
        Fault::Stall,
        Fault::CutMidFrame,
        Fault::DropReplies,
    ];
    let resumes = |n: usize| {
        move |events: &[Event]| {
            let resumed = events.iter().filter(|e| matches!(e, Event::Resumed { .. }));
            (resumed.count() >= n).then_some(())
        }
    };
    for round in 0..ROUNDS {
        // The previous fault was repaired: alice resumed, and messages flow to her again.
        alice_events.wait_for("the resume", resumes(round)).await;
        let seen = alice_events.messages("r").len();
        alice_events.wait_messages("r", seen + 3).await;
        let fault = faults[round % faults.len()];
        proxy.inject(fault);
        if fault == Fault::DropReplies {
            // The room goes on (alice's own CHATs too, their acks lost), then the cut.
            let before = observer.len();
            observer.wait_len(before + 3).await;
            proxy.inject(Fault::Cut);
        }
    }
    alice_events
        .wait_for("the last resume", resumes(ROUNDS))
        .await;
    stop.store(true, Ordering::Relaxed);
    let bob_posted = timeout(WAIT, bob).await.unwrap().unwrap();
    let acks = timeout(WAIT * 2, typist).await.unwrap().unwrap();

    let total = bob_posted.len() + acks.len();
    observer.wait_len(total).await;
    alice_events.wait_messages("r", total).await;
    let room: Vec<(u64, String)> = observer
        .chats()
        .into_iter()
        .map(|m| (m.seq, m.content))
        .collect();
    assert_eq!(room.len(), total, "each typed CHAT is posted once");
    assert!(
        room.iter().zip(1..).all(|((seq, _), n)| *seq == n),
        "gapless room: {room:?}"
    );
    // Alice saw exactly the room: every message once, in order, through every fault.
    let seen: Vec<(u64, String)> = alice_events
        .messages("r")
        .into_iter()
        .map(|m| (m.seq, m.content))
        .collect();
    assert_eq!(seen, room);
    for (content, ack) in &acks {
        let posted = room.iter().find(|(_, c)| c == content);
        assert_eq!(posted.map(|(seq, _)| *seq), Some(ack.seq), "{content}");
    }
    for content in &bob_posted {
        assert_eq!(room.iter().filter(|(_, c)| c == content).count(), 1);
    }
    let resumed = alice_events.resumed();
    assert!(
        resumed.len() >= ROUNDS,
        "one resume per fault at least: {resumed:?}"
    );
    assert!(
        resumed
            .iter()
            .all(|(room, _, truncated)| room == "r" && !truncated),
        "{resumed:?}"
    );
    let reasons: Vec<String> = alice_events
        .events()
        .into_iter()
        .filter_map(|event| match event {
            Event::Reconnecting { reason, .. } => Some(reason),
            _ => None,
        })
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("no reply from the server")),
        "a stalled connection is noticed by its heartbeat: {reasons:?}"
    );
}

#[tokio::test]
async fn a_chat_whose_ack_was_lost_is_resent_and_the_room_holds_it_once() {
    let server = TestServer::start(CONFIG).await;
    let proxy = Proxy::start(server.addr).await;
    // Heartbeats far apart: the cut below, not a missed PONG, is what breaks the connection.
    let options = fast(&proxy.addr.to_string(), "alice")
        .heartbeat(Duration::from_secs(30), Duration::from_secs(30));
    let (alice, events) = Client::connect(options).await.unwrap();
    let alice_events = Recorder::start(events);
    alice.join("r").await.unwrap();
    let observer = server.client("observer").await;
    let mut observer = observer;
    observer.join("r").await;
    let observer = Tap::start(observer);
    alice.post("r", "first").await.unwrap();

    proxy.inject(Fault::DropReplies);
    let reply = alice.send_post("r", "only once").await.unwrap();
    // The server accepted it; its ack is lost on the way back.
    let accepted = observer.wait_content("only once").await;
    proxy.inject(Fault::Cut);

    let ack = timeout(WAIT, reply)
        .await
        .unwrap()
        .expect("acked after the resend");
    assert_eq!(
        (ack.seq, ack.id.as_str()),
        (accepted.seq, accepted.id.as_str())
    );
    alice.post("r", "next").await.unwrap();
    observer.wait_content("next").await;
    let contents: Vec<String> = observer.chats().into_iter().map(|m| m.content).collect();
    assert_eq!(contents, ["first", "only once", "next"]);
    // Alice got it once, through the replay of her resume.
    alice_events.wait_content("r", "next").await;
    let seen: Vec<(String, bool)> = alice_events
        .messages("r")
        .into_iter()
        .map(|m| (m.content, m.replay))
        .collect();
    let expected = [("first", false), ("only once", true), ("next", false)];
    assert_eq!(seen, expected.map(|(c, r)| (c.to_string(), r)));
    assert_eq!(alice_events.resumed(), [("r".to_string(), 1, false)]);
    // A newcomer's replay holds it once too.
    let mut newcomer = server.client("newcomer").await;
    newcomer.join("r").await;
    let replayed: Vec<String> = (0..3).map(|_| String::new()).collect::<Vec<_>>();
    let mut got = Vec::new();
    for _ in &replayed {
        got.push(newcomer.expect(chatrooms::proto::Kind::Chat).await.content);
    }
    assert_eq!(got, ["first", "only once", "next"]);
    newcomer.expect_silence().await;
}

#[tokio::test]
async fn a_server_restarted_on_the_same_port_is_followed_and_the_lost_history_reported() {
    let first = TestServer::start(CONFIG).await;
    let addr = first.addr;
    let (alice, events) = Client::connect(fast(&addr.to_string(), "alice"))
        .await
        .unwrap();
    let alice_events = Recorder::start(events);
    alice.join("r").await.unwrap();
    let mut bob = first.client("bob").await;
    bob.join("r").await;
    for i in 0..3 {
        bob.chat("r", &format!("before {i}")).await;
    }
    alice_events.wait_messages("r", 3).await;
    drop(bob);
    first.shutdown().await;
    alice_events
        .wait_for("reconnecting", |events| {
            events
                .iter()
                .find(|e| matches!(e, Event::Reconnecting { .. }))
                .cloned()
        })
        .await;

    // A new server, empty, on the same port: room r starts over at seq 1.
    let second = TestServer::start_at(addr, CONFIG).await;
    let mut carol = second.client("carol").await;
    carol.join("r").await;
    for i in 0..2 {
        let r#ref = carol.chat("r", &format!("after {i}")).await;
        carol.until(|m| m.r#ref == r#ref).await;
    }
    let (room, _, truncated) = alice_events
        .wait_for("Resumed", |events| {
            events.iter().find_map(|event| match event {
                Event::Resumed {
                    room,
                    replayed,
                    truncated,
                } => Some((room.clone(), *replayed, *truncated)),
                _ => None,
            })
        })
        .await;
    assert_eq!(room, "r");
    assert!(truncated, "the old room's history is gone");
    carol.chat("r", "after 2").await;
    alice_events.wait_content("r", "after 2").await;

    let seen: Vec<(String, u64)> = alice_events
        .messages("r")
        .into_iter()
        .map(|m| (m.content, m.seq))
        .collect();
    let expected = [
        ("before 0", 1),
        ("before 1", 2),
        ("before 2", 3),
        ("after 0", 1),
        ("after 1", 2),
        ("after 2", 3),
    ];
    assert_eq!(seen, expected.map(|(c, s)| (c.to_string(), s)));
    let epochs: Vec<String> = alice_events
        .messages("r")
        .into_iter()
        .map(|m| m.epoch)
        .collect();
    assert_eq!(epochs[0], epochs[2]);
    assert_eq!(epochs[3], epochs[5]);
    assert_ne!(epochs[0], epochs[3], "a new incarnation of the room's seq");
    alice.post("r", "alice is back").await.unwrap();
}

#[tokio::test]
async fn a_client_that_saw_no_chat_yet_resumes_the_room_from_its_start() {
    let server = TestServer::start(CONFIG).await;
    let proxy = Proxy::start(server.addr).await;
    let (alice, events) = Client::connect(fast(&proxy.addr.to_string(), "alice"))
        .await
        .unwrap();
    let alice_events = Recorder::start(events);
    alice.join("quiet").await.unwrap();
    // Her connection breaks before the room's first CHAT, and she cannot come back for now:
    // the proxy sends new connections to a port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    proxy.retarget(closed);
    proxy.inject(Fault::Cut);
    // The server saw her go (her session left the room) before anyone posts.
    server.wait_session_actors(0).await;
    // More than history_on_join (20) are posted while she is away.
    let mut bob = server.client("bob").await;
    bob.join("quiet").await;
    let posted: Vec<String> = (0..25).map(|i| format!("m{i}")).collect();
    for content in &posted {
        let r#ref = bob.chat("quiet", content).await;
        bob.until(|m| m.r#ref == r#ref).await;
    }
    proxy.retarget(server.addr);
    let resumed = alice_events
        .wait_for("Resumed", |events| {
            events.iter().find_map(|event| match event {
                Event::Resumed {
                    room,
                    replayed,
                    truncated,
                } => Some((room.clone(), *replayed, *truncated)),
                _ => None,
            })
        })
        .await;
    assert_eq!(resumed, ("quiet".to_string(), 25, false));
    bob.chat("quiet", "live").await;
    alice_events.wait_content("quiet", "live").await;
    let seen: Vec<(String, u64)> = alice_events
        .messages("quiet")
        .into_iter()
        .map(|m| (m.content, m.seq))
        .collect();
    let expected: Vec<(String, u64)> = posted
        .into_iter()
        .chain(["live".to_string()])
        .zip(1..)
        .collect();
    assert_eq!(seen, expected, "every message once, none missing");
}

#[tokio::test]
async fn heartbeats_keep_a_quiet_session_past_the_idle_timeout() {
    let server = TestServer::start("[session]\nidle_timeout_ms = 300\n").await;
    let options = fast(&server.addr.to_string(), "alice")
        .heartbeat(Duration::from_millis(100), Duration::from_secs(2));
    let (alice, events) = Client::connect(options).await.unwrap();
    let alice_events = Recorder::start(events);
    alice.join("r").await.unwrap();
    // Several idle timeouts pass with nothing but heartbeats.
    let broke = |events: &[Event]| {
        events
            .iter()
            .any(|e| matches!(e, Event::Reconnecting { .. }))
    };
    assert!(
        alice_events
            .quiet_for(Duration::from_millis(1200), broke)
            .await,
        "{:?}",
        alice_events.events()
    );
    let ack = alice.post("r", "still here").await.unwrap();
    assert_eq!(ack.seq, 1);
    let connected = alice_events.events().into_iter();
    assert_eq!(connected.filter(|e| *e == Event::Connected).count(), 1);
}

#[tokio::test]
async fn resent_chats_refused_by_the_rate_limit_are_sent_again_until_posted_once() {
    // A JOIN and three CHATs empty a bucket, which gains three tokens a second.
    let server = TestServer::start("[limits]\nrate_per_sec = 3\nburst = 4\n").await;
    let proxy = Proxy::start(server.addr).await;
    let options = fast(&proxy.addr.to_string(), "alice")
        .heartbeat(Duration::from_secs(30), Duration::from_secs(30));
    let (alice, events) = Client::connect(options).await.unwrap();
    let alice_events = Recorder::start(events);
    alice.join("r").await.unwrap();
    let mut observer = server.client("observer").await;
    observer.join("r").await;
    let observer = Tap::start(observer);

    // Six CHATs: three posted, three refused by the rate limit; alice hears of none of it.
    proxy.inject(Fault::DropReplies);
    let mut replies = Vec::new();
    for i in 0..6 {
        replies.push(alice.send_post("r", format!("c{i}")).await.unwrap());
    }
    observer.wait_content("c2").await;
    proxy.inject(Fault::Cut);
    // On the new stream all six go again: the bucket lets some through and refuses the rest,
    // whose outcome is unknown to the client; they go again once it has refilled.
    let mut acks = Vec::new();
    for reply in replies {
        acks.push(
            timeout(WAIT, reply)
                .await
                .unwrap()
                .expect("posted in the end")
                .seq,
        );
    }
    assert_eq!(acks, [1, 2, 3, 4, 5, 6]);
    observer.wait_content("c5").await;
    let room: Vec<String> = observer.chats().into_iter().map(|m| m.content).collect();
    assert_eq!(room, ["c0", "c1", "c2", "c3", "c4", "c5"]);
    alice_events.wait_content("r", "c5").await;
    assert_eq!(alice_events.messages("r").len(), 6);
}
