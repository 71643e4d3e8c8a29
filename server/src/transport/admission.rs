//! Which connections have earned their place. A connection is *unproven*
//! from its accept until it has said something: over TLS its ClientHello,
//! on plaintext its HTTP preface. Unproven connections are registered here,
//! oldest first; at the connection cap the oldest of them is closed to make
//! room for a new connection, so sockets that never speak cannot keep real
//! clients out, and a client that has spoken is never closed for one.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// The unproven connections of a listener.
#[derive(Debug, Default)]
pub(crate) struct Unproven {
    /// By arrival: the first entry is the oldest.
    waiting: Mutex<BTreeMap<u64, CancellationToken>>,
    next: AtomicU64,
}

impl Unproven {
    /// Registers a new connection as unproven.
    pub(crate) fn enter(self: &Arc<Self>) -> Pending {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let evict = CancellationToken::new();
        self.lock().insert(id, evict.clone());
        Pending { id, evict, registry: self.clone() }
    }

    /// Closes the oldest unproven connection; whether there was one.
    pub(crate) fn evict_oldest(&self) -> bool {
        let oldest = self.lock().pop_first();
        oldest.map(|(_, evict)| evict.cancel()).is_some()
    }

    /// How many connections are unproven.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, CancellationToken>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A connection's place among the unproven, until it is proven (dropped).
#[derive(Debug)]
pub(crate) struct Pending {
    id: u64,
    evict: CancellationToken,
    registry: Arc<Unproven>,
}

impl Pending {
    /// Resolves when the connection is evicted to make room.
    pub(crate) fn evicted(&self) -> WaitForCancellationFuture<'_> {
        self.evict.cancelled()
    }

    /// The connection spoke (its TLS ClientHello arrived): it is no longer
    /// one the cap may evict, though it is not serving yet. A client in the
    /// middle of its handshake is never closed for a socket that says
    /// nothing.
    pub(crate) fn spoke(&self) {
        self.registry.lock().remove(&self.id);
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_unproven_connection_is_evicted_first_and_proven_ones_never() {
        let registry = Arc::new(Unproven::default());
        let first = registry.enter();
        let second = registry.enter();
        let third = registry.enter();
        second.spoke();
        assert_eq!(registry.len(), 2);
        drop(second); // proven
        assert_eq!(registry.len(), 2);
        assert!(registry.evict_oldest());
        assert!(first.evict.is_cancelled() && !third.evict.is_cancelled());
        assert!(registry.evict_oldest());
        assert!(third.evict.is_cancelled());
        assert!(!registry.evict_oldest(), "no unproven connection left");
        drop((first, third));
        assert_eq!(registry.len(), 0);
    }
}
