//! The node's serving status for `grpc.health.v1.Health`: SERVING while it
//! serves; NOT_SERVING from the moment it starts draining, and, for the node
//! and the services that write (vehicle sessions, the control API), while
//! its store cannot write (a full disk: back to SERVING by itself when the
//! store writes again).
//!
//! Load balancers and orchestrators watch this to stop sending new work
//! before the node stops accepting connections (see `drain_delay`), and to
//! send none to a node whose disk is full.

use tether_proto::admin::v1::admin_service_server::SERVICE_NAME as ADMIN;
use tether_proto::app::v1::control_service_server::SERVICE_NAME as CONTROL;
use tether_proto::vehicle::v1::vehicle_service_server::SERVICE_NAME as VEHICLE;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// The names whose status is reported: the whole node ("") and each service.
pub const REPORTED: [&str; 4] = ["", VEHICLE, CONTROL, ADMIN];

/// The names that need the store: the node as a whole and the services
/// that write.
const NEED_THE_STORE: [&str; 3] = ["", VEHICLE, CONTROL];

/// The serving status of the node and its services.
#[derive(Debug, Clone)]
pub struct Health {
    reporter: HealthReporter,
    state: std::sync::Arc<tokio::sync::Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    draining: bool,
    store_failing: bool,
    /// Cut off from its cluster: nothing this node says can be trusted.
    isolated: bool,
}

impl Health {
    /// A status of SERVING for the node and every service, and the
    /// `grpc.health.v1.Health` service reporting it.
    pub async fn serving()
    -> (Self, tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>) {
        let (reporter, service) = tonic_health::server::health_reporter();
        for name in REPORTED {
            reporter.set_service_status(name, ServingStatus::Serving).await;
        }
        (Health { reporter, state: Default::default() }, service)
    }

    /// Turns every status NOT_SERVING (watchers are told at once).
    pub async fn draining(&self) {
        let mut state = self.state.lock().await;
        state.draining = true;
        self.report(&state).await;
    }

    /// Notes whether the store can write: while it cannot, the node and the
    /// services that write are NOT_SERVING.
    pub async fn store_failing(&self, failing: bool) {
        let mut state = self.state.lock().await;
        if state.store_failing != failing {
            state.store_failing = failing;
            self.report(&state).await;
        }
    }

    /// Notes whether the node is cut off from its cluster: while it is,
    /// every service is NOT_SERVING.
    pub async fn isolated(&self, isolated: bool) {
        let mut state = self.state.lock().await;
        if state.isolated != isolated {
            state.isolated = isolated;
            self.report(&state).await;
        }
    }

    async fn report(&self, state: &State) {
        for name in REPORTED {
            let serving = !(state.draining || state.isolated || state.store_failing && NEED_THE_STORE.contains(&name));
            let status = if serving { ServingStatus::Serving } else { ServingStatus::NotServing };
            self.reporter.set_service_status(name, status).await;
        }
    }

    /// Ends every `Watch` stream (after its watcher was told NOT_SERVING), so
    /// that no health watcher holds a connection open through shutdown.
    pub async fn close(mut self) {
        for name in REPORTED {
            self.reporter.clear_service_status(name).await;
        }
    }
}
