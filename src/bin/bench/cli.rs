//! Command line and presets: [`Args`] as clap parses them, the suite's [`Scenario`] presets, and
//! [`Params`], the validated plan every other module reads (sessions, connections, rooms, rates,
//! timings, mode). Also the loopback-only address check and the span parser of `--soak`.

use std::{net::IpAddr, time::Duration};

use anyhow::{Context as _, bail};
use clap::{Parser, ValueEnum};

use crate::{
    hostile::Probe,
    proc::{open_files_limit, status_kb},
    window::SENDER_LEAD,
    wire::HEADER_LEN,
};

/// Streams per HTTP/2 connection when `--conns` is not given: one connection's reader must keep up
/// with its share of a fan-out (see [`crate::client::CONNECTION_WINDOW`]) without needing
/// thousands of sockets.
const STREAMS_PER_CONN: usize = 25;
/// The machine's cap on open files per process; each connection is one socket, streams are free.
const MAX_OPEN_FILES: usize = 20_000;
/// Descriptors kept for everything that is not a connection (runtime, stdio, /proc reads).
const RESERVED_FILES: usize = 64;
/// The server's default `max_concurrent_streams`; more sessions per connection queue in h2.
pub const SERVER_STREAMS_PER_CONN: usize = 1024;
/// Added to the planned length of a run to form the default hard deadline.
const DEADLINE_MARGIN: Duration = Duration::from_secs(30);
/// Churn: bound on one cycle beyond its paced chats, and on the in-flight cycles after the end.
pub const CHURN_CYCLE_SLACK: Duration = Duration::from_secs(10);
/// Churn with --rounds: bounds on the waits after each round, for the server's sessions to close
/// and then for its RSS to stop falling.
pub const CHURN_SESSIONS_GONE: Duration = Duration::from_secs(10);
pub const CHURN_RSS_STEADY_WAIT: Duration = Duration::from_secs(5);
/// Fairness: rooms `bench-a` … `bench-z`, one letter each.
const FAIRNESS_MAX_ROOMS: usize = 26;
/// Fairness: members per room when `--sessions` is not given.
const FAIRNESS_ROOM_SIZE: usize = 10;
/// Longest span `--soak` and the second-valued flags accept: a day.
const MAX_SPAN_SECS: f64 = 86_400.0;
/// Stall: stalled streams per connection when `--conns` is not given. Several per connection, as
/// behind a NAT or a proxy, keeps 2,000 clients at 200 sockets.
const STALL_STREAMS_PER_CONN: usize = 10;
/// Stall: CHAT content when `--size` is not given: close to, but under, the shipped
/// `max_message_bytes` (4,096), so each queued message is as large as the server allows.
const STALL_SIZE: usize = 4_000;
/// Stall: the least window a stalled stream may advertise: its JOINED must still get through.
const STALL_MIN_WINDOW: u32 = 1_024;
/// Stall: bound on the phases around the flood (observer and fresh-client checks, the drain of
/// streams never reset), added to the plan's length.
pub const STALL_CHECKS: Duration = Duration::from_secs(15);

/// Stall: connections of the flooding senders (tonic, reading normally); see `STREAMS_PER_CONN`.
pub fn stall_sender_conns(sessions: usize) -> usize {
    sessions.div_ceil(STREAMS_PER_CONN)
}

/// Load generator for the chatrooms server (loopback only).
#[derive(Debug, Parser)]
#[command(version)]
pub struct Args {
    /// Server address(es), comma separated: host:port or http://host:port on 127.0.0.0/8, ::1 or
    /// localhost. Session i uses address i % n.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:50051")]
    server: Vec<String>,
    /// A preset of the benchmark suite; explicit flags override its values.
    #[arg(long, value_enum)]
    scenario: Option<Scenario>,
    /// Chat sessions (streams) [default: 1000; rooms, idle: 10000; churn: 2000; fairness: 10 per
    /// room].
    #[arg(long)]
    sessions: Option<usize>,
    /// HTTP/2 connections; session i uses connection i % conns [default: one per 25 sessions;
    /// idle: one per session; fairness: room A gets one more of its own].
    #[arg(long)]
    conns: Option<usize>,
    /// Rooms; session i joins bench-(i % rooms) [default: 1; rooms: sessions/10; idle, churn:
    /// sessions/20; fairness: 26, bench-a … bench-z].
    #[arg(long)]
    rooms: Option<usize>,
    /// Sessions 0..S-1 post CHATs [default: 10; rooms: 1000; idle: 0; churn: all; fairness: one
    /// per room].
    #[arg(long)]
    senders: Option<usize>,
    /// CHATs per second per sender; with --find-max, the first step's rate [default: 10; rooms: 2].
    #[arg(long)]
    rate: Option<f64>,
    /// CHAT content bytes, the 24-byte timestamp header included [default: 64; stall: 4000].
    #[arg(long)]
    size: Option<usize>,
    /// Seconds of unmeasured sending before each measured window [default: 2; idle, churn, soak:
    /// 0].
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
    /// Run the load (sessions, rooms, senders, rate) continuously this long (30s, 10m, 2h) and
    /// print a line every --soak-interval: deliveries, p99, errors and the server's RSS.
    #[arg(long, value_name = "DURATION", value_parser = parse_span)]
    soak: Option<Duration>,
    /// Time between --soak lines (s, m or h suffix).
    #[arg(long, value_name = "DURATION", value_parser = parse_span, default_value = "10s")]
    soak_interval: Duration,
    /// Server process(es) to watch, comma separated: one server, or a cluster's nodes and its
    /// Redis. The report gives each one's peak RSS and CPU seconds (/proc/PID) and their total
    /// CPU; the idle, churn and soak RSS figures are the sum over all of them. A run stops when
    /// one of them exits.
    #[arg(long, value_name = "PID[,PID…]", value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Run a hostile-client probe instead of a load (see the README's Reliability section):
    /// one session flooding PINGs for --duration, sockets that never speak, sessions of one user
    /// or of one address until the server refuses one. An observer PINGs throughout.
    #[arg(long, value_enum)]
    probe: Option<Probe>,
    /// PINGs, sockets or sessions the probe uses [default: ping-flood 300000; silent-sockets
    /// 2000; one-user 1000; one-ip 25000].
    #[arg(long)]
    probe_count: Option<usize>,
    /// Print exactly one JSON line on stdout instead of the table; no progress bar. With --soak,
    /// one JSON line per interval and then the report line.
    #[arg(long)]
    json: bool,
    /// Stall: how a stalled client stops reading. `window`: it advertises --stall-window bytes per
    /// stream and never reads its stream, so HTTP/2 flow control stays closed while its connection
    /// is still read (a reset is seen at once). `socket`: it advertises a huge window and stops
    /// reading the socket itself until the flood is over.
    #[arg(long, value_enum, default_value = "window")]
    stall_mode: StallMode,
    /// Stall, window mode: the HTTP/2 stream window each stalled client advertises (bytes); its
    /// connection window is this times its streams.
    #[arg(long, default_value_t = 65_535)]
    stall_window: u32,
    /// Stall: most CHATs each room's sender floods; it stops earlier once its stalled member is
    /// evicted (the LEAVE reaches it) or at --duration.
    #[arg(long, default_value_t = 1_024)]
    flood_messages: u64,
    /// Stall, and churn with --rounds: the server's Prometheus endpoint (loopback only; empty to
    /// skip). Stall scrapes it before and after the flood; churn waits on its
    /// `chat_sessions_open` after each round.
    #[arg(long, default_value = "http://127.0.0.1:9464/metrics")]
    metrics_url: String,
    /// Churn: rounds of --duration each. After every round, once the server's sessions are gone
    /// (`chat_sessions_open` back to its value at the start, from --metrics-url), the server's
    /// RSS is read (--server-pid), then again once it has stopped falling for 1 s (at most 5 s);
    /// the report lists both per round and the growth of the second over the last five rounds
    /// (issue 13: at most 6 % after three warm-up rounds, so --rounds 8).
    #[arg(long, default_value_t = 1)]
    rounds: u32,
}

/// How a stalled client of `--scenario stall` stops reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StallMode {
    /// A small HTTP/2 window that is never reopened; the connection is still read.
    Window,
    /// A huge HTTP/2 window, and the socket is not read at all.
    Socket,
}

impl StallMode {
    pub fn name(self) -> &'static str {
        match self {
            StallMode::Window => "window",
            StallMode::Socket => "socket",
        }
    }
}

/// What `--scenario stall` needs beyond the common plan.
#[derive(Debug, Clone)]
pub struct StallParams {
    pub mode: StallMode,
    pub window: u32,
    pub flood_messages: u64,
    /// Connections of the flooding senders.
    pub sender_conns: usize,
}

/// The scenarios of the benchmark suite (issues 5 and 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// 1 room × 1,000 members, 10 senders, --find-max.
    Fanout,
    /// 10,000 sessions in 1,000 rooms of 10, 1,000 senders at 2 msg/s.
    Rooms,
    /// Sessions that only join and hold (rooms of 20, one connection each): server RSS per session.
    Idle,
    /// 2,000 sessions connecting, joining, chatting and disconnecting in a loop for 60 s.
    Churn,
    /// Rooms bench-a … bench-z with one paced sender each, run twice: as is, then with room A's
    /// sender flooding at full speed; compares the other rooms' p99.
    Fairness,
    /// 2,000 clients that stop reading, each alone in room bench-stall-<i> with a flooding sender:
    /// server RSS, eviction-to-reset time, metrics, an observer's PONGs (issue 11).
    Stall,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Fanout => "fanout",
            Scenario::Rooms => "rooms",
            Scenario::Idle => "idle",
            Scenario::Churn => "churn",
            Scenario::Fairness => "fairness",
            Scenario::Stall => "stall",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One warm-up plus measured window at `rate`.
    Window,
    /// Windows at rising rates until one fails.
    FindMax,
    /// Join, hold, measure the server's RSS.
    Idle,
    /// Sessions cycle through connect, join, chat, disconnect.
    Churn,
    /// One long window with a report line every `soak_interval`.
    Soak,
    /// Two windows, the second with room A's sender flooding.
    Fairness,
    /// Stalled readers under a flood, one room each.
    Stall,
}

/// Everything a run needs, resolved from [`Args`] and the scenario preset and validated.
#[derive(Debug, Clone)]
pub struct Params {
    pub scenario: Option<Scenario>,
    pub mode: Mode,
    /// URIs tonic dials (`http://host:port`), all loopback.
    pub servers: Vec<String>,
    pub sessions: usize,
    /// Connections dialled; in fairness mode the last one carries room A alone.
    pub conns: usize,
    pub rooms: usize,
    pub senders: usize,
    pub rate: f64,
    pub size: usize,
    pub warmup: Duration,
    /// The measured window; in soak mode the whole soak.
    pub duration: Duration,
    pub settle: Duration,
    pub join_timeout: Duration,
    pub deadline: Duration,
    pub max_steps: u8,
    pub step_factor: f64,
    pub soak_interval: Duration,
    /// The processes `--server-pid` watches, each once, in the order given; empty without it.
    pub server_pids: Vec<u32>,
    pub json: bool,
    /// `--probe` and its count; the rest of the plan does not apply then.
    pub probe: Option<(Probe, usize)>,
    /// Set in stall mode only.
    pub stall: Option<StallParams>,
    /// `(host:port, path)` of the metrics endpoint, loopback; `None` when skipped.
    pub metrics: Option<(String, String)>,
    /// Churn: rounds of `duration` each.
    pub rounds: u32,
}

impl Params {
    pub fn from_args(args: Args) -> anyhow::Result<Params> {
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
        let mode = match (scenario, args.find_max, args.soak.is_some()) {
            (Some(Idle | Churn | Fairness | Stall), true, _) => {
                bail!(
                    "--find-max measures windows; it does not apply to the idle, churn, \
                     fairness or stall scenario"
                )
            }
            (Some(s @ (Fanout | Idle | Churn | Fairness | Stall)), _, true) => {
                bail!(
                    "--soak runs one steady load; it does not apply to the {} scenario",
                    s.name()
                )
            }
            (_, true, true) => bail!("--soak and --find-max exclude each other"),
            (Some(Idle), ..) => Mode::Idle,
            (Some(Churn), ..) => Mode::Churn,
            (Some(Fairness), ..) => Mode::Fairness,
            (Some(Stall), ..) => Mode::Stall,
            (_, _, true) => Mode::Soak,
            (Some(Fanout), ..) | (_, true, _) => Mode::FindMax,
            _ => Mode::Window,
        };
        if mode == Mode::Fairness && servers.len() > 1 {
            bail!("fairness compares rooms of one server; give a single --server");
        }

        let rooms = match (mode, args.rooms) {
            (Mode::Fairness, Some(r)) if !(2..=FAIRNESS_MAX_ROOMS).contains(&r) => {
                bail!("fairness: --rooms takes 2 to {FAIRNESS_MAX_ROOMS} (bench-a … bench-z)")
            }
            (Mode::Fairness, r) => Some(r.unwrap_or(FAIRNESS_MAX_ROOMS)),
            (_, r) => r,
        };
        let sessions = args.sessions.unwrap_or(match scenario {
            Some(Rooms | Idle) => 10_000,
            Some(Churn | Stall) => 2_000,
            Some(Fairness) => rooms.unwrap_or(FAIRNESS_MAX_ROOMS) * FAIRNESS_ROOM_SIZE,
            _ => 1_000,
        });
        if sessions == 0 {
            bail!("--sessions must be at least 1");
        }
        if mode == Mode::Stall && (rooms.is_some() || args.senders.is_some()) {
            bail!(
                "stall: every stalled client has a room and a sender of its own; drop --rooms \
                 and --senders"
            );
        }
        let rooms = rooms.unwrap_or(match scenario {
            Some(Stall) => sessions,
            Some(Rooms) => sessions.div_ceil(10),
            Some(Idle | Churn) => sessions.div_ceil(20),
            _ => 1,
        });
        if rooms == 0 {
            bail!("--rooms must be at least 1");
        }
        if mode == Mode::Fairness && sessions < rooms {
            bail!("fairness: --sessions {sessions} cannot give each of the {rooms} rooms a sender");
        }
        let senders = match (mode, args.senders) {
            (Mode::Idle, Some(s)) if s > 0 => bail!("idle sessions do not post; drop --senders"),
            (Mode::Idle, _) => 0,
            (Mode::Fairness, Some(s)) if s != rooms => {
                bail!("fairness: every room has exactly one sender; drop --senders")
            }
            // Session r is the first member of room r (session i joins room i % rooms).
            (Mode::Fairness, _) => rooms,
            (Mode::Stall, _) => sessions,
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
        let size = args
            .size
            .unwrap_or(if mode == Mode::Stall { STALL_SIZE } else { 64 });
        if size < HEADER_LEN {
            bail!(
                "--size {size} cannot hold the {HEADER_LEN}-byte timestamp header; use at least \
                 {HEADER_LEN}"
            );
        }
        let stall = if mode == Mode::Stall {
            if args.stall_window < STALL_MIN_WINDOW {
                bail!(
                    "--stall-window must be at least {STALL_MIN_WINDOW} bytes, so JOINED gets \
                     through"
                );
            }
            if args.flood_messages == 0 {
                bail!("--flood-messages must be at least 1");
            }
            Some(StallParams {
                mode: args.stall_mode,
                window: args.stall_window,
                flood_messages: args.flood_messages,
                sender_conns: stall_sender_conns(sessions),
            })
        } else {
            None
        };
        if args.rounds == 0 || (args.rounds > 1 && mode != Mode::Churn) {
            bail!("--rounds takes 1 or more, and more than 1 only with --scenario churn");
        }
        let metrics = match args.metrics_url.trim() {
            "" => None,
            url => Some(loopback_url(url)?),
        };
        if !(args.step_factor > 1.0 && args.step_factor <= 100.0) {
            bail!("--step-factor must be above 1 (and at most 100)");
        }

        let conns = connections(mode, scenario, args.conns, sessions, rooms, servers.len())?;
        let sockets = match &stall {
            // A churn group may dial its next connection before the old socket is gone.
            _ if mode == Mode::Churn => 2 * conns,
            // The senders' connections, the observer's, the fresh client's and a metrics scrape.
            Some(stall) => conns + stall.sender_conns + 3,
            None => conns,
        };
        let limit = open_files_limit(MAX_OPEN_FILES);
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
            if matches!(mode, Mode::Idle | Mode::Churn | Mode::Soak) {
                0.0
            } else {
                2.0
            },
            true,
        )?;
        let duration = match (args.soak, args.duration) {
            (Some(_), Some(_)) => bail!("--soak sets the length of the run; drop --duration"),
            (Some(soak), None) => soak,
            (None, duration) => seconds_or(
                "--duration",
                duration,
                match scenario {
                    Some(Fanout | Idle) => 5.0,
                    Some(Churn) => 60.0,
                    Some(Stall) => 30.0,
                    _ => 10.0,
                },
                false,
            )?,
        };
        let settle = seconds_or(
            "--settle",
            args.settle,
            match mode {
                Mode::Churn => 35.0,
                // The target reads the RSS 5 s after the flood.
                Mode::Stall => 5.0,
                _ => 2.0,
            },
            true,
        )?;
        let join_timeout = seconds("--join-timeout", args.join_timeout, false)?;
        let window = SENDER_LEAD + warmup + duration + settle;
        let planned = match mode {
            Mode::Window | Mode::Soak => join_timeout + window,
            Mode::FindMax => join_timeout + window * u32::from(args.max_steps),
            Mode::Fairness => join_timeout + window * 2,
            Mode::Idle => join_timeout + duration,
            Mode::Churn => {
                let round_end = CHURN_SESSIONS_GONE + CHURN_RSS_STEADY_WAIT;
                (duration + CHURN_CYCLE_SLACK + round_end) * args.rounds + settle
            }
            // Senders and stalled clients each join within the join timeout.
            Mode::Stall => join_timeout * 2 + duration + settle + STALL_CHECKS,
        };
        let deadline = match args.deadline {
            Some(d) => seconds("--deadline", d, false)?,
            None => planned + DEADLINE_MARGIN,
        };
        for (i, pid) in args.server_pid.iter().enumerate() {
            // Watched twice, a process would count twice in the total CPU and summed RSS.
            if args.server_pid[..i].contains(pid) {
                bail!("--server-pid {pid} is given twice; list each process once");
            }
            if status_kb(&pid.to_string(), "VmRSS").is_none() {
                bail!("--server-pid {pid}: no such process, or /proc/{pid}/status is not readable");
            }
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
            size,
            warmup,
            duration,
            settle,
            join_timeout,
            deadline,
            max_steps: args.max_steps,
            step_factor: args.step_factor,
            soak_interval: args.soak_interval,
            server_pids: args.server_pid,
            json: args.json,
            probe: args
                .probe
                .map(|probe| (probe, args.probe_count.unwrap_or(probe.default_count()))),
            stall,
            metrics,
            rounds: args.rounds,
        })
    }

    pub fn server_for_conn(&self, conn: usize) -> &str {
        &self.servers[conn % self.servers.len()]
    }

    /// The room session `index` joins.
    pub fn room_of(&self, index: usize) -> usize {
        index % self.rooms
    }

    /// The connection session `index` uses. Fairness gives room A (the flood) a connection of its
    /// own, so the generator's reads of the flood do not queue the other rooms' frames behind it.
    pub fn conn_of(&self, index: usize) -> usize {
        match self.mode {
            Mode::Fairness if self.room_of(index) == 0 => self.conns - 1,
            Mode::Fairness => index % (self.conns - 1),
            _ => index % self.conns,
        }
    }

    /// The server-side name of room `room`: `bench-<room>`, `bench-a` … `bench-z` for fairness,
    /// `bench-stall-<room>` for stall.
    /// Both match the shipped configuration's `bench-*` override, which lifts the rate limit.
    pub fn room_name(&self, room: usize) -> String {
        match self.mode {
            // Fairness has at most 26 rooms (checked in from_args), so the letter stays in a..=z.
            Mode::Fairness => format!("bench-{}", char::from(b'a' + room as u8)),
            Mode::Stall => format!("bench-stall-{room}"),
            _ => format!("bench-{room}"),
        }
    }

    /// Whether room `room` counts in a window's sent/delivered/latency figures. Fairness keeps
    /// room A (the flood) out, so its figures are those of rooms B..Z.
    pub fn counts_room(&self, room: usize) -> bool {
        !(self.mode == Mode::Fairness && room == 0)
    }
}

/// How many connections to dial, rounded so connection c lands on server c % n.
fn connections(
    mode: Mode,
    scenario: Option<Scenario>,
    conns: Option<usize>,
    sessions: usize,
    rooms: usize,
    servers: usize,
) -> anyhow::Result<usize> {
    if mode == Mode::Fairness {
        // The flag counts the connections of rooms B..Z; room A gets one more.
        let others = sessions - sessions.div_ceil(rooms);
        let conns = conns.unwrap_or(others.div_ceil(STREAMS_PER_CONN));
        if conns == 0 && others > 0 {
            bail!("--conns must be at least 1");
        }
        return Ok(conns.min(others).max(1) + 1);
    }
    let mut conns = conns.unwrap_or(match scenario {
        Some(Scenario::Idle) => sessions,
        Some(Scenario::Stall) => sessions.div_ceil(STALL_STREAMS_PER_CONN),
        _ => sessions.div_ceil(STREAMS_PER_CONN),
    });
    if conns == 0 {
        bail!("--conns must be at least 1");
    }
    conns = conns.min(sessions);
    // Connection c dials server c % n; rounding conns to a multiple of n keeps session i, on
    // connection i % conns, on server i % n.
    if !conns.is_multiple_of(servers) {
        conns = conns.div_ceil(servers) * servers;
    }
    Ok(conns)
}

/// `value` seconds of `flag` as a [`Duration`]; finite, not negative, at most a day.
fn seconds(flag: &str, value: f64, zero_ok: bool) -> anyhow::Result<Duration> {
    let least = if zero_ok { "0 or more" } else { "above 0" };
    if !value.is_finite() || value < 0.0 || (!zero_ok && value == 0.0) || value > MAX_SPAN_SECS {
        bail!("{flag} takes seconds, {least} and at most 86400; got {value}");
    }
    Ok(Duration::from_secs_f64(value))
}

/// A span such as `30s`, `10m`, `1.5h` or `90` (seconds): above zero, at most a day.
fn parse_span(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit_secs) = match text.chars().last() {
        Some('s' | 'S') => (&text[..text.len() - 1], 1.0),
        Some('m' | 'M') => (&text[..text.len() - 1], 60.0),
        Some('h' | 'H') => (&text[..text.len() - 1], 3_600.0),
        _ => (text, 1.0),
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s, 10m or 1h"))?;
    let secs = value * unit_secs;
    if !secs.is_finite() || secs <= 0.0 || secs > MAX_SPAN_SECS {
        return Err(format!("{text:?}: a duration above 0 and at most 24h"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `url` (`http://host:port/path`) as `(host:port, /path)`, refusing anything not loopback.
fn loopback_url(url: &str) -> anyhow::Result<(String, String)> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url:?}: expected http://host:port/path"))?;
    let (host_port, path) = match rest.find('/') {
        Some(cut) => rest.split_at(cut),
        None => (rest, "/"),
    };
    loopback_uri(host_port)?;
    Ok((host_port.to_owned(), path.to_owned()))
}

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
        assert_eq!((p.duration, p.rounds), (Duration::from_secs(5), 1));

        let p = params(&["--scenario", "churn", "--duration", "5", "--rounds", "8"]).unwrap();
        assert_eq!(p.rounds, 8);
        assert!(params(&["--scenario", "churn", "--rounds", "0"]).is_err());
        assert!(params(&["--rounds", "2"]).is_err(), "rounds are churn's");
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
    fn server_pids_are_comma_separated_live_and_distinct() {
        // Two processes that live as long as the test: itself and whoever started it.
        let (me, parent) = (std::process::id(), std::os::unix::process::parent_id());
        let (me_arg, parent_arg) = (me.to_string(), parent.to_string());
        assert!(params(&[]).unwrap().server_pids.is_empty());
        let one = params(&["--server-pid", &me_arg]).unwrap();
        assert_eq!(one.server_pids, [me]);
        let two = params(&["--server-pid", &format!("{parent},{me}")]).unwrap();
        assert_eq!(two.server_pids, [parent, me], "kept in the order given");
        let repeated = params(&["--server-pid", &me_arg, "--server-pid", &parent_arg]).unwrap();
        assert_eq!(repeated.server_pids, [me, parent]);

        let twice = params(&["--server-pid", &format!("{me},{parent},{me}")]).unwrap_err();
        assert!(twice.to_string().contains("given twice"), "{twice}");
        // Above any pid_max Linux allows, so never a process.
        let gone = params(&["--server-pid", &format!("{me},{}", u32::MAX)]).unwrap_err();
        assert!(
            gone.to_string()
                .contains(&format!("--server-pid {}: no such process", u32::MAX)),
            "{gone}"
        );
        for malformed in ["", "12,", "12;13", "12 13", "-1", "abc"] {
            assert!(
                params(&["--server-pid", malformed]).is_err(),
                "{malformed:?} accepted"
            );
        }
    }

    #[test]
    fn spans_take_seconds_minutes_and_hours() {
        assert_eq!(parse_span("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_span("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_span("2h"), Ok(Duration::from_secs(7_200)));
        assert_eq!(parse_span("1.5m"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_span("45"), Ok(Duration::from_secs(45)));
        for bad in ["", "s", "0s", "-3m", "10ms", "1d", "25h", "ten"] {
            assert!(parse_span(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn soak_runs_the_configured_load_for_its_span() {
        let p = params(&["--soak", "10m", "--sessions", "100", "--rooms", "10"]).unwrap();
        assert_eq!(p.mode, Mode::Soak);
        assert_eq!(p.duration, Duration::from_secs(600));
        assert_eq!(p.soak_interval, Duration::from_secs(10));
        assert_eq!(p.warmup, Duration::ZERO);
        assert_eq!((p.sessions, p.rooms, p.senders), (100, 10, 10));
        // The hard deadline is the soak plus joining, settling and the margin.
        assert_eq!(
            p.deadline,
            Duration::from_millis(600_000 + 30_000 + 100 + 2_000 + 30_000)
        );

        let p = params(&[
            "--scenario",
            "rooms",
            "--soak",
            "30s",
            "--soak-interval",
            "1m",
        ])
        .unwrap();
        assert_eq!((p.mode, p.rate), (Mode::Soak, 2.0));
        assert_eq!(p.soak_interval, Duration::from_secs(60));

        assert!(params(&["--soak", "1m", "--find-max"]).is_err());
        assert!(params(&["--soak", "1m", "--duration", "5"]).is_err());
        assert!(params(&["--soak", "1m", "--scenario", "churn"]).is_err());
        assert!(params(&["--soak", "1m", "--soak-interval", "0s"]).is_err());
    }

    #[test]
    fn stall_gives_each_stalled_client_a_room_and_a_sender() {
        let p = params(&["--scenario", "stall"]).unwrap();
        assert_eq!(p.mode, Mode::Stall);
        assert_eq!(
            (p.sessions, p.rooms, p.senders, p.conns, p.size),
            (2000, 2000, 2000, 200, 4000)
        );
        assert_eq!(p.settle, Duration::from_secs(5));
        assert_eq!(p.room_name(7), "bench-stall-7");
        let stall = p.stall.unwrap();
        assert_eq!((stall.mode, stall.window), (StallMode::Window, 65_535));
        assert_eq!(stall.sender_conns, 80);
        assert_eq!(
            p.metrics,
            Some(("127.0.0.1:9464".into(), "/metrics".into()))
        );

        let p = params(&[
            "--scenario",
            "stall",
            "--sessions",
            "10",
            "--stall-mode",
            "socket",
            "--metrics-url",
            "",
        ])
        .unwrap();
        assert_eq!(
            (p.conns, p.stall.as_ref().unwrap().mode),
            (1, StallMode::Socket)
        );
        assert!(p.metrics.is_none());
        assert!(params(&["--scenario", "stall", "--rooms", "3"]).is_err());
        assert!(params(&["--scenario", "stall", "--stall-window", "100"]).is_err());
        let remote = params(&[
            "--scenario",
            "stall",
            "--metrics-url",
            "http://10.0.0.1:9464/metrics",
        ])
        .unwrap_err();
        assert!(remote.to_string().contains("loopback"), "{remote}");
    }

    #[test]
    fn fairness_gives_each_lettered_room_one_sender_and_room_a_its_own_connection() {
        let p = params(&["--scenario", "fairness"]).unwrap();
        assert_eq!(p.mode, Mode::Fairness);
        assert_eq!(
            (p.sessions, p.rooms, p.senders, p.rate),
            (260, 26, 26, 10.0)
        );
        assert_eq!(
            (p.room_name(0), p.room_name(25)),
            ("bench-a".into(), "bench-z".into())
        );
        // 250 sessions in rooms B..Z over 10 connections, room A's 10 on the 11th.
        assert_eq!(p.conns, 11);
        assert_eq!(p.conn_of(0), 10);
        assert_eq!(p.conn_of(26), 10);
        assert_eq!(p.conn_of(27), 7);
        assert!(!p.counts_room(0) && p.counts_room(1));

        let p = params(&["--scenario", "fairness", "--rooms", "4", "--sessions", "12"]).unwrap();
        assert_eq!((p.rooms, p.senders, p.conns), (4, 4, 2));
        assert!(params(&["--scenario", "fairness", "--rooms", "27"]).is_err());
        assert!(params(&["--scenario", "fairness", "--senders", "3"]).is_err());
        assert!(params(&["--scenario", "fairness", "--sessions", "20"]).is_err());
        assert!(params(&["--scenario", "fairness", "--find-max"]).is_err());
    }
}
