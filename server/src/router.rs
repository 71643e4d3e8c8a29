//! Routing of a vehicle's changes to whoever must act on them on *other*
//! nodes, behind a small trait so a cluster can route across nodes without
//! touching the core. This layer defines what it needs ([`Change`]) and
//! knows nothing of the hub: the hub wakes its own cell's actors (the
//! vehicle's session, waiting calls, watchers) and then tells the router.
//!
//! On one node (the embedded default) there is no one else to tell. A
//! cluster router (NATS) publishes the change on the vehicle's subject, so
//! that every other node holding the vehicle's session, waiters or watchers
//! reloads the record and signals its own cell.

use std::sync::Arc;

/// What a change touched; drives saving and watch events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Change {
    /// Desired values (a write, a cancel).
    pub desired: bool,
    /// The actual state.
    pub actual: bool,
    /// A field's status.
    pub status: bool,
    /// Presence.
    pub presence: bool,
}

impl Change {
    /// Nothing changed.
    pub const NONE: Change = Change { desired: false, actual: false, status: false, presence: false };

    /// Whether the change touched what is stored (presence is not).
    pub fn is_stored(self) -> bool {
        self.desired || self.actual || self.status
    }

    /// Whether anything changed.
    pub fn any(self) -> bool {
        self.is_stored() || self.presence
    }
}

/// Delivers "this vehicle changed" to whoever acts on it elsewhere.
pub trait Router: Send + Sync + 'static {
    /// `vehicle` changed as `change` says (already versioned, saved, and
    /// signalled on this node).
    fn changed(&self, vehicle: &Arc<str>, change: Change);
}

/// The single-node router: the hub already woke every actor there is.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalRouter;

impl Router for LocalRouter {
    fn changed(&self, _vehicle: &Arc<str>, _change: Change) {}
}
