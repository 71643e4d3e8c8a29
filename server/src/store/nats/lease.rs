//! Node leases: each node renews a lease in the stream (`<prefix>.node.<name>`,
//! a message with a TTL) every third of `--cluster-lease`.
//!
//! - A node that hears no renewal of another node's lease for a lease counts
//!   it as gone: the vehicles it had claimed are offline here until they
//!   reconnect elsewhere (receipt times, so clocks need not agree).
//! - A node that cannot renew its own lease for a lease is cut off: it says
//!   so (`Store::isolated`), and the server turns NOT_SERVING and ends its
//!   sessions, so its vehicles move to a node that can serve them.
//! - Claims carry their node's boot count: a claim of an earlier start of a
//!   node (same name, restarted) is not taken for one of the live node's.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use async_nats::HeaderMap;
use serde::{Deserialize, Serialize};

use super::publish::{Message, publish};
use super::{NODE_HEADER, Shared, ttl};
use crate::store::RemotePresence;

/// A lease message's body.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Lease {
    pub(super) node: String,
    pub(super) boot: u32,
}

impl Lease {
    /// Reads a stored body.
    pub(super) fn decode(payload: &[u8]) -> Option<Lease> {
        serde_json::from_slice(payload).ok()
    }
}

/// The other nodes whose leases this node has seen renewed, with when.
#[derive(Debug, Default)]
pub(super) struct Leases {
    seen: std::collections::HashMap<String, (u32, Instant)>,
}

impl Leases {
    /// A renewal of `lease` heard now.
    pub(super) fn renewed(&mut self, lease: Lease) {
        self.seen.insert(lease.node, (lease.boot, Instant::now()));
    }

    /// Whether `node`'s start `boot` holds a live lease.
    pub(super) fn live(&self, node: &str, boot: u32) -> bool {
        self.seen.get(node).is_some_and(|(b, _)| *b == boot)
    }

    /// Removes and returns the nodes not heard from for `lease`.
    fn lapsed(&mut self, lease: Duration) -> Vec<String> {
        let now = Instant::now();
        let gone: Vec<String> =
            self.seen.iter().filter(|(_, (_, at))| now.duration_since(*at) > lease).map(|(n, _)| n.clone()).collect();
        for node in &gone {
            self.seen.remove(node);
        }
        gone
    }
}

impl Shared {
    /// Renews this node's lease, and counts other nodes whose leases lapsed
    /// as gone, every third of the lease, until the store closes.
    pub(super) async fn keep_lease(self: Arc<Self>) {
        let lease = self.options.lease;
        let renew = lease / 3;
        let mut last_renewed = Instant::now();
        let mut tick = tokio::time::interval(renew);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !self.closed.load(Ordering::Acquire) {
            tick.tick().await;
            match self.renew(renew).await {
                Ok(()) => {
                    last_renewed = Instant::now();
                    self.stats.isolated.store(0, Ordering::Relaxed);
                    if self.isolated.send_replace(false) {
                        tracing::warn!("this node renews its cluster lease again: it takes sessions again");
                    }
                }
                Err(e) if last_renewed.elapsed() > lease => {
                    self.stats.isolated.store(1, Ordering::Relaxed);
                    if !self.isolated.send_replace(true) {
                        tracing::error!(
                            error = %e,
                            lease = ?lease,
                            "this node could not renew its cluster lease: the cluster counts it as gone; it ends \
                             its sessions and refuses new ones until it renews again"
                        );
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot renew this node's cluster lease; retrying"),
            }
            self.bury(lease);
        }
    }

    async fn renew(&self, deadline: Duration) -> Result<(), String> {
        let lease = Lease { node: self.options.node.clone(), boot: self.boot.load(Ordering::Relaxed) };
        let mut headers: HeaderMap = ttl(self.options.lease * 2);
        headers.insert(NODE_HEADER, self.options.node.as_str());
        let payload = serde_json::to_vec(&lease).expect("serializes").into();
        let message = Message { subject: self.subjects.lease(&self.options.node), headers, payload };
        publish(&self.client, &self.js, &[message], deadline).await.map(|_| ()).map_err(|f| format!("{f:?}"))
    }

    /// Counts the nodes whose leases lapsed as gone: each vehicle they had
    /// claimed is offline here.
    fn bury(&self, lease: Duration) {
        let (gone, live) = {
            let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
            (leases.lapsed(lease), leases.seen.len())
        };
        self.stats.nodes_live.store(live as u64, Ordering::Relaxed);
        if gone.is_empty() {
            return;
        }
        let now = SystemTime::now();
        let mut ended = Vec::new();
        {
            let mut vehicles = self.vehicles.lock().unwrap_or_else(|p| p.into_inner());
            for (id, v) in vehicles.iter_mut() {
                if let Some(claim) = v.claimed_by.take_if(|c| gone.contains(&c.node)) {
                    ended.push(RemotePresence {
                        vehicle: id.clone(),
                        node: claim.node,
                        session: claim.session,
                        online: false,
                        connected_at: now,
                        last_seen: now,
                        agent_version: String::new(),
                    });
                }
            }
        }
        tracing::warn!(nodes = ?gone, vehicles = ended.len(), "cluster nodes gone (their leases lapsed)");
        if let Some(hook) = self.presence_hook.get() {
            for p in ended {
                hook(p);
            }
        }
    }
}
