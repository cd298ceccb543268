//! The Session actor: one per `ChatStream` call. It owns the stream's identity, the rooms it has
//! joined and its replies; each request is parsed ([`super::request`]) and turned into mail for a
//! room. Requests are handled strictly one at a time (`ctx.wait`), so a CHAT sent right after a
//! JOIN finds the membership in place and acks come back in send order. Leaving every room on any
//! exit lives in `stopping()`. Naming lives in `identity`, the joined rooms in `joined`, the idle
//! and expiry timers in `timers`, the mail it handles in `handlers`.

use std::{sync::Arc, time::Instant};

mod handlers;
mod identity;
mod joined;
mod timers;

use actix::{
    Actor, ActorContext, ActorFutureExt, Addr, AsyncContext, Context, Running, WrapFuture,
};
use bytes::Bytes;
use tokio::sync::oneshot;
use tracing::{info, warn};

use self::{identity::Identity, joined::Joined};
use super::{
    Join, Leave, Post, SessionHandle,
    env::{RoomEnv, SessionNames},
    registry::{RoomRef, RoomRegistry},
    request::{self, Caller, Parsed, Request},
    room::Room,
};
use crate::{
    census::{Counted, Living},
    edge::{
        abuse::{AbuseLimits, ClusterUserSlot, UserSlot},
        auth::Authorized,
        outbound::{Delivery, SessionTx},
    },
    error::{ChatError, Fatal},
    metrics,
    names::{RoomName, SessionId, UserName},
    proto::{self, Kind},
};

/// A JOIN that meets a stopping room retries on a fresh one; more than a couple of rounds means
/// something else is wrong.
const JOIN_ATTEMPTS: usize = 8;

/// What a Session actor needs; the server builds it once, in `hub`.
pub struct SessionEnv {
    /// What the rooms it starts get, and the configuration.
    pub rooms: Arc<RoomEnv>,
    /// Where it finds (or starts) the rooms it joins.
    pub registry: Arc<RoomRegistry>,
    /// Its user's places (`max_sessions_per_user`).
    pub abuse: Arc<AbuseLimits>,
    pub names: Arc<dyn SessionNames>,
    /// Where CHAT and JOIN with an empty `room` go (`server.default_room`, fixed for the life
    /// of the server).
    pub default_room: RoomName,
}

/// Every open stream has one, for as long as it is open: what only some sessions use (a token,
/// a place held in Redis) is boxed, so an idle session holds as little as it can.
pub struct Session {
    id: SessionId,
    env: Arc<SessionEnv>,
    tx: SessionTx,
    identity: Identity,
    /// The verified token (jwt mode): its `rooms` claim limits the rooms, and its expiry
    /// (`expires_at`) ends the session.
    token: Option<Box<Authorized>>,
    rooms: Joined,
    /// What the rooms it joins may send it.
    handle: Arc<SessionHandle>,
    last_seen: Instant,
    /// Dropped with the actor, which tells the edge's reader task to let go of the request stream.
    _stopped: oneshot::Sender<()>,
    _census: Counted,
    /// This session's place among its user's sessions (`max_sessions_per_user`) on this node,
    /// or (cluster mode with a limit) over all nodes.
    user_slot: Option<UserSlot>,
    cluster_slot: Option<Box<ClusterUserSlot>>,
}

impl Session {
    /// Starts the session of one stream on its connection's arbiter (or the next one).
    pub fn start(
        env: Arc<SessionEnv>,
        id: SessionId,
        tx: SessionTx,
        stopped: oneshot::Sender<()>,
        authorized: Option<Authorized>,
    ) -> Addr<Session> {
        let arbiter = env.rooms.arbiters.here_or_next();
        let census = env.rooms.census.enter(Living::SessionActor);
        Session::start_in_arbiter(&arbiter, move |ctx| Session {
            id,
            handle: Arc::new(SessionHandle::of(ctx.address())),
            env,
            tx,
            // A verified token names the session; the `user` field of requests is then ignored.
            identity: authorized
                .as_ref()
                .map_or(Identity::Unset, |a| Identity::Named(a.user.clone())),
            token: authorized.map(Box::new),
            rooms: Joined::default(),
            last_seen: Instant::now(),
            _stopped: stopped,
            _census: census,
            user_slot: None,
            cluster_slot: None,
        })
    }

    fn request(&mut self, msg: proto::Message, ctx: &mut Context<Self>) {
        if matches!(self.identity, Identity::Unset) {
            self.identity = Identity::claim(&msg.user);
        }
        // Once per session, on its first request: the name (from that request or from the
        // token) takes a place among its user's sessions.
        if self.user_slot.is_none()
            && self.cluster_slot.is_none()
            && let Identity::Named(user) = &self.identity
        {
            info!(session = %self.id, user = %user, "session named");
            self.env.names.name(self.id, user.clone());
            let max = self.env.rooms.config().server.max_sessions_per_user;
            if let Some(engine) = &self.env.rooms.cluster
                && max > 0
            {
                return self.claim_in_cluster(engine.clone(), user.clone(), max, msg, ctx);
            }
            match self.env.abuse.claim_user(user, max) {
                Ok(slot) => self.user_slot = Some(slot),
                Err(status) => return self.end(Fatal::Refused(status), ctx),
            }
        }
        let named = match &self.identity {
            Identity::Named(_) => Ok(()),
            Identity::Invalid(reason) => Err(ChatError::InvalidUser(reason)),
            Identity::Unset => unreachable!("claimed above"),
        };
        let may_use = |room: &RoomName| {
            let token = self.token.as_deref();
            token.is_none_or(|t| t.may_use(room.as_str()))
        };
        let caller = Caller {
            named,
            may_use: &may_use,
        };
        let Parsed { request, r#ref } = match request::parse(msg, &self.env.default_room, &caller) {
            Ok(parsed) => parsed,
            Err(refusal) => return self.refuse(refusal.error, &refusal.room, refusal.r#ref, ctx),
        };
        if let Request::Ping { room } = &request {
            return self.pong(room, r#ref, ctx);
        }
        let Identity::Named(user) = &self.identity else {
            unreachable!("only a named caller's requests parse, PING aside")
        };
        let user = user.clone();
        match request {
            Request::Ping { .. } => {}
            Request::Join {
                room,
                since_seq,
                epoch,
            } => self.join(user, room, since_seq, epoch, r#ref, ctx),
            Request::Leave { room } => self.leave(room, r#ref, String::new(), ctx),
            Request::Chat { room, content } => self.chat(user, room, content, r#ref, ctx),
        }
    }

    fn has_room_for(&self, room: &RoomName) -> Result<(), ChatError> {
        let max = self.env.rooms.config().session.max_rooms_per_session;
        if !self.rooms.contains(room) && self.rooms.len() >= max {
            return Err(ChatError::TooManyRooms { max });
        }
        Ok(())
    }

    fn join_mail(
        &self,
        user: UserName,
        (since_seq, epoch): (u64, String),
        ack: Option<String>,
    ) -> Join {
        Join {
            session: self.id,
            user,
            tx: self.tx.clone(),
            addr: self.handle.clone(),
            since_seq,
            epoch,
            ack,
        }
    }

    fn join(
        &mut self,
        user: UserName,
        room: RoomName,
        since_seq: u64,
        epoch: String,
        r#ref: String,
        ctx: &mut Context<Self>,
    ) {
        if let Err(error) = self.has_room_for(&room) {
            return self.refuse(error, room.as_str(), r#ref, ctx);
        }
        let join = self.join_mail(user, (since_seq, epoch), Some(r#ref.clone()));
        let joining = join_room(self.env.clone(), room.clone(), join)
            .into_actor(self)
            .map(move |joined, session, ctx| match joined {
                Ok(addr) => {
                    session.rooms.insert(room, addr);
                }
                Err(error) => session.refuse(error, room.as_str(), r#ref, ctx),
            });
        ctx.wait(joining);
    }

    fn chat(
        &mut self,
        user: UserName,
        room: RoomName,
        content: String,
        r#ref: String,
        ctx: &mut Context<Self>,
    ) {
        let post = Post {
            session: self.id,
            content,
            r#ref: r#ref.clone(),
        };
        let member = self.rooms.get(&room).cloned();
        // A client of the original design never JOINs: its first CHAT to the default room joins
        // it silently (no JOINED, no replay), the other members see the presence as usual.
        let auto_join = match &member {
            Some(_) => None,
            None if room == self.env.default_room => {
                if let Err(error) = self.has_room_for(&room) {
                    return self.refuse(error, room.as_str(), r#ref, ctx);
                }
                Some(self.join_mail(user, (0, String::new()), None))
            }
            None => return self.refuse(ChatError::NotAMember, room.as_str(), r#ref, ctx),
        };
        let env = self.env.clone();
        let target = room.clone();
        let posting = async move {
            let addr = match (member, auto_join) {
                (Some(addr), _) => addr,
                (None, Some(join)) => join_room(env, target, join).await?,
                (None, None) => return Err(ChatError::NotAMember),
            };
            let posted = addr.send(post).await;
            Ok((addr, posted))
        };
        let posting = posting.into_actor(self).map(move |result, session, ctx| {
            let error = match result {
                Ok((addr, posted)) => {
                    session.rooms.insert_if_absent(room.clone(), addr);
                    match posted {
                        Ok(Ok(())) => return,
                        Ok(Err(error)) => error,
                        Err(_) => {
                            // The room is gone, so the membership is too.
                            session.rooms.remove(&room);
                            ChatError::NotAMember
                        }
                    }
                }
                Err(error) => error,
            };
            session.refuse(error, room.as_str(), r#ref, ctx);
        });
        ctx.wait(posting);
    }

    /// Leaves `room`; its LEFT carries `reason` (empty unless an operator kicked the session).
    fn leave(&mut self, room: RoomName, r#ref: String, reason: String, ctx: &mut Context<Self>) {
        let Some(addr) = self.rooms.remove(&room) else {
            return self.refuse(ChatError::NotAMember, room.as_str(), r#ref, ctx);
        };
        let leave = Leave {
            session: self.id,
            ack: Some(r#ref.clone()),
            reason,
        };
        let leaving = addr
            .send(leave)
            .into_actor(self)
            .map(move |left, session, ctx| match left {
                Ok(Ok(())) => {}
                // Dropped by the room meanwhile (as a slow consumer) or the room is gone.
                Ok(Err(error)) => session.refuse(error, room.as_str(), r#ref, ctx),
                Err(_) => session.refuse(ChatError::NotAMember, room.as_str(), r#ref, ctx),
            });
        ctx.wait(leaving);
    }

    fn pong(&mut self, room: &str, r#ref: String, ctx: &mut Context<Self>) {
        let pong = proto::Message {
            r#ref,
            ..proto::Message::event(Kind::Pong, self.room_or_default(room), self.user_name())
        };
        self.push(proto::encode(&pong), ctx);
    }

    fn refuse(&mut self, error: ChatError, room: &str, r#ref: String, ctx: &mut Context<Self>) {
        metrics::refused(error.code());
        let message = proto::Message {
            user: self.user_name().to_string(),
            ..proto::Message::error(
                error.code(),
                error.to_string(),
                self.room_or_default(room),
                r#ref,
            )
        };
        self.push(proto::encode(&message), ctx);
    }

    /// Replies from the session itself obey the same rule as room traffic: never wait.
    fn push(&mut self, message: Bytes, ctx: &mut Context<Self>) {
        match self.tx.try_deliver(message) {
            Delivery::Full => self.end(Fatal::SlowConsumer, ctx),
            Delivery::Sent | Delivery::Closed => {}
        }
    }

    fn end(&mut self, fatal: Fatal, ctx: &mut Context<Self>) {
        self.tx.end(fatal);
        ctx.stop();
    }

    fn user_name(&self) -> &str {
        match &self.identity {
            Identity::Named(user) => user.as_str(),
            _ => "",
        }
    }

    /// Every server message names a room: an empty one means the default room.
    fn room_or_default<'a>(&'a self, room: &'a str) -> &'a str {
        if room.is_empty() {
            self.env.default_room.as_str()
        } else {
            room
        }
    }
}

/// Joins `name`, retrying on a fresh room when the registered one is stopping or dead.
async fn join_room(env: Arc<SessionEnv>, name: RoomName, join: Join) -> Result<RoomRef, ChatError> {
    for _ in 0..JOIN_ATTEMPTS {
        let room = env
            .registry
            .get_or_create(&name, |id| Room::start(&env.rooms, name.clone(), id))?;
        match room.send(join.clone()).await {
            Ok(Ok(())) => return Ok(room),
            Ok(Err(error)) => return Err(error),
            // The room stopped (empty-room TTL) with this JOIN still queued, or died: it is no
            // longer registered (or is removed now), so the next lookup starts a fresh one.
            Err(_) => {
                env.registry.remove_if_same(&name, room.id);
            }
        }
    }
    warn!(room = %name, "JOIN kept meeting stopping rooms");
    Err(ChatError::RoomRestarting)
}

impl Actor for Session {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        info!(session = %self.id, "session started");
        if let Some(limit) = self.env.rooms.config().session.idle_timeout() {
            self.watch_idle(ctx, limit);
        }
        if let Some(expires_at) = self.token.as_ref().and_then(|t| t.expires_at) {
            self.watch_expiry(ctx, expires_at);
        }
    }

    fn stopping(&mut self, _ctx: &mut Context<Self>) -> Running {
        for (_, room) in self.rooms.take_all() {
            // do_send: one per joined room (bounded by max_rooms_per_session), and the room must
            // hear of it even when its mailbox is full, or the member would linger.
            room.do_send(Leave {
                session: self.id,
                ack: None,
                reason: String::new(),
            });
        }
        Running::Stop
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        let reason = self.tx.fatal().map_or("client_closed", Fatal::reason);
        info!(session = %self.id, user = self.user_name(), reason, "session ended");
    }
}
