//! The stall scenario's outside views of the server: an observer session that PINGs every
//! 100 ms throughout and times each PONG, a fresh client at the end that must be served, and a
//! scrape of the server's Prometheus endpoint for its session gauge and end reasons (which churn
//! rounds use too).

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, bail};
use chatrooms::proto::{Kind, Message, chat_service_client::ChatServiceClient};
use serde::Serialize;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
    sync::{mpsc, oneshot, watch},
    time::{self, Instant, MissedTickBehavior},
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use crate::{
    client::{REQUEST_QUEUE, connect},
    shared::{Shared, lock},
    stats::round,
    wire::{join_as, ping_with_ref},
};

/// The observer's PING period.
const PING_INTERVAL: Duration = Duration::from_millis(100);
/// A PONG later than this, or none, is a missed PONG (the bar).
const MISSED_AFTER: Duration = Duration::from_secs(1);
/// A PONG later than one PING period is late (but not missed).
const LATE_AFTER: Duration = PING_INTERVAL;
/// Bound on joining (observer, fresh client) and on the fresh client's PONG.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on one metrics scrape.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest metrics page read; the server's is a few KB.
const SCRAPE_MAX_BYTES: u64 = 4 << 20;

/// One PING: when it went out, and its PONG's round trip once it came.
struct Ping {
    sent: Instant,
    rtt: Option<Duration>,
}

/// The observer session, PINGing until [`Observer::finish`]. It runs on a thread and a runtime
/// of its own, connection included: in the generator's runtime its PINGs and PONGs queued
/// behind the tasks of thousands of flooding and stalled streams, so that under a flood it
/// timed the generator's own backlog as much as the server.
pub struct Observer {
    pings: Arc<Mutex<Vec<Ping>>>,
    stop: watch::Sender<bool>,
    /// Ready once the last PINGs had their second, as the observer's runtime (and connection)
    /// goes.
    done: oneshot::Receiver<()>,
    ended: Arc<Mutex<Option<String>>>,
}

/// What the observer saw.
#[derive(Debug, Serialize)]
pub struct ObserverStats {
    pub pings: usize,
    pub answered_in_1s: usize,
    /// Answered after more than 1 s, or never.
    pub missed: usize,
    /// Answered after more than one PING period (100 ms) but within 1 s.
    pub late: usize,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// How its stream ended, if it did during the run.
    pub ended: Option<String>,
}

impl Observer {
    /// Connects its own connection, JOINs `room` and starts PINGing.
    pub async fn start(uri: &str, room: &str) -> anyhow::Result<Observer> {
        let pings = Arc::new(Mutex::new(Vec::<Ping>::new()));
        let ended = Arc::new(Mutex::new(None));
        let (stop, stopped) = watch::channel(false);
        let (joined_tx, joined) = oneshot::channel::<anyhow::Result<()>>();
        let (uri, room) = (uri.to_owned(), room.to_owned());
        let (thread_pings, thread_ended) = (pings.clone(), ended.clone());
        let done = apart("observer", async move {
            let (requests, replies) = match open_joined(&uri, "stall-observer", &room).await {
                Ok(opened) => opened,
                Err(error) => {
                    let _ = joined_tx.send(Err(error));
                    return;
                }
            };
            let _ = joined_tx.send(Ok(()));
            tokio::spawn(read_pongs(replies, thread_pings.clone(), thread_ended));
            ping_until(stopped, &requests, &thread_pings).await;
            // The last PINGs get their full second.
            time::sleep(MISSED_AFTER + PING_INTERVAL).await;
        })?;
        joined
            .await
            .context("the observer's thread ended before joining")??;
        Ok(Observer {
            pings,
            stop,
            done,
            ended,
        })
    }

    /// Stops PINGing, gives the last PINGs their full second, and sums up.
    pub async fn finish(self) -> ObserverStats {
        let _ = self.stop.send(true);
        // Bounded: a PING still unanswered then counts as missed anyway.
        let _ = time::timeout(MISSED_AFTER + PING_INTERVAL + CHECK_TIMEOUT, self.done).await;
        let pings = lock(&self.pings);
        let mut rtts: Vec<Duration> = pings.iter().filter_map(|p| p.rtt).collect();
        rtts.sort_unstable();
        let answered_in_1s = rtts.iter().filter(|&&rtt| rtt <= MISSED_AFTER).count();
        let quantile = |q: f64| {
            let index = ((rtts.len() as f64 * q).ceil() as usize).clamp(1, rtts.len().max(1)) - 1;
            rtts.get(index).map(|rtt| round(rtt.as_secs_f64() * 1e3, 2))
        };
        ObserverStats {
            pings: pings.len(),
            answered_in_1s,
            missed: pings.len() - answered_in_1s,
            late: rtts
                .iter()
                .filter(|&&rtt| rtt > LATE_AFTER && rtt <= MISSED_AFTER)
                .count(),
            p50_ms: quantile(0.5),
            p99_ms: quantile(0.99),
            max_ms: rtts.last().map(|rtt| round(rtt.as_secs_f64() * 1e3, 2)),
            ended: lock(&self.ended).clone(),
        }
    }
}

/// Runs `work` on a thread of its own, with a runtime of its own for everything it spawns and
/// connects (an observer must not wait behind the generator's own tasks); its output comes
/// through the receiver.
pub fn apart<T: Send + 'static>(
    name: &str,
    work: impl Future<Output = T> + Send + 'static,
) -> anyhow::Result<oneshot::Receiver<T>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (output_tx, output) = oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let _ = output_tx.send(runtime.block_on(work));
        })?;
    Ok(output)
}

/// Times each PONG against its PING (by ref) until the stream ends.
async fn read_pongs(
    mut replies: Streaming<Message>,
    pings: Arc<Mutex<Vec<Ping>>>,
    ended: Arc<Mutex<Option<String>>>,
) {
    let end = loop {
        match replies.message().await {
            Ok(Some(reply)) if reply.kind() == Kind::Pong => {
                let Ok(index) = reply.r#ref.parse::<usize>() else {
                    continue;
                };
                if let Some(ping) = lock(&pings).get_mut(index) {
                    ping.rtt.get_or_insert(ping.sent.elapsed());
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => break "ended cleanly".to_owned(),
            Err(status) => break format!("{status}"),
        };
    };
    *lock(&ended) = Some(end);
}

/// PINGs every [`PING_INTERVAL`] until `stopped` says so.
async fn ping_until(
    mut stopped: watch::Receiver<bool>,
    requests: &mpsc::Sender<Message>,
    pings: &Mutex<Vec<Ping>>,
) {
    let mut ticks = time::interval(PING_INTERVAL);
    // After a stall of the generator itself, go on from now rather than burst.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stopped.wait_for(|stop| *stop) => return,
        }
        let index = {
            let mut pings = lock(pings);
            pings.push(Ping {
                sent: Instant::now(),
                rtt: None,
            });
            pings.len() - 1
        };
        // A full queue means the server is not reading the observer: the PING counts as sent
        // and will show as missed.
        let _ = requests.try_send(ping_with_ref(index.to_string()));
    }
}

/// A new connection and stream for `user`, JOINed to `room` (bounded by [`CHECK_TIMEOUT`]).
async fn open_joined(
    uri: &str,
    user: &str,
    room: &str,
) -> anyhow::Result<(mpsc::Sender<Message>, Streaming<Message>)> {
    let channel = connect(uri).await?;
    let (requests, requests_rx) = mpsc::channel(REQUEST_QUEUE);
    requests.try_send(join_as(user, room))?;
    let joined = async {
        let mut replies = ChatServiceClient::new(channel)
            .chat_stream(ReceiverStream::new(requests_rx))
            .await?
            .into_inner();
        loop {
            match replies.message().await? {
                Some(reply) if reply.kind() == Kind::Joined => return Ok(replies),
                Some(reply) if reply.kind() == Kind::Error => {
                    bail!("JOIN refused: {} {}", reply.code, reply.content)
                }
                Some(_) => {}
                None => bail!("the stream ended before JOINED"),
            }
        }
    };
    let replies = time::timeout(CHECK_TIMEOUT, joined)
        .await
        .with_context(|| format!("{user}: no JOINED within {CHECK_TIMEOUT:?}"))??;
    Ok((requests, replies))
}

/// Whether a brand-new client is served: its JOINED and a PONG, and how long that took.
#[derive(Debug, Serialize)]
pub struct FreshCheck {
    pub served: bool,
    pub ms: Option<f64>,
    pub error: Option<String>,
}

pub async fn fresh_client(uri: &str, room: &str) -> FreshCheck {
    let started = Instant::now();
    let served = async {
        let (requests, mut replies) = open_joined(uri, "stall-fresh", room).await?;
        requests.send(ping_with_ref("fresh".into())).await?;
        time::timeout(CHECK_TIMEOUT, async {
            loop {
                match replies.message().await? {
                    Some(reply) if reply.kind() == Kind::Pong => return Ok(()),
                    Some(_) => {}
                    None => bail!("the stream ended before the PONG"),
                }
            }
        })
        .await
        .context("no PONG within 5 s")?
    };
    match served.await {
        Ok(()) => FreshCheck {
            served: true,
            ms: Some(round(started.elapsed().as_secs_f64() * 1e3, 1)),
            error: None,
        },
        Err(error) => FreshCheck {
            served: false,
            ms: None,
            error: Some(format!("{error:#}")),
        },
    }
}

/// The figures of one scrape of the server's `/metrics`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Scrape {
    pub sessions_open: Option<u64>,
    /// `chat_sessions_ended_total` by reason.
    pub sessions_ended: BTreeMap<String, u64>,
}

impl Scrape {
    pub fn ended(&self, reason: &str) -> u64 {
        self.sessions_ended.get(reason).copied().unwrap_or(0)
    }
}

/// Scrapes `--metrics-url`, if there is one; a failure is noted under `scenario` and `when`.
pub async fn scrape_or_note(shared: &Shared, scenario: &str, when: &str) -> Option<Scrape> {
    let (host_port, path) = shared.params.metrics.as_ref()?;
    match scrape(host_port, path).await {
        Ok(scrape) => Some(scrape),
        Err(error) => {
            shared.note(format!("{scenario}: metrics {when}: {error:#}"));
            None
        }
    }
}

/// GETs `path` from `host_port` (HTTP/1.0, so the body is plain, never chunked) and picks out the
/// session series.
pub async fn scrape(host_port: &str, path: &str) -> anyhow::Result<Scrape> {
    let fetch = async {
        let mut tcp = TcpStream::connect(host_port).await?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {host_port}\r\n\r\n");
        tcp.write_all(request.as_bytes()).await?;
        let mut page = Vec::new();
        tcp.take(SCRAPE_MAX_BYTES).read_to_end(&mut page).await?;
        Ok::<_, std::io::Error>(page)
    };
    let page = time::timeout(SCRAPE_TIMEOUT, fetch)
        .await
        .with_context(|| format!("scraping http://{host_port}{path} timed out"))?
        .with_context(|| format!("cannot scrape http://{host_port}{path}"))?;
    let page = String::from_utf8_lossy(&page);
    let (head, body) = page
        .split_once("\r\n\r\n")
        .context("the metrics answer has no HTTP header")?;
    if !head.starts_with("HTTP/1.") || head.split_whitespace().nth(1) != Some("200") {
        bail!(
            "the metrics endpoint answered {:?}",
            head.lines().next().unwrap_or("")
        );
    }
    Ok(parse_metrics(body))
}

fn parse_metrics(body: &str) -> Scrape {
    let mut scrape = Scrape::default();
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let mut fields = line.split_whitespace();
        let (Some(series), Some(Ok(value))) = (fields.next(), fields.next().map(str::parse::<f64>))
        else {
            continue;
        };
        // Counters and the session gauge are whole numbers, printed as floats by the exporter.
        let value = value.max(0.0) as u64;
        if series == "chat_sessions_open" {
            scrape.sessions_open = Some(value);
        } else if let Some(labels) = series.strip_prefix("chat_sessions_ended_total{")
            && let Some((_, rest)) = labels.split_once("reason=\"")
            && let Some((reason, _)) = rest.split_once('"')
        {
            *scrape.sessions_ended.entry(reason.to_owned()).or_default() += value;
        }
    }
    scrape
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_series_are_picked_out() {
        let page = "# TYPE chat_sessions_open gauge\nchat_sessions_open 2001\n\
                    chat_sessions_ended_total{reason=\"slow_consumer\"} 2000\n\
                    chat_sessions_ended_total{reason=\"client_closed\"} 3\n\
                    chat_sessions_opened_total 4004\n";
        let scrape = parse_metrics(page);
        assert_eq!(scrape.sessions_open, Some(2001));
        assert_eq!(scrape.ended("slow_consumer"), 2000);
        assert_eq!(scrape.ended("client_closed"), 3);
        assert_eq!(scrape.ended("idle"), 0);
    }
}
