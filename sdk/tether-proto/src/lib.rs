//! Generated Rust types and gRPC stubs for the tether contract (`proto/`), plus
//! [`RawState`], the byte-preserving carrier of `tether.state.v1.VehicleState`.
//!
//! Everything under `generated/` is written by `cargo codegen-ci generate`;
//! `cargo codegen-ci check` fails when it drifts from `proto/`.

pub mod codec;
pub mod fields;
mod raw_state;
pub mod traceparent;

pub use fields::{FieldError, FieldValue, StateSchema};
pub use raw_state::RawState;

/// `tether.options.v1`: validity rules carried in the descriptor.
pub mod options {
    /// Version 1.
    #[allow(missing_docs, unreachable_pub, clippy::all)]
    #[rustfmt::skip]
    pub mod v1 {
        include!("generated/tether.options.v1.rs");
    }
}

/// `tether.common.v1`: types shared by the services.
pub mod common {
    /// Version 1.
    #[allow(missing_docs, unreachable_pub, clippy::all)]
    #[rustfmt::skip]
    pub mod v1 {
        include!("generated/tether.common.v1.rs");
    }
}

/// `tether.state.v1`: the typed vehicle state.
pub mod state {
    /// Version 1.
    #[allow(missing_docs, unreachable_pub, clippy::all)]
    #[rustfmt::skip]
    pub mod v1 {
        include!("generated/tether.state.v1.rs");
    }
}

/// `tether.vehicle.v1`: the vehicle-facing session service.
pub mod vehicle {
    /// Version 1.
    #[allow(missing_docs, unreachable_pub, clippy::all)]
    #[rustfmt::skip]
    pub mod v1 {
        include!("generated/tether.vehicle.v1.rs");
    }
}

/// `tether.app.v1`: the app-facing control service.
pub mod app {
    /// Version 1.
    #[allow(missing_docs, unreachable_pub, clippy::all)]
    #[rustfmt::skip]
    pub mod v1 {
        include!("generated/tether.app.v1.rs");
    }
}

/// `tether.admin.v1`: node introspection.
pub mod admin {
    /// Version 1.
    #[allow(missing_docs, unreachable_pub, clippy::all)]
    #[rustfmt::skip]
    pub mod v1 {
        include!("generated/tether.admin.v1.rs");
    }
}

/// The encoded `FileDescriptorSet` of the whole contract (with imports and
/// comments): the schema the server and the agent read the state through.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("generated/tether.fds.bin");

/// The fully-qualified name of the state message.
pub const VEHICLE_STATE: &str = "tether.state.v1.VehicleState";

/// The contract version this crate was generated from (`proto/VERSION`).
pub const CONTRACT_VERSION: &str = include_str!("../../../proto/VERSION");

/// The descriptor pool of the contract.
///
/// # Panics
/// Never in practice: the embedded set is produced by protox and checked by
/// this crate's tests.
pub fn descriptor_pool() -> prost_reflect::DescriptorPool {
    prost_reflect::DescriptorPool::decode(FILE_DESCRIPTOR_SET).expect("the embedded descriptor set is valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_descriptor_has_the_state_message_and_its_rules() {
        let pool = descriptor_pool();
        let state = pool.get_message_by_name(VEHICLE_STATE).unwrap();
        assert!(state.get_field_by_name("windows").is_some());
        assert!(pool.get_extension_by_name("tether.options.v1.rules").is_some());
    }
}
