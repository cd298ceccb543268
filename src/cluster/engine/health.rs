//! The health flag ([`RedisEngine::connected`]): true while every shard's pub/sub connection is
//! up (reported by the subscriber) and its last command got through (reported by
//! [`RedisEngine::call_shard`]). A watcher pings every shard each [`HEALTH_INTERVAL`], so the
//! flag follows Redis even while no room calls, and renews a command connection gone silent.

use std::{
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::sync::watch;
use tracing::{debug, warn};

use super::{Inner, RedisEngine, connections::connection_manager};
use crate::cluster::Unavailable;

/// How often each shard's connections are checked while nothing else talks to them, so health
/// turns false on a silent (half-open) connection and true again after an outage.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

/// The inputs of the health flag: per shard, is its pub/sub connection up, and did its last
/// command get through.
pub(crate) struct Health {
    pubsub_up: Vec<AtomicBool>,
    commands_ok: Vec<AtomicBool>,
    pub(super) connected: watch::Sender<bool>,
}

impl Health {
    pub(super) fn new(shards: usize) -> Health {
        Health {
            pubsub_up: (0..shards).map(|_| AtomicBool::new(false)).collect(),
            commands_ok: (0..shards).map(|_| AtomicBool::new(true)).collect(),
            connected: watch::Sender::new(false),
        }
    }

    pub(crate) fn set_pubsub_up(&self, shard: usize, up: bool) {
        self.pubsub_up[shard].store(up, Ordering::SeqCst);
        self.publish();
    }

    /// Answers whether the flag changed.
    pub(super) fn set_commands_ok(&self, shard: usize, ok: bool) -> bool {
        // Skips the watch lock on the hot path when nothing changes.
        let changed = self.commands_ok[shard].swap(ok, Ordering::SeqCst) != ok;
        if changed {
            self.publish();
        }
        changed
    }

    fn publish(&self) {
        // Recomputed under the watch's lock, so the last writer always sees every earlier store.
        self.connected.send_if_modified(|connected| {
            let now = self
                .pubsub_up
                .iter()
                .chain(&self.commands_ok)
                .all(|flag| flag.load(Ordering::SeqCst));
            let changed = *connected != now;
            *connected = now;
            changed
        });
    }
}

impl RedisEngine {
    /// True when every shard answers PING within the response timeout (shards are asked in
    /// parallel, so this takes at most about one timeout).
    pub async fn ping(&self) -> bool {
        let mut all = true;
        for ping in self.ping_all() {
            all &= matches!(ping.await, Ok(Ok(_)));
        }
        all
    }

    fn ping_all(&self) -> Vec<tokio::task::JoinHandle<Result<String, Unavailable>>> {
        (0..self.inner.shards.len())
            .map(|shard| {
                let engine = self.clone();
                self.inner
                    .runtime
                    .spawn(async move { engine.ping_shard(shard).await })
            })
            .collect()
    }

    async fn ping_shard(&self, shard: usize) -> Result<String, Unavailable> {
        self.call_shard(shard, "ping", move |mut conn| async move {
            redis::cmd("PING").query_async::<String>(&mut conn).await
        })
        .await
    }

    /// Swaps in a fresh command connection for the shard (see
    /// [`Shard::commands`](super::connections::Shard::commands)).
    fn renew_commands(&self, shard: usize) {
        let shard = &self.inner.shards[shard];
        let _runtime = self.inner.runtime.enter();
        match connection_manager(&shard.client, self.inner.timeouts) {
            Ok(fresh) => {
                shard.commands.store(Arc::new(fresh));
                debug!(url = %shard.url, "redis command connection silent; replaced");
            }
            Err(error) => warn!(url = %shard.url, %error, "cannot renew redis connection"),
        }
    }
}

/// Pings every shard each [`HEALTH_INTERVAL`] while the engine exists, so health follows Redis
/// even when no room is calling, and replaces a command connection whose PING timed out.
pub(super) async fn watch_commands(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(HEALTH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let engine = RedisEngine { inner };
        for (shard, ping) in engine.ping_all().into_iter().enumerate() {
            if let Ok(Err(Unavailable::TimedOut { .. })) = ping.await {
                engine.renew_commands(shard);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_needs_every_flag() {
        let health = Health::new(2);
        let connected = health.connected.subscribe();
        assert!(!*connected.borrow());
        health.set_pubsub_up(0, true);
        assert!(!*connected.borrow());
        health.set_pubsub_up(1, true);
        assert!(*connected.borrow());
        health.set_commands_ok(1, false);
        assert!(!*connected.borrow());
        health.set_commands_ok(1, true);
        assert!(*connected.borrow());
    }
}
