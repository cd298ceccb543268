//! A memory-log room driven directly: its members are plain [`SessionTx`] queues read back in
//! the test, and their session handles lead nowhere, so no network and no session is involved.

use std::{sync::Arc, time::Duration};

use actix::{Actor, Addr, dev::channel};
use arc_swap::ArcSwap;
use prost::Message as _;
use tokio_stream::StreamExt;

use super::Room;
use crate::{
    actors::{
        Announce, Inspect, Join, Leave, Post, RoomId, SessionHandle, env::RoomEnv,
        registry::RoomRegistry, session::Session,
    },
    census::{Census, Living},
    config::{Config, RoomLimits},
    edge::outbound::{OutboundStream, SessionTx},
    error::ChatError,
    history::HistoryBudget,
    log::{MemoryLog, RoomLog},
    names::{RoomName, SessionId, UserName},
    packing::Packer,
    proto::{self, Kind},
    runtime::ActorRuntime,
};

/// How long a test waits for a message that must come.
const WAIT: Duration = Duration::from_secs(2);

struct Fixture {
    room: Addr<Room>,
    /// Kept for the environment's arbiters; the room under test runs on the test's own system.
    _runtime: ActorRuntime,
    /// Ends of the session addresses handed to the room, kept so its mail to them is accepted.
    _mailboxes: Vec<channel::AddressReceiver<Session>>,
}

impl Fixture {
    fn start(limits: RoomLimits) -> Fixture {
        // unwrap: one arbiter thread starts on any test machine.
        let runtime = ActorRuntime::start(1).unwrap();
        let config = Config::default();
        // The narrow handle a room gets: no session table, no hub.
        let env = Arc::new(RoomEnv {
            rooms: Arc::new(RoomRegistry::new(config.server.max_rooms)),
            history_budget: HistoryBudget::new(config.server.history_bytes_total),
            packer: Packer::new(),
            config: Arc::new(ArcSwap::from_pointee(config)),
            arbiters: runtime.arbiters(),
            census: Arc::new(Census::default()),
            cluster: None,
        });
        // Ends with the test's runtime.
        actix::spawn(env.packer.clone().keep_packing());
        let census = env.census.enter(Living::RoomActor);
        let limits = Arc::new(limits);
        let log = RoomLog::Memory(MemoryLog::new(&limits, env.history_budget.clone()));
        // unwrap: a valid name.
        let name = RoomName::parse("lobby").unwrap();
        let room = Room::new(name, RoomId(1), env, limits, log, census).start();
        Fixture {
            room,
            _runtime: runtime,
            _mailboxes: Vec::new(),
        }
    }

    /// Joins `user` as session `id` with a queue of `capacity` messages; answers its stream.
    async fn join(
        &mut self,
        id: u64,
        user: &str,
        capacity: usize,
        since_seq: u64,
    ) -> OutboundStream {
        let (tx, stream) = SessionTx::channel(capacity, usize::MAX, None);
        let (sender, mailbox) = channel::channel::<Session>(16);
        self._mailboxes.push(mailbox);
        let join = Join {
            session: SessionId(id),
            // unwrap: a valid name.
            user: UserName::parse(user).unwrap(),
            tx,
            addr: Arc::new(SessionHandle::of(Addr::new(sender))),
            since_seq,
            epoch: String::new(),
            ack: Some(format!("j{id}")),
        };
        // unwrap: the room is running.
        self.room.send(join).await.unwrap().unwrap();
        stream
    }

    async fn post(&self, id: u64, content: &str) -> Result<(), ChatError> {
        let post = Post {
            session: SessionId(id),
            content: content.into(),
            r#ref: format!("p-{content}"),
        };
        // unwrap: the room is running.
        self.room.send(post).await.unwrap()
    }
}

async fn next(stream: &mut OutboundStream) -> proto::Message {
    let item = tokio::time::timeout(WAIT, stream.next()).await;
    // unwrap: the test fails here if the message does not come.
    let bytes = item.unwrap().unwrap().unwrap();
    proto::Message::decode(bytes).unwrap()
}

async fn nothing_more(stream: &mut OutboundStream) {
    let item = tokio::time::timeout(Duration::from_millis(50), stream.next()).await;
    assert!(item.is_err(), "unexpected {item:?}");
}

fn kind(message: &proto::Message) -> Kind {
    Kind::try_from(message.kind).unwrap_or_default()
}

#[actix::test]
async fn one_fan_out_gives_every_member_the_chat_and_the_sender_its_ref() {
    let mut fx = Fixture::start(RoomLimits::default());
    let mut ada = fx.join(1, "ada", 64, 0).await;
    let joined = next(&mut ada).await;
    assert_eq!(
        (kind(&joined), joined.seq, joined.r#ref.as_str()),
        (Kind::Joined, 0, "j1")
    );
    let mut bob = fx.join(2, "bob", 64, 0).await;
    assert_eq!(next(&mut bob).await.members, vec!["ada", "bob"]);
    let presence = next(&mut ada).await;
    assert_eq!(
        (kind(&presence), presence.user.as_str()),
        (Kind::Join, "bob")
    );

    fx.post(1, "hello").await.unwrap();
    let (mine, theirs) = (next(&mut ada).await, next(&mut bob).await);
    assert_eq!((mine.seq, mine.r#ref.as_str()), (1, "p-hello"));
    assert_eq!(
        (theirs.seq, theirs.r#ref.as_str(), theirs.id),
        (1, "", mine.id)
    );

    let (seq, _) = fx
        .room
        .send(Announce {
            content: "hi".into(),
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seq, 2);
    for stream in [&mut ada, &mut bob] {
        let announced = next(stream).await;
        assert_eq!((announced.seq, announced.user.as_str()), (2, "system"));
        nothing_more(stream).await;
    }
    let snapshot = fx.room.send(Inspect { members: false }).await.unwrap();
    assert_eq!((snapshot.last_seq, snapshot.member_count), (2, 2));
}

#[actix::test]
async fn a_late_joiner_replays_after_its_since_seq_then_gets_live_traffic() {
    let mut fx = Fixture::start(RoomLimits::default());
    let _ada = fx.join(1, "ada", 64, 0).await;
    for n in 1..=3 {
        fx.post(1, &n.to_string()).await.unwrap();
    }
    let mut bob = fx.join(2, "bob", 64, 1).await;
    assert_eq!(next(&mut bob).await.seq, 3, "JOINED carries the last seq");
    for seq in [2, 3] {
        let replayed = next(&mut bob).await;
        assert!(replayed.replay, "{replayed:?}");
        assert_eq!(replayed.seq, seq);
    }
    fx.post(1, "live").await.unwrap();
    let live = next(&mut bob).await;
    assert_eq!((live.seq, live.replay), (4, false));
}

#[actix::test]
async fn a_member_whose_queue_is_full_is_dropped_and_the_others_told() {
    let mut fx = Fixture::start(RoomLimits::default());
    let mut ada = fx.join(1, "ada", 64, 0).await;
    next(&mut ada).await;
    // Room for its JOINED only: the first CHAT finds the queue full.
    let mut slow = fx.join(2, "slow", 1, 0).await;
    next(&mut ada).await;
    fx.post(1, "x").await.unwrap();
    assert_eq!(next(&mut ada).await.seq, 1);
    let left = next(&mut ada).await;
    assert_eq!((kind(&left), left.user.as_str()), (Kind::Leave, "slow"));
    // unwrap: the stream ends with a status rather than going quiet.
    let ended = tokio::time::timeout(WAIT, slow.next()).await.unwrap();
    let status = ended.and_then(Result::err).expect("ended with a status");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    let snapshot = fx.room.send(Inspect { members: false }).await.unwrap();
    assert_eq!(snapshot.member_count, 1);
}

#[actix::test]
async fn a_joiner_does_not_hear_of_a_member_found_gone_while_its_join_is_announced() {
    let mut fx = Fixture::start(RoomLimits::default());
    let mut ada = fx.join(1, "ada", 64, 0).await;
    next(&mut ada).await;
    // Its stream is gone, but its session has not left yet.
    drop(fx.join(2, "gone", 64, 0).await);
    let mut bob = fx.join(3, "bob", 64, 0).await;
    let joined = next(&mut bob).await;
    assert_eq!(joined.members, vec!["ada", "bob"], "not listed");
    fx.post(3, "hi").await.unwrap();
    assert_eq!(kind(&next(&mut bob).await), Kind::Chat, "no LEAVE first");
    let told: Vec<(Kind, String)> = [
        next(&mut ada).await,
        next(&mut ada).await,
        next(&mut ada).await,
    ]
    .iter()
    .map(|m| (kind(m), m.user.clone()))
    .collect();
    let expected = [
        (Kind::Join, "gone"),
        (Kind::Join, "bob"),
        (Kind::Leave, "gone"),
    ];
    assert_eq!(told, expected.map(|(k, u)| (k, u.to_string())));
}

#[actix::test]
async fn an_empty_room_that_kept_nothing_stops_once_its_leavers_buckets_refill() {
    let mut fx = Fixture::start(RoomLimits::default());
    let _ada = fx.join(1, "ada", 64, 0).await;
    // A LEAVE: ada is not coming back to resume.
    let leave = Leave {
        session: SessionId(1),
        ack: Some("l1".into()),
        reason: String::new(),
    };
    fx.room.send(leave).await.unwrap().unwrap();
    tokio::time::timeout(WAIT, async {
        while fx.room.connected() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the room stopped");
}

fn leave(id: u64) -> Leave {
    Leave {
        session: SessionId(id),
        ack: None,
        reason: String::new(),
    }
}

/// Lets the room handle what is due without moving the paused clock.
async fn settle() {
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
}

#[actix::test]
async fn an_empty_room_with_history_keeps_it_for_its_ttl_then_stops_on_a_paused_clock() {
    let mut fx = Fixture::start(RoomLimits {
        empty_room_ttl_ms: 30_000,
        ..RoomLimits::default()
    });
    let _ada = fx.join(1, "ada", 64, 0).await;
    fx.post(1, "kept").await.unwrap();
    // From here the clock moves only when the test sleeps: 30 s take no real time.
    tokio::time::pause();
    fx.room.send(leave(1)).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(29_900)).await;
    settle().await;
    assert!(fx.room.connected(), "kept through its TTL");
    let snapshot = fx.room.send(Inspect { members: false }).await.unwrap();
    assert_eq!(snapshot.last_seq, 1, "with its history");
    tokio::time::sleep(Duration::from_millis(200)).await;
    settle().await;
    assert!(!fx.room.connected(), "stopped once the TTL passed");
}

#[actix::test]
async fn a_quiet_room_whose_member_went_without_a_leave_keeps_its_epoch_for_its_ttl() {
    let mut fx = Fixture::start(RoomLimits {
        empty_room_ttl_ms: 30_000,
        ..RoomLimits::default()
    });
    let mut ada = fx.join(1, "ada", 64, 0).await;
    let epoch = next(&mut ada).await.epoch;
    tokio::time::pause();
    // Ada's session ended (no LEAVE): she may come back with since_seq 0 in this epoch.
    fx.room.send(leave(1)).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(29_900)).await;
    settle().await;
    assert!(fx.room.connected(), "kept through its TTL without a CHAT");
    let mut again = fx.join(2, "ada", 64, 0).await;
    assert_eq!(next(&mut again).await.epoch, epoch);
    fx.room.send(leave(2)).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(30_100)).await;
    settle().await;
    assert!(!fx.room.connected(), "stopped once the TTL passed");
}

#[actix::test]
async fn a_join_within_the_ttl_cancels_the_stop_on_a_paused_clock() {
    let mut fx = Fixture::start(RoomLimits {
        empty_room_ttl_ms: 30_000,
        ..RoomLimits::default()
    });
    let _ada = fx.join(1, "ada", 64, 0).await;
    fx.post(1, "kept").await.unwrap();
    tokio::time::pause();
    fx.room.send(leave(1)).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(20_000)).await;
    let mut bob = fx.join(2, "bob", 64, 1).await;
    assert_eq!(next(&mut bob).await.seq, 1);
    tokio::time::sleep(Duration::from_millis(60_000)).await;
    settle().await;
    assert!(fx.room.connected(), "a member is in: no stop");
}

/// Whether the room's history has CHATs waiting to be packed.
struct Unpacked;

impl actix::Message for Unpacked {
    type Result = bool;
}

impl actix::Handler<Unpacked> for Room {
    type Result = bool;

    fn handle(&mut self, _: Unpacked, _: &mut actix::Context<Self>) -> bool {
        self.log.memory().is_some_and(|log| log.packable())
    }
}

#[actix::test]
async fn a_room_packs_its_history_once_quiet_and_replays_it_as_before() {
    let mut fx = Fixture::start(RoomLimits::default());
    let _ada = fx.join(1, "ada", 64, 0).await;
    for content in ["a", "b", "c"] {
        fx.post(1, content).await.unwrap();
    }
    tokio::time::pause();
    tokio::time::sleep(Duration::from_millis(500)).await;
    settle().await;
    assert!(
        fx.room.send(Unpacked).await.unwrap(),
        "not yet quiet long enough"
    );
    fx.post(1, "d").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    settle().await;
    assert!(
        fx.room.send(Unpacked).await.unwrap(),
        "not packed while CHATs keep coming"
    );
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    settle().await;
    assert!(
        !fx.room.send(Unpacked).await.unwrap(),
        "packed a quiet period after the last CHAT"
    );
    let mut bob = fx.join(2, "bob", 64, 0).await;
    let joined = next(&mut bob).await;
    assert_eq!((kind(&joined), joined.seq), (Kind::Joined, 4));
    let mut contents = Vec::new();
    for _ in 0..4 {
        contents.push(next(&mut bob).await.content);
    }
    assert_eq!(
        contents,
        ["a", "b", "c", "d"],
        "the packed history replays as before"
    );
}
