//! Routing of a vehicle's changes to whoever must act on them, behind a small
//! trait so a cluster can route across nodes without touching the core.
//!
//! On one node (the embedded default) every actor is local: the vehicle's
//! session (which sends the next snapshot), waiting `SetDesired` calls and
//! watchers all wait on the vehicle cell's change signal. A cluster router
//! (NATS) would also publish the change on the vehicle's subject, so that the
//! node holding its session reloads the record and signals its own cell.

use crate::hub::{Change, VehicleCell};

/// Delivers "this vehicle changed" to whoever acts on it.
pub trait Router: Send + Sync + 'static {
    /// `cell` changed as `change` says (already versioned and saved).
    fn changed(&self, cell: &VehicleCell, change: Change);
}

/// The single-node router: wakes the actors waiting on the cell.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalRouter;

impl Router for LocalRouter {
    fn changed(&self, cell: &VehicleCell, _change: Change) {
        cell.notify();
    }
}
