//! The Session actor: one per `ChatStream` call. It owns the stream's identity, the rooms it has
//! joined and the idle check, validates each request and turns it into mail for a room. Requests
//! are handled strictly one at a time (`ctx.wait`), so a CHAT sent right after a JOIN finds the
//! membership in place and acks come back in send order. Leaving every room on any exit lives in
//! `stopping()`.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use actix::{
    Actor, ActorContext, ActorFutureExt, Addr, AsyncContext, Context, Handler, Running, WrapFuture,
};
use bytes::Bytes;
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::{
    End, Evicted, Inbound, InboundEnded, Join, Kick, Leave, Post, Removed,
    env::{RoomEnv, SessionEnv},
    request::{self, Caller, Parsed, Request},
    room::Room,
};
use crate::{
    census::{Counted, Living},
    cluster::RedisEngine,
    edge::{
        abuse::{ClusterUserSlot, UserSlot},
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
/// Longest single wait of the token-expiry timer: a far `exp` is reached in steps, each
/// measured again on the wall clock (the one `exp` is in), which may also be set meanwhile.
const EXPIRY_STEP: Duration = Duration::from_secs(3600);

/// Who the session is. The first request decides, whatever its kind: a valid `user` names the
/// session for good; an empty or invalid one leaves it unnamed, able to PING and nothing else.
enum Identity {
    Unset,
    Named(UserName),
    Invalid(&'static str),
}

impl Identity {
    fn claim(user: &str) -> Identity {
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

pub struct Session {
    id: SessionId,
    env: Arc<SessionEnv>,
    tx: SessionTx,
    identity: Identity,
    /// The token's `rooms` claim, when it has one.
    allowed_rooms: Option<Authorized>,
    /// When the token (jwt mode) expires: the session ends then.
    expires_at: Option<SystemTime>,
    rooms: HashMap<RoomName, Addr<Room>>,
    /// Where CHAT and JOIN with an empty `room` go; fixed for the life of the server.
    default_room: RoomName,
    last_seen: Instant,
    /// Dropped with the actor, which tells the edge's reader task to let go of the request stream.
    _stopped: oneshot::Sender<()>,
    _census: Counted,
    /// This session's place among its user's sessions (`max_sessions_per_user`) on this node,
    /// or (cluster mode with a limit) over all nodes.
    user_slot: Option<UserSlot>,
    cluster_slot: Option<ClusterUserSlot>,
}

impl Session {
    /// Starts the session of one stream on the next arbiter.
    pub fn start(
        env: Arc<SessionEnv>,
        id: SessionId,
        tx: SessionTx,
        stopped: oneshot::Sender<()>,
        authorized: Option<Authorized>,
    ) -> Addr<Session> {
        let arbiter = env.rooms.arbiters.next().clone();
        // unwrap: the configuration was validated, default_room included.
        let default_room = RoomName::parse(&env.rooms.config().server.default_room).unwrap();
        let census = env.rooms.census.enter(Living::SessionActor);
        Session::start_in_arbiter(&arbiter, move |_| Session {
            id,
            default_room,
            env,
            tx,
            // A verified token names the session; the `user` field of requests is then ignored.
            identity: authorized
                .as_ref()
                .map_or(Identity::Unset, |a| Identity::Named(a.user.clone())),
            expires_at: authorized.as_ref().and_then(|a| a.expires_at),
            allowed_rooms: authorized.filter(|a| a.rooms.is_some()),
            rooms: HashMap::new(),
            last_seen: Instant::now(),
            _stopped: stopped,
            _census: census,
            user_slot: None,
            cluster_slot: None,
        })
    }

    /// Takes the session's place among its user's sessions over all nodes, then handles the
    /// request that named it. The session waits for Redis (`ctx.wait`), so its later requests
    /// keep their order behind this one. If Redis cannot answer, the session is let in without
    /// a place (it is not counted), rather than refusing users for an outage of the store.
    fn claim_in_cluster(
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
            session.cluster_slot = Some(session.env.abuse.hold_place(engine, user, id));
            session.request(msg, ctx);
        }));
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
            let allowed = self.allowed_rooms.as_ref();
            allowed.is_none_or(|a| a.may_use(room.as_str()))
        };
        let caller = Caller {
            named,
            may_use: &may_use,
        };
        let Parsed { request, r#ref } = match request::parse(msg, &self.default_room, &caller) {
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
            Request::Join { room, since_seq } => self.join(user, room, since_seq, r#ref, ctx),
            Request::Leave { room } => self.leave(room, r#ref, String::new(), ctx),
            Request::Chat { room, content } => self.chat(user, room, content, r#ref, ctx),
        }
    }

    fn has_room_for(&self, room: &RoomName) -> Result<(), ChatError> {
        let max = self.env.rooms.config().session.max_rooms_per_session;
        if !self.rooms.contains_key(room) && self.rooms.len() >= max {
            return Err(ChatError::TooManyRooms { max });
        }
        Ok(())
    }

    fn join_mail(
        &self,
        user: UserName,
        since_seq: u64,
        ack: Option<String>,
        ctx: &Context<Self>,
    ) -> Join {
        Join {
            session: self.id,
            user,
            tx: self.tx.clone(),
            addr: ctx.address(),
            since_seq,
            ack,
        }
    }

    fn join(
        &mut self,
        user: UserName,
        room: RoomName,
        since_seq: u64,
        r#ref: String,
        ctx: &mut Context<Self>,
    ) {
        if let Err(error) = self.has_room_for(&room) {
            return self.refuse(error, room.as_str(), r#ref, ctx);
        }
        let join = self.join_mail(user, since_seq, Some(r#ref.clone()), ctx);
        let joining = join_room(self.env.rooms.clone(), room.clone(), join)
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
            None if room == self.default_room => {
                if let Err(error) = self.has_room_for(&room) {
                    return self.refuse(error, room.as_str(), r#ref, ctx);
                }
                Some(self.join_mail(user, 0, None, ctx))
            }
            None => return self.refuse(ChatError::NotAMember, room.as_str(), r#ref, ctx),
        };
        let rooms = self.env.rooms.clone();
        let target = room.clone();
        let posting = async move {
            let addr = match (member, auto_join) {
                (Some(addr), _) => addr,
                (None, Some(join)) => join_room(rooms, target, join).await?,
                (None, None) => return Err(ChatError::NotAMember),
            };
            let posted = addr.send(post).await;
            Ok((addr, posted))
        };
        let posting = posting.into_actor(self).map(move |result, session, ctx| {
            let error = match result {
                Ok((addr, posted)) => {
                    session.rooms.entry(room.clone()).or_insert(addr);
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
            self.default_room.as_str()
        } else {
            room
        }
    }

    /// Ends the session with UNAUTHENTICATED "token expired" when its token's `exp` passes.
    fn watch_expiry(&mut self, ctx: &mut Context<Self>, expires_at: SystemTime) {
        let left = expires_at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        if left.is_zero() {
            info!(session = %self.id, user = self.user_name(), "token expired");
            // Stopping from within `started` is fine: actix stops once started returns.
            return self.end(Fatal::TokenExpired, ctx);
        }
        ctx.run_later(left.min(EXPIRY_STEP), move |session, ctx| {
            session.watch_expiry(ctx, expires_at);
        });
    }

    /// Ends the session once nothing has arrived for the configured idle timeout. One timer per
    /// session, re-armed for the remaining time instead of being reset on every message.
    fn watch_idle(&self, ctx: &mut Context<Self>, after: Duration) {
        ctx.run_later(after, |session, ctx| {
            let Some(limit) = session.env.rooms.config().session.idle_timeout() else {
                return;
            };
            let idle = session.last_seen.elapsed();
            if idle >= limit {
                session.end(Fatal::IdleTimeout, ctx);
            } else {
                session.watch_idle(ctx, limit - idle);
            }
        });
    }
}

/// Joins `name`, retrying on a fresh room when the registered one is stopping or dead.
async fn join_room(env: Arc<RoomEnv>, name: RoomName, join: Join) -> Result<Addr<Room>, ChatError> {
    for _ in 0..JOIN_ATTEMPTS {
        let room = env
            .rooms
            .get_or_create(&name, || Room::start(&env, name.clone()))?;
        match room.send(join.clone()).await {
            Ok(Ok(())) => return Ok(room),
            Ok(Err(error)) => return Err(error),
            // The room stopped (empty-room TTL) with this JOIN still queued, or died: it is no
            // longer registered (or is removed now), so the next lookup starts a fresh one.
            Err(_) => {
                env.rooms.remove_if_same(&name, &room);
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
        if let Some(expires_at) = self.expires_at {
            self.watch_expiry(ctx, expires_at);
        }
    }

    fn stopping(&mut self, _ctx: &mut Context<Self>) -> Running {
        for (_, room) in self.rooms.drain() {
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

impl Handler<Inbound> for Session {
    type Result = ();

    fn handle(&mut self, Inbound(msg): Inbound, ctx: &mut Context<Self>) {
        self.last_seen = Instant::now();
        metrics::get().received.increment(1);
        self.request(msg, ctx);
    }
}

impl Handler<InboundEnded> for Session {
    type Result = ();

    fn handle(&mut self, InboundEnded(failure): InboundEnded, ctx: &mut Context<Self>) {
        match failure {
            Some(fatal) => self.end(fatal, ctx),
            // Half-close: what is queued is still delivered; the stream ends once every room
            // has let go of this session's handle. A peer that never reads it is cut after the
            // idle timeout, so a half-closed stream cannot hold its queue forever.
            None => {
                if let Some(limit) = self.env.rooms.config().session.idle_timeout() {
                    actix_rt::spawn(self.tx.end_unless_drained(limit));
                }
                ctx.stop();
            }
        }
    }
}

impl Handler<Evicted> for Session {
    type Result = ();

    fn handle(&mut self, evicted: Evicted, ctx: &mut Context<Self>) {
        self.rooms.remove(&evicted.room);
        self.end(Fatal::SlowConsumer, ctx);
    }
}

impl Handler<End> for Session {
    type Result = ();

    fn handle(&mut self, End(fatal): End, ctx: &mut Context<Self>) {
        self.end(fatal, ctx);
    }
}

impl Handler<Kick> for Session {
    type Result = ();

    fn handle(&mut self, kick: Kick, ctx: &mut Context<Self>) {
        let room = kick.room.as_ref().map_or("", RoomName::as_str);
        info!(
            session = %self.id,
            user = self.user_name(),
            room,
            disconnect = kick.disconnect,
            reason = %kick.reason,
            "kicked by an operator"
        );
        if kick.disconnect {
            return self.end(Fatal::Kicked(kick.reason), ctx);
        }
        let rooms: Vec<RoomName> = match kick.room {
            // Left meanwhile: nothing to do, and no error for a request the client never made.
            Some(room) if !self.rooms.contains_key(&room) => Vec::new(),
            Some(room) => vec![room],
            None => self.rooms.keys().cloned().collect(),
        };
        for room in rooms {
            self.leave(room, String::new(), kick.reason.clone(), ctx);
        }
    }
}

impl Handler<Removed> for Session {
    type Result = ();

    fn handle(&mut self, removed: Removed, _ctx: &mut Context<Self>) {
        // Only that room: the session may already be in a newer room of the same name.
        if self.rooms.get(&removed.room) == Some(&removed.addr) {
            self.rooms.remove(&removed.room);
        }
    }
}
