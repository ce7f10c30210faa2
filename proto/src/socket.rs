//! Where the control socket lives and how a client connects to it.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

/// Environment variable that overrides the socket path for both ends.
pub const SOCKET_ENV: &str = "MEGAFS_SOCKET";

/// The system daemon's socket.
pub const SYSTEM_SOCKET: &str = "/run/megafs/megafsd.sock";

/// The socket path to use when none is given on the command line: `$MEGAFS_SOCKET`, else the
/// system socket for root, else `$XDG_RUNTIME_DIR/megafs/megafsd.sock` (falling back to
/// `/tmp/megafs-<uid>/megafsd.sock` where no runtime dir is set).
pub fn default_socket_path() -> PathBuf {
    if let Some(path) = std::env::var_os(SOCKET_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        return PathBuf::from(SYSTEM_SOCKET);
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|p| !p.is_empty()) {
        Some(dir) => Path::new(&dir).join("megafs").join("megafsd.sock"),
        None => PathBuf::from(format!("/tmp/megafs-{uid}/megafsd.sock")),
    }
}

/// The socket a client uses when none is given: as [`default_socket_path`], except that a user
/// with no per-user daemon's socket of their own uses the system daemon's where there is one
/// (it serves every user, authorizing each request).
pub fn client_socket_path() -> PathBuf {
    let own = default_socket_path();
    let system = Path::new(SYSTEM_SOCKET);
    if own.as_path() != system && !own.exists() && system.exists() {
        return system.to_path_buf();
    }
    own
}

/// Opens a gRPC channel to the daemon listening on `path`. Fails at once (no retries) when
/// nothing listens there, so callers can tell "daemon not running" from other errors.
pub async fn connect(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = path.to_path_buf();
    // The URI is required by the API but never used: the connector below dials the socket.
    Endpoint::from_static("http://megafsd.invalid")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await
}
