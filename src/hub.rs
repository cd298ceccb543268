//! The server's shared state: the configuration, the arbiters, the room registry, the session
//! table, the census, the abuse limits, the token verifier and the Redis engine, each a handle
//! built once here. Its only logic is applying a reloaded configuration to them and, in cluster
//! mode, renewing this node's user places. Actors never see the hub: they get the narrow
//! [`RoomEnv`] and [`SessionEnv`] built from it. The gRPC handler, the admin API and the server's
//! assembly read it.

use std::{sync::Arc, time::Duration};

use arc_swap::{ArcSwap, Guard};

use crate::{
    actors::{
        env::{RoomEnv, SessionEnv},
        registry::RoomRegistry,
    },
    census::Census,
    cluster::RedisEngine,
    config::{Config, LiveConfig},
    edge::{abuse::AbuseLimits, auth::Verifier, sessions::SessionTable},
    history::HistoryBudget,
    runtime::Arbiters,
};

pub struct Hub {
    /// Swapped whole on reload; readers take a cheap snapshot with [`Hub::config`].
    config: LiveConfig,
    /// `server.max_frame_bytes` (the transport's frame limit and the gRPC decoder's), fixed at start.
    frame_limit: usize,
    pub arbiters: Arbiters,
    pub rooms: Arc<RoomRegistry>,
    /// The bytes every memory-engine room's history draws from (`server.history_bytes_total`).
    pub history_budget: Arc<HistoryBudget>,
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
        // Operators kick by session id across the cluster, so ids must not repeat between
        // nodes: each node counts from its own random point of a 2^52 space (exact in JSON).
        let first_id = if cluster.is_some() {
            (uuid::Uuid::now_v7().as_u128() as u64 & ((1 << 52) - 1)) | (1 << 32)
        } else {
            1
        };
        let rooms = Arc::new(RoomRegistry::new(config.server.max_rooms));
        let history_budget = HistoryBudget::new(config.server.history_bytes_total);
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
            cluster: cluster.clone(),
        });
        let session_env = Arc::new(SessionEnv {
            rooms: room_env,
            abuse: abuse.clone(),
            names: sessions.clone(),
        });
        Hub {
            verifier,
            cluster,
            arbiters,
            rooms,
            history_budget,
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

    /// Applies a re-read configuration to the running server: every key `config::KEYS` marks
    /// live takes effect at once (every room, open ones included, takes the new limits). Returns
    /// the changed keys that need a restart; those keep their running value.
    pub fn reload(&self, new: Config) -> Vec<String> {
        let (effective, restart) = self.config().reloaded(new);
        let restart: Vec<String> = restart.into_iter().map(String::from).collect();
        self.sessions.set_max(effective.server.max_sessions);
        self.rooms.set_max(effective.server.max_rooms);
        self.config.store(Arc::new(effective));
        self.rooms.reconfigure_all();
        restart
    }
}

/// Cluster mode: renews this node's places among users' sessions every third of the presence
/// TTL while `max_sessions_per_user` is set, writing back any Redis lost (an outage longer than
/// the TTL, a restart without persistence), so they outlive no node by more than the TTL. Runs
/// until aborted.
pub async fn keep_user_places(hub: Arc<Hub>, engine: RedisEngine) {
    loop {
        let config = hub.config();
        let ttl = Duration::from_millis(config.cluster.presence_ttl_ms);
        let limited = config.server.max_sessions_per_user > 0;
        drop(config);
        if limited {
            let places = hub.abuse.places_held();
            if let Err(error) = engine.refresh_users(&places, ttl).await {
                tracing::warn!(%error, places = places.len(), "user places not renewed");
            }
        }
        tokio::time::sleep(ttl / 3).await;
    }
}
