//! codegen-ci's integration tests: one binary (see STYLE.md). Each test copies
//! what it needs of the repository into a temporary folder and changes it there;
//! the tools come from this repository's `.tools/`, installed by
//! `scripts/install-tools` on first use.

mod bad_input;
mod drift;
mod end_to_end;
mod fixtures;
mod gate;
mod support;
