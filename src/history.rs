//! A room's retained CHATs: a ring of already-encoded messages with contiguous sequence numbers,
//! so a replay is a slice of the ring and never re-encodes the originals.

use std::collections::VecDeque;

use bytes::Bytes;

#[derive(Debug, Default)]
pub struct History {
    entries: VecDeque<Bytes>,
    /// Sequence number of `entries[0]`; the ring only ever holds a gapless run.
    first_seq: u64,
    capacity: usize,
}

impl History {
    pub fn new(capacity: usize) -> History {
        History {
            entries: VecDeque::new(),
            first_seq: 1,
            capacity,
        }
    }

    /// Appends CHAT number `seq`, which must follow the last one pushed.
    pub fn push(&mut self, seq: u64, message: Bytes) {
        debug_assert!(
            self.entries.is_empty() || seq == self.first_seq + self.entries.len() as u64,
            "history must stay gapless"
        );
        if self.capacity == 0 {
            return;
        }
        if self.entries.is_empty() {
            self.first_seq = seq;
        }
        if self.entries.len() == self.capacity {
            self.entries.pop_front();
            self.first_seq += 1;
        }
        self.entries.push_back(message);
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

    /// Shrinks or grows the ring, dropping the oldest entries that no longer fit.
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity;
        while self.entries.len() > capacity {
            self.entries.pop_front();
            self.first_seq += 1;
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(capacity: usize, upto: u64) -> History {
        let mut h = History::new(capacity);
        for seq in 1..=upto {
            h.push(seq, Bytes::from(seq.to_string()));
        }
        h
    }

    fn seqs<'a>(it: impl Iterator<Item = &'a Bytes>) -> Vec<u64> {
        it.map(|b| std::str::from_utf8(b).unwrap().parse().unwrap())
            .collect()
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
        h.set_capacity(2);
        assert_eq!(seqs(h.after(0)), vec![9, 10]);
        h.push(11, Bytes::from("11"));
        assert_eq!(seqs(h.after(9)), vec![10, 11]);
    }
}
