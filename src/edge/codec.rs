//! The chat codec of a client that sends raw frames (the tests' wire client): messages are
//! decoded with prost into `T` (`proto::Message`) and an undecodable one is INVALID_ARGUMENT;
//! messages sent are [`Bytes`] already encoded, written as they are. The server itself decodes
//! requests with `edge::requests` and frames its responses in `route`. Generic over the decoded
//! type so that this module does not import `proto`.

use std::{fmt, marker::PhantomData};

use bytes::{Buf, BufMut, Bytes};
use prost::Message;
use tonic::{
    Status,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
};

/// Initial per-stream decode buffer. Chat messages are small and most sessions are idle, so
/// start small (tonic's default is 8 KiB); the buffer grows for larger frames. Measured with
/// `chat-bench --scenario idle` (sessions multiplexed 50 per connection): 9.8 KB of server RSS
/// per session at 1 KiB, 8.2 KB at 256 bytes, 8.0 KB at 128 bytes (both codec buffers then).
const BUFFER_BYTES: usize = 128;
/// The decode buffer starts empty: the first message sizes it. Its growth step (`buffer_size`)
/// serves only decompression, which the server refuses.
const REQUEST_BUFFER_BYTES: usize = 0;
/// Bytes gathered before tonic's encoder or decoder yields.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// Encodes pre-encoded [`Bytes`], decodes `T`.
pub struct ChatCodec<T>(PhantomData<fn() -> T>);

impl<T> Default for ChatCodec<T> {
    fn default() -> Self {
        ChatCodec(PhantomData)
    }
}

impl<T> fmt::Debug for ChatCodec<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChatCodec")
    }
}

impl<T: Message + Default + Send + 'static> Codec for ChatCodec<T> {
    type Encode = Bytes;
    type Decode = T;
    type Encoder = PreEncoded;
    type Decoder = RequestDecoder<T>;

    fn encoder(&mut self) -> PreEncoded {
        PreEncoded
    }

    fn decoder(&mut self) -> RequestDecoder<T> {
        RequestDecoder::default()
    }
}

#[derive(Debug, Clone, Copy)]
pub struct PreEncoded;

impl Encoder for PreEncoded {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(BUFFER_BYTES, YIELD_THRESHOLD)
    }
}

/// Decodes `T` (on the server, the chat service's request message).
pub struct RequestDecoder<T>(PhantomData<fn() -> T>);

impl<T> Default for RequestDecoder<T> {
    fn default() -> Self {
        RequestDecoder(PhantomData)
    }
}

impl<T> fmt::Debug for RequestDecoder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RequestDecoder")
    }
}

impl<T: Message + Default> Decoder for RequestDecoder<T> {
    type Item = T;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<T>, Status> {
        let len = src.remaining();
        T::decode(src)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("undecodable frame of {len} bytes: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(REQUEST_BUFFER_BYTES, YIELD_THRESHOLD)
    }
}
