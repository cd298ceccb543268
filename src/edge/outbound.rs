//! A session's send handle and the response stream it feeds. [`SessionTx`] owns the one rule
//! about slow consumers: rooms `try_deliver` without waiting, and a queue full in messages or in
//! bytes is reported back so the room can drop the member. A [`Fatal`] set on the handle ends the
//! stream with its status, either at once or after the queue drains (shutdown); one that ends it
//! at once also arms the stream's reset ([`StreamSide::arm`]), so a client that does not read
//! the status has its HTTP/2 stream reset instead of holding it open.

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

pub use self::framed::{Framed, PREFIX_BYTES};
use crate::{error::Fatal, metrics, transport::serving::StreamSide};

mod framed;

/// What became of one delivery attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Sent,
    /// The queue is full: the member reads too slowly.
    Full,
    /// The stream is gone or already ended.
    Closed,
}

/// A queue that held more than this many messages at once gives the room back when it empties.
const SHRINK_ABOVE: usize = 64;
const SHRINK_TO: usize = 8;

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
    /// The transport's side of this stream, whose reset it arms (absent outside the server's
    /// transport).
    reset: Option<Arc<StreamSide>>,
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
        reset: Option<Arc<StreamSide>>,
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

impl OutboundStream {
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
        // Read again under the lock: an end at once set since the check above wins over the
        // backlog.
        if self.shared.fatal.get().is_some_and(|f| !f.drains_first()) {
            drop(queue);
            return Poll::Ready(self.finish());
        }
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
            // A burst grew the ring; an idle session should not keep it.
            if queue.messages.is_empty() && queue.messages.capacity() > SHRINK_ABOVE {
                queue.messages.shrink_to(SHRINK_TO);
            }
            drop(queue);
            // Counted when handed to the transport, so a client never sees a message the
            // counter does not include yet: one add per drain, not per message.
            metrics::get().delivered.increment(count as u64);
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
mod tests;
