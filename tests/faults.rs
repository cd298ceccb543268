//! Faults at scale, bounded: clients vanishing mid-stream, a stalled reader in a big room, a JOIN
//! storm against a member limit, and the empty-room stop racing join/leave cycles. After each, the
//! server is whole: it serves a fresh client, and nothing is left behind.

mod common;

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use chatrooms::proto::{Kind, Message};
use common::{Client, TestServer, small_window_client};
use tokio::sync::Notify;
use tonic::Code;

const FAST: &str = "[limits]\nrate_per_sec = 1000000\nburst = 1000000\n";

#[tokio::test]
async fn a_thousand_abrupt_disconnects_mid_stream_leave_nothing_behind() {
    let server = TestServer::start(&format!("{FAST}empty_room_ttl_ms = 0\n")).await;
    let mut batches = Vec::new();
    for batch in 0..20 {
        let channel = server.channel().await;
        batches.push(tokio::spawn(async move {
            for i in 0..50 {
                let mut c = Client::open(channel.clone(), &format!("gone-{batch}-{i}")).await;
                // Requests in flight, replies unread, then the stream is dropped.
                c.send_kind(Kind::Join, &format!("vanish-{}", i % 5)).await;
                c.chat(&format!("vanish-{}", i % 5), "mid-flight").await;
                c.send_kind(Kind::Ping, "").await;
                c.abort();
            }
            // The connection goes too.
            drop(channel);
        }));
    }
    for b in batches {
        b.await.unwrap();
    }
    server.wait_empty().await;

    let mut fresh = server.client("fresh").await;
    fresh.join("vanish-0").await;
    fresh.chat("vanish-0", "served").await;
    assert_eq!(fresh.expect(Kind::Chat).await.content, "served");
}

#[tokio::test]
async fn a_stalled_reader_among_200_members_is_ended_and_199_receive_everything() {
    // A queue of 256: the stalled reader overflows it, the readers (who keep up) never do.
    let server = TestServer::start(&format!(
        "[session]\noutbound_queue = 256\n{FAST}history = 10\nhistory_on_join = 0\n"
    ))
    .await;
    const TOTAL: u64 = 600;
    // The readers keep up by construction: the sender stays at most LAG CHATs ahead of the
    // slowest of them (a fraction of their queue of 256), however slowly this test's own
    // runtime gets round to them; only the stalled member can overflow.
    const LAG: usize = 96;
    let progress: Arc<Vec<AtomicUsize>> = Arc::new((0..198).map(|_| AtomicUsize::new(0)).collect());
    let progressed = Arc::new(Notify::new());
    let mut tasks = Vec::new();
    for c in 0..8 {
        let channel = server.channel().await;
        for i in 0..25 {
            if tasks.len() == 198 {
                break;
            }
            let mut reader = Client::open(channel.clone(), &format!("m{c}-{i}")).await;
            reader.join("big").await;
            let (progress, progressed, slot) = (progress.clone(), progressed.clone(), tasks.len());
            // Reading starts at once, presence included, as a live client would.
            tasks.push(tokio::spawn(async move {
                let mut seqs = Vec::new();
                while seqs.len() < TOTAL as usize {
                    let m = reader.next().await;
                    if m.kind() == Kind::Chat {
                        seqs.push(m.seq);
                        progress[slot].store(seqs.len(), Ordering::Release);
                        progressed.notify_one();
                    }
                }
                seqs
            }));
        }
    }
    // The stalled member joins last: 198 presence messages piled up unread would trip its own
    // client's h2 flood protection (GOAWAY too_many_data_frames) before the server's verdict.
    let mut stalled = small_window_client(server.endpoint(), "stalled").await;
    stalled.join("big").await;
    let mut sender = server.client("sender").await;
    sender.join("big").await;

    // At most 64 CHATs in flight, like a client with an ack window: a fair producer.
    let body = "x".repeat(1000);
    let mut acks = Vec::new();
    let slowest = || {
        progress
            .iter()
            .map(|p| p.load(Ordering::Acquire))
            .min()
            .unwrap_or(0)
    };
    for n in 0..TOTAL {
        while slowest() + LAG <= n as usize {
            let woken = tokio::time::timeout(Duration::from_secs(30), progressed.notified()).await;
            woken.expect("the readers make progress");
        }
        sender.chat("big", &format!("{n}{body}")).await;
        while acks.len() + 64 <= n as usize {
            let m = sender.next().await;
            if m.kind() == Kind::Chat {
                acks.push(m.seq);
            }
        }
    }
    while acks.len() < TOTAL as usize {
        let m = sender.next().await;
        if m.kind() == Kind::Chat {
            acks.push(m.seq);
        }
    }
    let expected: Vec<u64> = (1..=TOTAL).collect();
    assert_eq!(acks, expected);
    for t in tasks {
        assert_eq!(t.await.unwrap(), expected);
    }
    // The server reset the stream it could not write to: CANCELLED, which also tells it apart
    // from the client's own h2 flood protection (RESOURCE_EXHAUSTED).
    stalled.expect_end(Code::Cancelled).await;
}

#[tokio::test]
async fn a_join_storm_of_2000_admits_exactly_max_members() {
    let server = TestServer::start(&format!("{FAST}max_members = 500\n")).await;
    let mut storm = Vec::new();
    for c in 0..40 {
        let channel = server.channel().await;
        storm.push(tokio::spawn(async move {
            let mut clients = Vec::new();
            for i in 0..50 {
                let mut client = Client::open(channel.clone(), &format!("s{c}-{i}")).await;
                client.send_kind(Kind::Join, "arena").await;
                clients.push(client);
            }
            let mut outcomes = Vec::new();
            for mut client in clients {
                let reply = client
                    .until(|m| matches!(m.kind(), Kind::Joined | Kind::Error))
                    .await;
                outcomes.push((reply.kind(), reply.code.clone(), client));
            }
            outcomes
        }));
    }
    let mut counts: HashMap<(Kind, String), usize> = HashMap::new();
    let mut admitted = Vec::new();
    for s in storm {
        for (kind, code, client) in s.await.unwrap() {
            *counts.entry((kind, code)).or_default() += 1;
            if kind == Kind::Joined {
                admitted.push(client);
            }
        }
    }
    assert_eq!(
        counts.get(&(Kind::Joined, String::new())),
        Some(&500),
        "{counts:?}"
    );
    assert_eq!(
        counts.get(&(Kind::Error, "room_full".into())),
        Some(&1500),
        "{counts:?}"
    );

    // Once they leave, the room admits again.
    for client in &mut admitted {
        client.send_kind(Kind::Leave, "arena").await;
    }
    for client in &mut admitted {
        client.until(|m| m.kind() == Kind::Left).await;
    }
    let mut late = server.client("late").await;
    assert_eq!(late.join("arena").await.members, vec!["late"]);
}

#[tokio::test]
async fn empty_room_expiry_racing_1000_join_leave_cycles_never_loses_a_join() {
    let server = TestServer::start(&format!("{FAST}empty_room_ttl_ms = 0\n")).await;
    let mut tasks = Vec::new();
    for i in 0..10 {
        let mut c = server.client(&format!("cycler{i}")).await;
        tasks.push(tokio::spawn(async move {
            for n in 0..100 {
                let joined = c.join("revolving").await;
                assert!(joined.members.contains(&c.user));
                let r#ref = c.chat("revolving", &format!("{n}")).await;
                // The ack proves the membership landed in a live room.
                c.until(|m: &Message| m.kind() == Kind::Chat && m.r#ref == r#ref)
                    .await;
                c.send_kind(Kind::Leave, "revolving").await;
                c.until(|m| m.kind() == Kind::Left).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Every member left, so the last room stops too; no member lingers in a stopped room.
    server.wait_rooms(0).await;
}

#[tokio::test]
async fn churn_of_2000_sessions_leaves_zero_sessions_rooms_actors_and_tasks() {
    let server = TestServer::start(&format!("{FAST}empty_room_ttl_ms = 0\n")).await;
    let mut workers = Vec::new();
    for w in 0..20 {
        let channel = server.channel().await;
        workers.push(tokio::spawn(async move {
            for i in 0..100 {
                let mut c = Client::open(channel.clone(), &format!("churn{w}-{i}")).await;
                let room = format!("churn-{}", i % 10);
                c.join(&room).await;
                let r#ref = c.chat(&room, "hello").await;
                c.until(|m| m.kind() == Kind::Chat && m.r#ref == r#ref)
                    .await;
                drop(c); // abrupt
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    server.wait_empty().await;
}
