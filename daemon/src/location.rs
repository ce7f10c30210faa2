//! A repository's location (parsed in `megafs_proto::location`, where `mega-fuse` uses it
//! too), and opening the source that serves it: the one place that knows which source serves
//! which kind of location.

use std::sync::Arc;
use std::time::Duration;

pub use megafs_proto::location::{default_name_of, Location, LocationError};

use crate::metrics::ServerMetrics;
use crate::source::git::{Credentials, GitSource};
use crate::source::local::LocalSource;
use crate::source::mega::MegaSource;
use crate::source::{Source, SourceError};

/// How long a source waits on its server.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// Establishing a connection.
    pub connect: Duration,
    /// One request (also the longest any filesystem request waits).
    pub request: Duration,
}

/// The source for `location`, showing `reference` (a branch, tag or commit; empty for the
/// default), through `proxy` if given and with `credentials` for a git server if configured;
/// it times every request it makes into `meter`.
pub fn open(
    location: &Location,
    reference: &str,
    timeouts: Timeouts,
    proxy: Option<&str>,
    credentials: Option<Credentials>,
    meter: Arc<ServerMetrics>,
) -> Result<Arc<dyn Source>, SourceError> {
    Ok(match location {
        Location::Mega { server, path } => {
            if !reference.is_empty() {
                return Err(SourceError::Unsupported(
                    "a Mega mount shows the current trunk; --ref is not supported for Mega".into(),
                ));
            }
            Arc::new(MegaSource::new(
                server,
                path,
                timeouts.request,
                timeouts.connect,
                proxy,
                meter,
            )?)
        }
        Location::Git { url } => Arc::new(GitSource::new(
            url,
            reference,
            timeouts.request,
            timeouts.connect,
            proxy,
            credentials,
            meter,
        )?),
        Location::Local { path } => Arc::new(LocalSource::open(path, reference, meter)?),
    })
}
