//! A session's send handle and the response stream it feeds. [`SessionTx`] owns the one rule
//! about slow consumers: rooms `try_deliver` without waiting, and a queue full in messages or in
//! bytes is reported back so the room can drop the member. A [`Fatal`] set on the handle ends the
//! stream with its status, either at once or after the queue drains (shutdown); one that ends it
//! at once also arms the stream's [`StreamReset`], so a client that does not read the status
//! has its HTTP/2 stream reset instead of holding it open.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use atomic_waker::AtomicWaker;
use bytes::Bytes;
use tokio::sync::{
    Notify,
    mpsc::{self, error::TrySendError},
};
use tokio_stream::Stream;
use tonic::Status;

use crate::{error::Fatal, metrics, transport::reset::StreamReset};

/// What became of one delivery attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Sent,
    /// The queue is full: the member reads too slowly.
    Full,
    /// The stream is gone or already ended.
    Closed,
}

#[derive(Debug)]
struct Shared {
    fatal: OnceLock<Fatal>,
    /// Bytes queued and not yet taken by the response stream.
    queued_bytes: AtomicUsize,
    max_bytes: usize,
    /// The transport's reset switch for this stream (absent outside the server's transport).
    reset: Option<Arc<StreamReset>>,
    /// The response stream's task, woken when `fatal` is set so it ends even with a full queue.
    waker: AtomicWaker,
    /// Set when the transport drops the response stream.
    finished: AtomicBool,
    finished_notify: Notify,
}

impl Shared {
    fn end(&self, fatal: Fatal) {
        let at_once = !fatal.drains_first();
        if self.fatal.set(fatal).is_ok() {
            self.waker.wake();
            if at_once && let Some(reset) = &self.reset {
                reset.arm();
            }
        }
    }
}

/// Ends a stream (see [`SessionTx::ender`]).
#[derive(Debug, Clone)]
pub struct StreamEnder {
    shared: Arc<Shared>,
}

impl StreamEnder {
    pub fn end(&self, fatal: Fatal) {
        self.shared.end(fatal);
    }
}

/// Cheap to clone: every room a session joins holds one.
#[derive(Debug, Clone)]
pub struct SessionTx {
    tx: mpsc::Sender<Bytes>,
    shared: Arc<Shared>,
}

impl SessionTx {
    /// A queue bounded to `capacity` messages and `max_bytes` bytes, and the response stream
    /// that drains it. `reset` is the transport's switch for this stream, armed when the stream
    /// is ended without draining.
    pub fn channel(
        capacity: usize,
        max_bytes: usize,
        reset: Option<Arc<StreamReset>>,
    ) -> (SessionTx, OutboundStream) {
        let (tx, rx) = mpsc::channel(capacity);
        let shared = Arc::new(Shared {
            fatal: OnceLock::new(),
            queued_bytes: AtomicUsize::new(0),
            max_bytes,
            reset,
            waker: AtomicWaker::new(),
            finished: AtomicBool::new(false),
            finished_notify: Notify::new(),
        });
        let stream = OutboundStream {
            rx,
            shared: shared.clone(),
            done: false,
            permit: None,
            uncounted: 0,
        };
        (SessionTx { tx, shared }, stream)
    }

    /// Queues `message` without waiting.
    pub fn try_deliver(&self, message: Bytes) -> Delivery {
        if self.is_ended() {
            return Delivery::Closed;
        }
        let len = message.len();
        let before = self.shared.queued_bytes.fetch_add(len, Ordering::AcqRel);
        // An empty queue takes any one message, so a single large one is not a slow consumer.
        if before > 0 && before + len > self.shared.max_bytes {
            self.shared.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            return Delivery::Full;
        }
        let refused = match self.tx.try_send(message) {
            Ok(()) => return Delivery::Sent,
            Err(TrySendError::Full(_)) => Delivery::Full,
            Err(TrySendError::Closed(_)) => Delivery::Closed,
        };
        self.shared.queued_bytes.fetch_sub(len, Ordering::AcqRel);
        refused
    }

    /// Ends the stream with `fatal`'s status; the first reason given wins.
    pub fn end(&self, fatal: Fatal) {
        self.shared.end(fatal);
    }

    /// A handle that can end the stream without keeping it open: a `SessionTx` clone held
    /// elsewhere would stop the stream from ever finishing.
    pub fn ender(&self) -> StreamEnder {
        StreamEnder {
            shared: self.shared.clone(),
        }
    }

    /// A task that ends the stream with [`Fatal::IdleTimeout`] unless the transport has finished
    /// with it within `limit`: bounds how long a half-closed stream that is never read can hold
    /// its queue.
    pub fn end_unless_drained(&self, limit: Duration) -> impl Future<Output = ()> + 'static {
        let shared = self.shared.clone();
        async move {
            let finished = shared.finished_notify.notified();
            tokio::pin!(finished);
            finished.as_mut().enable();
            if shared.finished.load(Ordering::Acquire) {
                return;
            }
            tokio::select! {
                () = finished => {}
                () = tokio::time::sleep(limit) => shared.end(Fatal::IdleTimeout),
            }
        }
    }

    /// Why the stream was ended, if it was.
    pub fn fatal(&self) -> Option<&Fatal> {
        self.shared.fatal.get()
    }

    pub fn is_ended(&self) -> bool {
        self.shared.fatal.get().is_some()
    }
}

/// The response body of one `ChatStream` call.
#[derive(Debug)]
pub struct OutboundStream {
    rx: mpsc::Receiver<Bytes>,
    shared: Arc<Shared>,
    done: bool,
    /// The session's place in the session table, given back with the stream. Held as any
    /// value so this queue, which the actors use, does not depend on the table, which uses them.
    permit: Option<Box<dyn std::fmt::Debug + Send + Sync>>,
    /// Deliveries not yet added to the metrics counter (see [`COUNT_BATCH`]).
    uncounted: u64,
}

impl OutboundStream {
    /// Keeps `permit` (the session's place) until the transport drops this stream.
    pub fn holding(
        mut self,
        permit: impl std::fmt::Debug + Send + Sync + 'static,
    ) -> OutboundStream {
        self.permit = Some(Box::new(permit));
        self
    }
}

impl OutboundStream {
    /// Nothing is queued (nor being queued: a delivery counts its bytes before it queues).
    /// Lets a reader stop before it would poll an empty queue and register its waker.
    pub fn is_drained(&self) -> bool {
        self.shared.queued_bytes.load(Ordering::Acquire) == 0
    }
}

impl Drop for OutboundStream {
    fn drop(&mut self) {
        self.flush_count();
        if self.permit.is_some() {
            // A session ends, for the metrics, when the transport lets go of its stream.
            metrics::session_ended(
                self.shared
                    .fatal
                    .get()
                    .map_or("client_closed", Fatal::reason),
            );
        }
        self.shared.finished.store(true, Ordering::Release);
        self.shared.finished_notify.notify_waiters();
    }
}

/// Deliveries are added to the shared counter in batches of at most this many, and whenever the
/// queue runs empty: before the transport writes what it took, so a client never observes a
/// message the counter does not include yet.
const COUNT_BATCH: u64 = 64;

impl OutboundStream {
    fn flush_count(&mut self) {
        if self.uncounted > 0 {
            metrics::get().delivered.increment(self.uncounted);
            self.uncounted = 0;
        }
    }

    /// Ends the stream, with the status of `fatal` if there is one.
    fn finish(&mut self) -> Poll<Option<Result<Bytes, Status>>> {
        self.flush_count();
        self.done = true;
        self.rx.close();
        // What was queued goes now, not when the transport drops the stream.
        while self.rx.try_recv().is_ok() {}
        self.shared.queued_bytes.store(0, Ordering::Release);
        Poll::Ready(self.shared.fatal.get().map(|f| Err(Status::from(f))))
    }
}

impl Stream for OutboundStream {
    type Item = Result<Bytes, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        if this.shared.fatal.get().is_some_and(|f| !f.drains_first()) {
            return this.finish();
        }
        match this.rx.poll_recv(cx) {
            Poll::Ready(Some(message)) => {
                this.shared
                    .queued_bytes
                    .fetch_sub(message.len(), Ordering::AcqRel);
                this.uncounted += 1;
                if this.uncounted >= COUNT_BATCH {
                    this.flush_count();
                }
                Poll::Ready(Some(Ok(message)))
            }
            // Every sender is gone: the session ended; say why if it was not a clean end.
            Poll::Ready(None) => this.finish(),
            Poll::Pending => {
                this.flush_count();
                // Registered only when about to wait (not on every message), then `fatal` is
                // read again: an `end()` racing with this poll is either seen here or wakes us.
                this.shared.waker.register(cx.waker());
                if this.shared.fatal.get().is_some() {
                    this.finish()
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    #[tokio::test]
    async fn full_queue_is_reported_not_awaited() {
        let (tx, _stream) = SessionTx::channel(2, 1 << 20, None);
        assert_eq!(tx.try_deliver(Bytes::from_static(b"1")), Delivery::Sent);
        assert_eq!(tx.try_deliver(Bytes::from_static(b"2")), Delivery::Sent);
        assert_eq!(tx.try_deliver(Bytes::from_static(b"3")), Delivery::Full);
    }

    #[tokio::test]
    async fn a_queue_full_in_bytes_is_full() {
        let (tx, mut stream) = SessionTx::channel(100, 10, None);
        // One message larger than the bound still goes into an empty queue.
        assert_eq!(tx.try_deliver(Bytes::from(vec![b'x'; 64])), Delivery::Sent);
        assert_eq!(tx.try_deliver(Bytes::from_static(b"y")), Delivery::Full);
        assert_eq!(stream.next().await.unwrap().unwrap().len(), 64);
        assert_eq!(tx.try_deliver(Bytes::from_static(b"12345")), Delivery::Sent);
        assert_eq!(tx.try_deliver(Bytes::from_static(b"12345")), Delivery::Sent);
        assert_eq!(tx.try_deliver(Bytes::from_static(b"1")), Delivery::Full);
    }

    #[tokio::test]
    async fn ending_at_once_arms_the_reset_and_draining_does_not() {
        let reset = Arc::new(StreamReset::default());
        let (tx, _stream) = SessionTx::channel(4, 1 << 20, Some(reset.clone()));
        tx.end(Fatal::Shutdown);
        assert!(
            !reset.is_armed(),
            "a shutdown drains, then ends with trailers"
        );
        let reset = Arc::new(StreamReset::default());
        let (tx, _stream) = SessionTx::channel(4, 1 << 20, Some(reset.clone()));
        tx.end(Fatal::IdleTimeout);
        assert!(reset.is_armed());
    }

    #[tokio::test]
    async fn slow_consumer_ends_at_once_dropping_the_backlog() {
        let (tx, mut stream) = SessionTx::channel(4, 1 << 20, None);
        tx.try_deliver(Bytes::from_static(b"queued"));
        tx.end(Fatal::SlowConsumer);
        let status = stream.next().await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(stream.next().await.is_none());
        assert_eq!(
            tx.try_deliver(Bytes::from_static(b"late")),
            Delivery::Closed
        );
    }

    #[tokio::test]
    async fn shutdown_drains_the_queue_first() {
        let (tx, mut stream) = SessionTx::channel(4, 1 << 20, None);
        tx.try_deliver(Bytes::from_static(b"a"));
        tx.try_deliver(Bytes::from_static(b"b"));
        tx.end(Fatal::Shutdown);
        assert_eq!(stream.next().await.unwrap().unwrap(), "a");
        assert_eq!(stream.next().await.unwrap().unwrap(), "b");
        let status = stream.next().await.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn dropping_every_sender_ends_cleanly_after_the_backlog() {
        let (tx, mut stream) = SessionTx::channel(4, 1 << 20, None);
        tx.try_deliver(Bytes::from_static(b"last"));
        drop(tx);
        assert_eq!(stream.next().await.unwrap().unwrap(), "last");
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn end_wakes_a_waiting_stream() {
        let (tx, mut stream) = SessionTx::channel(4, 1 << 20, None);
        let waiter = tokio::spawn(async move { stream.next().await });
        tokio::task::yield_now().await;
        tx.end(Fatal::IdleTimeout);
        let item = tokio::time::timeout(std::time::Duration::from_secs(2), waiter)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(item.unwrap().unwrap_err().code(), tonic::Code::Unavailable);
    }
}
