//! Who a session is: the name its first request (or its token) gives it, and, in cluster mode
//! with `max_sessions_per_user`, the place among its user's sessions over all nodes that the
//! name takes before the request is handled.

use std::time::Duration;

use actix::{ActorFutureExt, AsyncContext, Context, WrapFuture};
use tracing::warn;

use super::Session;
use crate::{
    cluster::RedisEngine,
    error::{ChatError, Fatal},
    names::UserName,
    proto,
};

/// Who the session is. The first request decides, whatever its kind: a valid `user` names the
/// session for good; an empty or invalid one leaves it unnamed, able to PING and nothing else.
pub(super) enum Identity {
    Unset,
    Named(UserName),
    Invalid(&'static str),
}

impl Identity {
    pub(super) fn claim(user: &str) -> Identity {
        if user.is_empty() {
            return Identity::Invalid("the first request of a stream must name its `user`");
        }
        match UserName::parse(user) {
            Ok(user) => Identity::Named(user),
            Err(ChatError::InvalidUser(reason)) => Identity::Invalid(reason),
            Err(_) => Identity::Invalid("invalid user name"),
        }
    }
}

impl Session {
    /// Takes the session's place among its user's sessions over all nodes, then handles the
    /// request that named it. The session waits for Redis (`ctx.wait`), so its later requests
    /// keep their order behind this one. If Redis cannot answer, the session is let in without
    /// a place (it is not counted), rather than refusing users for an outage of the store.
    pub(super) fn claim_in_cluster(
        &mut self,
        engine: RedisEngine,
        user: UserName,
        max: usize,
        msg: proto::Message,
        ctx: &mut Context<Self>,
    ) {
        let ttl = Duration::from_millis(self.env.rooms.config().cluster.presence_ttl_ms);
        let (id, claiming) = (self.id, engine.clone());
        let claim = {
            let user = user.clone();
            async move { claiming.claim_user(user.as_str(), id, ttl, max).await }
        };
        ctx.wait(claim.into_actor(self).map(move |claimed, session, ctx| {
            match claimed {
                Ok(false) => {
                    let status = tonic::Status::resource_exhausted(format!(
                        "user {user} already has max_sessions_per_user ({max}) sessions"
                    ));
                    return session.end(Fatal::Refused(status), ctx);
                }
                Ok(true) => {}
                Err(error) => {
                    warn!(session = %id, %user, %error, "user place not checked (redis unavailable); letting the session in");
                }
            }
            session.cluster_slot = Some(Box::new(session.env.abuse.hold_place(engine, user, id)));
            session.request(msg, ctx);
        }));
    }
}
