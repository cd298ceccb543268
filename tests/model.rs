//! Model-based test: random sequences of client operations (connect, JOIN with and without
//! since_seq, CHAT, LEAVE, PING, half-close, abrupt drop, reconnect) across three sessions and two
//! rooms run against the real server and against a small reference model of the contract. After
//! every operation each session must have received exactly what the model says; proptest shrinks
//! a failure to a minimal sequence. Runs on both engines, each case on a fresh server (and, for
//! Redis, a fresh `redis-server`).

mod common;

use std::{
    collections::{BTreeSet, VecDeque},
    time::Duration,
};

use chatrooms::proto::{Kind, Message};
use common::{Client, Engine, TestServer};
use proptest::prelude::*;

const SESSIONS: usize = 3;
const ROOMS: [&str; 2] = ["m0", "m1"];
const MAX_MEMBERS: usize = 2;
const MAX_ROOMS: usize = 2;
const HISTORY: usize = 4;
const HISTORY_ON_JOIN: usize = 2;

fn config() -> String {
    format!(
        "[session]\nmax_rooms_per_session = {MAX_ROOMS}\n\
         [limits]\nmax_members = {MAX_MEMBERS}\nhistory = {HISTORY}\nhistory_on_join = {HISTORY_ON_JOIN}\n\
         rate_per_sec = 1000000\nburst = 1000000\nempty_room_ttl_ms = 600000\n"
    )
}

/// A generated JOIN's marker for "since_seq = 0".
const JOIN_FRESH: u64 = u64::MAX;

#[derive(Debug, Clone)]
enum Op {
    Connect(usize),
    Join(usize, usize, u64),
    Chat(usize, usize),
    Leave(usize, usize),
    Ping(usize),
    HalfClose(usize),
    Drop(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let s = 0..SESSIONS;
    let r = 0..ROOMS.len();
    prop_oneof![
        2 => s.clone().prop_map(Op::Connect),
        // The third value is how far back from the room's current seq to resume (0..4) or,
        // as JOIN_FRESH, a plain JOIN with since_seq 0; see `Model::resolve`.
        6 => (s.clone(), r.clone(), prop_oneof![1 => Just(JOIN_FRESH), 2 => 0..4u64])
            .prop_map(|(s, r, back)| Op::Join(s, r, back)),
        // Mostly into a room the session is in (see `Model::resolve`), so rooms build history.
        8 => (s.clone(), r.clone()).prop_map(|(s, r)| Op::Chat(s, r + ROOMS.len())),
        3 => (s.clone(), r.clone()).prop_map(|(s, r)| Op::Chat(s, r)),
        4 => (s.clone(), r.clone()).prop_map(|(s, r)| Op::Leave(s, r + ROOMS.len())),
        1 => (s.clone(), r.clone()).prop_map(|(s, r)| Op::Leave(s, r)),
        1 => s.clone().prop_map(Op::Ping),
        1 => s.clone().prop_map(Op::HalfClose),
        1 => s.prop_map(Op::Drop),
    ]
}

/// What the contract fixes about a received message (ids, timestamps and error wording aside).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Seen {
    kind: i32,
    room: String,
    user: String,
    content: String,
    seq: u64,
    replay: bool,
    code: String,
    r#ref: String,
    members: Vec<String>,
}

impl Seen {
    fn of(m: &Message) -> Seen {
        let mut members = m.members.clone();
        members.sort();
        Seen {
            kind: m.kind,
            room: m.room.clone(),
            user: m.user.clone(),
            content: if m.kind() == Kind::Error {
                String::new()
            } else {
                m.content.clone()
            },
            seq: m.seq,
            replay: m.replay,
            code: m.code.clone(),
            r#ref: m.r#ref.clone(),
            members,
        }
    }

    fn new(kind: Kind, room: usize, user: usize) -> Seen {
        Seen {
            kind: kind.into(),
            room: ROOMS[room].into(),
            user: name(user),
            content: String::new(),
            seq: 0,
            replay: false,
            code: String::new(),
            r#ref: String::new(),
            members: Vec::new(),
        }
    }
}

fn name(s: usize) -> String {
    format!("s{s}")
}

#[derive(Default)]
struct RoomModel {
    members: Vec<usize>,
    seq: u64,
    history: VecDeque<(u64, usize, String)>,
}

#[derive(Default, Clone)]
struct SessionModel {
    connected: bool,
    joined: BTreeSet<usize>,
}

/// What one operation makes each session receive. `ordered = false` when the messages come from
/// several rooms at once (a session leaving all its rooms), whose relative order is free.
struct Effects {
    per_session: Vec<Vec<Seen>>,
    ordered: bool,
}

#[derive(Default)]
struct Model {
    rooms: [RoomModel; 2],
    sessions: [SessionModel; SESSIONS],
}

impl Model {
    /// Turns a generated JOIN's "how far back" into a concrete since_seq, the way a client
    /// resuming from the last seq it saw would.
    fn resolve(&self, op: &Op) -> Op {
        match *op {
            Op::Join(s, r, JOIN_FRESH) => Op::Join(s, r, 0),
            Op::Join(s, r, back) => Op::Join(s, r, self.rooms[r].seq.saturating_sub(back)),
            // A room index past the end means "a room this session has joined, if any".
            Op::Chat(s, r) if r >= ROOMS.len() => Op::Chat(s, self.joined_room(s, r)),
            Op::Leave(s, r) if r >= ROOMS.len() => Op::Leave(s, self.joined_room(s, r)),
            ref other => other.clone(),
        }
    }

    fn joined_room(&self, s: usize, r: usize) -> usize {
        let joined: Vec<usize> = self.sessions[s].joined.iter().copied().collect();
        let r = r - ROOMS.len();
        if joined.is_empty() {
            r
        } else {
            joined[r % joined.len()]
        }
    }

    fn member_names(&self, r: usize) -> Vec<String> {
        let mut names: Vec<String> = self.rooms[r].members.iter().map(|s| name(*s)).collect();
        names.sort();
        names.dedup();
        names
    }

    fn error(code: &str, r: usize, s: usize, r#ref: &str) -> Seen {
        Seen {
            code: code.into(),
            r#ref: r#ref.into(),
            ..Seen::new(Kind::Error, r, s)
        }
    }

    /// Applies `op` (number `k`); `None` when it does not apply (the session is not connected,
    /// or is already).
    fn apply(&mut self, op: &Op, k: usize) -> Option<Effects> {
        let mut out = vec![Vec::new(); SESSIONS];
        let r#ref = format!("r{k}");
        let connected = |s: usize| self.sessions[s].connected;
        let mut ordered = true;
        match *op {
            Op::Connect(s) => {
                if connected(s) {
                    return None;
                }
                self.sessions[s] = SessionModel {
                    connected: true,
                    joined: BTreeSet::new(),
                };
            }
            Op::Join(s, r, since) => {
                if !connected(s) {
                    return None;
                }
                if self.sessions[s].joined.contains(&r) {
                    out[s].push(self.joined(r, s, &r#ref));
                } else if self.sessions[s].joined.len() >= MAX_ROOMS {
                    out[s].push(Model::error("too_many_rooms", r, s, &r#ref));
                } else if self.rooms[r].members.len() >= MAX_MEMBERS {
                    out[s].push(Model::error("room_full", r, s, &r#ref));
                } else {
                    self.sessions[s].joined.insert(r);
                    self.rooms[r].members.push(s);
                    out[s].push(self.joined(r, s, &r#ref));
                    let history = &self.rooms[r].history;
                    let replay: Vec<&(u64, usize, String)> = if since == 0 {
                        history
                            .iter()
                            .skip(history.len().saturating_sub(HISTORY_ON_JOIN))
                            .collect()
                    } else {
                        history.iter().filter(|(seq, _, _)| *seq > since).collect()
                    };
                    for (seq, author, content) in replay {
                        out[s].push(Seen {
                            content: content.clone(),
                            seq: *seq,
                            replay: true,
                            ..Seen::new(Kind::Chat, r, *author)
                        });
                    }
                    for &m in self.rooms[r].members.iter().filter(|m| **m != s) {
                        out[m].push(Seen::new(Kind::Join, r, s));
                    }
                }
            }
            Op::Chat(s, r) => {
                if !connected(s) {
                    return None;
                }
                if !self.sessions[s].joined.contains(&r) {
                    out[s].push(Model::error("not_a_member", r, s, &r#ref));
                } else {
                    let room = &mut self.rooms[r];
                    room.seq += 1;
                    let content = format!("op{k}");
                    room.history.push_back((room.seq, s, content.clone()));
                    if room.history.len() > HISTORY {
                        room.history.pop_front();
                    }
                    for &m in &room.members {
                        out[m].push(Seen {
                            content: content.clone(),
                            seq: room.seq,
                            r#ref: if m == s { r#ref.clone() } else { String::new() },
                            ..Seen::new(Kind::Chat, r, s)
                        });
                    }
                }
            }
            Op::Leave(s, r) => {
                if !connected(s) {
                    return None;
                }
                if !self.sessions[s].joined.remove(&r) {
                    out[s].push(Model::error("not_a_member", r, s, &r#ref));
                } else {
                    self.rooms[r].members.retain(|m| *m != s);
                    out[s].push(Seen {
                        r#ref: r#ref.clone(),
                        ..Seen::new(Kind::Left, r, s)
                    });
                    for &m in &self.rooms[r].members {
                        out[m].push(Seen::new(Kind::Leave, r, s));
                    }
                }
            }
            Op::Ping(s) => {
                if !connected(s) {
                    return None;
                }
                out[s].push(Seen {
                    room: "lobby".into(),
                    r#ref: r#ref.clone(),
                    ..Seen::new(Kind::Pong, 0, s)
                });
            }
            Op::HalfClose(s) | Op::Drop(s) => {
                if !connected(s) {
                    return None;
                }
                ordered = false;
                let joined = std::mem::take(&mut self.sessions[s].joined);
                self.sessions[s].connected = false;
                for r in joined {
                    self.rooms[r].members.retain(|m| *m != s);
                    for &m in &self.rooms[r].members {
                        out[m].push(Seen::new(Kind::Leave, r, s));
                    }
                }
            }
        }
        Some(Effects {
            per_session: out,
            ordered,
        })
    }

    fn joined(&self, r: usize, s: usize, r#ref: &str) -> Seen {
        Seen {
            members: self.member_names(r),
            seq: self.rooms[r].seq,
            r#ref: r#ref.into(),
            ..Seen::new(Kind::Joined, r, s)
        }
    }

    fn connected_count(&self) -> usize {
        self.sessions.iter().filter(|s| s.connected).count()
    }
}

async fn perform(op: &Op, k: usize, server: &TestServer, clients: &mut [Option<Client>]) {
    let r#ref = format!("r{k}");
    let request = |kind: Kind, r: usize| Message {
        kind: kind.into(),
        room: ROOMS[r].into(),
        r#ref: r#ref.clone(),
        ..Message::default()
    };
    match *op {
        Op::Connect(s) => clients[s] = Some(server.client(&name(s)).await),
        Op::Join(s, r, since) => {
            let join = Message {
                since_seq: since,
                ..request(Kind::Join, r)
            };
            clients[s].as_ref().unwrap().send(join).await;
        }
        Op::Chat(s, r) => {
            let chat = Message {
                content: format!("op{k}"),
                ..request(Kind::Chat, r)
            };
            clients[s].as_ref().unwrap().send(chat).await;
        }
        Op::Leave(s, r) => {
            clients[s]
                .as_ref()
                .unwrap()
                .send(request(Kind::Leave, r))
                .await
        }
        Op::Ping(s) => {
            let ping = Message {
                kind: Kind::Ping.into(),
                r#ref: r#ref.clone(),
                ..Message::default()
            };
            clients[s].as_ref().unwrap().send(ping).await;
        }
        Op::HalfClose(s) => {
            let mut client = clients[s].take().unwrap();
            client.close_send();
            let (rest, status) = client.drain_to_end().await;
            assert!(
                rest.is_empty(),
                "nothing pending after half-close: {rest:?}"
            );
            assert!(status.is_none(), "half-close ends OK: {status:?}");
        }
        Op::Drop(s) => clients[s].take().unwrap().abort(),
    }
}

async fn run(engine: Engine, ops: Vec<Op>) {
    // Every session starts connected, so generated operations rarely fall on a closed one.
    let ops: Vec<Op> = (0..SESSIONS).map(Op::Connect).chain(ops).collect();
    let server = TestServer::start_on(engine, &config()).await;
    let mut clients: Vec<Option<Client>> = (0..SESSIONS).map(|_| None).collect();
    let mut model = Model::default();
    for (k, op) in ops.iter().enumerate() {
        let op = &model.resolve(op);
        let Some(effects) = model.apply(op, k) else {
            continue;
        };
        perform(op, k, &server, &mut clients).await;
        for (s, expected) in effects.per_session.into_iter().enumerate() {
            let Some(client) = clients[s].as_mut() else {
                continue;
            };
            let mut got = Vec::new();
            for _ in 0..expected.len() {
                // Short: everything an operation causes is pushed at once, and a missing message
                // should fail (and shrink) fast.
                got.push(Seen::of(&client.next_within(Duration::from_secs(2)).await));
            }
            let mut expected = expected;
            if !effects.ordered {
                got.sort();
                expected.sort();
            }
            assert_eq!(got, expected, "session s{s} after op {k} {op:?}");
        }
        if matches!(op, Op::HalfClose(_) | Op::Drop(_)) {
            // Its rooms have been told before the next request can reach them (mailbox order).
            server.wait_session_actors(model.connected_count()).await;
        }
    }
    for client in clients.iter_mut().flatten() {
        client.expect_silence_for(Duration::from_millis(50)).await;
    }
}

/// `default` cases, or PROPTEST_CASES for longer runs outside CI.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs one generated sequence on a fresh server (and, for Redis, a fresh `redis-server`).
fn check(engine: Engine, ops: Vec<Op>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(engine, ops));
}

/// `server_matches_the_reference_model::memory` and `::redis`, named like the contract suites'
/// `per_engine!` tests.
mod server_matches_the_reference_model {
    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: cases(48),
            max_shrink_iters: 100,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn memory(ops in prop::collection::vec(op(), 1..60)) {
            check(Engine::Memory, ops);
        }
    }

    proptest! {
        // Fewer cases on Redis: each one also starts a redis-server and every request makes a
        // round trip through it (about 0.2 s a case on two cores, against 0.12 s in memory).
        #![proptest_config(ProptestConfig {
            cases: cases(32),
            max_shrink_iters: 100,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn redis(ops in prop::collection::vec(op(), 1..60)) {
            check(Engine::Redis, ops);
        }
    }
}
