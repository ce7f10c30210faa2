//! Servers we do not trust: a repository whose trees hold entries no filesystem may show
//! (`..`, `a/b`, duplicates, unknown modes, ...), served honestly by the dev Mega server, by
//! `git http-backend` and from disk. Each bad directory fails alone, with EIO and a log line
//! naming the server, the path and the entry; the rest of the mount keeps working.

mod common;

use std::path::{Path, PathBuf};

use common::{errno, path_str};
use megafs_testsupport::git_server::GitServer;
use megafs_testsupport::harness::Daemon;
use megafs_testsupport::hostile::{self, Hostile, BAD_DIRS};
use megafs_testsupport::{DevServer, Faults, ServedRepo};

const MEGA_REPO: &str = "/third-party/hostile";

fn list(dir: &Path) -> std::io::Result<Vec<String>> {
    std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect()
}

/// The good parts read right, and every bad directory (but those in `skip`) fails alone with
/// EIO and a log line naming the server, its path and what is wrong.
fn assert_contained(daemon: &Daemon, point: &Path, server: &str, skip: &[&str]) {
    let read = |p: &str| std::fs::read_to_string(point.join(p)).expect(p);
    assert_eq!(read("README.md"), "hostile fixture\n");
    let mut names = list(point).expect("the root lists");
    names.sort();
    assert!(names.contains(&"dot-dot".to_string()), "{names:?}");
    for (dir, what) in BAD_DIRS.iter().filter(|(d, _)| !skip.contains(d)) {
        let err = list(&point.join(dir)).expect_err(dir);
        assert_eq!(errno(&err), libc::EIO, "{dir}: {err}");
        let log = daemon.log();
        let line = log
            .lines()
            .find(|l| {
                l.contains("refusing a malformed tree") && l.contains(&format!("path=/{dir} "))
            })
            .unwrap_or_else(|| panic!("no log line for {dir}:\n{log}"));
        assert!(line.contains(what), "{dir}: {line}");
        assert!(line.contains(server), "names the server: {line}");
    }
    // Nothing of that spoiled the rest.
    assert_eq!(read("ok/file.txt"), "a good file\n");
    assert_eq!(list(&point.join("ok")).expect("ok lists"), ["file.txt"]);
}

fn build(dir: &tempfile::TempDir) -> Hostile {
    hostile::build(&dir.path().join("hostile")).expect("hostile repository")
}

/// The hostile repository on the dev Mega server, mounted: the server, the daemon, the mount.
fn over_mega(dir: &tempfile::TempDir) -> (DevServer, Daemon, PathBuf) {
    let repo = build(dir);
    let served = ServedRepo::open(MEGA_REPO, &repo.path, "main").expect("serve");
    let server = DevServer::start(vec![served]).expect("dev server");
    let daemon = Daemon::start();
    let point = daemon.mountpoint("hostile");
    daemon.ctl_ok(&[
        "connect",
        MEGA_REPO,
        "--mega-url",
        &server.url(),
        "--mount-point",
        path_str(&point),
    ]);
    (server, daemon, point)
}

/// The hostile repository behind `git http-backend`, mounted. git's own upload-pack will not
/// walk a tree with an empty name, so no git server sends one: that directory is left out.
fn over_git(dir: &tempfile::TempDir) -> (GitServer, Daemon, PathBuf) {
    let repo = hostile::build_without(&dir.path().join("hostile"), &["empty-name"])
        .expect("hostile repository");
    let root = dir.path().join("served");
    std::fs::create_dir_all(&root).expect("mkdir");
    let status = std::process::Command::new("git")
        .args(["clone", "-q", "--bare"])
        .arg(&repo.path)
        .arg(root.join("hostile.git"))
        .status()
        .expect("git clone");
    assert!(status.success());
    let server = GitServer::start(&root, true).expect("git server");
    let daemon = Daemon::start();
    let point = daemon.mountpoint("hostile");
    let url = server.url("hostile.git");
    daemon.ctl_ok(&["connect", &url, "--mount-point", path_str(&point)]);
    (server, daemon, point)
}

#[test]
fn a_mega_server_serving_bad_trees_fails_only_those_directories() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (server, daemon, point) = over_mega(&dir);
    assert_contained(&daemon, &point, &server.url(), &[]);
}

#[test]
fn a_git_server_serving_bad_trees_fails_only_those_directories() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_server, daemon, point) = over_git(&dir);
    assert_contained(&daemon, &point, "127.0.0.1", &["empty-name"]);
}

#[test]
fn a_local_repository_with_bad_trees_fails_only_those_directories() {
    let dir = tempfile::tempdir().expect("temp dir");
    let repo = build(&dir);
    let daemon = Daemon::start();
    let point = daemon.mountpoint("hostile");
    daemon.ctl_ok(&[
        "connect",
        path_str(&repo.path),
        "--mount-point",
        path_str(&point),
    ]);
    assert_contained(&daemon, &point, path_str(&repo.path), &[]);
}

#[test]
fn a_listing_too_big_to_hold_is_refused_announced_or_not() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (server, daemon, point) = over_mega(&dir);
    // A megabyte past what one answer may make the daemon hold (256 MiB).
    let size = (257u64) << 20;
    for announced in [true, false] {
        server.set_faults(Faults {
            huge_trees: Some((size, announced)),
            ..Faults::default()
        });
        let err = list(&point.join("ok")).expect_err("too big to hold");
        assert_eq!(errno(&err), libc::EIO, "announced: {announced}: {err}");
    }
    let log = daemon.log();
    let refusals = log.matches("more than the 268435456 bytes allowed").count();
    assert!(refusals >= 2, "both refusals logged:\n{log}");
    // The server mends its ways: the same directory lists, and the rest never stopped.
    server.set_faults(Faults::default());
    assert_eq!(list(&point.join("ok")).expect("ok lists"), ["file.txt"]);
    let readme = std::fs::read_to_string(point.join("README.md")).expect("README.md");
    assert_eq!(readme, "hostile fixture\n");
}

#[test]
fn a_git_server_announcing_a_blob_bigger_than_the_cache_is_refused_before_a_byte() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (server, daemon, point) = over_git(&dir);
    // A terabyte announced, a kilobyte sent: nothing may be written, let alone held.
    server.answer_fetches_with(Some(hostile::bomb_answer(1 << 40)));
    let err = std::fs::read(point.join("README.md")).expect_err("refused");
    assert_eq!(errno(&err), libc::EIO, "{err}");
    let log = daemon.log();
    assert!(log.contains("larger than the whole cache"), "{log}");
    let cache = std::fs::read_dir(daemon.cache_dir.join("tmp"))
        .expect("tmp")
        .count();
    assert_eq!(cache, 0, "nothing half-written is left");
    server.answer_fetches_with(None);
    let readme = std::fs::read_to_string(point.join("README.md")).expect("README.md");
    assert_eq!(readme, "hostile fixture\n");
}
