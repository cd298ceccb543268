//! Where a JOIN's replay starts and whether it is whole: one rule for both engines, from the
//! JOIN's `since_seq` and `epoch` and the room's last seq and epoch (README, Protocol →
//! Resuming).

/// Where a JOIN's replay starts, from its `since_seq` and `epoch` and the room's sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    /// Replay the retained CHATs after this seq (`Some(0)`: from the start of the room's
    /// epoch); `None`: the default backlog (`history_on_join`).
    pub after: Option<u64>,
    /// `since_seq` is void: it counts in another epoch, or beyond the room's last seq (the count
    /// started over). The replay then cannot start right after it.
    pub void: bool,
}

impl Resume {
    /// The resume of a JOIN with `since_seq` in `epoch`, in a room at `last` in `room_epoch`.
    ///
    /// A JOIN without an epoch and with `since_seq = 0` asks for the default backlog. A
    /// `since_seq` in the room's epoch (or sent without one: clients that predate epochs) up
    /// to `last` is resumed after — 0 in the room's epoch too: a member that saw no CHAT yet
    /// resumes from the epoch's start. Otherwise it is void: with an epoch, the default
    /// backlog is replayed instead (whatever `since_seq`: the client cannot know what its
    /// epoch held after it went); without one, the answer is what it always was, the CHATs
    /// after it (none).
    pub fn of(since_seq: u64, epoch: &str, room_epoch: &str, last: u64) -> Resume {
        let same_epoch = epoch.is_empty() || epoch == room_epoch;
        match since_seq {
            0 if epoch.is_empty() => Resume {
                after: None,
                void: false,
            },
            _ if same_epoch && since_seq <= last => Resume {
                after: Some(since_seq),
                void: false,
            },
            _ if epoch.is_empty() => Resume {
                after: Some(since_seq),
                void: true,
            },
            _ => Resume {
                after: None,
                void: true,
            },
        }
    }

    /// Whether the JOINED says `replay_truncated`: a resume whose replay does not start right
    /// after `since_seq` — void, or CHATs after it existed (`last` is beyond it) but the first
    /// one replayed (`first`, `None` when nothing is) is not the next one: retention passed it.
    pub fn truncated(&self, last: u64, first: Option<u64>) -> bool {
        self.void
            || self
                .after
                .is_some_and(|after| after < last && first != Some(after + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every case of `since_seq` against a room at seq 10 in epoch "e".
    #[test]
    fn resume_and_truncation_cover_every_case() {
        let of = |since, epoch| Resume::of(since, epoch, "e", 10);
        let resumed = |after| Resume {
            after: Some(after),
            void: false,
        };
        let backlog = Resume {
            after: None,
            void: false,
        };
        let void = |after| Resume { after, void: true };
        // No since_seq and no epoch (a fresh JOIN): the default backlog, never truncated.
        assert_eq!(of(0, ""), backlog);
        assert!(!of(0, "").truncated(10, Some(1)));
        assert!(!of(0, "").truncated(10, Some(9)));
        // No since_seq in the room's epoch (joined, no CHAT seen): from the epoch's start,
        // truncated once retention passed seq 1.
        assert_eq!(of(0, "e"), resumed(0));
        assert!(!of(0, "e").truncated(10, Some(1)));
        assert!(of(0, "e").truncated(10, Some(3)));
        assert!(of(0, "e").truncated(10, None));
        assert!(
            !Resume::of(0, "e", "e", 0).truncated(0, None),
            "nothing posted yet"
        );
        // No since_seq in another epoch: the client cannot know what its epoch held after it
        // went, so the backlog, truncated.
        assert_eq!(of(0, "x"), void(None));
        assert!(of(0, "x").truncated(10, Some(1)));
        // The same epoch, or none (clients before epochs), up to the last seq: resumed.
        for epoch in ["e", ""] {
            assert_eq!(of(4, epoch), resumed(4));
            assert_eq!(of(10, epoch), resumed(10));
        }
        // Replay starting right after since_seq, or nothing missed: not truncated.
        assert!(!of(4, "e").truncated(10, Some(5)));
        assert!(!of(10, "e").truncated(10, None));
        // Retention passed since_seq: the oldest replayed is later, or nothing is retained.
        assert!(of(4, "e").truncated(10, Some(7)));
        assert!(of(4, "e").truncated(10, None));
        // Another epoch: void, the default backlog instead.
        assert_eq!(of(4, "x"), void(None));
        assert!(of(4, "x").truncated(10, Some(1)));
        // Beyond the last seq (the count started over): void; with an epoch the backlog,
        // without one what it always was (the CHATs after it: none).
        assert_eq!(of(11, "e"), void(None));
        assert_eq!(of(11, ""), void(Some(11)));
        assert!(of(11, "").truncated(10, None));
        // A room whose sequence is unknown (seq 0, no epoch) voids any since_seq with an epoch.
        assert_eq!(Resume::of(3, "e", "", 0), void(None));
        assert_eq!(Resume::of(0, "e", "", 0), void(None));
        assert_eq!(Resume::of(3, "", "", 0), void(Some(3)));
    }
}
