//! Resuming a room after a reconnect: every CHAT and JOINED carries the room's `epoch` (a room
//! has one from its first JOIN), a JOIN's `since_seq` counts in the epoch it names (0 in the
//! room's epoch: from its start), and JOINED says `replay_truncated` whenever the replay does
//! not start right after `since_seq` (retention passed it, another epoch, a count that started
//! over). The contract cases run on both engines; the memory engine's own ways of starting over
//! (an expired room, a restarted server) and of keeping a quiet room's epoch follow.

mod common;

use chatrooms::{
    actors::Inspect,
    names::RoomName,
    proto::{Kind, Message},
};
use common::{Client, Engine, TestServer};

per_engine![
    chats_joined_and_replays_carry_the_rooms_epoch,
    a_resume_in_the_rooms_epoch_replays_right_after_since_seq,
    a_member_that_saw_no_chat_resumes_from_the_start_of_the_epoch,
    retention_past_since_seq_is_a_truncated_replay,
    another_epoch_voids_since_seq_and_replays_the_default_backlog,
    since_seq_beyond_the_last_seq_is_void,
    a_client_without_an_epoch_resumes_as_before,
    an_epoch_over_sixteen_bytes_is_a_bad_request,
];

/// Posts `n` CHATs as `client` (a member of `room`) and returns their acks.
async fn post(client: &mut Client, room: &str, n: usize) -> Vec<Message> {
    let mut acks = Vec::new();
    for i in 0..n {
        client.chat(room, &format!("m{i}")).await;
        acks.push(client.expect(Kind::Chat).await);
    }
    acks
}

/// The replay after a JOINED: `n` CHATs marked as replay.
async fn replayed(client: &mut Client, n: usize) -> Vec<u64> {
    let mut seqs = Vec::new();
    for _ in 0..n {
        let message = client.expect(Kind::Chat).await;
        assert!(message.replay, "{message:?}");
        seqs.push(message.seq);
    }
    client.expect_silence().await;
    seqs
}

async fn chats_joined_and_replays_carry_the_rooms_epoch(engine: Engine) {
    let server = TestServer::start_on(engine, "").await;
    let mut ada = server.client("ada").await;
    let joined = ada.join("r").await;
    let epoch = joined.epoch.clone();
    assert_eq!((joined.seq, joined.replay_truncated), (0, false));
    assert_eq!(
        epoch.len(),
        16,
        "a fresh room has its epoch already: {epoch:?}"
    );
    let acks = post(&mut ada, "r", 3).await;
    assert!(
        acks.iter().all(|ack| ack.epoch == epoch),
        "the first CHAT keeps the epoch the joiner was told: {acks:?}"
    );
    // Live copies to others, JOINED, the replay and a repeated JOIN's JOINED carry it too.
    let mut bob = server.client("bob").await;
    let joined = bob.join("r").await;
    assert_eq!((joined.seq, joined.epoch.as_str()), (3, epoch.as_str()));
    for _ in 0..3 {
        assert_eq!(bob.expect(Kind::Chat).await.epoch, epoch);
    }
    ada.expect(Kind::Join).await;
    post(&mut ada, "r", 1).await;
    assert_eq!(bob.expect(Kind::Chat).await.epoch, epoch);
    assert_eq!(ada.join("r").await.epoch, epoch);
}

async fn a_resume_in_the_rooms_epoch_replays_right_after_since_seq(engine: Engine) {
    let server = TestServer::start_on(engine, "").await;
    let mut ada = server.client("ada").await;
    ada.join("r").await;
    let epoch = post(&mut ada, "r", 5).await[0].epoch.clone();
    let mut bob = server.client("bob").await;
    let joined = bob.join_resuming("r", 2, &epoch).await;
    assert_eq!((joined.seq, joined.replay_truncated), (5, false));
    assert_eq!(replayed(&mut bob, 3).await, vec![3, 4, 5]);
    // Up to date: nothing to replay and nothing missed.
    let mut cy = server.client("cy").await;
    let joined = cy.join_resuming("r", 5, &epoch).await;
    assert_eq!((joined.seq, joined.replay_truncated), (5, false));
    assert_eq!(replayed(&mut cy, 0).await, Vec::<u64>::new());
}

async fn a_member_that_saw_no_chat_resumes_from_the_start_of_the_epoch(engine: Engine) {
    let config = "[limits]\nhistory = 6\nhistory_on_join = 2\n";
    let server = TestServer::start_on(engine, config).await;
    let mut ada = server.client("ada").await;
    let epoch = ada.join("quiet").await.epoch;
    // Ada's stream broke before the room's first CHAT; more than history_on_join follow.
    let mut bob = server.client("bob").await;
    bob.join("quiet").await;
    let acks = post(&mut bob, "quiet", 4).await;
    assert!(acks.iter().all(|ack| ack.epoch == epoch), "{acks:?}");
    // since_seq 0 in the room's epoch: everything after seq 0, not the default backlog.
    let mut again = server.client("eve").await;
    let joined = again.join_resuming("quiet", 0, &epoch).await;
    assert_eq!(
        (joined.seq, joined.epoch.as_str(), joined.replay_truncated),
        (4, epoch.as_str(), false)
    );
    assert_eq!(replayed(&mut again, 4).await, vec![1, 2, 3, 4]);
    bob.expect(Kind::Join).await;
    // Once retention (history = 6) has passed seq 1, the replay says so.
    post(&mut bob, "quiet", 3).await;
    let mut late = server.client("cy").await;
    let joined = late.join_resuming("quiet", 0, &epoch).await;
    assert_eq!((joined.seq, joined.replay_truncated), (7, true));
    assert_eq!(replayed(&mut late, 6).await, vec![2, 3, 4, 5, 6, 7]);
    // Without an epoch, since_seq 0 is the default backlog, as it always was.
    let mut fresh = server.client("dan").await;
    let joined = fresh.join("quiet").await;
    assert_eq!((joined.seq, joined.replay_truncated), (7, false));
    assert_eq!(replayed(&mut fresh, 2).await, vec![6, 7]);
}

async fn retention_past_since_seq_is_a_truncated_replay(engine: Engine) {
    let server = TestServer::start_on(engine, "[limits]\nhistory = 3\nhistory_on_join = 1\n").await;
    let mut ada = server.client("ada").await;
    ada.join("r").await;
    let epoch = post(&mut ada, "r", 6).await[0].epoch.clone();
    // Seqs 4..=6 are retained: after 3 is whole, after 1 lost 2 and 3.
    let mut bob = server.client("bob").await;
    let joined = bob.join_resuming("r", 3, &epoch).await;
    assert!(!joined.replay_truncated);
    assert_eq!(replayed(&mut bob, 3).await, vec![4, 5, 6]);
    let mut cy = server.client("cy").await;
    let joined = cy.join_resuming("r", 1, &epoch).await;
    assert!(joined.replay_truncated, "{joined:?}");
    assert_eq!(replayed(&mut cy, 3).await, vec![4, 5, 6]);
}

async fn another_epoch_voids_since_seq_and_replays_the_default_backlog(engine: Engine) {
    let server = TestServer::start_on(engine, "[limits]\nhistory_on_join = 2\n").await;
    let mut ada = server.client("ada").await;
    ada.join("r").await;
    let epoch = post(&mut ada, "r", 5).await[0].epoch.clone();
    let other = if epoch == "0123456789abcdef" {
        "fedcba9876543210"
    } else {
        "0123456789abcdef"
    };
    let mut bob = server.client("bob").await;
    // since_seq 1 of another sequence says nothing about this one: the default backlog.
    let joined = bob.join_resuming("r", 1, other).await;
    assert_eq!(
        (joined.seq, joined.epoch.as_str(), joined.replay_truncated),
        (5, epoch.as_str(), true)
    );
    assert_eq!(replayed(&mut bob, 2).await, vec![4, 5]);
    // since_seq 0 of another sequence too: the client cannot know what that one held after
    // it went, so the backlog, truncated.
    let mut cy = server.client("cy").await;
    let joined = cy.join_resuming("r", 0, other).await;
    assert_eq!((joined.seq, joined.replay_truncated), (5, true));
    assert_eq!(replayed(&mut cy, 2).await, vec![4, 5]);
}

async fn since_seq_beyond_the_last_seq_is_void(engine: Engine) {
    let server = TestServer::start_on(engine, "[limits]\nhistory_on_join = 2\n").await;
    let mut ada = server.client("ada").await;
    ada.join("r").await;
    let epoch = post(&mut ada, "r", 3).await[0].epoch.clone();
    // With an epoch: the count cannot have passed 3 in it, so the default backlog.
    let mut bob = server.client("bob").await;
    let joined = bob.join_resuming("r", 9, &epoch).await;
    assert_eq!((joined.seq, joined.replay_truncated), (3, true));
    assert_eq!(replayed(&mut bob, 2).await, vec![2, 3]);
    // Without one (a client that predates epochs): nothing, as always, but said so.
    let mut cy = server.client("cy").await;
    let joined = cy.join_resuming("r", 9, "").await;
    assert_eq!((joined.seq, joined.replay_truncated), (3, true));
    assert_eq!(replayed(&mut cy, 0).await, Vec::<u64>::new());
}

async fn a_client_without_an_epoch_resumes_as_before(engine: Engine) {
    let server = TestServer::start_on(engine, "").await;
    let mut ada = server.client("ada").await;
    ada.join("r").await;
    post(&mut ada, "r", 4).await;
    let mut bob = server.client("bob").await;
    let joined = bob.join_since("r", 2).await;
    assert_eq!((joined.seq, joined.replay_truncated), (4, false));
    assert_eq!(replayed(&mut bob, 2).await, vec![3, 4]);
}

async fn an_epoch_over_sixteen_bytes_is_a_bad_request(engine: Engine) {
    let server = TestServer::start_on(engine, "").await;
    let mut ada = server.client("ada").await;
    ada.send(Message {
        kind: Kind::Join.into(),
        room: "r".into(),
        since_seq: 1,
        epoch: "x".repeat(17),
        r#ref: "j".into(),
        ..Message::default()
    })
    .await;
    let error = ada.expect_error("bad_request").await;
    assert_eq!((error.room.as_str(), error.r#ref.as_str()), ("r", "j"));
    let joined = ada.join_resuming("r", 0, &"x".repeat(16)).await;
    assert_eq!(joined.epoch.len(), 16);
    assert_ne!(joined.epoch, "x".repeat(16));
}

/// An empty memory room stops after `empty_room_ttl_ms` and forgets its history: the next one
/// counts from 1 in a new epoch, and a resume of the old one is truncated.
#[tokio::test]
async fn an_expired_memory_room_starts_over_in_a_new_epoch() {
    let server = TestServer::start("[limits]\nempty_room_ttl_ms = 10\n").await;
    let mut ada = server.client("ada").await;
    ada.join("r").await;
    let old = post(&mut ada, "r", 2).await[0].epoch.clone();
    ada.send_kind(Kind::Leave, "r").await;
    ada.expect(Kind::Left).await;
    server.wait_rooms(0).await;
    let mut bob = server.client("bob").await;
    bob.join("r").await;
    let acks = post(&mut bob, "r", 1).await;
    assert_eq!(acks[0].seq, 1);
    assert_ne!(acks[0].epoch, old);
    let joined = ada.join_resuming("r", 2, &old).await;
    assert_eq!(
        (joined.seq, joined.epoch.as_str(), joined.replay_truncated),
        (1, acks[0].epoch.as_str(), true)
    );
    assert_eq!(
        replayed(&mut ada, 1).await,
        vec![1],
        "the new room's backlog"
    );
}

/// A memory-mode server restarted on the same port: the client's JOIN with its last seq and
/// epoch is answered with the new room's backlog and `replay_truncated`, so a client that drops
/// seqs it has seen does not drop the new room's messages (whose seq starts at 1 again).
#[tokio::test]
async fn a_restarted_memory_server_starts_over_in_a_new_epoch() {
    let server = TestServer::start("").await;
    let addr = server.addr;
    let mut ada = server.client("ada").await;
    ada.join("r").await;
    let seen = post(&mut ada, "r", 3).await;
    let (last, old) = (seen[2].seq, seen[2].epoch.clone());
    drop(ada);
    server.shutdown().await;

    let server = TestServer::start_at(addr, "").await;
    let mut bob = server.client("bob").await;
    bob.join("r").await;
    let fresh = post(&mut bob, "r", 2).await;
    assert_eq!(fresh[0].seq, 1);
    assert_ne!(fresh[0].epoch, old);
    let mut ada = server.client("ada").await;
    let joined = ada.join_resuming("r", last, &old).await;
    assert_eq!(
        (joined.seq, joined.epoch.as_str(), joined.replay_truncated),
        (2, fresh[0].epoch.as_str(), true)
    );
    assert_eq!(replayed(&mut ada, 2).await, vec![1, 2]);
}

/// A memory room whose only member's stream broke before its first CHAT keeps its epoch for
/// `empty_room_ttl_ms` (a LEAVE would have stopped it at once): that member comes back with
/// `since_seq` 0 in it and gets every CHAT posted meanwhile, however many, whole.
#[tokio::test]
async fn a_quiet_memory_room_keeps_its_epoch_for_a_member_whose_stream_broke() {
    let server = TestServer::start("[limits]\nhistory_on_join = 2\n").await;
    let mut ada = server.client("ada").await;
    let epoch = ada.join("quiet").await.epoch;
    let room = server
        .hub
        .rooms
        .get(&RoomName::parse("quiet").unwrap())
        .unwrap();
    ada.abort();
    server.wait_session_actors(0).await;
    // The ended session's leave reached the room before this (one mailbox, sent first).
    let snapshot = room.send(Inspect { members: false }).await;
    let snapshot = snapshot.expect("the empty room waits for its member to come back");
    assert_eq!((snapshot.member_count, snapshot.last_seq), (0, 0));
    let mut bob = server.client("bob").await;
    bob.join("quiet").await;
    let acks = post(&mut bob, "quiet", 5).await;
    assert!(acks.iter().all(|ack| ack.epoch == epoch), "{acks:?}");
    let mut ada = server.client("ada").await;
    let joined = ada.join_resuming("quiet", 0, &epoch).await;
    assert_eq!(
        (joined.seq, joined.epoch.as_str(), joined.replay_truncated),
        (5, epoch.as_str(), false)
    );
    assert_eq!(replayed(&mut ada, 5).await, vec![1, 2, 3, 4, 5]);
}
