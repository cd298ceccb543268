//! The cluster Redis layer against real redis-servers (one or two per test, started here): global
//! seq and order across engines with different node ids, replay windows, trimming, presence with
//! limits, expiry and refresh, outages with reconnect, and sharding. Every wait is bounded.

mod common;

use std::{collections::HashMap, time::Duration};

use bytes::Bytes;
use chatrooms::{
    cluster::{
        Dedup, InvalidCluster, JoinError, LocalPresence, Posted, Published, RedisEngine,
        Subscription, Timeouts, Unavailable,
        keys::{RoomKeys, dedup_key},
    },
    names::SessionId,
};
use common::redis::RedisServer;
use tokio::{sync::mpsc, task::JoinSet, time::timeout};

/// Upper bound for anything Redis or the engine is expected to do.
const WAIT: Duration = Duration::from_secs(10);
/// Short limits so outage tests finish quickly.
const TIMEOUTS: Timeouts = Timeouts {
    response: Duration::from_millis(1000),
    connect: Duration::from_millis(500),
};

fn engine(urls: &[String], node: &str) -> RedisEngine {
    RedisEngine::new(urls, node, TIMEOUTS).expect("valid engine configuration")
}

async fn subscribed(
    engine: &RedisEngine,
    room: &str,
    capacity: usize,
) -> (Subscription, mpsc::Receiver<Published>) {
    let (sink, events) = mpsc::channel(capacity);
    let subscription = timeout(WAIT, engine.subscribe(room, sink))
        .await
        .expect("subscribe answers in time")
        .expect("subscribe succeeds");
    (subscription, events)
}

async fn next(events: &mut mpsc::Receiver<Published>) -> Published {
    timeout(WAIT, events.recv())
        .await
        .expect("an event arrives in time")
        .expect("the sink stays open")
}

async fn publish(engine: &RedisEngine, room: &str, max_len: usize, body: &str) -> u64 {
    timeout(
        WAIT,
        engine.publish_chat(
            room,
            max_len,
            "id",
            SessionId(1),
            Bytes::from(body.to_owned()),
        ),
    )
    .await
    .expect("publish answers in time")
    .expect("publish succeeds")
}

/// A stored or published CHAT body split into what the node sent and the epoch the script
/// appended (protobuf field 13: tag 0x6a, length 16).
fn split_epoch(body: &[u8]) -> (Bytes, String) {
    let at = body.len().checked_sub(18).expect("an epoch at the end");
    assert_eq!(&body[at..at + 2], &[0x6a, 16], "epoch field");
    let epoch = String::from_utf8(body[at + 2..].to_vec()).expect("hex");
    (Bytes::copy_from_slice(&body[..at]), epoch)
}

/// Publishes a marker CHAT and returns the events that arrived before it: proves the absence of
/// an event without waiting for a quiet period.
async fn events_before_marker(
    engine: &RedisEngine,
    room: &str,
    events: &mut mpsc::Receiver<Published>,
) -> Vec<Published> {
    let marker = publish(engine, room, 100, "marker").await;
    let mut before = Vec::new();
    loop {
        match next(events).await {
            Published::Chat { seq, .. } if seq == marker => return before,
            other => before.push(other),
        }
    }
}

fn join_body(user: &str) -> Bytes {
    Bytes::from(format!("join:{user}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_on_two_nodes_get_gapless_seqs_in_one_order() {
    let redis = RedisServer::start();
    let urls = [redis.url()];
    let (a, b) = (engine(&urls, "node-a"), engine(&urls, "node-b"));
    let (_sub_a, mut events_a) = subscribed(&a, "lobby", 512).await;
    let (_sub_b, mut events_b) = subscribed(&b, "lobby", 512).await;

    let mut publishers = JoinSet::new();
    for i in 0..200u64 {
        for (node, engine) in [("a", &a), ("b", &b)] {
            let engine = engine.clone();
            publishers.spawn(async move {
                let id = format!("{node}-{i}");
                let body = Bytes::from(format!("body of {id}"));
                let seq = engine
                    .publish_chat("lobby", 1000, &id, SessionId(i), body)
                    .await
                    .expect("publish succeeds");
                (seq, id)
            });
        }
    }
    let mut assigned = HashMap::new();
    let mut epochs = std::collections::BTreeSet::new();
    while let Some(joined) = timeout(WAIT, publishers.join_next())
        .await
        .expect("in time")
    {
        let (seq, id) = joined.expect("publisher task");
        assert!(
            assigned.insert(seq, id).is_none(),
            "seq {seq} assigned twice"
        );
    }
    let mut seqs: Vec<u64> = assigned.keys().copied().collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=400).collect::<Vec<u64>>());

    for (name, events) in [("a", &mut events_a), ("b", &mut events_b)] {
        for expected in 1..=400u64 {
            let Published::Chat {
                seq,
                node,
                session,
                id,
                body,
            } = next(events).await
            else {
                panic!("subscriber {name}: only CHATs were published");
            };
            assert_eq!(seq, expected, "subscriber {name} sees seqs in order");
            assert_eq!(
                id, assigned[&seq],
                "subscriber {name}: seq {seq} carries its id"
            );
            let (origin, index) = id.split_once('-').expect("id is node-index");
            assert_eq!(node, format!("node-{origin}"));
            assert_eq!(session, SessionId(index.parse().expect("index")));
            let (body, epoch) = split_epoch(&body);
            assert_eq!(body, Bytes::from(format!("body of {id}")));
            epochs.insert(epoch);
        }
    }
    assert_eq!(
        epochs.len(),
        1,
        "one epoch for one room's sequence: {epochs:?}"
    );
    assert_eq!(timeout(WAIT, a.last_seq("lobby")).await.unwrap(), Ok(400));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_selects_by_since_seq_and_last_n_up_to_upto() {
    let redis = RedisServer::start();
    let urls = [redis.url()];
    let engine = engine(&urls, "node-a");
    for i in 1..=10 {
        assert_eq!(publish(&engine, "r", 100, &format!("m{i}")).await, i);
    }
    let replay = |since, last_n, upto| {
        let engine = engine.clone();
        async move {
            timeout(WAIT, engine.replay("r", since, last_n, upto))
                .await
                .expect("replay answers in time")
                .expect("replay succeeds")
        }
    };
    let seqs = |entries: &[(u64, Bytes)]| entries.iter().map(|e| e.0).collect::<Vec<_>>();

    let since = replay(3, 0, 8).await;
    assert_eq!(seqs(&since), vec![4, 5, 6, 7, 8]);
    assert_eq!(split_epoch(&since[0].1).0, Bytes::from_static(b"m4"));
    assert_eq!(split_epoch(&since[4].1).0, Bytes::from_static(b"m8"));

    let last = replay(0, 3, 8).await;
    assert_eq!(seqs(&last), vec![6, 7, 8]);
    assert_eq!(split_epoch(&last[0].1).0, Bytes::from_static(b"m6"));

    assert_eq!(
        seqs(&replay(0, 100, 10).await),
        (1..=10).collect::<Vec<_>>()
    );
    assert_eq!(seqs(&replay(9, 100, 20).await), vec![10]);
    assert!(replay(8, 5, 8).await.is_empty());
    assert!(replay(0, 0, 10).await.is_empty());
    assert!(replay(0, 5, 0).await.is_empty());
    assert!(
        timeout(WAIT, engine.replay("never-used", 0, 5, 5))
            .await
            .unwrap()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimming_keeps_at_least_max_len_of_the_newest() {
    let redis = RedisServer::start();
    let urls = [redis.url()];
    let engine = engine(&urls, "node-a");
    const TOTAL: u64 = 1000;
    const MAX_LEN: usize = 50;
    for i in 1..=TOTAL {
        assert_eq!(publish(&engine, "r", MAX_LEN, &format!("m{i}")).await, i);
    }
    let kept = timeout(WAIT, engine.replay("r", 0, 10_000, TOTAL))
        .await
        .unwrap()
        .unwrap();
    assert!(kept.len() >= MAX_LEN, "kept {} < {MAX_LEN}", kept.len());
    assert!(kept.len() < TOTAL as usize, "nothing was trimmed");
    let first = kept[0].0;
    assert_eq!(
        kept.iter().map(|e| e.0).collect::<Vec<_>>(),
        (first..=TOTAL).collect::<Vec<_>>(),
        "the retained entries are the newest, without gaps"
    );
    // since_seq older than the window replays from the oldest retained entry.
    let since = timeout(WAIT, engine.replay("r", 1, 0, TOTAL))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(since.first().map(|e| e.0), Some(first));
    assert_eq!(since.len(), kept.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_counts_members_of_every_node_against_max_members() {
    let redis = RedisServer::start();
    let urls = [redis.url()];
    let (a, b) = (engine(&urls, "node-a"), engine(&urls, "node-b"));
    let ttl = Duration::from_secs(60);
    let join = |engine: &RedisEngine, session: u64, user: &str| {
        let (engine, user) = (engine.clone(), user.to_owned());
        async move {
            timeout(
                WAIT,
                engine.join("r", SessionId(session), &user, ttl, 3, join_body(&user)),
            )
            .await
            .expect("join answers in time")
        }
    };
    let first = join(&a, 1, "ann").await.expect("room has space");
    assert_eq!(first.seq, 0);
    assert_eq!(first.members.len(), 1);
    join(&b, 2, "bob").await.expect("room has space");
    publish(&a, "r", 100, "hello").await;
    let third = join(&a, 3, "al|ice").await.expect("room has space");
    assert_eq!(third.seq, 1, "JOINED carries the room's global seq");
    let mut users: Vec<_> = third.members.iter().map(|m| m.user.as_str()).collect();
    users.sort_unstable();
    assert_eq!(users, ["al|ice", "ann", "bob"]);

    assert_eq!(join(&b, 4, "dan").await, Err(JoinError::Full { max: 3 }));
    // A session already present joins again without counting twice.
    assert_eq!(
        join(&a, 1, "ann")
            .await
            .expect("still a member")
            .members
            .len(),
        3
    );

    let mut members = timeout(WAIT, b.members("r")).await.unwrap().unwrap();
    members.sort();
    let summary: Vec<_> = members
        .iter()
        .map(|m| (m.node.as_str(), m.session, m.user.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            ("node-a", SessionId(1), "ann"),
            ("node-a", SessionId(3), "al|ice"),
            ("node-b", SessionId(2), "bob"),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_and_leave_are_published_once() {
    let redis = RedisServer::start();
    let urls = [redis.url()];
    let (a, b) = (engine(&urls, "node-a"), engine(&urls, "node-b"));
    let (_sub, mut events) = subscribed(&b, "r", 64).await;
    let ttl = Duration::from_secs(60);

    timeout(
        WAIT,
        a.join("r", SessionId(7), "ann", ttl, 10, join_body("ann")),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        next(&mut events).await,
        Published::Join {
            node: "node-a".into(),
            session: SessionId(7),
            user: "ann".into(),
            body: join_body("ann"),
        }
    );
    let leave_body = Bytes::from_static(b"leave:ann");
    let left = timeout(WAIT, a.leave("r", SessionId(7), "ann", leave_body.clone()))
        .await
        .unwrap();
    assert_eq!(left, Ok(true));
    assert_eq!(
        next(&mut events).await,
        Published::Leave {
            node: "node-a".into(),
            session: SessionId(7),
            user: "ann".into(),
            body: Some(leave_body.clone()),
        }
    );
    // Leaving again removes nothing and announces nothing.
    let again = timeout(WAIT, a.leave("r", SessionId(7), "ann", leave_body))
        .await
        .unwrap();
    assert_eq!(again, Ok(false));
    assert_eq!(events_before_marker(&a, "r", &mut events).await, []);
    assert!(
        timeout(WAIT, a.members("r"))
            .await
            .unwrap()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_entry_is_swept_and_announced_exactly_once() {
    let redis = RedisServer::start();
    let urls = [redis.url()];
    let (a, b) = (engine(&urls, "node-a"), engine(&urls, "node-b"));
    let (_sub, mut events) = subscribed(&b, "r", 64).await;
    let short = Duration::from_millis(300);
    timeout(
        WAIT,
        a.join("r", SessionId(1), "ann", short, 10, join_body("ann")),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(matches!(next(&mut events).await, Published::Join { .. }));

    // Both nodes sweep concurrently until the leave shows up; the count of swept entries over all
    // calls must be exactly one.
    let mut swept = 0;
    let mut leave = None;
    for _ in 0..200 {
        let (from_a, from_b) = tokio::join!(a.sweep("r"), b.sweep("r"));
        swept += from_a.expect("sweep on a") + from_b.expect("sweep on b");
        if let Ok(event) = timeout(Duration::from_millis(50), events.recv()).await {
            leave = event;
            break;
        }
    }
    assert_eq!(
        leave,
        Some(Published::Leave {
            node: "node-a".into(),
            session: SessionId(1),
            user: "ann".into(),
            body: None,
        })
    );
    let (from_a, from_b) = tokio::join!(a.sweep("r"), b.sweep("r"));
    swept += from_a.unwrap() + from_b.unwrap();
    assert_eq!(swept, 1);
    assert_eq!(events_before_marker(&a, "r", &mut events).await, []);
    assert!(
        timeout(WAIT, b.members("r"))
            .await
            .unwrap()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_announces_again_an_entry_that_vanished() {
    let redis = RedisServer::start();
    let urls = [redis.url()];
    let (a, b) = (engine(&urls, "node-a"), engine(&urls, "node-b"));
    let (_sub, mut events) = subscribed(&b, "r", 64).await;
    let local = [LocalPresence {
        session: SessionId(5),
        user: "ann".into(),
        join_body: join_body("ann"),
    }];
    timeout(
        WAIT,
        a.join(
            "r",
            SessionId(5),
            "ann",
            Duration::from_millis(200),
            10,
            join_body("ann"),
        ),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(matches!(next(&mut events).await, Published::Join { .. }));
    // The entry vanishes as it would for a node cut off longer than the TTL.
    let mut gone = false;
    for _ in 0..200 {
        b.sweep("r").await.expect("sweep");
        if let Ok(Some(event)) = timeout(Duration::from_millis(50), events.recv()).await {
            assert!(matches!(event, Published::Leave { .. }), "{event:?}");
            gone = true;
            break;
        }
    }
    assert!(gone, "the entry expired");

    let ttl = Duration::from_secs(60);
    assert_eq!(
        timeout(WAIT, a.refresh("r", &local, ttl)).await.unwrap(),
        Ok(1)
    );
    assert_eq!(
        next(&mut events).await,
        Published::Join {
            node: "node-a".into(),
            session: SessionId(5),
            user: "ann".into(),
            body: join_body("ann"),
        }
    );
    // A present entry is only extended: no announcement, and it no longer expires soon.
    assert_eq!(
        timeout(WAIT, a.refresh("r", &local, ttl)).await.unwrap(),
        Ok(0)
    );
    assert_eq!(timeout(WAIT, b.sweep("r")).await.unwrap(), Ok(0));
    assert_eq!(events_before_marker(&a, "r", &mut events).await, []);
    assert_eq!(
        timeout(WAIT, b.members("r")).await.unwrap().unwrap().len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_answers_unavailable_then_everything_recovers() {
    let mut redis = RedisServer::start();
    let urls = [redis.url()];
    let engine = engine(&urls, "node-a");
    let mut connected = engine.connected();
    timeout(WAIT, connected.wait_for(|up| *up))
        .await
        .expect("connected in time")
        .unwrap();
    let (_sub, mut events) = subscribed(&engine, "r", 64).await;
    let local = [LocalPresence {
        session: SessionId(1),
        user: "ann".into(),
        join_body: join_body("ann"),
    }];
    let ttl = Duration::from_secs(60);
    timeout(
        WAIT,
        engine.join("r", SessionId(1), "ann", ttl, 10, join_body("ann")),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(matches!(next(&mut events).await, Published::Join { .. }));
    assert_eq!(publish(&engine, "r", 100, "before").await, 1);
    let Published::Chat { seq: 1, body, .. } = next(&mut events).await else {
        panic!("CHAT 1");
    };
    let epoch_before = split_epoch(&body).1;

    redis.stop();
    timeout(WAIT, connected.wait_for(|up| !*up))
        .await
        .expect("health turns false during the outage")
        .unwrap();
    assert!(!engine.ping().await);
    // Bounded by the response timeout: the outer WAIT only guards the test.
    let started = tokio::time::Instant::now();
    let publish_down = timeout(
        WAIT,
        engine.publish_chat("r", 100, "id", SessionId(1), Bytes::from_static(b"lost")),
    )
    .await
    .expect("publish answers while Redis is down");
    assert!(
        matches!(
            publish_down,
            Err(Unavailable::Unreachable { .. } | Unavailable::TimedOut { .. })
        ),
        "{publish_down:?}"
    );
    assert!(started.elapsed() <= TIMEOUTS.response + Duration::from_secs(1));
    let join_down = timeout(
        WAIT,
        engine.join("r", SessionId(2), "bob", ttl, 10, join_body("bob")),
    )
    .await
    .expect("join answers while Redis is down");
    assert!(
        matches!(join_down, Err(JoinError::Unavailable(_))),
        "{join_down:?}"
    );
    let (other_sink, _other_events) = mpsc::channel(4);
    let subscribe_down = timeout(WAIT, engine.subscribe("other", other_sink))
        .await
        .expect("subscribe answers while Redis is down");
    assert!(subscribe_down.is_err());
    assert!(
        timeout(WAIT, engine.replay("r", 0, 10, 10))
            .await
            .unwrap()
            .is_err()
    );

    redis.start_again();
    timeout(WAIT, connected.wait_for(|up| *up))
        .await
        .expect("health turns true again after the restart")
        .unwrap();
    assert_eq!(next(&mut events).await, Published::Resubscribed);
    // The restarted Redis is empty (no persistence): presence comes back through refresh.
    assert_eq!(
        timeout(WAIT, engine.refresh("r", &local, ttl))
            .await
            .unwrap(),
        Ok(1)
    );
    assert!(matches!(next(&mut events).await, Published::Join { .. }));
    assert_eq!(publish(&engine, "r", 100, "after").await, 1);
    let Published::Chat {
        seq,
        node,
        session,
        id,
        body,
    } = next(&mut events).await
    else {
        panic!("a CHAT");
    };
    assert_eq!(
        (seq, node.as_str(), session, id.as_str()),
        (1, "node-a", SessionId(1), "id")
    );
    let (body, epoch) = split_epoch(&body);
    assert_eq!(body, Bytes::from_static(b"after"));
    assert_ne!(epoch, epoch_before, "Redis lost the seq: a new epoch");
    assert!(engine.ping().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_times_out_calls_then_recovers() {
    let redis = RedisServer::start();
    let urls = [redis.url()];
    let engine = engine(&urls, "node-a");
    let mut connected = engine.connected();
    let (_sub, mut events) = subscribed(&engine, "r", 64).await;
    timeout(WAIT, connected.wait_for(|up| *up))
        .await
        .expect("connected in time")
        .unwrap();

    // Connections stay open but nothing answers: only the timeouts can tell.
    redis.pause();
    let started = tokio::time::Instant::now();
    let frozen = timeout(WAIT, engine.last_seq("r")).await.expect("bounded");
    assert!(
        matches!(frozen, Err(Unavailable::TimedOut { .. })),
        "{frozen:?}"
    );
    assert!(started.elapsed() <= TIMEOUTS.response + Duration::from_secs(1));
    // A subscribe cannot be confirmed either, and its timeout (or the PING's, if that came
    // first) makes the pub/sub connection count as lost.
    let (other_sink, _other_events) = mpsc::channel(4);
    let subscribe = timeout(WAIT, engine.subscribe("other", other_sink))
        .await
        .expect("bounded");
    assert!(subscribe.is_err(), "{subscribe:?}");
    timeout(WAIT, connected.wait_for(|up| !*up))
        .await
        .expect("health turns false while Redis is frozen")
        .unwrap();

    redis.resume();
    timeout(WAIT, connected.wait_for(|up| *up))
        .await
        .expect("health turns true after Redis resumes")
        .unwrap();
    // The room on the replaced connection hears Resubscribed, then live traffic again.
    assert_eq!(next(&mut events).await, Published::Resubscribed);
    assert_eq!(events_before_marker(&engine, "r", &mut events).await, []);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shards_split_rooms_and_keep_each_rooms_order() {
    let (first, second) = (RedisServer::start(), RedisServer::start());
    let urls = [first.url(), second.url()];
    let (a, b) = (engine(&urls, "node-a"), engine(&urls, "node-b"));
    let mut rooms_by_shard: [Vec<String>; 2] = [Vec::new(), Vec::new()];
    for i in 0..100 {
        let room = format!("room-{i}");
        let shard = a.shard_of(&room);
        assert_eq!(shard, b.shard_of(&room), "every node maps rooms alike");
        if rooms_by_shard[shard].len() < 2 {
            rooms_by_shard[shard].push(room);
        }
    }
    let rooms: Vec<String> = rooms_by_shard.concat();
    assert_eq!(rooms.len(), 4, "two rooms on each shard");

    let mut subscriptions = Vec::new();
    for room in &rooms {
        subscriptions.push((room.clone(), subscribed(&b, room, 256).await));
    }
    const PER_ROOM: u64 = 50;
    let mut publishers = JoinSet::new();
    for i in 0..PER_ROOM {
        for room in &rooms {
            for engine in [&a, &b] {
                let (engine, room) = (engine.clone(), room.clone());
                publishers.spawn(async move {
                    engine
                        .publish_chat(&room, 1000, "id", SessionId(i), Bytes::from_static(b"x"))
                        .await
                        .expect("publish succeeds")
                });
            }
        }
    }
    while let Some(joined) = timeout(WAIT, publishers.join_next())
        .await
        .expect("in time")
    {
        joined.expect("publisher task");
    }
    for (room, (_subscription, events)) in &mut subscriptions {
        for expected in 1..=2 * PER_ROOM {
            match next(events).await {
                Published::Chat { seq, .. } => assert_eq!(seq, expected, "order of {room}"),
                other => panic!("{room}: unexpected {other:?}"),
            }
        }
    }
    // Each room's data lives on its own shard only.
    for (shard, url) in urls.iter().enumerate() {
        let direct = engine(std::slice::from_ref(url), "probe");
        for room in &rooms {
            let expected = if a.shard_of(room) == shard {
                2 * PER_ROOM
            } else {
                0
            };
            assert_eq!(
                timeout(WAIT, direct.last_seq(room)).await.unwrap(),
                Ok(expected),
                "{room} on shard {shard}"
            );
        }
    }
    assert!(a.ping().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unparseable_payloads_are_skipped_and_closed_sinks_unsubscribe() {
    let redis = RedisServer::start();
    let urls = [redis.url()];
    let engine = engine(&urls, "node-a");
    let (subscription, mut events) = subscribed(&engine, "r", 64).await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut raw = timeout(WAIT, client.get_multiplexed_async_connection())
        .await
        .unwrap()
        .unwrap();
    let channel = RoomKeys::new("r").channel;
    let publish_raw = |raw: &mut redis::aio::MultiplexedConnection, payload: &'static [u8]| {
        let mut raw = raw.clone();
        let channel = channel.clone();
        async move {
            timeout(
                WAIT,
                redis::cmd("PUBLISH")
                    .arg(channel)
                    .arg(payload)
                    .query_async::<u64>(&mut raw),
            )
            .await
            .unwrap()
            .unwrap()
        }
    };
    assert_eq!(publish_raw(&mut raw, b"not a payload").await, 1);
    assert_eq!(publish_raw(&mut raw, b"1:Z").await, 1);
    // Both are skipped: the next event is the real CHAT published after them.
    let seq = publish(&engine, "r", 100, "real").await;
    assert!(matches!(
        next(&mut events).await,
        Published::Chat { seq: got, .. } if got == seq
    ));

    // Dropping the receiver (the Subscription is still held): the next message finds the sink
    // closed and unsubscribes the room.
    drop(events);
    let numsub = |raw: &mut redis::aio::MultiplexedConnection| {
        let mut raw = raw.clone();
        let channel = channel.clone();
        async move {
            let reply: (String, u64) = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(channel)
                .query_async(&mut raw)
                .await
                .unwrap();
            reply.1
        }
    };
    assert_eq!(numsub(&mut raw).await, 1);
    publish(&engine, "r", 100, "to nobody").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while numsub(&mut raw).await != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "room still subscribed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await; // poll interval
    }
    drop(subscription);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_subscription_unsubscribes() {
    let redis = RedisServer::start();
    let urls = [redis.url()];
    let engine = engine(&urls, "node-a");
    let (subscription, mut events) = subscribed(&engine, "r", 64).await;
    // A second subscription of the same room replaces the first; dropping the first then must
    // not unsubscribe the second.
    let (replacement, mut replacement_events) = subscribed(&engine, "r", 64).await;
    drop(subscription);
    publish(&engine, "r", 100, "one").await;
    assert!(matches!(
        next(&mut replacement_events).await,
        Published::Chat { seq: 1, .. }
    ));
    assert!(events.try_recv().is_err(), "the replaced sink gets nothing");
    drop(replacement);
    // After the drop, the channel has no subscriber left: PUBLISH reaches nobody.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let channel = RoomKeys::new("r").channel;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let reply: (String, u64) = timeout(
            WAIT,
            redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(&channel)
                .query_async(&mut raw),
        )
        .await
        .unwrap()
        .unwrap();
        if reply.1 == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "room still subscribed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await; // poll interval
    }
}

#[tokio::test]
async fn bad_configurations_are_refused() {
    let url = ["redis://127.0.0.1:1/".to_string()];
    assert_eq!(
        RedisEngine::new(&[], "n", TIMEOUTS).err(),
        Some(InvalidCluster::NoUrls)
    );
    assert!(matches!(
        RedisEngine::new(&url, "a|b", TIMEOUTS).err(),
        Some(InvalidCluster::NodeId(_))
    ));
    assert!(matches!(
        RedisEngine::new(&["not a url".to_string()], "n", TIMEOUTS).err(),
        Some(InvalidCluster::Url { .. })
    ));
    let outside_runtime = std::thread::spawn(|| {
        RedisEngine::new(&["redis://127.0.0.1:1/".to_string()], "n", TIMEOUTS).err()
    });
    assert_eq!(
        outside_runtime.join().expect("thread"),
        Some(InvalidCluster::NoRuntime)
    );
    // Building never waits for Redis: an unreachable one answers Unavailable per call.
    let engine = RedisEngine::new(&url, "n", TIMEOUTS).expect("valid");
    let outcome = timeout(WAIT, engine.last_seq("r")).await.expect("bounded");
    assert!(outcome.is_err(), "{outcome:?}");
}

/// A key's time to live in milliseconds (-2: no such key, -1: none).
async fn ttl_ms(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PTTL").arg(key).query_async(conn).await.unwrap()
}

#[tokio::test]
async fn room_keys_expire_when_nothing_uses_them_any_more() {
    let redis = RedisServer::start();
    let engine = engine(&[redis.url()], "a");
    publish(&engine, "kept", 10, "hello").await;
    let ttl = Duration::from_millis(600);
    timeout(
        WAIT,
        engine.join("kept", SessionId(1), "ada", ttl, 10, Bytes::new()),
    )
    .await
    .unwrap()
    .unwrap();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys = RoomKeys::new("kept");
    let thirty_days: i64 = 30 * 24 * 3600 * 1000;
    for key in [&keys.seq, &keys.log, &keys.epoch] {
        let pttl = ttl_ms(&mut conn, key).await;
        assert!(
            pttl > thirty_days - 60_000 && pttl <= thirty_days,
            "{key}: {pttl}"
        );
    }
    let pttl = ttl_ms(&mut conn, &keys.presence).await;
    assert!(pttl > 0 && pttl <= 3 * 600, "presence: {pttl}");

    // A room that was only joined holds its seq and epoch as long as its presence, no log:
    // joining fresh names cannot leave keys behind for the retention.
    timeout(
        WAIT,
        engine.join("quiet", SessionId(2), "ada", ttl, 10, Bytes::new()),
    )
    .await
    .unwrap()
    .unwrap();
    let quiet = RoomKeys::new("quiet");
    for key in [&quiet.seq, &quiet.epoch] {
        let pttl = ttl_ms(&mut conn, key).await;
        assert!(pttl > 0 && pttl <= 3 * 600, "{key}: {pttl}");
    }
    // So does a presence refresh while it stays without a CHAT.
    timeout(
        WAIT,
        engine.refresh(
            "quiet",
            &[LocalPresence {
                session: SessionId(2),
                user: "ada".into(),
                join_body: join_body("ada"),
            }],
            ttl,
        ),
    )
    .await
    .unwrap()
    .unwrap();
    for key in [&quiet.seq, &quiet.epoch] {
        let pttl = ttl_ms(&mut conn, key).await;
        assert!(pttl > 0 && pttl <= 3 * 600, "{key} after a refresh: {pttl}");
    }
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&quiet.log)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(exists, 0);

    // `[cluster] retention_secs` applies from the room's next CHAT or JOIN.
    engine.set_retention(Duration::from_secs(120));
    publish(&engine, "kept", 10, "again").await;
    timeout(
        WAIT,
        engine.join("quiet", SessionId(3), "bob", ttl, 10, Bytes::new()),
    )
    .await
    .unwrap()
    .unwrap();
    // The quiet room's first CHAT gives its keys the retention.
    publish(&engine, "quiet", 10, "first").await;
    for key in [&keys.seq, &keys.log, &keys.epoch, &quiet.seq, &quiet.epoch] {
        let pttl = ttl_ms(&mut conn, key).await;
        assert!(pttl > 60_000 && pttl <= 120_000, "{key}: {pttl}");
    }
}

#[tokio::test]
async fn the_epoch_is_created_by_the_first_join_and_a_lost_seq_starts_a_new_one() {
    let redis = RedisServer::start();
    let engine = engine(&[redis.url()], "a");
    let ttl = Duration::from_secs(60);
    let join = |session: u64| {
        let engine = engine.clone();
        async move {
            timeout(
                WAIT,
                engine.join("r", SessionId(session), "ada", ttl, 10, Bytes::new()),
            )
            .await
            .unwrap()
            .unwrap()
        }
    };
    let sequence = || async { timeout(WAIT, engine.sequence("r")).await.unwrap().unwrap() };
    let first = join(1).await;
    let epoch = first.epoch.clone();
    assert_eq!(
        (first.seq, epoch.len()),
        (0, 16),
        "a sequence from the first JOIN"
    );
    assert_eq!(sequence().await, (0, epoch.clone()));
    assert_eq!(join(2).await.epoch, epoch);
    publish(&engine, "r", 10, "one").await;
    publish(&engine, "r", 10, "two").await;
    assert_eq!(
        sequence().await,
        (2, epoch.clone()),
        "the first CHAT keeps the epoch the joiners were told"
    );
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys = RoomKeys::new("r");
    // The seq key alone is gone (it expired or was evicted without the others): the epoch key
    // is not reused, or seq 1 would come again in an epoch whose 1 and 2 clients have seen.
    let _: () = redis::cmd("DEL")
        .arg(&keys.seq)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        sequence().await,
        (0, String::new()),
        "no sequence without its seq"
    );
    assert_eq!(publish(&engine, "r", 10, "again").await, 1);
    let (seq, fresh) = sequence().await;
    assert_eq!(seq, 1);
    assert_ne!(fresh, epoch);
    // The old log went with the old sequence: only the new seq 1 is there.
    let stored = timeout(WAIT, engine.replay("r", 0, 10, 1))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(
        split_epoch(&stored[0].1),
        (Bytes::from_static(b"again"), fresh.clone())
    );
    // The same through a JOIN: a new sequence at 0 in a new epoch, which its CHATs keep.
    let _: () = redis::cmd("DEL")
        .arg(&keys.seq)
        .query_async(&mut conn)
        .await
        .unwrap();
    let rejoined = join(3).await;
    assert_eq!(rejoined.seq, 0);
    assert!(rejoined.epoch != fresh && rejoined.epoch != epoch);
    assert_eq!(publish(&engine, "r", 10, "after").await, 1);
    assert_eq!(sequence().await, (1, rejoined.epoch.clone()));
    // An epoch key lost alone: the count goes on in a new epoch (resumes naming the lost one
    // are void).
    let _: () = redis::cmd("DEL")
        .arg(&keys.epoch)
        .query_async(&mut conn)
        .await
        .unwrap();
    let joined = join(4).await;
    assert_eq!(joined.seq, 1);
    assert!(joined.epoch.len() == 16 && joined.epoch != rejoined.epoch);
    assert_eq!(publish(&engine, "r", 10, "on").await, 2);
    assert_eq!(sequence().await, (2, joined.epoch));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ref_is_posted_once_within_the_window_whichever_node_gets_the_resend() {
    let redis = RedisServer::start();
    let urls = [redis.url()];
    let (a, b) = (engine(&urls, "node-a"), engine(&urls, "node-b"));
    let (_sub, mut events) = subscribed(&a, "r", 64).await;
    let window = Duration::from_secs(120);
    let dedup = |user: &str, r#ref: &str| {
        Some(Dedup {
            user: user.into(),
            r#ref: r#ref.into(),
            window,
        })
    };
    let post = |engine: &RedisEngine, id: &str, body: &'static [u8], dedup| {
        let (engine, id) = (engine.clone(), id.to_string());
        async move {
            let posting =
                engine.post_chat("r", 100, &id, SessionId(1), Bytes::from_static(body), dedup);
            timeout(WAIT, posting).await.unwrap().unwrap()
        }
    };
    assert_eq!(
        post(&a, "id-1", b"first", dedup("ada", "r1")).await,
        Posted::New(1)
    );
    let Published::Chat { body: original, .. } = next(&mut events).await else {
        panic!("CHAT 1");
    };
    // The resend reaches the other node, with other content even: the original answers.
    let resent = post(&b, "id-2", b"second", dedup("ada", "r1")).await;
    assert_eq!(
        resent,
        Posted::Resent {
            seq: 1,
            body: original.clone()
        }
    );
    // Another user's same ref, and the same ref without dedup, are new CHATs.
    assert_eq!(
        post(&b, "id-3", b"bob's", dedup("bob", "r1")).await,
        Posted::New(2)
    );
    assert_eq!(post(&a, "id-4", b"plain", None).await, Posted::New(3));
    let published: Vec<u64> = events_before_marker(&a, "r", &mut events)
        .await
        .into_iter()
        .map(|event| match event {
            Published::Chat { seq, .. } => seq,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(published, vec![2, 3], "the resend was never published");
    assert_eq!(timeout(WAIT, a.last_seq("r")).await.unwrap(), Ok(4));
    // The key lives for the window, next to the room's keys.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let pttl: i64 = redis::cmd("PTTL")
        .arg(dedup_key("r", "ada", "r1"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(pttl > 60_000 && pttl <= 120_000, "{pttl}");
}
