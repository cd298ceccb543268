//! What a connection must do before it is served HTTP/2, all within `server.handshake_timeout_ms`:
//! finish TLS (when on) and send the HTTP/2 connection preface. A socket that stays silent is
//! closed at the timeout instead of holding a descriptor; a client speaking HTTP/1 gets a short
//! plain answer saying this server speaks gRPC over HTTP/2, then the connection is closed.
//!
//! The handshake runs on the runtime that accepted the connection, not on the actor thread that
//! will serve it: a TLS handshake costs a millisecond of CPU or more, which would hold up that
//! thread's rooms. The socket is then moved ([`Movable`], [`Handshaken::socket`]).

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::server::TlsStream;

/// The client connection preface every HTTP/2 connection starts with (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const NOT_HTTP2: &[u8] = b"HTTP/1.1 505 HTTP Version Not Supported\r\n\
content-type: text/plain\r\nconnection: close\r\ncontent-length: 47\r\n\r\n\
this is a gRPC server: HTTP/2 (h2 or h2c) only\n";

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("not HTTP/2 (no connection preface)")]
    NotHttp2,
    #[error("closed before the HTTP/2 preface")]
    Closed,
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Reads the HTTP/2 preface from `io` and returns `io` with the preface put back in front, for
/// h2 to read again. Bytes that cannot begin the preface are answered with a 505 at once.
pub async fn read_preface<IO>(mut io: IO) -> Result<Rewind<IO>, HandshakeError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut got = [0u8; PREFACE.len()];
    let mut filled = 0;
    while filled < PREFACE.len() {
        let n = io.read(&mut got[filled..]).await?;
        if n == 0 {
            return Err(HandshakeError::Closed);
        }
        if got[filled..filled + n] != PREFACE[filled..filled + n] {
            // Best effort: the client is told why, then the connection closes either way.
            let _ = io.write_all(NOT_HTTP2).await;
            let _ = io.shutdown().await;
            return Err(HandshakeError::NotHttp2);
        }
        filled += n;
    }
    Ok(Rewind {
        replay: PREFACE,
        inner: io,
    })
}

/// A connection past its handshake.
pub enum Handshaken {
    Plain(Rewind<Movable>),
    /// Boxed: rustls' connection state is large, and most connections are one kind.
    Tls(Box<Rewind<TlsStream<Movable>>>),
}

impl Handshaken {
    /// The TCP socket under the connection's layers.
    pub fn socket(&mut self) -> &mut Movable {
        match self {
            Handshaken::Plain(io) => &mut io.inner,
            Handshaken::Tls(io) => io.inner.get_mut().0,
        }
    }
}

/// A TCP socket that can move to another runtime's reactor between reads: [`Movable::detach`]
/// takes it off the reactor it is registered with, [`Movable::attach`] registers it with the
/// caller's. Detached, it reads and writes nothing (`NotConnected`).
#[derive(Debug)]
pub struct Movable(Option<TcpStream>);

impl Movable {
    pub fn new(tcp: TcpStream) -> Movable {
        Movable(Some(tcp))
    }

    pub fn detach(&mut self) -> io::Result<std::net::TcpStream> {
        match self.0.take() {
            Some(tcp) => tcp.into_std(),
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    /// Registers `socket` with the current runtime's reactor. What arrived meanwhile waits in
    /// the kernel and is reported on registration.
    pub fn attach(&mut self, socket: std::net::TcpStream) -> io::Result<()> {
        self.0 = Some(TcpStream::from_std(socket)?);
        Ok(())
    }

    fn tcp(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        match &mut self.0 {
            Some(tcp) => Ok(Pin::new(tcp)),
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }
}

impl AsyncRead for Movable {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().tcp()?.poll_read(cx, buf)
    }
}

impl AsyncWrite for Movable {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().tcp()?.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().tcp()?.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.as_ref().is_some_and(|tcp| tcp.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().tcp()?.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().tcp()?.poll_shutdown(cx)
    }
}

/// An IO that yields `replay` before reading from `inner`.
#[derive(Debug)]
pub struct Rewind<IO> {
    replay: &'static [u8],
    inner: IO,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Rewind<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.replay.is_empty() {
            let n = this.replay.len().min(buf.remaining());
            buf.put_slice(&this.replay[..n]);
            this.replay = &this.replay[n..];
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Rewind<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_preface_is_replayed_to_the_reader() {
        let (mut client, server) = tokio::io::duplex(256);
        client.write_all(PREFACE).await.unwrap();
        client.write_all(b"rest").await.unwrap();
        let mut io = read_preface(server).await.unwrap();
        let mut seen = vec![0u8; PREFACE.len() + 4];
        io.read_exact(&mut seen).await.unwrap();
        assert_eq!(&seen[..PREFACE.len()], PREFACE);
        assert_eq!(&seen[PREFACE.len()..], b"rest");
    }

    #[tokio::test]
    async fn http1_is_answered_and_refused_at_its_first_byte_that_differs() {
        let (mut client, server) = tokio::io::duplex(256);
        // Shorter than the preface: refused without waiting for more.
        client.write_all(b"GET /").await.unwrap();
        let refused = read_preface(server).await;
        assert!(matches!(refused, Err(HandshakeError::NotHttp2)));
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 505"), "{answer}");
        let body = answer.split("\r\n\r\n").nth(1).unwrap();
        let declared: usize = answer
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(body.len(), declared, "content-length matches the body");
    }
}
