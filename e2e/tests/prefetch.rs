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

    // The whole mount, most of it not cached: its root tree, whole, in one fetch (git packs
    // a tree's files for about what a clone costs it, and the same files asked for by id for
    // half as much again); before, its files by id in several.
    server.clear_requests();
    let out = world.daemon.ctl_ok(&["prefetch", "gitpre"]);
    let files = megafs_testsupport::fixture::git(&world.fixture.path, &["ls-tree", "-r", "HEAD"])
        .expect("ls-tree")
        .lines()
        .filter(|line| line.contains(" blob "))
        .count();
    assert!(
        out.contains(&format!("prefetched {files} of {files} files")),
        "{out}"
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    let root = megafs_testsupport::fixture::git(&world.fixture.path, &["rev-parse", "HEAD^{tree}"])
        .expect("rev-parse");
    assert!(
        requests[0].args.contains(&format!("want {}", root.trim()))
            && !requests[0].args.iter().any(|a| a.starts_with("filter")),
        "the root tree, unfiltered: {:?}",
        requests[0].args
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
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
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
    // Its stderr is no terminal: progress comes as plain lines, the first once a file is found.
    let stderr = client.stderr.take().expect("stderr");
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            sink.lock().expect("lines").push(line);
        }
    });
    let progress_shown = || {
        let lines = lines.lock().expect("lines");
        lines
            .iter()
            .any(|l| l.starts_with("prefetch: ") && l.contains(" files"))
    };
    wait_until("a progress line", progress_shown);
    wait_until("the prefetch to ask for blobs", || blob_gets(&world) > 0);
    // SAFETY: a signal to our own child process.
    unsafe { libc::kill(client.id() as i32, libc::SIGINT) };
    let out = client.wait_with_output().expect("wait");
    reader.join().expect("stderr reader");
    assert!(!out.status.success(), "a stopped prefetch exits non-zero");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("stopped: ") && stdout.contains("files fetched"),
        "{stdout}"
    );
    let stderr = lines.lock().expect("lines").join("\n");
    assert!(stderr.contains("stopped by Ctrl-C"), "{stderr}");
    assert!(
        !stderr.contains('\x1b'),
        "no escape codes off a terminal: {stderr}"
    );
    assert!(
        !stderr.contains("prefetch: 0/0"),
        "no progress line before a file is found: {stderr}"
    );
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

/// Directories `d0` .. `d{N-1}` of a repository made for a walk, each holding `a.txt` and,
/// three levels down, `deeper/er/x.txt` (contents naming their directory, so no two files
/// are one blob).
const WALKED_DIRS: usize = 8;

fn nested_repo(dir: &std::path::Path) -> std::path::PathBuf {
    use megafs_testsupport::fixture::git;
    let repo = dir.join("nested-repo");
    for i in 0..WALKED_DIRS {
        let deep = repo.join(format!("d{i}/deeper/er"));
        std::fs::create_dir_all(&deep).expect("mkdir");
        std::fs::write(repo.join(format!("d{i}/a.txt")), format!("a in d{i}\n")).expect("write");
        std::fs::write(deep.join("x.txt"), format!("x in d{i}\n")).expect("write");
    }
    git(&repo, &["init", "-q", "-b", "main"]).expect("init");
    git(&repo, &["add", "."]).expect("add");
    git(&repo, &["commit", "-q", "-m", "nested"]).expect("commit");
    repo
}

/// Lists directory `rel` of the mount at `point` and reads its files, as `grep -r` does;
/// its subdirectories' names.
fn walk_one(point: &std::path::Path, rel: &str) -> Vec<String> {
    let mut subdirs = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(point.join(rel))
        .expect("read_dir")
        .map(|e| e.expect("entry"))
        .collect();
    names.sort_by_key(|e| e.file_name());
    for entry in names {
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type().expect("type").is_dir() {
            subdirs.push(name);
        } else {
            let text = std::fs::read_to_string(entry.path()).expect("read");
            assert!(
                text.ends_with(&format!("in {}\n", &rel[..2])),
                "{rel}/{name}: {text}"
            );
        }
    }
    subdirs
}

#[test]
fn a_walk_reading_a_mega_mount_finds_the_directories_ahead_of_it_fetched() {
    use megafs_testsupport::{DevServer, ServedRepo};
    let dir = tempfile::tempdir().expect("temp dir");
    let repo = nested_repo(dir.path());
    let daemon = megafs_testsupport::harness::Daemon::start();
    let served = ServedRepo::open("/third-party/nested", &repo, "main").expect("serve");
    let mega = DevServer::start(vec![served]).expect("dev server");
    let point = daemon.mountpoint("nested");
    daemon.ctl_ok(&[
        "connect",
        "/third-party/nested",
        "--mega-url",
        &mega.url(),
        "--mount-point",
        path_str(&point),
        "--name",
        "nested",
    ]);
    // A walk that reads: the root, then d0 (its file read), then on into d0/deeper.
    within(LIMIT, {
        let point = point.clone();
        move || {
            std::fs::read_dir(&point).expect("root").for_each(drop);
            walk_one(&point, "d0");
            walk_one(&point, "d0/deeper");
        }
    });
    // The last directory's deepest file, three levels below a directory the walk has not
    // entered: fetched ahead of it. Before, only the next directories listed already had
    // their files fetched: this timed out.
    let deepest = megafs_testsupport::fixture::git(
        &repo,
        &[
            "rev-parse",
            &format!("HEAD:d{}/deeper/er/x.txt", WALKED_DIRS - 1),
        ],
    )
    .expect("rev-parse");
    let deepest = format!("/api/v1/file/blob/{}", deepest.trim());
    wait_until("the walk's last file fetched ahead", || {
        mega.requests()
            .iter()
            .any(|r| r.is_blob_get() && r.path == deepest)
    });
    wait_until("every file fetched", || {
        mega.requests().iter().filter(|r| r.is_blob_get()).count() >= 2 * WALKED_DIRS
    });
    mega.clear_requests();
    within(LIMIT, move || {
        walk_one(&point, "d0/deeper/er");
        for i in 1..WALKED_DIRS {
            for rel in ["", "/deeper", "/deeper/er"] {
                walk_one(&point, &format!("d{i}{rel}"));
            }
        }
    });
    assert_eq!(mega.requests(), [], "the rest of the walk was at hand");
}

/// A repository whose `assets/` holds `ASSETS` files too big for a walk's fetch of small
/// files (over 512 KiB): their oids, with the repository.
const ASSETS: usize = 4;

fn assets_repo(dir: &std::path::Path) -> (std::path::PathBuf, Vec<String>) {
    use megafs_testsupport::fixture::{git, pseudo_random};
    let repo = dir.join("assets-repo");
    std::fs::create_dir_all(repo.join("assets")).expect("mkdir");
    std::fs::write(repo.join("README.md"), "assets\n").expect("write");
    // Listed before `assets/`: a walk opens a file here first.
    std::fs::create_dir_all(repo.join("a-docs")).expect("mkdir");
    std::fs::write(repo.join("a-docs/notes.txt"), "notes\n").expect("write");
    for i in 0..ASSETS {
        // Seeds differ in more than their lowest bit (which the generator sets).
        let bytes = pseudo_random(600 << 10, 2 * i as u64 + 1);
        std::fs::write(repo.join(format!("assets/a{i}.bin")), bytes).expect("write");
    }
    git(&repo, &["init", "-q", "-b", "main"]).expect("init");
    git(&repo, &["add", "."]).expect("add");
    git(&repo, &["commit", "-q", "-m", "assets"]).expect("commit");
    let oids = (0..ASSETS)
        .map(|i| {
            let spec = format!("HEAD:assets/a{i}.bin");
            git(&repo, &["rev-parse", &spec])
                .expect("rev-parse")
                .trim()
                .to_string()
        })
        .collect();
    (repo, oids)
}

/// `repo` served by a git server (from under `dir`), mounted on `daemon` as `name`.
fn served_over_git(
    dir: &std::path::Path,
    repo: &std::path::Path,
    daemon: &megafs_testsupport::harness::Daemon,
    name: &str,
) -> (
    megafs_testsupport::git_server::GitServer,
    std::path::PathBuf,
) {
    let root = dir.join("served");
    std::fs::create_dir_all(&root).expect("mkdir");
    let status = Command::new("git")
        .args(["clone", "-q", "--bare"])
        .arg(repo)
        .arg(root.join("assets.git"))
        .status()
        .expect("git clone");
    assert!(status.success());
    let server = megafs_testsupport::git_server::GitServer::start(&root, true).expect("git server");
    let point = daemon.mountpoint(name);
    daemon.ctl_ok(&[
        "connect",
        &server.url("assets.git"),
        "--mount-point",
        path_str(&point),
        "--name",
        name,
    ]);
    (server, point)
}

/// A walk through the mount at `point` that only stats (`du`), then (after `between`) a read
/// of the first asset: the directory is now one a walk reads.
fn stat_walk_then_read_one(point: &std::path::Path, between: impl FnOnce()) {
    let du = within(LIMIT, {
        let point = point.to_path_buf();
        move || Command::new("du").arg("-a").arg(&point).output()
    })
    .expect("du");
    assert!(du.status.success(), "{du:?}");
    between();
    let first = within(LIMIT, {
        let path = point.join("assets/a0.bin");
        move || std::fs::read(path)
    })
    .expect("read");
    assert_eq!(first.len(), 600 << 10);
}

#[test]
fn a_walk_reading_big_files_has_the_rest_of_their_directory_fetched_ahead_one_each() {
    use megafs_testsupport::{DevServer, ServedRepo};
    let dir = tempfile::tempdir().expect("temp dir");
    let (repo, oids) = assets_repo(dir.path());
    let daemon = megafs_testsupport::harness::Daemon::start();

    // Over Mega: each file is a request anyway.
    let served = ServedRepo::open("/third-party/assets", &repo, "main").expect("serve");
    let mega = DevServer::start(vec![served]).expect("dev server");
    let point = daemon.mountpoint("megaassets");
    let url = mega.url();
    daemon.ctl_ok(&[
        "connect",
        "/third-party/assets",
        "--mega-url",
        &url,
        "--mount-point",
        path_str(&point),
        "--name",
        "megaassets",
    ]);
    stat_walk_then_read_one(&point, || mega.clear_requests());
    let gets = || mega.requests().iter().filter(|r| r.is_blob_get()).count();
    // Before, only small files were read ahead: this timed out at 1.
    wait_until("the other assets over Mega", || gets() >= ASSETS);
    mega.clear_requests();
    for i in 0..ASSETS {
        let bytes = std::fs::read(point.join(format!("assets/a{i}.bin"))).expect("read");
        assert_eq!(bytes.len(), 600 << 10);
    }
    assert_eq!(gets(), 0, "the rest were at hand");

    // Over git, the same blobs not cached (the cache is shared): a fetch each (git looks for deltas among a request's files, which for big
    // files of a kind costs more than sending each alone), not one each read.
    daemon.ctl_ok(&["disconnect", "megaassets"]);
    daemon.ctl_ok(&["cache", "clear"]);
    let (server, point) = served_over_git(dir.path(), &repo, &daemon, "gitassets");
    // Sizes over git came from the start of each file's answer: what comes next is reads.
    stat_walk_then_read_one(&point, || server.clear_requests());
    let fetched_alone = |oid: &String| {
        let want = format!("want {oid}");
        server.requests().iter().any(|r| {
            r.args.contains(&want) && r.args.iter().filter(|a| a.starts_with("want ")).count() == 1
        })
    };
    // Before, the walk's fetch left them to their reads: this timed out.
    wait_until("the other assets over git", || {
        oids.iter().all(fetched_alone)
    });
    server.clear_requests();
    for i in 0..ASSETS {
        let bytes = std::fs::read(point.join(format!("assets/a{i}.bin"))).expect("read");
        assert_eq!(bytes.len(), 600 << 10);
    }
    assert_eq!(server.requests().len(), 0, "the rest were at hand");
}

#[test]
fn a_walk_that_reads_over_git_takes_each_big_file_in_one_request() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (repo, oids) = assets_repo(dir.path());
    let daemon = megafs_testsupport::harness::Daemon::start();
    let (server, point) = served_over_git(dir.path(), &repo, &daemon, "readwalk");
    let grep = within(LIMIT, move || {
        Command::new("grep")
            .args(["-r", "-c", "notes"])
            .arg(&point)
            .output()
    })
    .expect("grep");
    assert!(grep.status.success(), "{grep:?}");
    // Sizes over git cost the head of each file's answer; a walk that opens files takes the
    // rest of the answer too. Before, each big file was asked for twice: size, then content.
    for oid in &oids {
        let want = format!("want {oid}");
        let asked = server
            .requests()
            .iter()
            .filter(|r| r.args.contains(&want))
            .count();
        assert_eq!(asked, 1, "requests for {oid}: {:#?}", server.requests());
    }
}
