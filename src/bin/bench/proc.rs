//! Linux `/proc` readings: the server's memory (VmRSS, VmHWM) and CPU seconds, whether it still
//! runs, and the generator's own CPU seconds and open-file limit. Everything here is a plain,
//! non-blocking file read that answers `None` when the file or field is missing.

use crate::stats::round;

/// `/proc/PID/stat` counts CPU time in clock ticks of 1/100 s (USER_HZ on Linux).
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

/// A `kB` line of `/proc/<pid>/status` (`VmRSS`, `VmHWM`); `pid` may be `self`.
pub fn status_kb(pid: &str, key: &str) -> Option<u64> {
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
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let fields = stat_fields(pid)?;
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(round(ticks as f64 / CLOCK_TICKS_PER_SEC, 2))
}

/// Whether `pid` still runs: a zombie has exited even though its /proc entry remains.
pub fn process_alive(pid: u32) -> bool {
    stat_fields(&pid.to_string())
        .and_then(|f| f.first().cloned())
        .is_some_and(|state| state != "Z" && state != "X")
}

/// The soft limit on open files, capped at `cap` (the machine's limit).
pub fn open_files_limit(cap: usize) -> usize {
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
            line.split_whitespace().nth(3)?.parse::<usize>().ok()
        });
    soft.unwrap_or(cap).min(cap)
}

/// CPU seconds of the server (if watched) and of the generator at one instant.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    pub server: Option<f64>,
    pub loadgen: Option<f64>,
}

impl CpuSample {
    pub fn take(server_pid: Option<u32>) -> CpuSample {
        CpuSample {
            server: server_pid.and_then(|pid| cpu_seconds(&pid.to_string())),
            loadgen: cpu_seconds("self"),
        }
    }
}
