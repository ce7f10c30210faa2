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

/// Every path under `root` (relative, the root as "") with what `of` takes from its stat,
/// walked with names sorted or `reversed`, so that two walks do not look things up alike.
fn walk<T>(
    root: &Path,
    reversed: bool,
    of: impl Fn(&std::fs::Metadata) -> T,
) -> BTreeMap<PathBuf, T> {
    let mut found = BTreeMap::new();
    let mut pending = vec![PathBuf::new()];
    while let Some(rel) = pending.pop() {
        let meta = std::fs::symlink_metadata(root.join(&rel)).expect("stat");
        found.insert(rel.clone(), of(&meta));
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

/// Every path's inode number.
fn numbers(root: &Path, reversed: bool) -> BTreeMap<PathBuf, u64> {
    walk(root, reversed, MetadataExt::ino)
}

/// Every path's mtime, in seconds.
fn mtimes(root: &Path) -> BTreeMap<PathBuf, i64> {
    walk(root, false, MetadataExt::mtime)
}

fn inodes_held(point: &Path) -> u64 {
    megafs_testsupport::harness::statfs(point)
        .expect("statfs")
        .f_files
}

/// Has the kernel forget the mount's inodes (dentries and inodes dropped), and waits until
/// the daemon has been told. (Dropped again while waiting: another test's walk may hold the
/// kernel's caches at that moment. The root, and a refresh's retired root, stay.)
fn forget_all(point: &Path) {
    let held = inodes_held(point);
    let deadline = Instant::now() + LIMIT;
    while inodes_held(point) > (held / 2).max(2) {
        std::fs::write("/proc/sys/vm/drop_caches", "2\n").expect("drop caches");
        assert!(Instant::now() < deadline, "nothing was forgotten");
        std::thread::sleep(Duration::from_millis(50));
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

/// What `make` would run in `build` (a dry run), one line per command.
fn make_would_run(build: &Path) -> Vec<String> {
    let out = std::process::Command::new("make")
        .args(["--no-print-directory", "-n", "-C"])
        .arg(build)
        .output()
        .expect("make (apt install make)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| !line.starts_with("make:")) // "Nothing to be done"
        .map(str::to_string)
        .collect()
}

#[test]
fn an_unchanged_file_keeps_its_mtime_across_a_refresh_and_a_remount() {
    let mut world = World::new();
    let point = world.mount_local("times", "main");
    let first = mtimes(&point);
    let t1 = first[Path::new("README.md")];
    assert!(
        first.values().all(|&t| t == t1),
        "one commit, one time: {first:?}"
    );

    // A build from three of its files, outside the mount.
    let build = tempfile::tempdir().expect("temp dir");
    let sources = ["README.md", "src/main.rs", "src/nested/mid.txt"];
    let mut makefile = String::from("all:");
    for (i, _) in sources.iter().enumerate() {
        makefile.push_str(&format!(" out{i}"));
    }
    makefile.push('\n');
    for (i, source) in sources.iter().enumerate() {
        makefile.push_str(&format!(
            "out{i}: {}\n\tcp $< $@\n",
            point.join(source).display()
        ));
    }
    std::fs::write(build.path().join("Makefile"), makefile).expect("Makefile");
    let made = std::process::Command::new("make")
        .args(["-s", "-C"])
        .arg(build.path())
        .status()
        .expect("make");
    assert!(made.success());
    let pending = make_would_run(build.path());
    assert!(pending.is_empty(), "all built: {pending:?} (t1 {t1})");

    // A commit dated ahead of the build changes README.md and adds a file.
    let t2 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
        + 1000;
    let repo = &world.fixture.path;
    std::fs::write(repo.join("README.md"), b"fixture v3\n").expect("write");
    std::fs::write(repo.join("src/added.rs"), b"// new\n").expect("write");
    git(repo, &["add", "README.md", "src/added.rs"]).expect("add");
    let date = format!("@{t2} +0000");
    let committed = std::process::Command::new("git")
        .args(["commit", "-q", "-m", "ahead"])
        .current_dir(repo)
        .env("GIT_COMMITTER_DATE", &date)
        .env("GIT_AUTHOR_DATE", &date)
        .status()
        .expect("git commit");
    assert!(committed.success());
    let out = world.daemon.ctl_ok(&["refresh", "times"]);
    assert!(out.contains("moved from"), "{out}");
    forget_all(&point);

    let second = mtimes(&point);
    for (path, time) in &second {
        let new = ["", "README.md", "src", "src/added.rs"].contains(&path.to_str().expect("utf-8"));
        let want = if new { t2 } else { t1 };
        assert_eq!(*time, want, "{}", path.display());
    }
    // make rebuilds what changed, and only that.
    assert_eq!(
        make_would_run(build.path()),
        [format!("cp {}/README.md out0", point.display())]
    );

    // Unmounted and mounted again, and after a daemon restart: the same times.
    world.daemon.ctl_ok(&["disconnect", "times"]);
    let point = world.mount_local("times", "main");
    assert_eq!(mtimes(&point), second);
    // A restart mounts it again by itself (a connected mount is recorded).
    world.daemon.restart();
    assert_eq!(mtimes(&point), second);
}
