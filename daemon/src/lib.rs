//! megafsd's library: everything but argument parsing, so tests can drive the pieces directly.
//! Data flows one way: kernel -> `fuse` -> `fs` -> (`fs::loader`) -> `store` / `source` ->
//! network, and back; `service` -> `supervisor` -> `fuse` + `fs`. docs/architecture.md has
//! the layer table that `tests/layers.rs` holds every module to.

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod access;
pub mod cache_use;
pub mod config;
pub mod doctor;
pub mod fs;
pub mod fuse;
#[doc(hidden)]
pub mod fuzz_targets;
pub mod location;
pub mod metrics;
pub mod mount_name;
pub mod mounts;
pub mod notify;
pub mod object;
pub mod repo_path;
pub mod service;
pub mod source;
pub mod store;
pub mod supervisor;
pub mod sys;
pub mod telemetry;
pub mod workspace;
