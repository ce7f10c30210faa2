//! Dialling the daemon, with errors that tell the user what to do.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use anyhow::anyhow;
use megafs_proto::ControlClient;
use tonic::transport::Channel;

use crate::Cli;

pub fn socket_path(cli: &Cli) -> PathBuf {
    cli.socket
        .clone()
        .unwrap_or_else(megafs_proto::socket::default_socket_path)
}

pub async fn connect(cli: &Cli) -> anyhow::Result<ControlClient<Channel>> {
    let path = socket_path(cli);
    // Probe first: tonic's transport error hides whether the socket is missing, refused or
    // forbidden, and each needs a different hint.
    if let Err(e) = tokio::net::UnixStream::connect(&path).await {
        return Err(explain(&path, cli, e));
    }
    let channel = megafs_proto::socket::connect(&path)
        .await
        .map_err(|e| anyhow!("cannot talk to megafsd on {}: {e}", path.display()))?;
    Ok(ControlClient::new(channel))
}

fn explain(path: &Path, cli: &Cli, e: std::io::Error) -> anyhow::Error {
    match e.kind() {
        ErrorKind::NotFound | ErrorKind::ConnectionRefused => {
            let mut start = format!("megafsd --socket {}", path.display());
            if let Some(dir) = &cli.cache_dir {
                start.push_str(&format!(" --cache-dir {}", dir.display()));
            }
            if let Some(dir) = &cli.log_dir {
                start.push_str(&format!(" --log-dir {}", dir.display()));
            }
            anyhow!(
                "megafsd is not running (nothing answers on {}). Start it with `{start} &` \
                 or `systemctl start megafsd`",
                path.display()
            )
        }
        ErrorKind::PermissionDenied => anyhow!(
            "permission denied on {}: the socket belongs to another user (run as that user, \
             or point --socket / MEGAFS_SOCKET at your own daemon)",
            path.display()
        ),
        _ => anyhow!("cannot reach megafsd on {}: {e}", path.display()),
    }
}

/// The daemon's message, without tonic's decoration.
pub fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow!("{}", status.message())
}
