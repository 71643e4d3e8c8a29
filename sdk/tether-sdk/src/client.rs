//! [`Client`]: the app-facing client of tetherd (ControlService, and
//! AdminService on the same connection).

mod debounce;
mod retry;
mod set_desired;
mod token;
mod watch;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tether_proto::admin::v1::{GetServerStatsRequest, ServerStats, admin_service_client::AdminServiceClient};
use tether_proto::app::v1 as app;
use tether_proto::app::v1::control_service_client::ControlServiceClient;
use tonic::transport::{Channel, Endpoint};

use crate::ids::check_vehicle_id;
use crate::{Error, Patch, Tls};

pub use retry::RetryPolicy;
pub use set_desired::{SetDesired, WaitLevel};
pub use token::TokenSource;
pub use watch::WatchStream;

use debounce::Debouncer;
use set_desired::DebounceKey;

/// The default debounce window of identical writes.
const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(500);

/// A client of tetherd for app back ends. Cheap to clone; clones share the
/// connection and the debounce window.
#[derive(Clone)]
pub struct Client {
    channel: Channel,
    retry: RetryPolicy,
    debouncer: Arc<Debouncer<DebounceKey>>,
    token: Option<Arc<dyn TokenSource>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").field("retry", &self.retry).finish_non_exhaustive()
    }
}

/// The bound of a whole connect: TCP (itself bounded at 5 s by the endpoint),
/// the TLS handshake and the HTTP/2 handshake. tonic's `connect_timeout`
/// bounds only the TCP connect, so a server that accepts and then never
/// answers the handshake (overloaded in a reconnect storm, or a peer frozen
/// halfway) would otherwise hold the connect forever.
pub(crate) const CONNECT_BOUND: Duration = Duration::from_secs(10);

/// Connects `endpoint` within [`CONNECT_BOUND`].
pub(crate) async fn connect_bounded(endpoint: &Endpoint) -> Result<Channel, ConnectError> {
    match tokio::time::timeout(CONNECT_BOUND, endpoint.connect()).await {
        Ok(connected) => connected.map_err(ConnectError::Transport),
        Err(_) => Err(ConnectError::TimedOut),
    }
}

/// Why [`connect_bounded`] failed.
#[derive(Debug)]
pub(crate) enum ConnectError {
    /// TCP, TLS or HTTP/2 failed.
    Transport(tonic::transport::Error),
    /// Not connected within [`CONNECT_BOUND`].
    TimedOut,
}

/// An endpoint with the SDK's connection settings: connect within 5 s, and
/// HTTP/2 keepalive pings every 20 s answered within 10 s, so a dead link is
/// noticed even when no call is in flight.
pub(crate) fn endpoint(address: String) -> Result<Endpoint, Error> {
    let endpoint = Endpoint::from_shared(address.clone())
        .map_err(|e| Error::InvalidArgument(format!("endpoint {address:?} is not a valid URI: {e}")))?;
    Ok(endpoint
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .tcp_nodelay(true))
}

/// [`endpoint`] over TLS when `tls` is given.
pub(crate) fn endpoint_with(address: String, tls: Option<&Tls>) -> Result<Endpoint, Error> {
    let endpoint = endpoint(address.clone())?;
    match tls {
        None => Ok(endpoint),
        Some(tls) => endpoint
            .tls_config(tls.config())
            .map_err(|e| Error::InvalidArgument(format!("TLS settings for {address:?}: {e}"))),
    }
}

/// A channel to `endpoint` (over TLS when `tls` is given) that connects on
/// first use and reconnects by itself, with the SDK's connection settings;
/// for [`Client::from_channel`] or agents sharing one connection.
pub fn lazy_channel(endpoint: impl Into<String>, tls: Option<&Tls>) -> Result<Channel, Error> {
    Ok(endpoint_with(endpoint.into(), tls)?.connect_lazy())
}

/// [`lazy_channel`] whose connections leave from `local_address`: for a
/// host with several links that must use one of them (a vehicle's cellular
/// modem rather than its Wi-Fi), or a simulator spreading thousands of
/// connections over loopback addresses, each with its own ephemeral ports.
pub fn lazy_channel_from(
    endpoint: impl Into<String>,
    tls: Option<&Tls>,
    local_address: std::net::IpAddr,
) -> Result<Channel, Error> {
    Ok(endpoint_with(endpoint.into(), tls)?.local_address(Some(local_address)).connect_lazy())
}

impl Client {
    /// Connects to tetherd at `endpoint`, e.g. `"http://127.0.0.1:50051"`.
    /// The whole connect (TCP, HTTP/2) is bounded at 10 s.
    pub async fn connect(endpoint: impl Into<String>) -> Result<Client, Error> {
        Client::connect_with(endpoint.into(), None).await
    }

    /// Connects to tetherd at `endpoint` (`https://…`) over TLS. The whole
    /// connect (TCP, TLS, HTTP/2) is bounded at 10 s.
    pub async fn connect_tls(endpoint: impl Into<String>, tls: &Tls) -> Result<Client, Error> {
        Client::connect_with(endpoint.into(), Some(tls)).await
    }

    async fn connect_with(address: String, tls: Option<&Tls>) -> Result<Client, Error> {
        let endpoint = endpoint_with(address.clone(), tls)?;
        match connect_bounded(&endpoint).await {
            Ok(channel) => Ok(Client::from_channel(channel)),
            Err(ConnectError::Transport(e)) => Err(e.into()),
            Err(ConnectError::TimedOut) => Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("cannot connect to {address} within {CONNECT_BOUND:?} (TCP, TLS and HTTP/2 handshakes)"),
            ))),
        }
    }

    /// A client over an existing channel (for custom TLS or interceptors).
    pub fn from_channel(channel: Channel) -> Client {
        Client {
            channel,
            retry: RetryPolicy::default(),
            debouncer: Arc::new(Debouncer::new(DEFAULT_DEBOUNCE)),
            token: None,
        }
    }

    /// Retries writes by `policy` (default: [`RetryPolicy::default`]).
    pub fn with_retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Identical writes (same vehicle, patch and options) within `window`
    /// reuse the first one's idempotency key, so tetherd replays its outcome
    /// instead of writing again. Default 500 ms; zero disables it.
    pub fn with_debounce(mut self, window: Duration) -> Self {
        self.debouncer = Arc::new(Debouncer::new(window));
        self
    }

    /// Sends a bearer token from `source` with every call (apps that
    /// authenticate with tokens; see [`TokenSource`]).
    pub fn with_token_source(mut self, source: impl TokenSource) -> Self {
        self.token = Some(Arc::new(source));
        self
    }

    /// `message` as a request carrying the bearer token, if any.
    pub(crate) fn request<T>(&self, message: T) -> Result<tonic::Request<T>, Error> {
        let mut request = tonic::Request::new(message);
        if let Some(source) = &self.token {
            token::authorize(source.as_ref(), &mut request)?;
        }
        Ok(request)
    }

    /// Starts a write of desired state; configure it, then `.await` it.
    pub fn set_desired(&self, vehicle_id: impl Into<String>, patch: impl Into<Patch>) -> SetDesired {
        SetDesired::new(self.clone(), vehicle_id.into(), patch.into())
    }

    /// Reads a vehicle: desired and actual state, per-field status, presence.
    /// See [`desired_of`](crate::desired_of) and [`actual_of`](crate::actual_of).
    pub async fn get_vehicle(&self, vehicle_id: impl Into<String>) -> Result<app::Vehicle, Error> {
        let vehicle_id = checked(vehicle_id.into())?;
        let response = self.raw().get_vehicle(self.request(app::GetVehicleRequest { vehicle_id })?).await?;
        Ok(response.into_inner())
    }

    /// Watches a vehicle. Pass the last generation seen (0: none) to resume;
    /// the first event's `resumed` says whether anything was missed.
    pub async fn watch(&self, vehicle_id: impl Into<String>, from_generation: u64) -> Result<WatchStream, Error> {
        let vehicle_id = checked(vehicle_id.into())?;
        WatchStream::open(self.clone(), vehicle_id, from_generation).await
    }

    /// Lists vehicles by id, a page at a time (`page_size` 0: the server's
    /// default; `page_token` empty: the first page).
    pub async fn list_vehicles(
        &self,
        page_size: u32,
        page_token: impl Into<String>,
        online_only: bool,
    ) -> Result<app::ListVehiclesResponse, Error> {
        let request = app::ListVehiclesRequest { page_size, page_token: page_token.into(), online_only };
        Ok(self.raw().list_vehicles(self.request(request)?).await?.into_inner())
    }

    /// Cancels desired fields not yet applied (`paths` empty: all of them).
    pub async fn cancel(
        &self,
        vehicle_id: impl Into<String>,
        paths: Vec<String>,
    ) -> Result<app::CancelDesiredResponse, Error> {
        let vehicle_id = checked(vehicle_id.into())?;
        let request = app::CancelDesiredRequest { vehicle_id, paths };
        Ok(self.raw().cancel_desired(self.request(request)?).await?.into_inner())
    }

    /// A page of a vehicle's audit trail, newest first: every write and
    /// cancel, accepted or refused, with subject, values, key and outcome
    /// (`page_size` 0: the server's default; `page_token` empty: the newest;
    /// needs scope `audit:read`).
    pub async fn audit_records(
        &self,
        vehicle_id: impl Into<String>,
        page_size: u32,
        page_token: impl Into<String>,
    ) -> Result<app::ListAuditRecordsResponse, Error> {
        let vehicle_id = checked(vehicle_id.into())?;
        let request = app::ListAuditRecordsRequest { vehicle_id, page_size, page_token: page_token.into() };
        Ok(self.raw().list_audit_records(self.request(request)?).await?.into_inner())
    }

    /// The node's counts (AdminService on the same connection).
    pub async fn server_stats(&self) -> Result<ServerStats, Error> {
        let mut admin = AdminServiceClient::new(self.channel.clone());
        Ok(admin.get_server_stats(self.request(GetServerStatsRequest {})?).await?.into_inner())
    }

    /// The generated ControlService client on this connection, for calls the
    /// SDK does not wrap (they carry no bearer token: add it to the request).
    pub fn raw(&self) -> ControlServiceClient<Channel> {
        ControlServiceClient::new(self.channel.clone())
    }

    pub(crate) fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    pub(crate) fn debouncer(&self) -> &Debouncer<DebounceKey> {
        &self.debouncer
    }
}

fn checked(vehicle_id: String) -> Result<String, Error> {
    check_vehicle_id(&vehicle_id).map_err(Error::InvalidArgument)?;
    Ok(vehicle_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_channel_from_a_local_address_connects_from_it() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let source: std::net::IpAddr = "127.0.0.7".parse().unwrap();
        let client = Client::from_channel(lazy_channel_from(&url, None, source).unwrap());
        // The call cannot finish (no HTTP/2 server listens); it makes the
        // channel connect.
        let call = tokio::spawn(async move { client.get_vehicle("sim-0000").await });
        let (_stream, peer) = tokio::time::timeout(Duration::from_secs(10), listener.accept()).await.unwrap().unwrap();
        assert_eq!(peer.ip(), source);
        call.abort();
    }

    #[tokio::test]
    async fn bad_endpoints_and_ids_fail_clearly() {
        let err = Client::connect("not a uri").await.unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(ref m) if m.contains("not a uri")), "{err:?}");
        // Nothing listens on port 1.
        let err = Client::connect("http://127.0.0.1:1").await.unwrap_err();
        assert!(matches!(err, Error::Transport(_)), "{err:?}");

        let client = Client::from_channel(Endpoint::from_static("http://127.0.0.1:1").connect_lazy());
        let err = client.get_vehicle("no/slashes").await.unwrap_err();
        assert_eq!(err.code(), Some(tonic::Code::InvalidArgument));
        let err = client.get_vehicle("car-1").await.unwrap_err();
        assert_eq!(err.code(), Some(tonic::Code::Unavailable));
    }
}
