//! `tether.admin.v1.AdminService`: what the node holds now.

use std::sync::Arc;

use tether_proto::admin::v1::admin_service_server::AdminService;
use tether_proto::admin::v1::{ClusterStats, GetServerStatsRequest, ServerStats};
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status};

use super::ApiError;
use crate::auth::Principal;
use crate::hub::Hub;
use crate::stats::get;

/// Node introspection.
#[derive(Clone)]
pub struct AdminApi {
    hub: Arc<Hub>,
    tasks: TaskTracker,
}

impl AdminApi {
    /// Introspection of `hub` and the server's `tasks`.
    pub fn new(hub: Arc<Hub>, tasks: TaskTracker) -> Self {
        AdminApi { hub, tasks }
    }

    /// The counts, as served.
    pub fn stats(&self) -> ServerStats {
        let s = &self.hub.stats;
        let pending_snapshots = self.hub.all().iter().filter(|c| c.lock().snapshot_pending()).count();
        ServerStats {
            connections: get(&s.connections),
            sessions: get(&s.sessions),
            tasks: self.tasks.len() as u64,
            waiters: get(&s.waiters),
            watchers: get(&s.watchers),
            vehicles: self.hub.len() as u64,
            pending_snapshots: pending_snapshots as u64,
            sessions_opened: get(&s.sessions_opened),
            sessions_timed_out: get(&s.sessions_timed_out),
            sessions_superseded: get(&s.sessions_superseded),
            cluster: self.hub.store().cluster_stats().map(|c| {
                let (published, micros) = (get(&c.publish.count), get(&c.publish.sum_micros));
                ClusterStats {
                    nodes_live: get(&c.nodes_live),
                    isolated: get(&c.isolated) != 0,
                    save_conflicts: get(&c.conflicts),
                    conflicts_retried: get(&s.conflicts_retried),
                    presence_claims: get(&c.claims),
                    feed_restarts: get(&c.feed_restarts),
                    saves_published: published,
                    publish_mean_micros: micros.checked_div(published).unwrap_or(0),
                }
            }),
        }
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn get_server_stats(&self, req: Request<GetServerStatsRequest>) -> Result<Response<ServerStats>, Status> {
        let principal = req
            .extensions()
            .get::<Arc<Principal>>()
            .cloned()
            .ok_or_else(|| ApiError::Unauthenticated("no credentials were checked for this call".into()))?;
        super::authz::may_admin(&principal)?;
        Ok(Response::new(self.stats()))
    }
}
