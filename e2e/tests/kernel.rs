//! The fast paths the kernel offers: passthrough reads of cached files, raised read-ahead,
//! several FUSE threads, and listings with attributes (readdirplus).

mod common;

use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::World;
use megafs_testsupport::fixture;
use megafs_testsupport::harness::{within, Daemon};

const LIMIT: Duration = Duration::from_secs(30);

fn mount_status(daemon: &Daemon, name: &str) -> serde_json::Value {
    let status = daemon.status();
    status["mounts"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no mount {name} in {status}"))
}

/// Reads `path` after dropping the kernel's page cache of it, so that a read through the
/// daemon has to ask the daemon again.
fn read_uncached(path: PathBuf) -> Vec<u8> {
    within(LIMIT, move || {
        let mut file = std::fs::File::open(&path)?;
        // SAFETY: a plain advice call on a descriptor we own.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok::<_, std::io::Error>(bytes)
    })
    .expect("read")
}

/// Reads a file twice; returns the daemon's cache hits the second read cost.
fn hits_of_a_second_read(world: &World, name: &str) -> u64 {
    let point = world.mount_local(name, "");
    let file = point.join("src/main.rs");
    let want = std::fs::read(world.fixture.path.join("src/main.rs")).expect("fixture");
    assert_eq!(read_uncached(file.clone()), want, "first read");
    let before = mount_status(&world.daemon, name)["cache_hits"]
        .as_u64()
        .expect("hits");
    assert_eq!(read_uncached(file), want, "second read");
    let after = mount_status(&world.daemon, name)["cache_hits"]
        .as_u64()
        .expect("hits");
    after - before
}

#[test]
fn cached_files_are_read_by_the_kernel_itself() {
    let world = World::new();
    assert_eq!(
        hits_of_a_second_read(&world, "fast"),
        0,
        "no read reached the daemon"
    );
    assert_eq!(
        mount_status(&world.daemon, "fast")["read_path"],
        "passthrough"
    );

    // Without passthrough the same read goes through the daemon, which is what the check
    // above tells apart.
    let slow = World::with_daemon_config("passthrough = false");
    assert!(hits_of_a_second_read(&slow, "slow") > 0);
    assert_eq!(mount_status(&slow.daemon, "slow")["read_path"], "daemon");
}

#[test]
fn an_open_file_keeps_its_mode_while_others_open_it() {
    // A file opened before its blob was cached reads through the daemon. Opening it again
    // while that is open, now that the blob is cached, must not ask the kernel for the other
    // mode: the kernel would fail that open.
    let world = World::new();
    let point = world.mount_local("modes", "");
    let path = point.join("README.md");
    let opened = |path: &Path| {
        let path = path.to_path_buf();
        within(LIMIT, move || {
            let mut file = std::fs::File::open(path)?;
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)?;
            Ok::<_, std::io::Error>((file, bytes))
        })
    };
    let (first, bytes) = opened(&path).expect("a cold open and read");
    assert_eq!(bytes, b"fixture v2\n");
    let (second, bytes) = opened(&path).expect("a second open while the first is open");
    assert_eq!(bytes, b"fixture v2\n");
    drop((first, second));
    // All closed: the next open may go passthrough.
    let (_third, bytes) = opened(&path).expect("an open after all were closed");
    assert_eq!(bytes, b"fixture v2\n");
}

fn device_of(path: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path).expect("stat").dev();
    (libc::major(dev), libc::minor(dev))
}

#[test]
fn mounts_read_ahead_a_mebibyte_on_several_threads() {
    let world = World::new();
    let point = world.mount_local("ahead", "");
    let (major, minor) = device_of(&point);
    let knob = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    let kb = std::fs::read_to_string(&knob).expect("read_ahead_kb");
    assert_eq!(kb.trim(), "1024");

    let pid = world.daemon.status()["daemon"]["pid"]
        .as_u64()
        .expect("daemon pid");
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("tasks")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("fuser-"))
        .count();
    assert!(threads >= 4, "{threads} FUSE threads");
}

#[test]
fn listings_with_attributes_show_exact_sizes() {
    // The first listing comes with attributes where they are known; files whose sizes are not
    // known yet are looked up before use, so `ls -l` right after a plain listing is exact.
    let world = World::new();
    let point = world.mount_mega("plus");
    let names = megafs_testsupport::harness::list_names(&point.join("many")).expect("list");
    assert_eq!(names.len(), fixture::MANY_FILES);
    let dir = point.join("many");
    let sizes = within(LIMIT, move || {
        std::fs::read_dir(&dir)?
            .map(|e| e?.metadata().map(|m| m.len()))
            .collect::<std::io::Result<Vec<u64>>>()
    })
    .expect("stat");
    assert!(sizes.iter().all(|&s| s == 14), "{sizes:?}");
    let archive = world.archive("HEAD");
    let diffs = megafs_testsupport::compare::differences(archive.path(), &point).expect("compare");
    assert!(diffs.is_empty(), "{diffs:?}");
}

fn files_in_use(point: &Path) -> u64 {
    megafs_testsupport::harness::statfs(point)
        .expect("statfs")
        .f_files
}

#[test]
fn inodes_the_kernel_forgets_are_dropped_and_held_ones_stay() {
    use std::io::Seek;
    let world = World::new();
    let point = world.mount_local("forget", "");
    let archive = world.archive("HEAD");
    let walk = |point: &Path| {
        let diffs = megafs_testsupport::compare::differences(archive.path(), point);
        assert!(diffs.expect("compare").is_empty());
    };
    walk(&point);
    let held = files_in_use(&point);
    assert!(held > 20, "{held} inodes after a walk");
    // An open file keeps its inode (and its parents) through what follows.
    let mut open = std::fs::File::open(point.join("src/nested/deep/leaf.txt")).expect("open");

    // Dropping the kernel's dentries and inodes makes it forget them.
    std::fs::write("/proc/sys/vm/drop_caches", "2\n").expect("drop caches");
    let deadline = std::time::Instant::now() + LIMIT;
    while files_in_use(&point) > held / 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "nothing was forgotten"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut text = String::new();
    open.read_to_string(&mut text).expect("read the held file");
    assert_eq!(text, "a leaf, deep down\n");
    open.rewind().expect("rewind");
    // Everything forgotten comes back on the next look.
    walk(&point);
}
