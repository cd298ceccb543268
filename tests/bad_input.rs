//! Hostile input: arbitrary bytes as frames (a proptest fuzz of decode → validate → session
//! handling), oversized repeated fields, and a client flooding at full speed. Each gets the
//! specified ERROR or status, and the server and every other session carry on.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use chatrooms::proto::{Kind, Message};
use common::{TestServer, WAIT, raw_stream};
use proptest::prelude::*;
use prost::Message as _;
use tokio::time::timeout;
use tonic::Code;

/// Sends `frames` on one raw stream and checks the outcome against what the bytes are: every
/// frame that decodes is handled and answered in kind, the first one that does not ends the
/// stream with INVALID_ARGUMENT; a bystander is served throughout.
async fn fuzz_case(frames: Vec<Vec<u8>>) {
    let server = TestServer::start("").await;
    let mut bystander = server.client("bystander").await;
    bystander.join("calm").await;

    let (tx, mut replies) = raw_stream(server.channel().await).await;
    let undecodable = frames
        .iter()
        .any(|f| Message::decode(f.as_slice()).is_err());
    for frame in &frames {
        if tx.send(Bytes::from(frame.clone())).await.is_err() {
            break;
        }
    }
    if undecodable {
        loop {
            match timeout(WAIT, replies.message())
                .await
                .expect("an answer in time")
            {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("ended OK after an undecodable frame"),
                Err(status) => {
                    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
                    break;
                }
            }
        }
    } else {
        // A PING after the fuzz: its PONG proves every frame before it was handled.
        let ping = Message {
            kind: Kind::Ping.into(),
            r#ref: "sentinel".into(),
            ..Message::default()
        };
        tx.send(Bytes::from(ping.encode_to_vec())).await.unwrap();
        loop {
            let reply = timeout(WAIT, replies.message())
                .await
                .expect("an answer in time")
                .expect("the stream stays open for decodable frames")
                .expect("not ended");
            if reply.kind() == Kind::Error {
                assert!(
                    !reply.code.is_empty() && !reply.content.is_empty(),
                    "{reply:?}"
                );
            }
            if reply.kind() == Kind::Pong && reply.r#ref == "sentinel" {
                break;
            }
        }
    }
    drop(tx);
    bystander.chat("calm", "still here").await;
    assert_eq!(
        bystander.until(|m| m.kind() == Kind::Chat).await.content,
        "still here"
    );
}

/// Frames that are mostly plausible messages with random damage, plus raw noise.
fn frame() -> impl Strategy<Value = Vec<u8>> {
    let message = (
        0..12i32,
        prop::option::of("[a-z]{0,8}"),
        "[ -~]{0,20}",
        any::<u64>(),
    )
        .prop_map(|(kind, room, content, since_seq)| {
            Message {
                kind,
                user: "fuzzer".into(),
                room: room.unwrap_or_default(),
                content,
                since_seq,
                ..Message::default()
            }
            .encode_to_vec()
        });
    prop_oneof![
        3 => message.clone(),
        2 => (message, any::<prop::sample::Index>(), any::<u8>()).prop_map(|(mut f, at, byte)| {
            if !f.is_empty() {
                let i = at.index(f.len());
                f[i] = byte;
            }
            f
        }),
        1 => prop::collection::vec(any::<u8>(), 0..64),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        // PROPTEST_CASES raises the count for longer runs outside CI.
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_frames_get_errors_or_invalid_argument_and_nothing_else_breaks(
        frames in prop::collection::vec(frame(), 1..8)
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(fuzz_case(frames));
    }
}

#[tokio::test]
async fn a_thousand_members_entries_from_a_client_are_ignored_or_over_the_frame_limit() {
    let server = TestServer::start("[server]\nmax_frame_bytes = 8192\n").await;
    let mut a = server.client("a").await;
    a.join("r").await;
    // Small entries fit the frame limit: the field is server-only, so it is ignored.
    a.send(Message {
        kind: Kind::Chat.into(),
        room: "r".into(),
        content: "with baggage".into(),
        members: vec!["m".into(); 1000],
        ..Message::default()
    })
    .await;
    let ack = a.expect(Kind::Chat).await;
    assert!(ack.members.is_empty());
    // Big entries exceed it: the frame is refused before it is buffered.
    a.send(Message {
        kind: Kind::Chat.into(),
        room: "r".into(),
        content: "x".into(),
        members: vec!["member-name".into(); 1000],
        ..Message::default()
    })
    .await;
    a.expect_end(Code::ResourceExhausted).await;
}

#[tokio::test]
async fn a_client_flooding_at_full_speed_is_held_to_its_rate_limit() {
    let server = TestServer::start("[limits]\nrate_per_sec = 50\nburst = 10\n").await;
    let mut flooder = server.client("flooder").await;
    flooder.join("a").await; // takes one token
    let mut calm = server.client("calm").await;
    calm.join("b").await;

    let started = Instant::now();
    const SENT: usize = 2000;
    for n in 0..SENT {
        flooder.chat("a", &n.to_string()).await;
    }
    let (mut accepted, mut limited) = (0usize, 0usize);
    while accepted + limited < SENT {
        let m = flooder.next().await;
        match (m.kind(), m.code.as_str()) {
            (Kind::Chat, _) => accepted += 1,
            (Kind::Error, "rate_limited") => limited += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // What a 50/s bucket of 10 (one token spent on the JOIN) can have let through.
    let allowed = 9.0 + 50.0 * elapsed + 1.0;
    assert!(
        (accepted as f64) <= allowed,
        "{accepted} accepted in {elapsed:.2}s"
    );
    assert!(limited > SENT / 2, "{limited} refused");

    // Another room is served normally meanwhile and after.
    calm.chat("b", "unaffected").await;
    let got = timeout(Duration::from_secs(2), calm.expect(Kind::Chat))
        .await
        .unwrap();
    assert_eq!(got.content, "unaffected");
}
