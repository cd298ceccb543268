//! The gRPC edge: everything between a client's HTTP/2 stream and the actors. The
//! `chat.v1.ChatService` route ([`route`]) decodes the requests with [`requests`] and hands the
//! call to the `ChatStream` handler ([`service`]), which admits the stream into the
//! [`sessions`] table under the [`abuse`] limits and the [`auth`] check, starts its Session
//! actor and returns its [`outbound`] queue; the route frames that queue as the response body.
//!
//! Dependency order inside: `route` → `service` → `sessions` → (actors) → `outbound`,
//! `abuse`, `auth`, `requests`, `codec`, which depend on nothing above them.

pub mod abuse;
pub mod auth;
pub mod codec;
pub mod outbound;
pub mod requests;
pub mod route;
pub mod service;
pub mod sessions;
