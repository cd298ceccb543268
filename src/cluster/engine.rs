//! [`RedisEngine`]: a node's handle on the cluster's Redis shards. It owns one auto-reconnecting
//! command connection and one pub/sub task per shard, the health flag, and the per-room
//! operations (publish, presence, replay) that rooms call. Cheap to clone; every call is bounded
//! by the response timeout and answers [`Unavailable`] instead of hanging when Redis is down.

use std::{
    future::Future,
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use redis::{
    RedisError, RedisResult, Value,
    aio::{ConnectionManager, ConnectionManagerConfig},
};
use tokio::{
    runtime::Handle,
    sync::{mpsc, oneshot, watch},
};
use tracing::{debug, info, warn};

use super::{
    InvalidCluster, JoinError, Unavailable,
    keys::{
        PRESENCE_PATTERN, RoomKeys, parse_presence_member, room_channel, room_of_presence_key,
        shard_for, user_sessions_key,
    },
    payload::Published,
    scripts::SCRIPTS,
    subscriber::{ShardTask, SubCommand, Subscription},
};
use crate::names::SessionId;

/// How often each shard's connections are checked while nothing else talks to them, so health
/// turns false on a silent (half-open) connection and true again after an outage.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// How long a room's seq and log outlive its last CHAT unless [`RedisEngine::set_retention`]
/// says otherwise.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
/// Commands waiting for a shard's pub/sub task (subscribe/unsubscribe).
const SUBSCRIPTION_QUEUE: usize = 1024;

/// Time limits of the engine's Redis calls.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Longest wait for one call's answer (connecting included) before [`Unavailable`].
    pub response: Duration,
    /// Longest wait for one connection attempt.
    pub connect: Duration,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            response: Duration::from_millis(1500),
            connect: Duration::from_millis(1000),
        }
    }
}

/// One presence entry, as stored: which node, which of its sessions, which user.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Member {
    pub node: String,
    pub session: SessionId,
    pub user: String,
}

/// A room as [`RedisEngine::rooms`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomCount {
    pub name: String,
    /// Live presence entries over all nodes.
    pub members: u64,
    pub last_seq: u64,
}

/// A local member whose presence entry [`RedisEngine::refresh`] extends.
#[derive(Debug, Clone)]
pub struct LocalPresence {
    pub session: SessionId,
    pub user: String,
    /// The encoded JOIN presence message, published again if the entry had disappeared.
    pub join_body: Bytes,
}

/// The answer to a successful [`RedisEngine::join`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The room's last seq at the moment of the join.
    pub seq: u64,
    /// Every live entry of every node, the joiner included (a user with two sessions appears
    /// twice; dedupe for display if wanted).
    pub members: Vec<Member>,
}

#[derive(Clone)]
pub struct RedisEngine {
    inner: Arc<Inner>,
}

struct Inner {
    node_id: String,
    timeouts: Timeouts,
    shards: Vec<Shard>,
    health: Arc<Health>,
    /// The runtime the engine was built on. Every call runs there, so connections and their
    /// driver tasks live on one runtime even when rooms call from actix arbiters (each arbiter
    /// is its own current-thread runtime that may stop before the connection does).
    runtime: Handle,
    next_subscription: AtomicU64,
    /// How long a room's seq and log outlive its last CHAT (see [`RedisEngine::set_retention`]).
    retention_ms: AtomicU64,
}

struct Shard {
    url: String,
    client: redis::Client,
    /// Replaced by the health task when PING times out: the manager reconnects on its own after
    /// a dropped connection, but a silent (half-open) one only ever times out.
    commands: ArcSwap<ConnectionManager>,
    subscriptions: mpsc::Sender<SubCommand>,
}

/// The inputs of the health flag: per shard, is its pub/sub connection up, and did its last
/// command get through.
pub(crate) struct Health {
    pubsub_up: Vec<AtomicBool>,
    commands_ok: Vec<AtomicBool>,
    connected: watch::Sender<bool>,
}

impl Health {
    fn new(shards: usize) -> Health {
        Health {
            pubsub_up: (0..shards).map(|_| AtomicBool::new(false)).collect(),
            commands_ok: (0..shards).map(|_| AtomicBool::new(true)).collect(),
            connected: watch::Sender::new(false),
        }
    }

    pub(crate) fn set_pubsub_up(&self, shard: usize, up: bool) {
        self.pubsub_up[shard].store(up, Ordering::SeqCst);
        self.publish();
    }

    /// Answers whether the flag changed.
    fn set_commands_ok(&self, shard: usize, ok: bool) -> bool {
        // Skips the watch lock on the hot path when nothing changes.
        let changed = self.commands_ok[shard].swap(ok, Ordering::SeqCst) != ok;
        if changed {
            self.publish();
        }
        changed
    }

    fn publish(&self) {
        // Recomputed under the watch's lock, so the last writer always sees every earlier store.
        self.connected.send_if_modified(|connected| {
            let now = self
                .pubsub_up
                .iter()
                .chain(&self.commands_ok)
                .all(|flag| flag.load(Ordering::SeqCst));
            let changed = *connected != now;
            *connected = now;
            changed
        });
    }
}

impl RedisEngine {
    /// Builds the engine without waiting for Redis: connections are made in the background (and
    /// remade after any loss), so a node starts even while Redis is down. Must be called inside a
    /// tokio runtime, which then runs all of the engine's I/O. Dropping every clone (and every
    /// [`Subscription`]) stops its tasks.
    pub fn new(
        urls: &[String],
        node_id: impl Into<String>,
        timeouts: Timeouts,
    ) -> Result<RedisEngine, InvalidCluster> {
        let node_id = node_id.into();
        if urls.is_empty() {
            return Err(InvalidCluster::NoUrls);
        }
        if node_id.is_empty() || node_id.contains('|') || node_id.chars().any(char::is_control) {
            // `|` separates the fields of a presence entry.
            return Err(InvalidCluster::NodeId(node_id));
        }
        let runtime = Handle::try_current().map_err(|_| InvalidCluster::NoRuntime)?;
        let _guard = runtime.enter();
        let health = Arc::new(Health::new(urls.len()));
        let mut shards = Vec::with_capacity(urls.len());
        for (index, url) in urls.iter().enumerate() {
            let client =
                redis::Client::open(url.as_str()).map_err(|error| InvalidCluster::Url {
                    url: url.clone(),
                    reason: error.to_string(),
                })?;
            let commands =
                connection_manager(&client, timeouts).map_err(|error| InvalidCluster::Url {
                    url: url.clone(),
                    reason: error.to_string(),
                })?;
            let (subscriptions, subscription_rx) = mpsc::channel(SUBSCRIPTION_QUEUE);
            ShardTask::spawn(
                index,
                client.clone(),
                subscription_rx,
                health.clone(),
                timeouts,
                &runtime,
            );
            shards.push(Shard {
                url: url.clone(),
                client,
                commands: ArcSwap::from_pointee(commands),
                subscriptions,
            });
        }
        let inner = Arc::new(Inner {
            node_id,
            timeouts,
            shards,
            health,
            runtime: runtime.clone(),
            next_subscription: AtomicU64::new(1),
            retention_ms: AtomicU64::new(DEFAULT_RETENTION.as_millis() as u64),
        });
        runtime.spawn(watch_commands(Arc::downgrade(&inner)));
        Ok(RedisEngine { inner })
    }

    /// Runs `task` on the engine's runtime: it completes even if the caller's runtime (an actor's
    /// arbiter, stopped at shutdown) goes first.
    pub fn spawn<F>(&self, task: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.inner.runtime.spawn(task)
    }

    /// Sets how long a room's seq and history stay in Redis after its last CHAT or its last
    /// member (applies from each room's next CHAT or presence refresh).
    pub fn set_retention(&self, retention: Duration) {
        let ms = u64::try_from(retention.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        self.inner.retention_ms.store(ms, Ordering::Relaxed);
    }

    /// The retention in milliseconds, as a script argument.
    fn retention_arg(&self) -> Vec<u8> {
        let ms = self.inner.retention_ms.load(Ordering::Relaxed);
        ms.to_string().into_bytes()
    }

    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    /// Which shard (index into the URLs) holds `room`.
    pub fn shard_of(&self, room: &str) -> usize {
        shard_for(room, self.inner.shards.len())
    }

    /// True while every shard's pub/sub connection is up and its last command got through.
    pub fn connected(&self) -> watch::Receiver<bool> {
        self.inner.health.connected.subscribe()
    }

    /// Assigns the room's next seq, appends `body` to its log (trimmed to about `max_len`, never
    /// fewer) and publishes it, in one atomic script. After [`Unavailable::TimedOut`] the outcome
    /// is unknown: the CHAT may still have been published.
    pub async fn publish_chat(
        &self,
        room: &str,
        max_len: usize,
        id: &str,
        origin: SessionId,
        body: Bytes,
    ) -> Result<u64, Unavailable> {
        let keys = RoomKeys::new(room);
        let args = [
            keys.channel.into_bytes(),
            max_len.max(1).to_string().into_bytes(),
            self.inner.node_id.clone().into_bytes(),
            origin.0.to_string().into_bytes(),
            id.as_bytes().to_vec(),
            body.to_vec(),
            self.retention_arg(),
        ];
        self.call(room, "publish_chat", move |mut conn| async move {
            SCRIPTS
                .publish_chat
                .key(keys.seq)
                .key(keys.log)
                .arg(&args[..])
                .invoke_async::<u64>(&mut conn)
                .await
        })
        .await
    }

    /// Adds this node's `session` to the room's presence (expiring after `ttl` unless refreshed)
    /// unless the room already has `max_members` live entries over all nodes, and publishes the
    /// join. Expired entries are swept (and announced) first, so they never count.
    pub async fn join(
        &self,
        room: &str,
        session: SessionId,
        user: &str,
        ttl: Duration,
        max_members: usize,
        join_body: Bytes,
    ) -> Result<Joined, JoinError> {
        let keys = RoomKeys::new(room);
        let args = [
            keys.channel.into_bytes(),
            self.inner.node_id.clone().into_bytes(),
            session.0.to_string().into_bytes(),
            user.as_bytes().to_vec(),
            millis(ttl).into_bytes(),
            max_members.to_string().into_bytes(),
            join_body.to_vec(),
        ];
        let reply = self
            .call(room, "join", move |mut conn| async move {
                SCRIPTS
                    .join
                    .key(keys.presence)
                    .key(keys.seq)
                    .arg(&args[..])
                    .invoke_async::<Value>(&mut conn)
                    .await
            })
            .await?;
        let malformed = |what: &str| {
            JoinError::Unavailable(self.unexpected(room, "join", format!("reply {what}")))
        };
        let Value::Array(items) = reply else {
            return Err(malformed("is not an array"));
        };
        match items.as_slice() {
            [Value::Int(0)] => Err(JoinError::Full { max: max_members }),
            [Value::Int(1), seq, Value::Array(members)] => Ok(Joined {
                seq: integer(seq).ok_or_else(|| malformed("seq is not a number"))?,
                members: parse_members(members),
            }),
            _ => Err(malformed("has an unexpected shape")),
        }
    }

    /// Gives this node's `session` a place among `user`'s sessions over all nodes (expiring
    /// after `ttl` unless refreshed), unless the user already has `max` live ones. Answers
    /// whether it got one.
    pub async fn claim_user(
        &self,
        user: &str,
        session: SessionId,
        ttl: Duration,
        max: usize,
    ) -> Result<bool, Unavailable> {
        let key = user_sessions_key(user);
        let args = [
            format!("{}|{}", self.inner.node_id, session.0),
            millis(ttl),
            max.to_string(),
        ];
        self.call(user, "claim_user", move |mut conn| async move {
            SCRIPTS
                .claim_user
                .key(key)
                .arg(&args[..])
                .invoke_async::<bool>(&mut conn)
                .await
        })
        .await
    }

    /// Gives back the place [`Self::claim_user`] took.
    pub async fn release_user(&self, user: &str, session: SessionId) -> Result<(), Unavailable> {
        let key = user_sessions_key(user);
        let entry = format!("{}|{}", self.inner.node_id, session.0);
        self.call(user, "release_user", move |mut conn| async move {
            redis::cmd("ZREM")
                .arg(key)
                .arg(entry)
                .query_async::<()>(&mut conn)
                .await
        })
        .await
    }

    /// Extends the places of this node's `sessions` to now + `ttl`, writing back any Redis lost.
    /// One pipeline per shard and batch, timed by Redis's clock; a failing shard does not stop
    /// the others (the first error is returned at the end).
    pub async fn refresh_users(
        &self,
        sessions: &[(String, SessionId)],
        ttl: Duration,
    ) -> Result<(), Unavailable> {
        let shards = self.inner.shards.len();
        let mut first_error = None;
        for shard in 0..shards {
            let entries: Vec<(String, String)> = sessions
                .iter()
                .filter(|(user, _)| shard_for(user, shards) == shard)
                .map(|(user, session)| {
                    let entry = format!("{}|{}", self.inner.node_id, session.0);
                    (user_sessions_key(user), entry)
                })
                .collect();
            for batch in entries.chunks(SCAN_BATCH) {
                let batch = batch.to_vec();
                let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
                let outcome = self
                    .call_shard(shard, "refresh_users", move |mut conn| async move {
                        let (seconds, micros): (u64, u64) =
                            redis::cmd("TIME").query_async(&mut conn).await?;
                        let expiry = seconds * 1000 + micros / 1000 + ttl_ms;
                        let mut pipe = redis::pipe();
                        for (key, entry) in &batch {
                            pipe.cmd("ZADD").arg(key).arg(expiry).arg(entry).ignore();
                            pipe.cmd("PEXPIRE").arg(key).arg(3 * ttl_ms).ignore();
                        }
                        pipe.query_async::<()>(&mut conn).await
                    })
                    .await;
                if let Err(error) = outcome {
                    first_error.get_or_insert(error);
                    break; // this shard's next batches would fail the same way
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Removes the session's presence entry; if it was there, publishes the leave. Answers
    /// whether it was there.
    pub async fn leave(
        &self,
        room: &str,
        session: SessionId,
        user: &str,
        leave_body: Bytes,
    ) -> Result<bool, Unavailable> {
        let keys = RoomKeys::new(room);
        let args = [
            keys.channel.into_bytes(),
            self.inner.node_id.clone().into_bytes(),
            session.0.to_string().into_bytes(),
            user.as_bytes().to_vec(),
            leave_body.to_vec(),
        ];
        self.call(room, "leave", move |mut conn| async move {
            SCRIPTS
                .leave
                .key(keys.presence)
                .arg(&args[..])
                .invoke_async::<bool>(&mut conn)
                .await
        })
        .await
    }

    /// Extends the presence entries of this node's `local` members to now + `ttl`. An entry that
    /// had disappeared (swept while this node was cut off, or Redis lost its data) is added back
    /// and its join published again. The room's seq and history are kept for the retention from
    /// now, so a quiet room that still has members never loses its count. Answers how many were
    /// added back.
    pub async fn refresh(
        &self,
        room: &str,
        local: &[LocalPresence],
        ttl: Duration,
    ) -> Result<usize, Unavailable> {
        if local.is_empty() {
            return Ok(0);
        }
        let keys = RoomKeys::new(room);
        let mut args = Vec::with_capacity(4 + 3 * local.len());
        args.push(keys.channel.into_bytes());
        args.push(self.inner.node_id.clone().into_bytes());
        args.push(millis(ttl).into_bytes());
        args.push(self.retention_arg());
        for entry in local {
            args.push(entry.session.0.to_string().into_bytes());
            args.push(entry.user.clone().into_bytes());
            args.push(entry.join_body.to_vec());
        }
        self.call(room, "refresh", move |mut conn| async move {
            SCRIPTS
                .refresh
                .key(keys.presence)
                .key(keys.seq)
                .key(keys.log)
                .arg(&args[..])
                .invoke_async::<usize>(&mut conn)
                .await
        })
        .await
    }

    /// Removes the room's expired presence entries and publishes a leave (without a body) for
    /// each, atomically: however many nodes sweep, each expiry is announced once. Answers how
    /// many expired.
    pub async fn sweep(&self, room: &str) -> Result<usize, Unavailable> {
        let keys = RoomKeys::new(room);
        self.call(room, "sweep", move |mut conn| async move {
            SCRIPTS
                .sweep
                .key(keys.presence)
                .arg(keys.channel)
                .invoke_async::<usize>(&mut conn)
                .await
        })
        .await
    }

    /// Retained CHAT bodies with their seqs, ascending, none above `upto`: with `since_seq > 0`
    /// those after `since_seq`; with `since_seq == 0` the last `last_n`.
    pub async fn replay(
        &self,
        room: &str,
        since_seq: u64,
        last_n: usize,
        upto: u64,
    ) -> Result<Vec<(u64, Bytes)>, Unavailable> {
        if upto == 0 || since_seq >= upto || (since_seq == 0 && last_n == 0) {
            return Ok(Vec::new());
        }
        let log = RoomKeys::new(room).log;
        let reply = self
            .call(room, "replay", move |mut conn| async move {
                // Stream ids are `<seq>-1`; a bare `N` means `N-0` as a start and `N-<max>` as an
                // end, so these bounds select exactly on seq.
                let cmd = if since_seq > 0 {
                    let mut cmd = redis::cmd("XRANGE");
                    cmd.arg(&log).arg(since_seq + 1).arg(upto);
                    cmd
                } else {
                    let mut cmd = redis::cmd("XREVRANGE");
                    cmd.arg(&log).arg(upto).arg("-").arg("COUNT").arg(last_n);
                    cmd
                };
                cmd.query_async::<Value>(&mut conn).await
            })
            .await?;
        let mut entries = parse_stream_entries(reply)
            .ok_or_else(|| self.unexpected(room, "replay", "unexpected stream reply".into()))?;
        if since_seq == 0 {
            entries.reverse();
        }
        Ok(entries)
    }

    /// The room's live presence entries over all nodes.
    pub async fn members(&self, room: &str) -> Result<Vec<Member>, Unavailable> {
        let presence = RoomKeys::new(room).presence;
        let reply = self
            .call(room, "members", move |mut conn| async move {
                SCRIPTS
                    .members
                    .key(presence)
                    .invoke_async::<Vec<Value>>(&mut conn)
                    .await
            })
            .await?;
        Ok(parse_members(&reply))
    }

    /// PUBLISHes `payload` on `channel` of `shard`; answers how many subscriptions (one per
    /// node listening there) received it.
    pub async fn publish(
        &self,
        shard: usize,
        channel: String,
        payload: Vec<u8>,
    ) -> Result<u64, Unavailable> {
        self.call_shard(shard, "publish", move |mut conn| async move {
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(payload)
                .query_async::<u64>(&mut conn)
                .await
        })
        .await
    }

    /// PUBLISHes `payload` on `channel` of `shard` and answers how many connections subscribed
    /// to that very channel (one per listening node; pattern subscribers are not counted), read
    /// in the same atomic step.
    pub async fn broadcast(
        &self,
        shard: usize,
        channel: String,
        payload: Vec<u8>,
    ) -> Result<u64, Unavailable> {
        self.call_shard(shard, "broadcast", move |mut conn| async move {
            SCRIPTS
                .broadcast
                .arg(channel)
                .arg(payload)
                .invoke_async::<u64>(&mut conn)
                .await
        })
        .await
    }

    /// Every room with at least one live presence entry on any shard whose name starts with
    /// `prefix`, with its live entry count and last seq, sorted by name. Keys are found with
    /// SCAN, so this walks the shards' whole key space: it is for operators, not for rooms.
    /// Each shard gets [`LIST_BUDGET`]; the outcome does not touch the health flag, since a
    /// slow scan of a big Redis says nothing about whether rooms can be served.
    pub async fn rooms(&self, prefix: &str) -> Result<Vec<RoomCount>, Unavailable> {
        let mut rooms = Vec::new();
        for shard in 0..self.inner.shards.len() {
            let mut conn = ConnectionManager::clone(&self.inner.shards[shard].commands.load());
            let prefix = prefix.to_owned();
            let scan = self.inner.runtime.spawn(async move {
                tokio::time::timeout(LIST_BUDGET, list_shard_rooms(&mut conn, &prefix)).await
            });
            let response = self.inner.timeouts.response;
            match scan.await {
                Ok(Ok(Ok(found))) => rooms.extend(found),
                Ok(Ok(Err(error))) => return Err(classify(shard, "list_rooms", response, &error)),
                Ok(Err(_elapsed)) => {
                    return Err(Unavailable::TimedOut {
                        shard,
                        op: "list_rooms",
                        after: LIST_BUDGET,
                    });
                }
                Err(join_error) => {
                    return Err(Unavailable::Unreachable {
                        shard,
                        op: "list_rooms",
                        reason: format!("task failed: {join_error}"),
                    });
                }
            }
        }
        // A room can show up on two shards while keys of an earlier `redis_urls` remain: the
        // entry with more live members stands for it.
        rooms.sort_unstable_by(|a, b| a.name.cmp(&b.name).then(b.members.cmp(&a.members)));
        rooms.dedup_by(|later, kept| later.name == kept.name);
        Ok(rooms)
    }

    /// The room's last seq (0 before its first CHAT).
    pub async fn last_seq(&self, room: &str) -> Result<u64, Unavailable> {
        let seq = RoomKeys::new(room).seq;
        let reply = self
            .call(room, "last_seq", move |mut conn| async move {
                redis::cmd("GET")
                    .arg(seq)
                    .query_async::<Option<u64>>(&mut conn)
                    .await
            })
            .await?;
        Ok(reply.unwrap_or(0))
    }

    /// True when every shard answers PING within the response timeout (shards are asked in
    /// parallel, so this takes at most about one timeout).
    pub async fn ping(&self) -> bool {
        let mut all = true;
        for ping in self.ping_all() {
            all &= matches!(ping.await, Ok(Ok(_)));
        }
        all
    }

    fn ping_all(&self) -> Vec<tokio::task::JoinHandle<Result<String, Unavailable>>> {
        (0..self.inner.shards.len())
            .map(|shard| {
                let engine = self.clone();
                self.inner
                    .runtime
                    .spawn(async move { engine.ping_shard(shard).await })
            })
            .collect()
    }

    async fn ping_shard(&self, shard: usize) -> Result<String, Unavailable> {
        self.call_shard(shard, "ping", move |mut conn| async move {
            redis::cmd("PING").query_async::<String>(&mut conn).await
        })
        .await
    }

    /// Swaps in a fresh command connection for the shard (see [`Shard::commands`]).
    fn renew_commands(&self, shard: usize) {
        let shard = &self.inner.shards[shard];
        let _runtime = self.inner.runtime.enter();
        match connection_manager(&shard.client, self.inner.timeouts) {
            Ok(fresh) => {
                shard.commands.store(Arc::new(fresh));
                debug!(url = %shard.url, "redis command connection silent; replaced");
            }
            Err(error) => warn!(url = %shard.url, %error, "cannot renew redis connection"),
        }
    }

    /// Subscribes `sink` to the room's channel and returns once Redis confirmed the
    /// subscription, so everything published from then on reaches `sink`: read history after
    /// this returns and nothing falls between history and live traffic. A later `subscribe` of
    /// the same room replaces the sink. Dropping the [`Subscription`] (or `sink`'s receiver)
    /// unsubscribes.
    ///
    /// Delivery never waits for room in `sink`, so one slow room cannot hold up the shard's
    /// others: a full sink drops the message and the room is sent `Published::Resubscribed` once
    /// it has room again, to fetch what it missed from the stream. Give each sink enough
    /// capacity for a burst so that re-sync stays rare.
    pub async fn subscribe(
        &self,
        room: &str,
        sink: mpsc::Sender<Published>,
    ) -> Result<Subscription, Unavailable> {
        self.subscribe_channel(self.shard_of(room), room_channel(room), sink)
            .await
    }

    /// [`Self::subscribe`] for any channel of `shard` (the operator channels).
    pub async fn subscribe_channel(
        &self,
        shard: usize,
        channel: String,
        sink: mpsc::Sender<Published>,
    ) -> Result<Subscription, Unavailable> {
        let id = self.inner.next_subscription.fetch_add(1, Ordering::Relaxed);
        let commands = self.inner.shards[shard].subscriptions.clone();
        let (done, confirmed) = oneshot::channel();
        let request = SubCommand::Subscribe {
            channel: channel.clone(),
            id,
            sink,
            done,
        };
        // The shard task answers within its own response timeout once it reads the request;
        // the margin covers a queue of requests ahead of this one.
        let limit = self.inner.timeouts.response * 2;
        let outcome = tokio::time::timeout(limit, async {
            commands.send(request).await.ok()?;
            confirmed.await.ok()
        })
        .await;
        match outcome {
            Ok(Some(Ok(()))) => Ok(Subscription::new(
                channel,
                id,
                commands,
                self.inner.runtime.clone(),
            )),
            Ok(Some(Err(unavailable))) => Err(unavailable),
            Ok(None) => Err(Unavailable::Unreachable {
                shard,
                op: "subscribe",
                reason: "the shard's pub/sub task has stopped".into(),
            }),
            Err(_) => Err(Unavailable::TimedOut {
                shard,
                op: "subscribe",
                after: limit,
            }),
        }
    }

    /// Runs `op` on the room's shard. See [`Self::call_shard`].
    async fn call<T, F, Fut>(&self, room: &str, op: &'static str, f: F) -> Result<T, Unavailable>
    where
        T: Send + 'static,
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>> + Send + 'static,
    {
        self.call_shard(self.shard_of(room), op, f).await
    }

    /// Runs `op` on the shard's command connection, on the engine's runtime, bounded by the
    /// response timeout, and records the outcome in the health flag.
    async fn call_shard<T, F, Fut>(
        &self,
        shard: usize,
        op: &'static str,
        f: F,
    ) -> Result<T, Unavailable>
    where
        T: Send + 'static,
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>> + Send + 'static,
    {
        let limit = self.inner.timeouts.response;
        let future = f(ConnectionManager::clone(
            &self.inner.shards[shard].commands.load(),
        ));
        let task = self
            .inner
            .runtime
            .spawn(async move { tokio::time::timeout(limit, future).await });
        let result = match task.await {
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(error))) => Err(classify(shard, op, limit, &error)),
            Ok(Err(_elapsed)) => Err(Unavailable::TimedOut {
                shard,
                op,
                after: limit,
            }),
            Err(join_error) => Err(Unavailable::Unreachable {
                shard,
                op,
                reason: format!("task failed: {join_error}"),
            }),
        };
        let url = &self.inner.shards[shard].url;
        match &result {
            Ok(_) => {
                if self.inner.health.set_commands_ok(shard, true) {
                    info!(shard, %url, "redis commands get through again");
                }
            }
            Err(Unavailable::Rejected { .. }) => {}
            Err(error) => {
                if self.inner.health.set_commands_ok(shard, false) {
                    warn!(shard, %url, %error, "redis commands failing");
                } else {
                    debug!(shard, %url, %error, "redis call failed");
                }
            }
        }
        result
    }

    fn unexpected(&self, room: &str, op: &'static str, reason: String) -> Unavailable {
        let error = Unavailable::Rejected {
            shard: self.shard_of(room),
            op,
            reason,
        };
        warn!(room, %error, "unexpected redis reply");
        error
    }
}

/// Pings every shard each [`HEALTH_INTERVAL`] while the engine exists, so health follows Redis
/// even when no room is calling, and replaces a command connection whose PING timed out.
async fn watch_commands(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(HEALTH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let engine = RedisEngine { inner };
        for (shard, ping) in engine.ping_all().into_iter().enumerate() {
            if let Ok(Err(Unavailable::TimedOut { .. })) = ping.await {
                engine.renew_commands(shard);
            }
        }
    }
}

fn connection_manager(
    client: &redis::Client,
    timeouts: Timeouts,
) -> RedisResult<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeouts.connect))
        .set_response_timeout(Some(timeouts.response))
        // Few retries per reconnect: callers are bounded by `timeouts.response` anyway, and the
        // next call starts a fresh attempt.
        .set_number_of_retries(2)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(2));
    ConnectionManager::new_lazy_with_config(client.clone(), config)
}

/// Connection trouble (health turns false) versus a command Redis refused (it stays as is).
fn classify(shard: usize, op: &'static str, limit: Duration, error: &RedisError) -> Unavailable {
    let reason = error.to_string();
    if error.is_timeout() {
        Unavailable::TimedOut {
            shard,
            op,
            after: limit,
        }
    } else if error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_unrecoverable_error()
    {
        Unavailable::Unreachable { shard, op, reason }
    } else {
        Unavailable::Rejected { shard, op, reason }
    }
}

/// Keys per SCAN step and per pipeline of counts.
const SCAN_BATCH: usize = 1000;
/// Time one shard's listing may take in all (each command is also bounded by the response
/// timeout).
pub const LIST_BUDGET: Duration = Duration::from_secs(10);

/// One shard's part of [`RedisEngine::rooms`]: SCAN for presence keys, then one pipeline per
/// batch reading each room's live entries (score = expiry, so those above Redis's clock, read
/// per batch) and seq.
async fn list_shard_rooms(
    conn: &mut ConnectionManager,
    prefix: &str,
) -> RedisResult<Vec<RoomCount>> {
    let mut names = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(PRESENCE_PATTERN)
            .arg("COUNT")
            .arg(SCAN_BATCH)
            .query_async(conn)
            .await?;
        names.extend(
            keys.iter()
                .filter_map(|key| room_of_presence_key(key))
                .filter(|room| room.starts_with(prefix))
                .map(str::to_owned),
        );
        if next == 0 {
            break;
        }
        cursor = next;
    }
    // SCAN may return a key more than once.
    names.sort_unstable();
    names.dedup();
    let mut rooms = Vec::with_capacity(names.len());
    for batch in names.chunks(SCAN_BATCH) {
        let (seconds, micros): (u64, u64) = redis::cmd("TIME").query_async(conn).await?;
        let now_ms = seconds * 1000 + micros / 1000;
        let mut pipe = redis::pipe();
        for name in batch {
            let keys = RoomKeys::new(name);
            pipe.cmd("ZCOUNT")
                .arg(keys.presence)
                .arg(format!("({now_ms}"))
                .arg("+inf");
            pipe.cmd("GET").arg(keys.seq);
        }
        let replies: Vec<(u64, Option<u64>)> = pipe.query_async(conn).await?;
        rooms.extend(
            batch
                .iter()
                .zip(replies)
                .filter(|(_, (members, _))| *members > 0)
                .map(|(name, (members, seq))| RoomCount {
                    name: name.clone(),
                    members,
                    last_seq: seq.unwrap_or(0),
                }),
        );
    }
    Ok(rooms)
}

fn millis(duration: Duration) -> String {
    duration.as_millis().max(1).to_string()
}

fn integer(value: &Value) -> Option<u64> {
    match value {
        Value::Int(n) => u64::try_from(*n).ok(),
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        Value::SimpleString(text) => text.parse().ok(),
        _ => None,
    }
}

/// Presence members from a script reply; entries not in our format are skipped.
fn parse_members(values: &[Value]) -> Vec<Member> {
    values
        .iter()
        .filter_map(|value| match value {
            Value::BulkString(bytes) => std::str::from_utf8(bytes).ok(),
            _ => None,
        })
        .filter_map(parse_presence_member)
        .map(|(node, session, user)| Member {
            node: node.to_owned(),
            session,
            user: user.to_owned(),
        })
        .collect()
}

/// XRANGE/XREVRANGE reply → (seq, body) in reply order; `None` if it is not a stream reply.
fn parse_stream_entries(reply: Value) -> Option<Vec<(u64, Bytes)>> {
    let Value::Array(entries) = reply else {
        return None;
    };
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let Value::Array(parts) = entry else {
            return None;
        };
        let [Value::BulkString(id), Value::Array(fields)] = parts.as_slice() else {
            return None;
        };
        let seq = std::str::from_utf8(id)
            .ok()?
            .split_once('-')?
            .0
            .parse()
            .ok()?;
        let body = fields.chunks(2).find_map(|pair| match pair {
            [Value::BulkString(name), Value::BulkString(body)] if name == b"b" => {
                Some(Bytes::copy_from_slice(body))
            }
            _ => None,
        })?;
        out.push((seq, body));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_replies_parse_and_garbage_does_not() {
        let entry = |id: &str, body: &[u8]| {
            Value::Array(vec![
                Value::BulkString(id.as_bytes().to_vec()),
                Value::Array(vec![
                    Value::BulkString(b"b".to_vec()),
                    Value::BulkString(body.to_vec()),
                ]),
            ])
        };
        let reply = Value::Array(vec![entry("7-1", b"x"), entry("8-1", b"")]);
        assert_eq!(
            parse_stream_entries(reply),
            Some(vec![(7, Bytes::from_static(b"x")), (8, Bytes::new())])
        );
        assert_eq!(parse_stream_entries(Value::Nil), None);
        assert_eq!(
            parse_stream_entries(Value::Array(vec![entry("x-1", b"")])),
            None
        );
    }

    #[test]
    fn health_needs_every_flag() {
        let health = Health::new(2);
        let connected = health.connected.subscribe();
        assert!(!*connected.borrow());
        health.set_pubsub_up(0, true);
        assert!(!*connected.borrow());
        health.set_pubsub_up(1, true);
        assert!(*connected.borrow());
        health.set_commands_ok(1, false);
        assert!(!*connected.borrow());
        health.set_commands_ok(1, true);
        assert!(*connected.borrow());
    }
}
