//! A session's send handle and the response stream it feeds. [`SessionTx`] owns the one rule
//! about slow consumers: rooms `try_deliver` without waiting, and a queue full in messages or in
//! bytes is reported back so the room can drop the member. A [`Fatal`] set on the handle ends the
//! stream with its status, either at once or after the queue drains (shutdown); one that ends it
//! at once also arms the stream's [`StreamReset`], so a client that does not read the status
//! has its HTTP/2 stream reset instead of holding it open.

use std::{
    collections::VecDeque,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard, OnceLock,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    task::{Context, Poll, Waker},
    time::Duration,
};

use bytes::Bytes;
use tokio::sync::Notify;
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

/// A gRPC message's prefix: the compression flag and the length (gRPC over HTTP/2,
/// "Length-Prefixed-Message").
pub const PREFIX_BYTES: usize = 5;

/// An encoded message behind its gRPC prefix, ready to be a DATA frame's payload as it is. A
/// fan-out frames its message once and queues the same bytes for every member, so the
/// response body of a member with one message waiting sends them without a copy.
#[derive(Debug, Clone)]
pub struct Framed(Bytes);

impl Framed {
    pub fn new(message: &[u8]) -> Framed {
        let mut framed = Vec::with_capacity(PREFIX_BYTES + message.len());
        framed.push(0);
        // A message is far below 4 GiB (bounded by max_frame_bytes or the queue's bytes).
        let len = u32::try_from(message.len()).unwrap_or(u32::MAX);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(message);
        Framed(Bytes::from(framed))
    }

    /// The message without its prefix: what the queue's byte bound counts.
    fn message_len(&self) -> usize {
        self.0.len() - PREFIX_BYTES
    }
}

/// The messages waiting for the response stream, and how to wake it. One lock per delivery and
/// one per drain (however many messages it takes), in place of a channel's semaphore, block
/// list and second waker for `fatal`.
#[derive(Debug, Default)]
struct Queue {
    messages: VecDeque<Framed>,
    bytes: usize,
    /// The response stream's waker, kept between waits so a wake-up does not clone it.
    waker: Option<Waker>,
    /// The response stream waits on `waker` for a message or an end.
    waiting: bool,
    /// The response stream finished (or was dropped): deliveries are refused.
    closed: bool,
}

impl Queue {
    fn wake(&mut self) {
        if std::mem::take(&mut self.waiting)
            && let Some(waker) = &self.waker
        {
            waker.wake_by_ref();
        }
    }
}

#[derive(Debug)]
struct Shared {
    queue: Mutex<Queue>,
    max_messages: usize,
    max_bytes: usize,
    fatal: OnceLock<Fatal>,
    /// Live [`SessionTx`] clones; the stream ends cleanly after its backlog when none is left.
    senders: AtomicUsize,
    /// The transport's reset switch for this stream (absent outside the server's transport).
    reset: Option<Arc<StreamReset>>,
    /// Set when the transport drops the response stream.
    finished: AtomicBool,
    finished_notify: Notify,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding the lock leaves a consistent queue (no step is half done).
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn end(&self, fatal: Fatal) {
        let at_once = !fatal.drains_first();
        // Set before the lock is taken: a stream that locks after this sees it, one that
        // locked before registered its waker, which is woken here.
        if self.fatal.set(fatal).is_ok() {
            self.queue().wake();
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
#[derive(Debug)]
pub struct SessionTx {
    shared: Arc<Shared>,
}

impl Clone for SessionTx {
    fn clone(&self) -> SessionTx {
        self.shared.senders.fetch_add(1, Ordering::Relaxed);
        SessionTx {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for SessionTx {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.queue().wake();
        }
    }
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
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            max_messages: capacity.max(1),
            max_bytes,
            fatal: OnceLock::new(),
            senders: AtomicUsize::new(1),
            reset,
            finished: AtomicBool::new(false),
            finished_notify: Notify::new(),
        });
        let stream = OutboundStream {
            shared: shared.clone(),
            done: false,
            permit: None,
            uncounted: 0,
        };
        (SessionTx { shared }, stream)
    }

    /// Queues `message` without waiting.
    pub fn try_deliver(&self, message: Bytes) -> Delivery {
        self.try_deliver_framed(&Framed::new(&message))
    }

    /// Queues a message framed once for all its recipients, without waiting.
    pub fn try_deliver_framed(&self, message: &Framed) -> Delivery {
        if self.is_ended() {
            return Delivery::Closed;
        }
        let mut queue = self.shared.queue();
        if queue.closed {
            return Delivery::Closed;
        }
        // An empty queue takes any one message, so a single large one is not a slow consumer.
        if !queue.messages.is_empty()
            && (queue.messages.len() >= self.shared.max_messages
                || queue.bytes + message.message_len() > self.shared.max_bytes)
        {
            return Delivery::Full;
        }
        queue.bytes += message.message_len();
        queue.messages.push_back(message.clone());
        queue.wake();
        Delivery::Sent
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

/// What [`OutboundStream::poll_drain`] did.
#[derive(Debug)]
pub enum Drained {
    /// It handed over one or more messages; more may be queued.
    Messages,
    /// The stream ends after what was handed over before: with this status, or cleanly.
    End(Option<Status>),
}

/// The response body of one `ChatStream` call.
#[derive(Debug)]
pub struct OutboundStream {
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

impl Drop for OutboundStream {
    fn drop(&mut self) {
        self.flush_count();
        if !self.done {
            self.close();
        }
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

    /// Refuses further deliveries and drops what is queued (now, not when the transport drops
    /// the stream).
    fn close(&mut self) {
        let backlog = {
            let mut queue = self.shared.queue();
            queue.closed = true;
            queue.bytes = 0;
            queue.waker = None;
            std::mem::take(&mut queue.messages)
        };
        drop(backlog);
    }

    /// Ends the stream, with the status of `fatal` if there is one.
    fn finish(&mut self) -> Drained {
        self.flush_count();
        self.done = true;
        self.close();
        Drained::End(self.shared.fatal.get().map(Status::from))
    }

    /// Hands queued messages (framed) to `put`, oldest first, until `budget` bytes of them were
    /// handed over (at least one) or the queue is empty; all under one lock.
    pub fn poll_drain(
        &mut self,
        cx: &mut Context<'_>,
        budget: usize,
        mut put: impl FnMut(Bytes),
    ) -> Poll<Drained> {
        if self.done {
            return Poll::Ready(Drained::End(None));
        }
        let fatal = self.shared.fatal.get();
        if fatal.is_some_and(|f| !f.drains_first()) {
            return Poll::Ready(self.finish());
        }
        let mut queue = self.shared.queue();
        let mut taken = 0;
        let mut count = 0;
        let mut counted = 0;
        while taken < budget
            && let Some(message) = queue.messages.pop_front()
        {
            taken += message.0.len();
            counted += message.message_len();
            count += 1;
            put(message.0);
        }
        if count > 0 {
            queue.bytes -= counted;
            let emptied = queue.messages.is_empty();
            drop(queue);
            self.uncounted += count;
            if emptied || self.uncounted >= COUNT_BATCH {
                self.flush_count();
            }
            return Poll::Ready(Drained::Messages);
        }
        // Empty: every sender gone (the session ended) or a draining end reached its end.
        if self.shared.senders.load(Ordering::Acquire) == 0 || self.shared.fatal.get().is_some() {
            drop(queue);
            return Poll::Ready(self.finish());
        }
        if !queue
            .waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            queue.waker = Some(cx.waker().clone());
        }
        queue.waiting = true;
        drop(queue);
        self.flush_count();
        Poll::Pending
    }
}

impl Stream for OutboundStream {
    type Item = Result<Bytes, Status>;

    /// One message at a time, without its prefix (the route drains several at once, framed,
    /// with `poll_drain`).
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let mut message = None;
        match this.poll_drain(cx, 1, |m| message = Some(m.slice(PREFIX_BYTES..))) {
            Poll::Ready(Drained::Messages) => Poll::Ready(message.map(Ok)),
            Poll::Ready(Drained::End(status)) => Poll::Ready(status.map(Err)),
            Poll::Pending => Poll::Pending,
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

    /// The stream waits (registering its waker) for each of these in turn: a delivery, the
    /// last sender going.
    #[tokio::test]
    async fn a_waiting_stream_is_woken_by_a_delivery_and_by_its_last_sender_going() {
        let (tx, mut stream) = SessionTx::channel(4, 1 << 20, None);
        let second = tx.clone();
        let waiter = tokio::spawn(async move {
            let first = stream.next().await;
            let end = stream.next().await;
            (first, end)
        });
        tokio::task::yield_now().await;
        assert_eq!(tx.try_deliver(Bytes::from_static(b"hi")), Delivery::Sent);
        drop(tx);
        tokio::task::yield_now().await;
        drop(second);
        let (first, end) = tokio::time::timeout(std::time::Duration::from_secs(2), waiter)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(first.unwrap().unwrap(), "hi");
        assert!(end.is_none(), "a clean end once every sender is gone");
    }

    #[tokio::test]
    async fn a_closed_stream_refuses_deliveries_and_frees_its_backlog() {
        let (tx, stream) = SessionTx::channel(4, 1 << 20, None);
        let message = Framed::new(&[b'x'; 100]);
        assert_eq!(tx.try_deliver_framed(&message), Delivery::Sent);
        assert!(!message.0.is_unique(), "queued: the same bytes, not a copy");
        drop(stream);
        assert!(message.0.is_unique(), "the backlog went with the stream");
        assert_eq!(tx.try_deliver_framed(&message), Delivery::Closed);
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
