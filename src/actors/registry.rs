//! Finding rooms by name: a concurrent map from [`RoomName`] to the room actor's address and
//! instance id. A room removes itself only while it is still the registered one (remove-if-same,
//! by [`RoomId`]), so a JOIN that raced with its stop retries on a fresh room instead of being
//! lost. Opening a room takes one of `server.max_rooms` places first, so concurrent JOINs cannot
//! open more rooms than that.

use std::{
    ops::Deref,
    sync::atomic::{AtomicU64, AtomicUsize, Ordering},
};

use actix::Addr;
use dashmap::{DashMap, mapref::entry::Entry};
use tokio::sync::watch;

use super::{Reconfigure, RoomId, env::Unregister, room::Room};
use crate::{error::ChatError, metrics, names::RoomName};

/// A registered room: its address (which it derefs to, for sending mail), and which room of
/// that name it is.
#[derive(Debug, Clone)]
pub struct RoomRef {
    pub id: RoomId,
    pub addr: Addr<Room>,
}

impl Deref for RoomRef {
    type Target = Addr<Room>;

    fn deref(&self) -> &Addr<Room> {
        &self.addr
    }
}

#[derive(Debug)]
pub struct RoomRegistry {
    rooms: DashMap<RoomName, RoomRef>,
    /// The id the next room started gets.
    next_id: AtomicU64,
    /// Places taken, one per registered room, counted apart from `rooms` so that taking one is
    /// a single atomic step across the map's shards.
    places: AtomicUsize,
    /// `server.max_rooms`; reloadable.
    max: AtomicUsize,
    /// Number of registered rooms, for gauges and for tests that wait for a room to stop.
    count: watch::Sender<usize>,
}

impl RoomRegistry {
    pub fn new(max: usize) -> RoomRegistry {
        RoomRegistry {
            rooms: DashMap::new(),
            next_id: AtomicU64::new(1),
            places: AtomicUsize::new(0),
            max: AtomicUsize::new(max),
            count: watch::Sender::new(0),
        }
    }

    /// The registered room called `name`, started with `start` (given its id) if there is none
    /// and the server has fewer than `max_rooms` open.
    pub fn get_or_create(
        &self,
        name: &RoomName,
        start: impl FnOnce(RoomId) -> Addr<Room>,
    ) -> Result<RoomRef, ChatError> {
        if let Some(room) = self.rooms.get(name) {
            return Ok(room.clone());
        }
        let addr = match self.rooms.entry(name.clone()) {
            Entry::Occupied(entry) => return Ok(entry.get().clone()),
            Entry::Vacant(entry) => {
                // Take a place first, then check: two racing creations cannot both take the
                // last one. The entry's shard stays locked meanwhile, so a same-name creation
                // waits and then finds this room.
                let max = self.max.load(Ordering::Relaxed);
                if self.places.fetch_add(1, Ordering::AcqRel) >= max {
                    self.places.fetch_sub(1, Ordering::AcqRel);
                    return Err(ChatError::ServerRoomsFull { max });
                }
                let id = RoomId(self.next_id.fetch_add(1, Ordering::Relaxed));
                let addr = start(id);
                entry.insert(RoomRef { id, addr }).clone()
            }
        };
        self.publish_count();
        Ok(addr)
    }

    /// Unregisters `name` if it still maps to room `id`; a newer room of the same name stays.
    pub fn remove_if_same(&self, name: &RoomName, id: RoomId) -> bool {
        let removed = self
            .rooms
            .remove_if(name, |_, current| current.id == id)
            .is_some();
        if removed {
            self.places.fetch_sub(1, Ordering::AcqRel);
            self.publish_count();
        }
        removed
    }

    /// Applies a reloaded `max_rooms`: rooms already open stay, new ones wait for places.
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    pub fn get(&self, name: &RoomName) -> Option<Addr<Room>> {
        self.rooms.get(name).map(|room| room.addr.clone())
    }

    /// The registered rooms whose name starts with `prefix`.
    pub fn snapshot(&self, prefix: &str) -> Vec<(RoomName, Addr<Room>)> {
        self.rooms
            .iter()
            .filter(|entry| entry.key().as_str().starts_with(prefix))
            .map(|entry| (entry.key().clone(), entry.value().addr.clone()))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }

    /// Asks every room to re-read its limits (after a configuration reload).
    pub fn reconfigure_all(&self) {
        for room in self.rooms.iter() {
            // do_send: one per room per reload, and a busy room must not miss it.
            room.addr.do_send(Reconfigure);
        }
    }

    /// Reads the count and publishes it under the watch's lock, so two changes racing cannot
    /// publish out of order and leave a stale value behind.
    fn publish_count(&self) {
        self.count.send_modify(|n| {
            *n = self.rooms.len();
            metrics::get().rooms_open.set(*n as f64);
        });
    }

    /// Watches the number of registered rooms.
    pub fn watch_count(&self) -> watch::Receiver<usize> {
        self.count.subscribe()
    }
}

impl Unregister for RoomRegistry {
    fn remove_if_same(&self, name: &RoomName, id: RoomId) -> bool {
        RoomRegistry::remove_if_same(self, name, id)
    }
}
