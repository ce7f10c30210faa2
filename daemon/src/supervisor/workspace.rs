//! Writable mounts: the FUSE view of the commit goes to a directory only the daemon reaches
//! (`<runtime>/lower/NAME`), and the workspace's overlay over it onto the user's mountpoint.
//! The system daemon mounts the kernel's overlayfs, which reaches the view with root's
//! rights (so the view lets root in, out of users' reach); a per-user daemon, which may not,
//! runs `fuse-overlayfs` as its user.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use tracing::warn;

use super::SupervisorError;
use crate::mount_name::MountName;
use crate::workspace::overlay::{self, Layers};
use crate::workspace::Workspace;
use crate::{mounts, sys};

/// A writable mount's overlay over its FUSE view.
pub(super) struct Overlay {
    pub(super) workspace: Workspace,
    /// Where the FUSE view of the commit is mounted.
    pub(super) lower: PathBuf,
}

/// Makes `lowers/NAME` ready for a writable mount's FUSE view: an empty directory, not a
/// mount point, inside a directory only the daemon reaches. Its path and a descriptor of it.
/// Blocking.
pub(super) fn prepare_lower(
    lowers: &Path,
    name: &MountName,
) -> Result<(PathBuf, OwnedFd), SupervisorError> {
    let failed = |path: &Path, source: io::Error| SupervisorError::Mount {
        path: path.to_path_buf(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(lowers)
        .map_err(|e| failed(lowers, e))?;
    let lower = lowers.join(name.as_str());
    if mounts::is_mount_point(&lower) {
        // A view left by a daemon that is gone, which the stale-mount cleaning could not take.
        mounts::unmount(&lower, true).map_err(|e| failed(&lower, e))?;
    }
    match std::fs::create_dir(&lower) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(failed(&lower, e)),
    }
    let dir = mounts::open_dir(&lower, true).map_err(|e| failed(&lower, e))?;
    Ok((lower, dir))
}

/// Mounts `workspace`'s overlay over the view at `lower` onto the user's mountpoint `point`
/// (opened as `dir`). Blocking.
pub(super) fn mount_overlay(
    workspace: &Workspace,
    lower: &Path,
    point: &Path,
    dir: &OwnedFd,
    name: &MountName,
) -> Result<(), SupervisorError> {
    let (upper, work) = (workspace.upper(), workspace.work());
    let layers = Layers {
        lower,
        upper: &upper,
        work: &work,
    };
    let mounted = if sys::is_root() {
        overlay::mount(&layers, dir, name).map_err(|e| match e.raw_os_error() {
            // overlayfs refuses an upper layer it cannot keep changes in (no xattrs, no
            // whiteouts, or another overlay): say which.
            Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => io::Error::new(
                e.kind(),
                format!(
                    "{}: its filesystem cannot hold an overlay's upper layer (overlayfs needs \
                     xattrs and whiteouts there; put the state directory on ext4, xfs, btrfs \
                     or tmpfs)",
                    workspace.dir().display()
                ),
            ),
            _ => e,
        })
    } else {
        overlay::mount_fuse_overlayfs(&layers, point, name)
    };
    mounted.map_err(|source| SupervisorError::Mount {
        path: point.to_path_buf(),
        source,
    })
}

/// Unmounts a writable mount: its overlay at `point` (lazily with `force`; a busy one is an
/// error otherwise), then its view at `lower`. Blocking.
pub(super) fn unmount(point: &Path, lower: &Path, force: bool) -> Result<(), SupervisorError> {
    if mounts::is_mount_point(point) {
        super::mountpoint::unmount(point, force)?;
    }
    unmount_view(lower);
    Ok(())
}

/// Unmounts the view beneath an overlay that is gone (lazily, if something still holds it).
pub(super) fn unmount_view(lower: &Path) {
    if !mounts::is_mount_point(lower) {
        return;
    }
    if let Err(e) = mounts::unmount_patiently(lower, false) {
        if let Err(e) = mounts::unmount(lower, true) {
            warn!(lower = %lower.display(), error = %e, "cannot unmount a workspace's view");
        } else {
            warn!(lower = %lower.display(), error = %e, "a workspace's view was busy: detached");
        }
    }
}
