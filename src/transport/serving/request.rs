//! What a stream's reader, its handler and its pump share ([`StreamSide`]): whether anyone is
//! reading the request now, which decides who watches for the client's reset (the reader, or
//! the pump), and the switch that has the stream reset when it is ended without its status
//! being read; and the request's body as the route reads it.

use std::{
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Waker, ready},
};

use bytes::Bytes;
use h2::RecvStream;
use hyper::body::{Body, Frame, SizeHint};

/// One stream's shared state: whether its request is still being read (its [`RequestBody`]
/// tells), and its reset switch (armed by the handler through [`StreamSide::arm`]), both looked
/// at by its [`super::Pump`]. One allocation for both, next to each other: the pump reads them
/// each time it runs, and a line that was not in cache costs more than what it does there.
///
/// While the request is read, a client's RST_STREAM reaches the stream through the request
/// body (its reader gets the error and ends the session, which ends the response), so the pump
/// does not also register with h2 for resets. That registration costs a lock on h2's streams
/// each time the pump waits, and h2 also uses it to tell of send capacity: the capacity asked
/// for each DATA frame woke the stream once more per message (measured: 0.1 µs of 1.2 µs per
/// delivery at 200,000 deliveries/s over 40 connections). Once the request has ended, or its
/// reader let go of it, and while the reader pauses (it holds a request it has taken, waiting
/// on its request budget), the pump is woken to watch for resets itself: h2 keeps data that
/// arrived before a reset and hands it out first, so a paused reader would see the reset only
/// after its pause (minutes with a low `session.requests_per_sec`).
#[derive(Debug, Default)]
pub struct StreamSide {
    ended: AtomicBool,
    paused: AtomicBool,
    /// The stream is to be reset unless it finishes within [`super::RESET_GRACE`].
    armed: AtomicBool,
    /// The pump's waker, woken by reference: it stays registered across pauses, so the pump
    /// registers once rather than on every wait.
    pump: Mutex<Option<Waker>>,
}

/// While held, the pump watches for the client's reset itself (see [`StreamSide::pause`]).
#[derive(Debug)]
pub struct Paused(Arc<StreamSide>);

impl Drop for Paused {
    fn drop(&mut self) {
        self.0.paused.store(false, Ordering::Release);
    }
}

impl StreamSide {
    /// Whether the reader is reading the request now (the pump may leave resets to it).
    pub(super) fn is_read(&self) -> bool {
        !self.ended.load(Ordering::Acquire) && !self.paused.load(Ordering::Acquire)
    }

    /// Registers the pump's waker; the caller looks at [`Self::is_armed`] and [`Self::is_read`]
    /// afterwards (a change made before this lock was taken woke no one).
    pub(super) fn register(&self, waker: &Waker) {
        *self.waker_slot() = Some(waker.clone());
    }

    /// The reader stops polling the body until the guard is dropped: the pump is woken to watch
    /// for resets meanwhile.
    pub fn pause(self: &Arc<Self>) -> Paused {
        self.paused.store(true, Ordering::Release);
        self.wake_pump();
        Paused(self.clone())
    }

    /// Has the stream reset unless it finishes within [`super::RESET_GRACE`] (the handler ended
    /// it without waiting for its backlog: a client that does not read its status is cut).
    /// Idempotent. The grace runs from the pump's first look at the switch: armed before the
    /// stream's response was ready (its handler still running), it starts with the pump, so a
    /// handler is to arm only once it has nothing left to wait for (as `ChatStream` does).
    pub fn arm(&self) {
        if !self.armed.swap(true, Ordering::AcqRel) {
            self.wake_pump();
        }
    }

    pub fn is_armed(&self) -> bool {
        self.armed.load(Ordering::Acquire)
    }

    fn end(&self) {
        if !self.ended.swap(true, Ordering::AcqRel) {
            self.wake_pump();
        }
    }

    fn wake_pump(&self) {
        if let Some(waker) = &*self.waker_slot() {
            waker.wake_by_ref();
        }
    }

    fn waker_slot(&self) -> MutexGuard<'_, Option<Waker>> {
        // A panic while holding it leaves a waker or none: either is consistent.
        self.pump.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A request's body: its DATA frames, each handed back to flow control as it is read (the
/// client may send as much again), then its trailers.
pub struct RequestBody {
    recv: RecvStream,
    data_done: bool,
    side: Arc<StreamSide>,
}

impl RequestBody {
    pub fn new(recv: RecvStream, side: Arc<StreamSide>) -> RequestBody {
        RequestBody {
            recv,
            data_done: false,
            side,
        }
    }

    fn poll_frame_inner(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if !self.data_done {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                None => self.data_done = true,
            }
        }
        match ready!(self.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(error) => Poll::Ready(Some(Err(error))),
        }
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        self.side.end();
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = self.get_mut();
        let frame = ready!(this.poll_frame_inner(cx));
        // The end, trailers or an error (a reset among them): nothing more comes this way.
        if !matches!(frame, Some(Ok(ref frame)) if frame.is_data()) {
            this.side.end();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
