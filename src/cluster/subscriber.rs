//! The pub/sub side: one task per shard owns that shard's pub/sub connection and the routing
//! table channel → room sink. Rooms talk to it through [`super::RedisEngine::subscribe`] and
//! [`Subscription`]; it reconnects with capped backoff, resubscribes every room and tells each
//! one [`Published::Resubscribed`], and keeps the pub/sub half of the health flag.

use std::{collections::HashMap, sync::Arc, time::Duration};

use redis::{
    Msg,
    aio::{PubSub, PubSubSink},
};
use tokio::{
    runtime::Handle,
    sync::{
        mpsc::{self, error::TrySendError},
        oneshot,
    },
    time::{Instant, MissedTickBehavior, interval, sleep, sleep_until, timeout},
};
use tokio_stream::StreamExt;
use tracing::{debug, info, warn};

use super::{
    Unavailable,
    engine::{HEALTH_INTERVAL, Health, Timeouts},
    payload::{self, Published},
};

/// First pause after a failed connection attempt; doubled per failure up to [`RECONNECT_MAX`].
pub const RECONNECT_MIN: Duration = Duration::from_millis(50);
/// Longest pause between two connection attempts.
pub const RECONNECT_MAX: Duration = Duration::from_secs(2);
/// Channels per SUBSCRIBE when resubscribing after a reconnect (keeps each command small).
const RESUBSCRIBE_BATCH: usize = 256;
/// Failed connection attempts between two warnings while a shard stays unreachable.
const WARN_EVERY_ATTEMPTS: u32 = 20;

pub(crate) enum SubCommand {
    Subscribe {
        channel: String,
        /// Tells this subscription from a later one of the same room, so a late unsubscribe of
        /// the old one never removes the new one.
        id: u64,
        sink: mpsc::Sender<Published>,
        done: oneshot::Sender<Result<(), Unavailable>>,
    },
    Unsubscribe {
        channel: String,
        id: u64,
    },
}

/// A room's live subscription; dropping it unsubscribes the room (if no later subscription of
/// the same room replaced it).
#[derive(Debug)]
pub struct Subscription {
    channel: String,
    id: u64,
    commands: mpsc::Sender<SubCommand>,
    runtime: Handle,
}

impl Subscription {
    pub(crate) fn new(
        channel: String,
        id: u64,
        commands: mpsc::Sender<SubCommand>,
        runtime: Handle,
    ) -> Subscription {
        Subscription {
            channel,
            id,
            commands,
            runtime,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let request = SubCommand::Unsubscribe {
            channel: std::mem::take(&mut self.channel),
            id: self.id,
        };
        // Drop cannot wait: a full queue hands the request to a task on the engine's runtime.
        // Arriving late is harmless thanks to the id.
        if let Err(TrySendError::Full(request)) = self.commands.try_send(request) {
            let commands = self.commands.clone();
            self.runtime.spawn(async move {
                let _ = commands.send(request).await;
            });
        }
    }
}

struct Route {
    id: u64,
    sink: mpsc::Sender<Published>,
    /// Messages were dropped because the room's sink was full; the room is told to re-sync
    /// (as after a reconnect) as soon as its sink has room again.
    lagged: bool,
}

/// A subscribe that arrived while the connection was down: its route is already in the table
/// (so the next connection subscribes it), and it is answered then, or refused at `deadline`.
struct Pending {
    channel: String,
    id: u64,
    done: oneshot::Sender<Result<(), Unavailable>>,
    deadline: Instant,
}

/// Why a connected period ended.
enum Ended {
    /// Every engine handle is gone: stop.
    EngineGone,
    /// The connection failed: reconnect. `was_up`: it had resubscribed every room first.
    Lost { reason: String, was_up: bool },
}

pub(crate) struct ShardTask {
    shard: usize,
    client: redis::Client,
    requests: mpsc::Receiver<SubCommand>,
    /// Channel → the room's sink. Holds exactly the rooms subscribed on the current connection
    /// (or to be subscribed again on the next one).
    routes: HashMap<String, Route>,
    pending: Vec<Pending>,
    health: Arc<Health>,
    timeouts: Timeouts,
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

    fn handle_offline(&mut self, request: SubCommand) {
        match request {
            SubCommand::Subscribe {
                channel,
                id,
                sink,
                done,
            } => {
                self.routes.insert(
                    channel.clone(),
                    Route {
                        id,
                        sink,
                        lagged: false,
                    },
                );
                self.pending.push(Pending {
                    channel,
                    id,
                    done,
                    deadline: Instant::now() + self.timeouts.response,
                });
            }
            SubCommand::Unsubscribe { channel, id } => {
                self.remove_route(&channel, id);
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

    async fn handle_online(
        &mut self,
        sink: &mut PubSubSink,
        request: SubCommand,
    ) -> Result<(), String> {
        match request {
            SubCommand::Subscribe {
                channel,
                id,
                sink: room_sink,
                done,
            } => {
                // Routed before SUBSCRIBE is sent: Redis confirms before it delivers anything on
                // the channel, so the first message already finds its room.
                self.routes.insert(
                    channel.clone(),
                    Route {
                        id,
                        sink: room_sink,
                        lagged: false,
                    },
                );
                let outcome = match timeout(self.timeouts.response, sink.subscribe(&channel)).await
                {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(error)) => Err(error.to_string()),
                    Err(_) => Err("subscribe timed out".to_string()),
                };
                match outcome {
                    Ok(()) => {
                        if done.send(Ok(())).is_err() {
                            // The caller gave up waiting: it holds no Subscription to undo this.
                            self.unsubscribe(sink, &channel, id).await?;
                        }
                        Ok(())
                    }
                    Err(reason) => {
                        self.routes.remove(&channel);
                        let _ = done.send(Err(Unavailable::Unreachable {
                            shard: self.shard,
                            op: "subscribe",
                            reason: reason.clone(),
                        }));
                        Err(reason)
                    }
                }
            }
            SubCommand::Unsubscribe { channel, id } => self.unsubscribe(sink, &channel, id).await,
        }
    }

    /// Removes the route (if still `id`'s) and unsubscribes its channel.
    async fn unsubscribe(
        &mut self,
        sink: &mut PubSubSink,
        channel: &str,
        id: u64,
    ) -> Result<(), String> {
        if !self.remove_route(channel, id) {
            return Ok(());
        }
        match timeout(self.timeouts.response, sink.unsubscribe(channel)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(format!("unsubscribe failed: {error}")),
            Err(_) => Err("unsubscribe timed out".into()),
        }
    }

    fn remove_route(&mut self, channel: &str, id: u64) -> bool {
        let ours = self.routes.get(channel).is_some_and(|route| route.id == id);
        if ours {
            self.routes.remove(channel);
        }
        ours
    }

    /// Hands one message to its room without waiting: one slow room must not stall every room
    /// of the shard. A full sink drops the message and marks the room lagged; once the sink has
    /// room again the room gets `Resubscribed` and fetches what it missed from the stream. A
    /// closed sink means the room is gone, so it is unsubscribed.
    async fn route(&mut self, sink: &mut PubSubSink, message: Msg) {
        let channel = message.get_channel_name();
        let Some(route) = self.routes.get_mut(channel) else {
            return; // unsubscribed while the message was on its way
        };
        let published = match payload::decode(message.get_payload_bytes()) {
            Ok(published) => published,
            Err(error) => {
                warn!(shard = self.shard, channel, %error, "skipping an unparseable payload");
                return;
            }
        };
        let id = route.id;
        if route.lagged {
            match route.sink.try_send(Published::Resubscribed) {
                Ok(()) => route.lagged = false,
                Err(mpsc::error::TrySendError::Full(_)) => return,
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    let _ = self.unsubscribe(sink, channel, id).await;
                    return;
                }
            }
        }
        match route.sink.try_send(published) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                warn!(
                    shard = self.shard,
                    channel, "room lagging behind its channel; it will re-sync"
                );
                route.lagged = true;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                debug!(
                    shard = self.shard,
                    channel, "room sink closed; unsubscribing"
                );
                // A failure here means the connection is going; the stream notices that next.
                let _ = self.unsubscribe(sink, channel, id).await;
            }
        }
    }

    /// Sends `published` to every room except the subscriptions in `skip`.
    async fn tell_all(&mut self, sink: &mut PubSubSink, published: Published, skip: &[u64]) {
        let routes: Vec<(String, u64, mpsc::Sender<Published>)> = self
            .routes
            .iter()
            .filter(|(_, route)| !skip.contains(&route.id))
            .map(|(channel, route)| (channel.clone(), route.id, route.sink.clone()))
            .collect();
        for (channel, id, room_sink) in routes {
            if room_sink.send(published.clone()).await.is_err() {
                let _ = self.unsubscribe(sink, &channel, id).await;
            }
        }
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
