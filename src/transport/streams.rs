//! The HTTP/2 streams of one connection, run by that connection's own task. The connection
//! ([`super::serving`]) hands every new stream's task to [`StreamExecutor`], which puts it in the connection's
//! [`ConnectionStreams`] instead of spawning it: a stream woken by a room's delivery then only
//! puts itself on the connection's ready list (`streams/ready.rs`) and wakes its connection,
//! once however many of its streams a fan-out reaches. The connection task runs the ready
//! streams, which queue their DATA frames in h2, and then h2 itself, which writes them all
//! together: one task wake-up and one write per connection per fan-out instead of one per
//! member.

mod ready;

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, Waker},
};

use self::ready::{ReadyList, StreamFuture, StreamTask};
use super::{coalesce::FlushGate, wakes::ConnectionWaker};

/// Rounds of streams then connection in one pass of the connection's task, at most.
const ROUNDS: usize = 4;

/// What a connection spawns its stream tasks on (one per connection).
#[derive(Clone)]
pub struct StreamExecutor {
    ready: Arc<ReadyList>,
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, task: F) {
        // A stream's run costs its connection one unit of tokio's budget (see
        // `Slots::run_listed`), not one per thing it does inside.
        self.ready
            .open(Box::pin(tokio::task::coop::unconstrained(task)));
    }
}

/// The running streams of one connection, polled by its task.
pub struct ConnectionStreams {
    ready: Arc<ReadyList>,
    slots: Slots,
    /// What a ready stream wakes: the connection's task, batched per waking thread.
    streams: Arc<ConnectionWaker>,
    streams_waker: Waker,
    /// What the connection itself (h2, its socket, its timers) wakes. Apart from `streams`
    /// so that a pass can tell the two apart: h2 wakes the connection for every frame a
    /// stream queues, and the pass polls the connection right after its streams anyway.
    io: Arc<ConnectionWaker>,
    io_waker: Waker,
}

/// The stream tasks, each in a slot that its wake-ups name on the ready list.
#[derive(Default)]
struct Slots {
    /// A `None` is free and in `free`.
    tasks: Vec<Option<StreamTask>>,
    free: Vec<usize>,
    /// The `Some`s in `tasks`.
    running: usize,
    /// Slots taken off the ready list and not run yet: the budget ran out before them.
    listed: Vec<usize>,
    /// Streams taken off the ready list, placed in slots at once (kept for its capacity).
    opened: Vec<StreamFuture>,
}

impl Default for ConnectionStreams {
    fn default() -> Self {
        let streams = Arc::new(ConnectionWaker::here());
        let io = Arc::new(ConnectionWaker::here());
        ConnectionStreams {
            ready: Arc::new(ReadyList::new(streams.clone())),
            slots: Slots::default(),
            streams_waker: Waker::from(streams.clone()),
            streams,
            io_waker: Waker::from(io.clone()),
            io,
        }
    }
}

impl Drop for ConnectionStreams {
    fn drop(&mut self) {
        // Streams opened and never run are held by the list, which the wakers of the others
        // hold: dropped here, or they could keep each other alive.
        drop(self.ready.clear());
    }
}

impl ConnectionStreams {
    pub fn new() -> ConnectionStreams {
        ConnectionStreams::default()
    }

    /// The executor to build this connection's HTTP/2 server with.
    pub fn executor(&self) -> StreamExecutor {
        StreamExecutor {
            ready: self.ready.clone(),
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
        self.slots.take_ready(&self.ready);
        gate.set_direct(self.slots.running <= 1);
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
            let streams = self.streams.take_woken();
            let io = self.io.take_woken();
            if !(streams || io) {
                return Poll::Pending;
            }
        }
        // Still busy: the rest is for the next turn.
        self.io.wake_self();
        Poll::Pending
    }

    /// Runs the listed streams until the list stays empty: a stream woken while the others ran
    /// (by a room, or by h2 as their frames went) runs in another round, [`ROUNDS`] at most.
    fn poll_streams(&mut self) {
        let mut streams_cx = Context::from_waker(&self.streams_waker);
        for _ in 0..ROUNDS {
            self.slots.take_ready(&self.ready);
            self.slots.run_listed(&mut streams_cx);
            if !self.streams.take_woken() {
                return;
            }
        }
        // Still busy: leave the wake-up for the connection's rounds to see.
        self.streams.wake_self();
    }

    /// Streams running or opened and not yet run.
    pub fn len(&self) -> usize {
        self.slots.running + self.ready.opened()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Slots {
    /// Moves the ready list here, placing the streams the connection opened in free slots.
    fn take_ready(&mut self, ready: &Arc<ReadyList>) {
        ready.drain(&mut self.listed, &mut self.opened);
        let mut opened = std::mem::take(&mut self.opened);
        for task in opened.drain(..) {
            let slot = self.free.pop().unwrap_or(self.tasks.len());
            let task = Some(StreamTask::new(task, slot, ready));
            match self.tasks.get_mut(slot) {
                Some(free) => *free = task,
                None => self.tasks.push(task),
            }
            self.running += 1;
            self.listed.push(slot);
        }
        self.opened = opened;
    }

    /// Runs each listed stream, finished ones leaving their slot. A run costs the connection
    /// one unit of tokio's budget, whatever it does inside: a connection's turn runs at most a
    /// budget's worth of streams (so it cannot starve the other tasks of its thread), and each
    /// stream gets through what it has (its own task would have had a whole budget to itself).
    /// Those left when the budget runs out go first in the next turn, which its exhaustion
    /// asked for (through `cx`).
    fn run_listed(&mut self, cx: &mut Context<'_>) {
        let mut ran = 0;
        while let Some(&slot) = self.listed.get(ran) {
            let Poll::Ready(budget) = tokio::task::coop::poll_proceed(cx) else {
                break;
            };
            budget.made_progress();
            ran += 1;
            let Some(Some(task)) = self.tasks.get_mut(slot) else {
                continue;
            };
            if task.run().is_ready() {
                self.tasks[slot] = None;
                self.free.push(slot);
                self.running -= 1;
            }
        }
        self.listed.drain(..ran);
    }
}

#[cfg(test)]
mod tests;
