//! Keeping a Redis log in step with its channel: subscribing, reading the channel (CHATs in seq
//! order, presence through the roster), filling seq gaps from the room's stream, and re-syncing
//! after a lost connection with a jittered backoff. Driven by the room actor that holds the log,
//! seen through [`LogHost`]; every Redis read here is awaited with `ctx.wait`, so the room
//! handles no other mail before it knows where its live traffic stands.

use std::time::Duration;

use actix::{ActorFutureExt, AsyncContext, Context, WrapFuture};
use bytes::Bytes;
use tracing::{info, warn};

use super::{Link, subscribe};
use crate::{
    cluster::{Published, RedisEngine, Unavailable},
    log::{Appended, LogHost, Presence},
    proto::{self, Kind},
};

/// Pause before a failed re-sync is first tried again; each further failure doubles it.
const RESYNC_RETRY_MIN: Duration = Duration::from_millis(200);
/// Longest pause between re-sync attempts: in a long outage every room of a node retries, so
/// each must ask Redis rarely, yet a room still catches up within this of Redis coming back.
const RESYNC_RETRY_MAX: Duration = Duration::from_secs(5);

/// Where the log stands with its channel's past.
#[derive(Debug)]
pub(super) enum Resync {
    /// Nothing known to be missed.
    InStep,
    /// A re-sync is running: repeated reconnects start only one.
    Running(Backoff),
    /// A part of the re-sync failed and the whole of it runs again after a pause: the failures
    /// of one attempt (presence and seq reads) wait for one retry together instead of each
    /// scheduling its own and doubling the pause twice.
    RetryWaiting(Backoff),
}

/// Exponential backoff between re-sync attempts, from [`RESYNC_RETRY_MIN`] doubling up to
/// [`RESYNC_RETRY_MAX`]; a fresh loss starts a fresh one.
#[derive(Debug)]
pub(super) struct Backoff {
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
}

/// A number in [0, 1) from the random bits of a fresh UUIDv7 (jitter needs no better source).
fn random_fraction() -> f64 {
    let random = uuid::Uuid::now_v7().as_u128() as u64 & ((1 << 53) - 1);
    random as f64 / (1u64 << 53) as f64
}

/// The message id inside an encoded CHAT (only on rare paths: gap fills, early resends).
pub(super) fn body_id(body: &[u8]) -> String {
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

/// The room started: subscribe, and keep this node's members alive (and other nodes' expired
/// ones cleared) every third of the presence TTL.
pub(in crate::log) fn start<H: LogHost>(host: &mut H, ctx: &mut Context<H>) {
    if host.redis_log().is_none() {
        return;
    }
    ensure_subscribed(host, ctx);
    let every = host.presence_ttl() / 3;
    ctx.run_interval(every, |host, ctx| super::presence::refresh(host, ctx));
}

/// Subscribes (unless already subscribed) and learns the room's current seq, holding every
/// other mail meanwhile, so nothing is handled before the room knows where live starts.
pub(super) fn ensure_subscribed<H: LogHost>(host: &mut H, ctx: &mut Context<H>) {
    let Some(log) = host.redis_log() else {
        return;
    };
    if !matches!(log.link, Link::Down) {
        return;
    }
    log.link = Link::Subscribing;
    let (engine, name, sink) = (log.engine.clone(), log.name.to_string(), log.sink.clone());
    let subscribing = async move { subscribe(&engine, &name, sink).await };
    ctx.wait(subscribing.into_actor(host).map(|subscribed, host, _ctx| {
        let Some(log) = host.redis_log() else {
            return;
        };
        log.link = match subscribed {
            Ok((subscription, seq)) => {
                log.seq = log.seq.max(seq);
                Link::Up {
                    _subscription: subscription,
                }
            }
            Err(error) => {
                warn!(room = %log.name, %error, "cannot subscribe the room");
                Link::Down
            }
        };
    }));
}

/// One item from the room's channel.
pub(in crate::log) fn on_published<H: LogHost>(
    host: &mut H,
    published: Published,
    ctx: &mut Context<H>,
) {
    let Some(log) = host.redis_log() else {
        return;
    };
    let me = log.engine.node_id().to_string();
    let presence = match published {
        Published::Chat { seq, id, body, .. } => return on_chat(host, seq, id, body, ctx),
        Published::Join {
            node,
            session,
            user,
            ..
        } => {
            let except = (node == me).then_some(session);
            log.roster_add(node, session, &user).then_some(Presence {
                kind: Kind::Join,
                user,
                except,
            })
        }
        Published::Leave {
            node,
            session,
            user,
            ..
        } => {
            // Never to the session itself (it may have re-joined before its old LEAVE came back).
            let except = (node == me).then_some(session);
            log.roster_remove(node, session).then_some(Presence {
                kind: Kind::Leave,
                user,
                except,
            })
        }
        Published::Resubscribed => return resync(host, ctx),
        // Operator traffic has channels of its own; a room's channel never carries it.
        Published::Request { .. } | Published::Answer { .. } => None,
    };
    if let Some(presence) = presence {
        host.announce(presence, ctx);
    }
}

/// A CHAT from the channel: delivered to the local members in seq order, after fetching any
/// seq the channel skipped (lost during a reconnect).
fn on_chat<H: LogHost>(host: &mut H, seq: u64, id: String, body: Bytes, ctx: &mut Context<H>) {
    let Some(log) = host.redis_log() else {
        return;
    };
    if seq == 1 && log.seq > 1 {
        // Redis started the room over (its seq key was lost: expired, flushed, restarted
        // empty). Dropping this as "already delivered" would drop every CHAT until the count
        // passed ours again; a re-sync sees the loss and follows Redis (fetching this one).
        return resync(host, ctx);
    }
    if seq <= log.seq {
        return; // already delivered (fetched to fill a gap)
    }
    if seq == log.seq + 1 {
        return deliver(host, seq, &id, &body, ctx);
    }
    fill_gap(host, seq - 1, Some((seq, id, body)), ctx);
}

/// Hands CHAT `seq` to the room's fan-out; the sender (if it is on this node) gets its `ref`
/// back, also when the CHAT came back through a gap fill instead of the channel.
fn deliver<H: LogHost>(host: &mut H, seq: u64, id: &str, body: &[u8], ctx: &mut Context<H>) {
    let Some(log) = host.redis_log() else {
        return;
    };
    let ack = log.delivered(seq, id);
    let live = proto::with_seq(body, seq);
    host.appended(Appended { seq, live, ack }, ctx);
}

/// Fetches and delivers every seq after the log's up to `last`, then `next` (the CHAT that
/// revealed the gap). If the fetch fails, `next` is not delivered either (that would skip the
/// gap for good): a re-sync fetches everything up to Redis's last seq instead.
fn fill_gap<H: LogHost>(
    host: &mut H,
    last: u64,
    next: Option<(u64, String, Bytes)>,
    ctx: &mut Context<H>,
) {
    let Some(log) = host.redis_log() else {
        return;
    };
    let (engine, name, from) = (log.engine.clone(), log.name.to_string(), log.seq);
    let fetching = async move { fetch_range(&engine, &name, from, last).await };
    ctx.wait(fetching.into_actor(host).map(move |missed, host, ctx| {
        let missed = match missed {
            Ok(missed) => missed,
            Err(error) => {
                let room = host.room_name();
                warn!(room = %room, from, to = last, %error, "gap not filled, re-syncing");
                return retry_resync(host, ctx);
            }
        };
        let behind = |host: &mut H, seq: u64| host.redis_log().is_some_and(|log| seq > log.seq);
        for (seq, body) in missed {
            if behind(host, seq) {
                deliver(host, seq, &body_id(&body), &body, ctx);
            }
        }
        if let Some((seq, id, body)) = next
            && behind(host, seq)
        {
            deliver(host, seq, &id, &body, ctx);
        }
    }));
}

/// The channel came back after a loss: whatever was published meanwhile was missed. Local
/// presence is written again (Redis may have lost it) and the seq gap is filled; a seq that
/// went backwards means Redis lost the room's data, so the count starts over from Redis's.
fn resync<H: LogHost>(host: &mut H, ctx: &mut Context<H>) {
    let Some(log) = host.redis_log() else {
        return;
    };
    if !matches!(log.resync, Resync::InStep) {
        return;
    }
    // A fresh loss: its retries start at the shortest pause. Retries within one loss keep
    // growing until a whole attempt succeeds, even when parts of each attempt get through.
    log.resync = Resync::Running(Backoff::new());
    resync_now(host, ctx);
}

/// A read that a re-sync needs failed (Redis is still unreachable, or the command connection
/// is not back yet): the whole re-sync runs again after the backoff's pause.
pub(super) fn retry_resync<H: LogHost>(host: &mut H, ctx: &mut Context<H>) {
    let Some(log) = host.redis_log() else {
        return;
    };
    let mut backoff = match std::mem::replace(&mut log.resync, Resync::InStep) {
        Resync::InStep => Backoff::new(),
        Resync::Running(backoff) => backoff,
        waiting @ Resync::RetryWaiting(_) => {
            log.resync = waiting;
            return;
        }
    };
    // Jittered (half to all of the pause): every room of a node lost the channel at the same
    // moment, and must not come back to Redis in step.
    let pause = backoff.pause().mul_f64(0.5 + random_fraction() / 2.0);
    log.resync = Resync::RetryWaiting(backoff);
    ctx.run_later(pause, |host, ctx| {
        if let Some(log) = host.redis_log()
            && let Resync::RetryWaiting(backoff) =
                std::mem::replace(&mut log.resync, Resync::InStep)
        {
            log.resync = Resync::Running(backoff);
        }
        resync_now(host, ctx);
    });
}

fn resync_now<H: LogHost>(host: &mut H, ctx: &mut Context<H>) {
    info!(room = %host.room_name(), "cluster channel back: re-syncing the room");
    super::presence::refresh(host, ctx);
    super::presence::reconcile(host, ctx);
    let Some(log) = host.redis_log() else {
        return;
    };
    let (engine, name, seq) = (log.engine.clone(), log.name.to_string(), log.seq);
    let last_id = log.last_id.clone();
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
    ctx.wait(reading.into_actor(host).map(|read, host, ctx| {
        // Done unless another part of this attempt (presence) already failed and waits to
        // run the whole re-sync again.
        if read.is_ok()
            && let Some(log) = host.redis_log()
            && let Resync::Running(_) = log.resync
        {
            log.resync = Resync::InStep;
        }
        after_resync_read(host, read, ctx);
    }));
}

fn after_resync_read<H: LogHost>(
    host: &mut H,
    read: Result<(u64, bool), Unavailable>,
    ctx: &mut Context<H>,
) {
    let Some(log) = host.redis_log() else {
        return;
    };
    match read {
        Ok((last, kept)) if !kept || last < log.seq => {
            warn!(room = %log.name, was = log.seq, now = last, "redis lost the room's seq; following redis");
            log.seq = 0;
            host.count_restarted();
            if last > 0 {
                fill_gap(host, last, None, ctx);
            }
        }
        Ok((last, _)) if last > log.seq => fill_gap(host, last, None, ctx),
        Ok(_) => {}
        Err(error) => {
            // The channel can come back before the command connection does: try again.
            warn!(room = %log.name, %error, "re-sync failed, retrying");
            retry_resync(host, ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resync_backoff_doubles_to_its_cap_and_a_fresh_one_starts_over() {
        let mut backoff = Backoff::new();
        let pauses: Vec<Duration> = (0..7).map(|_| backoff.pause()).collect();
        let expected = [200, 400, 800, 1600, 3200, 5000, 5000].map(Duration::from_millis);
        assert_eq!(pauses, expected);
        assert_eq!(Backoff::new().pause(), RESYNC_RETRY_MIN);
    }

    #[test]
    fn jitter_fractions_stay_in_range_and_vary() {
        let fractions: Vec<f64> = (0..100).map(|_| random_fraction()).collect();
        assert!(fractions.iter().all(|f| (0.0..1.0).contains(f)));
        let first = fractions[0];
        assert!(fractions.iter().any(|f| *f != first), "not random");
    }
}
