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
//!
//! Layout: `Order` and its wire form in `order`, each node's answer and the caller's
//! `Tally` in `answer`, the listener every node runs in `listen`; this file holds
//! [`Operators`], the caller's side: publish a request, wait for the answers, sum them.

mod answer;
mod listen;
mod order;

use std::{sync::Arc, time::Duration};

use dashmap::DashMap;
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
    time::Instant,
};
use tonic::{Code, Status};
use tracing::{debug, warn};

pub(crate) use self::{answer::Tally, order::Order};
use self::{answer::WireAnswer, listen::listen, order::WireOrder};
use super::{ask::ROOM_ANSWER, unavailable};
use crate::{
    cluster::{OPERATOR_CHANNEL, RedisEngine, payload},
    hub::Hub,
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
