//! Runnable examples of tether, and what they share: a fleet simulator whose
//! links go through a fault-injecting proxy ([`proxy`], [`faults`], [`sim`]),
//! an app using the SDK (`src/bin/app-demo.rs`), and a benchmark that starts a
//! real `tetherd` as a child process and measures it ([`bench`]), alone or as
//! a cluster on real nats-server processes ([`nats`]).
//!
//! Architecture invariant: nothing here depends on the server crate. The
//! examples use only the SDK's public API (the contract types through
//! `tether_sdk::pb`); the benchmark talks to `tetherd` over loopback like any
//! client would.
//!
//! This library is the binaries' own code split into modules, so it reports
//! errors with `anyhow` as they do (the proxy, a reusable piece, uses
//! `std::io::Error`).

pub mod bench;
pub mod faults;
pub mod logging;
pub mod loopback;
pub mod nats;
pub mod proxy;
pub mod server_addr;
pub mod sim;
