//! The stalled clients of `--scenario stall`, on raw HTTP/2 (`h2`): each opens its stream, JOINs
//! its room, reads up to its JOINED and then never reads its stream again. In window mode its
//! connection is still read, so the stream's flow-control window closes for good and a RST_STREAM
//! from the server is seen the moment it arrives; in socket mode a [`Gate`] stops reading the
//! socket itself until the flood is over. Each stream records when and how it ended.
//!
//! tonic is not used here: a tonic stream that is never polled cannot tell that it was reset,
//! while h2's `SendStream::poll_reset` can, without reading (and so releasing) any data.

use std::{
    future::poll_fn,
    io,
    pin::Pin,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use anyhow::{Context as _, bail};
use atomic_waker::AtomicWaker;
use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};
use chatrooms::proto::{Kind, Message};
use h2::{RecvStream, SendStream, client::SendRequest};
use prost::Message as _;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::{Semaphore, watch},
    time::{self, Instant},
};

use crate::{
    cli::StallMode,
    wire::{JOIN_REF, join_as},
};

/// Bound on one TCP connect plus HTTP/2 handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// gRPC's length prefix: one flag byte (0, uncompressed) and a big-endian u32 length.
const GRPC_PREFIX: usize = 5;
/// The window a socket-mode client advertises: the largest HTTP/2 allows, so flow control never
/// holds the server back and only the socket (the kernel's buffers) does.
const HUGE_WINDOW: u32 = (1 << 31) - 1;
/// HTTP/2 starts every connection window at this and only lets it grow.
const DEFAULT_CONNECTION_WINDOW: u32 = 65_535;
/// Bound on reading what is left of a stream that was never reset (the drain at the end).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(3);

/// Stops a connection's socket reads while closed (socket mode); writes go on.
#[derive(Debug, Default)]
pub struct Gate {
    closed: AtomicBool,
    reader: AtomicWaker,
}

impl Gate {
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    pub fn open(&self) {
        self.closed.store(false, Ordering::Release);
        self.reader.wake();
    }
}

/// A socket whose reads wait while its [`Gate`] is closed: what a client that stops reading does
/// to the server, as the kernel's buffers fill and TCP's window closes.
struct Gated {
    tcp: TcpStream,
    gate: Arc<Gate>,
}

impl AsyncRead for Gated {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.gate.closed.load(Ordering::Acquire) {
            // Registered before reading the flag again: an `open` racing with this is seen or
            // wakes us.
            self.gate.reader.register(cx.waker());
            if self.gate.closed.load(Ordering::Acquire) {
                return Poll::Pending;
            }
        }
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Gated {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// One HTTP/2 connection carrying stalled streams.
pub struct StalledConn {
    client: SendRequest<Bytes>,
    pub gate: Arc<Gate>,
    authority: String,
}

/// Dials `host_port` and starts the connection's driver, which keeps reading the socket (through
/// the gate) and answering the server's PINGs and SETTINGS whatever the streams do.
pub async fn connect(
    host_port: &str,
    mode: StallMode,
    window: u32,
    streams: usize,
) -> anyhow::Result<StalledConn> {
    let (stream_window, connection_window) = match mode {
        // The connection window is every stream's own, so each stalled stream holds exactly its
        // window and none is starved by its neighbours.
        StallMode::Window => (
            window,
            window
                .saturating_mul(u32::try_from(streams).unwrap_or(u32::MAX))
                .clamp(DEFAULT_CONNECTION_WINDOW, HUGE_WINDOW),
        ),
        StallMode::Socket => (HUGE_WINDOW, HUGE_WINDOW),
    };
    let dial = async {
        let tcp = TcpStream::connect(host_port).await?;
        tcp.set_nodelay(true)?;
        let gate = Arc::new(Gate::default());
        let io = Gated {
            tcp,
            gate: gate.clone(),
        };
        let (client, connection) = h2::client::Builder::new()
            .initial_window_size(stream_window)
            .initial_connection_window_size(connection_window)
            .handshake::<_, Bytes>(io)
            .await
            .map_err(io::Error::other)?;
        tokio::spawn(async move {
            let _ = connection.await; // its end shows on every stream of it
        });
        Ok::<_, io::Error>(StalledConn {
            client,
            gate,
            authority: host_port.to_owned(),
        })
    };
    time::timeout(CONNECT_TIMEOUT, dial)
        .await
        .with_context(|| format!("connecting to {host_port} timed out"))?
        .with_context(|| format!("cannot connect to {host_port}"))
}

/// What one stalled stream saw.
#[derive(Debug, Default)]
pub struct StalledStream {
    pub joined: AtomicBool,
    /// When its end was seen while it was stalled (window mode), or once its socket was read
    /// again (socket mode).
    pub ended_at: OnceLock<Instant>,
    /// How it ended: `RST_STREAM CANCEL`, a status, a connection error, or still open.
    pub end: OnceLock<String>,
}

impl StalledStream {
    fn ended(&self, how: String, at: Option<Instant>) {
        if self.end.set(how).is_ok()
            && let Some(at) = at
        {
            let _ = self.ended_at.set(at);
        }
    }
}

/// One stalled client: open, JOIN, read up to JOINED, then wait without reading for the stream to
/// be reset. When `drain` turns true, a stream not ended yet is read to its end (bounded), so its
/// status (or that it is still open) is known.
pub async fn run_stalled(
    conn: Arc<StalledConn>,
    user: String,
    room: String,
    state: Arc<StalledStream>,
    opening: Arc<Semaphore>,
    mut drain: watch::Receiver<bool>,
) {
    let turn = opening.acquire().await;
    let opened = open(&conn, &user, &room).await;
    drop(turn);
    let (mut send, mut body) = match opened {
        Ok(stream) => stream,
        Err(error) => return state.ended(format!("failed to join: {error:#}"), None),
    };
    state.joined.store(true, Ordering::Release);
    tokio::select! {
        reset = poll_fn(|cx| send.poll_reset(cx)) => {
            return state.ended(describe_reset(reset), Some(Instant::now()));
        }
        _ = drain.wait_for(|drain| *drain) => {}
    }
    let how = match time::timeout(DRAIN_TIMEOUT, read_to_end(&mut body)).await {
        Ok(how) => how,
        Err(_) => "still open after the drain".to_owned(),
    };
    state.ended(how, None);
    // Held until here: dropping the request side would half-close (or reset) the stream.
    drop(send);
}

/// The stream's request, its JOIN, and its replies up to JOINED.
async fn open(
    conn: &StalledConn,
    user: &str,
    room: &str,
) -> anyhow::Result<(SendStream<Bytes>, RecvStream)> {
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri(format!(
            "http://{}/chat.v1.ChatService/ChatStream",
            conn.authority
        ))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(())?;
    let mut client = conn.client.clone().ready().await?;
    let (response, mut send) = client.send_request(request, false)?;
    send.send_data(grpc_frame(&join_as(user, room)), false)?;
    let response = response.await?;
    if let Some(status) = response.headers().get("grpc-status") {
        bail!("refused with grpc-status {status:?}");
    }
    let mut body = response.into_body();
    let mut buffer = BytesMut::new();
    loop {
        let Some(chunk) = body.data().await else {
            bail!("the stream ended before JOINED");
        };
        let chunk = chunk?;
        // Read, so given back: the window closes only once the client stops reading.
        let _ = body.flow_control().release_capacity(chunk.len());
        buffer.extend_from_slice(&chunk);
        while let Some(reply) = take_message(&mut buffer)? {
            match reply.kind() {
                Kind::Joined if reply.room == room => return Ok((send, body)),
                Kind::Error if reply.r#ref == JOIN_REF => {
                    bail!("JOIN refused: {} {}", reply.code, reply.content)
                }
                _ => {}
            }
        }
    }
}

/// Reads a stream to its end and says how it ended.
async fn read_to_end(body: &mut RecvStream) -> String {
    while let Some(chunk) = body.data().await {
        match chunk {
            Ok(chunk) => {
                let _ = body.flow_control().release_capacity(chunk.len());
            }
            Err(error) => return describe_error(&error),
        }
    }
    match body.trailers().await {
        Ok(Some(trailers)) => match trailers.get("grpc-status") {
            Some(status) => format!(
                "status {} (trailers, after the drain)",
                status.to_str().unwrap_or("?")
            ),
            None => "trailers without grpc-status".to_owned(),
        },
        Ok(None) => "ended without trailers".to_owned(),
        Err(error) => describe_error(&error),
    }
}

fn describe_reset(reset: Result<h2::Reason, h2::Error>) -> String {
    match reset {
        Ok(reason) => format!("RST_STREAM {reason:?}"),
        Err(error) => describe_error(&error),
    }
}

fn describe_error(error: &h2::Error) -> String {
    match error.reason() {
        Some(reason) if error.is_reset() => format!("RST_STREAM {reason:?}"),
        Some(reason) if error.is_go_away() => format!("GOAWAY {reason:?}"),
        _ => format!("connection error: {error}"),
    }
}

/// `message` as one gRPC length-prefixed frame.
fn grpc_frame(message: &Message) -> Bytes {
    let len = message.encoded_len();
    let mut frame = BytesMut::with_capacity(GRPC_PREFIX + len);
    frame.put_u8(0);
    // A request is a few hundred bytes, far below u32::MAX.
    frame.put_u32(len as u32);
    // unwrap: the buffer was sized for the message
    message.encode(&mut frame).unwrap();
    frame.freeze()
}

/// The next whole gRPC message in `buffer`, if one is there.
fn take_message(buffer: &mut BytesMut) -> anyhow::Result<Option<Message>> {
    if buffer.len() < GRPC_PREFIX {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buffer[1], buffer[2], buffer[3], buffer[4]]) as usize;
    if buffer.len() < GRPC_PREFIX + len {
        return Ok(None);
    }
    if buffer[0] != 0 {
        bail!("a compressed reply, which the generator never asks for");
    }
    buffer.advance(GRPC_PREFIX);
    let body = buffer.split_to(len);
    Ok(Some(Message::decode(body)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_even_when_split() {
        let join = join_as("stall-7", "bench-stall-7");
        let frame = grpc_frame(&join);
        let mut buffer = BytesMut::from(&frame[..3]);
        assert!(take_message(&mut buffer).unwrap().is_none());
        buffer.extend_from_slice(&frame[3..]);
        buffer.extend_from_slice(&frame[..GRPC_PREFIX + 1]);
        assert_eq!(take_message(&mut buffer).unwrap(), Some(join));
        assert!(take_message(&mut buffer).unwrap().is_none());
        assert_eq!(
            buffer.len(),
            GRPC_PREFIX + 1,
            "the next frame's start is kept"
        );
    }
}
