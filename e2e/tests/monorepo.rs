//! A Mega monorepo mounted whole. The dev server answers as a real one does: its trunk lists
//! each imported repository (`/third-party/NAME`) as a placeholder tree, and the repository's
//! real content is served under the same path with another id. A mount of the trunk shows the
//! imports' real content, and still moves along when the trunk itself moves.

use std::path::Path;
use std::time::{Duration, Instant};

use megafs_testsupport::compare::differences;
use megafs_testsupport::fixture::{self, git};
use megafs_testsupport::harness::{list_names, within, Daemon};
use megafs_testsupport::{DevServer, ServedRepo};

const LIMIT: Duration = Duration::from_secs(60);

/// A repository with `files` committed on `main`; its head.
fn small_repo(dir: &Path, files: &[(&str, &str)]) -> String {
    std::fs::create_dir_all(dir).expect("mkdir");
    git(dir, &["init", "-q", "-b", "main"]).expect("init");
    for (rel, text) in files {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }
    git(dir, &["add", "-A"]).expect("add");
    git(dir, &["commit", "-q", "-m", "first"]).expect("commit");
    git(dir, &["rev-parse", "HEAD"]).expect("head")
}

/// `differences` between `repo` at `commit` (as `git archive` gives it) and `dir`.
fn unlike_archive(repo: &Path, commit: &str, dir: &Path) -> Vec<String> {
    let expected = tempfile::tempdir().expect("temp dir");
    fixture::archive(repo, commit, expected.path()).expect("archive");
    let dir = dir.to_path_buf();
    let expected_path = expected.path().to_path_buf();
    within(LIMIT, move || differences(&expected_path, &dir)).expect("walk")
}

/// `served` on a dev server, its trunk (`/`) mounted on a new daemon as `mono`.
fn mount_trunk(served: Vec<ServedRepo>) -> (DevServer, Daemon, std::path::PathBuf) {
    let server = DevServer::start(served).expect("dev server");
    let daemon = Daemon::start();
    let point = daemon.mountpoint("mono");
    let at = point.to_str().expect("utf-8").to_string();
    daemon.ctl_ok(&[
        "connect",
        "/",
        "--mega-url",
        &server.url(),
        "--mount-point",
        &at,
        "--name",
        "mono",
    ]);
    (server, daemon, point)
}

#[test]
fn a_trunk_mount_shows_imported_repositories_and_follows_the_trunk() {
    let work = tempfile::tempdir().expect("temp dir");
    let rg = fixture::build(&work.path().join("rg")).expect("fixture");
    let tool_dir = work.path().join("tool");
    let tool_head = small_repo(
        &tool_dir,
        &[("Cargo.toml", "[package]\n"), ("src/lib.rs", "")],
    );
    let project_dir = work.path().join("project");
    small_repo(
        &project_dir,
        &[("README", "trunk\n"), ("lib/core.rs", "pub fn v1() {}\n")],
    );
    let served = vec![
        ServedRepo::open("/third-party/rg", &rg.path, "main").expect("open"),
        ServedRepo::open("/third-party/tool", &tool_dir, "main").expect("open"),
        ServedRepo::open("/project", &project_dir, "main").expect("open"),
    ];
    let (_server, daemon, point) = mount_trunk(served);

    // The trunk lists a placeholder for the import; its path serves the real tree.
    let third_party = point.join("third-party");
    let names = within(LIMIT, move || list_names(&third_party)).expect("list /third-party");
    assert_eq!(names, ["rg", "tool"]);
    let differ = unlike_archive(&rg.path, &rg.head, &point.join("third-party/rg"));
    assert!(differ.is_empty(), "the import differs: {differ:#?}");
    let log = daemon.log();
    assert!(log.contains("entering an imported repository"), "{log}");
    assert!(!log.contains("the trunk moved"), "{log}");

    // The trunk itself moves: a directory not yet listed is found changed, and the mount
    // moves with it rather than taking the change for an import.
    std::fs::write(project_dir.join("lib/core.rs"), "pub fn v2() {}\n").expect("write");
    git(&project_dir, &["commit", "-q", "-am", "move the trunk"]).expect("commit");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let core = point.join("project/lib/core.rs");
        if within(LIMIT, move || std::fs::read(core)).is_ok_and(|b| b == b"pub fn v2() {}\n") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the mount never moved:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(daemon.log().contains("the trunk moved: refreshing"));

    // An import first entered after the move comes whole too, and the one entered before
    // still reads.
    let differ = unlike_archive(&tool_dir, &tool_head, &point.join("third-party/tool"));
    assert!(differ.is_empty(), "the import differs: {differ:#?}");
    let readme = point.join("third-party/rg/README.md");
    let read = within(LIMIT, move || std::fs::read(readme)).expect("read");
    assert_eq!(read, b"fixture v2\n");
}

/// An import pushed to after the mount entered it: what the mount has not listed yet of it
/// fails, saying why, rather than mixing two versions of the repository. (Nothing is read
/// first: a walk that reads would have the rest fetched ahead of it.)
#[test]
fn an_import_pushed_to_after_the_mount_entered_it_fails_where_not_listed_yet() {
    let work = tempfile::tempdir().expect("temp dir");
    let moving_dir = work.path().join("moving");
    small_repo(&moving_dir, &[("a/b/c.txt", "v1\n")]);
    let project_dir = work.path().join("project");
    small_repo(&project_dir, &[("README", "trunk\n")]);
    let served = vec![
        ServedRepo::open("/third-party/moving", &moving_dir, "main").expect("open"),
        ServedRepo::open("/project", &project_dir, "main").expect("open"),
    ];
    let (_server, daemon, point) = mount_trunk(served);
    let moving = point.join("third-party/moving");
    let names = within(LIMIT, move || list_names(&moving)).expect("list the import");
    assert_eq!(names, ["a"]);
    std::fs::write(moving_dir.join("a/b/c.txt"), "v2\n").expect("write");
    git(&moving_dir, &["commit", "-q", "-am", "push to the import"]).expect("commit");
    // `a` may have been listed ahead; `a/b` is not until asked for.
    let deep = point.join("third-party/moving/a/b/c.txt");
    let error = within(LIMIT, move || std::fs::read(deep)).expect_err("a moved import");
    assert_eq!(error.raw_os_error(), Some(libc::EIO), "{error}");
    let log = daemon.log();
    assert!(
        log.contains("the imported repository at /third-party/moving moved"),
        "{log}"
    );
}
