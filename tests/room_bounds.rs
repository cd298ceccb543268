//! What rooms may hold: JOIN/LEAVE churn over many names leaves no room behind (a room that never
//! accepted a CHAT stops when its last member leaves), `server.max_rooms` refuses the room past
//! it with `server_rooms_full` while the session and the open rooms carry on, and history is
//! bounded in bytes per room (`history_bytes`) and server-wide (`history_bytes_total`).

mod common;

use chatrooms::{
    Config,
    names::RoomName,
    proto::{Kind, Message},
};
use common::{TestServer, WAIT};
use prost::Message as _;
use tokio::time::timeout;

/// The bytes a room retains for `message`: its encoding without the per-recipient fields (the
/// sender's `ref`, the replay flag), which are appended to the retained bytes on the way out.
fn retained_len(message: &Message) -> usize {
    Message {
        r#ref: String::new(),
        replay: false,
        ..message.clone()
    }
    .encoded_len()
}

/// Posts `count` CHATs of `len` bytes each to `room` and returns the sender's copies.
async fn post(client: &mut common::Client, room: &str, count: u64, len: usize) -> Vec<Message> {
    let mut sent = Vec::new();
    for n in 1..=count {
        client.chat(room, &format!("{n:<len$}")).await;
        sent.push(client.expect(Kind::Chat).await);
    }
    sent
}

async fn wait_room_actors(server: &TestServer, n: usize) {
    let mut census = server.hub.census.watch();
    timeout(WAIT, census.wait_for(|c| c.room_actors == n))
        .await
        .unwrap_or_else(|_| panic!("room actors never reached {n}"))
        .unwrap();
}

#[tokio::test]
async fn join_leave_churn_over_many_names_leaves_no_room_behind() {
    // The shipped empty-room TTL (30 s): only a room with something to keep waits for it.
    let server = TestServer::start("").await;
    let mut ada = server.client("ada").await;
    ada.join("kept").await;
    ada.chat("kept", "history to keep").await;
    ada.expect(Kind::Chat).await;
    ada.send_kind(Kind::Leave, "kept").await;
    ada.expect(Kind::Left).await;

    for n in 0..2_000 {
        let room = format!("churn-{n}");
        ada.join(&room).await;
        ada.send_kind(Kind::Leave, &room).await;
        ada.expect(Kind::Left).await;
        // A churn room lives on only until the JOIN's token is back in its bucket (50 ms at
        // the default 20/s), so LEAVE then JOIN cannot reset the rate limit: the rooms open at
        // once are those churned in the last moments, never one per name over the 30 s TTL.
        let open = server.hub.rooms.len();
        assert!(open <= 1_000, "{open} rooms open after {n} cycles");
    }
    server.wait_rooms(1).await;
    wait_room_actors(&server, 1).await;
    let kept = RoomName::parse("kept").unwrap();
    assert!(
        server.hub.rooms.get(&kept).is_some(),
        "a room with history keeps its TTL"
    );
    let joined = ada.join("kept").await;
    assert_eq!(joined.seq, 1);
    assert_eq!(ada.expect(Kind::Chat).await.content, "history to keep");
}

#[tokio::test]
async fn a_room_past_max_rooms_is_refused_and_the_session_carries_on() {
    let server = TestServer::start("[server]\nmax_rooms = 3\n").await;
    let mut ada = server.client("ada").await;
    for room in ["a", "b", "c"] {
        ada.join(room).await;
    }
    let r#ref = ada.send_kind(Kind::Join, "d").await;
    let refused = ada.expect_error("server_rooms_full").await;
    assert_eq!(
        (refused.room.as_str(), refused.r#ref.as_str()),
        ("d", r#ref.as_str())
    );
    assert!(refused.content.contains("max_rooms"), "{refused:?}");
    // The default room too, when a plain CHAT would open it.
    ada.send(Message {
        content: "hello lobby".into(),
        ..Message::default()
    })
    .await;
    ada.expect_error("server_rooms_full").await;

    // The session still works, and so do the open rooms, for it and for others.
    let r#ref = ada.send_kind(Kind::Ping, "").await;
    assert_eq!(ada.expect(Kind::Pong).await.r#ref, r#ref);
    ada.chat("a", "still here").await;
    assert_eq!(ada.expect(Kind::Chat).await.content, "still here");
    let mut bob = server.client("bob").await;
    assert_eq!(bob.join("a").await.members, vec!["ada", "bob"]);
    assert!(bob.expect(Kind::Chat).await.replay);
    ada.expect(Kind::Join).await;
    bob.send_kind(Kind::Join, "e").await;
    bob.expect_error("server_rooms_full").await;

    // A room that stops gives its place back.
    ada.send_kind(Kind::Leave, "c").await;
    ada.expect(Kind::Left).await;
    server.wait_rooms(2).await;
    bob.join("e").await;

    // max_rooms is reloadable.
    let mut config = Config::parse("[server]\nmax_rooms = 4\n", "reload.toml").unwrap();
    config.metrics.listen.clear();
    assert!(chatrooms::server::apply_reload(&server.hub, config).is_empty());
    ada.join("f").await;
    ada.send_kind(Kind::Join, "g").await;
    ada.expect_error("server_rooms_full").await;
}

#[tokio::test]
async fn concurrent_joins_never_open_more_than_max_rooms() {
    const MAX: usize = 5;
    let server = TestServer::start(&format!("[server]\nmax_rooms = {MAX}\n")).await;
    let mut clients = Vec::new();
    for n in 0..24 {
        clients.push(server.client(&format!("u{n}")).await);
    }
    // Every JOIN is sent before any answer is read, each to a room of its own.
    for (n, client) in clients.iter_mut().enumerate() {
        client.send_kind(Kind::Join, &format!("r{n}")).await;
    }
    let mut joined = 0;
    for client in &mut clients {
        match client.next().await {
            m if m.kind() == Kind::Joined => joined += 1,
            m => assert_eq!(
                (m.kind(), m.code.as_str()),
                (Kind::Error, "server_rooms_full")
            ),
        }
    }
    assert_eq!(joined, MAX);
    assert_eq!(server.hub.rooms.len(), MAX);
}

#[tokio::test]
async fn replay_is_bounded_by_history_bytes_and_keeps_the_newest() {
    const HISTORY_BYTES: usize = 2048;
    let server = TestServer::start(&format!(
        "[limits]\nhistory = 50\nhistory_bytes = {HISTORY_BYTES}\n"
    ))
    .await;
    let mut ada = server.client("ada").await;
    ada.join("r").await;
    let sent = post(&mut ada, "r", 20, 200).await;
    let size = |seq: u64| retained_len(&sent[seq as usize - 1]);

    let mut bob = server.client("bob").await;
    assert_eq!(bob.join_since("r", 1).await.seq, 20);
    let mut replayed = Vec::new();
    while replayed.last().map(|m: &Message| m.seq) != Some(20) {
        let m = bob.expect(Kind::Chat).await;
        assert!(m.replay);
        replayed.push(m);
    }
    bob.expect_silence().await;

    let seqs: Vec<u64> = replayed.iter().map(|m| m.seq).collect();
    let first = seqs[0];
    assert_eq!(seqs, (first..=20).collect::<Vec<_>>(), "one gapless run");
    let bytes: usize = replayed.iter().map(retained_len).sum();
    assert!(bytes <= HISTORY_BYTES, "{bytes} bytes retained");
    assert!(
        bytes + size(first - 1) > HISTORY_BYTES,
        "the next older one would not have fit: {seqs:?}, {bytes} bytes"
    );
    assert!(first > 2, "trimmed by bytes, not by count: {seqs:?}");
    for m in &replayed {
        assert_eq!(m.content, sent[m.seq as usize - 1].content);
    }
}

#[tokio::test]
async fn rooms_share_history_bytes_total_and_get_bytes_back_when_a_room_stops() {
    let server = TestServer::start(
        "[server]\nhistory_bytes_total = 1000\n\
         [limits]\nhistory_bytes = 1000\nempty_room_ttl_ms = 50\n",
    )
    .await;
    let budget = server.hub.history_budget.clone();
    let mut ada = server.client("ada").await;
    ada.join("first").await;
    let sent = post(&mut ada, "first", 2, 400).await;
    let one = retained_len(&sent[1]);
    assert!(2 * one <= 1000 && 3 * one > 1000, "two fit: {one}");
    assert!(
        2 * one > 1000 / 8 * 7,
        "two are past the pressure point: {one}"
    );
    assert_eq!(budget.used(), 2 * one);

    // The budget is held by "first": "second" still delivers live but retains nothing.
    let mut bob = server.client("bob").await;
    bob.join("second").await;
    post(&mut bob, "second", 1, 400).await;
    let mut cy = server.client("cy").await;
    assert_eq!(cy.join_since("second", 0).await.seq, 1);
    cy.expect_silence().await;
    bob.expect(Kind::Join).await;

    // Past 7/8 of the budget a room that appends keeps an even share of that part (all of it
    // among one holder: 875 bytes, one CHAT here), so "first" gives bytes up as it goes on
    // and "second" retains again. Before, "first" recycled its own bytes and kept all of them.
    post(&mut ada, "first", 1, 400).await;
    assert_eq!(budget.used(), one, "first keeps its newest only");
    let kept = post(&mut bob, "second", 1, 400).await;
    assert!(!cy.expect(Kind::Chat).await.replay);
    assert_eq!(budget.used(), one + retained_len(&kept[0]));

    // "first" stops (empty, after its TTL) and gives its bytes back.
    ada.send_kind(Kind::Leave, "first").await;
    ada.expect(Kind::Left).await;
    // The room actor is gone (its census guard drops after its history).
    wait_room_actors(&server, 1).await;
    assert_eq!(budget.used(), retained_len(&kept[0]));
    let mut dee = server.client("dee").await;
    dee.join_since("second", 0).await;
    let replayed = dee.expect(Kind::Chat).await;
    assert_eq!((replayed.seq, replayed.replay), (2, true));
}
