//! Conflicts: when a workspace's commit moves (a refresh), a path changed locally that the
//! new commit changed too (an edit, an addition or a deletion on either side) keeps its
//! local version and is marked, so that `changes` shows it. The marks live in the
//! workspace's `conflicts` file, NUL-terminated repository paths (any bytes but NUL, as
//! git's), until the path is reset or is no longer a change.

use std::fs;
use std::io;
use std::path::Path;

use async_trait::async_trait;

use super::changes::Change;
use crate::fs::{FsError, MountFs};
use crate::object::{EntryKind, ObjectId};
use crate::repo_path::RepoPath;

/// The repository's trees, by root, as comparing two commits needs them.
#[async_trait]
pub trait History: Send + Sync {
    /// The kind and id of what tree `root` holds at `path`, if anything.
    async fn entry_in(
        &self,
        root: ObjectId,
        path: &RepoPath,
    ) -> Result<Option<(EntryKind, ObjectId)>, FsError>;
}

#[async_trait]
impl History for std::sync::Arc<MountFs> {
    async fn entry_in(
        &self,
        root: ObjectId,
        path: &RepoPath,
    ) -> Result<Option<(EntryKind, ObjectId)>, FsError> {
        MountFs::entry_in(self, root, path).await
    }
}

/// The paths of `changes` (made against root tree `before`) that the move to root tree
/// `after` changed as well. A directory changed whole conflicts if anything under it moved.
pub async fn between(
    changes: &[Change],
    before: ObjectId,
    after: ObjectId,
    history: &dyn History,
) -> Result<Vec<RepoPath>, FsError> {
    let mut found = Vec::new();
    if before == after {
        return Ok(found);
    }
    for change in changes {
        let was = history.entry_in(before, &change.path).await?;
        let now = history.entry_in(after, &change.path).await?;
        if was != now {
            found.push(change.path.clone());
        }
    }
    Ok(found)
}

/// Marks the changes at, under or over a path of `conflicts`.
pub fn mark(changes: &mut [Change], conflicts: &[RepoPath]) {
    for change in changes {
        change.conflict = conflicts
            .iter()
            .any(|c| c.is_within(&change.path) || change.path.is_within(c));
    }
}

/// What stays marked of `conflicts` once `changes` are what the workspace holds: the marks
/// of paths that are still changes.
pub fn still_open(conflicts: &[RepoPath], changes: &[Change]) -> Vec<RepoPath> {
    conflicts
        .iter()
        .filter(|c| {
            changes
                .iter()
                .any(|ch| c.is_within(&ch.path) || ch.path.is_within(c))
        })
        .cloned()
        .collect()
}

/// The marks kept in `file` (none if it does not exist). Blocking.
pub fn read(file: &Path) -> io::Result<Vec<RepoPath>> {
    let bytes = match fs::read(file) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(bytes
        .split(|&b| b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| RepoPath::from_components(p.split(|&b| b == b'/').filter(|c| !c.is_empty())))
        .collect())
}

/// Keeps `conflicts` in `file`, whole or not at all (written aside, then renamed over it);
/// none removes it. Blocking.
pub fn write(file: &Path, conflicts: &[RepoPath]) -> io::Result<()> {
    if conflicts.is_empty() {
        return match fs::remove_file(file) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    let mut bytes = Vec::new();
    for path in conflicts {
        bytes.extend_from_slice(path.as_bytes());
        bytes.push(0);
    }
    let aside = file.with_extension("new");
    fs::write(&aside, &bytes)?;
    fs::File::open(&aside)?.sync_all()?;
    fs::rename(&aside, file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::ObjectKind;
    use crate::workspace::changes::ChangeKind;
    use std::collections::HashMap;

    fn path(p: &str) -> RepoPath {
        RepoPath::from_components(p.split('/').filter(|c| !c.is_empty()).map(str::as_bytes))
    }

    fn change(p: &str, kind: ChangeKind) -> Change {
        Change {
            path: path(p),
            kind,
            whole_dir: false,
            conflict: false,
        }
    }

    /// Two commits' entries by (root, path).
    struct Two(HashMap<(ObjectId, Vec<u8>), (EntryKind, ObjectId)>);

    #[async_trait]
    impl History for Two {
        async fn entry_in(
            &self,
            root: ObjectId,
            path: &RepoPath,
        ) -> Result<Option<(EntryKind, ObjectId)>, FsError> {
            Ok(self.0.get(&(root, path.as_bytes().to_vec())).copied())
        }
    }

    #[tokio::test]
    async fn a_path_changed_on_both_sides_conflicts() {
        let (old, new) = (
            ObjectId::hash(ObjectKind::Tree, b"old"),
            ObjectId::hash(ObjectKind::Tree, b"new"),
        );
        let blob = |s: &str| {
            (
                EntryKind::File,
                ObjectId::hash(ObjectKind::Blob, s.as_bytes()),
            )
        };
        let mut entries = HashMap::new();
        let mut both = |p: &str, before: Option<&str>, after: Option<&str>| {
            if let Some(b) = before {
                entries.insert((old, p.as_bytes().to_vec()), blob(b));
            }
            if let Some(a) = after {
                entries.insert((new, p.as_bytes().to_vec()), blob(a));
            }
        };
        both("same.rs", Some("x"), Some("x"));
        both("edited.rs", Some("x"), Some("y"));
        both("deleted-here.rs", Some("x"), Some("y"));
        both("added-both.rs", None, Some("theirs"));
        both("gone-there.rs", Some("x"), None);
        let history = Two(entries);
        let changes = [
            change("added-both.rs", ChangeKind::Added),
            change("deleted-here.rs", ChangeKind::Deleted),
            change("edited.rs", ChangeKind::Modified),
            change("gone-there.rs", ChangeKind::Modified),
            change("mine.rs", ChangeKind::Added),
            change("same.rs", ChangeKind::Modified),
        ];
        let found = between(&changes, old, new, &history)
            .await
            .expect("conflicts");
        assert_eq!(
            found,
            [
                path("added-both.rs"),
                path("deleted-here.rs"),
                path("edited.rs"),
                path("gone-there.rs")
            ]
        );
        assert!(between(&changes, old, old, &history)
            .await
            .expect("none")
            .is_empty());
    }

    #[test]
    fn marks_follow_the_changes_and_keep_on_disk() {
        let mut changes = vec![
            Change {
                whole_dir: true,
                ..change("target", ChangeKind::Added)
            },
            change("src/a.rs", ChangeKind::Modified),
        ];
        mark(&mut changes, &[path("target/x"), path("gone.rs")]);
        assert!(changes[0].conflict && !changes[1].conflict);
        assert_eq!(
            still_open(&[path("target/x"), path("gone.rs")], &changes),
            [path("target/x")]
        );

        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("conflicts");
        assert!(read(&file).expect("none yet").is_empty());
        let odd = RepoPath::from_components([&b"caf\xe9 \n"[..], b"x"]);
        write(&file, &[path("a/b"), odd.clone()]).expect("write");
        assert_eq!(read(&file).expect("read"), [path("a/b"), odd]);
        write(&file, &[]).expect("clear");
        assert!(!file.exists());
    }
}
