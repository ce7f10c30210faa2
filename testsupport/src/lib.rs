//! Test support for megafs, shared by the end-to-end tests, the demo and the benchmarks:
//! the dev Mega server, fixture repositories, a harness that runs the real daemon and control
//! tool, and tree comparison.

pub mod background;
pub mod compare;
pub mod fixture;
pub mod git_server;
pub mod harness;
pub mod hostile;
pub mod mega_server;
pub mod shared_cache;

pub use mega_server::{DevServer, Faults, ServedRepo};
