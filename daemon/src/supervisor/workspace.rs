//! Writable mounts: the FUSE view of the commit goes to a directory only the daemon reaches
//! (`<runtime>/lower/NAME`), and the workspace's overlay over it onto the user's mountpoint.
//! The system daemon mounts the kernel's overlayfs, which reaches the view with root's
//! rights (so the view lets root in, out of users' reach); a per-user daemon, which may not,
//! runs `fuse-overlayfs` as its user.

use std::ffi::OsStr;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use tracing::warn;

use super::SupervisorError;
use crate::mount_name::MountName;
use crate::repo_path::RepoPath;
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

/// Takes the overlay at `point` off for `action` ("reset", "refresh"): refused while
/// anything is open in it, naming the holders, unless `force` (then detached lazily: its
/// holders keep what they opened). Blocking.
pub(super) fn take_off(
    point: &Path,
    force: bool,
    action: &'static str,
) -> Result<(), SupervisorError> {
    if !force {
        let holders = mounts::holders_of(&[point]);
        if !holders.is_empty() {
            return Err(SupervisorError::InUse {
                path: point.to_path_buf(),
                holders: holders.join(", "),
                action,
            });
        }
    }
    super::mountpoint::unmount(point, force)
}

/// A path a user named in the workspace mounted at `point`: inside the repository (as
/// `changes` shows it), or absolute and under `point`.
pub(super) fn repo_path_in(point: &Path, path: &[u8]) -> Result<RepoPath, SupervisorError> {
    let shown = String::from_utf8_lossy(path);
    let inside = if path.starts_with(b"/") {
        Path::new(OsStr::from_bytes(path))
            .strip_prefix(point)
            .map_err(|_| {
                SupervisorError::Invalid(format!(
                    "{shown} is not under the workspace's mountpoint {}",
                    point.display()
                ))
            })?
            .as_os_str()
            .as_bytes()
    } else {
        path
    };
    let names: Vec<&[u8]> = inside
        .split(|&b| b == b'/')
        .filter(|name| !name.is_empty())
        .collect();
    if names.iter().any(|name| *name == b"." || *name == b"..") {
        return Err(SupervisorError::Invalid(format!(
            "{shown}: name a path inside the repository, without . or .."
        )));
    }
    if names.is_empty() {
        return Err(SupervisorError::Invalid(format!(
            "{shown} is the whole workspace: name no path to reset all of it"
        )));
    }
    Ok(RepoPath::from_components(names))
}

/// Takes the changes at `paths` (every change if none) out of the upper layer `upper`, which
/// no overlay may have mounted; the entries removed. A path's deletion goes with it, as
/// overlayfs or fuse-overlayfs recorded it. Blocking.
pub(super) fn remove_changes(upper: &Path, paths: &[RepoPath]) -> io::Result<u64> {
    let failed =
        |path: &Path, e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    let mut removed = 0;
    let mut remove = |path: &Path| -> io::Result<()> {
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.is_dir() => {
                removed += count_entries(path) + 1;
                std::fs::remove_dir_all(path).map_err(|e| failed(path, e))
            }
            Ok(_) => {
                removed += 1;
                std::fs::remove_file(path).map_err(|e| failed(path, e))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(failed(path, e)),
        }
    };
    if paths.is_empty() {
        for entry in std::fs::read_dir(upper).map_err(|e| failed(upper, e))? {
            remove(&entry.map_err(|e| failed(upper, e))?.path())?;
        }
        return Ok(removed);
    }
    for path in paths {
        let at = upper.join(OsStr::from_bytes(path.as_bytes()));
        remove(&at)?;
        if let (Some(parent), Some(name)) = (at.parent(), at.file_name()) {
            let mut whiteout = b".wh.".to_vec();
            whiteout.extend_from_slice(name.as_bytes());
            remove(&parent.join(OsStr::from_bytes(&whiteout)))?;
        }
    }
    Ok(removed)
}

/// Entries under directory `dir`.
fn count_entries(dir: &Path) -> u64 {
    let mut count = 0;
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            count += 1;
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(entry.path());
            }
        }
    }
    count
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_named_inside_the_repository_or_under_the_mountpoint() {
        let point = Path::new("/home/ann/ws");
        let named =
            |path: &str| repo_path_in(point, path.as_bytes()).map(|p| p.as_bytes().to_vec());
        assert_eq!(named("src/lib.rs").ok(), Some(b"src/lib.rs".to_vec()));
        assert_eq!(named("src/").ok(), Some(b"src".to_vec()));
        assert_eq!(
            named("/home/ann/ws/src//lib.rs").ok(),
            Some(b"src/lib.rs".to_vec())
        );
        assert!(named("/home/ann/other/lib.rs").is_err());
        assert!(named("src/../etc").is_err());
        assert!(named("./src").is_err());
        assert!(named("/home/ann/ws").is_err());
        assert!(named("").is_err());
    }

    #[test]
    fn removing_changes_takes_paths_and_their_whiteouts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let upper = dir.path();
        std::fs::create_dir_all(upper.join("src/new")).expect("mkdir");
        std::fs::write(upper.join("src/lib.rs"), "edited").expect("write");
        std::fs::write(upper.join("src/new/a"), "a").expect("write");
        std::fs::write(upper.join("src/new/b"), "b").expect("write");
        // fuse-overlayfs's record of a deletion.
        std::fs::write(upper.join("src/.wh.gone.rs"), "").expect("write");
        std::fs::write(upper.join("README"), "edited").expect("write");
        let path = |p: &str| RepoPath::from_components(p.split('/').map(str::as_bytes));

        let removed = remove_changes(upper, &[path("src/lib.rs"), path("src/gone.rs")]);
        assert_eq!(removed.ok(), Some(2));
        assert!(!upper.join("src/lib.rs").exists());
        assert!(!upper.join("src/.wh.gone.rs").exists());
        assert!(upper.join("README").exists());

        // A directory goes whole; a path without changes is none.
        let removed = remove_changes(upper, &[path("src/new"), path("nothing/here")]);
        assert_eq!(removed.ok(), Some(3));
        assert!(upper.join("src").is_dir());

        let removed = remove_changes(upper, &[]);
        assert_eq!(removed.ok(), Some(2));
        assert_eq!(std::fs::read_dir(upper).map(|d| d.count()).ok(), Some(0));
    }
}
