//! The vehicle agent: holds the vehicle's session with tetherd, applies
//! desired state through [`Capability`]s behind guards, and reports.
//!
//! Architecture invariant: the agent reads the state only through its
//! [`StateSchema`]; no code here names a capability or a field.

mod applier;
mod capability;
mod guards;
mod persist;
mod session;
mod supervisor;
mod worker;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tether_proto::common::v1::FieldStatus;
use tether_proto::vehicle::v1::GoodbyeReason;
use tether_proto::{RawState, StateSchema};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::transport::Channel;
use tracing::Instrument;

pub use capability::{Capability, FieldChange, RecordingCapability, Refusal};

use crate::Tls;
use guards::{Check, Guards, Precondition};
use supervisor::{Connector, Supervisor};

/// Default rate limit of every capability.
const DEFAULT_RATE_LIMIT: Duration = Duration::from_millis(500);
/// Default allowance for the skew between the server's and the agent's clocks.
const DEFAULT_SKEW_ALLOWANCE: Duration = Duration::from_secs(2);
/// Default reconnect backoff bounds.
const DEFAULT_BACKOFF: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(30));
/// Default capacity of the event channel.
const DEFAULT_EVENT_CAPACITY: usize = 128;

/// What the agent did, for observers (see [`AgentHandle::events`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEvent {
    /// A session opened (Welcome received).
    Connected {
        /// The session's id.
        session_id: u64,
    },
    /// A desired-state snapshot arrived (and was acknowledged).
    Snapshot {
        /// Its generation.
        generation: u64,
        /// How many desired fields it lists.
        fields: usize,
    },
    /// A field was applied.
    Applied {
        /// The field's path.
        path: Arc<str>,
        /// The field's generation.
        generation: u64,
    },
    /// A field was refused (REJECTED, FAILED or EXPIRED).
    Refused {
        /// The field's path.
        path: Arc<str>,
        /// The field's generation.
        generation: u64,
        /// REJECTED, FAILED or EXPIRED.
        status: FieldStatus,
        /// The machine-readable reason, e.g. `"rate_limited"`.
        reason: String,
    },
    /// tetherd ended the session. After SUPERSEDED the agent stops.
    Goodbye {
        /// Why.
        reason: GoodbyeReason,
        /// tetherd's explanation.
        message: String,
    },
    /// The session could not open, failed or fell silent; the agent
    /// reconnects after its backoff.
    Disconnected {
        /// What happened.
        error: String,
    },
}

/// The vehicle agent. Start one with [`Agent::builder`].
#[derive(Debug)]
pub struct Agent {
    _private: (),
}

impl Agent {
    /// A builder of an agent for `vehicle_id`, connecting to `endpoint`
    /// (e.g. `"http://127.0.0.1:50051"`).
    pub fn builder(endpoint: impl Into<String>, vehicle_id: impl Into<String>) -> AgentBuilder {
        AgentBuilder {
            endpoint: endpoint.into(),
            more_endpoints: Vec::new(),
            vehicle_id: vehicle_id.into(),
            capabilities: Vec::new(),
            preconditions: HashMap::new(),
            rate_limits: HashMap::new(),
            default_rate_limit: DEFAULT_RATE_LIMIT,
            skew_allowance: DEFAULT_SKEW_ALLOWANCE,
            clock_offset_millis: 0,
            state_dir: None,
            schema: None,
            initial_actual: RawState::default(),
            agent_version: concat!("tether-sdk/", env!("CARGO_PKG_VERSION")).to_string(),
            backoff: DEFAULT_BACKOFF,
            channel: None,
            tls: None,
            event_capacity: DEFAULT_EVENT_CAPACITY,
        }
    }
}

/// Configures and starts an [`Agent`].
pub struct AgentBuilder {
    endpoint: String,
    more_endpoints: Vec<String>,
    vehicle_id: String,
    capabilities: Vec<Box<dyn Capability>>,
    preconditions: HashMap<String, Vec<Precondition>>,
    rate_limits: HashMap<String, Duration>,
    default_rate_limit: Duration,
    skew_allowance: Duration,
    clock_offset_millis: i64,
    state_dir: Option<PathBuf>,
    schema: Option<StateSchema>,
    initial_actual: RawState,
    agent_version: String,
    backoff: (Duration, Duration),
    channel: Option<Channel>,
    tls: Option<Tls>,
    event_capacity: usize,
}

impl fmt::Debug for AgentBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let capabilities: Vec<&str> = self.capabilities.iter().map(|c| c.name()).collect();
        f.debug_struct("AgentBuilder")
            .field("endpoint", &self.endpoint)
            .field("vehicle_id", &self.vehicle_id)
            .field("capabilities", &capabilities)
            .finish_non_exhaustive()
    }
}

impl AgentBuilder {
    /// Adds a capability, owner of the top-level field `capability.name()`
    /// (a later one with the same name replaces an earlier one). Desired
    /// fields no capability owns are REJECTED as `unsupported`.
    pub fn capability(mut self, capability: impl Capability) -> Self {
        self.capabilities.push(Box::new(capability));
        self
    }

    /// Declares a precondition of `capability`: a change for which `check`
    /// is false is REJECTED with reason `precondition:<name>`.
    pub fn precondition(
        mut self,
        capability: &str,
        name: &str,
        check: impl Fn(&FieldChange) -> bool + Send + Sync + 'static,
    ) -> Self {
        let check: Check = Arc::new(check);
        self.preconditions
            .entry(capability.to_string())
            .or_default()
            .push(Precondition { name: name.to_string(), check });
        self
    }

    /// Applies `capability` at most once per `interval`: a change arriving
    /// sooner after its last apply (in an earlier snapshot) is REJECTED as
    /// `rate_limited`. Zero disables it. Default 500 ms.
    pub fn rate_limit(mut self, capability: &str, interval: Duration) -> Self {
        self.rate_limits.insert(capability.to_string(), interval);
        self
    }

    /// The rate limit of capabilities without their own (default 500 ms).
    pub fn default_rate_limit(mut self, interval: Duration) -> Self {
        self.default_rate_limit = interval;
        self
    }

    /// How far past its expiry a field may arrive and still be applied, to
    /// allow for clock skew (default 2 s).
    pub fn skew_allowance(mut self, allowance: Duration) -> Self {
        self.skew_allowance = allowance;
        self
    }

    /// Shifts the agent's clock by `millis` (positive: the vehicle's clock
    /// runs ahead), to simulate clock skew.
    pub fn clock_offset(mut self, millis: i64) -> Self {
        self.clock_offset_millis = millis;
        self
    }

    /// Persists the last handled generation in `dir` (as
    /// `<vehicle_id>.generation`), so a restarted agent never applies a
    /// field twice.
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = Some(dir.into());
        self
    }

    /// The state schema to read desired state through (default: the contract
    /// this crate was generated from).
    pub fn schema(mut self, schema: StateSchema) -> Self {
        self.schema = Some(schema);
        self
    }

    /// The vehicle's actual state at start (default: empty).
    pub fn initial_actual(mut self, actual: RawState) -> Self {
        self.initial_actual = actual;
        self
    }

    /// The version sent in Hello (default `tether-sdk/<version>`).
    pub fn agent_version(mut self, version: impl Into<String>) -> Self {
        self.agent_version = version.into();
        self
    }

    /// Reconnect backoff: capped exponential from `min` to `max`, with full
    /// jitter (default 200 ms to 30 s).
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff = (min, max.max(min));
        self
    }

    /// Further endpoints of the same fleet (the nodes of a cluster): each
    /// session connects to the first that answers, starting from the one that
    /// answered last, so a vehicle whose node died reconnects to another.
    pub fn endpoints(mut self, more: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.more_endpoints.extend(more.into_iter().map(Into::into));
        self
    }

    /// Connects over `channel` instead of dialing the endpoint, so many agents
    /// in one process can share one HTTP/2 connection.
    pub fn channel(mut self, channel: Channel) -> Self {
        self.channel = Some(channel);
        self
    }

    /// Connects over TLS (endpoint `https://…`), presenting the vehicle's
    /// certificate: tetherd takes the vehicle's identity from it. Ignored
    /// with [`AgentBuilder::channel`] (that channel carries its own TLS).
    pub fn tls(mut self, tls: Tls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Capacity of the event channel (default 128; the oldest events are
    /// dropped for a receiver that falls behind).
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity.max(1);
        self
    }

    /// Starts the agent on the current tokio runtime.
    ///
    /// A malformed vehicle id or endpoint does not panic: the agent reports
    /// it as [`AgentEvent::Disconnected`] and stops.
    ///
    /// # Panics
    /// If called outside a tokio runtime.
    pub fn spawn(self) -> AgentHandle {
        let (events, first_events) = broadcast::channel(self.event_capacity);
        let shared = Arc::new(Shared::default());
        let cancel = CancellationToken::new();
        let vehicle_id: Arc<str> = self.vehicle_id.clone().into();
        let span = tracing::info_span!("agent", vehicle_id = %vehicle_id);
        let supervisor = span.in_scope(|| self.supervisor(shared.clone(), events.clone(), cancel.clone()));
        let task = tokio::spawn(supervisor.run().instrument(span));
        AgentHandle {
            vehicle_id,
            shared,
            events,
            first_events: Mutex::new(Some(first_events)),
            task,
            _stop: cancel.drop_guard(),
        }
    }

    fn supervisor(
        self,
        shared: Arc<Shared>,
        events: broadcast::Sender<AgentEvent>,
        cancel: CancellationToken,
    ) -> Supervisor {
        let connector = match (crate::ids::check_vehicle_id(&self.vehicle_id), self.channel) {
            (Err(problem), _) => Connector::Invalid(problem),
            (Ok(()), Some(channel)) => Connector::Channel(channel),
            (Ok(()), None) => {
                let endpoints: Result<Vec<_>, _> = std::iter::once(self.endpoint)
                    .chain(self.more_endpoints)
                    .map(|e| crate::client::endpoint_with(e, self.tls.as_ref()))
                    .collect();
                match endpoints {
                    Ok(endpoints) => Connector::Endpoints(endpoints, Default::default()),
                    Err(error) => Connector::Invalid(error.to_string()),
                }
            }
        };
        let store = match &connector {
            Connector::Invalid(_) => None,
            _ => self.state_dir.map(|dir| persist::GenerationStore::new(dir, &self.vehicle_id)),
        };
        // A small file read; done here so the handle shows the generation at once.
        let last_applied = store.as_ref().map_or(0, |store| {
            store.load().unwrap_or_else(|error| {
                tracing::error!(%error, "cannot read the handled generation; starting from 0");
                0
            })
        });
        let mut capabilities = HashMap::new();
        for capability in self.capabilities {
            if let Some(replaced) = capabilities.insert(capability.name().to_string(), capability) {
                tracing::warn!(capability = replaced.name(), "capability added twice; the later one wins");
            }
        }
        let guards = Guards::new(
            self.skew_allowance,
            self.clock_offset_millis,
            self.default_rate_limit,
            self.rate_limits,
            self.preconditions,
        );
        let applier = applier::Applier::new(
            self.schema.unwrap_or_else(StateSchema::contract),
            capabilities,
            guards,
            last_applied,
            self.initial_actual,
            store,
            shared.clone(),
            events.clone(),
        );
        Supervisor {
            vehicle_id: self.vehicle_id,
            agent_version: self.agent_version,
            clock_offset_millis: self.clock_offset_millis,
            connector,
            backoff: self.backoff,
            worker: worker::Worker::new(applier),
            shared,
            events,
            cancel,
        }
    }
}

/// What the task shares with its handle.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    last_applied: AtomicU64,
    actual: Mutex<RawState>,
    session_id: Mutex<Option<u64>>,
}

impl Shared {
    fn set_applied(&self, generation: u64, actual: RawState) {
        self.last_applied.store(generation, Ordering::Release);
        *lock(&self.actual) = actual;
    }

    fn set_session(&self, session_id: Option<u64>) {
        *lock(&self.session_id) = session_id;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A running agent. Dropping it stops the agent (closing its stream);
/// [`shutdown`](Self::shutdown) also waits until it has stopped.
pub struct AgentHandle {
    vehicle_id: Arc<str>,
    shared: Arc<Shared>,
    events: broadcast::Sender<AgentEvent>,
    first_events: Mutex<Option<broadcast::Receiver<AgentEvent>>>,
    task: JoinHandle<()>,
    _stop: DropGuard,
}

impl fmt::Debug for AgentHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentHandle")
            .field("vehicle_id", &self.vehicle_id)
            .field("session_id", &self.session_id())
            .field("last_applied_generation", &self.last_applied_generation())
            .finish_non_exhaustive()
    }
}

impl AgentHandle {
    /// The agent's events. The first call's receiver sees every event since
    /// [`spawn`](AgentBuilder::spawn); later calls see events from then on.
    pub fn events(&self) -> broadcast::Receiver<AgentEvent> {
        lock(&self.first_events).take().unwrap_or_else(|| self.events.subscribe())
    }

    /// The highest desired generation the agent has handled.
    pub fn last_applied_generation(&self) -> u64 {
        self.shared.last_applied.load(Ordering::Acquire)
    }

    /// The vehicle's actual state as the agent knows it.
    pub fn actual(&self) -> RawState {
        lock(&self.shared.actual).clone()
    }

    /// The live session's id; `None` while not connected.
    pub fn session_id(&self) -> Option<u64> {
        *lock(&self.shared.session_id)
    }

    /// The vehicle's id.
    pub fn vehicle_id(&self) -> &str {
        &self.vehicle_id
    }

    /// Whether the agent has stopped (shut down, superseded, or misconfigured).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops the agent, closing its stream, and waits until it has stopped.
    pub async fn shutdown(self) {
        let AgentHandle { task, _stop: stop, .. } = self;
        drop(stop);
        if let Err(error) = task.await
            && error.is_panic()
        {
            tracing::error!(%error, "the agent task panicked");
        }
    }
}
