//! Every ERROR code, and bad input that ends only the offending stream: each refusal names its
//! code, says why, echoes room and ref, and the stream and every other session carry on. Each test
//! runs on both engines.

mod common;

use bytes::Bytes;
use chatrooms::proto::{Kind, Message};
use common::{Engine, TestServer, WAIT, raw_stream};
use prost::Message as _;
use tokio::time::timeout;
use tonic::Code;

per_engine![
    room_full,
    rate_limited_refuses_beyond_the_burst_and_takes_no_seq,
    rate_limit_is_per_member_per_room,
    leaving_and_rejoining_does_not_reset_the_rate_limit,
    message_too_large_but_exactly_the_limit_is_accepted,
    not_a_member_for_chat_and_leave,
    invalid_room,
    invalid_user_when_the_first_request_has_no_valid_name,
    a_first_ping_names_the_session,
    ref_longer_than_128_bytes_is_a_bad_request,
    replies_to_requests_without_a_room_name_the_default_room,
    hostile_since_seq_replays_nothing_and_the_room_carries_on,
    too_many_rooms_counts_the_default_room,
    bad_request_for_kinds_a_client_may_not_send_and_missing_fields,
    undecodable_frame_ends_only_that_stream,
    invalid_utf8_in_a_string_field_ends_only_that_stream,
    content_many_times_the_limit_is_message_too_large_and_the_stream_goes_on,
    a_ten_thousand_character_room_name_is_invalid_room_and_the_stream_goes_on,
    a_frame_over_max_frame_bytes_ends_only_that_stream,
    server_only_fields_from_a_client_are_ignored,
];

async fn room_full(engine: Engine) {
    let server = TestServer::start_on(engine, "[limits]\nmax_members = 2\n").await;
    let mut a = server.client("a").await;
    let mut b = server.client("b").await;
    let mut c = server.client("c").await;
    a.join("r").await;
    b.join("r").await;
    c.send_kind(Kind::Join, "r").await;
    c.expect_error("room_full").await;
    // Once someone leaves there is room again.
    b.send_kind(Kind::Leave, "r").await;
    b.expect(Kind::Left).await;
    c.join("r").await;
}

async fn rate_limited_refuses_beyond_the_burst_and_takes_no_seq(engine: Engine) {
    // Burst 4: the JOIN takes one token, three CHATs the rest.
    let server = TestServer::start_on(engine, "[limits]\nrate_per_sec = 0.001\nburst = 4\n").await;
    let mut a = server.client("a").await;
    a.join("r").await;
    for n in 0..5 {
        a.chat("r", &n.to_string()).await;
    }
    for seq in 1..=3 {
        assert_eq!(a.expect(Kind::Chat).await.seq, seq);
    }
    let error = a.expect_error("rate_limited").await;
    assert_eq!(error.room, "r");
    a.expect_error("rate_limited").await;
    // PING is not rate limited and the stream is still open.
    a.send_kind(Kind::Ping, "").await;
    a.expect(Kind::Pong).await;
}

async fn rate_limit_is_per_member_per_room(engine: Engine) {
    // Burst 2: one token for the JOIN, one for a CHAT.
    let server = TestServer::start_on(engine, "[limits]\nrate_per_sec = 0.001\nburst = 2\n").await;
    let mut a = server.client("a").await;
    let mut b = server.client("b").await;
    a.join("x").await;
    a.join("y").await;
    b.join("x").await;
    a.expect(Kind::Join).await;
    a.chat("x", "1").await;
    a.expect(Kind::Chat).await;
    b.expect(Kind::Chat).await;
    a.chat("y", "own bucket in y").await;
    assert_eq!(a.expect(Kind::Chat).await.room, "y");
    b.chat("x", "own bucket for b").await;
    assert_eq!(b.expect(Kind::Chat).await.user, "b");
    a.chat("x", "2").await;
    let refused = a.until(|m| m.kind() == Kind::Error).await;
    assert_eq!(
        (refused.code.as_str(), refused.room.as_str()),
        ("rate_limited", "x")
    );
}

async fn leaving_and_rejoining_does_not_reset_the_rate_limit(engine: Engine) {
    let server = TestServer::start_on(engine, "[limits]\nrate_per_sec = 0.001\nburst = 2\n").await;
    let mut a = server.client("a").await;
    a.join("r").await; // token 1
    a.chat("r", "1").await; // token 2
    a.expect(Kind::Chat).await;
    a.send_kind(Kind::Leave, "r").await;
    a.expect(Kind::Left).await;
    // The bucket is empty and stays empty across the LEAVE: even the JOIN is refused.
    a.send_kind(Kind::Join, "r").await;
    a.expect_error("rate_limited").await;
    // Another room has its own bucket.
    a.join("other").await;
}

async fn message_too_large_but_exactly_the_limit_is_accepted(engine: Engine) {
    let server = TestServer::start_on(engine, "[limits]\nmax_message_bytes = 8\n").await;
    let mut a = server.client("a").await;
    a.join("r").await;
    a.chat("r", "12345678").await;
    assert_eq!(a.expect(Kind::Chat).await.content, "12345678");
    // Bytes, not characters: 5 × 'é' is 10 bytes.
    let r#ref = a.chat("r", "ééééé").await;
    let error = a.expect_error("message_too_large").await;
    assert_eq!((error.room.as_str(), error.r#ref), ("r", r#ref));
}

async fn not_a_member_for_chat_and_leave(engine: Engine) {
    let server = TestServer::start_on(engine, "").await;
    let mut a = server.client("a").await;
    a.chat("elsewhere", "hi").await;
    a.expect_error("not_a_member").await;
    a.send_kind(Kind::Leave, "elsewhere").await;
    a.expect_error("not_a_member").await;
}

async fn invalid_room(engine: Engine) {
    let server = TestServer::start_on(engine, "").await;
    let mut a = server.client("a").await;
    for bad in ["has space".to_string(), "tab\t".into(), "r".repeat(129)] {
        let r#ref = a.send_kind(Kind::Join, &bad).await;
        let error = a.expect_error("invalid_room").await;
        // Echoed as sent, cut to the longest valid name.
        let echoed = &bad[..bad.len().min(128)];
        assert_eq!((error.room.as_str(), error.r#ref), (echoed, r#ref));
    }
    assert_eq!(a.join(&"r".repeat(128)).await.room.len(), 128);
}

async fn invalid_user_when_the_first_request_has_no_valid_name(engine: Engine) {
    let server = TestServer::start_on(engine, "").await;
    for bad in ["", "   ", "bell\u{7}", &"x".repeat(65)] {
        let mut anon = server.client(bad).await;
        anon.send(Message {
            kind: Kind::Join.into(),
            room: "r".into(),
            user: bad.into(),
            ..Message::default()
        })
        .await;
        anon.expect_error("invalid_user").await;
        // PING needs no name.
        anon.send(Message {
            kind: Kind::Ping.into(),
            user: bad.into(),
            ..Message::default()
        })
        .await;
        anon.expect(Kind::Pong).await;
        // The first request decided: a later name is ignored, the stream carries on unnamed.
        anon.send(Message {
            kind: Kind::Join.into(),
            room: "r".into(),
            user: "named-later".into(),
            ..Message::default()
        })
        .await;
        let error = anon.expect_error("invalid_user").await;
        assert_eq!(error.room, "r");
    }
}

async fn a_first_ping_names_the_session(engine: Engine) {
    let server = TestServer::start_on(engine, "").await;
    let mut watcher = server.client("watcher").await;
    watcher.join("r").await;
    let mut alice = server.client("alice").await;
    alice
        .send(Message {
            kind: Kind::Ping.into(),
            user: "alice".into(),
            ..Message::default()
        })
        .await;
    alice.expect(Kind::Pong).await;
    alice
        .send(Message {
            kind: Kind::Join.into(),
            room: "r".into(),
            user: "mallory".into(),
            ..Message::default()
        })
        .await;
    assert_eq!(alice.expect(Kind::Joined).await.user, "alice");
    assert_eq!(watcher.expect(Kind::Join).await.user, "alice");
}

async fn ref_longer_than_128_bytes_is_a_bad_request(engine: Engine) {
    let server = TestServer::start_on(engine, "").await;
    let mut a = server.client("a").await;
    a.send(Message {
        kind: Kind::Ping.into(),
        r#ref: "r".repeat(129),
        ..Message::default()
    })
    .await;
    a.expect_error("bad_request").await;
    a.send(Message {
        kind: Kind::Ping.into(),
        r#ref: "r".repeat(128),
        ..Message::default()
    })
    .await;
    assert_eq!(a.expect(Kind::Pong).await.r#ref.len(), 128);
}

async fn replies_to_requests_without_a_room_name_the_default_room(engine: Engine) {
    let server = TestServer::start_on(engine, "").await;
    let mut a = server.client("a").await;
    a.send_kind(Kind::Ping, "").await;
    assert_eq!(a.expect(Kind::Pong).await.room, "lobby");
    a.send(Message {
        kind: 99,
        ..Message::default()
    })
    .await;
    assert_eq!(a.expect_error("bad_request").await.room, "lobby");
    let mut anon = server.client("").await;
    anon.send(Message {
        content: "no name".into(),
        ..Message::default()
    })
    .await;
    assert_eq!(anon.expect_error("invalid_user").await.room, "lobby");
}

async fn hostile_since_seq_replays_nothing_and_the_room_carries_on(engine: Engine) {
    let server = TestServer::start_on(engine, "").await;
    let mut a = server.client("a").await;
    a.join("r").await;
    a.chat("r", "kept").await;
    a.expect(Kind::Chat).await;
    let mut b = server.client("b").await;
    let joined = b.join_since("r", u64::MAX).await;
    assert_eq!((joined.seq, joined.replay_truncated), (1, true));
    b.expect_silence().await;
    a.expect(Kind::Join).await;
    a.chat("r", "still one room").await;
    assert_eq!(b.expect(Kind::Chat).await.seq, 2);
    assert_eq!(a.expect(Kind::Chat).await.seq, 2);
}

async fn too_many_rooms_counts_the_default_room(engine: Engine) {
    let server = TestServer::start_on(engine, "[session]\nmax_rooms_per_session = 2\n").await;
    let mut a = server.client("a").await;
    a.join("one").await;
    a.chat("", "auto-joins the lobby").await;
    a.expect(Kind::Chat).await;
    a.send_kind(Kind::Join, "three").await;
    let error = a.expect_error("too_many_rooms").await;
    assert_eq!(error.room, "three");
    // Rejoining a room already joined is not a new room.
    a.join("one").await;
}

async fn bad_request_for_kinds_a_client_may_not_send_and_missing_fields(engine: Engine) {
    let server = TestServer::start_on(engine, "").await;
    let mut a = server.client("a").await;
    for kind in [
        Kind::Pong as i32,
        Kind::Error as i32,
        Kind::Joined as i32,
        Kind::Left as i32,
        99,
    ] {
        a.send(Message {
            kind,
            room: "r".into(),
            r#ref: format!("k{kind}"),
            ..Message::default()
        })
        .await;
        let error = a.expect_error("bad_request").await;
        assert_eq!(error.r#ref, format!("k{kind}"));
    }
    a.send_kind(Kind::Leave, "").await;
    a.expect_error("bad_request").await;
    a.join("r").await;
    a.chat("r", "").await;
    a.expect_error("bad_request").await;
    // Still a working session.
    a.chat("r", "fine").await;
    assert_eq!(a.expect(Kind::Chat).await.content, "fine");
}

async fn undecodable_frame_ends_only_that_stream(engine: Engine) {
    let server = TestServer::start_on(engine, "").await;
    let mut bystander = server.client("bystander").await;
    bystander.join("lobby").await;

    let (tx, mut replies) = raw_stream(server.channel().await).await;
    // Field 1 (user) announced as 100 bytes long, but the frame ends after 3.
    tx.send(Bytes::from_static(&[0x0a, 100, b'a', b'b', b'c']))
        .await
        .unwrap();
    let status = timeout(WAIT, replies.message()).await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    bystander.chat("lobby", "still fine").await;
    assert_eq!(bystander.expect(Kind::Chat).await.content, "still fine");
}

async fn invalid_utf8_in_a_string_field_ends_only_that_stream(engine: Engine) {
    let server = TestServer::start_on(engine, "").await;
    let (tx, mut replies) = raw_stream(server.channel().await).await;
    let mut frame = Message {
        user: "ok".into(),
        ..Message::default()
    }
    .encode_to_vec();
    frame.extend_from_slice(&[0x12, 2, 0xff, 0xfe]); // content = invalid UTF-8
    tx.send(Bytes::from(frame)).await.unwrap();
    let status = timeout(WAIT, replies.message()).await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    server.wait_sessions(0).await;
}

/// 64 KiB against the default 4 KiB used to end the stream (the gRPC decoder limit was the
/// largest `max_message_bytes` + 2 KiB); it is an ERROR like any other oversized content.
async fn content_many_times_the_limit_is_message_too_large_and_the_stream_goes_on(engine: Engine) {
    let server = TestServer::start_on(engine, "").await;
    let mut a = server.client("a").await;
    a.join("r").await;
    let r#ref = a.chat("r", &"x".repeat(64 * 1024)).await;
    let error = a.expect_error("message_too_large").await;
    assert!(error.content.contains("65536"), "{error:?}");
    assert_eq!((error.room.as_str(), error.r#ref), ("r", r#ref));
    a.chat("r", "still here").await;
    assert_eq!(a.expect(Kind::Chat).await.content, "still here");
}

/// A 10,000-character room name used to end the stream the same way.
async fn a_ten_thousand_character_room_name_is_invalid_room_and_the_stream_goes_on(engine: Engine) {
    let server = TestServer::start_on(engine, "").await;
    let mut a = server.client("a").await;
    let r#ref = a.send_kind(Kind::Join, &"r".repeat(10_000)).await;
    let error = a.expect_error("invalid_room").await;
    assert_eq!((error.room, error.r#ref), ("r".repeat(128), r#ref));
    a.join("r").await;
}

async fn a_frame_over_max_frame_bytes_ends_only_that_stream(engine: Engine) {
    let server = TestServer::start_on(engine, "[server]\nmax_frame_bytes = 16384\n").await;
    let mut bystander = server.client("bystander").await;
    bystander.join("r").await;
    let mut a = server.client("a").await;
    a.join("r").await;
    bystander.expect(Kind::Join).await;
    // Just under the frame limit: decoded and refused in-band.
    a.chat("r", &"x".repeat(16 * 1024 - 64)).await;
    a.expect_error("message_too_large").await;
    a.chat("r", &"x".repeat(16 * 1024)).await;
    let status = a.expect_end(Code::ResourceExhausted).await;
    assert!(status.message().contains("max_frame_bytes"), "{status:?}");
    // The others carry on, and see the offender leave.
    assert_eq!(bystander.expect(Kind::Leave).await.user, "a");
    bystander.chat("r", "ok").await;
    bystander.expect(Kind::Chat).await;
}

async fn server_only_fields_from_a_client_are_ignored(engine: Engine) {
    let server = TestServer::start_on(engine, "").await;
    let mut a = server.client("a").await;
    a.join("r").await;
    a.send(Message {
        kind: Kind::Chat.into(),
        room: "r".into(),
        content: "hi".into(),
        id: "forged".into(),
        seq: 999,
        replay: true,
        code: "room_full".into(),
        members: vec!["m".into(); 100],
        ..Message::default()
    })
    .await;
    let own = a.expect(Kind::Chat).await;
    assert_eq!((own.seq, own.replay, own.code.as_str()), (1, false, ""));
    assert_ne!(own.id, "forged");
    assert!(own.members.is_empty());
}
