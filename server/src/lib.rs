//! tetherd: holds one gRPC stream per connected vehicle and delivers
//! idempotent target-state commands from apps.
//!
//! The crate is layered: [`core`] holds the command semantics with no I/O;
//! the store and router adapters sit behind small traits; the gRPC services
//! and the transport are thin shells around them.

pub mod core;
