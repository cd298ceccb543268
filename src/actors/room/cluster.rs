//! The Room actor in cluster mode: the room's order is its Redis channel's order. A CHAT is
//! checked here, then published by one atomic script that assigns the global seq; every node's
//! room (this one included) fans it out when it comes back on the channel, so members of every
//! node see one order with one gapless seq. JOIN, replay and presence go through Redis too.
//!
//! Gaplessness rests on three rules: the room reads any seq only after its subscription is live;
//! a seq that arrives ahead of the next expected one makes the room fetch the missing ones from
//! the room's Redis stream first; and a joiner's replay ends at the seq its join script saw, from
//! which on it gets live traffic.
//!
//! Presence travels the same channel but carries no seq, so the room keeps a roster of every
//! node's members: an event that changes nothing in it is not passed on, each JOIN's member list
//! (the truth at that moment) settles it for the members already here, and after a lost
//! connection the differences with Redis are announced.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use actix::{
    ActorFutureExt, ActorResponse, AsyncContext, Context, Response, StreamHandler, WrapFuture,
};
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tracing::{info, warn};

use super::{Member, Room};
use crate::{
    actors::Join,
    cluster::{JoinError, LocalPresence, Published, RedisEngine, Subscription, Unavailable},
    error::ChatError,
    metrics,
    names::{SYSTEM_USER, SessionId, UserName},
    outbound::Delivery,
    proto::{self, Kind},
};

/// Messages from the channel that may wait for the room.
const SINK_CAPACITY: usize = 1024;
/// An ack whose echo has not come back in this long is forgotten (its publish timed out and
/// may never have happened).
const PENDING_ACK_TTL: Duration = Duration::from_secs(30);
/// Pause before a failed re-sync is first tried again; each further failure doubles it.
const RESYNC_RETRY_MIN: Duration = Duration::from_millis(200);
/// Longest pause between re-sync attempts: in a long outage every room of a node retries, so
/// each must ask Redis rarely, yet a room still catches up within this of Redis coming back.
const RESYNC_RETRY_MAX: Duration = Duration::from_secs(5);

/// Exponential backoff between re-sync attempts, from [`RESYNC_RETRY_MIN`] doubling up to
/// [`RESYNC_RETRY_MAX`].
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff {
            next: RESYNC_RETRY_MIN,
        }
    }

    /// The pause to wait now; the one after it is twice as long, up to the cap.
    fn pause(&mut self) -> Duration {
        let pause = self.next;
        self.next = (pause * 2).min(RESYNC_RETRY_MAX);
        pause
    }

    fn reset(&mut self) {
        self.next = RESYNC_RETRY_MIN;
    }
}

pub(super) struct ClusterRoom {
    engine: RedisEngine,
    /// Live while the room is subscribed; `None` before the first success or after a failure.
    subscription: Option<Subscription>,
    sink: Option<mpsc::Sender<Published>>,
    /// This node's CHATs on their way through Redis: message id → (sender, its `ref`).
    pending: HashMap<String, (SessionId, String, Instant)>,
    /// Id of the last CHAT delivered: after a reconnect, the entry Redis holds at the room's
    /// seq must still be this one, or Redis lost the room's data (restarted without it).
    /// `None` until the room delivers one (it started on existing history).
    last_id: Option<String>,
    /// A presence refresh is in flight: interval ticks that catch up after a long wait must
    /// not queue a burst of them.
    refreshing: bool,
    /// A re-sync is in flight (or waiting to retry): repeated reconnects start only one.
    resyncing: bool,
    /// A re-sync retry is scheduled: the failures of one attempt (presence and seq reads) wait
    /// for one retry together instead of each scheduling its own and doubling the pause twice.
    retry_waiting: bool,
    /// Pause before the next retry; back to the minimum when a fresh loss starts a re-sync.
    retry_backoff: Backoff,
    /// A subscribe is in flight: a second one would replace the first's route and, failing,
    /// leave the room holding a subscription that receives nothing.
    subscribing: bool,
    /// Every node's members as this room knows them, (node, session) → user: presence events
    /// that change nothing (a JOIN already listed, a LEAVE of someone not listed, a refresh
    /// re-announcing a member) are not passed on, and after a reconnect the differences with
    /// Redis are announced instead of lost.
    roster: HashMap<(String, SessionId), String>,
    /// LEAVEs of this node's members not yet published. An empty room stops only once they
    /// are: a session that re-joins at once then reaches a fresh room after its LEAVE is in
    /// Redis, so its new JOIN cannot be overtaken by its own older LEAVE.
    leaves_in_flight: usize,
    /// JOINs Redis is answering. The room must not stop meanwhile (an echo handled during
    /// the wait can find it empty): the joiner is not a member until the answer.
    joins_in_flight: usize,
}

/// A number in [0, 1) from the random bits of a fresh UUIDv7 (jitter needs no better source).
fn random_fraction() -> f64 {
    let random = uuid::Uuid::now_v7().as_u128() as u64 & ((1 << 53) - 1);
    random as f64 / (1u64 << 53) as f64
}

impl ClusterRoom {
    pub(super) fn new(engine: RedisEngine) -> ClusterRoom {
        ClusterRoom {
            engine,
            subscription: None,
            sink: None,
            pending: HashMap::new(),
            last_id: None,
            refreshing: false,
            resyncing: false,
            retry_waiting: false,
            retry_backoff: Backoff::new(),
            subscribing: false,
            roster: HashMap::new(),
            leaves_in_flight: 0,
            joins_in_flight: 0,
        }
    }
}

/// The message id inside an encoded CHAT (only on the rare gap-filling paths).
fn body_id(body: &[u8]) -> String {
    <proto::Message as prost::Message>::decode(body)
        .map(|m| m.id)
        .unwrap_or_default()
}

/// The retained CHATs with `from < seq <= to` (`replay` reads `since_seq = 0` as "the last n").
async fn fetch_range(
    engine: &RedisEngine,
    room: &str,
    from: u64,
    to: u64,
) -> Result<Vec<(u64, Bytes)>, Unavailable> {
    if from == 0 {
        let n = usize::try_from(to).unwrap_or(usize::MAX);
        engine.replay(room, 0, n, to).await
    } else {
        engine.replay(room, from, 0, to).await
    }
}

/// The newest entries of `replay`, at most `max_count` (`history`) whose encodings fit in
/// `max_bytes`, oldest first. Redis trims a room's stream only approximately and by count only
/// (`XADD … MAXLEN ~`), so the bounds a memory room keeps in its ring are applied when the
/// replay is read: a full replay is never longer than `history` and still fits a fresh
/// joiner's queue.
fn newest_within(
    mut replay: Vec<(u64, Bytes)>,
    max_count: usize,
    max_bytes: usize,
) -> Vec<(u64, Bytes)> {
    let mut total = 0;
    let keep = replay
        .iter()
        .rev()
        .take(max_count)
        .take_while(|(_, body)| {
            total += body.len();
            total <= max_bytes
        })
        .count();
    replay.drain(..replay.len() - keep);
    replay
}

fn unavailable(error: &Unavailable) -> ChatError {
    ChatError::Unavailable(error.to_string())
}

impl Room {
    fn engine(&self) -> RedisEngine {
        // unwrap: only called on the cluster path.
        self.cluster.as_ref().unwrap().engine.clone()
    }

    fn ttl(&self) -> Duration {
        Duration::from_millis(self.hub.config().cluster.presence_ttl_ms)
    }

    pub(super) fn cluster_started(&mut self, ctx: &mut Context<Self>) {
        let (sink, published) = mpsc::channel(SINK_CAPACITY);
        ctx.add_stream(ReceiverStream::new(published));
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.sink = Some(sink);
        }
        self.ensure_subscribed(ctx);
        // Presence: keep this node's members alive and clear other nodes' expired ones.
        let every = self.ttl() / 3;
        ctx.run_interval(every, |room, ctx| room.refresh_presence(ctx));
    }

    /// Subscribes (unless already subscribed) and learns the room's current seq, holding every
    /// other mail meanwhile, so nothing is handled before the room knows where live starts.
    fn ensure_subscribed(&mut self, ctx: &mut Context<Self>) {
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        if cluster.subscription.is_some() || cluster.subscribing {
            return;
        }
        let Some(sink) = cluster.sink.clone() else {
            return;
        };
        cluster.subscribing = true;
        let engine = cluster.engine.clone();
        let name = self.name.to_string();
        let subscribing = async move {
            let subscription = engine.subscribe(&name, sink).await?;
            let seq = engine.last_seq(&name).await?;
            Ok::<_, Unavailable>((subscription, seq))
        };
        ctx.wait(subscribing.into_actor(self).map(|subscribed, room, _ctx| {
            if let Some(cluster) = room.cluster.as_mut() {
                cluster.subscribing = false;
            }
            match subscribed {
                Ok((subscription, seq)) => {
                    room.seq = room.seq.max(seq);
                    if let Some(cluster) = room.cluster.as_mut() {
                        cluster.subscription = Some(subscription);
                    }
                }
                Err(error) => warn!(room = %room.name, %error, "cannot subscribe the room"),
            }
        }));
    }

    /// JOIN through Redis: the script checks `max_members` over all nodes, adds the presence
    /// entry, publishes the JOIN and returns the seq and every node's members; the replay is
    /// read up to that seq. The room handles nothing else meanwhile.
    pub(super) fn cluster_join(
        &mut self,
        join: Join,
        ctx: &mut Context<Self>,
    ) -> Response<Result<(), ChatError>> {
        let (done, answer) = oneshot::channel();
        let respond = Response::fut(async move {
            answer
                .await
                .unwrap_or_else(|_| Err(ChatError::Unavailable("room stopped".into())))
        });
        let rejoin = self.members.contains_key(&join.session);
        let bucket = if rejoin {
            None
        } else {
            match self.bucket_for_join(join.session, Instant::now()) {
                Ok(bucket) => Some(bucket),
                Err(error) => {
                    let _ = done.send(Err(error));
                    return respond;
                }
            }
        };
        // The empty-room stop must not run while Redis answers this JOIN; re-armed on failure.
        if let Some(expiry) = self.expiry.take() {
            ctx.cancel_future(expiry);
        }
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.joins_in_flight += 1;
        }
        let engine = self.engine();
        let name = self.name.to_string();
        let (ttl, max_members) = (self.ttl(), self.limits.max_members);
        let (since_seq, history_on_join) = (join.since_seq, self.limits.history_on_join);
        // Not subscribed (Redis was down when the room started): subscribe first, in the same
        // step, so this JOIN works as soon as Redis is back.
        let resubscribe = self
            .cluster
            .as_mut()
            .filter(|c| c.subscription.is_none() && !c.subscribing)
            .and_then(|c| {
                c.subscribing = true;
                c.sink.clone()
            });
        let resubscribing = resubscribe.is_some();
        let presence = proto::encode(&proto::Message::event(
            Kind::Join,
            self.name.as_str(),
            join.user.as_str(),
        ));
        let undo = proto::encode(&proto::Message::event(
            Kind::Leave,
            self.name.as_str(),
            join.user.as_str(),
        ));
        let (session, user, replay_wanted) =
            (join.session, join.user.to_string(), join.ack.is_some());
        let joining = async move {
            let mut fresh = None;
            if let Some(sink) = resubscribe {
                let subscribed = async {
                    let subscription = engine.subscribe(&name, sink).await?;
                    let seq = engine.last_seq(&name).await?;
                    Ok::<_, Unavailable>((subscription, seq))
                };
                match subscribed.await {
                    Ok(ok) => fresh = Some(ok),
                    Err(error) => return (None, Err(unavailable(&error))),
                }
            }
            let joined = async {
                let joined = if rejoin {
                    let members = engine.members(&name).await.map_err(|e| unavailable(&e))?;
                    let seq = engine.last_seq(&name).await.map_err(|e| unavailable(&e))?;
                    crate::cluster::Joined { seq, members }
                } else {
                    engine
                        .join(&name, session, &user, ttl, max_members, presence)
                        .await
                        .map_err(|e| match e {
                            JoinError::Full { max } => ChatError::RoomFull { max },
                            JoinError::Unavailable(e) => unavailable(&e),
                        })?
                };
                let replay = if replay_wanted && !rejoin {
                    match engine
                        .replay(&name, since_seq, history_on_join, joined.seq)
                        .await
                    {
                        Ok(replay) => replay,
                        Err(error) => {
                            // Joined in Redis but refused here: take the entry back (its LEAVE
                            // follows the JOIN everyone saw), or it would count until the TTL.
                            let _ = engine.leave(&name, session, &user, undo).await;
                            return Err(unavailable(&error));
                        }
                    }
                } else {
                    Vec::new()
                };
                Ok((joined, replay))
            };
            (fresh, joined.await)
        };
        let joining = joining
            .into_actor(self)
            .map(move |(fresh, outcome), room, ctx| {
                if let Some(cluster) = room.cluster.as_mut() {
                    cluster.joins_in_flight -= 1;
                    if resubscribing {
                        cluster.subscribing = false;
                    }
                }
                if let Some((subscription, seq)) = fresh {
                    room.seq = room.seq.max(seq);
                    if let Some(cluster) = room.cluster.as_mut() {
                        cluster.subscription = Some(subscription);
                    }
                }
                let (joined, replay) = match outcome {
                    Ok(ok) => ok,
                    Err(error) => {
                        if let Some(bucket) = bucket {
                            room.remember_departed(join.session, bucket);
                        }
                        room.expire_when_empty(ctx);
                        let _ = done.send(Err(error));
                        return;
                    }
                };
                room.take_join_snapshot(&joined.members, join.session, ctx);
                if let Some(bucket) = bucket {
                    room.members.insert(
                        join.session,
                        Member {
                            user: join.user.clone(),
                            tx: join.tx,
                            session: join.addr,
                            bucket,
                            live_after: joined.seq,
                        },
                    );
                }
                if let Some(r#ref) = join.ack {
                    let members = joined.members.iter().map(|m| m.user.clone()).collect();
                    // A repeated JOIN reports what this member has been sent, not Redis's newest.
                    let seq = if rejoin { room.seq } else { joined.seq };
                    let ack = room.joined_with(&join.user, r#ref, members, seq);
                    room.deliver(join.session, ack);
                    let limits = &room.limits;
                    for (seq, body) in newest_within(replay, limits.history, limits.history_bytes) {
                        room.deliver(join.session, proto::as_replay(&proto::with_seq(&body, seq)));
                    }
                }
                room.drop_failed(ctx);
                let _ = done.send(Ok(()));
            });
        ctx.wait(joining);
        respond
    }

    /// A CHAT that passed the room's checks: published through Redis. The sender's ack (its
    /// `ref`) is delivered when the echo comes back, in the room's order.
    pub(super) fn cluster_post(
        &mut self,
        post: crate::actors::Post,
    ) -> ActorResponse<Self, Result<(), ChatError>> {
        let user = self.members[&post.session].user.clone();
        let (id, body) = self.chat_body(user.as_str(), post.content);
        if let Some(cluster) = self.cluster.as_mut() {
            let entry = (post.session, post.r#ref, Instant::now());
            cluster.pending.insert(id.clone(), entry);
        }
        let publishing = self.publish(id.clone(), post.session, body);
        ActorResponse::r#async(publishing.into_actor(self).map(move |published, room, _| {
            published.map(drop).map_err(|error| {
                if let Unavailable::TimedOut { .. } = error {
                    // Redis may still run the script it was sent: the pending ack stays (for
                    // PENDING_ACK_TTL), so if the CHAT does come through, the sender gets it
                    // with its ref, after this ERROR.
                    return ChatError::Unavailable(format!(
                        "{error}; the CHAT may still be delivered (with this ref)"
                    ));
                }
                if let Some(cluster) = room.cluster.as_mut() {
                    cluster.pending.remove(&id);
                }
                unavailable(&error)
            })
        }))
    }

    /// An operator's announcement, published like any CHAT.
    pub(super) fn cluster_announce(
        &mut self,
        content: String,
    ) -> ActorResponse<Self, Result<(u64, String), ChatError>> {
        let (id, body) = self.chat_body(SYSTEM_USER, content);
        let publishing = self.publish(id.clone(), SessionId(0), body);
        ActorResponse::r#async(
            async move {
                publishing
                    .await
                    .map(|seq| (seq, id))
                    .map_err(|e| unavailable(&e))
            }
            .into_actor(self),
        )
    }

    /// A CHAT encoded without its seq, which Redis assigns.
    fn chat_body(&self, user: &str, content: String) -> (String, Bytes) {
        let message = self.chat_message(user, content, 0);
        let body = proto::encode(&message);
        (message.id, body)
    }

    fn publish(
        &self,
        id: String,
        origin: SessionId,
        body: Bytes,
    ) -> impl Future<Output = Result<u64, Unavailable>> + 'static {
        let engine = self.engine();
        let name = self.name.to_string();
        let history = self.limits.history;
        async move { engine.publish_chat(&name, history, &id, origin, body).await }
    }

    /// Removes the presence entry of a session that left this node's room; the LEAVE reaches
    /// every node's members through the channel. The room waits for it, so a quick re-JOIN of
    /// the same session cannot be overtaken by its own older LEAVE, and an empty room stops
    /// only after it (the room keeps nothing else: seq and history are in Redis). If Redis
    /// cannot be reached, the entry expires after `presence_ttl_ms` and a sweep announces the
    /// LEAVE then.
    pub(super) fn cluster_leave(&mut self, id: SessionId, user: UserName, ctx: &mut Context<Self>) {
        let engine = self.engine();
        let name = self.name.to_string();
        let body = proto::encode(&proto::Message::event(
            Kind::Leave,
            self.name.as_str(),
            user.as_str(),
        ));
        // Runs on the engine's runtime, so it completes even if the room or its arbiter stops
        // meanwhile (shutdown).
        let removal = self.engine().spawn(async move {
            if let Err(error) = engine.leave(&name, id, user.as_str(), body).await {
                warn!(room = %name, session = %id, %error, "LEAVE not published; presence expires by TTL");
            }
        });
        if let Some(cluster) = self.cluster.as_mut() {
            cluster.leaves_in_flight += 1;
        }
        let removed = async move { drop(removal.await) }.into_actor(self);
        ctx.wait(removed.map(|(), room, ctx| {
            if let Some(cluster) = room.cluster.as_mut() {
                cluster.leaves_in_flight -= 1;
            }
            room.expire_when_empty(ctx);
        }));
    }

    /// Whether an empty room must wait for JOINs or LEAVEs Redis is still answering before
    /// stopping.
    pub(super) fn cluster_requests_in_flight(&self) -> bool {
        self.cluster
            .as_ref()
            .is_some_and(|c| c.leaves_in_flight > 0 || c.joins_in_flight > 0)
    }

    fn refresh_presence(&mut self, ctx: &mut Context<Self>) {
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        cluster
            .pending
            .retain(|_, (_, _, at)| at.elapsed() < PENDING_ACK_TTL);
        if cluster.subscription.is_none() {
            return self.ensure_subscribed(ctx);
        }
        if cluster.refreshing {
            return;
        }
        cluster.refreshing = true;
        let local: Vec<LocalPresence> = self
            .members
            .iter()
            .map(|(id, m)| LocalPresence {
                session: *id,
                user: m.user.to_string(),
                join_body: proto::encode(&proto::Message::event(
                    Kind::Join,
                    self.name.as_str(),
                    m.user.as_str(),
                )),
            })
            .collect();
        let (engine, name, ttl) = (self.engine(), self.name.to_string(), self.ttl());
        // The refresh is awaited by the room (one round trip per third of the TTL): run beside
        // a LEAVE, its member list could re-add a member that just left.
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
                .into_actor(self)
                .map(|(), room, _| {
                    if let Some(cluster) = room.cluster.as_mut() {
                        cluster.refreshing = false;
                    }
                }),
        );
    }

    /// A CHAT from the channel: delivered to the local members in seq order, after fetching any
    /// seq the channel skipped (lost during a reconnect).
    fn on_chat(&mut self, seq: u64, id: String, body: Bytes, ctx: &mut Context<Self>) {
        if seq == 1 && self.seq > 1 {
            // Redis started the room over (its seq key was lost: expired, flushed, restarted
            // empty). Dropping this as "already delivered" would drop every CHAT until the count
            // passed ours again; a re-sync sees the loss and follows Redis (fetching this one).
            self.resync(ctx);
            return;
        }
        if seq <= self.seq {
            return; // already delivered (fetched to fill a gap)
        }
        if seq == self.seq + 1 {
            return self.deliver_chat(seq, &id, &body, ctx);
        }
        self.fill_gap(seq - 1, Some((seq, id, body)), ctx);
    }

    /// Fans out CHAT `seq`; the sender (if it is on this node) gets its `ref` back. Pending acks
    /// are keyed by message ids (UUIDs) only this node makes, so the id alone finds the sender,
    /// also when the CHAT came back through a gap fill instead of the channel.
    fn deliver_chat(&mut self, seq: u64, id: &str, body: &[u8], ctx: &mut Context<Self>) {
        self.seq = seq;
        let live = proto::with_seq(body, seq);
        let ack = self.cluster.as_mut().and_then(|c| {
            c.last_id = Some(id.to_string());
            c.pending.remove(id)
        });
        let started = Instant::now();
        for (member_id, member) in &self.members {
            if member.live_after >= seq {
                continue;
            }
            let message = match &ack {
                Some((sender, r#ref, _)) if sender == member_id => proto::with_ref(&live, r#ref),
                _ => live.clone(),
            };
            match member.tx.try_deliver(message) {
                Delivery::Sent => {}
                failure => self.failed.push((*member_id, failure)),
            }
        }
        metrics::get().fanout.record(started.elapsed());
        self.drop_failed(ctx);
    }

    /// The channel came back after a loss: whatever was published meanwhile was missed. Local
    /// presence is written again (Redis may have lost it) and the seq gap is filled; a seq that
    /// went backwards means Redis lost the room's data, so the count starts over from Redis's.
    fn resync(&mut self, ctx: &mut Context<Self>) {
        match self.cluster.as_mut() {
            Some(cluster) if !cluster.resyncing => {
                cluster.resyncing = true;
                // A fresh loss: its retries start at the shortest pause. Retries within one
                // loss keep growing until a whole attempt succeeds, even when parts of each
                // attempt get through.
                cluster.retry_backoff.reset();
            }
            _ => return,
        }
        self.resync_now(ctx);
    }

    /// A read that a re-sync needs failed (Redis is still unreachable, or the command
    /// connection is not back yet): the whole re-sync runs again after the backoff's pause.
    fn retry_resync(&mut self, ctx: &mut Context<Self>) {
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        cluster.resyncing = true;
        if cluster.retry_waiting {
            return;
        }
        cluster.retry_waiting = true;
        // Jittered (half to all of the pause): every room of a node lost the channel at the same
        // moment, and must not come back to Redis in step.
        let pause = cluster
            .retry_backoff
            .pause()
            .mul_f64(0.5 + random_fraction() / 2.0);
        ctx.run_later(pause, |room, ctx| {
            if let Some(cluster) = room.cluster.as_mut() {
                cluster.retry_waiting = false;
            }
            room.resync_now(ctx);
        });
    }

    fn resync_now(&mut self, ctx: &mut Context<Self>) {
        info!(room = %self.name, "cluster channel back: re-syncing the room");
        self.refresh_presence(ctx);
        self.reconcile_presence(ctx);
        let (engine, name, seq) = (self.engine(), self.name.to_string(), self.seq);
        let last_id = self.cluster.as_ref().and_then(|c| c.last_id.clone());
        let reading = async move {
            let last = engine.last_seq(&name).await?;
            if seq == 0 {
                return Ok((last, true));
            }
            let at_seq = if seq == 1 {
                engine.replay(&name, 0, 1, 1).await?
            } else {
                engine.replay(&name, seq - 1, 0, seq).await?
            };
            let kept = match (at_seq.first(), &last_id) {
                (Some((s, body)), Some(last_id)) if *s == seq => body_id(body) == *last_id,
                // Nothing delivered here yet to compare with, or the entry was trimmed away by
                // newer messages (or gone with the rest): only the count can tell.
                _ => last >= seq,
            };
            Ok::<_, Unavailable>((last, kept))
        };
        ctx.wait(reading.into_actor(self).map(|read, room, ctx| {
            // Done unless another part of this attempt (presence) already failed and waits to
            // run the whole re-sync again.
            if read.is_ok()
                && let Some(cluster) = room.cluster.as_mut()
                && !cluster.retry_waiting
            {
                cluster.resyncing = false;
            }
            room.after_resync_read(read, ctx);
        }));
    }

    fn after_resync_read(
        &mut self,
        read: Result<(u64, bool), Unavailable>,
        ctx: &mut Context<Self>,
    ) {
        let room = self;
        match read {
            Ok((last, kept)) if !kept || last < room.seq => {
                warn!(room = %room.name, was = room.seq, now = last, "redis lost the room's seq; following redis");
                room.seq = 0;
                for member in room.members.values_mut() {
                    member.live_after = 0;
                }
                if last > 0 {
                    room.fill_gap(last, None, ctx);
                }
            }
            Ok((last, _)) if last > room.seq => room.fill_gap(last, None, ctx),
            Ok(_) => {}
            Err(error) => {
                // The channel can come back before the command connection does: try again.
                warn!(room = %room.name, %error, "re-sync failed, retrying");
                room.retry_resync(ctx);
            }
        }
    }

    /// The member list a JOIN's script returned is the truth at that moment. With nobody here
    /// yet it simply becomes the roster (the joiner included: its own JOIN echo then changes
    /// nothing, and nobody else here needs it). Otherwise the members already here are told the
    /// differences now (the joiner is not a member yet, so it gets none of them), which makes
    /// the older presence events still on their way change nothing — the joiner's JOINED
    /// already reflects them. The joiner's own entry stays out, so its JOIN echo is announced.
    fn take_join_snapshot(
        &mut self,
        members: &[crate::cluster::Member],
        joiner: SessionId,
        ctx: &mut Context<Self>,
    ) {
        let first = self.members.is_empty();
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        let snapshot: HashMap<(String, SessionId), String> = members
            .iter()
            .map(|m| ((m.node.clone(), m.session), m.user.clone()))
            .collect();
        if first {
            cluster.roster = snapshot;
            return;
        }
        let own = (cluster.engine.node_id().to_string(), joiner);
        self.settle_roster(snapshot, Some(own), ctx);
    }

    /// Makes the roster equal `truth` (but for `skip`, left as it is), announcing each member
    /// that went or came to the members here — never to a member about itself.
    fn settle_roster(
        &mut self,
        truth: HashMap<(String, SessionId), String>,
        skip: Option<(String, SessionId)>,
        ctx: &mut Context<Self>,
    ) {
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        let me = cluster.engine.node_id().to_string();
        let skipped = |key: &(String, SessionId)| skip.as_ref() == Some(key);
        let gone: Vec<((String, SessionId), String)> = cluster
            .roster
            .iter()
            .filter(|(key, _)| !skipped(key) && !truth.contains_key(*key))
            .map(|(key, user)| (key.clone(), user.clone()))
            .collect();
        let came: Vec<((String, SessionId), String)> = truth
            .into_iter()
            .filter(|(key, _)| !skipped(key) && !cluster.roster.contains_key(key))
            .collect();
        for ((node, session), user) in gone {
            let except = (node == me).then_some(session);
            self.roster_remove(node, session);
            self.announce_presence(Kind::Leave, &user, except, ctx);
        }
        for ((node, session), user) in came {
            let except = (node == me).then_some(session);
            self.roster_add(node, session, &user);
            self.announce_presence(Kind::Join, &user, except, ctx);
        }
    }

    /// Records a member; false if it was known already.
    fn roster_add(&mut self, node: String, session: SessionId, user: &str) -> bool {
        let Some(cluster) = self.cluster.as_mut() else {
            return false;
        };
        cluster
            .roster
            .insert((node, session), user.to_string())
            .is_none()
    }

    /// Forgets a member; false if it was not known.
    fn roster_remove(&mut self, node: String, session: SessionId) -> bool {
        self.cluster
            .as_mut()
            .is_some_and(|c| c.roster.remove(&(node, session)).is_some())
    }

    fn announce_presence(
        &mut self,
        kind: Kind,
        user: &str,
        except: Option<SessionId>,
        ctx: &mut Context<Self>,
    ) {
        let presence = proto::encode(&proto::Message::event(kind, self.name.as_str(), user));
        self.broadcast(&presence, except);
        self.drop_failed(ctx);
    }

    /// After a reconnect (or a lagging sink): members that came or went meanwhile are announced
    /// from the difference between the roster and the truth — Redis for other nodes' members,
    /// this room's own member table for this node's (Redis may not have them back yet).
    fn reconcile_presence(&mut self, ctx: &mut Context<Self>) {
        let (engine, name) = (self.engine(), self.name.to_string());
        let reading = async move { engine.members(&name).await };
        ctx.wait(reading.into_actor(self).map(|members, room, ctx| {
            let Ok(members) = members else {
                warn!(room = %room.name, "presence not reconciled, re-syncing");
                room.retry_resync(ctx);
                return;
            };
            let local: Vec<(SessionId, String)> = room
                .members
                .iter()
                .map(|(id, m)| (*id, m.user.to_string()))
                .collect();
            let Some(cluster) = room.cluster.as_mut() else {
                return;
            };
            let me = cluster.engine.node_id().to_string();
            // Other nodes' members as Redis has them; this node's as they are here.
            let mut now: HashMap<(String, SessionId), String> = members
                .into_iter()
                .filter(|m| m.node != me)
                .map(|m| ((m.node, m.session), m.user))
                .collect();
            now.extend(local.into_iter().map(|(id, user)| ((me.clone(), id), user)));
            room.settle_roster(now, None, ctx);
        }));
    }

    /// Fetches and delivers every seq after the room's up to `last`, then `next` (the CHAT that
    /// revealed the gap). If the fetch fails, `next` is not delivered either (that would skip the
    /// gap for good): a re-sync fetches everything up to Redis's last seq instead.
    fn fill_gap(&mut self, last: u64, next: Option<(u64, String, Bytes)>, ctx: &mut Context<Self>) {
        let (engine, name, from) = (self.engine(), self.name.to_string(), self.seq);
        let fetching = async move { fetch_range(&engine, &name, from, last).await };
        ctx.wait(fetching.into_actor(self).map(move |missed, room, ctx| {
            let missed = match missed {
                Ok(missed) => missed,
                Err(error) => {
                    let room_name = &room.name;
                    warn!(room = %room_name, from, to = last, %error, "gap not filled, re-syncing");
                    room.retry_resync(ctx);
                    return;
                }
            };
            for (seq, body) in missed {
                if seq > room.seq {
                    room.deliver_chat(seq, &body_id(&body), &body, ctx);
                }
            }
            if let Some((seq, id, body)) = next
                && seq > room.seq
            {
                room.deliver_chat(seq, &id, &body, ctx);
            }
        }));
    }
}

impl StreamHandler<Published> for Room {
    fn handle(&mut self, published: Published, ctx: &mut Context<Self>) {
        let me = self
            .cluster
            .as_ref()
            .map(|c| c.engine.node_id().to_string())
            .unwrap_or_default();
        match published {
            Published::Chat { seq, id, body, .. } => self.on_chat(seq, id, body, ctx),
            Published::Join {
                node,
                session,
                user,
                ..
            } => {
                let except = (node == me).then_some(session);
                if self.roster_add(node, session, &user) {
                    self.announce_presence(Kind::Join, &user, except, ctx);
                }
            }
            Published::Leave {
                node,
                session,
                user,
                ..
            } => {
                // Never to the session itself (it may have re-joined before its old LEAVE came back).
                let except = (node == me).then_some(session);
                if self.roster_remove(node, session) {
                    self.announce_presence(Kind::Leave, &user, except, ctx);
                }
            }
            Published::Resubscribed => self.resync(ctx),
            // Operator traffic has channels of its own; a room's channel never carries it.
            Published::Request { .. } | Published::Answer { .. } => {}
        }
    }

    /// The sink closes only when the engine is gone; the room goes on without live traffic.
    fn finished(&mut self, _ctx: &mut Context<Self>) {
        warn!(room = %self.name, "cluster channel closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resync_backoff_doubles_to_its_cap_and_starts_over_after_a_reset() {
        let mut backoff = Backoff::new();
        let pauses: Vec<Duration> = (0..7).map(|_| backoff.pause()).collect();
        let expected = [200, 400, 800, 1600, 3200, 5000, 5000].map(Duration::from_millis);
        assert_eq!(pauses, expected);
        backoff.reset();
        assert_eq!(backoff.pause(), RESYNC_RETRY_MIN);
    }

    #[test]
    fn a_replay_keeps_the_newest_entries_that_fit_the_byte_bound() {
        let entry = |seq: u64, len: usize| (seq, Bytes::from(vec![b'x'; len]));
        let replay = vec![entry(1, 100), entry(2, 100), entry(3, 50), entry(4, 100)];
        let seqs = |r: Vec<(u64, Bytes)>| r.into_iter().map(|(s, _)| s).collect::<Vec<_>>();
        assert_eq!(seqs(newest_within(replay.clone(), 10, 249)), vec![3, 4]);
        assert_eq!(seqs(newest_within(replay.clone(), 10, 250)), vec![2, 3, 4]);
        assert_eq!(
            seqs(newest_within(replay.clone(), 10, 350)),
            vec![1, 2, 3, 4]
        );
        assert_eq!(
            seqs(newest_within(replay.clone(), 10, 99)),
            Vec::<u64>::new()
        );
        assert_eq!(seqs(newest_within(Vec::new(), 10, 10)), Vec::<u64>::new());
        assert_eq!(
            seqs(newest_within(replay.clone(), 2, 350)),
            vec![3, 4],
            "history caps the count"
        );
    }

    #[test]
    fn jitter_fractions_stay_in_range_and_vary() {
        let fractions: Vec<f64> = (0..100).map(|_| random_fraction()).collect();
        assert!(fractions.iter().all(|f| (0.0..1.0).contains(f)));
        let first = fractions[0];
        assert!(fractions.iter().any(|f| *f != first), "not random");
    }
}
