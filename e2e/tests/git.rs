//! Any git server: real `git http-backend` on loopback, protocol v2 with partial-clone filters.

mod common;

use std::time::Duration;

use common::path_str;
use megafs_testsupport::compare::differences;
use megafs_testsupport::fixture::{self, Fixture};
use megafs_testsupport::git_server::GitServer;
use megafs_testsupport::harness::{list_names, within, Daemon};

const LIMIT: Duration = Duration::from_secs(60);

struct Setup {
    fixture: Fixture,
    server: GitServer,
    daemon: Daemon,
    _dir: tempfile::TempDir,
}

impl Setup {
    fn server_root(&self) -> std::path::PathBuf {
        self._dir.path().join("served")
    }
}

/// The fixture as a bare repository `fixture.git` under a served root.
fn setup(allow_filter: bool) -> Setup {
    setup_with(allow_filter, false)
}

fn setup_with(allow_filter: bool, object_info: bool) -> Setup {
    let dir = tempfile::tempdir().expect("temp dir");
    let fixture = fixture::build(&dir.path().join("work")).expect("fixture");
    let root = dir.path().join("served");
    std::fs::create_dir_all(&root).expect("mkdir");
    let bare = root.join("fixture.git");
    let status = std::process::Command::new("git")
        .args(["clone", "-q", "--bare"])
        .arg(&fixture.path)
        .arg(&bare)
        .status()
        .expect("git clone");
    assert!(status.success());
    Setup {
        server: GitServer::start_with(&root, allow_filter, object_info).expect("git server"),
        daemon: Daemon::start(),
        fixture,
        _dir: dir,
    }
}

/// The requests the server has seen that `keep` keeps.
fn requests_where(
    s: &Setup,
    keep: impl Fn(&megafs_testsupport::git_server::GitRequest) -> bool,
) -> Vec<megafs_testsupport::git_server::GitRequest> {
    s.server
        .requests()
        .into_iter()
        .filter(|r| keep(r))
        .collect()
}

fn commands(s: &Setup) -> Vec<String> {
    s.server
        .requests()
        .iter()
        .map(|r| {
            r.command
                .clone()
                .unwrap_or_else(|| format!("{} {}", r.method, r.path))
        })
        .collect()
}

#[test]
fn a_git_server_mount_matches_git_archive_and_is_lazy() {
    let s = setup(true);
    let point = s.daemon.mountpoint("git");
    let url = s.server.url("fixture.git");
    s.daemon
        .ctl_ok(&["connect", &url, "--mount-point", path_str(&point)]);
    let at_connect = commands(&s);
    assert_eq!(
        at_connect.len(),
        3,
        "capabilities, ls-refs, one fetch: {at_connect:?}"
    );
    assert!(at_connect[0].starts_with("GET ") && at_connect[0].ends_with("/info/refs"));
    assert_eq!(&at_connect[1..], ["ls-refs", "fetch"]);

    s.server.clear_requests();
    let leaf = point.join("src/nested/deep/leaf.txt");
    let bytes = within(LIMIT, move || std::fs::read(leaf)).expect("read");
    assert_eq!(bytes, b"a leaf, deep down\n");
    // The trees came with the commit; without object-info, learning the file's size fetches
    // its content into the cache, and the read itself then costs nothing.
    assert_eq!(
        commands(&s),
        ["fetch"],
        "one request for one cold file: {:?}",
        s.server.requests()
    );

    let expected = tempfile::tempdir().expect("temp dir");
    fixture::archive(&s.fixture.path, &s.fixture.head, expected.path()).expect("archive");
    let (want, got) = (expected.path().to_path_buf(), point.clone());
    let diffs = within(LIMIT, move || differences(&want, &got)).expect("walk");
    assert!(
        diffs.is_empty(),
        "differs from git archive:\n{}",
        diffs.join("\n")
    );
    let status = s.daemon.status();
    assert_eq!(status["mounts"][0]["commit"], s.fixture.head.as_str());
    assert!(status["mounts"][0]["source"]
        .as_str()
        .is_some_and(|x| x.starts_with("git http://")));
}

#[test]
fn a_git_server_mount_follows_a_tag() {
    let s = setup(true);
    let point = s.daemon.mountpoint("v1");
    let url = s.server.url("fixture.git");
    s.daemon.ctl_ok(&[
        "connect",
        &url,
        "--mount-point",
        path_str(&point),
        "--ref",
        "v1",
    ]);
    let readme = point.join("README.md");
    assert_eq!(
        within(LIMIT, move || std::fs::read(readme)).expect("read"),
        b"fixture v1\n"
    );
    let err = s.daemon.ctl_err(&[
        "connect",
        &url,
        "--mount-point",
        path_str(&s.daemon.mountpoint("x")),
        "--ref",
        "nope",
        "--name",
        "x",
    ]);
    assert!(err.contains("unknown ref \"nope\""), "{err}");
}

/// `connect` of `url` onto `point` as `name`.
fn git_connect<'a>(url: &'a str, point: &'a std::path::Path, name: &'a str) -> [&'a str; 6] {
    [
        "connect",
        url,
        "--mount-point",
        path_str(point),
        "--name",
        name,
    ]
}

#[test]
fn a_git_mount_whose_server_is_gone_shows_offline_and_reads_what_was_fetched() {
    let mut s = setup(true);
    let (url, point) = (s.server.url("fixture.git"), s.daemon.mountpoint("gone"));
    let args = git_connect(&url, &point, "gone");
    s.daemon.ctl_ok(&args);
    let readme = point.join("README.md");
    assert_eq!(std::fs::read(&readme).expect("read"), b"fixture v2\n");
    s.daemon.ctl_ok(&["disconnect", "gone"]);
    // The server goes away (its port closed); the mount comes from what the cache remembers.
    let root = s.server_root();
    drop(std::mem::replace(
        &mut s.server,
        GitServer::start_with(&root, true, false).expect("another server"),
    ));
    s.daemon.ctl_ok(&args);
    let status = s.daemon.status();
    assert_eq!(status["mounts"][0]["state"], "offline", "{status}");
    assert_eq!(std::fs::read(&readme).expect("cached"), b"fixture v2\n");
    s.daemon.ctl_ok(&["disconnect", "gone"]);

    // Mounted while the server answers, then it goes: the first failed fetch says offline.
    let mut s = setup(true);
    let (url, point) = (s.server.url("fixture.git"), s.daemon.mountpoint("later"));
    s.daemon.ctl_ok(&git_connect(&url, &point, "later"));
    assert_eq!(s.daemon.status()["mounts"][0]["state"], "mounted");
    let root = s.server_root();
    drop(std::mem::replace(
        &mut s.server,
        GitServer::start_with(&root, true, false).expect("another server"),
    ));
    let never = point.join("run.sh");
    assert!(within(LIMIT, move || std::fs::read(never)).is_err());
    let status = s.daemon.status();
    assert_eq!(status["mounts"][0]["state"], "offline", "{status}");
}

#[test]
fn an_abbreviated_commit_id_works_where_a_ref_points_at_it() {
    let s = setup(true);
    let url = s.server.url("fixture.git");
    let args = |name: &str, reference: &str| {
        let point = s.daemon.mountpoint(name).display().to_string();
        let args = ["connect", &url, "--mount-point", &point, "--name", name];
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        args.extend(["--ref".to_string(), reference.to_string()]);
        args
    };
    let short = args("short", &s.fixture.head[..7]);
    s.daemon
        .ctl_ok(&short.iter().map(String::as_str).collect::<Vec<_>>());
    let status = s.daemon.status();
    assert_eq!(status["mounts"][0]["commit"], s.fixture.head.as_str());
    // No branch or tag points at it: say what to give instead.
    let nowhere = args("nowhere", "deadbeef");
    let err = s
        .daemon
        .ctl_err(&nowhere.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(err.contains("abbreviated commit id"), "{err}");
    assert!(err.contains("full 40-character id"), "{err}");
}

#[test]
fn a_server_without_filters_is_refused_clearly() {
    let s = setup(false);
    let point = s.daemon.mountpoint("nofilter");
    let url = s.server.url("fixture.git");
    let err = s
        .daemon
        .ctl_err(&["connect", &url, "--mount-point", path_str(&point)]);
    assert!(
        err.contains("does not support partial-clone filters"),
        "{err}"
    );
    let missing = s.server.url("missing.git");
    let err = s.daemon.ctl_err(&[
        "connect",
        &missing,
        "--mount-point",
        path_str(&point),
        "--name",
        "m",
    ]);
    assert!(err.contains("repository not found"), "{err}");
}

#[test]
fn https_to_a_plain_http_server_says_to_try_http() {
    let s = setup(true);
    let point = s.daemon.mountpoint("tls");
    let url = s
        .server
        .url("fixture.git")
        .replacen("http://", "https://", 1);
    let err = s
        .daemon
        .ctl_err(&["connect", &url, "--mount-point", path_str(&point)]);
    assert!(
        err.contains("the server does not speak TLS; try http://"),
        "{err}"
    );
}

fn mount(s: &Setup, name: &str) -> std::path::PathBuf {
    let point = s.daemon.mountpoint(name);
    let url = s.server.url("fixture.git");
    s.daemon.ctl_ok(&[
        "connect",
        &url,
        "--mount-point",
        path_str(&point),
        "--name",
        name,
    ]);
    s.server.clear_requests();
    point
}

fn sizes_of(dir: std::path::PathBuf) -> Vec<u64> {
    within(LIMIT, move || {
        std::fs::read_dir(&dir)
            .expect("readdir")
            .map(|e| e.expect("entry").metadata().map(|m| m.len()))
            .collect::<std::io::Result<Vec<u64>>>()
    })
    .expect("stat")
}

#[test]
fn a_directorys_sizes_come_in_one_batch() {
    let s = setup(true);
    let point = mount(&s, "batch");
    let sizes = sizes_of(point.join("many"));
    assert_eq!(sizes, vec![14; 8]);
    let requests = s.server.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    let tree = fixture::git(&s.fixture.path, &["rev-parse", "HEAD:many"]).expect("rev-parse");
    let args = &requests[0].args;
    assert!(args.contains(&format!("want {tree}")), "{args:?}");
    assert!(
        args.iter()
            .any(|a| a.starts_with("filter combine:tree:1+blob:limit=")),
        "the directory's small files in one fetch: {args:?}"
    );
    // Their contents came with them.
    s.server.clear_requests();
    let f3 = point.join("many/f3.txt");
    assert_eq!(
        within(LIMIT, move || std::fs::read(f3)).expect("read"),
        b"file number 3\n"
    );
    assert_eq!(s.server.requests(), []);
}

/// A repository named `name` holding `files`, committed and served (bare, under `dir`) by a
/// git server with filters and without object-info, mounted on a new daemon as `name`.
fn serve_and_mount(
    dir: &std::path::Path,
    name: &str,
    files: &[(&str, &[u8])],
) -> (GitServer, Daemon, std::path::PathBuf) {
    let repo = dir.join(name);
    for (rel, bytes) in files {
        let path = repo.join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, bytes).expect("write");
    }
    fixture::git(&repo, &["init", "-q", "-b", "main"]).expect("init");
    fixture::git(&repo, &["add", "."]).expect("add");
    fixture::git(&repo, &["commit", "-q", "-m", name]).expect("commit");
    let root = dir.join("served");
    std::fs::create_dir_all(&root).expect("mkdir");
    let status = std::process::Command::new("git")
        .args(["clone", "-q", "--bare"])
        .arg(&repo)
        .arg(root.join(format!("{name}.git")))
        .status()
        .expect("git clone");
    assert!(status.success());
    let server = GitServer::start_with(&root, true, false).expect("git server");
    let daemon = Daemon::start();
    let point = daemon.mountpoint(name);
    let url = server.url(&format!("{name}.git"));
    daemon.ctl_ok(&git_connect(&url, &point, name));
    (server, daemon, point)
}

#[test]
fn files_up_to_half_a_mebibyte_come_with_their_directorys_sizes() {
    // Source files of that size are common (generated tables, bindings); each costing a
    // request of its own made a cold `grep -r` of the dependency sources a third slower.
    let dir = tempfile::tempdir().expect("temp dir");
    let table = fixture::pseudo_random(400 << 10, 7);
    let files: [(&str, &[u8]); 2] = [("gen/table.rs", &table), ("gen/mod.rs", b"mod table;\n")];
    let (server, _daemon, point) = serve_and_mount(dir.path(), "tables", &files);
    server.clear_requests();

    let mut sizes = sizes_of(point.join("gen"));
    sizes.sort_unstable();
    assert_eq!(sizes, vec![11, 400 << 10]);
    let requests = server.requests();
    // Before (files up to 256 KiB only), the table's size took a fetch of its own.
    assert_eq!(
        requests.len(),
        1,
        "one fetch for the directory: {requests:?}"
    );
    server.clear_requests();
    let path = point.join("gen/table.rs");
    assert_eq!(
        within(LIMIT, move || std::fs::read(path)).expect("read"),
        table
    );
    assert_eq!(server.requests(), [], "the table came with the sizes");
}

#[test]
fn ls_then_ls_l_of_one_directory_fetches_no_other_directorys_files() {
    // `ls` of the root, then `ls -l assets`: a person looking, not a walk going down, so the
    // next directory's files stay where they are (before, src/ came along with the sizes).
    let dir = tempfile::tempdir().expect("temp dir");
    let files: [(&str, &[u8]); 2] = [
        ("assets/icon.svg", b"<svg/>\n"),
        ("src/main.rs", b"fn main() {}\n"),
    ];
    let (server, _daemon, point) = serve_and_mount(dir.path(), "look", &files);
    let listed = point.clone();
    let names = within(LIMIT, move || list_names(&listed)).expect("ls");
    assert_eq!(names, ["assets", "src"]);
    assert_eq!(sizes_of(point.join("assets")), vec![7]);
    server.clear_requests();
    let path = point.join("src/main.rs");
    assert_eq!(
        within(LIMIT, move || std::fs::read(path)).expect("read"),
        b"fn main() {}\n"
    );
    assert!(
        !server.requests().is_empty(),
        "src/main.rs had come with the sizes of assets/"
    );
}

#[test]
fn a_deleted_object_fails_alone() {
    let s = setup(true);
    // Delete one blob from the served repository (its objects are loose).
    let oid = fixture::git(&s.fixture.path, &["rev-parse", "HEAD:many/f3.txt"]).expect("rev-parse");
    let served = s.server_root().join("fixture.git/objects");
    std::fs::remove_file(served.join(&oid[..2]).join(&oid[2..])).expect("delete the object");
    let point = mount(&s, "holes");
    let f3 = point.join("many/f3.txt");
    let err = within(LIMIT, move || std::fs::read(f3)).expect_err("a missing object");
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    let f4 = point.join("many/f4.txt");
    assert_eq!(
        within(LIMIT, move || std::fs::read(f4)).expect("the others arrive"),
        b"file number 4\n"
    );
}

#[test]
fn a_big_files_size_comes_without_its_content() {
    let s = setup(true);
    // Served as a server keeps objects: packed (a loose big object must be compressed
    // again before any of it is sent).
    let served = s.server_root().join("fixture.git");
    let packed = std::process::Command::new("git")
        .arg("-C")
        .arg(&served)
        .args(["repack", "-adq"])
        .status()
        .expect("git repack");
    assert!(packed.success());
    let point = mount(&s, "big");
    let sent_before = s.server.bytes_sent();
    assert_eq!(sizes_of(point.join("big")), vec![5 * 1024 * 1024]);
    let sent = s.server.bytes_sent() - sent_before;
    let status = s.daemon.status();
    let fetched = status["mounts"][0]["fetched_bytes"]
        .as_u64()
        .expect("fetched");
    // The answer was closed early: what the server sent before it saw that is what the
    // connection's buffers took (up to a few MiB on loopback under load), not the file.
    assert!(
        sent < 5 * 1024 * 1024 / 2,
        "the server sent {sent} bytes for a size"
    );
    assert!(
        fetched < 1 << 20,
        "the mount fetched {fetched} bytes for a size"
    );
    let commands = commands(&s);
    assert_eq!(commands, ["fetch", "fetch"], "small files, then the size");
    // The content comes when read.
    let big = point.join("big/five-mb.bin");
    let read = within(LIMIT, move || std::fs::read(big)).expect("read");
    assert!(
        read == fixture::pseudo_random(5 * 1024 * 1024, 42),
        "wrong bytes"
    );
}

/// `grep -r` through the mount at `point`, which reads every file, one directory after
/// another; checks it found the deepest file.
fn grep_for_the_leaf(point: std::path::PathBuf) {
    let found = within(LIMIT, move || {
        std::process::Command::new("grep")
            .args(["-r", "-l", "a leaf, deep down"])
            .arg(&point)
            .output()
    })
    .expect("grep");
    let listed = String::from_utf8_lossy(&found.stdout);
    assert!(listed.contains("src/nested/deep/leaf.txt"), "{listed}");
}

#[test]
fn a_walk_reading_the_tree_brings_many_directories_per_request() {
    let s = setup(true);
    grep_for_the_leaf(mount(&s, "walk"));
    let small_file_fetches = requests_where(&s, |r| {
        r.args.iter().any(|a| a.starts_with("filter combine:"))
    });
    // The root's files, then the rest of the tree in one go once the walk shows (before,
    // one for each of the six directories holding files).
    assert!(
        small_file_fetches.len() <= 3,
        "{} fetches of small files: {small_file_fetches:#?}",
        small_file_fetches.len()
    );
}

#[test]
fn a_walk_reading_files_whose_sizes_are_known_still_brings_many_directories_per_request() {
    let s = setup(true);
    grep_for_the_leaf(mount(&s, "known"));
    // The cache keeps the sizes it learnt when it drops contents: a new mount then lists
    // every size at once (readdirplus), and only the reads show the walk.
    s.daemon.ctl_ok(&["disconnect", "known"]);
    s.daemon.ctl_ok(&["cache", "clear"]);
    grep_for_the_leaf(mount(&s, "known"));
    let fetches = requests_where(&s, |r| r.command.as_deref() == Some("fetch"));
    // The root's files, the rest of the tree's small files, the big file (before: one
    // fetch per file read).
    assert!(
        fetches.len() <= 4,
        "{} fetches: {fetches:#?}",
        fetches.len()
    );
}

#[test]
fn object_info_gives_sizes_without_content() {
    let s = setup_with(true, true);
    let point = mount(&s, "info");
    assert_eq!(sizes_of(point.join("many")), vec![14; 8]);
    let requests = s.server.requests();
    assert!(
        requests
            .iter()
            .all(|r| r.command.as_deref() == Some("object-info")),
        "{requests:?}"
    );

    // A file read alone comes in one fetch, inflated into the cache as its pack arrives.
    s.server.clear_requests();
    let big = point.join("big/five-mb.bin");
    let read = within(LIMIT, move || std::fs::read(big)).expect("read");
    assert!(
        read == fixture::pseudo_random(5 * 1024 * 1024, 42),
        "wrong bytes"
    );
    assert_eq!(commands(&s), ["object-info", "fetch"]);
}

#[test]
fn credentials_are_sent_as_asked_and_never_shown() {
    let s = setup(true);
    let server = GitServer::start_with_basic_auth(&s.server_root(), "alice", "s3cret-token")
        .expect("server");
    let plain = server.url("fixture.git");
    let with = |password: &str| plain.replacen("http://", &format!("http://alice:{password}@"), 1);

    let point = s.daemon.mountpoint("authed");
    s.daemon.ctl_ok(&[
        "connect",
        &with("s3cret-token"),
        "--mount-point",
        path_str(&point),
        "--name",
        "authed",
    ]);
    let readme = point.join("README.md");
    assert_eq!(
        within(LIMIT, move || std::fs::read(readme)).expect("read"),
        b"fixture v2\n"
    );

    let other = s.daemon.mountpoint("denied");
    let err = s.daemon.ctl_err(&[
        "connect",
        &with("wrong"),
        "--mount-point",
        path_str(&other),
        "--name",
        "denied",
    ]);
    assert!(err.contains("refused access (HTTP 401"), "{err}");
    let err = s.daemon.ctl_err(&[
        "connect",
        &plain,
        "--mount-point",
        path_str(&other),
        "--name",
        "anon",
    ]);
    assert!(err.contains("give credentials"), "{err}");

    let status = s.daemon.ctl_ok(&["status", "--json"]);
    let log = s.daemon.log();
    for secret in ["s3cret-token", "wrong"] {
        assert!(!status.contains(secret), "status shows a secret: {status}");
        assert!(!log.contains(secret), "the log shows a secret");
    }
}

#[test]
fn a_push_then_refresh_moves_a_git_mount() {
    let s = setup(true);
    let point = mount(&s, "moving");
    let work = &s.fixture.path;
    std::fs::write(work.join("README.md"), b"pushed\n").expect("write");
    fixture::git(work, &["add", "README.md"]).expect("add");
    fixture::git(work, &["commit", "-q", "-m", "pushed"]).expect("commit");
    let bare = s.server_root().join("fixture.git");
    fixture::git(work, &["push", "-q", path_str(&bare), "main"]).expect("push");
    let out = s.daemon.ctl_ok(&["refresh", "moving"]);
    assert!(out.contains("moved from"), "{out}");
    let readme = point.join("README.md");
    assert_eq!(
        within(LIMIT, move || std::fs::read(readme)).expect("read"),
        b"pushed\n"
    );
}

#[test]
fn credentials_can_come_from_the_configuration() {
    let s = setup(true);
    let server =
        GitServer::start_with_basic_auth(&s.server_root(), "bob", "cfg-secret").expect("server");
    let daemon = Daemon::start_configured(
        |home| {
            format!(
                "[[mount]]\nname = \"configured\"\nrepo = \"{}\"\nmountpoint = \"{}\"\nusername = \"bob\"\npassword = \"cfg-secret\"\n",
                server.url("fixture.git"),
                path_str(&home.join("mnt/configured"))
            )
        },
        None,
    );
    let point = daemon.dir.path().join("mnt/configured");
    let readme = point.join("README.md");
    assert_eq!(
        within(LIMIT, move || std::fs::read(readme)).expect("read"),
        b"fixture v2\n"
    );
    assert!(!daemon.log().contains("cfg-secret"));
    assert!(!daemon.ctl_ok(&["status", "--json"]).contains("cfg-secret"));
}

#[test]
fn blobs_the_server_packs_as_deltas_arrive_whole() {
    let s = setup(true);
    // Two similar files in one directory, repacked on the server so that one is stored as a
    // delta of the other: the batch that learns their sizes carries the delta.
    let work = &s.fixture.path;
    let text: String = (0..2000)
        .map(|i| format!("line {i} of a long file\n"))
        .collect();
    let edited = text.replace("line 1000 of", "line 1000, edited, of");
    std::fs::create_dir_all(work.join("similar")).expect("mkdir");
    std::fs::write(work.join("similar/a.txt"), &text).expect("write");
    std::fs::write(work.join("similar/b.txt"), &edited).expect("write");
    fixture::git(work, &["add", "similar"]).expect("add");
    fixture::git(work, &["commit", "-q", "-m", "similar"]).expect("commit");
    let bare = s.server_root().join("fixture.git");
    fixture::git(work, &["push", "-q", path_str(&bare), "main"]).expect("push");
    fixture::git(&bare, &["repack", "-q", "-a", "-d", "-f"]).expect("repack");
    let packs = std::fs::read_dir(bare.join("objects/pack")).expect("packs");
    let index = packs
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "idx"))
        .expect("a pack index");
    let listing = fixture::git(&bare, &["verify-pack", "-v", path_str(&index)]).expect("verify");
    let b_id = fixture::git(work, &["rev-parse", "HEAD:similar/b.txt"]).expect("rev-parse");
    let a_id = fixture::git(work, &["rev-parse", "HEAD:similar/a.txt"]).expect("rev-parse");
    let deltified = listing.lines().any(|l| {
        let fields: Vec<&str> = l.split_whitespace().collect();
        fields.len() == 7 && (fields[0] == a_id || fields[0] == b_id)
    });
    assert!(
        deltified,
        "the server stores one of them as a delta:\n{listing}"
    );

    let point = mount(&s, "deltas");
    assert_eq!(
        sizes_of(point.join("similar")),
        vec![text.len() as u64, edited.len() as u64]
    );
    assert_eq!(commands(&s), ["fetch"], "both in one batch");
    let (a, b) = (point.join("similar/a.txt"), point.join("similar/b.txt"));
    assert_eq!(
        within(LIMIT, move || std::fs::read(a)).expect("a"),
        text.as_bytes()
    );
    assert_eq!(
        within(LIMIT, move || std::fs::read(b)).expect("b"),
        edited.as_bytes()
    );
    assert_eq!(commands(&s), ["fetch"], "read from the cache");
}
