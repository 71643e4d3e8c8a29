//! The command semantics, with no I/O: per-vehicle desired state per field
//! (latest value wins, generations, expiry, idempotency keys, optimistic
//! concurrency), acknowledgement bookkeeping and the desired-state snapshot.
//!
//! Nothing here touches a socket, a file or a clock: callers pass `now`.

mod idempotency;
mod record;

pub use idempotency::{IdempotencyEntry, IdempotencyLog, KeyChanges};
pub use record::{
    DesiredField, FieldOutcome, FieldReport, KeyLimits, Origin, Snapshot, SnapshotField, Transition, VehicleRecord,
    Write, WriteError, WriteResult, is_final,
};
pub use tether_proto::common::v1::FieldStatus;
