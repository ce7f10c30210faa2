//! The filesystem logic of one mount: inodes, attributes, lookups, listings and reads. Every
//! object comes through the mount's [`Loader`] (the cache, else the source, verified); this
//! module knows nothing of FUSE: `crate::fuse` adapts it to the kernel, and tests drive it
//! directly. Its helpers each have one job and a small API: `ahead` and `recall` warm what a
//! walk will want, through the loader; `prefetch` walks the mount through [`MountFs`]'s own
//! lookups and listings.

mod ahead;
mod arrival;
mod error;
mod flight;
mod inode;
mod loader;
mod pattern;
mod prefetch;
mod recall;
mod recent;
mod times;
mod walk_ahead;

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::stream::{self, StreamExt};
use futures::FutureExt;
use tracing::{info, warn, Instrument};

use ahead::LookAhead;
pub use ahead::DEFAULT_LOOK_AHEAD;
use arrival::{Arrival, Ready};
pub use error::FsError;
pub use flight::asked_by;
pub use inode::ROOT_INO;
use inode::{InodeTable, Listing};
use loader::Loader;
pub use pattern::{Pattern, PatternError};
pub use prefetch::PrefetchProgress;
use recall::Recall;
use times::Times;
pub use times::TimesFile;
use walk_ahead::WalkAhead;

use crate::metrics::{self, MountMetrics, Tier};
use crate::object::{EntryKind, ObjectError, ObjectId, TreeEntry};
use crate::repo_path::RepoPath;
use crate::source::{Snapshot, Source, SourceError};
use crate::store::{Pin, Store};

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
    /// The longest the requests waiting on one fetch wait for it, all together (see
    /// `flight`); None: until it ends. The fetch itself goes on, up to `fetch_timeout`.
    pub wait_limit: Option<Duration>,
    /// Files at least this big are read as they arrive (see `arrival`); None: never.
    pub stream_min_size: Option<u64>,
    /// Subdirectories of a directory the kernel reads whose listings load in the background
    /// (see `ahead`); 0: none.
    pub look_ahead: usize,
    /// Move with a trunk that moved under the mount (a Mega mount), rather than fail the
    /// directories that no longer match; never for a workspace's view, which must not change
    /// under its overlay.
    pub follow_trunk: bool,
}

impl Default for FsOptions {
    fn default() -> Self {
        FsOptions {
            fetch_timeout: Duration::from_secs(600),
            wait_limit: None,
            stream_min_size: Some(DEFAULT_STREAM_MIN_SIZE),
            look_ahead: DEFAULT_LOOK_AHEAD,
            follow_trunk: true,
        }
    }
}

/// Below this, a file is served only once whole and verified.
pub const DEFAULT_STREAM_MIN_SIZE: u64 = 16 << 20;

/// How soon after a directory was visited the sizes of files below it must be asked for to
/// count as a walk going down (see [`MountFs::note_walk`]).
const WALK_WINDOW: Duration = Duration::from_secs(10);

/// How many of the directories after one a walk enters are fetched for ahead of it (as many
/// as fit in the loader's fetches for the walk; see `Loader::walk_batches`).
const WALK_SIBLINGS: usize = 1024;

/// A walk's read-ahead fetches files up to this size (bigger ones are read as they arrive),
/// up to this many bytes a directory, this many at once.
const READ_AHEAD_MAX_SIZE: u64 = DEFAULT_STREAM_MIN_SIZE;
const READ_AHEAD_MAX_BYTES: u64 = 128 << 20;
const READ_AHEAD_PARALLELISM: usize = 8;

/// Milliseconds since the daemon started (never 0).
fn millis_since_start() -> u64 {
    static START: OnceLock<std::time::Instant> = OnceLock::new();
    let start = START.get_or_init(std::time::Instant::now);
    start.elapsed().as_millis() as u64 + 1
}

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

/// What an inode is, as its attributes need it.
struct Seen {
    kind: EntryKind,
    oid: ObjectId,
    /// Its path's key (its times are kept by it).
    key: u64,
}

/// One entry of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: u64,
    pub kind: EntryKind,
    pub name: Arc<[u8]>,
}

pub struct MountFs {
    /// The mount's name, for the spans of its background work.
    name: Arc<str>,
    loader: Arc<Loader>,
    /// The commit shown; replaced by a refresh.
    snapshot: RwLock<Snapshot>,
    /// Every path's mtime (replaced by a refresh, with the snapshot), read on every stat.
    times: RwLock<Arc<Times>>,
    /// Where they are kept between mounts; None: nowhere (every mount starts anew).
    times_file: Option<TimesFile>,
    inodes: RwLock<InodeTable>,
    owner: (u32, u32),
    options: FsOptions,
    /// Told what the kernel should forget (set by whoever mounted this, which knows the
    /// kernel; the filesystem logic does not).
    kernel: OnceLock<Box<dyn KernelCache>>,
    /// Big blobs being read as they arrive, by id.
    arrivals: Mutex<HashMap<ObjectId, Arc<Arrival>>>,
    /// Big blobs whose arrival failed, and why: their reads fail at once until the file is
    /// opened again. The kernel drops the pages of a failed arrival, and a program reading
    /// on would otherwise cost a whole new fetch for each page it asks for next.
    failed_arrivals: Mutex<HashMap<ObjectId, FsError>>,
    /// Files whose arrival failed after some of their bytes were served: the kernel drops
    /// their pages at their next open.
    wrong_pages: Mutex<HashSet<u64>>,
    /// Fetches a walk's read-ahead may have under way at once, over all its directories (a
    /// walk passes through directories faster than their files arrive).
    read_ahead_slots: Arc<tokio::sync::Semaphore>,
    /// Where each file costs a request (Mega), the pass fetching ahead of a walk that reads.
    walk_ahead: WalkAhead,
    /// When a directory last joined a walk (see `millis_since_start`), and how many did within
    /// [`WALK_WINDOW`] of the one before: one is a person's `ls -l` after an `ls`, more a walk.
    walk_entries: Mutex<(u64, u32)>,
    /// When a file in a directory a walk is in was last opened (see `millis_since_start`;
    /// 0: never): the walk reads contents (`grep -r`), not only sizes (`du`).
    walk_opened: AtomicU64,
    /// Open files: each pins its blob in the cache until released.
    handles: Mutex<HashMap<u64, Pin>>,
    next_handle: AtomicU64,
    ahead: LookAhead,
    /// The trees earlier mounts of this commit listed, and this one's record of them.
    /// (Replaced by a refresh: it belongs to the root tree shown.)
    recall: RwLock<Arc<Recall>>,
    /// A refresh after the trunk moved is under way.
    following_trunk: AtomicBool,
    /// Where background work runs: requests may come from threads outside the runtime.
    runtime: tokio::runtime::Handle,
}

impl MountFs {
    /// Resolves the source's commit and lists its root; nothing deeper is fetched.
    pub async fn open(
        name: &str,
        source: Arc<dyn Source>,
        store: Arc<Store>,
        owner: (u32, u32),
        options: FsOptions,
        metrics: Arc<MountMetrics>,
        times_file: Option<TimesFile>,
    ) -> Result<Arc<MountFs>, FsError> {
        let loader = Arc::new(Loader::new(
            source,
            store,
            options.fetch_timeout,
            options.wait_limit,
            metrics,
        ));
        let snapshot = loader.resolve().await?;
        let times = times::kept(&loader, times_file.as_ref(), &snapshot).await;
        let recall = Recall::open(&loader, snapshot.root_tree).await;
        let fs = Arc::new(MountFs {
            name: Arc::from(name),
            options,
            kernel: OnceLock::new(),
            arrivals: Mutex::new(HashMap::new()),
            failed_arrivals: Mutex::new(HashMap::new()),
            wrong_pages: Mutex::new(HashSet::new()),
            read_ahead_slots: Arc::new(tokio::sync::Semaphore::new(READ_AHEAD_PARALLELISM)),
            walk_ahead: WalkAhead::new(READ_AHEAD_MAX_SIZE),
            walk_entries: Mutex::new((0, 0)),
            walk_opened: AtomicU64::new(0),
            inodes: RwLock::new(InodeTable::new(snapshot.root_tree)),
            times: RwLock::new(Arc::new(times)),
            times_file,
            snapshot: RwLock::new(Snapshot {
                root_body: None,
                ..snapshot
            }),
            loader,
            owner,
            handles: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            ahead: LookAhead::new(),
            recall: RwLock::new(recall),
            following_trunk: AtomicBool::new(false),
            runtime: tokio::runtime::Handle::current(),
        });
        fs.listing(ROOT_INO).await?;
        Ok(fs)
    }

    /// Whether the mount shows a remembered commit because its source was unreachable, and
    /// nothing has been fetched since.
    pub fn is_offline(&self) -> bool {
        self.loader.is_offline()
    }

    pub fn snapshot(&self) -> Snapshot {
        self.snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Registers the kernel's caches, to be told what they must forget.
    pub fn set_kernel_cache(&self, kernel: Box<dyn KernelCache>) {
        let _ = self.kernel.set(kernel);
    }

    /// The mount's numbers (every request, fetch and cache hit).
    pub fn metrics(&self) -> Arc<MountMetrics> {
        Arc::clone(self.loader.metrics())
    }

    pub fn source_description(&self) -> String {
        self.loader.server().to_string()
    }

    /// Moves the mount to the newest commit of what it follows, if that changed. Unchanged
    /// entries keep their inode numbers; changed ones get new inodes, while the old ones (and
    /// so open files) keep their old content. Returns the names at the root whose kernel
    /// entries are stale (the caller tells the kernel, as soon as it may wait for it), or
    /// None when nothing changed.
    pub fn refresh(
        self: &Arc<Self>,
    ) -> futures::future::BoxFuture<'static, Result<Option<Vec<Vec<u8>>>, FsError>> {
        // Boxed with its type spelled out: listing a directory may start a refresh, and a
        // refresh lists the root, a cycle the compiler cannot see through otherwise.
        let this = Arc::clone(self);
        async move { this.refresh_now().await }.boxed()
    }

    async fn refresh_now(self: &Arc<Self>) -> Result<Option<Vec<Vec<u8>>>, FsError> {
        let fresh = self.loader.latest().await?;
        self.switch_to(fresh).await
    }

    /// What the mount's source shows now, without moving to it.
    pub async fn latest(&self) -> Result<Snapshot, FsError> {
        self.loader.latest().await
    }

    /// Moves the mount to `fresh` (a snapshot of its repository), as [`MountFs::refresh`]
    /// does; None if it shows that commit already.
    pub async fn switch_to(
        self: &Arc<Self>,
        fresh: Snapshot,
    ) -> Result<Option<Vec<Vec<u8>>>, FsError> {
        let current = self.snapshot();
        if fresh.commit == current.commit {
            return Ok(None);
        }
        // Have the new root in hand (verified) before switching to it, and the new times: a
        // changed file must never be seen with its old time.
        self.loader.adopt(&fresh).await?;
        let times = Arc::clone(&self.times.read().unwrap_or_else(|p| p.into_inner()));
        let times = times::moved(&self.loader, &times, self.times_file.as_ref(), &fresh).await;
        let recall = Recall::open(&self.loader, fresh.root_tree).await;
        *self.recall.write().unwrap_or_else(|p| p.into_inner()) = recall;
        let old = self.write_inodes().retire_root(fresh.root_tree);
        self.loader.show(fresh.root_tree);
        info!(from = %current.commit, to = %fresh.commit, "refreshed");
        *self.times.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(times);
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
        Ok(Some(stale))
    }

    /// The trunk moved under the mount: move with it, in the background (so the kernel's
    /// invalidations never wait on the request that noticed), once however many notice.
    fn follow_trunk(self: &Arc<Self>, path: &RepoPath) {
        if self.following_trunk.swap(true, Ordering::AcqRel) {
            return;
        }
        warn!(%path, "the trunk moved: refreshing");
        let this = Arc::clone(self);
        let span = tracing::info_span!("refresh", mount = %self.name);
        self.runtime.spawn(
            async move {
                match this.refresh().await {
                    Ok(Some(stale)) => {
                        if let Some(kernel) = this.kernel.get() {
                            kernel.stale_root_entries(stale);
                        }
                    }
                    Ok(None) => {}
                    Err(e) => warn!(error = %e, "refresh after the trunk moved failed"),
                }
                this.following_trunk.store(false, Ordering::Release);
            }
            .instrument(span),
        );
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
        let ino = self.child(parent, name).ok_or(FsError::NotFound)?;
        if self.kind_of(ino).is_some_and(|k| !k.is_dir()) {
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
        let listing = match self.listing_at_hand(parent)? {
            Ok(listing) => listing,
            Err(e) => return Some(Err(e)),
        };
        let Some(entry) = listing.entry(name) else {
            return Some(Err(FsError::NotFound));
        };
        if !entry.kind.is_dir() && self.loader.known_size(&entry.oid).is_none() {
            return None;
        }
        let ino = self.child(parent, name)?;
        Some(self.attr_of(ino))
    }

    pub fn readdir_loaded(self: &Arc<Self>, ino: u64) -> Option<Result<Vec<DirEntry>, FsError>> {
        let listing = match self.listing_at_hand(ino)? {
            Ok(listing) => listing,
            Err(e) => return Some(Err(e)),
        };
        self.after_kernel_read(ino, &listing);
        Some(Ok(entries_of(&listing)))
    }

    /// What a listing with attributes (readdirplus) gives for `entry` of directory `dir`: a
    /// node, as the kernel keeps the entry, and the attributes if known without the source.
    /// Asked only for the entries a reply takes, not for a whole large directory each time.
    pub fn plus_attr(&self, dir: u64, entry: &DirEntry) -> Option<Attr> {
        let ino = self.child(dir, &entry.name)?;
        self.known_attr(ino)
    }

    /// The attributes of `ino` if they are known without asking the source (a file's size may
    /// not be yet).
    pub fn known_attr(&self, ino: u64) -> Option<Attr> {
        let seen = self.seen(ino)?;
        let size = if seen.kind.is_dir() {
            0
        } else {
            self.loader.known_size(&seen.oid)?
        };
        Some(self.attr(ino, &seen, size))
    }

    /// The cache file of file `ino`'s blob, if it is in the cache (for passthrough reads,
    /// which the kernel then serves from it without asking the daemon).
    pub fn cached_file(&self, ino: u64) -> Option<std::fs::File> {
        let oid = self.file_oid(ino).ok()?;
        self.loader.cached_blob(&oid)
    }

    /// Opens a file: its blob stays in the cache (once there) until the handle is released.
    /// Also whether the kernel must drop the pages it holds of it: a fetch of it failed since
    /// it was last opened, and pages served as they arrived may be wrong (dropping them when
    /// the fetch failed can race with replies still on their way to the kernel).
    pub fn open_file(&self, ino: u64) -> Result<(u64, bool), FsError> {
        let oid = self.file_oid(ino)?;
        // A new open is a new try.
        lock(&self.failed_arrivals).remove(&oid);
        let failed = lock(&self.wrong_pages).remove(&ino);
        let handle = self.next_handle.fetch_add(1, Ordering::Relaxed);
        let pin = self.loader.pin(&oid);
        self.lock_handles().insert(handle, pin);
        self.note_walk_open(ino);
        Ok((handle, failed))
    }

    /// Notes an open of file `ino`: in a directory a walk is in, the walk reads contents.
    fn note_walk_open(&self, ino: u64) {
        let inodes = self.read_inodes();
        let dir = inodes.get(ino).and_then(|n| inodes.get(n.parent));
        let listing = dir.and_then(|d| d.listing.as_ref());
        if listing.is_some_and(|l| l.in_walk.load(Ordering::Relaxed)) {
            self.walk_opened
                .store(millis_since_start(), Ordering::Relaxed);
        }
    }

    /// Whether more than one directory joined a walk, the last within [`WALK_WINDOW`].
    fn walk_established(&self) -> bool {
        let (last, count) = *lock(&self.walk_entries);
        let window = WALK_WINDOW.as_millis() as u64;
        count >= 2 && millis_since_start().saturating_sub(last) < window
    }

    /// Whether a walk has opened files lately (within [`WALK_WINDOW`]).
    fn walk_reads(&self) -> bool {
        let opened = self.walk_opened.load(Ordering::Relaxed);
        let window = WALK_WINDOW.as_millis() as u64;
        opened != 0 && millis_since_start().saturating_sub(opened) < window
    }

    pub fn release_file(&self, handle: u64) {
        let Some(pin) = self.lock_handles().remove(&handle) else {
            return;
        };
        // The last of its files closed: a failed arrival need not be remembered any more.
        let mut failed = lock(&self.failed_arrivals);
        if failed.contains_key(pin.oid())
            && !self.lock_handles().values().any(|o| o.oid() == pin.oid())
        {
            failed.remove(pin.oid());
        }
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
        if let Some(len) = self.streamed_size(ino) {
            if !self.loader.contains(&oid) {
                if let Some(failed) = lock(&self.failed_arrivals).get(&oid) {
                    return Err(failed.clone());
                }
                return self.read_arriving(ino, oid, len, offset, size).await;
            }
        }
        if !self.loader.contains(&oid) {
            // A walk's fetch that used up the deadline fails the read: it must not wait again.
            self.read_ahead(ino).await?;
        }
        let file = self.open_blob(ino, oid).await?;
        read_into(size, |buf, at| {
            file.read_at(buf, offset + at).map_err(FsError::cache)
        })
    }

    /// The cache file of file `ino` (blob `oid`), fetched first if needed; the path is only
    /// worked out when the cache misses.
    async fn open_blob(
        self: &Arc<Self>,
        ino: u64,
        oid: ObjectId,
    ) -> Result<std::fs::File, FsError> {
        self.loader.open_blob(oid, || self.path_of(ino)).await
    }

    /// The size of file `ino` if it is big enough to be read as it arrives.
    fn streamed_size(&self, ino: u64) -> Option<u64> {
        let min = self.options.stream_min_size?;
        let oid = self.read_inodes().get(ino)?.oid;
        let size = self.loader.known_size(&oid)?;
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
        // Its bytes come from the server, now.
        metrics::reached(Tier::Server);
        let end = offset.saturating_add(u64::from(size)).min(len);
        let arrival = self.arrival(ino, oid);
        match arrival.wait_for(end, len).await? {
            Ready::Partial => read_into((end - offset) as u32, |buf, at| {
                arrival.read_at(buf, offset + at)
            }),
            Ready::Verified => {
                let file = self.open_blob(ino, oid).await?;
                read_into(size, |buf, at| {
                    file.read_at(buf, offset + at).map_err(FsError::cache)
                })
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
        let path = self.path_of(ino);
        tokio::spawn(
            async move {
                let result = this
                    .loader
                    .ensure_blob(&path, oid, Some(watched.clone()))
                    .await;
                if let Err(e) = &result {
                    lock(&this.failed_arrivals).insert(oid, e.clone());
                    lock(&this.wrong_pages).insert(ino);
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
            }
            .in_current_span(),
        );
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
        self.loader.blob_bytes(&self.path_of(ino), oid).await
    }

    /// The kind and id of the entry at `path` in the tree `root` (of this repository, shown
    /// or not); None if there is nothing there. The trees on the way are fetched if needed.
    pub async fn entry_in(
        &self,
        root: ObjectId,
        path: &RepoPath,
    ) -> Result<Option<(EntryKind, ObjectId)>, FsError> {
        let mut at = (EntryKind::Directory, root);
        let mut walked = RepoPath::root();
        for name in path.components() {
            if at.0 != EntryKind::Directory {
                return Ok(None);
            }
            let entries = self.loader.entries(&walked, at.1).await?;
            match entries.into_iter().find(|e| e.name == name) {
                Some(entry) => at = (entry.kind, entry.oid),
                None => return Ok(None),
            }
            walked.push(name);
        }
        Ok(Some(at))
    }

    /// The entries (name, kind, id) of the directory at `path` in the commit shown; None if
    /// there is no directory there. Lists (and fetches) the directories on the way.
    #[allow(clippy::type_complexity)]
    pub async fn tree_at(
        self: &Arc<Self>,
        path: &RepoPath,
    ) -> Result<Option<Vec<(Arc<[u8]>, EntryKind, ObjectId)>>, FsError> {
        let mut ino = ROOT_INO;
        for name in path.components() {
            self.listing(ino).await?;
            match self.child(ino, name) {
                Some(child) if self.kind_of(child).is_some_and(|k| k.is_dir()) => ino = child,
                _ => return Ok(None),
            }
        }
        let listing = self.listing(ino).await?;
        Ok(Some(
            listing
                .entries
                .iter()
                .map(|e| (e.name.clone(), e.kind, e.oid))
                .collect(),
        ))
    }

    /// The content of blob `oid`, found at `path` in the commit shown: from the cache, else
    /// fetched (and verified) as a read would fetch it.
    pub async fn blob_at(
        self: &Arc<Self>,
        path: &RepoPath,
        oid: ObjectId,
    ) -> Result<Vec<u8>, FsError> {
        self.loader.blob_bytes(path, oid).await
    }

    /// Fetches the listings and files `patterns` want (all of the mount if none), down to
    /// `depth` levels below each pattern's base (0: no limit). See `prefetch`.
    pub async fn prefetch(
        self: &Arc<Self>,
        patterns: &[Pattern],
        depth: u32,
        progress: &PrefetchProgress,
    ) -> Result<(), FsError> {
        prefetch::run(self, patterns, depth, progress).await
    }

    // What the helper modules work with.

    /// The mount's loader.
    fn loader(&self) -> &Arc<Loader> {
        &self.loader
    }

    /// The number of entry `name` in listed directory `dir`, with a node made for it.
    fn child(&self, dir: u64, name: &[u8]) -> Option<u64> {
        self.write_inodes().node_for(dir, name)
    }

    /// What `ino` is, if the mount knows it.
    fn kind_of(&self, ino: u64) -> Option<EntryKind> {
        self.read_inodes().get(ino).map(|n| n.kind)
    }

    /// The repository path of `ino`.
    fn path_of(&self, ino: u64) -> RepoPath {
        self.read_inodes().path_of(ino)
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

    fn read_inodes(&self) -> std::sync::RwLockReadGuard<'_, InodeTable> {
        self.inodes.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_inodes(&self) -> std::sync::RwLockWriteGuard<'_, InodeTable> {
        self.inodes.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The attributes of `ino`, a file's size 0 while unknown.
    fn attr_of(&self, ino: u64) -> Result<Attr, FsError> {
        let seen = self.seen(ino).ok_or(FsError::StaleInode(ino))?;
        let size = if seen.kind.is_dir() {
            0
        } else {
            self.loader.known_size(&seen.oid).unwrap_or(0)
        };
        Ok(self.attr(ino, &seen, size))
    }

    /// What `ino` is, copied out (the store is never asked under the inode lock: a walk's
    /// lookups would wait on each other there).
    fn seen(&self, ino: u64) -> Option<Seen> {
        self.read_inodes().get(ino).map(|n| Seen {
            kind: n.kind,
            oid: n.oid,
            key: n.key(),
        })
    }

    fn attr(&self, ino: u64, seen: &Seen, size: u64) -> Attr {
        let perm = match seen.kind {
            EntryKind::Directory | EntryKind::Submodule | EntryKind::Executable => 0o755,
            EntryKind::File => 0o644,
            EntryKind::Symlink => 0o777,
        };
        let times = self.times.read().unwrap_or_else(|p| p.into_inner());
        let mtime = times.time_of(seen.key, &seen.oid).max(0) as u64;
        Attr {
            ino,
            kind: seen.kind,
            size,
            perm,
            mtime: UNIX_EPOCH + Duration::from_secs(mtime),
            uid: self.owner.0,
            gid: self.owner.1,
        }
    }

    // Listings.

    /// The listing of directory `ino`, loading its tree on first use.
    async fn listing(self: &Arc<Self>, ino: u64) -> Result<Arc<Listing>, FsError> {
        if let Some(listing) = self.loaded_listing(ino)? {
            return Ok(listing);
        }
        let (path, oid) = {
            let inodes = self.read_inodes();
            let node = inodes.get(ino).ok_or(FsError::StaleInode(ino))?;
            (inodes.path_of(ino), node.oid)
        };
        let entries = match self.loader.entries(&path, oid).await {
            Err(FsError::Source(e))
                if self.options.follow_trunk && matches!(*e, SourceError::TrunkMoved { .. }) =>
            {
                // The commit moved under us: move with it, and answer ESTALE so the kernel
                // walks the path again through the new tree.
                self.follow_trunk(&path);
                return Err(FsError::StaleInode(ino));
            }
            other => other?,
        };
        self.install_listing(ino, oid, entries)
            .map_err(|refused| self.refused_listing(ino, oid, refused))
    }

    /// The listing of `ino` if it is loaded or its tree is in the cache: a local read, as a
    /// native directory would cost, done on the asking thread rather than handed to a task
    /// (the hand-off cost more than the read on a walk over a cached tree). None where the
    /// source is needed, or the cached tree is refused (the full path reports that).
    fn listing_at_hand(&self, ino: u64) -> Option<Result<Arc<Listing>, FsError>> {
        match self.loaded_listing(ino) {
            Ok(Some(listing)) => return Some(Ok(listing)),
            Ok(None) => {}
            Err(e) => return Some(Err(e)),
        }
        let oid = self.read_inodes().get(ino)?.oid;
        let entries = self.loader.entries_at_hand(&oid)?;
        // A refused tree is the full path's to report, in the request's span.
        self.install_listing(ino, oid, entries).ok().map(Ok)
    }

    /// Makes `entries` (of tree `oid`) the listing of directory `ino`: refuses a loop,
    /// numbers the entries, records the tree for later mounts. The one way a listing comes
    /// in, whether its tree was fetched or at hand.
    fn install_listing(
        &self,
        ino: u64,
        oid: ObjectId,
        entries: Vec<TreeEntry>,
    ) -> Result<Arc<Listing>, Refused> {
        let entries = self.no_loop(ino, oid, entries).map_err(Refused::Tree)?;
        self.write_inodes().add_listing(ino, entries);
        self.recall().record(oid);
        self.loaded_listing(ino)
            .map_err(Refused::Fs)?
            .ok_or(Refused::Fs(FsError::StaleInode(ino)))
    }

    fn refused_listing(&self, ino: u64, oid: ObjectId, refused: Refused) -> FsError {
        match refused {
            Refused::Tree(error) => self.loader.refuse_tree(&self.path_of(ino), oid, error),
            Refused::Fs(e) => e,
        }
    }

    /// What the kernel reading directory `ino` sets going: its subdirectories' listings, and
    /// for the root, the trees earlier mounts of this commit listed.
    fn after_kernel_read(self: &Arc<Self>, ino: u64, listing: &Listing) {
        if ino == ROOT_INO {
            self.recall().start(&self.name);
        }
        // A walk is seen in the listings it reads too: with sizes known, `readdirplus` is all
        // the kernel asks for before reading the files.
        if self.note_walk(ino) {
            self.fetch_ahead_of_walk(ino);
        }
        self.look_ahead(ino, listing);
    }

    /// Starts loading the listings of `dir`'s first subdirectories, once per listing of `dir`
    /// (which the kernel has just read).
    fn look_ahead(&self, dir: u64, listing: &Listing) {
        let limit = self.options.look_ahead;
        if limit == 0 || listing.looked_ahead.swap(true, Ordering::Relaxed) {
            return;
        }
        let subdirs: Vec<(Arc<[u8]>, ObjectId)> = listing
            .entries
            .iter()
            .filter(|e| e.kind == EntryKind::Directory)
            .take(limit)
            .map(|e| (e.name.clone(), e.oid))
            .collect();
        if subdirs.is_empty() {
            return;
        }
        let base = self.path_of(dir);
        let subdirs = subdirs
            .into_iter()
            .map(|(name, oid)| (base.join(&name), oid))
            .collect();
        self.ahead
            .start(&self.loader, &self.runtime, subdirs, &self.name, &base);
    }

    /// The record of the root tree shown.
    fn recall(&self) -> Arc<Recall> {
        Arc::clone(&self.recall.read().unwrap_or_else(|p| p.into_inner()))
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

    // Sizes.

    /// Makes sure `ino` (in directory `dir`) has a size. Sizes are learnt per directory, but a
    /// sibling whose size could not be learnt must not fail this one.
    async fn ensure_size(self: &Arc<Self>, dir: u64, ino: u64) -> Result<(), FsError> {
        let result = self.ensure_sizes(dir).await;
        let oid = self.read_inodes().get(ino).map(|n| n.oid);
        if oid.is_some_and(|oid| self.loader.known_size(&oid).is_some()) {
            Ok(())
        } else {
            result
        }
    }

    /// Learns the sizes of every file in directory `dir` that has none yet. Where sizes
    /// cost contents and a walk is going down through here, the next directories' files come
    /// along (see [`MountFs::note_walk`]), and where the walk reads (it opened files lately),
    /// the bigger files' contents come with their sizes.
    async fn ensure_sizes(self: &Arc<Self>, dir: u64) -> Result<(), FsError> {
        let walking = self.note_walk(dir);
        if walking {
            self.fetch_ahead_of_walk(dir);
        }
        if let Some((tree, files)) = self.files_without_size(dir)? {
            // A walk that only stats takes the next directories' files along once it has
            // entered more than one: `ls -l assets` after an `ls` is not a walk yet.
            let ahead = match walking && self.loader.sizes_need_content() {
                true if self.walk_reads() || self.walk_established() => self.directories_after(dir),
                _ => Vec::new(),
            };
            // A walk that reads takes the bigger files' contents with their sizes.
            let contents_up_to = match walking && self.walk_reads() {
                true => READ_AHEAD_MAX_SIZE,
                false => 0,
            };
            self.loader
                .learn_sizes(tree, files, ahead, contents_up_to)
                .await?;
        }
        Ok(())
    }

    /// A read of `ino` that the cache misses, in a directory a walk came through: where the
    /// source fetches many directories' small files at once (git), that fetch, waited for;
    /// then the directory's files still not cached (all of them on Mega, the bigger ones on
    /// git) are fetched in the background, several at once, once per listing. Either way the
    /// walk's reads, one file after another (`grep -r`), find the next files at hand, and a
    /// read of one joins its fetch. A walk that only stats (`du`, `find`) fetches nothing
    /// here.
    async fn read_ahead(self: &Arc<Self>, ino: u64) -> Result<(), FsError> {
        let Ok(dir) = self.parent_of(ino) else {
            return Ok(());
        };
        let Ok(Some(listing)) = self.loaded_listing(dir) else {
            return Ok(());
        };
        if !listing.in_walk.load(Ordering::Relaxed) {
            return Ok(());
        }
        if self.loader.batches_small_files() {
            // The walk's fetch for this directory and the next ones, as when sizes are
            // learnt (with sizes known already, the walk's reads would be one request each).
            let tree = self.read_inodes().get(dir).map(|n| n.oid);
            if let Some(tree) = tree {
                let ahead = self.directories_after(dir);
                let files = listing
                    .entries
                    .iter()
                    .filter(|e| matches!(e.kind, EntryKind::File | EntryKind::Executable))
                    .map(|e| e.oid)
                    .collect();
                self.loader
                    .small_files_into_cache(tree, ahead, files)
                    .await?;
            }
        }
        if listing.read_ahead.swap(true, Ordering::Relaxed) {
            return Ok(());
        }
        // What is still missing is fetched one file a request: a server looks for deltas
        // among the files of one request, which for big files of a kind (translations)
        // costs more than sending each alone.
        let mut bytes = 0;
        let mut wanted = |oid: &ObjectId| {
            let size = self.loader.known_size(oid);
            let take = size.is_some_and(|size| {
                size <= READ_AHEAD_MAX_SIZE && bytes + size <= READ_AHEAD_MAX_BYTES
            }) && !self.loader.contains(oid);
            bytes += if take { size.unwrap_or(0) } else { 0 };
            take
        };
        let base = self.path_of(dir);
        let files: Vec<(RepoPath, ObjectId)> = listing
            .entries
            .iter()
            .filter(|e| matches!(e.kind, EntryKind::File | EntryKind::Executable))
            .filter(|e| wanted(&e.oid))
            .map(|e| (base.join(&e.name), e.oid))
            .collect();
        if files.is_empty() {
            return Ok(());
        }
        let (loader, slots) = (Arc::clone(&self.loader), Arc::clone(&self.read_ahead_slots));
        let span = tracing::info_span!("read_ahead", mount = %self.name, dir = %base);
        self.runtime.spawn(
            async move {
                stream::iter(files)
                    .for_each_concurrent(READ_AHEAD_PARALLELISM, |(path, oid)| {
                        let (loader, slots) = (Arc::clone(&loader), Arc::clone(&slots));
                        async move {
                            let Ok(_slot) = slots.acquire().await else {
                                return;
                            };
                            // A failure is the demand read's to report.
                            let _ = loader.ensure_blob(&path, oid, None).await;
                        }
                    })
                    .await;
            }
            .instrument(span),
        );
        Ok(())
    }

    /// Whether a walk is going down the tree through `dir` (`grep -r`, `du`, a build): the
    /// kernel reads it or asks its files' sizes (marked now) less than [`WALK_WINDOW`] after
    /// it did either for a directory at most [`loader::WALK_DEPTH`] levels above. Then `dir`
    /// is marked as in the walk (see [`MountFs::read_ahead`]). Not for a lone `ls -l`.
    fn note_walk(&self, dir: u64) -> bool {
        let now = millis_since_start();
        let inodes = self.read_inodes();
        let listing_of = |ino: u64| inodes.get(ino).and_then(|n| n.listing.clone());
        let Some(listing) = listing_of(dir) else {
            return false;
        };
        listing.visited.store(now, Ordering::Relaxed);
        let mut above = Vec::new();
        let mut at = dir;
        for _ in 0..loader::WALK_DEPTH {
            let parent = inodes.get(at).map_or(ROOT_INO, |n| n.parent);
            if parent == at {
                break;
            }
            above.extend(listing_of(parent));
            at = parent;
        }
        let window = WALK_WINDOW.as_millis() as u64;
        let walking = above.iter().any(|l| {
            let seen = l.visited.load(Ordering::Relaxed);
            seen != 0 && now.saturating_sub(seen) < window
        });
        if walking {
            if !listing.in_walk.swap(true, Ordering::Relaxed) {
                let mut entries = lock(&self.walk_entries);
                let (last, count) = *entries;
                let count = match last != 0 && now.saturating_sub(last) < window {
                    true => count.saturating_add(1),
                    false => 1,
                };
                *entries = (now, count);
            }
            // A walk that has gone on for long is still one: the directories it is in stay
            // fresh while it goes on below them, and their own files are the walk's too.
            for l in above {
                l.visited.store(now, Ordering::Relaxed);
                l.in_walk.store(true, Ordering::Relaxed);
            }
        }
        walking
    }

    /// Where each file costs a request (Mega) and a walk that reads has entered `dir`, the
    /// pass ahead of it goes on past `dir`, or starts there (see `walk_ahead`).
    fn fetch_ahead_of_walk(self: &Arc<Self>, dir: u64) {
        if !self.walk_reads() || self.loader.sizes_need_content() {
            return;
        }
        // A submodule's directory has no tree to list.
        let node = self.read_inodes().get(dir).map(|n| (n.kind, n.oid));
        let Some((EntryKind::Directory, tree)) = node else {
            return;
        };
        let after = || {
            let siblings = self.siblings_after(dir, WALK_SIBLINGS);
            siblings
                .into_iter()
                .map(|(parent, name, oid)| (self.path_of(parent).join(&name), oid))
                .collect()
        };
        let here = (self.path_of(dir), tree);
        self.walk_ahead
            .entered(&self.loader, &self.runtime, here, after, &self.name);
    }

    /// The directories after `dir` in its parent's listing, then after its parent in the
    /// grandparent's and so on, up to `most`: (parent, name, tree) each.
    fn siblings_after(&self, dir: u64, most: usize) -> Vec<(u64, Arc<[u8]>, ObjectId)> {
        let inodes = self.read_inodes();
        let mut after = Vec::new();
        let mut at = dir;
        for _ in 0..loader::WALK_DEPTH {
            let parent = inodes.get(at).map_or(ROOT_INO, |n| n.parent);
            let Some(siblings) = inodes.get(parent).and_then(|n| n.listing.clone()) else {
                break;
            };
            if parent == at || after.len() >= most {
                break;
            }
            let next = siblings
                .entries
                .iter()
                .skip_while(|e| e.ino != at)
                .skip(1)
                .filter(|e| e.kind == EntryKind::Directory)
                .take(most - after.len())
                .map(|e| (parent, Arc::clone(&e.name), e.oid));
            after.extend(next);
            at = parent;
        }
        after
    }

    /// The trees of the directories after `dir` in its parent's listing, then after its
    /// parent in the grandparent's and so on, up to [`WALK_SIBLINGS`]: where the source
    /// filters by size (git), a walk's small files come with `dir`'s, and the directories
    /// below them, so one request brings many directories' files
    /// rather than one each, and the next requests go out before the walk gets there.
    fn directories_after(&self, dir: u64) -> Vec<ObjectId> {
        let after = self.siblings_after(dir, WALK_SIBLINGS);
        after.into_iter().map(|(_, _, oid)| oid).collect()
    }

    /// The tree of directory `dir` and its files whose sizes are not known yet, if any.
    fn files_without_size(&self, dir: u64) -> Result<Option<(ObjectId, Files)>, FsError> {
        let Some(listing) = self.loaded_listing(dir)? else {
            return Ok(None);
        };
        let missing: Vec<&inode::Entry> = listing
            .entries
            .iter()
            .filter(|e| !e.kind.is_dir() && self.loader.known_size(&e.oid).is_none())
            .collect();
        if missing.is_empty() {
            return Ok(None);
        }
        let base = self.path_of(dir);
        let files = missing
            .into_iter()
            .map(|e| (base.join(&e.name), e.oid))
            .collect();
        let tree = self.read_inodes().get(dir).map(|n| n.oid);
        Ok(tree.map(|tree| (tree, files)))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Files by path and blob id.
type Files = Vec<(RepoPath, ObjectId)>;

/// Why entries could not become a listing.
enum Refused {
    /// The tree itself is unusable.
    Tree(ObjectError),
    Fs(FsError),
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
