//! The table of mounts and their lifecycle: connect (check, resolve, mount), disconnect,
//! refresh, status, and unmounting everything at shutdown. Configured mounts and their
//! retries are `reconcile`'s; the FUSE session is `session`'s; mountpoints are `mountpoint`'s.

mod mountpoint;
mod reconcile;
mod record;
mod session;
mod workspace;

use std::collections::HashSet;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuser::BackgroundSession;
use tokio::sync::Mutex;
use tracing::{info, warn, Instrument};

pub use crate::access::Caller;
use crate::access::{Access, Policy, Refusal};
use crate::config::MountConfig;
use crate::fs::{FsError, FsOptions, MountFs, TimesFile};
use crate::fuse::{FuseAdapter, KernelNotifier, ReadPath};
pub use crate::location::Timeouts;
use crate::location::{self, default_name_of, Location, LocationError};
use crate::metrics::MountMetrics;
use crate::mount_name::{MountName, NameError};
use crate::repo_path::RepoPath;
use crate::source::git::Credentials;
use crate::source::{Snapshot, SourceError};
use crate::store::Store;
use crate::workspace::changes::{self, Change, ChangesError};
use crate::workspace::{conflicts, diff};
use crate::workspace::{Usage, WorkspaceError, Workspaces};
use crate::{mounts, sys};
use reconcile::Retrying;
use record::Record;
pub use record::Records;
pub use session::KernelOptions;
use workspace::Overlay;

/// What a client asks to mount.
#[derive(Clone, Debug)]
pub struct ConnectSpec {
    pub location: Location,
    pub mountpoint: PathBuf,
    pub git_ref: String,
    /// The name asked for; empty for the repository's default.
    pub name: String,
    /// Let users other than the owner in (for users, where the configuration allows).
    pub allow_other: bool,
    /// A workspace: writes go to the mount's workspace, over the commit.
    pub writable: bool,
    /// Git server credentials from the configuration.
    pub credentials: Option<Credentials>,
    /// The configured mount's own proxy; None: the daemon's.
    pub proxy: Option<String>,
}

impl From<&MountConfig> for ConnectSpec {
    fn from(c: &MountConfig) -> Self {
        ConnectSpec {
            location: c.location.clone(),
            mountpoint: c.mountpoint.clone(),
            git_ref: c.git_ref.clone(),
            name: c.name.to_string(),
            allow_other: c.allow_other,
            writable: c.writable,
            credentials: c.password.as_ref().map(|p| Credentials {
                user: c.username.clone().unwrap_or_else(|| "git".into()),
                secret: p.0.clone(),
            }),
            proxy: c.proxy.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("{0}")]
    Location(#[from] LocationError),
    #[error("{0}: give one with --name")]
    Name(#[from] NameError),
    #[error("{0}")]
    Refused(#[from] Refusal),
    #[error("{0}")]
    Workspace(#[from] WorkspaceError),
    #[error("{0} is not a workspace (connect it with --writable)")]
    NotWritable(String),
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
    #[error("{target} is shown by several mounts ({names}): name the one you mean")]
    Ambiguous { target: String, names: String },
    #[error("files are open under {path} ({holders}); close them, or {action} with --force")]
    InUse {
        path: PathBuf,
        holders: String,
        action: &'static str,
    },
    #[error("{0}")]
    Source(#[from] SourceError),
    /// Reading a workspace's changes (or the commit they are against) failed.
    #[error("{0}")]
    Changes(#[from] ChangesError),
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
    /// A task of the daemon's own failed (it panicked or was cancelled): not the caller's doing.
    #[error("internal error: {0}")]
    Internal(String),
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

/// A task of the supervisor's that did not finish (panicked, cancelled).
fn task_failed(what: &str, e: tokio::task::JoinError) -> SupervisorError {
    SupervisorError::Internal(format!("{what}: {e}"))
}

/// Where a mount stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MountState {
    Mounted,
    /// Mounted from the last known commit: the source was unreachable.
    Offline,
    /// A configured mount that failed, tried again with growing pauses.
    Retrying,
    /// A run-time mount whose filesystem went away without a disconnect.
    Lost,
    /// In a disconnect's reply.
    Unmounted,
}

impl MountState {
    pub fn as_str(self) -> &'static str {
        match self {
            MountState::Mounted => "mounted",
            MountState::Offline => "offline",
            MountState::Retrying => "retrying",
            MountState::Lost => "lost",
            MountState::Unmounted => "unmounted",
        }
    }
}

/// What a refresh did.
#[derive(Debug)]
pub struct Refreshed {
    /// The commit shown before (that shown now, if it did not move).
    pub before: String,
    pub mount: MountStatus,
    /// A workspace's paths the move changed under local changes (marked, the local
    /// version kept).
    pub conflicts: Vec<RepoPath>,
}

/// A mount as `status` reports it.
#[derive(Clone, Debug)]
pub struct MountStatus {
    pub name: MountName,
    pub mountpoint: PathBuf,
    pub source: String,
    pub repo: String,
    pub git_ref: String,
    pub commit: String,
    pub commit_time: i64,
    pub state: MountState,
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
    pub writable: bool,
    /// A workspace's recorded paths and disk use.
    pub workspace: Usage,
}

/// A mount the daemon serves.
struct MountEntry {
    name: MountName,
    mountpoint: PathBuf,
    location: Location,
    git_ref: String,
    owner_uid: u32,
    owner_gid: u32,
    /// The configuration entry it was mounted from, if any.
    config: Option<MountConfig>,
    fs: Arc<MountFs>,
    session: BackgroundSession,
    /// Tells the kernel which cached entries a refresh made stale.
    notifier: KernelNotifier,
    /// How the kernel reads its cached files (told by the FUSE adapter).
    read_path: Arc<ReadPath>,
    /// Unix seconds of the last refresh, 0 for none.
    refreshed_at: Arc<AtomicI64>,
    /// When a configured `refresh_interval` next falls due.
    next_refresh: Option<Instant>,
    /// A writable mount's overlay (the session serves its view beneath).
    overlay: Option<Overlay>,
}

impl MountEntry {
    /// The session thread ends when the kernel drops the mount behind our back; a writable
    /// mount is lost too when its overlay is gone.
    fn is_lost(&self) -> bool {
        self.session.guard.is_finished()
            || (self.overlay.is_some() && !mounts::is_mount_point(&self.mountpoint))
    }

    fn status(&self) -> MountStatus {
        let stats = self.fs.metrics();
        let snapshot = self.fs.snapshot();
        MountStatus {
            name: self.name.clone(),
            mountpoint: self.mountpoint.clone(),
            source: self.fs.source_description(),
            repo: self.location.repo(),
            git_ref: self.git_ref.clone(),
            commit: snapshot.commit.to_hex(),
            commit_time: snapshot.commit_time,
            state: if self.is_lost() {
                MountState::Lost
            } else if self.fs.is_offline() {
                MountState::Offline
            } else {
                MountState::Mounted
            },
            fetched_objects: stats.fetched_objects.load(Ordering::Relaxed),
            fetched_bytes: stats.fetched_bytes.load(Ordering::Relaxed),
            cache_hits: stats.cache_hits.load(Ordering::Relaxed),
            owner_uid: self.owner_uid,
            from_config: self.config.is_some(),
            error: String::new(),
            refreshed_at: self.refreshed_at.load(Ordering::Relaxed),
            read_path: self.read_path.describe(),
            writable: self.overlay.is_some(),
            workspace: Usage::default(),
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
    pending_names: HashSet<MountName>,
    pending_points: HashSet<PathBuf>,
}

pub struct Supervisor {
    store: Arc<Store>,
    table: Mutex<Table>,
    timeouts: Timeouts,
    fs_options: FsOptions,
    kernel: KernelOptions,
    places: Places,
    /// Who may do what; replaced when the configuration is reloaded.
    access: std::sync::RwLock<Access>,
    /// The daemon's proxy for server requests (`[daemon] proxy`).
    proxy: std::sync::RwLock<Option<String>>,
}

/// Where the daemon keeps what writable mounts need.
#[derive(Clone, Debug)]
pub struct Places {
    /// The workspaces (in the daemon's state directory).
    pub workspaces: Workspaces,
    /// Where writable mounts' FUSE views go: a directory only the daemon reaches (beside its
    /// socket, in its runtime directory).
    pub lowers: PathBuf,
    /// Where each mount's file times are kept, by mount name (in the daemon's state
    /// directory, so that a remount and a restart show unchanged files as they were).
    pub times: PathBuf,
    /// Run-time mounts, to mount again when the daemon starts (in its state directory).
    pub records: Records,
}

impl Supervisor {
    /// `fs_options` hold for every mount; its fetch timeout is for a whole fetch, retries
    /// included, which goes on (filling the cache) after the request that started it gave up.
    pub fn new(
        store: Arc<Store>,
        timeouts: Timeouts,
        fs_options: FsOptions,
        kernel: KernelOptions,
        places: Places,
    ) -> Self {
        Supervisor {
            store,
            table: Mutex::new(Table::default()),
            timeouts,
            fs_options,
            kernel,
            places,
            access: std::sync::RwLock::new(Access::new(Policy::default(), sys::identity().0)),
            proxy: std::sync::RwLock::new(None),
        }
    }

    /// The access rules the configuration gives (at start, and on every reload).
    pub fn set_policy(&self, policy: Policy) {
        *self.access.write().unwrap_or_else(|p| p.into_inner()) =
            Access::new(policy, sys::identity().0);
    }

    /// The proxy the configuration's `[daemon]` gives (at start, and on every reload), for
    /// sources opened from then on.
    pub fn set_proxy(&self, proxy: Option<String>) {
        *self.proxy.write().unwrap_or_else(|p| p.into_inner()) = proxy;
    }

    /// A mount's own proxy, else the daemon's, else none (the environment's, if any).
    fn proxy_for(&self, own: Option<&str>) -> Option<String> {
        own.map(str::to_string)
            .or_else(|| self.proxy.read().unwrap_or_else(|p| p.into_inner()).clone())
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
            .map_err(|e| task_failed("connect", e))?
    }

    async fn connect_as(
        &self,
        spec: ConnectSpec,
        caller: Caller,
        config: Option<MountConfig>,
    ) -> Result<MountStatus, SupervisorError> {
        let name = MountName::given_or_default(&spec.name, &spec.location)?;
        let access = self.access();
        access.may_mount_repo(&caller, &spec.location)?;
        if spec.allow_other {
            access.may_allow_other(&caller)?;
        }
        let requested = spec.mountpoint.clone();
        let (mountpoint, dir) =
            tokio::task::spawn_blocking(move || mountpoint::check(&requested, &caller, &access))
                .await
                .map_err(|e| task_failed("checking the mountpoint", e))??;
        self.reserve(&name, &mountpoint, config.is_some()).await?;
        let span = tracing::info_span!("connect", mount = %name, uid = caller.uid);
        let result = self
            .mount(&spec, &name, &mountpoint, dir, caller)
            .instrument(span)
            .await;
        if result.is_ok() && config.is_none() {
            self.record(&name, Record::of(&spec, &mountpoint, caller))
                .await;
        }
        let mut table = self.table.lock().await;
        table.pending_names.remove(&name);
        table.pending_points.remove(&mountpoint);
        let mut entry = result?;
        if let Some(config) = &config {
            table.retrying.retain(|r| r.config.name != config.name);
            entry.next_refresh = config.refresh_interval.map(|i| Instant::now() + i);
        }
        // Mounted again under its name: the lost row of that name is this one now.
        table.lost.retain(|lost| lost.name != name);
        entry.config = config;
        let status = entry.status();
        info!(
            mount = %name, repo = %spec.location, commit = %status.commit,
            mountpoint = %mountpoint.display(), uid = caller.uid, "connected"
        );
        table.mounts.push(entry);
        Ok(status)
    }

    async fn reserve(
        &self,
        name: &MountName,
        mountpoint: &Path,
        for_config: bool,
    ) -> Result<(), SupervisorError> {
        let mut table = self.table.lock().await;
        // A run-time mount whose filesystem is gone (not yet noticed by `supervise`) gives way
        // to the new one: one row per name.
        table.mounts.retain(|m| {
            let same = &m.name == name || m.mountpoint == mountpoint;
            !(same && m.config.is_none() && m.is_lost())
        });
        // A configured mount waiting for a retry holds its name, except against itself.
        let taken_by_config = !for_config && table.retrying.iter().any(|r| &r.config.name == name);
        if table.pending_names.contains(name)
            || table.mounts.iter().any(|m| &m.name == name)
            || taken_by_config
        {
            return Err(SupervisorError::NameInUse(name.to_string()));
        }
        if table.pending_points.contains(mountpoint)
            || table.mounts.iter().any(|m| m.mountpoint == mountpoint)
        {
            return Err(SupervisorError::AlreadyMounted(mountpoint.to_path_buf()));
        }
        table.pending_names.insert(name.clone());
        table.pending_points.insert(mountpoint.to_path_buf());
        Ok(())
    }

    async fn mount(
        &self,
        spec: &ConnectSpec,
        name: &MountName,
        mountpoint: &Path,
        dir: OwnedFd,
        caller: Caller,
    ) -> Result<MountEntry, SupervisorError> {
        let owner = (caller.uid, caller.gid);
        let mut workspace = match spec.writable {
            true => Some(self.open_workspace(spec, name, owner).await?),
            false => None,
        };
        // A workspace's changes are against its commit: mount that one again where the
        // source can show a given commit (a Mega mount shows the trunk as it is).
        let git_ref = match &workspace {
            Some(ws) if !ws.commit().is_empty() && spec.location.mega_url().is_none() => {
                ws.commit().to_string()
            }
            _ => spec.git_ref.clone(),
        };
        let metrics = Arc::new(MountMetrics::default());
        let proxy = self.proxy_for(spec.proxy.as_deref());
        let source = location::open(
            &spec.location,
            &git_ref,
            self.timeouts,
            proxy.as_deref(),
            spec.credentials.clone(),
            metrics.server(),
        )?;
        let options = FsOptions {
            // The lower layer of an overlay must not change under it.
            follow_trunk: self.fs_options.follow_trunk && !spec.writable,
            ..self.fs_options
        };
        let times = TimesFile {
            path: self.places.times.join(name.as_str()),
            identity: match spec.location.mega_url() {
                Some(url) => format!("{url} {}", spec.location.repo()),
                None => spec.location.repo(),
            },
        };
        let open = MountFs::open(
            name.as_str(),
            source,
            self.store.clone(),
            owner,
            options,
            metrics,
            Some(times),
        );
        let fs = tokio::time::timeout(self.timeouts.request, open)
            .await
            .map_err(|_| SupervisorError::Timeout(self.timeouts.request))??;
        let adapter = FuseAdapter::new(
            fs.clone(),
            tokio::runtime::Handle::current(),
            self.timeouts.request,
            // Backing files need CAP_SYS_ADMIN: a per-user daemon reads through itself.
            self.kernel.passthrough && sys::is_root(),
        );
        let read_path = adapter.read_path();
        // A writable mount's view goes out of users' reach, for root's overlay to reach it.
        let (view, view_dir, allow_other) = match &workspace {
            Some(_) => {
                let (lowers, name) = (self.places.lowers.clone(), name.clone());
                let (lower, lower_dir) =
                    tokio::task::spawn_blocking(move || workspace::prepare_lower(&lowers, &name))
                        .await
                        .map_err(|e| task_failed("preparing a workspace's view", e))??;
                (lower, Some(lower_dir), sys::is_root())
            }
            None => (mountpoint.to_path_buf(), None, spec.allow_other),
        };
        let (point, session_name, kernel) = (view.clone(), name.clone(), self.kernel);
        let (session, dir) = tokio::task::spawn_blocking(move || {
            let on = view_dir.as_ref().unwrap_or(&dir);
            let session = session::start(
                adapter,
                &session_name,
                &point,
                on,
                owner,
                allow_other,
                &kernel,
            )?;
            Ok::<_, std::io::Error>((session, dir))
        })
        .await
        .map_err(|e| task_failed("mounting", e))?
        .map_err(|source| SupervisorError::Mount {
            path: view.clone(),
            source,
        })?;
        let overlay = match workspace.take() {
            Some(ws) => Some(self.overlay(ws, &fs, view, mountpoint, dir, name).await?),
            None => None,
        };
        let notifier = KernelNotifier::new(session.notifier());
        fs.set_kernel_cache(Box::new(notifier.clone()));
        Ok(MountEntry {
            name: name.clone(),
            mountpoint: mountpoint.to_path_buf(),
            location: spec.location.clone(),
            git_ref: spec.git_ref.clone(),
            owner_uid: caller.uid,
            owner_gid: caller.gid,
            config: None,
            fs,
            notifier,
            session,
            read_path,
            refreshed_at: Arc::new(AtomicI64::new(0)),
            next_refresh: None,
            overlay,
        })
    }

    /// The workspace of mount `name` for `spec` (made if new; refused if it is of another
    /// repository or user).
    async fn open_workspace(
        &self,
        spec: &ConnectSpec,
        name: &MountName,
        owner: (u32, u32),
    ) -> Result<crate::workspace::Workspace, SupervisorError> {
        let workspaces = self.places.workspaces.clone();
        let (name, location, git_ref) = (name.clone(), spec.location.clone(), spec.git_ref.clone());
        let others = spec.allow_other;
        let opened = tokio::task::spawn_blocking(move || {
            let workspace = workspaces.open(&name, &location, &git_ref, owner)?;
            workspace.let_others_in(others)?;
            Ok::<_, WorkspaceError>(workspace)
        });
        Ok(opened
            .await
            .map_err(|e| task_failed("opening a workspace", e))??)
    }

    /// Mounts `workspace`'s overlay over the view at `lower` onto the user's `mountpoint`
    /// (opened as `dir`), its changes now against the commit `fs` shows. On failure the view
    /// goes too.
    async fn overlay(
        &self,
        mut workspace: crate::workspace::Workspace,
        fs: &MountFs,
        lower: PathBuf,
        mountpoint: &Path,
        dir: OwnedFd,
        name: &MountName,
    ) -> Result<Overlay, SupervisorError> {
        let commit = fs.snapshot().commit.to_hex();
        let (point, name) = (mountpoint.to_path_buf(), name.clone());
        let mounted = tokio::task::spawn_blocking(move || {
            let was = workspace.commit().to_string();
            if !was.is_empty() && was != commit {
                warn!(mount = %name, from = %was, to = %commit, "the workspace's commit moved; its changes stay");
            }
            let result = workspace
                .set_commit(&commit)
                .map_err(SupervisorError::from)
                .and_then(|()| workspace::mount_overlay(&workspace, &lower, &point, &dir, &name));
            if result.is_err() {
                workspace::unmount_view(&lower);
            }
            result.map(|()| Overlay { workspace, lower })
        });
        mounted
            .await
            .map_err(|e| task_failed("mounting a workspace", e))?
    }

    /// Unmounts the mount `target` names (lazily with `force`) and, with `discard`, removes
    /// its workspace: the mount as it was (None when only a workspace was discarded) and what
    /// the workspace held.
    pub async fn disconnect(
        &self,
        target: &str,
        force: bool,
        discard: bool,
        caller: Caller,
    ) -> Result<(Option<MountStatus>, Option<Usage>), SupervisorError> {
        let unmounted = self.unmount_target(target, force, caller).await;
        let status = match unmounted {
            Ok(status) => Some(status),
            // A workspace need not be mounted to be discarded.
            Err(SupervisorError::UnknownMount(_)) if discard => None,
            Err(e) => return Err(e),
        };
        if !discard {
            return Ok((status, None));
        }
        let name = match &status {
            Some(status) => status.name.clone(),
            None => MountName::parse(target)
                .map_err(|_| SupervisorError::UnknownMount(target.into()))?,
        };
        let discarded = self.discard_workspace(&name, caller).await?;
        if status.is_none() && discarded.is_none() {
            return Err(SupervisorError::UnknownMount(target.to_string()));
        }
        info!(mount = %name, uid = caller.uid, ?discarded, "workspace discarded");
        Ok((status, discarded))
    }

    /// Removes the workspace of `name` if it is `caller`'s (or the caller is an
    /// administrator); what it held. Another user's is answered as none.
    async fn discard_workspace(
        &self,
        name: &MountName,
        caller: Caller,
    ) -> Result<Option<Usage>, SupervisorError> {
        {
            let table = self.table.lock().await;
            if let Some(mounted) = table.mounts.iter().find(|m| &m.name == name) {
                let theirs = self
                    .access()
                    .may_manage(&caller, name.as_str(), mounted.owner_uid);
                return Err(match theirs {
                    Ok(()) => SupervisorError::Invalid(format!(
                        "{name} is mounted: disconnect it first (with --discard)"
                    )),
                    Err(refusal) => unknown_to(&caller, name.as_str(), refusal),
                });
            }
        }
        let workspaces = self.places.workspaces.clone();
        let (name, admin) = (name.clone(), self.access().is_admin(&caller));
        let discarded = tokio::task::spawn_blocking(move || {
            workspaces.discard(&name, (!admin).then_some(caller.uid))
        });
        Ok(discarded
            .await
            .map_err(|e| task_failed("discarding a workspace", e))??)
    }

    async fn unmount_target(
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
            let found = find_for(
                &table.mounts,
                target,
                canonical.as_deref(),
                &caller,
                &access,
            );
            let index = match found {
                Ok(index) => index,
                Err(SupervisorError::UnknownMount(_)) => {
                    let Some(i) = table.lost.iter().position(|l| l.name == target) else {
                        return Err(SupervisorError::UnknownMount(target.to_string()));
                    };
                    // Forget a lost mount: there is nothing left to unmount.
                    let lost = &table.lost[i];
                    let owner = lost.owner_uid;
                    if let Err(refusal) = access.may_manage(&caller, lost.name.as_str(), owner) {
                        return Err(unknown_to(&caller, target, refusal));
                    }
                    let lost = table.lost.swap_remove(i);
                    drop(table);
                    self.forget_record(&lost.name).await;
                    return Ok(MountStatus {
                        state: MountState::Unmounted,
                        ..lost
                    });
                }
                Err(e) => return Err(e),
            };
            let entry = &table.mounts[index];
            let point = entry.mountpoint.clone();
            let lower = entry.overlay.as_ref().map(|o| o.lower.clone());
            let lost = entry.is_lost();
            let unmounted = tokio::task::spawn_blocking(move || match lower {
                Some(lower) => workspace::unmount(&point, &lower, force),
                None if !lost => mountpoint::unmount(&point, force),
                None => Ok(()),
            });
            unmounted
                .await
                .map_err(|e| task_failed("unmounting", e))??;
            table.mounts.swap_remove(index)
        };
        if entry.config.is_none() {
            self.forget_record(&entry.name).await;
        }
        let status = entry.status();
        info!(
            mount = %entry.name, mountpoint = %entry.mountpoint.display(), force,
            uid = caller.uid, pid = caller.pid, "disconnected"
        );
        // After a lazy unmount the session lives until the last open file closes: never make
        // the caller (or the daemon's exit) wait for that.
        session::join_detached(entry.name.clone(), entry.session);
        Ok(MountStatus {
            state: MountState::Unmounted,
            ..status
        })
    }

    /// Writes down run-time mount `name`, to mount it again at the next start; a failure
    /// costs only that.
    async fn record(&self, name: &MountName, record: Record) {
        let (records, name) = (self.places.records.clone(), name.clone());
        let saved = tokio::task::spawn_blocking(move || records.save(&name, &record)).await;
        if let Ok(Err(error)) | Err(error) = saved.map_err(std::io::Error::other) {
            warn!(%error, "cannot record the mount; it will not come back at the next start");
        }
    }

    async fn forget_record(&self, name: &MountName) {
        let (records, name) = (self.places.records.clone(), name.clone());
        let forgotten = tokio::task::spawn_blocking(move || records.forget(&name)).await;
        if let Ok(Err(error)) | Err(error) = forgotten.map_err(std::io::Error::other) {
            warn!(%error, "cannot forget the mount's record; it may come back at the next start");
        }
    }

    /// Mounts again, each as its owner, the run-time mounts recorded when the daemon last
    /// ran (all at once); one that fails shows as `lost`, with why, until it is connected
    /// again or disconnected.
    pub async fn restore_connected(self: &Arc<Self>) {
        let records = self.places.records.clone();
        let read = tokio::task::spawn_blocking(move || records.all()).await;
        let all = match read.map_err(std::io::Error::other) {
            Ok(Ok(all)) => all,
            Ok(Err(error)) | Err(error) => {
                warn!(%error, "cannot read the recorded mounts");
                return;
            }
        };
        let restores = all.into_iter().map(|(name, record)| {
            let this = Arc::clone(self);
            async move { this.restore(name, record).await }
        });
        futures::future::join_all(restores).await;
    }

    async fn restore(self: &Arc<Self>, name: MountName, record: Result<Record, String>) {
        let connect = record.and_then(|r| r.to_connect(&name).map(|c| (r, c)));
        let (record, (spec, caller)) = match connect {
            Ok(found) => found,
            Err(error) => {
                warn!(mount = %name, %error, "a recorded mount cannot be read; forgetting it");
                self.forget_record(&name).await;
                return;
            }
        };
        let status = lost_status(&name, &record, &spec);
        match self.connect_as(spec, caller, None).await {
            Ok(_) => info!(mount = %name, "restored a mount made before the daemon started"),
            Err(e) => {
                warn!(mount = %name, error = %e, "cannot restore a recorded mount");
                let mut table = self.table.lock().await;
                table.lost.retain(|lost| lost.name != name);
                table.lost.push(MountStatus {
                    error: format!("not restored at start: {e}"),
                    ..status
                });
            }
        }
    }

    /// The filesystem of a mount, for work on it that is not the supervisor's (prefetch).
    pub async fn mount_fs(
        &self,
        target: &str,
        caller: Caller,
    ) -> Result<Arc<MountFs>, SupervisorError> {
        let table = self.table.lock().await;
        let index = find_for(&table.mounts, target, None, &caller, &self.access())?;
        Ok(table.mounts[index].fs.clone())
    }

    /// Moves a mount to the newest commit of what it follows; returns the commit before and
    /// the mount as it is now.
    pub async fn refresh(
        &self,
        target: &str,
        force: bool,
        caller: Caller,
    ) -> Result<Refreshed, SupervisorError> {
        let (fs, notifier, refreshed_at) = {
            let table = self.table.lock().await;
            let index = find_for(&table.mounts, target, None, &caller, &self.access())?;
            let entry = &table.mounts[index];
            if entry.overlay.is_some() {
                drop(table);
                return self.refresh_workspace(target, force, caller).await;
            }
            (
                entry.fs.clone(),
                entry.notifier.clone(),
                entry.refreshed_at.clone(),
            )
        };
        let before = fs.snapshot().commit.to_hex();
        let span = tracing::info_span!("refresh", mount = %fs.name(), uid = caller.uid);
        let refresh = fs.refresh().instrument(span);
        let stale = tokio::time::timeout(self.timeouts.request, refresh)
            .await
            .map_err(|_| SupervisorError::Timeout(self.timeouts.request))??;
        // Asked for over the socket, not inside a filesystem request: the caller may wait
        // until the kernel has dropped what is stale, so its next look sees the new commit.
        if let Some(names) = stale {
            let _ = tokio::task::spawn_blocking(move || notifier.invalidate_root_now(names)).await;
        }
        refreshed_at.store(unix_now(), Ordering::Relaxed);
        let table = self.table.lock().await;
        let index = find_for(&table.mounts, target, None, &caller, &self.access())?;
        Ok(Refreshed {
            before,
            mount: table.mounts[index].status(),
            conflicts: Vec::new(),
        })
    }

    /// Moves workspace `target` to the newest commit of what it follows, under its changes:
    /// its overlay comes off (refused while anything is open in it, unless `force`), the
    /// view beneath moves, the paths changed on both sides are marked as conflicts (the
    /// local version stays), and the overlay goes back on. The table stays locked
    /// throughout, so nothing else comes and goes meanwhile.
    async fn refresh_workspace(
        &self,
        target: &str,
        force: bool,
        caller: Caller,
    ) -> Result<Refreshed, SupervisorError> {
        let access = self.access();
        let mut table = self.table.lock().await;
        let index = find_for(&table.mounts, target, None, &caller, &access)?;
        let entry = &table.mounts[index];
        let Some(overlay) = &entry.overlay else {
            return Err(SupervisorError::NotWritable(entry.name.to_string()));
        };
        let fs = entry.fs.clone();
        let before = fs.snapshot();
        let fresh = self.newest(entry).await?;
        let unchanged = fresh.commit == before.commit;
        let (point, lower, mut ws) = (
            entry.mountpoint.clone(),
            overlay.lower.clone(),
            overlay.workspace.clone(),
        );
        let (name, notifier) = (entry.name.clone(), entry.notifier.clone());
        let owner = Caller {
            uid: entry.owner_uid,
            gid: entry.owner_gid,
            pid: caller.pid,
        };
        if unchanged {
            return Ok(Refreshed {
                before: before.commit.to_hex(),
                mount: entry.status(),
                conflicts: Vec::new(),
            });
        }
        let local = changes::compute(&ws.upper(), &fs).await?;
        let found = conflicts::between(&local, before.root_tree, fresh.root_tree, &fs).await?;
        let off = point.clone();
        tokio::task::spawn_blocking(move || workspace::take_off(&off, force, "refresh"))
            .await
            .map_err(|e| task_failed("refreshing a workspace", e))??;
        // Whatever happens to the move, the overlay goes back on: nothing is lost.
        let switched = fs.switch_to(fresh).await;
        if let Ok(Some(names)) = &switched {
            let (notifier, names) = (notifier.clone(), names.clone());
            let _ = tokio::task::spawn_blocking(move || notifier.invalidate_root_now(names)).await;
        }
        let commit = fs.snapshot().commit.to_hex();
        let moved = switched.is_ok();
        let marks = found.clone();
        let back = tokio::task::spawn_blocking(move || {
            let recorded = match moved {
                true => ws.set_commit(&commit).and_then(|()| {
                    let mut open = conflicts::still_open(&ws.conflicts()?, &local);
                    for mark in marks {
                        if !open.contains(&mark) {
                            open.push(mark);
                        }
                    }
                    ws.set_conflicts(&open)
                }),
                false => Ok(()),
            };
            let (_, dir) = mountpoint::check(&point, &owner, &access)?;
            workspace::mount_overlay(&ws, &lower, &point, &dir, &name)?;
            recorded?;
            Ok::<_, SupervisorError>(ws)
        })
        .await
        .map_err(|e| task_failed("refreshing a workspace", e))?;
        let ws = back?;
        switched?;
        let entry = &mut table.mounts[index];
        if let Some(overlay) = entry.overlay.as_mut() {
            overlay.workspace = ws;
        }
        entry.refreshed_at.store(unix_now(), Ordering::Relaxed);
        info!(
            mount = %entry.name, from = %before.commit, to = %entry.fs.snapshot().commit,
            conflicts = found.len(), force, "workspace refreshed"
        );
        Ok(Refreshed {
            before: before.commit.to_hex(),
            mount: entry.status(),
            conflicts: found,
        })
    }

    /// The newest commit of what `entry` follows. A workspace of a git repository is
    /// mounted at the commit its changes are against, so its source is asked again with
    /// the ref it was connected with.
    async fn newest(&self, entry: &MountEntry) -> Result<Snapshot, SupervisorError> {
        if entry.location.mega_url().is_some() {
            return Ok(entry.fs.latest().await?);
        }
        let spec = entry.config.as_ref().map(ConnectSpec::from);
        let credentials = spec.as_ref().and_then(|s| s.credentials.clone());
        let proxy = self.proxy_for(spec.as_ref().and_then(|s| s.proxy.as_deref()));
        let source = location::open(
            &entry.location,
            &entry.git_ref,
            self.timeouts,
            proxy.as_deref(),
            credentials,
            entry.fs.metrics().server(),
        )?;
        tokio::time::timeout(self.timeouts.request, source.resolve())
            .await
            .map_err(|_| SupervisorError::Timeout(self.timeouts.request))?
            .map_err(SupervisorError::from)
    }

    /// The numbers of the mount `target` names, or of every mount `caller` may see.
    pub async fn metrics(
        &self,
        target: &str,
        caller: Caller,
    ) -> Result<Vec<(MountName, Arc<MountMetrics>)>, SupervisorError> {
        let access = self.access();
        let table = self.table.lock().await;
        let of = |m: &MountEntry| (m.name.clone(), m.fs.metrics());
        if !target.is_empty() {
            let index = find_for(&table.mounts, target, None, &caller, &access)?;
            return Ok(vec![of(&table.mounts[index])]);
        }
        let mut all: Vec<_> = table
            .mounts
            .iter()
            .filter(|m| {
                access
                    .may_manage(&caller, m.name.as_str(), m.owner_uid)
                    .is_ok()
            })
            .map(of)
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(all)
    }

    /// Every mount `caller` may see: all of them for root, a user's own for a user.
    /// The root tree each mounted mount `caller` may see shows, for `du`.
    pub async fn roots(&self, caller: Caller) -> Vec<(MountName, crate::object::ObjectId)> {
        let access = self.access();
        let table = self.table.lock().await;
        table
            .mounts
            .iter()
            .filter(|m| {
                access
                    .may_manage(&caller, m.name.as_str(), m.owner_uid)
                    .is_ok()
            })
            .map(|m| (m.name.clone(), m.fs.snapshot().root_tree))
            .collect()
    }

    /// Where each mount `caller` may see comes from (mounted or retrying), for checks of its
    /// server.
    /// The caller's mounts with where each reads from and the proxy it reads through.
    pub async fn locations(&self, caller: Caller) -> Vec<(MountName, Location, Option<String>)> {
        let access = self.access();
        let table = self.table.lock().await;
        let mounted = table
            .mounts
            .iter()
            .filter(|m| {
                access
                    .may_manage(&caller, m.name.as_str(), m.owner_uid)
                    .is_ok()
            })
            .map(|m| {
                let own = m.config.as_ref().and_then(|c| c.proxy.as_deref());
                (m.name.clone(), m.location.clone(), self.proxy_for(own))
            });
        let retrying = table
            .retrying
            .iter()
            .filter(|r| {
                access
                    .may_manage(&caller, r.config.name.as_str(), 0)
                    .is_ok()
            })
            .map(|r| {
                let proxy = self.proxy_for(r.config.proxy.as_deref());
                (r.config.name.clone(), r.config.location.clone(), proxy)
            });
        mounted.chain(retrying).collect()
    }

    pub async fn status(&self, caller: Caller) -> Vec<MountStatus> {
        let access = self.access();
        let (mut all, uppers) = {
            let table = self.table.lock().await;
            let mut all: Vec<_> = table.mounts.iter().map(MountEntry::status).collect();
            all.extend(table.retrying.iter().map(Retrying::status));
            all.extend(table.lost.iter().cloned());
            all.retain(|m| {
                access
                    .may_manage(&caller, m.name.as_str(), m.owner_uid)
                    .is_ok()
            });
            let uppers: Vec<(MountName, PathBuf)> = table
                .mounts
                .iter()
                .filter_map(|m| Some((m.name.clone(), m.overlay.as_ref()?.workspace.upper())))
                .collect();
            (all, uppers)
        };
        // What workspaces hold is read off the lock: it walks their directories.
        let usages = tokio::task::spawn_blocking(move || {
            uppers
                .into_iter()
                .map(|(name, upper)| (name, crate::workspace::usage_of(&upper)))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        for (name, usage) in usages {
            if let Some(status) = all.iter_mut().find(|m| m.name == name) {
                status.workspace = usage;
            }
        }
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Discards the changes of workspace `target` at `paths` (all if none): its overlay comes
    /// off (refused while a file under them is open, unless `force`), they leave the upper
    /// layer, and the overlay goes back onto the mountpoint, checked again as at connect.
    /// The entries removed.
    pub async fn reset(
        &self,
        target: &str,
        paths: &[Vec<u8>],
        force: bool,
        caller: Caller,
    ) -> Result<u64, SupervisorError> {
        let access = self.access();
        let table = self.table.lock().await;
        let index = find_for(&table.mounts, target, None, &caller, &access)?;
        let entry = &table.mounts[index];
        let Some(overlay) = &entry.overlay else {
            return Err(SupervisorError::NotWritable(entry.name.to_string()));
        };
        let paths = paths
            .iter()
            .map(|path| workspace::repo_path_in(&entry.mountpoint, path))
            .collect::<Result<Vec<_>, _>>()?;
        let (point, lower, ws) = (
            entry.mountpoint.clone(),
            overlay.lower.clone(),
            overlay.workspace.clone(),
        );
        let name = entry.name.clone();
        let owner = Caller {
            uid: entry.owner_uid,
            gid: entry.owner_gid,
            pid: caller.pid,
        };
        let reset = tokio::task::spawn_blocking(move || {
            // The overlay comes off whole, so anything open in it stands in the way, not
            // only what is under `paths`.
            workspace::take_off(&point, force, "reset")?;
            // What could not be removed is said after the overlay is back: nothing is lost.
            let removed = workspace::remove_changes(&ws.upper(), &paths)
                .map_err(|source| {
                    SupervisorError::Workspace(WorkspaceError::Io {
                        path: ws.upper(),
                        source,
                    })
                })
                .and_then(|removed| {
                    // Reset paths are the commit's again: no longer in conflict.
                    let open = ws.conflicts()?;
                    let kept: Vec<RepoPath> = match paths.is_empty() {
                        true => Vec::new(),
                        false => open
                            .into_iter()
                            .filter(|c| !paths.iter().any(|p| c.is_within(p)))
                            .collect(),
                    };
                    ws.set_conflicts(&kept)?;
                    Ok(removed)
                });
            // Back onto the mountpoint, which is checked as for a connect: the user's own,
            // empty, reached without a symlink.
            let (_, dir) = mountpoint::check(&point, &owner, &access)?;
            workspace::mount_overlay(&ws, &lower, &point, &dir, &name)?;
            removed
        });
        let removed = reset
            .await
            .map_err(|e| task_failed("resetting a workspace", e))??;
        drop(table);
        info!(mount = %target, uid = caller.uid, removed, force, "workspace reset");
        Ok(removed)
    }

    /// Streams the patch of workspace `target`'s changes (at `paths`, all if none) down
    /// `out`; what changed is worked out before this returns, so that a wrong target or path
    /// is an error of the request, and the patch is written by the task it returns.
    pub async fn diff(
        &self,
        target: &str,
        paths: &[Vec<u8>],
        caller: Caller,
        out: tokio::sync::mpsc::Sender<Vec<u8>>,
    ) -> Result<impl std::future::Future<Output = Result<u64, SupervisorError>>, SupervisorError>
    {
        let (fs, upper, point) = {
            let table = self.table.lock().await;
            let index = find_for(&table.mounts, target, None, &caller, &self.access())?;
            let entry = &table.mounts[index];
            let Some(overlay) = &entry.overlay else {
                return Err(SupervisorError::NotWritable(entry.name.to_string()));
            };
            (
                entry.fs.clone(),
                overlay.workspace.upper(),
                entry.mountpoint.clone(),
            )
        };
        let only = paths
            .iter()
            .map(|path| workspace::repo_path_in(&point, path))
            .collect::<Result<Vec<_>, _>>()?;
        let found = changes::compute(&upper, &fs).await?;
        let shown = {
            let at = point.clone();
            tokio::task::spawn_blocking(move || diff::Shown::open(&at))
                .await
                .map_err(|e| task_failed("opening a workspace", e))?
                .map_err(|source| ChangesError::Io {
                    path: point.clone(),
                    source,
                })?
        };
        Ok(async move { Ok(diff::send(&found, &only, &fs, Arc::new(shown), &out).await?) })
    }

    /// What the workspace `target` names changed against its commit, and that commit.
    pub async fn changes(
        &self,
        target: &str,
        caller: Caller,
    ) -> Result<(String, Vec<Change>), SupervisorError> {
        let (fs, ws) = {
            let table = self.table.lock().await;
            let index = find_for(&table.mounts, target, None, &caller, &self.access())?;
            let entry = &table.mounts[index];
            let Some(overlay) = &entry.overlay else {
                return Err(SupervisorError::NotWritable(entry.name.to_string()));
            };
            (entry.fs.clone(), overlay.workspace.clone())
        };
        let commit = fs.snapshot().commit.to_hex();
        let mut found = changes::compute(&ws.upper(), &fs).await?;
        let marked = tokio::task::spawn_blocking(move || ws.conflicts())
            .await
            .map_err(|e| task_failed("reading a workspace's conflicts", e))??;
        conflicts::mark(&mut found, &marked);
        Ok((commit, found))
    }

    /// Inodes the daemon holds, over every mount.
    pub async fn inodes(&self) -> usize {
        let table = self.table.lock().await;
        table.mounts.iter().map(|m| m.fs.inode_count()).sum()
    }

    /// One line for systemd's STATUS=, e.g. "2 mounts ready, 1 retrying: rg (server unreachable)".
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

/// The mount `target` names among those `caller` may manage. One that is not theirs is
/// answered as unknown (a refusal would tell them it exists), and logged as refused.
fn find_for(
    mounts: &[MountEntry],
    target: &str,
    canonical: Option<&Path>,
    caller: &Caller,
    access: &Access,
) -> Result<usize, SupervisorError> {
    let theirs = |m: &MountEntry| access.may_manage(caller, m.name.as_str(), m.owner_uid);
    match find_target(mounts, target, canonical, |m| theirs(m).is_ok()) {
        Found::One(i) => return Ok(i),
        Found::Several(names) => {
            return Err(SupervisorError::Ambiguous {
                target: target.to_string(),
                names: names.join(", "),
            })
        }
        Found::None => {}
    }
    match find_target(mounts, target, canonical, |_| true) {
        Found::One(i) => match theirs(&mounts[i]) {
            Err(refusal) => Err(unknown_to(caller, target, refusal)),
            Ok(()) => Err(SupervisorError::UnknownMount(target.to_string())),
        },
        _ => Err(SupervisorError::UnknownMount(target.to_string())),
    }
}

/// What a target names.
enum Found {
    One(usize),
    /// Several mounts of one repository: which is meant cannot be told.
    Several(Vec<String>),
    None,
}

/// `target` as unknown to `caller`, whom `refusal` keeps out of it: logged as refused.
fn unknown_to(caller: &Caller, target: &str, refusal: Refusal) -> SupervisorError {
    warn!(
        uid = caller.uid, pid = caller.pid, rule = %refusal.rule, reason = %refusal.reason,
        "request refused (answered as an unknown mount)"
    );
    SupervisorError::UnknownMount(target.to_string())
}

/// Which mount of those `eligible` `target` names: a name first, then a mountpoint, then a
/// repository (several mounts of it: which one is not guessed), then the default name of a
/// repository path; an ambiguous last resort is none.
fn find_target(
    mounts: &[MountEntry],
    target: &str,
    canonical: Option<&Path>,
    eligible: impl Fn(&MountEntry) -> bool,
) -> Found {
    let first =
        |pred: &dyn Fn(&MountEntry) -> bool| mounts.iter().position(|m| eligible(m) && pred(m));
    let path = Path::new(target);
    let named = first(&|m| m.name == target)
        .or_else(|| first(&|m| m.mountpoint == path || Some(m.mountpoint.as_path()) == canonical));
    if let Some(i) = named {
        return Found::One(i);
    }
    let of_repo: Vec<usize> = (0..mounts.len())
        .filter(|&i| eligible(&mounts[i]) && mounts[i].location.repo() == target)
        .collect();
    match of_repo[..] {
        [] => {}
        [i] => return Found::One(i),
        _ => {
            return Found::Several(
                of_repo
                    .iter()
                    .map(|&i| mounts[i].name.to_string())
                    .collect(),
            )
        }
    }
    // Not for a path that exists: `disconnect ./rg` means the mount at ./rg.
    if canonical.is_some() {
        return Found::None;
    }
    let default = default_name_of(target);
    let by_default: Vec<usize> = (0..mounts.len())
        .filter(|&i| eligible(&mounts[i]) && mounts[i].name == default.as_str())
        .collect();
    match by_default[..] {
        [i] => Found::One(i),
        _ => Found::None,
    }
}

/// How a recorded mount that could not be restored shows in `status`.
fn lost_status(name: &MountName, record: &Record, spec: &ConnectSpec) -> MountStatus {
    MountStatus {
        name: name.clone(),
        mountpoint: record.mountpoint.clone(),
        source: spec.location.describe(),
        repo: spec.location.repo(),
        git_ref: record.git_ref.clone(),
        commit: String::new(),
        commit_time: 0,
        state: MountState::Lost,
        fetched_objects: 0,
        fetched_bytes: 0,
        cache_hits: 0,
        owner_uid: record.owner_uid,
        from_config: false,
        error: String::new(),
        refreshed_at: 0,
        read_path: "",
        writable: record.writable,
        workspace: Usage::default(),
    }
}

/// Unmounts an entry: cleanly where possible, lazily (naming who holds it) where busy.
async fn release(entry: MountEntry) {
    let (name, point) = (entry.name.clone(), entry.mountpoint.clone());
    let lower = entry.overlay.as_ref().map(|o| o.lower.clone());
    let mounted = !entry.is_lost() || (lower.is_some() && mounts::is_mount_point(&point));
    let detached = tokio::task::spawn_blocking(move || {
        let mut detached = false;
        if mounted {
            if let Err(e) = mounts::unmount_patiently(&point, false) {
                let holders = mounts::holders(&point);
                warn!(
                    mount = %name, mountpoint = %point.display(), error = %e,
                    holders = %holders, "mount is busy; detaching it lazily"
                );
                if let Err(e) = mounts::unmount(&point, true) {
                    warn!(mount = %name, error = %e, "lazy unmount failed");
                }
                detached = true;
            }
        }
        if let Some(lower) = lower {
            // Beneath a detached overlay the view stays busy until its last file closes.
            match detached {
                true => {
                    let _ = mounts::unmount(&lower, true);
                }
                false => workspace::unmount_view(&lower),
            }
        }
        detached
    })
    .await
    .unwrap_or(true);
    if detached {
        // Its session ends when the last open file closes, or when we exit.
        session::join_detached(entry.name.clone(), entry.session);
        return;
    }
    info!(mount = %entry.name, mountpoint = %entry.mountpoint.display(), "unmounted");
    session::join(entry.session).await;
}

/// The daemon's own identity: configured mounts belong to whoever runs the daemon.
fn daemon_caller() -> Caller {
    let (uid, gid) = sys::identity();
    Caller { uid, gid, pid: 0 }
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

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
