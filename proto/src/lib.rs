//! The megafsd control protocol: generated gRPC types plus what both ends need to meet on a
//! Unix socket (where the socket lives, how a client dials it) and to agree on what a
//! repository's location means.

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod location;
pub mod socket;
pub mod units;

/// Generated from `proto/megafs.proto`.
pub mod v1 {
    tonic::include_proto!("megafs.v1");
}

pub use v1::control_client::ControlClient;
pub use v1::control_server::{Control, ControlServer};
