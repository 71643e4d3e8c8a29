//! Event counts of a process over a run, from `perf stat -p` (`--perf-events`),
//! so a write scenario can say what one write costs in events that this
//! shared host's noise does not move: context switches, system calls, and
//! allocations through uprobes on the C library's `malloc` (made once with
//! `perf probe -x <libc> malloc`). CPU time per write moves with the host's
//! speed; these counts do not.

use std::collections::BTreeMap;
use std::process::Stdio;

use anyhow::{Context, bail};
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

/// Events counted so far, by perf's event name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counts(BTreeMap<String, u64>);

impl Counts {
    /// Adds another run's counts.
    pub fn add(&mut self, other: &Counts) {
        for (event, n) in &other.0 {
            *self.0.entry(event.clone()).or_default() += n;
        }
    }

    /// Each event per `writes`, rounded to 0.1.
    pub fn per(&self, writes: u64) -> BTreeMap<String, f64> {
        let writes = writes.max(1) as f64;
        self.0.iter().map(|(event, n)| (event.clone(), (*n as f64 / writes * 10.0).round() / 10.0)).collect()
    }

    /// Reads `perf stat -x,` output: `value,unit,event,...` per line; an
    /// event perf could not count is an error, not a zero.
    fn parse(output: &str) -> anyhow::Result<Counts> {
        let mut counts = BTreeMap::new();
        for line in output.lines().filter(|l| l.contains(',')) {
            let fields: Vec<&str> = line.split(',').collect();
            let (Some(value), Some(event)) = (fields.first(), fields.get(2)) else { continue };
            match value.parse::<u64>() {
                Ok(n) => {
                    counts.insert(event.to_string(), n);
                }
                Err(_) => bail!("perf could not count {event}: {value}"),
            }
        }
        if counts.is_empty() {
            bail!("perf stat counted nothing:\n{output}");
        }
        Ok(Counts(counts))
    }
}

/// A `perf stat` attached to a process, counting until stopped.
#[derive(Debug)]
pub struct PerfStat {
    child: Child,
}

impl PerfStat {
    /// Starts counting `events` (perf's comma-separated list) in every thread
    /// of `pid`.
    pub fn start(pid: u32, events: &str) -> anyhow::Result<PerfStat> {
        let child = Command::new("perf")
            .args(["stat", "-x,", "-e", events, "-p", &pid.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start perf (--perf-events needs perf on the PATH)")?;
        Ok(PerfStat { child })
    }

    /// Stops counting (SIGINT, after which perf prints its counts) and
    /// returns the counts.
    pub async fn stop(mut self) -> anyhow::Result<Counts> {
        let pid = self.child.id().context("perf stat ended early")?;
        let interrupted = Command::new("kill").args(["-INT", &pid.to_string()]).status().await?;
        if !interrupted.success() {
            bail!("could not interrupt perf stat ({interrupted})");
        }
        let mut output = String::new();
        self.child.stderr.take().context("perf's stderr is not piped")?.read_to_string(&mut output).await?;
        self.child.wait().await?;
        Counts::parse(&output)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_stat_output_reads_as_counts_and_sums_per_write() {
        let run = "12345,,probe_libc:malloc,100,100.00,,\n40,,context-switches,100,100.00,,\n";
        let mut counts = Counts::parse(run).unwrap();
        counts.add(&Counts::parse(run).unwrap());
        let per = counts.per(100);
        assert_eq!(per["probe_libc:malloc"], 246.9);
        assert_eq!(per["context-switches"], 0.8);
        let refused = Counts::parse("<not supported>,,instructions,0,100.00,,\n").unwrap_err();
        assert!(refused.to_string().contains("instructions"), "{refused}");
    }
}
