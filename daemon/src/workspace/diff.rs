//! `mega-fuse diff`: a workspace's changes as one patch against its commit. `changes` says
//! which paths changed; each file there (every file under a directory added or deleted
//! whole) is read as the commit has it, through the mount's loader, and as the workspace
//! shows it, through the overlay from a descriptor of its root, one component at a time and
//! never following a symlink: what the user's links point at is not the daemon's to read.
//! `patch` writes each pair.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::changes::{Change, ChangesError, CommitTree, Item};
use super::patch::{self, Version};
use crate::object::EntryKind;
use crate::repo_path::RepoPath;
use crate::{mounts, sys};

/// The most of a patch sent at once: well under what a gRPC message may hold (4 MiB).
const CHUNK: usize = 1 << 20;

/// A file the workspace shows: a regular file (executable or not) or a symlink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    File { executable: bool },
    Symlink,
}

/// The workspace as its user sees it, read from a descriptor of its root.
pub struct Shown {
    root: OwnedFd,
    point: PathBuf,
}

impl Shown {
    /// The workspace mounted at `point`, reached without a symlink. Blocking.
    pub fn open(point: &Path) -> io::Result<Shown> {
        Ok(Shown {
            root: mounts::open_dir(point, true)?,
            point: point.to_path_buf(),
        })
    }

    fn failed(&self, path: &RepoPath) -> impl FnOnce(io::Error) -> ChangesError + '_ {
        let at = self
            .point
            .join(std::ffi::OsStr::from_bytes(path.as_bytes()));
        move |source| ChangesError::Io { path: at, source }
    }

    /// The directory holding `path` (opened O_PATH) and `path`'s last name; None for the
    /// root, or where a component on the way is not a directory (gone meanwhile).
    fn parent_of(&self, path: &RepoPath) -> io::Result<Option<(OwnedFd, Vec<u8>)>> {
        let names: Vec<&[u8]> = path.components().collect();
        let Some((last, dirs)) = names.split_last() else {
            return Ok(None);
        };
        let mut dir = sys::open_at(&self.root, b".", libc::O_PATH | libc::O_DIRECTORY)?;
        for name in dirs {
            match sys::open_at(&dir, name, libc::O_PATH | libc::O_DIRECTORY) {
                Ok(next) => dir = next,
                Err(e) if is_gone(&e) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        Ok(Some((dir, last.to_vec())))
    }

    /// Every file at or under `path` (a file, a symlink, or a directory walked whole),
    /// sorted by path. Blocking.
    fn files(&self, path: &RepoPath) -> Result<Vec<(RepoPath, Kind)>, ChangesError> {
        let mut found = Vec::new();
        let Some((parent, name)) = self.parent_of(path).map_err(self.failed(path))? else {
            return Ok(found);
        };
        let mut pending = vec![(path.clone(), Arc::new(parent), name)];
        while let Some((path, parent, name)) = pending.pop() {
            let meta = match sys::open_at(&*parent, &name, libc::O_PATH) {
                Ok(fd) => File::from(fd).metadata().map_err(self.failed(&path))?,
                Err(e) if is_gone(&e) => continue,
                Err(e) => return Err(self.failed(&path)(e)),
            };
            let kind = meta.file_type();
            // Anything but a file, a symlink or a directory (a fifo, a socket, a device) is
            // nothing git keeps: left out, as git leaves it out.
            if kind.is_symlink() {
                found.push((path, Kind::Symlink));
            } else if kind.is_file() {
                let executable = meta.mode() & 0o100 != 0;
                found.push((path, Kind::File { executable }));
            } else if kind.is_dir() {
                let dir = sys::open_at(&*parent, &name, libc::O_RDONLY | libc::O_DIRECTORY)
                    .map_err(self.failed(&path))?;
                let names = list(&dir).map_err(self.failed(&path))?;
                let dir = Arc::new(dir);
                for child in names {
                    pending.push((path.join(&child), dir.clone(), child));
                }
            }
        }
        found.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(found)
    }

    /// What the workspace holds at `path` now, as `kind` was seen. Blocking.
    fn read(&self, path: &RepoPath, kind: Kind) -> Result<Option<Version>, ChangesError> {
        let Some((parent, name)) = self.parent_of(path).map_err(self.failed(path))? else {
            return Ok(None);
        };
        let read = match kind {
            Kind::Symlink => {
                sys::read_link_at(&parent, &name).map(|target| Version::Symlink { target })
            }
            Kind::File { executable } => {
                sys::open_at(&parent, &name, libc::O_RDONLY).and_then(|fd| {
                    let mut bytes = Vec::new();
                    File::from(fd).read_to_end(&mut bytes)?;
                    Ok(Version::File { bytes, executable })
                })
            }
        };
        match read {
            Ok(version) => Ok(Some(version)),
            Err(e) if is_gone(&e) => Ok(None),
            Err(e) => Err(self.failed(path)(e)),
        }
    }
}

/// The names in directory `dir` (opened for reading).
fn list(dir: &OwnedFd) -> io::Result<Vec<Vec<u8>>> {
    use std::os::fd::AsRawFd;
    // Our own descriptor, named through /proc: nothing a user can swap.
    let via = format!("/proc/self/fd/{}", dir.as_raw_fd());
    std::fs::read_dir(via)?
        .map(|entry| entry.map(|e| e.file_name().as_bytes().to_vec()))
        .collect()
}

/// Whether `e` says the path went away (or became something else) since it was listed.
fn is_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ELOOP)
    )
}

/// Whether `path` is one of `only` or under one (everything, if `only` is empty).
fn wanted(path: &RepoPath, only: &[RepoPath]) -> bool {
    only.is_empty() || only.iter().any(|o| path.is_within(o))
}

/// Every file of the commit at or under `path` (submodules have none git could patch).
async fn commit_files(
    commit: &dyn CommitTree,
    path: &RepoPath,
) -> Result<Vec<(RepoPath, Item)>, ChangesError> {
    let names: Vec<&[u8]> = path.components().collect();
    let Some((last, dirs)) = names.split_last() else {
        return Ok(Vec::new());
    };
    let parent = RepoPath::from_components(dirs.iter().copied());
    let Some(entries) = commit.list(&parent).await? else {
        return Ok(Vec::new());
    };
    let Some(item) = entries.into_iter().find(|i| i.name == *last) else {
        return Ok(Vec::new());
    };
    let mut found = Vec::new();
    let mut pending = vec![(path.clone(), item)];
    while let Some((path, item)) = pending.pop() {
        match item.kind {
            EntryKind::File | EntryKind::Executable | EntryKind::Symlink => {
                found.push((path, item))
            }
            EntryKind::Directory => {
                for child in commit.list(&path).await?.unwrap_or_default() {
                    pending.push((path.join(&child.name), child));
                }
            }
            EntryKind::Submodule => {}
        }
    }
    Ok(found)
}

/// One path of the patch: what the commit has there and what the workspace shows.
type Pair = (Option<Item>, Option<Kind>);

/// Sends the patch of `changes` (only of the paths at or under `only`, if any) down `out`,
/// a file at a time; stops early if nobody listens any more. The files patched.
pub async fn send(
    changes: &[Change],
    only: &[RepoPath],
    commit: &dyn CommitTree,
    shown: Arc<Shown>,
    out: &mpsc::Sender<Vec<u8>>,
) -> Result<u64, ChangesError> {
    let mut patched = 0;
    for change in changes {
        let relevant = only
            .iter()
            .any(|o| o.is_within(&change.path) || change.path.is_within(o));
        if !only.is_empty() && !relevant {
            continue;
        }
        let mut pairs: BTreeMap<RepoPath, Pair> = BTreeMap::new();
        for (path, item) in commit_files(commit, &change.path).await? {
            pairs.entry(path).or_default().0 = Some(item);
        }
        let files = {
            let (shown, path) = (shown.clone(), change.path.clone());
            tokio::task::spawn_blocking(move || shown.files(&path))
                .await
                .map_err(|e| ChangesError::Io {
                    path: PathBuf::new(),
                    source: io::Error::other(e),
                })??
        };
        for (path, kind) in files {
            pairs.entry(path).or_default().1 = Some(kind);
        }
        pairs.retain(|path, _| wanted(path, only));
        // Deletions first, so that a file replacing a directory (or the other way round)
        // finds its place free when the patch is applied.
        let (deleted, rest): (Vec<_>, Vec<_>) =
            pairs.into_iter().partition(|(_, (_, new))| new.is_none());
        for (path, (old, new)) in deleted.into_iter().chain(rest) {
            let before = match old {
                Some(item) => Some(commit_version(commit, &path, item).await?),
                None => None,
            };
            let after = match new {
                Some(kind) => {
                    let (shown, path) = (shown.clone(), path.clone());
                    tokio::task::spawn_blocking(move || shown.read(&path, kind))
                        .await
                        .map_err(|e| ChangesError::Io {
                            path: PathBuf::new(),
                            source: io::Error::other(e),
                        })??
                }
                None => None,
            };
            if before == after {
                continue;
            }
            let mut text = Vec::new();
            patch::write(&mut text, path.as_bytes(), before.as_ref(), after.as_ref());
            for part in text.chunks(CHUNK) {
                if out.send(part.to_vec()).await.is_err() {
                    return Ok(patched);
                }
            }
            patched += 1;
        }
    }
    Ok(patched)
}

/// The commit's version of `path`, whose entry is `item`.
async fn commit_version(
    commit: &dyn CommitTree,
    path: &RepoPath,
    item: Item,
) -> Result<Version, ChangesError> {
    let bytes = commit.blob(path, item.oid).await?;
    Ok(match item.kind {
        EntryKind::Symlink => Version::Symlink { target: bytes },
        kind => Version::File {
            bytes,
            executable: kind == EntryKind::Executable,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str) -> RepoPath {
        RepoPath::from_components(p.split('/').filter(|c| !c.is_empty()).map(str::as_bytes))
    }

    #[test]
    fn paths_are_within_a_directory_by_whole_names() {
        assert!(path("src/lib.rs").is_within(&path("src")));
        assert!(path("src").is_within(&path("src")));
        assert!(!path("srcs/lib.rs").is_within(&path("src")));
        assert!(path("anything").is_within(&RepoPath::root()));
        assert!(wanted(&path("a/b"), &[]));
        assert!(!wanted(&path("a/b"), &[path("b")]));
    }

    #[test]
    fn the_workspace_is_read_without_following_symlinks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("ws");
        std::fs::create_dir_all(root.join("src/deep")).expect("mkdir");
        std::fs::write(root.join("src/deep/a.rs"), "a\n").expect("write");
        std::fs::write(root.join("src/b.sh"), "b\n").expect("write");
        std::fs::set_permissions(
            root.join("src/b.sh"),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        let secret = dir.path().join("secret");
        std::fs::create_dir(&secret).expect("mkdir");
        std::fs::write(secret.join("key"), "not yours\n").expect("write");
        std::os::unix::fs::symlink(&secret, root.join("src/out")).expect("symlink");

        let shown = Shown::open(&root).expect("open");
        let files = shown.files(&path("src")).expect("files");
        let expected = [
            (path("src/b.sh"), Kind::File { executable: true }),
            (path("src/deep/a.rs"), Kind::File { executable: false }),
            (path("src/out"), Kind::Symlink),
        ];
        assert_eq!(files, expected);
        // A path through the symlink is not there; the symlink itself reads as its target.
        assert_eq!(
            shown
                .read(&path("src/out/key"), Kind::File { executable: false })
                .expect("read"),
            None
        );
        assert_eq!(
            shown.read(&path("src/out"), Kind::Symlink).expect("read"),
            Some(Version::Symlink {
                target: secret.as_os_str().as_bytes().to_vec()
            })
        );
        // A file that became a symlink since it was listed is not read through it.
        std::fs::remove_file(root.join("src/b.sh")).expect("rm");
        std::os::unix::fs::symlink(secret.join("key"), root.join("src/b.sh")).expect("symlink");
        assert_eq!(
            shown
                .read(&path("src/b.sh"), Kind::File { executable: true })
                .expect("read"),
            None
        );
        assert!(shown.files(&path("missing/x")).expect("files").is_empty());
    }
}
