//! What a workspace changed against its commit, like `git status --porcelain`: the upper
//! layer is read as overlayfs wrote it (files copied up or made, whiteouts for deletions,
//! opaque directories, redirects for renamed directories) and compared with the commit's
//! trees. Only directories the upper layer holds are compared, so the cost follows the
//! changes, not the repository; a file is hashed as a git blob only where the commit has one
//! at its path (a file written back to its old bytes is not modified). A directory added or
//! deleted whole is one change, its path ending in `/`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::fs::{FsError, MountFs};
use crate::object::{EntryKind, ObjectHasher, ObjectId, ObjectKind};
use crate::repo_path::RepoPath;

/// One entry of a commit's directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub name: Vec<u8>,
    pub kind: EntryKind,
    pub oid: ObjectId,
}

/// The commit a workspace's changes are against, as far as comparing needs it.
#[async_trait]
pub trait CommitTree: Send + Sync {
    /// The entries of directory `path`; None if the commit has no directory there.
    async fn list(&self, path: &RepoPath) -> Result<Option<Vec<Item>>, FsError>;
    /// The content of blob `oid`, at `path` in the commit.
    async fn blob(&self, path: &RepoPath, oid: ObjectId) -> Result<Vec<u8>, FsError>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
    /// A file became a symlink or a directory, or the other way round.
    TypeChanged,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Change {
    pub path: RepoPath,
    pub kind: ChangeKind,
    /// A directory added or deleted whole, standing for everything under it.
    pub whole_dir: bool,
    /// Changed upstream too since the change was made (see `conflicts`).
    pub conflict: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ChangesError {
    #[error("reading the workspace at {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{0}")]
    Commit(#[from] FsError),
}

/// What the upper layer holds at one name.
#[derive(Debug)]
enum Upper {
    /// A deletion.
    Whiteout,
    /// A regular file; its mode is read when it is hashed, so scanning needs no stat.
    File {
        path: PathBuf,
    },
    Symlink {
        path: PathBuf,
    },
    Dir(UpperDir),
}

#[derive(Debug, Default)]
struct UpperDir {
    entries: BTreeMap<Vec<u8>, Upper>,
    /// Nothing of the lower layer shows through.
    opaque: bool,
    /// A renamed directory: where its lower content comes from (overlayfs's redirect).
    redirect: Option<Vec<u8>>,
}

/// A file compared with the commit's: same bytes and mode, or modified.
struct Candidate {
    path: RepoPath,
    upper: PathBuf,
    symlink: bool,
    commit: Item,
}

/// A mount's commit, as its filesystem lists it.
#[async_trait]
impl CommitTree for std::sync::Arc<MountFs> {
    async fn list(&self, path: &RepoPath) -> Result<Option<Vec<Item>>, FsError> {
        Ok(self.tree_at(path).await?.map(|entries| {
            entries
                .into_iter()
                .map(|(name, kind, oid)| Item {
                    name: name.to_vec(),
                    kind,
                    oid,
                })
                .collect()
        }))
    }

    async fn blob(&self, path: &RepoPath, oid: ObjectId) -> Result<Vec<u8>, FsError> {
        self.blob_at(path, oid).await
    }
}

/// The changes of the workspace whose upper layer is `upper` against `commit`, sorted by path.
pub async fn compute(upper: &Path, commit: &dyn CommitTree) -> Result<Vec<Change>, ChangesError> {
    let root = {
        let upper = upper.to_path_buf();
        tokio::task::spawn_blocking(move || scan(&upper))
            .await
            .map_err(|e| ChangesError::Io {
                path: PathBuf::new(),
                source: io::Error::other(e),
            })??
    };
    let mut found = Vec::new();
    let mut candidates = Vec::new();
    let root_path = RepoPath::root();
    let commit_root = commit.list(&root_path).await?;
    let mut pending = vec![Pending {
        path: root_path.clone(),
        upper: Some(&root),
        origin: Some(root_path),
        commit: commit_root,
    }];
    while let Some(dir) = pending.pop() {
        compare_dir(dir, commit, &mut found, &mut candidates, &mut pending).await?;
    }
    let modified = tokio::task::spawn_blocking(move || hash_candidates(candidates))
        .await
        .map_err(|e| ChangesError::Io {
            path: PathBuf::new(),
            source: io::Error::other(e),
        })??;
    found.extend(modified);
    found.sort();
    Ok(found)
}

/// A directory to compare: its path, what the upper layer holds there, where its lower
/// content comes from in the commit, and what the commit holds at its path.
struct Pending<'a> {
    path: RepoPath,
    upper: Option<&'a UpperDir>,
    origin: Option<RepoPath>,
    commit: Option<Vec<Item>>,
}

/// What the workspace shows at one name of a directory.
enum Shown<'a> {
    Upper(&'a Upper),
    /// From the lower layer, unchanged: an entry of the commit at the origin.
    Lower(Item),
}

async fn compare_dir<'a>(
    dir: Pending<'a>,
    commit: &dyn CommitTree,
    found: &mut Vec<Change>,
    candidates: &mut Vec<Candidate>,
    pending: &mut Vec<Pending<'a>>,
) -> Result<(), ChangesError> {
    let opaque = dir.upper.is_some_and(|u| u.opaque);
    let lower = match (&dir.origin, opaque) {
        (Some(origin), false) => commit.list(origin).await?.unwrap_or_default(),
        _ => Vec::new(),
    };
    let lower: BTreeMap<Vec<u8>, Item> = lower.into_iter().map(|i| (i.name.clone(), i)).collect();
    let here: BTreeMap<Vec<u8>, Item> = dir
        .commit
        .unwrap_or_default()
        .into_iter()
        .map(|i| (i.name.clone(), i))
        .collect();
    let mut names: BTreeSet<&Vec<u8>> = here.keys().chain(lower.keys()).collect();
    if let Some(upper) = dir.upper {
        names.extend(upper.entries.keys());
    }
    for name in names {
        let path = dir.path.join(name);
        let shown = match dir.upper.and_then(|u| u.entries.get(name)) {
            Some(Upper::Whiteout) => None,
            Some(entry) => Some(Shown::Upper(entry)),
            None => lower.get(name).cloned().map(Shown::Lower),
        };
        let was = here.get(name);
        let change = |kind, whole_dir| Change {
            path: path.clone(),
            kind,
            whole_dir,
            conflict: false,
        };
        match (shown, was) {
            (None, None) => {}
            (Some(shown), None) => found.push(change(ChangeKind::Added, is_dir(&shown))),
            (None, Some(was)) => found.push(change(ChangeKind::Deleted, was.kind.is_dir())),
            (Some(Shown::Upper(Upper::Dir(upper))), Some(was)) => {
                if !was.kind.is_dir() {
                    found.push(change(ChangeKind::TypeChanged, false));
                    continue;
                }
                let origin = match (&upper.redirect, upper.opaque) {
                    (Some(redirect), _) => Some(redirected(&dir.path, redirect)),
                    (None, true) => None,
                    (None, false) => lower.get(name).filter(|i| i.kind.is_dir()).map(|_| {
                        dir.origin
                            .as_ref()
                            .map_or_else(|| path.clone(), |o| o.join(name))
                    }),
                };
                let listed = commit.list(&path).await?;
                pending.push(Pending {
                    path,
                    upper: Some(upper),
                    origin,
                    commit: listed,
                });
            }
            (Some(Shown::Upper(file)), Some(was)) => {
                let (upper, symlink) = match file {
                    Upper::File { path } => (path.clone(), false),
                    Upper::Symlink { path } => (path.clone(), true),
                    Upper::Whiteout | Upper::Dir(_) => continue,
                };
                let same_type = match was.kind {
                    EntryKind::Symlink => symlink,
                    EntryKind::File | EntryKind::Executable => !symlink,
                    EntryKind::Directory | EntryKind::Submodule => false,
                };
                if !same_type {
                    found.push(change(ChangeKind::TypeChanged, false));
                    continue;
                }
                candidates.push(Candidate {
                    path,
                    upper,
                    symlink,
                    commit: was.clone(),
                });
            }
            (Some(Shown::Lower(item)), Some(was)) => {
                // Unchanged content at another path (a renamed directory's).
                if item.kind == was.kind && item.oid == was.oid {
                    continue;
                }
                if item.kind.is_dir() != was.kind.is_dir()
                    || (item.kind == EntryKind::Symlink) != (was.kind == EntryKind::Symlink)
                {
                    found.push(change(ChangeKind::TypeChanged, false));
                } else if item.kind.is_dir() {
                    let origin = dir.origin.as_ref().map(|o| o.join(name));
                    let listed = commit.list(&path).await?;
                    pending.push(Pending {
                        path,
                        upper: None,
                        origin,
                        commit: listed,
                    });
                } else {
                    found.push(change(ChangeKind::Modified, false));
                }
            }
        }
    }
    Ok(())
}

fn is_dir(shown: &Shown<'_>) -> bool {
    match shown {
        Shown::Upper(Upper::Dir(_)) => true,
        Shown::Upper(_) => false,
        Shown::Lower(item) => item.kind.is_dir(),
    }
}

/// Where a renamed directory (in `parent`) came from: overlayfs's redirect is a path from the
/// root (`/a/b`) or a name in the same parent.
fn redirected(parent: &RepoPath, redirect: &[u8]) -> RepoPath {
    match redirect.strip_prefix(b"/") {
        Some(absolute) => {
            RepoPath::from_components(absolute.split(|&b| b == b'/').filter(|c| !c.is_empty()))
        }
        None => parent.join(redirect),
    }
}

/// Files hashed at once: hashing many small files is mostly waiting on the disk, which
/// answers several reads at a time as fast as one.
const HASHERS: usize = 8;

/// Each candidate that is not the commit's blob, with the same mode, hashed a few at a time.
fn hash_candidates(candidates: Vec<Candidate>) -> Result<Vec<Change>, ChangesError> {
    let share = candidates.len().div_ceil(HASHERS).max(1);
    std::thread::scope(|scope| {
        let hashers: Vec<_> = candidates
            .chunks(share)
            .map(|part| scope.spawn(move || hash_some(part)))
            .collect();
        let mut modified = Vec::new();
        for hasher in hashers {
            let found = hasher.join().map_err(|_| ChangesError::Io {
                path: PathBuf::new(),
                source: io::Error::other("a hashing thread panicked"),
            })??;
            modified.extend(found);
        }
        Ok(modified)
    })
}

fn hash_some(candidates: &[Candidate]) -> Result<Vec<Change>, ChangesError> {
    let mut modified = Vec::new();
    for c in candidates {
        let io_error = |source| ChangesError::Io {
            path: c.upper.clone(),
            source,
        };
        let (oid, executable) = if c.symlink {
            let target = fs::read_link(&c.upper).map_err(io_error)?;
            let oid = ObjectId::hash(ObjectKind::Blob, target.as_os_str().as_encoded_bytes());
            (oid, false)
        } else {
            hash_file(&c.upper).map_err(io_error)?
        };
        let same_mode = c.symlink || executable == (c.commit.kind == EntryKind::Executable);
        if oid != c.commit.oid || !same_mode {
            modified.push(Change {
                path: c.path.clone(),
                kind: ChangeKind::Modified,
                whole_dir: false,
                conflict: false,
            });
        }
    }
    Ok(modified)
}

/// The git blob id of the file at `path`, and whether it is executable.
fn hash_file(path: &Path) -> io::Result<(ObjectId, bool)> {
    let mut file = File::open(path)?;
    let meta = file.metadata()?;
    let len = meta.len();
    let mut hasher = ObjectHasher::new(ObjectKind::Blob, len);
    let mut buf = vec![0u8; 256 * 1024];
    let mut read = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        read += n as u64;
        hasher.update(&buf[..n]);
    }
    if read != len {
        return Err(io::Error::other("the file changed while it was read"));
    }
    Ok((hasher.finish(), meta.mode() & 0o100 != 0))
}

/// What the upper layer at `dir` holds, read whole (names and kinds: no content).
fn scan(dir: &Path) -> Result<UpperDir, ChangesError> {
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ChangesError::Io { path, source }
    };
    let mut upper = UpperDir {
        opaque: false,
        redirect: overlay_xattr(dir, "redirect").map_err(io_error(dir))?,
        entries: BTreeMap::new(),
    };
    let opaque = overlay_xattr(dir, "opaque").map_err(io_error(dir))?;
    upper.opaque = opaque.as_deref() == Some(b"y");
    // "x": the directory holds whiteouts made of xattrs rather than devices.
    let xwhiteouts = opaque.as_deref() == Some(b"x");
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let entry = entry.map_err(io_error(dir))?;
        let path = entry.path();
        let name = entry.file_name().as_encoded_bytes().to_vec();
        // fuse-overlayfs, where it may not make devices, marks deletions by name.
        if name == b".wh..wh..opq" {
            upper.opaque = true;
            continue;
        }
        if let Some(deleted) = name.strip_prefix(b".wh.") {
            upper.entries.insert(deleted.to_vec(), Upper::Whiteout);
            continue;
        }
        // The kind comes from the directory entry itself: a stat per file would cost an inode
        // read each, which dominates a scan once the kernel's caches are cold.
        let kind = entry.file_type().map_err(io_error(&path))?;
        let shown = if kind.is_char_device() {
            let meta = fs::symlink_metadata(&path).map_err(io_error(&path))?;
            if meta.rdev() != 0 {
                continue; // not something overlayfs writes, nor a file git can hold
            }
            Upper::Whiteout
        } else if kind.is_dir() {
            Upper::Dir(scan(&path)?)
        } else if kind.is_symlink() {
            Upper::Symlink { path }
        } else if xwhiteouts && is_xattr_whiteout(&path).map_err(io_error(&path))? {
            Upper::Whiteout
        } else {
            Upper::File { path }
        };
        upper.entries.insert(name, shown);
    }
    Ok(upper)
}

/// An empty file marked as a whiteout, in a directory overlayfs marked as holding such.
fn is_xattr_whiteout(path: &Path) -> io::Result<bool> {
    Ok(fs::symlink_metadata(path)?.len() == 0 && overlay_xattr(path, "whiteout")?.is_some())
}

/// An overlay xattr of `path` (`trusted.overlay.NAME`, as the kernel's overlayfs writes it,
/// else `user.overlay.NAME` or `user.fuseoverlayfs.NAME`).
fn overlay_xattr(path: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    for namespace in ["trusted.overlay", "user.overlay", "user.fuseoverlayfs"] {
        if let Some(value) = crate::sys::xattr(path, &format!("{namespace}.{name}"))? {
            return Ok(Some(value));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A commit in memory: directory path to its entries.
    #[derive(Default)]
    struct Tree(HashMap<Vec<u8>, Vec<Item>>);

    #[async_trait]
    impl CommitTree for Tree {
        async fn list(&self, path: &RepoPath) -> Result<Option<Vec<Item>>, FsError> {
            Ok(self.0.get(path.as_bytes()).cloned())
        }

        async fn blob(&self, path: &RepoPath, _: ObjectId) -> Result<Vec<u8>, FsError> {
            // Changes compare ids; they never read a commit's content.
            Err(FsError::NoSuchPath(path.clone()))
        }
    }

    fn item(name: &str, kind: EntryKind, content: &[u8]) -> Item {
        let oid = if kind.is_dir() {
            ObjectId::hash(ObjectKind::Tree, content)
        } else {
            ObjectId::hash(ObjectKind::Blob, content)
        };
        Item {
            name: name.as_bytes().to_vec(),
            kind,
            oid,
        }
    }

    /// The commit: README.md, run.sh (executable), link -> README.md, src/{a.rs, b.rs},
    /// docs/guide.md, old/x.txt.
    fn commit() -> Tree {
        let mut tree = Tree::default();
        tree.0.insert(
            b"".to_vec(),
            vec![
                item("README.md", EntryKind::File, b"readme\n"),
                item("run.sh", EntryKind::Executable, b"#!/bin/sh\n"),
                item("link", EntryKind::Symlink, b"README.md"),
                item("src", EntryKind::Directory, b"src"),
                item("docs", EntryKind::Directory, b"docs"),
                item("old", EntryKind::Directory, b"old"),
            ],
        );
        tree.0.insert(
            b"src".to_vec(),
            vec![
                item("a.rs", EntryKind::File, b"a\n"),
                item("b.rs", EntryKind::File, b"b\n"),
            ],
        );
        tree.0.insert(
            b"docs".to_vec(),
            vec![item("guide.md", EntryKind::File, b"g\n")],
        );
        tree.0.insert(
            b"old".to_vec(),
            vec![item("x.txt", EntryKind::File, b"x\n")],
        );
        tree
    }

    fn shown(changes: &[Change]) -> Vec<String> {
        changes
            .iter()
            .map(|c| {
                let slash = if c.whole_dir { "/" } else { "" };
                format!(
                    "{:?} {}{slash}",
                    c.kind,
                    String::from_utf8_lossy(c.path.as_bytes())
                )
            })
            .collect()
    }

    fn whiteout(path: &Path) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: c is a valid C string for the call; mknod makes a device node, nothing else.
        let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, 0) };
        assert_eq!(rc, 0, "mknod needs root: {}", io::Error::last_os_error());
    }

    #[tokio::test]
    async fn changes_are_read_from_the_upper_layer_like_overlayfs_writes_it() {
        let upper = tempfile::tempdir().expect("tempdir");
        let u = upper.path();
        let commit = commit();
        assert!(compute(u, &commit).await.expect("nothing").is_empty());

        // Copied up and changed; copied up and written back; a new file; a deletion; a new
        // directory; a file turned into a symlink; an executable bit dropped.
        std::fs::create_dir(u.join("src")).expect("src");
        std::fs::write(u.join("src/a.rs"), b"changed\n").expect("a");
        std::fs::write(u.join("src/b.rs"), b"b\n").expect("b back to its bytes");
        std::fs::write(u.join("src/c.rs"), b"new\n").expect("c");
        whiteout(&u.join("README.md"));
        std::fs::create_dir_all(u.join("target/debug")).expect("target");
        std::fs::write(u.join("target/debug/x"), b"built").expect("built");
        std::os::unix::fs::symlink("elsewhere", u.join("docs-link")).expect("symlink");
        std::fs::create_dir(u.join("docs")).expect("docs");
        std::os::unix::fs::symlink("x", u.join("docs/guide.md")).expect("type change");
        std::fs::write(u.join("run.sh"), b"#!/bin/sh\n").expect("same bytes");
        let changes = compute(u, &commit).await.expect("changes");
        assert_eq!(
            shown(&changes),
            [
                "Deleted README.md",
                "Added docs-link",
                "TypeChanged docs/guide.md",
                "Modified run.sh",
                "Modified src/a.rs",
                "Added src/c.rs",
                "Added target/",
            ]
        );
    }

    #[tokio::test]
    async fn renamed_and_opaque_directories_and_deleted_trees() {
        let upper = tempfile::tempdir().expect("tempdir");
        let u = upper.path();
        let commit = commit();
        // `old` renamed to `new` (overlayfs: a whiteout at the old name, the new directory
        // redirected to it); `docs` removed and made again (opaque); `src` deleted whole.
        whiteout(&u.join("old"));
        std::fs::create_dir(u.join("new")).expect("new");
        set_xattr(&u.join("new"), "trusted.overlay.redirect", b"/old");
        std::fs::create_dir(u.join("docs")).expect("docs");
        set_xattr(&u.join("docs"), "trusted.overlay.opaque", b"y");
        std::fs::write(u.join("docs/other.md"), b"o\n").expect("other");
        whiteout(&u.join("src"));
        let changes = compute(u, &commit).await.expect("changes");
        assert_eq!(
            shown(&changes),
            [
                "Deleted docs/guide.md",
                "Added docs/other.md",
                "Added new/",
                "Deleted old/",
                "Deleted src/",
            ]
        );
        // fuse-overlayfs's way of saying the same: whiteouts by name.
        let upper = tempfile::tempdir().expect("tempdir");
        std::fs::write(upper.path().join(".wh.README.md"), b"").expect("whiteout");
        let changes = compute(upper.path(), &commit).await.expect("changes");
        assert_eq!(shown(&changes), ["Deleted README.md"]);
    }

    fn set_xattr(path: &Path, name: &str, value: &[u8]) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
        let n = std::ffi::CString::new(name).expect("name");
        // SAFETY: valid C strings and a value buffer of value.len() bytes, for the call.
        let rc = unsafe {
            libc::lsetxattr(
                c.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        assert_eq!(rc, 0, "setxattr: {}", io::Error::last_os_error());
    }

    #[test]
    fn redirects_are_paths_from_the_root_or_names_in_the_parent() {
        let parent = RepoPath::from_components([&b"a"[..], b"b"]);
        assert_eq!(redirected(&parent, b"c").as_bytes(), b"a/b/c");
        assert_eq!(redirected(&parent, b"/x/y").as_bytes(), b"x/y");
    }
}
