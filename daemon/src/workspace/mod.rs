//! Workspaces: a writable mount keeps its changes in a directory of the daemon's, one per
//! mount name, and shows them over the commit through an overlay (`overlay`): the kernel's
//! overlayfs, with the mount's FUSE view of the commit as its lower layer and the
//! workspace's `upper/` as its upper layer. What the changes are against the commit is
//! `changes`'s to say.
//!
//! `STATE/workspaces/NAME/` holds `workspace.toml` (the repository and ref it is of, its
//! owner, the commit its changes are against), `upper/` (the changes, owned by the mount's
//! user) and `work/` (overlayfs's scratch). The system daemon's `NAME/` is root's alone
//! (0700): the overlay reaches it with root's rights, so no user may swap what is in it, and
//! the user reaches their changes only through their mount. A per-user daemon's is its
//! user's. `conflicts`, where a refresh found any, lists the paths changed on both sides.

pub mod changes;
pub mod conflicts;
pub mod diff;
pub mod overlay;
pub mod patch;

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::location::Location;
use crate::mount_name::MountName;
use crate::repo_path::RepoPath;

/// Where a daemon keeps its workspaces.
#[derive(Clone, Debug)]
pub struct Workspaces {
    root: PathBuf,
}

/// One mount's workspace.
#[derive(Clone, Debug)]
pub struct Workspace {
    dir: PathBuf,
    meta: Meta,
}

/// What `workspace.toml` says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Meta {
    /// The repository, as `Location::repo` gives it, and its Mega server if any.
    repo: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mega_url: Option<String>,
    #[serde(default, rename = "ref")]
    git_ref: String,
    owner_uid: u32,
    owner_gid: u32,
    /// The commit its changes are against.
    #[serde(default)]
    commit: String,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    #[error("workspace {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "workspace {} holds changes to {theirs}, not {asked}: connect it to {theirs}, choose \
         another --name, or remove it with disconnect --discard",
        dir.display()
    )]
    OtherRepository {
        dir: PathBuf,
        theirs: String,
        asked: String,
    },
    #[error("workspace {} belongs to uid {owner}", dir.display())]
    NotYours { dir: PathBuf, owner: u32 },
    #[error("workspace {}: unreadable {}: {detail}", dir.display(), META)]
    BadMeta { dir: PathBuf, detail: String },
}

/// The file naming what a workspace is of.
const META: &str = "workspace.toml";

/// The file of the paths marked as conflicts.
const CONFLICTS: &str = "conflicts";

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> WorkspaceError + '_ {
    move |source| WorkspaceError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a workspace holds, as `status` tells it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Files, symlinks and deletions recorded (directories that only hold them do not count).
    pub paths: u64,
    /// Disk use, in bytes of blocks.
    pub bytes: u64,
}

impl Workspaces {
    /// The workspaces under `state_dir`.
    pub fn new(state_dir: &Path) -> Workspaces {
        Workspaces {
            root: state_dir.join("workspaces"),
        }
    }

    pub fn dir_of(&self, name: &MountName) -> PathBuf {
        self.root.join(name.as_str())
    }

    /// The workspace of mount `name`, made for `location` at `git_ref` and `owner` if there
    /// is none. An existing one must be of the same repository and belong to `owner`.
    /// Blocking.
    pub fn open(
        &self,
        name: &MountName,
        location: &Location,
        git_ref: &str,
        owner: (u32, u32),
    ) -> Result<Workspace, WorkspaceError> {
        let dir = self.dir_of(name);
        let wanted = Meta {
            repo: location.repo(),
            mega_url: location.mega_url().map(str::to_string),
            git_ref: git_ref.to_string(),
            owner_uid: owner.0,
            owner_gid: owner.1,
            commit: String::new(),
        };
        match read_meta(&dir)? {
            Some(meta) => {
                let same_repo = meta.repo == wanted.repo && meta.mega_url == wanted.mega_url;
                if !same_repo {
                    return Err(WorkspaceError::OtherRepository {
                        dir,
                        theirs: describe(&meta),
                        asked: describe(&wanted),
                    });
                }
                if meta.owner_uid != owner.0 {
                    return Err(WorkspaceError::NotYours {
                        dir,
                        owner: meta.owner_uid,
                    });
                }
                let workspace = Workspace { dir, meta };
                workspace.make_layers()?;
                Ok(workspace)
            }
            None => self.create(dir, wanted),
        }
    }

    fn create(&self, dir: PathBuf, meta: Meta) -> Result<Workspace, WorkspaceError> {
        let mut private = fs::DirBuilder::new();
        private.recursive(true).mode(0o700);
        let parent = dir.parent().unwrap_or(&self.root);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(io_error(parent))?;
        private.create(&dir).map_err(io_error(&dir))?;
        let workspace = Workspace { dir, meta };
        workspace.make_layers()?;
        workspace.write_meta()?;
        Ok(workspace)
    }

    /// Removes the workspace of mount `name` (it must not be mounted), if it exists and,
    /// with `only_of`, belongs to that uid; what it held. Blocking.
    pub fn discard(
        &self,
        name: &MountName,
        only_of: Option<u32>,
    ) -> Result<Option<Usage>, WorkspaceError> {
        let dir = self.dir_of(name);
        let Some(meta) = read_meta(&dir)? else {
            return Ok(None);
        };
        if only_of.is_some_and(|uid| uid != meta.owner_uid) {
            return Ok(None);
        }
        let usage = usage_of(&dir.join("upper"));
        fs::remove_dir_all(&dir).map_err(io_error(&dir))?;
        Ok(Some(usage))
    }
}

fn describe(meta: &Meta) -> String {
    match &meta.mega_url {
        Some(server) => format!(
            "{} on {}",
            meta.repo,
            megafs_proto::location::redacted(server)
        ),
        None => megafs_proto::location::redacted(&meta.repo),
    }
}

fn read_meta(dir: &Path) -> Result<Option<Meta>, WorkspaceError> {
    let path = dir.join(META);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(&path)(e)),
    };
    toml::from_str(&text)
        .map(Some)
        .map_err(|e| WorkspaceError::BadMeta {
            dir: dir.to_path_buf(),
            detail: e.to_string(),
        })
}

impl Workspace {
    /// The changes: the overlay's upper layer.
    pub fn upper(&self) -> PathBuf {
        self.dir.join("upper")
    }

    /// The overlay's work directory, on the same filesystem as the upper layer.
    pub fn work(&self) -> PathBuf {
        self.dir.join("work")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The commit its changes are against ("" before the first mount).
    pub fn commit(&self) -> &str {
        &self.meta.commit
    }

    /// Records that its changes are now against `commit`. Blocking.
    pub fn set_commit(&mut self, commit: &str) -> Result<(), WorkspaceError> {
        if self.meta.commit != commit {
            self.meta.commit = commit.to_string();
            self.write_meta()?;
        }
        Ok(())
    }

    /// The paths marked as conflicts (see `conflicts`). Blocking.
    pub fn conflicts(&self) -> Result<Vec<RepoPath>, WorkspaceError> {
        let file = self.dir.join(CONFLICTS);
        conflicts::read(&file).map_err(io_error(&file))
    }

    /// Marks `paths` as the conflicts, and only those. Blocking.
    pub fn set_conflicts(&self, paths: &[RepoPath]) -> Result<(), WorkspaceError> {
        let file = self.dir.join(CONFLICTS);
        conflicts::write(&file, paths).map_err(io_error(&file))
    }

    /// Lets other users into the mount's root (it is the upper layer's), or keeps them out:
    /// a workspace is as private as a read-only mount unless `--allow-other`. Blocking.
    pub fn let_others_in(&self, others: bool) -> Result<(), WorkspaceError> {
        let upper = self.upper();
        let mode = if others { 0o755 } else { 0o700 };
        fs::set_permissions(&upper, fs::Permissions::from_mode(mode)).map_err(io_error(&upper))
    }

    /// Files, symlinks and deletions recorded, and disk use. Blocking.
    pub fn usage(&self) -> Usage {
        usage_of(&self.upper())
    }

    /// `upper/` for the owner (its root is the mount's root, as private as a read-only
    /// mount's), `work/` for the daemon.
    fn make_layers(&self) -> Result<(), WorkspaceError> {
        let upper = self.upper();
        let work = self.work();
        for layer in [&upper, &work] {
            match fs::DirBuilder::new().mode(0o700).create(layer) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_error(layer)(e)),
            }
        }
        let meta = fs::symlink_metadata(&upper).map_err(io_error(&upper))?;
        if !meta.is_dir() {
            return Err(io_error(&upper)(io::Error::other("not a directory")));
        }
        let owner = (self.meta.owner_uid, self.meta.owner_gid);
        if (meta.uid(), meta.gid()) != owner {
            std::os::unix::fs::chown(&upper, Some(owner.0), Some(owner.1))
                .map_err(io_error(&upper))?;
        }
        Ok(())
    }

    fn write_meta(&self) -> Result<(), WorkspaceError> {
        let path = self.dir.join(META);
        let text = toml::to_string(&self.meta).map_err(|e| WorkspaceError::BadMeta {
            dir: self.dir.clone(),
            detail: e.to_string(),
        })?;
        let tmp = self.dir.join(format!("{META}.tmp"));
        fs::write(&tmp, text)
            .and_then(|()| fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600)))
            .and_then(|()| fs::rename(&tmp, &path))
            .map_err(io_error(&path))
    }
}

/// Walks `upper` for what it records: every file, symlink and deletion, and the blocks of all.
/// Blocking.
pub fn usage_of(upper: &Path) -> Usage {
    let mut usage = Usage::default();
    let mut dirs = vec![upper.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            usage.bytes += meta.blocks() * 512;
            if meta.is_dir() {
                dirs.push(entry.path());
            } else {
                usage.paths += 1;
            }
        }
    }
    usage
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> (u32, u32) {
        crate::sys::identity()
    }

    #[test]
    fn a_workspace_is_of_one_repository() {
        let state = tempfile::tempdir().expect("tempdir");
        let workspaces = Workspaces::new(state.path());
        let name = MountName::parse("rg").expect("name");
        let rg = Location::parse("/third-party/rg", Some("http://h:8000")).expect("rg");
        let mut ws = workspaces.open(&name, &rg, "", me()).expect("new");
        assert_eq!(ws.commit(), "");
        ws.set_commit(&"a".repeat(40)).expect("commit");
        std::fs::write(ws.upper().join("new.txt"), b"hello").expect("write");
        let again = workspaces.open(&name, &rg, "", me()).expect("again");
        assert_eq!(again.commit(), "a".repeat(40), "what it is against is kept");
        assert_eq!(again.usage().paths, 1);
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(again.dir()), 0o700);

        let other = Location::parse("/third-party/tokio", Some("http://h:8000")).expect("tokio");
        let err = workspaces
            .open(&name, &other, "", me())
            .expect_err("another repository");
        let text = err.to_string();
        assert!(
            text.contains(&workspaces.dir_of(&name).display().to_string()),
            "{text}"
        );
        assert!(text.contains("/third-party/rg on http://h:8000"), "{text}");
        let not_mine = (me().0 + 1, me().1);
        assert!(matches!(
            workspaces.open(&name, &rg, "", not_mine),
            Err(WorkspaceError::NotYours { .. })
        ));

        assert_eq!(
            workspaces
                .discard(&name, Some(not_mine.0))
                .expect("not theirs"),
            None,
            "another user's workspace is not theirs to discard"
        );
        let removed = workspaces.discard(&name, Some(me().0)).expect("discard");
        assert_eq!(removed.expect("it was there").paths, 1);
        assert!(!workspaces.dir_of(&name).exists());
        assert_eq!(workspaces.discard(&name, None).expect("again"), None);
    }
}
