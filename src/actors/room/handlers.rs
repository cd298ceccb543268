//! The room's mail: each request is checked here, handed to the room's log, and finished by the
//! same code whichever log answered (at once, or after Redis did).

use std::time::Instant;

use actix::{
    ActorFutureExt, ActorResponse, AsyncContext, Context, Handler, MessageResult, Response,
    WrapFuture,
};
use tokio::sync::oneshot;
use tracing::debug;

use super::{Member, Room, end_slow_consumer};
use crate::{
    actors::{Announce, Close, Inspect, Join, Leave, Post, Reconfigure, Removed, RoomSnapshot},
    edge::outbound::Delivery,
    error::ChatError,
    limits::TokenBucket,
    log::{self, Answer, JoinReply, Joining, LogHost},
    metrics,
    names::SYSTEM_USER,
    packing,
    proto::{self, Kind},
};

impl Handler<Join> for Room {
    type Result = Response<Result<(), ChatError>>;

    fn handle(&mut self, join: Join, ctx: &mut Context<Self>) -> Self::Result {
        let rejoin = self.members.contains_key(&join.session);
        let bucket = if rejoin {
            None
        } else {
            let admitted = self
                .log
                .check_capacity(self.members.len(), self.limits.max_members)
                .and_then(|()| self.bucket_for_join(join.session, Instant::now()));
            match admitted {
                Ok(bucket) => Some(bucket),
                Err(error) => return Response::reply(Err(error)),
            }
        };
        // The empty-room stop must not run while the log answers this JOIN; re-armed on failure.
        if let Some(expiry) = self.expiry.take() {
            ctx.cancel_future(expiry);
        }
        let joining = Joining {
            session: join.session,
            user: join.user.clone(),
            rejoin,
            replay_wanted: join.ack.is_some(),
            since_seq: join.since_seq,
            epoch: join.epoch.clone(),
            presence_ttl: self.presence_ttl(),
        };
        match self.log.join(&joining, &self.limits) {
            Answer::Now(reply) => {
                Response::reply(self.finish_join(join, &joining, bucket, reply, ctx))
            }
            Answer::Echo(reply) => {
                // The room handles nothing else until the log has answered (`ctx.wait`).
                let (done, answer) = oneshot::channel();
                self.joins_in_flight += 1;
                ctx.wait(reply.into_actor(self).map(move |reply, room, ctx| {
                    room.joins_in_flight -= 1;
                    let _ = done.send(room.finish_join(join, &joining, bucket, reply, ctx));
                }));
                Response::fut(async move {
                    answer
                        .await
                        .unwrap_or_else(|_| Err(ChatError::Unavailable("room stopped".into())))
                })
            }
        }
    }
}

impl Room {
    /// The one end of every JOIN: the members already here hear of it first, then the joiner
    /// becomes a member and gets JOINED and its replay.
    fn finish_join(
        &mut self,
        join: Join,
        joining: &Joining,
        bucket: Option<TokenBucket>,
        reply: JoinReply,
        ctx: &mut Context<Self>,
    ) -> Result<(), ChatError> {
        let first = self.members.is_empty();
        let mut admitted = match self.log.admit(reply, joining, first, &self.limits) {
            Ok(admitted) => admitted,
            Err(error) => {
                if let Some(bucket) = bucket {
                    self.remember_departed(join.session, bucket);
                }
                self.expire_when_empty(ctx);
                return Err(error);
            }
        };
        for presence in &admitted.presence {
            self.tell(presence);
        }
        // Members found gone while being told are removed before the joiner is a member: its
        // JOINED does not list them, so it must not hear them leave either. Not `drop_failed`:
        // the room may have no member until the joiner is one, and must not stop meanwhile.
        self.remove_failed(ctx);
        if let Some(bucket) = bucket {
            let member = Member {
                user: join.user.clone(),
                tx: join.tx,
                session: join.addr,
                bucket,
                live_after: admitted.live_after,
            };
            self.members.insert(join.session, member);
        }
        if let Some(r#ref) = join.ack {
            let members = admitted
                .members
                .take()
                .unwrap_or_else(|| self.members.values().map(|m| m.user.to_string()).collect());
            let joined = self.joined(&join.user, r#ref, members, &admitted);
            self.deliver(join.session, joined);
            for message in admitted.replay {
                self.deliver(join.session, message);
            }
        }
        self.drop_failed(ctx);
        Ok(())
    }
}

impl Handler<Post> for Room {
    type Result = ActorResponse<Self, Result<(), ChatError>>;

    fn handle(&mut self, post: Post, ctx: &mut Context<Self>) -> Self::Result {
        if let Err(error) = self.admit_post(post.session, post.content.len()) {
            return ActorResponse::reply(Err(error));
        }
        let user = self.members[&post.session].user.clone();
        let ack = Some((post.session, post.r#ref));
        match self
            .log
            .append(&self.name, user.as_str(), post.content, ack, &self.limits)
        {
            Answer::Now(accepted) => {
                self.accepted(accepted, ctx);
                ActorResponse::reply(Ok(()))
            }
            // A new CHAT's fan-out (and the sender's ack) come with the echo; a resend's ack
            // is sent here, before the session hears the Post answered.
            Answer::Echo(publishing) => {
                ActorResponse::r#async(publishing.into_actor(self).map(|publishing, room, ctx| {
                    let accepted = room.log.published(publishing)?;
                    room.accepted(accepted, ctx);
                    Ok(())
                }))
            }
        }
    }
}

impl Room {
    /// Delivers what the log made of a CHAT: a new one to every member, a resend's original
    /// ack to its sender alone.
    fn accepted(&mut self, accepted: log::Accepted, ctx: &mut Context<Self>) {
        match accepted {
            log::Accepted::Appended(appended, _) => {
                self.fan_out(&appended);
                self.pack_when_quiet(ctx);
            }
            log::Accepted::Published(..) => {}
            log::Accepted::Resent { to, ack } => {
                metrics::get().resends_deduplicated.increment(1);
                self.deliver(to, ack);
            }
            log::Accepted::ResentWithEcho => metrics::get().resends_deduplicated.increment(1),
        }
        self.drop_failed(ctx);
    }
}

impl Handler<Announce> for Room {
    type Result = ActorResponse<Self, Result<(u64, String), ChatError>>;

    /// A CHAT from "system", appended like any other, outside membership and rate limits.
    fn handle(&mut self, announce: Announce, ctx: &mut Context<Self>) -> Self::Result {
        if let Err(error) = log::check_announcement(&announce.content, &self.limits) {
            return ActorResponse::reply(Err(error));
        }
        // Without a `ref` nothing is a resend: every outcome is posted, with a seq and an id.
        let posted = |accepted: &log::Accepted| {
            accepted
                .posted()
                .ok_or_else(|| ChatError::BadRequest("an announcement is never a resend".into()))
        };
        match self.log.append(
            &self.name,
            SYSTEM_USER,
            announce.content,
            None,
            &self.limits,
        ) {
            Answer::Now(accepted) => {
                let posted = posted(&accepted);
                self.accepted(accepted, ctx);
                ActorResponse::reply(posted)
            }
            Answer::Echo(publishing) => ActorResponse::r#async(publishing.into_actor(self).map(
                move |publishing, room, _| room.log.published(publishing).and_then(|a| posted(&a)),
            )),
        }
    }
}

impl Handler<Leave> for Room {
    type Result = Result<(), ChatError>;

    fn handle(&mut self, leave: Leave, ctx: &mut Context<Self>) -> Self::Result {
        let member = self
            .members
            .remove(&leave.session)
            .ok_or(ChatError::NotAMember)?;
        // No LEAVE: the session is ending, and its client may come back to resume.
        let ended = leave.ack.is_none();
        if let Some(r#ref) = leave.ack {
            self.remember_departed(leave.session, member.bucket.clone());
            let left = proto::Message {
                r#ref,
                content: leave.reason,
                ..proto::Message::event(Kind::Left, self.name.as_str(), member.user.as_str())
            };
            if member.tx.try_deliver(proto::encode(&left)) == Delivery::Full {
                end_slow_consumer(&self.name, leave.session, &member);
            }
        }
        self.depart(leave.session, &member.user, ended, ctx);
        self.drop_failed(ctx);
        Ok(())
    }
}

impl Handler<Reconfigure> for Room {
    type Result = ();

    fn handle(&mut self, _: Reconfigure, ctx: &mut Context<Self>) {
        let limits = self.env.config().limits_for(self.name.as_str());
        if *limits != *self.limits {
            // debug: one line per open room on every reload that changes its limits.
            debug!(room = %self.name, "room limits reloaded");
            self.log.set_limits(&limits);
            self.limits = limits;
            // Trimmed to the new limits, a packed buffer may now be mostly dead.
            self.pack_when_quiet(ctx);
        }
    }
}

impl Handler<Inspect> for Room {
    type Result = MessageResult<Inspect>;

    fn handle(&mut self, inspect: Inspect, _ctx: &mut Context<Self>) -> Self::Result {
        let members = if inspect.members {
            self.members
                .iter()
                .map(|(id, m)| (*id, m.user.clone(), m.session.kick()))
                .collect()
        } else {
            Vec::new()
        };
        MessageResult(RoomSnapshot {
            last_seq: self.log.last_seq(),
            member_count: self.members.len(),
            members,
        })
    }
}

impl Handler<Close> for Room {
    type Result = usize;

    fn handle(&mut self, close: Close, ctx: &mut Context<Self>) -> usize {
        let members = std::mem::take(&mut self.members);
        for (id, member) in &members {
            let left = proto::Message {
                content: close.reason.clone(),
                ..proto::Message::event(Kind::Left, self.name.as_str(), member.user.as_str())
            };
            if member.tx.try_deliver(proto::encode(&left)) == Delivery::Full {
                end_slow_consumer(&self.name, *id, member);
            }
            // do_send: one per member, once; the session must forget the room even when busy.
            member.session.removed(Removed {
                room: self.name.clone(),
                id: self.id,
            });
            // Nobody is left to tell here; the Redis log still tells the other nodes.
            self.depart(*id, &member.user, false, ctx);
        }
        // Stopping now: mail still queued (a JOIN, a CHAT) fails and the sender sees the room
        // gone, as with an expired room.
        self.close(ctx);
        members.len()
    }
}

impl Handler<packing::Pack> for Room {
    type Result = ();

    /// The room has been quiet for a while (see `packing`).
    fn handle(&mut self, _: packing::Pack, _: &mut Context<Self>) {
        if let Some(log) = self.log.memory() {
            log.pack();
        }
    }
}
