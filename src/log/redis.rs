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

mod presence;
pub(super) mod sync;

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use bytes::Bytes;
use tokio::sync::mpsc;
use tracing::warn;

use self::sync::Resync;
use super::{Admitted, Echo, Joining};
use crate::{
    cluster::{self, JoinError, Published, RedisEngine, Subscription, Unavailable},
    config::RoomLimits,
    error::ChatError,
    names::{RoomName, SYSTEM_USER, SessionId, UserName},
    proto::{self, Kind},
};

/// Messages from the channel that may wait for the room.
pub const SINK_CAPACITY: usize = 1024;
/// An ack whose echo has not come back in this long is forgotten (its publish timed out and
/// may never have happened).
const PENDING_ACK_TTL: Duration = Duration::from_secs(30);

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

/// A CHAT of this node on its way through Redis: its sender and the sender's `ref`.
type PendingAck = (SessionId, String, Instant);

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

/// What Redis answered a JOIN (see [`RedisLog::join`]).
pub struct JoinReply {
    /// The JOIN subscribed the room first (it was not).
    resubscribing: bool,
    fresh: Option<(Subscription, u64)>,
    outcome: Result<(cluster::Joined, Vec<(u64, Bytes)>), ChatError>,
}

/// A publish's outcome (see [`RedisLog::append`]).
pub struct Publishing {
    id: String,
    /// A member's CHAT, whose ack waits for the echo.
    acked: bool,
    result: Result<u64, Unavailable>,
}

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

    pub fn last_seq(&self) -> u64 {
        self.seq
    }

    pub fn leaves_in_flight(&self) -> bool {
        self.leaves_in_flight > 0
    }

    /// JOIN through Redis: the script checks `max_members` over all nodes, adds the presence
    /// entry, publishes the JOIN and returns the seq and every node's members; the replay is
    /// read up to that seq. A room that is not subscribed (Redis was down when it started)
    /// subscribes first, in the same step, so the JOIN works as soon as Redis is back.
    pub fn join(&mut self, joining: &Joining, limits: &RoomLimits) -> Echo<JoinReply> {
        let resubscribe = matches!(self.link, Link::Down).then(|| self.sink.clone());
        let resubscribing = resubscribe.is_some();
        if resubscribing {
            self.link = Link::Subscribing;
        }
        let engine = self.engine.clone();
        let name = self.name.to_string();
        let (ttl, max_members) = (joining.presence_ttl, limits.max_members);
        let (since_seq, history_on_join) = (joining.since_seq, limits.history_on_join);
        let (session, user) = (joining.session, joining.user.to_string());
        let (rejoin, replay_wanted) = (joining.rejoin, joining.replay_wanted);
        Box::pin(async move {
            let mut fresh = None;
            if let Some(sink) = resubscribe {
                match subscribe(&engine, &name, sink).await {
                    Ok(ok) => fresh = Some(ok),
                    Err(error) => {
                        return JoinReply {
                            resubscribing,
                            fresh,
                            outcome: Err(unavailable(&error)),
                        };
                    }
                }
            }
            let outcome = async {
                let joined = if rejoin {
                    let members = engine.members(&name).await.map_err(|e| unavailable(&e))?;
                    let seq = engine.last_seq(&name).await.map_err(|e| unavailable(&e))?;
                    cluster::Joined { seq, members }
                } else {
                    let presence = event(&name, Kind::Join, &user);
                    engine
                        .join(&name, session, &user, ttl, max_members, presence)
                        .await
                        .map_err(|e| match e {
                            JoinError::Full { max } => ChatError::RoomFull { max },
                            JoinError::Unavailable(e) => unavailable(&e),
                        })?
                };
                let replay = if replay_wanted && !rejoin {
                    match engine
                        .replay(&name, since_seq, history_on_join, joined.seq)
                        .await
                    {
                        Ok(replay) => replay,
                        Err(error) => {
                            // Joined in Redis but refused here: take the entry back (its LEAVE
                            // follows the JOIN everyone saw), or it would count until the TTL.
                            let undo = event(&name, Kind::Leave, &user);
                            let _ = engine.leave(&name, session, &user, undo).await;
                            return Err(unavailable(&error));
                        }
                    }
                } else {
                    Vec::new()
                };
                Ok((joined, replay))
            }
            .await;
            JoinReply {
                resubscribing,
                fresh,
                outcome,
            }
        })
    }

    /// Settles a JOIN's reply: the roster takes the member list returned (the truth at that
    /// moment) and JOINED lists every node's members.
    pub fn admit(
        &mut self,
        reply: JoinReply,
        joining: &Joining,
        first: bool,
        limits: &RoomLimits,
    ) -> Result<Admitted, ChatError> {
        if reply.resubscribing {
            self.link = match reply.fresh {
                Some((subscription, seq)) => {
                    self.seq = self.seq.max(seq);
                    Link::Up {
                        _subscription: subscription,
                    }
                }
                None => Link::Down,
            };
        }
        let (joined, replay) = reply.outcome?;
        let presence = self.take_join_snapshot(&joined.members, joining.session, first);
        let members = joined.members.iter().map(|m| m.user.clone()).collect();
        let replay = newest_within(replay, limits.history, limits.history_bytes)
            .into_iter()
            .map(|(seq, body)| proto::as_replay(&proto::with_seq(&body, seq)))
            .collect();
        Ok(Admitted {
            // A repeated JOIN reports what this member has been sent, not Redis's newest.
            seq: if joining.rejoin { self.seq } else { joined.seq },
            live_after: joined.seq,
            members: Some(members),
            replay,
            presence,
        })
    }

    /// Publishes a CHAT (with a fresh id, no seq: Redis assigns it). A member's ack waits in
    /// `pending` for the echo, which finds it by message id (UUIDs only this node makes).
    pub fn append(
        &mut self,
        user: &str,
        content: String,
        ack: Option<(SessionId, String)>,
        history: usize,
    ) -> impl Future<Output = Publishing> + 'static {
        let message = super::chat(&self.name, user, content, 0);
        let body = proto::encode(&message);
        let id = message.id;
        let acked = ack.is_some();
        let origin = match ack {
            Some((session, r#ref)) => {
                let entry = (session, r#ref, Instant::now());
                self.pending.insert(id.clone(), entry);
                session
            }
            None => SessionId(0),
        };
        let (engine, name) = (self.engine.clone(), self.name.to_string());
        async move {
            let result = engine.publish_chat(&name, history, &id, origin, body).await;
            Publishing { id, acked, result }
        }
    }

    pub fn published(&mut self, publishing: Publishing) -> Result<(u64, String), ChatError> {
        let Publishing { id, acked, result } = publishing;
        match result {
            Ok(seq) => Ok((seq, id)),
            Err(error @ Unavailable::TimedOut { .. }) if acked => {
                // Redis may still run the script it was sent: the pending ack stays (for
                // PENDING_ACK_TTL), so if the CHAT does come through, the sender gets it
                // with its ref, after this ERROR.
                Err(ChatError::Unavailable(format!(
                    "{error}; the CHAT may still be delivered (with this ref)"
                )))
            }
            Err(error) => {
                self.pending.remove(&id);
                Err(unavailable(&error))
            }
        }
    }

    /// Removes the presence entry of a session that left this node's room; the LEAVE reaches
    /// every node's members through the channel. The room waits for it, so a quick re-JOIN of
    /// the same session cannot be overtaken by its own older LEAVE. If Redis cannot be reached,
    /// the entry expires after `presence_ttl_ms` and a sweep announces the LEAVE then.
    pub fn leave(&mut self, session: SessionId, user: &UserName) -> Echo<()> {
        let (engine, name) = (self.engine.clone(), self.name.to_string());
        let user = user.to_string();
        let body = event(&name, Kind::Leave, &user);
        // Runs on the engine's runtime, so it completes even if the room or its arbiter stops
        // meanwhile (shutdown).
        let removal = self.engine.spawn(async move {
            if let Err(error) = engine.leave(&name, session, &user, body).await {
                warn!(room = %name, session = %session, %error, "LEAVE not published; presence expires by TTL");
            }
        });
        self.leaves_in_flight += 1;
        Box::pin(async move { drop(removal.await) })
    }

    /// A LEAVE from [`RedisLog::leave`] is published (or given up on).
    pub fn left(&mut self) {
        self.leaves_in_flight -= 1;
    }

    /// Takes the ack of CHAT `id` (if this node sent it) and records it as the last delivered.
    fn delivered(&mut self, seq: u64, id: &str) -> Option<(SessionId, String)> {
        self.seq = seq;
        self.last_id = Some(id.to_string());
        self.pending
            .remove(id)
            .map(|(session, r#ref, _)| (session, r#ref))
    }

    /// Forgets acks whose publish timed out long ago.
    fn forget_stale_acks(&mut self) {
        self.pending
            .retain(|_, (_, _, at)| at.elapsed() < PENDING_ACK_TTL);
    }
}

/// An announcement to a room that is not open on this node: published straight to its channel,
/// as its room's log would (the nodes holding it fan it out and keep it in history).
pub async fn publish_announcement(
    engine: &RedisEngine,
    room: &RoomName,
    history: usize,
    content: String,
) -> Result<(u64, String), Unavailable> {
    let message = super::chat(room, SYSTEM_USER, content, 0);
    let body = proto::encode(&message);
    let seq = engine
        .publish_chat(room.as_str(), history, &message.id, SessionId(0), body)
        .await?;
    Ok((seq, message.id))
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

fn event(room: &str, kind: Kind, user: &str) -> Bytes {
    proto::encode(&proto::Message::event(kind, room, user))
}

/// The newest entries of `replay`, at most `max_count` (`history`) whose encodings fit in
/// `max_bytes`, oldest first. Redis trims a room's stream only approximately and by count only
/// (`XADD … MAXLEN ~`), so the bounds a memory room keeps in its ring are applied when the
/// replay is read: a full replay is never longer than `history` and still fits a fresh
/// joiner's queue.
fn newest_within(
    mut replay: Vec<(u64, Bytes)>,
    max_count: usize,
    max_bytes: usize,
) -> Vec<(u64, Bytes)> {
    let mut total = 0;
    let keep = replay
        .iter()
        .rev()
        .take(max_count)
        .take_while(|(_, body)| {
            total += body.len();
            total <= max_bytes
        })
        .count();
    replay.drain(..replay.len() - keep);
    replay
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_keeps_the_newest_entries_that_fit_the_byte_bound() {
        let entry = |seq: u64, len: usize| (seq, Bytes::from(vec![b'x'; len]));
        let replay = vec![entry(1, 100), entry(2, 100), entry(3, 50), entry(4, 100)];
        let seqs = |r: Vec<(u64, Bytes)>| r.into_iter().map(|(s, _)| s).collect::<Vec<_>>();
        assert_eq!(seqs(newest_within(replay.clone(), 10, 249)), vec![3, 4]);
        assert_eq!(seqs(newest_within(replay.clone(), 10, 250)), vec![2, 3, 4]);
        assert_eq!(
            seqs(newest_within(replay.clone(), 10, 350)),
            vec![1, 2, 3, 4]
        );
        assert_eq!(
            seqs(newest_within(replay.clone(), 10, 99)),
            Vec::<u64>::new()
        );
        assert_eq!(seqs(newest_within(Vec::new(), 10, 10)), Vec::<u64>::new());
        assert_eq!(
            seqs(newest_within(replay.clone(), 2, 350)),
            vec![3, 4],
            "history caps the count"
        );
    }
}
