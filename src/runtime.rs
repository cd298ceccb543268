//! The actor runtime: an actix `System` on a thread of its own with one arbiter (event-loop
//! thread) per core. Every session and room is started with `start_in_arbiter` on one of these
//! handles, and the transport serves each connection on one of them too (a session starts on
//! its connection's arbiter), so a delivery crosses threads only when its room runs elsewhere.

use std::{
    cell::Cell,
    io,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    thread::JoinHandle,
};

use actix_rt::{Arbiter, ArbiterHandle, System};

/// Handles to the arbiters, handed out round-robin so sessions and rooms spread over the cores.
#[derive(Debug, Clone)]
pub struct Arbiters {
    handles: Arc<[ArbiterHandle]>,
    next: Arc<AtomicUsize>,
    /// Connections take turns apart from rooms, so neither kind piles onto some arbiters.
    next_connection: Arc<AtomicUsize>,
    /// Tells this runtime's arbiter threads from other runtimes' (tests run several servers).
    runtime: usize,
}

thread_local! {
    /// On an arbiter thread: the number of the runtime it belongs to.
    static RUNTIME: Cell<Option<usize>> = const { Cell::new(None) };
}

static RUNTIMES: AtomicUsize = AtomicUsize::new(0);

/// Whether this thread is an arbiter's: tasks spawned here with `spawn_local` stay here.
pub fn on_actor_thread() -> bool {
    RUNTIME.get().is_some()
}

impl Arbiters {
    pub fn next(&self) -> &ArbiterHandle {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        &self.handles[i % self.handles.len()]
    }

    /// The arbiter the next connection is served on.
    pub fn next_connection(&self) -> &ArbiterHandle {
        let i = self.next_connection.fetch_add(1, Ordering::Relaxed);
        &self.handles[i % self.handles.len()]
    }

    /// The arbiter this code runs on, or else the next one. A session starts on its
    /// connection's thread, so its stream's requests reach it without crossing threads.
    pub fn here_or_next(&self) -> ArbiterHandle {
        if RUNTIME.get() == Some(self.runtime) {
            Arbiter::current()
        } else {
            self.next().clone()
        }
    }
}

/// Owns the actix system thread; [`ActorRuntime::stop`] (or drop) stops every arbiter and with
/// them every actor still running.
#[derive(Debug)]
pub struct ActorRuntime {
    arbiters: Arbiters,
    system: System,
    thread: Option<JoinHandle<()>>,
}

impl ActorRuntime {
    /// Starts `threads` arbiters (at least one).
    pub fn start(threads: usize) -> io::Result<ActorRuntime> {
        let threads = threads.max(1);
        let runtime = RUNTIMES.fetch_add(1, Ordering::Relaxed);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("actix-system".into())
            .spawn(move || {
                let runner = System::new();
                let arbiters: io::Result<Vec<Arbiter>> =
                    (0..threads).map(|_| Arbiter::try_new()).collect();
                let arbiters = match arbiters {
                    Ok(a) => a,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let handles: Vec<ArbiterHandle> = arbiters.iter().map(Arbiter::handle).collect();
                for handle in &handles {
                    // Runs before anything else is spawned on that arbiter (its queue is FIFO).
                    handle.spawn_fn(move || RUNTIME.set(Some(runtime)));
                }
                let _ = ready_tx.send(Ok((System::current(), handles)));
                // Returns once `System::stop` is called; the system has then asked every arbiter
                // to stop, and joining them makes sure every actor has been dropped.
                let _ = runner.run();
                for arbiter in arbiters {
                    arbiter.stop();
                    let _ = arbiter.join();
                }
            })?;
        let (system, handles) = ready_rx
            .recv()
            .map_err(|_| io::Error::other("actor system thread died while starting"))??;
        Ok(ActorRuntime {
            arbiters: Arbiters {
                handles: handles.into(),
                next: Arc::new(AtomicUsize::new(0)),
                next_connection: Arc::new(AtomicUsize::new(0)),
                runtime,
            },
            system,
            thread: Some(thread),
        })
    }

    pub fn arbiters(&self) -> Arbiters {
        self.arbiters.clone()
    }

    /// Stops every arbiter and waits for their threads. Must not be called from an arbiter.
    pub fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.system.stop();
            let _ = thread.join();
        }
    }
}

impl Drop for ActorRuntime {
    fn drop(&mut self) {
        self.stop();
    }
}
