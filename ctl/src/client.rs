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
        .unwrap_or_else(megafs_proto::socket::client_socket_path)
}

pub async fn connect(cli: &Cli) -> anyhow::Result<ControlClient<Channel>> {
    connect_or_start(cli, false).await
}

/// Connects to the daemon; with `start`, starts a per-user one first if none answers.
pub async fn connect_or_start(cli: &Cli, start: bool) -> anyhow::Result<ControlClient<Channel>> {
    let path = socket_path(cli);
    // Probe first: tonic's transport error hides whether the socket is missing, refused or
    // forbidden, and each needs a different hint.
    if let Err(e) = tokio::net::UnixStream::connect(&path).await {
        let absent = matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused);
        if !(start && absent) {
            return Err(explain(&path, cli, e));
        }
        start_daemon(cli, &path).await?;
    }
    let channel = megafs_proto::socket::connect(&path)
        .await
        .map_err(|e| anyhow!("cannot talk to megafsd on {}: {e}", path.display()))?;
    Ok(ControlClient::new(channel))
}

/// The megafsd beside this mega-fuse, else the one on PATH.
fn daemon_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("megafsd")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("megafsd"))
}

/// Starts a detached per-user daemon on `path` and waits until it answers.
async fn start_daemon(cli: &Cli, path: &Path) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let binary = daemon_binary();
    let mut command = std::process::Command::new(&binary);
    command.arg("--socket").arg(path);
    if let Some(dir) = &cli.cache_dir {
        command.arg("--cache-dir").arg(dir);
    }
    if let Some(dir) = &cli.log_dir {
        command.arg("--log-dir").arg(dir);
    }
    // Its own process group: a Ctrl-C meant for this command must not reach the daemon.
    command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0);
    let mut child = command
        .spawn()
        .map_err(|e| anyhow!("cannot start {}: {e}", binary.display()))?;
    eprintln!(
        "mega-fuse: started megafsd (pid {}) on {}",
        child.id(),
        path.display()
    );
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    loop {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(anyhow!(
                "megafsd exited at once ({status}); see its log in {}",
                cli.log_dir
                    .as_ref()
                    .map(|d| d.display().to_string())
                    .unwrap_or_else(|| "its log dir".into())
            ));
        }
        if tokio::time::Instant::now() > deadline {
            return Err(anyhow!(
                "megafsd did not answer on {} within {START_TIMEOUT:?}",
                path.display()
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// How long a daemon started on the user's behalf may take to answer.
const START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

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
