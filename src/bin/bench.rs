//! `chat-bench`: the project's load generator. It opens N sessions (`u0…`) over M HTTP/2
//! connections to a running server (loopback only), JOINs each to room `bench-<i % rooms>`, and
//! once all are JOINED lets sessions 0..S post timestamped CHATs at R msg/s. Every session reads its
//! own stream and records the end-to-end latency of each CHAT into an HDR histogram, and the run
//! counts deliveries against `expected` = Σ rooms (measured CHATs sent × members).
//!
//! Modes: one measured window (default), `--find-max` (raise R until delivery or p99 breaks), and
//! the suite's `--scenario` presets `fanout`, `rooms`, `idle` (server RSS per joined session) and
//! `churn` (sessions come and go; does the server's RSS come back?). It shows a progress bar on
//! stderr and prints a summary table, or with `--json` exactly one JSON line, on stdout. It always
//! ends on its own: a watchdog thread prints what it has and exits 3 at the hard deadline.
//!
//! Layout of this file: CLI and presets → addresses → /proc readers → clock and CHAT marker →
//! shared state → connections and session readers → senders → windows and find-max → idle →
//! churn → report, watchdog and `main`.

use std::{
    borrow::Cow,
    collections::BTreeMap,
    error::Error as _,
    fmt::Write as _,
    io::{IsTerminal as _, Write as _},
    net::IpAddr,
    sync::{
        Arc, LazyLock, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use chatrooms::proto::{Kind, Message, chat_service_client::ChatServiceClient};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::{
    sync::{Semaphore, mpsc},
    task::{JoinHandle, JoinSet},
    time::{self, Instant, MissedTickBehavior},
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{
    Code, Status, Streaming,
    transport::{Channel, Endpoint},
};

/// Streams per HTTP/2 connection when `--conns` is not given: one connection's reader must keep up
/// with its share of a fan-out (see [`CONNECTION_WINDOW`]) without needing thousands of sockets.
const STREAMS_PER_CONN: usize = 25;
/// The machine's cap on open files per process; each connection is one socket, streams are free.
const MAX_OPEN_FILES: usize = 20_000;
/// Descriptors kept for everything that is not a connection (runtime, stdio, /proc reads).
const RESERVED_FILES: usize = 64;
/// The server's default `max_concurrent_streams`; more sessions per connection queue in h2.
const SERVER_STREAMS_PER_CONN: usize = 1024;
/// Bound on one TCP connect plus HTTP/2 handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections dialled at once, and streams opened at once: bounds the start-up burst.
const DIALING_AT_ONCE: usize = 64;
const OPENING_AT_ONCE: usize = 256;
/// Client connection window. h2 answers a connection that buffers too many small unread DATA frames
/// with GOAWAY ENHANCE_YOUR_CALM `too_many_data_frames`; its budget is half this window, so 16 MiB
/// lets a reader that falls behind for a moment catch up (~50,000 small frames) instead of losing
/// the connection. Such failures are still counted under `transport_failures`.
const CONNECTION_WINDOW: u32 = 16 << 20;
/// Requests queued per session before its sender waits (HTTP/2 flow control is behind it).
const REQUEST_QUEUE: usize = 64;
/// Sessions that only listen send a PING this often, well under the server's idle timeout (90 s by
/// default), so long `--find-max` and idle runs are not cut by it.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);
/// Progress, liveness and join checks.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How often the settle period checks whether everything expected has arrived.
const SETTLE_POLL: Duration = Duration::from_millis(20);
/// Time from planning a window to its first tick, so every sender task is running by then.
const SENDER_LEAD: Duration = Duration::from_millis(100);
/// Added to the planned length of a run to form the default hard deadline.
const DEADLINE_MARGIN: Duration = Duration::from_secs(30);
/// A `--find-max` window passes when every expected CHAT arrived and p99 is at most this.
const FIND_MAX_P99_MS: f64 = 100.0;
/// Two significant digits (≤ 1% error, below run-to-run noise) keep a per-session histogram at a
/// few KiB; three digits would cost ~40 KiB each, 400 MB for the 10,000-session scenarios.
const LATENCY_SIGFIG: u8 = 2;
/// Latencies are clamped here (1 h) so a bogus timestamp cannot grow a histogram without bound.
const MAX_LATENCY_US: u64 = 3_600_000_000;
/// `ref` of every JOIN, so an ERROR answering it is told apart from one answering a CHAT.
const JOIN_REF: &str = "join";
/// Churn: CHATs each session posts per cycle (non-senders stay as long without posting).
const CHURN_CHATS_PER_CYCLE: u32 = 5;
/// Churn: bound on one cycle beyond its paced chats, and on the in-flight cycles after the end.
const CHURN_CYCLE_SLACK: Duration = Duration::from_secs(10);
/// Churn: the server's VmRSS must come back within this fraction of its pre-churn value.
const RSS_TOLERANCE: f64 = 0.10;
/// `/proc/PID/stat` counts CPU time in clock ticks of 1/100 s (USER_HZ on Linux).
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

/// Exit codes besides 0: a run that failed (cannot connect, nobody joined, server gone), a usage
/// error, and the hard deadline.
const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_DEADLINE: u8 = 3;

// ---------------------------------------------------------------------------------------------
// CLI and presets

/// Load generator for the chatrooms server (loopback only).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Server address(es), comma separated: host:port or http://host:port on 127.0.0.0/8, ::1 or
    /// localhost. Session i uses address i % n.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:50051")]
    server: Vec<String>,
    /// A preset of the benchmark suite; explicit flags override its values.
    #[arg(long, value_enum)]
    scenario: Option<Scenario>,
    /// Chat sessions (streams) [default: 1000; rooms, idle: 10000; churn: 2000].
    #[arg(long)]
    sessions: Option<usize>,
    /// HTTP/2 connections; session i uses connection i % conns [default: one per 25 sessions;
    /// idle: one per session].
    #[arg(long)]
    conns: Option<usize>,
    /// Rooms; session i joins bench-(i % rooms) [default: 1; rooms: sessions/10; idle, churn:
    /// sessions/20].
    #[arg(long)]
    rooms: Option<usize>,
    /// Sessions 0..S-1 post CHATs [default: 10; rooms: 1000; idle: 0; churn: all].
    #[arg(long)]
    senders: Option<usize>,
    /// CHATs per second per sender; with --find-max, the first step's rate [default: 10; rooms: 2].
    #[arg(long)]
    rate: Option<f64>,
    /// CHAT content bytes, the 24-byte timestamp header included.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Seconds of unmeasured sending before each measured window [default: 2; idle, churn: 0].
    #[arg(long)]
    warmup: Option<f64>,
    /// Seconds of the measured window (idle: hold time; churn: churn time) [default: 10; fanout: 5
    /// per step; idle: 5; churn: 60].
    #[arg(long)]
    duration: Option<f64>,
    /// Seconds to wait after a window for deliveries in flight (churn: for the server's RSS to come
    /// back) [default: 2; churn: 35, past the server's 30 s empty-room TTL].
    #[arg(long)]
    settle: Option<f64>,
    /// Seconds for every session to get its JOINED; the run starts with those that did.
    #[arg(long, default_value_t = 30.0)]
    join_timeout: f64,
    /// Hard deadline in seconds: print what is there and exit 3 [default: the plan's length + 30].
    #[arg(long)]
    deadline: Option<f64>,
    /// Raise the rate step by step and report the highest deliveries/s whose window delivered
    /// everything with p99 ≤ 100 ms.
    #[arg(long)]
    find_max: bool,
    /// Most windows --find-max runs.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u8).range(1..=99))]
    max_steps: u8,
    /// Rate multiplier between --find-max steps.
    #[arg(long, default_value_t = 1.5)]
    step_factor: f64,
    /// Server process to read peak RSS and CPU seconds from (/proc/PID).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Print exactly one JSON line on stdout instead of the table; no progress bar.
    #[arg(long)]
    json: bool,
}

/// The scenarios of the benchmark suite (issue 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// 1 room × 1,000 members, 10 senders, --find-max.
    Fanout,
    /// 10,000 sessions in 1,000 rooms of 10, 1,000 senders at 2 msg/s.
    Rooms,
    /// Sessions that only join and hold (rooms of 20, one connection each): server RSS per session.
    Idle,
    /// 2,000 sessions connecting, joining, chatting and disconnecting in a loop for 60 s.
    Churn,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Fanout => "fanout",
            Scenario::Rooms => "rooms",
            Scenario::Idle => "idle",
            Scenario::Churn => "churn",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// One warm-up plus measured window at `rate`.
    Window,
    /// Windows at rising rates until one fails.
    FindMax,
    /// Join, hold, measure the server's RSS.
    Idle,
    /// Sessions cycle through connect, join, chat, disconnect.
    Churn,
}

/// Everything a run needs, resolved from [`Args`] and the scenario preset and validated.
#[derive(Debug, Clone)]
struct Params {
    scenario: Option<Scenario>,
    mode: Mode,
    /// URIs tonic dials (`http://host:port`), all loopback.
    servers: Vec<String>,
    sessions: usize,
    conns: usize,
    rooms: usize,
    senders: usize,
    rate: f64,
    size: usize,
    warmup: Duration,
    duration: Duration,
    settle: Duration,
    join_timeout: Duration,
    deadline: Duration,
    max_steps: u8,
    step_factor: f64,
    server_pid: Option<u32>,
    json: bool,
}

impl Params {
    fn from_args(args: Args) -> anyhow::Result<Params> {
        use Scenario::*;
        let scenario = args.scenario;
        let servers = args
            .server
            .iter()
            .map(|a| loopback_uri(a))
            .collect::<anyhow::Result<Vec<_>>>()?;
        if servers.is_empty() {
            bail!("--server needs at least one address");
        }
        let mode = match (scenario, args.find_max) {
            (Some(Idle | Churn), true) => {
                bail!(
                    "--find-max measures windows; it does not apply to the idle or churn scenario"
                )
            }
            (Some(Idle), false) => Mode::Idle,
            (Some(Churn), false) => Mode::Churn,
            (Some(Fanout), _) | (_, true) => Mode::FindMax,
            _ => Mode::Window,
        };

        let sessions = args.sessions.unwrap_or(match scenario {
            Some(Rooms | Idle) => 10_000,
            Some(Churn) => 2_000,
            _ => 1_000,
        });
        if sessions == 0 {
            bail!("--sessions must be at least 1");
        }
        let rooms = args.rooms.unwrap_or(match scenario {
            Some(Rooms) => sessions.div_ceil(10),
            Some(Idle | Churn) => sessions.div_ceil(20),
            _ => 1,
        });
        if rooms == 0 {
            bail!("--rooms must be at least 1");
        }
        let senders = match (mode, args.senders) {
            (Mode::Idle, Some(s)) if s > 0 => bail!("idle sessions do not post; drop --senders"),
            (Mode::Idle, _) => 0,
            (_, Some(s)) => s,
            (_, None) => match scenario {
                Some(Rooms) => 1_000,
                Some(Churn) => sessions,
                _ => 10,
            },
        }
        .min(sessions);
        let rate = args.rate.unwrap_or(match scenario {
            Some(Rooms) => 2.0,
            _ => 10.0,
        });
        if senders > 0 && !(rate > 0.0 && rate <= 1_000_000.0) {
            bail!("--rate must be above 0 and at most 1,000,000 CHATs/s per sender");
        }
        if args.size < HEADER_LEN {
            bail!(
                "--size {} cannot hold the {HEADER_LEN}-byte timestamp header; use at least {HEADER_LEN}",
                args.size
            );
        }
        if !(args.step_factor > 1.0 && args.step_factor <= 100.0) {
            bail!("--step-factor must be above 1 (and at most 100)");
        }

        let mut conns = args.conns.unwrap_or(match scenario {
            Some(Idle) => sessions,
            _ => sessions.div_ceil(STREAMS_PER_CONN),
        });
        if conns == 0 {
            bail!("--conns must be at least 1");
        }
        conns = conns.min(sessions);
        // Connection c dials server c % n; rounding conns to a multiple of n keeps session i, on
        // connection i % conns, on server i % n.
        let n = servers.len();
        if conns % n != 0 {
            conns = conns.div_ceil(n) * n;
        }
        // A churn group may dial its next connection before the old socket is gone.
        let sockets = if mode == Mode::Churn {
            2 * conns
        } else {
            conns
        };
        let limit = open_files_limit();
        if sockets + RESERVED_FILES > limit {
            bail!(
                "{conns} connections need about {} open files, over this process's limit of {limit} \
                 (the machine allows {MAX_OPEN_FILES}); use fewer --conns: streams share a \
                 connection and cost no file",
                sockets + RESERVED_FILES
            );
        }

        let seconds_or = |flag: &str, value: Option<f64>, default: f64, zero_ok: bool| {
            seconds(flag, value.unwrap_or(default), zero_ok)
        };
        let warmup = seconds_or(
            "--warmup",
            args.warmup,
            if matches!(mode, Mode::Idle | Mode::Churn) {
                0.0
            } else {
                2.0
            },
            true,
        )?;
        let duration = seconds_or(
            "--duration",
            args.duration,
            match scenario {
                Some(Fanout | Idle) => 5.0,
                Some(Churn) => 60.0,
                _ => 10.0,
            },
            false,
        )?;
        let settle = seconds_or(
            "--settle",
            args.settle,
            if mode == Mode::Churn { 35.0 } else { 2.0 },
            true,
        )?;
        let join_timeout = seconds("--join-timeout", args.join_timeout, false)?;
        let window = SENDER_LEAD + warmup + duration + settle;
        let planned = match mode {
            Mode::Window => join_timeout + window,
            Mode::FindMax => join_timeout + window * u32::from(args.max_steps),
            Mode::Idle => join_timeout + duration,
            Mode::Churn => duration + CHURN_CYCLE_SLACK + settle,
        };
        let deadline = match args.deadline {
            Some(d) => seconds("--deadline", d, false)?,
            None => planned + DEADLINE_MARGIN,
        };
        if let Some(pid) = args.server_pid
            && status_kb(&pid.to_string(), "VmRSS").is_none()
        {
            bail!("--server-pid {pid}: no such process, or /proc/{pid}/status is not readable");
        }
        Ok(Params {
            scenario,
            mode,
            servers,
            sessions,
            conns,
            rooms,
            senders,
            rate,
            size: args.size,
            warmup,
            duration,
            settle,
            join_timeout,
            deadline,
            max_steps: args.max_steps,
            step_factor: args.step_factor,
            server_pid: args.server_pid,
            json: args.json,
        })
    }

    fn server_for_conn(&self, conn: usize) -> &str {
        &self.servers[conn % self.servers.len()]
    }
}

/// `value` seconds of `flag` as a [`Duration`]; finite, not negative, at most a day.
fn seconds(flag: &str, value: f64, zero_ok: bool) -> anyhow::Result<Duration> {
    let least = if zero_ok { "0 or more" } else { "above 0" };
    if !value.is_finite() || value < 0.0 || (!zero_ok && value == 0.0) || value > 86_400.0 {
        bail!("{flag} takes seconds, {least} and at most 86400; got {value}");
    }
    Ok(Duration::from_secs_f64(value))
}

// ---------------------------------------------------------------------------------------------
// Addresses

/// `address` (`host:port` or `http://host:port`) as the URI tonic dials, refusing anything that
/// is not loopback: a load generator must never be pointed at someone else's server by accident.
fn loopback_uri(address: &str) -> anyhow::Result<String> {
    let address = address.trim();
    let host_port = match address.split_once("://") {
        None => address,
        Some(("http", rest)) => rest,
        Some((scheme, _)) => {
            bail!(
                "server {address:?}: only http:// is supported (loopback, no TLS), not {scheme}://"
            )
        }
    };
    let host_port = host_port.strip_suffix('/').unwrap_or(host_port);
    let (host, port) = match host_port.strip_prefix('[') {
        Some(rest) => rest.split_once("]:"),
        None => host_port.rsplit_once(':'),
    }
    .with_context(|| format!("server {address:?}: expected host:port"))?;
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .with_context(|| format!("server {address:?}: {port:?} is not a port"))?;
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        bail!(
            "refusing server {address:?}: chat-bench only targets loopback addresses \
             (127.0.0.0/8, ::1 or localhost)"
        );
    }
    Ok(if host.contains(':') {
        format!("http://[{host}]:{port}")
    } else {
        format!("http://{host}:{port}")
    })
}

// ---------------------------------------------------------------------------------------------
// /proc readers (Linux): the server's memory and CPU, and the generator's own CPU

/// A `kB` line of `/proc/<pid>/status` (`VmRSS`, `VmHWM`); `pid` may be `self`.
fn status_kb(pid: &str, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix(':')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// The fields of `/proc/<pid>/stat` after the command name, which may itself hold spaces or
/// parentheses: index 0 is the state (field 3), 11 and 12 are utime and stime (fields 14, 15).
fn stat_fields(pid: &str) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// User plus system CPU seconds of `pid` (or `self`).
fn cpu_seconds(pid: &str) -> Option<f64> {
    let fields = stat_fields(pid)?;
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(round(ticks as f64 / CLOCK_TICKS_PER_SEC, 2))
}

/// Whether `pid` still runs: a zombie has exited even though its /proc entry remains.
fn process_alive(pid: u32) -> bool {
    stat_fields(&pid.to_string())
        .and_then(|f| f.first().cloned())
        .is_some_and(|state| state != "Z" && state != "X")
}

/// The soft limit on open files, capped at the machine's [`MAX_OPEN_FILES`].
fn open_files_limit() -> usize {
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
            line.split_whitespace().nth(3)?.parse::<usize>().ok()
        });
    soft.unwrap_or(MAX_OPEN_FILES).min(MAX_OPEN_FILES)
}

/// CPU seconds of the server (if watched) and of the generator at one instant.
#[derive(Debug, Clone, Copy)]
struct CpuSample {
    server: Option<f64>,
    loadgen: Option<f64>,
}

impl CpuSample {
    fn take(server_pid: Option<u32>) -> CpuSample {
        CpuSample {
            server: server_pid.and_then(|pid| cpu_seconds(&pid.to_string())),
            loadgen: cpu_seconds("self"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Clock and the CHAT marker

/// Unix time read through the monotonic clock. Send and receive times are both taken in this one
/// process, so anchoring the wall clock once keeps latencies immune to clock steps mid-run.
struct Clock {
    anchor: std::time::Instant,
    anchor_unix_nanos: u64,
}

static CLOCK: LazyLock<Clock> = LazyLock::new(|| Clock {
    anchor: std::time::Instant::now(),
    anchor_unix_nanos: SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
});

fn unix_nanos(at: Instant) -> u64 {
    let since = at.into_std().saturating_duration_since(CLOCK.anchor);
    CLOCK.anchor_unix_nanos + u64::try_from(since.as_nanos()).unwrap_or(u64::MAX / 2)
}

/// Length of the header every generated CHAT starts with: `{W|M}{step:02}|{unix nanos:019}|`.
const HEADER_LEN: usize = 24;

/// What a generated CHAT carries: whether it belongs to a measured window (`M`) or a warm-up
/// (`W`), which window (`--find-max` step), and when it was due to be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Marker {
    measured: bool,
    step: u8,
    sent_nanos: u64,
}

impl Marker {
    /// The CHAT content: the header padded with `x` to `size` bytes (`size >= HEADER_LEN`).
    fn content(self, size: usize) -> String {
        let mut content = String::with_capacity(size.max(HEADER_LEN));
        let phase = if self.measured { 'M' } else { 'W' };
        // unwrap: formatting into a String cannot fail
        write!(content, "{phase}{:02}|{:019}|", self.step, self.sent_nanos).unwrap();
        content.extend(std::iter::repeat_n('x', size.saturating_sub(HEADER_LEN)));
        content
    }

    fn parse(content: &str) -> Option<Marker> {
        let bytes = content.as_bytes();
        if bytes.len() < HEADER_LEN || bytes[3] != b'|' || bytes[23] != b'|' {
            return None;
        }
        let measured = match bytes[0] {
            b'M' => true,
            b'W' => false,
            _ => return None,
        };
        let step = u8::try_from(ascii_number(&bytes[1..3])?).ok()?;
        Some(Marker {
            measured,
            step,
            sent_nanos: ascii_number(&bytes[4..23])?,
        })
    }
}

/// Decimal digits to a number (at most 19 digits, so it cannot overflow a u64).
fn ascii_number(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |acc, &d| {
        d.is_ascii_digit().then(|| acc * 10 + u64::from(d - b'0'))
    })
}

fn room_name(room: usize) -> String {
    format!("bench-{room}")
}

/// The first request of every stream: it names the session (`user`), as the server requires.
fn join_request(index: usize, room: &str) -> Message {
    Message {
        kind: Kind::Join.into(),
        user: format!("u{index}"),
        room: room.to_owned(),
        r#ref: JOIN_REF.to_owned(),
        ..Message::default()
    }
}

fn chat_request(room: &str, content: String) -> Message {
    Message {
        kind: Kind::Chat.into(),
        room: room.to_owned(),
        content,
        ..Message::default()
    }
}

fn ping_request() -> Message {
    Message {
        kind: Kind::Ping.into(),
        ..Message::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Shared state

/// [`Session::state`]: JOIN sent, no answer yet.
const PENDING: u8 = 0;
/// JOINED before the run started: counts in `expected`, and its CHATs count as delivered.
const MEMBER: u8 = 1;
/// Still pending when the run started: the server may deliver to it later, but it is not counted.
const LATE: u8 = 2;
/// JOIN refused, or the stream ended before JOINED.
const FAILED: u8 = 3;
/// [`Tally::step`] between windows: every measured CHAT arriving then is late.
const NO_STEP: u8 = u8::MAX;

/// One session of a measured run, shared by its reader task and the coordinator.
struct Session {
    room: usize,
    state: AtomicU8,
    ended: AtomicBool,
    /// Written by this session's reader for each CHAT; the coordinator takes the lock a few times
    /// a second for progress and once per window to harvest, so it is uncontended in practice
    /// (and nothing else is shared on the read path).
    tally: Mutex<Tally>,
}

impl Session {
    fn is_live_member(&self) -> bool {
        self.state.load(Relaxed) == MEMBER && !self.ended.load(Relaxed)
    }

    /// Handles one reply on the read path: keep it short, the connection's other streams wait.
    fn on_reply(&self, shared: &Shared, room: &str, reply: &Message) {
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
    fn settle_join(&self, to: u8) -> bool {
        self.state
            .compare_exchange(PENDING, to, Relaxed, Relaxed)
            .is_ok()
    }
}

/// One session's counts for the window in progress.
struct Tally {
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

    fn arm(&mut self, step: u8) {
        self.step = step;
        self.delivered = 0;
        self.latency.reset();
    }
}

/// An auto-resizing histogram of microseconds: it only grows to the largest value recorded.
fn new_histogram() -> Histogram<u64> {
    // unwrap: 2 significant digits is within hdrhistogram's 0..=5
    Histogram::new(LATENCY_SIGFIG).unwrap()
}

fn record_latency(histogram: &mut Histogram<u64>, latency_us: u64) {
    // Cannot fail: the histogram auto-resizes and the value is clamped to a sane range.
    let _ = histogram.record(latency_us.min(MAX_LATENCY_US));
}

/// Counts by name (ERROR codes, status codes, failure descriptions); these events are rare, so
/// one mutex for all sessions costs nothing.
#[derive(Default)]
struct Counts(Mutex<BTreeMap<String, u64>>);

impl Counts {
    fn add(&self, key: impl Into<String>) {
        *lock(&self.0).entry(key.into()).or_default() += 1;
    }

    fn snapshot(&self) -> BTreeMap<String, u64> {
        lock(&self.0).clone()
    }
}

/// Counters of the churn scenario, whose sessions live one cycle each.
struct ChurnTotals {
    cycles: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
    latency: Mutex<Histogram<u64>>,
}

/// What the coordinator has learnt so far; the report is built from it, by `main` at the end or
/// by the watchdog at the deadline.
#[derive(Default)]
struct Outcome {
    join_s: Option<f64>,
    steps: Vec<StepResult>,
    notes: Vec<String>,
    /// Mode-specific report fields (idle and churn RSS).
    extra: serde_json::Map<String, Value>,
}

struct Shared {
    params: Params,
    sessions: Vec<Session>,
    /// Measured CHATs posted into each room in the current window.
    room_sent: Vec<AtomicU64>,
    /// Live members of each room when the current window started.
    room_members: Vec<AtomicU64>,
    joined: AtomicU64,
    failed: AtomicU64,
    /// Streams that ended for any reason; equal to the sessions opened means nobody is left.
    ended: AtomicU64,
    /// Set before the generator closes its own streams, so those ends are not blamed on the server.
    stopping: AtomicBool,
    error_codes: Counts,
    ended_by_server: Counts,
    transport_failures: Counts,
    churn: ChurnTotals,
    outcome: Mutex<Outcome>,
    /// The window in progress, so the watchdog can report it as a partial step.
    window: Mutex<Option<WindowPlan>>,
    /// Held by whoever prints the report (main or watchdog) until the process exits.
    printing: Mutex<()>,
    progress: Progress,
}

impl Shared {
    fn new(params: Params) -> Shared {
        let sessions = match params.mode {
            Mode::Churn => Vec::new(),
            _ => (0..params.sessions)
                .map(|i| Session {
                    room: i % params.rooms,
                    state: AtomicU8::new(PENDING),
                    ended: AtomicBool::new(false),
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
            outcome: Mutex::new(Outcome::default()),
            window: Mutex::new(None),
            printing: Mutex::new(()),
            params,
        }
    }

    fn note(&self, note: impl Into<String>) {
        lock(&self.outcome).notes.push(note.into());
    }

    fn delivered_now(&self) -> u64 {
        self.sessions.iter().map(|s| lock(&s.tally).delivered).sum()
    }

    fn sent_now(&self) -> u64 {
        self.room_sent.iter().map(|r| r.load(Relaxed)).sum()
    }

    fn expected_now(&self) -> u64 {
        self.room_sent
            .iter()
            .zip(&self.room_members)
            .map(|(sent, members)| sent.load(Relaxed) * members.load(Relaxed))
            .sum()
    }

    /// Records how a stream ended that the generator did not end itself.
    fn record_end(&self, end: Option<&Status>) {
        match end {
            None => self.ended_by_server.add("OK"),
            Some(status) if is_transport_failure(status) => {
                self.transport_failures.add(describe_failure(status))
            }
            Some(status) => self.ended_by_server.add(code_name(status.code())),
        }
    }

    /// Fails when there is no server left to measure: its process is gone, or every stream ended.
    fn check_alive(&self, streams: u64) -> anyhow::Result<()> {
        if let Some(pid) = self.params.server_pid
            && !process_alive(pid)
        {
            bail!("the server process {pid} is gone");
        }
        if streams > 0 && self.ended.load(Relaxed) >= streams {
            bail!("every stream has ended: the server closed them or died");
        }
        Ok(())
    }

    /// Takes the window's counts out of every session and turns them into a [`StepResult`].
    /// `partial` when the window was cut short (deadline, dead server).
    fn harvest(
        &self,
        plan: &WindowPlan,
        cpu: Option<(CpuSample, CpuSample)>,
        partial: bool,
    ) -> StepResult {
        let mut latency = new_histogram();
        let mut delivered = 0;
        for session in &self.sessions {
            let mut tally = lock(&session.tally);
            delivered += tally.delivered;
            // unwrap: adding into an auto-resizing histogram cannot fail
            latency.add(&tally.latency).unwrap();
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

    fn late_total(&self) -> u64 {
        self.sessions.iter().map(|s| lock(&s.tally).late).sum()
    }
}

/// Locks `mutex`, ignoring poison: every guarded value here is a set of counters that stays
/// meaningful even if some holder panicked.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn error_code(reply: &Message) -> String {
    if reply.code.is_empty() {
        "(no code)".to_owned()
    } else {
        reply.code.clone()
    }
}

/// A status the client's transport made up (connection lost, h2 GOAWAY, reset) rather than one
/// the server sent in its trailers: tonic attaches the underlying error as the source.
fn is_transport_failure(status: &Status) -> bool {
    status.source().is_some()
        || status.message().starts_with("h2 protocol error")
        || status.message().starts_with("transport error")
}

/// The status and its whole error chain, so a GOAWAY (`connection error …`, e.g. ENHANCE_YOUR_CALM
/// `too_many_data_frames`) shows as such in the report.
fn describe_failure(status: &Status) -> String {
    let mut text = format!("{}: {}", code_name(status.code()), status.message());
    let mut source = status.source();
    while let Some(error) = source {
        let cause = error.to_string();
        if !text.contains(&cause) {
            write!(text, ": {cause}").ok();
        }
        source = error.source();
    }
    if text.contains("connection error") && !text.contains("GOAWAY") {
        text.insert_str(0, "GOAWAY ");
    }
    truncate(text, 200)
}

/// The gRPC name of a status code, as in the protocol table of the README.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

// ---------------------------------------------------------------------------------------------
// Connections and sessions

async fn connect(uri: &str) -> anyhow::Result<Channel> {
    let endpoint = Endpoint::from_shared(uri.to_owned())?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .initial_connection_window_size(CONNECTION_WINDOW);
    time::timeout(CONNECT_TIMEOUT, endpoint.connect())
        .await
        .with_context(|| format!("connecting to {uri} timed out"))?
        .with_context(|| format!("cannot connect to {uri}"))
}

/// Dials every connection (a few at a time); the first failure ends the run with its reason.
async fn connect_all(shared: &Shared) -> anyhow::Result<Vec<Channel>> {
    let p = &shared.params;
    shared.progress.stage("connect", p.conns as u64);
    let dialing = Arc::new(Semaphore::new(DIALING_AT_ONCE));
    let mut dials = JoinSet::new();
    for conn in 0..p.conns {
        let uri = p.server_for_conn(conn).to_owned();
        let dialing = dialing.clone();
        dials.spawn(async move {
            let _turn = dialing.acquire().await;
            (conn, connect(&uri).await)
        });
    }
    let mut channels = vec![None; p.conns];
    let mut done = 0;
    while let Some(dialed) = dials.join_next().await {
        let (conn, channel) = dialed.context("a connect task failed")?;
        channels[conn] = Some(channel?);
        done += 1;
        shared
            .progress
            .update(done, format!("{done}/{} connections", p.conns));
    }
    Ok(channels.into_iter().flatten().collect())
}

/// The request side of every session. Dropping it half-closes the streams, so it first marks the
/// run as stopping: the stream ends that follow are the generator's doing, not the server's.
struct Requests {
    shared: Arc<Shared>,
    senders: Vec<mpsc::Sender<Message>>,
}

impl Drop for Requests {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Relaxed);
    }
}

/// Opens every session's stream with its JOIN, waits (bounded) until all have settled, then
/// freezes membership: sessions still pending are not counted as room members.
async fn open_sessions(shared: &Arc<Shared>, channels: &[Channel]) -> anyhow::Result<Requests> {
    let p = &shared.params;
    let started = Instant::now();
    let opening = Arc::new(Semaphore::new(OPENING_AT_ONCE));
    let mut senders = Vec::with_capacity(p.sessions);
    for (index, session) in shared.sessions.iter().enumerate() {
        let (requests, requests_rx) = mpsc::channel(REQUEST_QUEUE);
        // unwrap: a new channel has room for its first message
        requests
            .try_send(join_request(index, &room_name(session.room)))
            .unwrap();
        senders.push(requests);
        let client = ChatServiceClient::new(channels[index % channels.len()].clone());
        tokio::spawn(run_session(
            shared.clone(),
            index,
            client,
            requests_rx,
            opening.clone(),
        ));
    }
    let requests = Requests {
        shared: shared.clone(),
        senders,
    };

    shared.progress.stage("join", p.sessions as u64);
    let deadline = started + p.join_timeout;
    let mut poll = time::interval(Duration::from_millis(50));
    loop {
        poll.tick().await;
        let joined = shared.joined.load(Relaxed);
        let failed = shared.failed.load(Relaxed);
        shared.progress.update(
            joined,
            format!("{joined}/{} joined, {failed} failed", p.sessions),
        );
        if joined + failed >= p.sessions as u64 || Instant::now() >= deadline {
            break;
        }
        shared.check_alive(p.sessions as u64)?;
    }
    let mut late = 0;
    for session in &shared.sessions {
        if session.settle_join(LATE) {
            late += 1;
        }
    }
    let joined = shared.joined.load(Relaxed);
    lock(&shared.outcome).join_s = Some(round(started.elapsed().as_secs_f64(), 3));
    if joined < p.sessions as u64 {
        let failed = shared.failed.load(Relaxed);
        shared.note(format!(
            "only {joined}/{} sessions joined: {failed} refused or failed, {late} still pending \
             after the {} s join timeout (not counted)",
            p.sessions,
            p.join_timeout.as_secs_f64()
        ));
    }
    if joined == 0 {
        bail!("no session joined");
    }
    Ok(requests)
}

/// One session: open its stream (a bounded number at a time), then read every reply until the
/// stream ends, and say how it ended.
async fn run_session(
    shared: Arc<Shared>,
    index: usize,
    mut client: ChatServiceClient<Channel>,
    requests_rx: mpsc::Receiver<Message>,
    opening: Arc<Semaphore>,
) {
    let turn = opening.acquire().await;
    let opened = client.chat_stream(ReceiverStream::new(requests_rx)).await;
    drop(turn);
    let session = &shared.sessions[index];
    let end = match opened {
        Ok(response) => {
            let room = room_name(session.room);
            read_replies(&shared, session, &room, response.into_inner()).await
        }
        Err(status) => Some(status),
    };
    session.ended.store(true, Relaxed);
    if session.settle_join(FAILED) {
        shared.failed.fetch_add(1, Relaxed);
    }
    if !shared.stopping.load(Relaxed) {
        shared.record_end(end.as_ref());
    }
    shared.ended.fetch_add(1, Relaxed);
}

/// The read loop: nothing but decode, classify and count, so the connection's buffered frames
/// drain as fast as they arrive. Returns the error status, or `None` for a clean end.
async fn read_replies(
    shared: &Shared,
    session: &Session,
    room: &str,
    mut replies: Streaming<Message>,
) -> Option<Status> {
    loop {
        match replies.message().await {
            Ok(Some(reply)) => session.on_reply(shared, room, &reply),
            Ok(None) => return None,
            Err(status) => return Some(status),
        }
    }
}

/// PINGs every session now and then, so listeners are not ended by the server's idle timeout.
fn spawn_heartbeat(requests: Vec<mpsc::Sender<Message>>) {
    tokio::spawn(async move {
        let mut beat = time::interval_at(Instant::now() + HEARTBEAT_INTERVAL, HEARTBEAT_INTERVAL);
        loop {
            beat.tick().await;
            for session in &requests {
                // A full queue means the session is busy posting, which keeps it alive anyway.
                let _ = session.try_send(ping_request());
            }
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Senders

/// The timeline of one window; instants are shared by every sender.
#[derive(Debug, Clone, Copy)]
struct WindowPlan {
    step: u8,
    rate: f64,
    start: Instant,
    measure_start: Instant,
    measure_end: Instant,
    /// [`Shared::ended`] when the window started.
    ended_before: u64,
}

fn period(rate: f64) -> Duration {
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
    let name = room_name(room);
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
        if requests
            .send(chat_request(&name, marker.content(size)))
            .await
            .is_err()
        {
            return; // the stream is gone; its reader reports why
        }
        if marker.measured {
            shared.room_sent[room].fetch_add(1, Relaxed);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Windows and find-max

/// The result of one measured window (the whole run without `--find-max`).
#[derive(Debug, Clone, Serialize)]
struct StepResult {
    step: u8,
    rate: f64,
    sent: u64,
    delivered: u64,
    expected: Option<u64>,
    delivery_ratio: Option<f64>,
    deliveries_per_sec: f64,
    p50_ms: Option<f64>,
    p90_ms: Option<f64>,
    p99_ms: Option<f64>,
    p999_ms: Option<f64>,
    max_ms: Option<f64>,
    /// Streams that ended during the window.
    streams_ended: u64,
    /// CPU seconds spent during the measured part of the window.
    #[serde(skip_serializing_if = "Option::is_none")]
    server_cpu_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    loadgen_cpu_s: Option<f64>,
    /// Everything expected arrived, p99 within [`FIND_MAX_P99_MS`], no stream ended.
    ok: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    partial: bool,
}

/// The raw numbers a [`StepResult`] is computed from.
struct StepCounts<'a> {
    step: u8,
    rate: f64,
    sent: u64,
    delivered: u64,
    expected: Option<u64>,
    window: Duration,
    latency: &'a Histogram<u64>,
    streams_ended: u64,
    server_cpu_s: Option<f64>,
    loadgen_cpu_s: Option<f64>,
    partial: bool,
}

impl StepResult {
    fn new(c: StepCounts<'_>) -> StepResult {
        let ms = |quantile: f64| {
            (!c.latency.is_empty())
                .then(|| round(c.latency.value_at_quantile(quantile) as f64 / 1_000.0, 3))
        };
        let delivery_ratio = c
            .expected
            .filter(|e| *e > 0)
            .map(|e| round(c.delivered as f64 / e as f64, 6));
        let seconds = c.window.as_secs_f64();
        let p99_ms = ms(0.99);
        StepResult {
            step: c.step,
            rate: c.rate,
            sent: c.sent,
            delivered: c.delivered,
            expected: c.expected,
            delivery_ratio,
            deliveries_per_sec: if seconds > 0.0 {
                round(c.delivered as f64 / seconds, 1)
            } else {
                0.0
            },
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms,
            p999_ms: ms(0.999),
            max_ms: (!c.latency.is_empty()).then(|| round(c.latency.max() as f64 / 1_000.0, 3)),
            streams_ended: c.streams_ended,
            server_cpu_s: c.server_cpu_s,
            loadgen_cpu_s: c.loadgen_cpu_s,
            ok: !c.partial
                && c.expected.is_some_and(|e| e > 0 && c.delivered == e)
                && p99_ms.is_some_and(|p| p <= FIND_MAX_P99_MS)
                && c.streams_ended == 0,
            partial: c.partial,
        }
    }

    /// A run that measured nothing (idle, or stopped before its first window).
    fn empty(rate: f64) -> StepResult {
        StepResult::new(StepCounts {
            step: 0,
            rate,
            sent: 0,
            delivered: 0,
            expected: Some(0),
            window: Duration::ZERO,
            latency: &new_histogram(),
            streams_ended: 0,
            server_cpu_s: None,
            loadgen_cpu_s: None,
            partial: false,
        })
    }
}

/// One window: warm-up, measured part, settle; then the counts. The result is also recorded in
/// the outcome (partial if the server died on the way, which is then an error).
async fn run_window(
    shared: &Arc<Shared>,
    requests: &Requests,
    step: u8,
    rate: f64,
) -> anyhow::Result<StepResult> {
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
    let senders: Vec<JoinHandle<()>> = posting
        .iter()
        .enumerate()
        .map(|(k, &index)| {
            let offset = period(rate).mul_f64(k as f64 / posting.len() as f64);
            tokio::spawn(post_at_rate(
                shared.clone(),
                requests.senders[index].clone(),
                index,
                plan,
                offset,
            ))
        })
        .collect();

    let total = plan.measure_end - plan.start;
    shared
        .progress
        .stage(format!("step {step}"), total.as_millis() as u64);
    let mut cpu_start = None;
    let outcome = loop {
        let now = Instant::now();
        if cpu_start.is_none() && now >= plan.measure_start {
            cpu_start = Some(CpuSample::take(p.server_pid));
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
                "{phase} {rate:.1}/s per sender: sent {} delivered {delivered} ({per_sec:.0}/s)",
                shared.sent_now()
            ),
        );
        if let Err(dead) = shared.check_alive(p.sessions as u64) {
            break Err(dead);
        }
        let mut wake = (now + POLL_INTERVAL).min(plan.measure_end);
        if cpu_start.is_none() {
            wake = wake.min(plan.measure_start);
        }
        time::sleep_until(wake).await;
    };
    let cpu = cpu_start.map(|start| (start, CpuSample::take(p.server_pid)));

    if outcome.is_ok() {
        // Settle: the last CHATs are still on their way; stop early once everything arrived.
        shared.progress.set_message("settling");
        let settle_end = plan.measure_end + p.settle;
        loop {
            let all_posted = senders.iter().all(JoinHandle::is_finished);
            if (all_posted && shared.delivered_now() >= shared.expected_now())
                || Instant::now() >= settle_end
            {
                break;
            }
            time::sleep(SETTLE_POLL).await;
        }
    }
    for sender in &senders {
        sender.abort(); // still blocked by flow control after the settle period
    }
    let result = {
        let mut window = lock(&shared.window);
        let result = shared.harvest(&plan, cpu, outcome.is_err());
        *window = None;
        result
    };
    lock(&shared.outcome).steps.push(result.clone());
    outcome.map(|()| result)
}

/// `--find-max`: windows at `rate`, `rate × factor`, … until one fails or `max_steps` ran.
/// It stops at the first failing window: past that point the server is saturated, and sessions it
/// dropped as slow consumers would distort every later window.
async fn find_max(shared: &Arc<Shared>, requests: &Requests) -> anyhow::Result<()> {
    let p = &shared.params;
    let mut rate = p.rate;
    for step in 0..p.max_steps {
        let result = run_window(shared, requests, step, rate).await?;
        if !result.ok {
            break;
        }
        rate *= p.step_factor;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Idle

/// Holds every joined session for `duration`, then reads the server's VmRSS (not VmHWM: the
/// question is what the sessions cost now, not the peak of the join burst).
async fn hold_idle(shared: &Shared, rss_start_kb: Option<u64>) -> anyhow::Result<()> {
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
    let Some(pid) = p.server_pid else {
        shared.note("idle: pass --server-pid to measure the server's RSS per session");
        return Ok(());
    };
    let rss_joined_kb = status_kb(&pid.to_string(), "VmRSS");
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

// ---------------------------------------------------------------------------------------------
// Churn

/// Sessions are split into `conns` groups; each group repeatedly dials a fresh connection, runs
/// one cycle (open, JOIN, chat, close, drain) for all its sessions at once, and hangs up. Then the
/// server's VmRSS is watched for up to `settle` to come back within 10% of its pre-churn value.
async fn churn(shared: &Arc<Shared>) -> anyhow::Result<()> {
    let p = &shared.params;
    let pid = p.server_pid.map(|pid| pid.to_string());
    let rss_start_kb = pid.as_deref().and_then(|pid| status_kb(pid, "VmRSS"));
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

    let (Some(pid), Some(start_kb)) = (pid, rss_start_kb) else {
        shared.note("churn: pass --server-pid to check that the server's RSS comes back");
        return Ok(());
    };
    shared.progress.stage("settle", p.settle.as_millis() as u64);
    let settle_start = Instant::now();
    let settle_end = settle_start + p.settle;
    let within = |kb: u64| kb as f64 <= start_kb as f64 * (1.0 + RSS_TOLERANCE);
    let mut after_kb = status_kb(&pid, "VmRSS");
    while !after_kb.is_some_and(within) && Instant::now() < settle_end {
        shared.progress.update(
            settle_start.elapsed().as_millis() as u64,
            format!(
                "server VmRSS {} kB, before {start_kb} kB",
                after_kb.unwrap_or(0)
            ),
        );
        time::sleep(Duration::from_millis(500)).await;
        after_kb = status_kb(&pid, "VmRSS");
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
        let channel = match connect(&uri).await {
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
    let room = room_name(index % p.rooms);
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

fn truncate(mut text: String, chars: usize) -> String {
    if let Some((cut, _)) = text.char_indices().nth(chars) {
        text.truncate(cut);
    }
    text
}

// ---------------------------------------------------------------------------------------------
// Progress, report, watchdog, main

/// The progress bar on stderr; hidden under `--json` or when stderr is not a terminal, so scripts
/// and pipes only ever see the report.
struct Progress(ProgressBar);

impl Progress {
    fn new(visible: bool) -> Progress {
        if !visible {
            return Progress(ProgressBar::hidden());
        }
        let bar = ProgressBar::with_draw_target(Some(1), ProgressDrawTarget::stderr());
        // unwrap: a constant, valid template
        let style = ProgressStyle::with_template("{prefix:>8} [{bar:30}] {msg}")
            .unwrap()
            .progress_chars("=> ");
        bar.set_style(style);
        Progress(bar)
    }

    fn stage(&self, prefix: impl Into<Cow<'static, str>>, length: u64) {
        self.0.set_prefix(prefix);
        self.0.set_length(length.max(1));
        self.0.set_position(0);
        self.0.set_message("");
    }

    fn update(&self, position: u64, message: String) {
        self.0.set_position(position);
        self.0.set_message(message);
    }

    fn set_message(&self, message: &'static str) {
        self.0.set_message(message);
    }

    fn clear(&self) {
        self.0.finish_and_clear();
    }
}

/// The whole run as one JSON object (the `--json` line; the table is printed from it too).
fn build_report(shared: &Shared) -> Value {
    let p = &shared.params;
    let outcome = lock(&shared.outcome);
    let best = outcome
        .steps
        .iter()
        .filter(|s| s.ok)
        .max_by(|a, b| a.deliveries_per_sec.total_cmp(&b.deliveries_per_sec));
    let summary = match p.mode {
        Mode::Churn => {
            let churn = &shared.churn;
            StepResult::new(StepCounts {
                step: 0,
                rate: p.rate,
                sent: churn.sent.load(Relaxed),
                delivered: churn.received.load(Relaxed),
                expected: None,
                window: p.duration,
                latency: &lock(&churn.latency),
                streams_ended: 0,
                server_cpu_s: None,
                loadgen_cpu_s: None,
                partial: false,
            })
        }
        Mode::Idle => StepResult::empty(0.0),
        Mode::Window | Mode::FindMax => best
            .or(outcome.steps.last())
            .cloned()
            .unwrap_or_else(|| StepResult::empty(p.rate)),
    };
    let pid = p.server_pid.map(|pid| pid.to_string());
    let mut report = json!({
        "scenario": p.scenario.map(Scenario::name),
        "server": p.servers.join(","),
        "sessions": p.sessions,
        "conns": p.conns,
        "rooms": p.rooms,
        "senders": p.senders,
        "rate": summary.rate,
        "size": p.size,
        "warmup_s": p.warmup.as_secs_f64(),
        "duration_s": p.duration.as_secs_f64(),
        "find_max": p.mode == Mode::FindMax,
        // Churn: JOINs over all cycles; otherwise the sessions counted as members.
        "joined": shared.joined.load(Relaxed),
        "join_s": outcome.join_s,
        "sent": summary.sent,
        "delivered": summary.delivered,
        "expected": summary.expected,
        "delivery_ratio": summary.delivery_ratio,
        "deliveries_per_sec": summary.deliveries_per_sec,
        "p50_ms": summary.p50_ms,
        "p90_ms": summary.p90_ms,
        "p99_ms": summary.p99_ms,
        "p999_ms": summary.p999_ms,
        "max_ms": summary.max_ms,
        "partial": summary.partial,
        "late": shared.late_total(),
        "error_codes": shared.error_codes.snapshot(),
        "ended_by_server": shared.ended_by_server.snapshot(),
        "transport_failures": shared.transport_failures.snapshot(),
        "loadgen_cpu_s": cpu_seconds("self"),
    });
    // unwrap: `json!` of an object literal is an object
    let fields = report.as_object_mut().unwrap();
    if let Some(pid) = &pid {
        fields.insert("server_pid".into(), json!(p.server_pid));
        fields.insert("server_peak_rss_kb".into(), json!(status_kb(pid, "VmHWM")));
        fields.insert("server_cpu_s".into(), json!(cpu_seconds(pid)));
    }
    if p.mode == Mode::Churn {
        fields.insert("cycles".into(), json!(shared.churn.cycles.load(Relaxed)));
    }
    if p.mode == Mode::FindMax {
        fields.insert("steps".into(), json!(outcome.steps));
        fields.insert(
            "max_ok_deliveries_per_sec".into(),
            json!(best.map(|s| s.deliveries_per_sec)),
        );
        fields.insert("max_ok_rate".into(), json!(best.map(|s| s.rate)));
    }
    for (key, value) in &outcome.extra {
        fields.insert(key.clone(), value.clone());
    }
    fields.insert("notes".into(), json!(outcome.notes));
    report
}

/// A JSON value for the table: numbers as they are, null as `-`.
fn show(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn show_counts(value: &Value) -> String {
    match value.as_object() {
        Some(map) if !map.is_empty() => map
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", "),
        _ => "none".to_owned(),
    }
}

/// The human summary of `report`.
fn render_table(report: &Value, mode: Mode) -> String {
    let r = |key: &str| show(&report[key]);
    let mut out = String::new();
    let mut line = |label: &str, text: String| {
        writeln!(out, "{label:<11} {text}").ok();
    };
    line(
        "chat-bench",
        format!(
            "scenario {} · {} sessions over {} connections to {} · {} rooms · {} senders · {} B",
            r("scenario"),
            r("sessions"),
            r("conns"),
            r("server"),
            r("rooms"),
            r("senders"),
            r("size")
        ),
    );
    line(
        "joined",
        format!("{}/{} in {} s", r("joined"), r("sessions"), r("join_s")),
    );
    match mode {
        Mode::Idle => {}
        Mode::Churn => line(
            "churn",
            format!(
                "{} s, {} completed cycles at {} CHATs/s per sender",
                r("duration_s"),
                r("cycles"),
                r("rate")
            ),
        ),
        Mode::Window | Mode::FindMax => line(
            "window",
            format!(
                "{} s warm-up + {} s measured at {} CHATs/s per sender",
                r("warmup_s"),
                r("duration_s"),
                r("rate")
            ),
        ),
    }
    if mode != Mode::Idle {
        line("sent", r("sent"));
        line(
            "delivered",
            format!(
                "{} of {} expected (ratio {}), {} deliveries/s, {} late",
                r("delivered"),
                r("expected"),
                r("delivery_ratio"),
                r("deliveries_per_sec"),
                r("late")
            ),
        );
        line(
            "latency ms",
            format!(
                "p50 {} · p90 {} · p99 {} · p99.9 {} · max {}",
                r("p50_ms"),
                r("p90_ms"),
                r("p99_ms"),
                r("p999_ms"),
                r("max_ms")
            ),
        );
    }
    line("errors", show_counts(&report["error_codes"]));
    line("ended", show_counts(&report["ended_by_server"]));
    line("transport", show_counts(&report["transport_failures"]));
    if !report["server_pid"].is_null() {
        line(
            "server",
            format!(
                "pid {}: peak RSS {} kB, CPU {} s",
                r("server_pid"),
                r("server_peak_rss_kb"),
                r("server_cpu_s")
            ),
        );
    }
    if !report["server_rss_joined_kb"].is_null() {
        line(
            "server RSS",
            format!(
                "{} kB at start, {} kB with the sessions joined: {} bytes per session",
                r("server_rss_start_kb"),
                r("server_rss_joined_kb"),
                r("server_rss_per_session_bytes")
            ),
        );
    }
    if !report["server_rss_before_kb"].is_null() {
        line(
            "server RSS",
            format!(
                "{} kB before, {} kB after ({} %, within 10%: {})",
                r("server_rss_before_kb"),
                r("server_rss_after_kb"),
                r("server_rss_change_pct"),
                r("server_rss_within_10pct")
            ),
        );
    }
    line("loadgen", format!("CPU {} s", r("loadgen_cpu_s")));
    if let Some(steps) = report["steps"].as_array() {
        writeln!(
            out,
            "\n{:>4} {:>10} {:>9} {:>11} {:>11} {:>9} {:>12} {:>8} {:>8} {:>8}  ok",
            "step",
            "rate/s",
            "sent",
            "delivered",
            "expected",
            "ratio",
            "deliv/s",
            "p50 ms",
            "p99 ms",
            "max ms"
        )
        .ok();
        for s in steps {
            let f = |key: &str| show(&s[key]);
            writeln!(
                out,
                "{:>4} {:>10} {:>9} {:>11} {:>11} {:>9} {:>12} {:>8} {:>8} {:>8}  {}{}",
                f("step"),
                format!("{:.2}", s["rate"].as_f64().unwrap_or(0.0)),
                f("sent"),
                f("delivered"),
                f("expected"),
                f("delivery_ratio"),
                f("deliveries_per_sec"),
                f("p50_ms"),
                f("p99_ms"),
                f("max_ms"),
                if s["ok"] == json!(true) { "yes" } else { "no" },
                if s["partial"] == json!(true) {
                    " (partial)"
                } else {
                    ""
                },
            )
            .ok();
        }
        writeln!(
            out,
            "max        {} deliveries/s with ratio 1.0 and p99 ≤ {FIND_MAX_P99_MS} ms (rate {})",
            r("max_ok_deliveries_per_sec"),
            r("max_ok_rate")
        )
        .ok();
    }
    for note in report["notes"].as_array().into_iter().flatten() {
        writeln!(out, "note        {}", show(note)).ok();
    }
    out
}

/// Prints the report once (JSON line or table) and exits with `code`. Whoever comes first, `main`
/// or the watchdog, holds the print lock until the process is gone, so the output is never doubled.
fn finish(shared: &Shared, code: u8) -> ! {
    let _printing = lock(&shared.printing);
    shared.stopping.store(true, Relaxed);
    let in_progress = lock(&shared.window).take();
    if let Some(plan) = in_progress {
        let partial = shared.harvest(&plan, None, true);
        lock(&shared.outcome).steps.push(partial);
    }
    shared.progress.clear();
    let report = build_report(shared);
    let text = if shared.params.json {
        format!("{report}\n")
    } else {
        render_table(&report, shared.params.mode)
    };
    let mut stdout = std::io::stdout().lock();
    // Nothing sensible is left to do if stdout is gone; the exit code still tells.
    let _ = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush());
    std::process::exit(i32::from(code));
}

/// A plain thread, not a task: it must fire even if the async runtime is wedged.
fn spawn_watchdog(shared: Arc<Shared>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            std::thread::sleep(shared.params.deadline);
            shared.note(format!(
                "hard deadline of {} s hit: results are partial",
                shared.params.deadline.as_secs_f64()
            ));
            finish(&shared, EXIT_DEADLINE);
        })
        .map(drop)
}

async fn run(shared: Arc<Shared>) -> anyhow::Result<()> {
    let p = &shared.params;
    if p.mode == Mode::Churn {
        return churn(&shared).await;
    }
    let rss_start_kb = p
        .server_pid
        .and_then(|pid| status_kb(&pid.to_string(), "VmRSS"));
    // Declared before `requests` so the connections outlive the request side (locals drop in
    // reverse order): closing the requests first marks the run as stopping.
    let channels = connect_all(&shared).await?;
    let requests = open_sessions(&shared, &channels).await?;
    spawn_heartbeat(requests.senders.clone());
    if p.mode == Mode::Idle {
        hold_idle(&shared, rss_start_kb).await
    } else if p.mode == Mode::FindMax {
        find_max(&shared, &requests).await
    } else {
        run_window(&shared, &requests, 0, p.rate).await.map(drop)
    }
}

fn main() {
    let params = match Params::from_args(Args::parse()) {
        Ok(params) => params,
        Err(error) => {
            eprintln!("chat-bench: {error:#}");
            std::process::exit(i32::from(EXIT_USAGE));
        }
    };
    if params.sessions.div_ceil(params.conns) > SERVER_STREAMS_PER_CONN {
        eprintln!(
            "chat-bench: warning: {} sessions per connection is above the server's default \
             max_concurrent_streams ({SERVER_STREAMS_PER_CONN}); the rest wait in HTTP/2",
            params.sessions.div_ceil(params.conns)
        );
    }
    LazyLock::force(&CLOCK);
    let shared = Arc::new(Shared::new(params));
    let started = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .and_then(|runtime| spawn_watchdog(shared.clone()).map(|()| runtime));
    let runtime = match started {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("chat-bench: cannot start: {error}");
            std::process::exit(i32::from(EXIT_FAILED));
        }
    };
    let code = match runtime.block_on(run(shared.clone())) {
        Ok(()) => 0,
        Err(error) => {
            // Reported once, as a note of the report (table or JSON) that follows.
            shared.note(format!("run failed: {error:#}"));
            EXIT_FAILED
        }
    };
    finish(&shared, code);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(args: &[&str]) -> anyhow::Result<Params> {
        let args = Args::try_parse_from(std::iter::once("chat-bench").chain(args.iter().copied()))?;
        Params::from_args(args)
    }

    #[test]
    fn only_loopback_addresses_are_accepted() {
        assert_eq!(
            loopback_uri("127.0.0.1:50051").unwrap(),
            "http://127.0.0.1:50051"
        );
        assert_eq!(
            loopback_uri("http://127.1.2.3:9/").unwrap(),
            "http://127.1.2.3:9"
        );
        assert_eq!(loopback_uri("[::1]:80").unwrap(), "http://[::1]:80");
        assert_eq!(loopback_uri("localhost:1").unwrap(), "http://localhost:1");
        for refused in [
            "10.0.0.1:50051",
            "example.com:80",
            "http://0.0.0.0:50051",
            "https://127.0.0.1:443",
            "[::ffff:10.0.0.1]:80",
            "127.0.0.1",
            "127.0.0.1:0",
            "127.0.0.1:80/x",
        ] {
            assert!(loopback_uri(refused).is_err(), "{refused} accepted");
        }
        let message = loopback_uri("192.168.1.1:80").unwrap_err().to_string();
        assert!(message.contains("loopback"), "{message}");
    }

    #[test]
    fn marker_round_trips_and_pads() {
        let marker = Marker {
            measured: true,
            step: 7,
            sent_nanos: 1_712_345_678_901_234_567,
        };
        let content = marker.content(64);
        assert_eq!(content.len(), 64);
        assert!(content.starts_with("M07|1712345678901234567|xxx"));
        assert_eq!(Marker::parse(&content), Some(marker));
        let warm = Marker {
            measured: false,
            step: 0,
            sent_nanos: 5,
        };
        assert_eq!(warm.content(HEADER_LEN), "W00|0000000000000000005|");
        assert_eq!(Marker::parse(&warm.content(HEADER_LEN)), Some(warm));
        for bad in [
            "",
            "hello",
            "X00|0000000000000000005|",
            "M0a|0000000000000000005|",
        ] {
            assert_eq!(Marker::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn defaults_and_presets_with_overrides() {
        let p = params(&[]).unwrap();
        assert_eq!((p.sessions, p.conns, p.rooms, p.senders), (1000, 40, 1, 10));
        assert_eq!(p.mode, Mode::Window);

        let p = params(&["--scenario", "fanout", "--rate", "50"]).unwrap();
        assert_eq!(p.mode, Mode::FindMax);
        assert_eq!(
            (p.sessions, p.rooms, p.senders, p.rate),
            (1000, 1, 10, 50.0)
        );

        let p = params(&["--scenario", "rooms"]).unwrap();
        assert_eq!(
            (p.sessions, p.rooms, p.senders, p.rate),
            (10_000, 1000, 1000, 2.0)
        );

        let p = params(&[
            "--scenario",
            "idle",
            "--sessions",
            "50000",
            "--conns",
            "1000",
        ])
        .unwrap();
        assert_eq!(
            (p.mode, p.conns, p.rooms, p.senders),
            (Mode::Idle, 1000, 2500, 0)
        );

        let p = params(&["--scenario", "churn", "--duration", "5"]).unwrap();
        assert_eq!((p.mode, p.sessions, p.senders), (Mode::Churn, 2000, 2000));
        assert_eq!(p.duration, Duration::from_secs(5));
    }

    #[test]
    fn connections_round_up_to_a_multiple_of_the_servers() {
        let p = params(&["--server", "127.0.0.1:1,127.0.0.1:2", "--sessions", "75"]).unwrap();
        assert_eq!(p.conns, 4);
        assert_eq!(p.servers, ["http://127.0.0.1:1", "http://127.0.0.1:2"]);
    }

    #[test]
    fn impossible_runs_are_refused() {
        let too_small = params(&["--size", "10"]).unwrap_err().to_string();
        assert!(too_small.contains("--size 10"), "{too_small}");
        let files = params(&["--sessions", "30000", "--conns", "30000"]).unwrap_err();
        assert!(files.to_string().contains("open files"), "{files}");
        assert!(params(&["--scenario", "idle", "--find-max"]).is_err());
        assert!(params(&["--duration", "0"]).is_err());
        assert!(params(&["--rate", "0"]).is_err());
    }

    #[test]
    fn a_window_passes_only_when_complete_and_fast() {
        let mut latency = new_histogram();
        for us in [500, 1_000, 2_000] {
            record_latency(&mut latency, us);
        }
        let counts = |delivered, streams_ended| StepCounts {
            step: 0,
            rate: 10.0,
            sent: 10,
            delivered,
            expected: Some(100),
            window: Duration::from_secs(2),
            latency: &latency,
            streams_ended,
            server_cpu_s: None,
            loadgen_cpu_s: None,
            partial: false,
        };
        let full = StepResult::new(counts(100, 0));
        assert!(full.ok);
        assert_eq!(full.delivery_ratio, Some(1.0));
        assert_eq!(full.deliveries_per_sec, 50.0);
        assert!(!StepResult::new(counts(99, 0)).ok);
        assert!(!StepResult::new(counts(100, 1)).ok);
    }
}
