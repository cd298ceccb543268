//! Serving gRPC on one HTTP/2 connection with h2 directly, in place of hyper's server. hyper's
//! per-stream pipe checks the stream for a reset twice per DATA frame it sends and asks h2 for
//! capacity twice, each a round trip through h2's stream store under its lock with a waker
//! registered; here a stream's [`Pump`] asks h2 about a client's reset only when it is about to
//! wait (and only once nothing reads the request, see [`StreamSide`]; the server's own reset
//! switch it reads from the side, one flag), and a frame costs one capacity request, one
//! capacity check and one `send_data`.
//!
//! What hyper's server did and this keeps: h2's settings (windows, frame and header list sizes,
//! the send buffer per stream, the reset-flood limits), keepalive PINGs with a timeout, a
//! graceful shutdown (GOAWAY, then the open streams finish), each stream's task run by the
//! connection ([`super::streams`]), a response without a body sent as headers alone, and a
//! stream reset by the client dropping its task (and with it the session's response).

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, Waker, ready},
    time::Duration,
};

use bytes::Bytes;
use h2::{
    Ping, PingPong, Reason, RecvStream,
    server::{Connection, Handshake, SendResponse},
};
use hyper::{body::Body, rt::Executor};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    time::{Instant, Sleep},
};
use tracing::debug;

pub use self::request::{Paused, RequestBody, StreamSide};
use super::streams::StreamExecutor;

mod request;

/// hyper's defaults, kept: a client's header block beyond 16 KiB is refused, and 1,024 streams
/// a client makes the server reset end the connection (ENHANCE_YOUR_CALM).
const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// h2's settings of a connection.
pub struct Limits {
    pub stream_receive_window: u32,
    pub connection_receive_window: u32,
    pub max_concurrent_streams: u32,
    /// Bytes h2 may buffer per stream for sending (the capacity a [`Pump`] waits for).
    pub stream_send_buffer: usize,
    pub keepalive_interval: Option<Duration>,
    pub keepalive_timeout: Duration,
}

/// What answers one request: called with each stream the client opens; the future it returns
/// is that stream's task.
pub trait Answer: Send + 'static {
    fn answer(
        &self,
        request: http::Request<RecvStream>,
        respond: SendResponse<Bytes>,
    ) -> impl Future<Output = ()> + Send + 'static;
}

enum State<IO> {
    Handshaking(Handshake<IO, Bytes>),
    Serving(Connection<IO, Bytes>),
}

/// One connection: the handshake's SETTINGS, then every stream the client opens answered by
/// `answer` in a task of the connection's own (`streams`), until the connection ends.
pub struct Http2Connection<IO, A> {
    state: State<IO>,
    answer: A,
    streams: StreamExecutor,
    keepalive: Option<KeepAlive>,
    keepalive_settings: Option<(Duration, Duration)>,
    keepalive_timeout: Duration,
    /// Set when the keepalive gave up: the connection ends then, flushed or not.
    abandon: Option<Pin<Box<Sleep>>>,
    /// `graceful_shutdown` was asked for before the handshake finished.
    closing: bool,
}

impl<IO, A> Http2Connection<IO, A>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    A: Answer,
{
    pub fn new(io: IO, limits: &Limits, answer: A, streams: StreamExecutor) -> Self {
        let mut h2 = h2::server::Builder::new();
        h2.initial_window_size(limits.stream_receive_window)
            .initial_connection_window_size(limits.connection_receive_window)
            .max_concurrent_streams(limits.max_concurrent_streams)
            .max_send_buffer_size(limits.stream_send_buffer)
            .max_header_list_size(MAX_HEADER_LIST_BYTES)
            .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS));
        Http2Connection {
            state: State::Handshaking(h2.handshake(io)),
            answer,
            streams,
            keepalive: None,
            keepalive_settings: limits
                .keepalive_interval
                .map(|interval| (interval, limits.keepalive_timeout)),
            keepalive_timeout: limits.keepalive_timeout,
            abandon: None,
            closing: false,
        }
    }

    /// Sends GOAWAY: no new streams; the connection ends once the open ones have.
    pub fn graceful_shutdown(&mut self) {
        match &mut self.state {
            State::Serving(connection) => connection.graceful_shutdown(),
            State::Handshaking(_) => self.closing = true,
        }
    }
}

impl<IO, A> Future for Http2Connection<IO, A>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    A: Answer + Unpin,
{
    type Output = Result<(), h2::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            let connection = match &mut this.state {
                State::Handshaking(handshake) => {
                    let mut connection = ready!(Pin::new(handshake).poll(cx))?;
                    if this.closing {
                        connection.graceful_shutdown();
                    }
                    if let Some((interval, timeout)) = this.keepalive_settings {
                        this.keepalive = connection
                            .ping_pong()
                            .map(|pings| KeepAlive::new(pings, interval, timeout));
                    }
                    this.state = State::Serving(connection);
                    continue;
                }
                State::Serving(connection) => connection,
            };
            // First, so that h2 reads what the socket holds: a PONG that arrived while this
            // thread was busy must count before the keepalive's deadline is looked at.
            match connection.poll_accept(cx) {
                Poll::Ready(Some(Ok((request, respond)))) => {
                    this.streams.execute(this.answer.answer(request, respond));
                    continue;
                }
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Err(error)),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => {}
            }
            if let Some(keepalive) = &mut this.keepalive
                && keepalive.poll_dead(cx)
            {
                debug!("keepalive timed out, closing the connection");
                connection.abrupt_shutdown(Reason::NO_ERROR);
                this.keepalive = None;
                // h2 flushes its GOAWAY before it lets go, which a peer that stopped reading
                // never allows: it gets one more timeout, then the socket is dropped.
                this.abandon = Some(Box::pin(tokio::time::sleep(this.keepalive_timeout)));
                continue;
            }
            if let Some(abandon) = &mut this.abandon
                && abandon.as_mut().poll(cx).is_ready()
            {
                debug!("the closing connection did not flush in time, dropping it");
                return Poll::Ready(Ok(()));
            }
            return Poll::Pending;
        }
    }
}

/// PINGs a connection every `interval`; one not answered within `timeout` means the peer is
/// gone.
struct KeepAlive {
    pings: PingPong,
    interval: Duration,
    timeout: Duration,
    timer: Pin<Box<Sleep>>,
    /// The waker the timer holds since it was last polled (until it fires or is reset).
    timer_holds: Option<Waker>,
    /// A PING is out, unanswered.
    waiting: bool,
}

impl KeepAlive {
    fn new(pings: PingPong, interval: Duration, timeout: Duration) -> KeepAlive {
        KeepAlive {
            pings,
            interval,
            timeout,
            timer: Box::pin(tokio::time::sleep(interval)),
            timer_holds: None,
            waiting: false,
        }
    }

    /// Whether the peer failed to answer in time.
    fn poll_dead(&mut self, cx: &mut Context<'_>) -> bool {
        if self.waiting {
            match self.pings.poll_pong(cx) {
                Poll::Ready(Ok(_)) => {
                    self.waiting = false;
                    self.reset_timer(self.interval);
                }
                // The connection failed: `poll_accept` reports it.
                Poll::Ready(Err(_)) => return false,
                Poll::Pending => {}
            }
        }
        if self.poll_timer(cx).is_pending() {
            return false;
        }
        if self.waiting {
            return true;
        }
        if self.pings.send_ping(Ping::opaque()).is_err() {
            return false;
        }
        self.waiting = true;
        self.reset_timer(self.timeout);
        // Registers for the PONG.
        let _ = self.pings.poll_pong(cx);
        let _ = self.poll_timer(cx);
        false
    }

    /// The timer, polled only when it may have fired: one that holds this waker wakes the
    /// task when it does, so polling it on every pass of a busy connection (each poll
    /// registers the waker again and costs a unit of the task's budget) tells nothing new.
    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.timer.is_elapsed()
            && self
                .timer_holds
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        let polled = self.timer.as_mut().poll(cx);
        self.timer_holds = polled.is_pending().then(|| cx.waker().clone());
        polled
    }

    fn reset_timer(&mut self, after: Duration) {
        self.timer.as_mut().reset(Instant::now() + after);
        self.timer_holds = None;
    }
}

/// What routes a request: boxed, because it is several times the size of what the stream
/// needs once it answers, and freed as soon as it has answered (not with the stream).
pub type Responding<B> = Pin<Box<dyn Future<Output = http::Response<B>> + Send>>;

/// Answers `respond` with what `respond_with` resolves to: its headers, then its body through a
/// [`Pump`]. A client that resets the stream first gets nothing more.
pub async fn reply<B>(
    mut respond: SendResponse<Bytes>,
    mut respond_with: Responding<B>,
    side: Arc<StreamSide>,
) where
    B: Body<Data = Bytes> + Unpin,
{
    let response = std::future::poll_fn(|cx| {
        if let Poll::Ready(response) = respond_with.as_mut().poll(cx) {
            return Poll::Ready(Some(response));
        }
        match respond.poll_reset(cx) {
            Poll::Ready(_) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    })
    .await;
    drop(respond_with);
    let Some(response) = response else {
        return;
    };
    let (head, body) = response.into_parts();
    let end = body.is_end_stream();
    let send = match respond.send_response(http::Response::from_parts(head, ()), end) {
        Ok(send) => send,
        Err(error) => {
            debug!(%error, "the response's headers could not be sent");
            respond.send_reset(Reason::INTERNAL_ERROR);
            return;
        }
    };
    // The send stream keeps the stream referenced; the response handle is not needed.
    drop(respond);
    if !end {
        Pump::new(body, send, side).await;
    }
}

/// How long a stream armed to be reset ([`StreamSide::arm`]) may take to finish, writing its
/// status, before it is reset. A client that reads gets its status well within this; one that
/// does not is cut here.
pub const RESET_GRACE: Duration = Duration::from_millis(250);

/// Moves a response body into its h2 stream: a DATA frame per body frame once the stream has
/// send capacity (so that h2 buffers at most `max_send_buffer_size` of it), then the trailers.
pub struct Pump<B> {
    body: B,
    send: h2::SendStream<Bytes>,
    /// A frame taken from the body, waiting for capacity.
    next: Option<Bytes>,
    side: Arc<StreamSide>,
    /// The waker registered with `side`: a stream's task is polled with the same one wait
    /// after wait, so it is registered once (a lock saved per wait).
    registered: Option<Waker>,
    /// Once the stream is armed ([`StreamSide::arm`]): when it is to be reset.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<B> Pump<B> {
    pub fn new(body: B, send: h2::SendStream<Bytes>, side: Arc<StreamSide>) -> Pump<B> {
        Pump {
            body,
            send,
            next: None,
            side,
            registered: None,
            deadline: None,
        }
    }
}

impl<B> Future for Pump<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        // Registered before the side is looked at: what changes after this wakes the
        // task, what changed before is seen below.
        if !this
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            this.side.register(cx.waker());
            this.registered = Some(cx.waker().clone());
        }
        if this.side.is_armed() {
            let deadline = this
                .deadline
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(RESET_GRACE)));
            // Over: reset now, not when the request's reader also lets go of its half (h2
            // resets a stream by itself only once every handle to it is gone).
            if deadline.as_mut().poll(cx).is_ready() {
                this.send.send_reset(Reason::CANCEL);
                return Poll::Ready(());
            }
        }
        loop {
            if let Some(data) = this.next.take() {
                if this.send.capacity() == 0 {
                    this.next = Some(data);
                    match ready!(this.send.poll_capacity(cx)) {
                        Some(Ok(_)) => continue,
                        // Reset or gone: nothing more can be sent.
                        Some(Err(_)) | None => return Poll::Ready(()),
                    }
                }
                if this.send.send_data(data, false).is_err() {
                    return Poll::Ready(());
                }
                continue;
            }
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if data.is_empty() => {}
                    Ok(data) => {
                        this.send.reserve_capacity(1);
                        this.next = Some(data);
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            this.send.reserve_capacity(0);
                            let _ = this.send.send_trailers(trailers);
                            return Poll::Ready(());
                        }
                    }
                },
                Poll::Ready(Some(Err(_))) => {
                    this.send.send_reset(Reason::INTERNAL_ERROR);
                    return Poll::Ready(());
                }
                Poll::Ready(None) => {
                    let _ = this.send.send_data(Bytes::new(), true);
                    return Poll::Ready(());
                }
                // Waiting for the body: a reset by the client must wake the stream meanwhile,
                // through the request's reader while there is one (see `StreamSide`).
                Poll::Pending => {
                    if this.side.is_read() {
                        return Poll::Pending;
                    }
                    return match this.send.poll_reset(cx) {
                        Poll::Ready(_) => Poll::Ready(()),
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
