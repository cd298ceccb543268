//! The pub/sub side: one task per shard owns that shard's pub/sub connection and the routing
//! table channel → room sink. Rooms talk to it through [`super::RedisEngine::subscribe`] and
//! [`Subscription`]; it reconnects with capped backoff, resubscribes every room and tells each
//! one [`Published::Resubscribed`], and keeps the pub/sub half of the health flag.
//!
//! - this file: the requests rooms send the task ([`SubCommand`]) and the handle they hold.
//! - `connection`: the task's life: connect with backoff, serve, notice a loss, reconnect.
//! - `routing`: the routing table: requests change it, messages are handed out by it.

mod connection;
mod routing;

use tokio::{
    runtime::Handle,
    sync::{
        mpsc::{self, error::TrySendError},
        oneshot,
    },
};

pub(crate) use self::connection::ShardTask;
pub use self::connection::{RECONNECT_MAX, RECONNECT_MIN};
use super::{Unavailable, payload::Published};

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
