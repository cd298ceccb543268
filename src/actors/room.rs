//! The Room actor: one per room, the single owner of its members, sequence counter and history.
//! Because one actor serialises everything, every member sees the room's messages in one order
//! and the replay on JOIN joins the live traffic with no gap and no duplicate. Fan-out encodes a
//! message once and hands each member the same bytes; a member whose queue is full is dropped,
//! never waited for.
//!
//! In cluster mode (`[cluster] engine = "redis"`) the seq, the history and the presence live in
//! Redis and the room's order is the order of its Redis channel; see [`cluster`].

mod cluster;

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use actix::{
    Actor, ActorContext, ActorResponse, Addr, AsyncContext, Context, Handler, Response, SpawnHandle,
};
use bytes::Bytes;
use tracing::{debug, info};

use super::{
    Announce, Close, Evicted, Inspect, Join, Leave, Post, Reconfigure, Removed, RoomSnapshot,
    session::Session,
};
use crate::{
    config::RoomLimits,
    error::{ChatError, Fatal},
    history::History,
    hub::{Counted, Hub, Living},
    limits::TokenBucket,
    metrics,
    names::{RoomName, SYSTEM_USER, SessionId, UserName},
    outbound::{Delivery, SessionTx},
    proto::{self, Kind},
};

/// Mail that may wait for a room; senders beyond it wait (back-pressure), they are not dropped.
const MAILBOX_CAPACITY: usize = 256;

struct Member {
    user: UserName,
    tx: SessionTx,
    session: Addr<Session>,
    bucket: TokenBucket,
    /// Cluster mode: the seq this member's JOINED and replay covered; live CHATs up to it that
    /// were still on their way from Redis are not delivered again.
    live_after: u64,
}

pub struct Room {
    name: RoomName,
    hub: Arc<Hub>,
    limits: Arc<RoomLimits>,
    members: HashMap<SessionId, Member>,
    /// Sequence number of the last accepted CHAT.
    seq: u64,
    history: History,
    /// Members whose delivery failed during the current handler; removed once it is done.
    failed: Vec<(SessionId, Delivery)>,
    /// The pending empty-room stop, while the room is empty.
    expiry: Option<SpawnHandle>,
    /// Rate buckets of members who sent LEAVE, kept until they refill, so leaving and
    /// re-joining cannot reset a member's rate limit.
    departed: HashMap<SessionId, TokenBucket>,
    /// `Some` in cluster mode.
    cluster: Option<cluster::ClusterRoom>,
    /// Last, so it is dropped after `history` has given its bytes back: a census without this
    /// room means its bytes are back in the budget.
    _census: Counted,
}

impl Room {
    /// Starts room `name` on the next arbiter with the limits the configuration gives it.
    pub fn start(hub: &Arc<Hub>, name: RoomName) -> Addr<Room> {
        let hub = hub.clone();
        let arbiter = hub.arbiters.next().clone();
        let census = hub.census.enter(Living::RoomActor);
        Room::start_in_arbiter(&arbiter, move |ctx| {
            ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
            let limits = hub.config().limits_for(name.as_str());
            let cluster = hub.cluster.clone().map(cluster::ClusterRoom::new);
            Room {
                history: History::new(
                    limits.history,
                    limits.history_bytes,
                    hub.history_budget.clone(),
                ),
                name,
                hub,
                limits,
                members: HashMap::new(),
                seq: 0,
                failed: Vec::new(),
                expiry: None,
                departed: HashMap::new(),
                cluster,
                _census: census,
            }
        })
    }

    /// Pushes `message` to one member, remembering a failure for [`Room::drop_failed`].
    fn deliver(&mut self, id: SessionId, message: Bytes) {
        if let Some(member) = self.members.get(&id) {
            match member.tx.try_deliver(message) {
                Delivery::Sent => {}
                failure => self.failed.push((id, failure)),
            }
        }
    }

    /// Pushes `message` to every member but `except`.
    fn broadcast(&mut self, message: &Bytes, except: Option<SessionId>) {
        for (id, member) in &self.members {
            if Some(*id) == except {
                continue;
            }
            match member.tx.try_deliver(message.clone()) {
                Delivery::Sent => {}
                failure => self.failed.push((*id, failure)),
            }
        }
    }

    /// Removes the members whose delivery failed and tells the others they left. Telling them
    /// can fail further deliveries, hence the loop; it ends because members only go away.
    fn drop_failed(&mut self, ctx: &mut Context<Self>) {
        while let Some((id, failure)) = self.failed.pop() {
            let Some(member) = self.members.remove(&id) else {
                continue;
            };
            if failure == Delivery::Full {
                end_slow_consumer(&self.name, id, &member);
            }
            self.announce_leave(id, &member.user, ctx);
        }
        self.expire_when_empty(ctx);
    }

    /// Tells the other members that `user`'s session `id` left: directly, or in cluster mode
    /// through Redis, whose echo reaches the members of every node in the room's one order.
    fn announce_leave(&mut self, id: SessionId, user: &UserName, ctx: &mut Context<Self>) {
        if self.cluster.is_some() {
            return self.cluster_leave(id, user.clone(), ctx);
        }
        let presence = proto::encode(&proto::Message::event(
            Kind::Leave,
            self.name.as_str(),
            user.as_str(),
        ));
        self.broadcast(&presence, None);
    }

    /// An empty room stops: at once when it holds nothing a later JOIN could use, otherwise
    /// after `empty_room_ttl_ms` unless someone joins meanwhile. Stopping at once is what keeps
    /// JOIN/LEAVE churn over many names from leaving a room behind per name.
    fn expire_when_empty(&mut self, ctx: &mut Context<Self>) {
        if !self.members.is_empty() || self.expiry.is_some() {
            return;
        }
        if self.cluster_requests_in_flight() {
            // Decided again when the last JOIN or LEAVE is answered by Redis (`cluster_join`,
            // `cluster_leave`).
            return;
        }
        let ttl = if self.keeps_anything() {
            self.limits.empty_room_ttl()
        } else {
            // Nothing to keep but the rate buckets of members who just left: kept until they
            // refill (at most burst / rate), so LEAVE then JOIN cannot reset a rate limit, and
            // churn still leaves no room behind for longer than that.
            match self.departed_refilled_in() {
                Duration::ZERO => return self.close(ctx),
                wait => wait.min(self.limits.empty_room_ttl()),
            }
        };
        self.expiry = Some(ctx.run_later(ttl, |room, ctx| {
            room.expiry = None;
            if room.members.is_empty() {
                room.close(ctx);
            }
        }));
    }

    /// Whether the room holds something worth keeping for `empty_room_ttl_ms` once empty. In
    /// memory mode that is its history and its seq, so a room that accepted a CHAT keeps
    /// counting where it was even if its history has been trimmed away; a room that never
    /// accepted one (JOIN/LEAVE only) has nothing. In cluster mode the seq and the history live
    /// in Redis and a fresh room reads them back, so the actor keeps nothing.
    fn keeps_anything(&self) -> bool {
        self.cluster.is_none() && (self.seq > 0 || !self.history.is_empty())
    }

    /// How long until every departed member's bucket is full again.
    fn departed_refilled_in(&self) -> Duration {
        let now = Instant::now();
        let (rate, burst) = (self.limits.rate_per_sec, self.limits.burst);
        self.departed
            .values()
            .map(|bucket| bucket.until_full(now, rate, burst))
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// Unregisters and stops. Runs inside the actor, so no JOIN is handled between the check for
    /// emptiness and the removal. Once stopped, actix handles no more mail: a JOIN still queued
    /// fails with a mailbox error and the session retries on a fresh room from the registry.
    fn close(&mut self, ctx: &mut Context<Self>) {
        self.hub.rooms.remove_if_same(&self.name, &ctx.address());
        ctx.stop();
    }

    /// A member's bucket, the one it left with if it left recently; a JOIN takes one token, so
    /// join/leave cycles cannot flood the room with presence either.
    fn bucket_for_join(
        &mut self,
        session: SessionId,
        now: Instant,
    ) -> Result<TokenBucket, ChatError> {
        let (rate, burst) = (self.limits.rate_per_sec, self.limits.burst);
        let mut bucket = self
            .departed
            .remove(&session)
            .unwrap_or_else(|| TokenBucket::full(burst, now));
        if bucket.try_take(now, rate, burst) {
            Ok(bucket)
        } else {
            self.departed.insert(session, bucket);
            Err(ChatError::RateLimited {
                rate_per_sec: rate,
                burst,
            })
        }
    }

    /// Remembers the bucket of a member that left, forgetting those that have refilled (they
    /// are no different from a fresh one).
    fn remember_departed(&mut self, session: SessionId, bucket: TokenBucket) {
        let now = Instant::now();
        let (rate, burst) = (self.limits.rate_per_sec, self.limits.burst);
        if self.departed.len() >= 64 {
            self.departed.retain(|_, b| !b.is_full(now, rate, burst));
        }
        if !bucket.is_full(now, rate, burst) {
            self.departed.insert(session, bucket);
        }
    }

    /// The JOINED of `joiner`, listing this room's members (all nodes' in cluster mode).
    fn joined(&self, joiner: &UserName, r#ref: String) -> Bytes {
        let members = self.members.values().map(|m| m.user.to_string()).collect();
        self.joined_with(joiner, r#ref, members, self.seq)
    }

    fn joined_with(
        &self,
        joiner: &UserName,
        r#ref: String,
        mut members: Vec<String>,
        seq: u64,
    ) -> Bytes {
        members.sort_unstable();
        members.dedup();
        let listed = self.limits.max_members_listed;
        if members.len() > listed {
            // The first names in order, and always the joiner itself.
            members.retain(|m| m != joiner.as_str());
            members.truncate(listed - 1);
            members.push(joiner.to_string());
            members.sort_unstable();
        }
        proto::encode(&proto::Message {
            members,
            seq,
            r#ref,
            ..proto::Message::event(Kind::Joined, self.name.as_str(), joiner.as_str())
        })
    }

    /// A new CHAT of this room with a fresh id; `seq` is 0 when Redis assigns it (cluster mode).
    fn chat_message(&self, user: &str, content: String, seq: u64) -> proto::Message {
        proto::Message {
            kind: Kind::Chat.into(),
            user: user.to_string(),
            content,
            timestamp: proto::now_ms(),
            room: self.name.to_string(),
            id: uuid::Uuid::now_v7().to_string(),
            seq,
            ..proto::Message::default()
        }
    }

    /// Accepts a CHAT: assigns the next seq, encodes it once and keeps it in the history.
    fn accept_chat(&mut self, user: &str, content: String) -> (Bytes, String) {
        self.seq += 1;
        let message = self.chat_message(user, content, self.seq);
        let live = proto::encode(&message);
        self.history.push(self.seq, live.clone());
        (live, message.id)
    }

    fn replay(&self, since_seq: u64) -> Vec<Bytes> {
        let retained: Box<dyn Iterator<Item = &Bytes>> = if since_seq == 0 {
            Box::new(self.history.last(self.limits.history_on_join))
        } else {
            Box::new(self.history.after(since_seq))
        };
        retained.map(proto::as_replay).collect()
    }
}

impl Actor for Room {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // debug, not info: JOIN/LEAVE churn starts and stops rooms as fast as a client asks.
        debug!(room = %self.name, cluster = self.cluster.is_some(), "room started");
        if self.cluster.is_some() {
            self.cluster_started(ctx);
        }
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        debug!(room = %self.name, last_seq = self.seq, "room stopped");
    }
}

impl Handler<Join> for Room {
    type Result = Response<Result<(), ChatError>>;

    fn handle(&mut self, join: Join, ctx: &mut Context<Self>) -> Self::Result {
        if self.cluster.is_some() {
            return self.cluster_join(join, ctx);
        }
        Response::reply(self.join_here(join, ctx))
    }
}

impl Room {
    fn join_here(&mut self, join: Join, ctx: &mut Context<Self>) -> Result<(), ChatError> {
        let rejoin = self.members.contains_key(&join.session);
        if !rejoin {
            if self.members.len() >= self.limits.max_members {
                return Err(ChatError::RoomFull {
                    max: self.limits.max_members,
                });
            }
            let bucket = self.bucket_for_join(join.session, Instant::now())?;
            if let Some(expiry) = self.expiry.take() {
                ctx.cancel_future(expiry);
            }
            self.members.insert(
                join.session,
                Member {
                    user: join.user.clone(),
                    tx: join.tx,
                    session: join.addr,
                    bucket,
                    live_after: 0,
                },
            );
        }
        if let Some(r#ref) = join.ack {
            let joined = self.joined(&join.user, r#ref);
            self.deliver(join.session, joined);
            // A repeated JOIN only gets its ack: the live traffic since the first one is
            // already in the session's stream.
            if !rejoin {
                for message in self.replay(join.since_seq) {
                    self.deliver(join.session, message);
                }
            }
        }
        if !rejoin {
            let presence = proto::encode(&proto::Message::event(
                Kind::Join,
                self.name.as_str(),
                join.user.as_str(),
            ));
            self.broadcast(&presence, Some(join.session));
        }
        self.drop_failed(ctx);
        Ok(())
    }
}

impl Handler<Post> for Room {
    type Result = ActorResponse<Self, Result<(), ChatError>>;

    fn handle(&mut self, post: Post, ctx: &mut Context<Self>) -> Self::Result {
        if let Err(error) = self.admit_post(&post) {
            return ActorResponse::reply(Err(error));
        }
        if self.cluster.is_some() {
            return self.cluster_post(post);
        }
        let user = self.members[&post.session].user.clone();
        let (live, _) = self.accept_chat(user.as_str(), post.content);
        let started = Instant::now();
        self.broadcast(&live, Some(post.session));
        self.deliver(post.session, proto::with_ref(&live, &post.r#ref));
        metrics::get().fanout.record(started.elapsed());
        self.drop_failed(ctx);
        ActorResponse::reply(Ok(()))
    }
}

impl Room {
    /// The checks a CHAT passes before it gets a seq: membership, write permission, size and
    /// the member's rate (which takes a token).
    fn admit_post(&mut self, post: &Post) -> Result<(), ChatError> {
        let limits = &self.limits;
        let member = self
            .members
            .get_mut(&post.session)
            .ok_or(ChatError::NotAMember)?;
        if limits.read_only && !limits.writers.iter().any(|w| w == member.user.as_str()) {
            return Err(ChatError::Forbidden("this room is read-only for you"));
        }
        if post.content.len() > limits.max_message_bytes {
            return Err(ChatError::MessageTooLarge {
                len: post.content.len(),
                max: limits.max_message_bytes,
            });
        }
        if !member
            .bucket
            .try_take(Instant::now(), limits.rate_per_sec, limits.burst)
        {
            return Err(ChatError::RateLimited {
                rate_per_sec: limits.rate_per_sec,
                burst: limits.burst,
            });
        }
        Ok(())
    }
}

impl Handler<Leave> for Room {
    type Result = Result<(), ChatError>;

    fn handle(&mut self, leave: Leave, ctx: &mut Context<Self>) -> Self::Result {
        let member = self
            .members
            .remove(&leave.session)
            .ok_or(ChatError::NotAMember)?;
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
        self.announce_leave(leave.session, &member.user, ctx);
        self.drop_failed(ctx);
        Ok(())
    }
}

impl Handler<Reconfigure> for Room {
    type Result = ();

    fn handle(&mut self, _: Reconfigure, _ctx: &mut Context<Self>) {
        let limits = self.hub.config().limits_for(self.name.as_str());
        if *limits != *self.limits {
            // debug: one line per open room on every reload that changes its limits.
            debug!(room = %self.name, "room limits reloaded");
            self.history
                .set_limits(limits.history, limits.history_bytes);
            self.limits = limits;
        }
    }
}

impl Handler<Inspect> for Room {
    type Result = actix::MessageResult<Inspect>;

    fn handle(&mut self, inspect: Inspect, _ctx: &mut Context<Self>) -> Self::Result {
        let members = if inspect.members {
            self.members
                .iter()
                .map(|(id, m)| (*id, m.user.clone(), m.session.clone()))
                .collect()
        } else {
            Vec::new()
        };
        actix::MessageResult(RoomSnapshot {
            last_seq: self.seq,
            member_count: self.members.len(),
            members,
        })
    }
}

impl Handler<Announce> for Room {
    type Result = ActorResponse<Self, Result<(u64, String), ChatError>>;

    fn handle(&mut self, announce: Announce, ctx: &mut Context<Self>) -> Self::Result {
        if announce.content.is_empty() {
            let error = ChatError::BadRequest("an announcement needs `content`".into());
            return ActorResponse::reply(Err(error));
        }
        if announce.content.len() > self.limits.max_message_bytes {
            return ActorResponse::reply(Err(ChatError::MessageTooLarge {
                len: announce.content.len(),
                max: self.limits.max_message_bytes,
            }));
        }
        if self.cluster.is_some() {
            return self.cluster_announce(announce.content);
        }
        let (live, id) = self.accept_chat(SYSTEM_USER, announce.content);
        self.broadcast(&live, None);
        self.drop_failed(ctx);
        ActorResponse::reply(Ok((self.seq, id)))
    }
}

impl Handler<Close> for Room {
    type Result = usize;

    fn handle(&mut self, close: Close, ctx: &mut Context<Self>) -> usize {
        let members = std::mem::take(&mut self.members);
        let addr = ctx.address();
        for (id, member) in &members {
            let left = proto::Message {
                content: close.reason.clone(),
                ..proto::Message::event(Kind::Left, self.name.as_str(), member.user.as_str())
            };
            if member.tx.try_deliver(proto::encode(&left)) == Delivery::Full {
                end_slow_consumer(&self.name, *id, member);
            }
            // do_send: one per member, once; the session must forget the room even when busy.
            member.session.do_send(Removed {
                room: self.name.clone(),
                addr: addr.clone(),
            });
            if self.cluster.is_some() {
                self.cluster_leave(*id, member.user.clone(), ctx);
            }
        }
        // Stopping now: mail still queued (a JOIN, a CHAT) fails and the sender sees the room
        // gone, as with an expired room.
        self.close(ctx);
        members.len()
    }
}

fn end_slow_consumer(room: &RoomName, id: SessionId, member: &Member) {
    info!(room = %room, session = %id, user = %member.user, "slow consumer dropped");
    member.tx.end(Fatal::SlowConsumer);
    // do_send: at most one per room the session is in, and the session must hear of it even
    // when its mailbox is busy.
    member.session.do_send(Evicted { room: room.clone() });
}
