//! What the actors need from the server, as narrow handles rather than one locator: a room gets
//! the configuration, the registry it leaves, the census, the history budget and the Redis
//! engine; a session gets those (to start rooms) plus the per-user places and a way to record
//! its name. The server builds both once, in `hub`.

use std::sync::Arc;

use arc_swap::Guard;

use super::registry::RoomRegistry;
use crate::{
    census::Census,
    cluster::RedisEngine,
    config::{Config, LiveConfig},
    edge::abuse::AbuseLimits,
    history::HistoryBudget,
    names::{SessionId, UserName},
    runtime::Arbiters,
};

/// What a Room actor needs.
pub struct RoomEnv {
    /// Swapped whole on reload; read with [`RoomEnv::config`].
    pub config: LiveConfig,
    pub arbiters: Arbiters,
    pub rooms: Arc<RoomRegistry>,
    pub census: Arc<Census>,
    /// The bytes every memory-engine room's history draws from (`server.history_bytes_total`).
    pub history_budget: Arc<HistoryBudget>,
    /// `Some` in cluster mode: rooms are shared with other nodes through Redis.
    pub cluster: Option<RedisEngine>,
}

impl RoomEnv {
    /// A cheap snapshot of the running configuration.
    pub fn config(&self) -> Guard<Arc<Config>> {
        self.config.load()
    }
}

/// Where a session records the user it is named as (for kicks by user); the edge's session
/// table in the server, anything in tests.
pub trait SessionNames: Send + Sync {
    fn name(&self, id: SessionId, user: UserName);
}

/// What a Session actor needs.
pub struct SessionEnv {
    /// To start the rooms it joins, and for the configuration.
    pub rooms: Arc<RoomEnv>,
    /// Its user's places (`max_sessions_per_user`).
    pub abuse: Arc<AbuseLimits>,
    pub names: Arc<dyn SessionNames>,
}
