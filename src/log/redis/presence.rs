//! Presence in a Redis log. Presence events carry no seq, so the log keeps a roster of every
//! node's members: an event that changes nothing in it is not passed on, each JOIN's member list
//! (the truth at that moment) settles it for the members already here, and after a lost
//! connection the differences with Redis are announced. This node's entries are refreshed every
//! third of `presence_ttl_ms`, and a member who leaves has its entry removed (its LEAVE then
//! reaches every node on the channel).

use std::collections::HashMap;

use actix::{ActorFutureExt, AsyncContext, Context, WrapFuture};
use tracing::warn;

use super::{Link, RedisLog, event, sync};
use crate::{
    cluster::{LocalPresence, Member},
    log::{Echo, LogHost, Presence},
    names::{SessionId, UserName},
    proto::{self, Kind},
};

type Roster = HashMap<(String, SessionId), String>;

impl RedisLog {
    pub fn leaves_in_flight(&self) -> bool {
        self.leaves_in_flight > 0
    }

    /// Removes the presence entry of a session that left this node's room; the LEAVE reaches
    /// every node's members through the channel. The room waits for it, so a quick re-JOIN of
    /// the same session cannot be overtaken by its own older LEAVE. If Redis cannot be reached,
    /// the entry expires after `presence_ttl_ms` and a sweep announces the LEAVE then.
    pub fn leave(&mut self, session: SessionId, user: &UserName) -> Echo<()> {
        let (engine, name) = (self.engine.clone(), self.name.to_string());
        let user = user.to_string();
        let body = event(&name, Kind::Leave, &user);
        // Runs on the engine's runtime, so it completes even if the room or its arbiter stops
        // meanwhile (shutdown).
        let removal = self.engine.spawn(async move {
            if let Err(error) = engine.leave(&name, session, &user, body).await {
                warn!(room = %name, session = %session, %error, "LEAVE not published; presence expires by TTL");
            }
        });
        self.leaves_in_flight += 1;
        Box::pin(async move { drop(removal.await) })
    }

    /// A LEAVE from [`RedisLog::leave`] is published (or given up on).
    pub fn left(&mut self) {
        self.leaves_in_flight -= 1;
    }

    /// Records a member; false if it was known already.
    pub(super) fn roster_add(&mut self, node: String, session: SessionId, user: &str) -> bool {
        self.roster
            .insert((node, session), user.to_string())
            .is_none()
    }

    /// Forgets a member; false if it was not known.
    pub(super) fn roster_remove(&mut self, node: String, session: SessionId) -> bool {
        self.roster.remove(&(node, session)).is_some()
    }

    /// The member list a JOIN's script returned is the truth at that moment. With nobody here
    /// yet it simply becomes the roster (the joiner included: its own JOIN echo then changes
    /// nothing, and nobody else here needs it). Otherwise the members already here are told the
    /// differences (the joiner is not a member yet, so it gets none of them), which makes the
    /// older presence events still on their way change nothing — the joiner's JOINED already
    /// reflects them. The joiner's own entry stays out, so its JOIN echo is announced.
    pub(super) fn take_join_snapshot(
        &mut self,
        members: &[Member],
        joiner: SessionId,
        first: bool,
    ) -> Vec<Presence> {
        let snapshot: Roster = members
            .iter()
            .map(|m| ((m.node.clone(), m.session), m.user.clone()))
            .collect();
        if first {
            self.roster = snapshot;
            return Vec::new();
        }
        let own = (self.engine.node_id().to_string(), joiner);
        self.settle_roster(snapshot, Some(own))
    }

    /// Makes the roster equal `truth` (but for `skip`, left as it is); answers each member that
    /// went or came, to tell the members here — never a member about itself.
    fn settle_roster(&mut self, truth: Roster, skip: Option<(String, SessionId)>) -> Vec<Presence> {
        let me = self.engine.node_id().to_string();
        let skipped = |key: &(String, SessionId)| skip.as_ref() == Some(key);
        let gone: Vec<(String, SessionId)> = self
            .roster
            .keys()
            .filter(|key| !skipped(key) && !truth.contains_key(*key))
            .cloned()
            .collect();
        let came: Roster = truth
            .into_iter()
            .filter(|(key, _)| !skipped(key) && !self.roster.contains_key(key))
            .collect();
        let mut changes = Vec::with_capacity(gone.len() + came.len());
        for key in gone {
            let except = (key.0 == me).then_some(key.1);
            if let Some(user) = self.roster.remove(&key) {
                changes.push(Presence {
                    kind: Kind::Leave,
                    user,
                    except,
                });
            }
        }
        for (key, user) in came {
            let except = (key.0 == me).then_some(key.1);
            self.roster.insert(key, user.clone());
            changes.push(Presence {
                kind: Kind::Join,
                user,
                except,
            });
        }
        changes
    }
}

/// Writes this node's members' entries again and sweeps other nodes' expired ones.
pub(super) fn refresh<H: LogHost>(host: &mut H, ctx: &mut Context<H>) {
    let ttl = host.presence_ttl();
    let local = host.local_members();
    let Some(log) = host.redis_log() else {
        return;
    };
    log.forget_stale_acks();
    if !matches!(log.link, Link::Up { .. }) {
        return sync::ensure_subscribed(host, ctx);
    }
    if log.refreshing {
        return;
    }
    log.refreshing = true;
    let local: Vec<LocalPresence> = local
        .into_iter()
        .map(|(session, user)| LocalPresence {
            session,
            join_body: proto::encode(&proto::Message::event(
                Kind::Join,
                log.name.as_str(),
                user.as_str(),
            )),
            user: user.to_string(),
        })
        .collect();
    let (engine, name) = (log.engine.clone(), log.name.to_string());
    // The refresh is awaited by the room (one round trip per third of the TTL): run beside a
    // LEAVE, its member list could re-add a member that just left.
    let refreshing = async move {
        let refreshed = engine.refresh(&name, &local, ttl).await;
        let swept = engine.sweep(&name).await;
        if let Err(error) = refreshed.and(swept) {
            tracing::debug!(room = %name, %error, "presence refresh failed");
        }
    };
    let task = actix_rt::spawn(refreshing);
    ctx.wait(
        async move { drop(task.await) }
            .into_actor(host)
            .map(|(), host, _| {
                if let Some(log) = host.redis_log() {
                    log.refreshing = false;
                }
            }),
    );
}

/// After a reconnect: members that came or went meanwhile are announced from the difference
/// between the roster and the truth — Redis for other nodes' members, the room's own member
/// table for this node's (Redis may not have them back yet).
pub(super) fn reconcile<H: LogHost>(host: &mut H, ctx: &mut Context<H>) {
    let Some(log) = host.redis_log() else {
        return;
    };
    let (engine, name) = (log.engine.clone(), log.name.to_string());
    let reading = async move { engine.members(&name).await };
    ctx.wait(reading.into_actor(host).map(|members, host, ctx| {
        let Ok(members) = members else {
            warn!(room = %host.room_name(), "presence not reconciled, re-syncing");
            return sync::retry_resync(host, ctx);
        };
        let local = host.local_members();
        let Some(log) = host.redis_log() else {
            return;
        };
        let me = log.engine.node_id().to_string();
        // Other nodes' members as Redis has them; this node's as they are here.
        let mut now: Roster = members
            .into_iter()
            .filter(|m| m.node != me)
            .map(|m| ((m.node, m.session), m.user))
            .collect();
        now.extend(
            local
                .into_iter()
                .map(|(id, user)| ((me.clone(), id), user.to_string())),
        );
        for presence in log.settle_roster(now, None) {
            host.announce(presence, ctx);
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        cluster::{RedisEngine, Timeouts},
        names::RoomName,
    };

    /// A log on node "me" whose engine never reaches a Redis (the roster needs none).
    fn log() -> RedisLog {
        let urls = ["redis://127.0.0.1:1".to_string()];
        // unwrap: a valid URL and node id, inside a runtime.
        let engine = RedisEngine::new(&urls, "me", Timeouts::default()).unwrap();
        RedisLog::new(engine, RoomName::parse("r").unwrap()).0
    }

    fn member(node: &str, session: u64, user: &str) -> Member {
        Member {
            node: node.into(),
            session: SessionId(session),
            user: user.into(),
        }
    }

    fn told(changes: &[Presence]) -> Vec<(Kind, &str, Option<u64>)> {
        let mut told: Vec<_> = changes
            .iter()
            .map(|p| (p.kind, p.user.as_str(), p.except.map(|s| s.0)))
            .collect();
        told.sort_by_key(|(kind, user, _)| (*kind as i32, user.to_string()));
        told
    }

    #[tokio::test]
    async fn a_first_join_takes_the_snapshot_and_later_ones_tell_only_the_differences() {
        let mut log = log();
        let snapshot = [member("me", 1, "ada"), member("other", 7, "bob")];
        assert!(
            log.take_join_snapshot(&snapshot, SessionId(1), true)
                .is_empty()
        );
        assert!(
            !log.roster_add("other".into(), SessionId(7), "bob"),
            "known"
        );

        // bob left and cy came meanwhile; dan (this node's joiner) is left to its own echo.
        let truth = [
            member("me", 1, "ada"),
            member("other", 8, "cy"),
            member("me", 2, "dan"),
        ];
        let changes = log.take_join_snapshot(&truth, SessionId(2), false);
        assert_eq!(
            told(&changes),
            vec![(Kind::Join, "cy", None), (Kind::Leave, "bob", None)]
        );
        assert!(
            log.roster_add("me".into(), SessionId(2), "dan"),
            "dan's echo is news"
        );
        assert!(log.roster_remove("other".into(), SessionId(8)));
        assert!(
            !log.roster_remove("other".into(), SessionId(8)),
            "told once"
        );
    }

    #[tokio::test]
    async fn this_nodes_members_are_never_told_about_themselves() {
        let mut log = log();
        log.roster_add("me".into(), SessionId(1), "ada");
        let truth: Roster = [(("me".to_string(), SessionId(3)), "eve".to_string())].into();
        let changes = log.settle_roster(truth, None);
        assert_eq!(
            told(&changes),
            vec![(Kind::Join, "eve", Some(3)), (Kind::Leave, "ada", Some(1))]
        );
    }
}
