//! The census of live actors and tasks: the Session and Room actors and the edge's reader tasks
//! each hold a [`Counted`] guard for their lifetime, so leak checks (tests) and the shutdown
//! (which waits for every session actor to end) can see that what was started has ended.

use std::sync::Arc;

use tokio::sync::watch;

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
