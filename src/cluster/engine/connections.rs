//! The shards' command connections: one auto-reconnecting [`ConnectionManager`] per Redis URL,
//! and [`RedisEngine::call_shard`], the one way every command reaches it (on the engine's
//! runtime, bounded by [`Timeouts::response`], its outcome recorded in the health flag). The
//! pub/sub connections are the subscriber's ([`super::super::subscriber`]).

use std::{future::Future, time::Duration};

use arc_swap::ArcSwap;
use redis::{
    RedisError, RedisResult,
    aio::{ConnectionManager, ConnectionManagerConfig},
};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::RedisEngine;
use crate::cluster::{Unavailable, subscriber::SubCommand};

/// Time limits of the engine's Redis calls.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Longest wait for one call's answer (connecting included) before [`Unavailable`].
    pub response: Duration,
    /// Longest wait for one connection attempt.
    pub connect: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            response: Duration::from_millis(1500),
            connect: Duration::from_millis(1000),
        }
    }
}

/// One Redis URL: its command connection and the queue into its pub/sub task.
pub(super) struct Shard {
    pub(super) url: String,
    /// Kept to open a fresh command connection when the current one goes silent.
    pub(super) client: redis::Client,
    /// Replaced by the health watcher when PING times out: the manager reconnects on its own
    /// after a dropped connection, but a silent (half-open) one only ever times out.
    pub(super) commands: ArcSwap<ConnectionManager>,
    /// Subscribe/unsubscribe requests for the shard's pub/sub task.
    pub(super) subscriptions: mpsc::Sender<SubCommand>,
}

impl RedisEngine {
    /// Runs `op` on the room's shard. See [`Self::call_shard`].
    pub(super) async fn call<T, F, Fut>(
        &self,
        room: &str,
        op: &'static str,
        f: F,
    ) -> Result<T, Unavailable>
    where
        T: Send + 'static,
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>> + Send + 'static,
    {
        self.call_shard(self.shard_of(room), op, f).await
    }

    /// Runs `op` on the shard's command connection, on the engine's runtime, bounded by the
    /// response timeout, and records the outcome in the health flag.
    pub(super) async fn call_shard<T, F, Fut>(
        &self,
        shard: usize,
        op: &'static str,
        f: F,
    ) -> Result<T, Unavailable>
    where
        T: Send + 'static,
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>> + Send + 'static,
    {
        let limit = self.inner.timeouts.response;
        let future = f(ConnectionManager::clone(
            &self.inner.shards[shard].commands.load(),
        ));
        let task = self
            .inner
            .runtime
            .spawn(async move { tokio::time::timeout(limit, future).await });
        let result = match task.await {
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(error))) => Err(classify(shard, op, limit, &error)),
            Ok(Err(_elapsed)) => Err(Unavailable::TimedOut {
                shard,
                op,
                after: limit,
            }),
            Err(join_error) => Err(Unavailable::Unreachable {
                shard,
                op,
                reason: format!("task failed: {join_error}"),
            }),
        };
        let url = &self.inner.shards[shard].url;
        match &result {
            Ok(_) => {
                if self.inner.health.set_commands_ok(shard, true) {
                    info!(shard, %url, "redis commands get through again");
                }
            }
            Err(Unavailable::Rejected { .. }) => {}
            Err(error) => {
                if self.inner.health.set_commands_ok(shard, false) {
                    warn!(shard, %url, %error, "redis commands failing");
                } else {
                    debug!(shard, %url, %error, "redis call failed");
                }
            }
        }
        result
    }

    pub(super) fn unexpected(&self, room: &str, op: &'static str, reason: String) -> Unavailable {
        let error = Unavailable::Rejected {
            shard: self.shard_of(room),
            op,
            reason,
        };
        warn!(room, %error, "unexpected redis reply");
        error
    }
}

pub(super) fn connection_manager(
    client: &redis::Client,
    timeouts: Timeouts,
) -> RedisResult<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeouts.connect))
        .set_response_timeout(Some(timeouts.response))
        // Few retries per reconnect: callers are bounded by `timeouts.response` anyway, and the
        // next call starts a fresh attempt.
        .set_number_of_retries(2)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(2));
    ConnectionManager::new_lazy_with_config(client.clone(), config)
}

/// Connection trouble (health turns false) versus a command Redis refused (it stays as is).
pub(super) fn classify(
    shard: usize,
    op: &'static str,
    limit: Duration,
    error: &RedisError,
) -> Unavailable {
    let reason = error.to_string();
    if error.is_timeout() {
        Unavailable::TimedOut {
            shard,
            op,
            after: limit,
        }
    } else if error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_unrecoverable_error()
    {
        Unavailable::Unreachable { shard, op, reason }
    } else {
        Unavailable::Rejected { shard, op, reason }
    }
}
