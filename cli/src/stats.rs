//! `tether stats`: the counts a tetherd node holds now (AdminService), and a
//! cluster node's figures.

use tether_sdk::Client;
use tether_sdk::pb::admin::v1::ServerStats;

use crate::output::{Output, Table};

/// Reads and prints the node's counts.
pub(crate) async fn run(client: &Client, output: Output) -> anyhow::Result<()> {
    let stats = client.server_stats().await?;
    output.emit(
        || serde_json::Value::Object(rows(&stats).into_iter().map(|(k, v)| (k.to_string(), v.into())).collect()),
        || {
            let mut table = Table::default();
            for (key, value) in rows(&stats) {
                table.row(vec![key.to_string(), value.to_string()]);
            }
            table.render("")
        },
    )?;
    Ok(())
}

/// The counts by name, in the contract's order (a cluster node's under
/// `cluster.`).
fn rows(s: &ServerStats) -> Vec<(&'static str, u64)> {
    let mut rows = vec![
        ("connections", s.connections),
        ("sessions", s.sessions),
        ("tasks", s.tasks),
        ("waiters", s.waiters),
        ("watchers", s.watchers),
        ("vehicles", s.vehicles),
        ("pending_snapshots", s.pending_snapshots),
        ("sessions_opened", s.sessions_opened),
        ("sessions_timed_out", s.sessions_timed_out),
        ("sessions_superseded", s.sessions_superseded),
    ];
    if let Some(c) = &s.cluster {
        rows.extend([
            ("cluster.nodes_live", c.nodes_live),
            ("cluster.isolated", u64::from(c.isolated)),
            ("cluster.save_conflicts", c.save_conflicts),
            ("cluster.conflicts_retried", c.conflicts_retried),
            ("cluster.presence_claims", c.presence_claims),
            ("cluster.feed_restarts", c.feed_restarts),
            ("cluster.saves_published", c.saves_published),
            ("cluster.publish_mean_micros", c.publish_mean_micros),
        ]);
    }
    rows
}
