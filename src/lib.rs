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
//!   request frame limits; resets streams the session ended.
//! - [`edge`]: the gRPC edge: the `ChatStream` handler, codec, outbound queue, session table,
//!   admission limits and token auth.
//! - [`actors`]: Session (identity, joined rooms, timers) and Room (members, rate buckets, expiry,
//!   fan-out), their mail, the parsed requests, the room registry and the handles they run on.
//! - [`log`]: a room's order, seq and epoch, history, dedup window and presence: in memory, or
//!   through Redis.
//! - [`history`]: a memory log's retained CHATs and the server-wide byte budget they draw from.
//! - [`cluster`]: the Redis client of cluster mode: `RedisEngine` (connections, health, room
//!   scripts, user places, operator channels, listing) and the per-shard pub/sub subscriber.
//! - [`hub`]: the server's shared state, plain data: config, arbiters, registry, sessions, limits.
//! - [`census`]: counts of live actors and reader tasks, for leak checks.
//! - [`admin`]: the operator API (`chat.v1.AdminService`), behind `[admin] token` and a
//!   per-address throttle of failed authentication; in cluster mode over an operator channel.
//! - [`server`]: assembly, the shutdown drain order, TLS, the process signals (shutdown,
//!   SIGHUP reload) and applying a reload to the hub; [`runtime`]: the actix arbiters.
//! - [`config`]: the TOML schema, per-room limits, the auth key and which keys reload.
//! - [`limits`]: the token bucket; [`names`]: validated user and room names and session ids.
//! - [`error`]: `ChatError` (an ERROR reply) and `Fatal` (ends the stream); [`proto`]: the wire types.
//! - [`client`]: the client library: one stream kept up across reconnects (backoff, heartbeats,
//!   token refresh), rooms resumed without gap or duplicate, unanswered CHATs resent by `ref`.
//! - [`metrics`]: every metric, and the `/metrics` endpoint; [`trim`]: gives idle allocator memory back;
//!   [`packing`]: tells quiet rooms to pack their histories.
//!
//! Dependency order (each depends only on those after it; the binaries may use anything):
//! `server` → `admin` → `edge::service` → `hub` → `edge::sessions` → `actors` → `log` →
//! `edge::{abuse, auth, outbound}` → `cluster`, `census`, `history`, `packing`, `runtime`,
//! `transport`, `trim`, `limits` → `config` → `metrics`, `names` → `error` → `proto` → `edge::codec` (the
//! generated service names the codec, which is generic over the request type so as not to
//! import `proto` back). Inside `actors`: `session` → `registry` → `room` → `env` → the mail
//! (`actors/mod.rs`), `request`; the mail names neither actor (a room holds a member's
//! `SessionHandle`, a session learns which room closed by its `RoomId`), and a room leaves the
//! registry through `env::Unregister`. `tests/layout.rs` fails on any import cycle, counting
//! each of those (and each part of the edge) as a module of its own. `client` stands apart: it
//! uses only `proto` (the server side never imports it).

pub mod actors;
pub mod admin;
pub mod census;
pub mod client;
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
pub mod packing;
pub mod proto;
pub mod runtime;
pub mod server;
pub mod transport;
pub mod trim;

pub use config::Config;
pub use server::{Server, shutdown_signal};
