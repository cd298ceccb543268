//! `chat-bench`: the project's load generator. It opens N sessions (`u0…`) over M HTTP/2
//! connections to a running server (loopback only), JOINs each to room `bench-<i % rooms>`, and
//! once all are JOINED lets sessions 0..S post timestamped CHATs at R msg/s. Every session reads its
//! own stream and records the end-to-end latency of each CHAT into an HDR histogram, and the run
//! counts deliveries against `expected` = Σ rooms (measured CHATs sent × members).
//!
//! Modes: one measured window (default), `--find-max` (raise R until delivery or p99 breaks),
//! `--soak` (the same load for minutes or hours, a line per interval with the server's RSS), and
//! the suite's `--scenario` presets `fanout`, `rooms`, `idle` (server RSS per joined session),
//! `churn` (sessions come and go; does the server's RSS come back?), `fairness` (does a flooder
//! in one room slow the others?) and `stall` (clients that stop reading under a flood: is their
//! memory given back, their stream reset, the rest served?). It shows a progress bar on stderr and prints a summary table, or
//! with `--json` exactly one JSON line (soak: one per interval, then the report), on stdout. It
//! always ends on its own: a watchdog thread prints what it has and exits 3 at the hard deadline.
//!
//! Modules, in the order a run uses them:
//! - `cli`: arguments, presets, validation → `Params`; `proc`: /proc readings;
//! - `wire`: requests and the CHAT timestamp marker; `shared`: state of sessions and the run;
//! - `client`: connections, streams, reader tasks; `window`: senders and measured windows,
//!   `--find-max`; `idle`, `churn`, `soak`, `fairness`, `stall`: one module per mode (`stall` with
//!   `stalled`, its raw HTTP/2 clients, and `probe`: observer, fresh client, metrics scrape);
//! - `stats`: histograms, counts, per-window results; `report`: progress, report, watchdog;
//! - `hostile`: `--probe`, hostile clients against the server's abuse limits.

mod churn;
mod cli;
mod client;
mod fairness;
mod hostile;
mod idle;
mod probe;
mod proc;
mod report;
mod shared;
mod soak;
mod stall;
mod stalled;
mod stats;
mod window;
mod wire;

use std::sync::{Arc, LazyLock};

use clap::Parser as _;

use crate::{
    cli::{Args, Mode, Params, SERVER_STREAMS_PER_CONN},
    client::{connect_all, open_sessions, spawn_heartbeat},
    proc::total_rss_kb,
    report::{finish, spawn_watchdog},
    shared::Shared,
    wire::CLOCK,
};

/// Exit codes besides 0: a run that failed (cannot connect, nobody joined, server gone), a usage
/// error, and the hard deadline.
const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;
pub const EXIT_DEADLINE: u8 = 3;

async fn run(shared: Arc<Shared>) -> anyhow::Result<()> {
    let p = &shared.params;
    match p.mode {
        Mode::Churn => return churn::churn(&shared).await,
        Mode::Stall => return stall::stall(&shared).await,
        _ => {}
    }
    let rss_start_kb = total_rss_kb(&p.server_pids);
    // Declared before `requests` so the connections outlive the request side (locals drop in
    // reverse order): closing the requests first marks the run as stopping.
    let channels = connect_all(&shared).await?;
    let requests = open_sessions(&shared, &channels).await?;
    spawn_heartbeat(requests.senders.clone());
    match p.mode {
        Mode::Idle => idle::hold_idle(&shared, rss_start_kb).await,
        Mode::FindMax => window::find_max(&shared, &requests).await,
        Mode::Soak => soak::soak(&shared, &requests).await,
        Mode::Fairness => fairness::fairness(&shared, &requests).await,
        // Churn and stall returned above; they run their own sessions.
        Mode::Window | Mode::Churn | Mode::Stall => {
            window::run_window(&shared, &requests, 0, p.rate, None)
                .await
                .map(drop)
        }
    }
}

fn main() {
    // Thousands of connections (idle, stall) need more than a default soft limit of 1,024; the
    // hard limit is what the plan is then checked against.
    chatrooms::transport::accept::raise_descriptor_limit();
    let params = match Params::from_args(Args::parse()) {
        Ok(params) => params,
        Err(error) => {
            eprintln!("chat-bench: {error:#}");
            std::process::exit(i32::from(EXIT_USAGE));
        }
    };
    if let Some((probe, count)) = params.probe {
        let plan = hostile::Plan {
            probe,
            server: params.servers[0].clone(),
            count,
            window: params.duration,
            server_pid: params.server_pids.first().copied(),
        };
        std::process::exit(run_probe(&plan, params.deadline));
    }
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

/// Runs a `--probe` to its end (bounded by the deadline) and prints its one JSON line.
fn run_probe(plan: &hostile::Plan, deadline: std::time::Duration) -> i32 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("chat-bench: cannot start: {error}");
            return i32::from(EXIT_FAILED);
        }
    };
    // The timer is created inside the runtime: `timeout` needs one at creation.
    match runtime.block_on(async { tokio::time::timeout(deadline, hostile::run(plan)).await }) {
        Ok(Ok(report)) => {
            println!("{report}");
            0
        }
        Ok(Err(error)) => {
            eprintln!("chat-bench: probe failed: {error:#}");
            i32::from(EXIT_FAILED)
        }
        Err(_) => {
            eprintln!("chat-bench: probe did not finish before the deadline");
            i32::from(EXIT_DEADLINE)
        }
    }
}
