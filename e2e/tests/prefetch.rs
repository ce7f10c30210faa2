//! `mega-fuse prefetch`: listings and files fetched ahead of reads, chosen by paths and globs,
//! with progress streamed back, and stopped when the client goes away.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{path_str, World};
use megafs_testsupport::harness::{bin, within};
use megafs_testsupport::Faults;

const LIMIT: Duration = Duration::from_secs(30);

fn blob_gets(world: &World) -> usize {
    world
        .server
        .requests()
        .iter()
        .filter(|r| r.is_blob_get())
        .count()
}

/// Waits (polling, up to LIMIT) until `ready` holds.
fn wait_until(what: &str, ready: impl Fn() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_prefetched_directory_reads_without_the_network() {
    let world = World::new();
    let point = world.mount_mega("pre");
    let out = world.daemon.ctl_ok(&["prefetch", "pre", "src"]);
    assert!(out.contains("prefetched 3 of 3 files"), "{out}");

    world.server.clear_requests();
    for file in [
        "src/main.rs",
        "src/nested/mid.txt",
        "src/nested/deep/leaf.txt",
    ] {
        let path = point.join(file);
        let want = std::fs::read(world.fixture.path.join(file)).expect("fixture");
        assert_eq!(
            within(LIMIT, move || std::fs::read(path)).expect(file),
            want
        );
    }
    assert_eq!(
        world.server.requests(),
        [],
        "everything under src was cached"
    );
    // Nothing else was: a file outside costs a fetch.
    let readme = point.join("README.md");
    within(LIMIT, move || std::fs::read(readme)).expect("README");
    assert_eq!(blob_gets(&world), 1);
}

#[test]
fn globs_and_depth_choose_what_is_fetched() {
    let world = World::new();
    world.mount_mega("globs");
    let out = world
        .daemon
        .ctl_ok(&["prefetch", "globs", "many/f?.txt", "**/leaf.txt"]);
    assert!(out.contains("prefetched 9 of 9 files"), "{out}");
    assert_eq!(blob_gets(&world), 9);

    // One level below src: src/main.rs only, not what lies in src/nested.
    let out = world
        .daemon
        .ctl_ok(&["prefetch", "globs", "src", "--depth", "1"]);
    assert!(out.contains("prefetched 1 of 1 files"), "{out}");
    // Depth counts from where the pattern ends: its own wildcard levels always count.
    let out = world
        .daemon
        .ctl_ok(&["prefetch", "globs", "src/*/mid.txt", "--depth", "1"]);
    assert!(out.contains("prefetched 1 of 1 files"), "{out}");
    let out = world
        .daemon
        .ctl_ok(&["prefetch", "globs", "src/*", "--depth", "2"]);
    assert!(out.contains("prefetched 2 of 2 files"), "{out}");

    // Nothing matched is an error that says where patterns start.
    let err = world
        .daemon
        .ctl_err(&["prefetch", "globs", "src/*.nothing"]);
    assert!(
        err.contains("no file of globs matches src/*.nothing"),
        "{err}"
    );
    assert!(err.contains("from the mount's root"), "{err}");

    let err = world.daemon.ctl_err(&["prefetch", "globs", "no/such/dir"]);
    assert!(
        err.contains("no such path in the mount: /no/such/dir"),
        "{err}"
    );
    let err = world.daemon.ctl_err(&["prefetch", "globs", "../etc"]);
    assert!(err.contains("no .."), "{err}");
}

#[test]
fn a_git_mount_prefetches_a_directory_in_one_request() {
    use megafs_testsupport::git_server::GitServer;
    let world = World::new();
    let root = world.fixture.path.parent().expect("parent").join("served");
    std::fs::create_dir_all(&root).expect("mkdir");
    let status = Command::new("git")
        .args(["clone", "-q", "--bare"])
        .arg(&world.fixture.path)
        .arg(root.join("fixture.git"))
        .status()
        .expect("git clone");
    assert!(status.success());
    let server = GitServer::start(&root, true).expect("git server");
    let point = world.daemon.mountpoint("gitpre");
    world.daemon.ctl_ok(&[
        "connect",
        &server.url("fixture.git"),
        "--mount-point",
        path_str(&point),
        "--name",
        "gitpre",
    ]);
    server.clear_requests();
    let out = world.daemon.ctl_ok(&["prefetch", "gitpre", "many"]);
    assert!(out.contains("prefetched 8 of 8 files"), "{out}");
    let fetches = server.requests().len();
    assert_eq!(fetches, 1, "the directory's 8 files in one fetch");

    // The whole mount: many directories' files share a fetch (a few go out at once while the
    // walk goes on), rather than one fetch per directory.
    server.clear_requests();
    let out = world.daemon.ctl_ok(&["prefetch", "gitpre"]);
    assert!(out.contains("prefetched"), "{out}");
    let requests = server.requests();
    let directories_with_files = 6;
    assert!(
        requests.len() < directories_with_files,
        "{} fetches for {directories_with_files} directories: {requests:?}",
        requests.len()
    );
    let big = point.join("big/five-mb.bin");
    server.clear_requests();
    assert_eq!(std::fs::metadata(big).expect("stat").len(), 5 << 20);
    assert_eq!(server.requests(), [], "everything came with the prefetch");
}

#[test]
fn the_prefetch_stops_when_its_client_goes_away() {
    let world = World::new();
    let point = world.mount_mega("stop");
    // Every blob answer sends one byte, then waits: the prefetch cannot finish by itself.
    world.server.set_faults(Faults {
        hold_blobs_after: Some(1),
        ..Faults::default()
    });
    world.server.clear_requests();
    let mut command = Command::new(bin("mega-fuse"));
    command
        .arg("--socket")
        .arg(&world.daemon.socket)
        .args(["prefetch", "stop", "many"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // Ctrl-C as at a terminal, even where the tests run in the background (a shell's `&`
    // starts them with SIGINT ignored, and children inherit that).
    // SAFETY: only async-signal-safe signal(2) between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            Ok(())
        });
    }
    let mut client = command.spawn().expect("mega-fuse prefetch");
    wait_until("the prefetch to ask for blobs", || blob_gets(&world) > 0);
    // SAFETY: a signal to our own child process.
    unsafe { libc::kill(client.id() as i32, libc::SIGINT) };
    client.wait().expect("wait");
    let deadline = Instant::now() + LIMIT;
    while !world
        .daemon
        .log()
        .contains("prefetch stopped: the client went away")
    {
        assert!(
            Instant::now() < deadline,
            "the daemon did not stop the prefetch; its log:\n{}",
            world.daemon.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Released now, the held answers find nobody waiting: nothing was cached.
    world.server.set_faults(Faults::default());
    world.server.clear_requests();
    for i in 0..8 {
        let path = point.join(format!("many/f{i}.txt"));
        let want = format!("file number {i}\n").into_bytes();
        assert_eq!(
            within(LIMIT, move || std::fs::read(path)).expect("read"),
            want
        );
    }
    assert_eq!(blob_gets(&world), 8, "every file was fetched only now");
}

#[test]
fn a_walk_reading_a_mega_mount_has_each_directorys_small_files_fetched_ahead() {
    let world = World::new();
    let point = world.mount_mega("walkread");
    // A walk that only stats (`du`) fetches no content.
    let du = within(LIMIT, {
        let point = point.clone();
        move || Command::new("du").arg("-a").arg(&point).output()
    })
    .expect("du");
    assert!(du.status.success(), "{du:?}");
    assert_eq!(blob_gets(&world), 0, "du fetched content");
    // A read in a directory the walk came through brings its other small files along, for
    // the walk's next reads (`grep -r` reads them one after another).
    let first = within(LIMIT, {
        let path = point.join("many/f0.txt");
        move || std::fs::read_to_string(path)
    })
    .expect("read");
    assert_eq!(first, "file number 0\n");
    let many = megafs_testsupport::fixture::MANY_FILES;
    wait_until("the directory's other files", || blob_gets(&world) >= many);
    world.server.clear_requests();
    for i in 0..many {
        let text = std::fs::read_to_string(point.join(format!("many/f{i}.txt"))).expect("read");
        assert_eq!(text, format!("file number {i}\n"));
    }
    assert_eq!(blob_gets(&world), 0, "the rest were at hand");
}
