//! Following a branch: `mega-fuse refresh` moves a mount to the newest commit; open files keep
//! their old bytes, unchanged directories keep their inode numbers.

mod common;

use std::io::Read;
use std::os::unix::fs::MetadataExt;

use common::{path_str, World};
use megafs_testsupport::fixture::git;
use megafs_testsupport::harness::{list_names, Daemon};

#[test]
fn refresh_shows_the_new_commit_and_keeps_what_did_not_change() {
    let world = World::new();
    let point = world.mount_local("follow", "main");
    let src_ino = std::fs::metadata(point.join("src")).expect("stat").ino();
    let names = |dir: &std::path::Path| list_names(dir).expect("readdir");
    // List the root now, so the kernel caches the listing the refresh must invalidate.
    assert!(names(&point).contains(&"empty.txt".to_string()));
    let leaf_before = std::fs::read(point.join("src/nested/deep/leaf.txt")).expect("read");
    let mut open_readme = std::fs::File::open(point.join("README.md")).expect("open");

    // Commit to the branch the mount follows: change a file, add one, delete one.
    let repo = &world.fixture.path;
    std::fs::write(repo.join("README.md"), b"fixture v3\n").expect("write");
    std::fs::write(repo.join("added.txt"), b"new\n").expect("write");
    git(repo, &["rm", "-q", "empty.txt"]).expect("rm");
    git(repo, &["add", "README.md", "added.txt"]).expect("add");
    git(repo, &["commit", "-q", "-m", "third"]).expect("commit");
    let head = git(repo, &["rev-parse", "HEAD"]).expect("rev-parse");

    let out = world.daemon.ctl_ok(&["refresh", "follow"]);
    assert!(out.contains("moved from"), "{out}");
    let status = world.daemon.status();
    assert_eq!(status["mounts"][0]["commit"], head.as_str());
    assert!(status["mounts"][0]["refreshed_at"].as_i64() > Some(0));

    assert_eq!(
        std::fs::read(point.join("README.md")).expect("read"),
        b"fixture v3\n"
    );
    assert_eq!(
        std::fs::read(point.join("added.txt")).expect("read"),
        b"new\n"
    );
    assert!(!point.join("empty.txt").exists(), "deleted files are gone");
    let listed = names(&point);
    assert!(listed.contains(&"added.txt".to_string()), "{listed:?}");
    assert!(!listed.contains(&"empty.txt".to_string()), "{listed:?}");
    // The file opened before the refresh still reads the commit it was opened at.
    let mut old = String::new();
    open_readme
        .read_to_string(&mut old)
        .expect("read the open file");
    assert_eq!(old, "fixture v2\n");
    // Unchanged directories keep their inode numbers and content.
    assert_eq!(
        std::fs::metadata(point.join("src")).expect("stat").ino(),
        src_ino
    );
    assert_eq!(
        std::fs::read(point.join("src/nested/deep/leaf.txt")).expect("read"),
        leaf_before
    );

    let again = world.daemon.ctl_ok(&["refresh", path_str(&point)]);
    assert!(again.contains("up to date"), "{again}");
}

#[test]
fn a_refresh_interval_follows_the_branch_by_itself() {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().expect("temp dir");
    let fixture = megafs_testsupport::fixture::build(&dir.path().join("repo")).expect("fixture");
    let daemon = Daemon::start_configured(
        |home| {
            format!(
                "[[mount]]
name = \"periodic\"
repo = \"{}\"
ref = \"main\"
mountpoint = \"{}\"
refresh_interval = \"1s\"
",
                path_str(&fixture.path),
                path_str(&home.join("mnt/periodic"))
            )
        },
        None,
    );
    let point = daemon.dir.path().join("mnt/periodic");
    assert_eq!(
        std::fs::read(point.join("README.md")).expect("read"),
        b"fixture v2\n"
    );
    std::fs::write(fixture.path.join("README.md"), b"fixture v4\n").expect("write");
    git(&fixture.path, &["add", "README.md"]).expect("add");
    git(&fixture.path, &["commit", "-q", "-m", "fourth"]).expect("commit");
    let head = git(&fixture.path, &["rev-parse", "HEAD"]).expect("head");
    let deadline = Instant::now() + Duration::from_secs(20);
    while daemon.status()["mounts"][0]["commit"] != head.as_str() {
        assert!(
            Instant::now() < deadline,
            "never refreshed: {}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        std::fs::read(point.join("README.md")).expect("read"),
        b"fixture v4\n"
    );
}
