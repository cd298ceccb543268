//! The request side of a `ChatStream`: gRPC frames taken from the HTTP/2 body and decoded with
//! prost, in place of tonic's `Streaming`. tonic copies every piece of the body into one buffer
//! per stream and keeps that buffer at its largest for the stream's life: each sender that once
//! posted a 4 KB CHAT held ~5 KB from then on (10 MB for the 2,000 idle senders after
//! `chat-bench --scenario stall`). Here a frame that arrives whole is decoded where it lies, and
//! only a frame that comes in pieces is gathered, into a buffer of its own size that goes as
//! soon as the frame is decoded: an idle stream holds no buffer. Errors are tonic's (codes and
//! texts), so clients see what they saw before.
//!
//! Generic over the decoded type, like [`super::codec`], so that this module does not import
//! `proto`.

use std::{
    marker::PhantomData,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::{Buf, Bytes, BytesMut};
use hyper::body::Body as _;
use prost::Message;
use tokio_stream::Stream;
use tonic::{Code, Status, body::Body};

/// A gRPC frame starts with a compression flag and a big-endian u32 length.
const PREFIX_BYTES: usize = 5;

/// The decoded requests of one stream, in order; the first error ends it.
pub struct RequestStream<T> {
    body: Body,
    /// The part of the last DATA chunk not taken yet.
    rest: Bytes,
    /// A frame that came in pieces, gathered so far (prefix included); empty between frames.
    partial: BytesMut,
    max_message_bytes: usize,
    ended: bool,
    _decodes: PhantomData<fn() -> T>,
}

impl<T> RequestStream<T> {
    /// Requests of `body`; a message over `max_message_bytes` ends the stream (OUT_OF_RANGE).
    pub fn new(body: Body, max_message_bytes: usize) -> RequestStream<T> {
        RequestStream {
            body,
            rest: Bytes::new(),
            partial: BytesMut::new(),
            max_message_bytes,
            ended: false,
            _decodes: PhantomData,
        }
    }
}

impl<T: Message + Default> RequestStream<T> {
    /// The next whole frame's message from what has arrived, if there is one.
    fn next_message(&mut self) -> Result<Option<T>, Status> {
        if self.partial.is_empty() {
            let Some(len) = self.frame_len(&self.rest)? else {
                self.gather(PREFIX_BYTES);
                return Ok(None);
            };
            if self.rest.len() >= PREFIX_BYTES + len {
                let frame = self.rest.split_to(PREFIX_BYTES + len);
                return decode(&frame[PREFIX_BYTES..]).map(Some);
            }
            self.gather(PREFIX_BYTES + len);
            return Ok(None);
        }
        // Complete the prefix first, then the frame it announces.
        if self.partial.len() < PREFIX_BYTES {
            let take = (PREFIX_BYTES - self.partial.len()).min(self.rest.len());
            self.partial.extend_from_slice(&self.rest.split_to(take));
        }
        let Some(len) = self.frame_len(&self.partial)? else {
            return Ok(None);
        };
        if self.partial.capacity() < PREFIX_BYTES + len {
            // Gathered before its length was known: sized to the frame now, not doubled.
            let mut sized = BytesMut::with_capacity(PREFIX_BYTES + len);
            sized.extend_from_slice(&self.partial);
            self.partial = sized;
        }
        let missing = PREFIX_BYTES + len - self.partial.len();
        let take = missing.min(self.rest.len());
        self.partial.extend_from_slice(&self.rest.split_to(take));
        if take < missing {
            return Ok(None);
        }
        let frame = std::mem::take(&mut self.partial);
        decode(&frame[PREFIX_BYTES..]).map(Some)
    }

    /// Keeps what is left of the chunk (the start of a frame) for the next one, in a buffer of
    /// `wanted` bytes (the frame, or its prefix while its length is unknown).
    fn gather(&mut self, wanted: usize) {
        if !self.rest.is_empty() {
            self.partial = BytesMut::with_capacity(wanted);
            self.partial
                .extend_from_slice(&std::mem::take(&mut self.rest));
        }
    }

    /// The length `bytes` announce, once their prefix is there; its flag and length checked.
    fn frame_len(&self, bytes: &[u8]) -> Result<Option<usize>, Status> {
        let Some(prefix) = bytes.get(..PREFIX_BYTES) else {
            return Ok(None);
        };
        match prefix[0] {
            0 => {}
            // The route refuses every grpc-encoding but identity.
            1 => {
                return Err(Status::internal(
                    "protocol error: received message with compressed-flag but no grpc-encoding \
                     was specified",
                ));
            }
            flag => {
                return Err(Status::internal(format!(
                    "protocol error: received message with invalid compression flag: {flag} \
                     (valid flags are 0 and 1), while sending request"
                )));
            }
        }
        let len = (&prefix[1..]).get_u32() as usize;
        if len > self.max_message_bytes {
            return Err(Status::out_of_range(format!(
                "Error, decoded message length too large: found {len} bytes, the limit is: {} \
                 bytes",
                self.max_message_bytes
            )));
        }
        Ok(Some(len))
    }
}

fn decode<T: Message + Default>(bytes: &[u8]) -> Result<T, Status> {
    T::decode(bytes).map_err(|e| {
        Status::invalid_argument(format!("undecodable frame of {} bytes: {e}", bytes.len()))
    })
}

impl<T: Message + Default> Stream for RequestStream<T> {
    type Item = Result<T, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            match this.next_message() {
                Ok(Some(message)) => return Poll::Ready(Some(Ok(message))),
                Ok(None) => {}
                Err(status) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(status)));
                }
            }
            match ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    // Trailers end nothing: the body's end does.
                    if let Ok(data) = frame.into_data() {
                        this.rest = data;
                    }
                }
                // A client that cancels its call ends its requests, as a half-close would.
                Some(Err(status)) if status.code() == Code::Cancelled => {
                    this.ended = true;
                    return Poll::Ready(None);
                }
                Some(Err(status)) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(status)));
                }
                None => {
                    this.ended = true;
                    if this.partial.is_empty() && this.rest.is_empty() {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Err(Status::internal(
                        "Unexpected EOF decoding stream.",
                    ))));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
