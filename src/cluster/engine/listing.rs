//! Listing rooms for operators (ListRooms / GetRoom): a SCAN of every shard's presence keys
//! with each room's live count and seq. Walks the whole key space, so it has its own budget
//! and stays out of the health flag.

use std::time::Duration;

use redis::{RedisResult, aio::ConnectionManager};

use super::{RedisEngine, connections::classify};
use crate::cluster::{
    Unavailable,
    keys::{PRESENCE_PATTERN, RoomKeys, room_of_presence_key},
};

/// A room as [`RedisEngine::rooms`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomCount {
    pub name: String,
    /// Live presence entries over all nodes.
    pub members: u64,
    pub last_seq: u64,
}

/// Keys per SCAN step and per pipeline of counts.
pub(super) const SCAN_BATCH: usize = 1000;
/// Time one shard's listing may take in all (each command is also bounded by the response
/// timeout).
pub const LIST_BUDGET: Duration = Duration::from_secs(10);

impl RedisEngine {
    /// Every room with at least one live presence entry on any shard whose name starts with
    /// `prefix`, with its live entry count and last seq, sorted by name. Keys are found with
    /// SCAN, so this walks the shards' whole key space: it is for operators, not for rooms.
    /// Each shard gets [`LIST_BUDGET`]; the outcome does not touch the health flag, since a
    /// slow scan of a big Redis says nothing about whether rooms can be served.
    pub async fn rooms(&self, prefix: &str) -> Result<Vec<RoomCount>, Unavailable> {
        let mut rooms = Vec::new();
        for shard in 0..self.inner.shards.len() {
            let mut conn = ConnectionManager::clone(&self.inner.shards[shard].commands.load());
            let prefix = prefix.to_owned();
            let scan = self.inner.runtime.spawn(async move {
                tokio::time::timeout(LIST_BUDGET, list_shard_rooms(&mut conn, &prefix)).await
            });
            let response = self.inner.timeouts.response;
            match scan.await {
                Ok(Ok(Ok(found))) => rooms.extend(found),
                Ok(Ok(Err(error))) => return Err(classify(shard, "list_rooms", response, &error)),
                Ok(Err(_elapsed)) => {
                    return Err(Unavailable::TimedOut {
                        shard,
                        op: "list_rooms",
                        after: LIST_BUDGET,
                    });
                }
                Err(join_error) => {
                    return Err(Unavailable::Unreachable {
                        shard,
                        op: "list_rooms",
                        reason: format!("task failed: {join_error}"),
                    });
                }
            }
        }
        // A room can show up on two shards while keys of an earlier `redis_urls` remain: the
        // entry with more live members stands for it.
        rooms.sort_unstable_by(|a, b| a.name.cmp(&b.name).then(b.members.cmp(&a.members)));
        rooms.dedup_by(|later, kept| later.name == kept.name);
        Ok(rooms)
    }
}

/// One shard's part of [`RedisEngine::rooms`]: SCAN for presence keys, then one pipeline per
/// batch reading each room's live entries (score = expiry, so those above Redis's clock, read
/// per batch) and seq.
async fn list_shard_rooms(
    conn: &mut ConnectionManager,
    prefix: &str,
) -> RedisResult<Vec<RoomCount>> {
    let mut names = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(PRESENCE_PATTERN)
            .arg("COUNT")
            .arg(SCAN_BATCH)
            .query_async(conn)
            .await?;
        names.extend(
            keys.iter()
                .filter_map(|key| room_of_presence_key(key))
                .filter(|room| room.starts_with(prefix))
                .map(str::to_owned),
        );
        if next == 0 {
            break;
        }
        cursor = next;
    }
    // SCAN may return a key more than once.
    names.sort_unstable();
    names.dedup();
    let mut rooms = Vec::with_capacity(names.len());
    for batch in names.chunks(SCAN_BATCH) {
        let (seconds, micros): (u64, u64) = redis::cmd("TIME").query_async(conn).await?;
        let now_ms = seconds * 1000 + micros / 1000;
        let mut pipe = redis::pipe();
        for name in batch {
            let keys = RoomKeys::new(name);
            pipe.cmd("ZCOUNT")
                .arg(keys.presence)
                .arg(format!("({now_ms}"))
                .arg("+inf");
            pipe.cmd("GET").arg(keys.seq);
        }
        let replies: Vec<(u64, Option<u64>)> = pipe.query_async(conn).await?;
        rooms.extend(
            batch
                .iter()
                .zip(replies)
                .filter(|(_, (members, _))| *members > 0)
                .map(|(name, (members, seq))| RoomCount {
                    name: name.clone(),
                    members,
                    last_seq: seq.unwrap_or(0),
                }),
        );
    }
    Ok(rooms)
}
