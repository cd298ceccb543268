//! The operator channels, on one shard: the admin side broadcasts a cluster-wide request on
//! the operator channel (learning how many nodes listen) and each node publishes its answer on
//! the asking node's answer channel. Listening on them is [`RedisEngine::subscribe_channel`].

use super::RedisEngine;
use crate::cluster::{Unavailable, scripts::SCRIPTS};

impl RedisEngine {
    /// PUBLISHes `payload` on `channel` of `shard`; answers how many subscriptions (one per
    /// node listening there) received it.
    pub async fn publish(
        &self,
        shard: usize,
        channel: String,
        payload: Vec<u8>,
    ) -> Result<u64, Unavailable> {
        self.call_shard(shard, "publish", move |mut conn| async move {
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(payload)
                .query_async::<u64>(&mut conn)
                .await
        })
        .await
    }

    /// PUBLISHes `payload` on `channel` of `shard` and answers how many connections subscribed
    /// to that very channel (one per listening node; pattern subscribers are not counted), read
    /// in the same atomic step.
    pub async fn broadcast(
        &self,
        shard: usize,
        channel: String,
        payload: Vec<u8>,
    ) -> Result<u64, Unavailable> {
        self.call_shard(shard, "broadcast", move |mut conn| async move {
            SCRIPTS
                .broadcast
                .arg(channel)
                .arg(payload)
                .invoke_async::<u64>(&mut conn)
                .await
        })
        .await
    }
}
