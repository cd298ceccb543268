//! A message framed for gRPC once, for every member it goes to.

use bytes::Bytes;

/// A gRPC message's prefix: the compression flag and the length (gRPC over HTTP/2,
/// "Length-Prefixed-Message").
pub const PREFIX_BYTES: usize = 5;

/// An encoded message behind its gRPC prefix, ready to be a DATA frame's payload as it is. A
/// fan-out frames its message once and queues the same bytes for every member, so the
/// response body of a member with one message waiting sends them without a copy.
#[derive(Debug, Clone)]
pub struct Framed(pub(super) Bytes);

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
    pub(super) fn message_len(&self) -> usize {
        self.0.len() - PREFIX_BYTES
    }
}
