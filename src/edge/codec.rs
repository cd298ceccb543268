//! The server's gRPC codec: requests are decoded with prost (into `proto::Message`, named by the
//! generated service), responses are [`Bytes`] already encoded by the room that produced them,
//! written out as they are. An undecodable request ends the stream with INVALID_ARGUMENT. Generic
//! over the request type so that this module does not import `proto`, which imports it.

use std::{fmt, marker::PhantomData};

use bytes::{Buf, BufMut, Bytes};
use prost::Message;
use tonic::{
    Status,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
};

/// Initial per-stream codec buffers. Chat messages are small and most sessions are idle, so start
/// small (tonic's default is 8 KiB each way); buffers grow for larger frames. Measured with
/// `chat-bench --scenario idle` (sessions multiplexed 50 per connection): 9.8 KB of server RSS
/// per session at 1 KiB, 8.2 KB at 256 bytes, 8.0 KB at 128 bytes.
const BUFFER_BYTES: usize = 128;
/// Bytes gathered into one write before the encoder yields to the transport. tonic's encode
/// buffer grows to about this plus one message and keeps that size while the stream lives (about
/// 33 KB per sender idle after a flood of 4 KB CHATs). 8 KiB would keep a quarter of that, but
/// cost fan-out capacity: `chat-bench --scenario fanout`, interleaved runs on one box, passed
/// 759,400 deliveries/s at p99 33–56 ms with 32 KiB and failed that step at p99 121–124 ms with
/// 8 KiB. The real fix is a response body without tonic's buffer (the write-path work).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// Encodes pre-encoded [`Bytes`], decodes `T` (the chat service's request message).
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
        RequestDecoder(PhantomData)
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

pub struct RequestDecoder<T>(PhantomData<fn() -> T>);

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
        BufferSettings::new(BUFFER_BYTES, YIELD_THRESHOLD)
    }
}
