//! State shared by the coordinator, the reader tasks, the senders and the watchdog: one
//! [`Session`] per stream with its [`Tally`], per-room counters of the window in progress, run-wide
//! counts, and the [`Outcome`] the report is built from. Readers only touch their own session.

use std::{
    io::IsTerminal as _,
    sync::{
        Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering::Relaxed},
    },
};

use anyhow::bail;
use chatrooms::proto::{Kind, Message};
use hdrhistogram::Histogram;
use serde_json::Value;
use tokio::time::Instant;
use tonic::Status;

use crate::{
    cli::{Mode, Params},
    client::{code_name, describe_failure, error_code, is_transport_failure},
    proc::{CpuSample, process_alive},
    report::Progress,
    stats::{Counts, StepCounts, StepResult, new_histogram, record_latency, round},
    window::WindowPlan,
    wire::{JOIN_REF, Marker, unix_nanos},
};

/// [`Session::state`]: JOIN sent, no answer yet.
const PENDING: u8 = 0;
/// JOINED before the run started: counts in `expected`, and its CHATs count as delivered.
const MEMBER: u8 = 1;
/// Still pending when the run started: the server may deliver to it later, but it is not counted.
pub const LATE: u8 = 2;
/// JOIN refused, or the stream ended before JOINED.
pub const FAILED: u8 = 3;
/// [`Tally::step`] between windows: every measured CHAT arriving then is late.
pub const NO_STEP: u8 = u8::MAX;

/// One session of a measured run, shared by its reader task and the coordinator.
pub struct Session {
    pub room: usize,
    state: AtomicU8,
    pub ended: AtomicBool,
    /// ERROR replies this session received; fairness reports the flooder's.
    pub errors: AtomicU64,
    /// Written by this session's reader for each CHAT; the coordinator takes the lock a few times
    /// a second for progress and once per window to harvest, so it is uncontended in practice
    /// (and nothing else is shared on the read path).
    pub tally: Mutex<Tally>,
}

impl Session {
    pub fn is_live_member(&self) -> bool {
        self.state.load(Relaxed) == MEMBER && !self.ended.load(Relaxed)
    }

    /// Handles one reply on the read path: keep it short, the connection's other streams wait.
    pub fn on_reply(&self, shared: &Shared, room: &str, reply: &Message) {
        match reply.kind() {
            Kind::Chat if !reply.replay => {
                if self.state.load(Relaxed) != MEMBER {
                    return;
                }
                let Some(marker) = Marker::parse(&reply.content).filter(|m| m.measured) else {
                    return;
                };
                let now = unix_nanos(Instant::now());
                let latency_us = now.saturating_sub(marker.sent_nanos) / 1_000;
                lock(&self.tally).record(marker.step, latency_us);
            }
            // The guard claims the session (once); a repeated JOINED falls through to `_`.
            Kind::Joined if reply.room == room && self.settle_join(MEMBER) => {
                shared.joined.fetch_add(1, Relaxed);
            }
            Kind::Error => {
                self.errors.fetch_add(1, Relaxed);
                shared.error_codes.add(error_code(reply));
                if reply.r#ref == JOIN_REF && self.settle_join(FAILED) {
                    shared.failed.fetch_add(1, Relaxed);
                }
            }
            _ => {} // presence, PONG
        }
    }

    /// Moves a pending session to `to`; false if it was already settled (the coordinator's
    /// freeze and the reader race for it, and exactly one wins).
    pub fn settle_join(&self, to: u8) -> bool {
        self.state
            .compare_exchange(PENDING, to, Relaxed, Relaxed)
            .is_ok()
    }
}

/// One session's counts for the window in progress.
pub struct Tally {
    /// The window whose measured CHATs count; others are late.
    step: u8,
    delivered: u64,
    /// Measured CHATs that arrived after their window was counted (run-wide, never reset).
    late: u64,
    latency: Histogram<u64>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            step: NO_STEP,
            delivered: 0,
            late: 0,
            latency: new_histogram(),
        }
    }

    fn record(&mut self, step: u8, latency_us: u64) {
        if step != self.step {
            self.late += 1;
            return;
        }
        self.delivered += 1;
        record_latency(&mut self.latency, latency_us);
    }

    pub fn arm(&mut self, step: u8) {
        self.step = step;
        self.delivered = 0;
        self.latency.reset();
    }
}

/// Counters of the churn scenario, whose sessions live one cycle each.
pub struct ChurnTotals {
    pub cycles: AtomicU64,
    pub sent: AtomicU64,
    pub received: AtomicU64,
    pub latency: Mutex<Histogram<u64>>,
}

/// What the coordinator has learnt so far; the report is built from it, by `main` at the end or
/// by the watchdog at the deadline.
#[derive(Default)]
pub struct Outcome {
    pub join_s: Option<f64>,
    pub steps: Vec<StepResult>,
    pub notes: Vec<String>,
    /// Mode-specific report fields (idle and churn RSS, soak RSS, fairness comparison).
    pub extra: serde_json::Map<String, Value>,
}

/// The window-so-far figures of a group of rooms, read without resetting anything.
pub struct Collected {
    pub sent: u64,
    pub delivered: u64,
    pub expected: u64,
    pub latency: Histogram<u64>,
}

pub struct Shared {
    pub params: Params,
    pub sessions: Vec<Session>,
    /// Measured CHATs posted into each room in the current window.
    pub room_sent: Vec<AtomicU64>,
    /// Live members of each room when the current window started.
    pub room_members: Vec<AtomicU64>,
    pub joined: AtomicU64,
    pub failed: AtomicU64,
    /// Streams that ended for any reason; equal to the sessions opened means nobody is left.
    pub ended: AtomicU64,
    /// Set before the generator closes its own streams, so those ends are not blamed on the server.
    pub stopping: AtomicBool,
    pub error_codes: Counts,
    pub ended_by_server: Counts,
    pub transport_failures: Counts,
    pub churn: ChurnTotals,
    /// Latency of the window in progress already taken out of the tallies (by the soak's interval
    /// lines); [`Shared::harvest`] adds it back, so the window's percentiles cover all of it.
    pub carried: Mutex<Histogram<u64>>,
    pub outcome: Mutex<Outcome>,
    /// The window in progress, so the watchdog can report it as a partial step.
    pub window: Mutex<Option<WindowPlan>>,
    /// Held by whoever prints (soak lines briefly; the report until the process exits), so lines
    /// never interleave and nothing follows the report.
    pub printing: Mutex<()>,
    pub progress: Progress,
}

impl Shared {
    pub fn new(params: Params) -> Shared {
        let sessions = match params.mode {
            // Both keep their own per-stream state.
            Mode::Churn | Mode::Stall => Vec::new(),
            _ => (0..params.sessions)
                .map(|i| Session {
                    room: params.room_of(i),
                    state: AtomicU8::new(PENDING),
                    ended: AtomicBool::new(false),
                    errors: AtomicU64::new(0),
                    tally: Mutex::new(Tally::new()),
                })
                .collect(),
        };
        let per_room = || (0..params.rooms).map(|_| AtomicU64::new(0)).collect();
        Shared {
            progress: Progress::new(!params.json && std::io::stderr().is_terminal()),
            sessions,
            room_sent: per_room(),
            room_members: per_room(),
            joined: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            ended: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
            error_codes: Counts::default(),
            ended_by_server: Counts::default(),
            transport_failures: Counts::default(),
            churn: ChurnTotals {
                cycles: AtomicU64::new(0),
                sent: AtomicU64::new(0),
                received: AtomicU64::new(0),
                latency: Mutex::new(new_histogram()),
            },
            carried: Mutex::new(new_histogram()),
            outcome: Mutex::new(Outcome::default()),
            window: Mutex::new(None),
            printing: Mutex::new(()),
            params,
        }
    }

    pub fn note(&self, note: impl Into<String>) {
        lock(&self.outcome).notes.push(note.into());
    }

    /// Sessions whose room counts in the window's figures (all but fairness' room A).
    fn counted_sessions(&self) -> impl Iterator<Item = &Session> {
        self.sessions
            .iter()
            .filter(|s| self.params.counts_room(s.room))
    }

    fn counted_rooms(&self) -> impl Iterator<Item = usize> {
        (0..self.params.rooms).filter(|&room| self.params.counts_room(room))
    }

    pub fn delivered_now(&self) -> u64 {
        self.counted_sessions()
            .map(|s| lock(&s.tally).delivered)
            .sum()
    }

    pub fn sent_now(&self) -> u64 {
        self.counted_rooms()
            .map(|room| self.room_sent[room].load(Relaxed))
            .sum()
    }

    pub fn expected_now(&self) -> u64 {
        self.counted_rooms()
            .map(|room| self.room_sent[room].load(Relaxed) * self.room_members[room].load(Relaxed))
            .sum()
    }

    /// The window-so-far figures of the rooms `in_group` picks, leaving the tallies as they are.
    pub fn collect(&self, in_group: impl Fn(usize) -> bool) -> Collected {
        let mut latency = new_histogram();
        let mut delivered = 0;
        for session in self.sessions.iter().filter(|s| in_group(s.room)) {
            let tally = lock(&session.tally);
            delivered += tally.delivered;
            // unwrap: adding into an auto-resizing histogram cannot fail
            latency.add(&tally.latency).unwrap();
        }
        let (mut sent, mut expected) = (0, 0);
        for room in (0..self.params.rooms).filter(|&room| in_group(room)) {
            let room_sent = self.room_sent[room].load(Relaxed);
            sent += room_sent;
            expected += room_sent * self.room_members[room].load(Relaxed);
        }
        Collected {
            sent,
            delivered,
            expected,
            latency,
        }
    }

    /// Moves the latency recorded since the last call out of the counted tallies (keeping their
    /// delivered counts) and returns it; [`Shared::carried`] keeps a copy for the window's total.
    pub fn drain_latency(&self) -> Histogram<u64> {
        let mut latency = new_histogram();
        for session in self.counted_sessions() {
            let mut tally = lock(&session.tally);
            // unwrap: adding into an auto-resizing histogram cannot fail
            latency.add(&tally.latency).unwrap();
            tally.latency.reset();
        }
        // unwrap: as above
        lock(&self.carried).add(&latency).unwrap();
        latency
    }

    /// Records how a stream ended that the generator did not end itself.
    pub fn record_end(&self, end: Option<&Status>) {
        match end {
            None => self.ended_by_server.add("OK"),
            Some(status) if is_transport_failure(status) => {
                self.transport_failures.add(describe_failure(status))
            }
            Some(status) => self.ended_by_server.add(code_name(status.code())),
        }
    }

    /// Fails when there is no server left to measure: a watched process is gone (a cluster
    /// without one of its nodes or its Redis is not the system being measured), or every stream
    /// ended.
    pub fn check_alive(&self, streams: u64) -> anyhow::Result<()> {
        if let Some(pid) = self
            .params
            .server_pids
            .iter()
            .find(|&&pid| !process_alive(pid))
        {
            bail!("the server process {pid} is gone");
        }
        if streams > 0 && self.ended.load(Relaxed) >= streams {
            bail!("every stream has ended: the server closed them or died");
        }
        Ok(())
    }

    /// Takes the window's counts out of every session and turns them into a [`StepResult`] of the
    /// counted rooms. `partial` when the window was cut short (deadline, dead server).
    pub fn harvest(
        &self,
        plan: &WindowPlan,
        cpu: Option<(CpuSample, CpuSample)>,
        partial: bool,
    ) -> StepResult {
        let mut latency = new_histogram();
        {
            let mut carried = lock(&self.carried);
            // unwrap: adding into an auto-resizing histogram cannot fail
            latency.add(&*carried).unwrap();
            carried.reset();
        }
        let mut delivered = 0;
        for session in &self.sessions {
            let mut tally = lock(&session.tally);
            if self.params.counts_room(session.room) {
                delivered += tally.delivered;
                // unwrap: as above
                latency.add(&tally.latency).unwrap();
            }
            tally.arm(NO_STEP);
        }
        let measured = if partial {
            Instant::now()
                .min(plan.measure_end)
                .saturating_duration_since(plan.measure_start)
        } else {
            plan.measure_end - plan.measure_start
        };
        let cpu_delta = |pick: fn(&CpuSample) -> Option<f64>| {
            let (start, end) = cpu?;
            Some(round(pick(&end)? - pick(&start)?, 2))
        };
        StepResult::new(StepCounts {
            step: plan.step,
            rate: plan.rate,
            sent: self.sent_now(),
            delivered,
            expected: Some(self.expected_now()),
            window: measured,
            latency: &latency,
            streams_ended: self.ended.load(Relaxed) - plan.ended_before,
            server_cpu_s: cpu_delta(|c| c.server),
            loadgen_cpu_s: cpu_delta(|c| c.loadgen),
            partial,
        })
    }

    pub fn late_total(&self) -> u64 {
        self.sessions.iter().map(|s| lock(&s.tally).late).sum()
    }
}

/// Locks `mutex`, ignoring poison: every guarded value here is a set of counters that stays
/// meaningful even if some holder panicked.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
