//! Writable mounts (workspaces): every ordinary write through a real overlay over a real FUSE
//! mount, checked through the mount and again after a remount; what `changes` says of them;
//! a workspace kept across disconnects and daemon kills, refused for another repository,
//! and discarded on request.

mod common;

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use common::{errno, path_str, World, MEGA_REPO};
use megafs_testsupport::harness::{is_mounted, within, Daemon};

const LIMIT: Duration = Duration::from_secs(20);

fn changes(daemon: &Daemon, name: &str) -> Vec<String> {
    let out = daemon.ctl_ok(&["changes", name]);
    out.lines().map(str::to_string).collect()
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    let n = std::ffi::CString::new(name).expect("name");
    let mut buf = [0u8; 256];
    // SAFETY: valid C strings and a buffer of buf.len() bytes, for the call.
    let len = unsafe { libc::getxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    usize::try_from(len).ok().map(|n| buf[..n].to_vec())
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) -> i32 {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    let n = std::ffi::CString::new(name).expect("name");
    // SAFETY: valid C strings and a value of value.len() bytes, for the call.
    unsafe {
        libc::setxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    }
}

/// Every ordinary write, done through the mount at `m`.
fn write_everything(m: &Path) {
    // Create, write, append.
    fs::write(m.join("new.txt"), b"a new file\n").expect("create");
    let mut readme = fs::OpenOptions::new()
        .append(true)
        .open(m.join("README.md"))
        .expect("append");
    readme.write_all(b"one more line\n").expect("append");
    drop(readme);
    // An O_TRUNC rewrite reads back its new bytes.
    fs::write(m.join("src/main.rs"), b"fn main() {}\n").expect("rewrite");
    // Truncate to a length.
    let data = fs::OpenOptions::new()
        .write(true)
        .open(m.join("data.bin"))
        .expect("open");
    data.set_len(10).expect("truncate");
    drop(data);
    // Rename files across directories and over an existing entry, and a directory.
    fs::rename(m.join("many/f1.txt"), m.join("docs/moved.txt")).expect("rename across");
    fs::rename(m.join("many/f2.txt"), m.join("many/f3.txt")).expect("rename over");
    fs::rename(m.join("src/nested"), m.join("nested-moved")).expect("rename a directory");
    // Unlink, mkdir, rmdir, symlink, hard link.
    fs::remove_file(m.join("empty.txt")).expect("unlink");
    fs::create_dir(m.join("target")).expect("mkdir");
    fs::create_dir(m.join("target/gone")).expect("mkdir");
    fs::remove_dir(m.join("target/gone")).expect("rmdir");
    std::os::unix::fs::symlink("new.txt", m.join("target/link")).expect("symlink");
    fs::hard_link(m.join("new.txt"), m.join("target/hard")).expect("hard link");
    // chmod, utimes, user xattrs.
    fs::set_permissions(m.join("run.sh"), fs::Permissions::from_mode(0o644)).expect("chmod");
    let when = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    fs::File::options()
        .write(true)
        .open(m.join("new.txt"))
        .expect("open")
        .set_modified(when)
        .expect("utimes");
    assert_eq!(
        set_xattr(&m.join("new.txt"), "user.note", b"kept"),
        0,
        "setxattr"
    );
    // fallocate, a write through mmap, fsync.
    let big = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.join("target/big.bin"))
        .expect("create");
    // SAFETY: the descriptor is open; fallocate only reserves blocks.
    let rc = unsafe { libc::fallocate(std::os::fd::AsRawFd::as_raw_fd(&big), 0, 0, 1 << 20) };
    assert_eq!(rc, 0, "fallocate: {}", std::io::Error::last_os_error());
    mmap_write(&big, 4096, b"through mmap");
    big.sync_all().expect("fsync");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(m.join("target/big.bin"))
        .expect("open");
    f.seek(SeekFrom::Start(0)).expect("seek");
    f.write_all(b"head").expect("write");
    f.sync_all().expect("fsync");
}

/// Writes `bytes` at `offset` of `file` through a shared mapping.
fn mmap_write(file: &fs::File, offset: usize, bytes: &[u8]) {
    let len = offset + bytes.len();
    // SAFETY: maps `len` bytes of an open file of at least that length, shared, and unmaps
    // it before returning; nothing else maps it meanwhile.
    unsafe {
        let at = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(file),
            0,
        );
        assert_ne!(
            at,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), at.cast::<u8>().add(offset), bytes.len());
        assert_eq!(libc::msync(at, len, libc::MS_SYNC), 0, "msync");
        libc::munmap(at, len);
    }
}

/// What `write_everything` left, as read through the mount at `m`.
fn assert_everything(m: &Path) {
    let read = |p: &str| fs::read(m.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    assert_eq!(read("new.txt"), b"a new file\n");
    assert_eq!(read("README.md"), b"fixture v2\none more line\n");
    assert_eq!(read("src/main.rs"), b"fn main() {}\n");
    assert_eq!(read("data.bin").len(), 10);
    assert_eq!(read("docs/moved.txt"), b"file number 1\n");
    assert!(!m.join("many/f1.txt").exists() && !m.join("many/f2.txt").exists());
    assert_eq!(read("many/f3.txt"), b"file number 2\n");
    assert!(!m.join("src/nested").exists());
    assert_eq!(read("nested-moved/deep/leaf.txt"), b"a leaf, deep down\n");
    assert!(!m.join("empty.txt").exists());
    assert!(!m.join("target/gone").exists());
    assert_eq!(
        fs::read_link(m.join("target/link")).expect("readlink"),
        Path::new("new.txt")
    );
    let hard = fs::metadata(m.join("target/hard")).expect("hard");
    assert_eq!(hard.nlink(), 2);
    assert_eq!(read("target/hard"), b"a new file\n");
    let mode = fs::metadata(m.join("run.sh"))
        .expect("run.sh")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644);
    let mtime = fs::metadata(m.join("new.txt")).expect("new").mtime();
    assert_eq!(mtime, 1_600_000_000);
    assert_eq!(
        xattr(&m.join("new.txt"), "user.note").as_deref(),
        Some(&b"kept"[..])
    );
    let big = fs::File::open(m.join("target/big.bin")).expect("big");
    assert_eq!(big.metadata().expect("stat").len(), 1 << 20);
    let mut buf = [0u8; 12];
    big.read_exact_at(&mut buf, 4096).expect("read");
    assert_eq!(&buf, b"through mmap");
    big.read_exact_at(&mut buf[..4], 0).expect("read");
    assert_eq!(&buf[..4], b"head");
    // Unchanged files still read from the commit.
    assert_eq!(read("link-to-readme"), b"fixture v2\none more line\n");
    assert_eq!(read("many/f4.txt"), b"file number 4\n");
}

#[test]
fn a_workspace_takes_every_write_and_keeps_it_across_a_remount() {
    let world = World::new();
    let m = world.mount_writable("ws");
    let status = world.daemon.status();
    let mount = &status["mounts"][0];
    assert_eq!(mount["writable"], true, "{mount}");
    assert_eq!(mount["changed_paths"], 0, "{mount}");
    assert!(changes(&world.daemon, "ws").is_empty());

    let point = m.clone();
    within(LIMIT, move || write_everything(&point));
    let point = m.clone();
    within(LIMIT, move || assert_everything(&point));

    let expected = [
        "M README.md",
        "M data.bin",
        "A docs/moved.txt",
        "D empty.txt",
        "D many/f1.txt",
        "D many/f2.txt",
        "M many/f3.txt",
        "A nested-moved/",
        "A new.txt",
        "M run.sh",
        "M src/main.rs",
        "D src/nested/",
        "A target/",
    ];
    assert_eq!(changes(&world.daemon, "ws"), expected);
    let json: serde_json::Value =
        serde_json::from_str(&world.daemon.ctl_ok(&["changes", "ws", "--json"])).expect("JSON");
    assert_eq!(json["changes"][0]["path"], "README.md");
    assert_eq!(json["changes"][0]["change"], "modified");
    let status = world.daemon.status();
    let mount = &status["mounts"][0];
    assert!(mount["changed_paths"].as_u64() > Some(10), "{mount}");
    assert!(mount["workspace_bytes"].as_u64() > Some(1 << 20), "{mount}");

    // Disconnect and connect again: every change is still there.
    let out = world.daemon.ctl_ok(&["disconnect", "ws"]);
    assert!(out.contains("unmounted ws"), "{out}");
    assert!(!is_mounted(&m));
    assert!(world
        .daemon
        .workspace_dir("ws")
        .join("upper/new.txt")
        .exists());
    world.mount_writable("ws");
    let point = m.clone();
    within(LIMIT, move || assert_everything(&point));
    assert_eq!(changes(&world.daemon, "ws"), expected);
}

#[test]
fn a_file_written_back_to_its_bytes_is_not_modified() {
    let world = World::new();
    let m = world.mount_writable("back");
    fs::write(m.join("README.md"), b"changed\n").expect("change");
    assert_eq!(changes(&world.daemon, "back"), ["M README.md"]);
    fs::write(m.join("README.md"), b"fixture v2\n").expect("change back");
    assert!(changes(&world.daemon, "back").is_empty());
    // A read-only mount has no changes to show.
    world.mount_mega("plain");
    let err = world.daemon.ctl_err(&["changes", "plain"]);
    assert!(err.contains("plain is not a workspace"), "{err}");
    // Writes to a read-only mount still fail as they did.
    let plain = world.daemon.dir.path().join("mnt/plain");
    let e = fs::write(plain.join("x"), b"x").expect_err("read-only");
    assert_eq!(errno(&e), libc::EROFS);
}

#[test]
fn a_workspace_is_of_one_repository_and_discarded_on_request() {
    let world = World::new();
    let m = world.mount_writable("mine");
    fs::write(m.join("new.txt"), b"x\n").expect("write");
    world.daemon.ctl_ok(&["disconnect", "mine"]);

    // The name's workspace holds changes to the Mega repository: not for the local one.
    let other = world.daemon.mountpoint("other");
    let repo = path_str(&world.fixture.path).to_string();
    let err = world.daemon.ctl_err(&[
        "connect",
        &repo,
        "--mount-point",
        path_str(&other),
        "--name",
        "mine",
        "--writable",
    ]);
    let dir = world.daemon.workspace_dir("mine");
    assert!(
        err.contains(&format!("workspace {}", dir.display())),
        "{err}"
    );
    assert!(err.contains(MEGA_REPO), "{err}");
    assert!(!is_mounted(&other));

    // Discarding removes it and says what it removed, mounted or not.
    let out = world.daemon.ctl_ok(&["disconnect", "mine", "--discard"]);
    assert!(
        out.contains("discarded the workspace of mine: 1 changed paths"),
        "{out}"
    );
    assert!(!dir.exists());
    let m = world.mount_writable("mine");
    assert!(!m.join("new.txt").exists());
    fs::write(m.join("again.txt"), b"y\n").expect("write");
    let out = world.daemon.ctl_ok(&["disconnect", "mine", "--discard"]);
    assert!(out.contains("unmounted mine"), "{out}");
    assert!(out.contains("discarded the workspace of mine"), "{out}");
    let err = world.daemon.ctl_err(&["disconnect", "mine", "--discard"]);
    assert!(err.contains("no mount is named \"mine\""), "{err}");
}

#[test]
fn writes_survive_a_killed_daemon() {
    let world = World::new();
    let url = world.server.url();
    let mut daemon = Daemon::start_configured(
        |dir| {
            format!(
                "[[mount]]\nname = \"kept\"\nmega_url = \"{url}\"\nrepo = \"{MEGA_REPO}\"\n\
                 mountpoint = \"{}\"\nwritable = true\n",
                path_str(&dir.join("mnt/kept"))
            )
        },
        None,
    );
    let m = daemon.dir.path().join("mnt/kept");
    for i in 0..50 {
        let mut f = fs::File::create(m.join(format!("out-{i}.txt"))).expect("create");
        f.write_all(format!("written {i}\n").as_bytes())
            .expect("write");
    }
    fs::write(m.join("README.md"), b"local\n").expect("write");
    daemon.kill();
    daemon.start_again();
    // The configured workspace is back, with every write that returned before the kill.
    let point = m.clone();
    within(LIMIT, move || {
        for i in 0..50 {
            let text = fs::read_to_string(point.join(format!("out-{i}.txt"))).expect("kept");
            assert_eq!(text, format!("written {i}\n"));
        }
        assert_eq!(
            fs::read(point.join("README.md")).expect("readme"),
            b"local\n"
        );
        assert_eq!(fs::read(point.join("run.sh")).expect("lazy").len(), 19);
    });
    let log = daemon.log();
    assert!(log.contains("cleaned a stale mount"), "{log}");
}

#[test]
fn reset_takes_paths_back_to_the_commit_and_waits_for_open_files() {
    let world = World::new();
    let m = world.mount_writable("undo");
    fs::write(m.join("README.md"), b"changed\n").expect("write");
    fs::write(m.join("src/main.rs"), b"fn main() {}\n").expect("write");
    fs::remove_file(m.join("empty.txt")).expect("unlink");
    fs::rename(m.join("src/nested"), m.join("nested-moved")).expect("rename");
    fs::create_dir_all(m.join("target/debug")).expect("mkdir");
    fs::write(m.join("target/debug/out"), b"built\n").expect("write");
    let all = [
        "M README.md",
        "D empty.txt",
        "A nested-moved/",
        "M src/main.rs",
        "D src/nested/",
        "A target/",
    ];
    assert_eq!(changes(&world.daemon, "undo"), all);

    // Some paths, by repository path and by absolute path: the rest stays.
    let readme = m.join("README.md");
    let out = world.daemon.ctl_ok(&[
        "reset",
        "undo",
        path_str(&readme),
        "empty.txt",
        "src/nested",
        "nested-moved/",
    ]);
    assert!(out.contains("entries removed"), "{out}");
    assert_eq!(
        changes(&world.daemon, "undo"),
        ["M src/main.rs", "A target/"]
    );
    assert_eq!(fs::read(&readme).expect("readme"), b"fixture v2\n");
    assert_eq!(fs::read(m.join("empty.txt")).expect("back").len(), 0);
    assert_eq!(
        fs::read(m.join("src/nested/deep/leaf.txt")).expect("back"),
        b"a leaf, deep down\n"
    );
    assert!(!m.join("nested-moved").exists());
    assert_eq!(
        fs::read(m.join("target/debug/out")).expect("kept"),
        b"built\n"
    );

    // Refused while a file is open in the workspace, naming who holds it; nothing changes.
    let open = fs::File::open(m.join("src/main.rs")).expect("open");
    let err = world.daemon.ctl_err(&["reset", "undo"]);
    assert!(err.contains("files are open under"), "{err}");
    assert!(
        err.contains(&format!("pid {}", std::process::id())),
        "{err}"
    );
    assert!(err.contains("--force"), "{err}");
    assert_eq!(
        changes(&world.daemon, "undo"),
        ["M src/main.rs", "A target/"]
    );

    // Forced: every change goes; what was open stays readable to its holder.
    let out = world.daemon.ctl_ok(&["reset", "undo", "--force"]);
    assert!(out.contains("reset every change of undo"), "{out}");
    let mut kept = String::new();
    std::io::Read::read_to_string(&mut &open, &mut kept).expect("read the open file");
    assert_eq!(kept, "fn main() {}\n");
    drop(open);
    assert!(changes(&world.daemon, "undo").is_empty());
    assert!(is_mounted(&m));
    assert_eq!(fs::read(m.join("run.sh")).expect("lazy").len(), 19);
    assert!(!m.join("target").exists());

    // Paths outside the workspace, and mounts without one, are refused with what to do.
    let err = world.daemon.ctl_err(&["reset", "undo", "/etc/passwd"]);
    assert!(
        err.contains("is not under the workspace's mountpoint"),
        "{err}"
    );
    let err = world.daemon.ctl_err(&["reset", "undo", "src/../.."]);
    assert!(err.contains("without . or .."), "{err}");
    world.mount_mega("plain");
    let err = world.daemon.ctl_err(&["reset", "plain"]);
    assert!(err.contains("plain is not a workspace"), "{err}");
}

/// Applies `patch` with `git apply` in `dir` (not a repository: applied to the files).
fn git_apply(dir: &Path, patch: &str) {
    let mut child = std::process::Command::new("git")
        .args(["apply", "--whitespace=nowarn", "-"])
        .current_dir(dir)
        .env("GIT_CEILING_DIRECTORIES", dir.parent().unwrap_or(dir))
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("git apply");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(patch.as_bytes())
        .expect("writing the patch");
    let out = child.wait_with_output().expect("git apply");
    assert!(
        out.status.success(),
        "git apply: {}\n{patch}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_workspaces_diff_applies_to_a_checkout_of_its_commit() {
    let world = World::new();
    let m = world.daemon.mountpoint("rt");
    let repo = path_str(&world.fixture.path).to_string();
    world.daemon.ctl_ok(&[
        "connect",
        &repo,
        "--mount-point",
        path_str(&m),
        "--name",
        "rt",
        "--writable",
    ]);
    let point = m.clone();
    within(LIMIT, move || {
        write_everything(&point);
        // Beyond the ordinary writes: a name git quotes, a symlink become a file, a
        // directory become a file, and a binary file rewritten.
        let unicode = point.join(megafs_testsupport::fixture::UNICODE_NAME);
        fs::write(&unicode, "grüße, 世界, again\n").expect("write");
        fs::write(point.join("docs/a name\twith tab"), b"tabbed\n").expect("write");
        fs::remove_file(point.join("link-to-readme")).expect("unlink");
        fs::write(point.join("link-to-readme"), b"a file now\n").expect("write");
        fs::remove_dir_all(point.join("nested-moved")).expect("rm -r");
        fs::write(point.join("nested-moved"), b"not a directory\n").expect("write");
        let five = fs::OpenOptions::new()
            .write(true)
            .open(point.join("big/five-mb.bin"))
            .expect("open");
        five.write_all_at(b"\0patched\0", 1_000_000).expect("write");
    });

    let patch = world.daemon.ctl_ok(&["diff", "rt"]);
    assert!(
        patch.contains("GIT binary patch"),
        "binary files as git binary patches"
    );
    assert!(
        patch.contains("\"b/docs/file with spaces \\303\\274n\\303\\257"),
        "a name past ASCII is quoted as git quotes it"
    );
    assert!(patch.contains("\"b/docs/a name\\twith tab\""), "{patch}");
    let checkout = world.archive(&world.fixture.head);
    git_apply(checkout.path(), &patch);
    let differences =
        megafs_testsupport::compare::differences(checkout.path(), &m).expect("comparing the trees");
    assert!(differences.is_empty(), "{differences:#?}");

    // Of some paths only: nothing else in it.
    let readme = world.daemon.ctl_ok(&["diff", "rt", "README.md", "many"]);
    let files: Vec<&str> = readme
        .lines()
        .filter(|l| l.starts_with("diff --git"))
        .collect();
    assert_eq!(
        files,
        [
            "diff --git a/README.md b/README.md",
            "diff --git a/many/f1.txt b/many/f1.txt",
            "diff --git a/many/f2.txt b/many/f2.txt",
            "diff --git a/many/f3.txt b/many/f3.txt",
        ]
    );
    let fresh = world.archive(&world.fixture.head);
    git_apply(fresh.path(), &readme);
    assert_eq!(
        fs::read(fresh.path().join("README.md")).expect("readme"),
        b"fixture v2\none more line\n"
    );
    assert!(fresh.path().join("src/main.rs").exists());
    let err = world.daemon.ctl_err(&["diff", "rt", "/etc"]);
    assert!(
        err.contains("is not under the workspace's mountpoint"),
        "{err}"
    );
}

#[test]
fn a_refresh_moves_the_commit_under_the_changes_and_marks_conflicts() {
    use megafs_testsupport::fixture::git;
    let world = World::new();
    let m = world.daemon.mountpoint("up");
    let repo = path_str(&world.fixture.path).to_string();
    let connect = [
        "connect",
        &repo,
        "--ref",
        "main",
        "--mount-point",
        path_str(&m),
        "--name",
        "up",
        "--writable",
    ];
    world.daemon.ctl_ok(&connect);
    fs::write(m.join("README.md"), b"mine\n").expect("write");
    fs::write(m.join("new.txt"), b"new here\n").expect("write");
    fs::remove_file(m.join("run.sh")).expect("unlink");
    fs::write(m.join("src/main.rs"), b"fn main() {}\n").expect("write");

    // Upstream moves: the same README and run.sh, and paths left alone here.
    let up = &world.fixture.path;
    fs::write(up.join("README.md"), b"fixture v3\n").expect("write");
    fs::write(up.join("run.sh"), b"#!/bin/sh\necho v3\n").expect("write");
    fs::write(up.join("many/f4.txt"), b"four, upstream\n").expect("write");
    fs::write(up.join("upstream.txt"), b"from upstream\n").expect("write");
    git(
        up,
        &["add", "README.md", "run.sh", "many/f4.txt", "upstream.txt"],
    )
    .expect("git add");
    git(up, &["commit", "-q", "-m", "third"]).expect("git commit");
    let head = git(up, &["rev-parse", "HEAD"]).expect("rev-parse");

    // Not while a file is open in it.
    let open = fs::File::open(m.join("many/f1.txt")).expect("open");
    let err = world.daemon.ctl_err(&["refresh", "up"]);
    assert!(err.contains("or refresh with --force"), "{err}");
    drop(open);

    let out = world.daemon.ctl_ok(&["refresh", "up"]);
    assert!(out.contains(&format!("to {}", &head[..12])), "{out}");
    assert!(out.contains("2 paths changed upstream"), "{out}");
    let point = m.clone();
    let check = move || {
        let read = |p: &str| fs::read(point.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
        // Local versions stay; upstream shows where nothing was changed here.
        assert_eq!(read("README.md"), b"mine\n");
        assert!(!point.join("run.sh").exists());
        assert_eq!(read("src/main.rs"), b"fn main() {}\n");
        assert_eq!(read("new.txt"), b"new here\n");
        assert_eq!(read("many/f4.txt"), b"four, upstream\n");
        assert_eq!(read("upstream.txt"), b"from upstream\n");
    };
    within(LIMIT, check.clone());
    let conflicted = ["U README.md", "A new.txt", "U run.sh", "M src/main.rs"];
    assert_eq!(changes(&world.daemon, "up"), conflicted);
    let json: serde_json::Value =
        serde_json::from_str(&world.daemon.ctl_ok(&["changes", "up", "--json"])).expect("JSON");
    assert_eq!(json["commit"], head.as_str());
    assert_eq!(json["changes"][0]["conflict"], true);
    assert_eq!(json["changes"][0]["change"], "modified");
    let out = world.daemon.ctl_ok(&["refresh", "up"]);
    assert!(out.contains("up to date"), "{out}");

    // The new commit and the marks are the workspace's: a reconnect finds both.
    world.daemon.ctl_ok(&["disconnect", "up"]);
    world.daemon.ctl_ok(&connect);
    within(LIMIT, check);
    assert_eq!(changes(&world.daemon, "up"), conflicted);

    // A reset path takes upstream's version, and its mark goes.
    world.daemon.ctl_ok(&["reset", "up", "README.md"]);
    assert_eq!(
        fs::read(m.join("README.md")).expect("readme"),
        b"fixture v3\n"
    );
    assert_eq!(
        changes(&world.daemon, "up"),
        ["A new.txt", "U run.sh", "M src/main.rs"]
    );
}

/// Runs cargo `args` in `dir`, as a developer would, with its own target directory there.
fn cargo_in(dir: &Path, args: &[&str]) -> std::process::Output {
    let cargo = option_env!("CARGO").unwrap_or("cargo");
    let out = std::process::Command::new(cargo)
        .args(args)
        .current_dir(dir)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .env_remove("RUSTFLAGS")
        .output()
        .expect("running cargo");
    assert!(
        out.status.success(),
        "cargo {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn a_crate_builds_in_place_and_a_second_build_compiles_nothing() {
    use megafs_testsupport::fixture::git;
    let world = World::new();
    let crate_repo = tempfile::tempdir().expect("tempdir");
    let repo = crate_repo.path();
    fs::create_dir(repo.join("src")).expect("mkdir");
    fs::write(
        repo.join("Cargo.toml"),
        "[package]\nname = \"tiny\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
    )
    .expect("write");
    fs::write(
        repo.join("src/lib.rs"),
        "pub fn greeting() -> &'static str {\n    \"built in a workspace\"\n}\n",
    )
    .expect("write");
    fs::write(
        repo.join("src/main.rs"),
        "fn main() {\n    println!(\"{}\", tiny::greeting());\n}\n",
    )
    .expect("write");
    git(repo, &["init", "-q", "-b", "main"]).expect("git init");
    git(repo, &["add", "-A"]).expect("git add");
    git(repo, &["commit", "-q", "-m", "a tiny crate"]).expect("git commit");

    let m = world.daemon.mountpoint("tiny");
    world.daemon.ctl_ok(&[
        "connect",
        path_str(repo),
        "--mount-point",
        path_str(&m),
        "--name",
        "tiny",
        "--writable",
    ]);
    let first = cargo_in(&m, &["build", "--offline"]);
    assert!(
        String::from_utf8_lossy(&first.stderr).contains("Compiling tiny"),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let run = std::process::Command::new(m.join("target/debug/tiny"))
        .output()
        .expect("running the build");
    assert_eq!(
        String::from_utf8_lossy(&run.stdout),
        "built in a workspace\n"
    );
    // The sources' mtimes hold still: the second build finds everything fresh.
    let second = cargo_in(&m, &["build", "--offline"]);
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(!said.contains("Compiling"), "{said}");
    assert!(said.contains("Finished"), "{said}");
    assert_eq!(
        changes(&world.daemon, "tiny"),
        ["A Cargo.lock", "A target/"]
    );
    world.daemon.ctl_ok(&["disconnect", "tiny"]);
}
