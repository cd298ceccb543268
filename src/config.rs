//! Server configuration: the TOML schema, its defaults, loading with errors that name the file and
//! the key, validation of impossible values, and per-room limit resolution (exact names, then globs).
//! `config/default.toml` is parsed by a unit test so the shipped file can never drift from this code.

use std::{collections::BTreeMap, net::SocketAddr, path::Path, sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};

use crate::names::RoomName;

/// Where `cargo run` looks when no `--config` is given; the built-in defaults apply if it is absent.
pub const DEFAULT_PATH: &str = "config/default.toml";

/// The largest `max_message_bytes` accepted: bounds what one frame can make the server buffer.
pub const MAX_MESSAGE_BYTES_CEILING: usize = 4 * 1024 * 1024;

/// Room for every field of a request other than `content` (user, room, ref, kind, numbers, tags),
/// added to the largest `max_message_bytes` to size the gRPC decoder limit.
pub const ENVELOPE_BYTES: usize = 2048;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub session: SessionConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    pub auth: AuthConfig,
    pub admin: AdminConfig,
    pub cluster: ClusterConfig,
    /// Default limits of every room.
    pub limits: RoomLimits,
    /// Per-room overrides of `limits`, keyed by exact name or a `*` glob; kept raw until
    /// [`Config::resolve`] merges and type-checks them against `limits`.
    rooms: BTreeMap<String, toml::Table>,
    #[serde(skip)]
    resolved: Overrides,
    /// The file this was loaded from, for logs.
    #[serde(skip)]
    source: String,
}

#[derive(Debug, Clone, Deserialize)]
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
    /// Actix arbiter threads running the session and room actors; 0 = one per core.
    pub actor_threads: usize,
    /// Tokio worker threads running the gRPC transport; 0 = one per core.
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
}

/// PEM files for TLS; read at load so a missing or unreadable file stops the server at start.
#[derive(Debug, Clone, PartialEq, Deserialize)]
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
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    #[default]
    None,
    Jwt,
}

/// `[auth]`: how streams prove who they are.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
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
#[serde(rename_all = "lowercase")]
pub enum ClusterEngine {
    #[default]
    Memory,
    Redis,
}

/// `[cluster]`: several nodes sharing rooms through Redis.
#[derive(Debug, Clone, PartialEq, Deserialize)]
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
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
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

#[derive(Debug, Clone, Deserialize)]
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
    /// Replayed to a JOIN with `since_seq = 0`.
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
        }
    }
}

impl RoomLimits {
    pub fn empty_room_ttl(&self) -> Duration {
        Duration::from_millis(self.empty_room_ttl_ms)
    }
}

/// Overrides merged with `[limits]`: exact names, and globs ordered most specific first.
#[derive(Debug, Clone, Default)]
struct Overrides {
    exact: BTreeMap<String, Arc<RoomLimits>>,
    globs: Vec<(String, Arc<RoomLimits>)>,
    base: Arc<RoomLimits>,
}

/// A configuration that cannot be used; printed as one line, the server then exits with code 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("config {file}: {location}{message}")]
    Invalid {
        file: String,
        /// `key `a.b`: ` or `line L column C: `, whichever is known.
        location: String,
        message: String,
    },
}

impl Config {
    /// Loads `path`; `None` means [`DEFAULT_PATH`] when it exists, else the built-in defaults.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let path = match path {
            Some(p) => p,
            None if Path::new(DEFAULT_PATH).exists() => Path::new(DEFAULT_PATH),
            None => return Config::default().resolve("<built-in defaults>"),
        };
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        Config::parse(&text, &file)
    }

    /// Parses TOML text; `file` only names the source in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let de = toml::de::Deserializer::parse(text).map_err(|e| toml_error(file, text, &e))?;
        let cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            if key.is_empty() || key == "." {
                toml_error(file, text, &inner)
            } else {
                invalid(file, &key, inner.message())
            }
        })?;
        cfg.resolve(file)
    }

    /// Merges room overrides with `[limits]` and checks every value; the one place a config
    /// becomes usable.
    pub fn source(&self) -> &str {
        &self.source
    }

    fn resolve(mut self, file: &str) -> Result<Config, ConfigError> {
        self.source = file.to_string();
        let base_table = toml::Table::try_from(&self.limits)
            .map_err(|e| invalid(file, "limits", &e.to_string()))?;
        let mut resolved = Overrides {
            base: Arc::new(self.limits.clone()),
            ..Overrides::default()
        };
        for (name, table) in &self.rooms {
            let prefix = format!("rooms.\"{name}\"");
            if name.contains('*') {
                check_glob(name).map_err(|m| invalid(file, &prefix, m))?;
            } else {
                RoomName::parse(name).map_err(|e| invalid(file, &prefix, &e.to_string()))?;
            }
            let mut merged = base_table.clone();
            merged.extend(table.clone());
            let limits: RoomLimits = serde_path_to_error::deserialize(toml::Value::Table(merged))
                .map_err(|e| {
                let key = format!("{prefix}.{}", e.path());
                invalid(file, &key, e.into_inner().message())
            })?;
            validate_limits(&limits, &self.session, &prefix)
                .map_err(|(k, m)| invalid(file, &k, &m))?;
            let limits = Arc::new(limits);
            if name.contains('*') {
                resolved.globs.push((name.clone(), limits));
            } else {
                resolved.exact.insert(name.clone(), limits);
            }
        }
        // Most literal characters first: "support-vip-*" beats "support-*" beats "*".
        resolved
            .globs
            .sort_by(|(a, _), (b, _)| literal_len(b).cmp(&literal_len(a)).then(a.cmp(b)));
        self.validate().map_err(|(k, m)| invalid(file, &k, &m))?;
        self.resolved = resolved;
        Ok(self)
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let fail = |key: &str, msg: String| Err((key.to_string(), msg));
        if self.server.max_sessions == 0 {
            return fail("server.max_sessions", "must be at least 1".into());
        }
        if let Err(e) = RoomName::parse(&self.server.default_room) {
            return fail("server.default_room", e.to_string());
        }
        if self.server.keepalive_interval_ms > 0 && self.server.keepalive_timeout_ms == 0 {
            return fail(
                "server.keepalive_timeout_ms",
                "must be above 0 when keepalive is on".into(),
            );
        }
        let rate = self.server.new_streams_per_ip_per_sec;
        if !(rate.is_finite() && rate >= 0.0) {
            return fail(
                "server.new_streams_per_ip_per_sec",
                "must be 0 (off) or above".into(),
            );
        }
        if rate > 0.0 && self.server.new_streams_per_ip_burst == 0 {
            return fail(
                "server.new_streams_per_ip_burst",
                "must be at least 1".into(),
            );
        }
        if let Err(e) = crate::auth::Verifier::from_config(&self.auth) {
            return fail("auth", e);
        }
        if self.cluster.engine == ClusterEngine::Redis {
            if self.cluster.redis_urls.is_empty() {
                return fail("cluster.redis_urls", "redis needs at least one URL".into());
            }
            if let Some(url) = self
                .cluster
                .redis_urls
                .iter()
                .find(|u| !(u.starts_with("redis://") || u.starts_with("rediss://")))
            {
                return fail(
                    "cluster.redis_urls",
                    format!("{url:?} is not a redis:// or rediss:// URL"),
                );
            }
            if self.cluster.presence_ttl_ms < 300 {
                return fail("cluster.presence_ttl_ms", "must be at least 300".into());
            }
            // At least a minute: shorter would let a busy room's seq expire between two CHATs.
            if !(60..=10 * 365 * 24 * 3600).contains(&self.cluster.retention_secs) {
                return fail(
                    "cluster.retention_secs",
                    "must be between 60 and 315360000 (ten years)".into(),
                );
            }
        }
        if self.cluster.node_id.contains('|') {
            return fail("cluster.node_id", "must not contain `|`".into());
        }
        let token = &self.admin.token;
        if !token.is_empty() && !token.chars().all(|c| c.is_ascii_graphic()) {
            return fail(
                "admin.token",
                "must be printable ASCII without spaces (it travels in a header)".into(),
            );
        }
        if !token.is_empty() && token.chars().count() < MIN_ADMIN_TOKEN_CHARS {
            return fail(
                "admin.token",
                format!(
                    "must be empty (admin API off) or at least {MIN_ADMIN_TOKEN_CHARS} characters"
                ),
            );
        }
        // At least 100 ms, or the log limit means little; at most an hour, so a typo cannot
        // lock operators out for days.
        if !(100..=3_600_000).contains(&self.admin.failed_auth_interval_ms) {
            return fail(
                "admin.failed_auth_interval_ms",
                "must be between 100 and 3600000 (an hour)".into(),
            );
        }
        if let Some(tls) = &self.server.tls {
            let files = [
                ("server.tls.cert_path", Some(&tls.cert_path)),
                ("server.tls.key_path", Some(&tls.key_path)),
                ("server.tls.client_ca_path", tls.client_ca_path.as_ref()),
            ];
            for (key, path) in files {
                if let Some(path) = path
                    && let Err(e) = std::fs::read(path)
                {
                    return fail(key, format!("cannot read {}: {e}", path.display()));
                }
            }
        }
        if self.server.max_concurrent_streams == 0 {
            return fail("server.max_concurrent_streams", "must be at least 1".into());
        }
        if !self.metrics.listen.is_empty() && self.metrics.addr().is_none() {
            return fail(
                "metrics.listen",
                format!(
                    "`{}` is not host:port (or \"\" for off)",
                    self.metrics.listen
                ),
            );
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return fail(
                "log.level",
                format!("`{}` is not a log filter", self.log.level),
            );
        }
        if self.session.outbound_queue < 2 {
            return fail("session.outbound_queue", "must be at least 2".into());
        }
        if self.session.outbound_queue_bytes < 16 * 1024 {
            return fail(
                "session.outbound_queue_bytes",
                "must be at least 16384".into(),
            );
        }
        if self.server.max_connections == 0 {
            return fail("server.max_connections", "must be at least 1".into());
        }
        if self.server.handshake_timeout_ms == 0 {
            return fail("server.handshake_timeout_ms", "must be at least 1".into());
        }
        if self.server.max_rooms == 0 {
            return fail("server.max_rooms", "must be at least 1".into());
        }
        if self.session.max_rooms_per_session == 0 {
            return fail("session.max_rooms_per_session", "must be at least 1".into());
        }
        let rate = self.session.requests_per_sec;
        if !(rate.is_finite() && rate >= 0.0) {
            return fail(
                "session.requests_per_sec",
                "must be 0 (off) or above".into(),
            );
        }
        if rate > 0.0 && self.session.requests_burst == 0 {
            return fail("session.requests_burst", "must be at least 1".into());
        }
        validate_limits(&self.limits, &self.session, "limits")
    }

    /// The limits of room `name`: its exact override, else the most specific matching glob,
    /// else `[limits]`.
    pub fn limits_for(&self, name: &str) -> Arc<RoomLimits> {
        if let Some(l) = self.resolved.exact.get(name) {
            return l.clone();
        }
        self.resolved
            .globs
            .iter()
            .find(|(pattern, _)| glob_match(pattern, name))
            .map(|(_, l)| l.clone())
            .unwrap_or_else(|| self.resolved.base.clone())
    }

    /// The gRPC decoder limit: the largest message any room accepts plus the envelope, so an
    /// oversized frame is refused before it is buffered.
    pub fn max_frame_bytes(&self) -> usize {
        let largest = std::iter::once(&self.resolved.base)
            .chain(self.resolved.exact.values())
            .chain(self.resolved.globs.iter().map(|(_, l)| l))
            .map(|l| l.max_message_bytes)
            .max()
            .unwrap_or(self.limits.max_message_bytes);
        largest + ENVELOPE_BYTES
    }
}

impl Config {
    /// The configuration to run after a reload to `new`: everything that can change live comes
    /// from `new` (room limits and overrides, session limits, max_sessions, shutdown grace); the
    /// rest keeps its running value, and its key is returned as needing a restart.
    pub fn reloaded(&self, mut new: Config) -> (Config, Vec<&'static str>) {
        fn keep<T: PartialEq + Clone>(
            old: &T,
            new: &mut T,
            key: &'static str,
            restart: &mut Vec<&'static str>,
        ) {
            if old != new {
                *new = old.clone();
                restart.push(key);
            }
        }
        let mut restart = Vec::new();
        let (old, r) = (&self.server, &mut restart);
        keep(&old.listen, &mut new.server.listen, "server.listen", r);
        keep(
            &old.default_room,
            &mut new.server.default_room,
            "server.default_room",
            r,
        );
        keep(
            &old.keepalive_interval_ms,
            &mut new.server.keepalive_interval_ms,
            "server.keepalive_interval_ms",
            r,
        );
        keep(
            &old.keepalive_timeout_ms,
            &mut new.server.keepalive_timeout_ms,
            "server.keepalive_timeout_ms",
            r,
        );
        keep(
            &old.max_concurrent_streams,
            &mut new.server.max_concurrent_streams,
            "server.max_concurrent_streams",
            r,
        );
        keep(
            &old.tcp_nodelay,
            &mut new.server.tcp_nodelay,
            "server.tcp_nodelay",
            r,
        );
        keep(
            &old.max_connections,
            &mut new.server.max_connections,
            "server.max_connections",
            r,
        );
        keep(
            &old.max_connections_per_ip,
            &mut new.server.max_connections_per_ip,
            "server.max_connections_per_ip",
            r,
        );
        keep(
            &old.handshake_timeout_ms,
            &mut new.server.handshake_timeout_ms,
            "server.handshake_timeout_ms",
            r,
        );
        // Every open room holds its share of the budget it was started with.
        keep(
            &old.history_bytes_total,
            &mut new.server.history_bytes_total,
            "server.history_bytes_total",
            r,
        );
        keep(&self.metrics, &mut new.metrics, "metrics", r);
        keep(&self.log, &mut new.log, "log", r);
        // The token verifier is built once at start; `[admin] token` is live (rotation).
        keep(&self.auth, &mut new.auth, "auth", r);
        keep(&self.cluster, &mut new.cluster, "cluster", r);
        // The gRPC decoder limit is fixed at start: room limits that would need a larger one
        // keep their running values as a whole.
        if new.max_frame_bytes() > self.max_frame_bytes() {
            new.limits = self.limits.clone();
            new.rooms = self.rooms.clone();
            new.resolved = self.resolved.clone();
            restart.push("max_message_bytes above the running maximum (the gRPC decoder limit)");
        }
        (new, restart)
    }
}

fn validate_limits(
    l: &RoomLimits,
    session: &SessionConfig,
    prefix: &str,
) -> Result<(), (String, String)> {
    let key = |k: &str| format!("{prefix}.{k}");
    if l.max_members == 0 {
        return Err((key("max_members"), "must be at least 1".into()));
    }
    if l.max_message_bytes == 0 || l.max_message_bytes > MAX_MESSAGE_BYTES_CEILING {
        return Err((
            key("max_message_bytes"),
            format!("must be between 1 and {MAX_MESSAGE_BYTES_CEILING}"),
        ));
    }
    if l.history_on_join > l.history {
        return Err((
            key("history_on_join"),
            format!("must not exceed history ({})", l.history),
        ));
    }
    // A JOINED plus a full replay must fit the joiner's queue, or the joiner would be
    // dropped as a slow consumer by its own replay.
    if l.history >= session.outbound_queue {
        return Err((
            key("history"),
            format!(
                "must be below session.outbound_queue ({}) so a full replay fits the queue",
                session.outbound_queue
            ),
        ));
    }
    // The same in bytes: a full replay must fit a fresh session's byte-bounded queue, with the
    // other half left for the live traffic that arrives meanwhile.
    if l.history_bytes > session.outbound_queue_bytes / 2 {
        return Err((
            key("history_bytes"),
            format!(
                "must be at most half of session.outbound_queue_bytes ({}) so a full replay fits the queue",
                session.outbound_queue_bytes / 2
            ),
        ));
    }
    if !(l.rate_per_sec.is_finite() && l.rate_per_sec > 0.0) {
        return Err((key("rate_per_sec"), "must be a number above 0".into()));
    }
    if l.burst == 0 {
        return Err((key("burst"), "must be at least 1".into()));
    }
    if l.max_members_listed == 0 {
        return Err((key("max_members_listed"), "must be at least 1".into()));
    }
    Ok(())
}

fn invalid(file: &str, key: &str, message: &str) -> ConfigError {
    ConfigError::Invalid {
        file: file.to_string(),
        location: format!("key `{key}`: "),
        message: message.to_string(),
    }
}

/// A TOML syntax error as one line with its position, instead of toml's multi-line snippet.
fn toml_error(file: &str, text: &str, e: &toml::de::Error) -> ConfigError {
    let location = e
        .span()
        .map(|span| {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line} column {column}: ")
        })
        .unwrap_or_default();
    ConfigError::Invalid {
        file: file.to_string(),
        location,
        message: e.message().replace('\n', " ").trim().to_string(),
    }
}

fn check_glob(pattern: &str) -> Result<(), &'static str> {
    let literal: String = pattern.chars().filter(|c| *c != '*').collect();
    if !literal.is_empty() && RoomName::parse(&literal).is_err() {
        return Err("glob contains characters no room name may have");
    }
    Ok(())
}

fn literal_len(pattern: &str) -> usize {
    pattern.chars().filter(|c| *c != '*').count()
}

/// `*` matches any run of characters (including none); everything else matches itself.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    // unwrap: split always yields at least one part.
    let first = parts.next().unwrap();
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let mut parts: Vec<&str> = parts.collect();
    let Some(last) = parts.pop() else {
        return rest.is_empty(); // no '*' at all: exact comparison
    };
    for part in parts {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: &str = include_str!("../config/default.toml");

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, "test.toml").map_err(|e| e.to_string())
    }

    #[test]
    fn shipped_file_equals_built_in_defaults() {
        let shipped = parse(SHIPPED).unwrap();
        let defaults = Config::default();
        assert_eq!(shipped.limits, defaults.limits);
        assert_eq!(shipped.cluster, defaults.cluster);
        assert_eq!(shipped.admin, defaults.admin);
        assert_eq!(shipped.server.listen, defaults.server.listen);
        assert_eq!(shipped.server.default_room, defaults.server.default_room);
        assert_eq!(shipped.server.max_sessions, defaults.server.max_sessions);
        assert_eq!(
            shipped.session.outbound_queue,
            defaults.session.outbound_queue
        );
        assert_eq!(
            shipped.session.idle_timeout_ms,
            defaults.session.idle_timeout_ms
        );
        assert_eq!(
            shipped.session.outbound_queue_bytes,
            defaults.session.outbound_queue_bytes
        );
        assert_eq!(
            shipped.server.max_connections,
            defaults.server.max_connections
        );
        assert_eq!(
            shipped.server.max_connections_per_ip,
            defaults.server.max_connections_per_ip
        );
        assert_eq!(
            shipped.server.handshake_timeout_ms,
            defaults.server.handshake_timeout_ms
        );
        assert_eq!(
            shipped.session.max_rooms_per_session,
            defaults.session.max_rooms_per_session
        );
        assert_eq!(
            shipped.session.requests_per_sec,
            defaults.session.requests_per_sec
        );
        assert_eq!(
            shipped.session.requests_burst,
            defaults.session.requests_burst
        );
        assert_eq!(shipped.metrics, defaults.metrics);
        assert_eq!(shipped.log, defaults.log);
        assert_eq!(
            shipped.server.keepalive_interval_ms,
            defaults.server.keepalive_interval_ms
        );
        assert_eq!(
            shipped.server.keepalive_timeout_ms,
            defaults.server.keepalive_timeout_ms
        );
        assert_eq!(
            shipped.server.max_concurrent_streams,
            defaults.server.max_concurrent_streams
        );
        assert_eq!(shipped.server.tcp_nodelay, defaults.server.tcp_nodelay);
        assert_eq!(shipped.server.actor_threads, defaults.server.actor_threads);
        assert_eq!(shipped.server.io_threads, defaults.server.io_threads);
        assert_eq!(
            shipped.server.max_sessions_per_user,
            defaults.server.max_sessions_per_user
        );
        assert_eq!(
            shipped.server.max_streams_per_ip,
            defaults.server.max_streams_per_ip
        );
        assert_eq!(
            shipped.server.new_streams_per_ip_per_sec,
            defaults.server.new_streams_per_ip_per_sec
        );
        assert_eq!(
            shipped.server.new_streams_per_ip_burst,
            defaults.server.new_streams_per_ip_burst
        );
        assert_eq!(
            shipped.server.shutdown_grace_ms,
            defaults.server.shutdown_grace_ms
        );
        assert_eq!(shipped.server.max_rooms, defaults.server.max_rooms);
        assert_eq!(
            shipped.server.history_bytes_total,
            defaults.server.history_bytes_total
        );
    }

    #[test]
    fn empty_file_gives_defaults() {
        let cfg = parse("").unwrap();
        assert_eq!(cfg.limits, RoomLimits::default());
        assert_eq!(cfg.server.default_room, "lobby");
    }

    #[test]
    fn unknown_key_is_named_with_its_path() {
        let err = parse("[session]\noutbound_queue = 8\nqueue_len = 3\n").unwrap_err();
        assert!(err.contains("test.toml"), "{err}");
        assert!(err.contains("queue_len"), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }

    #[test]
    fn wrong_type_names_the_key() {
        let err = parse("[limits]\nmax_members = \"many\"\n").unwrap_err();
        assert!(err.contains("limits.max_members"), "{err}");
    }

    #[test]
    fn impossible_values_are_refused() {
        for (text, key) in [
            ("[limits]\nmax_members = 0", "limits.max_members"),
            (
                "[limits]\nhistory = 5\nhistory_on_join = 6",
                "limits.history_on_join",
            ),
            ("[limits]\nrate_per_sec = 0", "limits.rate_per_sec"),
            ("[limits]\nburst = 0", "limits.burst"),
            (
                "[limits]\nmax_message_bytes = 0",
                "limits.max_message_bytes",
            ),
            ("[session]\noutbound_queue = 50", "limits.history"),
            ("[server]\ndefault_room = \"a b\"", "server.default_room"),
            ("[server]\nmax_sessions = 0", "server.max_sessions"),
            ("[server]\nmax_rooms = 0", "server.max_rooms"),
            ("[metrics]\nlisten = \"nowhere\"", "metrics.listen"),
            ("[log]\nformat = \"xml\"", "log.format"),
            (
                "[server.tls]\ncert_path = \"/nonexistent.pem\"\nkey_path = \"/nonexistent.key\"",
                "server.tls.cert_path",
            ),
            ("[log]\nlevel = \"[[\"", "log.level"),
            ("[rooms.\"x\"]\nmax_members = 0", "rooms.\"x\".max_members"),
            ("[rooms.\"x\"]\nfoo = 1", "rooms.\"x\".foo"),
            (
                "[cluster]\nengine = \"redis\"\npresence_ttl_ms = 299",
                "cluster.presence_ttl_ms",
            ),
            (
                "[cluster]\nengine = \"redis\"\nretention_secs = 59",
                "cluster.retention_secs",
            ),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(key), "{text:?} gave {err}");
        }
    }

    #[test]
    fn history_bytes_must_fit_half_the_outbound_queue() {
        // Defaults: outbound_queue_bytes 262144, so at most 131072 (the default itself).
        let cfg = parse("[limits]\nhistory_bytes = 131072\n").unwrap();
        assert_eq!(cfg.limits_for("any").history_bytes, 131_072);
        for (text, key) in [
            ("[limits]\nhistory_bytes = 131073", "limits.history_bytes"),
            (
                "[rooms.\"big\"]\nhistory_bytes = 200000",
                "rooms.\"big\".history_bytes",
            ),
            (
                "[session]\noutbound_queue_bytes = 65536",
                "limits.history_bytes",
            ),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(key), "{text:?} gave {err}");
            assert!(err.contains("outbound_queue_bytes"), "{text:?} gave {err}");
        }
        // A larger queue makes room for a larger history.
        let cfg = parse(
            "[session]\noutbound_queue_bytes = 1048576\n[rooms.\"big\"]\nhistory_bytes = 524288\n",
        )
        .unwrap();
        assert_eq!(cfg.limits_for("big").history_bytes, 524_288);
    }

    #[test]
    fn syntax_error_has_a_line_number() {
        let err = parse("[server]\nlisten = \n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn exact_names_win_over_globs_and_specific_globs_win() {
        let cfg = parse(
            "[rooms.\"support-*\"]\nmax_members = 5\n\
             [rooms.\"support-vip-*\"]\nmax_members = 3\n\
             [rooms.\"support-desk\"]\nmax_members = 7\n",
        )
        .unwrap();
        assert_eq!(cfg.limits_for("support-desk").max_members, 7);
        assert_eq!(cfg.limits_for("support-vip-1").max_members, 3);
        assert_eq!(cfg.limits_for("support-1").max_members, 5);
        assert_eq!(cfg.limits_for("general").max_members, 10_000);
        // Unset keys of an override keep the [limits] value.
        assert_eq!(cfg.limits_for("support-1").history, 100);
    }

    #[test]
    fn frame_limit_follows_the_largest_room() {
        let cfg = parse("[rooms.\"big\"]\nmax_message_bytes = 100000\n").unwrap();
        assert_eq!(cfg.max_frame_bytes(), 100_000 + ENVELOPE_BYTES);
    }

    #[test]
    fn reload_takes_live_keys_and_reports_the_rest() {
        let running = parse("[limits]\nmax_members = 5\n").unwrap();
        let new = parse(
            "[server]\nlisten = \"127.0.0.1:1\"\nmax_sessions = 7\n\
             [limits]\nmax_members = 9\n[rooms.\"x\"]\nburst = 3\n\
             [admin]\nmax_failed_auth = 3\nfailed_auth_interval_ms = 60000\n",
        )
        .unwrap();
        let (effective, restart) = running.reloaded(new);
        assert_eq!(restart, vec!["server.listen"]);
        assert_eq!(effective.server.listen, running.server.listen);
        assert_eq!(effective.server.max_sessions, 7);
        assert_eq!(effective.admin.max_failed_auth, 3);
        assert_eq!(effective.admin.failed_auth_interval_ms, 60_000);
        assert_eq!(effective.limits_for("y").max_members, 9);
        assert_eq!(effective.limits_for("x").burst, 3);

        let new = parse("[server]\nmax_rooms = 3\nhistory_bytes_total = 1024\n").unwrap();
        let (reloaded, restart) = running.reloaded(new);
        assert_eq!(restart, vec!["server.history_bytes_total"]);
        assert_eq!(reloaded.server.max_rooms, 3, "max_rooms is live");
        assert_eq!(
            reloaded.server.history_bytes_total,
            running.server.history_bytes_total
        );
    }

    #[test]
    fn glob_matching() {
        assert!(glob_match("support-*", "support-1"));
        assert!(glob_match("support-*", "support-"));
        assert!(!glob_match("support-*", "suppor"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
        assert!(glob_match("*-end", "the-end"));
        assert!(!glob_match("ab*ba", "aba"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
    }
}
