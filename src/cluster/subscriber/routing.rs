//! The shard task's routing table, channel → room sink: subscribe and unsubscribe requests
//! change it (online they also send SUBSCRIBE / UNSUBSCRIBE), and each message on the
//! connection is handed to its room by it without waiting, so one slow room cannot stall the
//! shard's others.

use redis::{Msg, aio::PubSubSink};
use tokio::{
    sync::mpsc,
    time::{Instant, timeout},
};
use tracing::{debug, warn};

use super::{
    SubCommand,
    connection::{Pending, ShardTask},
};
use crate::cluster::{
    Unavailable,
    payload::{self, Published},
};

/// Where one channel's messages go.
pub(super) struct Route {
    /// The subscription this route belongs to (see [`SubCommand::Subscribe`]).
    id: u64,
    sink: mpsc::Sender<Published>,
    /// Messages were dropped because the room's sink was full; the room is told to re-sync
    /// (as after a reconnect) by the next message for it that finds room in its sink.
    lagged: bool,
}

impl ShardTask {
    /// A request while the connection is down: the table changes now, the next connection
    /// subscribes what it holds, and a subscribe waits (as [`Pending`]) for that connection.
    pub(super) fn handle_offline(&mut self, request: SubCommand) {
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

    /// A request while connected: the table changes and the SUBSCRIBE / UNSUBSCRIBE goes out at
    /// once. An error answers that the connection is lost.
    pub(super) async fn handle_online(
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
    pub(super) async fn unsubscribe(
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

    pub(super) fn remove_route(&mut self, channel: &str, id: u64) -> bool {
        let ours = self.routes.get(channel).is_some_and(|route| route.id == id);
        if ours {
            self.routes.remove(channel);
        }
        ours
    }

    /// Hands one message to its room without waiting: one slow room must not stall every room
    /// of the shard. A full sink drops the message and marks the room lagged; the next message
    /// for the room that finds room in its sink is preceded by `Resubscribed`, on which the room
    /// fetches what it missed from its stream. A closed sink means the room is gone, so it is
    /// unsubscribed.
    pub(super) async fn route(&mut self, sink: &mut PubSubSink, message: Msg) {
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

    /// Sends `published` to every room except the subscriptions in `skip`. Unlike [`Self::route`]
    /// this waits for room in each sink: it runs once per reconnect, and a room that missed the
    /// `Resubscribed` would never re-sync.
    pub(super) async fn tell_all(
        &mut self,
        sink: &mut PubSubSink,
        published: Published,
        skip: &[u64],
    ) {
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
