//! Operator actions across a cluster. Only the node holding a stream can end it or take it out
//! of a room, so Kick and CloseRoom are published as a request on one operator channel that
//! every node listens on; each node (the caller's included) carries it out on its own sessions
//! and rooms and publishes its answer on the caller's own channel; the caller sums the answers.
//! The request is published by a script that also reads how many connections subscribe to the
//! channel (one per listening node), so the caller knows how many answers to wait for, bounded
//! by a deadline. Nodes of a version without this listener are neither counted nor reached.
//!
//! Requests and answers are JSON inside the cluster's payload format (kinds `A` and `R`), on
//! the first shard's channels `chat:admin` and `chat:admin:<node_id>`. Whoever can write to Redis
//! can ask for a kick: Redis is trusted like the nodes themselves.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
    time::{Instant, sleep},
};
use tonic::{Code, Status};
use tracing::{Instrument, debug, info, info_span, warn};

use super::{KickOrder, ROOM_ANSWER, check_reason, close_here, kick_here, unavailable};
use crate::{
    cluster::{
        OPERATOR_CHANNEL, Published, RECONNECT_MAX, RECONNECT_MIN, RedisEngine, Subscription,
        answer_channel, payload,
    },
    edge::sessions::SessionTarget,
    hub::Hub,
    names::{RoomName, SessionId, UserName},
};

/// The operator channels live on the first shard, which every node is connected to.
const OPERATOR_SHARD: usize = 0;
/// Longest wait for every node's answer: a node's own room call is bounded by [`ROOM_ANSWER`],
/// and each of the two trips through Redis by the response timeout (1.5 s).
const NODES_ANSWER: Duration = ROOM_ANSWER.saturating_add(Duration::from_secs(4));
/// Longest wait, on a node that has just started, for its own operator channels.
const LISTENING: Duration = Duration::from_secs(2);
/// Requests and answers waiting for the listener, and answers waiting for one caller.
const INBOX: usize = 1024;

/// An operator action every node carries out on its own sessions and rooms.
#[derive(Debug, Clone)]
pub(crate) enum Order {
    Kick(KickOrder),
    Close { room: RoomName, reason: String },
}

impl Order {
    /// Carries the action out on this node: `None` when it names a room not open here.
    pub(crate) async fn run(&self, hub: &Hub) -> Result<Option<usize>, Status> {
        match self {
            Order::Kick(kick) => kick_here(hub, kick).await,
            Order::Close { room, reason } => close_here(hub, room, reason.clone()).await,
        }
    }

    fn action(&self) -> &'static str {
        match self {
            Order::Kick(_) => "kick",
            Order::Close { .. } => "close_room",
        }
    }
}

/// An [`Order`] as it travels between nodes.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum WireOrder {
    Kick {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        session: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room: Option<String>,
        disconnect: bool,
        reason: String,
    },
    Close {
        room: String,
        reason: String,
    },
}

impl From<&Order> for WireOrder {
    fn from(order: &Order) -> WireOrder {
        match order {
            Order::Kick(kick) => {
                let (user, session) = match &kick.target {
                    SessionTarget::User(user) => (Some(user.to_string()), None),
                    SessionTarget::Id(id) => (None, Some(id.0)),
                };
                WireOrder::Kick {
                    user,
                    session,
                    room: kick.room.as_ref().map(ToString::to_string),
                    disconnect: kick.disconnect,
                    reason: kick.reason.clone(),
                }
            }
            Order::Close { room, reason } => WireOrder::Close {
                room: room.to_string(),
                reason: reason.clone(),
            },
        }
    }
}

impl TryFrom<WireOrder> for Order {
    type Error = String;

    /// Names are checked again: the request came through Redis, not through the admin API.
    fn try_from(wire: WireOrder) -> Result<Order, String> {
        let room = |name: &str| RoomName::parse(name).map_err(|e| e.to_string());
        match wire {
            WireOrder::Kick {
                user,
                session,
                room: room_name,
                disconnect,
                reason,
            } => {
                let target = match (user, session) {
                    (Some(user), None) => {
                        SessionTarget::User(UserName::parse(&user).map_err(|e| e.to_string())?)
                    }
                    (None, Some(id)) if id > 0 => SessionTarget::Id(SessionId(id)),
                    _ => return Err("a kick names exactly one user or session".into()),
                };
                check_reason(&reason).map_err(|e| e.message().to_string())?;
                Ok(Order::Kick(KickOrder {
                    target,
                    room: room_name.as_deref().map(room).transpose()?,
                    disconnect,
                    reason,
                }))
            }
            WireOrder::Close { room: name, reason } => {
                check_reason(&reason).map_err(|e| e.message().to_string())?;
                Ok(Order::Close {
                    room: room(&name)?,
                    reason,
                })
            }
        }
    }
}

/// One node's answer.
#[derive(Debug, Default, Serialize, Deserialize)]
struct WireAnswer {
    /// The named room was open on the node (always true for a server-wide kick).
    found: bool,
    /// Sessions kicked, or members removed.
    count: u64,
    /// Why the node could not carry the action out: a gRPC status code and its message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<(i32, String)>,
}

impl WireAnswer {
    fn failed(status: &Status) -> WireAnswer {
        WireAnswer {
            error: Some((status.code() as i32, status.message().to_string())),
            ..WireAnswer::default()
        }
    }
}

/// What the nodes did, summed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Tally {
    /// Some node had the named room open.
    pub found: bool,
    pub count: usize,
    /// Nodes that carried the action out (nodes that failed are not counted).
    pub nodes: u32,
}

impl Tally {
    /// A single node's outcome (memory mode).
    pub(crate) fn one(outcome: Option<usize>) -> Tally {
        Tally {
            found: outcome.is_some(),
            count: outcome.unwrap_or(0),
            nodes: 1,
        }
    }

    fn add(&mut self, answer: &WireAnswer) {
        self.found |= answer.found;
        self.count += usize::try_from(answer.count).unwrap_or(usize::MAX);
        self.nodes += 1;
    }
}

/// This node's side of the operator channels: its pending requests, and (through the task
/// [`Operators::start`] returns) the listener that carries out every node's requests here.
pub struct Operators {
    engine: RedisEngine,
    /// Request id → where its answers go.
    waiting: DashMap<String, mpsc::Sender<WireAnswer>>,
    /// True once this node subscribes both operator channels: before that its own sessions
    /// would miss its own requests, and the answers would be lost.
    listening: watch::Sender<bool>,
}

impl Operators {
    /// Starts listening on the operator channels (subscribing as soon as Redis answers). The
    /// listener runs until the returned task is aborted.
    pub fn start(hub: Arc<Hub>, engine: RedisEngine) -> (Arc<Operators>, JoinHandle<()>) {
        let operators = Arc::new(Operators {
            engine,
            waiting: DashMap::new(),
            listening: watch::Sender::new(false),
        });
        let task = tokio::spawn(listen(hub, operators.clone()));
        (operators, task)
    }

    /// Publishes `order` to every node and sums their answers. Nodes that do not answer by the
    /// deadline, or fail, are left out and logged. A failure is returned when no node carried
    /// the action out, or when none had the room while some failed (one of them may have had
    /// it), with the failing node's status code.
    pub(crate) async fn ask_all(&self, order: &Order) -> Result<Tally, Status> {
        let mut listening = self.listening.subscribe();
        if tokio::time::timeout(LISTENING, listening.wait_for(|up| *up))
            .await
            .is_err()
        {
            return Err(Status::unavailable(
                "this node is not listening to the operator channel yet (is Redis reachable?)",
            ));
        }
        let id = uuid::Uuid::now_v7().to_string();
        let body = serde_json::to_vec(&WireOrder::from(order))
            .map_err(|e| Status::internal(format!("cannot encode the request: {e}")))?;
        let (answers, mut inbox) = mpsc::channel(INBOX);
        // In the table before the request leaves, so no answer can arrive unclaimed.
        self.waiting.insert(id.clone(), answers);
        let _claimed = Claimed {
            waiting: &self.waiting,
            id: &id,
        };
        let node = self.engine.node_id().as_bytes();
        let request = payload::encode(&[b"A", node, id.as_bytes(), &body]);
        let nodes = self
            .engine
            .broadcast(OPERATOR_SHARD, OPERATOR_CHANNEL.to_string(), request)
            .await
            .map_err(|e| unavailable(&e))?;
        let deadline = Instant::now() + NODES_ANSWER;
        let mut tally = Tally::default();
        let mut errors = Vec::new();
        let mut answered = 0u64;
        while answered < nodes {
            match tokio::time::timeout_at(deadline, inbox.recv()).await {
                Ok(Some(answer)) => {
                    answered += 1;
                    match answer.error {
                        Some((code, message)) => {
                            errors.push(Status::new(Code::from_i32(code), message));
                        }
                        None => tally.add(&answer),
                    }
                }
                _ => {
                    warn!(
                        action = order.action(),
                        request = %id,
                        answered,
                        nodes,
                        "not every node answered an operator request in time"
                    );
                    break;
                }
            }
        }
        if let Some(first) = errors.first() {
            warn!(action = order.action(), request = %id, ?errors, "operator request failed on some nodes");
            if !tally.found {
                return Err(first.clone());
            }
        }
        if tally.nodes == 0 {
            return Err(Status::unavailable("no node answered the operator request"));
        }
        Ok(tally)
    }

    fn deliver(&self, node: &str, id: &str, body: &[u8]) {
        let Some(answers) = self.waiting.get(id) else {
            debug!(%node, request = %id, "answer to a request nobody waits for");
            return;
        };
        match serde_json::from_slice::<WireAnswer>(body) {
            Ok(answer) => {
                // Full only with more than INBOX nodes; that answer then counts as missing.
                let _ = answers.try_send(answer);
            }
            Err(error) => warn!(%node, request = %id, %error, "unreadable operator answer"),
        }
    }
}

/// Takes a request out of the waiting table however its caller ends (answered, timed out, or
/// the admin call dropped).
struct Claimed<'a> {
    waiting: &'a DashMap<String, mpsc::Sender<WireAnswer>>,
    id: &'a str,
}

impl Drop for Claimed<'_> {
    fn drop(&mut self) {
        self.waiting.remove(self.id);
    }
}

async fn listen(hub: Arc<Hub>, operators: Arc<Operators>) {
    let engine = operators.engine.clone();
    let (sink, mut inbox) = mpsc::channel(INBOX);
    // Answers first: once requests arrive, this node may also be sending its own.
    let _answers = subscribe(&engine, answer_channel(engine.node_id()), sink.clone()).await;
    let _requests = subscribe(&engine, OPERATOR_CHANNEL.to_string(), sink).await;
    operators.listening.send_replace(true);
    info!("listening for operator requests from the cluster");
    while let Some(published) = inbox.recv().await {
        match published {
            Published::Request { origin, id, body } => {
                // A task each: one slow room must not hold up the next request.
                tokio::spawn(carry_out(hub.clone(), engine.clone(), origin, id, body));
            }
            Published::Answer { node, id, body } => operators.deliver(&node, &id, &body),
            // After a lost connection: a request missed meanwhile goes unanswered, and its caller
            // stops waiting at its deadline.
            Published::Resubscribed => {
                warn!("operator channels resubscribed; requests sent meanwhile were missed");
            }
            Published::Chat { .. } | Published::Join { .. } | Published::Leave { .. } => {}
        }
    }
}

/// Subscribes `channel`, retrying with backoff until Redis answers: a node may start while
/// Redis is down, and its operator channels must be there once it is back.
async fn subscribe(
    engine: &RedisEngine,
    channel: String,
    sink: mpsc::Sender<Published>,
) -> Subscription {
    let mut pause = RECONNECT_MIN;
    loop {
        match engine
            .subscribe_channel(OPERATOR_SHARD, channel.clone(), sink.clone())
            .await
        {
            Ok(subscription) => return subscription,
            Err(error) => {
                debug!(%channel, %error, "operator channel not subscribed yet; retrying");
                sleep(pause).await;
                pause = (pause * 2).min(RECONNECT_MAX);
            }
        }
    }
}

async fn carry_out(hub: Arc<Hub>, engine: RedisEngine, origin: String, id: String, body: Bytes) {
    let order = serde_json::from_slice::<WireOrder>(&body)
        .map_err(|e| e.to_string())
        .and_then(Order::try_from);
    // The span ties this node's logs of the action to the caller's request id.
    let span = info_span!("operator_request", request = %id, %origin);
    let answer = match order {
        Ok(order) => {
            let action = order.action();
            let outcome = async {
                info!(action, ?order, "admin action asked by the cluster");
                order.run(&hub).await
            }
            .instrument(span.clone())
            .await;
            match outcome {
                Ok(outcome) => WireAnswer {
                    found: outcome.is_some(),
                    count: outcome.unwrap_or(0) as u64,
                    error: None,
                },
                Err(status) => {
                    span.in_scope(|| warn!(action, %status, "admin action failed here"));
                    WireAnswer::failed(&status)
                }
            }
        }
        Err(reason) => {
            span.in_scope(|| warn!(%reason, "unreadable operator request"));
            WireAnswer::failed(&Status::invalid_argument(format!(
                "unreadable request: {reason}"
            )))
        }
    };
    let body = match serde_json::to_vec(&answer) {
        Ok(body) => body,
        Err(error) => {
            warn!(%origin, request = %id, %error, "cannot encode an operator answer");
            return;
        }
    };
    let node = engine.node_id().as_bytes();
    let payload = payload::encode(&[b"R", node, id.as_bytes(), &body]);
    if let Err(error) = engine
        .publish(OPERATOR_SHARD, answer_channel(&origin), payload)
        .await
    {
        warn!(%origin, request = %id, %error, "operator answer not delivered");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(order: &Order) -> Order {
        let json = serde_json::to_vec(&WireOrder::from(order)).unwrap();
        Order::try_from(serde_json::from_slice::<WireOrder>(&json).unwrap()).unwrap()
    }

    #[test]
    fn orders_survive_the_wire() {
        let kick = Order::Kick(KickOrder {
            target: SessionTarget::User(UserName::parse("al|ice").unwrap()),
            room: Some(RoomName::parse("lobby").unwrap()),
            disconnect: true,
            reason: "spam".into(),
        });
        let Order::Kick(back) = round_trip(&kick) else {
            panic!("not a kick");
        };
        assert_eq!(
            back.target,
            SessionTarget::User(UserName::parse("al|ice").unwrap())
        );
        assert_eq!(back.room.as_ref().map(|r| r.as_str()), Some("lobby"));
        assert!(back.disconnect);
        assert_eq!(back.reason, "spam");

        let by_id = Order::Kick(KickOrder {
            target: SessionTarget::Id(SessionId(1 << 40)),
            room: None,
            disconnect: false,
            reason: String::new(),
        });
        let Order::Kick(back) = round_trip(&by_id) else {
            panic!("not a kick");
        };
        assert_eq!(back.target, SessionTarget::Id(SessionId(1 << 40)));
        assert!(back.room.is_none() && !back.disconnect);

        let close = Order::Close {
            room: RoomName::parse("ops").unwrap(),
            reason: "done".into(),
        };
        let Order::Close { room, reason } = round_trip(&close) else {
            panic!("not a close");
        };
        assert_eq!((room.as_str(), reason.as_str()), ("ops", "done"));
    }

    #[test]
    fn requests_from_redis_are_checked_again() {
        let refused = [
            r#"{"op":"kick","disconnect":true,"reason":""}"#,
            r#"{"op":"kick","user":"a","session":3,"disconnect":true,"reason":""}"#,
            r#"{"op":"kick","user":"system","disconnect":true,"reason":""}"#,
            r#"{"op":"close","room":"","reason":""}"#,
            r#"{"op":"kick","session":0,"disconnect":true,"reason":""}"#,
            r#"{"op":"close","room":"r","reason":"a\u0007b"}"#,
        ];
        for json in refused {
            let wire: WireOrder = serde_json::from_str(json).unwrap();
            assert!(Order::try_from(wire).is_err(), "{json}");
        }
        assert!(serde_json::from_str::<WireOrder>(r#"{"op":"ban"}"#).is_err());
    }

    #[test]
    fn answers_add_up() {
        let mut tally = Tally::default();
        tally.add(&WireAnswer {
            found: false,
            count: 0,
            error: None,
        });
        tally.add(&WireAnswer {
            found: true,
            count: 3,
            error: None,
        });
        assert_eq!(
            tally,
            Tally {
                found: true,
                count: 3,
                nodes: 2
            }
        );
        assert_eq!(
            Tally::one(None),
            Tally {
                found: false,
                count: 0,
                nodes: 1
            }
        );
    }
}
