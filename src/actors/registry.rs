//! Finding rooms by name: a concurrent map from [`RoomName`] to the room actor's address. A room
//! removes itself only while it is still the registered one (remove-if-same), so a JOIN that
//! raced with its stop retries on a fresh room instead of being lost. Opening a room takes one
//! of `server.max_rooms` places first, so concurrent JOINs cannot open more rooms than that.

use std::sync::atomic::{AtomicUsize, Ordering};

use actix::Addr;
use dashmap::{DashMap, mapref::entry::Entry};
use tokio::sync::watch;

use crate::{
    actors::{Reconfigure, room::Room},
    error::ChatError,
    metrics,
    names::RoomName,
};

#[derive(Debug)]
pub struct RoomRegistry {
    rooms: DashMap<RoomName, Addr<Room>>,
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
            places: AtomicUsize::new(0),
            max: AtomicUsize::new(max),
            count: watch::Sender::new(0),
        }
    }

    /// The registered room called `name`, started with `start` if there is none and the
    /// server has fewer than `max_rooms` open.
    pub fn get_or_create(
        &self,
        name: &RoomName,
        start: impl FnOnce() -> Addr<Room>,
    ) -> Result<Addr<Room>, ChatError> {
        if let Some(addr) = self.rooms.get(name) {
            return Ok(addr.clone());
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
                entry.insert(start()).clone()
            }
        };
        self.publish_count();
        Ok(addr)
    }

    /// Unregisters `name` if it still maps to `addr`; a newer room of the same name stays.
    pub fn remove_if_same(&self, name: &RoomName, addr: &Addr<Room>) -> bool {
        let removed = self
            .rooms
            .remove_if(name, |_, current| current == addr)
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
        self.rooms.get(name).map(|a| a.clone())
    }

    /// The registered rooms whose name starts with `prefix`.
    pub fn snapshot(&self, prefix: &str) -> Vec<(RoomName, Addr<Room>)> {
        self.rooms
            .iter()
            .filter(|entry| entry.key().as_str().starts_with(prefix))
            .map(|entry| (entry.key().clone(), entry.value().clone()))
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
            room.do_send(Reconfigure);
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
