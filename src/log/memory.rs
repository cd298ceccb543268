//! The memory log (`[cluster] engine = "memory"`): the room's seq counter, its epoch, its
//! [`History`] ring and its dedup window, owned by the room actor, so every operation answers
//! at once inside the room's handler and the room's mailbox order is the room's order. Presence
//! truth is the room's own member table, so a JOIN or LEAVE is told to the members directly.
//!
//! The epoch is drawn when the room starts, so its first JOINED carries it, and kept while the
//! room runs: a room that stops (empty for `empty_room_ttl_ms`, or the server restarted)
//! starts over at seq 1 in a new one. A room whose epoch a JOINED told a member who then went
//! without a LEAVE (its stream broke) is kept for `empty_room_ttl_ms` like one with history,
//! even without a CHAT: that member may come back to resume from the epoch's start.

use std::{sync::Arc, time::Instant};

use bytes::Bytes;

use super::{Accepted, Admitted, Appended, Joining, Presence, Resume, dedup::Dedup};
use crate::{
    config::RoomLimits,
    history::{History, HistoryBudget},
    names::{self, RoomName, SessionId},
    proto::{self, Kind},
};

#[derive(Debug)]
pub struct MemoryLog {
    /// Sequence number of the last accepted CHAT.
    seq: u64,
    /// This incarnation of the room's sequence, drawn when the room starts.
    epoch: String,
    history: History,
    dedup: Dedup,
    /// A JOINED has told some member the epoch.
    told: bool,
    /// A member went without a LEAVE after the epoch was told: it may resume in this epoch.
    awaited: bool,
}

impl MemoryLog {
    pub fn new(limits: &RoomLimits, budget: Arc<HistoryBudget>) -> MemoryLog {
        MemoryLog {
            seq: 0,
            epoch: names::new_epoch(),
            history: History::new(limits.history, limits.history_bytes, budget.clone()),
            dedup: Dedup::new(budget),
            told: false,
            awaited: false,
        }
    }

    pub fn last_seq(&self) -> u64 {
        self.seq
    }

    /// A room that accepted a CHAT keeps counting where it was even if its history has been
    /// trimmed away; one that never accepted one holds only its epoch, worth keeping once a
    /// member told it went without a LEAVE (JOIN/LEAVE churn holds nothing).
    pub fn keeps_anything(&self) -> bool {
        self.seq > 0 || !self.history.is_empty() || self.awaited
    }

    /// A member left; `ended`: without a LEAVE (its stream ended), so it may come back.
    pub fn left(&mut self, ended: bool) {
        self.awaited |= ended && self.told;
    }

    /// Assigns the next seq, encodes the CHAT once and keeps it in the history (and, with a
    /// `ref`, in the dedup window). A resend of a CHAT in the window is answered from there.
    pub fn append(
        &mut self,
        room: &RoomName,
        user: &str,
        content: String,
        ack: Option<(SessionId, String)>,
        limits: &RoomLimits,
    ) -> Accepted {
        let now = Instant::now();
        let dedup = match (&ack, limits.dedup_window()) {
            (Some((session, r#ref)), Some(window)) if !r#ref.is_empty() => {
                if let Some(original) = self.dedup.find(user, r#ref, window, now) {
                    let ack = proto::with_ref(&original, r#ref);
                    return Accepted::Resent { to: *session, ack };
                }
                Some((r#ref.clone(), window))
            }
            _ => None,
        };
        self.seq += 1;
        let message = super::chat(room, user, content, self.seq, &self.epoch);
        let live = proto::encode(&message);
        self.history.push(self.seq, live.clone());
        if let Some((r#ref, window)) = dedup {
            let max = limits.history_bytes;
            self.dedup
                .remember(user, &r#ref, live.clone(), window, max, now);
        }
        let appended = Appended {
            seq: self.seq,
            live,
            ack,
        };
        Accepted::Appended(appended, message.id)
    }

    /// A JOIN needs nothing of anyone else here: JOINED carries the current seq and epoch, the
    /// replay is a slice of the ring, and the members already here are told at once.
    pub fn admit(&mut self, joining: &Joining, limits: &RoomLimits) -> Admitted {
        self.told |= joining.replay_wanted;
        if joining.rejoin {
            // A repeated JOIN only gets its ack: the live traffic since the first one is
            // already in the session's stream.
            return Admitted {
                seq: self.seq,
                epoch: self.epoch.clone(),
                live_after: self.seq,
                ..Admitted::default()
            };
        }
        let (replay, replay_truncated) = if joining.replay_wanted {
            let resume = Resume::of(joining.since_seq, &joining.epoch, &self.epoch, self.seq);
            let (first, replay) = self.replay(resume.after, limits.history_on_join);
            let truncated = resume.truncated(self.seq, first);
            (replay, truncated)
        } else {
            (Vec::new(), false)
        };
        Admitted {
            seq: self.seq,
            epoch: self.epoch.clone(),
            replay_truncated,
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

    /// The retained CHATs after `after`, or the newest `history_on_join` when it is `None`,
    /// with the seq of the first. The ring is one gapless run ending at the room's last seq.
    fn replay(&self, after: Option<u64>, history_on_join: usize) -> (Option<u64>, Vec<Bytes>) {
        let replay: Vec<Bytes> = match after {
            None => self
                .history
                .last(history_on_join)
                .map(proto::as_replay)
                .collect(),
            Some(after) => self.history.after(after).map(proto::as_replay).collect(),
        };
        let first = (!replay.is_empty()).then(|| self.seq + 1 - replay.len() as u64);
        (first, replay)
    }

    /// Whether [`MemoryLog::pack`] has something to do.
    pub fn packable(&self) -> bool {
        self.history.packable()
    }

    /// Packs the history's newest entries (see `History::pack`), and points the dedup window
    /// at the packed copies so the originals are freed.
    pub fn pack(&mut self) {
        let swapped = self.history.pack();
        self.dedup.swap(&swapped);
    }

    pub fn set_limits(&mut self, limits: &RoomLimits) {
        self.history
            .set_limits(limits.history, limits.history_bytes);
        self.dedup
            .set_limits(limits.dedup_window(), limits.history_bytes);
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

    fn joining(rejoin: bool, since_seq: u64, epoch: &str) -> Joining {
        Joining {
            session: SessionId(7),
            // unwrap: a valid name.
            user: UserName::parse("ada").unwrap(),
            rejoin,
            replay_wanted: true,
            since_seq,
            epoch: epoch.into(),
            presence_ttl: Duration::from_secs(1),
        }
    }

    fn decoded(bytes: &Bytes) -> proto::Message {
        // unwrap: encoded by the log itself.
        <proto::Message as prost::Message>::decode(bytes.as_ref()).unwrap()
    }

    fn room() -> RoomName {
        // unwrap: a valid name.
        RoomName::parse("r").unwrap()
    }

    /// Appends a CHAT by `user`; its fan-out, or `None` for a resend.
    fn append(
        log: &mut MemoryLog,
        user: &str,
        content: &str,
        ack: Option<(SessionId, &str)>,
        limits: &RoomLimits,
    ) -> Option<(Appended, String)> {
        let ack = ack.map(|(session, r#ref)| (session, r#ref.to_string()));
        match log.append(&room(), user, content.into(), ack, limits) {
            Accepted::Appended(appended, id) => Some((appended, id)),
            _ => None,
        }
    }

    fn seqs(admitted: &Admitted) -> Vec<u64> {
        admitted.replay.iter().map(|m| decoded(m).seq).collect()
    }

    #[test]
    fn appends_count_from_one_in_one_epoch_and_keep_the_ack_for_the_sender() {
        let limits = RoomLimits::default();
        let mut log = log(&limits);
        let (first, _) = append(&mut log, "ada", "a", None, &limits).unwrap();
        let (second, id) =
            append(&mut log, "ada", "b", Some((SessionId(1), "x")), &limits).unwrap();
        assert_eq!((first.seq, second.seq, log.last_seq()), (1, 2, 2));
        assert_eq!(second.ack, Some((SessionId(1), "x".to_string())));
        let (one, two) = (decoded(&first.live), decoded(&second.live));
        assert_eq!((two.seq, two.content.as_str(), two.id), (2, "b", id));
        assert_eq!(one.epoch.len(), 16);
        assert_eq!(one.epoch, two.epoch, "one epoch per room");
        assert_ne!(
            one.epoch,
            self::log(&limits)
                .admit(&joining(false, 0, ""), &limits)
                .epoch
        );
        assert!(log.keeps_anything());
    }

    #[test]
    fn a_pack_frees_the_fanned_out_originals_and_resends_still_get_their_ack() {
        let limits = RoomLimits::default();
        let mut log = log(&limits);
        let lives: Vec<Bytes> = (0..4)
            .map(|n| {
                let r#ref = format!("r{n}");
                let ack = Some((SessionId(1), r#ref.as_str()));
                append(&mut log, "ada", &n.to_string(), ack, &limits)
                    .unwrap()
                    .0
                    .live
            })
            .collect();
        assert!(
            !lives.iter().any(Bytes::is_unique),
            "history and dedup share the fan-out's bytes"
        );
        assert!(log.packable());
        log.pack();
        assert!(
            lives.iter().all(Bytes::is_unique),
            "neither the history nor the dedup window holds an original any more"
        );
        let replayed: Vec<_> = log.admit(&joining(false, 0, ""), &limits).replay;
        let contents: Vec<_> = replayed.iter().map(|m| decoded(m).content).collect();
        assert_eq!(contents, ["0", "1", "2", "3"]);
        let resent = log.append(
            &room(),
            "ada",
            "2".into(),
            Some((SessionId(1), "r2".into())),
            &limits,
        );
        let Accepted::Resent { ack, .. } = resent else {
            panic!("a resend in the window: {resent:?}");
        };
        assert_eq!((decoded(&ack).seq, decoded(&ack).r#ref.as_str()), (3, "r2"));
    }

    #[test]
    fn a_packed_buffer_the_dedup_window_still_holds_stays_counted_until_it_goes() {
        let limits = RoomLimits::default();
        let budget = HistoryBudget::new(usize::MAX);
        let mut log = MemoryLog::new(&limits, budget.clone());
        let content = "x".repeat(1000);
        for n in 0..4 {
            let r#ref = format!("r{n}");
            append(
                &mut log,
                "ada",
                &content,
                Some((SessionId(1), &r#ref)),
                &limits,
            );
        }
        // What the dedup window holds of the budget: all but the ring's share.
        let dedup = budget.used() - log.history.held();
        log.pack();
        let pack = log.history.held();
        assert_eq!(
            budget.used(),
            pack + dedup,
            "packing moves bytes, it takes none"
        );
        // Enough newer CHATs (without a `ref`) to push the packed ones out of the ring.
        for n in 0..limits.history {
            append(&mut log, "bob", &n.to_string(), None, &limits);
        }
        assert_eq!(log.history.after(0).count(), limits.history);
        assert_eq!(
            budget.used() - log.history.held(),
            dedup + pack,
            "the dedup window's slices keep the buffer alive, and it stays counted"
        );
        // Once the window forgets them, the buffer goes and its bytes come back.
        log.set_limits(&RoomLimits {
            dedup_window_ms: 0,
            ..limits.clone()
        });
        assert_eq!(budget.used(), log.history.held());
        drop(log);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_join_replays_after_since_seq_and_announces_the_joiner_to_the_others() {
        let limits = RoomLimits::default();
        let mut log = log(&limits);
        let told = log.admit(&joining(false, 0, ""), &limits).epoch;
        assert_eq!(told.len(), 16, "an epoch before the first CHAT");
        for n in 0..5 {
            append(&mut log, "ada", &n.to_string(), None, &limits);
        }
        let epoch = log.epoch.clone();
        assert_eq!(epoch, told, "the first CHAT keeps it");
        let admitted = log.admit(&joining(false, 3, &epoch), &limits);
        assert_eq!((admitted.seq, admitted.live_after), (5, 5));
        assert_eq!(
            (admitted.epoch.as_str(), admitted.replay_truncated),
            (epoch.as_str(), false)
        );
        let replayed: Vec<(u64, bool)> = admitted
            .replay
            .iter()
            .map(decoded)
            .map(|m| (m.seq, m.replay))
            .collect();
        assert_eq!(replayed, vec![(4, true), (5, true)]);
        assert_eq!(admitted.presence.len(), 1);
        assert_eq!(admitted.presence[0].except, Some(SessionId(7)));

        let again = log.admit(&joining(true, 0, ""), &limits);
        assert!(again.replay.is_empty() && again.presence.is_empty());
        assert_eq!(again.epoch, epoch);
    }

    #[test]
    fn a_quiet_room_is_kept_once_a_member_told_its_epoch_went_without_a_leave() {
        let limits = RoomLimits::default();
        let mut log = log(&limits);
        log.left(true);
        assert!(!log.keeps_anything(), "nobody was told the epoch");
        log.admit(&joining(false, 0, ""), &limits);
        log.left(false);
        assert!(!log.keeps_anything(), "a LEAVE does not come back");
        log.left(true);
        assert!(log.keeps_anything(), "a broken stream may resume");
    }

    #[test]
    fn a_resume_from_the_epochs_start_replays_all_that_is_retained() {
        let limits = RoomLimits {
            history: 4,
            history_on_join: 1,
            ..RoomLimits::default()
        };
        let mut log = log(&limits);
        let epoch = log.admit(&joining(false, 0, ""), &limits).epoch;
        for n in 0..3 {
            append(&mut log, "ada", &n.to_string(), None, &limits);
        }
        let whole = log.admit(&joining(false, 0, &epoch), &limits);
        assert_eq!(
            (seqs(&whole), whole.replay_truncated),
            (vec![1, 2, 3], false)
        );
        for n in 3..6 {
            append(&mut log, "ada", &n.to_string(), None, &limits);
        }
        let passed = log.admit(&joining(false, 0, &epoch), &limits);
        assert_eq!(
            (seqs(&passed), passed.replay_truncated),
            (vec![3, 4, 5, 6], true)
        );
    }

    #[test]
    fn a_resume_the_ring_cannot_serve_says_it_is_truncated() {
        let limits = RoomLimits {
            history: 3,
            history_on_join: 2,
            ..RoomLimits::default()
        };
        let mut log = log(&limits);
        for n in 0..6 {
            append(&mut log, "ada", &n.to_string(), None, &limits);
        }
        let epoch = log.epoch.clone();
        let mut admit = |since, epoch: &str| log.admit(&joining(false, since, epoch), &limits);
        // The ring holds 4..=6: after 3 is whole, after 2 lost seq 3.
        let whole = admit(3, &epoch);
        assert_eq!(
            (seqs(&whole), whole.replay_truncated),
            (vec![4, 5, 6], false)
        );
        let passed = admit(2, &epoch);
        assert_eq!(
            (seqs(&passed), passed.replay_truncated),
            (vec![4, 5, 6], true)
        );
        // Another epoch: the default backlog instead.
        let other = admit(5, "0000000000000000");
        assert_eq!((seqs(&other), other.replay_truncated), (vec![5, 6], true));
        // Beyond the last seq: the backlog with an epoch, nothing without one (as before).
        let beyond = admit(9, &epoch);
        assert_eq!((seqs(&beyond), beyond.replay_truncated), (vec![5, 6], true));
        let old_client = admit(9, "");
        assert_eq!(
            (seqs(&old_client), old_client.replay_truncated),
            (vec![], true)
        );
        // Up to date: nothing to replay, nothing missed.
        let current = admit(6, &epoch);
        assert_eq!((seqs(&current), current.replay_truncated), (vec![], false));
    }

    #[test]
    fn a_resend_within_the_window_gets_the_original_ack_and_takes_no_seq() {
        let limits = RoomLimits::default();
        let mut log = log(&limits);
        let (original, id) =
            append(&mut log, "ada", "hi", Some((SessionId(1), "r1")), &limits).unwrap();
        // From another session of the same user (it reconnected), even with other content.
        let resent = log.append(
            &room(),
            "ada",
            "hi again".into(),
            Some((SessionId(2), "r1".into())),
            &limits,
        );
        let Accepted::Resent { to, ack } = resent else {
            panic!("not deduplicated: {resent:?}");
        };
        assert_eq!(to, SessionId(2));
        let ack = decoded(&ack);
        let echo = decoded(&proto::with_ref(&original.live, "r1"));
        assert_eq!(ack, echo, "the same CHAT the sender got as its echo");
        assert_eq!((ack.id, ack.seq, ack.r#ref.as_str()), (id, 1, "r1"));
        assert_eq!(log.last_seq(), 1);
        // Another user's same ref, an empty ref, or the window off: posted.
        assert!(append(&mut log, "bob", "hi", Some((SessionId(3), "r1")), &limits).is_some());
        assert!(append(&mut log, "ada", "hi", Some((SessionId(1), "")), &limits).is_some());
        assert!(append(&mut log, "ada", "hi", Some((SessionId(1), "")), &limits).is_some());
        let off = RoomLimits {
            dedup_window_ms: 0,
            ..RoomLimits::default()
        };
        log.set_limits(&off);
        assert!(append(&mut log, "ada", "hi", Some((SessionId(1), "r1")), &off).is_some());
        assert!(append(&mut log, "ada", "hi", Some((SessionId(1), "r1")), &off).is_some());
        assert_eq!(log.last_seq(), 6);
    }
}
