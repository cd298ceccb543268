//! The server's shared state, without logic: the configuration, the arbiters, the room registry,
//! the session table, the census, the abuse limits, the token verifier and the Redis engine,
//! each a handle built once here and handed to whoever needs that part. Actors never see the
//! hub: they get the narrow [`RoomEnv`] and [`SessionEnv`] built from it. The gRPC handler, the
//! admin API and the server read it; what acts on it lives with its owner (the reload in
//! `server::reload`, renewing user places in `edge::abuse`).

use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};

use crate::{
    actors::{env::RoomEnv, registry::RoomRegistry, session::SessionEnv},
    census::Census,
    cluster::RedisEngine,
    config::{Config, LiveConfig},
    edge::{abuse::AbuseLimits, auth::Verifier, sessions::SessionTable},
    history::HistoryBudget,
    names::RoomName,
    packing::Packer,
    runtime::Arbiters,
};

pub struct Hub {
    /// Swapped whole on reload (`server::apply_reload`); readers take a cheap snapshot with
    /// [`Hub::config`].
    pub config: LiveConfig,
    /// `server.max_frame_bytes` (the transport's frame limit and the gRPC decoder's), fixed at start.
    frame_limit: usize,
    pub arbiters: Arbiters,
    pub rooms: Arc<RoomRegistry>,
    /// The bytes every memory-engine room's history draws from (`server.history_bytes_total`).
    pub history_budget: Arc<HistoryBudget>,
    /// Tells quiet memory rooms to pack their histories; the server runs its sweep.
    pub packer: Arc<Packer>,
    pub sessions: Arc<SessionTable>,
    pub census: Arc<Census>,
    pub abuse: Arc<AbuseLimits>,
    /// `Some` in jwt mode: every stream must carry a valid bearer token.
    pub verifier: Option<Verifier>,
    /// `Some` in cluster mode: rooms are shared with other nodes through Redis.
    pub cluster: Option<RedisEngine>,
    /// What sessions are started with (the same handles as above).
    pub session_env: Arc<SessionEnv>,
}

impl Hub {
    pub fn new(config: Config, arbiters: Arbiters, cluster: Option<RedisEngine>) -> Hub {
        let max_sessions = config.server.max_sessions;
        // unwrap: the configuration was validated, which builds the same verifier.
        let verifier = Verifier::from_config(&config.auth).unwrap();
        let first_id = SessionTable::first_id(cluster.is_some());
        let rooms = Arc::new(RoomRegistry::new(config.server.max_rooms));
        // unwrap: the configuration was validated, default_room included.
        let default_room = RoomName::parse(&config.server.default_room).unwrap();
        let history_budget = HistoryBudget::new(config.server.history_bytes_total);
        let packer = Packer::new();
        let frame_limit = config.server.max_frame_bytes;
        let config: LiveConfig = Arc::new(ArcSwap::from_pointee(config));
        let sessions = Arc::new(SessionTable::new(max_sessions, first_id));
        let census = Arc::new(Census::default());
        let abuse = Arc::new(AbuseLimits::default());
        let room_env = Arc::new(RoomEnv {
            config: config.clone(),
            arbiters: arbiters.clone(),
            rooms: rooms.clone(),
            census: census.clone(),
            history_budget: history_budget.clone(),
            packer: packer.clone(),
            cluster: cluster.clone(),
        });
        let session_env = Arc::new(SessionEnv {
            rooms: room_env,
            registry: rooms.clone(),
            abuse: abuse.clone(),
            names: sessions.clone(),
            default_room,
        });
        Hub {
            verifier,
            cluster,
            arbiters,
            rooms,
            history_budget,
            packer,
            frame_limit,
            config,
            sessions,
            census,
            abuse,
            session_env,
        }
    }

    pub fn config(&self) -> Guard<Arc<Config>> {
        self.config.load()
    }

    pub fn frame_limit(&self) -> usize {
        self.frame_limit
    }
}
