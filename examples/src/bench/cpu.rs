//! CPU time of a process and of each of its threads, read from `/proc`
//! (`/proc/<pid>/stat` and `/proc/<pid>/task/*/stat`), so a scenario can say
//! how busy tetherd was during a phase and which of its threads (tokio
//! workers, the store's writer `tether-store`) did the work.

use std::collections::BTreeMap;
use std::io;
use std::time::Instant;

use serde::Serialize;

/// Clock ticks per second of `utime`/`stime` (`getconf CLK_TCK`: 100 on
/// Linux x86_64 and arm64).
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU ticks used so far by a process and by its threads, grouped by thread
/// name.
#[derive(Debug, Clone)]
pub struct CpuSample {
    at: Instant,
    total: u64,
    /// Thread name → (ticks, threads of that name).
    threads: BTreeMap<String, (u64, usize)>,
}

/// CPU used between two samples.
#[derive(Debug, Clone, Serialize)]
pub struct CpuUsage {
    /// The whole process, in percent of one core (200 = both cores of this
    /// machine busy).
    pub percent: f64,
    /// Per thread name, busiest first (names with no CPU used are left out).
    pub threads: Vec<ThreadCpu>,
}

/// CPU of the threads sharing one name.
#[derive(Debug, Clone, Serialize)]
pub struct ThreadCpu {
    /// The thread name (`comm`, at most 15 bytes: `tokio-runtime-w` is a
    /// tokio worker).
    pub name: String,
    /// Threads of that name.
    pub threads: usize,
    /// Their CPU, percent of one core.
    pub percent: f64,
}

/// Samples process `pid` now.
pub fn sample(pid: u32) -> io::Result<CpuSample> {
    let at = Instant::now();
    let total = ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat"))?).map(|(_, t)| t).ok_or_else(bad)?;
    let mut threads = BTreeMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Ok(entry) = entry else { continue };
        // A thread may end between listing and reading.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        if let Some((name, t)) = ticks(&stat) {
            let slot = threads.entry(name).or_insert((0, 0));
            slot.0 += t;
            slot.1 += 1;
        }
    }
    Ok(CpuSample { at, total, threads })
}

/// What was used from `before` to `after` (threads that ended in between
/// are counted in the process total only).
pub fn usage(before: &CpuSample, after: &CpuSample) -> CpuUsage {
    let mut tally = CpuTally::default();
    tally.add(before, after);
    tally.usage()
}

/// CPU used over several intervals of one process (a server's rounds of a
/// scenario that alternates servers), summed as if they were one.
#[derive(Debug, Clone, Default)]
pub struct CpuTally {
    seconds: f64,
    total: u64,
    /// Thread name → (ticks, threads of that name in the latest interval).
    threads: BTreeMap<String, (u64, usize)>,
}

impl CpuTally {
    /// Adds the interval from `before` to `after`.
    pub fn add(&mut self, before: &CpuSample, after: &CpuSample) {
        self.seconds += after.at.duration_since(before.at).as_secs_f64();
        self.total += after.total.saturating_sub(before.total);
        for (name, (t, n)) in &after.threads {
            let earlier = before.threads.get(name).map_or(0, |(t, _)| *t);
            let slot = self.threads.entry(name.clone()).or_insert((0, 0));
            slot.0 += t.saturating_sub(earlier);
            slot.1 = *n;
        }
    }

    /// The usage over every interval added.
    pub fn usage(&self) -> CpuUsage {
        let seconds = self.seconds.max(1e-6);
        let percent = |ticks: u64| super::load::round(ticks as f64 / TICKS_PER_SECOND / seconds * 100.0, 10.0);
        let mut threads: Vec<ThreadCpu> = self
            .threads
            .iter()
            .map(|(name, (t, n))| ThreadCpu { name: name.clone(), threads: *n, percent: percent(*t) })
            .filter(|t| t.percent > 0.0)
            .collect();
        threads.sort_by(|a, b| b.percent.total_cmp(&a.percent));
        CpuUsage { percent: percent(self.total), threads }
    }
}

impl CpuUsage {
    /// "152% (tokio-runtime-w ×2 140%, tether-store 12%)" for a table.
    pub fn summary(&self) -> String {
        let threads: Vec<String> = self
            .threads
            .iter()
            .take(4)
            .map(|t| {
                let count = if t.threads > 1 { format!(" ×{}", t.threads) } else { String::new() };
                format!("{}{count} {:.0}%", t.name, t.percent)
            })
            .collect();
        format!("{:.0}% ({})", self.percent, threads.join(", "))
    }
}

fn bad() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "unreadable /proc stat line")
}

/// (comm, utime + stime) of a `/proc/.../stat` line.
fn ticks(stat: &str) -> Option<(String, u64)> {
    // The name is in parentheses and may itself contain spaces or ')'.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_string();
    let mut rest = stat.get(close + 1..)?.split_whitespace();
    // After the name: state (field 3) ... utime (14), stime (15).
    let utime: u64 = rest.nth(11)?.parse().ok()?;
    let stime: u64 = rest.next()?.parse().ok()?;
    Some((name, utime + stime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_lines() {
        let line = "4242 (tokio-runtime-w) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0";
        assert_eq!(ticks(line), Some(("tokio-runtime-w".to_string(), 300)));
        let odd = "7 (a) b) R 1 2 3 4 5 6 7 8 9 10 1 2 0 0";
        assert_eq!(ticks(odd), Some(("a) b".to_string(), 3)));
        assert_eq!(ticks("garbage"), None);
    }

    #[test]
    fn a_tally_sums_its_intervals_as_one() {
        let at = Instant::now();
        let sample = |secs: u64, total: u64, worker: u64| CpuSample {
            at: at + std::time::Duration::from_secs(secs),
            total,
            threads: BTreeMap::from([("worker".to_string(), (worker, 2))]),
        };
        let mut tally = CpuTally::default();
        // 1 s at 50%, then (after a gap not counted) 3 s at 150%.
        tally.add(&sample(0, 0, 0), &sample(1, 50, 40));
        tally.add(&sample(5, 50, 40), &sample(8, 500, 400));
        let used = tally.usage();
        assert_eq!(used.percent, 125.0);
        assert_eq!(used.threads.len(), 1);
        assert_eq!((used.threads[0].threads, used.threads[0].percent), (2, 100.0));
    }

    #[test]
    fn samples_this_process() {
        let before = sample(std::process::id()).unwrap();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let after = sample(std::process::id()).unwrap();
        let used = usage(&before, &after);
        assert!(used.percent >= 0.0);
        assert!(!after.threads.is_empty());
    }
}
