//! The operator API (`chat.v1.AdminService`): the token check (missing, wrong, disabled, rotated
//! on reload), ListRooms and GetRoom against real rooms, Kick in both modes by user and by session
//! id, CloseRoom and Announce — each observed from the members' own streams.

mod common;

use chatrooms::{
    Config,
    proto::{
        Kind,
        admin::{
            AnnounceRequest, CloseRoomRequest, GetRoomRequest, KickMode, KickRequest,
            ListRoomsRequest, kick_request::Target,
        },
    },
};
use common::{
    TestServer, WAIT,
    admin::{Admin, TOKEN, admin},
};
use std::time::{Duration, Instant};

use tonic::{Code, Status};

const WITH_TOKEN: &str = "[admin]\ntoken = \"test-admin-token-0123456789\"\n";

/// Runs each of the five calls and returns their status codes (the calls' arguments are valid,
/// so only the token decides).
async fn every_call(client: &mut Admin) -> Vec<Code> {
    let code = |r: Result<(), Status>| r.map_or_else(|s| s.code(), |()| Code::Ok);
    let room = || "lobby".to_string();
    vec![
        code(
            client
                .list_rooms(ListRoomsRequest::default())
                .await
                .map(drop),
        ),
        code(
            client
                .get_room(GetRoomRequest {
                    room: room(),
                    ..Default::default()
                })
                .await
                .map(drop),
        ),
        code(
            client
                .kick(KickRequest {
                    target: Some(Target::User("nobody".into())),
                    mode: KickMode::Leave.into(),
                    ..KickRequest::default()
                })
                .await
                .map(drop),
        ),
        code(
            client
                .announce(AnnounceRequest {
                    room: room(),
                    content: "hi".into(),
                })
                .await
                .map(drop),
        ),
        code(
            client
                .close_room(CloseRoomRequest {
                    room: room(),
                    ..CloseRoomRequest::default()
                })
                .await
                .map(drop),
        ),
    ]
}

#[tokio::test]
async fn every_call_needs_the_token() {
    // 15 refusals below: more than the default max_failed_auth would let through unthrottled.
    let server = TestServer::start(&format!("{WITH_TOKEN}max_failed_auth = 20\n")).await;
    let mut ada = server.client("ada").await;
    ada.join("lobby").await;

    let missing = every_call(&mut admin(&server, None).await).await;
    assert_eq!(missing, vec![Code::Unauthenticated; 5]);
    let wrong = every_call(&mut admin(&server, Some("test-admin-token-0123456780")).await).await;
    assert_eq!(wrong, vec![Code::PermissionDenied; 5]);
    let prefix = every_call(&mut admin(&server, Some("test-admin-token")).await).await;
    assert_eq!(prefix, vec![Code::PermissionDenied; 5]);
    ada.expect_silence().await; // nothing was announced, closed or kicked

    // With the token every call runs; the close comes last so the others find the room.
    let allowed = every_call(&mut admin(&server, Some(TOKEN)).await).await;
    assert_eq!(allowed, vec![Code::Ok; 5]);
    assert_eq!(ada.expect(Kind::Chat).await.user, "system");
    assert_eq!(ada.expect(Kind::Left).await.room, "lobby");
    server.shutdown().await;
}

#[tokio::test]
async fn without_a_configured_token_the_api_is_off() {
    let server = TestServer::start("[admin]\nmax_failed_auth = 20\n").await;
    for token in [None, Some(""), Some(TOKEN)] {
        let codes = every_call(&mut admin(&server, token).await).await;
        assert_eq!(codes, vec![Code::PermissionDenied; 5], "token {token:?}");
    }
    server.shutdown().await;
}

#[tokio::test]
async fn a_reloaded_token_replaces_the_old_one_at_once() {
    let server = TestServer::start(WITH_TOKEN).await;
    let rotated = "rotated-admin-token-9876543210";
    let mut config = Config::parse(&format!("[admin]\ntoken = \"{rotated}\"\n"), "r.toml").unwrap();
    config.metrics.listen.clear(); // as the test server runs it
    let restart = chatrooms::server::apply_reload(&server.hub, config);
    assert!(restart.is_empty(), "the token is live: {restart:?}");
    let old = every_call(&mut admin(&server, Some(TOKEN)).await).await;
    assert_eq!(old, vec![Code::PermissionDenied; 5]);
    let mut new = admin(&server, Some(rotated)).await;
    assert!(new.list_rooms(ListRoomsRequest::default()).await.is_ok());
    server.shutdown().await;
}

async fn list(client: &mut Admin) -> Result<(), Status> {
    client
        .list_rooms(ListRoomsRequest::default())
        .await
        .map(drop)
}

#[tokio::test]
async fn failed_authentication_is_throttled_per_address_until_its_interval_is_over() {
    let server = TestServer::start(&format!(
        "{WITH_TOKEN}max_failed_auth = 10\nfailed_auth_interval_ms = 2000\n"
    ))
    .await;
    let mut wrong = admin(&server, Some("test-admin-token-0123456780")).await;
    let mut right = admin(&server, Some(TOKEN)).await;
    let first_failure = Instant::now();
    for n in 1..=10 {
        let refused = list(&mut wrong).await.unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "failure {n}");
    }
    let throttled = list(&mut wrong).await.unwrap_err();
    assert_eq!(throttled.code(), Code::ResourceExhausted, "{throttled:?}");
    assert!(
        throttled.message().contains("too many failed"),
        "{throttled:?}"
    );
    // Not even the right token is looked at while the address is throttled.
    let throttled = list(&mut right).await.unwrap_err();
    assert_eq!(throttled.code(), Code::ResourceExhausted, "{throttled:?}");

    // Throttled calls do not extend it: retrying, the right token passes once the interval,
    // counted from the first failure, is over.
    let deadline = Instant::now() + WAIT;
    loop {
        match list(&mut right).await {
            Ok(_) => break,
            Err(status) => assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}"),
        }
        assert!(Instant::now() < deadline, "still throttled after {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        first_failure.elapsed() >= Duration::from_millis(2000),
        "throttled for less than the interval: {:?}",
        first_failure.elapsed()
    );
    // A new window: a wrong token is checked (and refused) again.
    let refused = list(&mut wrong).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    server.shutdown().await;
}

#[tokio::test]
async fn throttle_settings_are_validated() {
    for bad in [
        "failed_auth_interval_ms = 0",
        "failed_auth_interval_ms = 3600001",
    ] {
        let error = Config::parse(&format!("[admin]\n{bad}\n"), "a.toml").unwrap_err();
        assert!(
            error.to_string().contains("admin.failed_auth_interval_ms"),
            "{error}"
        );
    }
    let config = Config::parse("", "a.toml").unwrap();
    assert_eq!(config.admin.max_failed_auth, 10);
    assert_eq!(config.admin.failed_auth_interval_ms, 6000);
}

#[tokio::test]
async fn short_tokens_are_refused_at_load() {
    let error = Config::parse("[admin]\ntoken = \"short\"\n", "a.toml").unwrap_err();
    assert!(error.to_string().contains("admin.token"), "{error}");
}

#[tokio::test]
async fn list_rooms_and_get_room_report_members_and_seq() {
    let server = TestServer::start(WITH_TOKEN).await;
    let (mut ada, mut bob) = server.pair_in("team-a", "ada", "bob").await;
    let mut carol = server.client("carol").await;
    carol.join("team-b").await;
    for text in ["one", "two"] {
        ada.chat("team-a", text).await;
        ada.expect(Kind::Chat).await;
        bob.expect(Kind::Chat).await;
    }
    let mut client = admin(&server, Some(TOKEN)).await;

    let rooms = client
        .list_rooms(ListRoomsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .rooms;
    let summary: Vec<_> = rooms
        .iter()
        .map(|r| (r.name.as_str(), r.members, r.last_seq))
        .collect();
    assert_eq!(summary, vec![("team-a", 2, 2), ("team-b", 1, 0)]);
    let only_b = client
        .list_rooms(ListRoomsRequest {
            prefix: "team-b".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .rooms;
    assert_eq!(only_b.len(), 1);
    assert_eq!(only_b[0].name, "team-b");

    let room = client
        .get_room(GetRoomRequest {
            room: "team-a".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let summary = room.room.unwrap();
    assert_eq!((summary.members, summary.last_seq), (2, 2));
    let users: Vec<_> = room.members.iter().map(|m| m.user.as_str()).collect();
    assert_eq!(users, vec!["ada", "bob"]);
    assert_ne!(room.members[0].session_id, room.members[1].session_id);
    assert!(room.members.iter().all(|m| m.session_id > 0));

    let missing = client
        .get_room(GetRoomRequest {
            room: "nowhere".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let invalid = client
        .get_room(GetRoomRequest {
            room: "two words".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument);
    server.shutdown().await;
}

#[tokio::test]
async fn list_rooms_and_get_room_page_through_everything_once() {
    let server = TestServer::start(WITH_TOKEN).await;
    let mut members = Vec::new();
    // Five rooms p-0..p-4; p-0 gets five members (two of them "ada").
    for (n, user) in ["ada", "ada", "bob", "cy", "dee"].into_iter().enumerate() {
        let mut client = server.client(user).await;
        client.join("p-0").await;
        if n > 0 {
            client.join(&format!("p-{n}")).await;
        }
        members.push(client);
    }
    let mut client = admin(&server, Some(TOKEN)).await;

    let mut names = Vec::new();
    let mut token = String::new();
    for pages in 1.. {
        let reply = client
            .list_rooms(ListRoomsRequest {
                prefix: "p-".into(),
                page_size: 2,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(reply.rooms.len() <= 2);
        names.extend(reply.rooms.into_iter().map(|r| r.name));
        token = reply.next_page_token;
        if token.is_empty() {
            assert_eq!(pages, 3, "5 rooms in pages of 2");
            break;
        }
    }
    assert_eq!(names, ["p-0", "p-1", "p-2", "p-3", "p-4"]);

    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let reply = client
            .get_room(GetRoomRequest {
                room: "p-0".into(),
                page_size: 2,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            reply.room.unwrap().members,
            5,
            "the summary counts every member"
        );
        assert!(reply.members.len() <= 2);
        seen.extend(reply.members.into_iter().map(|m| (m.user, m.session_id)));
        token = reply.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    let users: Vec<&str> = seen.iter().map(|(user, _)| user.as_str()).collect();
    assert_eq!(users, ["ada", "ada", "bob", "cy", "dee"]);
    let mut ids: Vec<u64> = seen.iter().map(|(_, id)| *id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 5, "no member twice across pages");

    let bad = client
        .get_room(GetRoomRequest {
            room: "p-0".into(),
            page_size: 2,
            page_token: "not-a-token".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    server.shutdown().await;
}

#[tokio::test]
async fn kick_disconnect_ends_every_stream_of_the_user_and_the_others_see_leave() {
    let server = TestServer::start(WITH_TOKEN).await;
    let (mut ada, mut bob) = server.pair_in("r", "ada", "bob").await;
    let mut ada_phone = server.client("ada").await;
    ada_phone.join("r").await;
    bob.expect(Kind::Join).await;
    ada.expect(Kind::Join).await;

    let kicked = admin(&server, Some(TOKEN))
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
    assert_eq!(kicked.sessions, 2);
    for stream in [&mut ada, &mut ada_phone] {
        let status = stream.expect_end(Code::PermissionDenied).await;
        assert_eq!(status.message(), "kicked: spam");
    }
    for _ in 0..2 {
        let leave = bob.expect(Kind::Leave).await;
        assert_eq!((leave.user.as_str(), leave.room.as_str()), ("ada", "r"));
    }
    // Bob is untouched.
    bob.chat("r", "still here").await;
    assert_eq!(bob.expect(Kind::Chat).await.content, "still here");
    server.shutdown().await;
}

#[tokio::test]
async fn kick_leave_by_session_id_removes_one_membership_and_keeps_the_stream() {
    let server = TestServer::start(WITH_TOKEN).await;
    let (mut ada, mut bob) = server.pair_in("r1", "ada", "bob").await;
    ada.join("r2").await;
    let mut client = admin(&server, Some(TOKEN)).await;
    let members = client
        .get_room(GetRoomRequest {
            room: "r1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .members;
    let ada_id = members.iter().find(|m| m.user == "ada").unwrap().session_id;

    let kicked = client
        .kick(KickRequest {
            target: Some(Target::SessionId(ada_id)),
            room: "r1".into(),
            mode: KickMode::Leave.into(),
            reason: "off-topic".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kicked.sessions, 1);
    let left = ada.expect(Kind::Left).await;
    assert_eq!(
        (left.room.as_str(), left.content.as_str()),
        ("r1", "off-topic")
    );
    let leave = bob.expect(Kind::Leave).await;
    assert_eq!((leave.user.as_str(), leave.room.as_str()), ("ada", "r1"));

    // The stream and the other membership carry on; the kicked one is gone.
    ada.chat("r2", "hello r2").await;
    assert_eq!(ada.expect(Kind::Chat).await.room, "r2");
    ada.chat("r1", "back?").await;
    ada.expect_error("not_a_member").await;
    bob.expect_silence().await;
    server.shutdown().await;
}

#[tokio::test]
async fn kick_leave_from_the_server_leaves_every_room() {
    let server = TestServer::start(WITH_TOKEN).await;
    let mut ada = server.client("ada").await;
    for room in ["r1", "r2"] {
        ada.join(room).await;
        // A CHAT gives each room something to keep, so it stays open (empty) after the kick
        // instead of stopping at once.
        ada.chat(room, "hi").await;
        ada.expect(Kind::Chat).await;
    }
    let kicked = admin(&server, Some(TOKEN))
        .await
        .kick(KickRequest {
            target: Some(Target::User("ada".into())),
            mode: KickMode::Leave.into(),
            ..KickRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kicked.sessions, 1);
    let mut rooms = vec![
        ada.expect(Kind::Left).await.room,
        ada.expect(Kind::Left).await.room,
    ];
    rooms.sort();
    assert_eq!(rooms, vec!["r1", "r2"]);
    let mut client = admin(&server, Some(TOKEN)).await;
    for room in ["r1", "r2"] {
        let summary = client
            .get_room(GetRoomRequest {
                room: room.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(summary.room.unwrap().members, 0, "{room}");
    }
    ada.send_kind(Kind::Ping, "").await;
    ada.expect(Kind::Pong).await;
    server.shutdown().await;
}

#[tokio::test]
async fn kick_requests_need_a_target_a_mode_and_a_short_reason() {
    let server = TestServer::start(WITH_TOKEN).await;
    let mut client = admin(&server, Some(TOKEN)).await;
    let ada = || Some(Target::User("ada".into()));
    for (what, request) in [
        (
            "no target",
            KickRequest {
                mode: KickMode::Leave.into(),
                ..KickRequest::default()
            },
        ),
        (
            "session 0",
            KickRequest {
                target: Some(Target::SessionId(0)),
                mode: KickMode::Leave.into(),
                ..KickRequest::default()
            },
        ),
        (
            "no mode",
            KickRequest {
                target: ada(),
                ..KickRequest::default()
            },
        ),
        (
            "long reason",
            KickRequest {
                target: ada(),
                mode: KickMode::Disconnect.into(),
                reason: "x".repeat(300),
                ..KickRequest::default()
            },
        ),
    ] {
        let status = client.kick(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{what}");
    }
    let none = client
        .kick(KickRequest {
            target: Some(Target::User("ghost".into())),
            mode: KickMode::Disconnect.into(),
            ..KickRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(none.sessions, 0);
    server.shutdown().await;
}

#[tokio::test]
async fn a_room_scoped_disconnect_ends_only_the_targets_in_that_room() {
    let server = TestServer::start(WITH_TOKEN).await;
    let (mut ada, mut bob) = server.pair_in("r1", "ada", "bob").await;
    let mut ada_elsewhere = server.client("ada").await;
    ada_elsewhere.join("r2").await;
    let kicked = admin(&server, Some(TOKEN))
        .await
        .kick(KickRequest {
            target: Some(Target::User("ada".into())),
            room: "r1".into(),
            mode: KickMode::Disconnect.into(),
            ..KickRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kicked.sessions, 1);
    assert_eq!(
        ada.expect_end(Code::PermissionDenied).await.message(),
        "kicked"
    );
    assert_eq!(bob.expect(Kind::Leave).await.user, "ada");
    ada_elsewhere.chat("r2", "not me").await;
    assert_eq!(ada_elsewhere.expect(Kind::Chat).await.content, "not me");
    server.shutdown().await;
}

#[tokio::test]
async fn a_token_named_session_is_kicked_by_user_before_its_first_request() {
    use jsonwebtoken::{EncodingKey, Header, encode};
    let secret = "admin-test-secret-long-enough";
    let server = TestServer::start(&format!(
        "{WITH_TOKEN}[auth]\nmode = \"jwt\"\nsecret = \"{secret}\"\n"
    ))
    .await;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let claims = serde_json::json!({ "sub": "quiet", "exp": exp });
    let jwt = encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    let mut quiet = common::Client::try_open_with_token(server.channel().await, "x", Some(&jwt))
        .await
        .unwrap();
    server.wait_sessions(1).await;
    let kicked = admin(&server, Some(TOKEN))
        .await
        .kick(KickRequest {
            target: Some(Target::User("quiet".into())),
            mode: KickMode::Disconnect.into(),
            ..KickRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(kicked.sessions, 1);
    quiet.expect_end(Code::PermissionDenied).await;
    server.shutdown().await;
}

#[tokio::test]
async fn close_room_sends_left_to_every_member_and_stops_the_room() {
    // Two rooms per session: a membership of the closed room left behind would use one up.
    let server = TestServer::start(&format!(
        "{WITH_TOKEN}[session]\nmax_rooms_per_session = 2\n"
    ))
    .await;
    let (mut ada, mut bob) = server.pair_in("doomed", "ada", "bob").await;
    ada.chat("doomed", "last words").await;
    ada.expect(Kind::Chat).await;
    bob.expect(Kind::Chat).await;

    let closed = admin(&server, Some(TOKEN))
        .await
        .close_room(CloseRoomRequest {
            room: "doomed".into(),
            reason: "maintenance".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(closed.members, 2);
    for member in [&mut ada, &mut bob] {
        let left = member.expect(Kind::Left).await;
        assert_eq!(
            (left.room.as_str(), left.content.as_str()),
            ("doomed", "maintenance")
        );
    }
    server.wait_rooms(0).await;
    ada.join("second").await;
    ada.join("third").await; // room for it only if "doomed" was forgotten
    ada.chat("doomed", "anyone?").await;
    ada.expect_error("not_a_member").await;
    // A JOIN opens a fresh room: no history, seq from 0.
    ada.send_kind(Kind::Leave, "third").await;
    ada.expect(Kind::Left).await;
    let joined = ada.join("doomed").await;
    assert_eq!(
        (joined.seq, joined.members.clone()),
        (0, vec!["ada".into()])
    );
    ada.expect_silence().await;
    server.shutdown().await;
}

#[tokio::test]
async fn announce_is_a_system_chat_with_the_next_seq() {
    let server = TestServer::start(WITH_TOKEN).await;
    let (mut ada, mut bob) = server.pair_in("r", "ada", "bob").await;
    ada.chat("r", "first").await;
    ada.expect(Kind::Chat).await;
    bob.expect(Kind::Chat).await;
    let mut client = admin(&server, Some(TOKEN)).await;

    let announced = client
        .announce(AnnounceRequest {
            room: "r".into(),
            content: "restart at 18:00".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(announced.seq, 2);
    for member in [&mut ada, &mut bob] {
        let chat = member.expect(Kind::Chat).await;
        assert_eq!(
            (chat.user.as_str(), chat.content.as_str(), chat.seq),
            ("system", "restart at 18:00", 2)
        );
        assert_eq!(chat.id, announced.id);
    }
    // It is history like any CHAT.
    let mut carol = server.client("carol").await;
    carol.join("r").await;
    let replayed = carol.expect(Kind::Chat).await;
    assert_eq!(replayed.content, "first");
    let replayed = carol.expect(Kind::Chat).await;
    assert!(replayed.replay && replayed.user == "system");

    for (room, content, code) in [
        ("nowhere", "hi", Code::NotFound),
        ("r", "", Code::InvalidArgument),
        ("r", &"x".repeat(100_000), Code::InvalidArgument),
    ] {
        let status = client
            .announce(AnnounceRequest {
                room: room.into(),
                content: content.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{room} {}", content.len());
    }
    server.shutdown().await;
}

#[tokio::test]
async fn no_client_may_call_itself_system() {
    let server = TestServer::start("").await;
    for name in ["system", "System", " SYSTEM "] {
        let mut fake = server.client(name).await;
        fake.chat("", "I am the server").await;
        fake.expect_error("invalid_user").await;
    }
    server.shutdown().await;
}

#[tokio::test]
async fn no_client_may_take_a_look_alike_of_system() {
    let server = TestServer::start("").await;
    // Cyrillic dze, u and ie among Latin letters: rendered, it reads "system".
    let mut fake = server.client("\u{455}\u{443}\u{455}t\u{435}m").await;
    fake.chat("", "I am the server").await;
    fake.expect_error("invalid_user").await;
    let mut real = server.client("systems").await;
    real.chat("", "a name that merely starts like it").await;
    assert_eq!(real.expect(Kind::Chat).await.user, "systems");
    server.shutdown().await;
}
