//! [`SetDesired`]: the builder of one desired-state write, awaited to send it
//! (with retries on UNAVAILABLE and debouncing of rapid repeats).

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tether_proto::app::v1 as app;
use tether_proto::{FieldError, StateSchema};
use tokio::time::Instant;
use tonic::{Code, Status};
use tracing::Instrument;

use crate::client::Client;
use crate::ids::{check_idempotency_key, check_vehicle_id};
use crate::trace::WriteSpan;
use crate::{Error, Patch, WriteOutcome};

/// How long a write waits before it returns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum WaitLevel {
    /// Return once tetherd stored the desired state.
    #[default]
    None,
    /// Return once the vehicle acknowledged receipt (or a final outcome).
    Delivered,
    /// Return once the vehicle applied every field (or a final outcome).
    Applied,
}

impl From<WaitLevel> for app::WaitLevel {
    fn from(level: WaitLevel) -> Self {
        match level {
            WaitLevel::None => app::WaitLevel::None,
            WaitLevel::Delivered => app::WaitLevel::Delivered,
            WaitLevel::Applied => app::WaitLevel::Applied,
        }
    }
}

/// The options that make two writes of the same patch different requests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(crate) struct WriteOptions {
    wait: WaitLevel,
    ttl: Option<Duration>,
    no_expiry: bool,
    expected_generation: Option<u64>,
    require_online: bool,
}

/// What identifies a write for debouncing.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct DebounceKey {
    vehicle_id: String,
    patch: Bytes,
    options: WriteOptions,
}

/// A desired-state write, sent when awaited.
///
/// ```no_run
/// # async fn demo(client: tether_sdk::Client) -> Result<(), tether_sdk::Error> {
/// use std::time::Duration;
/// use tether_sdk::{Patch, WaitLevel, Window};
/// let outcome = client
///     .set_desired("car-1", Patch::new().window(Window::FrontLeft, 0))
///     .wait(WaitLevel::Applied)
///     .timeout(Duration::from_secs(10))
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "a write is sent only when awaited"]
pub struct SetDesired {
    client: Client,
    vehicle_id: String,
    patch: Patch,
    options: WriteOptions,
    timeout: Option<Duration>,
    idempotency_key: Option<String>,
}

impl SetDesired {
    pub(crate) fn new(client: Client, vehicle_id: String, patch: Patch) -> Self {
        SetDesired { client, vehicle_id, patch, options: WriteOptions::default(), timeout: None, idempotency_key: None }
    }

    /// Waits for `level` before returning (bounded by [`timeout`](Self::timeout)
    /// and the server's maximum wait). Default: [`WaitLevel::None`].
    pub fn wait(mut self, level: WaitLevel) -> Self {
        self.options.wait = level;
        self
    }

    /// The call's deadline: tetherd bounds its wait by it, and retries never
    /// go past it. A wait that runs out ends in `DEADLINE_EXCEEDED`; the
    /// desired state stays stored.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// How long the fields stay desired (default: the server's TTL).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.options.ttl = Some(ttl);
        self
    }

    /// The fields never expire: a standing state.
    pub fn no_expiry(mut self) -> Self {
        self.options.no_expiry = true;
        self
    }

    /// Succeeds only if the vehicle's desired generation is `generation`
    /// (optimistic concurrency); otherwise `ABORTED`, nothing changed.
    pub fn expected_generation(mut self, generation: u64) -> Self {
        self.options.expected_generation = Some(generation);
        self
    }

    /// Fails fast with `UNAVAILABLE`, changing nothing, if the vehicle is
    /// offline. Such a write is never retried.
    pub fn require_online(mut self) -> Self {
        self.options.require_online = true;
        self
    }

    /// The idempotency key (default: a fresh UUID, or the key of an identical
    /// write made within the client's debounce window). A write with a key
    /// given here is not debounced.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Sends the write; the same as awaiting the builder.
    pub async fn send(self) -> Result<WriteOutcome, Error> {
        let request = self.request()?;
        let span = tracing::debug_span!(
            "set_desired",
            vehicle_id = %request.vehicle_id,
            idempotency_key = %request.idempotency_key,
        );
        // One client span for the write, all its attempts included.
        let trace = WriteSpan::start(&request.vehicle_id);
        let result = self.call(request, &trace).instrument(span).await;
        trace.end(result.as_ref().err().map(|e| e.to_string()).as_deref());
        result
    }

    /// Checks the write and builds its request (with its idempotency key).
    fn request(&self) -> Result<app::SetDesiredRequest, Error> {
        let invalid = |message: String| Error::InvalidArgument(message);
        check_vehicle_id(&self.vehicle_id).map_err(invalid)?;
        if self.patch.is_empty() {
            return Err(invalid("the patch is empty: set at least one field".into()));
        }
        if self.timeout.is_some_and(|t| t.is_zero()) {
            return Err(invalid("the timeout must be positive".into()));
        }
        let ttl = match self.options.ttl {
            Some(_) if self.options.no_expiry => {
                return Err(invalid("ttl and no_expiry exclude each other".into()));
            }
            Some(ttl) if ttl.is_zero() => return Err(invalid("the ttl must be positive".into())),
            Some(ttl) => Some(
                prost_types::Duration::try_from(ttl).map_err(|_| invalid(format!("the ttl {ttl:?} is too long")))?,
            ),
            None => None,
        };
        let patch = self.patch.to_raw();
        check_patch(patch.as_bytes())?;
        let idempotency_key = match &self.idempotency_key {
            Some(key) => {
                check_idempotency_key(key).map_err(invalid)?;
                key.clone()
            }
            None => {
                let key = DebounceKey {
                    vehicle_id: self.vehicle_id.clone(),
                    patch: patch.0.clone(),
                    options: self.options.clone(),
                };
                let fresh = || uuid::Uuid::new_v4().to_string();
                self.client.debouncer().key_for(key, Instant::now(), fresh)
            }
        };
        Ok(app::SetDesiredRequest {
            vehicle_id: self.vehicle_id.clone(),
            patch: Some(patch),
            idempotency_key,
            expected_generation: self.options.expected_generation,
            ttl,
            no_expiry: self.options.no_expiry,
            wait: app::WaitLevel::from(self.options.wait) as i32,
            require_online: self.options.require_online,
        })
    }

    /// Sends `request`, retrying UNAVAILABLE with the same key.
    async fn call(self, request: app::SetDesiredRequest, trace: &WriteSpan) -> Result<WriteOutcome, Error> {
        let deadline = self.timeout.map(|t| Instant::now() + t);
        let policy = self.client.retry_policy();
        let mut control = self.client.raw();
        let mut failed = 0;
        loop {
            let mut attempt = self.client.request(request.clone())?;
            trace.inject(&mut attempt);
            if let Some(deadline) = deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Status::deadline_exceeded("the call's timeout passed before it was sent").into());
                }
                attempt.set_timeout(left);
            }
            let status = match control.set_desired(attempt).await {
                Ok(response) => return Ok(WriteOutcome::from(response.into_inner())),
                Err(status) => status,
            };
            failed += 1;
            let time_left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let delay =
                policy.next_delay(failed, status.code(), self.options.require_online, time_left, &mut rand::rng());
            let Some(delay) = delay else {
                return Err(deadline_exceeded_if_timed_out(status, deadline.is_some()).into());
            };
            tracing::debug!(attempt = failed, ?delay, error = %status.message(), "tetherd unavailable; retrying");
            tokio::time::sleep(delay).await;
        }
    }
}

impl IntoFuture for SetDesired {
    type Output = Result<WriteOutcome, Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.send())
    }
}

/// The contract's schema, decoded once.
fn contract_schema() -> &'static StateSchema {
    static SCHEMA: OnceLock<StateSchema> = OnceLock::new();
    SCHEMA.get_or_init(StateSchema::contract)
}

/// Checks each field of the patch against the contract's rules. A field this
/// contract does not know (a newer one's) is left for tetherd to judge.
fn check_patch(encoded: &[u8]) -> Result<(), Error> {
    let schema = contract_schema();
    let fields = match schema.split(encoded) {
        Ok(fields) => fields,
        Err(FieldError::UnknownField { .. }) => return Ok(()),
        Err(e) => return Err(Error::InvalidArgument(e.to_string())),
    };
    let now = SystemTime::now();
    fields.iter().try_for_each(|field| schema.validate(field, now)).map_err(|e| Error::InvalidArgument(e.to_string()))
}

/// tonic's client reports its own expiry of `grpc-timeout` as CANCELLED
/// ("Timeout expired"); to the caller that is the deadline passing.
fn deadline_exceeded_if_timed_out(status: Status, has_timeout: bool) -> Status {
    if has_timeout && status.code() == Code::Cancelled && status.message() == "Timeout expired" {
        Status::deadline_exceeded("the call's timeout passed before tetherd answered; a write it accepted stays stored")
    } else {
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LockState, Window};

    fn client() -> Client {
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
        Client::from_channel(channel)
    }

    fn invalid(write: SetDesired) -> String {
        match write.request() {
            Err(Error::InvalidArgument(message)) => message,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn bad_writes_fail_before_sending() {
        let c = client();
        let open = || Patch::new().window(Window::FrontLeft, 50);
        assert!(invalid(c.set_desired("bad id", open())).contains("vehicle id"));
        assert!(invalid(c.set_desired("car-1", Patch::new())).contains("empty"));
        assert!(invalid(c.set_desired("car-1", open()).ttl(Duration::from_secs(1)).no_expiry()).contains("exclude"));
        assert!(invalid(c.set_desired("car-1", open()).ttl(Duration::ZERO)).contains("ttl"));
        assert!(invalid(c.set_desired("car-1", open()).timeout(Duration::ZERO)).contains("timeout"));
        assert!(invalid(c.set_desired("car-1", open()).idempotency_key("")).contains("idempotency key"));
        let too_open = Patch::new().window(Window::Sunroof, 101);
        assert!(invalid(c.set_desired("car-1", too_open)).contains("windows.sunroof"));
        let horn = Patch::new().horn_for(Duration::from_secs(3600));
        assert!(invalid(c.set_desired("car-1", horn)).contains("horn.sound_until"));
    }

    #[tokio::test]
    async fn builds_the_request() {
        let c = client();
        let request = c
            .set_desired("car-1", Patch::new().lock(LockState::Locked))
            .wait(WaitLevel::Applied)
            .ttl(Duration::from_secs(30))
            .expected_generation(4)
            .require_online()
            .idempotency_key("k-1")
            .request()
            .unwrap();
        assert_eq!(request.vehicle_id, "car-1");
        assert_eq!(request.idempotency_key, "k-1");
        assert_eq!(request.wait, app::WaitLevel::Applied as i32);
        assert_eq!(request.ttl, Some(prost_types::Duration { seconds: 30, nanos: 0 }));
        assert_eq!(request.expected_generation, Some(4));
        assert!(request.require_online && !request.no_expiry);
        let state = request.patch.unwrap().decode_typed().unwrap();
        assert_eq!(state.doors.unwrap().lock, Some(LockState::Locked as i32));
    }

    #[tokio::test]
    async fn identical_writes_share_a_key_within_the_window() {
        let c = client();
        let write = |percent| c.set_desired("car-1", Patch::new().window(Window::FrontLeft, percent));
        let first = write(10).request().unwrap().idempotency_key;
        assert_eq!(uuid::Uuid::parse_str(&first).map(|u| u.get_version_num()), Ok(4));
        assert_eq!(write(10).request().unwrap().idempotency_key, first);
        assert_ne!(write(20).request().unwrap().idempotency_key, first);
        assert_ne!(write(10).wait(WaitLevel::Applied).request().unwrap().idempotency_key, first);
        assert_ne!(
            c.set_desired("car-2", Patch::new().window(Window::FrontLeft, 10)).request().unwrap().idempotency_key,
            first
        );

        let undebounced = client().with_debounce(Duration::ZERO);
        let write = || undebounced.set_desired("car-1", Patch::new().window(Window::FrontLeft, 10));
        assert_ne!(write().request().unwrap().idempotency_key, write().request().unwrap().idempotency_key);
    }

    #[test]
    fn client_side_timeouts_read_as_deadline_exceeded() {
        let mapped = deadline_exceeded_if_timed_out(Status::cancelled("Timeout expired"), true);
        assert_eq!(mapped.code(), Code::DeadlineExceeded);
        let kept = deadline_exceeded_if_timed_out(Status::cancelled("Timeout expired"), false);
        assert_eq!(kept.code(), Code::Cancelled);
        let kept = deadline_exceeded_if_timed_out(Status::cancelled("by the caller"), true);
        assert_eq!(kept.code(), Code::Cancelled);
    }
}
