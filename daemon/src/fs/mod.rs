//! The filesystem logic of one mount: inodes, attributes, lookups, listings and reads, over a
//! [`Source`] and the shared [`Store`]. Independent of FUSE: `crate::fuse` adapts it to the
//! kernel, and tests drive it directly.

mod ahead;
mod arrival;
mod error;
mod flight;
mod inode;
mod pattern;
mod prefetch;
mod recall;

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::stream::{self, StreamExt};
use futures::FutureExt;
use tracing::{error, info, warn};

use ahead::LookAhead;
pub use ahead::DEFAULT_LOOK_AHEAD;
use arrival::{Arrival, Ready};
pub use error::FsError;
use flight::Flights;
pub use inode::ROOT_INO;
use inode::{InodeTable, Listing};
pub use pattern::Pattern;
pub use prefetch::PrefetchProgress;
use recall::Recall;

use crate::object::{parse_tree, EntryKind, ObjectError, ObjectId, ObjectKind, TreeEntry};
use crate::source::{Snapshot, Source, SourceError};
use crate::store::{CommitError, Pin, Store};

/// How many size queries one directory may have in flight at once.
const SIZE_QUERY_PARALLELISM: usize = 16;

/// The kernel's caches, as far as the filesystem logic must know them: what to drop when
/// what it was told no longer holds. Set by whoever mounted the filesystem.
pub trait KernelCache: Send + Sync {
    /// Root entries (and the root's listing) a refresh made stale.
    fn stale_root_entries(&self, names: Vec<Vec<u8>>);
    /// Pages of file `ino` that were read before its blob failed verification.
    fn stale_pages(&self, ino: u64);
}

/// How a mount fetches.
#[derive(Clone, Copy, Debug)]
pub struct FsOptions {
    /// The longest one fetch (retries included) may take.
    pub fetch_timeout: Duration,
    /// Files at least this big are read as they arrive (see `arrival`); None: never.
    pub stream_min_size: Option<u64>,
    /// Subdirectories of a directory the kernel reads whose listings load in the background
    /// (see `ahead`); 0: none.
    pub look_ahead: usize,
}

impl Default for FsOptions {
    fn default() -> Self {
        FsOptions {
            fetch_timeout: Duration::from_secs(600),
            stream_min_size: Some(DEFAULT_STREAM_MIN_SIZE),
            look_ahead: DEFAULT_LOOK_AHEAD,
        }
    }
}

/// Below this, a file is served only once whole and verified.
pub const DEFAULT_STREAM_MIN_SIZE: u64 = 16 << 20;

/// Attributes of one inode, independent of the kernel interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: EntryKind,
    pub size: u64,
    /// Permission bits: exactly git's for files (0644 or 0755).
    pub perm: u16,
    pub mtime: SystemTime,
    pub uid: u32,
    pub gid: u32,
}

/// One entry of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: u64,
    pub kind: EntryKind,
    pub name: Arc<[u8]>,
}

/// What this mount has cost and saved.
#[derive(Default)]
pub struct Stats {
    pub fetched_objects: AtomicU64,
    pub fetched_bytes: AtomicU64,
    pub cache_hits: AtomicU64,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum FlightKey {
    Listing(u64),
    Sizes(u64),
    Blob(ObjectId),
}

pub struct MountFs {
    source: Arc<dyn Source>,
    store: Arc<Store>,
    /// The commit shown; replaced by a refresh.
    snapshot: RwLock<Snapshot>,
    inodes: RwLock<InodeTable>,
    owner: (u32, u32),
    stats: Stats,
    flights: Flights<FlightKey>,
    /// Mounted from the last known commit because the source was unreachable; cleared by the
    /// first successful fetch.
    offline: std::sync::atomic::AtomicBool,
    options: FsOptions,
    /// Told what the kernel should forget (set by whoever mounted this, which knows the
    /// kernel; the filesystem logic does not).
    kernel: std::sync::OnceLock<Box<dyn KernelCache>>,
    /// Big blobs being read as they arrive, by id.
    arrivals: Mutex<HashMap<ObjectId, Arc<Arrival>>>,
    /// Open files: each pins its blob in the cache until released.
    handles: Mutex<HashMap<u64, Pin>>,
    next_handle: AtomicU64,
    ahead: LookAhead,
    /// The trees earlier mounts of this commit listed, and this one's record of them.
    /// (Replaced by a refresh: it belongs to the root tree shown.)
    recall: RwLock<Arc<Recall>>,
    /// Where background work runs: requests may come from threads outside the runtime.
    runtime: tokio::runtime::Handle,
}

impl MountFs {
    /// Resolves the source's commit and lists its root; nothing deeper is fetched.
    pub async fn open(
        source: Arc<dyn Source>,
        store: Arc<Store>,
        owner: (u32, u32),
        options: FsOptions,
    ) -> Result<Arc<MountFs>, FsError> {
        let (snapshot, offline) = resolve_or_remember(source.as_ref(), &store).await?;
        let recall = Recall::open(&store, &snapshot.root_tree);
        let fs = Arc::new(MountFs {
            offline: std::sync::atomic::AtomicBool::new(offline),
            options,
            kernel: std::sync::OnceLock::new(),
            arrivals: Mutex::new(HashMap::new()),
            inodes: RwLock::new(InodeTable::new(snapshot.root_tree)),
            // Without the root's body: the snapshot is cloned on every stat.
            snapshot: RwLock::new(Snapshot {
                root_body: None,
                ..snapshot.clone()
            }),
            source,
            store,
            owner,
            stats: Stats::default(),
            flights: Flights::new(),
            handles: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            ahead: LookAhead::new(),
            recall: RwLock::new(Arc::new(recall)),
            runtime: tokio::runtime::Handle::current(),
        });
        if let Some(body) = snapshot.root_body.clone() {
            // Already fetched to resolve; it hashes to root_tree by construction.
            fs.count_fetch(body.len());
            fs.store.insert(&snapshot.root_tree, &body)?;
        }
        fs.listing(ROOT_INO).await?;
        Ok(fs)
    }

    /// Whether the mount shows a remembered commit because its source was unreachable, and
    /// nothing has been fetched since.
    pub fn is_offline(&self) -> bool {
        self.offline.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> Snapshot {
        self.snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Registers the kernel's caches, to be told what they must forget.
    pub fn set_kernel_cache(&self, kernel: Box<dyn KernelCache>) {
        let _ = self.kernel.set(kernel);
    }

    /// Moves the mount to the newest commit of what it follows, if that changed. Unchanged
    /// entries keep their inode numbers; changed ones get new inodes, while the old ones (and
    /// so open files) keep their old content. Returns the names at the root whose kernel
    /// entries are stale, or None when nothing changed.
    pub fn refresh(
        self: &Arc<Self>,
    ) -> futures::future::BoxFuture<'static, Result<Option<Vec<Vec<u8>>>, FsError>> {
        // Boxed with its type spelled out: listing a directory may start a refresh, and a
        // refresh lists the root, a cycle the compiler cannot see through otherwise.
        let this = Arc::clone(self);
        async move { this.refresh_now().await }.boxed()
    }

    async fn refresh_now(self: &Arc<Self>) -> Result<Option<Vec<Vec<u8>>>, FsError> {
        let fresh = self.source.resolve().await?;
        let current = self.snapshot();
        if fresh.commit == current.commit {
            return Ok(None);
        }
        // Have the new root in hand (verified) before switching to it.
        match &fresh.root_body {
            Some(body) => {
                self.verified(ObjectKind::Tree, fresh.root_tree, "/", body)?;
                self.count_fetch(body.len());
                self.store.insert(&fresh.root_tree, body)?;
            }
            None => {
                self.tree_body("", fresh.root_tree).await?;
            }
        }
        self.store.save_snapshot(
            &self.source.describe(),
            &fresh.commit,
            &fresh.root_tree,
            fresh.commit_time,
        );
        *self.recall.write().unwrap_or_else(|p| p.into_inner()) =
            Arc::new(Recall::open(&self.store, &fresh.root_tree));
        let old = self.write_inodes().retire_root(fresh.root_tree);
        info!(from = %current.commit, to = %fresh.commit, "refreshed");
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = Snapshot {
            root_body: None,
            ..fresh
        };
        let new = self.listing(ROOT_INO).await?;
        let stale: Vec<Vec<u8>> = old
            .map(|old| {
                old.entries
                    .iter()
                    .filter(|e| new.get(&e.name) != Some(e.ino))
                    .map(|e| e.name.to_vec())
                    .collect()
            })
            .unwrap_or_default();
        if let Some(kernel) = self.kernel.get() {
            kernel.stale_root_entries(stale.clone());
        }
        Ok(Some(stale))
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn source_description(&self) -> String {
        self.source.describe()
    }

    /// The parent directory of `ino` (the root is its own parent).
    pub fn parent_of(&self, ino: u64) -> Result<u64, FsError> {
        let inodes = self.read_inodes();
        Ok(inodes.get(ino).ok_or(FsError::StaleInode(ino))?.parent)
    }

    pub fn inode_count(&self) -> usize {
        self.read_inodes().len()
    }

    /// The kernel was handed inode `ino` (a lookup, or an entry of a listing with
    /// attributes). Called before the kernel hears of it, so a forget never comes first.
    pub fn remember(&self, ino: u64) {
        self.write_inodes().remember(ino);
    }

    /// The kernel forgot `count` lookups of `ino`.
    pub fn forget(&self, ino: u64, count: u64) {
        self.write_inodes().forget(ino, count);
    }

    pub async fn getattr(self: &Arc<Self>, ino: u64) -> Result<Attr, FsError> {
        let (kind, parent) = {
            let inodes = self.read_inodes();
            let node = inodes.get(ino).ok_or(FsError::StaleInode(ino))?;
            (node.kind, node.parent)
        };
        if !kind.is_dir() {
            self.ensure_size(parent, ino).await?;
        }
        self.attr_of(ino)
    }

    pub async fn lookup(self: &Arc<Self>, parent: u64, name: &[u8]) -> Result<Attr, FsError> {
        self.listing(parent).await?;
        let ino = self
            .write_inodes()
            .node_for(parent, name)
            .ok_or(FsError::NotFound)?;
        let kind = self.read_inodes().get(ino).map(|n| n.kind);
        if kind.is_some_and(|k| !k.is_dir()) {
            self.ensure_size(parent, ino).await?;
        }
        self.attr_of(ino)
    }

    pub async fn readdir(self: &Arc<Self>, ino: u64) -> Result<Vec<DirEntry>, FsError> {
        let listing = self.listing(ino).await?;
        self.after_kernel_read(ino, &listing);
        Ok(entries_of(&listing))
    }

    // Answers from what is loaded, without waiting: None where a fetch (or an error worth
    // the full path) is needed. Most requests of a walk over a known tree end here.

    pub fn lookup_loaded(&self, parent: u64, name: &[u8]) -> Option<Result<Attr, FsError>> {
        let listing = self.listing_at_hand(parent)?;
        let Some(entry) = listing.entry(name) else {
            return Some(Err(FsError::NotFound));
        };
        if !entry.kind.is_dir() && self.store.known_size(&entry.oid).is_none() {
            return None;
        }
        let ino = self.write_inodes().node_for(parent, name)?;
        Some(self.attr_of(ino))
    }

    pub fn readdir_loaded(self: &Arc<Self>, ino: u64) -> Option<Vec<DirEntry>> {
        let listing = self.listing_at_hand(ino)?;
        self.after_kernel_read(ino, &listing);
        Some(entries_of(&listing))
    }

    /// What a listing with attributes (readdirplus) gives for `entry` of directory `dir`: a
    /// node, as the kernel keeps the entry, and the attributes if known without the source.
    /// Asked only for the entries a reply takes, not for a whole large directory each time.
    pub fn plus_attr(&self, dir: u64, entry: &DirEntry) -> Option<Attr> {
        let ino = self.write_inodes().node_for(dir, &entry.name)?;
        self.known_attr(ino)
    }

    /// The blob id of file (or symlink) `ino`.
    fn file_oid(&self, ino: u64) -> Result<ObjectId, FsError> {
        let inodes = self.read_inodes();
        let node = inodes.get(ino).ok_or(FsError::StaleInode(ino))?;
        if node.kind.is_dir() {
            return Err(FsError::IsDir);
        }
        Ok(node.oid)
    }

    /// The attributes of `ino` if they are known without asking the source (a file's size may
    /// not be yet).
    pub fn known_attr(&self, ino: u64) -> Option<Attr> {
        let size_known = {
            let inodes = self.read_inodes();
            let node = inodes.get(ino)?;
            node.kind.is_dir() || self.store.known_size(&node.oid).is_some()
        };
        if size_known {
            self.attr_of(ino).ok()
        } else {
            None
        }
    }

    /// The cache file of file `ino`'s blob, if it is in the cache (for passthrough reads,
    /// which the kernel then serves from it without asking the daemon).
    pub fn cached_file(&self, ino: u64) -> Option<std::fs::File> {
        let oid = self.file_oid(ino).ok()?;
        if !self.store.contains(&oid) {
            return None;
        }
        self.store.open_object(&oid).ok().flatten()
    }

    /// Opens a file: its blob stays in the cache (once there) until the handle is released.
    pub fn open_file(&self, ino: u64) -> Result<u64, FsError> {
        let oid = self.file_oid(ino)?;
        let handle = self.next_handle.fetch_add(1, Ordering::Relaxed);
        let pin = self.store.pin(&oid);
        self.lock_handles().insert(handle, pin);
        Ok(handle)
    }

    pub fn release_file(&self, handle: u64) {
        self.lock_handles().remove(&handle);
    }

    fn lock_handles(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Pin>> {
        self.handles.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub async fn read(
        self: &Arc<Self>,
        ino: u64,
        offset: u64,
        size: u32,
    ) -> Result<Vec<u8>, FsError> {
        let oid = self.file_oid(ino)?;
        if !self.store.contains(&oid) {
            if let Some(len) = self.streamed_size(ino) {
                return self.read_arriving(ino, oid, len, offset, size).await;
            }
        }
        let file = self.open_blob(ino, oid).await?;
        read_into(size, |buf, at| Ok(file.read_at(buf, offset + at)?))
    }

    /// The size of file `ino` if it is big enough to be read as it arrives.
    fn streamed_size(&self, ino: u64) -> Option<u64> {
        let min = self.options.stream_min_size?;
        let oid = self.read_inodes().get(ino)?.oid;
        let size = self.store.known_size(&oid)?;
        (size >= min).then_some(size)
    }

    /// Reads a big file whose blob is not in the cache yet: bytes that have arrived are served
    /// at once, the end only once the whole blob is verified (see `arrival`).
    async fn read_arriving(
        self: &Arc<Self>,
        ino: u64,
        oid: ObjectId,
        len: u64,
        offset: u64,
        size: u32,
    ) -> Result<Vec<u8>, FsError> {
        if offset >= len {
            return Ok(Vec::new());
        }
        let end = offset.saturating_add(u64::from(size)).min(len);
        let arrival = self.arrival(ino, oid);
        match arrival.wait_for(end, len).await? {
            Ready::Partial => read_into((end - offset) as u32, |buf, at| {
                arrival.read_at(buf, offset + at)
            }),
            Ready::Verified => {
                let file = self.open_blob(ino, oid).await?;
                read_into(size, |buf, at| Ok(file.read_at(buf, offset + at)?))
            }
        }
    }

    /// The arrival of blob `oid`, starting its fetch if none is under way. The fetch runs on
    /// its own, so a reader giving up does not stop it.
    fn arrival(self: &Arc<Self>, ino: u64, oid: ObjectId) -> Arc<Arrival> {
        let mut arrivals = self.arrivals.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(arrival) = arrivals.get(&oid) {
            return arrival.clone();
        }
        let arrival = Arc::new(Arrival::new());
        arrivals.insert(oid, arrival.clone());
        let (this, watched) = (Arc::clone(self), arrival.clone());
        tokio::spawn(async move {
            let result = this.ensure_blob_as(ino, oid, Some(watched.clone())).await;
            if result.is_err() {
                // The kernel may hold pages of it read before the failure.
                if let Some(kernel) = this.kernel.get() {
                    kernel.stale_pages(ino);
                }
            }
            watched.finish(result);
            let mut arrivals = this.arrivals.lock().unwrap_or_else(|p| p.into_inner());
            if arrivals.get(&oid).is_some_and(|a| Arc::ptr_eq(a, &watched)) {
                arrivals.remove(&oid);
            }
        });
        arrival
    }

    pub async fn readlink(self: &Arc<Self>, ino: u64) -> Result<Vec<u8>, FsError> {
        let oid = {
            let inodes = self.read_inodes();
            let node = inodes.get(ino).ok_or(FsError::StaleInode(ino))?;
            if node.kind != EntryKind::Symlink {
                return Err(FsError::NotSymlink);
            }
            node.oid
        };
        self.ensure_blob(ino, oid).await?;
        self.store
            .read(&oid)?
            .ok_or_else(|| FsError::Internal(format!("blob {oid} vanished from the cache")))
    }

    fn read_inodes(&self) -> std::sync::RwLockReadGuard<'_, InodeTable> {
        self.inodes.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_inodes(&self) -> std::sync::RwLockWriteGuard<'_, InodeTable> {
        self.inodes.write().unwrap_or_else(|p| p.into_inner())
    }

    fn attr_of(&self, ino: u64) -> Result<Attr, FsError> {
        let inodes = self.read_inodes();
        let node = inodes.get(ino).ok_or(FsError::StaleInode(ino))?;
        let perm = match node.kind {
            EntryKind::Directory | EntryKind::Submodule | EntryKind::Executable => 0o755,
            EntryKind::File => 0o644,
            EntryKind::Symlink => 0o777,
        };
        Ok(Attr {
            ino,
            kind: node.kind,
            size: if node.kind.is_dir() {
                0
            } else {
                self.store.known_size(&node.oid).unwrap_or(0)
            },
            perm,
            mtime: UNIX_EPOCH + Duration::from_secs(self.snapshot().commit_time.max(0) as u64),
            uid: self.owner.0,
            gid: self.owner.1,
        })
    }

    /// The listing of directory `ino`, fetching and verifying its tree on first use.
    async fn listing(self: &Arc<Self>, ino: u64) -> Result<Arc<Listing>, FsError> {
        if let Some(listing) = self.loaded_listing(ino)? {
            return Ok(listing);
        }
        let (path, oid) = {
            let inodes = self.read_inodes();
            let node = inodes.get(ino).ok_or(FsError::StaleInode(ino))?;
            (inodes.path_of(ino), node.oid)
        };
        let this = Arc::clone(self);
        self.flights
            .run(FlightKey::Listing(ino), async move {
                let body = match this.tree_body(&path, oid).await {
                    Err(FsError::Source(e)) if matches!(*e, SourceError::TrunkMoved { .. }) => {
                        // The commit moved under us: move with it (in the background, so the
                        // kernel's invalidations never wait on this request), and answer
                        // ESTALE so the kernel walks the path again.
                        warn!(path = %format!("/{path}"), "the trunk moved: refreshing");
                        let refresher = Arc::clone(&this);
                        tokio::spawn(async move {
                            if let Err(e) = refresher.refresh().await {
                                warn!(error = %e, "refresh after the trunk moved failed");
                            }
                        });
                        return Err(FsError::StaleInode(ino));
                    }
                    other => other?,
                };
                let entries = parse_tree(&body)
                    .and_then(|entries| this.no_loop(ino, oid, entries))
                    .map_err(|error| {
                        let server = this.source.describe();
                        error!(%server, %oid, path = %path, %error, "refusing a malformed tree");
                        FsError::Corrupt {
                            what: format!("tree {oid} at /{path}"),
                            server,
                            error,
                        }
                    })?;
                this.write_inodes().add_listing(ino, entries);
                this.recall().record(&oid);
                Ok(())
            })
            .await?;
        self.loaded_listing(ino)?
            .ok_or_else(|| FsError::Internal(format!("listing of inode {ino} missing")))
    }

    /// What the kernel reading directory `ino` sets going: its subdirectories' listings, and
    /// for the root, the trees earlier mounts of this commit listed.
    fn after_kernel_read(self: &Arc<Self>, ino: u64, listing: &Listing) {
        if ino == ROOT_INO {
            self.recall_listings();
        }
        self.look_ahead(ino, listing);
    }

    /// The listing of `ino` if it is loaded or its tree is in the cache: a local read, as a
    /// native directory would cost, done on the asking thread rather than handed to a task
    /// (the hand-off cost more than the read on a walk over a cached tree). None where the
    /// source is needed, or the cached tree does not parse (the full path reports that).
    fn listing_at_hand(&self, ino: u64) -> Option<Arc<Listing>> {
        if let Some(listing) = self.loaded_listing(ino).ok()? {
            return Some(listing);
        }
        let oid = self.read_inodes().get(ino)?.oid;
        let body = self.store.read(&oid).ok()??;
        let entries = parse_tree(&body)
            .and_then(|entries| self.no_loop(ino, oid, entries))
            .ok()?;
        self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
        self.write_inodes().add_listing(ino, entries);
        self.recall().record(&oid);
        self.loaded_listing(ino).ok()?
    }

    /// Refuses a tree of directory `ino` (tree `oid`) with a subdirectory that is the tree
    /// itself or one above it: a walk down it would never end. Verified ids make such a tree
    /// infeasible to forge, so this is a second line, kept because it is cheap.
    fn no_loop(
        &self,
        ino: u64,
        oid: ObjectId,
        entries: Vec<TreeEntry>,
    ) -> Result<Vec<TreeEntry>, ObjectError> {
        let mut above = vec![oid];
        {
            let inodes = self.read_inodes();
            let mut at = ino;
            // Bounded like path_of: a parent chain never loops, but a bug must not hang.
            for _ in 0..4096 {
                let Some(node) = inodes.get(at).filter(|_| at != ROOT_INO) else {
                    break;
                };
                at = node.parent;
                above.extend(inodes.get(at).map(|parent| parent.oid));
            }
        }
        match entries
            .iter()
            .find(|e| e.kind == EntryKind::Directory && above.contains(&e.oid))
        {
            Some(looping) => Err(ObjectError::BadTree(format!(
                "entry {:?} is this tree or one above it",
                String::from_utf8_lossy(&looping.name)
            ))),
            None => Ok(entries),
        }
    }

    fn loaded_listing(&self, ino: u64) -> Result<Option<Arc<Listing>>, FsError> {
        let inodes = self.read_inodes();
        let node = inodes.get(ino).ok_or(FsError::StaleInode(ino))?;
        if !node.kind.is_dir() {
            return Err(FsError::NotDir);
        }
        Ok(node.listing.clone())
    }

    /// A tree's body from the cache, else from the source, verified before it is used or kept.
    async fn tree_body(&self, path: &str, oid: ObjectId) -> Result<Vec<u8>, FsError> {
        if let Some(body) = self.store.read(&oid)? {
            self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(body);
        }
        let body = self.source.fetch_tree(path, oid).await.map_err(|error| {
            let server = self.source.describe();
            warn!(%server, path = %format!("/{path}"), %oid, %error, "cannot fetch a directory");
            error
        })?;
        self.count_fetch(body.len());
        self.verified(ObjectKind::Tree, oid, &format!("/{path}"), &body)?;
        self.store.insert(&oid, &body)?;
        Ok(body)
    }

    /// Makes sure blob `oid` (of inode `ino`) is in the cache, fetching it once however many
    /// readers want it, and opens it.
    async fn open_blob(
        self: &Arc<Self>,
        ino: u64,
        oid: ObjectId,
    ) -> Result<std::fs::File, FsError> {
        if let Some(file) = self.store.open_object(&oid)? {
            self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(file);
        }
        self.ensure_blob(ino, oid).await?;
        self.store
            .open_object(&oid)?
            .ok_or_else(|| FsError::Internal(format!("blob {oid} vanished from the cache")))
    }

    async fn ensure_blob(self: &Arc<Self>, ino: u64, oid: ObjectId) -> Result<(), FsError> {
        self.ensure_blob_as(ino, oid, None).await
    }

    /// [`Self::ensure_blob`], telling `arrival` (if any) how the fetch comes along.
    async fn ensure_blob_as(
        self: &Arc<Self>,
        ino: u64,
        oid: ObjectId,
        arrival: Option<Arc<Arrival>>,
    ) -> Result<(), FsError> {
        if self.store.contains(&oid) {
            return Ok(());
        }
        let this = Arc::clone(self);
        self.flights
            .run(FlightKey::Blob(oid), async move {
                if this.store.contains(&oid) {
                    return Ok(());
                }
                let path = this.read_inodes().path_of(ino);
                let fetch = this.fetch_blob_to_cache(oid, &path, arrival.as_deref());
                let limit = this.options.fetch_timeout;
                let bytes = tokio::time::timeout(limit, fetch)
                    .await
                    .unwrap_or(Err(FsError::Timeout(limit)))
                    .map_err(|error| {
                    let server = this.source.describe();
                    warn!(%server, path = %format!("/{path}"), %oid, %error, "cannot fetch a file");
                    error
                })?;
                info!(%oid, path = %path, bytes, "fetched blob");
                Ok(())
            })
            .await
    }

    /// Fetches several blobs in one go (where the source batches) and keeps the verified ones.
    /// Failures are logged and returned; a file's own read or size query reports its error.
    async fn fetch_batch_to_cache(
        &self,
        oids: &[ObjectId],
    ) -> Vec<(ObjectId, Result<u64, SourceError>)> {
        let oids: Vec<ObjectId> = oids
            .iter()
            .copied()
            .filter(|oid| !self.store.contains(oid))
            .collect();
        if oids.is_empty() {
            return Vec::new();
        }
        // Blobs land in the cache as they arrive, each only under the id its bytes hash to.
        let results = self.source.fetch_blobs_into(&oids, &self.store).await;
        for (oid, result) in &results {
            match result {
                Ok(len) => self.count_fetch(*len as usize),
                Err(error) => {
                    warn!(server = %self.source.describe(), %oid, %error, "a batched fetch failed")
                }
            }
        }
        results
    }

    /// Makes sure `ino` (in directory `dir`) has a size. Sizes are learnt per directory, but a
    /// sibling whose size could not be learnt must not fail this one.
    async fn ensure_size(self: &Arc<Self>, dir: u64, ino: u64) -> Result<(), FsError> {
        let result = self.ensure_sizes(dir).await;
        let oid = self.read_inodes().get(ino).map(|n| n.oid);
        if oid.is_some_and(|oid| self.store.known_size(&oid).is_some()) {
            Ok(())
        } else {
            result
        }
    }

    /// Streams blob `oid` into the cache as it arrives (memory does not grow with its size),
    /// keeping it only if it is whole and hashes to its id. Returns its length.
    async fn fetch_blob_to_cache(
        &self,
        oid: ObjectId,
        path: &str,
        arrival: Option<&Arrival>,
    ) -> Result<u64, FsError> {
        let (len, mut chunks) = self.source.fetch_blob_stream(oid).await?;
        let mut pending = self.store.begin(&oid, len)?;
        if let Some(arrival) = arrival {
            arrival.started(pending.reader()?);
        }
        while let Some(chunk) = chunks.next().await {
            pending.write(&chunk?)?;
            if let Some(arrival) = arrival {
                arrival.advanced(pending.written());
            }
        }
        self.count_fetch(len as usize);
        self.store.commit(pending).map_err(|e| match e {
            CommitError::Io(e) => FsError::from(e),
            CommitError::Corrupt(error) => {
                let server = self.source.describe();
                error!(%server, %oid, path = %format!("/{path}"), %error, "server sent bytes that do not match their object id");
                FsError::Corrupt {
                    what: format!("blob {oid} at /{path}"),
                    server,
                    error,
                }
            }
            CommitError::Length { expected, received } => FsError::Source(Arc::new(
                crate::source::SourceError::Server {
                    server: self.source.describe(),
                    what: format!("blob {oid}"),
                    detail: format!("expected {expected} bytes, received {received}"),
                },
            )),
        })?;
        Ok(len)
    }

    /// Learns the sizes of every file in directory `dir` that has none yet, in parallel: the
    /// kernel asks for them together (`ls -l`), and one query each is all a Mega server offers.
    async fn ensure_sizes(self: &Arc<Self>, dir: u64) -> Result<(), FsError> {
        let missing = self.files_without_size(dir)?;
        if missing.is_empty() {
            return Ok(());
        }
        let this = Arc::clone(self);
        self.flights
            .run(FlightKey::Sizes(dir), async move {
                let missing = this.files_without_size(dir)?;
                if this.source.sizes_need_content() {
                    // The sizes cost the contents: fetch them all in one batch, into the cache.
                    let oids: Vec<ObjectId> = missing.iter().map(|(_, oid)| *oid).collect();
                    this.fetch_batch_to_cache(&oids).await;
                }
                let missing = this.files_without_size(dir)?;
                let sizes: Vec<_> = stream::iter(missing)
                    .map(|(_, oid)| {
                        let this = this.clone();
                        async move {
                            let size = match this.store.known_size(&oid) {
                                Some(size) => size,
                                None => this.source.blob_size(oid).await?,
                            };
                            this.store.record_size(&oid, size);
                            Ok::<_, FsError>(())
                        }
                    })
                    .buffer_unordered(SIZE_QUERY_PARALLELISM)
                    .collect()
                    .await;
                sizes.into_iter().collect::<Result<(), FsError>>()
            })
            .await
    }

    fn files_without_size(&self, dir: u64) -> Result<Vec<(u64, ObjectId)>, FsError> {
        let Some(listing) = self.loaded_listing(dir)? else {
            return Ok(Vec::new());
        };
        Ok(listing
            .entries
            .iter()
            .filter(|e| !e.kind.is_dir() && self.store.known_size(&e.oid).is_none())
            .map(|e| (e.ino, e.oid))
            .collect())
    }

    fn verified(
        &self,
        kind: ObjectKind,
        oid: ObjectId,
        path: &str,
        bytes: &[u8],
    ) -> Result<(), FsError> {
        oid.verify(kind, bytes).map_err(|error| {
            let server = self.source.describe();
            error!(%server, %oid, %path, %error, "server sent bytes that do not match their object id");
            FsError::Corrupt {
                what: format!("{kind:?} {oid} at {path}").to_lowercase(),
                server,
                error,
            }
        })
    }

    fn count_fetch(&self, bytes: usize) {
        self.offline.store(false, Ordering::Relaxed);
        self.stats.fetched_objects.fetch_add(1, Ordering::Relaxed);
        self.stats
            .fetched_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

/// Resolves the source's commit and remembers it; where the source cannot be reached, falls
/// back to the commit it last resolved to, if its root listing is cached (offline).
async fn resolve_or_remember(
    source: &dyn Source,
    store: &Store,
) -> Result<(Snapshot, bool), FsError> {
    let key = source.describe();
    match source.resolve().await {
        Ok(snapshot) => {
            store.save_snapshot(
                &key,
                &snapshot.commit,
                &snapshot.root_tree,
                snapshot.commit_time,
            );
            Ok((snapshot, false))
        }
        Err(e) if e.is_unavailable() => {
            let Some((commit, root_tree, commit_time)) = store.load_snapshot(&key) else {
                return Err(e.into());
            };
            if !store.contains(&root_tree) {
                return Err(e.into());
            }
            tracing::warn!(source = %key, %commit, error = %e, "source unreachable: mounting the last known commit from the cache (offline)");
            Ok((
                Snapshot {
                    commit,
                    root_tree,
                    commit_time,
                    root_body: None,
                },
                true,
            ))
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests;

fn entries_of(listing: &Listing) -> Vec<DirEntry> {
    listing
        .entries
        .iter()
        .map(|e| DirEntry {
            ino: e.ino,
            kind: e.kind,
            name: e.name.clone(),
        })
        .collect()
}

/// Fills a buffer of up to `size` bytes by calling `read(buf, filled)` until it is full or
/// the file ends.
fn read_into(
    size: u32,
    mut read: impl FnMut(&mut [u8], u64) -> Result<usize, FsError>,
) -> Result<Vec<u8>, FsError> {
    let mut buf = vec![0u8; size as usize];
    let mut filled = 0;
    while filled < buf.len() {
        let n = read(&mut buf[filled..], filled as u64)?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    buf.truncate(filled);
    Ok(buf)
}
