//! Every error a user can meet: a clear one-line message, a non-zero exit, nothing left
//! half-mounted.

mod common;

use std::process::Command;

use common::{path_str, World, MEGA_REPO};
use megafs_testsupport::harness::{bin, is_mounted, Daemon};

/// Asserts the failure is one line that says `needle`, and that nothing new is mounted.
fn assert_clean_failure(world: &World, args: &[&str], needle: &str) {
    let before = world.daemon.status()["mounts"].as_array().map(Vec::len);
    let stderr = world.daemon.ctl_err(args);
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert_eq!(
        world.daemon.status()["mounts"].as_array().map(Vec::len),
        before
    );
}

#[test]
fn connect_errors_are_clear_and_leave_nothing_mounted() {
    let world = World::new();
    let repo = path_str(&world.fixture.path).to_string();
    let url = world.server.url();

    let missing = world.daemon.dir.path().join("missing");
    assert_clean_failure(
        &world,
        &["connect", &repo, "--mount-point", path_str(&missing)],
        "does not exist",
    );

    let file = world.daemon.dir.path().join("a-file");
    std::fs::write(&file, b"x").expect("write");
    assert_clean_failure(
        &world,
        &["connect", &repo, "--mount-point", path_str(&file)],
        "is not a directory",
    );

    let full = world.daemon.mountpoint("full");
    std::fs::write(full.join("something"), b"x").expect("write");
    assert_clean_failure(
        &world,
        &["connect", &repo, "--mount-point", path_str(&full)],
        "is not empty",
    );

    let taken = world.mount_local("taken", "");
    let other = world.daemon.mountpoint("other");
    assert_clean_failure(
        &world,
        &[
            "connect",
            &repo,
            "--mount-point",
            path_str(&taken),
            "--name",
            "x",
        ],
        "already a mount point",
    );
    assert_clean_failure(
        &world,
        &[
            "connect",
            &repo,
            "--mount-point",
            path_str(&other),
            "--name",
            "taken",
        ],
        "already exists",
    );

    let point = path_str(&other);
    assert_clean_failure(
        &world,
        &[
            "connect",
            &repo,
            "--mount-point",
            point,
            "--ref",
            "no-such-ref",
        ],
        "unknown ref \"no-such-ref\"",
    );
    assert_clean_failure(
        &world,
        &["connect", "/no/such/repo", "--mount-point", point],
        "repository not found",
    );
    assert_clean_failure(
        &world,
        &[
            "connect",
            "/third-party/nope",
            "--mega-url",
            &url,
            "--mount-point",
            point,
        ],
        "repository not found",
    );
    // A port nothing listens on.
    let unreachable = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        format!("http://{}", listener.local_addr().expect("addr"))
    };
    assert_clean_failure(
        &world,
        &[
            "connect",
            MEGA_REPO,
            "--mega-url",
            &unreachable,
            "--mount-point",
            point,
        ],
        "unreachable",
    );
    assert_clean_failure(
        &world,
        &[
            "connect",
            MEGA_REPO,
            "--mega-url",
            "not a url",
            "--mount-point",
            point,
        ],
        "invalid Mega URL",
    );
    assert!(!is_mounted(&other), "nothing half-mounted");

    assert_clean_failure(
        &world,
        &["disconnect", "no-such-mount"],
        "no mount is named",
    );
}

#[test]
fn a_mega_servers_url_given_as_a_git_url_says_to_use_mega_url() {
    let world = World::new();
    let point = world.daemon.mountpoint("as-git");
    let mega = world.server.url();
    let as_git = format!("{mega}{MEGA_REPO}");
    let err = world
        .daemon
        .ctl_err(&["connect", &as_git, "--mount-point", path_str(&point)]);
    assert!(
        err.contains("is a Mega server, not a git repository"),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "mega-fuse connect {MEGA_REPO} --mega-url {} --mount-point DIR",
            mega.trim_end_matches('/')
        )),
        "{err}"
    );
    // The same server over https:// (it speaks plain HTTP) says so.
    let https = mega.replacen("http://", "https://", 1);
    let err = world.daemon.ctl_err(&[
        "connect",
        MEGA_REPO,
        "--mega-url",
        &https,
        "--mount-point",
        path_str(&point),
    ]);
    assert!(
        err.contains("the server does not speak TLS; try http://"),
        "{err}"
    );
}

#[test]
fn a_missing_daemon_says_how_to_start_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("none.sock");
    let out = Command::new(bin("mega-fuse"))
        .arg("--socket")
        .arg(&socket)
        .arg("status")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("megafsd is not running"), "{stderr}");
    assert!(
        stderr.contains("megafsd --socket"),
        "says how to start it: {stderr}"
    );
}

#[test]
fn another_users_socket_is_refused_with_a_clear_message() {
    // A socket of root's alone, as a per-user daemon's is its user's: mega-fuse run as nobody
    // (uid 65534) cannot use it and says so.
    let daemon = Daemon::start();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&daemon.socket, std::fs::Permissions::from_mode(0o600))
        .expect("chmod");
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bin("mega-fuse"))
        .arg("--socket")
        .arg(&daemon.socket)
        .arg("status")
        .output()
        .expect("setpriv");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("permission denied"), "{stderr}");
}

#[test]
fn a_second_daemon_on_the_same_socket_refuses_to_start() {
    let daemon = Daemon::start();
    let out = Command::new(bin("megafsd"))
        .arg("--socket")
        .arg(&daemon.socket)
        .arg("--cache-dir")
        .arg(daemon.dir.path().join("cache2"))
        .arg("--foreground")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("already listening"), "{stderr}");
    // The first one still answers.
    daemon.ctl_ok(&["status"]);
}
