//! Abuse limits on who may hold streams: per client IP (open streams, and new streams per second
//! through a token bucket) and per user (open sessions). Checked when a stream opens (IP) and when
//! the session is named (user); every place taken is given back by a guard, so the counts cannot
//! drift. Limits of 0 mean "no limit"; values are read from the live configuration. In cluster
//! mode a user's places are counted over all nodes, in Redis ([`ClusterUserSlot`]), and kept
//! there by [`keep_user_places`].

use std::{
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use dashmap::DashMap;
use tokio::sync::watch;
use tonic::Status;

use crate::{
    cluster::RedisEngine,
    config::{LiveConfig, ServerConfig},
    limits::TokenBucket,
    names::{SessionId, UserName},
};

/// Rate buckets are forgotten once full again; the map is swept when it grows past this.
const SWEEP_ABOVE: usize = 1024;

#[derive(Debug, Default)]
pub struct AbuseLimits {
    streams_per_ip: DashMap<IpAddr, usize>,
    new_streams: DashMap<IpAddr, TokenBucket>,
    sessions_per_user: DashMap<UserName, usize>,
    /// Cluster mode: this node's sessions holding a place in Redis, renewed (and written again
    /// if Redis lost them) by [`keep_user_places`].
    places: DashMap<SessionId, UserName>,
    /// Places being given back to Redis right now, waited for at shutdown.
    releasing: ReleaseCount,
}

/// A count with a watch, so shutdown can wait for it to reach zero.
#[derive(Debug)]
struct ReleaseCount(watch::Sender<usize>);

impl Default for ReleaseCount {
    fn default() -> Self {
        ReleaseCount(watch::Sender::new(0))
    }
}

impl AbuseLimits {
    /// Takes a stream place for `ip`, or refuses with RESOURCE_EXHAUSTED.
    pub fn admit_ip(self: &Arc<Self>, ip: IpAddr, cfg: &ServerConfig) -> Result<IpSlot, Status> {
        if cfg.new_streams_per_ip_per_sec > 0.0 {
            let now = Instant::now();
            let (rate, burst) = (cfg.new_streams_per_ip_per_sec, cfg.new_streams_per_ip_burst);
            if self.new_streams.len() > SWEEP_ABOVE {
                self.new_streams.retain(|_, b| !b.is_full(now, rate, burst));
            }
            let mut bucket = self
                .new_streams
                .entry(ip)
                .or_insert_with(|| TokenBucket::full(burst, now));
            if !bucket.try_take(now, rate, burst) {
                return Err(Status::resource_exhausted(format!(
                    "too many new streams from {ip}: at most {rate}/s (burst {burst})"
                )));
            }
        }
        let mut open = self.streams_per_ip.entry(ip).or_insert(0);
        if cfg.max_streams_per_ip > 0 && *open >= cfg.max_streams_per_ip {
            return Err(Status::resource_exhausted(format!(
                "{ip} already holds max_streams_per_ip ({}) streams",
                cfg.max_streams_per_ip
            )));
        }
        *open += 1;
        Ok(IpSlot {
            limits: self.clone(),
            ip,
        })
    }

    /// Records a place `claim_user` took in Redis for `session`; the slot gives it back.
    pub fn hold_place(
        self: &Arc<Self>,
        engine: RedisEngine,
        user: UserName,
        session: SessionId,
    ) -> ClusterUserSlot {
        self.places.insert(session, user.clone());
        ClusterUserSlot {
            limits: self.clone(),
            engine,
            user,
            session,
        }
    }

    /// This node's places among users' sessions, as (user, session) pairs, for renewal.
    pub fn places_held(&self) -> Vec<(String, SessionId)> {
        let places = self.places.iter();
        places.map(|p| (p.value().to_string(), *p.key())).collect()
    }

    /// Waits (at most `limit`) until every place given back has reached Redis, so a node that
    /// stops cleanly does not keep its users' places until they expire.
    pub async fn places_released(&self, limit: Duration) {
        let mut releasing = self.releasing.0.subscribe();
        let _ = tokio::time::timeout(limit, releasing.wait_for(|n| *n == 0)).await;
    }

    /// Takes a session place for `user`, or refuses with RESOURCE_EXHAUSTED.
    pub fn claim_user(self: &Arc<Self>, user: &UserName, max: usize) -> Result<UserSlot, Status> {
        let mut open = self.sessions_per_user.entry(user.clone()).or_insert(0);
        if max > 0 && *open >= max {
            return Err(Status::resource_exhausted(format!(
                "user {user} already has max_sessions_per_user ({max}) sessions"
            )));
        }
        *open += 1;
        Ok(UserSlot {
            limits: self.clone(),
            user: user.clone(),
        })
    }
}

/// One open stream of an IP; given back on drop.
#[derive(Debug)]
pub struct IpSlot {
    limits: Arc<AbuseLimits>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        self.limits.streams_per_ip.remove_if_mut(&self.ip, |_, n| {
            *n -= 1;
            *n == 0
        });
    }
}

/// One open session of a user; given back on drop.
#[derive(Debug)]
pub struct UserSlot {
    limits: Arc<AbuseLimits>,
    user: UserName,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        self.limits
            .sessions_per_user
            .remove_if_mut(&self.user, |_, n| {
                *n -= 1;
                *n == 0
            });
    }
}

/// A session's place among its user's sessions over all nodes (cluster mode), taken with
/// [`RedisEngine::claim_user`]; given back on drop. Kept alive in Redis by the node's periodic
/// renewal, so a node that dies frees its places within the TTL.
pub struct ClusterUserSlot {
    limits: Arc<AbuseLimits>,
    engine: RedisEngine,
    user: UserName,
    session: SessionId,
}

impl Drop for ClusterUserSlot {
    fn drop(&mut self) {
        // Out of the renewal first, so the renewal does not write the place back.
        self.limits.places.remove(&self.session);
        let (engine, user, session) = (self.engine.clone(), self.user.clone(), self.session);
        let limits = self.limits.clone();
        limits.releasing.0.send_modify(|n| *n += 1);
        // On the engine's runtime: the session's arbiter may be stopping (shutdown). If Redis
        // cannot be reached the place expires after the TTL instead.
        self.engine.spawn(async move {
            if let Err(error) = engine.release_user(user.as_str(), session).await {
                tracing::debug!(%user, %session, %error, "user place not given back; it expires");
            }
            limits.releasing.0.send_modify(|n| *n -= 1);
        });
    }
}

/// Cluster mode: renews this node's places among users' sessions every third of the presence
/// TTL while `max_sessions_per_user` is set, writing back any Redis lost (an outage longer than
/// the TTL, a restart without persistence), so they outlive no node by more than the TTL. Runs
/// until aborted.
pub async fn keep_user_places(limits: Arc<AbuseLimits>, config: LiveConfig, engine: RedisEngine) {
    loop {
        let running = config.load();
        let ttl = Duration::from_millis(running.cluster.presence_ttl_ms);
        let limited = running.server.max_sessions_per_user > 0;
        drop(running);
        if limited {
            let places = limits.places_held();
            if let Err(error) = engine.refresh_users(&places, ttl).await {
                tracing::warn!(%error, places = places.len(), "user places not renewed");
            }
        }
        tokio::time::sleep(ttl / 3).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(max_streams_per_ip: usize, rate: f64, burst: u32) -> ServerConfig {
        ServerConfig {
            max_streams_per_ip,
            new_streams_per_ip_per_sec: rate,
            new_streams_per_ip_burst: burst,
            ..ServerConfig::default()
        }
    }

    #[test]
    fn ip_places_are_counted_and_given_back() {
        let limits = Arc::new(AbuseLimits::default());
        let ip: IpAddr = [127, 0, 0, 1].into();
        let c = cfg(2, 0.0, 1);
        let a = limits.admit_ip(ip, &c).unwrap();
        let _b = limits.admit_ip(ip, &c).unwrap();
        assert!(limits.admit_ip(ip, &c).is_err());
        drop(a);
        assert!(limits.admit_ip(ip, &c).is_ok());
        let other: IpAddr = [127, 0, 0, 2].into();
        assert!(limits.admit_ip(other, &c).is_ok(), "limits are per IP");
    }

    #[test]
    fn new_stream_rate_per_ip() {
        let limits = Arc::new(AbuseLimits::default());
        let ip: IpAddr = [127, 0, 0, 1].into();
        let c = cfg(0, 0.001, 3);
        let slots: Vec<IpSlot> = (0..3).map(|_| limits.admit_ip(ip, &c).unwrap()).collect();
        drop(slots);
        let refused = limits.admit_ip(ip, &c).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    }

    #[test]
    fn user_places_are_counted_and_the_map_empties() {
        let limits = Arc::new(AbuseLimits::default());
        let eve = UserName::parse("eve").unwrap();
        let a = limits.claim_user(&eve, 1).unwrap();
        assert!(limits.claim_user(&eve, 1).is_err());
        drop(a);
        let b = limits.claim_user(&eve, 1).unwrap();
        drop(b);
        assert!(limits.sessions_per_user.is_empty());
        assert!(limits.claim_user(&eve, 0).is_ok(), "0 = no limit");
    }
}
