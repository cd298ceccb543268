//! Wake-ups of connection tasks, batched per thread. A room's fan-out makes one stream after
//! another ready; each stream wakes its connection's task, and a task woken from outside the
//! transport's threads is scheduled at once, so a connection could run (and write) before the
//! fan-out has reached its other members. Inside a [`Batch`] those wake-ups are held and
//! released together when the batch ends: each connection is woken once per fan-out, after it,
//! and finds every stream the fan-out reached ready.

use std::{
    cell::RefCell,
    marker::PhantomData,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU8, Ordering},
    },
    task::{Context, Wake},
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
        for waker in wakers.drain(..) {
            waker.held.store(false, Ordering::Release);
            waker.task.wake();
        }
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
}

const IDLE: u8 = 0;
const RUNNING: u8 = 1;
const RUNNING_WOKEN: u8 = 2;

impl ConnectionWaker {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::{sync::atomic::AtomicUsize, task::Waker};

    /// A task waker that counts its wake-ups.
    #[derive(Default)]
    struct Counting(AtomicUsize);

    impl Wake for Counting {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn connection() -> (Arc<ConnectionWaker>, Arc<Counting>) {
        let counting = Arc::new(Counting::default());
        let connection = Arc::new(ConnectionWaker::default());
        connection.task.register(&Waker::from(counting.clone()));
        (connection, counting)
    }

    #[test]
    fn outside_a_batch_a_wake_up_goes_through_at_once() {
        let (connection, counting) = connection();
        Waker::from(connection).wake_by_ref();
        assert_eq!(counting.0.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_batch_wakes_each_connection_once_when_it_ends() {
        let (a, a_count) = connection();
        let (b, b_count) = connection();
        {
            let _outer = Batch::hold();
            {
                let _inner = Batch::hold();
                for _ in 0..25 {
                    Waker::from(a.clone()).wake_by_ref();
                }
            }
            Waker::from(b.clone()).wake_by_ref();
            assert_eq!(
                a_count.0.load(Ordering::Relaxed),
                0,
                "held until the outer end"
            );
            assert_eq!(b_count.0.load(Ordering::Relaxed), 0);
        }
        assert_eq!(a_count.0.load(Ordering::Relaxed), 1);
        assert_eq!(b_count.0.load(Ordering::Relaxed), 1);
        // The next batch holds again.
        let (c, c_count) = connection();
        let batch = Batch::hold();
        c.task.register(&Waker::from(c_count.clone()));
        Waker::from(c.clone()).wake_by_ref();
        assert_eq!(c_count.0.load(Ordering::Relaxed), 0);
        drop(batch);
        assert_eq!(c_count.0.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_wake_up_during_a_pass_is_seen_by_the_pass_or_wakes_the_task_after_it() {
        let (connection, counting) = connection();
        let cx_waker = Waker::from(counting.clone());
        let cx = Context::from_waker(&cx_waker);
        connection.begin();
        Waker::from(connection.clone()).wake_by_ref();
        assert_eq!(
            counting.0.load(Ordering::Relaxed),
            0,
            "not scheduled while running"
        );
        assert!(connection.take_woken(), "the pass sees it");
        assert!(!connection.take_woken());
        connection.end(&cx);
        assert_eq!(
            counting.0.load(Ordering::Relaxed),
            0,
            "seen: nothing left to do"
        );

        connection.begin();
        Waker::from(connection.clone()).wake_by_ref();
        connection.end(&cx);
        assert_eq!(
            counting.0.load(Ordering::Relaxed),
            1,
            "unseen: the task runs again"
        );
        Waker::from(connection).wake_by_ref();
        assert_eq!(counting.0.load(Ordering::Relaxed), 2, "idle: wakes at once");
    }

    #[test]
    fn a_batch_holds_only_its_own_threads_wake_ups() {
        let (connection, counting) = connection();
        let _batch = Batch::hold();
        std::thread::spawn(move || Waker::from(connection).wake_by_ref())
            .join()
            .unwrap();
        assert_eq!(counting.0.load(Ordering::Relaxed), 1);
    }
}
