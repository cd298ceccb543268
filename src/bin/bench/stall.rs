//! `--scenario stall` (issue 11): N clients that stop reading, each alone in room
//! `bench-stall-<i>` with a sender of its own that floods distinct CHATs. The stalled clients
//! (raw HTTP/2, [`crate::stalled`]) share `--conns` connections; the senders read normally (tonic).
//! An observer PINGs every 100 ms throughout, the server's RSS is sampled before, during and 5 s
//! after the flood, its `/metrics` scraped before and after, and a fresh client must be served at
//! the end.
//!
//! Eviction is timed from the sender's side: when the server drops a slow consumer it tells the
//! other members at once with a LEAVE presence, so the instant the sender reads its stalled
//! member's LEAVE is the eviction as the clients can see it (late by the sender's own read lag).
//! The stalled client times the RST_STREAM as it arrives; the difference is eviction-to-reset.

use std::{
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use chatrooms::proto::{Kind, Message, chat_service_client::ChatServiceClient};
use serde_json::{Value, json};
use tokio::{
    sync::{Semaphore, mpsc, watch},
    task::JoinSet,
    time::{self, Instant},
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::{
    cli::{Params, StallMode, StallParams},
    client::{REQUEST_QUEUE, code_name, connect, describe_failure, is_transport_failure},
    probe::{Observer, fresh_client, scrape_or_note},
    proc::{status_kb, total_rss_kb},
    shared::{Shared, lock},
    stalled::{DRAIN_TIMEOUT, StalledConn, StalledStream, run_stalled},
    stats::round,
    window::POLL_INTERVAL,
    wire::{chat_request, join_as},
};

/// How often the server's RSS is read during and after the flood.
const RSS_SAMPLE: Duration = Duration::from_millis(50);
/// Streams opened at once (stalled and senders): bounds the start-up burst.
const OPENING_AT_ONCE: usize = 256;
/// The targets.
const PEAK_RSS_TARGET_KB: u64 = 1 << 20;
const RESET_TARGET: Duration = Duration::from_secs(1);
const RSS_BACK_FACTOR: f64 = 1.10;
const RSS_BACK_SLACK_KB: u64 = 20 * 1000;
/// Socket mode: how long the stalled clients' resets may take to arrive once they read again.
const RESET_WAIT: Duration = Duration::from_secs(3);

/// One room: its sender's view and its stalled client's.
#[derive(Default)]
struct StallRoom {
    sender_joined: AtomicBool,
    /// When the sender read its stalled member's LEAVE: the eviction as seen by a client.
    evicted_at: OnceLock<Instant>,
    posted: AtomicU64,
    /// How the sender's own stream ended, if it did before the end of the run.
    sender_end: OnceLock<String>,
    stalled: Arc<StalledStream>,
}

pub async fn stall(shared: &Arc<Shared>) -> anyhow::Result<()> {
    let p = &shared.params;
    // unwrap: Params sets `stall` in stall mode, the only mode that runs this
    let s = p.stall.as_ref().unwrap();
    let rooms: Arc<Vec<StallRoom>> =
        Arc::new((0..p.sessions).map(|_| StallRoom::default()).collect());
    let metrics_start = scrape_or_note(shared, "stall", "start").await;
    let rss_start_kb = total_rss_kb(&p.server_pids);
    record(shared, "stall_mode", json!(s.mode.name()));
    record(shared, "server_rss_start_kb", json!(rss_start_kb));

    let observer = Observer::start(p.server_for_conn(0), "bench-stall-observer").await?;

    // Senders first, so each stalled client's JOINED already lists its sender.
    shared.progress.stage("senders", p.sessions as u64);
    let requests = open_senders(shared, s, &rooms).await?;
    let senders_joined =
        wait_joined(shared, "senders", &rooms, |r| r.sender_joined.load(Relaxed)).await;
    record(shared, "senders_joined", json!(senders_joined));

    shared.progress.stage("stalled", p.sessions as u64);
    let (drain_tx, drain) = watch::channel(false);
    let (conns, mut stalled_tasks) = open_stalled(shared, s, &rooms, drain).await?;
    let stalled_joined = wait_joined(shared, "stalled", &rooms, |r| {
        r.stalled.joined.load(Relaxed)
    })
    .await;
    record(shared, "stalled_joined", json!(stalled_joined));
    shared.joined.store(stalled_joined as u64, Relaxed);

    let metrics_before = scrape_or_note(shared, "stall", "before the flood").await;
    let rss_before_kb = total_rss_kb(&p.server_pids);
    if s.mode == StallMode::Socket {
        for conn in &conns {
            conn.gate.close();
        }
    }

    // The flood: every sender at once, each until its stalled member is evicted, its
    // --flood-messages are out, or --duration is over.
    let flood_start = Instant::now();
    let cap = flood_start + p.duration;
    let mut floods = JoinSet::new();
    for (index, sender) in requests.iter().enumerate() {
        if rooms[index].sender_joined.load(Relaxed) && rooms[index].stalled.joined.load(Relaxed) {
            floods.spawn(flood(
                rooms.clone(),
                sender.clone(),
                index,
                p.room_name(index),
                p.size,
                s.flood_messages,
                cap,
            ));
        }
    }
    shared
        .progress
        .stage("flood", p.duration.as_millis() as u64);
    let mut rss_peak_kb = rss_before_kb;
    let mut sample = time::interval(RSS_SAMPLE);
    let mut capped = false;
    loop {
        tokio::select! {
            done = floods.join_next() => if done.is_none() { break },
            _ = sample.tick() => {
                rss_peak_kb = rss_peak_kb.max(total_rss_kb(&p.server_pids));
                let evicted = rooms.iter().filter(|r| r.evicted_at.get().is_some()).count();
                shared.progress.update(
                    flood_start.elapsed().as_millis() as u64,
                    format!("{evicted}/{} evicted, {} floods running", p.sessions, floods.len()),
                );
                if Instant::now() >= cap {
                    capped = true;
                    break;
                }
                shared.check_alive(0)?;
            }
        }
    }
    floods.abort_all();
    let flood_end = Instant::now();
    let rss_flood_end_kb = total_rss_kb(&p.server_pids);
    if capped {
        shared.note(format!(
            "stall: the flood was cut at --duration {} s",
            p.duration.as_secs_f64()
        ));
    }

    // 5 s (--settle) after the flood: what the server holds once it is over.
    shared.progress.stage("settle", p.settle.as_millis() as u64);
    let settle_end = flood_end + p.settle;
    while Instant::now() < settle_end {
        rss_peak_kb = rss_peak_kb.max(total_rss_kb(&p.server_pids));
        shared.check_alive(0)?;
        time::sleep(RSS_SAMPLE.min(settle_end.saturating_duration_since(Instant::now()))).await;
    }
    let rss_after_kb = total_rss_kb(&p.server_pids);

    let reads_resumed = Instant::now();
    if s.mode == StallMode::Socket {
        for conn in &conns {
            conn.gate.open();
        }
        let until = reads_resumed + RESET_WAIT;
        while Instant::now() < until && rooms.iter().any(|r| r.stalled.end.get().is_none()) {
            time::sleep(POLL_INTERVAL).await;
        }
    }
    let metrics_after = scrape_or_note(shared, "stall", "after the flood").await;
    // What was not reset is read to its end now, so it shows how (or whether) it ended.
    let _ = drain_tx.send(true);
    let drained = time::timeout(DRAIN_TIMEOUT + Duration::from_secs(1), async {
        while stalled_tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        stalled_tasks.abort_all();
    }
    let observer = observer.finish().await;
    let fresh = fresh_client(p.server_for_conn(0), "bench-stall-fresh").await;

    // The report.
    let timing = Timing::of(&rooms, flood_start, reads_resumed, s.mode);
    let posted: u64 = rooms.iter().map(|r| r.posted.load(Relaxed)).sum();
    let slow_consumer = metrics_after
        .as_ref()
        .zip(metrics_start.as_ref())
        .map(|(after, start)| {
            after
                .ended("slow_consumer")
                .saturating_sub(start.ended("slow_consumer"))
        });
    let rss_back_limit_kb =
        rss_before_kb.map(|kb| (kb as f64 * RSS_BACK_FACTOR) as u64 + RSS_BACK_SLACK_KB);
    let mut ends = std::collections::BTreeMap::<String, u64>::new();
    for room in rooms.iter() {
        let end = room.stalled.end.get().map_or("(none)", String::as_str);
        *ends.entry(end.to_owned()).or_default() += 1;
    }
    let mut sender_ends = std::collections::BTreeMap::<String, u64>::new();
    for end in rooms.iter().filter_map(|r| r.sender_end.get()) {
        *sender_ends.entry(end.clone()).or_default() += 1;
    }
    let targets = json!({
        "peak_rss_le_1gib": rss_peak_kb.map(|kb| kb <= PEAK_RSS_TARGET_KB),
        "reset_within_1s_of_eviction": (s.mode == StallMode::Window)
            .then_some(timing.within_1s == stalled_joined && stalled_joined > 0),
        "rss_back_after_5s": rss_after_kb.zip(rss_back_limit_kb).map(|(after, limit)| after <= limit),
        "slow_consumer_counted_n": slow_consumer.map(|n| n == p.sessions as u64),
        "observer_missed_none": observer.missed == 0 && observer.pings > 0,
        "fresh_client_served": fresh.served,
    });
    let fields = [
        ("stall_window", json!(s.window)),
        ("flood_messages", json!(s.flood_messages)),
        ("sender_conns", json!(s.sender_conns)),
        ("settle_s", json!(p.settle.as_secs_f64())),
        (
            "flood_s",
            json!(round((flood_end - flood_start).as_secs_f64(), 2)),
        ),
        ("flood_posted", json!(posted)),
        (
            "flood_mb",
            json!(round(posted as f64 * p.size as f64 / 1e6, 1)),
        ),
        ("server_rss_before_flood_kb", json!(rss_before_kb)),
        ("server_rss_peak_kb", json!(rss_peak_kb)),
        ("server_rss_flood_end_kb", json!(rss_flood_end_kb)),
        ("server_rss_after_kb", json!(rss_after_kb)),
        ("server_rss_back_limit_kb", json!(rss_back_limit_kb)),
        (
            "server_vmhwm_kb",
            json!(
                p.server_pids
                    .first()
                    .and_then(|pid| status_kb(&pid.to_string(), "VmHWM"))
            ),
        ),
        ("evicted_seen", json!(timing.evicted)),
        ("reset_seen", json!(timing.reset)),
        ("reset_within_1s", json!(timing.within_1s)),
        ("eviction_to_reset_ms", timing.eviction_to_reset),
        ("flood_to_eviction_ms", timing.flood_to_eviction),
        ("flood_to_reset_ms", timing.flood_to_reset),
        ("resume_to_reset_ms", timing.resume_to_reset),
        ("stalled_ends", json!(ends)),
        ("sender_ends", json!(sender_ends)),
        ("metrics_start", json!(metrics_start)),
        ("metrics_before_flood", json!(metrics_before)),
        ("metrics_after", json!(metrics_after)),
        ("slow_consumer_counted", json!(slow_consumer)),
        ("observer", json!(observer)),
        ("fresh_client", json!(fresh)),
        ("targets", targets),
    ];
    for (key, value) in fields {
        record(shared, key, value);
    }
    // The senders and stalled connections close with the process; marked so their ends are ours.
    shared.stopping.store(true, Relaxed);
    drop(requests);
    drop(conns);
    Ok(())
}

/// Eviction and reset instants of every room, summed up.
struct Timing {
    evicted: usize,
    reset: usize,
    within_1s: usize,
    eviction_to_reset: Value,
    flood_to_eviction: Value,
    flood_to_reset: Value,
    resume_to_reset: Value,
}

impl Timing {
    fn of(rooms: &[StallRoom], flood_start: Instant, resumed: Instant, mode: StallMode) -> Timing {
        let ms = |from: Instant, to: Instant| {
            // Signed: a sender that reads its LEAVE late can see it after the reset.
            if to >= from {
                (to - from).as_secs_f64() * 1e3
            } else {
                -((from - to).as_secs_f64() * 1e3)
            }
        };
        let resets = || {
            rooms.iter().filter_map(|r| {
                let at = *r.stalled.ended_at.get()?;
                r.stalled
                    .end
                    .get()
                    .is_some_and(|end| end.starts_with("RST_STREAM"))
                    .then_some((r, at))
            })
        };
        let eviction_to_reset: Vec<f64> = resets()
            .filter_map(|(r, at)| Some(ms(*r.evicted_at.get()?, at)))
            .collect();
        let within_1s = eviction_to_reset
            .iter()
            .filter(|&&d| d <= RESET_TARGET.as_secs_f64() * 1e3)
            .count();
        let window = mode == StallMode::Window;
        Timing {
            evicted: rooms
                .iter()
                .filter(|r| r.evicted_at.get().is_some())
                .count(),
            reset: resets().count(),
            within_1s,
            eviction_to_reset: summary(if window {
                eviction_to_reset
            } else {
                Vec::new()
            }),
            flood_to_eviction: summary(
                rooms
                    .iter()
                    .filter_map(|r| Some(ms(flood_start, *r.evicted_at.get()?)))
                    .collect(),
            ),
            flood_to_reset: summary(if window {
                resets().map(|(_, at)| ms(flood_start, at)).collect()
            } else {
                Vec::new()
            }),
            resume_to_reset: summary(if window {
                Vec::new()
            } else {
                resets().map(|(_, at)| ms(resumed, at)).collect()
            }),
        }
    }
}

/// Count, min, p50, p99 and max of `values` (ms), or null when there are none.
fn summary(mut values: Vec<f64>) -> Value {
    if values.is_empty() {
        return Value::Null;
    }
    values.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let index = ((values.len() as f64 * q).ceil() as usize).clamp(1, values.len()) - 1;
        round(values[index], 1)
    };
    json!({
        "n": values.len(),
        "min": round(values[0], 1),
        "p50": at(0.5),
        "p99": at(0.99),
        "max": round(values[values.len() - 1], 1),
    })
}

/// Dials the senders' connections and opens every sender's stream with its JOIN; each stream's
/// reader records its JOINED, its stalled member's LEAVE, and how it ended.
async fn open_senders(
    shared: &Arc<Shared>,
    s: &StallParams,
    rooms: &Arc<Vec<StallRoom>>,
) -> anyhow::Result<Vec<mpsc::Sender<Message>>> {
    let p = &shared.params;
    let mut channels: Vec<Channel> = Vec::with_capacity(s.sender_conns);
    for conn in 0..s.sender_conns {
        channels.push(connect(p.server_for_conn(conn)).await?);
    }
    let opening = Arc::new(Semaphore::new(OPENING_AT_ONCE));
    let mut senders = Vec::with_capacity(p.sessions);
    for index in 0..p.sessions {
        let (requests, requests_rx) = mpsc::channel(REQUEST_QUEUE);
        // unwrap: a new channel has room for its first message
        requests
            .try_send(join_as(&format!("flood-{index}"), &p.room_name(index)))
            .unwrap();
        senders.push(requests);
        let client = ChatServiceClient::new(channels[index % channels.len()].clone());
        tokio::spawn(read_sender(
            shared.clone(),
            rooms.clone(),
            index,
            client,
            requests_rx,
            opening.clone(),
        ));
    }
    Ok(senders)
}

async fn read_sender(
    shared: Arc<Shared>,
    rooms: Arc<Vec<StallRoom>>,
    index: usize,
    mut client: ChatServiceClient<Channel>,
    requests_rx: mpsc::Receiver<Message>,
    opening: Arc<Semaphore>,
) {
    let room = &rooms[index];
    let stalled_user = format!("stall-{index}");
    let turn = opening.acquire().await;
    let opened = client.chat_stream(ReceiverStream::new(requests_rx)).await;
    drop(turn);
    let mut replies = match opened {
        Ok(response) => response.into_inner(),
        Err(status) => {
            let _ = room
                .sender_end
                .set(format!("refused: {}", code_name(status.code())));
            return;
        }
    };
    let end = loop {
        match replies.message().await {
            Ok(Some(reply)) => match reply.kind() {
                Kind::Joined => room.sender_joined.store(true, Relaxed),
                Kind::Leave if reply.user == stalled_user => {
                    let _ = room.evicted_at.set(Instant::now());
                }
                _ => {}
            },
            Ok(None) => break "OK".to_owned(),
            Err(status) if is_transport_failure(&status) => break describe_failure(&status),
            Err(status) => break code_name(status.code()).to_owned(),
        }
    };
    if !shared.stopping.load(Relaxed) {
        let _ = room.sender_end.set(end);
    }
}

/// Dials the stalled clients' connections (session i on connection i % conns) and starts every
/// stalled stream.
async fn open_stalled(
    shared: &Arc<Shared>,
    s: &StallParams,
    rooms: &Arc<Vec<StallRoom>>,
    drain: watch::Receiver<bool>,
) -> anyhow::Result<(Vec<Arc<StalledConn>>, JoinSet<()>)> {
    let p = &shared.params;
    let mut conns = Vec::with_capacity(p.conns);
    for conn in 0..p.conns {
        let uri = p.server_for_conn(conn);
        let host_port = uri.strip_prefix("http://").unwrap_or(uri);
        let streams = (conn..p.sessions).step_by(p.conns).count();
        conns.push(Arc::new(
            crate::stalled::connect(host_port, s.mode, s.window, streams).await?,
        ));
    }
    let opening = Arc::new(Semaphore::new(OPENING_AT_ONCE));
    let mut tasks = JoinSet::new();
    for (index, room) in rooms.iter().enumerate() {
        tasks.spawn(run_stalled(
            conns[p.conn_of(index)].clone(),
            format!("stall-{index}"),
            p.room_name(index),
            room.stalled.clone(),
            opening.clone(),
            drain.clone(),
        ));
    }
    Ok((conns, tasks))
}

/// Waits (bounded by --join-timeout) until every room's `joined` holds; returns how many do.
async fn wait_joined(
    shared: &Shared,
    what: &str,
    rooms: &[StallRoom],
    joined: impl Fn(&StallRoom) -> bool,
) -> usize {
    let p: &Params = &shared.params;
    let deadline = Instant::now() + p.join_timeout;
    loop {
        let count = rooms.iter().filter(|r| joined(r)).count();
        shared.progress.update(
            count as u64,
            format!("{count}/{} {what} joined", p.sessions),
        );
        if count == rooms.len() || Instant::now() >= deadline {
            if count < rooms.len() {
                shared.note(format!(
                    "stall: only {count}/{} {what} joined within the join timeout",
                    rooms.len()
                ));
            }
            return count;
        }
        time::sleep(POLL_INTERVAL).await;
    }
}

/// One room's flood: distinct CHATs (`flood <room> #<k>` padded to `size`) as fast as the server
/// takes them, until the stalled member is evicted, `max` are out, or `cap`.
async fn flood(
    rooms: Arc<Vec<StallRoom>>,
    requests: mpsc::Sender<Message>,
    index: usize,
    name: String,
    size: usize,
    max: u64,
    cap: Instant,
) {
    let room = &rooms[index];
    for k in 0..max {
        if room.evicted_at.get().is_some() {
            return;
        }
        let mut content = format!("flood {index} #{k} ");
        content.extend(std::iter::repeat_n('x', size.saturating_sub(content.len())));
        match time::timeout_at(cap, requests.send(chat_request(&name, content))).await {
            Ok(Ok(())) => room.posted.fetch_add(1, Relaxed),
            _ => return,
        };
    }
}

fn record(shared: &Shared, key: &str, value: Value) {
    lock(&shared.outcome).extra.insert(key.into(), value);
}
