//! The table of mounts and their lifecycle: connect (validate, resolve, mount), disconnect,
//! status, and unmounting everything at shutdown.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fuser::{BackgroundSession, MountOption, SessionACL};
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::fs::{FsError, MountFs};
use crate::fuse::FuseAdapter;
use crate::mounts;
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
}

/// Who asked, from the socket's peer credentials.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("invalid request: {0}")]
    Invalid(String),
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
}

struct MountEntry {
    name: String,
    mountpoint: PathBuf,
    repo: String,
    git_ref: String,
    owner_uid: u32,
    fs: Arc<MountFs>,
    session: BackgroundSession,
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
            } else {
                "mounted"
            },
            fetched_objects: stats.fetched_objects.load(Relaxed),
            fetched_bytes: stats.fetched_bytes.load(Relaxed),
            cache_hits: stats.cache_hits.load(Relaxed),
            owner_uid: self.owner_uid,
        }
    }

    fn matches(&self, target: &str) -> bool {
        let target_path = Path::new(target);
        self.name == target
            || self.repo == target
            || self.mountpoint == target_path
            || (target_path.is_absolute()
                && std::fs::canonicalize(target_path).is_ok_and(|p| p == self.mountpoint))
            || default_name(target) == self.name
    }
}

#[derive(Default)]
struct Table {
    mounts: Vec<MountEntry>,
    /// Names and mountpoints of connects under way, so two cannot race for one.
    pending_names: HashSet<String>,
    pending_points: HashSet<PathBuf>,
}

pub struct Supervisor {
    store: Arc<Store>,
    table: Mutex<Table>,
    request_timeout: Duration,
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
    pub fn new(store: Arc<Store>, request_timeout: Duration) -> Self {
        Supervisor {
            store,
            table: Mutex::new(Table::default()),
            request_timeout,
        }
    }

    pub async fn connect(
        &self,
        spec: ConnectSpec,
        caller: Caller,
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
        let mountpoint = check_mountpoint(&spec.mountpoint)?;
        self.reserve(&name, &mountpoint).await?;
        let result = self.mount(&spec, &name, &mountpoint, caller).await;
        let mut table = self.table.lock().await;
        table.pending_names.remove(&name);
        table.pending_points.remove(&mountpoint);
        let entry = result?;
        let status = entry.status();
        info!(
            mount = %name, repo = %spec.repo, commit = %status.commit,
            mountpoint = %mountpoint.display(), uid = caller.uid, "connected"
        );
        table.mounts.push(entry);
        Ok(status)
    }

    async fn reserve(&self, name: &str, mountpoint: &Path) -> Result<(), SupervisorError> {
        let mut table = self.table.lock().await;
        if table.pending_names.contains(name) || table.mounts.iter().any(|m| m.name == name) {
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
        caller: Caller,
    ) -> Result<MountEntry, SupervisorError> {
        let source = self.make_source(spec)?;
        let open = MountFs::open(source, self.store.clone(), (caller.uid, caller.gid));
        let fs = tokio::time::timeout(self.request_timeout, open)
            .await
            .map_err(|_| SupervisorError::Timeout(self.request_timeout))??;
        let adapter = FuseAdapter::new(
            fs.clone(),
            tokio::runtime::Handle::current(),
            self.request_timeout,
            name.to_string(),
        );
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            MountOption::FSName(format!("megafs:{name}")),
            MountOption::Subtype("megafs".into()),
            MountOption::RO,
            MountOption::NoSuid,
            MountOption::NoDev,
            MountOption::DefaultPermissions,
        ];
        // SAFETY: geteuid has no preconditions.
        if caller.uid != unsafe { libc::geteuid() } {
            // The kernel only lets the mounting user in unless others are allowed; the
            // permission bits (default_permissions) still apply.
            config.acl = SessionACL::All;
        }
        let point = mountpoint.to_path_buf();
        let session =
            tokio::task::spawn_blocking(move || fuser::spawn_mount(adapter, &point, &config))
                .await
                .map_err(|e| SupervisorError::Mount {
                    path: mountpoint.to_path_buf(),
                    source: std::io::Error::other(e),
                })?
                .map_err(|source| SupervisorError::Mount {
                    path: mountpoint.to_path_buf(),
                    source,
                })?;
        Ok(MountEntry {
            name: name.to_string(),
            mountpoint: mountpoint.to_path_buf(),
            repo: spec.repo.clone(),
            git_ref: spec.git_ref.clone(),
            owner_uid: caller.uid,
            fs,
            session,
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
                self.request_timeout,
            )?));
        }
        if spec.repo.starts_with("http://") || spec.repo.starts_with("https://") {
            return Err(SupervisorError::Invalid(format!(
                "{} looks like a server URL: give --mega-url for a Mega server (git servers are not supported yet)",
                spec.repo
            )));
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
    ) -> Result<MountStatus, SupervisorError> {
        let entry = {
            let mut table = self.table.lock().await;
            let index = table
                .mounts
                .iter()
                .position(|m| m.name == target)
                .or_else(|| table.mounts.iter().position(|m| m.matches(target)))
                .ok_or_else(|| SupervisorError::UnknownMount(target.to_string()))?;
            let entry = &table.mounts[index];
            if !entry.session.guard.is_finished() {
                unmount_checked(&entry.mountpoint, force)?;
            }
            table.mounts.swap_remove(index)
        };
        let status = entry.status();
        info!(mount = %entry.name, mountpoint = %entry.mountpoint.display(), force, "disconnected");
        // After a lazy unmount the session lives until the last open file closes: never make
        // the caller wait for that.
        tokio::spawn(join_session(entry.session));
        Ok(MountStatus {
            state: "unmounted",
            ..status
        })
    }

    pub async fn status(&self) -> Vec<MountStatus> {
        let table = self.table.lock().await;
        let mut all: Vec<_> = table.mounts.iter().map(MountEntry::status).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Unmounts everything: cleanly where possible, lazily where something holds the mount.
    pub async fn shutdown(&self) {
        let entries = std::mem::take(&mut self.table.lock().await.mounts);
        for entry in entries {
            if !entry.session.guard.is_finished() {
                if let Err(e) = mounts::unmount(&entry.mountpoint, false) {
                    warn!(
                        mount = %entry.name, mountpoint = %entry.mountpoint.display(), error = %e,
                        "mount is busy; detaching it lazily"
                    );
                    if let Err(e) = mounts::unmount(&entry.mountpoint, true) {
                        warn!(mount = %entry.name, error = %e, "lazy unmount failed");
                    }
                    // Its session ends when the last open file closes, or when we exit.
                    continue;
                }
            }
            info!(mount = %entry.name, "unmounted");
            join_session(entry.session).await;
        }
    }
}

fn unmount_checked(mountpoint: &Path, force: bool) -> Result<(), SupervisorError> {
    mounts::unmount(mountpoint, force).map_err(|source| {
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

/// Waits for a session's FUSE thread to finish once its mount is gone.
async fn join_session(session: BackgroundSession) {
    match tokio::task::spawn_blocking(move || session.join()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "FUSE session ended with an error"),
        Err(e) => warn!(error = %e, "FUSE session thread panicked"),
    }
}

/// An existing, empty directory that is not already a mount point, as an absolute path.
fn check_mountpoint(path: &Path) -> Result<PathBuf, SupervisorError> {
    if !path.is_absolute() {
        return Err(SupervisorError::Invalid(format!(
            "mountpoint {} must be an absolute path",
            path.display()
        )));
    }
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SupervisorError::MountpointMissing(path.to_path_buf()))
        }
        Err(e) => {
            return Err(SupervisorError::Invalid(format!(
                "cannot use mountpoint {}: {e}",
                path.display()
            )))
        }
    };
    if !meta.is_dir() {
        return Err(SupervisorError::MountpointNotDir(path.to_path_buf()));
    }
    let canonical = std::fs::canonicalize(path).map_err(|e| {
        SupervisorError::Invalid(format!("cannot resolve mountpoint {}: {e}", path.display()))
    })?;
    if mounts::is_mount_point(&canonical) {
        return Err(SupervisorError::AlreadyMounted(canonical));
    }
    let mut entries = std::fs::read_dir(&canonical).map_err(|e| {
        SupervisorError::Invalid(format!("cannot read mountpoint {}: {e}", path.display()))
    })?;
    if entries.next().is_some() {
        return Err(SupervisorError::MountpointNotEmpty(canonical));
    }
    Ok(canonical)
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
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing");
        assert!(matches!(
            check_mountpoint(&missing),
            Err(SupervisorError::MountpointMissing(_))
        ));
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").expect("write");
        assert!(matches!(
            check_mountpoint(&file),
            Err(SupervisorError::MountpointNotDir(_))
        ));
        assert!(matches!(
            check_mountpoint(dir.path()),
            Err(SupervisorError::MountpointNotEmpty(_))
        ));
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).expect("mkdir");
        assert!(check_mountpoint(&empty).is_ok());
        assert!(matches!(
            check_mountpoint(Path::new("relative")),
            Err(SupervisorError::Invalid(_))
        ));
        assert!(matches!(
            check_mountpoint(Path::new("/proc")),
            Err(SupervisorError::AlreadyMounted(_) | SupervisorError::MountpointNotEmpty(_))
        ));
    }
}
