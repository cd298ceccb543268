//! chatrooms: a chat room engine on gRPC bidirectional streams.
//!
//! ```text
//!  client ──HTTP/2 stream──▶ service (tonic edge) ──Inbound mail──▶ Session actor ──Join/Post/Leave──▶ Room actor
//!     ▲                                                                                                  │
//!     └──────────── OutboundStream ◀── SessionTx (bounded queue, try_deliver) ◀──────────── fan-out ─────┘
//! ```
//!
//! - [`service`]: the gRPC edge; starts a [`actors::session::Session`] per stream.
//! - [`actors`]: Session (identity, joined rooms, idle) and Room (members, rate buckets, expiry, fan-out).
//! - [`log`]: a room's order, seq, history and presence: in memory, or through Redis.
//! - [`registry`]: room name → room actor, with a race-free remove-if-still-empty.
//! - [`outbound`]: the per-session bounded queue and the slow-consumer rule.
//! - [`transport`]: accepting, handshake, HTTP/2 serving; resets streams the session ended.
//! - [`admin`]: the operator API (`chat.v1.AdminService`), behind `[admin] token` and a
//!   per-address throttle of failed authentication.
//! - [`config`]: the TOML schema, per-room limits and which keys reload; [`server`]: assembly
//!   and shutdown.
//! - [`trim`]: gives memory the allocator holds for nothing back to the system.
//! - [`cluster`]: the Redis layer of cluster mode (shared seq, history, presence, pub/sub).

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
