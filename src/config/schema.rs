//! The TOML schema: one struct per section, each with its defaults (`config/default.toml` spells
//! out the same values, and a unit test keeps the two equal). Loading, validation and reload live
//! beside this file; which keys reload is in `keys.rs`.
//!
//! `Serialize` is derived for tests only: the key table's test walks a serialized default config.

use std::{net::SocketAddr, time::Duration};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub default_room: String,
    /// New streams beyond this many open sessions are refused with RESOURCE_EXHAUSTED.
    pub max_sessions: usize,
    /// How long shutdown waits for streams to drain before cutting them.
    pub shutdown_grace_ms: u64,
    /// HTTP/2 PING interval on idle connections, so dead peers are found; 0 = off.
    pub keepalive_interval_ms: u64,
    /// A PING not answered within this closes the connection.
    pub keepalive_timeout_ms: u64,
    /// Concurrent streams (sessions) one HTTP/2 connection may carry.
    pub max_concurrent_streams: u32,
    pub tcp_nodelay: bool,
    /// Actix arbiter threads running the session and room actors and serving the connections;
    /// 0 = one per core.
    pub actor_threads: usize,
    /// Tokio worker threads running the accept loop, /metrics and the Redis clients; 0 = one
    /// per core.
    pub io_threads: usize,
    /// Open sessions one user name may hold; 0 = no limit.
    pub max_sessions_per_user: usize,
    /// Open streams one client IP may hold; 0 = no limit.
    pub max_streams_per_ip: usize,
    /// New streams per second one client IP may open (token bucket); 0 = no limit.
    pub new_streams_per_ip_per_sec: f64,
    pub new_streams_per_ip_burst: u32,
    /// `[server.tls]`: serve TLS (and require client certificates when `client_ca_path` is set).
    pub tls: Option<TlsConfig>,
    /// Open connections at once; accepting waits for a place. Lowered at start to fit the
    /// descriptor limit.
    pub max_connections: usize,
    /// Open connections one client IP may hold; one over it is closed when accepted. 0 = no
    /// limit. Restart-only, like `max_connections`.
    pub max_connections_per_ip: usize,
    /// A connection must finish TLS and send the HTTP/2 preface within this, or it is closed.
    pub handshake_timeout_ms: u64,
    /// Rooms open at once (running room actors); a JOIN that would open one more gets
    /// `server_rooms_full`.
    pub max_rooms: usize,
    /// Encoded bytes all rooms' histories may hold together (memory engine); see
    /// [`crate::history::HistoryBudget`] for what happens when it is used up.
    pub history_bytes_total: usize,
    /// Largest request frame (a gRPC message) a stream may send; one over it ends the stream
    /// with RESOURCE_EXHAUSTED before it is buffered. Anything smaller is decoded and answered
    /// (content over a room's `max_message_bytes` gets `message_too_large`).
    pub max_frame_bytes: usize,
}

/// PEM files for TLS; read at load so a missing or unreadable file stops the server at start.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_path: std::path::PathBuf,
    pub key_path: std::path::PathBuf,
    /// Clients must present a certificate signed by this CA (mutual TLS).
    #[serde(default)]
    pub client_ca_path: Option<std::path::PathBuf>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            default_room: "lobby".into(),
            max_sessions: 100_000,
            shutdown_grace_ms: 10_000,
            keepalive_interval_ms: 30_000,
            keepalive_timeout_ms: 10_000,
            max_concurrent_streams: 1024,
            tcp_nodelay: true,
            actor_threads: 0,
            io_threads: 0,
            max_sessions_per_user: 32,
            max_streams_per_ip: 20_000,
            new_streams_per_ip_per_sec: 0.0,
            new_streams_per_ip_burst: 50,
            tls: None,
            max_connections: 10_000,
            max_connections_per_ip: 2000,
            handshake_timeout_ms: 5_000,
            max_rooms: 100_000,
            history_bytes_total: 256 * 1024 * 1024,
            max_frame_bytes: 1024 * 1024,
        }
    }
}

impl ServerConfig {
    /// `n`, or the number of cores when `n` is 0.
    pub fn threads(n: usize) -> usize {
        if n > 0 {
            n
        } else {
            std::thread::available_parallelism().map_or(2, |c| c.get())
        }
    }

    pub fn keepalive_interval(&self) -> Option<Duration> {
        (self.keepalive_interval_ms > 0).then(|| Duration::from_millis(self.keepalive_interval_ms))
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Prometheus exposition address (`/metrics`); empty turns the endpoint off.
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".into(),
        }
    }
}

impl MetricsConfig {
    /// The address to serve on, `None` when turned off. Validated at load.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.listen.parse().ok()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    #[default]
    None,
    Jwt,
}

/// `[auth]`: how streams prove who they are.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// HS256 shared secret.
    pub secret: String,
    /// RS256 or ES256 public key (PEM), when there is no secret.
    pub public_key_path: Option<std::path::PathBuf>,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Required `aud`, when set.
    pub audience: Option<String>,
}

/// Where rooms live: this process only, or shared by every node through Redis.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(rename_all = "lowercase")]
pub enum ClusterEngine {
    #[default]
    Memory,
    Redis,
}

/// `[cluster]`: several nodes sharing rooms through Redis.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    pub engine: ClusterEngine,
    /// Rooms are spread over these by a stable hash of their name.
    pub redis_urls: Vec<String>,
    /// This node's name in presence entries; empty = a fresh UUID at every start.
    pub node_id: String,
    /// A node refreshes its members' presence within a third of this; a node that stops
    /// refreshing disappears (and its members leave) once it has passed.
    pub presence_ttl_ms: u64,
    /// A room's seq and history stay in Redis this long after its last CHAT; a room idle for
    /// longer starts over at seq 1 (so abandoned rooms do not hold Redis memory forever).
    pub retention_secs: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            engine: ClusterEngine::Memory,
            redis_urls: vec!["redis://127.0.0.1:6379".into()],
            node_id: String::new(),
            presence_ttl_ms: 10_000,
            retention_secs: 30 * 24 * 3600,
        }
    }
}

/// Shortest accepted admin token: anything shorter could be guessed.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 16;

/// `[admin]`: the operator API (`chat.v1.AdminService`).
#[derive(Clone, PartialEq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Bearer token of operators; empty = the admin API is refused.
    pub token: String,
    /// Failed authentications one client address may make within `failed_auth_interval_ms`
    /// before its calls are refused (RESOURCE_EXHAUSTED) without their token being checked, for
    /// the rest of that interval; 0 = never.
    pub max_failed_auth: u32,
    /// The window of `max_failed_auth`, counted from an address's first failure; also the
    /// shortest gap between two WARN lines about one address's failures.
    pub failed_auth_interval_ms: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            token: String::new(),
            max_failed_auth: 10,
            failed_auth_interval_ms: 6000,
        }
    }
}

impl std::fmt::Debug for AdminConfig {
    // The token must never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("token", &if self.token.is_empty() { "" } else { "<set>" })
            .field("max_failed_auth", &self.max_failed_auth)
            .field("failed_auth_interval_ms", &self.failed_auth_interval_ms)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter (`info`, `chatrooms=debug,info`…); `RUST_LOG` overrides it.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    /// Messages that may wait for one slow reader before it is dropped as a slow consumer.
    pub outbound_queue: usize,
    /// Bytes that may wait for one reader: whichever of this and `outbound_queue` fills first
    /// makes the session a slow consumer. A lone message larger than this is still accepted.
    pub outbound_queue_bytes: usize,
    /// 0 turns the idle check off.
    pub idle_timeout_ms: u64,
    pub max_rooms_per_session: usize,
    /// Requests of every kind (PING included) one session may send per second, sustained; the
    /// reader stops reading the stream while the budget is spent. 0 = no limit.
    pub requests_per_sec: f64,
    /// Requests a session may send at once above the sustained rate.
    pub requests_burst: u32,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            outbound_queue: 1024,
            outbound_queue_bytes: 256 * 1024,
            idle_timeout_ms: 90_000,
            max_rooms_per_session: 32,
            requests_per_sec: 1000.0,
            requests_burst: 2000,
        }
    }
}

impl SessionConfig {
    /// What h2 may buffer per stream for sending, fixed at start: a quarter of the queue's
    /// bytes, so a stalled reader holds at most 1.25 times `outbound_queue_bytes` in the server.
    pub fn stream_send_buffer(&self) -> usize {
        (self.outbound_queue_bytes / 4).clamp(16 * 1024, 1024 * 1024)
    }

    pub fn idle_timeout(&self) -> Option<Duration> {
        (self.idle_timeout_ms > 0).then(|| Duration::from_millis(self.idle_timeout_ms))
    }
}

/// The limits of one room; `[limits]` gives the defaults, `[rooms."NAME"]` overrides any key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoomLimits {
    pub max_members: usize,
    pub max_message_bytes: usize,
    /// Accepted CHATs the room retains for replay.
    pub history: usize,
    /// Encoded bytes the room retains for replay; the oldest go first, whichever of this and
    /// `history` is reached first.
    pub history_bytes: usize,
    /// Replayed to a JOIN with `since_seq = 0` and no epoch.
    pub history_on_join: usize,
    /// Token bucket per member per room.
    pub rate_per_sec: f64,
    pub burst: u32,
    pub empty_room_ttl_ms: u64,
    /// Most names a JOINED lists, so joining a huge room cannot cost megabytes.
    pub max_members_listed: usize,
    /// Members may join and read; only `writers` may post.
    pub read_only: bool,
    pub writers: Vec<String>,
    /// How long a CHAT's `(user, ref)` is remembered: a resend within it gets the original ack
    /// and is not posted again. 0 = off.
    pub dedup_window_ms: u64,
}

impl Default for RoomLimits {
    fn default() -> Self {
        Self {
            max_members: 10_000,
            max_message_bytes: 4096,
            history: 100,
            history_bytes: 128 * 1024,
            history_on_join: 20,
            rate_per_sec: 20.0,
            burst: 40,
            empty_room_ttl_ms: 30_000,
            max_members_listed: 1000,
            read_only: false,
            writers: Vec::new(),
            dedup_window_ms: 120_000,
        }
    }
}

impl RoomLimits {
    pub fn empty_room_ttl(&self) -> Duration {
        Duration::from_millis(self.empty_room_ttl_ms)
    }

    /// `None` when deduplication is off.
    pub fn dedup_window(&self) -> Option<Duration> {
        (self.dedup_window_ms > 0).then(|| Duration::from_millis(self.dedup_window_ms))
    }
}
