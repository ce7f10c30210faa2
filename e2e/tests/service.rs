//! megafsd as a service: configured mounts, sd_notify, reload, supervision, stale mounts,
//! --check-config, and the per-user daemon that mega-fuse starts.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{path_str, MEGA_REPO};
use megafs_testsupport::fixture::{self, Fixture};
use megafs_testsupport::harness::{bin, is_mounted, statfs, within, Daemon};
use megafs_testsupport::{DevServer, ServedRepo};

const LIMIT: Duration = Duration::from_secs(30);

struct Setup {
    fixture: Fixture,
    server: DevServer,
    _dir: tempfile::TempDir,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("temp dir");
    let fixture = fixture::build(&dir.path().join("repo")).expect("fixture");
    let served = ServedRepo::open(MEGA_REPO, &fixture.path, "main").expect("serve");
    let server = DevServer::start(vec![served]).expect("dev server");
    Setup {
        fixture,
        server,
        _dir: dir,
    }
}

/// A `[[mount]]` table for the local fixture.
fn local_mount(name: &str, repo: &Fixture, point: &std::path::Path, git_ref: &str) -> String {
    format!(
        "[[mount]]\nname = \"{name}\"\nrepo = \"{}\"\nref = \"{git_ref}\"\nmountpoint = \"{}\"\n\n",
        path_str(&repo.path),
        path_str(point)
    )
}

fn mega_mount(name: &str, url: &str, point: &std::path::Path) -> String {
    format!(
        "[[mount]]\nname = \"{name}\"\nmega_url = \"{url}\"\nrepo = \"{MEGA_REPO}\"\nmountpoint = \"{}\"\n\n",
        path_str(point)
    )
}

/// A mountpoint path under the daemon's directory, registered for cleanup but not created
/// (configured mountpoints are created by the daemon).
fn planned_point(daemon_dir: &std::path::Path, name: &str) -> std::path::PathBuf {
    daemon_dir.join("mnt").join(name)
}

fn mount_named(daemon: &Daemon, name: &str) -> Option<serde_json::Value> {
    daemon.status()["mounts"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == name)
        .cloned()
}

/// Polls status until `pred` holds for mount `name` (supervision runs every second).
fn wait_for_mount(daemon: &Daemon, name: &str, pred: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + LIMIT;
    loop {
        if mount_named(daemon, name).is_some_and(|m| pred(&m)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "mount {name} never got there: {}\n{}",
            daemon.status(),
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn read(path: std::path::PathBuf) -> Vec<u8> {
    within(LIMIT, move || std::fs::read(&path)).expect("read")
}

fn daemon_with(config: impl Fn(&std::path::Path) -> String, watchdog: Option<u64>) -> Daemon {
    Daemon::start_configured(config, watchdog)
}

#[test]
fn configured_mounts_come_up_and_systemd_hears_about_it() {
    let s = setup();
    let url = s.server.url();
    let daemon = daemon_with(
        |dir| {
            local_mount("local", &s.fixture, &planned_point(dir, "local"), "v1")
                + &mega_mount("mega", &url, &planned_point(dir, "mega"))
        },
        Some(300_000),
    );
    let mnt = daemon.dir.path().join("mnt");
    assert_eq!(read(mnt.join("local/README.md")), b"fixture v1\n");
    assert_eq!(read(mnt.join("mega/README.md")), b"fixture v2\n");
    let status = daemon.status();
    assert_eq!(
        status["mounts"].as_array().map(Vec::len),
        Some(2),
        "{status}"
    );
    assert!(status["mounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .all(|m| m["from_config"] == true));
    let table = daemon.ctl_ok(&["status"]);
    assert!(
        table.contains("local*") && table.contains("from the configuration file"),
        "{table}"
    );

    // READY=1 with a summary, then watchdog pings (WATCHDOG_USEC=300ms: at least every 150ms).
    let notes = &daemon.notifications;
    let ready = notes
        .wait_for(0, LIMIT, |m| {
            m.contains("READY=1") && m.contains("STATUS=2 mounts ready")
        })
        .expect("READY=1 with STATUS");
    let first_ping = notes
        .wait_for(ready, LIMIT, |m| m.lines().any(|l| l == "WATCHDOG=1"))
        .expect("a ping");
    notes
        .wait_for(first_ping + 1, LIMIT, |m| {
            m.lines().any(|l| l == "WATCHDOG=1")
        })
        .expect("pings keep coming");

    // SIGHUP: RELOADING=1 then READY=1 again.
    let before = notes.all().len();
    daemon.signal(libc::SIGHUP);
    let reloading = notes
        .wait_for(before, LIMIT, |m| {
            m.contains("RELOADING=1") && m.contains("MONOTONIC_USEC=")
        })
        .expect("RELOADING=1");
    notes
        .wait_for(reloading, LIMIT, |m| m.contains("READY=1"))
        .expect("READY=1 after the reload");
}

#[test]
fn sigterm_says_stopping_and_leaves_no_mount() {
    let s = setup();
    let mut daemon = daemon_with(
        |dir| local_mount("a", &s.fixture, &planned_point(dir, "a"), ""),
        None,
    );
    let point = daemon.dir.path().join("mnt/a");
    assert!(is_mounted(&point));
    let status = daemon.stop().expect("running");
    assert!(status.success(), "{status}");
    assert!(!is_mounted(&point));
    assert!(daemon
        .notifications
        .all()
        .iter()
        .any(|m| m.contains("STOPPING=1")));
}

#[test]
fn reload_adds_removes_changes_and_keeps_mounts() {
    let s = setup();
    let f = &s.fixture;
    let daemon = daemon_with(
        |dir| {
            local_mount("keep", f, &planned_point(dir, "keep"), "")
                + &local_mount("drop", f, &planned_point(dir, "drop"), "")
                + &local_mount("change", f, &planned_point(dir, "change"), "")
        },
        None,
    );
    let mnt = daemon.dir.path().join("mnt");
    // An open file on the kept mount must survive the reload untouched.
    let kept_file = std::fs::File::open(mnt.join("keep/README.md")).expect("open");
    let dir = daemon.dir.path().to_path_buf();
    daemon.write_config(
        &(local_mount("keep", f, &planned_point(&dir, "keep"), "")
            + &local_mount("change", f, &planned_point(&dir, "change"), "v1")
            + &local_mount("add", f, &planned_point(&dir, "add"), "")),
    );
    daemon.mountpoint_registered(&planned_point(&dir, "add"));
    let before = daemon.notifications.all().len();
    daemon.signal(libc::SIGHUP);
    daemon
        .notifications
        .wait_for(before, LIMIT, |m| m.contains("READY=1"))
        .expect("reloaded");
    assert!(
        !is_mounted(&mnt.join("drop")),
        "removed entries are unmounted"
    );
    assert_eq!(
        read(mnt.join("change/README.md")),
        b"fixture v1\n",
        "changed ref remounted"
    );
    assert_eq!(
        read(mnt.join("add/README.md")),
        b"fixture v2\n",
        "new entry mounted"
    );
    let mut buf = String::new();
    use std::io::Read;
    (&kept_file)
        .read_to_string(&mut buf)
        .expect("the kept mount still serves open files");
    assert_eq!(buf, "fixture v2\n");
    let names: Vec<String> = daemon.status()["mounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .map(|m| m["name"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(names, ["add", "change", "keep"]);

    // A broken config on reload keeps what runs and says why.
    daemon.write_config("[[mount]]\nthis is = not toml");
    let before = daemon.notifications.all().len();
    daemon.signal(libc::SIGHUP);
    daemon
        .notifications
        .wait_for(before, LIMIT, |m| m.contains("READY=1"))
        .expect("ready again");
    assert_eq!(daemon.status()["mounts"].as_array().map(Vec::len), Some(3));
    assert!(daemon
        .log()
        .contains("invalid configuration; keeping the old one"));
}

#[test]
fn a_failing_entry_retries_without_stopping_the_others() {
    let s = setup();
    // A port with nothing behind it, for now.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_url = format!("http://{}", listener.local_addr().expect("addr"));
    drop(listener);
    let daemon = daemon_with(
        |dir| {
            local_mount("good", &s.fixture, &planned_point(dir, "good"), "")
                + &mega_mount("flaky", &dead_url, &planned_point(dir, "flaky"))
        },
        None,
    );
    let flaky = mount_named(&daemon, "flaky").expect("listed");
    assert_eq!(flaky["state"], "retrying", "{flaky}");
    assert!(
        flaky["error"]
            .as_str()
            .is_some_and(|e| e.contains("unreachable")),
        "{flaky}"
    );
    assert!(daemon
        .notifications
        .all()
        .iter()
        .any(|m| m.contains("READY=1") && m.contains("1 retrying: flaky")));
    assert_eq!(
        read(daemon.dir.path().join("mnt/good/README.md")),
        b"fixture v2\n"
    );
    // The table stays narrow: the reason goes on a line of its own below it, and into the
    // detail view of the mount.
    let table = daemon.ctl_ok(&["status"]);
    let row = table
        .lines()
        .find(|l| l.starts_with("flaky*"))
        .expect("a row");
    assert!(!row.contains("unreachable"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("flaky retrying: ") && l.contains("unreachable")),
        "{table}"
    );
    let detail = daemon.ctl_ok(&["status", "flaky"]);
    assert!(
        detail
            .lines()
            .any(|l| l.starts_with("reason:") && l.contains("unreachable")),
        "{detail}"
    );
    assert!(
        detail.contains("from:       the configuration file"),
        "{detail}"
    );
    let one: serde_json::Value =
        serde_json::from_str(&daemon.ctl_ok(&["status", "flaky", "--json"])).expect("json");
    assert_eq!(one["state"], "retrying", "{one}");
    let err = daemon.ctl_err(&["status", "nope"]);
    assert!(err.contains("no mount is named \"nope\""), "{err}");
}

#[test]
fn mounts_unmounted_behind_the_daemons_back_are_restored_or_marked_lost() {
    let s = setup();
    let daemon = daemon_with(
        |dir| {
            local_mount(
                "configured",
                &s.fixture,
                &planned_point(dir, "configured"),
                "",
            )
        },
        None,
    );
    let configured = daemon.dir.path().join("mnt/configured");
    let runtime = daemon.mountpoint("runtime");
    daemon.ctl_ok(&[
        "connect",
        path_str(&s.fixture.path),
        "--mount-point",
        path_str(&runtime),
    ]);
    for point in [&configured, &runtime] {
        assert!(Command::new("umount")
            .arg(point)
            .status()
            .expect("umount")
            .success());
    }
    wait_for_mount(&daemon, "repo", |m| m["state"] == "lost");
    wait_for_mount(&daemon, "configured", |m| m["state"] == "mounted");
    assert_eq!(read(configured.join("README.md")), b"fixture v2\n");
    assert!(daemon.log().contains("unmounted behind the daemon's back"));
    // A lost mount can be forgotten.
    daemon.ctl_ok(&["disconnect", "repo"]);
    assert!(mount_named(&daemon, "repo").is_none());
}

#[test]
fn a_killed_daemons_mounts_are_cleaned_and_mounted_again_at_the_next_start() {
    let s = setup();
    let mut daemon = daemon_with(
        |dir| local_mount("survivor", &s.fixture, &planned_point(dir, "survivor"), ""),
        None,
    );
    let configured = daemon.dir.path().join("mnt/survivor");
    let runtime = daemon.mountpoint("orphan");
    daemon.ctl_ok(&[
        "connect",
        path_str(&s.fixture.path),
        "--mount-point",
        path_str(&runtime),
        "--name",
        "orphan",
    ]);
    daemon.kill();
    // statfs always reaches the (dead) filesystem; a stat may be answered from the cache.
    assert_eq!(
        statfs(&runtime).err(),
        Some(libc::ENOTCONN),
        "no daemon behind it"
    );
    daemon.start_again();
    assert!(
        daemon.log().contains("cleaned a stale mount"),
        "{}",
        daemon.log()
    );
    // The connected mount was recorded: cleaned, then mounted again.
    assert_eq!(
        read(runtime.join("README.md")),
        b"fixture v2\n",
        "connected mount is back"
    );
    assert_eq!(
        read(configured.join("README.md")),
        b"fixture v2\n",
        "configured mount is back"
    );
}

#[test]
fn check_config_reports_errors_with_file_line_and_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[daemon]\nsocket = \"/x\"\n\n[[mount]]\nrepo = \"/r\"\nmountpoint = \"/m\"\nmega_url = \"nope\"\n").expect("write");
    let out = Command::new(bin("megafsd"))
        .args(["--check-config", "--config"])
        .arg(&bad)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:7: mount.mega_url: invalid Mega URL",
            bad.display()
        )),
        "{stderr}"
    );

    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[[mount]]\nname = \"rg\"\nrepo = \"/third-party/rg\"\nmega_url = \"http://127.0.0.1:8000\"\nmountpoint = \"/mnt/rg\"\n").expect("write");
    let out = Command::new(bin("megafsd"))
        .args(["--check-config", "--config"])
        .arg(&good)
        .output()
        .expect("run");
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("mount rg at /mnt/rg: mega http://127.0.0.1:8000 /third-party/rg"),
        "{stdout}"
    );

    let missing = Command::new(bin("megafsd"))
        .args(["--check-config", "--config", "/no/such/file.toml"])
        .output()
        .expect("run");
    assert_eq!(missing.status.code(), Some(2));
}

#[test]
fn a_foreground_daemon_whose_stderr_is_a_file_writes_no_colours() {
    // The harness runs megafsd --foreground with stderr into a file.
    let daemon = Daemon::start();
    let log = daemon.log();
    assert!(log.contains("megafsd ready"), "{log}");
    assert!(!log.contains('\x1b'), "escape codes in:\n{log}");
}

#[test]
fn check_config_finds_mounts_that_would_fail_without_mounting_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let not_git = dir.path().join("plain");
    std::fs::create_dir_all(&not_git).expect("mkdir");
    let a_file = dir.path().join("a-file");
    std::fs::write(&a_file, b"x").expect("write");
    let d = dir.path().display();
    let config = dir.path().join("megafsd.toml");
    let text = format!(
        "[[mount]]\nname = \"gone\"\nrepo = \"{d}/nowhere\"\nmountpoint = \"{d}/m1\"\n\n\
         [[mount]]\nname = \"plain\"\nrepo = \"{d}/plain\"\nmountpoint = \"{d}/m2\"\n\n\
         [[mount]]\nname = \"deep\"\nrepo = \"/third-party/x\"\nmega_url = \"http://127.0.0.1:9\"\n\
         mountpoint = \"{d}/no/such/m3\"\n\n\
         [[mount]]\nname = \"onfile\"\nrepo = \"/third-party/x\"\nmega_url = \"http://127.0.0.1:9\"\n\
         mountpoint = \"{d}/a-file\"\n"
    );
    std::fs::write(&config, text).expect("write");
    let out = Command::new(bin("megafsd"))
        .args(["--check-config", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for problem in [
        format!("mount gone: the repository {d}/nowhere does not exist"),
        format!("mount plain: {d}/plain is not a git repository"),
        format!("mount deep: the mountpoint's parent {d}/no/such does not exist"),
        format!("mount onfile: the mountpoint {d}/a-file is not a directory"),
    ] {
        assert!(stderr.contains(&problem), "{problem:?} in:\n{stderr}");
    }
    assert_eq!(stderr.lines().count(), 4, "one line each:\n{stderr}");
    // What would be mounted is still listed, for the record.
    assert!(String::from_utf8_lossy(&out.stdout).contains("mount deep at"));
}

#[test]
fn mega_fuse_starts_a_per_user_daemon_where_none_runs() {
    let s = setup();
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("run/megafsd.sock");
    let point = dir.path().join("mnt");
    std::fs::create_dir_all(&point).expect("mkdir");
    let cache = dir.path().join("cache");
    let logs = dir.path().join("log");
    let guard = Cleanup {
        point: point.clone(),
        socket: socket.clone(),
    };
    let out = Command::new(bin("mega-fuse"))
        .arg("--socket")
        .arg(&socket)
        .args([
            "--mount-point",
            path_str(&point),
            "--cache-dir",
            path_str(&cache),
            "--log-dir",
            path_str(&logs),
        ])
        .args(["--mega-url", &s.server.url(), "connect", MEGA_REPO])
        .env("NO_COLOR", "1")
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("started megafsd"));
    // The command returned; the mount stays, served by the daemon it started.
    assert_eq!(read(point.join("README.md")), b"fixture v2\n");
    assert!(
        cache.join("objects").is_dir(),
        "the daemon uses the given cache dir"
    );
    assert!(
        logs.join("megafsd.log").is_file(),
        "and logs to the given log dir"
    );
    drop(guard);
    assert!(!is_mounted(&point));
}

/// Stops a daemon started by mega-fuse (found through its status) and unmounts.
struct Cleanup {
    point: std::path::PathBuf,
    socket: std::path::PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let out = Command::new(bin("mega-fuse"))
            .arg("--socket")
            .arg(&self.socket)
            .args(["status", "--json"])
            .output();
        let pid = out
            .ok()
            .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
            .and_then(|v| v["daemon"]["pid"].as_i64());
        if let Some(pid) = pid {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while is_mounted(&self.point) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if is_mounted(&self.point) {
            let _ = Command::new("umount").arg("-l").arg(&self.point).status();
        }
    }
}

#[test]
fn an_unprivileged_user_gets_a_daemon_of_their_own_through_fusermount3() {
    use std::os::unix::fs::PermissionsExt;
    megafs_testsupport::harness::open_fuse_to_users();
    let s = setup();
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let home = dir.path().join("home");
    let point = home.join("mnt");
    std::fs::create_dir_all(&point).expect("mkdir");
    for path in [&home, &point] {
        let c = std::ffi::CString::new(path_str(path)).expect("path");
        // SAFETY: chown on a valid C string we own.
        assert_eq!(
            unsafe { libc::chown(c.as_ptr(), NOBODY, NOBODY) },
            0,
            "chown"
        );
    }
    let socket = home.join("run/megafs/megafsd.sock");
    let guard = Cleanup {
        point: point.clone(),
        socket: socket.clone(),
    };
    let as_nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "env"])
            .arg(format!("HOME={}", home.display()))
            .arg(format!("XDG_RUNTIME_DIR={}", home.join("run").display()))
            .args(args)
            .output()
            .expect("setpriv")
    };
    let ctl = bin("mega-fuse");
    let out = as_nobody(&[
        path_str(&ctl),
        "--mount-point",
        path_str(&point),
        "--mega-url",
        &s.server.url(),
        "connect",
        MEGA_REPO,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The default per-user socket, cache and log places were used.
    assert!(socket.exists(), "socket under $XDG_RUNTIME_DIR/megafs");
    assert!(home.join(".cache/megafs/objects").is_dir());
    let cat = as_nobody(&["cat", path_str(&point.join("README.md"))]);
    assert_eq!(String::from_utf8_lossy(&cat.stdout), "fixture v2\n");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let line = mountinfo
        .lines()
        .find(|l| l.contains(path_str(&point)))
        .expect("mounted");
    assert!(
        line.contains("user_id=65534"),
        "mounted by the user: {line}"
    );
    drop(guard);
    assert!(!is_mounted(&point));
}

const NOBODY: libc::uid_t = 65534;
