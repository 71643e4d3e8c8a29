//! Resident memory and open-file limits of processes, and the kernel's
//! listen-queue overflow count, read from `/proc`.

use std::io;

/// The resident set size of process `pid`, in KiB (`VmRSS` in
/// `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status_field_kib(&status, "VmRSS:")
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("no VmRSS in /proc/{pid}/status")))
}

/// This process's resident set size, in KiB.
pub fn own_rss_kib() -> io::Result<u64> {
    rss_kib(std::process::id())
}

/// This process's soft limit of open files (`/proc/self/limits`), if known.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

/// How often this network namespace's TCP listen queues overflowed
/// (`TcpExt: ListenOverflows` in `/proc/net/netstat`; each overflow drops a
/// connection attempt, which the client retries after about a second).
pub fn listen_overflows() -> Option<u64> {
    netstat_field(&std::fs::read_to_string("/proc/net/netstat").ok()?, "TcpExt:", "ListenOverflows")
}

/// A counter of `/proc/net/netstat`: a line of names after `prefix`, then a
/// line of values.
fn netstat_field(text: &str, prefix: &str, name: &str) -> Option<u64> {
    let mut lines = text.lines().filter(|l| l.starts_with(prefix));
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        if let Some(at) = names.split_whitespace().position(|n| n == name) {
            return values.split_whitespace().nth(at)?.parse().ok();
        }
    }
    None
}

/// The value of a `Name:   1234 kB` line of a `/proc/<pid>/status` text.
fn status_field_kib(status: &str, name: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(name))?;
    let mut parts = line[name.len()..].split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") | None => Some(value),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_lines() {
        let status = "Name:\ttetherd\nVmPeak:\t  20000 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(status_field_kib(status, "VmRSS:"), Some(12345));
        assert_eq!(status_field_kib(status, "VmSwap:"), None);
        assert_eq!(status_field_kib("VmRSS: 5 MB", "VmRSS:"), None);
    }

    #[test]
    fn parses_netstat() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 0 23 23\n\
                    IpExt: InNoRoutes\nIpExt: 0\n";
        assert_eq!(netstat_field(text, "TcpExt:", "ListenOverflows"), Some(23));
        assert_eq!(netstat_field(text, "TcpExt:", "Nope"), None);
        assert_eq!(netstat_field(text, "IpExt:", "InNoRoutes"), Some(0));
    }

    #[test]
    fn reads_this_process() {
        assert!(own_rss_kib().unwrap() > 0);
        assert!(open_files_limit().unwrap() > 0);
    }
}
