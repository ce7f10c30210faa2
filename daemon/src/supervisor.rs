//! The table of mounts and their lifecycle: connect (validate, resolve, mount), disconnect,
//! status, and unmounting everything at shutdown.

use std::collections::HashSet;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuser::{BackgroundSession, MountOption, SessionACL};
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

pub use crate::access::Caller;
use crate::access::{Access, Policy, Refusal};
use crate::config::MountConfig;
use crate::fs::{FsError, FsOptions, KernelCache, MountFs};
use crate::fuse::{FuseAdapter, ReadPath};
use crate::mounts;
use crate::source::git::{Credentials, GitSource};
use crate::source::http::display_url;
use crate::source::local::LocalSource;
use crate::source::mega::MegaSource;
use crate::source::{Source, SourceError};
use crate::store::Store;

/// What a client asks to mount.
#[derive(Clone, Debug)]
pub struct ConnectSpec {
    pub repo: String,
    pub mega_url: String,
    pub mountpoint: PathBuf,
    pub git_ref: String,
    pub name: String,
    /// Let users other than the owner in (for users, where the configuration allows).
    pub allow_other: bool,
    /// Git server credentials from the configuration.
    pub credentials: Option<Credentials>,
}

impl From<&MountConfig> for ConnectSpec {
    fn from(c: &MountConfig) -> Self {
        ConnectSpec {
            repo: c.repo.clone(),
            mega_url: c.mega_url.clone(),
            mountpoint: c.mountpoint.clone(),
            git_ref: c.git_ref.clone(),
            name: c.name.clone(),
            allow_other: c.allow_other,
            credentials: c.password.as_ref().map(|p| Credentials {
                user: c.username.clone().unwrap_or_else(|| "git".into()),
                secret: p.0.clone(),
            }),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("{0}")]
    Refused(#[from] Refusal),
    #[error("mountpoint {0} does not exist (create it first)")]
    MountpointMissing(PathBuf),
    #[error("mountpoint {0} is not a directory")]
    MountpointNotDir(PathBuf),
    #[error("mountpoint {0} is not empty")]
    MountpointNotEmpty(PathBuf),
    #[error("{0} is already a mount point")]
    AlreadyMounted(PathBuf),
    #[error("a mount named {0:?} already exists; choose another name with --name")]
    NameInUse(String),
    #[error("no mount is named {0:?} or mounted there")]
    UnknownMount(String),
    #[error("{0} is busy (files are open in it); close them, or disconnect with --force")]
    Busy(PathBuf),
    #[error("{0}")]
    Source(#[from] SourceError),
    #[error("{0}")]
    Fs(FsError),
    #[error("timed out after {0:?} waiting for the source")]
    Timeout(Duration),
    #[error("mounting {path}: {source}")]
    Mount {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("unmounting {path}: {source}")]
    Unmount {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl From<FsError> for SupervisorError {
    fn from(e: FsError) -> Self {
        // Surface source errors (unreachable, not found, unknown ref) as themselves.
        match e {
            FsError::Source(source) => match Arc::try_unwrap(source) {
                Ok(source) => SupervisorError::Source(source),
                Err(shared) => SupervisorError::Fs(FsError::Source(shared)),
            },
            other => SupervisorError::Fs(other),
        }
    }
}

/// A mount as `status` reports it.
#[derive(Clone, Debug)]
pub struct MountStatus {
    pub name: String,
    pub mountpoint: PathBuf,
    pub source: String,
    pub repo: String,
    pub git_ref: String,
    pub commit: String,
    pub commit_time: i64,
    pub state: &'static str,
    pub fetched_objects: u64,
    pub fetched_bytes: u64,
    pub cache_hits: u64,
    pub owner_uid: u32,
    pub from_config: bool,
    /// Why a mount is retrying or lost.
    pub error: String,
    pub refreshed_at: i64,
    /// How cached files are read: "passthrough", "daemon", or "" if not mounted.
    pub read_path: &'static str,
}

struct MountEntry {
    name: String,
    mountpoint: PathBuf,
    repo: String,
    git_ref: String,
    owner_uid: u32,
    /// The configuration entry it was mounted from, if any.
    config: Option<MountConfig>,
    fs: Arc<MountFs>,
    session: BackgroundSession,
    /// Tells the kernel which cached entries a refresh made stale.
    notifier: fuser::Notifier,
    /// How the kernel reads its cached files (told by the FUSE adapter).
    read_path: Arc<ReadPath>,
    /// Unix seconds of the last refresh, 0 for none.
    refreshed_at: Arc<std::sync::atomic::AtomicI64>,
    /// When a configured `refresh_interval` next falls due.
    next_refresh: Option<Instant>,
}

/// A configured mount that is not mounted now, and when to try again.
struct Retrying {
    config: MountConfig,
    reason: String,
    attempts: u32,
    next_try: Instant,
    /// An attempt is running now.
    in_flight: bool,
}

impl Retrying {
    fn status(&self) -> MountStatus {
        MountStatus {
            name: self.config.name.clone(),
            mountpoint: self.config.mountpoint.clone(),
            source: describe_config(&self.config),
            repo: self.config.repo.clone(),
            git_ref: self.config.git_ref.clone(),
            commit: String::new(),
            commit_time: 0,
            state: "retrying",
            fetched_objects: 0,
            fetched_bytes: 0,
            cache_hits: 0,
            owner_uid: 0,
            from_config: true,
            error: self.reason.clone(),
            refreshed_at: 0,
            read_path: "",
        }
    }
}

fn describe_config(c: &MountConfig) -> String {
    if c.repo.starts_with("http://") || c.repo.starts_with("https://") {
        format!("git {}", display_url(&c.repo))
    } else if c.mega_url.is_empty() {
        format!("local {}", c.repo)
    } else {
        format!(
            "mega {} {}",
            crate::source::http::display_url(&c.mega_url),
            c.repo
        )
    }
}

/// How long to wait before attempt `attempts + 1` of a failed configured mount.
fn backoff(attempts: u32) -> Duration {
    Duration::from_secs(1u64 << attempts.min(6)).min(Duration::from_secs(60))
}

impl MountEntry {
    fn status(&self) -> MountStatus {
        use std::sync::atomic::Ordering::Relaxed;
        let stats = self.fs.stats();
        MountStatus {
            name: self.name.clone(),
            mountpoint: self.mountpoint.clone(),
            source: self.fs.source_description(),
            repo: self.repo.clone(),
            git_ref: self.git_ref.clone(),
            commit: self.fs.snapshot().commit.to_hex(),
            commit_time: self.fs.snapshot().commit_time,
            // The session thread ends when the kernel drops the mount behind our back.
            state: if self.session.guard.is_finished() {
                "lost"
            } else if self.fs.is_offline() {
                "offline"
            } else {
                "mounted"
            },
            fetched_objects: stats.fetched_objects.load(Relaxed),
            fetched_bytes: stats.fetched_bytes.load(Relaxed),
            cache_hits: stats.cache_hits.load(Relaxed),
            owner_uid: self.owner_uid,
            from_config: self.config.is_some(),
            error: String::new(),
            refreshed_at: self.refreshed_at.load(std::sync::atomic::Ordering::Relaxed),
            read_path: self.read_path.describe(),
        }
    }
}

#[derive(Default)]
struct Table {
    mounts: Vec<MountEntry>,
    retrying: Vec<Retrying>,
    /// Run-time mounts whose filesystem went away without a disconnect.
    lost: Vec<MountStatus>,
    /// Names and mountpoints of connects under way, so two cannot race for one.
    pending_names: HashSet<String>,
    pending_points: HashSet<PathBuf>,
}

pub struct Supervisor {
    store: Arc<Store>,
    table: Mutex<Table>,
    timeouts: Timeouts,
    fs_options: FsOptions,
    kernel: KernelOptions,
    /// Who may do what; replaced when the configuration is reloaded.
    access: std::sync::RwLock<Access>,
}

/// How mounts use the kernel.
#[derive(Clone, Copy, Debug)]
pub struct KernelOptions {
    /// Open cached files in passthrough mode where the kernel allows.
    pub passthrough: bool,
    /// Threads reading requests from /dev/fuse, per mount.
    pub fuse_threads: usize,
    /// The mount's read-ahead, raised after mounting (needs root).
    pub read_ahead_kb: u32,
}

impl Default for KernelOptions {
    fn default() -> Self {
        KernelOptions {
            passthrough: true,
            fuse_threads: 4,
            read_ahead_kb: 1024,
        }
    }
}

/// How long the daemon waits on servers.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// Establishing a connection.
    pub connect: Duration,
    /// One request (also the longest any filesystem request waits).
    pub request: Duration,
}

/// A mount's default name: the last component of its repository, without `.git`.
pub fn default_name(repo: &str) -> String {
    let last = repo
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default();
    last.strip_suffix(".git").unwrap_or(last).to_string()
}

impl Supervisor {
    /// `fs_options` hold for every mount; its fetch timeout is for a whole fetch, retries
    /// included, which goes on (filling the cache) after the request that started it gave up.
    pub fn new(
        store: Arc<Store>,
        timeouts: Timeouts,
        fs_options: FsOptions,
        kernel: KernelOptions,
    ) -> Self {
        Supervisor {
            store,
            table: Mutex::new(Table::default()),
            timeouts,
            fs_options,
            kernel,
            access: std::sync::RwLock::new(Access::new(Policy::default(), daemon_identity().uid)),
        }
    }

    /// The access rules the configuration gives (at start, and on every reload).
    pub fn set_policy(&self, policy: Policy) {
        *self.access.write().unwrap_or_else(|p| p.into_inner()) =
            Access::new(policy, daemon_identity().uid);
    }

    pub fn access(&self) -> Access {
        self.access
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A run-time mount, asked for over the socket. It runs to the end as its own task even
    /// if the client hangs up, so a half-done connect never leaves its name or mountpoint
    /// reserved.
    pub async fn connect(
        self: &Arc<Self>,
        spec: ConnectSpec,
        caller: Caller,
    ) -> Result<MountStatus, SupervisorError> {
        let this = Arc::clone(self);
        tokio::spawn(async move { this.connect_as(spec, caller, None).await })
            .await
            .map_err(|e| SupervisorError::Invalid(format!("connect task failed: {e}")))?
    }

    async fn connect_as(
        &self,
        spec: ConnectSpec,
        caller: Caller,
        config: Option<MountConfig>,
    ) -> Result<MountStatus, SupervisorError> {
        let name = if spec.name.is_empty() {
            default_name(&spec.repo)
        } else {
            spec.name.clone()
        };
        if name.is_empty() || name.contains('/') {
            return Err(SupervisorError::Invalid(format!(
                "bad mount name {name:?}: give one with --name"
            )));
        }
        let access = self.access();
        access.may_mount_repo(&caller, &spec.repo, &spec.mega_url)?;
        if spec.allow_other {
            access.may_allow_other(&caller)?;
        }
        let requested = spec.mountpoint.clone();
        let (mountpoint, dir) =
            tokio::task::spawn_blocking(move || check_mountpoint(&requested, &caller, &access))
                .await
                .map_err(|e| SupervisorError::Invalid(format!("checking the mountpoint: {e}")))??;
        self.reserve(&name, &mountpoint, config.is_some()).await?;
        let result = self.mount(&spec, &name, &mountpoint, dir, caller).await;
        let mut table = self.table.lock().await;
        table.pending_names.remove(&name);
        table.pending_points.remove(&mountpoint);
        let mut entry = result?;
        if let Some(config) = &config {
            table.retrying.retain(|r| r.config.name != config.name);
            entry.next_refresh = config.refresh_interval.map(|i| Instant::now() + i);
        }
        entry.config = config;
        let status = entry.status();
        info!(
            mount = %name, repo = %display_url(&spec.repo), commit = %status.commit,
            mountpoint = %mountpoint.display(), uid = caller.uid, "connected"
        );
        table.mounts.push(entry);
        Ok(status)
    }

    async fn reserve(
        &self,
        name: &str,
        mountpoint: &Path,
        for_config: bool,
    ) -> Result<(), SupervisorError> {
        let mut table = self.table.lock().await;
        // A configured mount waiting for a retry holds its name, except against itself.
        let taken_by_config = !for_config && table.retrying.iter().any(|r| r.config.name == name);
        if table.pending_names.contains(name)
            || table.mounts.iter().any(|m| m.name == name)
            || taken_by_config
        {
            return Err(SupervisorError::NameInUse(name.to_string()));
        }
        if table.pending_points.contains(mountpoint)
            || table.mounts.iter().any(|m| m.mountpoint == mountpoint)
        {
            return Err(SupervisorError::AlreadyMounted(mountpoint.to_path_buf()));
        }
        table.pending_names.insert(name.to_string());
        table.pending_points.insert(mountpoint.to_path_buf());
        Ok(())
    }

    async fn mount(
        &self,
        spec: &ConnectSpec,
        name: &str,
        mountpoint: &Path,
        dir: OwnedFd,
        caller: Caller,
    ) -> Result<MountEntry, SupervisorError> {
        let source = self.make_source(spec)?;
        let open = MountFs::open(
            source,
            self.store.clone(),
            (caller.uid, caller.gid),
            self.fs_options,
        );
        let fs = tokio::time::timeout(self.timeouts.request, open)
            .await
            .map_err(|_| SupervisorError::Timeout(self.timeouts.request))??;
        let adapter = FuseAdapter::new(
            fs.clone(),
            tokio::runtime::Handle::current(),
            self.timeouts.request,
            name.to_string(),
            // Backing files need CAP_SYS_ADMIN: a per-user daemon reads through itself.
            self.kernel.passthrough && is_root(),
        );
        let read_path = adapter.read_path();
        let mut config = fuser::Config::default();
        // Several threads take requests, so cached answers never queue behind others; each
        // gets its own /dev/fuse descriptor where the daemon may open one (as root).
        config.n_threads = Some(self.kernel.fuse_threads.max(1));
        config.clone_fd = is_root();
        config.mount_options = vec![
            MountOption::FSName(format!("megafs:{name}")),
            MountOption::Subtype("megafs".into()),
            MountOption::RO,
            MountOption::NoSuid,
            MountOption::NoDev,
            MountOption::DefaultPermissions,
        ];
        if spec.allow_other {
            // The kernel lets only the owner in unless others are allowed; the permission
            // bits (default_permissions) still apply.
            config.acl = SessionACL::All;
        }
        let point = mountpoint.to_path_buf();
        let fsname = format!("megafs:{name}");
        let read_ahead_kb = self.kernel.read_ahead_kb;
        let owner = (caller.uid, caller.gid);
        let session = tokio::task::spawn_blocking(move || {
            let session = mount_session(adapter, &point, &dir, owner, config, &fsname)?;
            if is_root() {
                if let Err(e) = mounts::set_read_ahead(&point, read_ahead_kb) {
                    debug!(error = %e, "cannot raise the mount's read-ahead");
                }
            }
            Ok::<_, std::io::Error>(session)
        })
        .await
        .map_err(|e| SupervisorError::Mount {
            path: mountpoint.to_path_buf(),
            source: std::io::Error::other(e),
        })?
        .map_err(|source| SupervisorError::Mount {
            path: mountpoint.to_path_buf(),
            source,
        })?;
        fs.set_kernel_cache(Box::new(KernelNotifier(session.notifier())));
        Ok(MountEntry {
            name: name.to_string(),
            mountpoint: mountpoint.to_path_buf(),
            repo: spec.repo.clone(),
            git_ref: spec.git_ref.clone(),
            owner_uid: caller.uid,
            config: None,
            fs,
            notifier: session.notifier(),
            session,
            read_path,
            refreshed_at: Arc::new(std::sync::atomic::AtomicI64::new(0)),
            next_refresh: None,
        })
    }

    fn make_source(&self, spec: &ConnectSpec) -> Result<Arc<dyn Source>, SupervisorError> {
        if !spec.mega_url.is_empty() {
            if !spec.git_ref.is_empty() {
                return Err(SupervisorError::Invalid(
                    "a Mega mount shows the current trunk; --ref is not supported for Mega".into(),
                ));
            }
            return Ok(Arc::new(MegaSource::new(
                &spec.mega_url,
                &spec.repo,
                self.timeouts.request,
                self.timeouts.connect,
            )?));
        }
        if spec.repo.starts_with("http://") || spec.repo.starts_with("https://") {
            return Ok(Arc::new(GitSource::new(
                &spec.repo,
                &spec.git_ref,
                self.timeouts.request,
                self.timeouts.connect,
                spec.credentials.clone(),
            )?));
        }
        let location = spec.repo.strip_prefix("file://").unwrap_or(&spec.repo);
        if !Path::new(location).is_absolute() {
            return Err(SupervisorError::Invalid(format!(
                "local repository path {location:?} must be absolute"
            )));
        }
        Ok(Arc::new(LocalSource::open(&spec.repo, &spec.git_ref)?))
    }

    pub async fn disconnect(
        &self,
        target: &str,
        force: bool,
        caller: Caller,
    ) -> Result<MountStatus, SupervisorError> {
        let access = self.access();
        // Resolving a path may touch one of our own mounts: not on an async worker.
        let as_path = PathBuf::from(target);
        let canonical = if as_path.is_absolute() {
            tokio::task::spawn_blocking(move || std::fs::canonicalize(as_path).ok())
                .await
                .ok()
                .flatten()
        } else {
            None
        };
        let entry = {
            let mut table = self.table.lock().await;
            if let Some(i) = table.lost.iter().position(|l| l.name == target) {
                // Forget a lost mount: there is nothing left to unmount.
                access.may_manage(&caller, target, table.lost[i].owner_uid)?;
                let lost = table.lost.swap_remove(i);
                return Ok(MountStatus {
                    state: "unmounted",
                    ..lost
                });
            }
            let index = find_target(&table.mounts, target, canonical.as_deref())?;
            let entry = &table.mounts[index];
            access.may_manage(&caller, &entry.name, entry.owner_uid)?;
            if !entry.session.guard.is_finished() {
                let point = entry.mountpoint.clone();
                tokio::task::spawn_blocking(move || unmount_checked(&point, force))
                    .await
                    .map_err(|e| SupervisorError::Invalid(format!("unmount task: {e}")))??;
            }
            table.mounts.swap_remove(index)
        };
        let status = entry.status();
        info!(
            mount = %entry.name, mountpoint = %entry.mountpoint.display(), force,
            uid = caller.uid, pid = caller.pid, "disconnected"
        );
        // After a lazy unmount the session lives until the last open file closes: never make
        // the caller (or the daemon's exit) wait for that.
        join_session_detached(entry.name.clone(), entry.session);
        Ok(MountStatus {
            state: "unmounted",
            ..status
        })
    }

    /// The filesystem of a mount, for work on it that is not the supervisor's (prefetch).
    pub async fn mount_fs(
        &self,
        target: &str,
        caller: Caller,
    ) -> Result<Arc<MountFs>, SupervisorError> {
        let table = self.table.lock().await;
        let index = find_target(&table.mounts, target, None)?;
        let entry = &table.mounts[index];
        self.access()
            .may_manage(&caller, &entry.name, entry.owner_uid)?;
        Ok(entry.fs.clone())
    }

    /// Moves a mount to the newest commit of what it follows; returns the commit before and
    /// the mount as it is now.
    pub async fn refresh(
        &self,
        target: &str,
        caller: Caller,
    ) -> Result<(String, MountStatus), SupervisorError> {
        let (fs, notifier, refreshed_at) = {
            let table = self.table.lock().await;
            let index = find_target(&table.mounts, target, None)?;
            let entry = &table.mounts[index];
            self.access()
                .may_manage(&caller, &entry.name, entry.owner_uid)?;
            (
                entry.fs.clone(),
                entry.notifier.clone(),
                entry.refreshed_at.clone(),
            )
        };
        let before = fs.snapshot().commit.to_hex();
        let refresh = fs.refresh();
        let stale = tokio::time::timeout(self.timeouts.request, refresh)
            .await
            .map_err(|_| SupervisorError::Timeout(self.timeouts.request))??;
        // Asked for over the socket, not inside a filesystem request: the caller may wait
        // until the kernel has dropped what is stale, so its next look sees the new commit.
        if let Some(names) = stale {
            let _ = tokio::task::spawn_blocking(move || invalidate_now(&notifier, names)).await;
        }
        refreshed_at.store(unix_now(), std::sync::atomic::Ordering::Relaxed);
        let table = self.table.lock().await;
        let index = find_target(&table.mounts, target, None)?;
        Ok((before, table.mounts[index].status()))
    }

    /// Every mount `caller` may see: all of them for root, a user's own for a user.
    pub async fn status(&self, caller: Caller) -> Vec<MountStatus> {
        let access = self.access();
        let table = self.table.lock().await;
        let mut all: Vec<_> = table.mounts.iter().map(MountEntry::status).collect();
        all.extend(table.retrying.iter().map(Retrying::status));
        all.extend(table.lost.iter().cloned());
        all.retain(|m| access.may_manage(&caller, &m.name, m.owner_uid).is_ok());
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Brings the configured mounts in line with `wanted`: mounts new entries, unmounts
    /// removed ones, remounts changed ones and leaves the rest alone. Returns once every new
    /// entry has been tried once; failures are retried with backoff by `supervise`.
    pub async fn apply_config(self: &Arc<Self>, wanted: &[MountConfig]) {
        let (to_unmount, to_mount) = {
            let mut table = self.table.lock().await;
            let unwanted = |c: &MountConfig| !wanted.contains(c);
            table.retrying.retain(|r| !unwanted(&r.config));
            let mut to_unmount = Vec::new();
            let mut index = 0;
            while index < table.mounts.len() {
                if table.mounts[index].config.as_ref().is_some_and(unwanted) {
                    to_unmount.push(table.mounts.swap_remove(index));
                } else {
                    index += 1;
                }
            }
            let present = |c: &MountConfig| {
                table.mounts.iter().any(|m| m.config.as_ref() == Some(c))
                    || table.retrying.iter().any(|r| &r.config == c)
            };
            let to_mount: Vec<MountConfig> =
                wanted.iter().filter(|c| !present(c)).cloned().collect();
            (to_unmount, to_mount)
        };
        for entry in to_unmount {
            info!(mount = %entry.name, "no longer configured as it was; unmounting");
            release(entry).await;
        }
        let attempts = to_mount.into_iter().map(|config| {
            let this = Arc::clone(self);
            async move { this.try_configured(config, 0).await }
        });
        futures::future::join_all(attempts).await;
    }

    /// One attempt at a configured mount; on failure it joins the retry list.
    async fn try_configured(&self, config: MountConfig, attempts: u32) {
        if let Err(e) = prepare_configured_mountpoint(&config.mountpoint) {
            return self.retry_later(config, attempts, e.to_string()).await;
        }
        let caller = daemon_identity();
        let spec = ConnectSpec::from(&config);
        match self.connect_as(spec, caller, Some(config.clone())).await {
            Ok(_) => {}
            Err(e) => self.retry_later(config, attempts, e.to_string()).await,
        }
    }

    async fn retry_later(&self, config: MountConfig, attempts: u32, reason: String) {
        let wait = backoff(attempts);
        warn!(
            mount = %config.name, repo = %display_url(&config.repo), error = %reason,
            retry_in = ?wait, "configured mount failed"
        );
        let mut table = self.table.lock().await;
        table.retrying.retain(|r| r.config.name != config.name);
        table.retrying.push(Retrying {
            config,
            reason,
            attempts: attempts + 1,
            next_try: Instant::now() + wait,
            in_flight: false,
        });
    }

    /// Notices mounts that went away without a disconnect and retries failed configured
    /// mounts that are due. Called every second or so.
    pub async fn supervise(self: &Arc<Self>) {
        let due = {
            let mut table = self.table.lock().await;
            let mut index = 0;
            while index < table.mounts.len() {
                if !table.mounts[index].session.guard.is_finished() {
                    index += 1;
                    continue;
                }
                let entry = table.mounts.swap_remove(index);
                let reason = "the filesystem was unmounted behind the daemon's back".to_string();
                warn!(mount = %entry.name, mountpoint = %entry.mountpoint.display(), "{reason}");
                match entry.config.clone() {
                    Some(config) => table.retrying.push(Retrying {
                        config,
                        reason,
                        attempts: 0,
                        next_try: Instant::now(),
                        in_flight: false,
                    }),
                    None => {
                        let mut status = entry.status();
                        status.state = "lost";
                        status.error = reason;
                        table.lost.push(status);
                    }
                }
            }
            let now = Instant::now();
            for entry in table.mounts.iter_mut() {
                let interval = entry.config.as_ref().and_then(|c| c.refresh_interval);
                if let (Some(interval), Some(next)) = (interval, entry.next_refresh) {
                    if next <= now {
                        entry.next_refresh = Some(now + interval);
                        spawn_refresh(entry);
                    }
                }
            }
            let mut due = Vec::new();
            for retry in table.retrying.iter_mut() {
                if !retry.in_flight && retry.next_try <= now {
                    retry.in_flight = true;
                    due.push((retry.config.clone(), retry.attempts));
                }
            }
            due
        };
        for (config, attempts) in due {
            let this = Arc::clone(self);
            tokio::spawn(async move {
                info!(mount = %config.name, attempt = attempts + 1, "retrying configured mount");
                this.try_configured(config, attempts).await;
            });
        }
    }

    /// One line for systemd's STATUS=, e.g. "2 mounts ready, 1 retrying: rg (server unreachable)".
    /// Inodes the daemon holds, over every mount.
    pub async fn inodes(&self) -> usize {
        let table = self.table.lock().await;
        table.mounts.iter().map(|m| m.fs.inode_count()).sum()
    }

    pub async fn summary(&self) -> String {
        let table = self.table.lock().await;
        let mut text = format!(
            "{} mount{} ready",
            table.mounts.len(),
            if table.mounts.len() == 1 { "" } else { "s" }
        );
        if !table.retrying.is_empty() {
            let names: Vec<String> = table
                .retrying
                .iter()
                .map(|r| format!("{} ({})", r.config.name, short_reason(&r.reason)))
                .collect();
            text.push_str(&format!(", {} retrying: {}", names.len(), names.join(", ")));
        }
        if !table.lost.is_empty() {
            text.push_str(&format!(", {} lost", table.lost.len()));
        }
        text
    }

    /// Whether the supervisor answers promptly (for the watchdog).
    pub async fn is_responsive(&self) -> bool {
        tokio::time::timeout(Duration::from_secs(2), self.table.lock())
            .await
            .is_ok()
    }

    /// Unmounts everything: cleanly where possible, lazily where something holds the mount.
    pub async fn shutdown(&self) {
        let entries = {
            let mut table = self.table.lock().await;
            table.retrying.clear();
            std::mem::take(&mut table.mounts)
        };
        for entry in entries {
            release(entry).await;
        }
    }
}

/// Which mount `target` names: a name first, then a mountpoint, then a repository, then the
/// default name of a repository path; an ambiguous last resort is refused.
fn find_target(
    mounts: &[MountEntry],
    target: &str,
    canonical: Option<&Path>,
) -> Result<usize, SupervisorError> {
    let unknown = || SupervisorError::UnknownMount(target.to_string());
    if let Some(i) = mounts.iter().position(|m| m.name == target) {
        return Ok(i);
    }
    let path = Path::new(target);
    if let Some(i) = mounts
        .iter()
        .position(|m| m.mountpoint == path || Some(m.mountpoint.as_path()) == canonical)
    {
        return Ok(i);
    }
    if let Some(i) = mounts.iter().position(|m| m.repo == target) {
        return Ok(i);
    }
    let by_default: Vec<usize> = (0..mounts.len())
        .filter(|&i| mounts[i].name == default_name(target))
        .collect();
    // Not for a path that exists: `disconnect ./rg` means the mount at ./rg, not one named rg.
    match by_default[..] {
        [i] if canonical.is_none() => Ok(i),
        _ => Err(unknown()),
    }
}

/// Unmounts an entry: cleanly where possible, lazily (naming who holds it) where busy.
async fn release(entry: MountEntry) {
    if !entry.session.guard.is_finished() {
        let point = entry.mountpoint.clone();
        let clean = tokio::task::spawn_blocking(move || mounts::unmount_patiently(&point, false))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        if let Err(e) = clean {
            let holders = mounts::holders(&entry.mountpoint);
            warn!(
                mount = %entry.name, mountpoint = %entry.mountpoint.display(), error = %e,
                holders = %holders, "mount is busy; detaching it lazily"
            );
            if let Err(e) = mounts::unmount(&entry.mountpoint, true) {
                warn!(mount = %entry.name, error = %e, "lazy unmount failed");
            }
            // Its session ends when the last open file closes, or when we exit.
            join_session_detached(entry.name.clone(), entry.session);
            return;
        }
    }
    info!(mount = %entry.name, mountpoint = %entry.mountpoint.display(), "unmounted");
    join_session(entry.session).await;
}

/// The daemon's own uid and gid: configured mounts belong to whoever runs the daemon.
fn daemon_identity() -> Caller {
    // SAFETY: getuid and getgid have no preconditions.
    unsafe {
        Caller {
            uid: libc::getuid(),
            gid: libc::getgid(),
            pid: 0,
        }
    }
}

/// A configured mountpoint that does not exist is created; its parent must exist.
fn prepare_configured_mountpoint(path: &Path) -> Result<(), SupervisorError> {
    match std::fs::create_dir(path) {
        Ok(()) => {
            info!(mountpoint = %path.display(), "created configured mountpoint");
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(SupervisorError::Invalid(format!(
                "cannot create mountpoint {}: its parent does not exist",
                path.display()
            )))
        }
        // A dead FUSE mount left there answers ENOTCONN; check_mountpoint deals with it.
        Err(_) => Ok(()),
    }
}

/// The first line of an error, shortened for a one-line status.
fn short_reason(reason: &str) -> String {
    let line = reason.lines().next().unwrap_or_default();
    if line.chars().count() > 60 {
        format!("{}…", line.chars().take(60).collect::<String>())
    } else {
        line.to_string()
    }
}

fn unmount_checked(mountpoint: &Path, force: bool) -> Result<(), SupervisorError> {
    mounts::unmount_patiently(mountpoint, force).map_err(|source| {
        if source.raw_os_error() == Some(libc::EBUSY) {
            SupervisorError::Busy(mountpoint.to_path_buf())
        } else {
            SupervisorError::Unmount {
                path: mountpoint.to_path_buf(),
                source,
            }
        }
    })
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Mounts and starts the FUSE session: directly as root, else through fusermount3 (which
/// also works where /dev/fuse is not open to users).
fn mount_session(
    adapter: FuseAdapter,
    point: &Path,
    dir: &OwnedFd,
    owner: (u32, u32),
    config: fuser::Config,
    fsname: &str,
) -> std::io::Result<BackgroundSession> {
    if is_root() {
        // Onto the directory checked, for its owner: the kernel keeps everyone else out
        // (unless allowed), so fuser need not check callers itself.
        let allow_other = config.acl != SessionACL::Owner;
        let fd = mounts::mount_fuse(dir, fsname, owner, allow_other)?;
        return fuser::Session::from_fd(adapter, fd, SessionACL::All, config)
            .and_then(|session| session.spawn())
            .inspect_err(|_| {
                let _ = mounts::unmount(point, true);
            });
    }
    let mut options = format!("ro,nosuid,nodev,default_permissions,fsname={fsname},subtype=megafs");
    if config.acl != SessionACL::Owner {
        options.push_str(",allow_other");
    }
    let fd = mounts::fusermount(point, &options)?;
    let acl = config.acl;
    fuser::Session::from_fd(adapter, fd, acl, config)?.spawn()
}

/// A mount's kernel caches, told what to forget on threads of their own: the kernel may need
/// locks that a request in flight holds.
struct KernelNotifier(fuser::Notifier);

impl KernelCache for KernelNotifier {
    fn stale_root_entries(&self, names: Vec<Vec<u8>>) {
        let notifier = self.0.clone();
        on_a_thread(move || invalidate_now(&notifier, names));
    }

    fn stale_pages(&self, ino: u64) {
        let notifier = self.0.clone();
        on_a_thread(move || {
            let _ = notifier.inval_inode(fuser::INodeNo(ino), 0, 0);
        });
    }
}

fn on_a_thread(work: impl FnOnce() + Send + 'static) {
    let spawned = std::thread::Builder::new()
        .name("megafs-inval".into())
        .spawn(work);
    if let Err(e) = spawned {
        warn!(error = %e, "cannot start a thread to invalidate kernel caches");
    }
}

fn invalidate_now(notifier: &fuser::Notifier, names: Vec<Vec<u8>>) {
    let root = fuser::INodeNo(crate::fs::ROOT_INO);
    for name in names {
        let _ = notifier.inval_entry(root, std::ffi::OsStr::from_bytes(&name));
    }
    let _ = notifier.inval_inode(root, 0, 0);
}

/// A periodic refresh of a configured mount, in the background.
fn spawn_refresh(entry: &MountEntry) {
    let (fs, name, refreshed_at) = (
        entry.fs.clone(),
        entry.name.clone(),
        entry.refreshed_at.clone(),
    );
    tokio::spawn(async move {
        match fs.refresh().await {
            Ok(_) => refreshed_at.store(unix_now(), std::sync::atomic::Ordering::Relaxed),
            Err(e) => warn!(mount = %name, error = %e, "periodic refresh failed"),
        }
    });
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Lets a session end in its own time, on a plain thread (not the runtime's blocking pool,
/// which the daemon would wait for at exit).
fn join_session_detached(name: String, session: BackgroundSession) {
    let spawned = std::thread::Builder::new()
        .name("megafs-join".into())
        .spawn(move || match session.join() {
            Ok(()) => info!(mount = %name, "detached session ended"),
            Err(e) => warn!(mount = %name, error = %e, "detached session ended with an error"),
        });
    if let Err(e) = spawned {
        warn!(error = %e, "cannot start a thread to wait for a detached session");
    }
}

/// Waits for a session's FUSE thread to finish once its mount is gone.
async fn join_session(session: BackgroundSession) {
    match tokio::task::spawn_blocking(move || session.join()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "FUSE session ended with an error"),
        Err(e) => warn!(error = %e, "FUSE session thread panicked"),
    }
}

/// Checks and opens a mountpoint for `caller`: an existing, empty directory, not a mount point,
/// that the access rules let `caller` use. Returns its real path and a descriptor of it, which
/// the mount goes onto (so what was checked is what gets mounted on).
fn check_mountpoint(
    path: &Path,
    caller: &Caller,
    access: &Access,
) -> Result<(PathBuf, OwnedFd), SupervisorError> {
    if !path.is_absolute() {
        return Err(SupervisorError::Invalid(format!(
            "mountpoint {} must be an absolute path",
            path.display()
        )));
    }
    let plain = access.check_mountpoint_path(caller, path)?;
    let admin = access.is_admin(caller);
    let dir = mounts::open_dir(&plain, !admin).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT) => SupervisorError::MountpointMissing(path.to_path_buf()),
        Some(libc::ENOTDIR) => SupervisorError::MountpointNotDir(path.to_path_buf()),
        Some(libc::ELOOP) if !admin => SupervisorError::Refused(Refusal {
            rule: "no-symlinks",
            reason: format!(
                "{} has a symlink on the way; give the path it leads to",
                path.display()
            ),
        }),
        _ => SupervisorError::Invalid(format!("cannot use mountpoint {}: {e}", path.display())),
    })?;
    let via_fd = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    let meta = std::fs::metadata(&via_fd).map_err(|e| {
        SupervisorError::Invalid(format!("cannot use mountpoint {}: {e}", path.display()))
    })?;
    access.check_mountpoint_owner(caller, &plain, meta.uid(), meta.mode())?;
    let canonical = std::fs::read_link(&via_fd).map_err(|e| {
        SupervisorError::Invalid(format!("cannot resolve mountpoint {}: {e}", path.display()))
    })?;
    if mounts::is_mount_point(&canonical) {
        return Err(SupervisorError::AlreadyMounted(canonical));
    }
    let mut entries = std::fs::read_dir(&via_fd).map_err(|e| {
        SupervisorError::Invalid(format!("cannot read mountpoint {}: {e}", path.display()))
    })?;
    if entries.next().is_some() {
        return Err(SupervisorError::MountpointNotEmpty(canonical));
    }
    Ok((canonical, dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names() {
        assert_eq!(default_name("/third-party/ripgrep"), "ripgrep");
        assert_eq!(default_name("/srv/git/tool.git"), "tool");
        assert_eq!(default_name("/srv/repo/"), "repo");
    }

    #[test]
    fn mountpoint_checks() {
        let root = Caller {
            uid: 0,
            gid: 0,
            pid: 1,
        };
        let access = Access::new(Policy::default(), 0);
        let check = |path: &Path| check_mountpoint(path, &root, &access);
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing");
        assert!(matches!(
            check(&missing),
            Err(SupervisorError::MountpointMissing(_))
        ));
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").expect("write");
        assert!(matches!(
            check(&file),
            Err(SupervisorError::MountpointNotDir(_))
        ));
        assert!(matches!(
            check(dir.path()),
            Err(SupervisorError::MountpointNotEmpty(_))
        ));
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).expect("mkdir");
        assert!(check(&empty).is_ok());
        assert!(matches!(
            check(Path::new("relative")),
            Err(SupervisorError::Invalid(_))
        ));
        assert!(matches!(
            check(Path::new("/proc")),
            Err(SupervisorError::AlreadyMounted(_) | SupervisorError::MountpointNotEmpty(_))
        ));
    }
}
