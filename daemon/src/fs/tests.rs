//! The filesystem logic without a mount: a local fixture repository behind a source wrapper
//! that counts fetches and can corrupt them.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use megafs_testsupport::fixture;

use super::*;
use crate::source::local::LocalSource;
use crate::source::SourceError;

/// Wraps a source: counts blob fetches and, when asked, flips a byte of each blob.
struct Recording {
    inner: LocalSource,
    blob_fetches: AtomicUsize,
    /// Paths of the trees fetched, in order.
    tree_fetches: std::sync::Mutex<Vec<String>>,
    corrupt: AtomicBool,
}

impl Recording {
    fn trees_fetched(&self) -> Vec<String> {
        self.tree_fetches.lock().expect("lock").clone()
    }
}

#[async_trait]
impl Source for Recording {
    fn describe(&self) -> String {
        format!("recording {}", self.inner.describe())
    }
    async fn resolve(&self) -> Result<Snapshot, SourceError> {
        self.inner.resolve().await
    }
    async fn fetch_tree(&self, path: &RepoPath, oid: ObjectId) -> Result<Vec<u8>, SourceError> {
        self.tree_fetches
            .lock()
            .expect("lock")
            .push(String::from_utf8_lossy(path.as_bytes()).into_owned());
        self.inner.fetch_tree(path, oid).await
    }
    async fn fetch_blob(&self, oid: ObjectId) -> Result<Vec<u8>, SourceError> {
        self.blob_fetches.fetch_add(1, Ordering::SeqCst);
        let mut bytes = self.inner.fetch_blob(oid).await?;
        if self.corrupt.load(Ordering::SeqCst) {
            if let Some(b) = bytes.first_mut() {
                *b ^= 1;
            }
        }
        Ok(bytes)
    }
    async fn blob_size(&self, oid: ObjectId) -> Result<u64, SourceError> {
        self.inner.blob_size(oid).await
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    source: Arc<Recording>,
    store: Arc<Store>,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let fixture = fixture::build(&dir.path().join("repo")).expect("fixture");
    let inner = LocalSource::open(&fixture.path, "", Arc::default()).expect("open");
    let store = Arc::new(Store::open(&dir.path().join("cache"), 0).expect("store"));
    Setup {
        _dir: dir,
        source: Arc::new(Recording {
            inner,
            blob_fetches: AtomicUsize::new(0),
            tree_fetches: Default::default(),
            corrupt: AtomicBool::new(false),
        }),
        store,
    }
}

async fn mount(s: &Setup, owner: (u32, u32)) -> Arc<MountFs> {
    mount_with(s, owner, FsOptions::default().look_ahead).await
}

async fn mount_with(s: &Setup, owner: (u32, u32), look_ahead: usize) -> Arc<MountFs> {
    let options = FsOptions {
        fetch_timeout: std::time::Duration::from_secs(60),
        look_ahead,
        ..FsOptions::default()
    };
    MountFs::open(
        "test",
        s.source.clone(),
        s.store.clone(),
        owner,
        options,
        Arc::default(),
        None,
    )
    .await
    .expect("open")
}

async fn path_ino(fs: &Arc<MountFs>, path: &str) -> u64 {
    let mut ino = ROOT_INO;
    for part in path.split('/') {
        ino = fs.lookup(ino, part.as_bytes()).await.expect(part).ino;
    }
    ino
}

#[tokio::test]
async fn lists_stats_and_reads_like_git() {
    let s = setup();
    let fs = mount(&s, (1000, 1000)).await;
    let names: Vec<_> = fs
        .readdir(ROOT_INO)
        .await
        .expect("readdir")
        .into_iter()
        .map(|e| String::from_utf8(e.name.to_vec()).expect("utf-8"))
        .collect();
    assert!(names.contains(&"README.md".to_string()) && names.contains(&"vendor".to_string()));

    let run = fs.lookup(ROOT_INO, b"run.sh").await.expect("lookup");
    assert_eq!(
        (run.kind, run.perm, run.size, run.uid),
        (EntryKind::Executable, 0o755, 19, 1000)
    );
    let readme = fs.lookup(ROOT_INO, b"README.md").await.expect("lookup");
    assert_eq!((readme.perm, readme.size), (0o644, 11));
    assert_eq!(
        s.source.blob_fetches.load(Ordering::SeqCst),
        0,
        "sizes come without content"
    );

    assert_eq!(
        fs.read(readme.ino, 0, 4096).await.expect("read"),
        b"fixture v2\n"
    );
    assert_eq!(fs.read(readme.ino, 8, 4096).await.expect("read"), b"v2\n");
    assert_eq!(fs.read(readme.ino, 100, 4096).await.expect("read"), b"");
    let link = fs
        .lookup(ROOT_INO, b"link-to-readme")
        .await
        .expect("lookup");
    assert_eq!(fs.readlink(link.ino).await.expect("readlink"), b"README.md");

    // Inode numbers are stable.
    let leaf = path_ino(&fs, "src/nested/deep/leaf.txt").await;
    assert_eq!(path_ino(&fs, "src/nested/deep/leaf.txt").await, leaf);
    assert_eq!(fs.getattr(leaf).await.expect("getattr").size, 18);

    assert!(matches!(
        fs.lookup(ROOT_INO, b"nope").await,
        Err(FsError::NotFound)
    ));
    assert!(matches!(
        fs.lookup(readme.ino, b"x").await,
        Err(FsError::NotDir)
    ));
    let src = path_ino(&fs, "src").await;
    assert!(matches!(fs.read(src, 0, 1).await, Err(FsError::IsDir)));
    assert!(matches!(
        fs.readlink(readme.ino).await,
        Err(FsError::NotSymlink)
    ));
    assert!(matches!(
        fs.getattr(9999).await,
        Err(FsError::StaleInode(9999))
    ));
    let sub = path_ino(&fs, "vendor/sub").await;
    assert!(fs.readdir(sub).await.expect("submodule").is_empty());
}

#[tokio::test]
async fn wrong_bytes_are_refused_and_never_cached() {
    let s = setup();
    let fs = mount(&s, (0, 0)).await;
    let readme = fs.lookup(ROOT_INO, b"README.md").await.expect("lookup");
    s.source.corrupt.store(true, Ordering::SeqCst);
    let err = fs.read(readme.ino, 0, 100).await.expect_err("corrupt");
    assert!(matches!(err, FsError::Corrupt { .. }), "{err}");
    assert_eq!(err.errno(), libc::EIO);
    s.source.corrupt.store(false, Ordering::SeqCst);
    assert_eq!(
        fs.read(readme.ino, 0, 100).await.expect("read"),
        b"fixture v2\n"
    );
}

#[tokio::test]
async fn a_second_mount_reads_from_the_shared_cache() {
    let s = setup();
    let first = mount(&s, (0, 0)).await;
    let ino = path_ino(&first, "big/five-mb.bin").await;
    assert_eq!(first.read(ino, 0, 16).await.expect("read").len(), 16);
    assert_eq!(s.source.blob_fetches.load(Ordering::SeqCst), 1);
    let second = mount(&s, (0, 0)).await;
    let ino = path_ino(&second, "big/five-mb.bin").await;
    assert_eq!(second.read(ino, 1024, 16).await.expect("read").len(), 16);
    assert_eq!(
        s.source.blob_fetches.load(Ordering::SeqCst),
        1,
        "no second fetch"
    );
    assert_eq!(second.metrics().fetched_objects.load(Ordering::Relaxed), 0);
}

/// Waits until file `path` holds at least `len` bytes (written in the background); its bytes.
async fn until_len(path: &std::path::Path, len: usize) -> Vec<u8> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let bytes = std::fs::read(path).unwrap_or_default();
        if bytes.len() >= len || tokio::time::Instant::now() > deadline {
            return bytes;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Waits until the source has fetched the tree at `path` (background work has no other sign).
async fn until_tree_fetched(source: &Recording, path: &str) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !source.trees_fetched().iter().any(|p| p == path) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} never fetched: {:?}",
            source.trees_fetched()
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn reading_a_directory_loads_its_subdirectories_ahead() {
    let s = setup();
    let fs = mount(&s, (0, 0)).await;
    assert_eq!(
        s.source.trees_fetched(),
        [""],
        "opening lists the root only"
    );
    fs.readdir(ROOT_INO).await.expect("readdir");
    for subdir in ["big", "docs", "many", "src", "vendor"] {
        until_tree_fetched(&s.source, subdir).await;
    }
    // One level only: what the kernel reads next goes one further.
    assert!(!s.source.trees_fetched().contains(&"src/nested".to_string()));
    let src = path_ino(&fs, "src").await;
    fs.readdir(src).await.expect("readdir src");
    until_tree_fetched(&s.source, "src/nested").await;
    let fetched = s.source.trees_fetched();
    assert_eq!(
        fetched.iter().filter(|p| *p == "src").count(),
        1,
        "src was listed from its look-ahead: {fetched:?}"
    );
}

#[tokio::test]
async fn look_ahead_is_bounded_and_can_be_off() {
    let s = setup();
    let fs = mount_with(&s, (0, 0), 1).await;
    fs.readdir(ROOT_INO).await.expect("readdir");
    until_tree_fetched(&s.source, "big").await;
    // The bound is applied before anything starts: nothing else can come later.
    assert_eq!(s.source.trees_fetched(), ["", "big"]);

    let s = setup();
    let fs = mount_with(&s, (0, 0), 0).await;
    fs.readdir(ROOT_INO).await.expect("readdir");
    let src = path_ino(&fs, "src").await;
    fs.readdir(src).await.expect("readdir src");
    assert_eq!(s.source.trees_fetched(), ["", "src"]);
}

#[tokio::test]
async fn a_tree_that_contains_itself_or_a_parent_is_refused() {
    let s = setup();
    let fs = mount(&s, (0, 0)).await;
    let nested = path_ino(&fs, "src/nested").await;
    let (root_oid, nested_oid) = {
        let inodes = fs.read_inodes();
        let oid = |ino| inodes.get(ino).expect("node").oid;
        (oid(ROOT_INO), oid(nested))
    };
    let entry = |oid| TreeEntry {
        name: b"loop".to_vec(),
        kind: EntryKind::Directory,
        oid,
    };
    for looping in [nested_oid, root_oid] {
        let error = fs
            .no_loop(nested, nested_oid, vec![entry(looping)])
            .expect_err("loops");
        assert!(error.to_string().contains("\"loop\""), "{error}");
    }
    let deep = path_ino(&fs, "src/nested/deep").await;
    let deep_oid = fs.read_inodes().get(deep).expect("node").oid;
    assert!(fs
        .no_loop(nested, nested_oid, vec![entry(deep_oid)])
        .is_ok());
}

#[tokio::test]
async fn a_later_mount_of_the_commit_recalls_what_earlier_ones_listed() {
    let s = setup();
    let first = mount_with(&s, (0, 0), 0).await;
    for path in ["src", "src/nested", "docs"] {
        let ino = path_ino(&first, path).await;
        first.readdir(ino).await.expect(path);
    }
    let root = first.snapshot().root_tree;
    let record_path = s.store.listings_record(&root);
    // Records are written in the background.
    let record = until_len(&record_path, 4 * 20).await;
    assert_eq!(record.len(), 4 * 20, "the root and three directories");
    assert_eq!(&record[..20], root.as_bytes(), "in the order listed");

    let second = mount_with(&s, (0, 0), 0).await;
    second.readdir(ROOT_INO).await.expect("readdir");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while second.recall().recalled.load(Ordering::Relaxed) < 4 {
        assert!(tokio::time::Instant::now() < deadline, "never recalled");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // Listing them again records nothing twice.
    let nested = path_ino(&second, "src/nested").await;
    second.readdir(nested).await.expect("readdir");
    assert_eq!(std::fs::read(&record_path).expect("record").len(), 4 * 20);
}

#[tokio::test]
async fn a_mount_that_goes_away_is_not_kept_alive_by_its_look_ahead() {
    let s = setup();
    let fs = mount(&s, (0, 0)).await;
    // Every load slot held: the look-ahead of the root's subdirectories queues.
    let slots = fs.ahead.hold_every_slot().await;
    fs.readdir(ROOT_INO).await.expect("readdir");
    let loader = Arc::downgrade(fs.loader());
    drop(fs);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while loader.upgrade().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the queued look-ahead keeps the mount alive"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    drop(slots);
    assert_eq!(
        s.source.trees_fetched(),
        [""],
        "nothing loaded after the mount went"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefetch_counts_each_path_of_a_blob_several_share() {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = dir.path().join("repo");
    std::fs::create_dir_all(repo.join("sub")).expect("mkdir");
    for path in ["a.txt", "b.txt", "sub/c.txt"] {
        std::fs::write(repo.join(path), "the same in three places\n").expect("write");
    }
    std::fs::write(repo.join("other.txt"), "once\n").expect("write");
    fixture::git(&repo, &["init", "-q"]).expect("init");
    fixture::git(&repo, &["add", "."]).expect("add");
    fixture::git(&repo, &["commit", "-q", "-m", "shared"]).expect("commit");
    let source = LocalSource::open(&repo, "", Arc::default()).expect("open");
    let store = Arc::new(Store::open(&dir.path().join("cache"), 0).expect("store"));
    let fs = MountFs::open(
        "shared",
        Arc::new(source),
        store,
        (0, 0),
        FsOptions::default(),
        Arc::default(),
        None,
    )
    .await
    .expect("open");
    let progress = PrefetchProgress::default();
    fs.prefetch(&[], 0, &progress).await.expect("prefetch");
    let total = progress.files_total.load(Ordering::Relaxed);
    let done = progress.files_done.load(Ordering::Relaxed);
    // Before, the three paths of one blob counted as one: "3 of 4 files" read as a failure.
    assert_eq!((done, total), (4, 4));
}
