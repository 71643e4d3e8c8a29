//! The cluster's presence: which node holds a vehicle's session.
//!
//! A node that opens a session claims the vehicle with compare-and-set on
//! its presence subject; the claim's stream sequence is the cluster-wide
//! fencing token. The last claim wins: a node that sees a newer claim by
//! another node ends its own session (SUPERSEDED). A node closing a session
//! publishes its end with compare-and-set on its own claim, so a stale close
//! never clears a newer claim and presence never flips back.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;
use serde::{Deserialize, Serialize};

use super::publish::{Failure, Message, publish};
use super::{NODE_HEADER, Shared, Vehicle};
use crate::store::{Claim, RemotePresence, StoreError};

/// A presence message's body.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Body {
    node: String,
    /// The node's start that claimed (see `lease`).
    #[serde(default)]
    boot: u32,
    session: u64,
    online: bool,
    connected_at_ms: u64,
    last_seen_ms: u64,
    agent_version: String,
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

fn time(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// A node that holds a vehicle's claim.
#[derive(Debug, Clone)]
pub(super) struct Claimant {
    pub(super) node: String,
    pub(super) boot: u32,
    pub(super) session: u64,
}

impl Body {
    /// The claim it makes, if it claims.
    pub(super) fn claimant(&self) -> Option<Claimant> {
        self.online.then(|| Claimant { node: self.node.clone(), boot: self.boot, session: self.session })
    }

    /// The presence it says, for `vehicle`.
    pub(super) fn presence(&self, vehicle: Arc<str>) -> RemotePresence {
        RemotePresence {
            vehicle,
            node: self.node.clone(),
            session: self.session,
            online: self.online,
            connected_at: time(self.connected_at_ms),
            last_seen: time(self.last_seen_ms),
            agent_version: self.agent_version.clone(),
        }
    }

    /// Reads a stored body.
    pub(super) fn decode(payload: &[u8]) -> Option<Body> {
        serde_json::from_slice(payload).ok()
    }
}

/// What the feed makes of a presence message at `seq` for a vehicle: the
/// change to tell the hub, if any.
pub(super) fn observe(
    v: &mut Vehicle,
    node: &str,
    seq: u64,
    body: Option<Body>,
    id: Arc<str>,
) -> Option<RemotePresence> {
    if seq <= v.pres_rev {
        return None;
    }
    v.pres_rev = seq;
    let body = body?;
    if body.node == node {
        return None;
    }
    // Whoever claimed last, the claim before it is over.
    v.claimed_by = body.claimant();
    // A claim of ours is on its way and will be committed after this one:
    // it wins, so this one changes nothing here.
    if v.claiming > 0 {
        return None;
    }
    if body.online {
        v.own = None;
    }
    Some(body.presence(id))
}

impl Shared {
    /// Claims `vehicle` for session `claim` of this node, again on top of any
    /// claim that got in first, until the stream takes it or the deadline
    /// passes.
    pub(super) async fn claim(
        self: Arc<Self>,
        vehicle: Arc<str>,
        claim: Claim,
        done: tokio::sync::oneshot::Sender<Result<(), StoreError>>,
    ) {
        let body = Body {
            node: self.options.node.clone(),
            boot: self.boot.load(std::sync::atomic::Ordering::Relaxed),
            session: claim.session,
            online: true,
            connected_at_ms: ms(claim.connected_at),
            last_seen_ms: ms(claim.connected_at),
            agent_version: claim.agent_version,
        };
        // `claiming` was raised by the caller.
        let mut expected = self.with(&vehicle, |v| v.pres_rev);
        let mut outcome = Err(StoreError::new("100 conflicts in a row"));
        for _ in 0..100 {
            match self.put_presence(&vehicle, &body, expected).await {
                Ok(seq) => {
                    outcome = Ok(seq);
                    break;
                }
                Err(Failure::Conflict(_)) => match self.leader_sequence(&self.subjects.presence(&vehicle)).await {
                    Some(seq) => expected = seq,
                    None => break,
                },
                Err(Failure::Failed(e)) => {
                    outcome = Err(StoreError::new(e));
                    break;
                }
            }
        }
        self.with(&vehicle, |v| {
            v.claiming -= 1;
            if let Ok(seq) = outcome {
                v.pres_rev = v.pres_rev.max(seq);
                v.own = Some((claim.session, seq));
                crate::stats::bump(&self.stats.claims);
                v.claimed_by = None;
            }
        });
        if let Err(e) = &outcome {
            tracing::warn!(vehicle = %vehicle, session = claim.session, error = %e, "cannot claim the vehicle's presence");
        }
        let _ = done.send(outcome.map(|_| ()));
    }

    /// Ends this node's claim for `session`, if it is still the vehicle's
    /// last claim.
    pub(super) async fn release(self: Arc<Self>, vehicle: Arc<str>, session: u64, last_seen: SystemTime) {
        // A claim still on its way is waited for (bounded): its end must come
        // after it.
        for _ in 0..200 {
            let (claiming, own) = self.with(&vehicle, |v| (v.claiming, v.own));
            match own {
                Some((s, seq)) if s == session => {
                    let body = Body {
                        node: self.options.node.clone(),
                        boot: self.boot.load(std::sync::atomic::Ordering::Relaxed),
                        session,
                        online: false,
                        connected_at_ms: 0,
                        last_seen_ms: ms(last_seen),
                        agent_version: String::new(),
                    };
                    // A conflict means a newer claim: it stays.
                    if let Ok(seq) = self.put_presence(&vehicle, &body, seq).await {
                        self.with(&vehicle, |v| {
                            v.pres_rev = v.pres_rev.max(seq);
                            if v.own.is_some_and(|(s, _)| s == session) {
                                v.own = None;
                            }
                        });
                    }
                    return;
                }
                _ if claiming > 0 => tokio::time::sleep(Duration::from_millis(25)).await,
                _ => return,
            }
        }
    }

    async fn put_presence(&self, vehicle: &str, body: &Body, expected: u64) -> Result<u64, Failure> {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Expected-Last-Subject-Sequence", expected.to_string().as_str());
        headers.insert(NODE_HEADER, self.options.node.as_str());
        let payload = serde_json::to_vec(body).expect("serializes").into();
        let message = Message { subject: self.subjects.presence(vehicle), headers, payload };
        publish(&self.client, &self.js, &[message], self.options.publish_deadline).await
    }
}
