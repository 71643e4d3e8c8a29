//! Assembles a node: store, hub, services (with health, reflection and
//! gRPC-Web), transport and the expiry sweep; and takes it down gracefully.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tether_proto::StateSchema;
use tether_proto::admin::v1::ServerStats;
use tether_proto::admin::v1::admin_service_server::AdminServiceServer;
use tether_proto::app::v1::control_service_server::ControlServiceServer;
use tether_proto::vehicle::v1::GoodbyeReason;
use tether_proto::vehicle::v1::vehicle_service_server::VehicleServiceServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::Layer;

use crate::admin_http::{AdminToken, serve_admin};
use crate::auth::{Authenticate, Authenticator, Scopes};
use crate::config::Config;
use crate::core::KeyLimits;
use crate::health::Health;
use crate::hub::Hub;
use crate::limits::{Rate, WriteLimits};
use crate::otlp_metrics::OtlpMetrics;
use crate::router::LocalRouter;
use crate::service::{AdminApi, ControlApi, VehicleApi};
use crate::stats::Stats;
use crate::store::{NatsOptions, NatsStore, OpenOptions, RedbStore, Store, StoreHealth};
use crate::tls::TlsState;
use crate::trace::{TraceLayer, Traces};
use crate::transport::{CorsForBrowsers, OversizeAsResourceExhausted, TlsTermination, accept_loop};

/// How often the shared expiry sweep runs.
const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// Why a node could not start. Each message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is inconsistent.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The state descriptor cannot be used.
    #[error("cannot use --state-descriptor {path}: {reason}")]
    Schema {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The store cannot be opened.
    #[error("cannot open the store in {dir}: {reason}")]
    Store {
        /// The data directory.
        dir: String,
        /// Why.
        reason: String,
    },
    /// The node cannot join the cluster's store.
    #[error("cannot join the cluster (--cluster-nats): {0}")]
    Cluster(String),
    /// The reflection service cannot read the descriptor sets.
    #[error("cannot build the reflection service: {0}")]
    Reflection(String),
    /// App authentication cannot be set up.
    #[error("cannot set up app authentication: {0}")]
    Auth(#[from] crate::auth::AuthConfigError),
    /// TLS cannot be set up.
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// Trace export cannot be set up.
    #[error("cannot set up trace export: {0}")]
    Traces(String),
    /// The admin endpoint's token cannot be read.
    #[error("cannot use --admin-token-file {0}")]
    Admin(String),
    /// Metric export cannot be set up.
    #[error("cannot set up metric export: {0}")]
    Metrics(String),
    /// The address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A running node.
pub struct ServerHandle {
    local_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    hub: Arc<Hub>,
    admin: AdminApi,
    health: Health,
    draining: CancellationToken,
    grace: Duration,
    drain_delay: Duration,
    traces: Traces,
    otlp_metrics: OtlpMetrics,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle").field("local_addr", &self.local_addr).finish()
    }
}

fn load_schema(config: &Config) -> Result<StateSchema, StartError> {
    let Some(path) = &config.state_descriptor else {
        return Ok(StateSchema::contract());
    };
    let schema_error = |reason: String| StartError::Schema { path: path.display().to_string(), reason };
    let bytes = std::fs::read(path).map_err(|e| schema_error(e.to_string()))?;
    StateSchema::from_descriptor_set(&bytes, &config.state_message).map_err(|e| schema_error(e.to_string()))
}

/// How long a cluster node may take to reach NATS and open its stream.
const CLUSTER_START: Duration = Duration::from_secs(60);

/// The embedded store in the data directory, or the cluster's stream.
async fn open_store(config: &Config) -> Result<Arc<dyn Store>, StartError> {
    if config.cluster_nats.is_empty() {
        let options = OpenOptions { recover_damaged_store: config.recover_damaged_store };
        let store = RedbStore::open_with(&config.data_dir, options)
            .map_err(|e| StartError::Store { dir: config.data_dir.display().to_string(), reason: e.reason })?;
        return Ok(Arc::new(store));
    }
    let node = config.cluster_node.clone().unwrap_or_else(|| format!("node-{:08x}", rand::random::<u32>()));
    let options = NatsOptions {
        servers: config.cluster_nats.clone(),
        stream: config.cluster_stream.clone(),
        replicas: config.cluster_replicas as usize,
        node,
        key_ttl: config.idempotency_window + Duration::from_secs(60),
        audit_ttl: config.audit_retention,
        publish_deadline: Duration::from_secs(10),
        lease: config.cluster_lease,
    };
    let mut connect = async_nats::ConnectOptions::new().max_reconnects(None);
    if let Some(ca) = &config.cluster_nats_ca {
        connect = connect.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let Some(creds) = &config.cluster_nats_creds {
        connect = connect
            .credentials_file(creds)
            .await
            .map_err(|e| StartError::Cluster(format!("cannot read --cluster-nats-creds {}: {e}", creds.display())))?;
    }
    if let (Some(user), Some(password)) = (&config.cluster_nats_user, &config.cluster_nats_password) {
        connect = connect.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &config.cluster_nats_token {
        connect = connect.token(token.clone());
    }
    // The first connection is bounded: a node that cannot reach NATS says so.
    let connected = tokio::time::timeout(CLUSTER_START, NatsStore::connect(options, connect)).await.map_err(|_| {
        StartError::Cluster(format!(
            "no usable JetStream at {} within {CLUSTER_START:?}",
            config.cluster_nats.join(",")
        ))
    })?;
    Ok(Arc::new(connected.map_err(|e| StartError::Cluster(e.reason))?))
}

/// Starts a node: validates the config, opens the store, binds, serves.
pub async fn start(config: Config) -> Result<ServerHandle, StartError> {
    config.validate().map_err(StartError::Config)?;
    let schema = load_schema(&config)?;
    let tickets =
        (!config.tls_ticket_lifetime.is_zero()).then_some((config.data_dir.as_path(), config.tls_ticket_lifetime));
    let tls_state = config.tls_files().map(|files| TlsState::load(files, tickets)).transpose()?.map(Arc::new);
    let tls = tls_state.as_ref().map(|state| TlsTermination {
        state: state.clone(),
        handshakes: Arc::new(tokio::sync::Semaphore::new(config.max_handshakes)),
        timeout: config.tls_handshake_timeout,
        client_hello_timeout: config.preface_timeout,
        identity_from: config.vehicle_identity,
    });
    let secure = tls.is_some();
    let traces = Traces::from_config(&config).map_err(StartError::Traces)?;
    let auth = Arc::new(authenticator(&config, secure)?);
    let admin_token =
        config.admin_token_file.as_deref().map(AdminToken::read).transpose().map_err(StartError::Admin)?;
    let store = open_store(&config).await?;
    let key_limits = KeyLimits { window: config.idempotency_window, max: config.max_keys_per_vehicle };
    let stats = Arc::new(Stats::default());
    let hub = Hub::load(store, Arc::new(LocalRouter), schema, key_limits, stats.clone(), config.recover_damaged_store)
        .map_err(|e| StartError::Store { dir: config.data_dir.display().to_string(), reason: e.reason })?;
    let hub = Arc::new(hub);
    let listener = bind(config.listen).map_err(|source| StartError::Bind { addr: config.listen, source })?;
    let local_addr = listener.local_addr().map_err(|source| StartError::Bind { addr: config.listen, source })?;
    let admin_listener = match config.admin_listen.0 {
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, source })?),
        None => None,
    };
    let admin_addr = match &admin_listener {
        Some(l) => Some(l.local_addr().map_err(|source| StartError::Bind { addr: config.listen, source })?),
        None => None,
    };

    let config = Arc::new(config);
    let shutdown = CancellationToken::new();
    let draining = CancellationToken::new();
    let tasks = TaskTracker::new();
    let otlp_metrics = OtlpMetrics::from_config(&config, &hub, &tasks).map_err(StartError::Metrics)?;
    let limit = config.max_message_bytes;
    let revoked = tls_state.as_ref().map(|s| s.revoked());
    let vehicle =
        VehicleApi::new(hub.clone(), config.clone(), shutdown.clone(), draining.clone(), tasks.clone(), revoked)
            .with_traces(traces.clone());
    let limits = Arc::new(WriteLimits::new(
        Rate { per_second: config.subject_write_rate, burst: config.subject_write_burst },
        Rate { per_second: config.vehicle_write_rate, burst: config.vehicle_write_burst },
    ));
    let control = ControlApi::new(hub.clone(), config.clone(), shutdown.clone(), limits.clone());
    let admin = AdminApi::new(hub.clone(), tasks.clone());
    let (health, health_service) = Health::serving().await;
    // Reflection over the whole contract (with imports and comments) and the
    // health service, so grpcurl and similar tools need no .proto files.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(tether_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1().map_err(|e| StartError::Reflection(e.to_string()))?;
    let reflection_v1alpha = reflection().build_v1alpha().map_err(|e| StartError::Reflection(e.to_string()))?;
    let control = ControlServiceServer::new(control).max_decoding_message_size(limit).max_encoding_message_size(limit);
    let routes = tonic::service::Routes::new(
        VehicleServiceServer::new(vehicle).max_decoding_message_size(limit).max_encoding_message_size(limit),
    )
    // gRPC-Web for the app-facing service only: browsers call apps' APIs,
    // never a vehicle's session.
    .add_service(tonic_web::GrpcWebLayer::new().layer(control))
    .add_service(AdminServiceServer::new(admin.clone()))
    .add_service(health_service)
    .add_service(reflection_v1)
    .add_service(reflection_v1alpha)
    .prepare();
    let service = OversizeAsResourceExhausted(Authenticate::new(TraceLayer::new(routes, traces.clone()), auth));
    // CORS outside authentication: a browser's preflight carries no token.
    let service = CorsForBrowsers::new(cors(&config.grpc_web_origins), service);

    tasks.spawn(accept_loop(listener, service, tls, config.clone(), stats, tasks.clone(), shutdown.clone()));
    tasks.spawn(sweep(hub.clone(), limits, config.audit_retention, shutdown.clone()));
    tasks.spawn(watch_store(hub.store().health(), health.clone(), shutdown.clone()));
    tasks.spawn(watch_cluster(hub.clone(), health.clone(), shutdown.clone()));
    if let Some(listener) = admin_listener {
        tasks.spawn(serve_admin(listener, hub.clone(), admin_token, tasks.clone(), shutdown.clone()));
    }
    if let Some(state) = tls_state {
        tasks.spawn(reload_tls(state, hub.stats.clone(), shutdown.clone()));
    }
    tracing::info!(
        addr = %local_addr,
        data_dir = %config.data_dir.display(),
        vehicles = hub.len(),
        tls = secure,
        traces = traces.exporting(),
        metrics = otlp_metrics.exporting(),
        "tetherd serving gRPC"
    );
    Ok(ServerHandle {
        local_addr,
        admin_addr,
        shutdown,
        tasks,
        hub,
        admin,
        health,
        draining,
        grace: config.shutdown_grace,
        drain_delay: config.drain_delay,
        traces,
        otlp_metrics,
    })
}

/// CORS for gRPC-Web from browsers on the configured origins (none: the
/// layer adds nothing and answers no preflight).
fn cors(origins: &[String]) -> tower_http::cors::CorsLayer {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let origins: Vec<http::HeaderValue> = origins.iter().filter_map(|o| o.parse().ok()).collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([http::Method::POST])
        .allow_headers([
            http::header::AUTHORIZATION,
            http::header::CONTENT_TYPE,
            http::HeaderName::from_static("x-grpc-web"),
            http::HeaderName::from_static("x-user-agent"),
            http::HeaderName::from_static("grpc-timeout"),
            http::HeaderName::from_static("traceparent"),
        ])
        .expose_headers([
            http::HeaderName::from_static("grpc-status"),
            http::HeaderName::from_static("grpc-message"),
            http::HeaderName::from_static("grpc-status-details-bin"),
        ])
        .max_age(Duration::from_secs(600))
}

/// How apps authenticate: open (everyone may do everything) only without
/// TLS — which tetherd serves on loopback only — and without keys or
/// services; otherwise a verified token or a known service certificate.
fn authenticator(config: &Config, secure: bool) -> Result<Authenticator, StartError> {
    let jwks = match (&config.jwks, &config.jwt_issuer, &config.jwt_audience) {
        (Some(path), Some(iss), Some(aud)) => Some((path.as_path(), iss.as_str(), aud.as_str())),
        _ => None,
    };
    if !secure && jwks.is_none() && config.services.is_empty() {
        return Ok(Authenticator::open());
    }
    let services = config.services.iter().map(|(name, scopes)| (name.clone(), Scopes::parse(scopes))).collect();
    Ok(Authenticator::new(jwks, services)?)
}

/// Mirrors the store's health in the node's: NOT_SERVING while the store
/// cannot write.
async fn watch_store(mut store: watch::Receiver<StoreHealth>, health: Health, shutdown: CancellationToken) {
    loop {
        let failing = *store.borrow_and_update() != StoreHealth::Healthy;
        health.store_failing(failing).await;
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = store.changed() => if changed.is_err() { return },
        }
    }
}

/// A node cut off from its cluster turns NOT_SERVING and ends its sessions
/// (its vehicles reconnect to a node that can serve them; new sessions are
/// refused meanwhile), until it renews its lease again.
async fn watch_cluster(hub: Arc<Hub>, health: Health, shutdown: CancellationToken) {
    let mut isolated = hub.store().isolated();
    loop {
        let cut = *isolated.borrow_and_update();
        health.isolated(cut).await;
        if cut {
            hub.kick_all(
                GoodbyeReason::ShuttingDown,
                "this node lost its link to the cluster: reconnect, to another node if it has not come back",
            );
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = isolated.changed() => if changed.is_err() { return },
        }
    }
}

/// Connections the kernel queues for the accept loop. tokio's default (128)
/// overflows when a reconnect storm brings hundreds of vehicles at once: each
/// overflow drops a SYN that the client resends only a second later (measured
/// with `tether-bench tls`, 200 connects in flight). Linux caps it at
/// `net.core.somaxconn` (4096 by default).
const LISTEN_BACKLOG: u32 = 4096;

/// Binds the vehicle and app port with [`LISTEN_BACKLOG`].
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    // A restarted node binds its port again at once, TIME_WAIT or not.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The shared expiry sweep: one task for the node, no per-vehicle timers.
/// Also forgets idle rate-limit buckets, every this many sweeps.
const FORGET_LIMITS_EVERY: u32 = 100;
/// And removes audit records past their retention at the first sweep, then
/// every tenth of the retention (at most every minute), at most
/// [`PRUNE_AUDIT_BATCH`] per commit; a full batch is followed by another at
/// the next sweep.
const PRUNE_AUDIT_AT_MOST_EVERY: Duration = Duration::from_secs(60);
const PRUNE_AUDIT_BATCH: usize = 10_000;

async fn sweep(hub: Arc<Hub>, limits: Arc<WriteLimits>, audit_retention: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sweeps = 0u32;
    let prune_every = (audit_retention / 10).clamp(SWEEP_EVERY, PRUNE_AUDIT_AT_MOST_EVERY);
    let mut pruned_at: Option<tokio::time::Instant> = None;
    let mut prune_again = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {
                let expired = hub.expire_due(SystemTime::now());
                if expired > 0 {
                    tracing::debug!(vehicles = expired, "expired undelivered fields");
                }
                if prune_again || pruned_at.is_none_or(|at| at.elapsed() >= prune_every) {
                    pruned_at = Some(tokio::time::Instant::now());
                    prune_again = prune_audit(&hub, audit_retention).await;
                }
                sweeps = sweeps.wrapping_add(1);
                if sweeps.is_multiple_of(FORGET_LIMITS_EVERY) {
                    limits.forget_idle();
                }
            }
        }
    }
}

/// Removes one batch of audit records older than the retention; whether a
/// full batch was removed (more may be due).
async fn prune_audit(hub: &Hub, retention: Duration) -> bool {
    let Some(cutoff) = SystemTime::now().checked_sub(retention) else { return false };
    match hub.store().prune_audit(cutoff, PRUNE_AUDIT_BATCH).await {
        Ok(Ok(removed)) => {
            if removed > 0 {
                tracing::info!(removed, "removed audit records past their retention");
            }
            removed == PRUNE_AUDIT_BATCH
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "audit retention: prune failed; retried later");
            false
        }
        Err(_) => false,
    }
}

/// How often TLS files are checked for changes.
const TLS_POLL: Duration = Duration::from_millis(250);

/// Reloads certificates, key, CA and CRLs when they change on disk or on
/// SIGHUP; a file that does not load keeps the previous configuration.
async fn reload_tls(state: Arc<TlsState>, stats: Arc<Stats>, shutdown: CancellationToken) {
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(TLS_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let force = tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => false,
            Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
        };
        match state.reload(force) {
            Ok(true) => {
                crate::stats::bump(&stats.tls_reloads);
                tracing::info!("TLS configuration reloaded");
            }
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "TLS reload failed; keeping the previous configuration"),
        }
    }
}

impl ServerHandle {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The bound admin (metrics) address, unless `admin_listen` is off.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The node's counts (as AdminService serves them).
    pub fn stats(&self) -> ServerStats {
        self.admin.stats()
    }

    /// The hub (for in-process inspection in tests and tools).
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Resolves when shutdown has been requested.
    pub fn shutdown_requested(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.shutdown.cancelled()
    }

    /// Graceful shutdown. Drain first: health turns NOT_SERVING, new vehicle
    /// sessions are refused and every session gets a goodbye with a jittered
    /// reconnect hint; for `drain_delay` the node still accepts (health
    /// checks and app calls), so load balancers notice. Then stop accepting,
    /// answer waiting calls, let connections drain within the grace period,
    /// make every accepted write durable and close the store.
    pub async fn shutdown(self) {
        tracing::info!(drain_delay = ?self.drain_delay, grace = ?self.grace, "draining");
        self.health.draining().await;
        self.draining.cancel();
        self.hub.kick_all(GoodbyeReason::ShuttingDown, "tetherd is shutting down");
        if !self.drain_delay.is_zero() {
            tokio::time::sleep(self.drain_delay).await;
        }
        tracing::info!("shutting down");
        // Health watchers were told NOT_SERVING; end their streams so they
        // do not hold connections open through the grace period.
        self.health.close().await;
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(self.grace + Duration::from_secs(1), self.tasks.wait()).await.is_err() {
            tracing::warn!(tasks = self.tasks.len(), "grace period over; closing with tasks still running");
        }
        self.hub.close_store();
        self.traces.shutdown().await;
        // The last export carries the final counts (every task has ended).
        self.otlp_metrics.shutdown().await;
        tracing::info!("shut down");
    }
}
