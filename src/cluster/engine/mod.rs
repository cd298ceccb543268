//! [`RedisEngine`]: a node's handle on the cluster's Redis shards, cheap to clone. Every call is
//! bounded by the response timeout and answers [`Unavailable`](super::Unavailable) instead of
//! hanging when Redis is down. This file builds the engine; its calls live beside it, by noun:
//!
//! - `connections`: per shard one auto-reconnecting command connection; `call_shard`, the one
//!   way a command reaches it, and how a failure is classified.
//! - `health`: the health flag and the watcher that pings every shard.
//! - `rooms`: a room's seq and history (publish a CHAT, replay, last seq).
//! - `presence`: a room's members over all nodes (join, leave, refresh, sweep, list).
//! - `users`: a user's session places over all nodes.
//! - `subscriptions`: subscribing a room's channel through the shard's pub/sub task.
//! - `operators`: publishing on the operator channels.
//! - `listing`: every room's count and seq, for ListRooms / GetRoom.

mod connections;
mod health;
mod listing;
mod operators;
mod presence;
mod rooms;
mod subscriptions;
mod users;

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use tokio::{
    runtime::Handle,
    sync::{mpsc, watch},
};

pub use self::{
    connections::Timeouts,
    health::HEALTH_INTERVAL,
    listing::RoomCount,
    presence::{Joined, LocalPresence, Member},
    rooms::{Dedup, Posted},
};
use self::{
    connections::{Shard, connection_manager},
    health::watch_commands,
};
use super::{InvalidCluster, keys::shard_for, subscriber::ShardTask};
pub(crate) use health::Health;

/// How long a room's seq and log outlive its last CHAT unless [`RedisEngine::set_retention`]
/// says otherwise.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
/// Commands waiting for a shard's pub/sub task (subscribe/unsubscribe).
const SUBSCRIPTION_QUEUE: usize = 1024;

/// A node's handle on the cluster's Redis shards; every clone shares the same connections.
#[derive(Clone)]
pub struct RedisEngine {
    inner: Arc<Inner>,
}

struct Inner {
    node_id: String,
    timeouts: Timeouts,
    shards: Vec<Shard>,
    health: Arc<Health>,
    /// The runtime the engine was built on. Every call runs there, so connections and their
    /// driver tasks live on one runtime even when rooms call from actix arbiters (each arbiter
    /// is its own current-thread runtime that may stop before the connection does).
    runtime: Handle,
    /// Tells a room's subscription from a later one of the same channel (see the subscriber).
    next_subscription: AtomicU64,
    /// How long a room's seq and log outlive its last CHAT (see [`RedisEngine::set_retention`]).
    retention_ms: AtomicU64,
}

impl RedisEngine {
    /// Builds the engine without waiting for Redis: connections are made in the background (and
    /// remade after any loss), so a node starts even while Redis is down. Must be called inside a
    /// tokio runtime, which then runs all of the engine's I/O. Dropping every clone (and every
    /// [`Subscription`](super::Subscription)) stops its tasks.
    pub fn new(
        urls: &[String],
        node_id: impl Into<String>,
        timeouts: Timeouts,
    ) -> Result<RedisEngine, InvalidCluster> {
        let node_id = node_id.into();
        if urls.is_empty() {
            return Err(InvalidCluster::NoUrls);
        }
        if node_id.is_empty() || node_id.contains('|') || node_id.chars().any(char::is_control) {
            // `|` separates the fields of a presence entry.
            return Err(InvalidCluster::NodeId(node_id));
        }
        let runtime = Handle::try_current().map_err(|_| InvalidCluster::NoRuntime)?;
        let _guard = runtime.enter();
        let health = Arc::new(Health::new(urls.len()));
        let mut shards = Vec::with_capacity(urls.len());
        for (index, url) in urls.iter().enumerate() {
            let client =
                redis::Client::open(url.as_str()).map_err(|error| InvalidCluster::Url {
                    url: url.clone(),
                    reason: error.to_string(),
                })?;
            let commands =
                connection_manager(&client, timeouts).map_err(|error| InvalidCluster::Url {
                    url: url.clone(),
                    reason: error.to_string(),
                })?;
            let (subscriptions, subscription_rx) = mpsc::channel(SUBSCRIPTION_QUEUE);
            ShardTask::spawn(
                index,
                client.clone(),
                subscription_rx,
                health.clone(),
                timeouts,
                &runtime,
            );
            shards.push(Shard {
                url: url.clone(),
                client,
                commands: ArcSwap::from_pointee(commands),
                subscriptions,
            });
        }
        let inner = Arc::new(Inner {
            node_id,
            timeouts,
            shards,
            health,
            runtime: runtime.clone(),
            next_subscription: AtomicU64::new(1),
            retention_ms: AtomicU64::new(DEFAULT_RETENTION.as_millis() as u64),
        });
        runtime.spawn(watch_commands(Arc::downgrade(&inner)));
        Ok(RedisEngine { inner })
    }

    /// Runs `task` on the engine's runtime: it completes even if the caller's runtime (an actor's
    /// arbiter, stopped at shutdown) goes first.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.inner.runtime.spawn(task)
    }

    /// Sets how long a room's seq and history stay in Redis after its last CHAT or its last
    /// member (applies from each room's next CHAT or presence refresh).
    pub fn set_retention(&self, retention: Duration) {
        let ms = u64::try_from(retention.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        self.inner.retention_ms.store(ms, Ordering::Relaxed);
    }

    /// The retention in milliseconds, as a script argument.
    fn retention_arg(&self) -> Vec<u8> {
        let ms = self.inner.retention_ms.load(Ordering::Relaxed);
        ms.to_string().into_bytes()
    }

    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// Which shard (index into the URLs) holds `room`.
    pub fn shard_of(&self, room: &str) -> usize {
        shard_for(room, self.inner.shards.len())
    }

    /// True while every shard's pub/sub connection is up and its last command got through.
    pub fn connected(&self) -> watch::Receiver<bool> {
        self.inner.health.connected.subscribe()
    }
}

/// A duration as a script argument in milliseconds, never 0: a zero TTL would expire an entry
/// as it is written.
fn millis(duration: Duration) -> String {
    duration.as_millis().max(1).to_string()
}
