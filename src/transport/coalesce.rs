//! Flush consolidation for an accepted connection (Netty's `FlushConsolidationHandler`, in
//! tokio terms). h2 flushes after every DATA frame of 256 bytes or more (it hands the payload
//! to a vectored write instead of copying it) and at the end of every poll, so a connection
//! whose streams each queue one chat message would make one `writev` per message.
//! [`Coalesced`] takes h2's writes into a buffer of its own and answers h2's flushes at once;
//! the connection's driver ([`super::streams`]) ends each pass over the connection by asking
//! for a real flush through the [`FlushGate`], and a buffer that reaches [`WRITE_AT`] bytes is
//! written at once. Every frame one pass produces leaves in one write.

use std::{
    io::{self, IoSlice},
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Held bytes that are written at once, without waiting for the end of the pass: a burst (a
/// history replay, large messages) goes out in writes of about this size.
pub const WRITE_AT: usize = 64 * 1024;
/// The buffer's first allocation; it grows up to [`WRITE_AT`] plus one write and is freed once
/// written out, so an idle connection holds none.
const FIRST_CAPACITY: usize = 8 * 1024;

/// A direct write of several slices up to this many bytes is copied into one (see
/// `poll_write_direct`); larger ones go out as they are, vectored.
const SEND_COPY_AT_MOST: usize = 2 * 1024;

/// Between a connection's [`Coalesced`] IO, inside h2, and the connection's driver.
#[derive(Debug, Default)]
pub struct FlushGate {
    /// The IO holds bytes a flush was asked for.
    holding: AtomicBool,
    /// The driver is making its end-of-pass flush: a flush now writes.
    now: AtomicBool,
    /// Writes pass straight through: a connection with one stream has no other stream's frames
    /// to wait for, and its pass then needs no second poll for the flush.
    direct: AtomicBool,
}

impl FlushGate {
    /// Whether this pass may hold flushes (the connection runs several streams) or writes
    /// go straight through.
    pub fn set_direct(&self, direct: bool) {
        self.direct.store(direct, Ordering::Release);
    }

    /// Whether the IO holds bytes that still need the end-of-pass flush.
    pub fn is_holding(&self) -> bool {
        self.holding.load(Ordering::Acquire)
    }

    /// Runs `flush` (a poll of the connection, whose end flushes the IO) with flushes writing.
    pub fn flushing<R>(&self, flush: impl FnOnce() -> R) -> R {
        self.now.store(true, Ordering::Release);
        let result = flush();
        self.now.store(false, Ordering::Release);
        result
    }
}

/// An IO whose writes are gathered and written once per pass of its connection's driver.
#[derive(Debug)]
pub struct Coalesced<T> {
    inner: T,
    /// Bytes h2 handed over and that are not yet written; `written` of them already are.
    pending: Vec<u8>,
    written: usize,
    gate: Arc<FlushGate>,
}

impl<T> Coalesced<T> {
    pub fn new(inner: T, gate: Arc<FlushGate>) -> Coalesced<T> {
        Coalesced {
            inner,
            pending: Vec::new(),
            written: 0,
            gate,
        }
    }

    fn hold(&mut self, bufs: &[IoSlice<'_>]) -> usize {
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        if self.pending.capacity() == 0 {
            self.pending = Vec::with_capacity(len.max(FIRST_CAPACITY));
        }
        for buf in bufs {
            self.pending.extend_from_slice(buf);
        }
        len
    }
}

impl<T: AsyncWrite + Unpin> Coalesced<T> {
    /// Writes out every held byte.
    fn poll_write_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let n = match Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => return Poll::Pending,
            };
            self.written += n;
        }
        self.pending = Vec::new();
        self.written = 0;
        self.gate.holding.store(false, Ordering::Release);
        Poll::Ready(Ok(()))
    }

    fn poll_hold(&mut self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        if self.pending.is_empty() && self.gate.direct.load(Ordering::Acquire) {
            return self.poll_write_direct(cx, bufs);
        }
        if self.pending.len() >= WRITE_AT {
            std::task::ready!(self.poll_write_held(cx))?;
        }
        Poll::Ready(Ok(self.hold(bufs)))
    }
}

impl<T: AsyncWrite + Unpin> Coalesced<T> {
    /// A small write goes out as one slice (copied together on the stack if h2 gave a frame
    /// head and its payload apart): a socket's plain write is a `send`, which skips the VFS
    /// layer a `writev` goes through (the iovec import, the file checks and notify hooks),
    /// about a twentieth of the server's CPU when every delivery is its own write.
    fn poll_write_direct(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut filled = bufs.iter().filter(|buf| !buf.is_empty());
        let (first, second) = (filled.next(), filled.next());
        let Some(first) = first else {
            return Poll::Ready(Ok(0));
        };
        let Some(second) = second else {
            return Pin::new(&mut self.inner).poll_write(cx, first);
        };
        let total: usize = bufs.iter().map(|buf| buf.len()).sum();
        if total > SEND_COPY_AT_MOST {
            return Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        }
        let mut joined = [0u8; SEND_COPY_AT_MOST];
        let mut len = 0;
        for buf in [first, second].into_iter().chain(filled) {
            joined[len..len + buf.len()].copy_from_slice(buf);
            len += buf.len();
        }
        Pin::new(&mut self.inner).poll_write(cx, &joined[..len])
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesced<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesced<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_hold(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_hold(cx, bufs)
    }

    /// Vectored, so that h2 hands over large payloads as they are instead of copying them
    /// into its own buffer first: they are copied once, here (or not at all when direct).
    fn is_write_vectored(&self) -> bool {
        true
    }

    /// Ready at once, holding the bytes, unless the driver ends its pass or [`WRITE_AT`]
    /// bytes are waiting: h2 flushes after every large frame, and the frames of the other
    /// streams woken with it are still to come in the same pass.
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.pending.is_empty() {
            return Pin::new(&mut self.inner).poll_flush(cx);
        }
        let hold =
            !self.gate.now.load(Ordering::Acquire) && !self.gate.direct.load(Ordering::Acquire);
        if self.pending.len() < WRITE_AT && hold {
            self.gate.holding.store(true, Ordering::Release);
            return Poll::Ready(Ok(()));
        }
        std::task::ready!(self.poll_write_held(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_write_held(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    /// Records every write it is asked for; `stuck` makes writes wait.
    #[derive(Default)]
    struct Recording {
        writes: Vec<Vec<u8>>,
        /// How many of `writes` were vectored.
        vectored: usize,
        stuck: bool,
    }

    impl AsyncWrite for Recording {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            if self.stuck {
                return Poll::Pending;
            }
            self.writes.push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }

        /// One write per call, like `writev`.
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            if self.stuck {
                return Poll::Pending;
            }
            let write: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            let len = write.len();
            self.writes.push(write);
            self.vectored += 1;
            Poll::Ready(Ok(len))
        }

        fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn cx() -> Context<'static> {
        Context::from_waker(Waker::noop())
    }

    /// What h2 does for one large DATA frame: the frame head and the payload, then a flush.
    fn frame(io: &mut Coalesced<Recording>, head: &[u8], payload: &[u8]) {
        let bufs = [IoSlice::new(head), IoSlice::new(payload)];
        let n = Pin::new(&mut *io).poll_write_vectored(&mut cx(), &bufs);
        assert!(matches!(n, Poll::Ready(Ok(n)) if n == head.len() + payload.len()));
        assert!(Pin::new(&mut *io).poll_flush(&mut cx()).is_ready());
    }

    #[test]
    fn flushes_within_a_pass_are_held_and_its_end_writes_once() {
        let gate = Arc::new(FlushGate::default());
        let mut io = Coalesced::new(Recording::default(), gate.clone());
        frame(&mut io, b"h1", b"payload-1");
        frame(&mut io, b"h2", b"payload-2");
        assert!(
            io.inner.writes.is_empty(),
            "h2's flushes between frames wait"
        );
        assert!(gate.is_holding());
        let flushed = gate.flushing(|| Pin::new(&mut io).poll_flush(&mut cx()));
        assert!(matches!(flushed, Poll::Ready(Ok(()))));
        assert_eq!(io.inner.writes, [b"h1payload-1h2payload-2".to_vec()]);
        assert!(!gate.is_holding());
        assert_eq!(
            io.pending.capacity(),
            0,
            "an idle connection holds no buffer"
        );
    }

    #[test]
    fn a_connection_with_one_stream_writes_straight_through() {
        let gate = Arc::new(FlushGate::default());
        gate.set_direct(true);
        let mut io = Coalesced::new(Recording::default(), gate.clone());
        frame(&mut io, b"h1", b"payload-1");
        assert_eq!(
            io.inner.writes,
            [b"h1payload-1".to_vec()],
            "written at once"
        );
        assert!(!gate.is_holding());
        assert_eq!(io.pending.capacity(), 0, "nothing copied");
    }

    #[test]
    fn a_small_direct_write_is_one_plain_write_and_a_large_one_stays_vectored() {
        let gate = Arc::new(FlushGate::default());
        gate.set_direct(true);
        let mut io = Coalesced::new(Recording::default(), gate.clone());
        frame(&mut io, b"h1", b"payload-1");
        frame(&mut io, b"", b"alone");
        assert_eq!(
            io.inner.writes,
            [b"h1payload-1".to_vec(), b"alone".to_vec()]
        );
        assert_eq!(io.inner.vectored, 0, "plain writes (`send`)");
        let large = vec![7u8; SEND_COPY_AT_MOST];
        frame(&mut io, b"h2", &large);
        assert_eq!(io.inner.writes.len(), 3);
        assert_eq!(io.inner.writes[2].len(), 2 + large.len());
        assert_eq!(io.inner.vectored, 1, "not copied");
    }

    #[test]
    fn a_full_buffer_is_written_without_waiting_for_the_end() {
        let gate = Arc::new(FlushGate::default());
        let mut io = Coalesced::new(Recording::default(), gate.clone());
        let payload = vec![7u8; 16 * 1024];
        for _ in 0..WRITE_AT / payload.len() {
            frame(&mut io, b"head", &payload);
        }
        assert_eq!(
            io.inner.writes.len(),
            1,
            "written once {WRITE_AT} bytes wait"
        );
        assert!(io.inner.writes[0].len() >= WRITE_AT);
        assert!(io.pending.is_empty());
    }

    #[test]
    fn a_write_that_waits_keeps_the_bytes_and_shutdown_writes_them() {
        let gate = Arc::new(FlushGate::default());
        let mut io = Coalesced::new(Recording::default(), gate.clone());
        frame(&mut io, b"h", b"held");
        io.inner.stuck = true;
        let flushed = gate.flushing(|| Pin::new(&mut io).poll_flush(&mut cx()));
        assert!(flushed.is_pending(), "the socket is full");
        assert!(gate.is_holding());
        io.inner.stuck = false;
        assert!(Pin::new(&mut io).poll_shutdown(&mut cx()).is_ready());
        assert_eq!(io.inner.writes, [b"hheld".to_vec()]);
    }
}
