//! The session table: every open stream by id. Admission (`max_sessions`, refused while shutting
//! down), naming (for kicks by user), attaching the actor, and shutting every session down. The
//! gRPC handler admits; the Session actor names itself through [`SessionNames`]; the admin API
//! finds sessions here.

use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
};

use actix::Addr;
use dashmap::DashMap;
use tokio::sync::watch;
use tonic::Status;

use super::{
    abuse::IpSlot,
    outbound::{SessionTx, StreamEnder},
};
use crate::{
    actors::{End, env::SessionNames, session::Session},
    error::Fatal,
    metrics,
    names::{SessionId, UserName},
};

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
    /// The id a node's first session gets. Operators kick by session id across the cluster, so
    /// ids must not repeat between nodes: in cluster mode each node counts from its own random
    /// point of a 2^52 space (exact in JSON).
    pub fn first_id(cluster: bool) -> u64 {
        if cluster {
            (uuid::Uuid::now_v7().as_u128() as u64 & ((1 << 52) - 1)) | (1 << 32)
        } else {
            1
        }
    }

    pub fn new(max: usize, first_id: u64) -> SessionTable {
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

    pub fn set_max(&self, max: usize) {
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

impl SessionNames for SessionTable {
    /// Records the user a session named itself (or its token named), for kicks by user.
    fn name(&self, id: SessionId, user: UserName) {
        if let Some(mut entry) = self.open.get_mut(&id) {
            entry.user = Some(user);
        }
    }
}
