//! The benchmark's parts: a `tetherd` child process ([`Tetherd`]), its
//! memory ([`rss`]) and CPU ([`cpu`]), lean raw-protocol vehicles
//! ([`lean_vehicle`]) and fleets of applying ones ([`fleet`]), an in-memory
//! PKI ([`pki`]), a raw-tonic baseline server ([`baseline`]), open- and
//! closed-loop write drivers ([`load`]), the write scenarios ([`writes`]:
//! write-rate, max-throughput, fan-out) and the other scenarios ([`latency`], [`idle_memory`],
//! [`traces`], [`tls`], [`reconnect_storm`], [`silent_sockets`], [`crash_rounds`]), each ending in a report printed
//! as a table and one JSON line ([`print_report`]).
//!
//! Every scenario is bounded: it starts its own server on `127.0.0.1:0`,
//! sends traffic only over loopback, stops by itself, and kills the server
//! at the end (or when dropped).

pub mod baseline;
pub mod cluster;
pub mod counters;
pub mod cpu;
pub mod crash_rounds;
pub mod fleet;
pub mod idle_memory;
pub mod latency;
pub mod lean_vehicle;
pub mod load;
pub mod pki;
pub mod reconnect_storm;
pub mod rss;
pub mod silent_sockets;
mod tetherd;
pub mod tls;
pub mod traces;
pub mod writes;

pub use tetherd::{Restart, Tetherd, TetherdOptions, metric_value};

use std::fmt::Display;

use serde::Serialize;

/// Prints `report` as a table, then as one JSON line (for scripts: `grep '^{'`).
pub fn print_report<R: Display + Serialize>(report: &R) {
    println!("{report}");
    match serde_json::to_string(report) {
        Ok(json) => println!("{json}"),
        Err(error) => tracing::error!(%error, "cannot encode the report as JSON"),
    }
}

/// The machine's parallelism, recorded in every report.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
