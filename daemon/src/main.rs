//! megafsd: supervises lazily-fetched FUSE mounts of source repositories, controlled over a
//! gRPC Unix socket, configured by a TOML file, managed by systemd.

#![deny(clippy::undocumented_unsafe_blocks)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use megafs_proto::ControlServer;
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_stream::wrappers::UnixListenerStream;
use tracing::{error, info, warn};

use megafsd::config::{Config, SYSTEM_CONFIG};
use megafsd::fs::{FsOptions, DEFAULT_LOOK_AHEAD, DEFAULT_STREAM_MIN_SIZE};
use megafsd::mounts::Stale;
use megafsd::notify;
use megafsd::service::ControlService;
use megafsd::store::Store;
use megafsd::supervisor::{KernelOptions, Places, Records, Supervisor, Timeouts};
use megafsd::sys::{self, is_root};
use megafsd::workspace::Workspaces;

#[derive(Parser, Debug)]
#[command(
    name = "megafsd",
    version,
    about = "The megafs daemon: lazily mounts source repositories",
    long_about = "The megafs daemon: lazily mounts source repositories.\n\n\
        It mounts what its configuration file lists at start and what `mega-fuse connect` \
        asks for over its control socket, restores those after a restart, cleans stale \
        mounts and restarts failed ones. File contents are fetched when first read, \
        verified against their git object id and kept in a cache shared by every mount. \
        SIGHUP reloads the configuration; SIGTERM or SIGINT unmounts everything and exits. \
        Under systemd it reports readiness and status (sd_notify) and logs to the journal."
)]
struct Args {
    /// Configuration file [default: /etc/megafs/megafsd.toml for root, else
    /// $XDG_CONFIG_HOME/megafs/megafsd.toml]; the default may be absent.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Validate the configuration, print what would be mounted, and exit.
    #[arg(long)]
    check_config: bool,
    /// Control socket [default: $MEGAFS_SOCKET, /run/megafs/megafsd.sock for root, else
    /// $XDG_RUNTIME_DIR/megafs/megafsd.sock]
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Object cache directory, shared by every mount.
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,
    /// Cache size limit ("10G", "500M", bytes) [default: 10% of the cache's filesystem].
    #[arg(long, value_name = "SIZE")]
    cache_max_size: Option<String>,
    /// Where the log file goes when not in the foreground and not under systemd.
    #[arg(long, value_name = "DIR")]
    log_dir: Option<PathBuf>,
    /// Where workspaces (the changes of writable mounts) are kept [default: /var/lib/megafs
    /// for root, else $XDG_STATE_HOME/megafs].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Stay attached and log to stderr.
    #[arg(long)]
    foreground: bool,
    /// Log filter (tracing syntax; the MEGAFS_LOG environment variable overrides it).
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,
    /// Files at least this big are read as they arrive, before the whole file is verified
    /// ("16M", "off") [default: 16M].
    #[arg(long, value_name = "SIZE")]
    stream_min_size: Option<String>,
    /// Longest a filesystem request or a connect may wait on a server, in seconds.
    #[arg(long, value_name = "SECONDS")]
    request_timeout: Option<u64>,
    /// Internal: exit 2 if the mount at this path has no daemon behind it (run by megafsd as
    /// the mount's owner, whom alone the kernel answers).
    #[arg(long, hide = true)]
    probe_mount: Option<PathBuf>,
    /// Internal: print the manual page, megafsd(8), and exit (run by packaging).
    #[arg(long, hide = true)]
    manpage: bool,
}

/// Settings after command line, configuration file and defaults are combined (in that order).
struct Settings {
    socket: PathBuf,
    cache_dir: PathBuf,
    /// None: a share of the disk, decided once the directory exists.
    cache_max_size: Option<u64>,
    log_dir: PathBuf,
    state_dir: PathBuf,
    log_level: String,
    request_timeout: Duration,
    connect_timeout: Duration,
    fetch_timeout: Duration,
    stream_min_size: Option<u64>,
    passthrough: bool,
    look_ahead: usize,
}

fn user_dir(env: &str, fallback: &str) -> PathBuf {
    std::env::var_os(env)
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(fallback)))
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join("megafs")
}

fn default_config_path() -> PathBuf {
    if is_root() {
        PathBuf::from(SYSTEM_CONFIG)
    } else {
        user_dir("XDG_CONFIG_HOME", ".config").join("megafsd.toml")
    }
}

fn settings(args: &Args, config: &Config) -> anyhow::Result<Settings> {
    let d = &config.daemon;
    let cache_max_size = match &args.cache_max_size {
        Some(text) => Some(
            megafsd::config::parse_size(&toml::Value::String(text.clone()))
                .map_err(|e| anyhow::anyhow!("--cache-max-size: {e}"))?,
        ),
        None => d.cache_max_size,
    };
    let stream_min_size = match &args.stream_min_size {
        Some(text) => megafsd::config::parse_size_or_off(&toml::Value::String(text.clone()))
            .map_err(|e| anyhow::anyhow!("--stream-min-size: {e}"))?,
        None => d.stream_min_size.unwrap_or(Some(DEFAULT_STREAM_MIN_SIZE)),
    };
    Ok(Settings {
        cache_max_size,
        stream_min_size,
        passthrough: d.passthrough.unwrap_or(true),
        look_ahead: d.look_ahead.unwrap_or(DEFAULT_LOOK_AHEAD),
        socket: args
            .socket
            .clone()
            .or_else(|| d.socket.clone())
            .unwrap_or_else(megafs_proto::socket::default_socket_path),
        cache_dir: args
            .cache_dir
            .clone()
            .or_else(|| d.cache_dir.clone())
            .unwrap_or_else(|| {
                if is_root() {
                    PathBuf::from("/var/cache/megafs")
                } else {
                    user_dir("XDG_CACHE_HOME", ".cache")
                }
            }),
        log_dir: args
            .log_dir
            .clone()
            .or_else(|| d.log_dir.clone())
            .unwrap_or_else(|| {
                if is_root() {
                    PathBuf::from("/var/log/megafs")
                } else {
                    user_dir("XDG_STATE_HOME", ".local/state")
                }
            }),
        state_dir: args
            .state_dir
            .clone()
            .or_else(|| d.state_dir.clone())
            .unwrap_or_else(|| {
                if is_root() {
                    PathBuf::from("/var/lib/megafs")
                } else {
                    user_dir("XDG_STATE_HOME", ".local/state")
                }
            }),
        log_level: args
            .log_level
            .clone()
            .or_else(|| d.log_level.clone())
            .unwrap_or_else(|| "info".into()),
        request_timeout: args
            .request_timeout
            .map(|s| Duration::from_secs(s.max(1)))
            .or(d.request_timeout)
            .unwrap_or(Duration::from_secs(30)),
        connect_timeout: d.connect_timeout.unwrap_or(Duration::from_secs(5)),
        fetch_timeout: d.fetch_timeout.unwrap_or(Duration::from_secs(600)),
    })
}

/// The default cache limit: a tenth of the filesystem the cache lives on (0, no limit, if
/// its size cannot be learnt).
fn default_cache_limit(dir: &Path) -> u64 {
    sys::filesystem_bytes(dir).unwrap_or(0) / 10
}

/// megafsd(8): a daemon's page is in section 8, where clap_mangen would put it in 1.
fn print_manpage() -> ExitCode {
    use clap::CommandFactory;
    let page = clap_mangen::Man::new(Args::command()).section("8");
    match page.render(&mut std::io::stdout().lock()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("megafsd: cannot write the manual page: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    sys::keep_large_allocations_mapped();
    let args = Args::parse();
    if args.manpage {
        return print_manpage();
    }
    if let Some(point) = &args.probe_mount {
        let dead = megafsd::mounts::probe_is_dead(point);
        return ExitCode::from(if dead {
            megafsd::mounts::PROBE_DEAD as u8
        } else {
            0
        });
    }
    let (config_path, required) = match &args.config {
        Some(path) => (path.clone(), true),
        None => (default_config_path(), false),
    };
    let config = match Config::load(&config_path, required) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("megafsd: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        return print_check(&config_path, &config);
    }
    let settings = match settings(&args, &config) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("megafsd: {e:#}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) =
        megafsd::telemetry::init(args.foreground, &settings.log_dir, &settings.log_level)
    {
        eprintln!("megafsd: {e:#}");
        return ExitCode::FAILURE;
    }
    for warning in config.warnings() {
        warn!("{warning}");
    }
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("megafsd")
        .build()
        .context("starting the runtime")
        .and_then(|runtime| {
            let result = runtime.block_on(run(settings, config, config_path));
            // Whatever still runs (a fetch for a reader that gave up) must not delay the exit.
            runtime.shutdown_timeout(Duration::from_secs(2));
            result
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            eprintln!("megafsd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints what `--check-config` found; exits 2 where a mount would fail, as for a file that
/// does not parse.
fn print_check(path: &Path, config: &Config) -> ExitCode {
    match &config.file {
        Some(file) => println!("{}: valid", file.display()),
        None => println!("{}: absent, using defaults", path.display()),
    }
    for warning in config.warnings() {
        println!("warning: {warning}");
    }
    if config.mounts.is_empty() {
        println!("no mounts configured");
    }
    for m in &config.mounts {
        let source = m.location.describe();
        let at = if m.git_ref.is_empty() {
            String::new()
        } else {
            format!(" @ {}", m.git_ref)
        };
        println!(
            "mount {} at {}: {source}{at}",
            m.name,
            m.mountpoint.display()
        );
    }
    let problems = config.problems();
    for problem in &problems {
        eprintln!("megafsd: {problem}");
    }
    if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

async fn run(settings: Settings, config: Config, config_path: PathBuf) -> anyhow::Result<()> {
    std::fs::create_dir_all(&settings.cache_dir)
        .with_context(|| format!("creating cache {}", settings.cache_dir.display()))?;
    let limit = settings
        .cache_max_size
        .unwrap_or_else(|| default_cache_limit(&settings.cache_dir));
    let store = Arc::new(
        Store::open(&settings.cache_dir, limit)
            .with_context(|| format!("opening cache {}", settings.cache_dir.display()))?,
    );
    let timeouts = Timeouts {
        connect: settings.connect_timeout,
        request: settings.request_timeout,
    };
    let fs_options = FsOptions {
        fetch_timeout: settings.fetch_timeout,
        // A program's read of a file fails within the request timeout in all.
        wait_limit: Some(settings.request_timeout),
        stream_min_size: settings.stream_min_size,
        look_ahead: settings.look_ahead,
        follow_trunk: true,
    };
    let kernel = KernelOptions {
        passthrough: settings.passthrough,
        ..KernelOptions::default()
    };
    let places = Places {
        workspaces: Workspaces::new(&settings.state_dir),
        // Beside the socket, in the daemon's runtime directory: out of users' reach.
        lowers: settings
            .socket
            .parent()
            .unwrap_or(Path::new("/run/megafs"))
            .join("lower"),
        times: settings.state_dir.join("times"),
        records: Records::new(settings.state_dir.join("mounts")),
    };
    let supervisor = Arc::new(Supervisor::new(
        store.clone(),
        timeouts,
        fs_options,
        kernel,
        places,
    ));
    supervisor.set_policy(config.daemon.policy());
    supervisor.set_proxy(config.daemon.proxy.clone());
    let listener = bind_socket(&settings.socket).await?;
    let stale = megafsd::mounts::clean_stale().unwrap_or_else(|error| {
        warn!(%error, "cannot read the mount table to clean stale mounts");
        Vec::new()
    });
    for stale in stale {
        match stale {
            Stale::Cleaned(mount) => warn!(
                mount = %mount.name, mountpoint = %mount.mountpoint.display(),
                "cleaned a stale mount left by a megafsd that is gone (lazy unmount)"
            ),
            Stale::Failed(mount, error) => warn!(
                mount = %mount.name, mountpoint = %mount.mountpoint.display(), %error,
                "cannot check or clean a megafs mount left by an earlier megafsd"
            ),
        }
    }

    let (stop_serving, serving_stopped) = tokio::sync::oneshot::channel::<()>();
    let service = ControlServer::new(ControlService::new(
        supervisor.clone(),
        store.clone(),
        settings.cache_dir.clone(),
        config.file.clone(),
    ));
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), async {
                let _ = serving_stopped.await;
            }),
    );
    info!(
        socket = %settings.socket.display(), cache = %settings.cache_dir.display(),
        cache_limit = limit, "listening"
    );

    supervisor.apply_config(&config.mounts).await;
    supervisor.restore_connected().await;
    let summary = supervisor.summary().await;
    notify::ready(&summary);
    info!(status = %summary, "megafsd ready");

    let background = spawn_background(supervisor.clone(), store.clone());
    wait_for_signals(&supervisor, &config_path, config.file.is_some()).await?;

    notify::stopping();
    info!("stopping: unmounting everything");
    background.abort();
    supervisor.shutdown().await;
    let flushing = store.clone();
    let _ = tokio::task::spawn_blocking(move || flushing.flush()).await;
    let _ = stop_serving.send(());
    match tokio::time::timeout(Duration::from_secs(5), server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => warn!(error = %e, "control socket ended with an error"),
        Ok(Err(e)) => error!(error = %e, "the control socket's task failed"),
        Err(_) => warn!("control clients did not hang up in time"),
    }
    let _ = std::fs::remove_file(&settings.socket);
    info!("stopped");
    Ok(())
}

/// Supervision every second, STATUS= whenever it changes, and watchdog pings while the
/// supervisor answers: all on this runtime, so a wedged runtime misses its pings.
fn spawn_background(supervisor: Arc<Supervisor>, store: Arc<Store>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let watchdog = notify::watchdog_interval();
        let tick = watchdog.map_or(Duration::from_secs(1), |w| w.min(Duration::from_secs(1)));
        let mut interval = tokio::time::interval(tick);
        let mut last_status = String::new();
        let mut heap = HeapTrim::default();
        loop {
            interval.tick().await;
            supervisor.supervise().await;
            let evicting = store.clone();
            let _ = tokio::task::spawn_blocking(move || evicting.evict_to_limit()).await;
            // Not waited for: a flush may take a while where the disk is busy, and the
            // watchdog must not miss a ping for it; one already under way makes this a no-op.
            let flushing = store.clone();
            drop(tokio::task::spawn_blocking(move || flushing.flush_if_due()));
            if heap.due(supervisor.inodes().await) {
                let _ = tokio::task::spawn_blocking(HeapTrim::trim).await;
            }
            if watchdog.is_some() && supervisor.is_responsive().await {
                notify::watchdog();
            }
            let status = supervisor.summary().await;
            if status != last_status {
                notify::status(&status);
                last_status = status;
            }
        }
    })
}

/// When to give freed heap back to the system: glibc keeps what was freed for reuse, so once
/// the kernel forgets the inodes of a walk over a million entries, the daemon would otherwise
/// stay at its peak for good.
#[derive(Default)]
struct HeapTrim {
    /// The most inodes held since the last trim.
    high: usize,
}

impl HeapTrim {
    /// Inodes to be dropped before a trim is worth its walk over the heap.
    const STEP: usize = 100_000;

    fn due(&mut self, inodes: usize) -> bool {
        self.high = self.high.max(inodes);
        if self.high - inodes < Self::STEP {
            return false;
        }
        self.high = inodes;
        true
    }

    fn trim() {
        sys::trim_heap();
    }
}

/// Runs until SIGTERM or SIGINT; reloads the configuration on SIGHUP.
async fn wait_for_signals(
    supervisor: &Arc<Supervisor>,
    config_path: &Path,
    config_existed: bool,
) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM received"); return Ok(()); }
            _ = int.recv() => { info!("SIGINT received"); return Ok(()); }
            _ = hup.recv() => {
                notify::reloading();
                info!(config = %config_path.display(), "SIGHUP: reloading the configuration");
                match Config::load(config_path, config_existed) {
                    Ok(config) => {
                        for warning in config.warnings() {
                            warn!("{warning}");
                        }
                        supervisor.set_policy(config.daemon.policy());
                        supervisor.set_proxy(config.daemon.proxy.clone());
                        supervisor.apply_config(&config.mounts).await;
                        info!(
                            "configuration reloaded (access rules and mounts now; other daemon \
                             settings at restart)"
                        );
                    }
                    Err(e) => error!(error = %e, "invalid configuration; keeping the old one"),
                }
                notify::ready(&supervisor.summary().await);
            }
        }
    }
}

/// Binds the control socket, mode 0600. A socket file nobody answers on is a predecessor's
/// leftover and is replaced; one that answers means another daemon is running.
async fn bind_socket(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating socket directory {}", dir.display()))?;
            if !is_root() {
                // A directory we made for a per-user socket is that user's alone.
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                    .with_context(|| format!("restricting {}", dir.display()))?;
            }
        }
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
    // The system daemon's socket is every user's: each request is authorized by the caller's
    // uid (see `access`). A per-user daemon's is its user's alone.
    let mode = if is_root() { 0o666 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of control socket {}", path.display()))?;
    Ok(listener)
}
