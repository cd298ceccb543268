//! The `churn` scenario: sessions connect, join, chat and disconnect in a loop for `--duration`,
//! each group of them on a fresh connection per cycle; afterwards the server's VmRSS must come
//! back within 10% of its pre-churn value. Its sessions live one cycle each, so it keeps its own
//! totals ([`crate::shared::ChurnTotals`]) instead of per-session tallies.

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
    cli::{CHURN_CYCLE_SLACK, Params},
    client::{REQUEST_QUEUE, connect_from, error_code, source_for, truncate},
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

/// Sessions are split into `conns` groups; each group repeatedly dials a fresh connection, runs
/// one cycle (open, JOIN, chat, close, drain) for all its sessions at once, and hangs up. Then the
/// server's VmRSS is watched for up to `settle` to come back within 10% of its pre-churn value.
pub async fn churn(shared: &Arc<Shared>) -> anyhow::Result<()> {
    let p = &shared.params;
    let rss_start_kb = total_rss_kb(&p.server_pids);
    let start = Instant::now();
    let end = start + p.duration;
    let mut groups = JoinSet::new();
    for group in 0..p.conns {
        let members: Vec<usize> = (group..p.sessions).step_by(p.conns).collect();
        let uri = p.server_for_conn(group).to_owned();
        groups.spawn(churn_group(shared.clone(), members, uri, end));
    }

    shared
        .progress
        .stage("churn", p.duration.as_millis() as u64);
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
    outcome?;

    let Some(start_kb) = rss_start_kb else {
        shared.note("churn: pass --server-pid to check that the server's RSS comes back");
        return Ok(());
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
    Ok(())
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
