//! The memory log's dedup window: the CHATs a room accepted with a `ref`, by `(user, ref)`, for
//! `dedup_window_ms`, so a resend (its sender reconnected and does not know whether the first
//! try arrived) gets the original ack instead of being posted twice. The Redis log keeps the
//! same thing in Redis, one key per CHAT (`cluster::RedisEngine::post_chat`).
//!
//! Bounded in bytes: each entry counts its encoded CHAT, its key (twice: map and queue) and
//! [`ENTRY_OVERHEAD`]; a room holds at most its `history_bytes` of them, the oldest going first,
//! and they draw on the server-wide [`HistoryBudget`] like the history rings do (when it is used
//! up the room gives up its own oldest entries, and with none left does not remember the new
//! one). The encoded CHAT is the history ring's own copy (`Bytes` share it), so while both hold a
//! CHAT it is counted twice but stored once.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;

use crate::history::HistoryBudget;

/// What an entry costs beyond its key and CHAT: the map slot, the queue slot, the `Bytes`
/// handle and the time it was accepted.
const ENTRY_OVERHEAD: usize = 96;

#[derive(Debug)]
struct Entry {
    key: String,
    at: Instant,
    ack: Bytes,
}

impl Entry {
    fn bytes(&self) -> usize {
        2 * self.key.len() + self.ack.len() + ENTRY_OVERHEAD
    }
}

#[derive(Debug)]
pub(super) struct Dedup {
    /// Oldest first: a CHAT is remembered when it is accepted.
    entries: VecDeque<Entry>,
    /// Key → the number of entries popped before it was pushed (its place is that minus
    /// `popped`).
    index: HashMap<String, u64>,
    popped: u64,
    /// What the entries count, all of it drawn from `budget`.
    bytes: usize,
    budget: Arc<HistoryBudget>,
}

/// One key per `(user, ref)`: user names contain no control characters, so the first NUL ends
/// the user whatever the `ref` holds.
fn key(user: &str, r#ref: &str) -> String {
    let mut key = String::with_capacity(user.len() + 1 + r#ref.len());
    key.push_str(user);
    key.push('\0');
    key.push_str(r#ref);
    key
}

impl Dedup {
    pub(super) fn new(budget: Arc<HistoryBudget>) -> Dedup {
        Dedup {
            entries: VecDeque::new(),
            index: HashMap::new(),
            popped: 0,
            bytes: 0,
            budget,
        }
    }

    /// The CHAT `user` posted with `ref` within `window` before `now`, as encoded for fan-out.
    pub(super) fn find(
        &mut self,
        user: &str,
        r#ref: &str,
        window: Duration,
        now: Instant,
    ) -> Option<Bytes> {
        self.expire(window, now);
        let place = *self.index.get(&key(user, r#ref))? - self.popped;
        let entry = &self.entries[usize::try_from(place).ok()?];
        Some(entry.ack.clone())
    }

    /// Remembers the CHAT `user` just posted with `ref`, within at most `max_bytes`.
    pub(super) fn remember(
        &mut self,
        user: &str,
        r#ref: &str,
        ack: Bytes,
        window: Duration,
        max_bytes: usize,
        now: Instant,
    ) {
        self.expire(window, now);
        let entry = Entry {
            key: key(user, r#ref),
            at: now,
            ack,
        };
        let size = entry.bytes();
        if size > max_bytes {
            return;
        }
        while self.bytes + size > max_bytes {
            self.pop_oldest();
        }
        while !self.budget.try_take(size) {
            if self.entries.is_empty() {
                return; // the budget is held by other rooms: not remembered
            }
            self.pop_oldest();
        }
        self.bytes += size;
        self.index
            .insert(entry.key.clone(), self.popped + self.entries.len() as u64);
        self.entries.push_back(entry);
    }

    /// Holds `packed` instead of `original` wherever it held the history's original of a CHAT
    /// the history has packed (`History::pack`), so the original can be freed.
    pub(super) fn swap(&mut self, swapped: &[(Bytes, Bytes)]) {
        if swapped.is_empty() || self.entries.is_empty() {
            return;
        }
        let packed: HashMap<(*const u8, usize), &Bytes> = swapped
            .iter()
            .map(|(original, packed)| ((original.as_ptr(), original.len()), packed))
            .collect();
        for entry in &mut self.entries {
            if let Some(packed) = packed.get(&(entry.ack.as_ptr(), entry.ack.len())) {
                entry.ack = Bytes::clone(packed);
            }
        }
    }

    /// Applies reloaded limits: entries beyond `max_bytes` go, all of them when the window is
    /// off.
    pub(super) fn set_limits(&mut self, window: Option<Duration>, max_bytes: usize) {
        let max_bytes = if window.is_some() { max_bytes } else { 0 };
        while self.bytes > max_bytes {
            self.pop_oldest();
        }
    }

    /// Forgets the entries older than `window`.
    fn expire(&mut self, window: Duration, now: Instant) {
        while self
            .entries
            .front()
            .is_some_and(|oldest| now.duration_since(oldest.at) >= window)
        {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some(oldest) = self.entries.pop_front() {
            self.popped += 1;
            self.index.remove(&oldest.key);
            let size = oldest.bytes();
            self.bytes -= size;
            self.budget.give_back(size);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

impl Drop for Dedup {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(120);

    fn ack(n: u8, len: usize) -> Bytes {
        Bytes::from(vec![n; len])
    }

    #[test]
    fn a_ref_is_found_for_its_user_within_the_window_only() {
        let budget = HistoryBudget::new(usize::MAX);
        let mut dedup = Dedup::new(budget.clone());
        let t0 = Instant::now();
        dedup.remember("ada", "r1", ack(1, 10), WINDOW, 10_000, t0);
        dedup.remember("bob", "r1", ack(2, 10), WINDOW, 10_000, t0);
        assert_eq!(dedup.find("ada", "r1", WINDOW, t0), Some(ack(1, 10)));
        assert_eq!(dedup.find("bob", "r1", WINDOW, t0), Some(ack(2, 10)));
        assert_eq!(dedup.find("ada", "r2", WINDOW, t0), None);
        // A user ending where another's ref starts is another key.
        assert_eq!(dedup.find("ad", "ar1", WINDOW, t0), None);
        let later = t0 + WINDOW - Duration::from_millis(1);
        assert!(dedup.find("ada", "r1", WINDOW, later).is_some());
        assert_eq!(dedup.find("ada", "r1", WINDOW, t0 + WINDOW), None);
        assert_eq!(dedup.len(), 0, "expired entries are gone");
        assert_eq!(budget.used(), 0, "and their bytes given back");
    }

    #[test]
    fn the_oldest_go_first_to_stay_within_the_room_bound() {
        let budget = HistoryBudget::new(usize::MAX);
        let mut dedup = Dedup::new(budget.clone());
        let now = Instant::now();
        let size = 2 * key("ada", "1").len() + 100 + ENTRY_OVERHEAD;
        for n in 0..10u8 {
            dedup.remember("ada", &n.to_string(), ack(n, 100), WINDOW, 3 * size, now);
        }
        assert_eq!(dedup.len(), 3);
        assert_eq!(budget.used(), 3 * size);
        assert!(dedup.find("ada", "6", WINDOW, now).is_none());
        assert_eq!(dedup.find("ada", "7", WINDOW, now), Some(ack(7, 100)));
        assert_eq!(dedup.find("ada", "9", WINDOW, now), Some(ack(9, 100)));
        // One bigger than the bound is not remembered at all.
        dedup.remember("ada", "big", ack(0, 4 * size), WINDOW, 3 * size, now);
        assert!(dedup.find("ada", "big", WINDOW, now).is_none());
        dedup.set_limits(None, 3 * size);
        assert_eq!((dedup.len(), budget.used()), (0, 0), "turned off: all gone");
    }

    #[test]
    fn the_server_wide_budget_is_shared_and_given_back_on_drop() {
        let size = 2 * key("ada", "x").len() + 100 + ENTRY_OVERHEAD;
        let budget = HistoryBudget::new(2 * size);
        let mut first = Dedup::new(budget.clone());
        let mut second = Dedup::new(budget.clone());
        let now = Instant::now();
        first.remember("ada", "x", ack(1, 100), WINDOW, usize::MAX, now);
        first.remember("ada", "y", ack(2, 100), WINDOW, usize::MAX, now);
        // The other room finds the budget spent and has nothing of its own to give up.
        second.remember("ada", "x", ack(3, 100), WINDOW, usize::MAX, now);
        assert!(second.find("ada", "x", WINDOW, now).is_none());
        // The first gives up its own oldest for its next one.
        first.remember("ada", "z", ack(4, 100), WINDOW, usize::MAX, now);
        assert!(first.find("ada", "x", WINDOW, now).is_none());
        assert!(first.find("ada", "z", WINDOW, now).is_some());
        drop(first);
        assert_eq!(budget.used(), 0);
    }
}
