//! What a room needs from the server, as narrow handles rather than one locator: the
//! configuration, a way out of the registry, the census, the history budget and the Redis
//! engine. Also the seam through which a session records its name. The server builds these once,
//! in `hub`; a session's own needs are `session::SessionEnv`.

use std::sync::Arc;

use arc_swap::Guard;

use super::RoomId;
use crate::{
    census::Census,
    cluster::RedisEngine,
    config::{Config, LiveConfig},
    history::HistoryBudget,
    names::{RoomName, SessionId, UserName},
    packing::Packer,
    runtime::Arbiters,
};

/// What a Room actor needs.
pub struct RoomEnv {
    /// Swapped whole on reload; read with [`RoomEnv::config`].
    pub config: LiveConfig,
    pub arbiters: Arbiters,
    /// The registry, which the room leaves when it stops.
    pub rooms: Arc<dyn Unregister>,
    pub census: Arc<Census>,
    /// The bytes every memory-engine room's history draws from (`server.history_bytes_total`).
    pub history_budget: Arc<HistoryBudget>,
    /// Tells quiet memory rooms to pack their histories.
    pub packer: Arc<Packer>,
    /// `Some` in cluster mode: rooms are shared with other nodes through Redis.
    pub cluster: Option<RedisEngine>,
}

impl RoomEnv {
    /// A cheap snapshot of the running configuration.
    pub fn config(&self) -> Guard<Arc<Config>> {
        self.config.load()
    }
}

/// How a stopping room takes itself out of the registry. The registry holds the rooms'
/// addresses, so it sits above the room; the room sees only this.
pub trait Unregister: Send + Sync {
    /// Unregisters `name` if it is still the room `id`; a newer room of the same name stays.
    fn remove_if_same(&self, name: &RoomName, id: RoomId) -> bool;
}

/// Where a session records the user it is named as (for kicks by user); the edge's session
/// table in the server, anything in tests.
pub trait SessionNames: Send + Sync {
    fn name(&self, id: SessionId, user: UserName);
}
