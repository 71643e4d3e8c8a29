//! Support for tether's end-to-end tests: a real tetherd on 127.0.0.1:0 (in
//! process or as a child process), raw protocol clients, and bounded waits.

pub use tether_examples::nats;
pub mod otlp;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tether_proto::RawState;
use tether_proto::admin::v1::admin_service_client::AdminServiceClient;
use tether_proto::admin::v1::{GetServerStatsRequest, ServerStats};
use tether_proto::app::v1::control_service_client::ControlServiceClient;
use tether_proto::vehicle::v1::vehicle_service_client::VehicleServiceClient;
use tether_proto::vehicle::v1::{
    Ack, Heartbeat, Hello, ServerMessage, VehicleMessage, Welcome, server_message, vehicle_message,
};
use tetherd::{Config, ServerHandle};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::{Channel, Endpoint};

/// The bound every wait in the tests uses unless it says otherwise.
pub const BOUND: Duration = Duration::from_secs(10);

/// Polls `check` until it yields `Some`, at most `bound`; panics naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, bound: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {bound:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A tetherd running in this process on 127.0.0.1:0 with its own data dir.
pub struct TestServer {
    handle: Option<ServerHandle>,
    /// The bound address.
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    kept: Vec<tempfile::TempDir>,
}

impl TestServer {
    /// Starts with the test defaults (fast heartbeats).
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts with the test defaults changed by `f`.
    pub async fn start_with(f: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::for_tests(dir.path().join("data"));
        f(&mut config);
        let handle = tetherd::start(config).await.expect("tetherd starts");
        let addr = handle.local_addr();
        TestServer { handle: Some(handle), addr, dir, kept: Vec::new() }
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Keeps `dir` (files the server reads, such as keys) as long as the server.
    pub fn keeping(mut self, dir: tempfile::TempDir) -> Self {
        self.kept.push(dir);
        self
    }

    /// The server's scratch directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The admin (metrics) address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.handle.as_ref().expect("running").admin_addr().expect("admin endpoint on")
    }

    /// The node's counts, read in process.
    pub fn stats(&self) -> ServerStats {
        self.handle.as_ref().expect("running").stats()
    }

    /// TLS handshakes the server refused or timed out so far.
    pub fn handshake_failures(&self) -> u64 {
        use tetherd::stats::HandshakeFailure;
        let stats = &self.handle.as_ref().expect("running").hub().stats;
        HandshakeFailure::ALL
            .iter()
            .zip(&stats.handshake_failures)
            .filter(|(why, _)| matches!(why, HandshakeFailure::TlsRefused | HandshakeFailure::TlsTimeout))
            .map(|(_, n)| n.load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    }

    /// Sessions or connections refused so far for `why`.
    pub fn handshake_failures_for(&self, why: tetherd::stats::HandshakeFailure) -> u64 {
        let stats = &self.handle.as_ref().expect("running").hub().stats;
        let i = tetherd::stats::HandshakeFailure::ALL.iter().position(|w| *w == why).expect("listed");
        stats.handshake_failures[i].load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Calls the node applied again after a conflict with another node.
    pub fn conflicts_retried(&self) -> u64 {
        self.handle.as_ref().expect("running").hub().stats.conflicts_retried.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Times the node reloaded its TLS files so far.
    pub fn tls_reloads(&self) -> u64 {
        self.handle.as_ref().expect("running").hub().stats.tls_reloads.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// TLS handshakes completed so far: (in full, resumed with a ticket).
    pub fn tls_handshakes(&self) -> (u64, u64) {
        let stats = &self.handle.as_ref().expect("running").hub().stats;
        let get = |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);
        (get(&stats.tls_full_handshakes), get(&stats.tls_resumed_handshakes))
    }

    /// A new connection to the server.
    pub async fn channel(&self) -> Channel {
        channel(&self.url()).await
    }

    /// A raw app client on a new connection.
    pub async fn app(&self) -> ControlServiceClient<Channel> {
        ControlServiceClient::new(self.channel().await)
    }

    /// Graceful shutdown.
    pub async fn shutdown(mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown().await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            // Tests that do not shut down explicitly still stop the node.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(h.shutdown());
            }
        }
    }
}

/// Where a command-semantics test runs: one node on its embedded store, or
/// three nodes of a cluster on NATS JetStream (in this process, on the
/// binary's shared nats-server cluster, with a stream of the test's own).
/// On a cluster the vehicle connects to one node, the app calls another and
/// watches go to the third: every promise must hold across nodes.
pub struct Deployment {
    nodes: Vec<TestServer>,
    stream: String,
}

impl Deployment {
    /// One node.
    pub async fn single() -> Self {
        Self::single_with(|_| {}).await
    }

    /// One node, its config changed by `f`.
    pub async fn single_with(f: impl FnOnce(&mut Config)) -> Self {
        Deployment { nodes: vec![TestServer::start_with(f).await], stream: String::new() }
    }

    /// Three cluster nodes.
    pub async fn cluster() -> Self {
        Self::cluster_with(|_| {}).await
    }

    /// Three cluster nodes, each config changed by `f`.
    pub async fn cluster_with(f: impl Fn(&mut Config)) -> Self {
        Self::cluster_at(nats::shared(), f).await
    }

    /// Three cluster nodes on the nats-servers at `urls` (comma-separated),
    /// each config changed by `f`.
    pub async fn cluster_at(urls: &str, f: impl Fn(&mut Config)) -> Self {
        // TETHER_TEST_LOG=debug (a tracing filter) prints the nodes' logs.
        if let Ok(filter) = std::env::var("TETHER_TEST_LOG") {
            let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
        }
        static STREAMS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let stream = format!("T{}_{}", std::process::id(), STREAMS.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let mut nodes = Vec::new();
        for i in 0..3 {
            nodes.push(
                TestServer::start_with(|c| {
                    c.cluster_nats = urls.split(',').map(String::from).collect();
                    c.cluster_stream = stream.clone();
                    c.cluster_node = Some(format!("node-{i}"));
                    f(c);
                })
                .await,
            );
        }
        Deployment { nodes, stream }
    }

    /// The cluster's stream (empty on one node).
    pub fn stream_name(&self) -> &str {
        &self.stream
    }

    /// Whether this is a cluster.
    pub fn is_cluster(&self) -> bool {
        self.nodes.len() > 1
    }

    /// The node vehicles connect to.
    pub fn vehicle_node(&self) -> &TestServer {
        &self.nodes[0]
    }

    /// The node apps write through.
    pub fn app_node(&self) -> &TestServer {
        &self.nodes[self.nodes.len() - 1]
    }

    /// The node watchers and readers use.
    pub fn watch_node(&self) -> &TestServer {
        &self.nodes[self.nodes.len() / 2]
    }

    /// Every node.
    pub fn nodes(&self) -> &[TestServer] {
        &self.nodes
    }

    /// A scratch directory that lives as long as the deployment.
    pub fn dir(&self) -> &Path {
        self.nodes[0].dir()
    }
}

/// Declares a test body `async fn name(d: Deployment)` as two tests,
/// `name::single` (one node) and `name::cluster` (three nodes on NATS).
#[macro_export]
macro_rules! on_both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn single() {
                super::$name($crate::Deployment::single().await).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cluster() {
                super::$name($crate::Deployment::cluster().await).await
            }
        }
    };
}

/// Connects to `url`.
pub async fn channel(url: &str) -> Channel {
    Endpoint::from_shared(url.to_string())
        .expect("valid url")
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connects")
}

/// Node counts over gRPC.
pub async fn server_stats(channel: Channel) -> ServerStats {
    AdminServiceClient::new(channel).get_server_stats(GetServerStatsRequest {}).await.expect("stats").into_inner()
}

/// A vehicle speaking the protocol by hand, for tests that need to misbehave
/// (stop reading, go silent, impersonate).
#[derive(Debug)]
pub struct RawVehicle {
    /// Messages to the server.
    pub tx: mpsc::Sender<VehicleMessage>,
    /// Messages from the server.
    pub rx: Streaming<ServerMessage>,
}

impl RawVehicle {
    /// Opens a stream and sends Hello; does not wait for Welcome.
    pub async fn open(channel: Channel, hello: Hello) -> Result<Self, tonic::Status> {
        let (tx, out) = mpsc::channel(16);
        tx.send(VehicleMessage { kind: Some(vehicle_message::Kind::Hello(hello)) }).await.expect("room");
        let rx = VehicleServiceClient::new(channel).connect(ReceiverStream::new(out)).await?.into_inner();
        Ok(RawVehicle { tx, rx })
    }

    /// Opens a session for `id` and waits for Welcome.
    pub async fn connect(channel: Channel, id: &str, last_applied: u64) -> (Self, Welcome) {
        let hello = Hello {
            vehicle_id: id.into(),
            agent_version: "raw-test".into(),
            last_applied_generation: last_applied,
            actual: Some(RawState::default()),
            results: vec![],
        };
        let mut v = Self::open(channel, hello).await.expect("stream opens");
        match v.next().await {
            Some(server_message::Kind::Welcome(w)) => (v, w),
            other => panic!("expected Welcome, got {other:?}"),
        }
    }

    /// Opens a session for `id` that the server must refuse; returns the status.
    pub async fn refusal(channel: Channel, id: &str) -> tonic::Status {
        let hello = Hello { vehicle_id: id.into(), agent_version: "raw-test".into(), ..Default::default() };
        let mut v = match Self::open(channel, hello).await {
            Ok(v) => v,
            Err(status) => return status,
        };
        match tokio::time::timeout(BOUND, v.rx.message()).await {
            Ok(Err(status)) => status,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    /// The next server message (None when the stream ended), bounded by [`BOUND`].
    pub async fn next(&mut self) -> Option<server_message::Kind> {
        match tokio::time::timeout(BOUND, self.rx.message()).await {
            Ok(Ok(Some(m))) => m.kind,
            Ok(Ok(None)) => None,
            Ok(Err(status)) => panic!("stream failed: {status:?}"),
            Err(_) => panic!("no server message within {BOUND:?}"),
        }
    }

    /// The next message that is not a heartbeat.
    pub async fn next_non_heartbeat(&mut self) -> Option<server_message::Kind> {
        loop {
            match self.next().await {
                Some(server_message::Kind::Heartbeat(_)) => continue,
                other => return other,
            }
        }
    }

    /// Sends a message.
    pub async fn send(&self, kind: vehicle_message::Kind) {
        self.tx.send(VehicleMessage { kind: Some(kind) }).await.expect("stream open");
    }

    /// Acknowledges a snapshot.
    pub async fn ack(&self, generation: u64) {
        self.send(vehicle_message::Kind::Ack(Ack { generation })).await;
    }

    /// Sends a heartbeat.
    pub async fn heartbeat(&self, sequence: u64) {
        self.send(vehicle_message::Kind::Heartbeat(Heartbeat { sequence, sent_at: None, answers: 0 })).await;
    }
}

/// A tetherd child that exited instead of listening.
#[derive(Debug)]
pub struct Refused {
    /// How it exited.
    pub status: std::process::ExitStatus,
    /// What it wrote to stderr.
    pub stderr: String,
}

/// tetherd as a child process (the real command), for crash tests.
pub struct ChildServer {
    child: tokio::process::Child,
    /// The bound address.
    pub addr: SocketAddr,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl ChildServer {
    /// Starts `binary` serving on 127.0.0.1:0 with data in `data_dir`, and
    /// waits for its "listening on" line.
    pub async fn start(binary: &Path, data_dir: &Path) -> Self {
        Self::start_limited(binary, data_dir, None).await
    }

    /// Like [`start`](Self::start), with the open-files limit lowered to
    /// `nofile` (through the shell's `ulimit`, no unsafe code here).
    pub async fn start_limited(binary: &Path, data_dir: &Path, nofile: Option<u32>) -> Self {
        Self::start_with_args(binary, data_dir, nofile, &[]).await
    }

    /// Like [`start_limited`](Self::start_limited), with `args` added to the
    /// command line.
    pub async fn start_with_args(binary: &Path, data_dir: &Path, nofile: Option<u32>, args: &[&str]) -> Self {
        match Self::try_start_with_args(binary, data_dir, nofile, args).await {
            Ok(server) => server,
            Err(refused) => panic!("tetherd exited before listening ({}): {}", refused.status, refused.stderr),
        }
    }

    /// Like [`start_with_args`](Self::start_with_args), for a start that may
    /// be refused: the exit status and everything it wrote to stderr.
    pub async fn try_start_with_args(
        binary: &Path,
        data_dir: &Path,
        nofile: Option<u32>,
        args: &[&str],
    ) -> Result<Self, Refused> {
        let mut command = match nofile {
            None => tokio::process::Command::new(binary),
            Some(n) => {
                let mut c = tokio::process::Command::new("sh");
                c.arg("-c").arg(format!("ulimit -n {n} && exec \"$0\" \"$@\"")).arg(binary);
                c
            }
        };
        let mut child = command
            // Crash and drain tests drive writes faster than the default limits.
            .args(["--subject-write-rate", "0", "--vehicle-write-rate", "0"])
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("tetherd starts");
        let stderr = child.stderr.take().expect("piped");
        let mut lines = BufReader::new(stderr).lines();
        // Everything before "listening on" is kept too (recovery's warnings).
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let addr = tokio::time::timeout(BOUND, async {
            while let Some(line) = lines.next_line().await.expect("reads stderr") {
                if let Some(rest) = line.strip_prefix("tetherd: listening on ") {
                    let addr = rest.split_whitespace().next().expect("an address");
                    return Some(addr.parse::<SocketAddr>().expect("a socket address"));
                }
                log.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
            None
        })
        .await
        .expect("tetherd listens or exits in time");
        let Some(addr) = addr else {
            let status = tokio::time::timeout(BOUND, child.wait()).await.expect("exits").expect("wait");
            let stderr = log.lock().unwrap_or_else(|p| p.into_inner()).join("\n");
            return Err(Refused { status, stderr });
        };
        // Keep draining stderr (so the child never blocks on a full pipe) into
        // a log the test can read.
        let sink = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
        Ok(ChildServer { child, addr, log })
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// SIGKILL, no chance to flush anything.
    pub async fn kill_9(mut self) {
        self.child.kill().await.expect("kill -9");
    }

    /// SIGTERM (a real signal, as an orchestrator sends it), then waits for
    /// the exit at most `bound`. Returns the exit status and how long the
    /// process took to exit.
    pub async fn terminate(mut self, bound: Duration) -> (std::process::ExitStatus, Duration) {
        let pid = self.pid().expect("running");
        let sent = std::time::Instant::now();
        let kill = tokio::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().await;
        assert!(kill.expect("kill runs").success(), "kill -TERM {pid}");
        let status = tokio::time::timeout(bound, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("tetherd did not exit within {bound:?} of SIGTERM"))
            .expect("wait");
        (status, sent.elapsed())
    }

    /// Whether a line of the child's log (warnings and errors) contains `text`.
    pub fn logged(&self, text: &str) -> bool {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).iter().any(|l| l.contains(text))
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// CPU time (user + system) the process has used, from /proc.
    pub fn cpu_time(&self) -> Duration {
        let pid = self.pid().expect("running");
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/<pid>/stat");
        // Fields after the parenthesised command name; utime and stime are 14th and 15th.
        let rest = &stat[stat.rfind(')').expect("comm") + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
        // Linux reports clock ticks of 1/100 s (USER_HZ) to user space.
        Duration::from_millis(ticks * 10)
    }
}
