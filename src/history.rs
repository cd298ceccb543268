//! A room's retained CHATs: a ring of already-encoded messages with contiguous sequence numbers,
//! so a replay is a slice of the ring and never re-encodes the originals. The ring is bounded by
//! count (`history`) and by bytes (`history_bytes`), and every ring of the server draws its bytes
//! from one [`HistoryBudget`] (`server.history_bytes_total`).
//!
//! Once a room goes quiet its newest entries are copied into one buffer ([`History::pack`]), so
//! the history a burst leaves behind does not hold the burst's pages.

use std::{
    collections::VecDeque,
    ops::Range,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use bytes::Bytes;

use crate::metrics;

/// The bytes every room's history may hold together, shared by the rings of one server.
///
/// Policy: no room holds more than its own `history_bytes` (with the defaults the budget holds
/// 2,048 full rooms), and a room never takes bytes from another one, so a busy room cannot wipe
/// a quiet room's history. Once [`PRESSURE`] of the budget is in use, a room that appends keeps
/// at most an even share of that part among the rooms holding history (see
/// [`HistoryBudget::share`]): rooms flooded by one client then leave the rest free for the
/// other rooms' new messages instead of holding all of it. When the budget is exhausted all the
/// same, a room that appends gives up its own oldest entries until the new one fits; a room
/// with nothing left to give up does not retain the new message (it is still delivered live).
/// Bytes come back when entries are trimmed and when a room stops.
#[derive(Debug)]
pub struct HistoryBudget {
    used: AtomicUsize,
    limit: usize,
    /// Rings holding any bytes.
    holders: AtomicUsize,
}

/// The share of the budget in use (numerator, denominator) from which appending rooms keep to
/// an even share of it.
const PRESSURE: (usize, usize) = (7, 8);

impl HistoryBudget {
    pub fn new(limit: usize) -> Arc<HistoryBudget> {
        Arc::new(HistoryBudget {
            used: AtomicUsize::new(0),
            limit,
            holders: AtomicUsize::new(0),
        })
    }

    /// Under pressure, the most one appending room should hold: the [`PRESSURE`] part of the
    /// budget shared evenly among the rooms holding history; `None` below it.
    pub(crate) fn share(&self) -> Option<usize> {
        let (num, den) = PRESSURE;
        let pressure = self.limit / den * num;
        if self.used() < pressure {
            return None;
        }
        Some(pressure / self.holders.load(Ordering::Relaxed).max(1))
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

/// A buffer of packed entries still held by the ring.
#[derive(Debug)]
struct Pack {
    /// Its entries still in the ring.
    left: usize,
    /// The whole buffer.
    size: usize,
}

/// The memory of a packed buffer, which holds its length of the budget until the last slice
/// of it is dropped, whoever holds that (the ring, or the dedup window, which keeps slices of
/// the same CHATs for up to `dedup_window_ms`).
struct Packed {
    data: Vec<u8>,
    budget: Arc<HistoryBudget>,
}

impl AsRef<[u8]> for Packed {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for Packed {
    fn drop(&mut self) {
        self.budget.give_back(self.data.len());
    }
}

#[derive(Debug)]
pub struct History {
    /// The packed entries (slices of `packs`' buffers, in their order), then the loose ones.
    entries: VecDeque<Bytes>,
    /// Sequence number of `entries[0]`; the ring only ever holds a gapless run.
    first_seq: u64,
    capacity: usize,
    max_bytes: usize,
    /// Sum of the entries' lengths, what `max_bytes` bounds.
    bytes: usize,
    /// Sum of the loose entries' lengths: what the ring holds of the budget itself (each
    /// packed buffer holds its own, see [`Packed`]).
    loose_bytes: usize,
    /// Bytes of entries trimmed from the front pack while its buffer lives on (only the front
    /// one can be partly trimmed).
    dead: usize,
    packs: VecDeque<Pack>,
    /// Entries pushed since the last [`History::pack`]: the newest ones.
    loose: usize,
    /// Counted among the budget's holders (this ring holds bytes).
    counted: bool,
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
            loose_bytes: 0,
            dead: 0,
            packs: VecDeque::new(),
            loose: 0,
            counted: false,
            budget,
        }
    }

    /// Keeps the budget's count of holders right after the ring's entries changed.
    fn recount(&mut self) {
        let holds = !self.entries.is_empty();
        if holds != self.counted {
            self.counted = holds;
            if holds {
                self.budget.holders.fetch_add(1, Ordering::Relaxed);
            } else {
                self.budget.holders.fetch_sub(1, Ordering::Relaxed);
            }
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
            self.recount();
            return;
        }
        let max_bytes = match self.budget.share() {
            Some(share) => self.max_bytes.min(share.max(len)),
            None => self.max_bytes,
        };
        // Budget freed by dropping entries here is kept as credit for the new one rather than
        // given back first, so another room cannot take it in between.
        let mut credit = 0;
        while self.entries.len() >= self.capacity || self.bytes + len > max_bytes {
            credit += self.pop_oldest();
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
                self.first_seq = seq + 1;
                self.recount();
                return;
            }
            credit += self.pop_oldest();
        }
        self.bytes += len;
        self.loose_bytes += len;
        if self.entries.is_empty() {
            self.first_seq = seq;
        }
        self.entries.push_back(message);
        self.loose += 1;
        self.recount();
    }

    /// Whether [`History::pack`] has something to do.
    pub fn packable(&self) -> bool {
        self.loose > 1 || self.front_half_dead()
    }

    fn front_half_dead(&self) -> bool {
        self.packs
            .front()
            .is_some_and(|front| self.dead > 0 && self.dead * 2 >= front.size)
    }

    /// Copies the entries pushed since the last pack into one buffer of their own and keeps
    /// slices of it instead, and likewise the rest of the oldest packed buffer once half of it
    /// is trimmed; returns each original with its copy, for other holders of the originals to
    /// swap too. Why: each CHAT is encoded into an allocation of its own amid the short-lived
    /// buffers of its fan-out, so once a burst is over the retained ones are scattered over
    /// pages otherwise free, which the allocator cannot give back (after a flood of 4 KB CHATs
    /// into 2,000 rooms: ~40 MB on top of the history's 254 MB). A buffer is freed whole, so it
    /// holds its length of the budget (not of the room's `history_bytes`) until its last slice
    /// goes, wherever that is; copying the rest once half is trimmed bounds what the ring keeps
    /// alive for nothing, and each byte copied that way was paid for by at least as many new
    /// ones. The room calls this once it has been quiet for a while, not on every CHAT.
    pub fn pack(&mut self) -> Vec<(Bytes, Bytes)> {
        let mut swapped = Vec::new();
        if self.front_half_dead() {
            // The copy holds its own bytes while the old buffer may live on in other hands; with
            // the budget spent the rest stays where it is.
            let rest = self.packs.front().map_or(0, |front| front.size) - self.dead;
            if self.budget.try_take(rest) {
                let front = self.packs.pop_front().map_or(0, |front| front.left);
                let pack = self.copy(0..front, &mut swapped);
                self.packs.push_front(pack);
                self.dead = 0;
            }
        }
        if self.loose > 1 {
            let len = self.entries.len();
            // The loose entries' bytes pass from the ring to their buffer.
            let pack = self.copy(len - self.loose..len, &mut swapped);
            self.loose_bytes -= pack.size;
            self.packs.push_back(pack);
            self.loose = 0;
        }
        swapped
    }

    /// Copies `range` of the entries into one buffer, which holds its length of the budget
    /// from now on (the caller has seen to it), and puts slices of it in their place.
    fn copy(&mut self, range: Range<usize>, swapped: &mut Vec<(Bytes, Bytes)>) -> Pack {
        let size = self.entries.range(range.clone()).map(Bytes::len).sum();
        let mut data = Vec::with_capacity(size);
        for entry in self.entries.range(range.clone()) {
            data.extend_from_slice(entry);
        }
        let buffer = Bytes::from_owner(Packed {
            data,
            budget: self.budget.clone(),
        });
        let mut offset = 0;
        for entry in self.entries.range_mut(range.clone()) {
            let packed = buffer.slice(offset..offset + entry.len());
            offset += packed.len();
            swapped.push((std::mem::replace(entry, packed.clone()), packed));
        }
        Pack {
            left: range.len(),
            size,
        }
    }

    /// Drops the oldest entry; returns the budget the ring itself held for it (its length
    /// when it was loose; a packed buffer gives its bytes back itself once its last slice goes,
    /// which may be this one).
    fn pop_oldest(&mut self) -> usize {
        let Some(oldest) = self.entries.pop_front() else {
            return 0;
        };
        self.first_seq += 1;
        let len = oldest.len();
        self.bytes -= len;
        if self.entries.len() < self.loose {
            self.loose -= 1;
            self.loose_bytes -= len;
            return len;
        }
        // A packed entry belongs to the front pack: packs are made in the ring's order.
        match self.packs.front_mut() {
            Some(pack) if pack.left > 1 => {
                pack.left -= 1;
                self.dead += len;
            }
            _ => {
                self.packs.pop_front();
                self.dead = 0;
            }
        }
        0
    }

    /// Drops every entry and gives their bytes back; the next push starts the run at `next`.
    fn clear_before(&mut self, next: u64) {
        self.entries.clear();
        self.packs.clear();
        self.loose = 0;
        self.budget.give_back(self.loose_bytes);
        self.bytes = 0;
        self.loose_bytes = 0;
        self.dead = 0;
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
        while self.entries.len() > capacity || self.bytes > max_bytes {
            freed += self.pop_oldest();
        }
        self.budget.give_back(freed);
        self.recount();
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

    /// What the ring keeps of the budget: its loose entries and its packed buffers whole
    /// (trimmed entries' bytes included until their buffer goes). For tests: the budget's gauge
    /// is what operators see.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.loose_bytes + self.packs.iter().map(|pack| pack.size).sum::<usize>()
    }
}

impl Drop for History {
    /// A stopped room gives its bytes back to the server-wide budget.
    fn drop(&mut self) {
        self.budget.give_back(self.loose_bytes);
        self.loose_bytes = 0;
        // The packed buffers give theirs back as their last slices go (the entries, just
        // after this).
        self.entries.clear();
        self.recount();
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

    /// Whether `entries` lie one after the other in one buffer.
    fn contiguous(h: &History) -> bool {
        h.entries
            .iter()
            .zip(h.entries.iter().skip(1))
            .all(|(a, b)| a.as_ptr().wrapping_add(a.len()) == b.as_ptr())
    }

    #[test]
    fn packing_copies_the_new_entries_into_one_buffer_and_frees_the_originals() {
        let mut h = History::new(100, usize::MAX, unbounded());
        let originals: Vec<Bytes> = (1..=5).map(|seq| sized(seq, 100)).collect();
        for (seq, original) in (1..).zip(&originals) {
            h.push(seq, original.clone());
        }
        assert!(h.packable());
        assert!(!contiguous(&h), "each CHAT its own allocation");
        let swapped = h.pack();
        assert_eq!(swapped.len(), 5);
        assert!(contiguous(&h));
        assert_eq!(
            seqs(h.after(0)),
            vec![1, 2, 3, 4, 5],
            "same run, same order"
        );
        assert!(h.after(0).eq(originals.iter()), "same bytes");
        drop(swapped);
        assert!(
            originals.iter().all(Bytes::is_unique),
            "the ring no longer holds the originals"
        );
        assert!(
            !h.packable() && h.pack().is_empty(),
            "nothing loose: no copy"
        );

        // One new entry is one allocation already; two are worth a buffer of their own.
        h.push(6, sized(6, 100));
        assert!(!h.packable());
        h.push(7, sized(7, 100));
        assert_eq!(h.pack().len(), 2, "only the loose ones are copied");
        assert_eq!(seqs(h.after(4)), vec![5, 6, 7]);
    }

    #[test]
    fn a_packed_buffer_stays_counted_until_its_last_entry_goes_or_its_rest_is_copied() {
        let budget = unbounded();
        let mut h = History::new(4, usize::MAX, budget.clone());
        for seq in 1..=4 {
            h.push(seq, sized(seq, 100));
        }
        h.pack();
        assert_eq!((h.bytes(), h.held(), budget.used()), (400, 400, 400));

        // Entry 1 goes, but its buffer is still held by 2..4: its bytes stay counted (against
        // the budget, not the room's own bound).
        h.push(5, sized(5, 100));
        assert_eq!((h.bytes(), h.held(), budget.used()), (400, 500, 500));
        assert!(
            !h.packable(),
            "a quarter of the buffer trimmed, one loose entry"
        );

        // Half of the buffer trimmed: its rest is worth copying.
        h.push(6, sized(6, 100));
        assert_eq!((h.bytes(), h.held(), budget.used()), (400, 600, 600));
        assert!(h.packable());
        assert_eq!(h.pack().len(), 4, "3 and 4 copied out, 5 and 6 packed");
        assert_eq!((h.bytes(), h.held(), budget.used()), (400, 400, 400));
        assert_eq!(seqs(h.after(0)), vec![3, 4, 5, 6]);

        // Trimming a whole buffer gives all of it back.
        h.push(7, sized(7, 100));
        h.push(8, sized(8, 100));
        assert_eq!(
            (h.held(), budget.used()),
            (400, 400),
            "3 and 4's buffer went whole"
        );
        h.set_limits(1, usize::MAX);
        assert_eq!(seqs(h.after(0)), vec![8]);
        assert_eq!((h.bytes(), h.held(), budget.used()), (100, 100, 100));
        drop(h);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_ring_emptied_by_an_oversized_message_gives_back_its_packed_buffers() {
        let budget = unbounded();
        let mut h = History::new(4, 250, budget.clone());
        for seq in 1..=2 {
            h.push(seq, sized(seq, 100));
        }
        h.pack();
        h.push(3, sized(3, 100)); // 1 trimmed, its buffer still held
        assert_eq!(budget.used(), 300);
        h.push(4, sized(4, 300));
        assert!(h.is_empty());
        assert_eq!((h.held(), budget.used()), (0, 0));
        h.push(5, sized(5, 100));
        assert_eq!(seqs(h.after(0)), vec![5]);
    }

    #[test]
    fn under_pressure_flooded_rooms_keep_an_even_share_and_leave_room_for_the_others() {
        // 700 of 800 is the pressure point: past it, appending rooms keep 700 / holders.
        let budget = HistoryBudget::new(800);
        let mut flooded: Vec<History> = (0..4)
            .map(|_| History::new(1000, 1000, budget.clone()))
            .collect();
        for seq in 1..=200 {
            for room in &mut flooded {
                room.push(seq, sized(seq, 10));
            }
        }
        assert_eq!(budget.holders.load(Ordering::Relaxed), 4);
        // Below the pressure point rooms grow freely, so each may be one message over.
        for room in &flooded {
            assert!(room.bytes() <= 700 / 4 + 10, "{} bytes", room.bytes());
            assert!(
                room.len() >= 10,
                "each still keeps its newest: {}",
                room.len()
            );
        }
        assert!(budget.used() <= 700 + 4 * 10, "{}", budget.used());

        // A quiet room's new messages are retained, however long the flood goes on.
        let mut quiet = History::new(1000, 1000, budget.clone());
        for seq in 1..=5 {
            quiet.push(seq, sized(seq, 10));
            for room in &mut flooded {
                room.push(200 + seq, sized(200 + seq, 10));
            }
        }
        assert_eq!(seqs(quiet.after(0)), vec![1, 2, 3, 4, 5]);
        assert!(budget.used() <= budget.limit());

        // Below the pressure point a room keeps all its own bound allows.
        drop(flooded);
        assert_eq!(budget.holders.load(Ordering::Relaxed), 1);
        for seq in 6..=60 {
            quiet.push(seq, sized(seq, 10));
        }
        assert_eq!((quiet.len(), quiet.bytes()), (60, 600));
        drop(quiet);
        assert_eq!(
            (budget.used(), budget.holders.load(Ordering::Relaxed)),
            (0, 0)
        );
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
                        if seq % 7 == 0 {
                            h.pack();
                        }
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
