//! Request bodies handed to tonic in small pieces, each gRPC frame's length checked from its
//! prefix before any of the frame is passed on.
//!
//! Pieces: tonic's request decoder copies every DATA frame whole into one buffer per stream and
//! never shrinks it, so a client that once sent 16 KiB frames (a sender posting 4 KB CHATs
//! quickly) leaves that stream holding a 32–64 KiB buffer for as long as it stays open. Cutting
//! frames into [`MAX_PIECE`]-byte slices (no copy: they share the frame's memory) bounds that
//! buffer by the largest message plus one piece. Measured with `chat-bench --scenario stall
//! --sessions 500` (a heap profile taken while the senders sat idle after the flood): their
//! decode buffers held 31 MB with whole frames (about 62 KB each), 3 MB in pieces of 2 KiB
//! (about 6 KB each).
//!
//! Frame lengths ([`FrameLimits`]): a frame over `server.max_frame_bytes` ends the stream with
//! RESOURCE_EXHAUSTED before its body is read. A frame longer than the largest request any room
//! accepts is still decoded (so that its sender hears `message_too_large` or `invalid_room`
//! in-band), but since tonic's buffer then keeps that size for the rest of the stream, the
//! stream first takes the frame's length from a server-wide budget of
//! [`LARGE_FRAMES`] × `max_frame_bytes` and holds it until it ends. A stream that finds the
//! budget spent is simply not read until bytes come back; frames any room accepts never wait.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use bytes::{Buf, Bytes};
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

/// Largest piece of a DATA frame given to the decoder at once.
pub const MAX_PIECE: usize = 2 * 1024;

/// Frames of `max_frame_bytes` the streams of one server may hold at once beyond the largest
/// request a room accepts (the bytes of 32 such frames: 32 MiB with the defaults).
pub const LARGE_FRAMES: usize = 32;

/// A gRPC frame starts with a compression flag and a big-endian u32 length.
const PREFIX_BYTES: usize = 5;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Acquiring = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// How long a request frame may be; shared by every stream of a server.
#[derive(Debug, Clone)]
pub struct FrameLimits {
    /// Longer frames end the stream.
    max_frame_bytes: usize,
    /// Frames up to this long pass freely; longer ones draw on `large_frames` first.
    free_bytes: usize,
    large_frames: Arc<Semaphore>,
}

impl FrameLimits {
    /// `free_bytes` (the largest request any room accepts) must not exceed `max_frame_bytes`.
    pub fn new(max_frame_bytes: usize, free_bytes: usize) -> FrameLimits {
        FrameLimits {
            max_frame_bytes,
            free_bytes: free_bytes.min(max_frame_bytes),
            large_frames: Arc::new(Semaphore::new(LARGE_FRAMES * max_frame_bytes)),
        }
    }

    /// Bytes of the large-frame budget no stream holds now.
    pub fn large_frame_bytes_free(&self) -> usize {
        self.large_frames.available_permits()
    }
}

/// `body`, its DATA frames cut into pieces of at most [`MAX_PIECE`] bytes, its gRPC frames'
/// lengths checked against [`FrameLimits`].
pub struct Rechunked<B> {
    body: B,
    /// What is left of the last DATA frame.
    rest: Bytes,
    limits: FrameLimits,
    framing: Framing,
    /// The large-frame bytes this stream holds: as many as its largest large frame, the size
    /// tonic's buffer keeps until the stream ends.
    held: Option<OwnedSemaphorePermit>,
    acquiring: Option<Acquiring>,
    /// A frame of this length is over the limit: the stream fails once the bytes before it
    /// are passed on.
    over: Option<usize>,
}

impl<B> Rechunked<B> {
    pub fn new(body: B, limits: FrameLimits) -> Rechunked<B> {
        Rechunked {
            body,
            rest: Bytes::new(),
            limits,
            framing: Framing::default(),
            held: None,
            acquiring: None,
            over: None,
        }
    }

    fn held_bytes(&self) -> usize {
        self.held
            .as_ref()
            .map_or(0, OwnedSemaphorePermit::num_permits)
    }

    /// Takes from the budget what the current frame needs beyond what the stream holds.
    fn poll_hold(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let more = self.framing.needs - self.held_bytes();
        let acquiring = self.acquiring.get_or_insert_with(|| {
            let more = u32::try_from(more).unwrap_or(u32::MAX);
            Box::pin(self.limits.large_frames.clone().acquire_many_owned(more))
        });
        let acquired = ready!(acquiring.as_mut().poll(cx));
        self.acquiring = None;
        // The semaphore is never closed: an error cannot happen.
        if let Ok(permit) = acquired {
            match &mut self.held {
                Some(held) => held.merge(permit),
                None => self.held = Some(permit),
            }
        }
        Poll::Ready(())
    }
}

impl<B> Body for Rechunked<B>
where
    B: Body + Unpin,
    B::Data: Into<Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if let Some(len) = this.over {
                let max = this.limits.max_frame_bytes;
                return Poll::Ready(Some(Err(Box::new(tonic::Status::resource_exhausted(
                    format!("a frame of {len} bytes is over server.max_frame_bytes ({max})"),
                )))));
            }
            if this.rest.is_empty() {
                match ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => this.rest = data.into(),
                        Err(frame) => {
                            return Poll::Ready(Some(Ok(
                                frame.map_data(|mut data| data.copy_to_bytes(data.remaining()))
                            )));
                        }
                    },
                    Some(Err(error)) => return Poll::Ready(Some(Err(error.into()))),
                    None => return Poll::Ready(None),
                }
                continue;
            }
            if this.framing.waits(this.held_bytes()) {
                ready!(this.poll_hold(cx));
            }
            let limit = this.rest.len().min(MAX_PIECE);
            let pass = match this
                .framing
                .scan(&this.rest[..limit], this.held_bytes(), &this.limits)
            {
                Scan::Pass(n) => n,
                Scan::Over { pass, len } => {
                    this.over = Some(len);
                    pass
                }
            };
            if pass > 0 {
                return Poll::Ready(Some(Ok(Frame::data(this.rest.split_to(pass)))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.over.is_none() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.body.size_hint();
        let rest = self.rest.len() as u64;
        let mut hint = SizeHint::new();
        hint.set_lower(inner.lower().saturating_add(rest));
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper.saturating_add(rest));
        }
        hint
    }
}

/// Where a request stream stands in its gRPC framing.
#[derive(Debug, Default)]
struct Framing {
    prefix: [u8; PREFIX_BYTES],
    /// Bytes of the current prefix seen so far.
    prefix_len: usize,
    /// Bytes of the current frame's body not yet passed on.
    body_left: usize,
    /// Large-frame bytes the stream must hold before the current body passes (0 for a frame
    /// any room accepts).
    needs: usize,
}

enum Scan {
    /// This many bytes may pass.
    Pass(usize),
    /// The bytes before a frame of `len`, over the limit, may pass; then the stream fails.
    Over { pass: usize, len: usize },
}

impl Framing {
    /// Whether the current frame's body waits for budget the stream does not hold yet.
    fn waits(&self, held: usize) -> bool {
        self.body_left > 0 && self.needs > held
    }

    /// Walks `bytes`, the next ones of the stream; returns how many of them may pass now. Stops
    /// before the body of a large frame until the stream holds its length.
    fn scan(&mut self, bytes: &[u8], held: usize, limits: &FrameLimits) -> Scan {
        let mut at = 0;
        while at < bytes.len() {
            if self.body_left > 0 {
                if self.needs > held {
                    break;
                }
                let take = self.body_left.min(bytes.len() - at);
                at += take;
                self.body_left -= take;
                continue;
            }
            // Where this prefix starts in `bytes` (0 when it started in an earlier piece).
            let start = at.saturating_sub(self.prefix_len);
            self.prefix[self.prefix_len] = bytes[at];
            self.prefix_len += 1;
            at += 1;
            if self.prefix_len < PREFIX_BYTES {
                continue;
            }
            self.prefix_len = 0;
            let [_, a, b, c, d] = self.prefix;
            let len = u32::from_be_bytes([a, b, c, d]) as usize;
            if len > limits.max_frame_bytes {
                return Scan::Over { pass: start, len };
            }
            self.body_left = len;
            self.needs = if len > limits.free_bytes { len } else { 0 };
        }
        Scan::Pass(at)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::{BodyExt, Full, StreamBody};
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;

    use super::*;

    fn frame(len: usize, fill: u8) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&(len as u32).to_be_bytes());
        out.extend(std::iter::repeat_n(fill, len));
        out
    }

    /// A body whose DATA frames are fed from the test, and the sender that feeds them.
    type Fed = StreamBody<ReceiverStream<Result<Frame<Bytes>, Infallible>>>;
    fn fed() -> (mpsc::Sender<Result<Frame<Bytes>, Infallible>>, Fed) {
        let (tx, rx) = mpsc::channel(64);
        (tx, StreamBody::new(ReceiverStream::new(rx)))
    }

    async fn read_all<B>(body: &mut Rechunked<B>) -> (Vec<u8>, Option<String>)
    where
        Rechunked<B>: Body<Data = Bytes, Error = BoxError> + Unpin,
    {
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    let piece = frame.into_data().unwrap();
                    assert!(!piece.is_empty() && piece.len() <= MAX_PIECE);
                    out.extend_from_slice(&piece);
                }
                Err(error) => return (out, Some(error.to_string())),
            }
        }
        (out, None)
    }

    #[tokio::test]
    async fn frames_come_out_in_pieces_with_every_byte_in_order() {
        let data: Vec<u8> = (0..(5 * MAX_PIECE + 7)).map(|i| i as u8).collect();
        let limits = FrameLimits::new(usize::MAX >> 8, usize::MAX >> 8);
        let mut body = Rechunked::new(Full::new(Bytes::from(data.clone())), limits);
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            let piece = frame.unwrap().into_data().unwrap();
            assert!(piece.len() <= MAX_PIECE);
            out.extend_from_slice(&piece);
        }
        assert_eq!(out, data);
        assert!(body.is_end_stream());
    }

    #[tokio::test]
    async fn prefixes_split_anywhere_are_read_right() {
        let stream: Vec<u8> = [frame(3, 1), frame(0, 2), frame(5000, 3), frame(40, 4)].concat();
        // Every way to cut the stream in two DATA frames, and cuts of every width.
        for cut in (0..stream.len()).step_by(7).chain(0..12) {
            let (tx, body) = fed();
            for part in [&stream[..cut], &stream[cut..]] {
                tx.send(Ok(Frame::data(Bytes::copy_from_slice(part))))
                    .await
                    .unwrap();
            }
            drop(tx);
            let mut body = Rechunked::new(body, FrameLimits::new(5000, 5000));
            assert_eq!(
                read_all(&mut body).await,
                (stream.clone(), None),
                "cut {cut}"
            );
        }
    }

    #[tokio::test]
    async fn a_frame_over_the_limit_fails_the_stream_after_the_frames_before_it() {
        let before = [frame(10, 1), frame(20, 2)].concat();
        let stream = [before.clone(), frame(101, 3)].concat();
        let (tx, body) = fed();
        tx.send(Ok(Frame::data(Bytes::from(stream)))).await.unwrap();
        let mut body = Rechunked::new(body, FrameLimits::new(100, 50));
        let (passed, error) = read_all(&mut body).await;
        assert_eq!(passed, before, "nothing of the long frame is passed on");
        let error = error.expect("the stream fails");
        assert!(error.contains("101 bytes"), "{error}");
        // Exactly the limit passes.
        let (tx, body) = fed();
        tx.send(Ok(Frame::data(Bytes::from(frame(100, 3)))))
            .await
            .unwrap();
        drop(tx);
        let mut body = Rechunked::new(body, FrameLimits::new(100, 50));
        assert_eq!(read_all(&mut body).await.1, None);
    }

    #[tokio::test]
    async fn large_frames_wait_for_the_budget_and_hold_it_until_the_stream_ends() {
        let limits = FrameLimits::new(1000, 100);
        let budget = LARGE_FRAMES * 1000;
        // Streams holding the whole budget: each took one full-size frame.
        let mut holders = Vec::new();
        for _ in 0..LARGE_FRAMES {
            let (tx, body) = fed();
            tx.send(Ok(Frame::data(Bytes::from(frame(1000, 1)))))
                .await
                .unwrap();
            let mut body = Rechunked::new(body, limits.clone());
            let mut passed = 0;
            while passed < PREFIX_BYTES + 1000 {
                passed += body
                    .frame()
                    .await
                    .unwrap()
                    .unwrap()
                    .into_data()
                    .unwrap()
                    .len();
            }
            holders.push((tx, body));
        }
        assert_eq!(limits.large_frame_bytes_free(), 0);
        // Small frames still pass on another stream; a large one waits after its prefix.
        let (tx, body) = fed();
        let stream = [frame(100, 2), frame(101, 3)].concat();
        tx.send(Ok(Frame::data(Bytes::from(stream)))).await.unwrap();
        let mut waiting = Rechunked::new(body, limits.clone());
        let mut passed = Vec::new();
        while passed.len() < 2 * PREFIX_BYTES + 100 {
            let piece = waiting.frame().await.unwrap().unwrap().into_data().unwrap();
            passed.extend_from_slice(&piece);
        }
        let next = tokio::time::timeout(std::time::Duration::from_millis(50), waiting.frame());
        assert!(next.await.is_err(), "the large frame's body waits");
        drop(holders.pop());
        let piece = waiting.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(piece.len(), 101);
        assert_eq!(limits.large_frame_bytes_free(), 1000 - 101);
        drop((waiting, tx, holders));
        assert_eq!(limits.large_frame_bytes_free(), budget);
    }
}
