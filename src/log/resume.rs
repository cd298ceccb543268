//! Where a JOIN's replay starts and whether it is whole: one rule for both engines, from the
//! JOIN's `since_seq` and `epoch` and the room's last seq and epoch (README, Protocol →
//! Resuming).

/// Where a JOIN's replay starts, from its `since_seq` and `epoch` and the room's sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    /// Replay the retained CHATs after this seq; 0 = the default backlog (`history_on_join`).
    pub after: u64,
    /// `since_seq` is void: it counts in another epoch, or beyond the room's last seq (the count
    /// started over). The replay then cannot start right after it.
    pub void: bool,
}

impl Resume {
    /// The resume of a JOIN with `since_seq` in `epoch`, in a room at `last` in `room_epoch`.
    ///
    /// `since_seq = 0` asks for the default backlog. A `since_seq` in the room's epoch (or sent
    /// without one) up to `last` is resumed after. Otherwise it is void: with an epoch, the
    /// default backlog is replayed instead; without one (clients that predate epochs) the answer
    /// is what it always was, the CHATs after it (none).
    pub fn of(since_seq: u64, epoch: &str, room_epoch: &str, last: u64) -> Resume {
        let same_epoch = epoch.is_empty() || epoch == room_epoch;
        match since_seq {
            0 => Resume {
                after: 0,
                void: false,
            },
            _ if same_epoch && since_seq <= last => Resume {
                after: since_seq,
                void: false,
            },
            _ if epoch.is_empty() => Resume {
                after: since_seq,
                void: true,
            },
            _ => Resume {
                after: 0,
                void: true,
            },
        }
    }

    /// Whether the JOINED says `replay_truncated`: a `since_seq` > 0 whose replay does not start
    /// right after it — void, or CHATs after it existed (`last` is beyond it) but the first one
    /// replayed (`first`, `None` when nothing is) is not the next one: retention passed it.
    pub fn truncated(&self, since_seq: u64, last: u64, first: Option<u64>) -> bool {
        self.void || (since_seq > 0 && since_seq < last && first != Some(since_seq + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every case of `since_seq` against a room at seq 10 in epoch "e".
    #[test]
    fn resume_and_truncation_cover_every_case() {
        let of = |since, epoch| Resume::of(since, epoch, "e", 10);
        let resumed = |after| Resume { after, void: false };
        let void = |after| Resume { after, void: true };
        // No since_seq: the default backlog, never truncated.
        assert_eq!(of(0, "e"), resumed(0));
        assert_eq!(of(0, "x"), resumed(0));
        assert!(!of(0, "x").truncated(0, 10, Some(1)));
        // The same epoch, or none (clients before epochs), up to the last seq: resumed.
        for epoch in ["e", ""] {
            assert_eq!(of(4, epoch), resumed(4));
            assert_eq!(of(10, epoch), resumed(10));
        }
        // Replay starting right after since_seq, or nothing missed: not truncated.
        assert!(!of(4, "e").truncated(4, 10, Some(5)));
        assert!(!of(10, "e").truncated(10, 10, None));
        // Retention passed since_seq: the oldest replayed is later, or nothing is retained.
        assert!(of(4, "e").truncated(4, 10, Some(7)));
        assert!(of(4, "e").truncated(4, 10, None));
        // Another epoch: void, the default backlog instead.
        assert_eq!(of(4, "x"), void(0));
        assert!(of(4, "x").truncated(4, 10, Some(1)));
        // Beyond the last seq (the count started over): void; with an epoch the backlog,
        // without one what it always was (the CHATs after it: none).
        assert_eq!(of(11, "e"), void(0));
        assert_eq!(of(11, ""), void(11));
        assert!(of(11, "").truncated(11, 10, None));
        // A room whose sequence has not started (seq 0, no epoch) voids any since_seq.
        assert_eq!(Resume::of(3, "e", "", 0), void(0));
        assert_eq!(Resume::of(3, "", "", 0), void(3));
    }
}
