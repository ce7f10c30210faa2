//! A real daemon, real FUSE mounts, the real control tool, real servers: what a user sees.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, Instant};

use common::{errno, path_str, World, MEGA_REPO};
use megafs_testsupport::compare::differences;
use megafs_testsupport::fixture::{MANY_FILES, UNICODE_NAME};
use megafs_testsupport::harness::{is_mounted, list_names, statfs, within};
use megafs_testsupport::Faults;

const LIMIT: Duration = Duration::from_secs(60);

/// Checks the mount against `git archive` of the same commit: paths, bytes, modes, targets.
fn assert_same_as_archive(world: &World, point: &std::path::Path, commit: &str) {
    let expected = world.archive(commit);
    let (want, got) = (expected.path().to_path_buf(), point.to_path_buf());
    let diffs = within(LIMIT, move || differences(&want, &got)).expect("walking both trees");
    assert!(
        diffs.is_empty(),
        "mount differs from git archive:\n{}",
        diffs.join("\n")
    );
}

/// `ls -l` before any content is read: sizes, modes and link targets are already right.
fn assert_sizes_before_content(world: &World, point: &std::path::Path, commit: &str) {
    let expected = world.archive(commit);
    for rel in [
        "README.md",
        "data.bin",
        "big/five-mb.bin",
        "empty.txt",
        "run.sh",
        UNICODE_NAME,
    ] {
        let want = std::fs::metadata(expected.path().join(rel)).expect("archive file");
        let got = std::fs::metadata(point.join(rel)).expect("stat in the mount");
        assert_eq!(got.len(), want.len(), "size of {rel}");
        assert_eq!(got.mode() & 0o7777, want.mode() & 0o7777, "mode of {rel}");
    }
    let link = std::fs::symlink_metadata(point.join("link-to-readme")).expect("lstat");
    assert!(link.file_type().is_symlink());
    assert_eq!(link.len(), "README.md".len() as u64);
    let sub = std::fs::metadata(point.join("vendor/sub")).expect("submodule");
    assert!(sub.is_dir());
    assert_eq!(
        std::fs::read_dir(point.join("vendor/sub"))
            .expect("readdir")
            .count(),
        0
    );
    let root = std::fs::metadata(point).expect("root");
    assert_eq!(root.uid(), 0, "files belong to the user who connected");
}

#[test]
fn mega_mount_matches_git_archive() {
    let world = World::new();
    let point = world.mount_mega("fixture");
    assert_sizes_before_content(&world, &point, &world.fixture.head);
    let blob_gets = world
        .server
        .requests()
        .iter()
        .filter(|r| r.is_blob_get())
        .count();
    assert_eq!(blob_gets, 0, "stat must not fetch content");
    assert_same_as_archive(&world, &point, &world.fixture.head);
    assert_eq!(
        std::fs::read_link(point.join("docs/link-to-src")).expect("readlink"),
        std::path::Path::new("../src")
    );
    let mtime = std::fs::metadata(point.join("README.md"))
        .expect("stat")
        .mtime();
    assert_eq!(mtime, 1_704_164_645, "mtime is the commit time");
}

#[test]
fn local_mount_matches_git_archive_at_head_and_at_a_tag() {
    let world = World::new();
    let head = world.mount_local("head", "");
    assert_sizes_before_content(&world, &head, &world.fixture.head);
    assert_same_as_archive(&world, &head, &world.fixture.head);
    let v1 = world.mount_local("v1", "v1");
    assert_same_as_archive(&world, &v1, &world.fixture.v1);
    assert_eq!(
        std::fs::read(v1.join("README.md")).expect("read"),
        b"fixture v1\n"
    );
    assert_eq!(
        std::fs::read(head.join("README.md")).expect("read"),
        b"fixture v2\n"
    );
}

#[test]
fn a_mount_fetches_only_what_is_read_and_only_once() {
    let world = World::new();
    let point = world.mount_mega("lazy");
    let after_connect = world.server.requests();
    let trees: Vec<_> = after_connect.iter().filter(|r| r.is_tree()).collect();
    assert_eq!(
        trees.len(),
        1,
        "connect lists only the root: {after_connect:?}"
    );
    assert_eq!(trees[0].tree_path().as_deref(), Some(MEGA_REPO));
    assert!(after_connect
        .iter()
        .all(|r| !r.is_blob_get() && !r.is_blob_head()));

    world.server.clear_requests();
    let leaf = point.join("src/nested/deep/leaf.txt");
    let read = within(LIMIT, move || std::fs::read(leaf)).expect("read");
    assert_eq!(read, b"a leaf, deep down\n");
    let requests = world.server.requests();
    let tree_paths: Vec<_> = requests
        .iter()
        .filter(|r| r.is_tree())
        .filter_map(|r| r.tree_path())
        .collect();
    assert_eq!(
        tree_paths,
        [
            format!("{MEGA_REPO}/src"),
            format!("{MEGA_REPO}/src/nested"),
            format!("{MEGA_REPO}/src/nested/deep")
        ],
        "only the trees on the path"
    );
    assert_eq!(
        requests.iter().filter(|r| r.is_blob_get()).count(),
        1,
        "one blob"
    );
    // Sizes are learnt per directory, and only for directories on the path.
    assert_eq!(
        requests.iter().filter(|r| r.is_blob_head()).count(),
        1,
        "{requests:?}"
    );

    world.server.clear_requests();
    let leaf = point.join("src/nested/deep/leaf.txt");
    within(LIMIT, move || std::fs::read(leaf)).expect("read again");
    assert_eq!(world.server.requests(), [], "a second read costs nothing");
    let status = world.daemon.status();
    assert_eq!(status["mounts"][0]["fetched_objects"], 5, "{status}");
}

#[test]
fn a_walk_that_reads_costs_one_request_a_file() {
    let world = World::new();
    let point = world.mount_mega("walk");
    world.server.clear_requests();
    let found = {
        let point = point.clone();
        within(LIMIT, move || {
            std::process::Command::new("grep")
                .args(["-r", "-l", "a leaf, deep down"])
                .arg(&point)
                .output()
        })
        .expect("grep")
    };
    assert!(
        String::from_utf8_lossy(&found.stdout).contains("src/nested/deep/leaf.txt"),
        "grep found the leaf"
    );
    let (mut files, mut links) = (0, 0);
    let mut dirs = vec![point.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir").flatten() {
            let kind = entry.file_type().expect("type");
            if kind.is_dir() {
                dirs.push(entry.path());
            } else if kind.is_file() {
                files += 1;
            } else {
                links += 1;
            }
        }
    }
    let requests = world.server.requests();
    let heads = requests.iter().filter(|r| r.is_blob_head()).count();
    let gets = requests.iter().filter(|r| r.is_blob_get()).count();
    // Until the walk has opened a file it only stats, so the first directories' files are
    // sized alone; once it reads, each file's size comes with its content (before: a HEAD
    // and a GET for every file), and a symlink's target is its content.
    assert!(
        heads < files / 2 && gets <= files + links,
        "{heads} HEADs and {gets} GETs for {files} files and {links} symlinks"
    );
}

#[test]
fn a_corrupt_server_gives_eio_never_wrong_bytes() {
    let world = World::new();
    let point = world.mount_mega("corrupt");
    world.server.set_faults(Faults {
        corrupt_blobs: true,
        ..Faults::default()
    });
    let readme = point.join("README.md");
    let result = within(LIMIT, move || std::fs::read(readme));
    let err = result.expect_err("a corrupt blob must not be served");
    assert_eq!(errno(&err), libc::EIO, "{err}");
    let log = world.daemon.log();
    assert!(
        log.contains("do not match their object id") && log.contains(&world.server.url()),
        "the log names the object and the server:\n{log}"
    );
    // Nothing wrong was cached: once the server heals, the right bytes arrive.
    world.server.set_faults(Faults::default());
    let readme = point.join("README.md");
    assert_eq!(
        within(LIMIT, move || std::fs::read(readme)).expect("read"),
        b"fixture v2\n"
    );
}

#[test]
fn a_server_dying_mid_read_gives_eio_and_no_hang() {
    let world = World::new();
    let point = world.mount_mega("dies");
    world.server.set_faults(Faults {
        truncate_blobs: true,
        ..Faults::default()
    });
    let big = point.join("big/five-mb.bin");
    let err = within(LIMIT, move || std::fs::read(big)).expect_err("a cut body must fail");
    assert_eq!(errno(&err), libc::EIO, "{err}");
    // The daemon keeps answering.
    world.daemon.ctl_ok(&["status"]);
}

#[test]
fn cold_reads_of_different_files_run_in_parallel() {
    let world = World::new();
    let point = world.mount_mega("parallel");
    // List and size everything first, so only the content reads are delayed.
    for i in 0..MANY_FILES {
        std::fs::metadata(point.join(format!("many/f{i}.txt"))).expect("stat");
    }
    let delay = Duration::from_millis(300);
    world.server.set_faults(Faults {
        blob_delay_ms: delay.as_millis() as u64,
        ..Faults::default()
    });
    let started = Instant::now();
    let readers: Vec<_> = (0..MANY_FILES)
        .map(|i| {
            let path = point.join(format!("many/f{i}.txt"));
            std::thread::spawn(move || std::fs::read(path))
        })
        .collect();
    for (i, reader) in readers.into_iter().enumerate() {
        let bytes = reader.join().expect("reader thread").expect("read");
        assert_eq!(bytes, format!("file number {i}\n").into_bytes());
    }
    let elapsed = started.elapsed();
    let serial = delay * MANY_FILES as u32;
    assert!(
        elapsed < serial / 2,
        "8 cold reads took {elapsed:?}; one after another would take {serial:?}"
    );
}

#[test]
fn writes_are_refused_with_erofs() {
    let world = World::new();
    let point = world.mount_local("ro", "");
    let erofs = |r: std::io::Result<()>, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(errno(&e), libc::EROFS, "{what}: {e}");
    };
    erofs(std::fs::write(point.join("new.txt"), b"x"), "create");
    erofs(
        std::fs::OpenOptions::new()
            .write(true)
            .open(point.join("README.md"))
            .map(drop),
        "open for writing",
    );
    erofs(std::fs::create_dir(point.join("dir")), "mkdir");
    erofs(std::fs::remove_file(point.join("README.md")), "unlink");
    erofs(
        std::fs::rename(point.join("README.md"), point.join("x")),
        "rename",
    );
    erofs(
        std::fs::set_permissions(
            point.join("README.md"),
            std::fs::Permissions::from_mode(0o600),
        ),
        "chmod",
    );
    erofs(std::os::unix::fs::symlink("a", point.join("l")), "symlink");
    let stat = nix_statfs(&point);
    assert!(stat > 0, "statfs answers");
}

fn nix_statfs(path: &std::path::Path) -> u64 {
    let stat = statfs(path).expect("statfs answers");
    assert_ne!(stat.f_flag & libc::ST_RDONLY, 0, "mounted read-only");
    stat.f_namemax
}

#[test]
fn connect_status_and_disconnect_through_the_socket() {
    let world = World::new();
    let mega = world.mount_mega("m");
    let local = world.mount_local("l", "v1");
    let table = world.daemon.ctl_ok(&["status"]);
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table.contains(&world.fixture.v1[..12]) && table.contains(&world.fixture.head[..12]),
        "{table}"
    );
    let status = world.daemon.status();
    let mounts = status["mounts"].as_array().expect("mounts");
    assert_eq!(mounts.len(), 2);
    let l = mounts.iter().find(|m| m["name"] == "l").expect("l");
    assert_eq!(l["commit"], world.fixture.v1.as_str());
    assert_eq!(l["state"], "mounted");
    assert_eq!(l["mountpoint"], path_str(&local));
    assert!(l["source"]
        .as_str()
        .is_some_and(|s| s.starts_with("local ")));

    // By name, and by mountpoint.
    world.daemon.ctl_ok(&["disconnect", "m"]);
    world.daemon.ctl_ok(&["disconnect", path_str(&local)]);
    assert!(!is_mounted(&mega) && !is_mounted(&local));
    assert_eq!(
        world.daemon.status()["mounts"].as_array().map(Vec::len),
        Some(0)
    );
}

#[test]
fn the_seed_command_form_works() {
    let world = World::new();
    let point = world.daemon.mountpoint("seed");
    let cache = world.daemon.dir.path().join("c");
    let logs = world.daemon.dir.path().join("l");
    world.daemon.ctl_ok(&[
        "--mount-point",
        path_str(&point),
        "--cache-dir",
        path_str(&cache),
        "--log-dir",
        path_str(&logs),
        "--mega-url",
        &world.server.url(),
        "connect",
        MEGA_REPO,
    ]);
    assert_eq!(
        std::fs::read(point.join("README.md")).expect("read"),
        b"fixture v2\n"
    );
    assert_eq!(world.daemon.status()["mounts"][0]["name"], "fixture");
    world.daemon.ctl_ok(&["disconnect", MEGA_REPO]);
    assert!(!is_mounted(&point));
}

#[test]
fn a_busy_mount_is_not_torn_away_unless_forced() {
    let world = World::new();
    let point = world.mount_local("busy", "");
    let open = std::fs::File::open(point.join("README.md")).expect("open");
    let err = world.daemon.ctl_err(&["disconnect", "busy"]);
    assert!(err.contains("busy"), "{err}");
    assert!(is_mounted(&point));
    world.daemon.ctl_ok(&["disconnect", "busy", "--force"]);
    drop(open);
    assert!(!is_mounted(&point));
}

#[test]
fn stopping_the_daemon_unmounts_everything() {
    let mut world = World::new();
    let a = world.mount_local("a", "");
    let b = world.mount_mega("b");
    let status = world.daemon.stop().expect("daemon was running");
    assert!(status.success(), "megafsd exits 0 on SIGTERM: {status}");
    assert!(!is_mounted(&a) && !is_mounted(&b));
}

#[test]
fn concurrent_reads_of_one_file_share_one_fetch() {
    let world = World::new();
    let point = world.mount_mega("shared");
    std::fs::metadata(point.join("big/five-mb.bin")).expect("stat");
    world.server.set_faults(Faults {
        blob_delay_ms: 200,
        ..Faults::default()
    });
    world.server.clear_requests();
    let readers: Vec<_> = (0..6)
        .map(|_| {
            let path = point.join("big/five-mb.bin");
            std::thread::spawn(move || std::fs::read(path).map(|b| b.len()))
        })
        .collect();
    for reader in readers {
        assert_eq!(
            reader.join().expect("thread").expect("read"),
            5 * 1024 * 1024
        );
    }
    let gets = world
        .server
        .requests()
        .iter()
        .filter(|r| r.is_blob_get())
        .count();
    assert_eq!(gets, 1, "one fetch for six readers");
}

#[test]
fn a_moved_trunk_moves_the_mount_along() {
    let world = World::new();
    let point = world.mount_mega("moving");
    // Move the trunk: change a file under src/ after the mount listed the root.
    let repo = &world.fixture.path;
    std::fs::write(repo.join("src/main.rs"), b"fn main() {}\n").expect("write");
    megafs_testsupport::fixture::git(repo, &["commit", "-q", "-am", "move the trunk"])
        .expect("commit");
    let head = megafs_testsupport::fixture::git(repo, &["rev-parse", "HEAD"]).expect("head");
    // The first look at src/ finds its tree gone and refreshes the mount; a later one sees
    // the new trunk.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let main = point.join("src/main.rs");
        if within(LIMIT, move || std::fs::read(main)).is_ok_and(|b| b == b"fn main() {}\n") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the mount never moved:\n{}",
            world.daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(world.daemon.log().contains("the trunk moved: refreshing"));
    assert_eq!(world.daemon.status()["mounts"][0]["commit"], head.as_str());
    // Directories that did not change still work.
    let docs = point.join("docs");
    assert!(!within(LIMIT, move || list_names(&docs))
        .expect("docs")
        .is_empty());
}

/// `lgetxattr(path, name)` with a buffer of `len`: the size, or the errno.
fn get_xattr(path: &std::path::Path, name: &str, len: usize) -> Result<isize, i32> {
    let path = std::ffi::CString::new(path_str(path)).expect("path");
    let name = std::ffi::CString::new(name).expect("name");
    let mut buf = vec![0u8; len];
    // SAFETY: both strings are NUL-terminated and live across the call; buf holds len bytes.
    let n = unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), len) };
    if n < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(n)
    }
}

#[test]
fn extended_attributes_are_answered_as_absent_and_quietly() {
    let world = World::new();
    let point = world.mount_mega("xattr");
    let readme = point.join("README.md");
    for name in [
        "security.selinux",
        "system.posix_acl_access",
        "user.anything",
    ] {
        assert_eq!(get_xattr(&readme, name, 256), Err(libc::ENODATA), "{name}");
        assert_eq!(
            get_xattr(&point, name, 0),
            Err(libc::ENODATA),
            "{name} on the root"
        );
    }
    let c_path = std::ffi::CString::new(path_str(&readme)).expect("path");
    // SAFETY: a NUL-terminated path; a null buffer of size 0 asks for the list's size.
    let listed = unsafe { libc::llistxattr(c_path.as_ptr(), std::ptr::null_mut(), 0) };
    assert_eq!(listed, 0, "no names");
    let log = world.daemon.log();
    assert!(!log.contains("Not Implemented"), "{log}");
}

#[test]
fn replies_the_kernel_no_longer_wants_are_not_logged_as_errors() {
    let mut world = World::new();
    let point = world.mount_mega("forced");
    let file = point.join("big/five-mb.bin");
    std::fs::metadata(&file).expect("stat");
    let objects = |world: &World| {
        let out = world.daemon.ctl_ok(&["cache", "--json"]);
        let usage: serde_json::Value = serde_json::from_str(&out).expect("json");
        usage["objects"].as_u64().expect("objects")
    };
    let before = objects(&world);
    world.server.set_faults(Faults {
        blob_delay_ms: 500,
        ..Faults::default()
    });
    world.server.clear_requests();
    let mut reader = std::process::Command::new("cat")
        .arg(&file)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("cat");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !world.server.requests().iter().any(|r| r.is_blob_get()) {
        assert!(
            Instant::now() < deadline,
            "the read never reached the server"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // The reader is killed mid-read, and the mount torn away: the kernel wants no answer.
    reader.kill().expect("kill");
    reader.wait().expect("wait");
    world.daemon.ctl_ok(&["disconnect", "forced", "--force"]);
    // The answer arrives after the mount is gone; once it is stored, the daemon has tried
    // (or is about to try) to reply to a kernel that no longer wants it.
    while objects(&world) == before {
        assert!(Instant::now() < deadline, "the delayed blob never arrived");
        std::thread::sleep(Duration::from_millis(10));
    }
    world.daemon.stop();
    let log = world.daemon.log();
    assert!(!log.contains("Failed to send FUSE reply"), "{log}");
}
