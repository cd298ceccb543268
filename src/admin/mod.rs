//! The operator API, `chat.v1.AdminService`: its token check and the five calls. It only reads
//! the registry and the session table and sends mail to room and session actors, so an operator
//! action is ordered with the chat traffic like any other request. Every call is logged, refused
//! ones included (without the token).
//!
//! In cluster mode the calls act on the whole cluster, whichever node is called: reads come from
//! Redis (presence and seq), Kick and CloseRoom are carried out by every node ([`cluster`]), and
//! Announce is published to the room's channel.
//!
//! Layout: `auth` (the token interceptor) and [`throttle`] (its per-address limit of failed
//! attempts) guard the service; `service` is the tonic impl, which hands each call to
//! `rooms` (ListRooms, GetRoom), `actions` (Kick, CloseRoom) or `announce`; `ask` bounds a
//! call's wait on a room actor, `paging` cuts listings into pages, and [`cluster`] carries
//! Kick and CloseRoom to every node. Each call logs its arguments on entry ("admin call") and
//! its outcome ("admin call done") in the file that handles it.

mod actions;
mod announce;
mod ask;
mod auth;
pub mod cluster;
mod paging;
mod rooms;
mod service;
pub mod throttle;

use tonic::Status;

pub use self::{actions::MAX_REASON_BYTES, auth::AdminAuth, service::AdminEdge};

/// A count for the wire's `u32` fields, saturating (no server holds that many sessions).
fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Redis could not answer a cluster-mode call: UNAVAILABLE, so the operator retries.
fn unavailable(error: &crate::cluster::Unavailable) -> Status {
    Status::unavailable(format!("the cluster store cannot answer: {error}"))
}
