//! Any git server: real `git http-backend` on loopback, protocol v2 with partial-clone filters.

mod common;

use std::time::Duration;

use common::path_str;
use megafs_testsupport::compare::differences;
use megafs_testsupport::fixture::{self, Fixture};
use megafs_testsupport::git_server::GitServer;
use megafs_testsupport::harness::{within, Daemon};

const LIMIT: Duration = Duration::from_secs(60);

struct Setup {
    fixture: Fixture,
    server: GitServer,
    daemon: Daemon,
    _dir: tempfile::TempDir,
}

/// The fixture as a bare repository `fixture.git` under a served root.
fn setup(allow_filter: bool) -> Setup {
    let dir = tempfile::tempdir().expect("temp dir");
    let fixture = fixture::build(&dir.path().join("work")).expect("fixture");
    let root = dir.path().join("served");
    std::fs::create_dir_all(&root).expect("mkdir");
    let bare = root.join("fixture.git");
    let status = std::process::Command::new("git")
        .args(["clone", "-q", "--bare"])
        .arg(&fixture.path)
        .arg(&bare)
        .status()
        .expect("git clone");
    assert!(status.success());
    Setup {
        server: GitServer::start(&root, allow_filter).expect("git server"),
        daemon: Daemon::start(),
        fixture,
        _dir: dir,
    }
}

fn commands(s: &Setup) -> Vec<String> {
    s.server
        .requests()
        .iter()
        .map(|r| {
            r.command
                .clone()
                .unwrap_or_else(|| format!("{} {}", r.method, r.path))
        })
        .collect()
}

#[test]
fn a_git_server_mount_matches_git_archive_and_is_lazy() {
    let s = setup(true);
    let point = s.daemon.mountpoint("git");
    let url = s.server.url("fixture.git");
    s.daemon
        .ctl_ok(&["connect", &url, "--mount-point", path_str(&point)]);
    let at_connect = commands(&s);
    assert_eq!(
        at_connect.len(),
        3,
        "capabilities, ls-refs, one fetch: {at_connect:?}"
    );
    assert!(at_connect[0].starts_with("GET ") && at_connect[0].ends_with("/info/refs"));
    assert_eq!(&at_connect[1..], ["ls-refs", "fetch"]);

    s.server.clear_requests();
    let leaf = point.join("src/nested/deep/leaf.txt");
    let bytes = within(LIMIT, move || std::fs::read(leaf)).expect("read");
    assert_eq!(bytes, b"a leaf, deep down\n");
    // The trees came with the commit; without object-info, learning the file's size fetches
    // its content into the cache, and the read itself then costs nothing.
    assert_eq!(
        commands(&s),
        ["fetch"],
        "one request for one cold file: {:?}",
        s.server.requests()
    );

    let expected = tempfile::tempdir().expect("temp dir");
    fixture::archive(&s.fixture.path, &s.fixture.head, expected.path()).expect("archive");
    let (want, got) = (expected.path().to_path_buf(), point.clone());
    let diffs = within(LIMIT, move || differences(&want, &got)).expect("walk");
    assert!(
        diffs.is_empty(),
        "differs from git archive:\n{}",
        diffs.join("\n")
    );
    let status = s.daemon.status();
    assert_eq!(status["mounts"][0]["commit"], s.fixture.head.as_str());
    assert!(status["mounts"][0]["source"]
        .as_str()
        .is_some_and(|x| x.starts_with("git http://")));
}

#[test]
fn a_git_server_mount_follows_a_tag() {
    let s = setup(true);
    let point = s.daemon.mountpoint("v1");
    let url = s.server.url("fixture.git");
    s.daemon.ctl_ok(&[
        "connect",
        &url,
        "--mount-point",
        path_str(&point),
        "--ref",
        "v1",
    ]);
    let readme = point.join("README.md");
    assert_eq!(
        within(LIMIT, move || std::fs::read(readme)).expect("read"),
        b"fixture v1\n"
    );
    let err = s.daemon.ctl_err(&[
        "connect",
        &url,
        "--mount-point",
        path_str(&s.daemon.mountpoint("x")),
        "--ref",
        "nope",
        "--name",
        "x",
    ]);
    assert!(err.contains("unknown ref \"nope\""), "{err}");
}

#[test]
fn a_server_without_filters_is_refused_clearly() {
    let s = setup(false);
    let point = s.daemon.mountpoint("nofilter");
    let url = s.server.url("fixture.git");
    let err = s
        .daemon
        .ctl_err(&["connect", &url, "--mount-point", path_str(&point)]);
    assert!(
        err.contains("does not support partial-clone filters"),
        "{err}"
    );
    let missing = s.server.url("missing.git");
    let err = s.daemon.ctl_err(&[
        "connect",
        &missing,
        "--mount-point",
        path_str(&point),
        "--name",
        "m",
    ]);
    assert!(err.contains("repository not found"), "{err}");
}
