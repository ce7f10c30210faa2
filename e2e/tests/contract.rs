//! The dev Mega server answers like the real one: replays the requests recorded from a real
//! Mega server (shared notes, mega-transcripts/) and compares status, content type and body.

use std::path::PathBuf;
use std::process::Command;

use megafs_testsupport::{DevServer, ServedRepo};

/// The commit the real server's testrepo trunk was at when most transcripts were recorded.
const RECORDED_TRUNK: &str = "59b63420ae5769b88f5c3feb37d5511ba21961b6";

fn transcripts() -> PathBuf {
    std::env::var_os("MEGAFS_TRANSCRIPTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/notes/mega-transcripts")
        })
}

/// Recorded requests that concern the imported testrepo at the recorded trunk (not the
/// monorepo's own trunk, endpoints megafs does not use, or state-changing calls).
fn replayable(name: &str) -> bool {
    let skip = [
        // Recorded after the testrepo trunk moved on (its third push).
        "ftree_HEAD",
        "tree_mono_root",
        "tree_default",
        "tree_thirdparty",
        "tree_info",
        "tree_root_after3",
        "ftree_demo",
        "ch_demo",
        "ch_project",
        "lc_mono",
        "lc_monoroot",
        "lc_project",
        "blobstr_",
        "blob_mono",
        "dirhash",
        "commitinfo",
        "info_refs",
        "cl_",
        // 5 MB bodies were not recorded; their HEAD twins are compared.
        "blob_big",
        "blob_range",
    ];
    !skip.iter().any(|s| name.starts_with(s))
}

#[test]
fn dev_server_answers_like_the_recorded_mega_server() {
    let dir = transcripts();
    let Ok(table) = std::fs::read_to_string(dir.join("requests.tsv")) else {
        panic!(
            "transcripts not found at {} (set MEGAFS_TRANSCRIPTS)",
            dir.display()
        );
    };
    let work = tempfile::tempdir().expect("temp dir");
    let repo = work.path().join("testrepo.git");
    let bundle = dir.join("testrepo.bundle");
    let ok = Command::new("git")
        .args(["-c", "init.defaultBranch=main", "clone", "-q", "--bare"])
        .arg(&bundle)
        .arg(&repo)
        .status()
        .expect("git clone")
        .success();
    assert!(ok, "cloning the bundle");
    let served = ServedRepo::open("/third-party/testrepo", &repo, RECORDED_TRUNK).expect("open");
    let server = DevServer::start(vec![served]).expect("start");

    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let client = reqwest_like::Client::new();
    let mut compared = 0;
    let mut failures = Vec::new();
    for line in table.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        let [name, method, path, ..] = cols[..] else {
            continue;
        };
        if !replayable(name) || !dir.join(format!("{name}.code")).exists() {
            continue;
        }
        let want_code: u16 = std::fs::read_to_string(dir.join(format!("{name}.code")))
            .expect("code")
            .trim()
            .parse()
            .expect("numeric code");
        let want_hdr = std::fs::read_to_string(dir.join(format!("{name}.hdr"))).unwrap_or_default();
        let want_body = std::fs::read(dir.join(format!("{name}.body"))).unwrap_or_default();
        let url = format!("{}{path}", server.url());
        let got = runtime.block_on(client.send(method, &url));
        compared += 1;
        if got.status != want_code {
            failures.push(format!(
                "{name}: status {} != recorded {want_code}",
                got.status
            ));
            continue;
        }
        let want_type = header(&want_hdr, "content-type");
        if got.content_type != want_type {
            failures.push(format!(
                "{name}: content-type {:?} != {:?}",
                got.content_type, want_type
            ));
        }
        if method == "HEAD" {
            // The recorded "body" is the header block: compare the announced length.
            let want_len = header(&want_hdr, "content-length");
            if got.content_length != want_len {
                failures.push(format!(
                    "{name}: length {:?} != {want_len:?}",
                    got.content_length
                ));
            }
        } else if got.body != want_body {
            failures.push(format!(
                "{name}: body differs:\n  got  {}\n  want {}",
                String::from_utf8_lossy(&got.body),
                String::from_utf8_lossy(&want_body)
            ));
        }
    }
    assert!(compared >= 30, "only {compared} transcripts compared");
    assert!(
        failures.is_empty(),
        "{} of {compared} differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The entries of a raw tree body: (mode, name, id in hex).
fn tree_entries(body: &[u8]) -> Vec<(String, String, String)> {
    let mut entries = Vec::new();
    let mut rest = body;
    while let Some(nul) = rest.iter().position(|&b| b == 0) {
        let head = String::from_utf8_lossy(&rest[..nul]).to_string();
        let (mode, name) = head.split_once(' ').expect("mode and name");
        let id: String = rest[nul + 1..nul + 21]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        entries.push((mode.to_string(), name.to_string(), id));
        rest = &rest[nul + 21..];
    }
    entries
}

fn tree_id_hex(body: &[u8]) -> String {
    megafs_testsupport::mega_server::tree_id(body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Seen on the real server, and so on the dev one: the trunk lists an imported repository as
/// a placeholder tree whose id is not the repository's, the path serves the real root tree,
/// and the placeholder is served neither by path nor as a blob.
#[test]
fn the_trunk_lists_an_import_by_a_placeholder_as_the_recorded_server_does() {
    let dir = transcripts();
    let work = tempfile::tempdir().expect("temp dir");
    let repo = work.path().join("testrepo.git");
    let cloned = Command::new("git")
        .args(["clone", "-q", "--bare"])
        .arg(dir.join("testrepo.bundle"))
        .arg(&repo)
        .output()
        .expect("git clone");
    assert!(cloned.status.success(), "cloning the bundle");
    let root = Command::new("git")
        .arg("-C")
        .arg(&repo)
        .args(["rev-parse", &format!("{RECORDED_TRUNK}^{{tree}}")])
        .output()
        .expect("rev-parse");
    let real_root = String::from_utf8_lossy(&root.stdout).trim().to_string();

    // What the real server answered.
    let recorded = |name: &str| std::fs::read(dir.join(format!("{name}.body"))).expect(name);
    let listed = |body: &[u8]| {
        tree_entries(body)
            .into_iter()
            .find(|(_, name, _)| name == "testrepo")
            .map(|(mode, _, id)| (mode, id))
            .expect("testrepo listed")
    };
    let (mode, placeholder) = listed(&recorded("tree_thirdparty"));
    assert_eq!(mode, "40000");
    assert_eq!(tree_id_hex(&recorded("tree_root")), real_root);
    assert_ne!(
        placeholder, real_root,
        "the recorded trunk lists a placeholder"
    );

    // What the dev server answers.
    let served = ServedRepo::open("/third-party/testrepo", &repo, RECORDED_TRUNK).expect("open");
    let server = DevServer::start(vec![served]).expect("start");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let client = reqwest_like::Client::new();
    let get = |path: &str| runtime.block_on(client.send("GET", &format!("{}{path}", server.url())));
    let (mode, placeholder) = listed(&get("/api/v1/file/tree?path=/third-party").body);
    assert_eq!(mode, "40000");
    let by_path = get("/api/v1/file/tree?path=/third-party/testrepo");
    assert_eq!(tree_id_hex(&by_path.body), real_root);
    assert_ne!(placeholder, real_root, "the dev trunk lists a placeholder");
    let by_placeholder = get(&format!(
        "/api/v1/file/tree?path=/third-party/testrepo&oid={placeholder}"
    ));
    assert_eq!((by_placeholder.status, by_placeholder.body.len()), (200, 0));
    let as_blob = get(&format!("/api/v1/file/blob/{placeholder}"));
    assert_eq!(as_blob.status, 404);
}

fn header(block: &str, name: &str) -> Option<String> {
    block.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// A minimal HTTP/1.1 client over tokio, enough to replay GET and HEAD requests verbatim
/// (the paths are sent exactly as recorded, without re-encoding).
mod reqwest_like {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    pub struct Client;

    pub struct Answer {
        pub status: u16,
        pub content_type: Option<String>,
        pub content_length: Option<String>,
        pub body: Vec<u8>,
    }

    impl Client {
        pub fn new() -> Self {
            Client
        }

        pub async fn send(&self, method: &str, url: &str) -> Answer {
            let rest = url.strip_prefix("http://").expect("http url");
            let (host, path) = rest.split_at(rest.find('/').expect("path"));
            let mut stream = tokio::net::TcpStream::connect(host).await.expect("connect");
            let request =
                format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
            stream.write_all(request.as_bytes()).await.expect("write");
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw).await.expect("read");
            let split = raw
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .expect("header end");
            let head = String::from_utf8_lossy(&raw[..split]).to_string();
            let body = raw[split + 4..].to_vec();
            let status = head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .expect("status");
            Answer {
                status,
                content_type: super::header(&head, "content-type"),
                content_length: super::header(&head, "content-length"),
                body,
            }
        }
    }
}
