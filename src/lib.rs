//! chatrooms: a chat room engine on gRPC bidirectional streams.
//!
//! ```text
//!  client ──HTTP/2 stream──▶ edge::service ──Inbound mail──▶ Session actor ──Join/Post/Leave──▶ Room actor
//!     ▲                                                                                                 │
//!     └──────────── OutboundStream ◀── SessionTx (bounded queue, try_deliver) ◀─────────── fan-out ─────┘
//! ```
//!
//! - [`transport`]: accepting, handshake, HTTP/2 serving with each connection's streams run
//!   by its own task and its writes merged (one write per pass, wake-ups batched per fan-out);
//!   resets streams the session ended.
//! - [`edge`]: the gRPC edge: the `ChatStream` handler, codec, outbound queue, session table,
//!   admission limits and token auth.
//! - [`actors`]: Session (identity, joined rooms, timers) and Room (members, rate buckets, expiry,
//!   fan-out), their mail, the parsed requests, the room registry and the handles they run on.
//! - [`log`]: a room's order, seq, history and presence: in memory, or through Redis.
//! - [`history`]: a memory log's retained CHATs and the server-wide byte budget they draw from.
//! - [`cluster`]: the Redis client of cluster mode: `RedisEngine` (connections, health, room
//!   scripts, user places, operator channels, listing) and the per-shard pub/sub subscriber.
//! - [`hub`]: the server's shared state: config, arbiters, registry, sessions, limits; applies reloads.
//! - [`census`]: counts of live actors and reader tasks, for leak checks.
//! - [`admin`]: the operator API (`chat.v1.AdminService`), behind `[admin] token` and a
//!   per-address throttle of failed authentication; in cluster mode over an operator channel.
//! - [`server`]: assembly, the shutdown drain order, TLS and the process signals (shutdown,
//!   SIGHUP reload); [`runtime`]: the actix arbiters.
//! - [`config`]: the TOML schema, per-room limits, the auth key and which keys reload.
//! - [`limits`]: the token bucket; [`names`]: validated user and room names and session ids.
//! - [`error`]: `ChatError` (an ERROR reply) and `Fatal` (ends the stream); [`proto`]: the wire types.
//! - [`metrics`]: every metric, and the `/metrics` endpoint; [`trim`]: gives idle allocator memory back.
//!
//! Dependency order (each depends only on those after it; the binaries may use anything):
//! `server` → `admin` → `edge::service` → `hub` → `edge::sessions` → `actors` → `log` →
//! `edge::{abuse, auth, outbound}` → `cluster`, `census`, `history`, `runtime`, `transport`,
//! `trim`, `limits` → `config` → `metrics`, `names` → `error` → `proto` → `edge::codec` (the
//! generated service names the codec, which is generic over the request type so as not to
//! import `proto` back). Inside `actors` the mail, the two actors and the registry name each
//! other's addresses (actix's `Addr<Room>`, `Addr<Session>`); that knot stays in the folder.
//! `tests/layout.rs` fails on any other import cycle.

pub mod actors;
pub mod admin;
pub mod census;
pub mod cluster;
pub mod config;
pub mod edge;
pub mod error;
pub mod history;
pub mod hub;
pub mod limits;
pub mod log;
pub mod metrics;
pub mod names;
pub mod proto;
pub mod runtime;
pub mod server;
pub mod transport;
pub mod trim;

pub use config::Config;
pub use server::{Server, shutdown_signal};
