//! A room's retained CHATs: a ring of already-encoded messages with contiguous sequence numbers,
//! so a replay is a slice of the ring and never re-encodes the originals. The ring is bounded by
//! count (`history`) and by bytes (`history_bytes`), and every ring of the server draws its bytes
//! from one [`HistoryBudget`] (`server.history_bytes_total`).

use std::{
    collections::VecDeque,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use bytes::Bytes;

use crate::metrics;

/// The bytes every room's history may hold together, shared by the rings of one server.
///
/// Policy when it is exhausted: a room that appends gives up its own oldest entries until the
/// new one fits; a room with nothing left to give up does not retain the new message (it is
/// still delivered live). A room never takes bytes from another one, so a busy room cannot wipe
/// a quiet room's history, and no room holds more than its own `history_bytes`: with the
/// defaults the budget holds 2,048 full rooms. Bytes come back when entries are trimmed and when
/// a room stops.
#[derive(Debug)]
pub struct HistoryBudget {
    used: AtomicUsize,
    limit: usize,
}

impl HistoryBudget {
    pub fn new(limit: usize) -> Arc<HistoryBudget> {
        Arc::new(HistoryBudget {
            used: AtomicUsize::new(0),
            limit,
        })
    }

    /// Takes `n` bytes if they fit under the limit; all or nothing, so racing rooms cannot
    /// overshoot it together.
    pub(crate) fn try_take(&self, n: usize) -> bool {
        let taken = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|total| *total <= self.limit)
            })
            .is_ok();
        if taken && n > 0 {
            metrics::get().history_bytes.increment(n as f64);
        }
        taken
    }

    pub(crate) fn give_back(&self, n: usize) {
        if n > 0 {
            self.used.fetch_sub(n, Ordering::AcqRel);
            metrics::get().history_bytes.decrement(n as f64);
        }
    }

    /// Bytes currently held by histories.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }
}

#[derive(Debug)]
pub struct History {
    entries: VecDeque<Bytes>,
    /// Sequence number of `entries[0]`; the ring only ever holds a gapless run.
    first_seq: u64,
    capacity: usize,
    max_bytes: usize,
    /// Sum of the entries' lengths: what this ring holds of `budget`.
    bytes: usize,
    budget: Arc<HistoryBudget>,
}

impl History {
    pub fn new(capacity: usize, max_bytes: usize, budget: Arc<HistoryBudget>) -> History {
        History {
            entries: VecDeque::new(),
            first_seq: 1,
            capacity,
            max_bytes,
            bytes: 0,
            budget,
        }
    }

    /// Appends CHAT number `seq`, which must follow the last one pushed. Older entries make
    /// way for it (count, room bytes, then the server-wide budget). A message that cannot be
    /// retained empties the ring instead: keeping older entries would leave a gap before the
    /// next one, and a replay must stay one gapless run.
    pub fn push(&mut self, seq: u64, message: Bytes) {
        debug_assert!(
            self.entries.is_empty() || seq == self.first_seq + self.entries.len() as u64,
            "history must stay gapless"
        );
        let len = message.len();
        if self.capacity == 0 || len > self.max_bytes {
            self.clear_before(seq + 1);
            return;
        }
        // Bytes of entries dropped here are kept as credit for the new one rather than given
        // back first, so another room cannot take them in between.
        let mut credit = 0;
        while self.entries.len() >= self.capacity || self.bytes - credit + len > self.max_bytes {
            credit += self.pop_oldest_keeping_bytes();
        }
        loop {
            if credit >= len {
                self.budget.give_back(credit - len);
                break;
            }
            if self.budget.try_take(len - credit) {
                break;
            }
            if self.entries.is_empty() {
                // Nothing of ours left to give up: the budget is held by other rooms.
                self.budget.give_back(credit);
                self.bytes -= credit;
                self.first_seq = seq + 1;
                return;
            }
            credit += self.pop_oldest_keeping_bytes();
        }
        // `credit` bytes were popped without leaving `self.bytes`; they now belong to `message`.
        self.bytes = self.bytes - credit + len;
        if self.entries.is_empty() {
            self.first_seq = seq;
        }
        self.entries.push_back(message);
    }

    /// Drops the oldest entry, leaving its bytes counted in `self.bytes` (the caller settles
    /// them); returns its length.
    fn pop_oldest_keeping_bytes(&mut self) -> usize {
        match self.entries.pop_front() {
            Some(oldest) => {
                self.first_seq += 1;
                oldest.len()
            }
            None => 0,
        }
    }

    /// Drops every entry and gives their bytes back; the next push starts the run at `next`.
    fn clear_before(&mut self, next: u64) {
        self.entries.clear();
        self.budget.give_back(self.bytes);
        self.bytes = 0;
        self.first_seq = next;
    }

    /// Retained messages with a sequence number above `since_seq`, oldest first.
    pub fn after(&self, since_seq: u64) -> impl Iterator<Item = &Bytes> {
        let skip = since_seq.saturating_add(1).saturating_sub(self.first_seq);
        self.entries
            .iter()
            .skip(usize::try_from(skip).unwrap_or(usize::MAX))
    }

    /// The newest `n` retained messages, oldest first.
    pub fn last(&self, n: usize) -> impl Iterator<Item = &Bytes> {
        self.entries
            .iter()
            .skip(self.entries.len().saturating_sub(n))
    }

    /// Applies reloaded limits, dropping the oldest entries that no longer fit.
    pub fn set_limits(&mut self, capacity: usize, max_bytes: usize) {
        self.capacity = capacity;
        self.max_bytes = max_bytes;
        let mut freed = 0;
        while self.entries.len() > capacity || self.bytes - freed > max_bytes {
            freed += self.pop_oldest_keeping_bytes();
        }
        self.bytes -= freed;
        self.budget.give_back(freed);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Encoded bytes retained.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for History {
    /// A stopped room gives its bytes back to the server-wide budget.
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unbounded() -> Arc<HistoryBudget> {
        HistoryBudget::new(usize::MAX)
    }

    fn ring(capacity: usize, upto: u64) -> History {
        let mut h = History::new(capacity, usize::MAX, unbounded());
        for seq in 1..=upto {
            h.push(seq, Bytes::from(seq.to_string()));
        }
        h
    }

    fn seqs<'a>(it: impl Iterator<Item = &'a Bytes>) -> Vec<u64> {
        it.map(|b| std::str::from_utf8(b).unwrap().trim().parse().unwrap())
            .collect()
    }

    /// CHAT `seq` as exactly `len` bytes: its number padded with spaces.
    fn sized(seq: u64, len: usize) -> Bytes {
        Bytes::from(format!("{seq:<len$}"))
    }

    #[test]
    fn keeps_only_the_newest_capacity_entries() {
        let h = ring(3, 10);
        assert_eq!(h.len(), 3);
        assert_eq!(seqs(h.after(0)), vec![8, 9, 10]);
    }

    #[test]
    fn after_returns_exactly_the_later_retained_entries() {
        let h = ring(5, 10);
        assert_eq!(seqs(h.after(7)), vec![8, 9, 10]);
        assert_eq!(seqs(h.after(2)), vec![6, 7, 8, 9, 10]); // 3..5 are gone
        assert!(seqs(h.after(10)).is_empty());
        assert!(seqs(h.after(99)).is_empty());
        assert!(
            seqs(h.after(u64::MAX)).is_empty(),
            "no overflow on a hostile since_seq"
        );
    }

    #[test]
    fn last_n() {
        let h = ring(5, 10);
        assert_eq!(seqs(h.last(2)), vec![9, 10]);
        assert_eq!(seqs(h.last(50)), vec![6, 7, 8, 9, 10]);
        assert!(seqs(h.last(0)).is_empty());
    }

    #[test]
    fn zero_capacity_retains_nothing() {
        let h = ring(0, 4);
        assert!(h.is_empty());
        assert!(seqs(h.after(0)).is_empty());
    }

    #[test]
    fn shrinking_drops_the_oldest() {
        let mut h = ring(5, 10);
        h.set_limits(2, usize::MAX);
        assert_eq!(seqs(h.after(0)), vec![9, 10]);
        h.push(11, Bytes::from("11"));
        assert_eq!(seqs(h.after(9)), vec![10, 11]);
    }

    #[test]
    fn the_byte_bound_keeps_the_newest_that_fit() {
        let budget = unbounded();
        let mut h = History::new(100, 250, budget.clone());
        for seq in 1..=10 {
            h.push(seq, sized(seq, 100));
        }
        assert_eq!(seqs(h.after(0)), vec![9, 10], "250 bytes hold two of 100");
        assert_eq!((h.bytes(), budget.used()), (200, 200));
        // A smaller message lets more of the run stay.
        h.push(11, sized(11, 50));
        assert_eq!(seqs(h.after(0)), vec![9, 10, 11]);
        assert_eq!(budget.used(), 250);
        h.set_limits(100, 120);
        assert_eq!(seqs(h.after(0)), vec![11]);
        assert_eq!((h.bytes(), budget.used()), (50, 50));
    }

    #[test]
    fn a_message_over_the_byte_bound_empties_the_ring_and_the_run_restarts_after_it() {
        let budget = unbounded();
        let mut h = History::new(100, 150, budget.clone());
        h.push(1, sized(1, 100));
        h.push(2, sized(2, 200));
        assert!(h.is_empty());
        assert_eq!(budget.used(), 0);
        h.push(3, sized(3, 100));
        assert_eq!(seqs(h.after(0)), vec![3]);
        assert_eq!(seqs(h.after(1)), vec![3], "no stale entry before the gap");
    }

    #[test]
    fn rooms_share_the_global_budget_and_give_bytes_back() {
        let budget = HistoryBudget::new(300);
        let mut busy = History::new(100, 1000, budget.clone());
        let mut quiet = History::new(100, 1000, budget.clone());
        for seq in 1..=3 {
            busy.push(seq, sized(seq, 100));
        }
        assert_eq!(budget.used(), 300);

        // Budget exhausted and nothing of its own to give up: not retained, others untouched.
        quiet.push(1, sized(1, 100));
        assert!(quiet.is_empty());
        assert_eq!(seqs(busy.after(0)), vec![1, 2, 3]);

        // The busy room recycles its own oldest entries and never exceeds the budget.
        busy.push(4, sized(4, 150));
        assert_eq!(seqs(busy.after(0)), vec![3, 4]);
        assert_eq!(budget.used(), 250);

        // Freed bytes can be taken by the quiet room.
        quiet.push(2, sized(2, 50));
        assert_eq!(seqs(quiet.after(0)), vec![2]);
        assert_eq!(budget.used(), 300);

        // Trimming by count gives bytes back too.
        busy.set_limits(1, 1000);
        assert_eq!(budget.used(), 200);

        // A stopped room (its ring dropped) gives back everything it held.
        drop(busy);
        assert_eq!(budget.used(), 50);
        drop(quiet);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn racing_rooms_never_overshoot_the_budget() {
        let budget = HistoryBudget::new(10_000);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let budget = budget.clone();
                std::thread::spawn(move || {
                    let mut h = History::new(1000, 4000, budget.clone());
                    for seq in 1..=2000 {
                        h.push(seq, sized(seq, 10 + (seq % 90) as usize));
                        assert!(budget.used() <= budget.limit());
                    }
                    h.bytes()
                })
            })
            .collect();
        for thread in threads {
            assert!(thread.join().unwrap() > 0, "each room retained something");
        }
        assert_eq!(
            budget.used(),
            0,
            "every ring was dropped and gave its bytes back"
        );
    }
}
