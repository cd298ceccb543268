//! The shard task's life: connect with capped backoff (taking requests meanwhile), resubscribe
//! every routed channel, then serve messages, requests and a health PING until the connection
//! is lost or the engine is gone. It keeps the pub/sub half of the health flag.

use std::{collections::HashMap, sync::Arc, time::Duration};

use redis::aio::{PubSub, PubSubSink};
use tokio::{
    runtime::Handle,
    sync::{mpsc, oneshot},
    time::{Instant, MissedTickBehavior, interval, sleep, sleep_until, timeout},
};
use tokio_stream::StreamExt;
use tracing::{debug, info, warn};

use super::{SubCommand, routing::Route};
use crate::cluster::{
    Unavailable,
    engine::{HEALTH_INTERVAL, Health, Timeouts},
    payload::Published,
};

/// First pause after a failed connection attempt; doubled per failure up to [`RECONNECT_MAX`].
pub const RECONNECT_MIN: Duration = Duration::from_millis(50);
/// Longest pause between two connection attempts.
pub const RECONNECT_MAX: Duration = Duration::from_secs(2);
/// Channels per SUBSCRIBE when resubscribing after a reconnect (keeps each command small).
const RESUBSCRIBE_BATCH: usize = 256;
/// Failed connection attempts between two warnings while a shard stays unreachable.
const WARN_EVERY_ATTEMPTS: u32 = 20;

/// A subscribe that arrived while the connection was down: its route is already in the table
/// (so the next connection subscribes it), and it is answered then, or refused at `deadline`.
pub(super) struct Pending {
    pub(super) channel: String,
    pub(super) id: u64,
    pub(super) done: oneshot::Sender<Result<(), Unavailable>>,
    pub(super) deadline: Instant,
}

/// Why a connected period ended.
enum Ended {
    /// Every engine handle is gone: stop.
    EngineGone,
    /// The connection failed: reconnect. `was_up`: it had resubscribed every room first.
    Lost { reason: String, was_up: bool },
}

/// One shard's pub/sub task: owns the connection, the routing table and the requests queue;
/// runs until every engine handle and every [`Subscription`](super::Subscription) (the
/// holders of the queue's senders) is gone.
pub(crate) struct ShardTask {
    pub(super) shard: usize,
    client: redis::Client,
    requests: mpsc::Receiver<SubCommand>,
    /// Channel → the room's sink. Holds exactly the rooms subscribed on the current connection
    /// (or to be subscribed again on the next one).
    pub(super) routes: HashMap<String, Route>,
    pub(super) pending: Vec<Pending>,
    health: Arc<Health>,
    pub(super) timeouts: Timeouts,
}

impl ShardTask {
    pub(crate) fn spawn(
        shard: usize,
        client: redis::Client,
        requests: mpsc::Receiver<SubCommand>,
        health: Arc<Health>,
        timeouts: Timeouts,
        runtime: &Handle,
    ) {
        let task = ShardTask {
            shard,
            client,
            requests,
            routes: HashMap::new(),
            pending: Vec::new(),
            health,
            timeouts,
        };
        runtime.spawn(task.run());
    }

    async fn run(mut self) {
        let mut first = true;
        // Grows while connections fail before they are up (say, Redis accepts and then drops
        // us), so a flapping server is not hammered; a loss after being up reconnects at once.
        let mut pause = Duration::ZERO;
        loop {
            let Some(pubsub) = self.connect(pause).await else {
                return;
            };
            match self.serve(pubsub, first).await {
                Ended::EngineGone => return,
                Ended::Lost { reason, was_up } => {
                    self.health.set_pubsub_up(self.shard, false);
                    pause = if was_up {
                        Duration::ZERO
                    } else {
                        (pause * 2).clamp(RECONNECT_MIN, RECONNECT_MAX)
                    };
                    warn!(
                        shard = self.shard,
                        rooms = self.routes.len(),
                        %reason,
                        "redis pub/sub connection lost; reconnecting"
                    );
                }
            }
            first = false;
        }
    }

    /// Connects with backoff while still taking requests: a subscribe waits for the connection
    /// up to the response timeout, like a command does. `None` once the engine is gone.
    async fn connect(&mut self, pause: Duration) -> Option<PubSub> {
        let attempt = connect_with_backoff(
            self.client.clone(),
            self.timeouts.connect,
            self.shard,
            pause,
        );
        tokio::pin!(attempt);
        loop {
            let next_deadline = self.pending.iter().map(|pending| pending.deadline).min();
            tokio::select! {
                pubsub = &mut attempt => return Some(pubsub),
                request = self.requests.recv() => self.handle_offline(request?),
                _ = sleep_until(next_deadline.unwrap_or_else(Instant::now)), if next_deadline.is_some() => {
                    self.expire_pending();
                }
            }
        }
    }

    fn expire_pending(&mut self) {
        let now = Instant::now();
        let (expired, waiting) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|pending| pending.deadline <= now);
        self.pending = waiting;
        for pending in expired {
            self.remove_route(&pending.channel, pending.id);
            let _ = pending.done.send(Err(Unavailable::TimedOut {
                shard: self.shard,
                op: "subscribe",
                after: self.timeouts.response,
            }));
        }
    }

    async fn serve(&mut self, pubsub: PubSub, first: bool) -> Ended {
        let (mut sink, mut messages) = pubsub.split();
        if let Err(reason) = self.resubscribe_all(&mut sink).await {
            return Ended::Lost {
                reason,
                was_up: false,
            };
        }
        self.health.set_pubsub_up(self.shard, true);
        // Subscribes that waited for this connection are live now; they had nothing to miss.
        let pending = std::mem::take(&mut self.pending);
        let fresh: Vec<u64> = pending.iter().map(|pending| pending.id).collect();
        for pending in pending {
            if pending.done.send(Ok(())).is_err() {
                let _ = self
                    .unsubscribe(&mut sink, &pending.channel, pending.id)
                    .await;
            }
        }
        if first {
            info!(shard = self.shard, "redis pub/sub connected");
        } else {
            info!(
                shard = self.shard,
                rooms = self.routes.len(),
                "redis pub/sub reconnected; rooms resubscribed"
            );
            self.tell_all(&mut sink, Published::Resubscribed, &fresh)
                .await;
        }
        let mut health_tick = interval(HEALTH_INTERVAL);
        health_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        health_tick.reset();
        loop {
            tokio::select! {
                message = messages.next() => match message {
                    Some(message) => self.route(&mut sink, message).await,
                    None => return Ended::Lost { reason: "connection closed".into(), was_up: true },
                },
                request = self.requests.recv() => match request {
                    Some(request) => {
                        if let Err(reason) = self.handle_online(&mut sink, request).await {
                            return Ended::Lost { reason, was_up: true };
                        }
                    }
                    None => return Ended::EngineGone,
                },
                _ = health_tick.tick() => {
                    // A half-open connection never closes by itself; an unanswered PING ends it.
                    match timeout(self.timeouts.response, sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(error)) => {
                            return Ended::Lost { reason: format!("ping failed: {error}"), was_up: true };
                        }
                        Err(_) => {
                            return Ended::Lost { reason: "ping timed out".into(), was_up: true };
                        }
                    }
                }
            }
        }
    }

    async fn resubscribe_all(&mut self, sink: &mut PubSubSink) -> Result<(), String> {
        let channels: Vec<&String> = self.routes.keys().collect();
        for batch in channels.chunks(RESUBSCRIBE_BATCH) {
            match timeout(self.timeouts.response, sink.subscribe(batch)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return Err(format!("resubscribe failed: {error}")),
                Err(_) => return Err("resubscribe timed out".into()),
            }
        }
        Ok(())
    }
}

/// Waits `pause`, then tries to connect until it succeeds, backing off between attempts.
async fn connect_with_backoff(
    client: redis::Client,
    limit: Duration,
    shard: usize,
    pause: Duration,
) -> PubSub {
    sleep(pause).await;
    let mut delay = pause.max(RECONNECT_MIN);
    let mut failures: u32 = 0;
    loop {
        let reason = match timeout(limit, client.get_async_pubsub()).await {
            Ok(Ok(pubsub)) => return pubsub,
            Ok(Err(error)) => error.to_string(),
            Err(_) => "connect timed out".to_string(),
        };
        failures = failures.saturating_add(1);
        if failures.is_multiple_of(WARN_EVERY_ATTEMPTS) {
            warn!(shard, failures, %reason, "redis pub/sub still unreachable");
        } else {
            debug!(shard, failures, %reason, "redis pub/sub connect failed");
        }
        sleep(delay).await;
        delay = (delay * 2).min(RECONNECT_MAX);
    }
}
