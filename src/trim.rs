//! Giving freed memory back to the system. glibc's allocator keeps freed chunks inside its
//! per-thread arenas, so after a burst (a flood of stalled readers evicted, 20,000 sessions
//! closing, queues drained after a spike) the process keeps its peak RSS: measured 156 MB kept
//! after 20,000 sessions of one address closed, 16 MB once `malloc_trim(0)` ran. Once a
//! second the server compares what is resident with what the allocator has in use, and trims
//! when the difference (memory held for nothing) has grown by a 32nd of what is resident (at
//! least 2 MiB) above the least it has been since the last trim. Elsewhere than glibc on Linux
//! this does nothing.

use std::time::Duration;

/// Resident memory not in use by the allocator, beyond the least there was since the last trim,
/// that makes a trim worth its cost (it walks every arena under its lock: milliseconds for a heap
/// of a few hundred MB): a share of what is resident, and at least [`SLACK_GROWTH_MIN`]. With a
/// fixed 32 MiB, rounds of connect/join/chat/drop left RSS creeping up by 10 % over five rounds
/// without ever reaching it (churn: 7 MB in use, 48 → 55 MB resident); with 8 MiB, a round that
/// happened to end 5 MB up stayed there. A share keeps what is held for nothing within ~3 % of
/// the process whatever its size, without trimming a large heap for a few MB.
const SLACK_GROWTH_SHARE: usize = 32;
const SLACK_GROWTH_MIN: usize = 2 * 1024 * 1024;
/// Memory freed by a burst is back within about a second. Not more often: a look reads glibc's
/// counters (`mallinfo2`), which walks every arena's free lists under its lock — 0.6 ms on a
/// server fanning out 200,000 messages a second, where looking four times a second was 1 % of
/// its CPU (and four times its allocations waiting on those locks).
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// After a trim, no look for this many times as long as it took: trims stay under a 20th of the
/// time (measured under a flood of 2,000 stalled readers on a loaded box: trims of a 500 MB heap
/// took 2–85 ms and were due every few hundred ms), and so does the time they hold arena locks.
const REST_PER_TRIM: u32 = 20;

/// When to trim: slack (resident minus in use) grown by [`slack_growth`] over the least slack
/// seen since the last trim. Pure, so the rule is tested without an allocator.
#[derive(Debug, Default)]
struct Trigger {
    /// The least slack since the last trim (or since the first look): code, stacks and memory
    /// the allocator cannot give back (fragmented pages) stay in it, so they never trigger a
    /// trim on their own. It follows the slack down, not only the trims: a trim taken while
    /// freed buffers were about to be reused leaves a high slack behind, which would otherwise
    /// hide the next [`slack_growth`] of memory freed for good.
    floor: Option<usize>,
}

impl Trigger {
    /// Looks at the process's memory now; true when a trim is worth it.
    fn due(&mut self, resident: usize, in_use: usize) -> bool {
        let slack = resident.saturating_sub(in_use);
        let floor = self.floor.map_or(slack, |floor| floor.min(slack));
        self.floor = Some(floor);
        slack >= floor + slack_growth(resident)
    }

    fn trimmed(&mut self, resident: usize, in_use: usize) {
        self.floor = Some(resident.saturating_sub(in_use));
    }
}

/// Growth of the memory held for nothing that is worth a trim, for `resident` bytes resident.
fn slack_growth(resident: usize) -> usize {
    (resident / SLACK_GROWTH_SHARE).max(SLACK_GROWTH_MIN)
}

/// Trims whenever enough memory is held for nothing; runs until aborted.
pub async fn keep_trimming() {
    let mut trigger = Trigger::default();
    loop {
        tokio::time::sleep(CHECK_EVERY).await;
        let Some((resident, in_use)) = sys::usage() else {
            return;
        };
        if trigger.due(resident, in_use) {
            // Off the I/O threads: a trim of a large heap takes milliseconds.
            let after = tokio::task::spawn_blocking(|| {
                let started = std::time::Instant::now();
                sys::trim();
                (started.elapsed(), sys::usage())
            })
            .await;
            if let Ok((took, Some((after, in_use)))) = after {
                tracing::debug!(
                    resident_before = resident,
                    resident_after = after,
                    in_use,
                    took_us = took.as_micros() as u64,
                    "trimmed the allocator"
                );
                trigger.trimmed(after, in_use);
                tokio::time::sleep(took * REST_PER_TRIM).await;
            }
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod sys {
    /// Resident bytes of the process and bytes the allocator has handed out.
    pub fn usage() -> Option<(usize, usize)> {
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let pages: usize = statm.split_whitespace().nth(1)?.parse().ok()?;
        // SAFETY: sysconf and mallinfo2 only read process state.
        let (page, info) = unsafe { (libc::sysconf(libc::_SC_PAGESIZE), libc::mallinfo2()) };
        let in_use = info.uordblks + info.hblkhd;
        Some((pages * usize::try_from(page).ok()?, in_use))
    }

    pub fn trim() {
        // SAFETY: malloc_trim only walks and releases the allocator's own free memory.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod sys {
    pub fn usage() -> Option<(usize, usize)> {
        None
    }

    pub fn trim() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: usize = 1024 * 1024;

    #[test]
    fn a_trim_is_due_when_slack_grows_past_what_the_last_trim_left() {
        let mut trigger = Trigger::default();
        assert!(
            !trigger.due(100 * MB, 90 * MB),
            "the first look only sets the floor: 10 MB of code and stacks"
        );
        assert!(
            !trigger.due(102 * MB, 90 * MB),
            "2 MB more of 102 MB resident is not worth a trim"
        );
        assert!(trigger.due(500 * MB, 100 * MB));
        // The trim could not give everything back: 50 MB stayed and is the new floor.
        trigger.trimmed(150 * MB, 100 * MB);
        assert!(!trigger.due(154 * MB, 100 * MB));
        assert!(
            trigger.due(156 * MB, 100 * MB),
            "grown by a 32nd of what is resident since"
        );
    }

    #[test]
    fn a_small_process_trims_for_a_few_mb_and_a_large_one_for_a_share() {
        assert_eq!(slack_growth(30 * MB), 2 * MB);
        assert_eq!(slack_growth(640 * MB), 20 * MB);
        let mut trigger = Trigger::default();
        trigger.trimmed(600 * MB, 550 * MB);
        assert!(!trigger.due(615 * MB, 550 * MB), "15 MB of 615 MB");
        assert!(trigger.due(640 * MB, 550 * MB));
    }

    #[test]
    fn the_floor_follows_the_slack_down_between_trims() {
        let mut trigger = Trigger::default();
        // A trim in the middle of a burst: 40 MB of freed buffers were still resident.
        trigger.trimmed(140 * MB, 100 * MB);
        // The burst reuses them: in use grows, resident stays, the slack falls to 12 MB.
        assert!(!trigger.due(140 * MB, 128 * MB));
        // The burst ends: 28 MB are freed for good, slack 40 MB, as much as the last trim left
        // but 28 MB above the least since.
        assert!(trigger.due(140 * MB, 100 * MB));
    }

    #[test]
    fn usage_is_read_where_the_allocator_is_glibc() {
        if cfg!(all(target_os = "linux", target_env = "gnu")) {
            let (resident, in_use) = sys::usage().expect("readable");
            assert!(resident > 0 && in_use > 0);
        }
    }
}
