//! A connection's stream tasks and the list of those ready to run. A stream's wake-up puts its
//! task's slot on the connection's [`ReadyList`] (once, however often it is woken before it
//! runs) and wakes the connection, through its [`ConnectionWaker`], when the list was empty: a
//! fan-out that reaches many streams of one connection wakes it once. The list also takes the
//! streams the connection opens, for the connection's task to place in its slots.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU8, Ordering},
    },
    task::{Context, Poll, Wake, Waker},
};

use crate::transport::wakes::ConnectionWaker;

/// How many times in a row a stream that wakes itself while it runs is run again at once.
const RERUNS: usize = 8;

/// A stream's task as the connection hands it over.
pub type StreamFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What wake-ups and the connection hand to the connection's task.
pub struct ReadyList {
    queue: Mutex<Queue>,
    /// The connection's task, as its streams wake it.
    connection: Arc<ConnectionWaker>,
}

/// The ready list proper; drained by the connection's task into vectors of its own.
#[derive(Default)]
struct Queue {
    /// Slots of tasks woken since the last drain, each at most once.
    slots: Vec<usize>,
    /// Streams the connection opened since the last drain.
    opened: Vec<StreamFuture>,
}

impl ReadyList {
    pub fn new(connection: Arc<ConnectionWaker>) -> ReadyList {
        ReadyList {
            queue: Mutex::default(),
            connection,
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Lists a woken task. Only a wake-up onto an empty list wakes the connection: one onto a
    /// listed task's follows a wake-up on its way (perhaps held by a batch) or a drain to come.
    fn push(&self, slot: usize) {
        let first = {
            let mut queue = self.queue();
            queue.slots.push(slot);
            queue.slots.len() == 1 && queue.opened.is_empty()
        };
        if first {
            self.connection.wake_by_ref();
        }
    }

    /// Hands over a stream the connection opened (during the connection's poll): it runs in this pass.
    pub fn open(&self, task: StreamFuture) {
        self.queue().opened.push(task);
        self.connection.wake_by_ref();
    }

    /// Moves the listed slots and the opened streams to the caller's vectors.
    pub fn drain(&self, slots: &mut Vec<usize>, opened: &mut Vec<StreamFuture>) {
        let mut queue = self.queue();
        slots.append(&mut queue.slots);
        opened.append(&mut queue.opened);
    }

    /// Streams opened and not yet drained.
    pub fn opened(&self) -> usize {
        self.queue().opened.len()
    }

    /// Slots listed and not yet drained.
    #[cfg(test)]
    pub fn listed(&self) -> usize {
        self.queue().slots.len()
    }

    /// Takes everything listed and opened, to be dropped outside the lock: opened streams hold
    /// h2's store, which holds other streams' wakers, which hold this list.
    pub fn clear(&self) -> Vec<StreamFuture> {
        let mut queue = self.queue();
        queue.slots.clear();
        std::mem::take(&mut queue.opened)
    }
}

/// Not running, not listed: a wake-up lists it.
const IDLE: u8 = 0;
/// Set by every wake-up. Alone: listed. With [`RUNNING`]: woken by or during its run.
const WOKEN: u8 = 1;
const RUNNING: u8 = 2;
/// Finished or dropped: wake-ups are ignored. The slot may hold another task by then, which has
/// a `StreamWake` of its own: a late wake-up can never list it.
const DONE: u8 = 4;

/// Wakes one stream's task: lists its slot, or notes the wake-up while the task runs.
struct StreamWake {
    state: AtomicU8,
    slot: usize,
    ready: Arc<ReadyList>,
}

impl Wake for StreamWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Always a read-modify-write: ordered against the run's own transitions, so a wake-up
        // either comes before a run begins (which then sees what it signals) or is seen at the
        // run's end.
        if self.state.fetch_or(WOKEN, Ordering::AcqRel) == IDLE {
            self.ready.push(self.slot);
        }
    }
}

/// One stream's task in its connection's slot `slot`. A stream wakes itself while it runs each
/// time it sends a DATA frame (h2 grants it send capacity and signals that at once); it is run
/// again right away then, and the list only sees wake-ups from elsewhere.
pub struct StreamTask {
    task: StreamFuture,
    wake: Arc<StreamWake>,
    /// `wake` as a `Waker`, made once: the task is always polled with it.
    waker: Waker,
}

impl StreamTask {
    /// A task for slot `slot`, listed: the caller runs it next.
    pub fn new(task: StreamFuture, slot: usize, ready: &Arc<ReadyList>) -> StreamTask {
        let wake = Arc::new(StreamWake {
            state: AtomicU8::new(WOKEN),
            slot,
            ready: ready.clone(),
        });
        let waker = Waker::from(wake.clone());
        StreamTask { task, wake, waker }
    }

    /// Runs the (listed) task until it waits without having woken itself, [`RERUNS`] times at
    /// most; then it is listed again, behind the others. `Ready` when it is finished and is to
    /// be dropped.
    pub fn run(&mut self) -> Poll<()> {
        let state = &self.wake.state;
        let mut cx = Context::from_waker(&self.waker);
        for _ in 0..RERUNS {
            let was = state.swap(RUNNING, Ordering::AcqRel);
            debug_assert_eq!(was & !RUNNING, WOKEN, "a task runs only from the list");
            if self.task.as_mut().poll(&mut cx).is_ready() {
                return Poll::Ready(());
            }
            if state
                .compare_exchange(RUNNING, IDLE, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return Poll::Pending;
            }
        }
        state.swap(WOKEN, Ordering::AcqRel);
        self.wake.ready.push(self.wake.slot);
        Poll::Pending
    }
}

impl Drop for StreamTask {
    fn drop(&mut self) {
        // Before the future goes: what it wakes while it is dropped is ignored.
        self.wake.state.store(DONE, Ordering::Release);
    }
}
