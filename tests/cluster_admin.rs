//! The operator API over a cluster: whichever node is called, ListRooms and GetRoom see every
//! node's members (from Redis), Kick and CloseRoom reach the sessions of every node, and
//! Announce reaches a room from a node where it is not open — each observed from the members'
//! own streams on their own nodes.

mod common;

use std::{collections::HashSet, time::Duration};

use chatrooms::proto::{
    Kind,
    admin::{
        AnnounceRequest, CloseRoomRequest, GetRoomRequest, KickMode, KickRequest, ListRoomsRequest,
        kick_request::Target,
    },
};
use common::{
    TestServer, WAIT,
    admin::{Admin, TOKEN},
    redis::RedisServer,
};
use tokio::time::Instant;
use tonic::Code;

async fn admin(server: &TestServer) -> Admin {
    common::admin::admin(server, Some(TOKEN)).await
}

/// Starts `names.len()` nodes on `redis` and waits until each listens for operator requests.
async fn nodes(redis: &RedisServer, names: &[&str]) -> Vec<TestServer> {
    let mut servers = Vec::new();
    for name in names {
        servers.push(TestServer::start(&node_config(redis, name)).await);
    }
    wait_listeners(redis, names.len()).await;
    servers
}

/// Polls Redis (bounded) until `n` nodes are subscribed to the operator channel.
async fn wait_listeners(redis: &RedisServer, n: usize) {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, subscribers): (String, usize) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg("chat:admin")
            .query_async(&mut conn)
            .await
            .unwrap();
        if subscribers == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{subscribers} of {n} nodes listen"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn node_config(redis: &RedisServer, name: &str) -> String {
    format!(
        "[cluster]\nengine = \"redis\"\nredis_urls = [\"{}\"]\nnode_id = \"{name}\"\n\
         presence_ttl_ms = 3000\n[admin]\ntoken = \"{TOKEN}\"\n",
        redis.url()
    )
}

async fn shutdown(servers: Vec<TestServer>) {
    for server in servers {
        server.shutdown().await;
    }
}

#[tokio::test]
async fn get_room_and_list_rooms_see_every_node() {
    let redis = RedisServer::start();
    let servers = nodes(&redis, &["a", "b"]).await;
    let mut ada = servers[0].client("ada").await;
    let mut bob = servers[1].client("bob").await;
    let mut cy = servers[1].client("cy").await;
    ada.join("r").await;
    bob.join("r").await;
    ada.expect(Kind::Join).await;
    cy.join("other-x").await;
    ada.chat("r", "one").await;
    ada.expect(Kind::Chat).await;
    bob.expect(Kind::Chat).await;

    let room = admin(&servers[0])
        .await
        .get_room(GetRoomRequest {
            room: "r".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let summary = room.room.unwrap();
    assert_eq!((summary.members, summary.last_seq), (2, 1));
    let members: Vec<(&str, &str)> = room
        .members
        .iter()
        .map(|m| (m.user.as_str(), m.node.as_str()))
        .collect();
    assert_eq!(members, [("ada", "a"), ("bob", "b")]);
    let ids: HashSet<u64> = room.members.iter().map(|m| m.session_id).collect();
    assert_eq!(ids.len(), 2, "session ids are unique over the nodes");

    let mut from_b = admin(&servers[1]).await;
    let listed: Vec<(String, u32, u64)> = from_b
        .list_rooms(ListRoomsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .rooms
        .into_iter()
        .map(|r| (r.name, r.members, r.last_seq))
        .collect();
    assert_eq!(
        listed,
        [("other-x".to_string(), 1, 0), ("r".to_string(), 2, 1)]
    );
    let prefixed = from_b
        .list_rooms(ListRoomsRequest {
            prefix: "oth".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .rooms;
    assert_eq!(prefixed.len(), 1);
    assert_eq!(prefixed[0].name, "other-x");
    let missing = from_b
        .get_room(GetRoomRequest {
            room: "nobody-here".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    shutdown(servers).await;
}

#[tokio::test]
async fn kick_called_on_one_node_reaches_the_sessions_of_every_node() {
    let redis = RedisServer::start();
    let servers = nodes(&redis, &["a", "b"]).await;
    let mut bob = servers[0].client("bob").await;
    let mut ada = servers[0].client("ada").await;
    let mut ada_phone = servers[1].client("ada").await;
    let mut cy = servers[1].client("cy").await;
    bob.join("r").await;
    for client in [&mut ada, &mut ada_phone, &mut cy] {
        client.join("r").await;
        bob.expect(Kind::Join).await;
    }

    // Called on b: ada's session on a is ended too.
    let kicked = admin(&servers[1])
        .await
        .kick(KickRequest {
            target: Some(Target::User("ada".into())),
            mode: KickMode::Disconnect.into(),
            reason: "spam".into(),
            ..KickRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((kicked.sessions, kicked.nodes), (2, 2));
    for stream in [&mut ada, &mut ada_phone] {
        let status = stream.expect_end(Code::PermissionDenied).await;
        assert_eq!(status.message(), "kicked: spam");
    }
    for _ in 0..2 {
        let leave = bob.until(|m| m.kind() == Kind::Leave).await;
        assert_eq!(leave.user, "ada");
    }

    // By session id, found with GetRoom on one node and kicked through the other.
    let mut from_a = admin(&servers[0]).await;
    let cy_id = from_a
        .get_room(GetRoomRequest {
            room: "r".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .members
        .into_iter()
        .find(|m| m.user == "cy")
        .unwrap()
        .session_id;
    let kicked = from_a
        .kick(KickRequest {
            target: Some(Target::SessionId(cy_id)),
            room: "r".into(),
            mode: KickMode::Leave.into(),
            reason: "off-topic".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((kicked.sessions, kicked.nodes), (1, 2));
    let left = cy.until(|m| m.kind() == Kind::Left).await;
    assert_eq!(
        (left.room.as_str(), left.content.as_str()),
        ("r", "off-topic")
    );
    assert_eq!(bob.until(|m| m.kind() == Kind::Leave).await.user, "cy");
    // cy keeps its stream.
    cy.join("elsewhere").await;

    let nowhere = from_a
        .kick(KickRequest {
            target: Some(Target::User("bob".into())),
            room: "no-such-room".into(),
            mode: KickMode::Leave.into(),
            ..KickRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(nowhere.code(), Code::NotFound);
    bob.chat("r", "still here").await;
    assert_eq!(bob.expect(Kind::Chat).await.content, "still here");
    shutdown(servers).await;
}

#[tokio::test]
async fn announce_and_close_room_from_a_node_without_the_room() {
    let redis = RedisServer::start();
    let servers = nodes(&redis, &["a", "b", "c"]).await;
    let mut ada = servers[0].client("ada").await;
    let mut bob = servers[1].client("bob").await;
    ada.join("r").await;
    bob.join("r").await;
    ada.expect(Kind::Join).await;
    let mut from_c = admin(&servers[2]).await;

    let announced = from_c
        .announce(AnnounceRequest {
            room: "r".into(),
            content: "maintenance at noon".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(announced.seq, 1);
    for member in [&mut ada, &mut bob] {
        let chat = member.expect(Kind::Chat).await;
        assert_eq!(
            (chat.user.as_str(), chat.content.as_str(), chat.seq),
            ("system", "maintenance at noon", 1)
        );
        assert_eq!(chat.id, announced.id);
    }
    let nowhere = from_c
        .announce(AnnounceRequest {
            room: "empty".into(),
            content: "hello?".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(nowhere.code(), Code::NotFound);

    let closed = from_c
        .close_room(CloseRoomRequest {
            room: "r".into(),
            reason: "closing time".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((closed.members, closed.nodes), (2, 3));
    for member in [&mut ada, &mut bob] {
        let left = member.until(|m| m.kind() == Kind::Left).await;
        assert_eq!(
            (left.room.as_str(), left.content.as_str()),
            ("r", "closing time")
        );
    }
    // Presence is gone everywhere (each node removes its members right after it answered);
    // the room can be joined afresh, its history kept in Redis.
    let deadline = Instant::now() + WAIT;
    loop {
        match from_c
            .get_room(GetRoomRequest {
                room: "r".into(),
                ..Default::default()
            })
            .await
        {
            Err(status) if status.code() == Code::NotFound => break,
            other => assert!(Instant::now() < deadline, "still listed: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rejoined = bob.join("r").await;
    assert_eq!(
        (rejoined.seq, rejoined.members.clone()),
        (1, vec!["bob".to_string()])
    );
    shutdown(servers).await;
}

#[tokio::test]
async fn a_node_called_right_after_start_waits_for_its_own_operator_channel() {
    let redis = RedisServer::start();
    let server = TestServer::start(&node_config(&redis, "solo")).await;
    let mut client = admin(&server).await;
    let kick_ada = || KickRequest {
        target: Some(Target::User("ada".into())),
        mode: KickMode::Leave.into(),
        ..KickRequest::default()
    };
    // At once, with no wait for the listener: the call waits until this node listens, so it is
    // answered by this node instead of by nobody.
    let kicked = client.kick(kick_ada()).await.unwrap().into_inner();
    assert_eq!((kicked.sessions, kicked.nodes), (0, 1));
    let mut ada = server.client("ada").await;
    ada.join("r").await;
    let kicked = client.kick(kick_ada()).await.unwrap().into_inner();
    assert_eq!((kicked.sessions, kicked.nodes), (1, 1));
    assert_eq!(ada.expect(Kind::Left).await.room, "r");
    server.shutdown().await;
}

#[tokio::test]
async fn a_pattern_subscriber_on_redis_is_not_waited_for_as_a_node() {
    let redis = RedisServer::start();
    let servers = nodes(&redis, &["a", "b"]).await;
    // Someone watching every channel, as with `redis-cli PSUBSCRIBE 'chat:*'` while debugging:
    // it receives the request too, but will never answer.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut watcher = client.get_async_pubsub().await.unwrap();
    watcher.psubscribe("chat:*").await.unwrap();
    let mut ada = servers[1].client("ada").await;
    ada.join("r").await;
    // Well under the 9 s the caller would wait for a missing answer.
    let kicked = tokio::time::timeout(
        Duration::from_secs(4),
        admin(&servers[0]).await.kick(KickRequest {
            target: Some(Target::User("ada".into())),
            mode: KickMode::Leave.into(),
            ..KickRequest::default()
        }),
    )
    .await
    .expect("the call returns once both nodes answered")
    .unwrap()
    .into_inner();
    assert_eq!((kicked.sessions, kicked.nodes), (1, 2));
    assert_eq!(ada.expect(Kind::Left).await.room, "r");
    drop(watcher);
    shutdown(servers).await;
}
