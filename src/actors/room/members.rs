//! A room's members: who is in, their rate buckets (kept for a while after a LEAVE), the JOINED
//! listing, and ending a member that cannot keep up.

use std::{sync::Arc, time::Instant};

use bytes::Bytes;
use tracing::info;

use super::Room;
use crate::{
    actors::{Evicted, SessionHandle},
    edge::outbound::SessionTx,
    error::{ChatError, Fatal},
    limits::TokenBucket,
    log::Admitted,
    names::{RoomName, SessionId, UserName},
    proto::{self, Kind},
};

pub(super) struct Member {
    pub(super) user: UserName,
    pub(super) tx: SessionTx,
    pub(super) session: Arc<SessionHandle>,
    pub(super) bucket: TokenBucket,
    /// The seq this member's JOINED and replay covered: CHATs up to it that were still on their
    /// way (through Redis) when it joined are not delivered again.
    pub(super) live_after: u64,
}

impl Room {
    /// A member's bucket, the one it left with if it left recently; a JOIN takes one token, so
    /// join/leave cycles cannot flood the room with presence either.
    pub(super) fn bucket_for_join(
        &mut self,
        session: SessionId,
        now: Instant,
    ) -> Result<TokenBucket, ChatError> {
        let (rate, burst) = (self.limits.rate_per_sec, self.limits.burst);
        let mut bucket = self
            .departed
            .remove(&session)
            .unwrap_or_else(|| TokenBucket::full(burst, now));
        if bucket.try_take(now, rate, burst) {
            Ok(bucket)
        } else {
            self.departed.insert(session, bucket);
            Err(ChatError::RateLimited {
                rate_per_sec: rate,
                burst,
            })
        }
    }

    /// Remembers the bucket of a member that left, forgetting those that have refilled (they
    /// are no different from a fresh one).
    pub(super) fn remember_departed(&mut self, session: SessionId, bucket: TokenBucket) {
        let now = Instant::now();
        let (rate, burst) = (self.limits.rate_per_sec, self.limits.burst);
        if self.departed.len() >= 64 {
            self.departed.retain(|_, b| !b.is_full(now, rate, burst));
        }
        if !bucket.is_full(now, rate, burst) {
            self.departed.insert(session, bucket);
        }
    }

    /// The JOINED of `joiner`, listing `members` (sorted, deduplicated, cut to
    /// `max_members_listed`), with the seq, epoch and truncation the log admitted it with.
    pub(super) fn joined(
        &self,
        joiner: &UserName,
        r#ref: String,
        mut members: Vec<String>,
        admitted: &Admitted,
    ) -> Bytes {
        members.sort_unstable();
        members.dedup();
        let listed = self.limits.max_members_listed;
        if members.len() > listed {
            // The first names in order, and always the joiner itself.
            members.retain(|m| m != joiner.as_str());
            members.truncate(listed - 1);
            members.push(joiner.to_string());
            members.sort_unstable();
        }
        proto::encode(&proto::Message {
            members,
            seq: admitted.seq,
            epoch: admitted.epoch.clone(),
            replay_truncated: admitted.replay_truncated,
            r#ref,
            ..proto::Message::event(Kind::Joined, self.name.as_str(), joiner.as_str())
        })
    }

    /// The checks a CHAT passes before it goes to the log: membership, write permission, size
    /// and the member's rate (which takes a token).
    pub(super) fn admit_post(&mut self, session: SessionId, len: usize) -> Result<(), ChatError> {
        let limits = &self.limits;
        let member = self
            .members
            .get_mut(&session)
            .ok_or(ChatError::NotAMember)?;
        if limits.read_only && !limits.writers.iter().any(|w| w == member.user.as_str()) {
            return Err(ChatError::Forbidden("this room is read-only for you"));
        }
        if len > limits.max_message_bytes {
            return Err(ChatError::MessageTooLarge {
                len,
                max: limits.max_message_bytes,
            });
        }
        if !member
            .bucket
            .try_take(Instant::now(), limits.rate_per_sec, limits.burst)
        {
            return Err(ChatError::RateLimited {
                rate_per_sec: limits.rate_per_sec,
                burst: limits.burst,
            });
        }
        Ok(())
    }
}

pub(super) fn end_slow_consumer(room: &RoomName, id: SessionId, member: &Member) {
    info!(room = %room, session = %id, user = %member.user, "slow consumer dropped");
    member.tx.end(Fatal::SlowConsumer);
    // do_send: at most one per room the session is in, and the session must hear of it even
    // when its mailbox is busy.
    member.session.evicted(Evicted { room: room.clone() });
}
