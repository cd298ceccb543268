//! Ending an HTTP/2 stream on the wire without the client's help. A stream's pump
//! ([`super::serving::Pump`]) takes a response body's frames only while the stream has send capacity: a client that stops granting window leaves the body
//! unpolled, so a status the session sets is never seen and the stream, its queue and its buffers
//! stay until the connection closes. Every stream task therefore carries a [`StreamReset`] (see
//! [`super::streams`]): the gRPC handler picks it up ([`StreamReset::current`]) and hands it to
//! the session's send handle, and once a stream is ended that way the task is dropped if it has
//! not finished within [`RESET_GRACE`] ([`ResetTimer`]). Dropping it makes h2 reset the stream
//! (RST_STREAM CANCEL) and discard what it buffered.

use std::{
    cell::Cell,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Waker},
    time::Duration,
};

use atomic_waker::AtomicWaker;
use tokio::time::Sleep;

/// How long an ended stream may take to write its status (trailers) before it is reset. A client
/// that reads gets its status well within this; one that does not is cut here.
pub const RESET_GRACE: Duration = Duration::from_millis(250);

thread_local! {
    /// The switch of the stream task being polled on this thread, until its handler takes it.
    /// A plain cell the switch is moved in and out of: no reference count is touched per poll.
    static OFFERED: Cell<Option<Arc<StreamReset>>> = const { Cell::new(None) };
}

/// The reset switch of one HTTP/2 stream's task.
#[derive(Debug, Default)]
pub struct StreamReset {
    armed: AtomicBool,
    task: AtomicWaker,
}

impl StreamReset {
    /// The switch of the stream whose task is running this code (the in-process transport), for
    /// the first caller in that task: the handler takes it once, when it makes the stream's send
    /// handle, and the task stops offering it then. `None` elsewhere, and to later callers.
    pub(crate) fn current() -> Option<Arc<StreamReset>> {
        OFFERED.try_with(Cell::take).ok().flatten()
    }

    /// Resets the stream unless its task finishes within [`RESET_GRACE`]. Idempotent.
    pub fn arm(&self) {
        if !self.armed.swap(true, Ordering::AcqRel) {
            self.task.wake();
        }
    }

    pub fn is_armed(&self) -> bool {
        self.armed.load(Ordering::Acquire)
    }
}

/// The reset side of one HTTP/2 stream's task: its switch, offered to the task's code on each
/// poll until taken, and once the switch is armed, the deadline after which the task is to be
/// dropped unless it finished.
pub struct ResetTimer {
    switch: Arc<StreamReset>,
    /// The switch while the handler has not taken it ([`StreamReset::current`]). The handler
    /// runs in the stream's first polls; after it, a poll pays for no scope at all.
    offered: Option<Arc<StreamReset>>,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl ResetTimer {
    /// The timer of a task whose waker (the same for its life) is `task`.
    pub fn new(task: &Waker) -> ResetTimer {
        let switch = Arc::new(StreamReset::default());
        switch.task.register(task);
        ResetTimer {
            offered: Some(switch.clone()),
            switch,
            deadline: None,
        }
    }

    /// Polls the stream's `task` once, with its switch offered; `Ready` when the task finished
    /// or is to be dropped (armed, and the grace is over). `cx` must carry the waker given to
    /// [`ResetTimer::new`].
    pub fn poll(
        &mut self,
        task: Pin<&mut (dyn Future<Output = ()> + Send)>,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        let done = match self.offered.take() {
            None => task.poll(cx),
            Some(switch) => {
                let offer = Offer::new(switch);
                let done = task.poll(cx);
                self.offered = offer.end();
                done
            }
        };
        if done.is_ready() {
            return Poll::Ready(());
        }
        if !self.switch.is_armed() {
            return Poll::Pending;
        }
        let deadline = self
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(RESET_GRACE)));
        // Ready: the caller drops the stream's task, and with it h2's handle: RST_STREAM.
        deadline.as_mut().poll(cx)
    }
}

/// A switch offered on this thread for one poll; what was offered before comes back when it
/// ends, also if the poll panics.
struct Offer {
    previous: Option<Arc<StreamReset>>,
    ended: bool,
}

impl Offer {
    fn new(switch: Arc<StreamReset>) -> Offer {
        Offer {
            previous: OFFERED.replace(Some(switch)),
            ended: false,
        }
    }

    /// The switch if it was not taken.
    fn end(mut self) -> Option<Arc<StreamReset>> {
        self.ended = true;
        OFFERED.replace(self.previous.take())
    }
}

impl Drop for Offer {
    fn drop(&mut self) {
        if !self.ended {
            let _ = OFFERED.try_with(|offered| offered.replace(self.previous.take()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{coalesce::FlushGate, streams::ConnectionStreams};
    use hyper::rt::Executor;
    use tokio::sync::oneshot;

    /// Runs `task` as a stream of a connection that does nothing else, on a task of its own.
    fn run_as_stream(task: impl Future<Output = ()> + Send + 'static) {
        let mut streams = ConnectionStreams::new();
        streams.executor().execute(task);
        tokio::spawn(async move {
            let gate = FlushGate::default();
            let mut connection = std::future::pending::<()>();
            std::future::poll_fn(|cx| streams.poll_with(Pin::new(&mut connection), &gate, cx)).await
        });
    }

    /// A task that never finishes on its own, holding `_held` until it is dropped.
    async fn stuck(switch: oneshot::Sender<Arc<StreamReset>>, held: oneshot::Sender<()>) {
        let _ = switch.send(StreamReset::current().expect("runs in a reset scope"));
        let _held = held;
        std::future::pending::<()>().await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_armed_stuck_task_is_dropped_after_the_grace() {
        let (switch_tx, switch_rx) = oneshot::channel();
        let (held_tx, mut held_rx) = oneshot::channel::<()>();
        run_as_stream(stuck(switch_tx, held_tx));
        let switch = switch_rx.await.unwrap();
        // Not armed: the task lives on, however long.
        tokio::time::sleep(RESET_GRACE * 10).await;
        assert!(held_rx.try_recv().is_err(), "an unarmed task is left alone");
        let armed_at = tokio::time::Instant::now();
        switch.arm();
        assert!(held_rx.await.is_err(), "dropped, not completed");
        assert_eq!(armed_at.elapsed(), RESET_GRACE);
    }

    #[tokio::test]
    async fn outside_the_executor_there_is_no_switch() {
        assert!(StreamReset::current().is_none());
    }

    #[tokio::test]
    async fn the_switch_is_offered_on_every_poll_until_the_task_takes_it_once() {
        let (found_tx, found_rx) = oneshot::channel();
        run_as_stream(async move {
            // The handler may wait before it asks, as a routing layer can.
            tokio::task::yield_now().await;
            let first = StreamReset::current();
            let again = StreamReset::current();
            tokio::task::yield_now().await;
            let later = StreamReset::current();
            let _ = found_tx.send((first.is_some(), again.is_some(), later.is_some()));
        });
        let found = tokio::time::timeout(Duration::from_secs(5), found_rx).await;
        assert_eq!(found.unwrap().unwrap(), (true, false, false));
        assert!(
            StreamReset::current().is_none(),
            "nothing left on the thread"
        );
    }

    #[test]
    fn a_panicking_poll_leaves_no_switch_on_the_thread() {
        let waker = Waker::noop();
        let mut timer = ResetTimer::new(waker);
        let mut task: Pin<Box<dyn Future<Output = ()> + Send>> =
            Box::pin(std::future::poll_fn(|_| panic!("a handler's bug")));
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = timer.poll(task.as_mut(), &mut Context::from_waker(waker));
        }));
        assert!(polled.is_err());
        assert!(StreamReset::current().is_none());
    }
}
