//! `tether stats`: the counts a tetherd node holds now (AdminService).

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

/// The counts by name, in the contract's order.
fn rows(s: &ServerStats) -> [(&'static str, u64); 10] {
    [
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
    ]
}
