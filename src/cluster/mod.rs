//! Cluster mode's Redis layer (issue 7): rooms whose members sit on several nodes share one
//! order, one gapless seq, one history and one presence through Redis.
//!
//! ```text
//!  Room (any node) ──publish_chat/join/leave/refresh──▶ RedisEngine ──Lua script──▶ shard(room)
//!       ▲                                                                              │ PUBLISH
//!       └──── mpsc sink ◀── Published ◀── ShardTask (one pub/sub connection per shard) ◀┘
//! ```
//!
//! - [`keys`]: key names per room and the stable room → shard mapping (FNV-1a 64).
//! - `scripts`: the atomic Lua scripts (seq + log + publish; presence with expiry sweeps).
//! - [`payload`]: the pub/sub payload format and [`Published`], what room sinks receive.
//! - `engine/`: [`RedisEngine`], by noun: connections and their health flag, room seq and
//!   history, presence, user places, subscriptions, operator channels, room listing.
//! - `subscriber/`: per-shard pub/sub tasks (connection loop with backoff, routing table),
//!   [`Subscription`].

mod engine;
pub mod keys;
pub mod payload;
mod scripts;
mod subscriber;

use std::time::Duration;

pub use engine::{
    Dedup, HEALTH_INTERVAL, Joined, LocalPresence, Member, Posted, RedisEngine, RoomCount, Timeouts,
};
pub(crate) use keys::{OPERATOR_CHANNEL, answer_channel};
pub use keys::{shard_for, stable_hash};
pub use payload::Published;
pub use subscriber::{RECONNECT_MAX, RECONNECT_MIN, Subscription};

/// Redis could not serve a call. Rooms answer their client ERROR `unavailable`; the `Display`
/// text is for logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    /// No connection to the shard (refused, dropped, being re-established).
    #[error("redis shard {shard} unreachable during {op}: {reason}")]
    Unreachable {
        shard: usize,
        op: &'static str,
        reason: String,
    },
    /// No answer in time. For a write the outcome is unknown: it may still have happened.
    #[error("redis shard {shard} did not answer {op} within {after:?}")]
    TimedOut {
        shard: usize,
        op: &'static str,
        after: Duration,
    },
    /// Redis answered with an error (a script error, a wrong type) or an unexpected reply.
    #[error("redis shard {shard} refused {op}: {reason}")]
    Rejected {
        shard: usize,
        op: &'static str,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// The room already has `max` live members over all nodes.
    #[error("room is full ({max} members)")]
    Full { max: usize },
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

/// The engine cannot be built from this configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidCluster {
    #[error("no redis URL configured")]
    NoUrls,
    #[error("invalid redis URL {url}: {reason}")]
    Url { url: String, reason: String },
    #[error("node id {0:?} must be non-empty, without '|' or control characters")]
    NodeId(String),
    #[error("the redis engine must be built inside a tokio runtime")]
    NoRuntime,
}
