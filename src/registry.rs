//! Finding rooms by name: a concurrent map from [`RoomName`] to the room actor's address. A room
//! removes itself only while it is still the registered one (remove-if-same), so a JOIN that
//! raced with its stop retries on a fresh room instead of being lost.

use actix::Addr;
use dashmap::DashMap;
use tokio::sync::watch;

use crate::{
    actors::{Reconfigure, room::Room},
    metrics,
    names::RoomName,
};

#[derive(Debug)]
pub struct RoomRegistry {
    rooms: DashMap<RoomName, Addr<Room>>,
    /// Number of registered rooms, for gauges and for tests that wait for a room to stop.
    count: watch::Sender<usize>,
}

impl Default for RoomRegistry {
    fn default() -> Self {
        RoomRegistry {
            rooms: DashMap::new(),
            count: watch::Sender::new(0),
        }
    }
}

impl RoomRegistry {
    /// The registered room called `name`, started with `start` if there is none.
    pub fn get_or_create(&self, name: &RoomName, start: impl FnOnce() -> Addr<Room>) -> Addr<Room> {
        if let Some(addr) = self.rooms.get(name) {
            return addr.clone();
        }
        let mut created = false;
        let addr = self
            .rooms
            .entry(name.clone())
            .or_insert_with(|| {
                created = true;
                start()
            })
            .clone();
        if created {
            self.publish_count();
        }
        addr
    }

    /// Unregisters `name` if it still maps to `addr`; a newer room of the same name stays.
    pub fn remove_if_same(&self, name: &RoomName, addr: &Addr<Room>) -> bool {
        let removed = self
            .rooms
            .remove_if(name, |_, current| current == addr)
            .is_some();
        if removed {
            self.publish_count();
        }
        removed
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
