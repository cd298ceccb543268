//! Test harness: a real server in-process on 127.0.0.1:0 and real tonic clients. Every wait is
//! bounded by [`WAIT`]; absence is asserted by waiting [`QUIET`] for nothing to arrive. The
//! contract suites run each test on both room engines ([`Engine`], [`per_engine!`]).
#![allow(dead_code)] // each test binary uses its own subset of the helpers

pub mod admin;
mod client;
pub mod process;
pub mod proxy;
pub mod recorder;
pub mod redis;
pub mod tls;

#[allow(unused_imports)] // as above: each test binary uses its own subset
pub use client::{Client, raw_stream, small_window, small_window_client};

use std::{net::SocketAddr, sync::Arc, time::Duration};

use chatrooms::{
    Config, Server,
    census::CensusCounts,
    config::ClusterEngine,
    hub::Hub,
    proto::{Kind, Message},
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle, time::timeout};
use tonic::transport::{Channel, Endpoint};
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
        TestServer::serve_on(listener, config)
    }

    /// A server on `addr`, the address of a server that was shut down: a restart on the
    /// same port. Binding is retried (bounded) while the kernel still holds the port.
    pub async fn start_at(addr: SocketAddr, toml: &str) -> TestServer {
        let deadline = tokio::time::Instant::now() + WAIT;
        let listener = loop {
            match TcpListener::bind(addr).await {
                Ok(listener) => break listener,
                Err(error) if tokio::time::Instant::now() < deadline => {
                    assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse, "{error}");
                    // A poll interval, not a synchronisation: nothing tells when the port is free.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(error) => panic!("cannot bind {addr} again: {error}"),
            }
        };
        TestServer::serve_on(listener, parse(toml))
    }

    fn serve_on(listener: TcpListener, config: Config) -> TestServer {
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
