//! [`FrameLimits`]: how long a request frame may be, shared by every stream of a server, and
//! the budget that frames longer than any room accepts draw on.
//!
//! Such a frame is still decoded (its sender hears `message_too_large` or `invalid_room`
//! in-band), and the decoder (`edge::requests`) gathers it into a buffer of its length, dropped
//! once decoded. Before its body passes, the stream takes the frame's length from a
//! server-wide budget of [`LARGE_FRAMES`] × `max_frame_bytes` and holds it (a [`Hold`]) until
//! the frame's last byte has passed (tonic's decoder kept a buffer that size for the stream's
//! life, so the hold used to last until the stream ended: a client whose one long CHAT was
//! refused could lose its stream later to another stream's long frame). A stream that finds
//! the budget spent takes bytes back from the streams that have held theirs longest, those
//! part-way through a long frame: each of them ends with RESOURCE_EXHAUSTED at its next read,
//! which frees its buffer. Waiting for bytes to come back instead would let one client that
//! opens a few dozen streams, sends the start of one long frame on each and keeps them open
//! stall every other stream's long frame, and all it sends after it, for as long as it liked.
//! Between the take-back and that read the memory is counted for the new holder only: briefly,
//! the decoders may hold more than the budget.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, Ordering},
    },
    task::Waker,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Frames of `max_frame_bytes` the streams of one server may hold at once beyond the largest
/// request a room accepts (the bytes of 32 such frames: 32 MiB with the defaults).
pub const LARGE_FRAMES: usize = 32;

/// How long a request frame may be; shared by every stream of a server.
#[derive(Debug, Clone)]
pub struct FrameLimits {
    /// Longer frames end the stream.
    pub(super) max_frame_bytes: usize,
    /// Frames up to this long pass freely; longer ones draw on the budget first.
    pub(super) free_bytes: usize,
    budget: Arc<Budget>,
}

#[derive(Debug)]
struct Budget {
    bytes: Arc<Semaphore>,
    /// The streams holding bytes, oldest first (by when they first took some).
    holders: Mutex<VecDeque<Weak<Hold>>>,
}

/// What one stream holds of the budget while a long frame passes; the bytes go back when it
/// is dropped.
#[derive(Debug, Default)]
pub(super) struct Hold {
    permit: Mutex<Option<OwnedSemaphorePermit>>,
    /// Another stream took the bytes back: this stream ends at its next read.
    taken: AtomicBool,
    /// The task reading the stream, woken to find that out.
    reader: Mutex<Option<Waker>>,
}

impl FrameLimits {
    /// `free_bytes` (the largest request any room accepts) must not exceed `max_frame_bytes`.
    pub fn new(max_frame_bytes: usize, free_bytes: usize) -> FrameLimits {
        let total = LARGE_FRAMES.saturating_mul(max_frame_bytes);
        FrameLimits {
            max_frame_bytes,
            free_bytes: free_bytes.min(max_frame_bytes),
            budget: Arc::new(Budget {
                bytes: Arc::new(Semaphore::new(total.min(Semaphore::MAX_PERMITS))),
                holders: Mutex::default(),
            }),
        }
    }

    /// Bytes of the large-frame budget no stream holds now.
    pub fn large_frame_bytes_free(&self) -> usize {
        self.budget.bytes.available_permits()
    }

    /// Entries in the queue of holders, live or not.
    #[cfg(test)]
    pub(super) fn holders_queued(&self) -> usize {
        // unwrap: as in `take`.
        self.budget.holders.lock().unwrap().len()
    }

    /// Makes `hold` (the stream's, created when it first takes bytes) hold `more` bytes more,
    /// taking them back from the oldest other holders when the budget is spent. Never waits:
    /// the budget holds at least one frame of `max_frame_bytes` beyond what the stream holds.
    /// False only when this stream's own bytes were taken back meanwhile (it is ending).
    pub(super) fn take(&self, hold: &mut Option<Arc<Hold>>, more: usize) -> bool {
        if hold
            .as_ref()
            .is_some_and(|hold| hold.taken.load(Ordering::Acquire))
        {
            return false;
        }
        let budget = &self.budget;
        // unwrap: the lock is only held for queue updates, which do not panic.
        let mut holders = budget.holders.lock().unwrap();
        let mut short = more.saturating_sub(budget.bytes.available_permits());
        let mut at = 0;
        while short > 0 && at < holders.len() {
            match holders[at].upgrade() {
                Some(other) if hold.as_ref().is_none_or(|mine| !Arc::ptr_eq(mine, &other)) => {
                    short = short.saturating_sub(other.take_back());
                    holders.remove(at);
                }
                Some(_) => at += 1,
                None => {
                    holders.remove(at);
                }
            }
        }
        let wanted = u32::try_from(more).unwrap_or(u32::MAX);
        // The other holders are gone (or were this one): what is left is enough.
        let Ok(permit) = budget.bytes.clone().try_acquire_many_owned(wanted) else {
            return false;
        };
        let hold = hold.get_or_insert_with(|| {
            // Streams drop their hold after each large frame: forget those, or one stream
            // sending long frames all day would grow the queue by one entry each.
            holders.retain(|holder| holder.strong_count() > 0);
            let hold = Arc::new(Hold::default());
            holders.push_back(Arc::downgrade(&hold));
            hold
        });
        // unwrap: as above.
        let mut held = hold.permit.lock().unwrap();
        match held.as_mut() {
            Some(held) => held.merge(permit),
            None => *held = Some(permit),
        }
        true
    }
}

impl Hold {
    /// Bytes held now.
    pub(super) fn bytes(&self) -> usize {
        // unwrap: the lock is only held to read or swap the permit.
        let held = self.permit.lock().unwrap();
        held.as_ref().map_or(0, OwnedSemaphorePermit::num_permits)
    }

    /// Whether another stream took the bytes back; otherwise `reader` is the task to wake
    /// when one does.
    pub(super) fn taken(&self, reader: &Waker) -> bool {
        if self.taken.load(Ordering::Acquire) {
            return true;
        }
        // unwrap: the lock is only held to swap the waker.
        let mut waiting = self.reader.lock().unwrap();
        if !waiting.as_ref().is_some_and(|w| w.will_wake(reader)) {
            *waiting = Some(reader.clone());
        }
        drop(waiting);
        // Taken between the first check and the waker being in place.
        self.taken.load(Ordering::Acquire)
    }

    /// Gives the bytes back to the budget and tells the reader; returns how many.
    fn take_back(&self) -> usize {
        self.taken.store(true, Ordering::Release);
        // unwrap: as in `bytes`.
        let permit = self.permit.lock().unwrap().take();
        let bytes = permit.map_or(0, |p| p.num_permits());
        // unwrap: as in `taken`.
        if let Some(reader) = self.reader.lock().unwrap().take() {
            reader.wake();
        }
        bytes
    }
}
