//! The system daemon's socket as ordinary users: every request is authorized by the caller's
//! uid (SO_PEERCRED). Users are created for the test (useradd) and mega-fuse runs as them.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{path_str, World, MEGA_REPO};
use megafs_testsupport::harness::{bin, is_mounted, Daemon};

/// A user made for these tests, with a home of their own (under a directory all may cross).
struct User {
    uid: u32,
    gid: u32,
    home: PathBuf,
}

/// Creates user `name` unless it exists (tests run in parallel and again), and a home for it
/// under `base`.
fn user(name: &str, base: &Path) -> User {
    let id = |flag: &str| {
        let out = Command::new("id").arg(flag).arg(name).output().expect("id");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u32>()
            .ok()
    };
    if id("-u").is_none() {
        // A parallel test may have made it in between: what counts is that it exists after.
        let _ = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ])
            .stderr(Stdio::null())
            .status();
    }
    let (uid, gid) = (id("-u").expect("user made"), id("-g").expect("group"));
    let home = base.join(name);
    std::fs::create_dir_all(&home).expect("home");
    chown(&home, uid, gid);
    User { uid, gid, home }
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown");
}

/// A directory to put the users' homes in, which everyone may cross.
fn homes() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("megafs-homes")
        .tempdir()
        .expect("temp dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

/// The fixture's world, with a socket directory others may reach.
fn world(config: &str) -> World {
    let world = World::with_daemon_config(config);
    let dir = world.daemon.dir.path();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    world
}

/// Runs `program args` as `user`.
fn run_as(user: &User, program: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .uid(user.uid)
        .gid(user.gid)
        .env("HOME", &user.home)
        .stdin(Stdio::null())
        .output()
        .expect("running as a test user")
}

fn ctl_as(user: &User, daemon: &Daemon, args: &[&str]) -> Output {
    let mut all = vec!["--socket", path_str(&daemon.socket)];
    all.extend_from_slice(args);
    run_as(user, &bin("mega-fuse"), &all)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `connect` of the fixture from the dev Mega server as `user` onto `point`, with `extra`
/// arguments.
fn connect_as(world: &World, user: &User, point: &Path, extra: &[&str]) -> Output {
    world.daemon.mountpoint_registered(point);
    let url = world.server.url();
    let mut args = vec![
        "connect",
        MEGA_REPO,
        "--mega-url",
        &url,
        "--mount-point",
        path_str(point),
    ];
    args.extend_from_slice(extra);
    ctl_as(user, &world.daemon, &args)
}

/// `user` reads the fixture's README.md in the mount at `point`.
fn assert_reads_readme(user: &User, point: &Path) {
    let cat = run_as(
        user,
        Path::new("/bin/cat"),
        &[path_str(&point.join("README.md"))],
    );
    assert_eq!(
        String::from_utf8_lossy(&cat.stdout),
        "fixture v2\n",
        "{}",
        stderr(&cat)
    );
}

/// Expects `out` to have failed with a refusal by `rule`; returns its message.
fn refused(out: &Output, rule: &str) -> String {
    let text = stderr(out);
    assert!(!out.status.success(), "should be refused by {rule}");
    assert!(
        text.contains(&format!("refused by rule {rule}")),
        "refused by {rule}: {text}"
    );
    text
}

fn status_names(user: &User, daemon: &Daemon) -> Vec<String> {
    let out = ctl_as(user, daemon, &["status", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    json["mounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .map(|m| m["name"].as_str().expect("name").to_string())
        .collect()
}

#[test]
fn a_user_mounts_their_own_directory_and_nobody_else_gets_in() {
    let base = homes();
    let alice = user("megafs-alice", base.path());
    let bob = user("megafs-bob", base.path());
    let world = world("");
    let socket_mode = std::fs::metadata(&world.daemon.socket)
        .expect("socket")
        .mode();
    assert_eq!(
        socket_mode & 0o777,
        0o666,
        "every user may ask; each request is checked"
    );

    let point = alice.home.join("mnt");
    std::fs::create_dir(&point).expect("mkdir");
    chown(&point, alice.uid, alice.gid);
    let out = connect_as(&world, &alice, &point, &["--name", "alices"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        stderr(&out),
        world.daemon.log()
    );

    // Alice's files, readable by her alone: the kernel keeps everyone else out.
    let meta = std::fs::symlink_metadata(point.join("README.md"));
    assert!(meta.is_err(), "not even root looks inside a user's mount");
    assert_reads_readme(&alice, &point);
    let ls = run_as(
        &alice,
        Path::new("/usr/bin/stat"),
        &["-c", "%u", path_str(&point.join("README.md"))],
    );
    assert_eq!(
        String::from_utf8_lossy(&ls.stdout).trim(),
        alice.uid.to_string()
    );
    let snoop = run_as(
        &bob,
        Path::new("/bin/cat"),
        &[path_str(&point.join("README.md"))],
    );
    assert!(!snoop.status.success(), "bob reads alice's mount");
    assert!(
        stderr(&snoop).contains("Permission denied"),
        "{}",
        stderr(&snoop)
    );

    // Each sees their own; root sees all; the daemon logged who asked.
    assert_eq!(status_names(&alice, &world.daemon), ["alices"]);
    assert!(status_names(&bob, &world.daemon).is_empty());
    let all = world.daemon.status();
    assert_eq!(all["mounts"][0]["owner_uid"], alice.uid);
    let log = world.daemon.log();
    assert!(
        log.contains("connect requested") && log.contains(&format!("uid={}", alice.uid)),
        "{log}"
    );

    // Bob may not touch it, and is not told it exists: he hears what he would of a mount
    // that does not; alice may.
    for args in [
        &["disconnect", "alices"][..],
        &["refresh", "alices"],
        &["prefetch", "alices"],
        &["disconnect", path_str(&point)],
    ] {
        let target = args[1];
        let theirs = ctl_as(&bob, &world.daemon, args);
        assert!(!theirs.status.success(), "{args:?} succeeded for bob");
        let nobodys = ctl_as(&bob, &world.daemon, &[args[0], "/no/such/mount"]);
        assert_eq!(
            stderr(&theirs).replace(target, "TARGET"),
            stderr(&nobodys).replace("/no/such/mount", "TARGET"),
            "{args:?}"
        );
    }
    assert!(is_mounted(&point));
    let log = world.daemon.log();
    assert!(
        log.contains("request refused") && log.contains("rule=own-mounts"),
        "refusals are logged: {log}"
    );
    let out = ctl_as(&alice, &world.daemon, &["disconnect", "alices"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!is_mounted(&point));
    assert!(world
        .daemon
        .log()
        .contains(&format!("uid={} pid=", alice.uid)));
}

#[test]
fn mountpoints_a_user_may_not_use_are_refused_by_name() {
    let base = homes();
    let alice = user("megafs-alice", base.path());
    let bob = user("megafs-bob", base.path());
    let world = world("");
    let try_at = |point: &Path| connect_as(&world, &alice, point, &[]);

    let msg = refused(&try_at(Path::new("/etc")), "system-directory");
    assert!(msg.contains("/etc"), "{msg}");
    refused(&try_at(Path::new("/usr/share")), "system-directory");
    // Another user's home.
    let bobs = bob.home.join("mnt");
    std::fs::create_dir(&bobs).expect("mkdir");
    chown(&bobs, bob.uid, bob.gid);
    let msg = refused(&try_at(&bobs), "own-directory");
    assert!(msg.contains(&format!("uid {}", bob.uid)), "{msg}");
    // A symlink, even to a directory of her own.
    let real = alice.home.join("real");
    std::fs::create_dir(&real).expect("mkdir");
    chown(&real, alice.uid, alice.gid);
    let link = alice.home.join("link");
    std::os::unix::fs::symlink(&real, &link).expect("symlink");
    refused(&try_at(&link), "no-symlinks");
    refused(&try_at(&link.join("..").join("real")), "plain-path");
    // A file is no mountpoint.
    let file = alice.home.join("file");
    std::fs::write(&file, b"x").expect("write");
    chown(&file, alice.uid, alice.gid);
    let out = try_at(&file);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is not a directory"),
        "{}",
        stderr(&out)
    );
    // Her own directory, but read-only to her.
    let locked = alice.home.join("locked");
    std::fs::create_dir(&locked).expect("mkdir");
    chown(&locked, alice.uid, alice.gid);
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    refused(&try_at(&locked), "own-directory");
    // Local repositories are read with the daemon's rights: not for users.
    let repo = path_str(&world.fixture.path).to_string();
    let mine = alice.home.join("mine");
    std::fs::create_dir(&mine).expect("mkdir");
    chown(&mine, alice.uid, alice.gid);
    world.daemon.mountpoint_registered(&mine);
    refused(
        &ctl_as(
            &alice,
            &world.daemon,
            &["connect", &repo, "--mount-point", path_str(&mine)],
        ),
        "local-repository",
    );
    // Letting others in, and the shared cache, are not hers to decide.
    let out = connect_as(&world, &alice, &mine, &["--allow-other"]);
    refused(&out, "allow-other");
    refused(
        &ctl_as(&alice, &world.daemon, &["cache", "clear"]),
        "cache-admin",
    );
    // Nothing of all this got mounted anywhere.
    for point in [&bobs, &real, &locked, &mine] {
        assert!(!is_mounted(point), "{}", point.display());
    }
    assert!(world.daemon.status()["mounts"]
        .as_array()
        .expect("mounts")
        .is_empty());
}

#[test]
fn the_configuration_sets_allowed_roots_and_lets_users_share() {
    let base = homes();
    let alice = user("megafs-alice", base.path());
    let bob = user("megafs-bob", base.path());
    let allowed = alice.home.join("allowed");
    std::fs::create_dir(&allowed).expect("mkdir");
    chown(&allowed, alice.uid, alice.gid);
    let world = world(&format!(
        "allowed_roots = [\"{}\"]\nuser_allow_other = true",
        allowed.display()
    ));
    let outside = alice.home.join("outside");
    std::fs::create_dir(&outside).expect("mkdir");
    chown(&outside, alice.uid, alice.gid);
    let msg = refused(&connect_as(&world, &alice, &outside, &[]), "allowed-roots");
    assert!(
        msg.contains(path_str(&allowed)),
        "names the allowed roots: {msg}"
    );

    let point = allowed.join("shared");
    std::fs::create_dir(&point).expect("mkdir");
    chown(&point, alice.uid, alice.gid);
    let out = connect_as(&world, &alice, &point, &["--allow-other"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_reads_readme(&bob, &point);
}

#[test]
fn a_users_mount_left_by_a_killed_daemon_is_cleaned_and_mounted_again_as_theirs() {
    let base = homes();
    let alice = user("megafs-alice", base.path());
    let mut world = world("");
    let point = alice.home.join("mnt");
    std::fs::create_dir(&point).expect("mkdir");
    chown(&point, alice.uid, alice.gid);
    let out = connect_as(&world, &alice, &point, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    world.daemon.kill();
    assert!(is_mounted(&point), "a killed daemon leaves its mount");
    // Root cannot ask a user's mount whether it is alive; the daemon asks as its owner.
    world.daemon.start_again();
    // Cleaned (by this daemon, or by another test's starting at the same moment: each
    // cleans every dead megafs mount it finds), then, as it was recorded, mounted again at
    // start, as the user's, private as before.
    let log = world.daemon.log();
    assert!(
        log.contains("cleaned a stale mount")
            || log.contains("cleaned a dead megafs mount")
            || log.contains("restored a mount"),
        "{log}"
    );
    assert!(is_mounted(&point), "{}", world.daemon.log());
    assert_reads_readme(&alice, &point);
    let status = world.daemon.status();
    assert_eq!(status["mounts"][0]["owner_uid"], alice.uid, "{status}");
}

#[test]
fn a_users_workspace_is_theirs_alone() {
    let base = homes();
    let alice = user("megafs-alice", base.path());
    let bob = user("megafs-bob", base.path());
    let world = world("");
    let point = alice.home.join("ws");
    std::fs::create_dir(&point).expect("mkdir");
    chown(&point, alice.uid, alice.gid);
    let out = connect_as(
        &world,
        &alice,
        &point,
        &["--name", "alices-ws", "--writable"],
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        stderr(&out),
        world.daemon.log()
    );

    // Alice writes; what she makes is hers, and the mount is hers alone.
    let new = point.join("new.txt");
    let script = format!(
        "echo mine > '{}' && cat '{}/README.md'",
        path_str(&new),
        path_str(&point)
    );
    let wrote = run_as(&alice, Path::new("/bin/sh"), &["-c", &script]);
    assert!(wrote.status.success(), "{}", stderr(&wrote));
    assert_eq!(String::from_utf8_lossy(&wrote.stdout), "fixture v2\n");
    let owner = run_as(
        &alice,
        Path::new("/usr/bin/stat"),
        &["-c", "%u", path_str(&new)],
    );
    assert_eq!(
        String::from_utf8_lossy(&owner.stdout).trim(),
        alice.uid.to_string()
    );
    let snoop = run_as(&bob, Path::new("/bin/cat"), &[path_str(&new)]);
    assert!(!snoop.status.success(), "bob reads alice's workspace");
    let mode = std::fs::metadata(&point).expect("the mount's root").mode();
    assert_eq!(mode & 0o777, 0o700, "the root keeps others out");

    // The view of the commit beneath the overlay is out of every user's reach, and so is
    // the workspace directory itself; the changes live there as hers.
    let lowers = world.daemon.dir.path().join("lower");
    let peek = run_as(
        &alice,
        Path::new("/bin/ls"),
        &[path_str(&lowers.join("alices-ws"))],
    );
    assert!(!peek.status.success(), "alice reaches the view directly");
    let dir = world.daemon.workspace_dir("alices-ws");
    let peek = run_as(&alice, Path::new("/bin/ls"), &[path_str(&dir)]);
    assert!(
        !peek.status.success(),
        "alice reaches the workspace behind the overlay"
    );
    let upper = std::fs::metadata(dir.join("upper/new.txt")).expect("in the workspace");
    assert_eq!(upper.uid(), alice.uid);

    // Her changes are hers to see and to discard; to bob the workspace does not exist.
    let mine = ctl_as(&alice, &world.daemon, &["changes", "alices-ws"]);
    assert_eq!(
        String::from_utf8_lossy(&mine.stdout),
        "A new.txt\n",
        "{}",
        stderr(&mine)
    );
    for args in [
        &["changes", "alices-ws"][..],
        &["disconnect", "alices-ws", "--discard"],
    ] {
        let theirs = ctl_as(&bob, &world.daemon, args);
        assert!(!theirs.status.success(), "{args:?} worked for bob");
        assert!(
            stderr(&theirs).contains("no mount is named"),
            "{}",
            stderr(&theirs)
        );
    }
    let out = ctl_as(&alice, &world.daemon, &["disconnect", "alices-ws"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let theirs = ctl_as(
        &bob,
        &world.daemon,
        &["disconnect", "alices-ws", "--discard"],
    );
    assert!(!theirs.status.success(), "bob discards alice's workspace");
    assert!(dir.join("upper/new.txt").exists());
    let out = ctl_as(
        &alice,
        &world.daemon,
        &["disconnect", "alices-ws", "--discard"],
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("discarded"),
        "{}",
        stderr(&out)
    );
    assert!(!dir.exists());
}

/// A megafsd run by `user` itself (a per-user daemon), in `user`'s home; killed, and
/// whatever it left mounted there unmounted, when dropped.
struct UserDaemon {
    child: std::process::Child,
    socket: PathBuf,
    home: PathBuf,
}

impl UserDaemon {
    fn start(user: &User) -> UserDaemon {
        megafs_testsupport::harness::open_fuse_to_users();
        let run = user.home.join("run");
        for dir in ["run", "cache", "state", "log"] {
            let path = user.home.join(dir);
            std::fs::create_dir_all(&path).expect("dir");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).expect("mode");
            chown(&path, user.uid, user.gid);
        }
        let socket = run.join("megafsd.sock");
        std::fs::write(user.home.join("none.toml"), "").expect("an empty configuration");
        let log = std::fs::File::create(user.home.join("megafsd.stderr")).expect("log");
        let child = Command::new(bin("megafsd"))
            .arg("--socket")
            .arg(&socket)
            .arg("--cache-dir")
            .arg(user.home.join("cache"))
            .arg("--state-dir")
            .arg(user.home.join("state"))
            .arg("--log-dir")
            .arg(user.home.join("log"))
            .arg("--config")
            .arg(user.home.join("none.toml"))
            .arg("--foreground")
            .env("HOME", &user.home)
            .env("XDG_RUNTIME_DIR", &run)
            .env("NO_COLOR", "1")
            .uid(user.uid)
            .gid(user.gid)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("megafsd as a user");
        let mut daemon = UserDaemon {
            child,
            socket,
            home: user.home.clone(),
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !daemon.ctl(user, &["status"]).status.success() {
            let exited = daemon.child.try_wait().ok().flatten();
            assert!(exited.is_none(), "megafsd exited: {}", daemon.log());
            assert!(std::time::Instant::now() < deadline, "{}", daemon.log());
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        daemon
    }

    fn ctl(&self, user: &User, args: &[&str]) -> Output {
        let mut all = vec!["--socket", path_str(&self.socket)];
        all.extend_from_slice(args);
        run_as(user, &bin("mega-fuse"), &all)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.home.join("megafsd.stderr")).unwrap_or_default()
    }
}

impl Drop for UserDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut left = megafs_testsupport::harness::mounted_under(&self.home);
        left.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for point in left {
            let _ = Command::new("umount").arg("-l").arg(&point).status();
        }
    }
}

#[test]
fn a_per_user_daemon_keeps_a_workspace_with_fuse_overlayfs() {
    let base = homes();
    let alice = user("megafs-carol", base.path());
    let world = World::new();
    let daemon = UserDaemon::start(&alice);
    let point = alice.home.join("ws");
    std::fs::create_dir(&point).expect("mkdir");
    chown(&point, alice.uid, alice.gid);
    let url = world.server.url();
    let connect = [
        "connect",
        MEGA_REPO,
        "--mega-url",
        &url,
        "--mount-point",
        path_str(&point),
        "--name",
        "carols",
        "--writable",
    ];
    let out = daemon.ctl(&alice, &connect);
    assert!(out.status.success(), "{}\n{}", stderr(&out), daemon.log());
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        mounts
            .lines()
            .any(|l| l.contains(path_str(&point)) && l.contains("fuse-overlayfs")),
        "fuse-overlayfs serves the workspace: {mounts}"
    );

    let script = format!(
        "echo mine > '{p}/new.txt' && echo changed >> '{p}/README.md' && rm '{p}/empty.txt' && cat '{p}/README.md'",
        p = path_str(&point)
    );
    let wrote = run_as(&alice, Path::new("/bin/sh"), &["-c", &script]);
    assert!(wrote.status.success(), "{}", stderr(&wrote));
    assert_eq!(
        String::from_utf8_lossy(&wrote.stdout),
        "fixture v2\nchanged\n"
    );
    let changes = daemon.ctl(&alice, &["changes", "carols"]);
    assert_eq!(
        String::from_utf8_lossy(&changes.stdout),
        "M README.md\nD empty.txt\nA new.txt\n",
        "{}",
        stderr(&changes)
    );

    // Gone with the disconnect, back with the next connect.
    let out = daemon.ctl(&alice, &["disconnect", "carols"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!is_mounted(&point));
    let out = daemon.ctl(&alice, &connect);
    assert!(out.status.success(), "{}", stderr(&out));
    let read = run_as(
        &alice,
        Path::new("/bin/cat"),
        &[path_str(&point.join("new.txt"))],
    );
    assert_eq!(String::from_utf8_lossy(&read.stdout), "mine\n");

    // A reset takes fuse-overlayfs's record of a deletion away too.
    let out = daemon.ctl(&alice, &["reset", "carols", "empty.txt", "README.md"]);
    assert!(out.status.success(), "{}\n{}", stderr(&out), daemon.log());
    let changes = daemon.ctl(&alice, &["changes", "carols"]);
    assert_eq!(String::from_utf8_lossy(&changes.stdout), "A new.txt\n");
    let read = run_as(
        &alice,
        Path::new("/bin/cat"),
        &[path_str(&point.join("README.md"))],
    );
    assert_eq!(String::from_utf8_lossy(&read.stdout), "fixture v2\n");
    let out = daemon.ctl(&alice, &["disconnect", "carols", "--discard"]);
    assert!(out.status.success(), "{}", stderr(&out));
}
