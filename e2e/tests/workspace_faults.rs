//! Workspaces when things go wrong: a full disk under the workspace, and a server that is
//! down. What was written stays; what was cached reads; only what was never fetched fails.

mod common;

use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{errno, path_str, World};
use megafs_testsupport::harness::within;
use megafs_testsupport::mega_server::Faults;

const LIMIT: Duration = Duration::from_secs(30);

/// A small tmpfs, detached when dropped (whatever still holds it lets go later).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(at).expect("mkdir");
        mount(&[
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size}"),
            "megafs-test",
            path_str(at),
        ]);
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        detach(&self.0);
    }
}

/// An overlay mounted where the daemon keeps its workspaces: overlayfs takes no overlay as
/// an upper layer.
struct OverlayStateDir {
    at: PathBuf,
    _layers: tempfile::TempDir,
}

impl OverlayStateDir {
    fn mount(at: &Path) -> OverlayStateDir {
        let layers = tempfile::tempdir().expect("tempdir");
        for dir in ["lower", "upper", "work"] {
            fs::create_dir(layers.path().join(dir)).expect("mkdir");
        }
        fs::create_dir_all(at).expect("mkdir");
        let l = |d: &str| layers.path().join(d).display().to_string();
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            l("lower"),
            l("upper"),
            l("work")
        );
        mount(&["-t", "overlay", "megafs-test", "-o", &options, path_str(at)]);
        OverlayStateDir {
            at: at.to_path_buf(),
            _layers: layers,
        }
    }
}

impl Drop for OverlayStateDir {
    fn drop(&mut self) {
        detach(&self.at);
    }
}

/// Runs mount(8) with `args`, expecting success.
fn mount(args: &[&str]) {
    let status = std::process::Command::new("mount")
        .args(args)
        .status()
        .expect("mount");
    assert!(status.success(), "mount {args:?}");
}

/// Detaches the mount at `path` (whatever still holds it lets go later).
fn detach(path: &Path) {
    if let Ok(path) = CString::new(path.as_os_str().as_encoded_bytes()) {
        // SAFETY: a valid C string, for the call.
        unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
    }
}

#[test]
fn a_full_disk_fails_the_write_that_does_not_fit_and_keeps_the_rest() {
    let world = World::new();
    let _small = Tmpfs::mount(&world.daemon.state_dir(), "2m");
    let m = world.mount_writable("full");
    fs::write(m.join("kept.txt"), b"written before the disk filled\n").expect("write");
    fs::write(m.join("README.md"), b"edited\n").expect("write");

    let point = m.clone();
    let failed = within(LIMIT, move || {
        let mut big = fs::File::create(point.join("big.out")).expect("create");
        let block = vec![7u8; 64 * 1024];
        // 2 MiB of disk cannot take 4 MiB: some write (or the final sync) must fail.
        for _ in 0..64 {
            if let Err(e) = big.write_all(&block) {
                return errno(&e);
            }
        }
        big.sync_all().err().map_or(0, |e| errno(&e))
    });
    assert_eq!(failed, libc::ENOSPC);

    // Earlier changes are intact, now and after a reconnect.
    let point = m.clone();
    let intact = move || {
        assert_eq!(
            fs::read(point.join("kept.txt")).expect("kept"),
            b"written before the disk filled\n"
        );
        assert_eq!(
            fs::read(point.join("README.md")).expect("readme"),
            b"edited\n"
        );
    };
    within(LIMIT, intact.clone());
    fs::remove_file(m.join("big.out")).expect("freeing the space");
    world.daemon.ctl_ok(&["disconnect", "full"]);
    world.mount_writable("full");
    within(LIMIT, intact);
    let out = world.daemon.ctl_ok(&["changes", "full"]);
    assert_eq!(out, "M README.md\nA kept.txt\n");
}

#[test]
fn a_state_directory_overlayfs_cannot_use_is_named_at_connect() {
    let world = World::new();
    let _state = OverlayStateDir::mount(&world.daemon.state_dir());
    let point = world.daemon.mountpoint("nowhere");
    let err = world.connect_mega_err("nowhere", &point, &["--writable"]);
    let dir = world.daemon.workspace_dir("nowhere");
    assert!(err.contains(&dir.display().to_string()), "{err}");
    assert!(
        err.contains("cannot hold an overlay's upper layer"),
        "{err}"
    );
    assert!(err.contains("ext4, xfs, btrfs or tmpfs"), "{err}");
    // Nothing is left mounted: neither the overlay nor the view beneath.
    let mounts = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!mounts.contains("megafs:nowhere"), "{mounts}");
    // A read-only mount of the same name still works.
    world.mount_mega("nowhere");
}

#[test]
fn with_the_server_down_changed_and_cached_files_work_and_others_fail_with_eio() {
    let world = World::new();
    let m = world.mount_writable("down");
    let point = m.clone();
    within(LIMIT, move || {
        // Cached by reading; changed by writing.
        assert_eq!(
            fs::read(point.join("many/f1.txt")).expect("read"),
            b"file number 1\n"
        );
        fs::write(point.join("src/main.rs"), b"fn main() {}\n").expect("write");
    });
    world.server.set_faults(Faults {
        status: Some(503),
        probability: 1.0,
        ..Faults::default()
    });
    let point = m.clone();
    within(LIMIT, move || {
        assert_eq!(
            fs::read(point.join("many/f1.txt")).expect("cached"),
            b"file number 1\n"
        );
        assert_eq!(
            fs::read(point.join("src/main.rs")).expect("changed"),
            b"fn main() {}\n"
        );
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(point.join("src/main.rs"))
            .expect("open");
        f.write_all(b"// more\n").expect("write while down");
        fs::write(point.join("new.txt"), b"new\n").expect("create while down");
        let e = fs::read(point.join("many/f2.txt")).expect_err("never fetched");
        assert_eq!(errno(&e), libc::EIO);
        // Changing a never-fetched file needs its content first (overlayfs copies it up).
        let e = fs::OpenOptions::new()
            .append(true)
            .open(point.join("many/f3.txt"))
            .expect_err("copy-up of a never-fetched file");
        assert_eq!(errno(&e), libc::EIO);
    });
    // Nothing was lost, and `cache clear` leaves workspaces alone.
    world.server.set_faults(Faults::default());
    world.daemon.ctl_ok(&["cache", "clear"]);
    assert_eq!(
        fs::read(m.join("src/main.rs")).expect("changed"),
        b"fn main() {}\n// more\n"
    );
    assert_eq!(
        fs::read(m.join("many/f2.txt")).expect("back"),
        b"file number 2\n"
    );
    let out = world.daemon.ctl_ok(&["changes", "down"]);
    assert_eq!(out, "A new.txt\nM src/main.rs\n");
}
