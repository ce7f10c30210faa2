//! The shared object cache: bounded, least recently used first, never under an open file,
//! and enough by itself after a restart.

mod common;

use std::time::{Duration, Instant};

use common::{path_str, World, MEGA_REPO};
use megafs_testsupport::fixture::{git, pseudo_random};
use megafs_testsupport::harness::{within, Daemon, Options};
use megafs_testsupport::{DevServer, ServedRepo};

const LIMIT: Duration = Duration::from_secs(30);
const MIB: usize = 1 << 20;
const FILES: usize = 6;

/// A repository of six 1 MiB files, served by the dev Mega server.
struct Big {
    server: DevServer,
    _dir: tempfile::TempDir,
}

fn big_repo() -> Big {
    let dir = tempfile::tempdir().expect("temp dir");
    let repo = dir.path().join("big");
    std::fs::create_dir_all(&repo).expect("mkdir");
    git(&repo, &["init", "-q", "-b", "main"]).expect("init");
    for i in 0..FILES {
        std::fs::write(
            repo.join(format!("f{i}.bin")),
            pseudo_random(MIB, i as u64 + 7),
        )
        .expect("write");
    }
    git(&repo, &["add", "-A"]).expect("add");
    git(&repo, &["commit", "-q", "-m", "big"]).expect("commit");
    let served = ServedRepo::open(MEGA_REPO, &repo, "main").expect("serve");
    Big {
        server: DevServer::start(vec![served]).expect("server"),
        _dir: dir,
    }
}

fn cache_usage(daemon: &Daemon) -> serde_json::Value {
    serde_json::from_str(&daemon.ctl_ok(&["cache", "--json"])).expect("json")
}

fn read(path: std::path::PathBuf) -> Vec<u8> {
    within(LIMIT, move || std::fs::read(&path)).expect("read")
}

/// A daemon whose cache may hold `limit`, with the big repository mounted.
fn mount_with_cache_limit(big: &Big, limit: &str) -> (Daemon, std::path::PathBuf) {
    let daemon = Daemon::start_with(Options {
        config: Some(format!("[daemon]\ncache_max_size = \"{limit}\"\n")),
        ..Options::default()
    });
    let point = daemon.mountpoint("big");
    let url = big.server.url();
    let args = [
        "connect",
        MEGA_REPO,
        "--mega-url",
        &url,
        "--mount-point",
        path_str(&point),
    ];
    daemon.ctl_ok(&args);
    (daemon, point)
}

fn blob_gets(server: &DevServer) -> usize {
    server.requests().iter().filter(|r| r.is_blob_get()).count()
}

#[test]
fn the_limit_holds_and_evicted_objects_come_back() {
    let big = big_repo();
    let (daemon, point) = mount_with_cache_limit(&big, "3M");
    for i in 0..FILES {
        assert_eq!(
            read(point.join(format!("f{i}.bin"))),
            pseudo_random(MIB, i as u64 + 7)
        );
    }
    // Eviction runs in the background, about every second.
    let deadline = Instant::now() + LIMIT;
    loop {
        let usage = cache_usage(&daemon);
        if usage["bytes"].as_u64() <= usage["limit"].as_u64() {
            assert_eq!(usage["limit"], 3 * MIB as u64);
            assert!(usage["evicted"].as_u64() > Some(0), "{usage}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cache stays over its limit: {usage}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The first file was evicted (least recently used); reading it fetches it again, right.
    big.server.clear_requests();
    // Drop the kernel's page cache for it, so the read reaches the daemon.
    std::fs::write("/proc/sys/vm/drop_caches", "1").expect("drop caches");
    assert_eq!(read(point.join("f0.bin")), pseudo_random(MIB, 7));
    assert_eq!(blob_gets(&big.server), 1, "fetched again after eviction");
}

#[test]
fn an_open_file_keeps_its_object_and_clear_spares_it() {
    let big = big_repo();
    let (daemon, point) = mount_with_cache_limit(&big, "2M");
    use std::io::{Read, Seek, SeekFrom};
    let mut held = std::fs::File::open(point.join("f0.bin")).expect("open");
    let mut first = vec![0u8; 4096];
    held.read_exact(&mut first).expect("read");
    for i in 1..FILES {
        read(point.join(format!("f{i}.bin")));
    }
    let cleared = daemon.ctl_ok(&["cache", "clear"]);
    assert!(cleared.contains("freed"), "{cleared}");
    assert_eq!(
        cache_usage(&daemon)["objects"],
        1,
        "only the open file's object is left"
    );
    big.server.clear_requests();
    std::fs::write("/proc/sys/vm/drop_caches", "1").expect("drop caches");
    let mut rest = Vec::new();
    held.seek(SeekFrom::Start(0)).expect("seek");
    held.read_to_end(&mut rest).expect("read the rest");
    assert_eq!(rest, pseudo_random(MIB, 7));
    assert_eq!(
        blob_gets(&big.server),
        0,
        "the open file's object was never evicted"
    );
}

#[test]
fn after_a_restart_what_was_read_costs_no_request() {
    let mut world = World::new();
    let point = world.mount_mega("warm");
    for rel in ["README.md", "src/nested/deep/leaf.txt", "big/five-mb.bin"] {
        read(point.join(rel));
    }
    // `ls -l` of a directory learns its sizes; they must survive too.
    let listed: Vec<_> = std::fs::read_dir(point.join("src"))
        .expect("readdir")
        .map(|e| e.expect("entry").metadata().expect("stat").len())
        .collect();
    assert!(!listed.is_empty());
    // The mount comes back by itself (it was recorded).
    world.daemon.restart();
    world.server.clear_requests();
    for rel in ["README.md", "src/nested/deep/leaf.txt", "big/five-mb.bin"] {
        read(point.join(rel));
    }
    for entry in std::fs::read_dir(point.join("src")).expect("readdir") {
        entry.expect("entry").metadata().expect("stat");
    }
    let requests = world.server.requests();
    assert_eq!(requests, [], "everything came from the cache");
    let usage = cache_usage(&world.daemon);
    assert!(usage["hits"].as_u64() >= Some(3), "{usage}");
}

#[test]
fn du_shows_the_cache_by_mount_with_shared_objects_counted_once() {
    let world = World::new();
    let a = world.mount_mega("a");
    world.mount_mega("b");
    let w = world.mount_writable("w");
    let readme = std::fs::read(a.join("README.md")).expect("read");
    let nested = std::fs::read(a.join("src/nested/mid.txt")).expect("read");
    std::fs::write(w.join("new.txt"), b"mine\n").expect("write");

    let du: serde_json::Value =
        serde_json::from_str(&world.daemon.ctl_ok(&["du", "--json"])).expect("json");
    let mount = |name: &str| {
        du["mounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {du}"))
            .clone()
    };
    let (a, b, w) = (mount("a"), mount("b"), mount("w"));
    // The root, src and src/nested trees, and the two files read, at least.
    assert!(a["objects"].as_u64() >= Some(5), "{du}");
    assert!(
        a["bytes"].as_u64() >= Some((readme.len() + nested.len()) as u64),
        "{du}"
    );
    // Three mounts of one commit reach the same objects: every one is shared, and the
    // cache holds each once.
    assert_eq!(a["objects"], b["objects"], "{du}");
    assert_eq!(a["shared_objects"], a["objects"], "{du}");
    assert_eq!(du["shared_objects"], a["objects"], "{du}");
    assert_eq!(du["shared_bytes"], a["bytes"], "{du}");
    assert!(du["bytes"].as_u64() >= a["bytes"].as_u64(), "{du}");
    assert_eq!(du["gc_frees"], 0, "within its limit: {du}");
    assert_eq!(a["writable"], false);
    assert_eq!(w["writable"], true);
    assert!(w["workspace_paths"].as_u64() >= Some(1), "{du}");

    let text = world.daemon.ctl_ok(&["du"]);
    for part in [
        "MOUNT",
        "SHARED",
        "read-only",
        "shared by several mounts, counted once: ",
        "cache gc would free nothing",
    ] {
        assert!(text.contains(part), "{part:?} in:\n{text}");
    }
}
