//! Mountpoints: checking one for a caller and opening it (so that what was checked is what
//! gets mounted on), creating a configured one, and unmounting with errors that say what to
//! do.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tracing::info;

use super::SupervisorError;
use crate::access::{Access, Caller, Refusal};
use crate::mounts;

/// Checks and opens a mountpoint for `caller`: an existing, empty directory, not a mount point,
/// that the access rules let `caller` use. Returns its real path and a descriptor of it, which
/// the mount goes onto (so what was checked is what gets mounted on). Blocking.
pub(super) fn check(
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
    if mounts::is_dead(&plain) {
        clean_dead(&plain)?;
    }
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

/// Cleans the dead FUSE mount at `path` (`Transport endpoint is not connected`: its daemon is
/// gone) if it is a megafs mount, as the next mount there would find it cleaned at the
/// daemon's start; another filesystem's is not ours to take, and is named with the command
/// that cleans it.
fn clean_dead(path: &Path) -> Result<(), SupervisorError> {
    let how = match crate::sys::is_root() {
        true => format!("umount -l {}", path.display()),
        false => format!("fusermount3 -uz {}", path.display()),
    };
    let ours = mounts::megafs_mounts()
        .ok()
        .and_then(|all| all.into_iter().find(|m| m.mountpoint == path));
    let Some(dead) = ours else {
        return Err(SupervisorError::Invalid(format!(
            "{} holds a dead FUSE mount (Transport endpoint is not connected) that is not \
             megafs's; `{how}` cleans it",
            path.display()
        )));
    };
    match mounts::unmount(path, true) {
        Ok(()) => {
            info!(mountpoint = %path.display(), mount = %dead.name,
                  "cleaned a dead megafs mount left on the mountpoint");
            Ok(())
        }
        Err(e) => Err(SupervisorError::Invalid(format!(
            "{} holds a dead megafs mount ({}) that cannot be cleaned here ({e}); `{how}` \
             cleans it",
            path.display(),
            dead.name
        ))),
    }
}

/// A configured mountpoint that does not exist is created; its parent must exist.
pub(super) fn prepare_configured(path: &Path) -> Result<(), SupervisorError> {
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
        // A dead FUSE mount left there answers ENOTCONN; `check` deals with it.
        Err(_) => Ok(()),
    }
}

/// Unmounts `mountpoint` (lazily with `force`), naming a busy mount as such. Blocking.
pub(super) fn unmount(mountpoint: &Path, force: bool) -> Result<(), SupervisorError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Policy;

    #[test]
    fn mountpoint_checks() {
        let root = Caller {
            uid: 0,
            gid: 0,
            pid: 1,
        };
        let access = Access::new(Policy::default(), 0);
        let check = |path: &Path| check(path, &root, &access);
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
