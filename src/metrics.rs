//! Every metric the server exports, named in one place, and the Prometheus text endpoint. Labels
//! never carry room or user names (unbounded cardinality): only ERROR codes and end reasons.
//! The recorder is process-wide; servers started in one process (tests) share it.

use std::{
    convert::Infallible,
    sync::{
        Arc, LazyLock, OnceLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::{net::TcpListener, sync::Semaphore};
use tracing::{debug, warn};

use crate::error::{ChatError, Fatal};

pub const SESSIONS_OPEN: &str = "chat_sessions_open";
pub const ROOMS_OPEN: &str = "chat_rooms_open";
pub const MESSAGES_RECEIVED: &str = "chat_messages_received_total";
pub const MESSAGES_DELIVERED: &str = "chat_messages_delivered_total";
pub const REQUESTS_REFUSED: &str = "chat_requests_refused_total";
pub const REQUESTS_THROTTLED: &str = "chat_requests_throttled_total";
pub const SESSIONS_ENDED: &str = "chat_sessions_ended_total";
pub const FANOUT_SECONDS: &str = "chat_fanout_seconds";
pub const HISTORY_BYTES: &str = "chat_history_bytes";
pub const RESENDS_DEDUPLICATED: &str = "chat_resends_deduplicated_total";

/// Fan-out time buckets: from a lone member (microseconds) to a 10,000-member room.
const FANOUT_BUCKETS: &[f64] = &[
    0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder (once per process) and returns its handle. Must run before
/// the first metric is touched, or the handles below stay no-ops.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(FANOUT_SECONDS.into()), FANOUT_BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            match builder.install_recorder() {
                Ok(handle) => {
                    describe();
                    register_all();
                    handle
                }
                Err(error) => {
                    warn!(%error, "another metrics recorder is installed; /metrics will be empty");
                    PrometheusBuilder::new().build_recorder().handle()
                }
            }
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(SESSIONS_OPEN, "Open chat streams.");
    describe_gauge!(ROOMS_OPEN, "Rooms with a running actor.");
    describe_gauge!(
        HISTORY_BYTES,
        metrics::Unit::Bytes,
        "Encoded bytes the rooms retain as history and in their dedup windows (memory engine)."
    );
    describe_counter!(
        RESENDS_DEDUPLICATED,
        "CHATs answered with the original ack of the same (user, room, ref) instead of posted again."
    );
    describe_counter!(MESSAGES_RECEIVED, "Requests read from client streams.");
    describe_counter!(
        MESSAGES_DELIVERED,
        "Messages handed to the transport for client streams."
    );
    describe_counter!(REQUESTS_REFUSED, "Requests answered with ERROR, by code.");
    describe_counter!(
        REQUESTS_THROTTLED,
        "Requests held back because their session had spent its request budget."
    );
    describe_counter!(SESSIONS_ENDED, "Sessions ended, by reason.");
    describe_histogram!(
        FANOUT_SECONDS,
        metrics::Unit::Seconds,
        "Time to fan one message out to a room."
    );
}

/// Registers every series the server exports, so a fresh server's scrape shows each of them at 0:
/// dashboards and `absent()` alerts need the series before the first event. Registering does not
/// change a value, so a second server in the same process (tests) keeps the counts so far.
fn register_all() {
    // Handles are registered, not set: the gauges' owners set them, and a value set here could
    // overwrite theirs.
    let _ = metrics::gauge!(SESSIONS_OPEN);
    let _ = metrics::gauge!(ROOMS_OPEN);
    let _ = metrics::gauge!(HISTORY_BYTES);
    metrics::counter!(MESSAGES_RECEIVED).increment(0);
    metrics::counter!(MESSAGES_DELIVERED).increment(0);
    metrics::counter!(REQUESTS_THROTTLED).increment(0);
    metrics::counter!(RESENDS_DEDUPLICATED).increment(0);
    let _ = metrics::histogram!(FANOUT_SECONDS);
    for code in ChatError::CODES {
        metrics::counter!(REQUESTS_REFUSED, "code" => *code).increment(0);
    }
    for reason in Fatal::REASONS {
        metrics::counter!(SESSIONS_ENDED, "reason" => *reason).increment(0);
    }
}

/// Handles of the unlabelled metrics, looked up once: the macros hash the key on every call.
pub struct Handles {
    pub sessions_open: Gauge,
    pub rooms_open: Gauge,
    /// Moved by increments, not set: every room's ring adds and removes its own bytes.
    pub history_bytes: Gauge,
    pub received: Counter,
    pub delivered: DeliveredCounter,
    pub throttled: Counter,
    pub resends_deduplicated: Counter,
    pub fanout: Histogram,
}

static HANDLES: LazyLock<Handles> = LazyLock::new(|| Handles {
    sessions_open: metrics::gauge!(SESSIONS_OPEN),
    rooms_open: metrics::gauge!(ROOMS_OPEN),
    history_bytes: metrics::gauge!(HISTORY_BYTES),
    received: metrics::counter!(MESSAGES_RECEIVED),
    delivered: DeliveredCounter::new(metrics::counter!(MESSAGES_DELIVERED)),
    throttled: metrics::counter!(REQUESTS_THROTTLED),
    resends_deduplicated: metrics::counter!(RESENDS_DEDUPLICATED),
    fanout: metrics::histogram!(FANOUT_SECONDS),
});

pub fn get() -> &'static Handles {
    &HANDLES
}

/// A counter that every actor thread bumps for each message it hands to the transport: one
/// shared atomic would move its cache line between the threads on every delivery (1.3 % of the
/// server's CPU at 200,000 deliveries a second, 40 connections). Each thread adds to a slot of
/// its own; a scrape adds the slots up into the exported counter first, so it still includes
/// every message a client can have received.
pub struct DeliveredCounter {
    counter: Counter,
    /// Indexed by [`thread_index`]: threads beyond [`SLOTS`] share slots, which costs only the
    /// sharing.
    slots: Box<[Slot; SLOTS]>,
}

const SLOTS: usize = 64;

/// One thread's count, on a cache line of its own.
#[repr(align(128))]
#[derive(Default)]
struct Slot(AtomicU64);

/// This thread's number, taken on first use (a server's delivering threads are its few actor
/// threads).
fn thread_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    INDEX.with(|index| *index)
}

impl DeliveredCounter {
    fn new(counter: Counter) -> DeliveredCounter {
        DeliveredCounter {
            counter,
            slots: Box::new(std::array::from_fn(|_| Slot::default())),
        }
    }

    pub fn increment(&self, n: u64) {
        self.slots[thread_index() % SLOTS]
            .0
            .fetch_add(n, Ordering::Release);
    }

    /// Writes the slots' sum into the exported counter (which only ever grows: of two scrapes
    /// publishing at once, the later sum stays).
    fn publish(&self) {
        let total = self.slots.iter().map(|s| s.0.load(Ordering::Acquire)).sum();
        self.counter.absolute(total);
    }
}

/// The exposition text, with the per-thread counters added up at this moment.
fn render(handle: &PrometheusHandle) -> String {
    get().delivered.publish();
    handle.render()
}

pub fn refused(code: &'static str) {
    metrics::counter!(REQUESTS_REFUSED, "code" => code).increment(1);
}

pub fn session_ended(reason: &'static str) {
    metrics::counter!(SESSIONS_ENDED, "reason" => reason).increment(1);
}

/// How often recorded histogram samples are folded into their buckets. The recorder keeps every
/// sample (`chat_fanout_seconds`: one per fan-out) in a list until something folds it in, and
/// only a scrape did: with nobody scraping, or the endpoint off, the list grew by 16 bytes a
/// fan-out for as long as the server ran (5.5 MB live after one `--scenario stall` flood; a
/// day at 1,000 CHATs a second would be 1.4 GB). The list's memory is reclaimed as later
/// samples are recorded (epoch-based), so what stays is bounded by about a second's worth.
const UPKEEP_EVERY: Duration = Duration::from_secs(1);

/// Folds the recorded histogram samples into their buckets every [`UPKEEP_EVERY`], whether or
/// not `/metrics` is served or scraped; runs until aborted.
pub async fn keep_up(handle: PrometheusHandle) {
    loop {
        tokio::time::sleep(UPKEEP_EVERY).await;
        handle.run_upkeep();
    }
}

/// Connections the endpoint serves at once; more are closed when accepted (scrapers retry).
const MAX_CONNECTIONS: usize = 64;
/// A request's headers must arrive within this, and a connection is closed after this long
/// whatever it does, so sockets that never finish a request cannot pile up.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Serves `GET /metrics` (HTTP/1.1) on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, handle: PrometheusHandle) {
    let places = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // E.g. out of file descriptors: back off instead of spinning on the error.
                warn!(%error, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(place) = places.clone().try_acquire_owned() else {
            debug!(%peer, "metrics connection closed: {MAX_CONNECTIONS} open already");
            continue;
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| respond(request, handle.clone()));
            let mut http1 = hyper::server::conn::http1::Builder::new();
            http1
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let connection = http1.serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_LIFETIME, connection).await {
                Ok(Err(error)) => debug!(%peer, %error, "metrics connection ended"),
                Err(_) => debug!(%peer, "metrics connection closed after its lifetime"),
                Ok(Ok(())) => {}
            }
            drop(place);
        });
    }
}

async fn respond(
    request: Request<Incoming>,
    handle: PrometheusHandle,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = if request.uri().path() == "/metrics" {
        Response::builder()
            .header("content-type", "text/plain; version=0.0.4")
            .body(Full::new(Bytes::from(render(&handle))))
    } else {
        Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::from_static(b"see /metrics\n")))
    };
    // unwrap: static header values and a plain body cannot fail to build.
    Ok(response.unwrap())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_exported_at_zero_before_any_traffic() {
        // A recorder of its own: the process-wide one is shared with every other unit test.
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            register_all();
        });
        let text = handle.render();
        let mut expected = vec![
            format!("{SESSIONS_OPEN} 0"),
            format!("{ROOMS_OPEN} 0"),
            format!("{MESSAGES_RECEIVED} 0"),
            format!("{MESSAGES_DELIVERED} 0"),
        ];
        expected.extend(
            ChatError::CODES
                .iter()
                .map(|code| format!("{REQUESTS_REFUSED}{{code=\"{code}\"}} 0")),
        );
        expected.extend(
            Fatal::REASONS
                .iter()
                .map(|reason| format!("{SESSIONS_ENDED}{{reason=\"{reason}\"}} 0")),
        );
        for line in expected {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
    }

    #[test]
    fn deliveries_counted_on_several_threads_are_all_in_the_next_scrape() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let delivered = metrics::with_local_recorder(&recorder, || {
            DeliveredCounter::new(metrics::counter!(MESSAGES_DELIVERED))
        });
        std::thread::scope(|threads| {
            for n in 1..=3 {
                let delivered = &delivered;
                threads.spawn(move || delivered.increment(n));
            }
        });
        let exported = |total: u64| {
            delivered.publish();
            let text = handle.render();
            assert!(
                text.lines()
                    .any(|l| l == format!("{MESSAGES_DELIVERED} {total}")),
                "{total} expected in:\n{text}"
            );
        };
        delivered.increment(10);
        exported(16);
        delivered.increment(1);
        exported(17);
    }
}
