//! Ending an HTTP/2 stream on the wire without the client's help. hyper writes a response body
//! only while the stream has send capacity: a client that stops granting window leaves the body
//! unpolled, so a status the session sets is never seen and the stream, its queue and its buffers
//! stay until the connection closes. Every stream task is therefore run as a [`Resettable`],
//! inside a [`StreamReset`] scope (see [`super::streams`]): the gRPC handler picks the
//! scope up ([`StreamReset::current`]) and hands it to the session's send handle, and once a
//! stream is ended that way the task is dropped if it has not finished within [`RESET_GRACE`].
//! Dropping it makes h2 reset the stream (RST_STREAM CANCEL) and discard what it buffered.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use atomic_waker::AtomicWaker;
use tokio::time::Sleep;

/// How long an ended stream may take to write its status (trailers) before it is reset. A client
/// that reads gets its status well within this; one that does not is cut here.
pub const RESET_GRACE: Duration = Duration::from_millis(250);

tokio::task_local! {
    static STREAM: Arc<StreamReset>;
}

/// The reset switch of one HTTP/2 stream's task.
#[derive(Debug, Default)]
pub struct StreamReset {
    armed: AtomicBool,
    task: AtomicWaker,
}

impl StreamReset {
    /// The switch of the stream whose task is running this code, if it runs as a
    /// [`Resettable`] (the in-process transport); `None` elsewhere.
    pub fn current() -> Option<Arc<StreamReset>> {
        STREAM.try_with(Arc::clone).ok()
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

/// One HTTP/2 stream's task, made resettable: it runs inside its [`StreamReset`] scope, and once
/// the switch is armed it is dropped unless it finishes within [`RESET_GRACE`].
pub struct Resettable<F: ?Sized> {
    reset: Arc<StreamReset>,
    deadline: Option<Pin<Box<Sleep>>>,
    /// The task's waker is in `reset` (a task's waker stays the same for its life: once is
    /// enough, and saves two atomic operations on every poll).
    registered: bool,
    task: Pin<Box<F>>,
}

impl<F: ?Sized> Resettable<F> {
    pub fn new(task: Pin<Box<F>>) -> Resettable<F> {
        Resettable {
            reset: Arc::default(),
            deadline: None,
            registered: false,
            task,
        }
    }
}

impl<F: Future<Output = ()> + ?Sized> Future for Resettable<F> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let reset = this.reset.clone();
        if STREAM
            .sync_scope(reset, || this.task.as_mut().poll(cx))
            .is_ready()
        {
            return Poll::Ready(());
        }
        // Registered before reading the flag: an `arm` racing with this poll is seen or wakes us.
        if !this.registered {
            this.reset.task.register(cx.waker());
            this.registered = true;
        }
        if !this.reset.is_armed() {
            return Poll::Pending;
        }
        let deadline = this
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(RESET_GRACE)));
        // Ready: returning drops the stream's task, and with it h2's handle: RST_STREAM.
        deadline.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

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
        tokio::spawn(Resettable::new(Box::pin(stuck(switch_tx, held_tx))));
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
}
