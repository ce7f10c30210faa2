//! The one place a mount's objects are loaded: from the shared cache when they are there,
//! else from the source, verified against their id before anything uses or keeps them. It
//! owns the source and the store, runs each fetch once however many requests want it
//! (single-flight), bounds each fetch by its deadline, counts what it fetched, and turns
//! every failure into one [`FsError`] and one log line naming path, object and server.
//!
//! Mega's trunk lists an imported repository (`/third-party/NAME`) as a placeholder tree, while
//! the path serves the repository's real root tree under another id. A directory whose path no
//! longer serves the tree its parent listed is such an import when the mount's root is still
//! what the server serves (then every trunk tree down to it is as listed, and only an import
//! can differ); otherwise the trunk moved. An import's root, once entered, is kept for the
//! life of the mount under the id its body hashes to, and everything below it chains from there.
//!
//! It answers: a tree's entries, a blob's cache file (fetched first if needed), many blobs
//! into the cache at once, and sizes. Nothing above it touches the source or the store.

use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::stream::{self, StreamExt};
use tracing::{error, info, warn};

use super::arrival::Arrival;
use super::error::FsError;
use super::flight::Flights;
use super::recent::{RecentTrees, DEFAULT_RECENT_BYTES};
use crate::metrics::{self, MountMetrics, Tier};
use crate::object::{parse_tree, EntryKind, ObjectError, ObjectId, ObjectKind, TreeEntry};
use crate::repo_path::RepoPath;
use crate::source::sink::Watched;
use crate::source::{ByteStream, SinkError, Snapshot, Source, SourceError};
use crate::store::{Pin, Store};

/// How many size queries one directory may have in flight at once.
const SIZE_QUERY_PARALLELISM: usize = 16;

/// Where sizes cost contents, a directory's files under this size come with its sizes (read
/// next, as often as not); bigger ones are only sized, from the start of their answer. At
/// 256 KiB a cold `grep -r` of the dependency sources made 164 requests of one file each and
/// took a third longer; much above 512 KiB, files of a kind (git.git's translations) share a
/// request, where a git server's search for deltas among them costs more than it saves.
const SMALL_FILE: u64 = 512 << 10;

/// How many levels above a directory a walk is looked for (see `MountFs::note_walk`).
pub const WALK_DEPTH: u32 = 4;

/// How many levels of small files one request of a walk brings: all of a tree's, as a rule
/// (a tree with more than [`WALK_MAX_FILES`] is split as the walk goes down into it).
const WALK_FETCH_DEPTH: u32 = 64;

/// How many fetches for a walk go out ahead of the one it waits for.
const WALK_FETCHES_AHEAD: usize = 2;

/// The most files one request of a walk may bring (see [`Loader::walk_batches`]).
const WALK_MAX_FILES: usize = 4096;

/// The most files the first request of a walk brings (unless its first directory alone has
/// more): the walk waits for the whole of that request, so it is kept small, while the
/// bigger ones after it go out at the same time.
const WALK_FIRST_FILES: usize = 256;

/// The trees one fetch for a walk takes (see [`Loader::walk_batches`]): the ones asked for,
/// and every tree whose files that brings.
#[derive(Default)]
struct WalkBatch {
    tops: Vec<ObjectId>,
    reached: Vec<ObjectId>,
}

pub struct Loader {
    source: Arc<dyn Source>,
    store: Arc<Store>,
    /// The source as logs and errors name it.
    server: String,
    trees: Flights<ObjectId, Arc<[u8]>>,
    /// Tree bodies fetched or read lately (see `recent`).
    recent_trees: RecentTrees,
    /// Imported repositories entered: (path, the placeholder its parent lists) -> the
    /// repository's root tree, as the path served it.
    imports: RwLock<HashMap<(RepoPath, ObjectId), ObjectId>>,
    /// Entering an import, once per path (placeholders are not known to differ).
    crossings: Flights<RepoPath, Arc<[u8]>>,
    /// The root tree the mount shows, which tells an import from a moved trunk.
    shown_root: RwLock<Option<ObjectId>>,
    blobs: Flights<ObjectId>,
    /// Size queries by the tree of the directory whose files they are for.
    sizes: Flights<ObjectId>,
    /// Fetches of many directories' small files for a walk, by the first tree of each.
    walks: Flights<ObjectId, bool>,
    /// The trees whose small files such a fetch brought or is bringing, with its key.
    walked: std::sync::Mutex<HashMap<ObjectId, ObjectId>>,
    /// Walk fetches planned and not ended.
    walks_running: Arc<AtomicUsize>,
    /// How many blobs walk fetches kept, for those waiting on some of them.
    walk_kept: tokio::sync::watch::Sender<u64>,
    metrics: Arc<MountMetrics>,
    /// Mounted from the last known commit because the source was unreachable; cleared by the
    /// first successful fetch.
    offline: AtomicBool,
    /// The longest one fetch (retries included) may take.
    fetch_timeout: Duration,
    /// The longest a request waits on the fetches it needs, all together (see `flight`).
    wait_limit: Option<Duration>,
}

impl Loader {
    pub fn new(
        source: Arc<dyn Source>,
        store: Arc<Store>,
        fetch_timeout: Duration,
        wait_limit: Option<Duration>,
        metrics: Arc<MountMetrics>,
    ) -> Loader {
        Loader {
            server: source.describe(),
            source,
            store,
            trees: Flights::with_wait_limit(wait_limit),
            recent_trees: RecentTrees::new(DEFAULT_RECENT_BYTES),
            imports: RwLock::default(),
            crossings: Flights::with_wait_limit(wait_limit),
            shown_root: RwLock::default(),
            blobs: Flights::with_wait_limit(wait_limit),
            sizes: Flights::with_wait_limit(wait_limit),
            walks: Flights::with_wait_limit(wait_limit),
            walked: Default::default(),
            walks_running: Arc::default(),
            walk_kept: tokio::sync::watch::Sender::new(0),
            metrics,
            offline: AtomicBool::new(false),
            fetch_timeout,
            wait_limit,
        }
    }

    pub fn wait_limit(&self) -> Option<Duration> {
        self.wait_limit
    }

    /// The source, as `status` and logs show it.
    pub fn server(&self) -> &str {
        &self.server
    }

    pub fn metrics(&self) -> &Arc<MountMetrics> {
        &self.metrics
    }

    pub fn is_offline(&self) -> bool {
        self.offline.load(Ordering::Relaxed)
    }

    // The commit shown.

    /// Resolves the commit the source shows and remembers it, with its root tree in the
    /// cache; where the source cannot be reached, falls back to the commit it last resolved
    /// to, if its root tree is cached (the mount is then offline).
    pub async fn resolve(&self) -> Result<Snapshot, FsError> {
        match self.within_deadline(self.source.resolve()).await {
            Ok(snapshot) => {
                self.adopt(&snapshot).await?;
                self.show(snapshot.root_tree);
                Ok(snapshot)
            }
            Err(e) if e.is_unavailable() => match self.remembered(&e) {
                Some(snapshot) => {
                    self.show(snapshot.root_tree);
                    Ok(snapshot)
                }
                None => Err(e.into()),
            },
            Err(e) => Err(e.into()),
        }
    }

    /// Tells the loader the mount now shows root tree `root`.
    pub fn show(&self, root: ObjectId) {
        *self.shown_root.write().unwrap_or_else(|p| p.into_inner()) = Some(root);
    }

    /// What the source shows now, without adopting it.
    pub async fn latest(&self) -> Result<Snapshot, FsError> {
        Ok(self.within_deadline(self.source.resolve()).await?)
    }

    /// Makes `snapshot` the one to mount from: its root tree verified and cached, and
    /// remembered for mounting while the source is unreachable.
    pub async fn adopt(&self, snapshot: &Snapshot) -> Result<(), FsError> {
        let root = RepoPath::root();
        match &snapshot.root_body {
            Some(body) => {
                // Already fetched to resolve (Mega lists the root to learn it).
                self.verify(ObjectKind::Tree, snapshot.root_tree, &root, body)?;
                self.count_fetch(body.len() as u64);
                let inserted = self.store.insert(&snapshot.root_tree, body);
                inserted.map_err(FsError::cache)?;
            }
            None if self.store.contains(&snapshot.root_tree) => {}
            None => {
                self.fetch_tree_now(&root, snapshot.root_tree).await?;
            }
        }
        self.store.save_snapshot(
            &self.server,
            &snapshot.commit,
            &snapshot.root_tree,
            snapshot.commit_time,
        );
        Ok(())
    }

    /// The commit last resolved to, if its root tree is cached, for when resolving failed
    /// with `error`.
    fn remembered(&self, error: &SourceError) -> Option<Snapshot> {
        let (commit, root_tree, commit_time) = self.store.load_snapshot(&self.server)?;
        if !self.store.contains(&root_tree) {
            return None;
        }
        warn!(source = %self.server, %commit, %error, "source unreachable: mounting the last known commit from the cache (offline)");
        self.offline.store(true, Ordering::Relaxed);
        Some(Snapshot {
            commit,
            root_tree,
            commit_time,
            root_body: None,
        })
    }

    // Trees.

    /// The entries of tree `oid` if it is in the cache and parses: a local read, for the
    /// asking thread to do itself. None where the source is needed or the tree is malformed
    /// ([`Loader::entries`] then says why).
    pub fn entries_at_hand(&self, oid: &ObjectId) -> Option<Vec<TreeEntry>> {
        let entries = self.cached_entries(oid)?;
        self.metrics.cache_hit();
        Some(entries)
    }

    /// The entries of tree `oid` if it is cached and parses, not counted as a hit.
    pub fn cached_entries(&self, oid: &ObjectId) -> Option<Vec<TreeEntry>> {
        let body = self.cached_tree(oid).ok()??;
        parse_tree(&body).ok()
    }

    /// Tree `oid`'s body if cached: from memory where it was fetched or read lately.
    fn cached_tree(&self, oid: &ObjectId) -> std::io::Result<Option<Arc<[u8]>>> {
        if let Some(body) = self.recent_trees.get(oid) {
            return Ok(Some(body));
        }
        let Some(body) = self.store.read(oid)? else {
            return Ok(None);
        };
        let body: Arc<[u8]> = Arc::from(body);
        self.recent_trees.insert(*oid, Arc::clone(&body));
        Ok(Some(body))
    }

    /// The entries of tree `oid` if it is cached or the source holds it, without a request.
    fn entries_without_request(&self, oid: &ObjectId) -> Option<Vec<TreeEntry>> {
        self.cached_entries(oid).or_else(|| {
            let body = self.source.tree_at_hand(oid)?;
            oid.verify(ObjectKind::Tree, &body).ok()?;
            parse_tree(&body).ok()
        })
    }

    /// The entries of tree `oid`, found at `path`: from the cache, else fetched (once, for
    /// every request that wants it) and verified.
    pub async fn entries(
        self: &Arc<Self>,
        path: &RepoPath,
        oid: ObjectId,
    ) -> Result<Vec<TreeEntry>, FsError> {
        self.entries_counting(path, oid, true).await
    }

    /// [`Loader::entries`] for the daemon's own work: a cached tree is not counted as a hit
    /// (no process asked for it).
    pub async fn entries_uncounted(
        self: &Arc<Self>,
        path: &RepoPath,
        oid: ObjectId,
    ) -> Result<Vec<TreeEntry>, FsError> {
        self.entries_counting(path, oid, false).await
    }

    async fn entries_counting(
        self: &Arc<Self>,
        path: &RepoPath,
        oid: ObjectId,
        count_hit: bool,
    ) -> Result<Vec<TreeEntry>, FsError> {
        let oid = self.imported_root(path, oid);
        let body = match self.cached_tree(&oid).map_err(FsError::cache)? {
            Some(body) => {
                if count_hit {
                    self.metrics.cache_hit();
                }
                body
            }
            None => self.fetch_tree(path, oid).await?,
        };
        parse_tree(&body).map_err(|error| self.refuse_tree(path, oid, error))
    }

    /// Fetches tree `oid` into the cache (once, however many want it); at an imported
    /// repository's placeholder, the repository's root tree.
    pub async fn fetch_tree(
        self: &Arc<Self>,
        path: &RepoPath,
        oid: ObjectId,
    ) -> Result<Arc<[u8]>, FsError> {
        let oid = self.imported_root(path, oid);
        match self.fetch_listed_tree(path, oid).await {
            Err(FsError::Source(e))
                if matches!(*e, SourceError::TrunkMoved { .. }) && !path.is_root() =>
            {
                self.enter_import(path, oid, e).await
            }
            other => other,
        }
    }

    /// The root tree of the import entered at `path` where its parent lists `oid`; else `oid`.
    fn imported_root(&self, path: &RepoPath, oid: ObjectId) -> ObjectId {
        let imports = self.imports.read().unwrap_or_else(|p| p.into_inner());
        if imports.is_empty() {
            return oid;
        }
        imports.get(&(path.clone(), oid)).copied().unwrap_or(oid)
    }

    /// `path` no longer serves tree `listed`, which its parent lists (`moved` says so): the
    /// root of an imported repository, entered once however many ask, or else the trunk moved.
    async fn enter_import(
        self: &Arc<Self>,
        path: &RepoPath,
        listed: ObjectId,
        moved: Arc<SourceError>,
    ) -> Result<Arc<[u8]>, FsError> {
        let this = Arc::clone(self);
        let at = path.clone();
        self.crossings
            .run(path.clone(), async move {
                this.cross_into(&at, listed, moved).await
            })
            .await
    }

    async fn cross_into(
        &self,
        path: &RepoPath,
        listed: ObjectId,
        moved: Arc<SourceError>,
    ) -> Result<Arc<[u8]>, FsError> {
        if let Some(import) = self.import_holding(path) {
            // Below an import's root, ids chain again: the repository itself moved.
            return Err(FsError::ImportMoved {
                import,
                path: path.clone(),
                server: self.server.clone(),
            });
        }
        let shown = *self.shown_root.read().unwrap_or_else(|p| p.into_inner());
        let root = RepoPath::root();
        let (here, top) = futures::join!(
            self.within_deadline(self.source.tree_at(path)),
            self.within_deadline(self.source.tree_at(&root)),
        );
        let here = here.map_err(|e| self.failed("an imported repository", path, listed, e))?;
        let top = top.map_err(|e| self.failed("the mount's root", &root, listed, e))?;
        let (Some(body), Some(top)) = (here, top) else {
            return Err(FsError::Source(moved));
        };
        self.count_fetch((body.len() + top.len()) as u64);
        if Some(ObjectId::hash(ObjectKind::Tree, &top)) != shown {
            return Err(FsError::Source(moved));
        }
        let real = ObjectId::hash(ObjectKind::Tree, &body);
        info!(%path, placeholder = %listed, tree = %real, "entering an imported repository");
        self.store.insert(&real, &body).map_err(FsError::cache)?;
        let mut imports = self.imports.write().unwrap_or_else(|p| p.into_inner());
        imports.insert((path.clone(), listed), real);
        Ok(Arc::from(body))
    }

    /// The root of the entered import that `path` lies below, if any.
    fn import_holding(&self, path: &RepoPath) -> Option<RepoPath> {
        let imports = self.imports.read().unwrap_or_else(|p| p.into_inner());
        imports
            .keys()
            .map(|(import, _)| import)
            .find(|import| path.is_within(import) && path != *import)
            .cloned()
    }

    /// Fetches tree `oid`, as listed at `path`, into the cache (once, however many want it).
    async fn fetch_listed_tree(
        self: &Arc<Self>,
        path: &RepoPath,
        oid: ObjectId,
    ) -> Result<Arc<[u8]>, FsError> {
        let this = Arc::clone(self);
        let (path, path_of_tree) = (path.clone(), path.clone());
        metrics::reached(Tier::Server);
        let waited = self
            .trees
            .run(oid, async move {
                this.metrics
                    .in_flight(this.fetch_tree_now(&path, oid))
                    .await
            })
            .await;
        waited.inspect_err(|e| self.note_timeout(e, "a directory", &path_of_tree, oid))
    }

    async fn fetch_tree_now(&self, path: &RepoPath, oid: ObjectId) -> Result<Arc<[u8]>, FsError> {
        let fetch = self.source.fetch_tree(path, oid);
        let body = self
            .within_deadline(fetch)
            .await
            .map_err(|e| self.failed("a directory", path, oid, e))?;
        self.verify(ObjectKind::Tree, oid, path, &body)?;
        self.count_fetch(body.len() as u64);
        self.store.insert(&oid, &body).map_err(FsError::cache)?;
        let body: Arc<[u8]> = Arc::from(body);
        self.recent_trees.insert(oid, Arc::clone(&body));
        Ok(body)
    }

    /// Warms the page cache with tree `oid`'s cache file without reading it (nor touching its
    /// place in the cache's eviction order), unless its body is in memory already. Blocking:
    /// for a blocking thread.
    pub fn warm(&self, oid: &ObjectId) -> bool {
        self.tree_in_memory(oid) || self.store.warm(oid)
    }

    /// Whether tree `oid`'s body is in memory (fetched or read lately): at hand, no disk.
    pub fn tree_in_memory(&self, oid: &ObjectId) -> bool {
        self.recent_trees.contains(oid)
    }

    pub fn contains(&self, oid: &ObjectId) -> bool {
        self.store.contains(oid)
    }

    /// A tree of directory `path` whose entries cannot be used: refused, logged once.
    pub fn refuse_tree(&self, path: &RepoPath, oid: ObjectId, error: ObjectError) -> FsError {
        error!(server = %self.server, %oid, %path, %error, "refusing a malformed tree");
        FsError::Corrupt {
            what: format!("tree {oid} at {path}"),
            server: self.server.clone(),
            error,
        }
    }

    // Blobs.

    /// The cache file of blob `oid`, if it is cached.
    pub fn cached_blob(&self, oid: &ObjectId) -> Option<File> {
        if !self.store.contains(oid) {
            return None;
        }
        metrics::reached(Tier::Cache);
        self.store.open_object(oid).ok().flatten()
    }

    /// The cache file of blob `oid` if it is cached, counted as a hit.
    pub fn open_cached(&self, oid: &ObjectId) -> Result<Option<File>, FsError> {
        let file = self.store.open_object(oid).map_err(FsError::cache)?;
        if file.is_some() {
            self.metrics.cache_hit();
        }
        Ok(file)
    }

    /// The cache file of blob `oid`, fetched first if needed (`path` tells where it is, for
    /// a fetch; it is only worked out on a miss).
    pub async fn open_blob(
        self: &Arc<Self>,
        oid: ObjectId,
        path: impl FnOnce() -> RepoPath,
    ) -> Result<File, FsError> {
        if let Some(file) = self.open_cached(&oid)? {
            return Ok(file);
        }
        self.ensure_blob(&path(), oid, None).await?;
        let fetched = self.store.open_fetched(&oid).map_err(FsError::cache)?;
        fetched.ok_or_else(|| vanished(oid))
    }

    /// The whole content of blob `oid` (a symlink's target), fetched first if needed.
    pub async fn blob_bytes(
        self: &Arc<Self>,
        path: &RepoPath,
        oid: ObjectId,
    ) -> Result<Vec<u8>, FsError> {
        self.ensure_blob(path, oid, None).await?;
        let bytes = self.store.read(&oid).map_err(FsError::cache)?;
        bytes.ok_or_else(|| vanished(oid))
    }

    /// Makes sure blob `oid` is in the cache, fetching it once however many want it, and
    /// telling `arrival` (if any) how the fetch comes along.
    pub async fn ensure_blob(
        self: &Arc<Self>,
        path: &RepoPath,
        oid: ObjectId,
        arrival: Option<Arc<Arrival>>,
    ) -> Result<(), FsError> {
        if self.store.contains(&oid) {
            return Ok(());
        }
        let this = Arc::clone(self);
        let (path, path_of_blob) = (path.clone(), path.clone());
        metrics::reached(Tier::Server);
        let waited = self
            .blobs
            .run(oid, async move {
                if this.store.contains(&oid) {
                    return Ok(());
                }
                let fetch = this.stream_blob(oid, arrival.as_deref());
                let bytes = this
                    .metrics
                    .in_flight(this.within_deadline(fetch))
                    .await
                    .map_err(|e| this.failed("a file", &path, oid, e))?;
                info!(%oid, %path, bytes, "fetched blob");
                Ok(())
            })
            .await;
        waited.inspect_err(|e| self.note_timeout(e, "a file", &path_of_blob, oid))
    }

    /// Streams blob `oid` into the cache as it arrives (memory does not grow with its size);
    /// the cache keeps it only whole and hashing to its id. Its length.
    async fn stream_blob(
        &self,
        oid: ObjectId,
        arrival: Option<&Arrival>,
    ) -> Result<u64, SourceError> {
        let (len, chunks) = self.source.fetch_blob_stream(oid).await?;
        self.keep_stream(oid, len, chunks, arrival).await
    }

    /// Blob `oid`'s size from the head of its answer, with its content into the cache too
    /// where it is no bigger than `up_to`: a walk that reads reads it next, and this way it
    /// costs one request rather than two. A bigger one's answer is dropped after the head.
    async fn size_with_content(&self, oid: ObjectId, up_to: u64) -> Result<u64, SourceError> {
        let (len, chunks) = self.source.fetch_blob_stream(oid).await?;
        if len > up_to || self.store.contains(&oid) {
            return Ok(len);
        }
        self.keep_stream(oid, len, chunks, None).await
    }

    /// Writes blob `oid` (`len` bytes) into the cache as `chunks` arrive; its length once
    /// kept (whole and hashing to its id).
    async fn keep_stream(
        &self,
        oid: ObjectId,
        len: u64,
        mut chunks: ByteStream,
        arrival: Option<&Arrival>,
    ) -> Result<u64, SourceError> {
        let mut pending = self.store.begin(Some(oid), len)?;
        if let Some(arrival) = arrival {
            arrival.started(pending.reader().map_err(SinkError::Io)?);
        }
        while let Some(chunk) = chunks.next().await {
            pending.write(&chunk?)?;
            if let Some(arrival) = arrival {
                arrival.advanced(pending.written());
            }
        }
        pending.commit()?;
        self.count_fetch(len);
        Ok(len)
    }

    /// Fetches the files of `files` not cached yet in one go (where the source batches) into
    /// the cache, within one fetch's deadline: for each fetched (each path of a blob several
    /// share), its path and id and its length or why it did not come. Files another request
    /// is fetching already are left to that fetch. Each failure is logged; one does not stop the others.
    pub async fn blobs_into_cache(
        &self,
        files: &[(RepoPath, ObjectId)],
    ) -> Vec<(RepoPath, ObjectId, Result<u64, FsError>)> {
        let wanted: HashMap<ObjectId, &RepoPath> = files
            .iter()
            .filter(|(_, oid)| !self.store.contains(oid) && !self.blobs.is_running(oid))
            .map(|(path, oid)| (*oid, path))
            .collect();
        if wanted.is_empty() {
            return Vec::new();
        }
        let oids: Vec<ObjectId> = wanted.keys().copied().collect();
        metrics::reached(Tier::Server);
        // Blobs land in the cache as they arrive, each only under the id its bytes hash to.
        let batch = async {
            Ok(self
                .source
                .fetch_blobs_into(&oids, self.store.as_ref())
                .await)
        };
        let results = match self.metrics.in_flight(self.within_deadline(batch)).await {
            Ok(results) => results,
            Err(_) => oids
                .iter()
                .map(|&oid| {
                    let timeout = SourceError::Timeout {
                        server: self.server.clone(),
                    };
                    (oid, Err(timeout))
                })
                .collect(),
        };
        let by_oid: HashMap<ObjectId, Result<u64, FsError>> = results
            .into_iter()
            .map(|(oid, result)| {
                let path = wanted.get(&oid).map(|p| (*p).clone()).unwrap_or_default();
                let result = match result {
                    Ok(len) => {
                        self.count_fetch(len);
                        Ok(len)
                    }
                    Err(e) => Err(self.failed("a file", &path, oid, e)),
                };
                (oid, result)
            })
            .collect();
        // Every path asked for, those sharing a blob each with its result.
        files
            .iter()
            .filter_map(|(path, oid)| Some((path.clone(), *oid, by_oid.get(oid)?.clone())))
            .collect()
    }

    /// Whether the source fetches whole trees' files in one request (see
    /// [`Source::fetch_whole_trees_into`]).
    pub fn fetches_whole_trees(&self) -> bool {
        self.source.fetches_whole_trees()
    }

    /// The files of directory tree `tree` (at `base`) all the way down, with their paths,
    /// if every tree below is at hand and they are no more than `budget`: what a fetch of
    /// the whole tree brings.
    pub fn files_below(
        &self,
        base: &RepoPath,
        tree: ObjectId,
        budget: usize,
    ) -> Option<Vec<(RepoPath, ObjectId)>> {
        let mut files = Vec::new();
        let mut dirs = vec![(base.clone(), tree)];
        while let Some((path, oid)) = dirs.pop() {
            for entry in self.entries_without_request(&oid)? {
                match entry.kind {
                    EntryKind::Directory => dirs.push((path.join(&entry.name), entry.oid)),
                    EntryKind::Submodule => {}
                    _ => files.push((path.join(&entry.name), entry.oid)),
                }
            }
            if files.len() > budget {
                return None;
            }
        }
        Some(files)
    }

    /// Fetches whole trees `trees` in one request where the source can (see
    /// [`Source::fetch_whole_trees_into`]); `files` names every file that brings, with its
    /// path. For each of `files` not cached before, its length or why it did not
    /// come, as [`Loader::blobs_into_cache`] gives them: what the request did not bring (it
    /// failed, or the source cannot) is fetched by id, so one bad object fails only itself.
    pub async fn trees_into_cache(
        &self,
        trees: &[ObjectId],
        files: &[(RepoPath, ObjectId)],
    ) -> Vec<(RepoPath, ObjectId, Result<u64, FsError>)> {
        let missing: Vec<(RepoPath, ObjectId)> = files
            .iter()
            .filter(|(_, oid)| !self.store.contains(oid))
            .cloned()
            .collect();
        if missing.is_empty() {
            return Vec::new();
        }
        metrics::reached(Tier::Server);
        let fetch = self
            .source
            .fetch_whole_trees_into(trees, self.store.as_ref());
        let fetched = tokio::time::timeout(self.fetch_timeout, fetch);
        let kept = match self.metrics.in_flight(fetched).await {
            Ok(Some(Ok(kept))) => kept,
            Ok(None) => HashMap::new(),
            Ok(Some(Err(error))) => {
                warn!(server = %self.server, trees = trees.len(), %error, "cannot fetch whole trees; fetching their files by id");
                HashMap::new()
            }
            Err(_) => {
                warn!(server = %self.server, trees = trees.len(), "no answer for whole trees within the fetch timeout; fetching their files by id");
                HashMap::new()
            }
        };
        for len in kept.values() {
            self.count_fetch(*len);
        }
        let (came, rest): (Vec<_>, Vec<_>) = missing
            .into_iter()
            .partition(|(_, oid)| kept.contains_key(oid));
        let mut results: Vec<_> = came
            .into_iter()
            .map(|(path, oid)| (path, oid, Ok(kept[&oid])))
            .collect();
        results.extend(self.blobs_into_cache(&rest).await);
        results
    }

    /// Keeps `oid` (cached or still to come) from eviction until the pin drops.
    pub fn pin(&self, oid: &ObjectId) -> Pin {
        self.store.pin(oid)
    }

    // Sizes.

    pub fn known_size(&self, oid: &ObjectId) -> Option<u64> {
        self.store.known_size(oid)
    }

    /// Learns the sizes of `files` (of directory `dir`, tree `tree`) not known yet, in
    /// parallel: the kernel asks for them together (`ls -l`), and one query each is all a
    /// Mega server offers. Where sizes cost the contents anyway, the contents are fetched
    /// into the cache instead, in one batch, and the bigger files sized from the head of
    /// their answers. With `contents_up_to` (0: none; for a walk that reads), each size comes
    /// from the head of the file's answer, its content kept too up to that many bytes. Once
    /// per directory tree, however many ask.
    pub async fn learn_sizes(
        self: &Arc<Self>,
        tree: ObjectId,
        files: Vec<(RepoPath, ObjectId)>,
        walk_ahead: Vec<ObjectId>,
        contents_up_to: u64,
    ) -> Result<(), FsError> {
        let this = Arc::clone(self);
        metrics::reached(Tier::Server);
        self.sizes
            .run(tree, async move {
                // Sizes that cost the contents come with the batch, or not at all: a file
                // whose content failed is not asked for again, whole, for its size.
                let mut failed = HashMap::new();
                // A wait cut short (for a process's request) leaves the sizes to come one by one.
                if this.source.sizes_need_content()
                    && !this
                        .small_files_into_cache(tree, walk_ahead, oids_of(&files))
                        .await
                        .unwrap_or(true)
                {
                    for (_, oid, result) in this.blobs_into_cache(&files).await {
                        if let Err(e) = result {
                            failed.insert(oid, e);
                        }
                    }
                }
                let missing = files.into_iter().filter(|(_, oid)| {
                    this.store.known_size(oid).is_none() && !failed.contains_key(oid)
                });
                let sizes: Vec<Result<(), FsError>> = stream::iter(missing)
                    .map(|(path, oid)| {
                        let this = this.clone();
                        async move {
                            let query = this.within_deadline(async {
                                // A walk that reads wants the contents next: one request
                                // for both, on either source (a Mega HEAD then GET is two).
                                match contents_up_to > 0 {
                                    true => this.size_with_content(oid, contents_up_to).await,
                                    false => this.source.blob_size(oid).await,
                                }
                            });
                            let size = this
                                .metrics
                                .in_flight(query)
                                .await
                                .map_err(|e| this.failed("a file's size", &path, oid, e))?;
                            this.store.record_size(&oid, size);
                            Ok(())
                        }
                    })
                    .buffer_unordered(SIZE_QUERY_PARALLELISM)
                    .collect()
                    .await;
                if let Some(e) = failed.into_values().next() {
                    return Err(e);
                }
                sizes.into_iter().collect()
            })
            .await
    }

    /// The requests a walk through `tree` makes, each of trees to take [`WALK_FETCH_DEPTH`]
    /// levels deep (counted in the trees at hand: a git mount has them all), each tree with
    /// the trees whose files that brings: `tree` and as many of `ahead` as fit in
    /// [`WALK_FIRST_FILES`], then the next of `ahead` in up to [`WALK_FETCHES_AHEAD`] more of
    /// up to [`WALK_MAX_FILES`]. Empty where `tree` alone has more files, or its trees are not
    /// at hand. Trees a walk has fetched are left out; those returned are claimed.
    fn walk_batches(&self, tree: ObjectId, ahead: Vec<ObjectId>) -> Vec<WalkBatch> {
        if ahead.is_empty() {
            return Vec::new();
        }
        let candidates = std::iter::once(tree).chain(ahead);
        self.claim_walk(
            candidates,
            WALK_FIRST_FILES,
            1 + WALK_FETCHES_AHEAD,
            Some(tree),
        )
    }

    /// Plans and claims requests for `candidates` not claimed by a walk yet, in order: up
    /// to `most` requests, the first of up to `first_room` files (more where its first tree
    /// alone has more), the others of up to [`WALK_MAX_FILES`]. Stops at a tree too big for
    /// any request. With `leading`, nothing unless the first request starts with that tree.
    /// Planned and claimed under one lock, so two requests never plan the same tree.
    fn claim_walk(
        &self,
        candidates: impl Iterator<Item = ObjectId>,
        first_room: usize,
        most: usize,
        leading: Option<ObjectId>,
    ) -> Vec<WalkBatch> {
        let mut walked = self.walked.lock().unwrap_or_else(|p| p.into_inner());
        let mut batches: Vec<WalkBatch> = Vec::new();
        let mut batch = WalkBatch::default();
        let mut room = first_room;
        for candidate in candidates {
            if walked.contains_key(&candidate) {
                continue;
            }
            let mut reached = self.reach(candidate, WALK_FETCH_DEPTH, room);
            if reached.is_none() && !batch.tops.is_empty() {
                batches.push(std::mem::take(&mut batch));
                if batches.len() == most {
                    break;
                }
                room = WALK_MAX_FILES;
                reached = self.reach(candidate, WALK_FETCH_DEPTH, room);
            }
            if reached.is_none() && room < WALK_MAX_FILES {
                // A first tree with more files than the first request's room fills one alone.
                room = WALK_MAX_FILES;
                reached = self.reach(candidate, WALK_FETCH_DEPTH, room);
            }
            let Some((files, trees)) = reached else {
                break; // Too big for any request.
            };
            room -= files;
            batch.tops.push(candidate);
            batch.reached.extend(trees);
        }
        if !batch.tops.is_empty() && batches.len() < most {
            batches.push(batch);
        }
        if let Some(tree) = leading {
            if batches
                .first()
                .is_none_or(|b| b.tops.first() != Some(&tree))
            {
                return Vec::new();
            }
        }
        for batch in &batches {
            for tree in &batch.reached {
                walked.entry(*tree).or_insert(batch.tops[0]);
            }
        }
        batches
    }

    /// How many files tree `tree` holds `depth` levels down, and the trees holding them, if
    /// no more than `budget` and every tree needed is cached.
    fn reach(&self, tree: ObjectId, depth: u32, budget: usize) -> Option<(usize, Vec<ObjectId>)> {
        let mut count = 0;
        let mut trees = Vec::new();
        let mut level = vec![tree];
        for _ in 0..depth {
            let mut next = Vec::new();
            for oid in level {
                for entry in self.entries_without_request(&oid)? {
                    match entry.kind {
                        EntryKind::Directory => next.push(entry.oid),
                        EntryKind::Submodule => {}
                        _ => count += 1,
                    }
                }
                if count > budget {
                    return None;
                }
                trees.push(oid);
            }
            level = next;
        }
        Some((count, trees))
    }

    /// Whether the source fetches many directories' small files in one request (see
    /// [`Source::filters_blobs`]).
    pub fn batches_small_files(&self) -> bool {
        self.source.filters_blobs()
    }

    /// Whether learning sizes costs contents (see [`Source::sizes_need_content`]).
    pub fn sizes_need_content(&self) -> bool {
        self.source.sizes_need_content()
    }

    /// The files of directory tree `tree` under [`SMALL_FILE`] into the cache in one fetch,
    /// where the source can leave the bigger ones out: whether it could. With `walk_ahead`
    /// (the trees of the directories a walk reaches next), those of `tree` and of the next of
    /// them come [`WALK_FETCH_DEPTH`] levels deep in the same fetch, and the fetches for the ones
    /// after go out in the background, so the walk finds them on their way; each tree once a
    /// mount, a request for one joining the fetch that brings it. It returns once the fetch
    /// ends or every one of `wanted` (the directory's files) is cached, whichever comes first:
    /// a walk goes on through the directories of a big fetch as their files arrive. A failed
    /// fetch is logged; the sizes then come one by one. An error only where a process's
    /// request waited its whole deadline on the fetch (the fetch goes on).
    pub async fn small_files_into_cache(
        self: &Arc<Self>,
        tree: ObjectId,
        walk_ahead: Vec<ObjectId>,
        wanted: Vec<ObjectId>,
    ) -> Result<bool, FsError> {
        tokio::select! {
            biased;
            fetched = self.walk_fetch_of(tree, walk_ahead) => fetched,
            () = self.all_cached(wanted) => Ok(true),
        }
    }

    /// The end of the walk fetch bringing `tree`'s small files: the one running (with the
    /// walk's next requests topped up), else a new one with the next ones after it.
    async fn walk_fetch_of(
        self: &Arc<Self>,
        tree: ObjectId,
        walk_ahead: Vec<ObjectId>,
    ) -> Result<bool, FsError> {
        if let Some(key) = self.walked_by(&tree) {
            self.walk_on(walk_ahead);
            // Joined, or done already: what is left is bigger files, sized one by one.
            if self.walks.is_running(&key) {
                self.walks.run(key, async { Ok(true) }).await?;
            }
            return Ok(true);
        }
        let mut batches = self.walk_batches(tree, walk_ahead).into_iter();
        let (first, depth) = match batches.next() {
            Some(first) => (first, WALK_FETCH_DEPTH),
            None => {
                let mut walked = self.walked.lock().unwrap_or_else(|p| p.into_inner());
                walked.entry(tree).or_insert(tree);
                let alone = WalkBatch {
                    tops: vec![tree],
                    reached: vec![tree],
                };
                (alone, 1)
            }
        };
        // Spawned, so a request given up on leaves the fetch it claimed running.
        let first = tokio::spawn(self.walk_fetch(first, depth));
        for later in batches {
            tokio::spawn(self.walk_fetch(later, WALK_FETCH_DEPTH));
        }
        first.await.unwrap_or(Ok(false))
    }

    /// Returns once every one of `wanted` is cached, woken by each blob a walk fetch keeps;
    /// never for none.
    async fn all_cached(&self, mut wanted: Vec<ObjectId>) {
        let mut kept = self.walk_kept.subscribe();
        loop {
            wanted.retain(|oid| !self.store.contains(oid));
            if wanted.is_empty() {
                return;
            }
            if kept.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Keeps a walk's requests ahead of it: where fewer than 1 + [`WALK_FETCHES_AHEAD`] of
    /// the mount's walk fetches are on their way, the next trees of `ahead` not claimed yet
    /// go out, so the walk does not reach the end of what was asked for and wait there.
    fn walk_on(self: &Arc<Self>, ahead: Vec<ObjectId>) {
        let running = self.walks_running.load(Ordering::Relaxed);
        let free = (1 + WALK_FETCHES_AHEAD).saturating_sub(running);
        if free == 0 || ahead.is_empty() {
            return;
        }
        for batch in self.claim_walk(ahead.into_iter(), WALK_MAX_FILES, free, None) {
            tokio::spawn(self.walk_fetch(batch, WALK_FETCH_DEPTH));
        }
    }

    /// The key of the walk fetch that brings tree `tree`'s small files, if one was made.
    fn walked_by(&self, tree: &ObjectId) -> Option<ObjectId> {
        let walked = self.walked.lock().unwrap_or_else(|p| p.into_inner());
        walked.get(tree).copied()
    }

    /// One fetch of the small files of `batch`'s trees (claimed, so later requests join it),
    /// `depth` levels deep, run whoever waits, and counted among the walk fetches on their
    /// way from now until it ends: whether the source could leave the bigger files out.
    fn walk_fetch(
        self: &Arc<Self>,
        batch: WalkBatch,
        depth: u32,
    ) -> impl std::future::Future<Output = Result<bool, FsError>> + Send + 'static {
        let key = batch.tops[0];
        let on_its_way = OnItsWay::count(&self.walks_running);
        let this = Arc::clone(self);
        async move {
            let _on_its_way = on_its_way;
            let work = {
                let this = Arc::clone(&this);
                async move { Ok(this.fetch_small_files(&batch.tops, depth).await) }
            };
            this.walks.run(key, work).await
        }
    }

    /// The small files of `trees`, `depth` levels deep, into the cache in one fetch: whether
    /// the source could leave the bigger ones out. A failure is logged.
    async fn fetch_small_files(&self, trees: &[ObjectId], depth: u32) -> bool {
        let sink = Watched::new(self.store.as_ref(), &self.walk_kept);
        let fetch = self
            .source
            .fetch_small_files_into(trees, depth, SMALL_FILE, &sink);
        let fetched = tokio::time::timeout(self.fetch_timeout, fetch);
        let tree = trees[0];
        match self.metrics.in_flight(fetched).await {
            Ok(None) => false,
            Ok(Some(Ok(kept))) => {
                for len in kept.values() {
                    self.count_fetch(*len);
                }
                true
            }
            Ok(Some(Err(error))) => {
                warn!(server = %self.server, %tree, trees = trees.len(), %error, "cannot fetch a directory's small files");
                true
            }
            Err(_) => {
                warn!(server = %self.server, %tree, trees = trees.len(), "no answer for a directory's small files within the fetch timeout");
                true
            }
        }
    }

    // Listing records (see `recall`).

    /// The trees listed under root tree `root` by earlier mounts, in the order first listed.
    /// Blocking: for a blocking thread.
    pub fn listing_record(&self, root: &ObjectId) -> Vec<ObjectId> {
        self.store.listing_record(root)
    }

    /// Adds trees to the record of root tree `root`. Blocking: for a blocking thread.
    pub fn record_listings(&self, root: &ObjectId, trees: &[ObjectId]) {
        self.store.append_listing_record(root, trees);
    }

    // Failures, each mapped and logged here once.

    async fn within_deadline<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, SourceError>>,
    ) -> Result<T, SourceError> {
        tokio::time::timeout(self.fetch_timeout, work)
            .await
            .unwrap_or_else(|_| {
                Err(SourceError::Timeout {
                    server: self.server.clone(),
                })
            })
    }

    fn verify(
        &self,
        kind: ObjectKind,
        oid: ObjectId,
        path: &RepoPath,
        bytes: &[u8],
    ) -> Result<(), FsError> {
        oid.verify(kind, bytes)
            .map_err(|error| self.corrupt(kind, oid, path, error))
    }

    fn corrupt(
        &self,
        kind: ObjectKind,
        oid: ObjectId,
        path: &RepoPath,
        error: ObjectError,
    ) -> FsError {
        error!(server = %self.server, %oid, %path, %error, "server sent bytes that do not match their object id");
        FsError::Corrupt {
            what: format!("{kind:?} {oid} at {path}").to_lowercase(),
            server: self.server.clone(),
            error,
        }
    }

    /// What fetching `what` (at `path`, object `oid`) failing with `e` means, logged.
    fn failed(&self, what: &str, path: &RepoPath, oid: ObjectId, e: SourceError) -> FsError {
        match e {
            SourceError::Sink(SinkError::Corrupt(error)) => {
                self.corrupt(ObjectKind::Blob, oid, path, error)
            }
            SourceError::Sink(SinkError::Io(io)) => FsError::cache(io),
            // Not a failure: the mount moves with the trunk (see `fs`).
            e @ SourceError::TrunkMoved { .. } => e.into(),
            e => {
                warn!(server = %self.server, %path, %oid, error = %e, "cannot fetch {what}");
                // Until a fetch succeeds again, `status` says so.
                if e.is_unavailable() {
                    self.offline.store(true, Ordering::Relaxed);
                }
                e.into()
            }
        }
    }

    /// Logs a request that stopped waiting for the server, naming what it waited for (the
    /// request's span names the mount).
    fn note_timeout(&self, e: &FsError, what: &str, path: &RepoPath, oid: ObjectId) {
        if let FsError::Timeout(limit) = e {
            warn!(
                server = %self.server, %path, %oid, limit = ?limit,
                "no answer for {what} within the request timeout; the fetch goes on in the background"
            );
        }
    }

    fn count_fetch(&self, bytes: u64) {
        self.offline.store(false, Ordering::Relaxed);
        self.metrics.fetched(bytes);
    }
}

/// A blob the loader just saw in the cache is gone (someone removed it behind its back).
/// One fetch counted as on its way until this drops (it ended, or was never run).
struct OnItsWay(Arc<AtomicUsize>);

impl OnItsWay {
    fn count(counter: &Arc<AtomicUsize>) -> OnItsWay {
        counter.fetch_add(1, Ordering::Relaxed);
        OnItsWay(Arc::clone(counter))
    }
}

impl Drop for OnItsWay {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn oids_of(files: &[(RepoPath, ObjectId)]) -> Vec<ObjectId> {
    files.iter().map(|(_, oid)| *oid).collect()
}

fn vanished(oid: ObjectId) -> FsError {
    FsError::Internal(format!("blob {oid} vanished from the cache"))
}
