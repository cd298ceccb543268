//! Test harness: a real server in-process on 127.0.0.1:0 and real tonic clients. Every wait is
//! bounded by [`WAIT`]; absence is asserted by waiting [`QUIET`] for nothing to arrive. The
//! contract suites run each test on both room engines ([`Engine`], [`per_engine!`]).
#![allow(dead_code)] // each test binary uses its own subset of the helpers

pub mod admin;
pub mod process;
pub mod redis;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use chatrooms::{
    Config, Server,
    census::CensusCounts,
    config::ClusterEngine,
    edge::codec::ChatCodec,
    hub::Hub,
    proto::{Kind, Message, chat_service_client::ChatServiceClient},
};
use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot},
    task::JoinHandle,
    time::timeout,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{
    Code, Status, Streaming,
    transport::{Channel, Endpoint},
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// Upper bound for anything the server is expected to do.
pub const WAIT: Duration = Duration::from_secs(10);
/// How long "nothing arrives" is watched for.
pub const QUIET: Duration = Duration::from_millis(200);

/// Where a test server's rooms live: the two implementations of one contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// `[cluster] engine = "memory"`: rooms in this process.
    Memory,
    /// `[cluster] engine = "redis"`: seq, history and presence in a real `redis-server`, one
    /// per test server, so no two tests share a room (Redis pub/sub channels ignore the
    /// database number, so a database per test would not keep them apart).
    Redis,
}

/// Turns each listed `async fn name(engine: Engine)` into two tests, `name::memory` and
/// `name::redis`: one body proves its clause on both engines (`cargo test redis` runs one side).
/// `#[redis(ignore = "why")]` before a name ignores its Redis test only: for a clause the Redis
/// engine is known to break, so the failure stays on record (`cargo test -- --ignored`) instead
/// of being asserted away.
#[macro_export]
macro_rules! per_engine {
    ($($(#[redis($($redis:tt)*)])? $name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn memory() {
                super::$name($crate::common::Engine::Memory).await
            }
            #[tokio::test]
            $(#[$($redis)*])?
            async fn redis() {
                super::$name($crate::common::Engine::Redis).await
            }
        }
    )*};
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub hub: Arc<Hub>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    /// The Redis of an [`Engine::Redis`] server; declared last so it is killed only after the
    /// server has been told to stop.
    redis: Option<self::redis::RedisServer>,
}

impl TestServer {
    /// Starts a server with `toml` (may be empty) as its configuration; the listener is bound
    /// before the server task is spawned, so clients can connect at once.
    pub async fn start(toml: &str) -> TestServer {
        TestServer::start_with(parse(toml)).await
    }

    /// [`TestServer::start`] on `engine`. For [`Engine::Redis`] a fresh `redis-server` is
    /// started on a free loopback port, `[cluster]` is pointed at it, and this returns once the
    /// node has reached Redis (until then it would answer `unavailable`).
    pub async fn start_on(engine: Engine, toml: &str) -> TestServer {
        assert!(
            !toml.contains("[cluster]"),
            "start_on sets [cluster] itself"
        );
        let mut config = parse(toml);
        match engine {
            Engine::Memory => {
                config.cluster.engine = ClusterEngine::Memory;
                TestServer::start_with(config).await
            }
            Engine::Redis => {
                let redis = self::redis::RedisServer::start();
                config.cluster.engine = ClusterEngine::Redis;
                config.cluster.redis_urls = vec![redis.url()];
                let mut server = TestServer::start_with(config).await;
                server.redis = Some(redis);
                server.wait_serving().await;
                server
            }
        }
    }

    pub async fn start_with(config: Config) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = Server::new(listener, config).unwrap();
        let hub = server.hub();
        let metrics_addr = server.metrics_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .serve(async {
                    let _ = stopped.await;
                })
                .await
                .expect("server ran");
        });
        TestServer {
            addr,
            metrics_addr,
            hub,
            stop: Some(stop),
            task: Some(task),
            redis: None,
        }
    }

    pub fn endpoint(&self) -> Endpoint {
        Endpoint::from_shared(format!("http://{}", self.addr)).unwrap()
    }

    pub async fn channel(&self) -> Channel {
        self.endpoint().connect().await.unwrap()
    }

    /// A client on its own connection whose first request names it `user`.
    pub async fn client(&self, user: &str) -> Client {
        Client::open(self.channel().await, user).await
    }

    /// Shuts the server down and waits until it has stopped.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            timeout(WAIT, task)
                .await
                .expect("server stops in time")
                .unwrap();
        }
    }

    /// Waits until the health service reports SERVING (in cluster mode: once Redis answers),
    /// following its Watch stream rather than polling.
    pub async fn wait_serving(&self) {
        let mut health = HealthClient::new(self.channel().await);
        let serving = async {
            let mut updates = health
                .watch(HealthCheckRequest::default())
                .await
                .expect("health watch opens")
                .into_inner();
            while let Some(update) = updates.message().await.expect("health watch stays open") {
                if update.status() == ServingStatus::Serving {
                    return;
                }
            }
            panic!("health watch ended before SERVING");
        };
        timeout(WAIT, serving).await.expect("SERVING in time");
    }

    /// Waits until the registry holds `n` rooms.
    pub async fn wait_rooms(&self, n: usize) {
        let mut count = self.hub.rooms.watch_count();
        timeout(WAIT, count.wait_for(|c| *c == n))
            .await
            .unwrap_or_else(|_| panic!("rooms never reached {n}, now {}", self.hub.rooms.len()))
            .unwrap();
    }

    /// Two clients `a` and `b` in `room`, with `a`'s presence notice about `b` consumed.
    pub async fn pair_in(&self, room: &str, a: &str, b: &str) -> (Client, Client) {
        let mut first = self.client(a).await;
        let mut second = self.client(b).await;
        first.join(room).await;
        second.join(room).await;
        first.expect(Kind::Join).await;
        (first, second)
    }

    /// Waits until nothing is left: no session, no room, no actor, no reader task.
    pub async fn wait_empty(&self) {
        self.wait_sessions(0).await;
        self.wait_rooms(0).await;
        let mut census = self.hub.census.watch();
        timeout(WAIT, census.wait_for(|c| *c == CensusCounts::default()))
            .await
            .unwrap_or_else(|_| panic!("left behind: {:?}", *self.hub.census.watch().borrow()))
            .unwrap();
    }

    /// Waits until exactly `n` session actors are running.
    pub async fn wait_session_actors(&self, n: usize) {
        let mut census = self.hub.census.watch();
        timeout(WAIT, census.wait_for(|c| c.session_actors == n))
            .await
            .unwrap_or_else(|_| panic!("session actors never reached {n}"))
            .unwrap();
    }

    /// Waits until `n` sessions are open.
    pub async fn wait_sessions(&self, n: usize) {
        let mut count = self.hub.sessions.watch_count();
        timeout(WAIT, count.wait_for(|c| *c == n))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "sessions never reached {n}, now {}",
                    self.hub.sessions.len()
                )
            })
            .unwrap();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// `toml` (may be empty) as a test configuration.
fn parse(toml: &str) -> Config {
    let mut config = Config::parse(toml, "test.toml").expect("test config is valid");
    if !toml.contains("[metrics]") {
        // Parallel test servers would all claim the default metrics port.
        config.metrics.listen.clear();
    }
    config
}

/// An HTTP/2 endpoint with small flow-control windows, for a client that is going to stop
/// reading: the transport then buffers little on its behalf, so the server's queue fills soon.
pub fn small_window(endpoint: Endpoint) -> Endpoint {
    endpoint
        .initial_stream_window_size(16 * 1024)
        .initial_connection_window_size(16 * 1024)
}

/// A client on its own small-window connection (see [`small_window`]).
pub async fn small_window_client(endpoint: Endpoint, user: &str) -> Client {
    Client::open(small_window(endpoint).connect().await.unwrap(), user).await
}

/// One `ChatStream` call: requests go in through `tx`, replies come out of `rx`.
pub struct Client {
    pub user: String,
    tx: Option<mpsc::Sender<Message>>,
    pub rx: Streaming<Message>,
    next_ref: u64,
}

impl Client {
    pub async fn open(channel: Channel, user: &str) -> Client {
        Client::try_open(channel, user).await.expect("stream opens")
    }

    pub async fn try_open(channel: Channel, user: &str) -> Result<Client, Status> {
        Client::try_open_with_token(channel, user, None).await
    }

    /// Opens a stream carrying `authorization: Bearer <token>` when a token is given.
    pub async fn try_open_with_token(
        channel: Channel,
        user: &str,
        token: Option<&str>,
    ) -> Result<Client, Status> {
        let authorization = token.map(|token| format!("Bearer {token}"));
        Client::try_open_with_authorization(channel, user, authorization.as_deref()).await
    }

    /// Opens a stream carrying exactly this `authorization` header, when one is given.
    pub async fn try_open_with_authorization(
        channel: Channel,
        user: &str,
        authorization: Option<&str>,
    ) -> Result<Client, Status> {
        let (tx, rx) = mpsc::channel(1024);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(authorization) = authorization {
            let value = authorization.parse().expect("ascii header");
            request.metadata_mut().insert("authorization", value);
        }
        let rx = ChatServiceClient::new(channel)
            .chat_stream(request)
            .await?
            .into_inner();
        Ok(Client {
            user: user.to_string(),
            tx: Some(tx),
            rx,
            next_ref: 0,
        })
    }

    pub fn fresh_ref(&mut self) -> String {
        self.next_ref += 1;
        format!("{}-{}", self.user, self.next_ref)
    }

    /// Sends `message` with this client's `user` filled in if empty.
    pub async fn send(&self, mut message: Message) {
        if message.user.is_empty() {
            message.user = self.user.clone();
        }
        self.tx
            .as_ref()
            .expect("not half-closed")
            .send(message)
            .await
            .expect("request stream open");
    }

    /// Drops the stream abruptly: the response side first (a RST_STREAM, as when a client dies),
    /// not the orderly half-close that dropping the request side first would send.
    pub fn abort(self) {
        let Client { rx, tx, .. } = self;
        drop(rx);
        drop(tx);
    }

    /// Half-closes the request stream (CloseSend).
    pub fn close_send(&mut self) {
        self.tx = None;
    }

    pub async fn send_kind(&mut self, kind: Kind, room: &str) -> String {
        let r#ref = self.fresh_ref();
        self.send(Message {
            kind: kind.into(),
            room: room.into(),
            r#ref: r#ref.clone(),
            ..Message::default()
        })
        .await;
        r#ref
    }

    /// JOINs `room` and returns its JOINED.
    pub async fn join(&mut self, room: &str) -> Message {
        self.join_since(room, 0).await
    }

    pub async fn join_since(&mut self, room: &str, since_seq: u64) -> Message {
        let r#ref = self.fresh_ref();
        self.send(Message {
            kind: Kind::Join.into(),
            room: room.into(),
            since_seq,
            r#ref: r#ref.clone(),
            ..Message::default()
        })
        .await;
        let joined = self.expect(Kind::Joined).await;
        assert_eq!(joined.r#ref, r#ref);
        joined
    }

    /// Posts `content` to `room` and returns the ref used.
    pub async fn chat(&mut self, room: &str, content: &str) -> String {
        let r#ref = self.fresh_ref();
        self.send(Message {
            kind: Kind::Chat.into(),
            room: room.into(),
            content: content.into(),
            r#ref: r#ref.clone(),
            ..Message::default()
        })
        .await;
        r#ref
    }

    /// The next reply; panics on a status, end of stream or [`WAIT`].
    pub async fn next(&mut self) -> Message {
        self.next_within(WAIT).await
    }

    /// The next reply, or the status the stream failed with; panics on a clean end or [`WAIT`].
    pub async fn next_or_status(&mut self) -> Result<Message, Status> {
        match timeout(WAIT, self.rx.message()).await {
            Ok(Ok(Some(message))) => Ok(message),
            Ok(Ok(None)) => panic!("{}: stream ended", self.user),
            Ok(Err(status)) => Err(status),
            Err(_) => panic!("{}: nothing received in {WAIT:?}", self.user),
        }
    }

    pub async fn next_within(&mut self, wait: Duration) -> Message {
        match timeout(wait, self.rx.message()).await {
            Ok(Ok(Some(message))) => message,
            Ok(Ok(None)) => panic!("{}: stream ended", self.user),
            Ok(Err(status)) => panic!("{}: stream failed: {status:?}", self.user),
            Err(_) => panic!("{}: nothing received in {wait:?}", self.user),
        }
    }

    /// The next reply, which must be of `kind`.
    pub async fn expect(&mut self, kind: Kind) -> Message {
        let message = self.next().await;
        assert_eq!(
            message.kind(),
            kind,
            "{}: unexpected {message:?}",
            self.user
        );
        message
    }

    /// The next reply, which must be an ERROR with `code`.
    pub async fn expect_error(&mut self, code: &str) -> Message {
        let message = self.expect(Kind::Error).await;
        assert_eq!(message.code, code, "{}: {message:?}", self.user);
        assert!(!message.content.is_empty(), "an error says why");
        message
    }

    /// Skips messages until one satisfies `pred`.
    pub async fn until(&mut self, pred: impl Fn(&Message) -> bool) -> Message {
        loop {
            let message = self.next().await;
            if pred(&message) {
                return message;
            }
        }
    }

    /// Asserts nothing arrives for [`QUIET`].
    pub async fn expect_silence(&mut self) {
        self.expect_silence_for(QUIET).await;
    }

    pub async fn expect_silence_for(&mut self, quiet: Duration) {
        if let Ok(next) = timeout(quiet, self.rx.message()).await {
            panic!("{}: expected silence, got {next:?}", self.user);
        }
    }

    /// Reads until the stream ends; returns what was received and the final status (`None` = OK).
    pub async fn drain_to_end(&mut self) -> (Vec<Message>, Option<Status>) {
        let mut received = Vec::new();
        loop {
            match timeout(WAIT, self.rx.message()).await {
                Ok(Ok(Some(message))) => received.push(message),
                Ok(Ok(None)) => return (received, None),
                Ok(Err(status)) => return (received, Some(status)),
                Err(_) => panic!("{}: stream did not end in {WAIT:?}", self.user),
            }
        }
    }

    /// Reads until the stream fails and returns the status code.
    pub async fn expect_end(&mut self, code: Code) -> Status {
        let (_, status) = self.drain_to_end().await;
        let status = status.unwrap_or_else(|| panic!("{}: ended OK, expected {code:?}", self.user));
        assert_eq!(status.code(), code, "{status:?}");
        status
    }
}

/// A stream whose requests are raw bytes, for frames no well-behaved client would send.
pub async fn raw_stream(channel: Channel) -> (mpsc::Sender<Bytes>, Streaming<Message>) {
    let (tx, rx) = mpsc::channel(16);
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = "/chat.v1.ChatService/ChatStream".parse().unwrap();
    let response = grpc
        .streaming(
            tonic::Request::new(ReceiverStream::new(rx)),
            path,
            ChatCodec::default(),
        )
        .await
        .expect("stream opens");
    (tx, response.into_inner())
}

/// The server's Prometheus text (`GET /metrics`), which must answer 200 within [`WAIT`].
pub async fn scrape(server: &TestServer) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = server.metrics_addr.expect("metrics endpoint on");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    timeout(WAIT, stream.read_to_string(&mut response))
        .await
        .expect("metrics answer in time")
        .unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

/// The value of the sample `series` (name plus labels, exactly as exposed), `None` if absent.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
}

pub fn chat_contents(messages: &[Message]) -> Vec<String> {
    messages
        .iter()
        .filter(|m| m.kind() == Kind::Chat)
        .map(|m| m.content.clone())
        .collect()
}
