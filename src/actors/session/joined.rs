//! The rooms a session has joined, by name. A session is in a few rooms at most
//! (`session.max_rooms_per_session`, 32 by default) and usually in one, so they are a short
//! list searched in order rather than a hash map: every open session holds this, and a map's
//! smallest table (4 buckets and their control bytes, ~220 bytes) is several times one entry.

use crate::{actors::registry::RoomRef, names::RoomName};

#[derive(Default)]
pub(super) struct Joined {
    rooms: Vec<(RoomName, RoomRef)>,
}

impl Joined {
    pub(super) fn len(&self) -> usize {
        self.rooms.len()
    }

    pub(super) fn contains(&self, name: &RoomName) -> bool {
        self.get(name).is_some()
    }

    pub(super) fn get(&self, name: &RoomName) -> Option<&RoomRef> {
        self.rooms
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, room)| room)
    }

    /// Records `room` under `name`, replacing what was there.
    pub(super) fn insert(&mut self, name: RoomName, room: RoomRef) {
        match self.rooms.iter_mut().find(|(n, _)| *n == name) {
            Some((_, joined)) => *joined = room,
            None => self.push(name, room),
        }
    }

    /// Records `room` under `name` unless the name is already there.
    pub(super) fn insert_if_absent(&mut self, name: RoomName, room: RoomRef) {
        if !self.contains(&name) {
            self.push(name, room);
        }
    }

    fn push(&mut self, name: RoomName, room: RoomRef) {
        // One place at a time: a Vec's first growth would make room for four.
        self.rooms.reserve_exact(1);
        self.rooms.push((name, room));
    }

    pub(super) fn remove(&mut self, name: &RoomName) -> Option<RoomRef> {
        let at = self.rooms.iter().position(|(n, _)| n == name)?;
        let (_, room) = self.rooms.swap_remove(at);
        if self.rooms.is_empty() {
            self.rooms = Vec::new();
        }
        Some(room)
    }

    pub(super) fn names(&self) -> impl Iterator<Item = &RoomName> {
        self.rooms.iter().map(|(name, _)| name)
    }

    /// Takes every room out, leaving none.
    pub(super) fn take_all(&mut self) -> impl Iterator<Item = (RoomName, RoomRef)> + use<> {
        std::mem::take(&mut self.rooms).into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::{RoomId, room::Room};
    use actix::Addr;

    fn room(id: u64) -> RoomRef {
        // A room address that is never used: the list only stores and compares.
        let (tx, _) = actix::dev::channel::channel::<Room>(1);
        RoomRef {
            id: RoomId(id),
            addr: Addr::new(tx),
        }
    }

    fn name(s: &str) -> RoomName {
        RoomName::parse(s).unwrap()
    }

    #[test]
    fn joins_finds_replaces_and_leaves_by_name() {
        let mut joined = Joined::default();
        joined.insert(name("a"), room(1));
        joined.insert(name("b"), room(2));
        joined.insert_if_absent(name("a"), room(3));
        assert_eq!(joined.get(&name("a")).map(|r| r.id), Some(RoomId(1)));
        joined.insert(name("a"), room(4));
        assert_eq!(joined.get(&name("a")).map(|r| r.id), Some(RoomId(4)));
        assert_eq!(joined.len(), 2);
        assert_eq!(joined.remove(&name("a")).map(|r| r.id), Some(RoomId(4)));
        assert!(!joined.contains(&name("a")));
        assert!(joined.remove(&name("a")).is_none());
        let names: Vec<_> = joined.names().cloned().collect();
        assert_eq!(names, [name("b")]);
        let all: Vec<_> = joined.take_all().map(|(n, r)| (n, r.id)).collect();
        assert_eq!(all, [(name("b"), RoomId(2))]);
        assert_eq!(joined.len(), 0);
    }

    #[test]
    fn holds_one_place_per_room() {
        let mut joined = Joined::default();
        joined.insert(name("a"), room(1));
        assert_eq!(joined.rooms.capacity(), 1);
        joined.insert(name("b"), room(2));
        joined.remove(&name("a"));
        joined.remove(&name("b"));
        assert_eq!(
            joined.rooms.capacity(),
            0,
            "an empty list gives its memory back"
        );
    }
}
