//! The gRPC edge: everything between a client's HTTP/2 stream and the actors. The `ChatStream`
//! handler ([`service`]) admits a stream into the [`sessions`] table under the [`abuse`]
//! limits and the [`auth`] check, starts its Session actor and returns its [`outbound`] queue;
//! [`codec`] encodes and decodes the frames.
//!
//! Dependency order inside: `service` → `sessions` → (actors) → `outbound`, `abuse`, `auth`,
//! `codec`, which depend on nothing above them.

pub mod abuse;
pub mod auth;
pub mod codec;
pub mod outbound;
pub mod service;
pub mod sessions;
