//! [`Tetherd`]: a `tetherd` child process on `127.0.0.1:0` with a fresh data
//! directory, killed when stopped or dropped; its Prometheus metrics read
//! from its admin port ([`Tetherd::metrics`], [`metric_value`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long tetherd may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// The stderr lines kept to explain a failed start.
const KEPT_LINES: usize = 20;
/// How long reading `/metrics` may take, the wait for the admin address
/// included (tetherd prints it right after the listening line).
const METRICS_TIMEOUT: Duration = Duration::from_secs(5);

/// How to start tetherd.
#[derive(Debug, Clone)]
pub struct TetherdOptions {
    /// The binary.
    pub path: PathBuf,
    /// Its log filter (`RUST_LOG`); its logs go to this process's tracing at
    /// debug level.
    pub log: String,
    /// More arguments, e.g. `["--heartbeat-interval", "30s"]`.
    pub args: Vec<String>,
}

/// A running tetherd.
#[derive(Debug)]
pub struct Tetherd {
    child: Child,
    pid: u32,
    addr: SocketAddr,
    /// Forwards the rest of its stderr; ends when the child does.
    stderr: JoinHandle<()>,
    /// Its admin address, once its stderr named it (never with
    /// `--admin-listen off`).
    admin: watch::Receiver<Option<SocketAddr>>,
    /// Removed when dropped, after the child is killed (fields drop in order).
    _data_dir: tempfile::TempDir,
    /// How it was started (a restart starts it the same way).
    options: TetherdOptions,
}

/// How [`Tetherd::restart`] stops the running process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Restart {
    /// SIGKILL: a crash; vehicles notice the closed connections.
    Kill,
    /// SIGTERM: a drain; vehicles get a goodbye with a jittered reconnect hint.
    Term,
}

impl Tetherd {
    /// Starts tetherd and waits until it listens.
    pub async fn start(options: &TetherdOptions) -> anyhow::Result<Tetherd> {
        let data_dir =
            tempfile::Builder::new().prefix("tether-bench-").tempdir().context("cannot create a data dir")?;
        Self::spawn(options, data_dir, "127.0.0.1:0".parse().expect("a socket address")).await
    }

    /// SIGKILL, and no restart.
    pub async fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill().await.context("cannot kill tetherd")
    }

    /// Stops it (`how`), then starts it again on the same address and data
    /// directory, and waits until it listens. Returns the new process and how
    /// long the node was away (from the stop to listening again).
    pub async fn restart(self, how: Restart) -> anyhow::Result<(Tetherd, Duration)> {
        self.restart_with(how, |_| Ok(())).await
    }

    /// [`restart`](Self::restart), with `between` run on the data directory
    /// while the node is down (to damage what a crash could leave damaged).
    pub async fn restart_with(
        mut self,
        how: Restart,
        between: impl FnOnce(&std::path::Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<(Tetherd, Duration)> {
        let stopped = std::time::Instant::now();
        match how {
            Restart::Kill => self.child.kill().await.context("cannot kill tetherd")?,
            Restart::Term => {
                let status = Command::new("kill").args(["-TERM", &self.pid.to_string()]).status().await?;
                anyhow::ensure!(status.success(), "cannot send SIGTERM to tetherd");
                let exit = tokio::time::timeout(START_TIMEOUT, self.child.wait())
                    .await
                    .context("tetherd did not exit within its start timeout after SIGTERM")??;
                tracing::info!(%exit, "tetherd drained");
            }
        }
        let _ = (&mut self.stderr).await;
        between(self._data_dir.path())?;
        let Tetherd { addr, _data_dir: data_dir, options, .. } = self;
        let server = Self::spawn(&options, data_dir, addr).await?;
        Ok((server, stopped.elapsed()))
    }

    async fn spawn(
        options: &TetherdOptions,
        data_dir: tempfile::TempDir,
        listen: SocketAddr,
    ) -> anyhow::Result<Tetherd> {
        if !options.path.is_file() {
            bail!(
                "no tetherd at {} (build it with `cargo build --release -p tetherd`, or pass --tetherd PATH)",
                options.path.display()
            );
        }
        let mut child = Command::new(&options.path)
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--data-dir")
            .arg(data_dir.path())
            // The benchmark measures the command path, not the write limiter.
            .args(["--subject-write-rate", "0", "--vehicle-write-rate", "0"])
            // Never the fixed default admin port: a tetherd the user runs on
            // the defaults must not make the benchmark (or its CI smoke test)
            // fail. A scenario may choose its own.
            .args(
                (!options.args.iter().any(|a| a.starts_with("--admin-listen")))
                    .then_some(["--admin-listen", "127.0.0.1:0"])
                    .into_iter()
                    .flatten(),
            )
            .args(&options.args)
            .env("RUST_LOG", &options.log)
            // No scenario measures metric export, and the traces scenario's
            // null OTLP sink serves traces only.
            .env("OTEL_METRICS_EXPORTER", "none")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", options.path.display()))?;
        let pid = child.id().context("tetherd exited at once")?;
        let stderr = child.stderr.take().context("tetherd's stderr is not piped")?;
        let mut lines = BufReader::new(stderr).lines();
        let addr = match tokio::time::timeout(START_TIMEOUT, listening_address(&mut lines)).await {
            Ok(Ok(addr)) => addr,
            Ok(Err(output)) => {
                let status = child.wait().await.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                bail!("tetherd stopped before listening ({status}); its last words:\n{output}");
            }
            Err(_) => bail!("tetherd did not say where it listens within {START_TIMEOUT:?}"),
        };
        let (admin_tx, admin) = watch::channel(None);
        let stderr = tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(admin) = parse_metrics(&line) {
                    admin_tx.send_replace(Some(admin));
                }
                tracing::debug!(target: "tetherd", "{line}");
            }
        });
        tracing::info!(pid, %addr, "tetherd started");
        Ok(Tetherd { child, pid, addr, stderr, admin, _data_dir: data_dir, options: options.clone() })
    }

    /// Its URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its resident memory now, in KiB.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        super::rss::rss_kib(self.pid).with_context(|| format!("cannot read tetherd's memory (pid {})", self.pid))
    }

    /// Its Prometheus metrics now: the body of `GET /metrics` on its admin
    /// port (loopback, so no token).
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let mut admin = self.admin.clone();
        let read = async {
            let addr = admin
                .wait_for(Option::is_some)
                .await
                .map_err(|_| anyhow::anyhow!("tetherd ended without naming its admin port"))?
                .context("no admin address")?;
            let mut stream = tokio::net::TcpStream::connect(addr).await.context("cannot reach the admin port")?;
            // HTTP/1.0: the answer is not chunked and ends when the connection does.
            stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: tetherd\r\n\r\n").await?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await.context("cannot read /metrics")?;
            let (head, body) = answer.split_once("\r\n\r\n").context("a malformed HTTP answer")?;
            let status = head.lines().next().unwrap_or_default();
            anyhow::ensure!(status.split_whitespace().nth(1) == Some("200"), "GET /metrics: {status}");
            anyhow::Ok(body.to_string())
        };
        tokio::time::timeout(METRICS_TIMEOUT, read).await.with_context(|| {
            format!("no /metrics within {METRICS_TIMEOUT:?} (is the admin port on? --admin-listen off turns it off)")
        })?
    }

    /// Kills it and waits until it is gone.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.child.kill().await.context("cannot kill tetherd")?;
        // Its stderr closed with it.
        let _ = (&mut self.stderr).await;
        tracing::info!(pid = self.pid, "tetherd stopped");
        Ok(())
    }
}

/// Reads stderr up to the line `tetherd: listening on ADDR — stop with
/// Ctrl-C` and returns ADDR; if stderr ends first, returns its last lines.
async fn listening_address(lines: &mut Lines<BufReader<ChildStderr>>) -> Result<SocketAddr, String> {
    let mut kept = std::collections::VecDeque::with_capacity(KEPT_LINES);
    loop {
        let line = match lines.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) | Err(_) => return Err(Vec::from(kept).join("\n")),
        };
        if let Some(addr) = parse_listening(&line) {
            return Ok(addr);
        }
        tracing::debug!(target: "tetherd", "{line}");
        if kept.len() == KEPT_LINES {
            kept.pop_front();
        }
        kept.push_back(line);
    }
}

/// The admin address in tetherd's `tetherd: metrics on http://ADDR/metrics` line.
fn parse_metrics(line: &str) -> Option<SocketAddr> {
    let (_, rest) = line.split_once("tetherd: metrics on http://")?;
    rest.split('/').next()?.parse().ok()
}

/// The value of the series `series` (a name with its labels as printed,
/// e.g. `tether_handshake_failures_total{reason="silent"}`) in the Prometheus
/// text `metrics`.
pub fn metric_value(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// The address in tetherd's `tetherd: listening on ADDR — ...` line.
fn parse_listening(line: &str) -> Option<SocketAddr> {
    let (_, rest) = line.split_once("tetherd: listening on ")?;
    rest.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_address_line() {
        let line = "tetherd: listening on 127.0.0.1:41234 — stop with Ctrl-C";
        assert_eq!(parse_listening(line), Some("127.0.0.1:41234".parse().unwrap()));
        assert_eq!(parse_listening("tetherd: listening on [::1]:7 — stop"), Some("[::1]:7".parse().unwrap()));
        assert_eq!(parse_listening("2026-11-22T04:50:00Z INFO store opened"), None);
        assert_eq!(parse_listening("tetherd: listening on nowhere"), None);
        let metrics = "tetherd: metrics on http://127.0.0.1:40001/metrics";
        assert_eq!(parse_metrics(metrics), Some("127.0.0.1:40001".parse().unwrap()));
        assert_eq!(parse_metrics(line), None);
    }

    #[test]
    fn reads_a_series_value() {
        let text = "# TYPE tether_handshake_failures_total counter\n\
                    tether_handshake_failures_total{reason=\"silent\"} 42\n\
                    tether_handshake_failures_total{reason=\"silent_x\"} 7\n\
                    tether_connections 3\n";
        assert_eq!(metric_value(text, "tether_handshake_failures_total{reason=\"silent\"}"), Some(42.0));
        assert_eq!(metric_value(text, "tether_connections"), Some(3.0));
        assert_eq!(metric_value(text, "tether_handshake_failures_total{reason=\"evicted\"}"), None);
    }

    #[tokio::test]
    async fn a_missing_binary_is_explained() {
        let options = TetherdOptions { path: "/nonexistent/tetherd".into(), log: "warn".into(), args: vec![] };
        let error = Tetherd::start(&options).await.unwrap_err().to_string();
        assert!(error.contains("cargo build --release -p tetherd"), "{error}");
    }
}
