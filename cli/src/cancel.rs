//! `tether cancel`: cancels desired fields not yet applied and says which.

use std::time::SystemTime;

use tether_sdk::{Client, FieldOutcome};

use crate::outcome;
use crate::output::Output;

/// Arguments of `tether cancel`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The vehicle id.
    vehicle: String,
    /// The field paths to cancel (none: every field not yet applied).
    #[arg(value_name = "PATH")]
    paths: Vec<String>,
}

/// Cancels and prints what was cancelled.
pub(crate) async fn run(client: &Client, output: Output, args: Args) -> anyhow::Result<()> {
    let response = client.cancel(&args.vehicle, args.paths).await?;
    let cancelled: Vec<FieldOutcome> = response.cancelled.into_iter().map(FieldOutcome::from).collect();
    output.emit(
        || {
            serde_json::json!({
                "vehicle_id": args.vehicle,
                "generation": response.generation,
                "cancelled": outcome::json(&cancelled),
            })
        },
        || match cancelled.len() {
            0 => format!("{}: generation {}, nothing to cancel", args.vehicle, response.generation),
            n => format!(
                "{}: generation {}, cancelled {n} field{}\n{}",
                args.vehicle,
                response.generation,
                if n == 1 { "" } else { "s" },
                outcome::table(&cancelled, SystemTime::now())
            ),
        },
    )?;
    Ok(())
}
