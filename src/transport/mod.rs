//! The HTTP/2 transport: accepting connections, the handshake, and serving gRPC on each with h2
//! ([`serving`]). It replaces tonic's own server loop (and hyper's HTTP/2 server) for what they
//! cannot do: end a stream on the
//! wire when the session ends it ([`serving::StreamSide::arm`]), bound what a connection may hold before it has
//! spoken HTTP/2 ([`handshake`]), survive running out of descriptors ([`accept`]), and write a
//! fan-out's frames for one connection together: the connection's task runs its streams
//! ([`streams`]), woken once per fan-out ([`wakes`]), and writes once per pass ([`coalesce`]).
//!
//! Connections are served on the actor threads (`Settings::threads`), once their handshake is
//! done on the runtime that accepted them. Connections are capped by `server.max_connections`
//! (accepting waits for a place) and per client IP by `server.max_connections_per_ip` (one over it is closed at once), each one
//! must finish TLS and send the HTTP/2 preface within `server.handshake_timeout_ms`, and only
//! gRPC requests (POST, `application/grpc*`) reach the services. Shutdown is in two steps: stop
//! accepting and ask every connection to finish (GOAWAY), then wait for them.

pub mod accept;
pub mod coalesce;
mod frame_limits;
pub mod handshake;
pub mod rechunk;
pub mod serving;
pub mod streams;
pub mod wakes;

use std::{
    future::Future,
    sync::Arc,
    task::{Context, Poll, Waker},
    time::Duration,
};

use bytes::Bytes;
use h2::{RecvStream, server::SendResponse};
use http_body_util::{Either, Full};
use hyper::{Request, Response, StatusCode, header};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Semaphore, watch},
};
use tonic::{body::Body, codegen::Service, service::Routes, transport::server::TcpConnectInfo};
use tracing::{debug, warn};

use self::{
    accept::{Acceptor, PerIp},
    coalesce::{Coalesced, FlushGate},
    handshake::{Handshaken, Movable, read_preface},
    rechunk::{FrameLimits, Rechunked},
    serving::{Http2Connection, RequestBody},
    streams::ConnectionStreams,
    wakes::Signal,
};

/// How a connection is served.
#[derive(Clone)]
pub struct Settings {
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub handshake_timeout: Duration,
    pub tcp_nodelay: bool,
    pub keepalive_interval: Option<Duration>,
    pub keepalive_timeout: Duration,
    pub max_concurrent_streams: u32,
    /// Bytes h2 may buffer per stream for sending; matched to the session's outbound queue.
    pub stream_send_buffer: usize,
    /// How long a request frame may be, and the budget of long ones.
    pub frames: FrameLimits,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// The actor threads, which serve the connections too (round-robin): a room's fan-out then
    /// wakes most connections on its own thread or in one batch per other thread, and a
    /// session's requests reach its actor on the same thread. `None`: the caller's runtime.
    pub threads: Option<crate::runtime::Arbiters>,
}

/// A route the connection calls itself, ahead of the router, for the paths it claims. Its
/// response body goes to h2 as it is: through the router it would be boxed and its errors
/// mapped three times over (tonic's body around axum's around tonic's), layers every DATA frame
/// of a long-lived stream passes through.
pub trait DirectRoute: Clone + Send + Sync + Unpin + 'static {
    type Body: hyper::body::Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static;

    /// Whether a request to `path` is this route's.
    fn claims(&self, path: &str) -> bool;

    fn call(
        &self,
        request: Request<Body>,
    ) -> impl Future<Output = Response<Self::Body>> + Send + 'static;
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a connection answers with: a direct route's body, or the router's.
pub type Reply<D> = Either<<D as DirectRoute>::Body, Body>;

/// What the client may send before we read it: per stream and per connection. Small on purpose:
/// a stream's reader takes one message at a time, so a larger window would only let a flooding
/// client park more bytes in the server.
const STREAM_RECEIVE_WINDOW: u32 = 64 * 1024;
const CONNECTION_RECEIVE_WINDOW: u32 = 512 * 1024;

/// Serves `routes` on `listener` until `stop` resolves, then asks every connection to finish and
/// waits for them. The caller bounds that wait (the shutdown grace).
pub async fn serve<D: DirectRoute>(
    listener: TcpListener,
    settings: Settings,
    routes: Routes,
    direct: D,
    stop: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let local = listener.local_addr()?;
    let routes = routes.prepare();
    let places = Arc::new(Semaphore::new(settings.max_connections));
    let (closing_tx, closing) = watch::channel(false);
    let mut acceptor = Acceptor::new(listener);
    let per_ip = PerIp::new(settings.max_connections_per_ip);
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            () = &mut stop => break,
            accepted = async {
                // unwrap: the semaphore is never closed.
                let place = places.clone().acquire_owned().await.unwrap();
                (place, acceptor.next().await)
            } => accepted,
        };
        let (place, (tcp, peer)) = match accepted {
            (place, Ok(accepted)) => (place, accepted),
            (_, Err(error)) => return Err(error),
        };
        let Some(ip_place) = per_ip.admit(peer.ip()) else {
            debug!(%peer, "connection closed: its IP holds max_connections_per_ip");
            continue;
        };
        let connection = Connection {
            settings: settings.clone(),
            routes: routes.clone(),
            direct: direct.clone(),
            info: TcpConnectInfo {
                local_addr: Some(local),
                remote_addr: Some(peer),
            },
        };
        let closing = closing.clone();
        let thread = settings
            .threads
            .as_ref()
            .map(|t| t.next_connection().clone());
        tokio::spawn(async move {
            // Here, on the runtime that accepted it: see `handshake`.
            let Some(mut io) = connection.handshake(tcp).await else {
                return;
            };
            let Some(thread) = thread else {
                connection.serve(io, closing).await;
                drop((place, ip_place));
                return;
            };
            // Moved to the actor thread's own reactor, so its readiness wakes that thread.
            let socket = match io.socket().detach() {
                Ok(socket) => socket,
                Err(error) => {
                    warn!(%peer, %error, "connection closed: cannot move it to an actor thread");
                    return;
                }
            };
            let spawned = thread.spawn(async move {
                match io.socket().attach(socket) {
                    Ok(()) => connection.serve(io, closing).await,
                    Err(error) => warn!(%peer, %error, "connection closed: cannot register it"),
                }
                drop((place, ip_place));
            });
            if !spawned {
                // Only once the actor system has stopped (shutdown): the connection is dropped.
                warn!(%peer, "connection closed: its actor thread has stopped");
            }
        });
    }
    drop(acceptor);
    let _ = closing_tx.send(true);
    // Every connection holds a place until it is gone.
    let all = u32::try_from(settings.max_connections).unwrap_or(u32::MAX);
    let _ = places.acquire_many(all).await;
    Ok(())
}

struct Connection<D> {
    settings: Settings,
    routes: Routes,
    direct: D,
    info: TcpConnectInfo,
}

impl<D: DirectRoute> Connection<D> {
    /// TLS (when on) and the HTTP/2 preface within the handshake timeout; `None` when the
    /// connection was closed instead.
    async fn handshake(&self, tcp: TcpStream) -> Option<Handshaken> {
        let peer = self.info.remote_addr;
        if let Err(error) = tcp.set_nodelay(self.settings.tcp_nodelay) {
            warn!(%error, "cannot set TCP_NODELAY");
        }
        let tcp = Movable::new(tcp);
        // Boxed: the connection's task keeps the size of its largest state for the
        // connection's life, and a TLS handshake (rustls' connection state, twice over while
        // the preface is read) is larger than serving; boxed, it is freed once done.
        let handshake = Box::pin(async {
            Ok::<_, HandshakeFailure>(match &self.settings.tls {
                Some(tls) => {
                    let tls = tls.accept(tcp).await?;
                    Handshaken::Tls(Box::new(read_preface(tls).await?))
                }
                None => Handshaken::Plain(read_preface(tcp).await?),
            })
        });
        match tokio::time::timeout(self.settings.handshake_timeout, handshake).await {
            Ok(Ok(io)) => Some(io),
            Ok(Err(error)) => {
                debug!(?peer, %error, "connection closed during the handshake");
                None
            }
            Err(_) => {
                debug!(?peer, "connection closed: no handshake within the timeout");
                None
            }
        }
    }

    /// Serves gRPC on a connection past its handshake until it ends.
    async fn serve(self, io: Handshaken, mut closing: watch::Receiver<bool>) {
        let peer = self.info.remote_addr;
        let io: Box<dyn Io> = match io {
            Handshaken::Plain(io) => Box::new(io),
            Handshaken::Tls(io) => io,
        };
        let answer = Answerer {
            routes: self.routes,
            direct: self.direct,
            info: self.info,
            frames: self.settings.frames.clone(),
        };
        let limits = serving::Limits {
            stream_receive_window: STREAM_RECEIVE_WINDOW,
            connection_receive_window: CONNECTION_RECEIVE_WINDOW,
            max_concurrent_streams: self.settings.max_concurrent_streams,
            stream_send_buffer: self.settings.stream_send_buffer,
            keepalive_interval: self.settings.keepalive_interval,
            keepalive_timeout: self.settings.keepalive_timeout,
        };
        let mut streams = ConnectionStreams::new();
        let gate = Arc::new(FlushGate::default());
        let io = Coalesced::new(io, gate.clone());
        let connection = Http2Connection::new(io, &limits, answer, streams.executor());
        tokio::pin!(connection);
        // The shutdown watch is polled only when it woke the task: polling its future takes
        // the watch's lock, shared by every connection, and a connection's task is woken for
        // every fan-out that reaches it.
        let shutdown = Arc::new(Signal::default());
        let shutdown_waker = Waker::from(shutdown.clone());
        let mut asked = std::pin::pin!(closing.wait_for(|closing| *closing));
        let mut asked_to_close = false;
        let result = std::future::poll_fn(|cx| {
            if !asked_to_close
                && shutdown.take(cx)
                && let Poll::Ready(changed) = asked
                    .as_mut()
                    .poll(&mut Context::from_waker(&shutdown_waker))
            {
                asked_to_close = true;
                if changed.is_ok() {
                    connection.as_mut().get_mut().graceful_shutdown();
                }
            }
            streams.poll_with(connection.as_mut(), &gate, cx)
        })
        .await;
        if let Err(error) = result {
            debug!(?peer, %error, "connection ended");
        }
    }
}

/// Answers a connection's requests: what is not gRPC is refused here, the direct route's go
/// to it, the rest to the router.
struct Answerer<D> {
    routes: Routes,
    direct: D,
    info: TcpConnectInfo,
    frames: FrameLimits,
}

impl<D: DirectRoute> serving::Answer for Answerer<D> {
    fn answer(
        &self,
        request: Request<RecvStream>,
        respond: SendResponse<Bytes>,
    ) -> impl Future<Output = ()> + Send + 'static {
        let mut routes = self.routes.clone();
        let direct = self.direct.clone();
        let info = self.info.clone();
        let frames = self.frames.clone();
        let side = Arc::new(serving::StreamSide::default());
        let request_side = side.clone();
        let respond_with: serving::Responding<Reply<D>> = Box::pin(async move {
            // Wrapped first, so that whatever becomes of the request, dropping it tells the
            // pump that nothing reads it any more.
            let shared = StreamSideExt(side.clone());
            let request = request.map(|body| RequestBody::new(body, side));
            if let Some(refusal) = refuse_non_grpc(&request) {
                return refusal.map(Either::Right);
            }
            let mut request = request.map(|body| Body::new(Rechunked::new(body, frames)));
            request.extensions_mut().insert(info);
            request.extensions_mut().insert(shared);
            if direct.claims(request.uri().path()) {
                return direct.call(request).await.map(Either::Left);
            }
            match routes.call(request).await {
                Ok(response) => response.map(Either::Right),
                Err(never) => match never {},
            }
        });
        serving::reply(respond, respond_with, request_side)
    }
}

/// A stream's shared side, for its handler: its reader says when it pauses
/// ([`serving::StreamSide::pause`]), its response arms the reset ([`serving::StreamSide::arm`]).
#[derive(Clone)]
pub struct StreamSideExt(pub Arc<serving::StreamSide>);

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

#[derive(Debug, thiserror::Error)]
enum HandshakeFailure {
    #[error("tls: {0}")]
    Tls(#[from] std::io::Error),
    #[error("{0}")]
    Preface(#[from] handshake::HandshakeError),
}

/// gRPC is POST with an `application/grpc` content type (gRPC over HTTP/2, "Requests"); anything
/// else gets the HTTP answer the spec names instead of being decoded as gRPC.
fn refuse_non_grpc<B>(request: &Request<B>) -> Option<Response<Body>> {
    let refuse = |status: StatusCode, text: &'static str| {
        let mut response = Response::new(Body::new(Full::new(Bytes::from_static(text.as_bytes()))));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain"),
        );
        if status == StatusCode::METHOD_NOT_ALLOWED {
            response
                .headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("POST"));
        }
        Some(response)
    };
    if request.method() != hyper::Method::POST {
        return refuse(StatusCode::METHOD_NOT_ALLOWED, "gRPC requests are POST\n");
    }
    let grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("application/grpc"))
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['+', ';']));
    if !grpc {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content-type must be application/grpc\n",
        );
    }
    None
}

#[cfg(test)]
mod tests;
