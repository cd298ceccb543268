//! Linux `/proc` readings: the memory (VmRSS, VmHWM) and CPU seconds of the watched server
//! processes (one server, or a cluster's nodes and its Redis), whether they still run, and the
//! generator's own CPU seconds and open-file limit. Everything here is a plain, non-blocking file
//! read that answers `None` when the file or field is missing.

use std::iter::Sum;

use serde::Serialize;

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

/// The sum of one reading per watched process; `None` when nothing is watched or one reading is
/// missing, because a partial sum would pass for less memory or less work.
fn sum_all<T: Sum<T>>(readings: impl ExactSizeIterator<Item = Option<T>>) -> Option<T> {
    if readings.len() == 0 {
        return None;
    }
    readings.sum()
}

/// The summed VmRSS of `pids`: what the whole system under test holds now.
pub fn total_rss_kb(pids: &[u32]) -> Option<u64> {
    sum_all(pids.iter().map(|pid| status_kb(&pid.to_string(), "VmRSS")))
}

/// The summed CPU seconds of `pids`.
pub fn total_cpu_seconds(pids: &[u32]) -> Option<f64> {
    sum_all(pids.iter().map(|pid| cpu_seconds(&pid.to_string()))).map(|s| round(s, 2))
}

/// One watched process as the report shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcessStats {
    pub pid: u32,
    /// VmHWM: the peak since the process started, not only during this run.
    pub peak_rss_kb: Option<u64>,
    /// User plus system time since the process started.
    pub cpu_s: Option<f64>,
}

impl ProcessStats {
    /// Reads `pid` now; a field is `None` once the process is gone.
    pub fn read(pid: u32) -> ProcessStats {
        let name = pid.to_string();
        ProcessStats {
            pid,
            peak_rss_kb: status_kb(&name, "VmHWM"),
            cpu_s: cpu_seconds(&name),
        }
    }
}

/// The CPU seconds of all `watched` processes together.
pub fn total_cpu_s(watched: &[ProcessStats]) -> Option<f64> {
    sum_all(watched.iter().map(|w| w.cpu_s)).map(|s| round(s, 2))
}

/// CPU seconds of the watched server processes together (if any) and of the generator at one
/// instant.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    pub server: Option<f64>,
    pub loadgen: Option<f64>,
}

impl CpuSample {
    pub fn take(server_pids: &[u32]) -> CpuSample {
        CpuSample {
            server: total_cpu_seconds(server_pids),
            loadgen: cpu_seconds("self"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(pid: u32, cpu_s: Option<f64>) -> ProcessStats {
        ProcessStats {
            pid,
            peak_rss_kb: Some(1_000),
            cpu_s,
        }
    }

    #[test]
    fn totals_add_every_process_or_nothing() {
        let nodes_and_redis = [
            stats(1, Some(8.61)),
            stats(2, Some(8.53)),
            stats(3, Some(0.51)),
        ];
        // Rounded again: the plain f64 sum is 17.650000000000002.
        assert_eq!(total_cpu_s(&nodes_and_redis), Some(17.65));
        assert_eq!(total_cpu_s(&nodes_and_redis[..1]), Some(8.61));
        assert_eq!(total_cpu_s(&[stats(1, Some(8.61)), stats(2, None)]), None);
        assert_eq!(total_cpu_s(&[]), None);
        assert_eq!(total_rss_kb(&[]), None);
        assert_eq!(total_cpu_seconds(&[]), None);
    }

    #[test]
    fn a_live_process_is_read_and_a_missing_one_spoils_the_sum() {
        let me = std::process::id();
        let read = ProcessStats::read(me);
        assert_eq!(read.pid, me);
        assert!(read.peak_rss_kb.is_some_and(|kb| kb > 0), "{read:?}");
        assert!(read.cpu_s.is_some(), "{read:?}");
        assert!(total_rss_kb(&[me]).is_some_and(|kb| kb > 0));
        assert!(total_cpu_seconds(&[me]).is_some());
        // Above any pid_max Linux allows, so never a process.
        let gone = u32::MAX;
        assert_eq!(
            ProcessStats::read(gone),
            ProcessStats {
                pid: gone,
                peak_rss_kb: None,
                cpu_s: None
            }
        );
        assert_eq!(total_rss_kb(&[me, gone]), None);
        assert_eq!(total_cpu_seconds(&[me, gone]), None);
        assert!(!process_alive(gone));
        assert!(process_alive(me));
    }
}
