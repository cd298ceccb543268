//! Request bodies handed to tonic in small pieces, each gRPC frame's length checked from its
//! prefix before any of the frame is passed on.
//!
//! Pieces: DATA frames are cut into [`MAX_PIECE`]-byte slices (no copy: they share the frame's
//! memory), and a frame's last piece is a copy. Both were for tonic's request decoder, which
//! copied every piece into one buffer per stream, kept at its largest, and took a last slice's
//! allocation over (`BytesMut::put`) when its own buffer was full — the whole buffer HTTP/2
//! read the frame into, tens of KiB, kept for the stream's life (45 MB for 2,000 idle senders
//! after `chat-bench --scenario stall`). The server's decoder (`edge::requests`) keeps nothing
//! between frames; the copy still means that what a reader holds while its session takes a
//! request (the rest of a piece) is never the only handle on HTTP/2's read buffer.
//!
//! Frame lengths ([`FrameLimits`]): a frame over `server.max_frame_bytes` ends the stream with
//! RESOURCE_EXHAUSTED before its body is read. A frame longer than the largest request any room
//! accepts is still decoded (so that its sender hears `message_too_large` or `invalid_room`
//! in-band), its length first taken from the large-frame budget (`frame_limits`); frames any
//! room accepts pass freely.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use bytes::{Buf, Bytes};
use hyper::body::{Body, Frame, SizeHint};

use super::frame_limits::Hold;
pub use super::frame_limits::{FrameLimits, LARGE_FRAMES};

/// Largest piece of a DATA frame given to the decoder at once.
pub const MAX_PIECE: usize = 2 * 1024;

/// A gRPC frame starts with a compression flag and a big-endian u32 length.
const PREFIX_BYTES: usize = 5;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `body`, its DATA frames cut into pieces of at most [`MAX_PIECE`] bytes, its gRPC frames'
/// lengths checked against [`FrameLimits`].
pub struct Rechunked<B> {
    body: B,
    /// What is left of the last DATA frame.
    rest: Bytes,
    limits: FrameLimits,
    framing: Framing,
    /// The large-frame bytes this stream holds while a large frame's body passes: its length,
    /// which the decoder gathers (unless another stream takes them back). Dropped, and the
    /// bytes given back, once the frame's last byte is passed on.
    hold: Option<Arc<Hold>>,
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
            hold: None,
            over: None,
        }
    }

    fn held_bytes(&self) -> usize {
        self.hold.as_ref().map_or(0, |hold| hold.bytes())
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
        if let Some(hold) = &this.hold
            && hold.taken(cx.waker())
        {
            return Poll::Ready(Some(Err(budget_taken())));
        }
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
                let more = this.framing.needs - this.held_bytes();
                if !this.limits.take(&mut this.hold, more) {
                    return Poll::Ready(Some(Err(budget_taken())));
                }
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
            if this.framing.large_body_passed() {
                // Its last bytes go out with this piece, and the decoder lets the frame go as
                // soon as it has decoded it, on this same poll.
                this.hold = None;
            }
            if pass > 0 {
                let piece = if pass == this.rest.len() {
                    // The last slice would be the read buffer's only handle (see the module doc).
                    let piece = Bytes::copy_from_slice(&this.rest);
                    this.rest = Bytes::new();
                    piece
                } else {
                    this.rest.split_to(pass)
                };
                return Poll::Ready(Some(Ok(Frame::data(piece))));
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

/// Why a stream whose large-frame bytes were taken back ends.
fn budget_taken() -> BoxError {
    Box::new(tonic::Status::resource_exhausted(
        "the large-frame budget this stream held was needed by another stream",
    ))
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
    /// Whether the current frame's body needs budget the stream does not hold yet.
    fn waits(&self, held: usize) -> bool {
        self.body_left > 0 && self.needs > held
    }

    /// Whether no large frame's body is under way (the last one, if any, has passed whole).
    fn large_body_passed(&self) -> bool {
        self.needs == 0 || self.body_left == 0
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
mod tests;
