//! The tether Rust SDK: the app client ([`Client`]) and the vehicle agent
//! ([`Agent`]).
//!
//! Apps write *desired state* with [`Client::set_desired`] and a [`Patch`];
//! vehicles run an [`Agent`] with one [`Capability`] per top-level state field.
//! The generated contract types are re-exported as [`pb`].

mod agent;
mod backoff;
mod client;
mod error;
mod ids;
mod outcome;
mod patch;
mod tls;
mod trace;
mod view;

pub use tether_proto as pb;

pub use agent::{Agent, AgentBuilder, AgentEvent, AgentHandle, Capability, FieldChange, RecordingCapability, Refusal};
pub use client::{
    Client, RetryPolicy, SetDesired, TokenSource, WaitLevel, WatchStream, lazy_channel, lazy_channel_from,
};
pub use error::Error;
pub use futures::future::BoxFuture;
pub use outcome::{FieldOutcome, WriteOutcome};
pub use patch::{Patch, Window};
pub use tls::Tls;
pub use view::{actual_of, desired_of};

pub use pb::common::v1::FieldStatus;
pub use pb::state::v1::{LockState, OpenState, VehicleState};
pub use pb::vehicle::v1::GoodbyeReason;
pub use pb::{RawState, StateSchema};
