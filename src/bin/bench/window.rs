//! Measured windows: the timeline of one window ([`WindowPlan`]), the paced senders and the
//! flooder, the coordinator's watch / settle / harvest steps ([`Running`]), and the two modes
//! built from them directly: one window (default) and `--find-max`. Soak and fairness reuse
//! [`Running`] with their own reporting.

use std::{
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Duration,
};

use chatrooms::proto::Message;
use tokio::{
    sync::mpsc,
    task::JoinHandle,
    time::{self, Instant, MissedTickBehavior},
};

use crate::{
    client::Requests,
    proc::CpuSample,
    shared::{Shared, lock},
    stats::StepResult,
    wire::{Marker, chat_request, unix_nanos},
};

/// Time from planning a window to its first tick, so every sender task is running by then.
pub const SENDER_LEAD: Duration = Duration::from_millis(100);
/// Progress, liveness and join checks.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How often the settle period checks whether everything expected has arrived.
const SETTLE_POLL: Duration = Duration::from_millis(20);

/// The timeline of one window; instants are shared by every sender.
#[derive(Debug, Clone, Copy)]
pub struct WindowPlan {
    pub step: u8,
    pub rate: f64,
    pub start: Instant,
    pub measure_start: Instant,
    pub measure_end: Instant,
    /// [`Shared::ended`] when the window started.
    pub ended_before: u64,
}

pub fn period(rate: f64) -> Duration {
    Duration::from_secs_f64(1.0 / rate)
}

/// Posts CHATs for one window at `plan.rate`, starting `offset` into the first period so the
/// senders do not all fire on the same instant.
///
/// Pacing is `MissedTickBehavior::Burst`: ticks missed while the sender was held up (the runtime
/// busy, or HTTP/2 flow control pushing back) are sent at once afterwards. That keeps the offered
/// load at the nominal rate, even above the timer's 1 ms resolution, so overload shows up as
/// latency and not as a quietly lower rate. Each CHAT is stamped with its *due* time, not the time
/// it finally left, so the generator's own stalls count in the latency (no coordinated omission).
async fn post_at_rate(
    shared: Arc<Shared>,
    requests: mpsc::Sender<Message>,
    index: usize,
    plan: WindowPlan,
    offset: Duration,
) {
    let room = shared.sessions[index].room;
    let name = shared.params.room_name(room);
    let size = shared.params.size;
    let mut ticks = time::interval_at(plan.start + offset, period(plan.rate));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
    loop {
        let due = ticks.tick().await;
        if due >= plan.measure_end {
            return;
        }
        let marker = Marker {
            measured: due >= plan.measure_start,
            step: plan.step,
            sent_nanos: unix_nanos(due),
        };
        if !post(&shared, &requests, room, &name, &marker, size).await {
            return; // the stream is gone; its reader reports why
        }
    }
}

/// Posts CHATs from `plan.start` until `plan.measure_end` as fast as the session's request queue
/// takes them: no timer, so the only brake is HTTP/2 flow control, i.e. the server reading the
/// stream. Each CHAT is stamped when it is queued. A `send` that finds room still spends tokio's
/// cooperative budget, so this loop yields to the runtime's other tasks now and then.
async fn flood(
    shared: Arc<Shared>,
    requests: mpsc::Sender<Message>,
    index: usize,
    plan: WindowPlan,
) {
    let room = shared.sessions[index].room;
    let name = shared.params.room_name(room);
    let size = shared.params.size;
    time::sleep_until(plan.start).await;
    loop {
        let now = Instant::now();
        if now >= plan.measure_end {
            return;
        }
        let marker = Marker {
            measured: now >= plan.measure_start,
            step: plan.step,
            sent_nanos: unix_nanos(now),
        };
        if !post(&shared, &requests, room, &name, &marker, size).await {
            return;
        }
    }
}

/// Queues one CHAT stamped with `marker` and counts it when measured; `false` once the stream
/// is gone.
async fn post(
    shared: &Shared,
    requests: &mpsc::Sender<Message>,
    room: usize,
    name: &str,
    marker: &Marker,
    size: usize,
) -> bool {
    if requests
        .send(chat_request(name, marker.content(size)))
        .await
        .is_err()
    {
        return false;
    }
    if marker.measured {
        shared.room_sent[room].fetch_add(1, Relaxed);
    }
    true
}

/// A window whose senders run: the coordinator watches it, lets it settle, then finishes it.
pub struct Running {
    pub plan: WindowPlan,
    senders: Vec<JoinHandle<()>>,
    /// CPU samples at the start and the end of the measured part, once taken.
    cpu_start: Option<CpuSample>,
    cpu_end: Option<CpuSample>,
}

impl Running {
    /// Arms every tally for `step`, counts each room's live members, and spawns the senders:
    /// sessions 0..S-1 paced at `rate`, except `flooder`, which posts as fast as it can.
    pub fn start(
        shared: &Arc<Shared>,
        requests: &Requests,
        step: u8,
        rate: f64,
        flooder: Option<usize>,
    ) -> Running {
        let p = &shared.params;
        for session in &shared.sessions {
            lock(&session.tally).arm(step);
        }
        for (room, members) in shared.room_members.iter().enumerate() {
            shared.room_sent[room].store(0, Relaxed);
            let live = shared
                .sessions
                .iter()
                .filter(|s| s.room == room && s.is_live_member())
                .count();
            members.store(live as u64, Relaxed);
        }
        let start = Instant::now() + SENDER_LEAD;
        let plan = WindowPlan {
            step,
            rate,
            start,
            measure_start: start + p.warmup,
            measure_end: start + p.warmup + p.duration,
            ended_before: shared.ended.load(Relaxed),
        };
        *lock(&shared.window) = Some(plan);

        // Only sessions that are members can post: anyone else would get `not_a_member`.
        let posting: Vec<usize> = (0..p.senders)
            .filter(|&i| shared.sessions[i].is_live_member())
            .collect();
        let senders = posting
            .iter()
            .enumerate()
            .map(|(k, &index)| {
                let requests = requests.senders[index].clone();
                if flooder == Some(index) {
                    return tokio::spawn(flood(shared.clone(), requests, index, plan));
                }
                let offset = period(rate).mul_f64(k as f64 / posting.len() as f64);
                tokio::spawn(post_at_rate(shared.clone(), requests, index, plan, offset))
            })
            .collect();
        Running {
            plan,
            senders,
            cpu_start: None,
            cpu_end: None,
        }
    }

    /// Shows progress until the measured part ends and fails if the server is gone (the window is
    /// then finished as partial). `on_poll(now)` runs on every round and may ask to be woken
    /// earlier than the next poll.
    pub async fn watch(
        &mut self,
        shared: &Shared,
        mut on_poll: impl FnMut(Instant) -> Option<Instant>,
    ) -> anyhow::Result<()> {
        let p = &shared.params;
        let plan = self.plan;
        let total = plan.measure_end - plan.start;
        shared
            .progress
            .stage(format!("step {}", plan.step), total.as_millis() as u64);
        let outcome = loop {
            let now = Instant::now();
            if self.cpu_start.is_none() && now >= plan.measure_start {
                self.cpu_start = Some(CpuSample::take(&p.server_pids));
            }
            if now >= plan.measure_end {
                break Ok(());
            }
            let delivered = shared.delivered_now();
            let measuring = now
                .saturating_duration_since(plan.measure_start)
                .as_secs_f64();
            let per_sec = if measuring > 0.0 {
                delivered as f64 / measuring
            } else {
                0.0
            };
            let phase = if now < plan.measure_start {
                "warm-up"
            } else {
                "measuring"
            };
            shared.progress.update(
                now.saturating_duration_since(plan.start).as_millis() as u64,
                format!(
                    "{phase} {:.1}/s per sender: sent {} delivered {delivered} ({per_sec:.0}/s)",
                    plan.rate,
                    shared.sent_now()
                ),
            );
            if let Err(dead) = shared.check_alive(p.sessions as u64) {
                break Err(dead);
            }
            let mut wake = (now + POLL_INTERVAL).min(plan.measure_end);
            if self.cpu_start.is_none() {
                wake = wake.min(plan.measure_start);
            }
            if let Some(asked) = on_poll(now) {
                wake = wake.min(asked);
            }
            time::sleep_until(wake).await;
        };
        if self.cpu_start.is_some() {
            self.cpu_end = Some(CpuSample::take(&p.server_pids));
        }
        outcome
    }

    /// Settle: the last CHATs are still on their way; stop early once everything arrived.
    pub async fn settle(&self, shared: &Shared) {
        shared.progress.set_message("settling");
        let settle_end = self.plan.measure_end + shared.params.settle;
        loop {
            let all_posted = self.senders.iter().all(JoinHandle::is_finished);
            if (all_posted && shared.delivered_now() >= shared.expected_now())
                || Instant::now() >= settle_end
            {
                break;
            }
            time::sleep(SETTLE_POLL).await;
        }
    }

    /// Stops the senders, harvests the counts and records the result in the outcome.
    pub fn finish(self, shared: &Shared, partial: bool) -> StepResult {
        for sender in &self.senders {
            sender.abort(); // still blocked by flow control after the settle period
        }
        let cpu = self.cpu_start.zip(self.cpu_end);
        let result = {
            let mut window = lock(&shared.window);
            let result = shared.harvest(&self.plan, cpu, partial);
            *window = None;
            result
        };
        lock(&shared.outcome).steps.push(result.clone());
        result
    }
}

/// One window: warm-up, measured part, settle; then the counts. The result is also recorded in
/// the outcome (partial if the server died on the way, which is then an error).
pub async fn run_window(
    shared: &Arc<Shared>,
    requests: &Requests,
    step: u8,
    rate: f64,
    flooder: Option<usize>,
) -> anyhow::Result<StepResult> {
    let mut window = Running::start(shared, requests, step, rate, flooder);
    let outcome = window.watch(shared, |_| None).await;
    if outcome.is_ok() {
        window.settle(shared).await;
    }
    let result = window.finish(shared, outcome.is_err());
    outcome.map(|()| result)
}

/// A failed `--find-max` window with at least this share of the machine's cores busy (server
/// and generator together) is reported as bounded by the machine.
const MACHINE_FULL: f64 = 0.9;

/// `--find-max`: windows at `rate`, `rate × factor`, … until one fails or `max_steps` ran.
/// It stops at the first failing window: past that point the server is saturated, and sessions it
/// dropped as slow consumers would distort every later window.
pub async fn find_max(shared: &Arc<Shared>, requests: &Requests) -> anyhow::Result<()> {
    let p = &shared.params;
    let mut rate = p.rate;
    for step in 0..p.max_steps {
        let result = run_window(shared, requests, step, rate, None).await?;
        if !result.ok {
            if let Some(busy) = result.cores_busy.filter(|&busy| busy >= MACHINE_FULL) {
                shared.note(format!(
                    "step {step} failed with {:.0} % of this machine's cores busy (server {} \
                     CPU-s, chat-bench {} CPU-s): the generator took what the server lacked, and \
                     the server alone may go further; run chat-bench on other cores \
                     or another machine to find it",
                    busy * 100.0,
                    result.server_cpu_s.unwrap_or_default(),
                    result.loadgen_cpu_s.unwrap_or_default(),
                ));
            }
            break;
        }
        rate *= p.step_factor;
    }
    Ok(())
}
