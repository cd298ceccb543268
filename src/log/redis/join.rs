//! A JOIN through Redis: one script checks the room's size over all nodes, adds the presence
//! entry and publishes the JOIN, starts the room's sequence (seq 0 in a fresh epoch) if it has
//! none, and answers the seq, its epoch and every node's members; the
//! joiner's replay (where it starts decided by [`Resume`]) is read up to that seq, so it joins
//! live traffic without a gap or a repeat.

use bytes::Bytes;

use super::{Link, RedisLog, event, subscribe, unavailable};
use crate::{
    cluster::{self, JoinError, Subscription},
    config::RoomLimits,
    error::ChatError,
    log::{Admitted, Echo, Joining, Resume},
    proto::{self, Kind},
};

/// The join script's answer, where the replay starts, and the replay read up to its seq.
type Outcome = Result<(cluster::Joined, Resume, Vec<(u64, Bytes)>), ChatError>;

/// What Redis answered a JOIN (see [`RedisLog::join`]).
pub struct JoinReply {
    /// The JOIN subscribed the room first (it was not).
    resubscribing: bool,
    fresh: Option<(Subscription, u64)>,
    outcome: Outcome,
}

impl RedisLog {
    /// JOIN through Redis: the script checks `max_members` over all nodes, adds the presence
    /// entry, publishes the JOIN and returns the seq and every node's members; the replay is
    /// read up to that seq. A room that is not subscribed (Redis was down when it started)
    /// subscribes first, in the same step, so the JOIN works as soon as Redis is back.
    pub fn join(&mut self, joining: &Joining, limits: &RoomLimits) -> Echo<JoinReply> {
        let resubscribe = matches!(self.link, Link::Down).then(|| self.sink.clone());
        let resubscribing = resubscribe.is_some();
        if resubscribing {
            self.link = Link::Subscribing;
        }
        let engine = self.engine.clone();
        let name = self.name.to_string();
        let (ttl, max_members) = (joining.presence_ttl, limits.max_members);
        let (since_seq, history_on_join) = (joining.since_seq, limits.history_on_join);
        let history = limits.history;
        let epoch = joining.epoch.clone();
        let (session, user) = (joining.session, joining.user.to_string());
        let (rejoin, replay_wanted) = (joining.rejoin, joining.replay_wanted);
        Box::pin(async move {
            let mut fresh = None;
            if let Some(sink) = resubscribe {
                match subscribe(&engine, &name, sink).await {
                    Ok(ok) => fresh = Some(ok),
                    Err(error) => {
                        return JoinReply {
                            resubscribing,
                            fresh,
                            outcome: Err(unavailable(&error)),
                        };
                    }
                }
            }
            let outcome = async {
                let joined = if rejoin {
                    let members = engine.members(&name).await.map_err(|e| unavailable(&e))?;
                    let (seq, epoch) = engine.sequence(&name).await.map_err(|e| unavailable(&e))?;
                    cluster::Joined {
                        seq,
                        epoch,
                        members,
                    }
                } else {
                    let presence = event(&name, Kind::Join, &user);
                    engine
                        .join(&name, session, &user, ttl, max_members, presence)
                        .await
                        .map_err(|e| match e {
                            JoinError::Full { max } => ChatError::RoomFull { max },
                            JoinError::Unavailable(e) => unavailable(&e),
                        })?
                };
                let resume = Resume::of(since_seq, &epoch, &joined.epoch, joined.seq);
                // The engine reads `since_seq = 0` as "the newest n"; from an epoch's start,
                // n is as many as a replay may hold (`newest_within` in `admit`).
                let (after, newest) = match resume.after {
                    None => (0, history_on_join),
                    Some(0) => (0, history),
                    Some(after) => (after, 0),
                };
                let replay = if replay_wanted && !rejoin {
                    match engine.replay(&name, after, newest, joined.seq).await {
                        Ok(replay) => replay,
                        Err(error) => {
                            // Joined in Redis but refused here: take the entry back (its LEAVE
                            // follows the JOIN everyone saw), or it would count until the TTL.
                            let undo = event(&name, Kind::Leave, &user);
                            let _ = engine.leave(&name, session, &user, undo).await;
                            return Err(unavailable(&error));
                        }
                    }
                } else {
                    Vec::new()
                };
                Ok((joined, resume, replay))
            }
            .await;
            JoinReply {
                resubscribing,
                fresh,
                outcome,
            }
        })
    }

    /// Settles a JOIN's reply: the roster takes the member list returned (the truth at that
    /// moment) and JOINED lists every node's members.
    pub fn admit(
        &mut self,
        reply: JoinReply,
        joining: &Joining,
        first: bool,
        limits: &RoomLimits,
    ) -> Result<Admitted, ChatError> {
        if reply.resubscribing {
            self.link = match reply.fresh {
                Some((subscription, seq)) => {
                    self.seq = self.seq.max(seq);
                    Link::Up {
                        _subscription: subscription,
                    }
                }
                None => Link::Down,
            };
        }
        let (joined, resume, replay) = reply.outcome?;
        let presence = self.take_join_snapshot(&joined.members, joining.session, first);
        let members = joined.members.iter().map(|m| m.user.clone()).collect();
        let replay = newest_within(replay, limits.history, limits.history_bytes);
        let replay_truncated = joining.replay_wanted
            && !joining.rejoin
            && resume.truncated(joined.seq, replay.first().map(|r| r.0));
        let replay = replay
            .into_iter()
            .map(|(seq, body)| proto::as_replay(&proto::with_seq(&body, seq)))
            .collect();
        Ok(Admitted {
            // A repeated JOIN reports what this member has been sent, not Redis's newest.
            seq: if joining.rejoin { self.seq } else { joined.seq },
            epoch: joined.epoch,
            replay_truncated,
            live_after: joined.seq,
            members: Some(members),
            replay,
            presence,
        })
    }
}

/// The newest entries of `replay`, at most `max_count` (`history`) whose encodings fit in
/// `max_bytes`, oldest first. Redis trims a room's stream only approximately and by count only
/// (`XADD … MAXLEN ~`), so the bounds a memory room keeps in its ring are applied when the
/// replay is read: a full replay is never longer than `history` and still fits a fresh
/// joiner's queue.
fn newest_within(
    mut replay: Vec<(u64, Bytes)>,
    max_count: usize,
    max_bytes: usize,
) -> Vec<(u64, Bytes)> {
    let mut total = 0;
    let keep = replay
        .iter()
        .rev()
        .take(max_count)
        .take_while(|(_, body)| {
            total += body.len();
            total <= max_bytes
        })
        .count();
    replay.drain(..replay.len() - keep);
    replay
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_keeps_the_newest_entries_that_fit_the_byte_bound() {
        let entry = |seq: u64, len: usize| (seq, Bytes::from(vec![b'x'; len]));
        let replay = vec![entry(1, 100), entry(2, 100), entry(3, 50), entry(4, 100)];
        let seqs = |r: Vec<(u64, Bytes)>| r.into_iter().map(|(s, _)| s).collect::<Vec<_>>();
        assert_eq!(seqs(newest_within(replay.clone(), 10, 249)), vec![3, 4]);
        assert_eq!(seqs(newest_within(replay.clone(), 10, 250)), vec![2, 3, 4]);
        assert_eq!(
            seqs(newest_within(replay.clone(), 10, 350)),
            vec![1, 2, 3, 4]
        );
        assert_eq!(
            seqs(newest_within(replay.clone(), 10, 99)),
            Vec::<u64>::new()
        );
        assert_eq!(seqs(newest_within(Vec::new(), 10, 10)), Vec::<u64>::new());
        assert_eq!(
            seqs(newest_within(replay.clone(), 2, 350)),
            vec![3, 4],
            "history caps the count"
        );
    }
}
