//! `--probe`: hostile clients against a running server, each beside an observer session that
//! PINGs every 100 ms, then a fresh client that must still be served. What each reports is what
//! the server's abuse limits promise (README, Security and Reliability):
//! - `ping-flood`: one session sends PINGs as fast as the transport lets it for the window; the
//!   server's CPU over the window shows whether the request budget holds the flood back;
//! - `silent-sockets`: N TCP connections that never send a byte; when the server closes each
//!   (its handshake timeout) and the CPU it spends meanwhile;
//! - `one-user`: sessions of one user name until the server refuses one (its per-user cap);
//! - `one-ip`: sessions of distinct names from this one address until refused (its per-IP cap).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use anyhow::{Context as _, bail};
use chatrooms::proto::{Kind, Message, chat_service_client::ChatServiceClient};
use clap::ValueEnum;
use serde_json::{Value, json};
use tokio::{
    io::AsyncReadExt,
    net::TcpStream,
    sync::{mpsc, oneshot, watch},
    task::JoinSet,
    time::{self, Instant},
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Streaming, transport::Channel};

use crate::{client::connect, probe::apart, proc::cpu_seconds, stats::round, wire::ping_request};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Probe {
    PingFlood,
    SilentSockets,
    OneUser,
    OneIp,
}

impl Probe {
    fn name(self) -> &'static str {
        match self {
            Probe::PingFlood => "ping-flood",
            Probe::SilentSockets => "silent-sockets",
            Probe::OneUser => "one-user",
            Probe::OneIp => "one-ip",
        }
    }

    /// What `--probe-count` means for the probe when not given.
    pub fn default_count(self) -> usize {
        match self {
            Probe::PingFlood => 300_000,
            Probe::SilentSockets => 2_000,
            Probe::OneUser => 1_000,
            Probe::OneIp => 25_000,
        }
    }
}

/// Observer PINGs: one every [`OBSERVE_EVERY`]; a PONG later than [`MISSED_AFTER`] is missed.
const OBSERVE_EVERY: Duration = Duration::from_millis(100);
const MISSED_AFTER: Duration = Duration::from_secs(1);
/// Streams per connection for the sessions probes (the server's default `max_concurrent_streams`
/// is 1,024).
const STREAMS_PER_CONN: usize = 1_000;
/// Streams opened at once by the sessions probes.
const OPENING_AT_ONCE: usize = 128;
/// Bound on any single reply the probes wait for.
const REPLY_WAIT: Duration = Duration::from_secs(10);

pub struct Plan {
    pub probe: Probe,
    pub server: String,
    pub count: usize,
    /// How long the flood lasts, or how long closed sockets are waited for.
    pub window: Duration,
    pub server_pid: Option<u32>,
}

/// Runs the probe and returns its report (one JSON object).
pub async fn run(plan: &Plan) -> anyhow::Result<Value> {
    let observer = Observer::start(&plan.server).await?;
    let cpu_before = server_cpu(plan);
    let started = Instant::now();
    let mut report = match plan.probe {
        Probe::PingFlood => ping_flood(plan).await?,
        Probe::SilentSockets => silent_sockets(plan).await?,
        Probe::OneUser => sessions_until_refused(plan, |_| "probe-user".to_owned()).await?,
        Probe::OneIp => sessions_until_refused(plan, |i| format!("probe-{i}")).await?,
    };
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = server_cpu(plan)
        .zip(cpu_before)
        .map(|(after, before)| round(after - before, 2));
    let observed = observer.stop().await;
    let fresh = fresh_client_served(&plan.server).await;
    let extra = json!({
        "probe": plan.probe.name(),
        "count": plan.count,
        "elapsed_s": round(elapsed, 2),
        "server_cpu_s": cpu,
        "observer": observed,
        "fresh_client_served": fresh,
    });
    if let (Value::Object(report), Value::Object(extra)) = (&mut report, extra) {
        report.extend(extra);
    }
    Ok(report)
}

fn server_cpu(plan: &Plan) -> Option<f64> {
    cpu_seconds(&plan.server_pid?.to_string())
}

async fn open(
    channel: Channel,
    user: &str,
) -> Result<(mpsc::Sender<Message>, Streaming<Message>), tonic::Status> {
    let (tx, rx) = mpsc::channel(64);
    let mut first = ping_request();
    first.user = user.to_owned();
    // unwrap-free: the receiver is alive, so sending into a fresh channel cannot fail.
    let _ = tx.try_send(first);
    let stream = ChatServiceClient::new(channel)
        .chat_stream(ReceiverStream::new(rx))
        .await?
        .into_inner();
    Ok((tx, stream))
}

/// The first reply of a stream: a PONG, or the status that ended it.
async fn first_reply(stream: &mut Streaming<Message>) -> Result<(), tonic::Status> {
    match time::timeout(REPLY_WAIT, stream.message()).await {
        Err(_) => Err(tonic::Status::deadline_exceeded("no reply in time")),
        Ok(Err(status)) => Err(status),
        Ok(Ok(None)) => Err(tonic::Status::unknown("stream ended without a status")),
        Ok(Ok(Some(reply))) if reply.kind == i32::from(Kind::Pong) => Ok(()),
        Ok(Ok(Some(reply))) => Err(tonic::Status::unknown(format!(
            "expected PONG, got kind {} {}",
            reply.kind, reply.code
        ))),
    }
}

/// The probe's observer, on a thread and runtime of its own (`probe::apart`), so that its PONGs
/// time the server rather than the generator's own backlog.
struct Observer {
    stop: watch::Sender<bool>,
    result: oneshot::Receiver<Value>,
}

impl Observer {
    async fn start(server: &str) -> anyhow::Result<Observer> {
        let (stop, mut stopped) = watch::channel(false);
        let (joined_tx, joined) = oneshot::channel::<anyhow::Result<()>>();
        let server = server.to_owned();
        let result = apart("probe-observer", async move {
            let opened = async {
                let channel = connect(&server).await?;
                let (tx, mut stream) = open(channel, "probe-observer")
                    .await
                    .context("observer refused")?;
                first_reply(&mut stream)
                    .await
                    .context("observer not answered")?;
                anyhow::Ok((tx, stream))
            };
            let (tx, mut stream) = match opened.await {
                Ok(opened) => {
                    let _ = joined_tx.send(Ok(()));
                    opened
                }
                Err(error) => {
                    let _ = joined_tx.send(Err(error));
                    return Value::Null;
                }
            };
            let (mut pings, mut missed, mut worst) = (0u64, 0u64, Duration::ZERO);
            let mut tick = time::interval(OBSERVE_EVERY);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => break,
                }
                let sent = Instant::now();
                pings += 1;
                if tx.send(ping_request()).await.is_err() {
                    missed += 1;
                    break;
                }
                match time::timeout(MISSED_AFTER, stream.message()).await {
                    Ok(Ok(Some(_))) => worst = worst.max(sent.elapsed()),
                    _ => {
                        missed += 1;
                        break;
                    }
                }
            }
            json!({
                "pings": pings,
                "missed": missed,
                "worst_pong_ms": round(worst.as_secs_f64() * 1e3, 1),
            })
        })?;
        joined
            .await
            .context("the observer's thread ended before joining")??;
        Ok(Observer { stop, result })
    }

    async fn stop(self) -> Value {
        let _ = self.stop.send(true);
        self.result.await.unwrap_or(Value::Null)
    }
}

async fn fresh_client_served(server: &str) -> bool {
    let Ok(channel) = connect(server).await else {
        return false;
    };
    match open(channel, "probe-fresh").await {
        Ok((_tx, mut stream)) => first_reply(&mut stream).await.is_ok(),
        Err(_) => false,
    }
}

/// One session on its own connection sends up to `count` PINGs for the window while a reader
/// counts PONGs; the transport's flow control decides how many the client gets to send.
async fn ping_flood(plan: &Plan) -> anyhow::Result<Value> {
    let channel = connect(&plan.server).await?;
    let (tx, mut stream) = open(channel, "probe-flood").await?;
    first_reply(&mut stream).await?;
    let pongs = Arc::new(AtomicU64::new(0));
    let counted = pongs.clone();
    let reader = tokio::spawn(async move {
        while let Ok(Some(_)) = stream.message().await {
            counted.fetch_add(1, Relaxed);
        }
    });
    let deadline = Instant::now() + plan.window;
    let mut sent = 0u64;
    while sent < plan.count as u64 {
        match time::timeout_at(deadline, tx.send(ping_request())).await {
            Ok(Ok(())) => sent += 1,
            _ => break,
        }
    }
    time::sleep_until(deadline).await;
    let answered = pongs.load(Relaxed);
    drop(tx);
    reader.abort();
    Ok(json!({ "pings_sent": sent, "pongs_in_window": answered }))
}

/// Opens `count` sockets that never send a byte and waits (at most the window) for the server
/// to close each; reports when the last one closed.
async fn silent_sockets(plan: &Plan) -> anyhow::Result<Value> {
    let host_port = plan.server.trim_start_matches("http://");
    let addr: SocketAddr = tokio::net::lookup_host(host_port)
        .await?
        .next()
        .context("server address does not resolve")?;
    let started = Instant::now();
    let mut sockets = JoinSet::new();
    for _ in 0..plan.count {
        let mut socket = TcpStream::connect(addr).await?;
        sockets.spawn(async move {
            let mut byte = [0u8; 1];
            // Any read that ends (EOF, reset) means the server closed it.
            let _ = socket.read(&mut byte).await;
            started.elapsed()
        });
    }
    let opened = started.elapsed();
    let (mut closed, mut last) = (0usize, Duration::ZERO);
    let waited = time::timeout(plan.window, async {
        while let Some(done) = sockets.join_next().await {
            if let Ok(at) = done {
                closed += 1;
                last = last.max(at);
            }
        }
    })
    .await;
    sockets.abort_all();
    Ok(json!({
        "opened_in_s": round(opened.as_secs_f64(), 2),
        "closed": closed,
        "still_open": plan.count - closed,
        "all_closed": waited.is_ok(),
        "last_closed_after_s": round(last.as_secs_f64(), 2),
    }))
}

/// Opens sessions named by `user_of(i)` until the server refuses one or `count` are open; each
/// must answer its first PING. Every admitted session is held until the end.
async fn sessions_until_refused(
    plan: &Plan,
    user_of: impl Fn(usize) -> String,
) -> anyhow::Result<Value> {
    let conns = plan.count.div_ceil(STREAMS_PER_CONN).max(1);
    let mut channels = Vec::with_capacity(conns);
    for _ in 0..conns {
        channels.push(connect(&plan.server).await?);
    }
    let mut held = Vec::new();
    let mut refusal: Option<tonic::Status> = None;
    let mut next = 0;
    while next < plan.count && refusal.is_none() {
        let batch: Vec<usize> = (next..(next + OPENING_AT_ONCE).min(plan.count)).collect();
        next += batch.len();
        let mut opening = JoinSet::new();
        for i in batch {
            let channel = channels[i / STREAMS_PER_CONN].clone();
            let user = user_of(i);
            opening.spawn(async move {
                let (tx, mut stream) = open(channel, &user).await?;
                first_reply(&mut stream).await?;
                Ok::<_, tonic::Status>((tx, stream))
            });
        }
        while let Some(done) = opening.join_next().await {
            match done? {
                Ok(session) => held.push(session),
                Err(status) if refusal.is_none() => refusal = Some(status),
                Err(_) => {}
            }
        }
    }
    if let Some(status) = &refusal
        && status.code() != Code::ResourceExhausted
    {
        bail!(
            "a session failed otherwise than by a cap: {:?} {}",
            status.code(),
            status.message()
        );
    }
    let admitted = held.len();
    drop(held);
    Ok(json!({
        "admitted": admitted,
        "refused_with": refusal.as_ref().map(|s| s.message().to_owned()),
    }))
}
