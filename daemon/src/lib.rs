//! megafsd's library: everything but argument parsing, so tests can drive the pieces directly.
//! Data flows one way: kernel -> `fuse` -> `fs` -> `store` / `source` -> network, and back.

pub mod access;
pub mod config;
pub mod fs;
pub mod fuse;
#[doc(hidden)]
pub mod fuzz_targets;
pub mod mounts;
pub mod notify;
pub mod object;
pub mod service;
pub mod source;
pub mod store;
pub mod supervisor;
pub mod telemetry;
