//! `--scenario fairness` (issue 6): can one flooding session slow the other rooms? Rooms
//! `bench-a` … `bench-z` have one sender each (session r is the first member of room r), and room
//! A's sessions have a connection of their own. Two windows run on the same sessions: first every
//! sender paced at `--rate` (no flood), then the same with room A's sender posting as fast as the
//! server takes it. The report compares rooms B..Z's p50/p99 across the two (target: p99 within
//! 2×) and says what the flooder got through and what it was refused.

use std::sync::{Arc, atomic::Ordering::Relaxed};

use serde_json::{Value, json};

use crate::{
    client::Requests,
    shared::{Collected, Shared, lock},
    stats::{StepResult, quantile_ms, round},
    window::Running,
};

/// The flooder: session 0, the first member of room A.
const FLOODER: usize = 0;
/// Room A, whose figures stay out of the windows' results (see `Params::counts_room`).
const FLOOD_ROOM: usize = 0;
/// `--find-max`-style step numbers of the two windows, so a CHAT of one never counts in the other.
const NO_FLOOD_STEP: u8 = 0;
const FLOOD_STEP: u8 = 1;
/// Issue 6's target: rooms B..Z's p99 under the flood within this factor of the no-flood run.
const P99_TARGET_RATIO: f64 = 2.0;

/// One of the two windows: rooms B..Z's result and room A's figures.
struct Run {
    result: StepResult,
    room_a: Collected,
    /// ERROR replies the flooder (room A's sender) received during this window.
    flooder_errors: u64,
}

impl Run {
    /// The run's report object: the usual window fields (rooms B..Z) plus room A's.
    fn to_json(&self) -> Value {
        // unwrap: a struct of numbers and options always serializes
        let mut run = serde_json::to_value(&self.result).unwrap();
        let room_a = &self.room_a;
        run["room_a"] = json!({
            "sent": room_a.sent,
            "delivered": room_a.delivered,
            "expected": room_a.expected,
            "p50_ms": quantile_ms(&room_a.latency, 0.5),
            "p99_ms": quantile_ms(&room_a.latency, 0.99),
        });
        run["flooder_errors"] = json!(self.flooder_errors);
        run
    }
}

/// Both windows, then the comparison into the report's fields.
pub async fn fairness(shared: &Arc<Shared>, requests: &Requests) -> anyhow::Result<()> {
    let no_flood = run(shared, requests, NO_FLOOD_STEP, None).await?;
    record(shared, "no_flood", no_flood.to_json());
    let flood = run(shared, requests, FLOOD_STEP, Some(FLOODER)).await?;
    record(shared, "flood", flood.to_json());

    let p99_ratio = ratio(flood.result.p99_ms, no_flood.result.p99_ms);
    let ended_in = |in_room_a: bool| {
        shared
            .sessions
            .iter()
            .filter(|s| (s.room == FLOOD_ROOM) == in_room_a && s.ended.load(Relaxed))
            .count()
    };
    let measured = shared.params.duration.as_secs_f64();
    let fields = [
        ("no_flood_p50_ms", json!(no_flood.result.p50_ms)),
        ("flood_p50_ms", json!(flood.result.p50_ms)),
        (
            "p50_ratio",
            json!(ratio(flood.result.p50_ms, no_flood.result.p50_ms)),
        ),
        ("no_flood_p99_ms", json!(no_flood.result.p99_ms)),
        ("flood_p99_ms", json!(flood.result.p99_ms)),
        ("p99_ratio", json!(p99_ratio)),
        (
            "p99_within_2x",
            json!(p99_ratio.map(|r| r <= P99_TARGET_RATIO)),
        ),
        ("flooder_sent", json!(flood.room_a.sent)),
        (
            "flooder_per_sec",
            json!(round(flood.room_a.sent as f64 / measured, 1)),
        ),
        ("flooder_delivered", json!(flood.room_a.delivered)),
        ("flooder_errors", json!(flood.flooder_errors)),
        (
            "flooder_ended",
            json!(shared.sessions[FLOODER].ended.load(Relaxed)),
        ),
        ("others_ended", json!(ended_in(false))),
        ("room_a_ended", json!(ended_in(true))),
    ];
    for (key, value) in fields {
        record(shared, key, value);
    }
    Ok(())
}

/// One window; room A's figures are read just before the harvest resets them.
async fn run(
    shared: &Arc<Shared>,
    requests: &Requests,
    step: u8,
    flooder: Option<usize>,
) -> anyhow::Result<Run> {
    let errors_before = shared.sessions[FLOODER].errors.load(Relaxed);
    let mut window = Running::start(shared, requests, step, shared.params.rate, flooder);
    let outcome = window.watch(shared, |_| None).await;
    if outcome.is_ok() {
        window.settle(shared).await;
    }
    let room_a = shared.collect(|room| room == FLOOD_ROOM);
    let result = window.finish(shared, outcome.is_err());
    outcome?;
    Ok(Run {
        result,
        room_a,
        flooder_errors: shared.sessions[FLOODER].errors.load(Relaxed) - errors_before,
    })
}

/// `flood / no_flood` to two decimals, when both were measured.
fn ratio(flood: Option<f64>, no_flood: Option<f64>) -> Option<f64> {
    let (flood, no_flood) = flood.zip(no_flood)?;
    (no_flood > 0.0).then(|| round(flood / no_flood, 2))
}

fn record(shared: &Shared, key: &str, value: Value) {
    lock(&shared.outcome).extra.insert(key.into(), value);
}
