//! tetherd: holds one gRPC stream per connected vehicle and delivers
//! idempotent target-state commands from apps.
//!
//! Layers, inner to outer: [`core`] (command semantics, no I/O), [`store`]
//! (durable records behind the `Store` trait), [`router`] (who acts on a
//! change, behind the `Router` trait), [`hub`] (per-vehicle cells: record,
//! presence, change signal), [`service`] (gRPC services, status
//! mapping in one place), [`transport`] (accept loop, HTTP/2 and HTTP/1.1
//! for gRPC-Web), [`health`] (serving status), [`trace`] (OpenTelemetry spans per
//! command, OTLP export when configured), [`otlp_metrics`] (the same metrics as
//! the Prometheus endpoint, over OTLP when configured), [`server`] (assembly and
//! graceful shutdown).

pub mod admin_http;
pub mod auth;
pub mod command;
pub mod config;
pub mod core;
pub mod health;
pub mod hub;
pub mod limits;
pub mod metrics;
pub mod otlp_metrics;
pub mod router;
pub mod server;
pub mod service;
pub mod stats;
pub mod store;
pub mod tls;
pub mod trace;
pub mod transport;

pub use config::Config;
pub use server::{ServerHandle, StartError, start};
