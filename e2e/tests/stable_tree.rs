//! What build tools rely on seeing the same from one look to the next: a path whose object did
//! not change keeps its inode number after the kernel forgot it, across a refresh and across
//! a remount of the commit.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::World;
use megafs_testsupport::fixture::git;

const LIMIT: Duration = Duration::from_secs(30);

/// Every path under `root` (relative, the root as "") with its inode number, walked in
/// `order` (names sorted, or reversed) so that two walks do not look things up alike.
fn numbers(root: &Path, reversed: bool) -> BTreeMap<PathBuf, u64> {
    let mut found = BTreeMap::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        let meta = std::fs::symlink_metadata(root.join(&rel)).expect("stat");
        found.insert(rel.clone(), meta.ino());
        if meta.is_dir() {
            let mut names: Vec<_> = std::fs::read_dir(root.join(&rel))
                .expect("readdir")
                .map(|e| e.expect("entry").file_name())
                .collect();
            names.sort();
            if reversed {
                names.reverse();
            }
            pending.extend(names.into_iter().map(|n| rel.join(n)));
        }
    }
    found
}

fn inodes_held(point: &Path) -> u64 {
    megafs_testsupport::harness::statfs(point)
        .expect("statfs")
        .f_files
}

/// Has the kernel forget the mount's inodes (dentries and inodes dropped), and waits until
/// the daemon has been told.
fn forget_all(point: &Path) {
    let held = inodes_held(point);
    std::fs::write("/proc/sys/vm/drop_caches", "2\n").expect("drop caches");
    let deadline = Instant::now() + LIMIT;
    while inodes_held(point) > held / 2 {
        assert!(Instant::now() < deadline, "nothing was forgotten");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_path_keeps_its_inode_number_while_its_object_does() {
    let world = World::new();
    let point = world.mount_local("stable", "main");
    let first = numbers(&point, false);
    assert!(first.len() > 20, "{first:?}");
    let distinct: std::collections::HashSet<_> = first.values().collect();
    assert_eq!(distinct.len(), first.len(), "numbers are unique: {first:?}");

    // Forgotten by the kernel and looked up again, in another order: the same numbers.
    forget_all(&point);
    assert_eq!(numbers(&point, true), first);

    // A commit changes one file at the root: it and the root get new numbers, all else keeps.
    let repo = &world.fixture.path;
    std::fs::write(repo.join("README.md"), b"fixture v3\n").expect("write");
    git(repo, &["add", "README.md"]).expect("add");
    git(repo, &["commit", "-q", "-m", "third"]).expect("commit");
    let out = world.daemon.ctl_ok(&["refresh", "stable"]);
    assert!(out.contains("moved from"), "{out}");
    forget_all(&point);
    let refreshed = numbers(&point, false);
    assert_eq!(refreshed.len(), first.len());
    for (path, ino) in &first {
        let changed = path.as_os_str() == "README.md";
        let root = path.as_os_str().is_empty();
        if changed {
            assert_ne!(refreshed[path], *ino, "{}", path.display());
        } else if !root {
            assert_eq!(refreshed[path], *ino, "{}", path.display());
        }
    }

    // Unmounted and mounted again (a deep file looked up first): the same numbers.
    world.daemon.ctl_ok(&["disconnect", "stable"]);
    let again = world.mount_local("stable-again", "main");
    let deep = std::fs::metadata(again.join("src/nested/deep/leaf.txt")).expect("stat");
    assert_eq!(deep.ino(), refreshed[Path::new("src/nested/deep/leaf.txt")]);
    let mut remounted = numbers(&again, true);
    let mut expected = refreshed;
    // The root is number 1 in every mount; only entries below it are hashed.
    remounted.remove(Path::new(""));
    expected.remove(Path::new(""));
    assert_eq!(remounted, expected);
}
