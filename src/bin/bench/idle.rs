//! The `idle` scenario: every session joins and then only holds its stream for `--duration`;
//! the server's VmRSS before and after gives its memory per connected, joined session.

use std::sync::atomic::Ordering::Relaxed;

use serde_json::json;
use tokio::time::{self, Instant};

use crate::{
    proc::total_rss_kb,
    shared::{Shared, lock},
    stats::round,
    window::POLL_INTERVAL,
};

/// Holds every joined session for `duration`, then reads the server's VmRSS (not VmHWM: the
/// question is what the sessions cost now, not the peak of the join burst).
pub async fn hold_idle(shared: &Shared, rss_start_kb: Option<u64>) -> anyhow::Result<()> {
    let p = &shared.params;
    let start = Instant::now();
    let end = start + p.duration;
    shared.progress.stage("hold", p.duration.as_millis() as u64);
    while Instant::now() < end {
        shared.check_alive(p.sessions as u64)?;
        shared.progress.update(
            start.elapsed().as_millis() as u64,
            format!("{} sessions holding", shared.joined.load(Relaxed)),
        );
        time::sleep(POLL_INTERVAL.min(end.saturating_duration_since(Instant::now()))).await;
    }
    if p.server_pids.is_empty() {
        shared.note("idle: pass --server-pid to measure the server's RSS per session");
        return Ok(());
    }
    let rss_joined_kb = total_rss_kb(&p.server_pids);
    let joined = shared.joined.load(Relaxed);
    let mut outcome = lock(&shared.outcome);
    outcome
        .extra
        .insert("server_rss_start_kb".into(), json!(rss_start_kb));
    outcome
        .extra
        .insert("server_rss_joined_kb".into(), json!(rss_joined_kb));
    if let (Some(start), Some(now)) = (rss_start_kb, rss_joined_kb)
        && joined > 0
    {
        let per_session = (now as f64 - start as f64) * 1024.0 / joined as f64;
        outcome.extra.insert(
            "server_rss_per_session_bytes".into(),
            json!(round(per_session, 1)),
        );
    }
    Ok(())
}
