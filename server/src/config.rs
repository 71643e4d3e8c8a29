//! tetherd's configuration: one struct, parsed fully from a TOML file
//! (`--config`), `TETHER_*` environment variables and flags, in that order of
//! precedence, before anything binds (see [`load`]). Bad values exit with one
//! clear line naming the key.

mod layers;

pub use layers::{ConfigError, Loaded, SECRET_KEYS, load};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::tls::{IdentityFrom, TlsFiles};

fn web_origin(s: &str) -> Result<String, String> {
    let ok = (s.starts_with("https://") || s.starts_with("http://"))
        && !s.ends_with('/')
        && http::HeaderValue::from_str(s).is_ok();
    if ok { Ok(s.to_string()) } else { Err(format!("`{s}` is not an origin like https://app.example.com")) }
}

fn service_scopes(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, scopes)) if !name.is_empty() && !scopes.trim().is_empty() => {
            Ok((name.to_string(), scopes.to_string()))
        }
        _ => Err(format!("`{s}` is not NAME=SCOPES, e.g. app=vehicles:read vehicles:control")),
    }
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("`{s}` is not a duration like 500ms, 15s or 5m: {e}"))
}

/// An address to listen on, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionalAddr(pub Option<SocketAddr>);

fn optional_addr(s: &str) -> Result<OptionalAddr, String> {
    if s == "off" {
        return Ok(OptionalAddr(None));
    }
    s.parse().map(|a| OptionalAddr(Some(a))).map_err(|_| format!("`{s}` is not an address like 127.0.0.1:9464, or off"))
}

/// How tetherd runs. Every option is also read from the environment variable
/// named in its help and from the key of the same name (snake_case) in the
/// `--config` file; flags beat the environment, which beats the file.
#[derive(Debug, Clone, Parser)]
#[command(name = "tetherd", version, about = "tetherd: delivers target-state commands to connected vehicles")]
pub struct Config {
    /// A TOML file of settings (keys as in `--print-config`); the
    /// environment and flags override it.
    #[arg(long, env = "TETHER_CONFIG")]
    pub config: Option<PathBuf>,

    /// Print the effective configuration (secrets redacted) as TOML, with
    /// where each value came from, and exit.
    #[arg(long)]
    pub print_config: bool,

    /// Address to serve gRPC on. Plaintext is for loopback development.
    #[arg(long, env = "TETHER_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Address of the admin HTTP endpoint (`/metrics` in the Prometheus text
    /// format), or `off`. Loopback by default: it is for operators.
    #[arg(long, env = "TETHER_ADMIN_LISTEN", default_value = "127.0.0.1:9464", value_parser = optional_addr)]
    pub admin_listen: OptionalAddr,

    /// A file holding the admin endpoint's bearer token: every request to it
    /// must then send `Authorization: Bearer <token>` (Prometheus:
    /// `authorization: { credentials_file: ... }`). At least 16 characters;
    /// surrounding whitespace is ignored. Required for an admin address off
    /// loopback, unless `--admin-allow-unauthenticated`.
    #[arg(long, env = "TETHER_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// Serve the admin endpoint off loopback without a token: anyone who
    /// reaches the address reads the node's metrics. For networks where
    /// something else guards the port.
    #[arg(long, env = "TETHER_ADMIN_ALLOW_UNAUTHENTICATED", action = clap::ArgAction::Set, num_args = 0..=1,
          default_value = "false", default_missing_value = "true")]
    pub admin_allow_unauthenticated: bool,

    /// Start even though the store is damaged, accepting the loss: a write-
    /// ahead log damaged before its end is replayed up to the damage (the
    /// commits after it dropped, their number logged, the log moved aside
    /// as `tether.wal.damaged-<time>`), and a vehicle whose stored rows do not
    /// verify is moved to the store's quarantine table and starts empty.
    /// Without it tetherd refuses to start and changes nothing.
    #[arg(long, env = "TETHER_RECOVER_DAMAGED_STORE", action = clap::ArgAction::Set, num_args = 0..=1,
          default_value = "false", default_missing_value = "true")]
    pub recover_damaged_store: bool,

    /// Run as a node of a cluster: keep vehicle records, idempotency keys and
    /// audit records in NATS JetStream at these servers (comma-separated
    /// `nats://host:port` or `tls://host:port`) instead of the embedded
    /// store. Every node of one fleet names the same servers and stream.
    #[arg(long = "cluster-nats", env = "TETHER_CLUSTER_NATS", value_delimiter = ',')]
    pub cluster_nats: Vec<String>,

    /// The JetStream stream of the fleet (created with the replicas below if
    /// absent); its subjects are `<name in lower case>.>`.
    #[arg(long, env = "TETHER_CLUSTER_STREAM", default_value = "TETHER")]
    pub cluster_stream: String,

    /// Replicas the stream must have: a write is acknowledged once a
    /// majority of them stored it. Below 3 a lost disk loses writes.
    #[arg(long, env = "TETHER_CLUSTER_REPLICAS", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=5))]
    pub cluster_replicas: u64,

    /// This node's name in the cluster (unique; logs and metrics). Default:
    /// a random name at each start.
    #[arg(long, env = "TETHER_CLUSTER_NODE")]
    pub cluster_node: Option<String>,

    /// A node not heard from for this long counts as gone: its vehicles are
    /// offline until they reconnect to another node; a node that cannot
    /// renew its own lease for this long ends its sessions. Renewed every
    /// third of it.
    #[arg(long, env = "TETHER_CLUSTER_LEASE", default_value = "6s", value_parser = duration)]
    pub cluster_lease: Duration,

    /// The CA (PEM) that signed the NATS servers' certificates: the link to
    /// NATS is then TLS. Required for servers off loopback.
    #[arg(long, env = "TETHER_CLUSTER_NATS_CA")]
    pub cluster_nats_ca: Option<PathBuf>,

    /// A NATS credentials file (user JWT and nkey seed) to authenticate with.
    #[arg(long, env = "TETHER_CLUSTER_NATS_CREDS")]
    pub cluster_nats_creds: Option<PathBuf>,

    /// A NATS user to authenticate as (with `cluster_nats_password`).
    #[arg(long, env = "TETHER_CLUSTER_NATS_USER")]
    pub cluster_nats_user: Option<String>,

    /// The NATS user's password; set it through the environment (redacted in
    /// `--print-config`).
    #[arg(long, env = "TETHER_CLUSTER_NATS_PASSWORD", hide_env_values = true)]
    pub cluster_nats_password: Option<String>,

    /// A NATS token to authenticate with; set it through the environment
    /// (redacted in `--print-config`).
    #[arg(long, env = "TETHER_CLUSTER_NATS_TOKEN", hide_env_values = true)]
    pub cluster_nats_token: Option<String>,

    /// Directory of the embedded store (created if missing).
    #[arg(long, env = "TETHER_DATA_DIR", default_value = "tether-data")]
    pub data_dir: PathBuf,

    /// A FileDescriptorSet to read the vehicle state through, instead of the
    /// contract compiled in (lets a newer contract's fields flow without a rebuild).
    #[arg(long, env = "TETHER_STATE_DESCRIPTOR")]
    pub state_descriptor: Option<PathBuf>,

    /// The state message's full name within that descriptor set.
    #[arg(long, env = "TETHER_STATE_MESSAGE", default_value = "tether.state.v1.VehicleState")]
    pub state_message: String,

    /// Expiry of a write that gives no TTL.
    #[arg(long, env = "TETHER_DEFAULT_TTL", default_value = "5m", value_parser = duration)]
    pub default_ttl: Duration,

    /// Longest TTL a write may ask for.
    #[arg(long, env = "TETHER_MAX_TTL", default_value = "7d", value_parser = duration)]
    pub max_ttl: Duration,

    /// How often each side of a vehicle session sends a heartbeat.
    #[arg(long, env = "TETHER_HEARTBEAT_INTERVAL", default_value = "15s", value_parser = duration)]
    pub heartbeat_interval: Duration,

    /// Silent intervals after which a session is closed.
    #[arg(long, env = "TETHER_HEARTBEAT_MISSES", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub heartbeat_misses: u32,

    /// Time a new stream has to send its Hello.
    #[arg(long, env = "TETHER_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub handshake_timeout: Duration,

    /// Longest a SetDesired call waits for an acknowledgement level, whatever
    /// the caller's deadline.
    #[arg(long, env = "TETHER_MAX_WAIT", default_value = "60s", value_parser = duration)]
    pub max_wait: Duration,

    /// How long idempotency keys are remembered.
    #[arg(long, env = "TETHER_IDEMPOTENCY_WINDOW", default_value = "24h", value_parser = duration)]
    pub idempotency_window: Duration,

    /// How long audit records of writes (accepted or refused) are kept.
    #[arg(long, env = "TETHER_AUDIT_RETENTION", default_value = "30d", value_parser = duration)]
    pub audit_retention: Duration,

    /// Most idempotency keys remembered per vehicle (oldest forgotten first).
    #[arg(long, env = "TETHER_MAX_KEYS_PER_VEHICLE", default_value_t = 1000)]
    pub max_keys_per_vehicle: usize,

    /// Largest gRPC message accepted or sent, in bytes.
    #[arg(long, env = "TETHER_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024)]
    pub max_message_bytes: usize,

    /// Most open connections; more are refused with UNAVAILABLE.
    #[arg(long, env = "TETHER_MAX_CONNECTIONS", default_value_t = 18_000)]
    pub max_connections: usize,

    /// HTTP/2 PING interval on idle connections (detects dead peers).
    #[arg(long, env = "TETHER_H2_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = duration)]
    pub h2_keepalive_interval: Duration,

    /// Time to wait for a PING's answer before closing the connection.
    #[arg(long, env = "TETHER_H2_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub h2_keepalive_timeout: Duration,

    /// TCP keepalive idle time on accepted sockets.
    #[arg(long, env = "TETHER_TCP_KEEPALIVE", default_value = "60s", value_parser = duration)]
    pub tcp_keepalive: Duration,

    /// HTTP/2 per-stream flow-control window, in bytes.
    #[arg(long, env = "TETHER_H2_STREAM_WINDOW", default_value_t = 64 * 1024)]
    pub h2_stream_window: u32,

    /// HTTP/2 per-connection flow-control window, in bytes.
    #[arg(long, env = "TETHER_H2_CONNECTION_WINDOW", default_value_t = 1024 * 1024)]
    pub h2_connection_window: u32,

    /// Most concurrent HTTP/2 streams per connection.
    #[arg(long, env = "TETHER_H2_MAX_STREAMS", default_value_t = 1000)]
    pub h2_max_concurrent_streams: u32,

    /// Streams a peer may make the server reset for errors before the
    /// connection is closed (h2's guard against reset floods).
    #[arg(long, env = "TETHER_H2_MAX_LOCAL_ERROR_RESETS", default_value_t = 1024)]
    pub h2_max_local_error_resets: usize,

    /// Time given to sessions and calls to finish at shutdown.
    #[arg(long, env = "TETHER_SHUTDOWN_GRACE", default_value = "10s", value_parser = duration)]
    pub shutdown_grace: Duration,

    /// At shutdown, how long the node keeps accepting after health turned
    /// NOT_SERVING (so load balancers notice) before it stops accepting.
    #[arg(long, env = "TETHER_DRAIN_DELAY", default_value = "0s", value_parser = duration)]
    pub drain_delay: Duration,

    /// Vehicles told to reconnect after shutdown wait between this and twice this (jittered).
    #[arg(long, env = "TETHER_RECONNECT_HINT", default_value = "2s", value_parser = duration)]
    pub reconnect_hint: Duration,

    /// The server's certificate chain (PEM). With --tls-key and --client-ca,
    /// tetherd serves TLS and requires a client certificate from every peer.
    #[arg(long, env = "TETHER_TLS_CERT", requires_all = ["tls_key", "client_ca"])]
    pub tls_cert: Option<PathBuf>,

    /// The server's private key (PEM).
    #[arg(long, env = "TETHER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// The CA certificate(s) that issue vehicle and service certificates (PEM).
    #[arg(long, env = "TETHER_CLIENT_CA", requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,

    /// A certificate revocation list (PEM); repeat for several.
    #[arg(long = "crl", env = "TETHER_CRLS", value_delimiter = ',', requires = "tls_cert")]
    pub crls: Vec<PathBuf>,

    /// Which part of a client certificate names the vehicle: its first DNS
    /// subject alternative name, or its common name.
    #[arg(long, env = "TETHER_VEHICLE_IDENTITY", value_enum, default_value = "san")]
    pub vehicle_identity: IdentityFrom,

    /// Longest a TLS handshake may take once its ClientHello arrived; and
    /// longest it may wait for one of the `--max-handshakes` slots first.
    #[arg(long, env = "TETHER_TLS_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub tls_handshake_timeout: Duration,

    /// Longest a new connection may say nothing: its TLS ClientHello, and
    /// then (after TLS, or on plaintext) its HTTP/2 preface, must each arrive
    /// within it, or the connection is closed. Until then it holds no
    /// handshake slot, and at the connection cap the oldest such connection
    /// makes room for a new one.
    #[arg(long, env = "TETHER_PREFACE_TIMEOUT", default_value = "5s", value_parser = duration)]
    pub preface_timeout: Duration,

    /// Close a connection that has had no stream for this long (HTTP/2
    /// GOAWAY; clients reconnect on their next call). `0s`: never.
    #[arg(long, env = "TETHER_MAX_CONNECTION_IDLE", default_value = "5m", value_parser = duration)]
    pub max_connection_idle: Duration,

    /// TLS handshakes allowed in flight (a reconnect storm queues beyond it).
    #[arg(long, env = "TETHER_MAX_HANDSHAKES", default_value_t = 256)]
    pub max_handshakes: usize,

    /// How long a TLS session ticket lets a client reconnect without
    /// certificates (a resumed handshake costs a fraction of a full one);
    /// 0 for no tickets. The ticket keys are kept in the data directory
    /// (`tls-tickets.key`: as secret as the CA key), so tickets survive a
    /// restart; a reload of the TLS files voids them. At most 7 days.
    #[arg(long, env = "TETHER_TLS_TICKET_LIFETIME", default_value = "12h", value_parser = duration)]
    pub tls_ticket_lifetime: Duration,

    /// A JWKS file (JSON) of the keys app tokens are signed with; each key has
    /// a `kid` and an `alg` of ES256, EdDSA or RS256. Rotate keys by editing it.
    #[arg(long, env = "TETHER_JWKS", requires_all = ["jwt_issuer", "jwt_audience"])]
    pub jwks: Option<PathBuf>,

    /// The issuer (`iss`) tokens must name.
    #[arg(long, env = "TETHER_JWT_ISSUER", requires = "jwks")]
    pub jwt_issuer: Option<String>,

    /// The audience (`aud`) tokens must name.
    #[arg(long, env = "TETHER_JWT_AUDIENCE", requires = "jwks")]
    pub jwt_audience: Option<String>,

    /// A service that authenticates with its client certificate, and its
    /// scopes: `NAME=SCOPE SCOPE...` (e.g. `app=vehicles:read vehicles:control`).
    /// Repeat for several.
    #[arg(long = "service", env = "TETHER_SERVICES", value_delimiter = ';', value_parser = service_scopes)]
    pub services: Vec<(String, String)>,

    /// Browser origins allowed to call the gRPC-Web API (CORS), e.g.
    /// `https://fleet.example.com`; repeat or separate with commas. Empty: no
    /// cross-origin calls (same origin or a proxy only).
    #[arg(long = "grpc-web-origin", env = "TETHER_GRPC_WEB_ORIGINS", value_delimiter = ',', value_parser = web_origin)]
    pub grpc_web_origins: Vec<String>,

    /// Writes per second one subject (an app) may make; 0: no limit.
    #[arg(long, env = "TETHER_SUBJECT_WRITE_RATE", default_value_t = 200)]
    pub subject_write_rate: u32,

    /// Writes one subject may make at once (the burst above the rate).
    #[arg(long, env = "TETHER_SUBJECT_WRITE_BURST", default_value_t = 400)]
    pub subject_write_burst: u32,

    /// Writes per second one vehicle may receive, from all subjects; 0: no limit.
    #[arg(long, env = "TETHER_VEHICLE_WRITE_RATE", default_value_t = 20)]
    pub vehicle_write_rate: u32,

    /// Writes one vehicle may receive at once.
    #[arg(long, env = "TETHER_VEHICLE_WRITE_BURST", default_value_t = 50)]
    pub vehicle_write_burst: u32,

    /// OTLP/gRPC endpoint to export traces to (e.g. http://127.0.0.1:4317).
    /// Unset: the standard OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, and with
    /// neither, no export at all (no exporter, no background thread).
    #[arg(long, env = "TETHER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// Share of new traces exported, 0.0 to 1.0 (parent-based: a caller's
    /// sampling decision is kept). Unset: OTEL_TRACES_SAMPLER and
    /// OTEL_TRACES_SAMPLER_ARG, else every trace.
    #[arg(long, env = "TETHER_TRACE_SAMPLE_RATIO")]
    pub trace_sample_ratio: Option<f64>,

    /// How often metrics are exported over OTLP, when an OTLP endpoint is
    /// configured (the same one as traces). Unset: OTEL_METRIC_EXPORT_INTERVAL
    /// (milliseconds), else 60s.
    #[arg(long, env = "TETHER_OTLP_METRICS_INTERVAL", value_parser = duration)]
    pub otlp_metrics_interval: Option<Duration>,

    /// Log format: text or json.
    #[arg(long, env = "TETHER_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

impl Config {
    /// The cluster's settings: a NATS link off loopback must be TLS and
    /// authenticated, with one way to authenticate.
    fn validate_cluster(&self) -> Result<(), String> {
        if self.cluster_nats.is_empty() {
            return Ok(());
        }
        let ways = [
            self.cluster_nats_creds.is_some(),
            self.cluster_nats_user.is_some() || self.cluster_nats_password.is_some(),
            self.cluster_nats_token.is_some(),
        ];
        if ways.iter().filter(|w| **w).count() > 1 {
            return Err(
                "cluster_nats_creds, cluster_nats_user/cluster_nats_password and cluster_nats_token are three \
                        ways to authenticate to NATS: set one"
                    .into(),
            );
        }
        if self.cluster_nats_user.is_some() != self.cluster_nats_password.is_some() {
            return Err("cluster_nats_user (--cluster-nats-user) and cluster_nats_password \
                        (TETHER_CLUSTER_NATS_PASSWORD) go together"
                .into());
        }
        if self.cluster_lease < Duration::from_secs(1) {
            return Err("cluster_lease (--cluster-lease) must be at least 1s".into());
        }
        if self.cluster_stream.is_empty()
            || !self.cluster_stream.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(format!(
                "cluster_stream (--cluster-stream) is `{}`: use letters, digits and _",
                self.cluster_stream
            ));
        }
        for server in &self.cluster_nats {
            let host = nats_host(server)
                .ok_or_else(|| format!("cluster_nats (--cluster-nats): `{server}` is not nats://host:port"))?;
            let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
            if loopback {
                continue;
            }
            if self.cluster_nats_ca.is_none() {
                return Err(format!(
                    "cluster_nats (--cluster-nats): {server} is off loopback: refusing a plaintext link to NATS. Set \
                     cluster_nats_ca (--cluster-nats-ca) to the CA of the NATS servers' certificates"
                ));
            }
            if !ways.iter().any(|w| *w) {
                return Err(format!(
                    "cluster_nats (--cluster-nats): {server} is off loopback: refusing an unauthenticated link to \
                     NATS. Set cluster_nats_creds (--cluster-nats-creds), cluster_nats_user with \
                     TETHER_CLUSTER_NATS_PASSWORD, or TETHER_CLUSTER_NATS_TOKEN"
                ));
            }
        }
        Ok(())
    }
}

/// The host of a NATS URL (`nats://host:port`, `tls://host:port`, or
/// `host:port`).
fn nats_host(server: &str) -> Option<&str> {
    let rest = server.split_once("://").map_or(server, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let host = match rest.strip_prefix('[') {
        Some(v6) => v6.split_once(']')?.0,
        None => rest.split(':').next()?,
    };
    (!host.is_empty()).then_some(host)
}

impl Default for Config {
    fn default() -> Self {
        Config::parse_from(["tetherd"])
    }
}

impl Config {
    /// Checks what single values cannot: ranges and relations. Each message
    /// names the key (and its flag).
    pub fn validate(&self) -> Result<(), String> {
        if self.default_ttl.is_zero() || self.default_ttl > self.max_ttl {
            return Err(format!(
                "default_ttl (--default-ttl) is {:?}: it must be above zero and at most max_ttl (--max-ttl, {:?})",
                self.default_ttl, self.max_ttl
            ));
        }
        if self.heartbeat_interval < Duration::from_millis(10) {
            return Err("heartbeat_interval (--heartbeat-interval) must be at least 10ms".into());
        }
        if self.max_message_bytes < 1024 {
            return Err("max_message_bytes (--max-message-bytes) must be at least 1024".into());
        }
        if self.max_connections == 0 {
            return Err("max_connections (--max-connections) must be at least 1".into());
        }
        if self.shutdown_grace.is_zero() {
            return Err("shutdown_grace (--shutdown-grace) must be above zero".into());
        }
        if self.preface_timeout.is_zero() || self.tls_handshake_timeout.is_zero() {
            return Err("preface_timeout (--preface-timeout) and tls_handshake_timeout (--tls-handshake-timeout) \
                        must be above zero"
                .into());
        }
        if self.admin_listen.0.is_some_and(|a| a == self.listen && a.port() != 0) {
            return Err(format!(
                "admin_listen (--admin-listen) is {}, the same address as listen (--listen): use another port",
                self.listen
            ));
        }
        if let Some(admin) = self.admin_listen.0.filter(|a| !a.ip().is_loopback())
            && self.admin_token_file.is_none()
            && !self.admin_allow_unauthenticated
        {
            return Err(format!(
                "admin_listen (--admin-listen) is {admin}: refusing to serve unauthenticated metrics off loopback. \
                 Set admin_token_file (--admin-token-file FILE) to require a bearer token, or accept anyone who \
                 reaches the port with admin_allow_unauthenticated (--admin-allow-unauthenticated)"
            ));
        }
        self.validate_cluster()?;
        if self.tls_cert.is_none() && !self.listen.ip().is_loopback() {
            return Err(format!(
                "listen (--listen) is {}: refusing to serve plaintext off loopback. Set tls_cert, tls_key and \
                 client_ca (--tls-cert, --tls-key, --client-ca; a development PKI: `tether certs --out DIR`)",
                self.listen
            ));
        }
        if self.trace_sample_ratio.is_some_and(|r| !(0.0..=1.0).contains(&r)) {
            return Err("trace_sample_ratio (--trace-sample-ratio) must be between 0.0 and 1.0".into());
        }
        if self.otlp_endpoint.as_deref().is_some_and(|e| !e.starts_with("http://") && !e.starts_with("https://")) {
            return Err("otlp_endpoint (--otlp-endpoint) must be a URL like http://127.0.0.1:4317".into());
        }
        if self.otlp_metrics_interval.is_some_and(|i| i < Duration::from_millis(10)) {
            return Err("otlp_metrics_interval (--otlp-metrics-interval) must be at least 10ms".into());
        }
        if self.tls_ticket_lifetime > Duration::from_secs(7 * 24 * 3600) {
            return Err("tls_ticket_lifetime (--tls-ticket-lifetime) must be at most 7 days (TLS 1.3's limit)".into());
        }
        if self.max_handshakes == 0 {
            return Err("max_handshakes (--max-handshakes) must be at least 1".into());
        }
        Ok(())
    }

    /// The TLS files, when TLS is configured.
    pub fn tls_files(&self) -> Option<TlsFiles> {
        Some(TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            client_ca: self.client_ca.clone()?,
            crls: self.crls.clone(),
        })
    }

    /// The config for tests: loopback on an ephemeral port, fast heartbeats.
    pub fn for_tests(data_dir: PathBuf) -> Self {
        Config {
            listen: "127.0.0.1:0".parse().expect("valid"),
            admin_listen: OptionalAddr(Some("127.0.0.1:0".parse().expect("valid"))),
            data_dir,
            heartbeat_interval: Duration::from_millis(200),
            shutdown_grace: Duration::from_secs(3),
            reconnect_hint: Duration::from_millis(100),
            // Tests drive thousands of writes at one vehicle; the limit tests
            // set their own rates.
            subject_write_rate: 0,
            vehicle_write_rate: 0,
            ..Config::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_name_the_flag() {
        Config::default().validate().unwrap();
        let err = Config::try_parse_from(["tetherd", "--default-ttl", "soon"]).unwrap_err().to_string();
        assert!(err.contains("--default-ttl") && err.contains("not a duration"), "{err}");
        let cfg = Config::try_parse_from(["tetherd", "--default-ttl", "9d"]).unwrap();
        assert!(cfg.validate().unwrap_err().contains("max_ttl (--max-ttl"));
        let cfg = Config::try_parse_from(["tetherd", "--admin-listen", "off"]).unwrap();
        assert_eq!(cfg.admin_listen, OptionalAddr(None));
        let open = Config::try_parse_from(["tetherd", "--listen", "0.0.0.0:50051"]).unwrap();
        let err = open.validate().unwrap_err();
        assert!(err.contains("refusing to serve plaintext") && err.contains("--tls-cert"), "{err}");
        let half = Config::try_parse_from(["tetherd", "--tls-cert", "c.pem"]).unwrap_err().to_string();
        assert!(half.contains("--tls-key") && half.contains("--client-ca"), "{half}");
        let admin = Config::try_parse_from(["tetherd", "--admin-listen", "0.0.0.0:9464"]).unwrap();
        let err = admin.validate().unwrap_err();
        assert!(err.contains("--admin-token-file") && err.contains("--admin-allow-unauthenticated"), "{err}");
        for allowed in [["--admin-token-file", "t"], ["--admin-allow-unauthenticated", "true"]] {
            let cfg = Config::try_parse_from(["tetherd", "--admin-listen", "0.0.0.0:9464", allowed[0], allowed[1]]);
            cfg.unwrap().validate().unwrap();
        }
        let bare = Config::try_parse_from(["tetherd", "--admin-listen", "[::]:1", "--admin-allow-unauthenticated"]);
        assert!(bare.unwrap().admin_allow_unauthenticated);
        let ratio = Config::try_parse_from(["tetherd", "--trace-sample-ratio", "1.5"]).unwrap();
        assert!(ratio.validate().unwrap_err().contains("trace_sample_ratio (--trace-sample-ratio)"));
        let endpoint = Config::try_parse_from(["tetherd", "--otlp-endpoint", "collector:4317"]).unwrap();
        assert!(endpoint.validate().unwrap_err().contains("otlp_endpoint (--otlp-endpoint)"));
        let interval = Config::try_parse_from(["tetherd", "--otlp-metrics-interval", "1ms"]).unwrap();
        assert!(interval.validate().unwrap_err().contains("otlp_metrics_interval (--otlp-metrics-interval)"));
    }
}
