//! Each kind of request, and each refusal, parsed on its own.

use super::*;

fn default_room() -> RoomName {
    RoomName::parse("lobby").unwrap()
}

fn msg(kind: Kind, room: &str, content: &str, r#ref: &str) -> proto::Message {
    proto::Message {
        kind: kind as i32,
        room: room.into(),
        content: content.into(),
        r#ref: r#ref.into(),
        ..Default::default()
    }
}

fn anyone(_: &RoomName) -> bool {
    true
}

fn named() -> Caller<'static> {
    Caller {
        named: Ok(()),
        may_use: &anyone,
    }
}

fn parsed(msg: proto::Message) -> Parsed {
    parse(msg, &default_room(), &named()).unwrap()
}

fn refused(msg: proto::Message, caller: &Caller<'_>) -> Refusal {
    parse(msg, &default_room(), caller).unwrap_err()
}

fn room(name: &str) -> RoomName {
    RoomName::parse(name).unwrap()
}

#[test]
fn ping_echoes_the_room_as_sent() {
    let p = parsed(msg(Kind::Ping, "", "", "r1"));
    assert_eq!(
        p.request,
        Request::Ping {
            room: String::new()
        }
    );
    assert_eq!(p.r#ref, "r1");
}

#[test]
fn join_carries_since_seq_and_defaults_the_room() {
    let mut join = msg(Kind::Join, "", "", "j");
    join.since_seq = 7;
    let p = parsed(join);
    let expected = Request::Join {
        room: default_room(),
        since_seq: 7,
        epoch: String::new(),
    };
    assert_eq!(p.request, expected);
    assert_eq!(p.r#ref, "j");
}

#[test]
fn leave_names_its_room() {
    let p = parsed(msg(Kind::Leave, "dev", "", ""));
    assert_eq!(p.request, Request::Leave { room: room("dev") });
}

#[test]
fn chat_and_unspecified_kind_are_chats() {
    for kind in [Kind::Chat, Kind::Unspecified] {
        let p = parsed(msg(kind, "dev", "hi", ""));
        let expected = Request::Chat {
            room: room("dev"),
            content: "hi".into(),
        };
        assert_eq!(p.request, expected);
    }
}

#[test]
fn too_long_ref_is_refused_without_echoing_it() {
    let long = "x".repeat(MAX_REF_BYTES + 1);
    let r = refused(msg(Kind::Ping, "dev", "", &long), &named());
    assert_eq!(r.error.code(), "bad_request");
    assert_eq!((r.room.as_str(), r.r#ref.as_str()), ("dev", ""));
    assert!(
        parse(
            msg(Kind::Ping, "", "", &long[1..]),
            &default_room(),
            &named()
        )
        .is_ok()
    );
}

#[test]
fn unknown_kind_is_refused() {
    for kind in [Kind::Joined as i32, 999] {
        let mut m = msg(Kind::Chat, "dev", "hi", "k");
        m.kind = kind;
        let r = refused(m, &named());
        assert_eq!(r.error.code(), "bad_request");
        assert_eq!(r.r#ref, "k");
    }
}

#[test]
fn an_unnamed_caller_may_only_ping() {
    let unnamed = Caller {
        named: Err(ChatError::InvalidUser("bad")),
        may_use: &anyone,
    };
    assert!(parse(msg(Kind::Ping, "", "", ""), &default_room(), &unnamed).is_ok());
    // The name is checked before the room.
    let r = refused(msg(Kind::Join, "bad room!", "", "u"), &unnamed);
    assert_eq!(r.error.code(), "invalid_user");
}

#[test]
fn empty_leave_room_is_refused() {
    let r = refused(msg(Kind::Leave, "", "", "l"), &named());
    assert_eq!(
        r.error,
        ChatError::BadRequest("LEAVE needs a `room`".into())
    );
    assert_eq!(r.r#ref, "l");
}

#[test]
fn invalid_room_name_is_refused_with_the_room_as_sent() {
    let r = refused(msg(Kind::Join, "no spaces here", "", ""), &named());
    assert_eq!(r.error.code(), "invalid_room");
    assert_eq!(r.room, "no spaces here");
}

#[test]
fn the_rooms_claim_forbids_join_and_chat_but_not_leave() {
    let only_dev = |r: &RoomName| r.as_str() == "dev";
    let caller = Caller {
        named: Ok(()),
        may_use: &only_dev,
    };
    let r = refused(msg(Kind::Chat, "", "", ""), &caller);
    // Checked before the content, and the reply names the room the default resolved to.
    assert_eq!((r.error.code(), r.room.as_str()), ("forbidden", "lobby"));
    assert!(parse(msg(Kind::Leave, "ops", "", ""), &default_room(), &caller).is_ok());
}

#[test]
fn empty_chat_content_is_refused() {
    let r = refused(msg(Kind::Chat, "dev", "", "c"), &named());
    assert_eq!(
        r.error,
        ChatError::BadRequest("CHAT needs `content`".into())
    );
    assert_eq!((r.room.as_str(), r.r#ref.as_str()), ("dev", "c"));
}

#[test]
fn join_carries_its_epoch_up_to_sixteen_bytes() {
    let mut join = msg(Kind::Join, "dev", "", "j");
    join.since_seq = 3;
    join.epoch = "0123456789abcdef".into();
    let expected = Request::Join {
        room: room("dev"),
        since_seq: 3,
        epoch: "0123456789abcdef".into(),
    };
    assert_eq!(parsed(join.clone()).request, expected);
    join.epoch.push('0');
    let refusal = refused(join, &named());
    assert_eq!(refusal.error.code(), "bad_request");
    assert_eq!(
        (refusal.room.as_str(), refusal.r#ref.as_str()),
        ("dev", "j")
    );
}

#[test]
fn a_room_echoed_as_sent_is_cut_to_the_longest_valid_name() {
    let long = "é".repeat(5000);
    let refusal = refused(msg(Kind::Join, &long, "", "j"), &named());
    assert_eq!(refusal.error.code(), "invalid_room");
    assert_eq!(refusal.room, "é".repeat(64), "cut at a character boundary");
    let Request::Ping { room } = parsed(msg(Kind::Ping, &long, "", "p")).request else {
        panic!("a PING");
    };
    assert_eq!(room.len(), 128);
    // Only the echo is cut: the name itself is still checked whole.
    let refusal = refused(msg(Kind::Join, &"r".repeat(129), "", "j"), &named());
    assert_eq!(
        (refusal.error.code(), refusal.room.len()),
        ("invalid_room", 128)
    );
}
