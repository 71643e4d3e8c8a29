//! The tether contract pipeline behind `cargo codegen-ci`: lint and gate the
//! contract (`check`), generate the SDKs (`generate`), cut a release (`release`)
//! and publish the SDKs (`publish`). The binary is a thin command line over this.

pub mod buf;
pub mod check;
pub mod contract;
pub mod dest;
pub mod diff;
pub mod lang;
pub mod publish;
pub mod release;
pub mod tools;
pub mod version;

pub use buf::Finding;
pub use check::{Report, Verdict};
pub use version::{Bump, Version};
