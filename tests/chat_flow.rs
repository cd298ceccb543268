//! CHAT behaviour: broadcast to every member including the sender, one order for everyone,
//! gapless seq, refs echoed on every reply kind, requests handled in send order (no reply
//! overtakes or drops an earlier CHAT's ack), server-side identity, and every server message
//! naming its real room. Each test runs on both engines.

mod common;

use std::collections::HashSet;

use chatrooms::proto::{Kind, Message};
use common::{Engine, TestServer};

per_engine![
    broadcast_reaches_every_member_including_the_sender,
    order_is_identical_for_all_members_under_concurrent_senders,
    seq_is_gapless_per_room_and_refusals_take_no_seq,
    ref_is_echoed_on_each_reply_kind,
    ping_gets_pong_with_server_time,
    requests_are_handled_in_send_order,
    a_chat_just_before_a_leave_is_acked_before_left,
    an_error_never_overtakes_the_ack_of_an_earlier_chat,
    identity_is_stamped_by_the_server,
    every_server_message_names_its_real_room,
];

const FAST: &str = "[limits]\nrate_per_sec = 100000\nburst = 100000\n";

async fn broadcast_reaches_every_member_including_the_sender(engine: Engine) {
    let server = TestServer::start_on(engine, "").await;
    let (mut ada, mut bob) = server.pair_in("general", "ada", "bob").await; // bob's presence

    let r#ref = ada.chat("general", "hello").await;
    let own = ada.expect(Kind::Chat).await;
    let seen = bob.expect(Kind::Chat).await;
    assert_eq!(own.content, "hello");
    assert_eq!(own.r#ref, r#ref, "the sender's copy is its ack");
    assert_eq!(seen.r#ref, "", "refs are private to the sender");
    assert_eq!(
        (own.id.clone(), own.seq, own.user.clone()),
        (seen.id, seen.seq, seen.user)
    );
    assert_eq!(own.user, "ada");
}

async fn order_is_identical_for_all_members_under_concurrent_senders(engine: Engine) {
    let server = TestServer::start_on(engine, FAST).await;
    const SENDERS: usize = 4;
    const EACH: usize = 50;
    let mut clients = Vec::new();
    for i in 0..SENDERS {
        let mut c = server.client(&format!("u{i}")).await;
        c.join("race").await;
        clients.push(c);
    }
    let mut watcher = server.client("watcher").await;
    watcher.join("race").await;
    // Everyone has joined: drain presence so only CHATs remain to compare.
    for (i, c) in clients.iter_mut().enumerate() {
        for _ in i + 1..=SENDERS {
            c.expect(Kind::Join).await;
        }
    }

    let mut senders = Vec::new();
    for mut c in clients {
        senders.push(tokio::spawn(async move {
            for n in 0..EACH {
                let user = c.user.clone();
                c.chat("race", &format!("{user}:{n}")).await;
            }
            let mut got = Vec::new();
            while got.len() < SENDERS * EACH {
                let m = c.expect(Kind::Chat).await;
                got.push((m.seq, m.content));
            }
            got
        }));
    }
    let mut watched = Vec::new();
    while watched.len() < SENDERS * EACH {
        let m = watcher.expect(Kind::Chat).await;
        watched.push((m.seq, m.content));
    }
    for sender in senders {
        assert_eq!(
            sender.await.unwrap(),
            watched,
            "every member sees one order"
        );
    }
    let seqs: Vec<u64> = watched.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=(SENDERS * EACH) as u64).collect::<Vec<_>>());
    // Each sender's own messages keep their send order within the room order.
    for i in 0..SENDERS {
        let own: Vec<&String> = watched
            .iter()
            .map(|(_, c)| c)
            .filter(|c| c.starts_with(&format!("u{i}:")))
            .collect();
        let expected: Vec<String> = (0..EACH).map(|n| format!("u{i}:{n}")).collect();
        assert_eq!(own, expected.iter().collect::<Vec<_>>());
    }
}

async fn seq_is_gapless_per_room_and_refusals_take_no_seq(engine: Engine) {
    let server = TestServer::start_on(engine, "[limits]\nmax_message_bytes = 5\n").await;
    let mut ada = server.client("ada").await;
    ada.join("a").await;
    ada.join("b").await;
    ada.chat("a", "1").await;
    ada.chat("a", "too long!").await; // refused: no seq
    ada.chat("b", "1").await;
    ada.chat("a", "2").await;
    let first = ada.expect(Kind::Chat).await;
    ada.expect_error("message_too_large").await;
    let other_room = ada.expect(Kind::Chat).await;
    let second = ada.expect(Kind::Chat).await;
    assert_eq!((first.room.as_str(), first.seq), ("a", 1));
    assert_eq!((other_room.room.as_str(), other_room.seq), ("b", 1));
    assert_eq!((second.room.as_str(), second.seq), ("a", 2));
}

async fn ref_is_echoed_on_each_reply_kind(engine: Engine) {
    let server = TestServer::start_on(engine, "[limits]\nmax_members = 1\n").await;
    let mut ada = server.client("ada").await;
    let mut bob = server.client("bob").await;

    let joined = ada.join("r").await; // join() asserts JOINED carries the ref
    assert_eq!(joined.room, "r");

    let r#ref = ada.chat("r", "hi").await;
    assert_eq!(ada.expect(Kind::Chat).await.r#ref, r#ref);

    let r#ref = ada.send_kind(Kind::Ping, "").await;
    assert_eq!(ada.expect(Kind::Pong).await.r#ref, r#ref);

    let r#ref = ada.send_kind(Kind::Leave, "r").await;
    assert_eq!(ada.expect(Kind::Left).await.r#ref, r#ref);

    let r#ref = ada.send_kind(Kind::Leave, "r").await;
    let error = ada.expect_error("not_a_member").await;
    assert_eq!((error.r#ref, error.room), (r#ref, "r".to_string()));

    // An ERROR from the room itself (room_full) echoes too.
    ada.join("r").await;
    let r#ref = bob.send_kind(Kind::Join, "r").await;
    let error = bob.expect_error("room_full").await;
    assert_eq!((error.r#ref, error.room), (r#ref, "r".to_string()));
}

async fn ping_gets_pong_with_server_time(engine: Engine) {
    let server = TestServer::start_on(engine, "").await;
    let mut ada = server.client("ada").await;
    let before = chatrooms::proto::now_ms();
    ada.send_kind(Kind::Ping, "").await;
    let pong = ada.expect(Kind::Pong).await;
    assert!(pong.timestamp >= before);
}

async fn requests_are_handled_in_send_order(engine: Engine) {
    let server = TestServer::start_on(engine, FAST).await;
    let mut ada = server.client("ada").await;
    // All sent at once, without waiting for any reply.
    let join_ref = ada.send_kind(Kind::Join, "fresh").await;
    let mut refs = Vec::new();
    for n in 0..20 {
        refs.push(ada.chat("fresh", &n.to_string()).await);
    }
    let leave_ref = ada.send_kind(Kind::Leave, "fresh").await;

    assert_eq!(ada.expect(Kind::Joined).await.r#ref, join_ref);
    for (n, r#ref) in refs.iter().enumerate() {
        let ack = ada.expect(Kind::Chat).await;
        assert_eq!(
            (&ack.r#ref, ack.content.as_str()),
            (r#ref, n.to_string().as_str())
        );
    }
    assert_eq!(ada.expect(Kind::Left).await.r#ref, leave_ref);
}

/// Rounds of a race that an engine answering a request before its CHAT's ack is delivered loses
/// about half the time: enough that such an engine fails every run.
const RACE_ROUNDS: usize = 20;

async fn a_chat_just_before_a_leave_is_acked_before_left(engine: Engine) {
    let server = TestServer::start_on(engine, FAST).await;
    let mut ada = server.client("ada").await;
    for round in 0..RACE_ROUNDS {
        let room = format!("r{round}"); // a fresh room each round: no replay on JOIN
        ada.join(&room).await;
        let chat = ada.chat(&room, "bye").await;
        let leave = ada.send_kind(Kind::Leave, &room).await; // without waiting for the ack
        let ack = ada.next().await;
        assert_eq!((ack.kind(), ack.r#ref), (Kind::Chat, chat), "round {round}");
        assert_eq!(ada.expect(Kind::Left).await.r#ref, leave);
    }
}

async fn an_error_never_overtakes_the_ack_of_an_earlier_chat(engine: Engine) {
    let server = TestServer::start_on(
        engine,
        &format!(
            "{FAST}max_message_bytes = 5
"
        ),
    )
    .await;
    let mut ada = server.client("ada").await;
    ada.join("r").await;
    for round in 0..RACE_ROUNDS {
        let chat = ada.chat("r", "fits").await;
        let refused = ada.chat("r", "too long").await; // without waiting for the ack
        let ack = ada.next().await;
        assert_eq!((ack.kind(), ack.r#ref), (Kind::Chat, chat), "round {round}");
        let error = ada.expect_error("message_too_large").await;
        assert_eq!(error.r#ref, refused);
    }
}

async fn identity_is_stamped_by_the_server(engine: Engine) {
    let server = TestServer::start_on(engine, "").await;
    let (ada, mut bob) = server.pair_in("r", "ada", "bob").await;

    // Later `user` values are ignored: ada cannot post as bob.
    ada.send(Message {
        kind: Kind::Chat.into(),
        room: "r".into(),
        user: "bob".into(),
        content: "I am bob".into(),
        timestamp: 42,
        ..Message::default()
    })
    .await;
    let seen = bob.expect(Kind::Chat).await;
    assert_eq!(seen.user, "ada");
    assert_ne!(seen.timestamp, 42);
}

async fn every_server_message_names_its_real_room(engine: Engine) {
    let server = TestServer::start_on(engine, "").await;
    let mut ada = server.client("ada").await;
    let mut bob = server.client("bob").await;
    // Empty room on JOIN and CHAT means the default room, named in every reply.
    let joined = ada.join("").await;
    assert_eq!(joined.room, "lobby");
    bob.join("").await;
    let presence = ada.expect(Kind::Join).await;
    assert_eq!(
        (presence.room.as_str(), presence.user.as_str()),
        ("lobby", "bob")
    );
    bob.chat("", "hi").await;
    let rooms: HashSet<String> = [ada.expect(Kind::Chat).await, bob.expect(Kind::Chat).await]
        .into_iter()
        .map(|m| m.room)
        .collect();
    assert_eq!(rooms, HashSet::from(["lobby".to_string()]));
    bob.send_kind(Kind::Leave, "lobby").await;
    assert_eq!(bob.expect(Kind::Left).await.room, "lobby");
    assert_eq!(ada.expect(Kind::Leave).await.room, "lobby");
}
