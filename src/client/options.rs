//! [`ClientOptions`]: where the client connects, as whom, with which token and TLS, and the
//! timing and bounds of its heartbeats, reconnects and queues. Built once, read by the driver.

use std::{fmt, future::Future, pin::Pin, sync::Arc, time::Duration};

use tonic::transport::ClientTlsConfig;

/// The future a token callback returns.
pub type TokenFuture = Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;

/// Asked for a bearer token at the first connection and again when the server refuses the
/// one in use (UNAUTHENTICATED, e.g. "token expired").
#[derive(Clone)]
pub struct TokenSource(Arc<dyn Fn() -> TokenFuture + Send + Sync>);

impl TokenSource {
    pub(crate) fn fetch(&self) -> TokenFuture {
        (self.0)()
    }
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenSource")
    }
}

/// How a [`Client`](super::Client) connects and behaves. Defaults suit a server with the
/// shipped configuration (90 s idle timeout).
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub(crate) address: String,
    pub(crate) user: String,
    pub(crate) token: Option<TokenSource>,
    pub(crate) tls: Option<ClientTlsConfig>,
    pub(crate) heartbeat: Duration,
    pub(crate) heartbeat_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) backoff_initial: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) max_pending: usize,
    pub(crate) max_pending_bytes: usize,
    pub(crate) max_content_bytes: usize,
    pub(crate) event_capacity: usize,
}

impl ClientOptions {
    /// `address` is `host:port` (plaintext), `http://host:port` or `https://host:port`; `user`
    /// names the session (ignored by a server in jwt mode, where the token's `sub` does).
    pub fn new(address: impl Into<String>, user: impl Into<String>) -> ClientOptions {
        ClientOptions {
            address: address.into(),
            user: user.into(),
            token: None,
            tls: None,
            heartbeat: Duration::from_secs(15),
            heartbeat_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            max_pending: 256,
            max_pending_bytes: 8 << 20,
            max_content_bytes: (1 << 20) - 2048,
            event_capacity: 1024,
        }
    }

    /// A bearer token from `source`, called at the first connection and once more whenever
    /// the server refuses the token in use. If the fresh token is refused too, the client
    /// stops with [`ClientError::Unauthenticated`](super::ClientError::Unauthenticated).
    pub fn token<F, Fut, E>(mut self, source: F) -> ClientOptions
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, E>> + Send + 'static,
        E: fmt::Display,
    {
        self.token = Some(TokenSource(Arc::new(move || {
            let token = source();
            Box::pin(async move { token.await.map_err(|e| e.to_string()) })
        })));
        self
    }

    /// TLS settings (CA certificates, domain name, client identity). Implies `https` for a
    /// `host:port` address. An `https://` address without this trusts only the roots tonic
    /// was built with, which in this crate are none: give the server's CA here.
    pub fn tls(mut self, tls: ClientTlsConfig) -> ClientOptions {
        self.tls = Some(tls);
        self
    }

    /// A PING every `interval` (keep it well under the server's `idle_timeout_ms`); when
    /// nothing at all arrives within `timeout` of a PING, the connection counts as broken.
    /// Defaults: 15 s and 10 s.
    pub fn heartbeat(mut self, interval: Duration, timeout: Duration) -> ClientOptions {
        self.heartbeat = interval.max(Duration::from_millis(1));
        self.heartbeat_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// Bounds each connection attempt (TCP, TLS, HTTP/2 and the stream's response headers).
    /// Default 10 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> ClientOptions {
        self.connect_timeout = timeout;
        self
    }

    /// Reconnect waits: full jitter under a ceiling starting at `initial` and doubling per
    /// attempt up to `max`. Defaults: 100 ms and 10 s.
    pub fn backoff(mut self, initial: Duration, max: Duration) -> ClientOptions {
        self.backoff_initial = initial;
        self.backoff_max = max;
        self
    }

    /// Requests (CHAT, JOIN, LEAVE) sent but not yet answered; beyond it `send_post` and
    /// friends wait. These are what a reconnect sends again. Default 256.
    pub fn max_pending(mut self, max: usize) -> ClientOptions {
        self.max_pending = max.max(1);
        self
    }

    /// Bytes of CHAT content the requests awaiting answers may hold together; beyond it
    /// `send_post` waits. Default 8 MiB.
    pub fn max_pending_bytes(mut self, bytes: usize) -> ClientOptions {
        self.max_pending_bytes = bytes.max(1);
        self
    }

    /// Largest CHAT content the client sends (at most `max_pending_bytes`); larger ones are
    /// refused at once with [`ClientError::TooLarge`](super::ClientError::TooLarge). Default:
    /// the server's default `max_frame_bytes` (1 MiB) less 2 KiB for the other fields, since a
    /// frame over the server's limit ends the stream, and a resend would end the next one.
    pub fn max_content_bytes(mut self, bytes: usize) -> ClientOptions {
        self.max_content_bytes = bytes;
        self
    }

    /// Events buffered for a reader that falls behind; when full, the client stops reading
    /// the server (whose slow-consumer rule may then end the stream; the client resumes).
    /// Default 1024.
    pub fn event_capacity(mut self, capacity: usize) -> ClientOptions {
        self.event_capacity = capacity.max(1);
        self
    }

    /// The address as given.
    pub fn address(&self) -> &str {
        &self.address
    }
}
