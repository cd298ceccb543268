//! The memory log (`[cluster] engine = "memory"`): the room's seq counter and its [`History`]
//! ring, owned by the room actor, so every operation answers at once inside the room's handler
//! and the room's mailbox order is the room's order. Presence truth is the room's own member
//! table, so a JOIN or LEAVE is told to the members directly.

use std::sync::Arc;

use bytes::Bytes;

use super::{Admitted, Appended, Joining, Presence};
use crate::{
    config::RoomLimits,
    history::{History, HistoryBudget},
    names::{RoomName, SessionId},
    proto::{self, Kind},
};

#[derive(Debug)]
pub struct MemoryLog {
    /// Sequence number of the last accepted CHAT.
    seq: u64,
    history: History,
}

impl MemoryLog {
    pub fn new(limits: &RoomLimits, budget: Arc<HistoryBudget>) -> MemoryLog {
        MemoryLog {
            seq: 0,
            history: History::new(limits.history, limits.history_bytes, budget),
        }
    }

    pub fn last_seq(&self) -> u64 {
        self.seq
    }

    /// A room that accepted a CHAT keeps counting where it was even if its history has been
    /// trimmed away; one that never accepted one (JOIN/LEAVE only) holds nothing.
    pub fn keeps_anything(&self) -> bool {
        self.seq > 0 || !self.history.is_empty()
    }

    /// Assigns the next seq, encodes the CHAT once and keeps it in the history.
    pub fn append(
        &mut self,
        room: &RoomName,
        user: &str,
        content: String,
        ack: Option<(SessionId, String)>,
    ) -> (Appended, String) {
        self.seq += 1;
        let message = super::chat(room, user, content, self.seq);
        let live = proto::encode(&message);
        self.history.push(self.seq, live.clone());
        let appended = Appended {
            seq: self.seq,
            live,
            ack,
        };
        (appended, message.id)
    }

    /// A JOIN needs nothing of anyone else here: JOINED carries the current seq, the replay is a
    /// slice of the ring, and the members already here are told at once.
    pub fn admit(&self, joining: &Joining, limits: &RoomLimits) -> Admitted {
        if joining.rejoin {
            // A repeated JOIN only gets its ack: the live traffic since the first one is
            // already in the session's stream.
            return Admitted {
                seq: self.seq,
                live_after: self.seq,
                ..Admitted::default()
            };
        }
        let replay = if joining.replay_wanted {
            self.replay(joining.since_seq, limits.history_on_join)
        } else {
            Vec::new()
        };
        Admitted {
            seq: self.seq,
            live_after: self.seq,
            members: None,
            replay,
            presence: vec![Presence {
                kind: Kind::Join,
                user: joining.user.to_string(),
                except: Some(joining.session),
            }],
        }
    }

    /// The retained CHATs after `since_seq`, or the newest `history_on_join` when it is 0.
    fn replay(&self, since_seq: u64, history_on_join: usize) -> Vec<Bytes> {
        if since_seq == 0 {
            self.history
                .last(history_on_join)
                .map(proto::as_replay)
                .collect()
        } else {
            self.history
                .after(since_seq)
                .map(proto::as_replay)
                .collect()
        }
    }

    pub fn set_limits(&mut self, history: usize, history_bytes: usize) {
        self.history.set_limits(history, history_bytes);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::names::UserName;

    fn log(limits: &RoomLimits) -> MemoryLog {
        MemoryLog::new(limits, HistoryBudget::new(usize::MAX))
    }

    fn joining(rejoin: bool, since_seq: u64) -> Joining {
        Joining {
            session: SessionId(7),
            // unwrap: a valid name.
            user: UserName::parse("ada").unwrap(),
            rejoin,
            replay_wanted: true,
            since_seq,
            presence_ttl: Duration::from_secs(1),
        }
    }

    fn decoded(bytes: &Bytes) -> proto::Message {
        // unwrap: encoded by the log itself.
        <proto::Message as prost::Message>::decode(bytes.as_ref()).unwrap()
    }

    #[test]
    fn appends_count_from_one_and_keep_the_ack_for_the_sender() {
        let limits = RoomLimits::default();
        let mut log = log(&limits);
        let room = RoomName::parse("r").unwrap();
        let (first, _) = log.append(&room, "ada", "a".into(), None);
        let ack = Some((SessionId(1), "x".to_string()));
        let (second, id) = log.append(&room, "ada", "b".into(), ack.clone());
        assert_eq!((first.seq, second.seq, log.last_seq()), (1, 2, 2));
        assert_eq!(second.ack, ack);
        let message = decoded(&second.live);
        assert_eq!(
            (message.seq, message.content, message.id),
            (2, "b".into(), id)
        );
        assert!(log.keeps_anything());
    }

    #[test]
    fn a_join_replays_after_since_seq_and_announces_the_joiner_to_the_others() {
        let limits = RoomLimits::default();
        let mut log = log(&limits);
        assert!(!log.keeps_anything(), "a fresh room keeps nothing");
        let room = RoomName::parse("r").unwrap();
        for n in 0..5 {
            log.append(&room, "ada", n.to_string(), None);
        }
        let admitted = log.admit(&joining(false, 3), &limits);
        assert_eq!((admitted.seq, admitted.live_after), (5, 5));
        let replayed: Vec<(u64, bool)> = admitted
            .replay
            .iter()
            .map(decoded)
            .map(|m| (m.seq, m.replay))
            .collect();
        assert_eq!(replayed, vec![(4, true), (5, true)]);
        assert_eq!(admitted.presence.len(), 1);
        assert_eq!(admitted.presence[0].except, Some(SessionId(7)));

        let again = log.admit(&joining(true, 0), &limits);
        assert!(again.replay.is_empty() && again.presence.is_empty());
    }
}
