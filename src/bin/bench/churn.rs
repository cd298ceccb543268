//! The `churn` scenario: sessions connect, join, chat and disconnect in a loop for `--duration`,
//! each group of them on a fresh connection per cycle; afterwards the server's VmRSS must come
//! back within 10% of its pre-churn value. With `--rounds N` it churns N times, reads the
//! server's VmRSS after each round once the server's sessions are gone (and again once it has
//! stopped falling), and reports the growth over the last five rounds: whether RSS reaches a
//! plateau. Its sessions live one cycle each, so
//! it keeps its own totals ([`crate::shared::ChurnTotals`]) instead of per-session tallies.

use std::{
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Duration,
};

use chatrooms::proto::{Kind, chat_service_client::ChatServiceClient};
use serde_json::json;
use tokio::{
    sync::mpsc,
    task::JoinSet,
    time::{self, Instant, MissedTickBehavior},
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, transport::Channel};

use crate::{
    cli::{CHURN_CYCLE_SLACK, CHURN_RSS_STEADY_WAIT, CHURN_SESSIONS_GONE, Params},
    client::{REQUEST_QUEUE, connect_from, error_code, source_for, truncate},
    probe::scrape_or_note,
    proc::total_rss_kb,
    shared::{Shared, lock},
    stats::{new_histogram, record_latency, round},
    window::{POLL_INTERVAL, period},
    wire::{JOIN_REF, Marker, chat_request, join_request, unix_nanos},
};

/// CHATs each session posts per cycle (non-senders stay as long without posting).
const CHURN_CHATS_PER_CYCLE: u32 = 5;
/// The server's VmRSS must come back within this fraction of its pre-churn value.
const RSS_TOLERANCE: f64 = 0.10;
/// With `--rounds`: how many of the last rounds the RSS growth is reported over (the rounds
/// before them warm up), and the growth that counts as a plateau (issue 13).
const PLATEAU_ROUNDS: usize = 5;
const PLATEAU_GROWTH: f64 = 0.06;
/// With `--rounds`: the RSS after a round is read once it has not fallen for this long (sampled
/// this often, for at most [`CHURN_RSS_STEADY_WAIT`]).
const RSS_STEADY: Duration = Duration::from_secs(1);
const RSS_STEADY_SAMPLE: Duration = Duration::from_millis(100);

/// Runs `--rounds` rounds of churn, reading the server's VmRSS after each when there are several;
/// then watches it for up to `settle` to come back within 10% of its pre-churn value.
pub async fn churn(shared: &Arc<Shared>) -> anyhow::Result<()> {
    let p = &shared.params;
    let rss_start_kb = total_rss_kb(&p.server_pids);
    let rounds = p.rounds as usize;
    let open_at_start = if rounds > 1 {
        scrape_or_note(shared, "churn", "at the start")
            .await
            .and_then(|scrape| scrape.sessions_open)
    } else {
        None
    };
    let mut closed_kb = Vec::with_capacity(rounds);
    let mut steady_kb = Vec::with_capacity(rounds);
    for round in 1..=rounds {
        churn_round(shared, round).await?;
        if rounds > 1 {
            if let Some(open) = open_at_start {
                wait_sessions_closed(shared, open).await;
            }
            closed_kb.push(total_rss_kb(&p.server_pids));
            steady_kb.push(wait_rss_steady(shared).await);
        }
    }
    if rounds > 1 {
        record_rounds(shared, &closed_kb, &steady_kb);
    }
    settle(shared, rss_start_kb).await;
    Ok(())
}

/// Sessions are split into `conns` groups; each group repeatedly dials a fresh connection, runs
/// one cycle (open, JOIN, chat, close, drain) for all its sessions at once, and hangs up, until
/// `--duration` is over.
async fn churn_round(shared: &Arc<Shared>, round: usize) -> anyhow::Result<()> {
    let p = &shared.params;
    let start = Instant::now();
    let end = start + p.duration;
    let mut groups = JoinSet::new();
    for group in 0..p.conns {
        let members: Vec<usize> = (group..p.sessions).step_by(p.conns).collect();
        let uri = p.server_for_conn(group).to_owned();
        groups.spawn(churn_group(shared.clone(), members, uri, end));
    }

    let stage = if p.rounds > 1 {
        format!("churn {round}/{}", p.rounds)
    } else {
        "churn".to_owned()
    };
    shared.progress.stage(stage, p.duration.as_millis() as u64);
    let mut outcome = Ok(());
    while Instant::now() < end {
        if let Err(dead) = shared.check_alive(0) {
            outcome = Err(dead);
            break;
        }
        let churn = &shared.churn;
        shared.progress.update(
            start.elapsed().as_millis() as u64,
            format!(
                "{} cycles, {} CHATs sent, {} received",
                churn.cycles.load(Relaxed),
                churn.sent.load(Relaxed),
                churn.received.load(Relaxed)
            ),
        );
        time::sleep(POLL_INTERVAL.min(end.saturating_duration_since(Instant::now()))).await;
    }
    shared.progress.set_message("finishing the last cycles");
    let cycles_done = time::timeout(CHURN_CYCLE_SLACK + churn_cycle_length(p), async {
        while groups.join_next().await.is_some() {}
    })
    .await;
    if cycles_done.is_err() {
        shared.note("churn: some cycles were still running after the churn ended; cut");
        groups.abort_all();
    }
    outcome
}

/// Waits, bounded by [`CHURN_SESSIONS_GONE`], until the server's `chat_sessions_open` is back
/// to `open` (its value before the first round): the round's sessions are closed on its side.
async fn wait_sessions_closed(shared: &Shared, open: u64) {
    let give_up = Instant::now() + CHURN_SESSIONS_GONE;
    shared
        .progress
        .set_message("waiting for the server to close the sessions");
    loop {
        let now_open = scrape_or_note(shared, "churn", "after a round")
            .await
            .and_then(|scrape| scrape.sessions_open);
        match now_open {
            Some(now_open) if now_open > open => {}
            _ => return,
        }
        if Instant::now() >= give_up {
            shared.note(format!(
                "churn: the server still had sessions open {} s after a round",
                CHURN_SESSIONS_GONE.as_secs()
            ));
            return;
        }
        time::sleep(POLL_INTERVAL).await;
    }
}

/// Reads the server's VmRSS until it has not fallen for [`RSS_STEADY`] (bounded by
/// [`CHURN_RSS_STEADY_WAIT`]): the server gives memory freed in a burst back to the system within a
/// fraction of a second (`malloc_trim`), so a reading taken the instant the sessions close can
/// still count memory they freed.
async fn wait_rss_steady(shared: &Shared) -> Option<u64> {
    let pids = &shared.params.server_pids;
    let give_up = Instant::now() + CHURN_RSS_STEADY_WAIT;
    let mut last = total_rss_kb(pids)?;
    let mut fell_at = Instant::now();
    while Instant::now() < give_up && fell_at.elapsed() < RSS_STEADY {
        time::sleep(RSS_STEADY_SAMPLE).await;
        let now = total_rss_kb(pids)?;
        if now < last {
            fell_at = Instant::now();
        }
        last = now;
    }
    Some(last)
}

/// Growth of the RSS over the last [`PLATEAU_ROUNDS`] rounds, from the round before them (of
/// eight rounds, from round 3 to round 8); `None` with fewer rounds or a reading missing.
fn plateau_growth(rss_rounds_kb: &[Option<u64>]) -> Option<f64> {
    let from = rss_rounds_kb.len().checked_sub(PLATEAU_ROUNDS + 1)?;
    let (from, last) = rss_rounds_kb[from].zip(*rss_rounds_kb.last()?)?;
    Some(last as f64 / from as f64 - 1.0)
}

/// The RSS after each round, as the sessions closed and once steady, and the steady figures'
/// growth over the last rounds.
fn record_rounds(shared: &Shared, closed_kb: &[Option<u64>], steady_kb: &[Option<u64>]) {
    let growth = plateau_growth(steady_kb);
    let mut outcome = lock(&shared.outcome);
    let extra = &mut outcome.extra;
    extra.insert("server_rss_rounds_closed_kb".into(), json!(closed_kb));
    extra.insert("server_rss_rounds_kb".into(), json!(steady_kb));
    extra.insert(
        "server_rss_last5_growth_pct".into(),
        json!(growth.map(|g| round(g * 100.0, 2))),
    );
    extra.insert(
        "server_rss_plateau".into(),
        json!(growth.map(|g| g <= PLATEAU_GROWTH)),
    );
}

/// Watches the server's VmRSS for up to `--settle` to come back within 10% of `rss_start_kb`.
async fn settle(shared: &Shared, rss_start_kb: Option<u64>) {
    let p = &shared.params;
    let Some(start_kb) = rss_start_kb else {
        shared.note("churn: pass --server-pid to check that the server's RSS comes back");
        return;
    };
    shared.progress.stage("settle", p.settle.as_millis() as u64);
    let settle_start = Instant::now();
    let settle_end = settle_start + p.settle;
    let within = |kb: u64| kb as f64 <= start_kb as f64 * (1.0 + RSS_TOLERANCE);
    let mut after_kb = total_rss_kb(&p.server_pids);
    while !after_kb.is_some_and(within) && Instant::now() < settle_end {
        shared.progress.update(
            settle_start.elapsed().as_millis() as u64,
            format!(
                "server VmRSS {} kB, before {start_kb} kB",
                after_kb.unwrap_or(0)
            ),
        );
        time::sleep(Duration::from_millis(500)).await;
        after_kb = total_rss_kb(&p.server_pids);
    }
    let mut outcome = lock(&shared.outcome);
    let extra = &mut outcome.extra;
    extra.insert("server_rss_before_kb".into(), json!(start_kb));
    extra.insert("server_rss_after_kb".into(), json!(after_kb));
    extra.insert(
        "server_rss_change_pct".into(),
        json!(after_kb.map(|a| round((a as f64 / start_kb as f64 - 1.0) * 100.0, 2))),
    );
    extra.insert(
        "server_rss_within_10pct".into(),
        json!(after_kb.is_some_and(within)),
    );
    extra.insert(
        "rss_settle_s".into(),
        json!(round(settle_start.elapsed().as_secs_f64(), 1)),
    );
}

/// How long one cycle's paced CHATs take at `--rate`.
fn churn_cycle_length(p: &Params) -> Duration {
    period(p.rate) * CHURN_CHATS_PER_CYCLE
}

async fn churn_group(shared: Arc<Shared>, members: Vec<usize>, uri: String, end: Instant) {
    while Instant::now() < end {
        let source = members.first().and_then(|first| source_for(&uri, *first));
        let channel = match connect_from(&uri, source).await {
            Ok(channel) => channel,
            Err(error) => {
                shared
                    .transport_failures
                    .add(truncate(format!("connect: {error:#}"), 200));
                time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let mut cycles = JoinSet::new();
        for &index in &members {
            cycles.spawn(churn_cycle(shared.clone(), channel.clone(), index));
        }
        while cycles.join_next().await.is_some() {}
        // `channel` drops here with its last clone: the connection closes, the next one is new.
    }
}

/// One session's life: open with JOIN, post [`CHURN_CHATS_PER_CYCLE`] CHATs at `--rate` (or just
/// stay as long, for non-senders), half-close, and read until the server ends the stream.
async fn churn_cycle(shared: Arc<Shared>, channel: Channel, index: usize) {
    let p = &shared.params;
    let room = p.room_name(p.room_of(index));
    let (requests, requests_rx) = mpsc::channel(REQUEST_QUEUE);
    // unwrap: a new channel has room for its first message
    requests.try_send(join_request(index, &room)).unwrap();
    let mut requests = Some(requests);
    let opened = ChatServiceClient::new(channel)
        .chat_stream(ReceiverStream::new(requests_rx))
        .await;
    let mut replies = match opened {
        Ok(response) => response.into_inner(),
        Err(status) => {
            shared.record_end(Some(&status));
            return;
        }
    };
    let mut latency = new_histogram();
    let mut received = 0;
    let mut joined = false;
    let mut posted = 0;
    let mut ticks = time::interval(period(p.rate));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let give_up = time::sleep(CHURN_CYCLE_SLACK + churn_cycle_length(p));
    tokio::pin!(give_up);
    // Some(end) when the stream ended (None = cleanly), None when the cycle was given up.
    let end: Option<Option<Status>> = loop {
        tokio::select! {
            reply = replies.message() => match reply {
                Ok(Some(reply)) => match reply.kind() {
                    Kind::Joined if reply.room == room && !joined => {
                        joined = true;
                        shared.joined.fetch_add(1, Relaxed);
                        ticks.reset_immediately();
                    }
                    Kind::Chat if !reply.replay => {
                        if let Some(marker) = Marker::parse(&reply.content).filter(|m| m.measured) {
                            let now = unix_nanos(Instant::now());
                            record_latency(&mut latency, now.saturating_sub(marker.sent_nanos) / 1_000);
                            received += 1;
                        }
                    }
                    Kind::Error => {
                        shared.error_codes.add(error_code(&reply));
                        if reply.r#ref == JOIN_REF {
                            requests = None; // refused: close and let the server end the stream
                        }
                    }
                    _ => {}
                },
                Ok(None) => break Some(None),
                Err(status) => break Some(Some(status)),
            },
            _ = ticks.tick(), if joined && requests.is_some() => {
                if posted == CHURN_CHATS_PER_CYCLE {
                    requests = None; // half-close: the server acks what is queued, then ends with OK
                    continue;
                }
                posted += 1;
                if index < p.senders {
                    let marker = Marker { measured: true, step: 0, sent_nanos: unix_nanos(Instant::now()) };
                    let chat = chat_request(&room, marker.content(p.size));
                    // try_send keeps this loop reading; 5 CHATs never fill a queue of 64.
                    if requests.as_ref().is_some_and(|r| r.try_send(chat).is_ok()) {
                        shared.churn.sent.fetch_add(1, Relaxed);
                    }
                }
            }
            () = &mut give_up => {
                shared.transport_failures.add("stalled: a churn cycle did not finish in time");
                break None;
            }
        }
    };
    // A failed stream always counts; a clean end only if it came before the generator closed.
    if let Some(end) = end
        && (end.is_some() || requests.is_some())
    {
        shared.record_end(end.as_ref());
    }
    if joined {
        shared.churn.cycles.fetch_add(1, Relaxed);
    }
    shared.churn.received.fetch_add(received, Relaxed);
    // unwrap: adding into an auto-resizing histogram cannot fail
    lock(&shared.churn.latency).add(&latency).unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_is_over_the_last_five_rounds_after_the_warm_up() {
        let rounds = [
            40_000, 48_000, 50_000, 50_500, 51_000, 51_500, 52_000, 53_000,
        ]
        .map(Some);
        let growth = plateau_growth(&rounds).expect("eight rounds");
        assert!((growth - 0.06).abs() < 1e-9, "round 3 → 8: {growth}");
        assert_eq!(
            plateau_growth(&rounds[..6]),
            Some(51_500.0 / 40_000.0 - 1.0)
        );
        assert_eq!(
            plateau_growth(&rounds[..5]),
            None,
            "no round before the last five"
        );
        let mut missing = rounds;
        missing[2] = None;
        assert_eq!(plateau_growth(&missing), None);
    }
}
