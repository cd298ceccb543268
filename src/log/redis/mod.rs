//! The Redis log (`[cluster] engine = "redis"`): the room's order is its Redis channel's order.
//! An append is published by one atomic script that assigns the global seq; every node's room
//! (this one included) gets it back on the channel and fans it out then, so members of every
//! node see one order with one gapless seq. JOIN, replay and presence go through Redis too.
//!
//! Gaplessness rests on three rules: the room reads any seq only after its subscription is live;
//! a seq that arrives ahead of the next expected one makes the log fetch the missing ones from
//! the room's Redis stream first ([`sync`]); and a joiner's replay ends at the seq its join
//! script saw, from which on it gets live traffic.
//!
//! Presence travels the same channel but carries no seq, so the log keeps a roster of every
//! node's members ([`presence`]).
//!
//! - this file: [`RedisLog`]'s state and construction, and the helpers its parts share.
//! - `join`: a JOIN through Redis and its replay.
//! - `chat`: a CHAT's publish, and its sender's ack waiting for the echo.
//! - `presence`: the roster, LEAVEs, and the refresh of this node's entries.
//! - `sync`: keeping in step with the channel (subscribing, gap fills, re-syncs).

mod chat;
mod join;
mod presence;
pub(super) mod sync;

use std::collections::HashMap;

use bytes::Bytes;
use tokio::sync::mpsc;

use self::{chat::PendingAck, sync::Resync};
pub use self::{
    chat::{Publishing, publish_announcement},
    join::JoinReply,
};
use crate::{
    cluster::{Published, RedisEngine, Subscription, Unavailable},
    error::ChatError,
    names::{RoomName, SessionId},
    proto::{self, Kind},
};

/// Messages from the channel that may wait for the room. The subscriber never waits for room
/// here: past this it drops the room's messages and the room re-syncs from its stream.
pub const SINK_CAPACITY: usize = 1024;

/// The room's subscription to its channel.
#[derive(Debug)]
enum Link {
    /// Never subscribed yet, or the last attempt failed.
    Down,
    /// A subscribe is in flight: a second one would replace the first's route and, failing,
    /// leave the room holding a subscription that receives nothing.
    Subscribing,
    /// Held, not read: dropping it (with the room) unsubscribes.
    Up { _subscription: Subscription },
}

/// A room's log in cluster mode: its order, seq, history and presence truth live in Redis.
pub struct RedisLog {
    engine: RedisEngine,
    name: RoomName,
    /// Where the room's channel delivers; the room reads the other end as a stream.
    sink: mpsc::Sender<Published>,
    link: Link,
    resync: Resync,
    /// A presence refresh is in flight: interval ticks that catch up after a long wait must
    /// not queue a burst of them.
    refreshing: bool,
    /// Seq of the last CHAT delivered here.
    seq: u64,
    /// Id of the last CHAT delivered: after a reconnect, the entry Redis holds at the room's
    /// seq must still be this one, or Redis lost the room's data (restarted without it).
    /// `None` until the room delivers one (it started on existing history).
    last_id: Option<String>,
    /// This node's CHATs on their way through Redis, by message id.
    pending: HashMap<String, PendingAck>,
    /// Every node's members as this room knows them, (node, session) → user: presence events
    /// that change nothing (a JOIN already listed, a LEAVE of someone not listed, a refresh
    /// re-announcing a member) are not passed on, and after a reconnect the differences with
    /// Redis are announced instead of lost.
    roster: HashMap<(String, SessionId), String>,
    /// LEAVEs of this node's members not yet published. An empty room stops only once they
    /// are: a session that re-joins at once then reaches a fresh room after its LEAVE is in
    /// Redis, so its new JOIN cannot be overtaken by its own older LEAVE.
    leaves_in_flight: usize,
}

/// Redis could not serve a call: the client hears ERROR `unavailable`.
fn unavailable(error: &Unavailable) -> ChatError {
    ChatError::Unavailable(error.to_string())
}

impl RedisLog {
    /// The log and the receiving end of its channel, which the room must read as a stream.
    pub fn new(engine: RedisEngine, name: RoomName) -> (RedisLog, mpsc::Receiver<Published>) {
        let (sink, published) = mpsc::channel(SINK_CAPACITY);
        let log = RedisLog {
            engine,
            name,
            sink,
            link: Link::Down,
            resync: Resync::InStep,
            refreshing: false,
            seq: 0,
            last_id: None,
            pending: HashMap::new(),
            roster: HashMap::new(),
            leaves_in_flight: 0,
        };
        (log, published)
    }
}

/// Subscribes `room` and reads its seq, in that order: nothing read before the subscription is
/// live can be missed.
async fn subscribe(
    engine: &RedisEngine,
    room: &str,
    sink: mpsc::Sender<Published>,
) -> Result<(Subscription, u64), Unavailable> {
    let subscription = engine.subscribe(room, sink).await?;
    let seq = engine.last_seq(room).await?;
    Ok((subscription, seq))
}

/// An encoded presence event (JOIN or LEAVE), as the scripts publish it.
fn event(room: &str, kind: Kind, user: &str) -> Bytes {
    proto::encode(&proto::Message::event(kind, room, user))
}
