//! The Room actor: one per room, the single owner of its members, their rate buckets and the
//! room's expiry. What an engine orders — seq, history, presence truth — is the room's
//! [`RoomLog`]; the room has one join, one post and one fan-out over it. The memory log answers
//! inside the handler; the Redis log answers once Redis has, and hands the room each CHAT it
//! appended (in the channel's order, with the sender's ack re-attached) through [`LogHost`].
//!
//! Fan-out encodes a message once and hands each member the same bytes; a member whose queue
//! is full is dropped, never waited for.

mod handlers;
mod members;

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use actix::{Actor, ActorContext, Addr, AsyncContext, Context, SpawnHandle, StreamHandler};
use bytes::Bytes;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, warn};

use self::members::{Member, end_slow_consumer};
use super::{RoomId, env::RoomEnv};
use crate::{
    census::{Counted, Living},
    cluster::Published,
    config::RoomLimits,
    edge::outbound::{Delivery, Framed},
    limits::TokenBucket,
    log::{self, Appended, LogHost, MemoryLog, Presence, RedisLog, RoomLog},
    metrics,
    names::{RoomName, SessionId, UserName},
    packing, proto,
    transport::wakes,
};

/// Mail that may wait for a room; senders beyond it wait (back-pressure), they are not dropped.
const MAILBOX_CAPACITY: usize = 256;

pub struct Room {
    name: RoomName,
    /// Which room of that name this is, for the registry and for sessions told it closed.
    id: RoomId,
    env: Arc<RoomEnv>,
    limits: Arc<RoomLimits>,
    members: HashMap<SessionId, Member>,
    /// The room's order, seq, history and presence truth.
    log: RoomLog,
    /// Members whose delivery failed during the current handler; removed once it is done.
    failed: Vec<(SessionId, Delivery)>,
    /// The pending empty-room stop, while the room is empty.
    expiry: Option<SpawnHandle>,
    /// When the history was last added to, for the packer.
    mark: Arc<packing::Mark>,
    /// JOINs waiting on the log's answer. A room with one in flight is not empty: actix may
    /// hand the room one item of its channel between a handler's `ctx.wait` and the wait
    /// taking hold, and a presence event then must not stop the room under the joiner.
    joins_in_flight: usize,
    /// Rate buckets of members who sent LEAVE, kept until they refill, so leaving and
    /// re-joining cannot reset a member's rate limit.
    departed: HashMap<SessionId, TokenBucket>,
    /// Last, so it is dropped after the log's history has given its bytes back: a census
    /// without this room means its bytes are back in the budget.
    _census: Counted,
}

impl Room {
    /// Starts room `name` on the next arbiter with the limits the configuration gives it.
    pub fn start(env: &Arc<RoomEnv>, name: RoomName, id: RoomId) -> Addr<Room> {
        let env = env.clone();
        let arbiter = env.arbiters.next().clone();
        let census = env.census.enter(Living::RoomActor);
        Room::start_in_arbiter(&arbiter, move |ctx| {
            ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
            let limits = env.config().limits_for(name.as_str());
            let log = match env.cluster.clone() {
                Some(engine) => {
                    let (log, published) = RedisLog::new(engine, name.clone());
                    ctx.add_stream(ReceiverStream::new(published));
                    RoomLog::Redis(log)
                }
                None => RoomLog::Memory(MemoryLog::new(&limits, env.history_budget.clone())),
            };
            Room::new(name, id, env, limits, log, census)
        })
    }

    fn new(
        name: RoomName,
        id: RoomId,
        env: Arc<RoomEnv>,
        limits: Arc<RoomLimits>,
        log: RoomLog,
        census: Counted,
    ) -> Room {
        Room {
            name,
            id,
            env,
            limits,
            members: HashMap::new(),
            log,
            failed: Vec::new(),
            expiry: None,
            mark: Arc::default(),
            joins_in_flight: 0,
            departed: HashMap::new(),
            _census: census,
        }
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
        let _wakes = wakes::Batch::hold();
        let message = Framed::new(message);
        for (id, member) in &self.members {
            if Some(*id) == except {
                continue;
            }
            match member.tx.try_deliver_framed(&message) {
                Delivery::Sent => {}
                failure => self.failed.push((*id, failure)),
            }
        }
    }

    /// The one fan-out of a CHAT, whichever log appended it: every member whose JOINED did not
    /// cover it gets the same bytes, the sender its copy with its `ref`.
    fn fan_out(&mut self, appended: &Appended) {
        let started = std::time::Instant::now();
        // Each connection is woken once, after the loop, with all its members' messages queued.
        let wakes = wakes::Batch::hold();
        let live = Framed::new(&appended.live);
        for (id, member) in &self.members {
            let ack = appended.ack.as_ref().filter(|(sender, _)| sender == id);
            // A sender's ack answers its request, even for a CHAT its replay held already (a
            // resend that rode the original's fan-out).
            if member.live_after >= appended.seq && ack.is_none() {
                continue;
            }
            let delivery = match ack {
                Some((_, r#ref)) => member
                    .tx
                    .try_deliver(proto::with_ref(&appended.live, r#ref)),
                None => member.tx.try_deliver_framed(&live),
            };
            match delivery {
                Delivery::Sent => {}
                failure => self.failed.push((*id, failure)),
            }
        }
        drop(wakes);
        metrics::get().fanout.record(started.elapsed());
    }

    /// Tells the members (but `except`) that a user joined or left.
    fn tell(&mut self, presence: &Presence) {
        let message = proto::encode(&proto::Message::event(
            presence.kind,
            self.name.as_str(),
            &presence.user,
        ));
        self.broadcast(&message, presence.except);
    }

    /// Removes the members whose delivery failed and tells the others they left, then stops
    /// the room if that emptied it.
    fn drop_failed(&mut self, ctx: &mut Context<Self>) {
        self.remove_failed(ctx);
        self.expire_when_empty(ctx);
    }

    /// Removes the members whose delivery failed and tells the others they left. Telling them
    /// can fail further deliveries, hence the loop; it ends because members only go away.
    fn remove_failed(&mut self, ctx: &mut Context<Self>) {
        while let Some((id, failure)) = self.failed.pop() {
            let Some(member) = self.members.remove(&id) else {
                continue;
            };
            if failure == Delivery::Full {
                end_slow_consumer(&self.name, id, &member);
            }
            self.depart(id, &member.user, true, ctx);
        }
    }

    /// Records in the log that `user`'s session `id` left (`ended`: without a LEAVE, so it may
    /// come back to resume): the memory log tells the other members at once; the Redis log
    /// publishes the LEAVE, whose echo reaches the members of every node in the room's one
    /// order, and the room waits for it.
    fn depart(&mut self, id: SessionId, user: &UserName, ended: bool, ctx: &mut Context<Self>) {
        match self.log.leave(id, user, ended) {
            log::Answer::Now(presence) => self.tell(&presence),
            log::Answer::Echo(removed) => {
                use actix::{ActorFutureExt, WrapFuture};
                ctx.wait(removed.into_actor(self).map(|(), room, ctx| {
                    room.log.left();
                    room.expire_when_empty(ctx);
                }));
            }
        }
    }

    /// An empty room stops: when its log keeps nothing a later JOIN could use, as soon as its
    /// departed members' rate buckets are full again (at once if they are), otherwise after
    /// `empty_room_ttl_ms` unless someone joins meanwhile. Stopping early is what keeps
    /// JOIN/LEAVE churn over many names from leaving a room behind per name.
    fn expire_when_empty(&mut self, ctx: &mut Context<Self>) {
        if !self.members.is_empty() || self.expiry.is_some() || self.joins_in_flight > 0 {
            return;
        }
        if self.log.leaves_in_flight() {
            // Decided again when the last LEAVE is recorded (see `depart`).
            return;
        }
        let ttl = if self.log.keeps_anything() {
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

    /// The history changed (a CHAT appended, limits reloaded): a memory room with history worth
    /// packing tells the packer.
    fn pack_when_quiet(&mut self, ctx: &mut Context<Self>) {
        if self.log.memory().is_some_and(|log| log.packable()) {
            self.env
                .packer
                .chatted(&self.mark, || ctx.address().recipient());
        }
    }

    /// Unregisters and stops. Runs inside the actor, so no JOIN is handled between the check for
    /// emptiness and the removal. Once stopped, actix handles no more mail: a JOIN still queued
    /// fails with a mailbox error and the session retries on a fresh room from the registry.
    fn close(&mut self, ctx: &mut Context<Self>) {
        self.env.rooms.remove_if_same(&self.name, self.id);
        ctx.stop();
    }
}

impl Actor for Room {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let cluster = matches!(self.log, RoomLog::Redis(_));
        // debug, not info: JOIN/LEAVE churn starts and stops rooms as fast as a client asks.
        debug!(room = %self.name, cluster, "room started");
        log::started(self, ctx);
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        debug!(room = %self.name, last_seq = self.log.last_seq(), "room stopped");
    }
}

impl LogHost for Room {
    fn redis_log(&mut self) -> Option<&mut RedisLog> {
        match &mut self.log {
            RoomLog::Redis(log) => Some(log),
            RoomLog::Memory(_) => None,
        }
    }

    fn room_name(&self) -> &RoomName {
        &self.name
    }

    fn local_members(&self) -> Vec<(SessionId, UserName)> {
        self.members
            .iter()
            .map(|(id, m)| (*id, m.user.clone()))
            .collect()
    }

    fn presence_ttl(&self) -> Duration {
        Duration::from_millis(self.env.config().cluster.presence_ttl_ms)
    }

    fn appended(&mut self, appended: Appended, ctx: &mut Context<Self>) {
        self.fan_out(&appended);
        self.drop_failed(ctx);
    }

    fn announce(&mut self, presence: Presence, ctx: &mut Context<Self>) {
        self.tell(&presence);
        self.drop_failed(ctx);
    }

    fn count_restarted(&mut self) {
        for member in self.members.values_mut() {
            member.live_after = 0;
        }
    }
}

impl StreamHandler<Published> for Room {
    fn handle(&mut self, published: Published, ctx: &mut Context<Self>) {
        log::on_published(self, published, ctx);
    }

    /// The sink closes only when the engine is gone; the room goes on without live traffic.
    fn finished(&mut self, _ctx: &mut Context<Self>) {
        warn!(room = %self.name, "cluster channel closed");
    }
}

#[cfg(test)]
mod tests;
