//! The raw-tonic baseline: a minimal tonic server built from the same
//! dependencies as tetherd (tonic's plain `Server::builder()`, default
//! settings, the contract's own generated services), so every write figure
//! has a ratio to what bare tonic does on this machine at that moment.
//!
//! - unary echo: `tether.app.v1.ControlService/SetDesired` answers at once
//!   with an empty `SetDesiredResponse`, storing nothing; the other methods
//!   are `UNIMPLEMENTED`.
//! - bidi echo: `tether.vehicle.v1.VehicleService/Connect` answers each
//!   message at once (Hello → Welcome, Heartbeat → its answer, Ack and
//!   Report → a DesiredState of that generation), so a lean vehicle can
//!   hold a session on it.
//!
//! [`serve`] is what `tether-bench baseline-server` runs, as a child process
//! of the benchmark ([`Baseline::start`]) so server and load generator are
//! split as they are for tetherd. With [`Baseline::start_tls`] it serves
//! mutual TLS through tonic's own `ServerTlsConfig` (the server certificate,
//! and client certificates required from the given CA), as a bare tonic
//! server with mTLS would.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use futures::{Stream, StreamExt};
use tether_sdk::pb::app::v1 as app;
use tether_sdk::pb::app::v1::control_service_server::{ControlService, ControlServiceServer};
use tether_sdk::pb::vehicle::v1::server_message::Kind as ServerKind;
use tether_sdk::pb::vehicle::v1::vehicle_message::Kind as VehicleKind;
use tether_sdk::pb::vehicle::v1::vehicle_service_server::{VehicleService, VehicleServiceServer};
use tether_sdk::pb::vehicle::v1::{DesiredState, Heartbeat, ServerMessage, VehicleMessage, Welcome};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{ServerTlsConfig, TcpIncoming};
use tonic::transport::{Certificate, Identity};
use tonic::{Request, Response, Status, Streaming};

use super::pki::ServerFiles;

/// The line the server prints on stdout once it listens, before the address.
pub const LISTENING: &str = "tether-bench baseline-server: listening on ";
/// How long the child may take to say where it listens.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The unary echo.
#[derive(Debug, Default)]
struct UnaryEcho;

type Unimplemented<T> = Result<Response<T>, Status>;

fn unimplemented<T>(method: &str) -> Unimplemented<T> {
    Err(Status::unimplemented(format!("the baseline echo server implements SetDesired only, not {method}")))
}

#[tonic::async_trait]
impl ControlService for UnaryEcho {
    async fn set_desired(
        &self,
        _: Request<app::SetDesiredRequest>,
    ) -> Result<Response<app::SetDesiredResponse>, Status> {
        Ok(Response::new(app::SetDesiredResponse::default()))
    }

    async fn get_vehicle(&self, _: Request<app::GetVehicleRequest>) -> Unimplemented<app::Vehicle> {
        unimplemented("GetVehicle")
    }

    type WatchVehicleStream = futures::stream::Empty<Result<app::VehicleEvent, Status>>;

    async fn watch_vehicle(&self, _: Request<app::WatchVehicleRequest>) -> Unimplemented<Self::WatchVehicleStream> {
        unimplemented("WatchVehicle")
    }

    async fn list_vehicles(&self, _: Request<app::ListVehiclesRequest>) -> Unimplemented<app::ListVehiclesResponse> {
        unimplemented("ListVehicles")
    }

    async fn cancel_desired(&self, _: Request<app::CancelDesiredRequest>) -> Unimplemented<app::CancelDesiredResponse> {
        unimplemented("CancelDesired")
    }

    async fn list_audit_records(
        &self,
        _: Request<app::ListAuditRecordsRequest>,
    ) -> Unimplemented<app::ListAuditRecordsResponse> {
        unimplemented("ListAuditRecords")
    }
}

/// The bidi echo.
#[derive(Debug, Default)]
struct BidiEcho {
    sessions: AtomicU64,
}

#[tonic::async_trait]
impl VehicleService for BidiEcho {
    type ConnectStream = Pin<Box<dyn Stream<Item = Result<ServerMessage, Status>> + Send>>;

    async fn connect(
        &self,
        request: Request<Streaming<VehicleMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let session_id = self.sessions.fetch_add(1, Ordering::Relaxed) + 1;
        let echoed = request.into_inner().map(move |message| message.map(|m| echo(m, session_id)));
        Ok(Response::new(Box::pin(echoed)))
    }
}

/// The answer to one vehicle message.
fn echo(message: VehicleMessage, session_id: u64) -> ServerMessage {
    let kind = match message.kind {
        Some(VehicleKind::Hello(_)) => Some(ServerKind::Welcome(Welcome { session_id, ..Welcome::default() })),
        Some(VehicleKind::Heartbeat(beat)) => Some(ServerKind::Heartbeat(Heartbeat {
            sequence: beat.sequence,
            sent_at: beat.sent_at,
            answers: beat.sequence.max(1),
        })),
        Some(VehicleKind::Ack(ack)) => {
            Some(ServerKind::Desired(DesiredState { generation: ack.generation, ..DesiredState::default() }))
        }
        Some(VehicleKind::Report(report)) => Some(ServerKind::Desired(DesiredState {
            generation: report.observed_generation,
            state: report.actual,
            ..DesiredState::default()
        })),
        None => None,
    };
    ServerMessage { kind }
}

/// Serves both echoes on `listen` until `stop` resolves, over mutual TLS
/// with `tls`'s files if given; calls `listening` with the bound address
/// first.
pub async fn serve(
    listen: SocketAddr,
    tls: Option<&ServerFiles>,
    listening: impl FnOnce(SocketAddr),
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut builder = tonic::transport::Server::builder();
    if let Some(files) = tls {
        let read = |path: &PathBuf| std::fs::read(path).with_context(|| format!("cannot read {}", path.display()));
        let config = ServerTlsConfig::new()
            .identity(Identity::from_pem(read(&files.cert)?, read(&files.key)?))
            .client_ca_root(Certificate::from_pem(read(&files.client_ca)?));
        builder = builder.tls_config(config).context("bad TLS configuration")?;
    }
    // tonic's own defaults when it binds (`Server::serve`): TCP_NODELAY on,
    // no TCP keepalive.
    let incoming = TcpIncoming::bind(listen).with_context(|| format!("cannot bind {listen}"))?.with_nodelay(Some(true));
    let addr = incoming.local_addr().context("no local address")?;
    listening(addr);
    builder
        .add_service(ControlServiceServer::new(UnaryEcho))
        .add_service(VehicleServiceServer::new(BidiEcho::default()))
        .serve_with_incoming_shutdown(incoming, stop)
        .await
        .context("the baseline server failed")
}

/// The body of `tether-bench baseline-server`: serves on `listen` (over
/// mutual TLS with `tls`), prints [`LISTENING`] and the address on stdout,
/// and stops when stdin closes (so it never outlives the benchmark that
/// started it, however that ends).
pub async fn serve_child(listen: SocketAddr, tls: Option<ServerFiles>) -> anyhow::Result<()> {
    let (closed, stdin_closed) = tokio::sync::oneshot::channel::<()>();
    // A blocking read on a thread of its own (tokio's stdin needs a feature
    // this workspace does not enable).
    std::thread::Builder::new().name("stdin-watch".into()).spawn(move || {
        let mut buf = [0u8; 64];
        while matches!(std::io::Read::read(&mut std::io::stdin(), &mut buf), Ok(n) if n > 0) {}
        let _ = closed.send(());
    })?;
    let stdin_closed = async move {
        let _ = stdin_closed.await;
    };
    serve(listen, tls.as_ref(), |addr| println!("{LISTENING}{addr}"), stdin_closed).await
}

/// How to run the baseline server.
#[derive(Debug, Clone)]
pub enum BaselineOptions {
    /// A child process: `program args...` must run [`serve_child`] (for
    /// `tether-bench`: its own binary with `baseline-server`).
    Process {
        /// The executable.
        program: PathBuf,
        /// Its arguments.
        args: Vec<String>,
    },
    /// A thread of this process with its own tokio runtime. Correct but not
    /// split from the load generator: for tests, whose binary cannot re-run
    /// itself as the server.
    InProcess,
}

impl BaselineOptions {
    /// This executable run with `baseline-server` (what `tether-bench` does).
    pub fn this_binary() -> anyhow::Result<BaselineOptions> {
        let program = std::env::current_exe().context("cannot find this executable")?;
        Ok(BaselineOptions::Process { program, args: vec!["baseline-server".into()] })
    }
}

/// A running baseline server; stopped when dropped.
#[derive(Debug)]
pub struct Baseline {
    addr: SocketAddr,
    tls: bool,
    running: Running,
}

#[derive(Debug)]
enum Running {
    Child(Child),
    Thread { stop: CancellationToken, thread: Option<std::thread::JoinHandle<()>> },
}

impl Baseline {
    /// Starts the server on `127.0.0.1:0` and waits until it listens.
    pub async fn start(options: &BaselineOptions) -> anyhow::Result<Baseline> {
        Self::start_with(options, None).await
    }

    /// [`start`](Self::start), serving mutual TLS with `files` (the server's
    /// certificate and key, and the CA its clients' certificates must chain
    /// to).
    pub async fn start_tls(options: &BaselineOptions, files: &ServerFiles) -> anyhow::Result<Baseline> {
        Self::start_with(options, Some(files)).await
    }

    async fn start_with(options: &BaselineOptions, tls: Option<&ServerFiles>) -> anyhow::Result<Baseline> {
        let (addr, running) = match options {
            BaselineOptions::Process { program, args } => Self::start_child(program, args, tls).await?,
            BaselineOptions::InProcess => Self::start_thread(tls.cloned()).await?,
        };
        Ok(Baseline { addr, tls: tls.is_some(), running })
    }

    async fn start_child(
        program: &PathBuf,
        args: &[String],
        tls: Option<&ServerFiles>,
    ) -> anyhow::Result<(SocketAddr, Running)> {
        let mut command = Command::new(program);
        command.args(args);
        if let Some(files) = tls {
            command.arg("--tls-cert").arg(&files.cert).arg("--tls-key").arg(&files.key);
            command.arg("--client-ca").arg(&files.client_ca);
        }
        let mut child = command
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start the baseline server {}", program.display()))?;
        let stdout = child.stdout.take().context("the baseline server's stdout is not piped")?;
        let mut lines = BufReader::new(stdout).lines();
        let found = tokio::time::timeout(START_TIMEOUT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(addr) = line.strip_prefix(LISTENING).and_then(|a| a.trim().parse().ok()) {
                    return Some(addr);
                }
            }
            None
        })
        .await;
        let addr: SocketAddr = match found {
            Ok(Some(addr)) => addr,
            Ok(None) => bail!("the baseline server exited before listening"),
            Err(_) => bail!("the baseline server did not say where it listens within {START_TIMEOUT:?}"),
        };
        tracing::info!(pid = child.id(), %addr, tls = tls.is_some(), "baseline server started");
        Ok((addr, Running::Child(child)))
    }

    async fn start_thread(tls: Option<ServerFiles>) -> anyhow::Result<(SocketAddr, Running)> {
        let stop = CancellationToken::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let stopped = stop.clone();
        let thread = std::thread::Builder::new().name("bench-baseline".into()).spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = tx.send(Err(anyhow::anyhow!("cannot start a runtime: {e}")));
                    return;
                }
            };
            let mut tx = Some(tx);
            let listening = |addr| {
                if let Some(tx) = tx.take() {
                    let _ = tx.send(Ok(addr));
                }
            };
            let outcome =
                runtime.block_on(serve(([127, 0, 0, 1], 0).into(), tls.as_ref(), listening, stopped.cancelled_owned()));
            if let Err(e) = outcome {
                tracing::warn!(error = format!("{e:#}"), "baseline server failed");
            }
        })?;
        let addr = rx.await.context("the baseline server thread ended before listening")??;
        Ok((addr, Running::Thread { stop, thread: Some(thread) }))
    }

    /// Its URL, e.g. `http://127.0.0.1:41234` (`https` when it serves TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The server's resident memory, KiB (this process's when it runs in a
    /// thread).
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        super::rss::rss_kib(self.pid()).context("cannot read the baseline server's RSS")
    }

    /// The server's process id (this process's when it runs in a thread).
    pub fn pid(&self) -> u32 {
        match &self.running {
            Running::Child(child) => child.id().unwrap_or(0),
            Running::Thread { .. } => std::process::id(),
        }
    }

    /// Whether it runs in a process of its own (so its CPU and memory are
    /// its own).
    pub fn is_child(&self) -> bool {
        matches!(self.running, Running::Child(_))
    }

    /// Stops it and waits until it is gone.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        match &mut self.running {
            Running::Child(child) => child.kill().await.context("cannot kill the baseline server")?,
            Running::Thread { stop, thread } => {
                stop.cancel();
                if let Some(thread) = thread.take() {
                    tokio::task::spawn_blocking(move || thread.join())
                        .await
                        .context("cannot join the baseline thread")?
                        .map_err(|_| anyhow::anyhow!("the baseline thread panicked"))?;
                }
            }
        }
        Ok(())
    }
}

impl Drop for Baseline {
    fn drop(&mut self) {
        // A child is killed by kill_on_drop; a thread is told to stop.
        if let Running::Thread { stop, .. } = &self.running {
            stop.cancel();
        }
    }
}
