//! Subscribing a room (or an operator channel) through its shard's pub/sub task: the request
//! goes to the subscriber's queue and this waits, bounded, for Redis's confirmation.

use std::sync::atomic::Ordering;

use tokio::sync::{mpsc, oneshot};

use super::RedisEngine;
use crate::cluster::{
    Published, Unavailable,
    keys::room_channel,
    subscriber::{SubCommand, Subscription},
};

impl RedisEngine {
    /// Subscribes `sink` to the room's channel and returns once Redis confirmed the
    /// subscription, so everything published from then on reaches `sink`: read history after
    /// this returns and nothing falls between history and live traffic. A later `subscribe` of
    /// the same room replaces the sink. Dropping the [`Subscription`] (or `sink`'s receiver)
    /// unsubscribes.
    ///
    /// Routing a message never waits for room in `sink`, so one slow room cannot hold up the
    /// shard's others: a full sink drops the message and marks the room lagged, and the next
    /// message for the room that finds room in `sink` is preceded by `Published::Resubscribed`,
    /// on which the room fetches what it missed from its stream. Give each sink enough capacity
    /// for a burst so that re-sync stays rare.
    pub async fn subscribe(
        &self,
        room: &str,
        sink: mpsc::Sender<Published>,
    ) -> Result<Subscription, Unavailable> {
        self.subscribe_channel(self.shard_of(room), room_channel(room), sink)
            .await
    }

    /// [`Self::subscribe`] for any channel of `shard` (the operator channels).
    pub async fn subscribe_channel(
        &self,
        shard: usize,
        channel: String,
        sink: mpsc::Sender<Published>,
    ) -> Result<Subscription, Unavailable> {
        let id = self.inner.next_subscription.fetch_add(1, Ordering::Relaxed);
        let commands = self.inner.shards[shard].subscriptions.clone();
        let (done, confirmed) = oneshot::channel();
        let request = SubCommand::Subscribe {
            channel: channel.clone(),
            id,
            sink,
            done,
        };
        // The shard task answers within its own response timeout once it reads the request;
        // the margin covers a queue of requests ahead of this one.
        let limit = self.inner.timeouts.response * 2;
        let outcome = tokio::time::timeout(limit, async {
            commands.send(request).await.ok()?;
            confirmed.await.ok()
        })
        .await;
        match outcome {
            Ok(Some(Ok(()))) => Ok(Subscription::new(
                channel,
                id,
                commands,
                self.inner.runtime.clone(),
            )),
            Ok(Some(Err(unavailable))) => Err(unavailable),
            Ok(None) => Err(Unavailable::Unreachable {
                shard,
                op: "subscribe",
                reason: "the shard's pub/sub task has stopped".into(),
            }),
            Err(_) => Err(Unavailable::TimedOut {
                shard,
                op: "subscribe",
                after: limit,
            }),
        }
    }
}
