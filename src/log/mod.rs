//! A room's log: the one seam between the [`Room`](crate::actors::room::Room) actor and the
//! engine that orders its CHATs. The log owns what differs between engines — the order, the seq,
//! the history (replay) and the presence truth — and the room keeps everything else: members,
//! rate buckets, expiry, and the one join, post and fan-out that both engines share.
//!
//! [`RoomLog`] is an enum, not a trait object: there are exactly two engines, both known here,
//! and the memory log sits on the hot path, where a `match` costs nothing while a trait with
//! async answers would box every answer, the memory log's too. Each operation answers
//! [`Answer::Now`] (the memory log, inside the room's handler) or [`Answer::Echo`] (the Redis
//! log: a future the room waits on). The Redis log's CHATs and presence then arrive on the
//! room's channel and reach the room through [`LogHost`], the narrow view of the room that the
//! log's channel work (subscribing, gap fills, re-syncs, presence refresh) is written against.
//!
//! Both engines answer the same contract for resuming and resending: a room's sequence has an
//! epoch (there from the room's first JOIN, so every JOINED carries one; new whenever the count
//! starts over), a JOIN's `since_seq` is read against it ([`resume`]), and a CHAT whose `(user, ref)` the room accepted within
//! `dedup_window_ms` is answered with its original ack instead of being posted again
//! ([`Accepted::Resent`]).

mod dedup;
pub mod memory;
pub mod redis;
mod resume;

use std::{future::Future, pin::Pin, time::Duration};

use actix::{Actor, Context};
use bytes::Bytes;

use crate::{
    cluster::Published,
    config::RoomLimits,
    error::ChatError,
    names::{RoomName, SessionId, UserName},
    proto::{self, Kind},
};
pub use memory::MemoryLog;
pub use redis::RedisLog;
pub use resume::Resume;

/// A future the room waits on (with `ctx.wait`); it runs on the room's arbiter.
pub type Echo<T> = Pin<Box<dyn Future<Output = T>>>;

/// How a log answers: at once, or once Redis has.
pub enum Answer<N, L> {
    Now(N),
    Echo(Echo<L>),
}

/// A CHAT the log accepted, in the log's order, ready to fan out: `live` is encoded once with its
/// seq and epoch; the sender's `ref` (when the sender is a member here) is re-attached for the
/// sender only.
#[derive(Debug, Clone)]
pub struct Appended {
    pub seq: u64,
    pub live: Bytes,
    pub ack: Option<(SessionId, String)>,
}

/// A presence change to tell the room's members (never `except`, when set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    pub kind: Kind,
    pub user: String,
    pub except: Option<SessionId>,
}

/// What a JOIN asks of the log.
#[derive(Debug, Clone)]
pub struct Joining {
    pub session: SessionId,
    pub user: UserName,
    /// Already a member here: only the ack is wanted, no presence and no replay.
    pub rejoin: bool,
    /// The JOIN has a `ref`, so JOINED and the replay are wanted.
    pub replay_wanted: bool,
    pub since_seq: u64,
    /// The epoch `since_seq` counts in; empty from clients that do not know epochs.
    pub epoch: String,
    pub presence_ttl: Duration,
}

/// What the log answered a JOIN, engine-specific until [`RoomLog::admit`] settles it.
pub struct JoinReply(Reply);

enum Reply {
    Memory,
    Redis(redis::JoinReply),
}

/// A JOIN the log admitted.
#[derive(Debug, Default)]
pub struct Admitted {
    /// The JOINED's `seq`.
    pub seq: u64,
    /// The JOINED's `epoch`: the room's.
    pub epoch: String,
    /// The JOINED's `replay_truncated` (see [`Resume::truncated`]).
    pub replay_truncated: bool,
    /// The seq the JOINED and replay cover: live CHATs up to it are not delivered again.
    pub live_after: u64,
    /// The JOINED's member list; `None` when this room's members are the whole truth.
    pub members: Option<Vec<String>>,
    /// The replay, encoded and marked as such, oldest first.
    pub replay: Vec<Bytes>,
    /// Presence to tell the members already here, before the joiner becomes one.
    pub presence: Vec<Presence>,
}

/// A publish on its way, settled by [`RoomLog::published`].
pub struct Publishing(redis::Publishing);

/// What became of a CHAT handed to the log.
#[derive(Debug)]
pub enum Accepted {
    /// Appended here and now (memory): fan it out. With the message id.
    Appended(Appended, String),
    /// Published through Redis with this seq and message id: the fan-out comes with the echo.
    Published(u64, String),
    /// A resend of a CHAT the room accepted from this user with this `ref` within
    /// `dedup_window_ms`: not posted again; `ack` (the original CHAT with the `ref`, as its
    /// sender got it) goes to session `to` alone.
    Resent { to: SessionId, ack: Bytes },
    /// A resend, as above, of a CHAT the Redis log has not delivered here yet: the original
    /// ack goes to its sender with that CHAT's fan-out, so it never overtakes the CHATs before
    /// it.
    ResentWithEcho,
}

impl Accepted {
    /// The seq and message id of a CHAT that was posted; `None` for a resend.
    pub fn posted(&self) -> Option<(u64, String)> {
        match self {
            Accepted::Appended(appended, id) => Some((appended.seq, id.clone())),
            Accepted::Published(seq, id) => Some((*seq, id.clone())),
            Accepted::Resent { .. } | Accepted::ResentWithEcho => None,
        }
    }
}

pub enum RoomLog {
    Memory(MemoryLog),
    Redis(RedisLog),
}

/// What the Redis log's channel-driven work needs of the room that holds it.
pub trait LogHost: Actor<Context = Context<Self>> {
    fn redis_log(&mut self) -> Option<&mut RedisLog>;
    fn room_name(&self) -> &RoomName;
    /// This node's members of the room.
    fn local_members(&self) -> Vec<(SessionId, UserName)>;
    fn presence_ttl(&self) -> Duration;
    /// Fans out a CHAT the log appended.
    fn appended(&mut self, appended: Appended, ctx: &mut Context<Self>);
    /// Tells the members a presence change.
    fn announce(&mut self, presence: Presence, ctx: &mut Context<Self>);
    /// The log's count started over (Redis lost the room): every seq is new again.
    fn count_restarted(&mut self);
}

impl RoomLog {
    /// The seq of the last CHAT this log delivered here.
    pub fn last_seq(&self) -> u64 {
        match self {
            RoomLog::Memory(log) => log.last_seq(),
            RoomLog::Redis(log) => log.last_seq(),
        }
    }

    /// Whether the room is worth keeping for `empty_room_ttl_ms` once empty: only the memory
    /// log keeps something (seq, history, an epoch a member may resume in) a fresh room could
    /// not read back.
    pub fn keeps_anything(&self) -> bool {
        match self {
            RoomLog::Memory(log) => log.keeps_anything(),
            RoomLog::Redis(_) => false,
        }
    }

    /// The memory log, whose history the room packs once it is quiet (the Redis log's history
    /// is in Redis).
    pub fn memory(&mut self) -> Option<&mut MemoryLog> {
        match self {
            RoomLog::Memory(log) => Some(log),
            RoomLog::Redis(_) => None,
        }
    }

    /// LEAVEs not yet recorded: an empty room stops only after them.
    pub fn leaves_in_flight(&self) -> bool {
        match self {
            RoomLog::Memory(_) => false,
            RoomLog::Redis(log) => log.leaves_in_flight(),
        }
    }

    /// Room-local refusal of a new member; the Redis log counts every node's in its join.
    pub fn check_capacity(&self, here: usize, max: usize) -> Result<(), ChatError> {
        match self {
            RoomLog::Memory(_) if here >= max => Err(ChatError::RoomFull { max }),
            _ => Ok(()),
        }
    }

    pub fn join(&mut self, joining: &Joining, limits: &RoomLimits) -> Answer<JoinReply, JoinReply> {
        match self {
            RoomLog::Memory(_) => Answer::Now(JoinReply(Reply::Memory)),
            RoomLog::Redis(log) => {
                let reply = log.join(joining, limits);
                Answer::Echo(Box::pin(
                    async move { JoinReply(Reply::Redis(reply.await)) },
                ))
            }
        }
    }

    /// Settles a JOIN's answer; `first` when the room has no member here yet.
    pub fn admit(
        &mut self,
        reply: JoinReply,
        joining: &Joining,
        first: bool,
        limits: &RoomLimits,
    ) -> Result<Admitted, ChatError> {
        match (self, reply.0) {
            (RoomLog::Memory(log), _) => Ok(log.admit(joining, limits)),
            (RoomLog::Redis(log), Reply::Redis(reply)) => log.admit(reply, joining, first, limits),
            // unreachable: a room's log never changes engine, and only the memory log answers
            // `Reply::Memory`.
            (RoomLog::Redis(_), Reply::Memory) => unreachable!("a Redis log answers with Redis"),
        }
    }

    /// Appends a CHAT by `user`, unless `ack`'s `ref` makes it a resend (see
    /// [`Accepted::Resent`]). The memory log appends at once; the Redis log publishes, and the
    /// CHAT comes back (with `ack`) on the channel.
    pub fn append(
        &mut self,
        room: &RoomName,
        user: &str,
        content: String,
        ack: Option<(SessionId, String)>,
        limits: &RoomLimits,
    ) -> Answer<Accepted, Publishing> {
        match self {
            RoomLog::Memory(log) => Answer::Now(log.append(room, user, content, ack, limits)),
            RoomLog::Redis(log) => {
                let publishing = log.append(user, content, ack, limits);
                Answer::Echo(Box::pin(async move { Publishing(publishing.await) }))
            }
        }
    }

    /// The outcome of a publish, or why it failed.
    pub fn published(&mut self, publishing: Publishing) -> Result<Accepted, ChatError> {
        match self {
            RoomLog::Redis(log) => log.published(publishing.0),
            // unreachable: a `Publishing` comes only from a Redis log's append.
            RoomLog::Memory(_) => unreachable!("only the Redis log publishes"),
        }
    }

    /// A member left — `ended`: without a LEAVE, its stream ended, so it may come back to
    /// resume. The memory log answers with the LEAVE to tell; the Redis log publishes it (its
    /// echo tells every node) and answers once it did. Call [`RoomLog::left`] then.
    pub fn leave(
        &mut self,
        session: SessionId,
        user: &UserName,
        ended: bool,
    ) -> Answer<Presence, ()> {
        match self {
            RoomLog::Memory(log) => {
                log.left(ended);
                Answer::Now(Presence {
                    kind: Kind::Leave,
                    user: user.to_string(),
                    except: None,
                })
            }
            RoomLog::Redis(log) => Answer::Echo(log.leave(session, user)),
        }
    }

    pub fn left(&mut self) {
        if let RoomLog::Redis(log) = self {
            log.left();
        }
    }

    /// Applies reloaded limits to what the log retains here.
    pub fn set_limits(&mut self, limits: &RoomLimits) {
        if let RoomLog::Memory(log) = self {
            log.set_limits(limits);
        }
    }
}

/// The room started: a Redis log subscribes and starts refreshing its presence.
pub fn started<H: LogHost>(host: &mut H, ctx: &mut Context<H>) {
    redis::sync::start(host, ctx);
}

/// One item of the room's Redis channel.
pub fn on_published<H: LogHost>(host: &mut H, published: Published, ctx: &mut Context<H>) {
    redis::sync::on_published(host, published, ctx);
}

/// A new CHAT of `room` with a fresh id; `seq` is 0 and `epoch` empty when Redis assigns them.
pub fn chat(room: &RoomName, user: &str, content: String, seq: u64, epoch: &str) -> proto::Message {
    proto::Message {
        kind: Kind::Chat.into(),
        user: user.to_string(),
        content,
        timestamp: proto::now_ms(),
        room: room.to_string(),
        id: uuid::Uuid::now_v7().to_string(),
        seq,
        epoch: epoch.to_string(),
        ..proto::Message::default()
    }
}

/// The checks an operator's announcement passes, wherever the room is open.
pub fn check_announcement(content: &str, limits: &RoomLimits) -> Result<(), ChatError> {
    if content.is_empty() {
        return Err(ChatError::BadRequest(
            "an announcement needs `content`".into(),
        ));
    }
    if content.len() > limits.max_message_bytes {
        return Err(ChatError::MessageTooLarge {
            len: content.len(),
            max: limits.max_message_bytes,
        });
    }
    Ok(())
}
