//! A room's presence in Redis: one sorted set per room of every node's members, scored by
//! expiry. JOIN (with the `max_members` check over all nodes), LEAVE, the refresh that keeps
//! this node's entries alive, and the sweep that announces expired ones, each one atomic script
//! that also publishes the change on the room's channel.

use std::time::Duration;

use bytes::Bytes;
use redis::Value;

use super::{RedisEngine, millis};
use crate::{
    cluster::{
        JoinError, Unavailable,
        keys::{RoomKeys, parse_presence_member},
        scripts::SCRIPTS,
    },
    names::{self, SessionId},
};

/// One presence entry, as stored: which node, which of its sessions, which user.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Member {
    pub node: String,
    pub session: SessionId,
    pub user: String,
}

/// A local member whose presence entry [`RedisEngine::refresh`] extends.
#[derive(Debug, Clone)]
pub struct LocalPresence {
    pub session: SessionId,
    pub user: String,
    /// The encoded JOIN presence message, published again if the entry had disappeared.
    pub join_body: Bytes,
}

/// The answer to a successful [`RedisEngine::join`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The room's last seq at the moment of the join.
    pub seq: u64,
    /// The epoch of that seq (the join starts the room's sequence, at seq 0 in a fresh epoch,
    /// when it has none).
    pub epoch: String,
    /// Every live entry of every node, the joiner included (a user with two sessions appears
    /// twice; dedupe for display if wanted).
    pub members: Vec<Member>,
}

impl RedisEngine {
    /// Adds this node's `session` to the room's presence (expiring after `ttl` unless refreshed)
    /// unless the room already has `max_members` live entries over all nodes, and publishes the
    /// join. Expired entries are swept (and announced) first, so they never count. The room's
    /// sequence is started (seq 0, a fresh epoch) if it has none, and kept for the retention
    /// from now.
    pub async fn join(
        &self,
        room: &str,
        session: SessionId,
        user: &str,
        ttl: Duration,
        max_members: usize,
        join_body: Bytes,
    ) -> Result<Joined, JoinError> {
        let keys = RoomKeys::new(room);
        let args = [
            keys.channel.into_bytes(),
            self.inner.node_id.clone().into_bytes(),
            session.0.to_string().into_bytes(),
            user.as_bytes().to_vec(),
            millis(ttl).into_bytes(),
            max_members.to_string().into_bytes(),
            join_body.to_vec(),
            self.retention_arg(),
            names::new_epoch().into_bytes(),
        ];
        let reply = self
            .call(room, "join", move |mut conn| async move {
                SCRIPTS
                    .join
                    .key(keys.presence)
                    .key(keys.seq)
                    .key(keys.epoch)
                    .key(keys.log)
                    .arg(&args[..])
                    .invoke_async::<Value>(&mut conn)
                    .await
            })
            .await?;
        let malformed = |what: &str| {
            JoinError::Unavailable(self.unexpected(room, "join", format!("reply {what}")))
        };
        let Value::Array(items) = reply else {
            return Err(malformed("is not an array"));
        };
        match items.as_slice() {
            [Value::Int(0)] => Err(JoinError::Full { max: max_members }),
            [Value::Int(1), seq, Value::Array(members), epoch] => Ok(Joined {
                seq: integer(seq).ok_or_else(|| malformed("seq is not a number"))?,
                epoch: text(epoch).ok_or_else(|| malformed("epoch is not text"))?,
                members: parse_members(members),
            }),
            _ => Err(malformed("has an unexpected shape")),
        }
    }

    /// Removes the session's presence entry; if it was there, publishes the leave. Answers
    /// whether it was there.
    pub async fn leave(
        &self,
        room: &str,
        session: SessionId,
        user: &str,
        leave_body: Bytes,
    ) -> Result<bool, Unavailable> {
        let keys = RoomKeys::new(room);
        let args = [
            keys.channel.into_bytes(),
            self.inner.node_id.clone().into_bytes(),
            session.0.to_string().into_bytes(),
            user.as_bytes().to_vec(),
            leave_body.to_vec(),
        ];
        self.call(room, "leave", move |mut conn| async move {
            SCRIPTS
                .leave
                .key(keys.presence)
                .arg(&args[..])
                .invoke_async::<bool>(&mut conn)
                .await
        })
        .await
    }

    /// Extends the presence entries of this node's `local` members to now + `ttl`. An entry that
    /// had disappeared (swept while this node was cut off, or Redis lost its data) is added back
    /// and its join published again. The room's seq and history are kept for the retention from
    /// now, so a quiet room that still has members never loses its count. Answers how many were
    /// added back.
    pub async fn refresh(
        &self,
        room: &str,
        local: &[LocalPresence],
        ttl: Duration,
    ) -> Result<usize, Unavailable> {
        if local.is_empty() {
            return Ok(0);
        }
        let keys = RoomKeys::new(room);
        let mut args = Vec::with_capacity(4 + 3 * local.len());
        args.push(keys.channel.into_bytes());
        args.push(self.inner.node_id.clone().into_bytes());
        args.push(millis(ttl).into_bytes());
        args.push(self.retention_arg());
        for entry in local {
            args.push(entry.session.0.to_string().into_bytes());
            args.push(entry.user.clone().into_bytes());
            args.push(entry.join_body.to_vec());
        }
        self.call(room, "refresh", move |mut conn| async move {
            SCRIPTS
                .refresh
                .key(keys.presence)
                .key(keys.seq)
                .key(keys.log)
                .key(keys.epoch)
                .arg(&args[..])
                .invoke_async::<usize>(&mut conn)
                .await
        })
        .await
    }

    /// Removes the room's expired presence entries and publishes a leave (without a body) for
    /// each, atomically: however many nodes sweep, each expiry is announced once. Answers how
    /// many expired.
    pub async fn sweep(&self, room: &str) -> Result<usize, Unavailable> {
        let keys = RoomKeys::new(room);
        self.call(room, "sweep", move |mut conn| async move {
            SCRIPTS
                .sweep
                .key(keys.presence)
                .arg(keys.channel)
                .invoke_async::<usize>(&mut conn)
                .await
        })
        .await
    }

    /// The room's live presence entries over all nodes.
    pub async fn members(&self, room: &str) -> Result<Vec<Member>, Unavailable> {
        let presence = RoomKeys::new(room).presence;
        let reply = self
            .call(room, "members", move |mut conn| async move {
                SCRIPTS
                    .members
                    .key(presence)
                    .invoke_async::<Vec<Value>>(&mut conn)
                    .await
            })
            .await?;
        Ok(parse_members(&reply))
    }
}

fn integer(value: &Value) -> Option<u64> {
    match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        Value::SimpleString(text) => text.parse().ok(),
        _ => None,
    }
}

/// A text reply (an empty bulk string is empty text).
fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(text) => Some(text.clone()),
        _ => None,
    }
}

/// Presence members from a script reply; entries not in our format are skipped.
fn parse_members(values: &[Value]) -> Vec<Member> {
    values
        .iter()
        .filter_map(|value| match value {
            Value::BulkString(bytes) => std::str::from_utf8(bytes).ok(),
            _ => None,
        })
        .filter_map(parse_presence_member)
        .map(|(node, session, user)| Member {
            node: node.to_owned(),
            session,
            user: user.to_owned(),
        })
        .collect()
}
