//! A mount's FUSE session: how it meets the kernel (threads, options, read-ahead), mounting
//! it (as root with mount(2) onto the checked directory's descriptor, for its owner; through
//! fusermount3 for a per-user daemon) and waiting for it to end.

use std::os::fd::OwnedFd;
use std::path::Path;

use fuser::{BackgroundSession, MountOption, SessionACL};
use tracing::{debug, info, warn};

use crate::fuse::FuseAdapter;
use crate::mount_name::MountName;
use crate::{mounts, sys};

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

/// Mounts `adapter` at `point` (opened as `dir`) for `owner` and starts serving it; others
/// get in only with `allow_other`. Blocking.
pub(super) fn start(
    adapter: FuseAdapter,
    name: &MountName,
    point: &Path,
    dir: &OwnedFd,
    owner: (u32, u32),
    allow_other: bool,
    kernel: &KernelOptions,
) -> std::io::Result<BackgroundSession> {
    let fsname = format!("megafs:{name}");
    let config = fuse_config(&fsname, allow_other, kernel);
    let session = mount_session(adapter, point, dir, owner, config, &fsname)?;
    if sys::is_root() {
        if let Err(e) = mounts::set_read_ahead(point, kernel.read_ahead_kb) {
            debug!(error = %e, "cannot raise the mount's read-ahead");
        }
    }
    Ok(session)
}

fn fuse_config(fsname: &str, allow_other: bool, kernel: &KernelOptions) -> fuser::Config {
    let mut config = fuser::Config::default();
    // Several threads take requests, so cached answers never queue behind others; each gets
    // its own /dev/fuse descriptor where the daemon may open one (as root).
    config.n_threads = Some(kernel.fuse_threads.max(1));
    config.clone_fd = sys::is_root();
    config.mount_options = vec![
        MountOption::FSName(fsname.to_string()),
        MountOption::Subtype("megafs".into()),
        MountOption::RO,
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::DefaultPermissions,
    ];
    if allow_other {
        // The kernel lets only the owner in unless others are allowed; the permission bits
        // (default_permissions) still apply.
        config.acl = SessionACL::All;
    }
    config
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
    if sys::is_root() {
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

/// Lets a session end in its own time, on a plain thread (not the runtime's blocking pool,
/// which the daemon would wait for at exit).
pub(super) fn join_detached(name: MountName, session: BackgroundSession) {
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
pub(super) async fn join(session: BackgroundSession) {
    match tokio::task::spawn_blocking(move || session.join()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "FUSE session ended with an error"),
        Err(e) => warn!(error = %e, "FUSE session thread panicked"),
    }
}
