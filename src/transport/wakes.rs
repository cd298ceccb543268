//! Wake-ups of connection tasks, batched per thread. A room's fan-out makes one stream after
//! another ready; each stream wakes its connection's task, and a task woken from another
//! thread is scheduled at once, so a connection could run (and write) before the fan-out has
//! reached its other members. Inside a [`Batch`] those wake-ups are held and released together
//! when the batch ends: each connection is woken once per fan-out, after it, and finds every
//! stream the fan-out reached ready. Connections on the batch's own thread are woken directly;
//! those of another actor thread are handed to that thread's [`Relay`] in one go, so a fan-out
//! costs one cross-thread wake-up per thread rather than one per connection. Also a
//! [`Signal`]: a waker that notes it woke a task, so the task polls what it guards only then.

use std::{
    cell::RefCell,
    marker::PhantomData,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU8, Ordering},
    },
    task::{Context, Poll, Wake},
};

use atomic_waker::AtomicWaker;

thread_local! {
    static HELD: RefCell<Held> = const {
        RefCell::new(Held {
            depth: 0,
            wakers: Vec::new(),
        })
    };
}

/// The wake-ups held on this thread by the open batches.
struct Held {
    /// Batches open on this thread (they nest: a fan-out that evicts tells the others).
    depth: usize,
    /// Kept between batches, so that holding a wake-up does not allocate.
    wakers: Vec<Arc<ConnectionWaker>>,
}

thread_local! {
    /// This actor thread's relay, started with its first connection.
    static HOME: RefCell<Option<Arc<Relay>>> = const { RefCell::new(None) };
}

/// Wakes, on its own actor thread, the connections other threads hand it. Off the actor
/// threads there is none (a multi-thread runtime moves tasks between threads: no home).
#[derive(Debug, Default)]
pub struct Relay {
    pending: Mutex<Vec<Arc<ConnectionWaker>>>,
    task: atomic_waker::AtomicWaker,
    /// Woken and not yet run: further hand-overs need no wake-up.
    scheduled: AtomicBool,
    /// Its task is gone (the thread's runtime stopped): hand-overs are dropped, not kept.
    gone: AtomicBool,
}

/// Marks the relay gone when its task is dropped, and lets go of what was handed over (the
/// wakers hold their relay: kept, they would keep each other alive).
struct Gone<'a>(&'a Relay);

impl Drop for Gone<'_> {
    fn drop(&mut self) {
        self.0.gone.store(true, Ordering::SeqCst);
        self.0
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

impl Relay {
    /// This thread's relay (started here on first use), if this is an actor thread.
    fn here() -> Option<Arc<Relay>> {
        if !crate::runtime::on_actor_thread() {
            return None;
        }
        let relay = HOME.with(|home| {
            home.borrow_mut()
                .get_or_insert_with(|| {
                    let relay = Arc::new(Relay::default());
                    tokio::task::spawn_local(relay.clone().run());
                    relay
                })
                .clone()
        });
        Some(relay)
    }

    /// Runs for as long as the thread's runtime: wakes what was handed over.
    async fn run(self: Arc<Relay>) {
        let _gone = Gone(&self);
        let mut batch = Vec::new();
        std::future::poll_fn(|cx| {
            self.task.register(cx.waker());
            // Cleared before taking: a hand-over after the take finds it clear and wakes us.
            self.scheduled.store(false, Ordering::SeqCst);
            std::mem::swap(
                &mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner),
                &mut batch,
            );
            for connection in batch.drain(..) {
                connection.task.wake();
            }
            Poll::<()>::Pending
        })
        .await;
    }

    /// Hands `connections` (all of this relay's) over, with one wake-up at most.
    fn hand_over(&self, connections: impl Iterator<Item = Arc<ConnectionWaker>>) {
        {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            // Checked under the lock `Gone` clears it with: nothing is added after the clear.
            if self.gone.load(Ordering::SeqCst) {
                return;
            }
            pending.extend(connections);
        }
        if !self.scheduled.swap(true, Ordering::SeqCst) {
            self.task.wake();
        }
    }
}

/// Wakes each held connection: directly when it lives on this thread (or has no home), else
/// through its thread's relay, once per relay.
fn release(wakers: &mut Vec<Arc<ConnectionWaker>>) {
    let here = HOME.with(|home| home.borrow().clone());
    let at_home = |waker: &ConnectionWaker| match (&waker.home, &here) {
        (None, _) => true,
        (Some(home), Some(here)) => Arc::ptr_eq(home, here),
        (Some(_), None) => false,
    };
    for waker in wakers.iter() {
        waker.held.store(false, Ordering::Release);
    }
    wakers.retain(|waker| {
        let local = at_home(waker);
        if local {
            waker.task.wake();
        }
        !local
    });
    // Grouped by relay, then handed over a group at a time.
    wakers.sort_unstable_by_key(|waker| waker.home.as_ref().map(Arc::as_ptr));
    while let Some(home) = wakers.last().and_then(|waker| waker.home.clone()) {
        let start = wakers
            .iter()
            .rposition(|waker| !waker.home.as_ref().is_some_and(|h| Arc::ptr_eq(h, &home)))
            .map_or(0, |i| i + 1);
        home.hand_over(wakers.drain(start..));
    }
}

/// Holds the wake-ups of connection tasks made on this thread until it is dropped.
#[must_use = "wake-ups are held only while the batch lives"]
pub struct Batch {
    /// Dropped on the thread it was made on: the held wake-ups are that thread's.
    _not_send: PhantomData<*const ()>,
}

impl Batch {
    pub fn hold() -> Batch {
        HELD.with(|held| held.borrow_mut().depth += 1);
        Batch {
            _not_send: PhantomData,
        }
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        let wakers = HELD.with(|held| {
            let mut held = held.borrow_mut();
            held.depth -= 1;
            (held.depth == 0).then(|| std::mem::take(&mut held.wakers))
        });
        let Some(mut wakers) = wakers else { return };
        release(&mut wakers);
        // Give the (now empty) vector back for its capacity, unless a wake-up above was held
        // meanwhile and a new one took its place.
        HELD.with(|held| {
            let mut held = held.borrow_mut();
            if held.wakers.is_empty() {
                held.wakers = wakers;
            }
        });
    }
}

/// The waker a connection's streams are polled with. While the connection's task runs, a
/// wake-up is only noted for the task to see (it runs the streams again before it ends its
/// pass); otherwise it wakes the task, or, inside a [`Batch`] on the waking thread, once when
/// the batch ends.
#[derive(Debug, Default)]
pub struct ConnectionWaker {
    /// The connection task's current waker, registered on every poll.
    pub task: AtomicWaker,
    state: AtomicU8,
    /// Already held by a batch: a second wake-up in it adds nothing.
    held: AtomicBool,
    /// The relay of the actor thread the connection runs on.
    home: Option<Arc<Relay>>,
}

const IDLE: u8 = 0;
const RUNNING: u8 = 1;
const RUNNING_WOKEN: u8 = 2;

impl ConnectionWaker {
    /// The waker of a connection whose task runs on this thread.
    pub fn here() -> ConnectionWaker {
        ConnectionWaker {
            home: Relay::here(),
            ..ConnectionWaker::default()
        }
    }

    /// The connection's task starts a pass.
    pub fn begin(&self) {
        self.state.store(RUNNING, Ordering::Release);
    }

    /// Whether a stream was woken since the pass began or this was last asked.
    pub fn take_woken(&self) -> bool {
        self.state
            .compare_exchange(RUNNING_WOKEN, RUNNING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Notes a wake-up for the running pass to see.
    pub fn wake_self(&self) {
        let _ = self.state.compare_exchange(
            RUNNING,
            RUNNING_WOKEN,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// The pass ends; a wake-up it did not see wakes the task (through `cx`).
    pub fn end(&self, cx: &Context<'_>) {
        // Swapped: a wake-up racing with the end is either seen here or finds IDLE.
        if self.state.swap(IDLE, Ordering::AcqRel) == RUNNING_WOKEN {
            cx.waker().wake_by_ref();
        }
    }
}

impl Wake for ConnectionWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        match self.state.compare_exchange(
            RUNNING,
            RUNNING_WOKEN,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) | Err(RUNNING_WOKEN) => return,
            Err(_) => {}
        }
        let held = HELD.with(|held| {
            let mut held = held.borrow_mut();
            if held.depth == 0 {
                return false;
            }
            if !self.held.swap(true, Ordering::AcqRel) {
                held.wakers.push(self.clone());
            }
            true
        });
        if !held {
            self.task.wake();
        }
    }
}

/// A waker of its own for one thing a task waits on (the connection's shutdown watch): it
/// remembers that it woke the task, so the task polls that thing only then.
pub struct Signal {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Default for Signal {
    fn default() -> Signal {
        // Woken to start with: the watch is polled once to register.
        Signal {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        }
    }
}

impl Signal {
    /// Whether the signal woke the task since the last call; registers the task to be woken.
    pub fn take(&self, cx: &Context<'_>) -> bool {
        self.task.register(cx.waker());
        self.woken.swap(false, Ordering::AcqRel)
    }
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

#[cfg(test)]
mod tests;
