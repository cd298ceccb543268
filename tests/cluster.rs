//! Cluster mode: two and three in-process nodes on one real Redis (started by the test on a free
//! loopback port) behave as one server per room — one order and one gapless seq under concurrent
//! senders on different nodes, presence and members from every node, replay and history served
//! from Redis, a killed node's members leaving within the TTL, a Redis restart answered with
//! `unavailable` and then healed without reconnecting, and rooms sharded over two Redis servers.

mod common;

use std::time::Duration;

use chatrooms::proto::{Kind, Message};
use common::{Client, TestServer, WAIT, process::Process, redis::RedisServer};
use tokio::time::Instant;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const TTL_MS: u64 = 900;

fn node_config(urls: &[String], node: &str) -> String {
    node_config_ttl(urls, node, TTL_MS)
}

fn node_config_ttl(urls: &[String], node: &str, ttl_ms: u64) -> String {
    let urls: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
    format!(
        "[cluster]\nengine = \"redis\"\nredis_urls = [{}]\nnode_id = \"{node}\"\npresence_ttl_ms = {ttl_ms}\n\
         [limits]\nrate_per_sec = 100000\nburst = 100000\nhistory = 100\nhistory_on_join = 5\n",
        urls.join(", ")
    )
}

async fn node(redis: &[&RedisServer], name: &str) -> TestServer {
    let urls: Vec<String> = redis.iter().map(|r| r.url()).collect();
    let server = TestServer::start(&node_config(&urls, name)).await;
    wait_health(&server, ServingStatus::Serving).await;
    server
}

async fn health(server: &TestServer) -> ServingStatus {
    let mut client = HealthClient::new(server.channel().await);
    let reply = client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    reply.status()
}

/// Polls the health service (bounded): health follows Redis's reachability.
async fn wait_health(server: &TestServer, want: ServingStatus) {
    let deadline = Instant::now() + WAIT;
    while health(server).await != want {
        assert!(Instant::now() < deadline, "health never became {want:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next `n` CHATs, skipping presence.
async fn chats(client: &mut Client, n: usize) -> Vec<Message> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let message = client.next().await;
        match message.kind() {
            Kind::Chat => out.push(message),
            Kind::Join | Kind::Leave => {}
            _ => panic!("{}: unexpected {message:?}", client.user),
        }
    }
    out
}

fn seqs(messages: &[Message]) -> Vec<u64> {
    messages.iter().map(|m| m.seq).collect()
}

#[tokio::test]
async fn concurrent_senders_on_two_nodes_share_one_order_and_one_gapless_seq() {
    let redis = RedisServer::start();
    let (a, b) = (node(&[&redis], "a").await, node(&[&redis], "b").await);
    let mut ada = a.client("ada").await;
    let mut bob = b.client("bob").await;
    ada.join("r").await;
    let joined = bob.join("r").await;
    assert_eq!(joined.members, vec!["ada", "bob"], "members of both nodes");
    assert_eq!(
        ada.expect(Kind::Join).await.user,
        "bob",
        "presence crosses nodes"
    );

    const EACH: usize = 60;
    for n in 0..EACH {
        ada.chat("r", &format!("a{n}")).await;
        bob.chat("r", &format!("b{n}")).await;
    }
    let seen_by_ada = chats(&mut ada, 2 * EACH).await;
    let seen_by_bob = chats(&mut bob, 2 * EACH).await;
    let expected: Vec<u64> = (1..=2 * EACH as u64).collect();
    assert_eq!(seqs(&seen_by_ada), expected);
    assert_eq!(seqs(&seen_by_bob), expected);
    let order = |m: &[Message]| m.iter().map(|m| m.content.clone()).collect::<Vec<_>>();
    assert_eq!(order(&seen_by_ada), order(&seen_by_bob), "one order");
    // Each sender's acks carry its refs, in its own send order.
    let acked: Vec<&str> = seen_by_ada
        .iter()
        .filter(|m| !m.r#ref.is_empty())
        .map(|m| m.content.as_str())
        .collect();
    let own: Vec<String> = (0..EACH).map(|n| format!("a{n}")).collect();
    assert_eq!(acked, own);
    ada.expect_silence().await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn members_and_max_members_count_every_node() {
    let redis = RedisServer::start();
    let nodes = [
        node(&[&redis], "a").await,
        node(&[&redis], "b").await,
        node(&[&redis], "c").await,
    ];
    let mut ada = nodes[0].client("ada").await;
    let mut bob = nodes[1].client("bob").await;
    let mut carol = nodes[2].client("carol").await;
    ada.join("r").await;
    bob.join("r").await;
    assert_eq!(carol.join("r").await.members, vec!["ada", "bob", "carol"]);
    for member in [&mut ada, &mut bob] {
        assert_eq!(
            member
                .until(|m| m.kind() == Kind::Join && m.user == "carol")
                .await
                .room,
            "r"
        );
    }
    // LEAVE on one node reaches the others.
    bob.send_kind(Kind::Leave, "r").await;
    bob.expect(Kind::Left).await;
    for member in [&mut ada, &mut carol] {
        let leave = member.until(|m| m.kind() == Kind::Leave).await;
        assert_eq!(leave.user, "bob");
    }
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test]
async fn max_members_is_counted_over_all_nodes() {
    let redis = RedisServer::start();
    let urls = vec![redis.url()];
    let config = format!(
        "{}[rooms.\"small\"]\nmax_members = 2\n",
        node_config(&urls, "a")
    );
    let a = TestServer::start(&config).await;
    let b = TestServer::start(&config.replace("node_id = \"a\"", "node_id = \"b\"")).await;
    wait_health(&a, ServingStatus::Serving).await;
    wait_health(&b, ServingStatus::Serving).await;
    let mut ada = a.client("ada").await;
    let mut bob = b.client("bob").await;
    let mut carol = a.client("carol").await;
    ada.join("small").await;
    bob.join("small").await;
    carol.send_kind(Kind::Join, "small").await;
    carol.expect_error("room_full").await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn replay_is_served_by_a_node_that_never_saw_the_messages() {
    let redis = RedisServer::start();
    let a = node(&[&redis], "a").await;
    let mut ada = a.client("ada").await;
    ada.join("r").await;
    for n in 1..=6 {
        ada.chat("r", &format!("m{n}")).await;
    }
    assert_eq!(seqs(&chats(&mut ada, 6).await), vec![1, 2, 3, 4, 5, 6]);

    let c = node(&[&redis], "c").await;
    let mut dan = c.client("dan").await;
    let joined = dan.join_since("r", 2).await;
    assert_eq!(joined.seq, 6, "JOINED carries the global seq");
    let replayed = chats(&mut dan, 4).await;
    assert_eq!(seqs(&replayed), vec![3, 4, 5, 6]);
    assert!(replayed.iter().all(|m| m.replay && m.user == "ada"));
    // Live continues right after the replay, no gap and no duplicate.
    ada.chat("r", "m7").await;
    let live = chats(&mut dan, 1).await;
    assert_eq!((live[0].seq, live[0].replay), (7, false));
    dan.expect_silence().await;
    a.shutdown().await;
    c.shutdown().await;
}

#[tokio::test]
async fn a_room_without_local_members_stops_at_once_and_churn_leaves_none_behind() {
    let redis = RedisServer::start();
    let (a, b) = (node(&[&redis], "a").await, node(&[&redis], "b").await);
    let mut ada = a.client("ada").await;
    let mut bob = b.client("bob").await;
    bob.join("shared").await;
    ada.join("shared").await;
    assert_eq!(bob.expect(Kind::Join).await.user, "ada");
    ada.chat("shared", "kept in redis").await;
    assert_eq!(chats(&mut ada, 1).await[0].seq, 1);
    assert_eq!(chats(&mut bob, 1).await[0].seq, 1);

    // Node a's room has nothing of its own to keep (seq and history are in Redis): it stops
    // once ada's LEAVE is published, while the room goes on on node b.
    ada.send_kind(Kind::Leave, "shared").await;
    ada.expect(Kind::Left).await;
    assert_eq!(bob.expect(Kind::Leave).await.user, "ada");
    a.wait_rooms(0).await;
    assert_eq!(b.hub.rooms.len(), 1);

    // JOIN/LEAVE churn over many names leaves no room behind on the node.
    for n in 0..200 {
        let room = format!("churn-{n}");
        ada.join(&room).await;
        ada.send_kind(Kind::Leave, &room).await;
        ada.expect(Kind::Left).await;
    }
    a.wait_rooms(0).await;

    // A fresh room on node a picks the room up where Redis has it.
    let joined = ada.join("shared").await;
    assert_eq!(joined.seq, 1);
    assert_eq!(ada.expect(Kind::Chat).await.content, "kept in redis");
    assert_eq!(bob.expect(Kind::Join).await.user, "ada");
    bob.chat("shared", "welcome back").await;
    assert_eq!(chats(&mut ada, 1).await[0].seq, 2);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_replay_from_redis_is_cut_to_the_newest_chats_that_fit_history_bytes() {
    const HISTORY_BYTES: usize = 2048;
    let redis = RedisServer::start();
    let config = node_config(&[redis.url()], "a") + &format!("history_bytes = {HISTORY_BYTES}\n");
    let a = TestServer::start(&config).await;
    wait_health(&a, ServingStatus::Serving).await;
    let mut ada = a.client("ada").await;
    ada.join("r").await;
    for n in 1..=20 {
        ada.chat("r", &format!("{n:<200}")).await;
    }
    assert_eq!(
        seqs(&chats(&mut ada, 20).await),
        (1..=20).collect::<Vec<_>>()
    );

    let mut bob = a.client("bob").await;
    assert_eq!(bob.join_since("r", 1).await.seq, 20);
    let mut replayed = Vec::new();
    while replayed.last().map(|m: &Message| m.seq) != Some(20) {
        let m = bob.expect(Kind::Chat).await;
        assert!(m.replay);
        replayed.push(m);
    }
    let first = replayed[0].seq;
    assert_eq!(seqs(&replayed), (first..=20).collect::<Vec<_>>());
    assert!(first > 2, "cut by bytes, not by count: from {first}");
    let bytes: usize = replayed.iter().map(|m| m.content.len()).sum();
    assert!(bytes < HISTORY_BYTES, "{bytes} bytes of content replayed");
    a.shutdown().await;
}

#[tokio::test]
async fn history_survives_a_node_restart() {
    let redis = RedisServer::start();
    let a = node(&[&redis], "a").await;
    let mut ada = a.client("ada").await;
    ada.join("r").await;
    for n in 1..=3 {
        ada.chat("r", &format!("kept {n}")).await;
    }
    chats(&mut ada, 3).await;
    drop(ada);
    a.shutdown().await;

    let again = node(&[&redis], "a").await;
    let mut eve = again.client("eve").await;
    let joined = eve.join("r").await;
    assert_eq!(
        (joined.seq, joined.members.clone()),
        (3, vec!["eve".to_string()])
    );
    let replayed = chats(&mut eve, 3).await;
    let texts: Vec<&str> = replayed.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(texts, vec!["kept 1", "kept 2", "kept 3"]);
    eve.chat("r", "new").await;
    assert_eq!(chats(&mut eve, 1).await[0].seq, 4);
    again.shutdown().await;
}

#[tokio::test]
async fn a_killed_nodes_members_leave_presence_within_the_ttl() {
    let redis = RedisServer::start();
    let b = node(&[&redis], "b").await;
    let mut bob = b.client("bob").await;
    bob.join("r").await;

    // The other node is the real binary, killed with SIGKILL: it cleans nothing up.
    let config = format!(
        "{}[server]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"\"\n",
        node_config(&[redis.url()], "doomed")
    );
    let mut doomed = Process::start("cluster-doomed", &config).await;
    let channel = doomed.endpoint().connect().await.unwrap();
    let deadline = Instant::now() + WAIT;
    let mut probe = HealthClient::new(channel.clone());
    loop {
        let status = probe
            .check(HealthCheckRequest::default())
            .await
            .unwrap()
            .into_inner()
            .status();
        if status == ServingStatus::Serving {
            break;
        }
        assert!(Instant::now() < deadline, "the binary never reached redis");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut zed = Client::open(channel, "zed").await;
    assert_eq!(zed.join("r").await.members, vec!["bob", "zed"]);
    bob.until(|m| m.kind() == Kind::Join && m.user == "zed")
        .await;

    doomed.child.start_kill().unwrap();
    let killed = Instant::now();
    let leave = bob
        .until(|m| m.kind() == Kind::Leave && m.user == "zed")
        .await;
    assert_eq!(leave.room, "r");
    let took = killed.elapsed();
    assert!(
        took < Duration::from_millis(TTL_MS * 2 + 500),
        "LEAVE after {took:?}, TTL {TTL_MS} ms"
    );
    let _ = doomed.child.wait().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_redis_restart_answers_unavailable_then_the_same_sessions_chat_again() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("chatrooms=info")
        .with_test_writer()
        .try_init();
    let mut redis = RedisServer::start();
    let (a, b) = (node(&[&redis], "a").await, node(&[&redis], "b").await);
    let mut ada = a.client("ada").await;
    let mut bob = b.client("bob").await;
    ada.join("r").await;
    bob.join("r").await;
    ada.chat("r", "before").await;
    assert_eq!(chats(&mut bob, 1).await[0].content, "before");
    chats(&mut ada, 1).await;

    redis.stop();
    ada.chat("r", "during").await;
    let refused = ada.until(|m| m.kind() == Kind::Error).await;
    assert_eq!(refused.code, "unavailable", "{refused:?}");
    wait_health(&a, ServingStatus::NotServing).await;
    ada.send_kind(Kind::Ping, "").await;
    ada.until(|m| m.kind() == Kind::Pong).await; // the session is still there

    redis.start_again();
    wait_health(&a, ServingStatus::Serving).await;
    wait_health(&b, ServingStatus::Serving).await;
    // The same streams, no reconnect: a CHAT goes through again (bounded retries while the
    // room re-subscribes).
    let deadline = Instant::now() + WAIT;
    let delivered = loop {
        assert!(Instant::now() < deadline, "never chatted again");
        let r#ref = ada.chat("r", "after").await;
        let reply = ada
            .until(|m| matches!(m.kind(), Kind::Chat | Kind::Error))
            .await;
        if reply.kind() == Kind::Chat {
            assert_eq!(reply.r#ref, r#ref, "the sender's ack");
            break reply;
        }
        assert_eq!(reply.code, "unavailable");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(delivered.content, "after");
    // Bob, on the other node, gets exactly that CHAT after the outage: nothing replayed again.
    let at_bob = chats(&mut bob, 1).await;
    assert_eq!(
        (at_bob[0].content.as_str(), at_bob[0].seq),
        ("after", delivered.seq)
    );
    bob.expect_silence().await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn rooms_sharded_over_two_redis_servers_keep_their_order() {
    let (r1, r2) = (RedisServer::start(), RedisServer::start());
    let (a, b) = (node(&[&r1, &r2], "a").await, node(&[&r1, &r2], "b").await);
    let engine = a.hub.cluster.clone().unwrap();
    // Rooms on both shards.
    let rooms: Vec<String> = (0..40)
        .map(|n| format!("room-{n}"))
        .scan([0usize; 2], |taken, room| {
            let shard = engine.shard_of(&room);
            taken[shard] += 1;
            Some((room, shard, taken[shard]))
        })
        .filter(|(_, _, nth)| *nth <= 2)
        .map(|(room, _, _)| room)
        .collect();
    assert_eq!(rooms.len(), 4, "two rooms on each shard");

    let mut ada = a.client("ada").await;
    let mut bob = b.client("bob").await;
    for room in &rooms {
        ada.join(room).await;
    }
    for room in &rooms {
        bob.join(room).await;
    }
    const EACH: usize = 15;
    for n in 0..EACH {
        for room in &rooms {
            ada.chat(room, &format!("a{n}")).await;
            bob.chat(room, &format!("b{n}")).await;
        }
    }
    let total = rooms.len() * 2 * EACH;
    let (seen_a, seen_b) = (chats(&mut ada, total).await, chats(&mut bob, total).await);
    for room in &rooms {
        let of = |seen: &[Message]| -> Vec<(u64, String)> {
            seen.iter()
                .filter(|m| &m.room == room)
                .map(|m| (m.seq, m.content.clone()))
                .collect()
        };
        let (in_a, in_b) = (of(&seen_a), of(&seen_b));
        let expected: Vec<u64> = (1..=2 * EACH as u64).collect();
        assert_eq!(
            in_a.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            expected,
            "{room}"
        );
        assert_eq!(in_a, in_b, "{room}: one order on both nodes");
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_pubsub_reconnect_without_data_loss_neither_replays_nor_skips() {
    let redis = RedisServer::start();
    let (a, c) = (node(&[&redis], "a").await, node(&[&redis], "c").await);
    let mut ada = a.client("ada").await;
    ada.join("r").await;
    for n in 1..=4 {
        ada.chat("r", &format!("old {n}")).await;
    }
    chats(&mut ada, 4).await;
    // Node c opens the room on existing history and has delivered nothing of its own yet.
    let mut dan = c.client("dan").await;
    dan.join_since("r", 4).await;
    ada.expect(Kind::Join).await;

    // Every pub/sub connection is cut; Redis keeps its data. A CHAT sent meanwhile reaches dan
    // through the channel or through the gap fill after the reconnect, exactly once.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut admin = client.get_multiplexed_async_connection().await.unwrap();
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(killed >= 2, "both nodes' subscribers were cut ({killed})");
    let r#ref = ada.chat("r", "new").await;
    let acked = chats(&mut ada, 1).await;
    assert_eq!((acked[0].seq, acked[0].r#ref.as_str()), (5, r#ref.as_str()));
    let got = chats(&mut dan, 1).await;
    assert_eq!(
        (got[0].seq, got[0].content.as_str(), got[0].replay),
        (5, "new", false)
    );
    dan.expect_silence_for(Duration::from_millis(600)).await; // no history resent as live
    ada.chat("r", "after").await;
    assert_eq!(chats(&mut dan, 1).await[0].seq, 6);
    a.shutdown().await;
    c.shutdown().await;
}

#[tokio::test]
async fn joiners_on_another_node_get_replay_then_live_without_gap_or_duplicate() {
    let redis = RedisServer::start();
    let (a, b) = (node(&[&redis], "a").await, node(&[&redis], "b").await);
    let mut ada = a.client("ada").await;
    ada.join("busy").await;
    const TOTAL: u64 = 90; // under `history` (100), so every since_seq is still retained
    for n in 1..=10 {
        ada.chat("busy", &format!("m{n}")).await;
    }
    chats(&mut ada, 10).await;
    // The rest is sent without waiting: the JOINs below land while it is being published.
    for n in 11..=TOTAL {
        ada.chat("busy", &format!("m{n}")).await;
    }
    let mut joiners = Vec::new();
    for (user, since) in [("dan", 0), ("eve", 3), ("fay", 9)] {
        let mut client = b.client(user).await;
        let joined = client.join_since("busy", since).await;
        joiners.push((client, since, joined.seq));
    }
    let joiner_count = joiners.len();
    for (i, (client, since, joined_seq)) in joiners.iter_mut().enumerate() {
        let (since, joined_seq) = (*since, *joined_seq);
        let first = if since == 0 {
            joined_seq.saturating_sub(4).max(1) // history_on_join = 5
        } else {
            since + 1
        };
        // The later joiners' JOINs come in among the CHATs, or after the last one when the
        // CHATs were all published before those JOINs: read them too, so that the silence
        // below is about duplicates only.
        let mut seen = Vec::new();
        let mut joins = 0;
        while seen.len() < (TOTAL - first + 1) as usize || joins < joiner_count - 1 - i {
            let message = client.next().await;
            match message.kind() {
                Kind::Chat => seen.push(message),
                Kind::Join => joins += 1,
                _ => panic!("{}: unexpected {message:?}", client.user),
            }
        }
        let expected: Vec<u64> = (first..=TOTAL).collect();
        let who = format!("{} (since {since}, joined at {joined_seq})", client.user);
        assert_eq!(seqs(&seen), expected, "{who}");
        for message in &seen {
            assert_eq!(
                message.replay,
                message.seq <= joined_seq,
                "{who}: {message:?}"
            );
            assert_eq!(message.content, format!("m{}", message.seq));
        }
    }
    for (client, _, _) in &mut joiners {
        client.expect_silence().await; // nothing twice
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_quiet_rooms_epoch_from_a_join_on_one_node_is_kept_by_the_first_chat_on_another() {
    let redis = RedisServer::start();
    let (a, b) = (node(&[&redis], "a").await, node(&[&redis], "b").await);
    let mut ada = a.client("ada").await;
    let epoch = ada.join("quiet").await.epoch;
    assert_eq!(epoch.len(), 16, "JOINED carries an epoch before any CHAT");
    let mut bob = b.client("bob").await;
    assert_eq!(bob.join("quiet").await.epoch, epoch);
    // More than history_on_join (5), all in the epoch ada was told.
    for n in 1..=8 {
        bob.chat("quiet", &format!("m{n}")).await;
    }
    let acks = chats(&mut bob, 8).await;
    assert!(acks.iter().all(|m| m.epoch == epoch), "{acks:?}");
    assert!(chats(&mut ada, 8).await.iter().all(|m| m.epoch == epoch));
    // A member that saw none of them resumes on the other node from the epoch's start.
    let mut cy = b.client("cy").await;
    let joined = cy.join_resuming("quiet", 0, &epoch).await;
    assert_eq!((joined.seq, joined.replay_truncated), (8, false));
    assert_eq!(seqs(&chats(&mut cy, 8).await), (1..=8).collect::<Vec<_>>());
    cy.expect_silence().await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn an_announcement_reaches_every_node_with_the_next_seq() {
    use chatrooms::proto::admin::{AnnounceRequest, admin_service_client::AdminServiceClient};
    let redis = RedisServer::start();
    let token = "cluster-admin-token-0123456789";
    let urls = vec![redis.url()];
    let with_admin =
        |node: &str| format!("{}[admin]\ntoken = \"{token}\"\n", node_config(&urls, node));
    let a = TestServer::start(&with_admin("a")).await;
    let b = TestServer::start(&with_admin("b")).await;
    wait_health(&a, ServingStatus::Serving).await;
    wait_health(&b, ServingStatus::Serving).await;
    let mut ada = a.client("ada").await;
    let mut bob = b.client("bob").await;
    ada.join("r").await;
    bob.join("r").await;
    ada.chat("r", "first").await;
    chats(&mut ada, 1).await;
    chats(&mut bob, 1).await;

    let mut admin = AdminServiceClient::new(a.channel().await);
    let mut request = tonic::Request::new(AnnounceRequest {
        room: "r".into(),
        content: "maintenance".into(),
    });
    let bearer = format!("Bearer {token}").parse().unwrap();
    request.metadata_mut().insert("authorization", bearer);
    let announced = admin.announce(request).await.unwrap().into_inner();
    assert_eq!(announced.seq, 2);
    for member in [&mut ada, &mut bob] {
        let chat = chats(member, 1).await.remove(0);
        assert_eq!((chat.user.as_str(), chat.seq), ("system", 2));
        assert_eq!(chat.id, announced.id);
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn presence_changes_during_a_pubsub_cut_are_announced_exactly_once() {
    let redis = RedisServer::start();
    let (a, b) = (node(&[&redis], "a").await, node(&[&redis], "b").await);
    let mut ada = a.client("ada").await;
    ada.join("r").await;
    let mut zed = b.client("zed").await;
    zed.join("r").await;
    assert_eq!(ada.expect(Kind::Join).await.user, "zed");
    let mut amy = a.client("amy").await; // on ada's own node
    amy.join("r").await;
    assert_eq!(ada.expect(Kind::Join).await.user, "amy");
    assert_eq!(zed.expect(Kind::Join).await.user, "amy");

    // Cut every subscriber, then change presence on node b at once: the events may be lost on
    // the way (then the re-sync announces the difference) or arrive (then it adds nothing).
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut conn)
        .await
        .unwrap();
    zed.send_kind(Kind::Leave, "r").await;
    zed.expect(Kind::Left).await;
    let mut cat = b.client("cat").await;
    cat.join("r").await;
    amy.send_kind(Kind::Leave, "r").await; // a change on ada's own node
    amy.until(|m| m.kind() == Kind::Left).await;

    let mut seen = Vec::new();
    while seen.len() < 3 {
        let event = ada.next().await;
        seen.push((event.kind(), event.user));
    }
    seen.sort();
    let expected = vec![
        (Kind::Join, "cat".to_string()),
        (Kind::Leave, "amy".to_string()),
        (Kind::Leave, "zed".to_string()),
    ];
    assert_eq!(seen, expected);
    ada.expect_silence_for(Duration::from_millis(600)).await; // nothing twice
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_room_opened_while_redis_is_down_serves_joins_once_it_is_back() {
    let mut redis = RedisServer::start();
    // A long TTL: the room's periodic refresh must not be what subscribes it again.
    let a = TestServer::start(&node_config_ttl(&[redis.url()], "a", 60_000)).await;
    wait_health(&a, ServingStatus::Serving).await;
    let mut ada = a.client("ada").await;
    redis.stop();
    wait_health(&a, ServingStatus::NotServing).await;
    ada.send_kind(Kind::Join, "late").await;
    let refused = ada.until(|m| m.kind() == Kind::Error).await;
    assert_eq!(refused.code, "unavailable", "{refused:?}");

    redis.start_again();
    wait_health(&a, ServingStatus::Serving).await;
    let joined = ada.join("late").await;
    assert_eq!(
        (joined.seq, joined.members.clone()),
        (0, vec!["ada".to_string()])
    );
    ada.chat("late", "made it").await;
    assert_eq!(chats(&mut ada, 1).await[0].seq, 1);
    a.shutdown().await;
}

#[tokio::test]
async fn a_quick_leave_and_rejoin_never_shows_a_member_its_own_leave() {
    let redis = RedisServer::start();
    let a = node(&[&redis], "a").await;
    let mut ada = a.client("ada").await;
    let mut bob = a.client("bob").await;
    ada.join("r").await;
    bob.join("r").await;
    assert_eq!(ada.expect(Kind::Join).await.user, "bob");
    for _ in 0..5 {
        bob.send_kind(Kind::Leave, "r").await;
        bob.expect(Kind::Left).await;
        bob.join("r").await;
        assert_eq!(ada.expect(Kind::Leave).await.user, "bob");
        assert_eq!(ada.expect(Kind::Join).await.user, "bob");
    }
    bob.expect_silence().await; // its own LEAVE and JOIN echoes never reach it
    ada.expect_silence().await;
    a.shutdown().await;
}

#[tokio::test]
async fn concurrent_joins_on_two_nodes_give_every_member_a_consistent_presence_view() {
    let redis = RedisServer::start();
    let nodes = [node(&[&redis], "a").await, node(&[&redis], "b").await];
    let users: Vec<String> = (0..10).map(|n| format!("u{n}")).collect();
    let mut clients = Vec::new();
    for (n, user) in users.iter().enumerate() {
        clients.push(nodes[n % 2].client(user).await);
    }
    // Every JOIN is sent before any answer is read, so they race on both nodes.
    for client in &mut clients {
        client.send_kind(Kind::Join, "crowd").await;
    }
    let everyone: std::collections::BTreeSet<String> = users.iter().cloned().collect();
    for client in &mut clients {
        let joined = client.until(|m| m.kind() == Kind::Joined).await;
        let mut view: std::collections::BTreeSet<String> = joined.members.into_iter().collect();
        while view != everyone {
            let event = client.next().await;
            match event.kind() {
                Kind::Join => assert!(
                    view.insert(event.user.clone()),
                    "{}: JOIN of {} already listed",
                    client.user,
                    event.user
                ),
                Kind::Leave => panic!("{}: LEAVE of {} (nobody left)", client.user, event.user),
                _ => panic!("{}: unexpected {event:?}", client.user),
            }
        }
    }
    for client in &mut clients {
        client.expect_silence().await; // no presence twice
    }
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test]
async fn a_room_whose_seq_redis_lost_follows_redis_instead_of_dropping_chats() {
    let redis = RedisServer::start();
    let (a, b) = (node(&[&redis], "a").await, node(&[&redis], "b").await);
    let mut ada = a.client("ada").await;
    let mut bob = b.client("bob").await;
    ada.join("r").await;
    bob.join("r").await;
    ada.expect(Kind::Join).await;
    for n in 1..=3 {
        ada.chat("r", &format!("old {n}")).await;
    }
    let old = chats(&mut ada, 3).await;
    assert_eq!(seqs(&old), [1, 2, 3]);
    assert_eq!(seqs(&chats(&mut bob, 3).await), [1, 2, 3]);
    let old_epoch = old[2].epoch.clone();

    // What an expiry or a FLUSHALL does to the room's count and history.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys = chatrooms::cluster::keys::RoomKeys::new("r");
    let _: i64 = redis::cmd("DEL")
        .arg(&keys.seq)
        .arg(&keys.log)
        .query_async(&mut conn)
        .await
        .unwrap();
    let r#ref = ada.chat("r", "after the loss").await;
    for member in [&mut ada, &mut bob] {
        let got = chats(member, 1).await;
        assert_eq!(
            (got[0].seq, got[0].content.as_str()),
            (1, "after the loss"),
            "{}",
            member.user
        );
        assert_ne!(got[0].epoch, old_epoch, "a new count, a new epoch");
        if member.user == "ada" {
            assert_eq!(got[0].r#ref, r#ref, "the sender's ack survives");
        }
    }
    // And the room goes on from there.
    bob.chat("r", "next").await;
    assert_eq!(chats(&mut ada, 1).await[0].seq, 2);
    assert_eq!(chats(&mut bob, 1).await[0].seq, 2);
    // A client that saw old 3 resumes: its since_seq is void, the new count is replayed.
    let mut cy = b.client("cy").await;
    let joined = cy.join_resuming("r", 3, &old_epoch).await;
    assert!(joined.replay_truncated, "{joined:?}");
    assert_eq!((joined.seq, joined.epoch == old_epoch), (2, false));
    assert_eq!(seqs(&chats(&mut cy, 2).await), [1, 2]);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn retention_comes_from_the_config_and_members_keep_a_quiet_room_alive() {
    let redis = RedisServer::start();
    let config = node_config(&[redis.url()], "a")
        .replace("[cluster]\n", "[cluster]\nretention_secs = 120\n");
    let a = TestServer::start(&config).await;
    wait_health(&a, ServingStatus::Serving).await;
    let mut ada = a.client("ada").await;
    ada.join("r").await;
    ada.chat("r", "hello").await;
    chats(&mut ada, 1).await;

    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys = chatrooms::cluster::keys::RoomKeys::new("r");
    let reader = conn.clone();
    let pttl = |key: String| {
        let mut conn = reader.clone();
        async move {
            redis::cmd("PTTL")
                .arg(key)
                .query_async::<i64>(&mut conn)
                .await
                .unwrap()
        }
    };
    for key in [&keys.seq, &keys.log] {
        let left = pttl(key.clone()).await;
        assert!(left > 60_000 && left <= 120_000, "{key}: {left}");
    }
    // As if the room had been quiet for almost the whole retention: the next presence refresh
    // (every third of the 900 ms TTL) gives it the full retention again, because ada is there.
    for key in [&keys.seq, &keys.log] {
        let _: i64 = redis::cmd("PEXPIRE")
            .arg(key)
            .arg(5_000)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let deadline = Instant::now() + WAIT;
    while pttl(keys.seq.clone()).await <= 60_000 || pttl(keys.log.clone()).await <= 60_000 {
        assert!(
            Instant::now() < deadline,
            "the refresh never extended the retention"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.shutdown().await;
}

#[tokio::test]
async fn a_chat_whose_publish_timed_out_still_arrives_with_its_ref_if_redis_ran_it() {
    let redis = RedisServer::start();
    let (a, b) = (node(&[&redis], "a").await, node(&[&redis], "b").await);
    let mut ada = a.client("ada").await;
    let mut bob = b.client("bob").await;
    ada.join("r").await;
    bob.join("r").await;
    ada.expect(Kind::Join).await;
    ada.chat("r", "before").await;
    chats(&mut ada, 1).await;
    chats(&mut bob, 1).await;

    // Redis frozen: the publish is sent but not answered within the node's timeout, so the
    // outcome is unknown when the node has to answer.
    redis.pause();
    let r#ref = ada.chat("r", "in the dark").await;
    let error = ada.expect_error("unavailable").await;
    assert_eq!(error.r#ref, r#ref);
    assert!(
        error.content.contains("may still be delivered"),
        "{error:?}"
    );
    // Redis wakes up and runs what it was sent: the CHAT reaches everyone, the sender with its
    // ref (its ack, after the ERROR), exactly once.
    redis.resume();
    let late = chats(&mut ada, 1).await;
    assert_eq!(
        (
            late[0].seq,
            late[0].content.as_str(),
            late[0].r#ref.as_str()
        ),
        (2, "in the dark", r#ref.as_str())
    );
    assert_eq!(chats(&mut bob, 1).await[0].seq, 2);
    ada.chat("r", "after").await;
    assert_eq!(seqs(&chats(&mut ada, 1).await), [3]);
    assert_eq!(seqs(&chats(&mut bob, 1).await), [3]);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn max_sessions_per_user_counts_the_sessions_of_every_node() {
    let redis = RedisServer::start();
    let limited =
        |name: &str| node_config(&[redis.url()], name) + "[server]\nmax_sessions_per_user = 1\n";
    let a = TestServer::start(&limited("a")).await;
    let b = TestServer::start(&limited("b")).await;
    wait_health(&a, ServingStatus::Serving).await;
    wait_health(&b, ServingStatus::Serving).await;
    let mut ada = a.client("ada").await;
    ada.join("r").await;

    // Her second session, through the other node, is over the limit.
    let mut second = b.client("ada").await;
    second.send_kind(Kind::Join, "r").await;
    let status = second.expect_end(tonic::Code::ResourceExhausted).await;
    assert!(
        status.message().contains("max_sessions_per_user (1)"),
        "{status:?}"
    );
    // Other users are not affected.
    let mut bob = b.client("bob").await;
    bob.join("r").await;

    // Her place is renewed while she stays (so it outlives no node by more than the TTL).
    let client = redis::Client::open(redis.url()).unwrap();
    let conn = client.get_multiplexed_async_connection().await.unwrap();
    let expiry = || {
        let mut conn = conn.clone();
        async move {
            let places: Vec<(String, u64)> = redis::cmd("ZRANGE")
                .arg("chat:user:{ada}:sessions")
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .query_async(&mut conn)
                .await
                .unwrap();
            assert_eq!(places.len(), 1, "{places:?}");
            assert!(places[0].0.starts_with("a|"), "{places:?}");
            places[0].1
        }
    };
    let first = expiry().await;
    let deadline = Instant::now() + WAIT;
    while expiry().await <= first {
        assert!(Instant::now() < deadline, "the place was never renewed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A place Redis lost (restart without persistence, an outage past the TTL) is written back.
    let _: i64 = redis::cmd("DEL")
        .arg("chat:user:{ada}:sessions")
        .query_async(&mut conn.clone())
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let places: i64 = redis::cmd("ZCARD")
            .arg("chat:user:{ada}:sessions")
            .query_async(&mut conn.clone())
            .await
            .unwrap();
        if places == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lost place was never written back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut third = b.client("ada").await;
    third.send_kind(Kind::Join, "r").await;
    third.expect_end(tonic::Code::ResourceExhausted).await;

    // Once her first session is gone, a new one is let in on either node (bounded retries: the
    // place is given back in the background).
    ada.abort();
    let deadline = Instant::now() + WAIT;
    let _back = loop {
        let mut again = b.client("ada").await;
        again.send_kind(Kind::Join, "r").await;
        match again.next_or_status().await {
            Ok(reply) if reply.kind() == Kind::Joined => break again,
            Ok(reply) => panic!("unexpected {reply:?}"),
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                assert!(Instant::now() < deadline, "ada was never let back in");
            }
        }
    };
    // A node that stops cleanly gives its places back before it exits: at once, ada may
    // connect to the other node.
    b.shutdown().await;
    let mut after = a.client("ada").await;
    after.join("r").await;
    a.shutdown().await;
}

/// Resend safety across nodes: the `ref` lives with the room in Redis, so a client that lost
/// its connection to one node and resends to another gets the original ack, and the room holds
/// the CHAT once.
#[tokio::test]
async fn a_ref_resent_to_the_other_node_is_deduplicated() {
    let redis = RedisServer::start();
    let (a, b) = (node(&[&redis], "a").await, node(&[&redis], "b").await);
    let mut ada = a.client("ada").await;
    let mut bob = b.client("bob").await;
    ada.join("r").await;
    bob.join("r").await;
    ada.expect(Kind::Join).await;
    ada.chat_with_ref("r", "typed once", "k-1").await;
    let original = chats(&mut ada, 1).await.remove(0);
    assert_eq!((original.seq, original.r#ref.as_str()), (1, "k-1"));
    assert_eq!(chats(&mut bob, 1).await[0].id, original.id);
    drop(ada);
    // Her old session's LEAVE is through (bob, on node b, heard it) before she is back, so it
    // cannot reach her new session on node b.
    bob.until(|m| m.kind() == Kind::Leave).await;

    // Ada comes back on node b, resumes the room, and resends what she never saw acked.
    let mut again = b.client("ada").await;
    let joined = again.join_resuming("r", 0, "").await;
    assert_eq!(joined.epoch, original.epoch);
    assert_eq!(chats(&mut again, 1).await[0].id, original.id, "the backlog");
    again.chat_with_ref("r", "typed once", "k-1").await;
    let ack = again.expect(Kind::Chat).await;
    assert_eq!(ack, original, "the original ack from the other node");
    // Nobody else heard anything, and the room holds it once.
    again.chat("r", "and then").await;
    assert_eq!(chats(&mut again, 1).await[0].seq, 2);
    let after = chats(&mut bob, 1).await;
    assert_eq!((after[0].seq, after[0].content.as_str()), (2, "and then"));
    let mut cy = a.client("cy").await;
    cy.join("r").await;
    let backlog = chats(&mut cy, 2).await;
    assert_eq!(seqs(&backlog), [1, 2]);
    cy.expect_silence().await;
    a.shutdown().await;
    b.shutdown().await;
}

/// A resend answered by the dedup key can reach a node before that node has delivered the
/// original (or the CHATs before it): its echo is still on the way, or was lost with the
/// node's subscription and waits for the re-sync. The original ack must not overtake them, or
/// a client that drops seqs it has seen would drop those CHATs: it comes with the original's
/// fan-out, in seq order. Here the node's subscriber is kept away (Redis refuses its
/// reconnect) while the CHATs are posted by another engine.
#[tokio::test]
async fn a_resend_ack_never_overtakes_chats_the_node_has_not_delivered() {
    use bytes::Bytes;
    use chatrooms::{
        cluster::{Dedup, Posted, RedisEngine, Timeouts},
        names::SessionId,
    };
    use prost::Message as _;

    let redis = RedisServer::start();
    let a = node(&[&redis], "a").await;
    let mut ada = a.client("ada").await;
    let mut bob = a.client("bob").await;
    ada.join("r").await;
    bob.join("r").await;
    ada.expect(Kind::Join).await;
    let other = RedisEngine::new(
        &[redis.url()],
        "other",
        Timeouts {
            response: Duration::from_secs(2),
            connect: Duration::from_secs(2),
        },
    )
    .unwrap();
    assert_eq!(
        tokio::time::timeout(WAIT, other.last_seq("r"))
            .await
            .unwrap(),
        Ok(0)
    );

    // Cut node a's subscriber and keep it from coming back: Redis takes no more connections
    // than those open now, less the subscriber's.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO")
        .arg("clients")
        .query_async(&mut conn)
        .await
        .unwrap();
    let connected: usize = info
        .lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let subscribers: String = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut conn)
        .await
        .unwrap();
    let subscribers = subscribers.lines().count();
    assert!(subscribers > 0);
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxclients")
        .arg(connected - subscribers)
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut conn)
        .await
        .unwrap();

    // Meanwhile someone posts, then ada's CHAT is posted with her ref (as if through a node
    // she has since lost): node a has delivered neither.
    let post = |id: &str, user: &str, content: &str, dedup: Option<Dedup>| {
        let body = Message {
            kind: Kind::Chat.into(),
            user: user.into(),
            room: "r".into(),
            content: content.into(),
            id: id.into(),
            ..Message::default()
        }
        .encode_to_vec();
        let (other, id) = (other.clone(), id.to_string());
        async move {
            let posting = other.post_chat("r", 100, &id, SessionId(1), Bytes::from(body), dedup);
            tokio::time::timeout(WAIT, posting).await.unwrap().unwrap()
        }
    };
    assert_eq!(post("id-1", "cy", "before", None).await, Posted::New(1));
    let dedup = |r#ref: &str| {
        Some(Dedup {
            user: "ada".into(),
            r#ref: r#ref.into(),
            window: Duration::from_secs(60),
        })
    };
    assert_eq!(
        post("id-2", "ada", "typed", dedup("k1")).await,
        Posted::New(2)
    );
    assert_eq!(
        post("id-3", "ada", "typed too", dedup("k2")).await,
        Posted::New(3)
    );
    // Ada resends on node a (the dedup key answers at once); so does another session of hers
    // that joined since, whose replay already holds both CHATs.
    ada.chat_with_ref("r", "typed", "k1").await;
    let mut again = a.client("ada").await;
    again.join("r").await;
    let replayed = chats(&mut again, 3).await;
    assert_eq!(seqs(&replayed), [1, 2, 3]);
    assert!(replayed.iter().all(|m| m.replay && m.r#ref.is_empty()));
    again.chat_with_ref("r", "typed too", "k2").await;

    // Redis takes connections again: node a re-subscribes and fetches what it missed.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxclients")
        .arg(10_000)
        .query_async(&mut conn)
        .await
        .unwrap();
    let refs = |seen: Vec<Message>| -> Vec<(u64, String)> {
        seen.into_iter().map(|m| (m.seq, m.r#ref)).collect()
    };
    let expected = [(1, ""), (2, "k1"), (3, "")].map(|(s, r)| (s, r.to_string()));
    assert_eq!(refs(chats(&mut ada, 3).await), expected);
    assert_eq!(refs(chats(&mut again, 1).await), [(3, "k2".to_string())]);
    let expected = [(1, ""), (2, ""), (3, "")].map(|(s, r)| (s, r.to_string()));
    assert_eq!(refs(chats(&mut bob, 3).await), expected);
    // Nothing twice: the next CHAT anyone sees is the next one.
    bob.chat("r", "after").await;
    for member in [&mut ada, &mut again, &mut bob] {
        let next = chats(member, 1).await.remove(0);
        assert_eq!((next.seq, next.content.as_str()), (4, "after"));
    }
    a.shutdown().await;
}
