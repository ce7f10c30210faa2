//! megafsd: supervises lazily-fetched FUSE mounts of source repositories, controlled over a
//! gRPC Unix socket.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use megafs_proto::ControlServer;
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_stream::wrappers::UnixListenerStream;
use tracing::{error, info};

use megafsd::service::ControlService;
use megafsd::store::Store;
use megafsd::supervisor::Supervisor;

#[derive(Parser, Debug)]
#[command(
    name = "megafsd",
    version,
    about = "The megafs daemon: lazily mounts source repositories"
)]
struct Args {
    /// Control socket [default: $MEGAFS_SOCKET, /run/megafs/megafsd.sock for root, else
    /// $XDG_RUNTIME_DIR/megafs/megafsd.sock]
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Object cache directory, shared by every mount.
    #[arg(long, default_value_os_t = default_cache_dir())]
    cache_dir: PathBuf,
    /// Where the log file goes when not in the foreground.
    #[arg(long, default_value_os_t = default_log_dir())]
    log_dir: PathBuf,
    /// Stay attached and log to stderr.
    #[arg(long)]
    foreground: bool,
    /// Log filter (tracing syntax; the MEGAFS_LOG environment variable overrides it).
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Longest a filesystem request or a connect may wait on a server, in seconds.
    #[arg(long, default_value_t = 30)]
    request_timeout: u64,
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn user_dir(env: &str, fallback: &str) -> PathBuf {
    std::env::var_os(env)
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(fallback)))
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join("megafs")
}

fn default_cache_dir() -> PathBuf {
    if is_root() {
        PathBuf::from("/var/cache/megafs")
    } else {
        user_dir("XDG_CACHE_HOME", ".cache")
    }
}

fn default_log_dir() -> PathBuf {
    if is_root() {
        PathBuf::from("/var/log/megafs")
    } else {
        user_dir("XDG_STATE_HOME", ".local/state")
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    megafsd::telemetry::init(args.foreground, &args.log_dir, &args.log_level)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("megafsd")
        .build()
        .context("starting the runtime")?;
    let result = runtime.block_on(run(args));
    if let Err(e) = &result {
        error!("{e:#}");
    }
    result
}

async fn run(args: Args) -> anyhow::Result<()> {
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(megafs_proto::socket::default_socket_path);
    let store = Arc::new(
        Store::open(&args.cache_dir)
            .with_context(|| format!("opening cache {}", args.cache_dir.display()))?,
    );
    let supervisor = Arc::new(Supervisor::new(
        store,
        Duration::from_secs(args.request_timeout.max(1)),
    ));
    let listener = bind_socket(&socket).await?;
    info!(socket = %socket.display(), cache = %args.cache_dir.display(), "megafsd ready");

    let service = ControlServer::new(ControlService::new(supervisor.clone()));
    let served = tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown_signal());
    let result = served.await.context("serving the control socket");

    info!("stopping: unmounting everything");
    supervisor.shutdown().await;
    let _ = std::fs::remove_file(&socket);
    info!("stopped");
    result
}

/// Binds the control socket, mode 0600. A socket file nobody answers on is a predecessor's
/// leftover and is replaced; one that answers means another daemon is running.
async fn bind_socket(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating socket directory {}", dir.display()))?;
    }
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            bail!(
                "another megafsd is already listening on {} (stop it first, or use --socket)",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting control socket {}", path.display()))?;
    Ok(listener)
}

async fn shutdown_signal() {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        error!("cannot install signal handlers; stop megafsd with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => info!("SIGTERM received"),
        _ = int.recv() => info!("SIGINT received"),
    }
}
