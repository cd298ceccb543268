//! [`Rooms`]: where the client stands in each room: the epoch and last seq it has delivered
//! (a resume asks for exactly what is missing, and anything at or below it is a duplicate) and
//! the replay that follows each JOINED, which ends at the PONG of a PING sent after the JOIN
//! (the server queues a JOIN's replay before it handles the next request).

use std::collections::BTreeMap;

use super::event::Event;

/// Whether a room is wanted, and answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// A JOIN was sent (or will be) and not answered yet.
    Joining,
    Joined,
    /// A LEAVE was sent (or will be) and not answered yet.
    Leaving,
}

#[derive(Debug)]
struct Room {
    status: Status,
    /// The epoch of `last_seq`: of the last CHAT delivered, or of the JOINED before any.
    epoch: String,
    /// The highest seq delivered in `epoch`, or passed over on purpose (the history before a
    /// join that the replay did not hold).
    last_seq: u64,
    replay: Option<Replay>,
}

/// The replay after one JOINED.
#[derive(Debug)]
struct Replay {
    /// Request number of the JOIN: the PONG of a later marker PING ends the replay.
    join: u64,
    /// A rejoin after a reconnect (reported as [`Event::Resumed`]).
    resume: bool,
    /// The position the JOIN asked to continue from.
    since: u64,
    /// The room's last seq at the JOIN: the replay ends there and live traffic follows it.
    joined_seq: u64,
    /// Already known to be incomplete: the server said so, or the sequence started over.
    truncated: bool,
    first: Option<u64>,
    count: u64,
}

/// Every room the client is in or on its way into or out of.
#[derive(Debug, Default)]
pub(crate) struct Rooms {
    rooms: BTreeMap<String, Room>,
}

impl Rooms {
    pub(crate) fn status(&self, room: &str) -> Option<Status> {
        self.rooms.get(room).map(|r| r.status)
    }

    pub(crate) fn set_status(&mut self, room: &str, status: Status) {
        self.room(room, status).status = status;
    }

    pub(crate) fn remove(&mut self, room: &str) {
        self.rooms.remove(room);
    }

    /// A JOIN sent as `asked` (possibly empty: the default room) was answered for `real`.
    pub(crate) fn rename(&mut self, asked: &str, real: &str) {
        if asked != real
            && let Some(room) = self.rooms.remove(asked)
        {
            self.rooms.entry(real.to_string()).or_insert(room);
        }
    }

    /// `since_seq` and `epoch` for a JOIN of `room`.
    pub(crate) fn position(&self, room: &str) -> (u64, String) {
        self.rooms
            .get(room)
            .map_or((0, String::new()), |r| (r.last_seq, r.epoch.clone()))
    }

    /// Rooms to join again on a new connection.
    pub(crate) fn joined(&self) -> Vec<String> {
        let joined = self
            .rooms
            .iter()
            .filter(|(_, r)| r.status == Status::Joined);
        joined.map(|(name, _)| name.clone()).collect()
    }

    /// A JOINED for `room`, answering the JOIN numbered `join`.
    pub(crate) fn on_joined(
        &mut self,
        room: &str,
        epoch: &str,
        seq: u64,
        server_truncated: bool,
        join: u64,
        resume: bool,
    ) {
        let room = self.room(room, Status::Joined);
        room.status = Status::Joined;
        // A position is a seq seen, or an epoch told (a room joined before its first CHAT:
        // resumed with since_seq 0 in that epoch, from its start).
        let had_position = room.last_seq > 0 || !room.epoch.is_empty();
        // A room whose seq went back started over, even on a server without epochs.
        let started_over = had_position && (room.epoch != epoch || seq < room.last_seq);
        room.epoch = epoch.to_string();
        if started_over {
            room.last_seq = 0;
        }
        room.replay = Some(Replay {
            join,
            resume,
            since: room.last_seq,
            joined_seq: seq,
            truncated: server_truncated || started_over,
            first: None,
            count: 0,
        });
    }

    /// Whether a CHAT of `room` is new (deliver it) or a duplicate (drop it); records it.
    pub(crate) fn accept(&mut self, room: &str, epoch: &str, seq: u64, replay: bool) -> bool {
        // A room the server put the client in by itself: the default room on a first CHAT.
        let room = self.room(room, Status::Joined);
        if room.epoch != epoch {
            // Live traffic of a new incarnation: the sequence started over under this session.
            room.epoch = epoch.to_string();
        } else if seq <= room.last_seq {
            return false;
        }
        room.last_seq = seq;
        if let Some(phase) = room.replay.as_mut().filter(|_| replay) {
            phase.first.get_or_insert(seq);
            phase.count += 1;
        }
        true
    }

    /// The PONG of the marker PING numbered `marker` arrived: every replay of a JOIN sent
    /// before it is over. Returns the [`Event::Resumed`] of the rejoins among them.
    pub(crate) fn end_replays(&mut self, marker: u64) -> Vec<Event> {
        let mut resumed = Vec::new();
        for (name, room) in &mut self.rooms {
            let Some(replay) = room.replay.take_if(|r| r.join < marker) else {
                continue;
            };
            // Whatever the replay did not hold up to the JOIN is passed over, not missing.
            room.last_seq = room.last_seq.max(replay.joined_seq);
            if replay.resume {
                let gap = match replay.first {
                    Some(first) => first > replay.since + 1,
                    None => replay.joined_seq > replay.since,
                };
                resumed.push(Event::Resumed {
                    room: name.clone(),
                    replayed: replay.count,
                    truncated: replay.truncated || gap,
                });
            }
        }
        resumed
    }

    /// The connection broke: replays in progress will be asked for again from where they got.
    pub(crate) fn abandon_replays(&mut self) {
        for room in self.rooms.values_mut() {
            room.replay = None;
        }
    }

    fn room(&mut self, name: &str, status: Status) -> &mut Room {
        self.rooms.entry(name.to_string()).or_insert_with(|| Room {
            status,
            epoch: String::new(),
            last_seq: 0,
            replay: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resumed(room: &str, replayed: u64, truncated: bool) -> Event {
        Event::Resumed {
            room: room.into(),
            replayed,
            truncated,
        }
    }

    /// `r` joined at seq 3 of epoch "e" with messages 1..=3 replayed and 4, 5 live.
    fn joined_and_read() -> Rooms {
        let mut rooms = Rooms::default();
        rooms.set_status("r", Status::Joining);
        rooms.on_joined("r", "e", 3, false, 1, false);
        for seq in 1..=3 {
            assert!(rooms.accept("r", "e", seq, true));
        }
        assert_eq!(rooms.end_replays(2), []);
        assert!(rooms.accept("r", "e", 4, false));
        assert!(rooms.accept("r", "e", 5, false));
        rooms
    }

    #[test]
    fn duplicates_are_dropped_by_epoch_and_seq() {
        let mut rooms = joined_and_read();
        assert!(!rooms.accept("r", "e", 5, false));
        assert!(!rooms.accept("r", "e", 2, true));
        assert_eq!(rooms.position("r"), (5, "e".into()));
        assert_eq!(rooms.joined(), ["r"]);
    }

    #[test]
    fn a_resume_counts_its_replay_and_is_whole_when_it_starts_right_after_the_position() {
        let mut rooms = joined_and_read();
        rooms.abandon_replays();
        rooms.on_joined("r", "e", 8, false, 10, true);
        for seq in 6..=8 {
            assert!(rooms.accept("r", "e", seq, true));
        }
        assert_eq!(rooms.end_replays(9), [], "a marker sent before the JOIN");
        assert_eq!(rooms.end_replays(11), [resumed("r", 3, false)]);
        assert!(rooms.accept("r", "e", 9, false));
    }

    #[test]
    fn a_resume_whose_replay_skips_ahead_is_truncated() {
        let mut rooms = joined_and_read();
        rooms.on_joined("r", "e", 9, false, 10, true);
        assert!(rooms.accept("r", "e", 8, true));
        assert!(rooms.accept("r", "e", 9, true));
        assert_eq!(rooms.end_replays(11), [resumed("r", 2, true)]);
        // Nothing replayed although the room moved on: truncated too.
        rooms.on_joined("r", "e", 12, false, 12, true);
        assert_eq!(rooms.end_replays(13), [resumed("r", 0, true)]);
        assert_eq!(rooms.position("r"), (12, "e".into()));
        // Nothing replayed and nothing missed: whole.
        rooms.on_joined("r", "e", 12, false, 14, true);
        assert_eq!(rooms.end_replays(15), [resumed("r", 0, false)]);
        // The server's word counts even when the seqs look whole.
        rooms.on_joined("r", "e", 13, true, 16, true);
        assert!(rooms.accept("r", "e", 13, true));
        assert_eq!(rooms.end_replays(17), [resumed("r", 1, true)]);
    }

    #[test]
    fn a_new_epoch_starts_the_room_over_and_delivers_its_low_seqs() {
        let mut rooms = joined_and_read();
        rooms.on_joined("r", "f", 2, true, 10, true);
        assert!(rooms.accept("r", "f", 1, true));
        assert!(rooms.accept("r", "f", 2, true));
        assert_eq!(rooms.end_replays(11), [resumed("r", 2, true)]);
        assert!(rooms.accept("r", "f", 3, false));
        assert!(!rooms.accept("r", "f", 3, false));
    }

    #[test]
    fn a_room_joined_before_its_first_chat_resumes_from_the_epochs_start() {
        let mut rooms = Rooms::default();
        rooms.on_joined("r", "e", 0, false, 1, false);
        assert_eq!(rooms.end_replays(2), []);
        assert_eq!(rooms.position("r"), (0, "e".into()));
        rooms.abandon_replays();
        // Everything since seq 0 is replayed: whole.
        rooms.on_joined("r", "e", 3, false, 3, true);
        for seq in 1..=3 {
            assert!(rooms.accept("r", "e", seq, true));
        }
        assert_eq!(rooms.end_replays(4), [resumed("r", 3, false)]);
        // The same from seq 0 of an epoch the room no longer has: truncated, even if the
        // server (one without this rule) does not say so and the replay starts at 1.
        let mut rooms = Rooms::default();
        rooms.on_joined("r", "e", 0, false, 1, false);
        assert_eq!(rooms.end_replays(2), []);
        rooms.on_joined("r", "f", 2, false, 3, true);
        assert!(rooms.accept("r", "f", 1, true));
        assert!(rooms.accept("r", "f", 2, true));
        assert_eq!(rooms.end_replays(4), [resumed("r", 2, true)]);
    }

    #[test]
    fn a_seq_that_went_back_is_a_new_start_even_without_epochs() {
        let mut rooms = Rooms::default();
        rooms.on_joined("r", "", 0, false, 1, false);
        for seq in 1..=5 {
            assert!(rooms.accept("r", "", seq, false));
        }
        rooms.on_joined("r", "", 2, false, 3, true);
        assert!(rooms.accept("r", "", 1, true));
        assert_eq!(rooms.end_replays(4), [resumed("r", 1, true)]);
    }

    #[test]
    fn live_chats_of_a_new_epoch_are_delivered() {
        let mut rooms = joined_and_read();
        assert!(rooms.accept("r", "g", 1, false));
        assert!(rooms.accept("r", "g", 2, false));
        assert!(!rooms.accept("r", "g", 1, false));
    }

    #[test]
    fn an_unfinished_replay_resumes_from_what_was_delivered() {
        let mut rooms = Rooms::default();
        rooms.on_joined("r", "e", 50, false, 1, false);
        assert!(rooms.accept("r", "e", 31, true));
        rooms.abandon_replays();
        assert_eq!(rooms.position("r"), (31, "e".into()));
        assert_eq!(rooms.end_replays(100), []);
        assert_eq!(rooms.position("r"), (31, "e".into()));
    }

    #[test]
    fn a_chat_in_an_unknown_room_is_the_default_room_joined_by_a_post() {
        let mut rooms = Rooms::default();
        rooms.set_status("", Status::Joining);
        rooms.rename("", "lobby");
        assert_eq!(rooms.status("lobby"), Some(Status::Joining));
        assert!(rooms.accept("other", "e", 1, false));
        assert_eq!(rooms.status("other"), Some(Status::Joined));
        rooms.remove("other");
        assert_eq!(rooms.status("other"), None);
    }
}
