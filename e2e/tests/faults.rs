//! A sick server costs a clear error, never a hung process or a wrong byte; a missing one
//! costs nothing that was fetched before; a killed daemon leaves a consistent cache.

mod common;

use std::time::{Duration, Instant};

use common::{errno, path_str, MEGA_REPO};
use megafs_testsupport::fixture::{self, Fixture, MANY_FILES};
use megafs_testsupport::harness::{within, Daemon, Options};
use megafs_testsupport::{DevServer, Faults, ServedRepo};
use sha1::{Digest, Sha1};

/// The daemon's request limit in these tests, and how long a read may take at most.
const REQUEST_LIMIT: &str = "3s";
const READ_LIMIT: Duration = Duration::from_secs(10);

struct Setup {
    fixture: Fixture,
    server: DevServer,
    daemon: Daemon,
    _dir: tempfile::TempDir,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("temp dir");
    let fixture = fixture::build(&dir.path().join("repo")).expect("fixture");
    let served = ServedRepo::open(MEGA_REPO, &fixture.path, "main").expect("serve");
    let server = DevServer::start(vec![served]).expect("server");
    let daemon = Daemon::start_with(Options {
        config: Some(format!("[daemon]\nrequest_timeout = \"{REQUEST_LIMIT}\"\n")),
        ..Options::default()
    });
    Setup {
        fixture,
        server,
        daemon,
        _dir: dir,
    }
}

fn connect(s: &Setup, url: &str) -> std::path::PathBuf {
    let point = s.daemon.mountpoint("m");
    s.daemon.ctl_ok(&[
        "connect",
        MEGA_REPO,
        "--mega-url",
        url,
        "--mount-point",
        path_str(&point),
    ]);
    point
}

fn expected(i: usize) -> Vec<u8> {
    format!("file number {i}\n").into_bytes()
}

/// Reads within the limit; the bytes are right or the error is EIO.
fn read_right_or_eio(path: std::path::PathBuf, want: &[u8]) -> bool {
    let started = Instant::now();
    let result = within(READ_LIMIT, move || std::fs::read(path));
    assert!(started.elapsed() < READ_LIMIT);
    match result {
        Ok(bytes) => {
            assert_eq!(bytes, want, "a wrong byte was served");
            true
        }
        Err(e) => {
            assert_eq!(errno(&e), libc::EIO, "{e}");
            false
        }
    }
}

#[test]
fn under_every_fault_reads_are_right_or_eio_and_recover() {
    let s = setup();
    let point = connect(&s, &s.server.url());
    for i in 0..MANY_FILES {
        std::fs::metadata(point.join(format!("many/f{i}.txt"))).expect("stat");
    }
    let faults = [
        (
            "reset",
            Faults {
                reset: true,
                ..Faults::default()
            },
        ),
        (
            "stall",
            Faults {
                stall: true,
                ..Faults::default()
            },
        ),
        (
            "500",
            Faults {
                status: Some(500),
                ..Faults::default()
            },
        ),
        (
            "503",
            Faults {
                status: Some(503),
                ..Faults::default()
            },
        ),
        (
            "404",
            Faults {
                status: Some(404),
                ..Faults::default()
            },
        ),
        (
            "truncate",
            Faults {
                truncate_blobs: true,
                ..Faults::default()
            },
        ),
        (
            "extra bytes",
            Faults {
                extra_bytes: true,
                ..Faults::default()
            },
        ),
        (
            "flipped byte",
            Faults {
                corrupt_blobs: true,
                ..Faults::default()
            },
        ),
    ];
    assert_eq!(faults.len(), MANY_FILES);
    for (i, (name, fault)) in faults.into_iter().enumerate() {
        s.server.clear_requests();
        s.server.set_faults(fault);
        let path = point.join(format!("many/f{i}.txt"));
        let served = read_right_or_eio(path.clone(), &expected(i));
        assert!(
            !served,
            "{name}: a fault on every request cannot give the file"
        );
        let gets = s
            .server
            .requests()
            .iter()
            .filter(|r| r.is_blob_get())
            .count();
        match name {
            // The kernel may ask twice (a read and its readahead), each a fetch of its own;
            // a retried request would cost three each.
            "404" => assert!(gets <= 2, "a 4xx is not retried ({gets} requests)"),
            "reset" | "500" | "503" => assert!(gets >= 3, "{name} is retried ({gets} requests)"),
            _ => {}
        }
        s.server.set_faults(Faults::default());
        assert!(
            read_right_or_eio(path, &expected(i)),
            "{name}: the read works once the fault stops"
        );
    }
    s.daemon.ctl_ok(&["status"]);
}

/// How long a program's whole read of a file (lookup, open, read: several requests) may take
/// against a server that does not deliver: the request limit once, with room for the machine.
const WHOLE_READ_LIMIT: Duration = Duration::from_millis(4500);

#[test]
fn a_read_fails_within_the_request_timeout_whatever_the_server_does() {
    let s = setup();
    let point = connect(&s, &s.server.url());
    let cases = [
        (
            "never answers",
            Faults {
                stall: true,
                ..Faults::default()
            },
        ),
        (
            "freezes mid-transfer",
            Faults {
                hold_blobs_after: Some(3),
                ..Faults::default()
            },
        ),
        (
            "trickles a byte a second",
            Faults {
                trickle_blobs_ms: Some(1000),
                ..Faults::default()
            },
        ),
    ];
    // Root files: the root is listed at mount, so only their contents are fetched.
    let files = ["README.md", "run.sh", "data.bin"];
    for ((what, faults), file) in cases.into_iter().zip(files) {
        s.server.set_faults(faults);
        // Timed from the program's side: cat's open and read together.
        let started = Instant::now();
        let out = std::process::Command::new("cat")
            .arg(point.join(file))
            .output()
            .expect("cat");
        let took = started.elapsed();
        assert!(!out.status.success(), "{what}: cat read {file}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("Input/output error"), "{what}: {err}");
        assert!(
            took < WHOLE_READ_LIMIT,
            "{what}: cat took {took:?}\n{}",
            s.daemon.log()
        );
    }
    // The log says what was waited for, and where.
    let log = s.daemon.log();
    let line = log
        .lines()
        .find(|l| l.contains("within the request timeout"))
        .unwrap_or_else(|| panic!("no timeout line in:\n{log}"));
    for part in ["mount=fixture", "path=", "oid=", "server="] {
        assert!(line.contains(part), "{part} missing from: {line}");
    }
    // Behaving again, every file reads.
    s.server.set_faults(Faults::default());
    assert_eq!(
        std::fs::read(point.join("README.md")).expect("read"),
        b"fixture v2\n"
    );
}

#[test]
fn a_flaky_server_never_gives_a_wrong_byte() {
    let s = setup();
    let point = connect(&s, &s.server.url());
    for i in 0..MANY_FILES {
        std::fs::metadata(point.join(format!("many/f{i}.txt"))).expect("stat");
    }
    s.server.set_faults(Faults {
        reset: true,
        probability: 0.5,
        ..Faults::default()
    });
    let mut served = 0;
    for i in 0..MANY_FILES {
        served += usize::from(read_right_or_eio(
            point.join(format!("many/f{i}.txt")),
            &expected(i),
        ));
    }
    assert!(s.server.faults_injected() > 0);
    assert!(
        served > 0,
        "retries get most reads through a half-broken server"
    );
    s.server.set_faults(Faults::default());
    for i in 0..MANY_FILES {
        assert!(read_right_or_eio(
            point.join(format!("many/f{i}.txt")),
            &expected(i)
        ));
    }
}

#[test]
fn offline_what_was_fetched_reads_and_the_rest_fails_fast() {
    let mut s = setup();
    let url = s.server.url();
    let addr = url.trim_start_matches("http://").to_string();
    let point = connect(&s, &url);
    assert_eq!(
        std::fs::read(point.join("README.md")).expect("read"),
        b"fixture v2\n"
    );
    s.daemon.ctl_ok(&["disconnect", path_str(&point)]);

    // The server goes away; the same repository mounts from what the cache remembers.
    drop(std::mem::replace(
        &mut s.server,
        DevServer::start(Vec::new()).expect("placeholder"),
    ));
    let point = connect(&s, &url);
    let status = s.daemon.status();
    assert_eq!(status["mounts"][0]["state"], "offline", "{status}");
    assert_eq!(
        std::fs::read(point.join("README.md")).expect("cached"),
        b"fixture v2\n"
    );
    let started = Instant::now();
    let never = point.join("data.bin");
    let err = within(READ_LIMIT, move || std::fs::read(never)).expect_err("never fetched");
    assert_eq!(errno(&err), libc::EIO);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "fails fast: {:?}",
        started.elapsed()
    );
    let log = s.daemon.log();
    assert!(
        log.contains("path=/data.bin") && log.contains("cannot fetch a file"),
        "{log}"
    );

    // The server comes back on the same address: the mount works again without remounting.
    let served = ServedRepo::open(MEGA_REPO, &s.fixture.path, "main").expect("serve");
    s.server = DevServer::start_on(addr.parse().expect("addr"), vec![served]).expect("restart");
    let data = std::fs::read(point.join("data.bin")).expect("read after recovery");
    assert_eq!(data.len(), 1024);
    assert_eq!(s.daemon.status()["mounts"][0]["state"], "mounted");
}

/// Every cached object hashes to its name, as a blob or as a tree.
fn assert_cache_consistent(cache: &std::path::Path) {
    let mut checked = 0;
    for shard in std::fs::read_dir(cache.join("objects")).expect("objects") {
        let shard = shard.expect("shard");
        for file in std::fs::read_dir(shard.path()).expect("shard dir") {
            let file = file.expect("file");
            let name = format!(
                "{}{}",
                shard.file_name().to_string_lossy(),
                file.file_name().to_string_lossy()
            );
            let bytes = std::fs::read(file.path()).expect("object");
            let ok = ["blob", "tree"].iter().any(|kind| {
                let mut h = Sha1::new();
                h.update(format!("{kind} {}\0", bytes.len()).as_bytes());
                h.update(&bytes);
                hex_of(&h.finalize()) == name
            });
            assert!(ok, "cached object {name} does not match its content");
            checked += 1;
        }
    }
    assert!(checked > 0);
    let leftovers = std::fs::read_dir(cache.join("tmp")).expect("tmp").count();
    assert_eq!(leftovers, 0, "no temporaries after a start");
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_daemon_killed_during_heavy_reads_restarts_with_a_consistent_cache() {
    let mut s = setup();
    let point = connect(&s, &s.server.url());
    s.server.set_faults(Faults {
        blob_delay_ms: 50,
        ..Faults::default()
    });
    let readers: Vec<_> = (0..MANY_FILES)
        .map(|i| {
            let path = point.join(format!("many/f{i}.txt"));
            let big = point.join("big/five-mb.bin");
            std::thread::spawn(move || {
                let _ = std::fs::read(path);
                let _ = std::fs::read(big);
            })
        })
        .collect();
    // Kill it once reads are under way.
    let deadline = Instant::now() + READ_LIMIT;
    while s
        .server
        .requests()
        .iter()
        .filter(|r| r.is_blob_get())
        .count()
        < 3
    {
        assert!(Instant::now() < deadline, "no reads started");
        std::thread::yield_now();
    }
    s.daemon.kill();
    for reader in readers {
        let _ = reader.join();
    }
    s.server.set_faults(Faults::default());
    s.daemon.start_again();
    assert_cache_consistent(&s.daemon.cache_dir);
    // The mount was recorded: the daemon mounted it again at its start.
    let big = std::fs::read(point.join("big/five-mb.bin")).expect("read");
    assert_eq!(big, fixture::pseudo_random(5 * 1024 * 1024, 42));
}

/// A daemon that reads files of 1 MiB and more as they arrive, over the fixture's server.
fn setup_streaming() -> Setup {
    let s = setup();
    let config =
        format!("[daemon]\nrequest_timeout = \"{REQUEST_LIMIT}\"\nstream_min_size = \"1M\"\n");
    let daemon = Daemon::start_with(Options {
        config: Some(config),
        ..Options::default()
    });
    Setup { daemon, ..s }
}

fn read_prefix(path: &std::path::Path, len: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = vec![0u8; len];
    std::fs::File::open(path)?.read_exact(&mut buf)?;
    Ok(buf)
}

#[test]
fn the_first_bytes_of_a_big_file_come_before_the_rest() {
    let s = setup_streaming();
    let point = connect(&s, &s.server.url());
    let path = point.join("big/five-mb.bin");
    let want = fixture::pseudo_random(5 * 1024 * 1024, 42);
    // The server sends 2 MiB, then holds the rest back until told otherwise: a read that
    // waited for the whole file would time out.
    s.server.set_faults(Faults {
        hold_blobs_after: Some(2 << 20),
        ..Faults::default()
    });
    let head = {
        let path = path.clone();
        within(READ_LIMIT, move || read_prefix(&path, 64 * 1024))
    };
    assert_eq!(
        head.expect("the first bytes, the rest held back"),
        want[..64 * 1024]
    );
    let cache = s.daemon.ctl_ok(&["cache", "--json"]);
    let cache: serde_json::Value = serde_json::from_str(&cache).expect("cache json");
    let cached = cache["bytes"].as_u64().expect("cache bytes");
    assert!(
        cached < 1 << 20,
        "the file is not in the cache yet: {cache}"
    );

    s.server.set_faults(Faults::default());
    let whole = within(READ_LIMIT, move || std::fs::read(&path));
    assert!(whole.expect("the whole file") == want, "wrong bytes");
}

#[test]
fn a_big_file_that_fails_verification_fails_at_its_end_and_leaves_no_wrong_page() {
    let s = setup_streaming();
    let point = connect(&s, &s.server.url());
    let path = point.join("big/five-mb.bin");
    let want = fixture::pseudo_random(5 * 1024 * 1024, 42);
    // One byte in the middle is flipped: the bytes before it are served as they arrive, the
    // read reaching the end fails.
    s.server.set_faults(Faults {
        corrupt_blobs: true,
        ..Faults::default()
    });
    let corrupt = {
        let path = path.clone();
        within(READ_LIMIT, move || std::fs::read(&path))
    };
    let e = corrupt.expect_err("a corrupt big file must not read whole");
    assert_eq!(errno(&e), libc::EIO, "{e}");
    // Fetched once: the reads the program goes on making fail at once, instead of each
    // fetching the file again for the page the kernel dropped.
    let fetches = s
        .daemon
        .log()
        .matches("do not match their object id")
        .count();
    assert_eq!(fetches, 1, "{}", s.daemon.log());

    // The kernel dropped what it had cached of it: the next read is right from byte one.
    s.server.set_faults(Faults::default());
    let whole = within(READ_LIMIT, move || std::fs::read(&path));
    assert!(
        whole.expect("the whole file") == want,
        "a wrong byte survived"
    );
}
