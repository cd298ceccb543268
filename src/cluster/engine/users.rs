//! User places: how many sessions a user holds over all nodes (`max_sessions_per_user` in
//! cluster mode). One sorted set per user on the user's shard, scored by expiry, so a node that
//! dies loses its places once they expire.

use std::time::Duration;

use super::{RedisEngine, listing::SCAN_BATCH, millis};
use crate::{
    cluster::{
        Unavailable,
        keys::{shard_for, user_sessions_key},
        scripts::SCRIPTS,
    },
    names::SessionId,
};

impl RedisEngine {
    /// Gives this node's `session` a place among `user`'s sessions over all nodes (expiring
    /// after `ttl` unless refreshed), unless the user already has `max` live ones. Answers
    /// whether it got one.
    pub async fn claim_user(
        &self,
        user: &str,
        session: SessionId,
        ttl: Duration,
        max: usize,
    ) -> Result<bool, Unavailable> {
        let key = user_sessions_key(user);
        let args = [
            format!("{}|{}", self.inner.node_id, session.0),
            millis(ttl),
            max.to_string(),
        ];
        self.call(user, "claim_user", move |mut conn| async move {
            SCRIPTS
                .claim_user
                .key(key)
                .arg(&args[..])
                .invoke_async::<bool>(&mut conn)
                .await
        })
        .await
    }

    /// Gives back the place [`Self::claim_user`] took.
    pub async fn release_user(&self, user: &str, session: SessionId) -> Result<(), Unavailable> {
        let key = user_sessions_key(user);
        let entry = format!("{}|{}", self.inner.node_id, session.0);
        self.call(user, "release_user", move |mut conn| async move {
            redis::cmd("ZREM")
                .arg(key)
                .arg(entry)
                .query_async::<()>(&mut conn)
                .await
        })
        .await
    }

    /// Extends the places of this node's `sessions` to now + `ttl`, writing back any Redis lost.
    /// One pipeline per shard and batch, timed by Redis's clock; a failing shard does not stop
    /// the others (the first error is returned at the end).
    pub async fn refresh_users(
        &self,
        sessions: &[(String, SessionId)],
        ttl: Duration,
    ) -> Result<(), Unavailable> {
        let shards = self.inner.shards.len();
        let mut first_error = None;
        for shard in 0..shards {
            let entries: Vec<(String, String)> = sessions
                .iter()
                .filter(|(user, _)| shard_for(user, shards) == shard)
                .map(|(user, session)| {
                    let entry = format!("{}|{}", self.inner.node_id, session.0);
                    (user_sessions_key(user), entry)
                })
                .collect();
            for batch in entries.chunks(SCAN_BATCH) {
                let batch = batch.to_vec();
                let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
                let outcome = self
                    .call_shard(shard, "refresh_users", move |mut conn| async move {
                        let (seconds, micros): (u64, u64) =
                            redis::cmd("TIME").query_async(&mut conn).await?;
                        let expiry = seconds * 1000 + micros / 1000 + ttl_ms;
                        let mut pipe = redis::pipe();
                        for (key, entry) in &batch {
                            pipe.cmd("ZADD").arg(key).arg(expiry).arg(entry).ignore();
                            pipe.cmd("PEXPIRE").arg(key).arg(3 * ttl_ms).ignore();
                        }
                        pipe.query_async::<()>(&mut conn).await
                    })
                    .await;
                if let Err(error) = outcome {
                    first_error.get_or_insert(error);
                    break; // this shard's next batches would fail the same way
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}
