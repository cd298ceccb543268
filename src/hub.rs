//! The state every actor and the gRPC edge share: configuration, the arbiters to start actors
//! on, the room registry and the table of open sessions (for admission and shutdown).

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
};

use actix::Addr;
use arc_swap::{ArcSwap, Guard};
use dashmap::DashMap;
use tokio::sync::watch;
use tonic::Status;

use crate::{
    abuse::{AbuseLimits, IpSlot},
    actors::{End, session::Session},
    auth::Verifier,
    cluster::RedisEngine,
    config::Config,
    error::Fatal,
    history::HistoryBudget,
    metrics,
    names::{SessionId, UserName},
    outbound::{SessionTx, StreamEnder},
    registry::RoomRegistry,
    runtime::Arbiters,
};

pub struct Hub {
    /// Swapped whole on reload; readers take a cheap snapshot with [`Hub::config`].
    config: ArcSwap<Config>,
    /// The gRPC decoder limit, fixed when the transport starts.
    frame_limit: usize,
    pub arbiters: Arbiters,
    pub rooms: RoomRegistry,
    /// The bytes every memory-engine room's history draws from (`server.history_bytes_total`).
    pub history_budget: Arc<HistoryBudget>,
    pub sessions: Arc<SessionTable>,
    pub census: Arc<Census>,
    pub abuse: Arc<AbuseLimits>,
    /// `Some` in jwt mode: every stream must carry a valid bearer token.
    pub verifier: Option<Verifier>,
    /// `Some` in cluster mode: rooms are shared with other nodes through Redis.
    pub cluster: Option<RedisEngine>,
}

impl Hub {
    pub fn new(config: Config, arbiters: Arbiters, cluster: Option<RedisEngine>) -> Hub {
        let max_sessions = config.server.max_sessions;
        // unwrap: the configuration was validated, which builds the same verifier.
        let verifier = Verifier::from_config(&config.auth).unwrap();
        // Operators kick by session id across the cluster, so ids must not repeat between
        // nodes: each node counts from its own random point of a 2^52 space (exact in JSON).
        let first_id = if cluster.is_some() {
            (uuid::Uuid::now_v7().as_u128() as u64 & ((1 << 52) - 1)) | (1 << 32)
        } else {
            1
        };
        Hub {
            verifier,
            cluster,
            arbiters,
            rooms: RoomRegistry::new(config.server.max_rooms),
            history_budget: HistoryBudget::new(config.server.history_bytes_total),
            frame_limit: config.max_frame_bytes(),
            config: ArcSwap::from_pointee(config),
            sessions: Arc::new(SessionTable::new(max_sessions, first_id)),
            census: Arc::new(Census::default()),
            abuse: Arc::new(AbuseLimits::default()),
        }
    }

    pub fn config(&self) -> Guard<Arc<Config>> {
        self.config.load()
    }

    pub fn frame_limit(&self) -> usize {
        self.frame_limit
    }

    /// Applies a re-read configuration to the running server: every key `config::KEYS` marks
    /// live takes effect at once (every room, open ones included, takes the new limits). Returns
    /// the changed keys that need a restart; those keep their running value.
    pub fn reload(&self, new: Config) -> Vec<String> {
        let (effective, restart) = self.config().reloaded(new);
        let restart: Vec<String> = restart.into_iter().map(String::from).collect();
        self.sessions.set_max(effective.server.max_sessions);
        self.rooms.set_max(effective.server.max_rooms);
        self.config.store(Arc::new(effective));
        self.rooms.reconfigure_all();
        restart
    }
}

/// Open sessions by id. Admission happens here so `max_sessions` holds under concurrent connects.
#[derive(Debug)]
pub struct SessionTable {
    open: DashMap<SessionId, OpenSession>,
    next_id: AtomicU64,
    /// Places taken, counted apart from `open` so admission is one atomic step.
    admitted: AtomicUsize,
    max: AtomicUsize,
    closing: AtomicBool,
    count: watch::Sender<usize>,
}

impl SessionTable {
    fn new(max: usize, first_id: u64) -> SessionTable {
        SessionTable {
            open: DashMap::new(),
            next_id: AtomicU64::new(first_id),
            admitted: AtomicUsize::new(0),
            max: AtomicUsize::new(max),
            closing: AtomicBool::new(false),
            count: watch::Sender::new(0),
        }
    }

    /// Registers a new session, or refuses it when the server is full or shutting down.
    pub fn admit(self: &Arc<Self>, tx: &SessionTx) -> Result<SessionPermit, Status> {
        if self.closing.load(Ordering::Acquire) {
            return Err(Status::unavailable("server shutting down"));
        }
        // Take a place first, then check: two racing admissions cannot both take the last one.
        let max = self.max.load(Ordering::Relaxed);
        if self.admitted.fetch_add(1, Ordering::AcqRel) >= max {
            self.admitted.fetch_sub(1, Ordering::AcqRel);
            return Err(Status::resource_exhausted(format!(
                "server is at max_sessions ({max})"
            )));
        }
        let id = SessionId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let entry = OpenSession {
            stream: tx.ender(),
            actor: None,
            user: None,
        };
        self.open.insert(id, entry);
        self.publish_count();
        Ok(SessionPermit {
            id,
            table: self.clone(),
            ip: None,
        })
    }

    /// Records the actor of an admitted session, so [`SessionTable::shut_down`] can stop it.
    pub fn attach(&self, id: SessionId, actor: Addr<Session>) {
        if let Some(mut entry) = self.open.get_mut(&id) {
            entry.actor = Some(actor.clone());
        }
        // A shutdown that began between admission and here has not seen this actor.
        if self.closing.load(Ordering::Acquire) {
            actor.do_send(End(Fatal::Shutdown));
        }
    }

    /// Records the user a session named itself (or its token named), for kicks by user.
    pub fn name(&self, id: SessionId, user: UserName) {
        if let Some(mut entry) = self.open.get_mut(&id) {
            entry.user = Some(user);
        }
    }

    /// Ends session `id`'s stream now (its queue is dropped); its actor is told separately.
    pub fn end_stream(&self, id: SessionId, fatal: Fatal) {
        if let Some(entry) = self.open.get(&id) {
            entry.stream.end(fatal);
        }
    }

    /// The open sessions of `user`, or the session `id`, with their actors.
    pub fn find(&self, target: &SessionTarget) -> Vec<(SessionId, Addr<Session>)> {
        let actor_of = |id: SessionId, entry: &OpenSession| entry.actor.clone().map(|a| (id, a));
        match target {
            SessionTarget::Id(id) => self
                .open
                .get(id)
                .and_then(|entry| actor_of(*id, &entry))
                .into_iter()
                .collect(),
            SessionTarget::User(user) => self
                .open
                .iter()
                .filter(|entry| entry.user.as_ref() == Some(user))
                .filter_map(|entry| actor_of(*entry.key(), entry.value()))
                .collect(),
        }
    }

    /// Refuses new sessions and ends every open one: its stream gets UNAVAILABLE once what is
    /// already queued has been delivered, and its actor stops (leaving its rooms).
    pub fn shut_down(&self) {
        self.closing.store(true, Ordering::Release);
        for entry in self.open.iter() {
            entry.stream.end(Fatal::Shutdown);
            if let Some(actor) = &entry.actor {
                // do_send: one per session, once; the session must stop even with a busy mailbox.
                actor.do_send(End(Fatal::Shutdown));
            }
        }
    }

    pub fn len(&self) -> usize {
        self.open.len()
    }

    fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    /// Reads the count and publishes it under the watch's lock, so two changes racing cannot
    /// publish out of order and leave a stale value behind.
    fn publish_count(&self) {
        self.count.send_modify(|n| {
            *n = self.open.len();
            metrics::get().sessions_open.set(*n as f64);
        });
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Watches the number of open sessions.
    pub fn watch_count(&self) -> watch::Receiver<usize> {
        self.count.subscribe()
    }
}

#[derive(Debug)]
struct OpenSession {
    stream: StreamEnder,
    /// Set right after the actor starts.
    actor: Option<Addr<Session>>,
    /// Set once the session is named.
    user: Option<UserName>,
}

/// Who an operator action is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionTarget {
    User(UserName),
    Id(SessionId),
}

impl SessionTarget {
    pub fn matches(&self, id: SessionId, user: &UserName) -> bool {
        match self {
            SessionTarget::User(u) => u == user,
            SessionTarget::Id(i) => *i == id,
        }
    }
}

/// A session's place in the table, held by its response stream and given back when the
/// transport drops that stream.
#[derive(Debug)]
pub struct SessionPermit {
    pub id: SessionId,
    table: Arc<SessionTable>,
    /// The client IP's stream place, given back with the session's.
    ip: Option<IpSlot>,
}

impl SessionPermit {
    pub fn holding_ip(mut self, slot: Option<IpSlot>) -> SessionPermit {
        self.ip = slot;
        self
    }
}

impl Drop for SessionPermit {
    fn drop(&mut self) {
        self.table.open.remove(&self.id);
        self.table.admitted.fetch_sub(1, Ordering::AcqRel);
        self.table.publish_count();
    }
}

/// What the census counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Living {
    SessionActor,
    RoomActor,
    ReaderTask,
}

/// Live actors and tasks, so leak checks can see that everything a session or room started has
/// ended. Updated once per actor or task start and end, never per message.
#[derive(Debug)]
pub struct Census {
    counts: watch::Sender<CensusCounts>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CensusCounts {
    pub session_actors: usize,
    pub room_actors: usize,
    pub reader_tasks: usize,
}

impl CensusCounts {
    fn slot(&mut self, what: Living) -> &mut usize {
        match what {
            Living::SessionActor => &mut self.session_actors,
            Living::RoomActor => &mut self.room_actors,
            Living::ReaderTask => &mut self.reader_tasks,
        }
    }
}

impl Default for Census {
    fn default() -> Self {
        Census {
            counts: watch::Sender::new(CensusCounts::default()),
        }
    }
}

impl Census {
    /// Counts one `what` until the returned guard is dropped.
    pub fn enter(self: &Arc<Self>, what: Living) -> Counted {
        self.counts.send_modify(|c| *c.slot(what) += 1);
        Counted {
            census: self.clone(),
            what,
        }
    }

    pub fn watch(&self) -> watch::Receiver<CensusCounts> {
        self.counts.subscribe()
    }
}

/// See [`Census::enter`].
#[derive(Debug)]
pub struct Counted {
    census: Arc<Census>,
    what: Living,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.census.counts.send_modify(|c| *c.slot(self.what) -= 1);
    }
}
