//! The HTTP/2 streams of one connection, run by that connection's own task. hyper hands every
//! new stream's task to [`StreamExecutor`], which puts it in the connection's
//! [`ConnectionStreams`] instead of spawning it: a stream woken by a room's delivery then only
//! marks itself ready and wakes its connection, once however many of its streams a fan-out
//! reaches. The connection task polls the ready streams, which queue their DATA frames in h2,
//! and then h2 itself, which writes them all together: one task wake-up and one write per
//! connection per fan-out instead of one per member.
//!
//! Each stream runs inside its [`super::reset::StreamReset`] scope.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex, OnceLock, PoisonError,
        atomic::{AtomicBool, AtomicU8, Ordering},
    },
    task::{Context, Poll, Wake, Waker},
};

use futures_util::stream::{FuturesUnordered, StreamExt};

use super::{coalesce::FlushGate, reset::Resettable, wakes::ConnectionWaker};

/// Rounds of streams then connection in one pass of the connection's task, at most.
const ROUNDS: usize = 4;

/// How many times in a row a stream that wakes itself while it runs is run again at once.
const RERUNS: usize = 8;

/// One stream's task in its connection's set. A stream wakes itself while it runs each time
/// it sends a DATA frame (h2 grants it send capacity and signals that at once), and the set
/// takes a self-woken task for one that wants to yield: after two of them it ends the
/// connection's turn, and the connection would write a few streams' frames at a time. The
/// stream is therefore run again right away when its own run woke it, and the set only sees
/// wake-ups from elsewhere.
struct StreamTask {
    task: Resettable<dyn Future<Output = ()> + Send>,
    wake: Arc<StreamWake>,
    /// `wake` as a `Waker`, made once.
    waker: Waker,
}

const IDLE: u8 = 0;
const RUNNING: u8 = 1;
const RUNNING_WOKEN: u8 = 2;

/// Wakes a stream's task: passed on to the set, or noted while the stream runs.
#[derive(Default)]
struct StreamWake {
    state: AtomicU8,
    /// The set's waker for this task, the same for the task's life: set on its first run.
    set: OnceLock<Waker>,
}

impl Wake for StreamWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // A wake-up while running is noted for the task to see when its run ends; otherwise
        // (the state is IDLE) it goes to the set.
        if let Err(IDLE) =
            self.state
                .compare_exchange(RUNNING, RUNNING_WOKEN, Ordering::AcqRel, Ordering::Acquire)
            && let Some(set) = self.set.get()
        {
            set.wake_by_ref();
        }
    }
}

impl StreamTask {
    fn new(task: impl Future<Output = ()> + Send + 'static) -> StreamTask {
        let wake = Arc::new(StreamWake::default());
        StreamTask {
            task: Resettable::new(Box::pin(tokio::task::coop::unconstrained(task))),
            waker: Waker::from(wake.clone()),
            wake,
        }
    }
}

impl Future for StreamTask {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        // A run costs its connection one unit of tokio's budget, whatever it does inside:
        // a connection's turn runs at most a budget's worth of streams, and each stream gets
        // through what it has (its own task would have had a whole budget to itself).
        let budget = std::task::ready!(tokio::task::coop::poll_proceed(cx));
        budget.made_progress();
        if this.wake.set.get().is_none() {
            let _ = this.wake.set.set(cx.waker().clone());
        }
        let mut own = Context::from_waker(&this.waker);
        for _ in 0..RERUNS {
            this.wake.state.store(RUNNING, Ordering::Release);
            let done = Pin::new(&mut this.task).poll(&mut own);
            // Swapped, not stored: a wake-up racing with the end of the run is either seen
            // here or finds IDLE and goes to the set.
            let woken = this.wake.state.swap(IDLE, Ordering::AcqRel) == RUNNING_WOKEN;
            if done.is_ready() {
                return Poll::Ready(());
            }
            if !woken {
                return Poll::Pending;
            }
        }
        // Still waking itself: it gets a turn in the set like any other task.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// What hyper spawns a connection's stream tasks on (one per connection).
#[derive(Clone)]
pub struct StreamExecutor {
    opened: Arc<Opened>,
}

/// Streams hyper opened since the connection task last took them.
#[derive(Default)]
struct Opened {
    tasks: Mutex<Vec<StreamTask>>,
    /// `tasks` is not empty: read without the lock on every pass.
    any: AtomicBool,
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, task: F) {
        let task = StreamTask::new(task);
        // A stream opens only inside the connection's own poll; the lock is never contended.
        self.opened
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(task);
        self.opened.any.store(true, Ordering::Release);
    }
}

/// The running streams of one connection, polled by its task.
pub struct ConnectionStreams {
    opened: Arc<Opened>,
    running: FuturesUnordered<StreamTask>,
    /// What a ready stream wakes: the connection's task, batched per waking thread.
    streams: Arc<ConnectionWaker>,
    streams_waker: Waker,
    /// What the connection itself (h2, its socket, its timers) wakes. Apart from `streams`
    /// so that a pass can tell the two apart: h2 wakes the connection for every frame a
    /// stream queues, and the pass polls the connection right after its streams anyway.
    io: Arc<ConnectionWaker>,
    io_waker: Waker,
}

impl Default for ConnectionStreams {
    fn default() -> Self {
        let streams = Arc::new(ConnectionWaker::here());
        let io = Arc::new(ConnectionWaker::here());
        ConnectionStreams {
            opened: Arc::default(),
            running: FuturesUnordered::new(),
            streams_waker: Waker::from(streams.clone()),
            streams,
            io_waker: Waker::from(io.clone()),
            io,
        }
    }
}

impl ConnectionStreams {
    pub fn new() -> ConnectionStreams {
        ConnectionStreams::default()
    }

    /// The executor to build this connection's HTTP/2 server with.
    pub fn executor(&self) -> StreamExecutor {
        StreamExecutor {
            opened: self.opened.clone(),
        }
    }

    /// One pass over `connection` and its streams: the ready streams first, so that the
    /// frames they queue go out in the connection's write of the same pass, then the
    /// connection, then any stream it opened or woke meanwhile; last, if the connection's IO
    /// holds bytes (see [`FlushGate`]), the connection once more with flushes writing. Wake-ups
    /// during the pass are only noted ([`ConnectionWaker`]); one the pass did not act on
    /// wakes the task again at its end.
    pub fn poll_with<C: Future>(
        &mut self,
        mut connection: Pin<&mut C>,
        gate: &FlushGate,
        cx: &mut Context<'_>,
    ) -> Poll<C::Output> {
        self.streams.task.register(cx.waker());
        self.io.task.register(cx.waker());
        gate.set_direct(self.running.len() + self.opened_len() <= 1);
        self.streams.begin();
        self.io.begin();
        let done = self.poll_rounds(connection.as_mut());
        self.streams.end(cx);
        self.io.end(cx);
        match done {
            Poll::Pending if gate.is_holding() => {
                let mut io_cx = Context::from_waker(&self.io_waker);
                gate.flushing(|| connection.as_mut().poll(&mut io_cx))
            }
            done => done,
        }
    }

    fn poll_rounds<C: Future>(&mut self, mut connection: Pin<&mut C>) -> Poll<C::Output> {
        let io_waker = self.io_waker.clone();
        let mut io_cx = Context::from_waker(&io_waker);
        for _ in 0..ROUNDS {
            self.poll_streams();
            // The frames the streams queued woke the connection: polled now in any case.
            self.io.take_woken();
            if let Poll::Ready(done) = connection.as_mut().poll(&mut io_cx) {
                return Poll::Ready(done);
            }
            // Streams the connection opened or woke (it read a WINDOW_UPDATE, a reset), or
            // that a room woke meanwhile, or the connection woke itself: run them in this pass
            // rather than the next turn.
            let opened = self.take_opened();
            let streams = self.streams.take_woken();
            let io = self.io.take_woken();
            if !(opened || streams || io) {
                return Poll::Pending;
            }
        }
        // Still busy: the rest is for the next turn.
        self.io.wake_self();
        Poll::Pending
    }

    /// Moves the streams hyper opened into the running set; whether there were any.
    fn take_opened(&mut self) -> bool {
        if !self.opened.any.swap(false, Ordering::AcqRel) {
            return false;
        }
        let mut opened = self
            .opened
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for task in opened.drain(..) {
            self.running.push(task);
        }
        true
    }

    /// Runs every ready stream until it waits again; finished streams leave the set. The set
    /// ends its turn after a pass over all its streams by waking itself; that wake-up (seen
    /// as `woken`) only means another look, which is taken here rather than after another
    /// poll of the connection.
    fn poll_streams(&mut self) {
        self.take_opened();
        let mut streams_cx = Context::from_waker(&self.streams_waker);
        for _ in 0..ROUNDS {
            while let Poll::Ready(Some(())) = self.running.poll_next_unpin(&mut streams_cx) {}
            if !self.streams.take_woken() {
                return;
            }
        }
        // Still busy: leave the wake-up for the connection's rounds to see.
        self.streams.wake_self();
    }

    /// Streams running or opened and not yet run.
    pub fn len(&self) -> usize {
        self.running.len() + self.opened_len()
    }

    fn opened_len(&self) -> usize {
        self.opened.tasks.lock().map_or(0, |opened| opened.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::wakes::Batch;
    use hyper::rt::Executor;
    use std::sync::atomic::AtomicUsize;
    use tokio::sync::mpsc;

    /// The connection task's waker: counts how often the task would be scheduled.
    #[derive(Default)]
    struct Scheduled(AtomicUsize);

    impl Wake for Scheduled {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A connection that never finishes and counts its polls.
    struct Connection(usize);

    impl Future for Connection {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<()> {
            self.0 += 1;
            Poll::Pending
        }
    }

    fn pass(streams: &mut ConnectionStreams, connection: &mut Connection, waker: &Waker) {
        let gate = FlushGate::default();
        let done = streams.poll_with(Pin::new(connection), &gate, &mut Context::from_waker(waker));
        assert!(done.is_pending());
    }

    #[test]
    fn a_batch_of_deliveries_wakes_the_connection_once_and_one_pass_runs_every_stream() {
        let mut streams = ConnectionStreams::new();
        let executor = streams.executor();
        let received = Arc::new(AtomicUsize::new(0));
        let mut queues = Vec::new();
        for _ in 0..25 {
            let (tx, mut rx) = mpsc::channel::<()>(4);
            let received = received.clone();
            executor.execute(async move {
                while rx.recv().await.is_some() {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            });
            queues.push(tx);
        }
        let scheduled = Arc::new(Scheduled::default());
        let waker = Waker::from(scheduled.clone());
        let mut connection = Connection(0);
        pass(&mut streams, &mut connection, &waker);
        assert_eq!(streams.len(), 25);

        // A fan-out on another thread, as a room does.
        let fan_out = queues.clone();
        std::thread::spawn(move || {
            let _batch = Batch::hold();
            for tx in &fan_out {
                tx.try_send(()).unwrap();
            }
        })
        .join()
        .unwrap();
        assert_eq!(
            scheduled.0.load(Ordering::Relaxed),
            1,
            "one wake-up per fan-out"
        );

        pass(&mut streams, &mut connection, &waker);
        assert_eq!(received.load(Ordering::Relaxed), 25, "every stream ran");
        assert_eq!(connection.0, 2, "in one pass over the connection");
        assert_eq!(
            scheduled.0.load(Ordering::Relaxed),
            1,
            "and nothing left for later"
        );

        drop(queues);
        pass(&mut streams, &mut connection, &waker);
        assert!(streams.is_empty(), "finished streams leave the set");
    }

    #[test]
    fn a_stream_that_wakes_itself_runs_again_in_the_same_pass() {
        let mut streams = ConnectionStreams::new();
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = runs.clone();
        streams.executor().execute(std::future::poll_fn(move |cx| {
            // Like a stream granted send capacity while it runs: woken by its own run.
            if counted.fetch_add(1, Ordering::Relaxed) < 3 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(())
        }));
        let scheduled = Arc::new(Scheduled::default());
        pass(
            &mut streams,
            &mut Connection(0),
            &Waker::from(scheduled.clone()),
        );
        assert_eq!(runs.load(Ordering::Relaxed), 4);
        assert!(streams.is_empty());
        assert_eq!(scheduled.0.load(Ordering::Relaxed), 0);
    }
}
