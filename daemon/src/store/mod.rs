//! The content-addressed object cache on disk, shared by every mount of the daemon.
//!
//! Layout under the cache dir: `objects/ab/cdef…` holds verified objects by id (trees and blobs
//! alike: their ids never collide); `tmp/` holds objects being written; `sizes` is an
//! append-only log of known object sizes (`<hex id> <size>` lines), so sizes learnt without
//! content survive restarts. An object is written unnamed (see `fresh`; in `tmp/` where the
//! filesystem has no unnamed files), then named in place, so a crash of the daemon leaves
//! either no object or a whole one; the filesystem is flushed every
//! few seconds rather than each object (see `flush`), and after a crash of the machine the
//! objects written since the last flush are checked against their ids at open. On open,
//! leftovers in `tmp/` are removed and an object whose length disagrees with the size log is
//! dropped.
//!
//! `listings/` holds, per root tree, the ids of the trees its mounts listed (see
//! `fs::recall`); they count against the limit like objects.
//!
//! The cache is bounded: past its limit, the least recently used objects that nobody has
//! pinned (an open file, a read under way), and the least recently used listing records, are
//! evicted. Callers verify bytes against their id before inserting them; streamed blobs are
//! hashed on the way and kept only under the id they hash to.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tracing::{info, warn};

use crate::object::{ObjectError, ObjectHasher, ObjectId, ObjectKind};
use crate::source::{BlobSink, PendingBlob, SinkError};

mod flush;
mod fresh;

use flush::Flusher;
use fresh::FreshFile;

#[derive(Debug, thiserror::Error)]
#[error("cache at {path}: {source}")]
pub struct StoreError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// What `mega-fuse cache` shows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    /// 0 when unbounded.
    pub limit: u64,
    pub objects: u64,
    pub hits: u64,
    pub misses: u64,
    pub evicted: u64,
}

struct Entry {
    size: u64,
    last_used: u64,
    pins: u32,
}

/// What eviction may remove: an object, or the listing record of a root tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Victim {
    Object(ObjectId),
    Record(ObjectId),
}

#[derive(Default)]
struct Index {
    /// Objects on disk.
    cached: HashMap<ObjectId, Entry>,
    /// Listing records on disk, by root tree (their pins are unused).
    records: HashMap<ObjectId, Entry>,
    /// Every size known, cached or not (a blob's size never changes).
    sizes: HashMap<ObjectId, u64>,
    /// Pins of objects not cached yet (an open file whose content is still to come).
    early_pins: HashMap<ObjectId, u32>,
    bytes: u64,
    clock: u64,
}

impl Index {
    /// Marks cached object `oid` used now; its size, if it is cached.
    fn touch(&mut self, oid: &ObjectId) -> Option<u64> {
        self.clock += 1;
        let clock = self.clock;
        let entry = self.cached.get_mut(oid)?;
        entry.last_used = clock;
        Some(entry.size)
    }
}

pub struct Store {
    objects: PathBuf,
    /// What each source last resolved to, for mounting while it is unreachable.
    snapshots: PathBuf,
    /// Per root tree, the trees its mounts listed, in order (see `fs::recall`).
    listings: PathBuf,
    tmp: PathBuf,
    /// `objects` and `tmp` opened, to name files relative to them (see `sys::open_dir_handle`).
    objects_dir: OwnedFd,
    tmp_dir: OwnedFd,
    index: Mutex<Index>,
    sizes_log: Mutex<SizesLog>,
    flusher: Flusher,
    limit: AtomicU64,
    next_tmp: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    evicted: AtomicU64,
}

/// The log of sizes learnt, and the lines not written to it yet: a size a fetch learns is
/// written with others, at the latest when the background next flushes (every second), not
/// one write each. A daemon's crash loses at most that second's lines, which cost only a
/// request to learn again (a cached object's size is its file's).
struct SizesLog {
    file: File,
    pending: Vec<u8>,
}

/// Pending lines written at once when they come to this many bytes.
const SIZES_PENDING_MAX: usize = 32 << 10;

impl SizesLog {
    /// Whole lines only, in one write, so that a crash cannot leave half of one behind
    /// (but for the last, which a reader drops).
    fn write_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        if let Err(e) = self.file.write_all(&self.pending) {
            warn!(error = %e, "cannot record sizes in the cache");
        }
        self.pending.clear();
    }
}

impl Drop for SizesLog {
    fn drop(&mut self) {
        self.write_pending();
    }
}

/// An object being written as it arrives: hashed on the way, renamed into place only if it is
/// whole and hashes to its id. Dropped unfinished, it leaves nothing behind.
pub struct PendingObject<'a> {
    store: &'a Store,
    /// The id it must hash to; None: whatever it hashes to (a pack entry, named by its bytes).
    oid: Option<ObjectId>,
    expected_len: u64,
    written: u64,
    hasher: Option<ObjectHasher>,
    fresh: Option<FreshFile>,
}

impl PendingObject<'_> {
    /// Refuses bytes beyond the announced length at once: a server sending more than it
    /// said must not fill the disk before the length is checked at the end.
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), SinkError> {
        if self.written + chunk.len() as u64 > self.expected_len {
            return Err(SinkError::Overflow(self.expected_len));
        }
        self.written += chunk.len() as u64;
        if let Some(hasher) = self.hasher.as_mut() {
            hasher.update(chunk);
        }
        match self.fresh.as_mut() {
            Some(fresh) => Ok(fresh.file().write_all(chunk)?),
            None => Err(io::Error::other("the object is no longer being written").into()),
        }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The file being written, opened again for reading (it stays readable once kept).
    pub fn reader(&self) -> io::Result<File> {
        match &self.fresh {
            Some(fresh) => fresh.reopen(),
            None => Err(io::Error::other("the object is no longer being written")),
        }
    }

    /// Keeps the object if it is whole and hashes to its id; returns the id.
    pub fn commit(mut self) -> Result<ObjectId, SinkError> {
        if self.written != self.expected_len {
            return Err(SinkError::Length {
                expected: self.expected_len,
                received: self.written,
            });
        }
        let hasher = self
            .hasher
            .take()
            .ok_or_else(|| io::Error::other("an object committed twice"))?;
        let actual = hasher.finish();
        if let Some(expected) = self.oid.filter(|&expected| expected != actual) {
            return Err(SinkError::Corrupt(ObjectError::Mismatch {
                kind: ObjectKind::Blob,
                expected,
                actual,
            }));
        }
        if let Some(mut fresh) = self.fresh.take() {
            self.store.keep(&mut fresh, &actual)?;
        }
        self.store.flusher.written();
        self.store.record_size(&actual, self.written);
        self.store.admit(&actual, self.written);
        Ok(actual)
    }
}

impl PendingBlob for PendingObject<'_> {
    fn write(&mut self, piece: &[u8]) -> Result<(), SinkError> {
        PendingObject::write(self, piece)
    }

    fn written(&self) -> u64 {
        self.written
    }

    fn finish(self: Box<Self>) -> Result<ObjectId, SinkError> {
        self.commit()
    }
}

impl BlobSink for Store {
    fn begin_blob(
        &self,
        oid: Option<ObjectId>,
        len: u64,
    ) -> Result<Box<dyn PendingBlob + '_>, SinkError> {
        Ok(Box::new(self.begin(oid, len)?))
    }

    fn blob(&self, oid: &ObjectId) -> Result<Option<Vec<u8>>, SinkError> {
        Ok(self.read(oid)?)
    }
}

/// Keeps an object from eviction while alive.
pub struct Pin {
    store: Arc<Store>,
    oid: ObjectId,
}

impl Pin {
    pub fn oid(&self) -> &ObjectId {
        &self.oid
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        self.store.unpin(&self.oid);
    }
}

impl Store {
    /// Opens (creating if needed) the cache under `dir`, bounded to `limit` bytes (0: none).
    pub fn open(dir: &Path, limit: u64) -> Result<Store, StoreError> {
        Self::open_on_boot(dir, limit, flush::boot_id())
    }

    /// `open`, as if on boot `boot` (which decides whether the last flush may have been lost).
    fn open_on_boot(dir: &Path, limit: u64, boot: Option<String>) -> Result<Store, StoreError> {
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError { path, source }
        };
        let objects = dir.join("objects");
        let tmp = dir.join("tmp");
        let snapshots = dir.join("snapshots");
        let listings = dir.join("listings");
        for d in [&objects, &tmp, &snapshots, &listings] {
            fs::create_dir_all(d).map_err(err(d))?;
        }
        for fan_out in 0..=255u8 {
            let d = objects.join(format!("{fan_out:02x}"));
            match fs::create_dir(&d) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(err(&d)(e)),
                _ => {}
            }
        }
        if let Ok(leftovers) = fs::read_dir(&tmp) {
            for entry in leftovers.flatten() {
                let _ = fs::remove_file(entry.path());
            }
        }
        let (flusher, stamp) = Flusher::open(dir, boot.clone());
        let suspect = flush::suspect_since(stamp.as_ref(), boot.as_deref());
        if let Some(since) = suspect {
            warn!(
                "the machine restarted since the cache was last flushed: checking what was \
                 written since"
            );
            drop_changed_since(&snapshots, since);
        }
        let log_path = dir.join("sizes");
        let mut index = Index {
            sizes: read_sizes(&log_path),
            ..Index::default()
        };
        let mut found = scan_objects(&objects, &index.sizes, suspect);
        found.extend(scan_records(&listings, suspect));
        index.admit_scanned(found);
        flusher.flush().map_err(err(dir))?;
        let sizes_log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(err(&log_path))?;
        let objects_dir = crate::sys::open_dir_handle(&objects).map_err(err(&objects))?;
        let tmp_dir = crate::sys::open_dir_handle(&tmp).map_err(err(&tmp))?;
        Ok(Store {
            objects,
            objects_dir,
            tmp_dir,
            snapshots,
            listings,
            tmp,
            index: Mutex::new(index),
            sizes_log: Mutex::new(SizesLog {
                file: sizes_log,
                pending: Vec::new(),
            }),
            flusher,
            limit: AtomicU64::new(limit),
            next_tmp: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        // Every update leaves the index consistent, so a panic elsewhere cannot poison it.
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where the object `oid` lives once cached.
    pub fn path_of(&self, oid: &ObjectId) -> PathBuf {
        let hex = oid.to_hex();
        self.objects.join(&hex[..2]).join(&hex[2..])
    }

    pub fn contains(&self, oid: &ObjectId) -> bool {
        self.lock().cached.contains_key(oid)
    }

    /// The whole object, if cached.
    pub fn read(&self, oid: &ObjectId) -> io::Result<Option<Vec<u8>>> {
        self.with_cached(oid, |mut file, size| {
            let mut bytes = Vec::with_capacity(size as usize);
            file.read_to_end(&mut bytes)?;
            Ok(bytes)
        })
    }

    /// An open handle on the cached object, if cached; counts a hit or a miss.
    pub fn open_object(&self, oid: &ObjectId) -> io::Result<Option<File>> {
        let file = self.with_cached(oid, |file, _| Ok(file))?;
        let counter = if file.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(file)
    }

    /// An open handle on an object just fetched into the cache, if it is there; counted as
    /// neither hit nor miss (its miss was counted when it was looked for).
    pub fn open_fetched(&self, oid: &ObjectId) -> io::Result<Option<File>> {
        self.with_cached(oid, |file, _| Ok(file))
    }

    /// `get` of object `oid`'s file, if it is cached (and marked used); a file someone
    /// removed behind our back is forgotten.
    fn with_cached<T>(
        &self,
        oid: &ObjectId,
        get: impl FnOnce(File, u64) -> io::Result<T>,
    ) -> io::Result<Option<T>> {
        let Some(size) = self.lock().touch(oid) else {
            return Ok(None);
        };
        let opened = crate::sys::open_read_at(&self.objects_dir, &object_name(oid));
        match opened.and_then(|file| get(file, size)) {
            Ok(found) => Ok(Some(found)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.forget(oid);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// An object someone removed behind our back is no longer cached.
    fn forget(&self, oid: &ObjectId) {
        let mut index = self.lock();
        if let Some(entry) = index.cached.remove(oid) {
            index.bytes -= entry.size;
        }
    }

    /// Stores verified bytes under `oid`, atomically.
    pub fn insert(&self, oid: &ObjectId, bytes: &[u8]) -> io::Result<()> {
        self.record_size(oid, bytes.len() as u64);
        if self.lock().touch(oid).is_some() {
            return Ok(());
        }
        let mut fresh = self.fresh_file(&oid.to_hex())?;
        fresh.file().write_all(bytes)?;
        self.keep(&mut fresh, oid)?;
        self.flusher.written();
        // Eviction runs in the background; only a cache far over its limit waits for it.
        self.admit(oid, bytes.len() as u64);
        Ok(())
    }

    /// Flushes what was written to the disk if the last flush is a few seconds old (the
    /// background calls this every second).
    pub fn flush_if_due(&self) {
        self.sizes_log().write_pending();
        if let Err(e) = self.flusher.flush_if_due() {
            warn!(error = %e, "cannot flush the cache to its disk");
        }
    }

    /// Flushes what was written to the disk now (at shutdown).
    pub fn flush(&self) {
        self.sizes_log().write_pending();
        if let Err(e) = self.flusher.flush() {
            warn!(error = %e, "cannot flush the cache to its disk");
        }
    }

    /// Asks the kernel to read object `oid`'s file into the page cache, without reading it
    /// here or counting it as used: whoever reads it soon finds it in memory. False if it is
    /// not cached.
    pub fn warm(&self, oid: &ObjectId) -> bool {
        if !self.contains(oid) {
            return false;
        }
        File::open(self.path_of(oid)).is_ok_and(|file| crate::sys::will_need(&file))
    }

    /// Starts writing a blob of `len` bytes as it arrives (see [`PendingObject`]): kept as
    /// `oid` if it hashes to it, or, without `oid`, under whatever id it hashes to.
    pub fn begin(&self, oid: Option<ObjectId>, len: u64) -> Result<PendingObject<'_>, SinkError> {
        let limit = self.limit();
        if limit > 0 && len > limit {
            // It could never stay, and a server's word on a size must not fill the disk.
            return Err(SinkError::LargerThanCache { size: len, limit });
        }
        let name = oid.map_or_else(|| "unnamed".to_string(), |oid| oid.to_hex());
        Ok(PendingObject {
            store: self,
            oid,
            expected_len: len,
            written: 0,
            hasher: Some(ObjectHasher::new(ObjectKind::Blob, len)),
            fresh: Some(self.fresh_file(&name)?),
        })
    }

    /// A file for a new object (see `fresh`), its name in `tmp/` (where it needs one) unique.
    fn fresh_file(&self, name: &str) -> io::Result<FreshFile> {
        static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
        let pid = PID.get_or_init(std::process::id);
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        FreshFile::create(&self.tmp_dir, &self.tmp, format!("{name}.{pid}.{n}"))
    }

    /// Gives `fresh` its place as object `oid`. The fan-out directories are made at open, so
    /// one is made here only if it went since.
    fn keep(&self, fresh: &mut FreshFile, oid: &ObjectId) -> io::Result<()> {
        let (path, rel) = (self.path_of(oid), object_name(oid));
        match fresh.keep_as(&self.objects_dir, &rel, &path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent)?;
                }
                fresh.keep_as(&self.objects_dir, &rel, &path)
            }
            kept => kept,
        }
    }

    /// Enters a newly written object into the index, evicting inline only when far over.
    fn admit(&self, oid: &ObjectId, size: u64) {
        let over_hard_limit = {
            let mut index = self.lock();
            index.clock += 1;
            let pins = index.early_pins.remove(oid).unwrap_or(0);
            let entry = Entry {
                size,
                last_used: index.clock,
                pins,
            };
            if index.cached.insert(*oid, entry).is_none() {
                index.bytes += size;
            }
            let limit = self.limit();
            limit > 0 && index.bytes > limit + limit / 4
        };
        if over_hard_limit {
            self.evict_to_limit();
        }
    }

    /// The size of object `oid` if known, from a size query or its content.
    pub fn known_size(&self, oid: &ObjectId) -> Option<u64> {
        let index = self.lock();
        index
            .sizes
            .get(oid)
            .copied()
            .or_else(|| index.cached.get(oid).map(|e| e.size))
    }

    /// Remembers a size, on disk too (within a second: see [`SizesLog`]), so a restart need
    /// not ask again.
    pub fn record_size(&self, oid: &ObjectId, size: u64) {
        let new = self.lock().sizes.insert(*oid, size).is_none();
        if new {
            let mut log = self.sizes_log();
            log.pending
                .extend_from_slice(format!("{} {size}\n", oid.to_hex()).as_bytes());
            if log.pending.len() >= SIZES_PENDING_MAX {
                log.write_pending();
            }
            self.flusher.written();
        }
    }

    fn sizes_log(&self) -> MutexGuard<'_, SizesLog> {
        self.sizes_log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps `oid` (cached or still to come) from eviction until the pin drops.
    pub fn pin(self: &Arc<Self>, oid: &ObjectId) -> Pin {
        let mut index = self.lock();
        match index.cached.get_mut(oid) {
            Some(entry) => entry.pins += 1,
            None => *index.early_pins.entry(*oid).or_default() += 1,
        }
        Pin {
            store: Arc::clone(self),
            oid: *oid,
        }
    }

    fn unpin(&self, oid: &ObjectId) {
        let mut index = self.lock();
        if let Some(entry) = index.cached.get_mut(oid) {
            entry.pins = entry.pins.saturating_sub(1);
        } else if let Some(count) = index.early_pins.get_mut(oid) {
            *count -= 1;
            if *count == 0 {
                index.early_pins.remove(oid);
            }
        }
    }

    pub fn limit(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    /// Evicts least recently used, unpinned objects until the cache is within its limit
    /// (down to 90% of it, so eviction does not run on every insert). Returns bytes freed.
    pub fn evict_to_limit(&self) -> u64 {
        let limit = self.limit();
        if limit == 0 || self.lock().bytes <= limit {
            return 0;
        }
        self.evict_down_to(limit - limit / 10)
    }

    /// Where the trees listed under root tree `root` are recorded.
    pub fn listings_record(&self, root: &ObjectId) -> PathBuf {
        self.listings.join(root.to_hex())
    }

    /// The trees recorded under root tree `root`, in order; a torn last record (a crash
    /// mid-append) is trimmed, since it would misalign every one after it.
    pub fn listing_record(&self, root: &ObjectId) -> Vec<ObjectId> {
        let path = self.listings_record(root);
        let Ok(mut bytes) = fs::read(&path) else {
            return Vec::new();
        };
        let whole = bytes.len() - bytes.len() % 20;
        if whole != bytes.len() {
            bytes.truncate(whole);
            let trimmed = OpenOptions::new().write(true).open(&path);
            if let Err(e) = trimmed.and_then(|f| f.set_len(whole as u64)) {
                warn!(error = %e, path = %path.display(), "cannot trim a torn listing record");
            }
            self.account_record(root, whole as u64, false);
        }
        self.lock().touch_record(root);
        bytes
            .chunks_exact(20)
            .map(|raw| {
                let mut id = [0u8; 20];
                id.copy_from_slice(raw);
                ObjectId::from_bytes(id)
            })
            .collect()
    }

    /// Appends `trees` to the record of root tree `root`. A record is a help, not a need: a
    /// failure to write one costs only speed later, and is logged.
    pub fn append_listing_record(&self, root: &ObjectId, trees: &[ObjectId]) {
        let path = self.listings_record(root);
        let bytes: Vec<u8> = trees.iter().flat_map(|t| *t.as_bytes()).collect();
        let written = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(&bytes).and_then(|()| f.metadata()));
        self.flusher.written();
        match written {
            Ok(meta) => self.account_record(root, meta.len(), true),
            Err(e) => warn!(error = %e, path = %path.display(), "cannot record listings"),
        }
    }

    /// Sets the size the index holds for the record of `root`.
    fn account_record(&self, root: &ObjectId, size: u64, used: bool) {
        let mut index = self.lock();
        index.clock += 1;
        let clock = index.clock;
        let entry = index.records.entry(*root).or_insert(Entry {
            size: 0,
            last_used: clock,
            pins: 0,
        });
        let old = std::mem::replace(&mut entry.size, size);
        if used {
            entry.last_used = clock;
        }
        index.bytes = index.bytes - old + size;
        drop(index);
        self.evict_if_far_over();
    }

    /// Removes every unpinned object, and the listing records. Returns bytes freed.
    pub fn clear(&self) -> u64 {
        self.evict_down_to(0)
    }

    /// What `cache gc` would free now (objects and records it would evict), without evicting.
    pub fn gc_would_free(&self) -> u64 {
        let limit = self.limit();
        if limit == 0 || self.lock().bytes <= limit {
            return 0;
        }
        self.victims_down_to(limit - limit / 10)
            .iter()
            .map(|(_, size)| size)
            .sum()
    }

    /// The size of cached object `oid`, if it is cached.
    pub fn cached_size(&self, oid: &ObjectId) -> Option<u64> {
        self.lock().cached.get(oid).map(|e| e.size)
    }

    /// The bytes of the listing record of root tree `root` (0 for none).
    pub fn record_bytes(&self, root: &ObjectId) -> u64 {
        self.lock().records.get(root).map_or(0, |e| e.size)
    }

    /// The bytes of every listing record.
    pub fn records_bytes(&self) -> u64 {
        self.lock().records.values().map(|e| e.size).sum()
    }

    /// Least recently used first, the unpinned objects and records to evict to get down to
    /// `target` bytes, with their sizes.
    fn victims_down_to(&self, target: u64) -> Vec<(Victim, u64)> {
        let index = self.lock();
        let objects = index
            .cached
            .iter()
            .filter(|(_, e)| e.pins == 0)
            .map(|(oid, e)| (e.last_used, Victim::Object(*oid), e.size));
        let records = index
            .records
            .iter()
            .map(|(root, e)| (e.last_used, Victim::Record(*root), e.size));
        let mut candidates: Vec<_> = objects.chain(records).collect();
        candidates.sort_unstable();
        let mut excess = index.bytes.saturating_sub(target);
        candidates
            .into_iter()
            .take_while(|(_, _, size)| {
                let take = excess > 0;
                excess = excess.saturating_sub(*size);
                take
            })
            .map(|(_, victim, size)| (victim, size))
            .collect()
    }

    fn evict_down_to(&self, target: u64) -> u64 {
        let victims = self.victims_down_to(target);
        let mut freed = 0;
        for (victim, _) in victims {
            freed += self.evict(victim);
        }
        if freed > 0 {
            info!(
                freed,
                limit = self.limit(),
                "evicted least recently used objects"
            );
        }
        freed
    }

    /// Removes one victim unless it was pinned since it was chosen; the bytes freed. It
    /// leaves the index first, and its file goes outside the index's lock, so nobody waits on
    /// the disk for it.
    fn evict(&self, victim: Victim) -> u64 {
        let (Victim::Object(key) | Victim::Record(key)) = victim;
        let entry = {
            let mut index = self.lock();
            let map = match victim {
                Victim::Object(_) => &mut index.cached,
                Victim::Record(_) => &mut index.records,
            };
            if map.get(&key).is_none_or(|e| e.pins != 0) {
                return 0;
            }
            let Some(entry) = map.remove(&key) else {
                return 0;
            };
            index.bytes -= entry.size;
            entry
        };
        let path = match victim {
            Victim::Object(oid) => self.path_of(&oid),
            Victim::Record(root) => self.listings_record(&root),
        };
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                warn!(?victim, error = %e, "cannot evict from the cache");
                // Still there: back into the index, as it was.
                let mut index = self.lock();
                index.bytes += entry.size;
                match victim {
                    Victim::Object(_) => index.cached.insert(key, entry),
                    Victim::Record(_) => index.records.insert(key, entry),
                };
                return 0;
            }
        }
        if matches!(victim, Victim::Object(_)) {
            self.evicted.fetch_add(1, Ordering::Relaxed);
        }
        entry.size
    }

    /// Evicts inline only when the cache is far over its limit; else the background does.
    fn evict_if_far_over(&self) {
        let limit = self.limit();
        if limit > 0 && self.lock().bytes > limit + limit / 4 {
            self.evict_to_limit();
        }
    }

    /// Remembers what `source` (a source's description) resolved to: commit, root tree and
    /// commit time, one line, written atomically.
    pub fn save_snapshot(&self, source: &str, commit: &ObjectId, tree: &ObjectId, time: i64) {
        let path = self.snapshot_path(source);
        let tmp = path.with_extension("tmp");
        let text = format!("{commit} {tree} {time}\n");
        if let Err(e) = fs::write(&tmp, text).and_then(|()| fs::rename(&tmp, &path)) {
            warn!(error = %e, "cannot remember a source's commit");
        }
        self.flusher.written();
    }

    /// What `source` last resolved to, if known: (commit, root tree, commit time).
    pub fn load_snapshot(&self, source: &str) -> Option<(ObjectId, ObjectId, i64)> {
        let text = fs::read_to_string(self.snapshot_path(source)).ok()?;
        let mut parts = text.split_whitespace();
        let commit = ObjectId::from_hex(parts.next()?).ok()?;
        let tree = ObjectId::from_hex(parts.next()?).ok()?;
        let time = parts.next()?.parse().ok()?;
        Some((commit, tree, time))
    }

    fn snapshot_path(&self, source: &str) -> PathBuf {
        use crate::object::ObjectKind;
        let key = ObjectId::hash(ObjectKind::Blob, source.as_bytes());
        self.snapshots.join(key.to_hex())
    }

    pub fn usage(&self) -> Usage {
        let index = self.lock();
        Usage {
            bytes: index.bytes,
            limit: self.limit(),
            objects: index.cached.len() as u64,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evicted: self.evicted.load(Ordering::Relaxed),
        }
    }
}

/// Reads the size log; a torn last line (a crash mid-write) and lines that are not a size
/// are skipped.
fn read_sizes(path: &Path) -> HashMap<ObjectId, u64> {
    let mut sizes = HashMap::new();
    let Ok(file) = File::open(path) else {
        return sizes;
    };
    let mut reader = io::BufReader::new(file);
    let mut raw = Vec::new();
    loop {
        raw.clear();
        // Only whole lines: a last one without its newline may have lost digits of its size.
        match reader.read_until(b'\n', &mut raw) {
            Ok(_) if raw.last() == Some(&b'\n') => {}
            _ => break,
        }
        let Ok(line) = std::str::from_utf8(&raw[..raw.len() - 1]) else {
            continue;
        };
        let mut parts = line.split(' ');
        let (Some(hex), Some(size), None) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if let (Ok(oid), Ok(size)) = (ObjectId::from_hex(hex), size.parse::<u64>()) {
            sizes.insert(oid, size);
        }
    }
    sizes
}

/// Where object `oid` lives below `objects/`: `ab/cdef…`.
fn object_name(oid: &ObjectId) -> [u8; 41] {
    let hex = oid.to_hex();
    let mut name = [b'/'; 41];
    name[..2].copy_from_slice(&hex.as_bytes()[..2]);
    name[3..].copy_from_slice(&hex.as_bytes()[2..]);
    name
}

/// Something found on disk at open: its mtime, what it is, its size.
type Found = (std::time::SystemTime, Victim, u64);

/// The objects on disk, dropping any whose length disagrees with the size log (a torn or
/// tampered file), any changed since `suspect` whose bytes do not hash to its id (a crash of
/// the machine before they reached the disk), and anything that is not an object.
fn scan_objects(
    objects: &Path,
    sizes: &HashMap<ObjectId, u64>,
    suspect: Option<std::time::SystemTime>,
) -> Vec<Found> {
    let mut found = Vec::new();
    for shard in fs::read_dir(objects).into_iter().flatten().flatten() {
        let prefix = shard.file_name().to_string_lossy().into_owned();
        for file in fs::read_dir(shard.path()).into_iter().flatten().flatten() {
            let name = file.file_name().to_string_lossy().into_owned();
            let Ok(meta) = file.metadata() else { continue };
            let oid = ObjectId::from_hex(&format!("{prefix}{name}"));
            let mtime = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
            let trusted = match &oid {
                Ok(oid) => {
                    sizes.get(oid).is_none_or(|&s| s == meta.len())
                        && (suspect.is_none_or(|since| mtime < since)
                            || hashes_to(&file.path(), oid))
                }
                Err(_) => false,
            };
            if !trusted || !meta.is_file() {
                warn!(path = %file.path().display(), "dropping a cached object that does not match its index");
                let _ = fs::remove_file(file.path());
                continue;
            }
            if let Ok(oid) = oid {
                found.push((mtime, Victim::Object(oid), meta.len()));
            }
        }
    }
    found
}

/// Whether the file at `path` holds the object `oid` (a blob or a tree: the store holds both).
fn hashes_to(path: &Path, oid: &ObjectId) -> bool {
    fs::read(path).is_ok_and(|bytes| {
        ObjectId::hash(ObjectKind::Blob, &bytes) == *oid
            || ObjectId::hash(ObjectKind::Tree, &bytes) == *oid
    })
}

/// Removes the files in `dir` changed since `since`: what cannot be checked, and costs
/// little to learn again.
fn drop_changed_since(dir: &Path, since: std::time::SystemTime) {
    for file in fs::read_dir(dir).into_iter().flatten().flatten() {
        let changed = file.metadata().and_then(|m| m.modified());
        if changed.is_ok_and(|t| t >= since) {
            let _ = fs::remove_file(file.path());
        }
    }
}

/// The listing records on disk; anything else there is removed, as is a record changed since
/// `suspect` (what a crash of the machine may have torn: records are only a help).
fn scan_records(listings: &Path, suspect: Option<std::time::SystemTime>) -> Vec<Found> {
    let mut found = Vec::new();
    for file in fs::read_dir(listings).into_iter().flatten().flatten() {
        let root = ObjectId::from_hex(&file.file_name().to_string_lossy());
        match (root, file.metadata()) {
            (Ok(root), Ok(meta))
                if meta.is_file()
                    && suspect
                        .is_none_or(|since| meta.modified().is_ok_and(|mtime| mtime < since)) =>
            {
                let mtime = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
                found.push((mtime, Victim::Record(root), meta.len()));
            }
            _ => {
                let _ = fs::remove_file(file.path());
            }
        }
    }
    found
}

impl Index {
    /// Enters what was found on disk, oldest first, so the clock orders them as least
    /// recently used.
    fn admit_scanned(&mut self, mut found: Vec<Found>) {
        found.sort();
        for (_, victim, size) in found {
            self.clock += 1;
            self.bytes += size;
            let entry = Entry {
                size,
                last_used: self.clock,
                pins: 0,
            };
            match victim {
                Victim::Object(oid) => {
                    self.sizes.entry(oid).or_insert(size);
                    self.cached.insert(oid, entry);
                }
                Victim::Record(root) => {
                    self.records.insert(root, entry);
                }
            }
        }
    }

    fn touch_record(&mut self, root: &ObjectId) {
        self.clock += 1;
        let clock = self.clock;
        if let Some(entry) = self.records.get_mut(root) {
            entry.last_used = clock;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::ObjectKind;

    fn blob(text: &str) -> (ObjectId, Vec<u8>) {
        (
            ObjectId::hash(ObjectKind::Blob, text.as_bytes()),
            text.as_bytes().to_vec(),
        )
    }

    fn usage_bytes(store: &Store) -> u64 {
        store.usage().bytes
    }

    #[test]
    fn after_the_machine_restarts_what_was_written_since_the_last_flush_is_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let on = |boot: &str| Store::open_on_boot(dir.path(), 0, Some(boot.into())).expect("open");
        let (whole, whole_bytes) = blob("reached the disk");
        let (torn, torn_bytes) = blob("lost in a power cut");
        let (old, old_bytes) = blob("written long ago");
        let root = ObjectId::from_bytes([7; 20]);
        let (torn_path, old_path, record) = {
            let store = on("boot-1");
            for (oid, bytes) in [
                (&whole, &whole_bytes),
                (&torn, &torn_bytes),
                (&old, &old_bytes),
            ] {
                store.insert(oid, bytes).expect("insert");
            }
            store.append_listing_record(&root, &[whole]);
            store.save_snapshot("mega x /r", &whole, &whole, 1);
            (
                store.path_of(&torn),
                store.path_of(&old),
                store.listings_record(&root),
            )
        };
        // What a crash of the machine leaves: the right length, not the right bytes.
        let zeros = |path: &Path, len: usize| fs::write(path, vec![0u8; len]).expect("tear");
        zeros(&torn_path, torn_bytes.len());
        zeros(&old_path, old_bytes.len());
        let long_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        File::options()
            .write(true)
            .open(&old_path)
            .and_then(|f| f.set_modified(long_ago))
            .expect("age");

        // The same boot: the kernel had every byte, nothing is read back.
        assert!(on("boot-1").contains(&torn));

        let store = on("boot-2");
        assert!(store.contains(&whole));
        assert!(!store.contains(&torn), "a torn object is dropped");
        assert!(!torn_path.exists());
        assert!(
            store.contains(&old),
            "what the last flush reached is not read back"
        );
        assert!(!record.exists(), "a record written since is dropped");
        assert_eq!(store.load_snapshot("mega x /r"), None);
        assert_eq!(store.read(&whole).expect("read"), Some(whole_bytes));
    }

    #[test]
    fn a_size_whose_line_was_cut_short_is_not_believed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (oid, _) = blob("x");
        let (cut, _) = blob("y");
        fs::create_dir_all(dir.path()).expect("dir");
        let log = format!("{} 1\n{} 12", oid.to_hex(), cut.to_hex());
        fs::write(dir.path().join("sizes"), log).expect("log");
        let store = Store::open(dir.path(), 0).expect("open");
        assert_eq!(store.known_size(&oid), Some(1));
        assert_eq!(store.known_size(&cut), None, "12 may have been 123");
    }

    #[test]
    fn insert_then_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 0).expect("open");
        let (oid, bytes) = blob("content");
        assert!(!store.contains(&oid));
        assert_eq!(store.known_size(&oid), None);
        store.insert(&oid, &bytes).expect("insert");
        assert_eq!(store.read(&oid).expect("read"), Some(bytes));
        assert_eq!(store.known_size(&oid), Some(7));
        assert_eq!(
            fs::read_dir(dir.path().join("tmp")).expect("tmp").count(),
            0
        );
        assert_eq!(store.usage().objects, 1);
        assert_eq!(store.usage().bytes, 7);
    }

    #[test]
    fn streamed_objects_are_kept_only_whole_and_right() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 0).expect("open");
        let (oid, bytes) = blob("streamed in pieces");
        let mut pending = store.begin(Some(oid), bytes.len() as u64).expect("begin");
        for piece in bytes.chunks(5) {
            pending.write(piece).expect("write");
        }
        pending.commit().expect("commit");
        assert_eq!(store.read(&oid).expect("read"), Some(bytes.clone()));

        let (other, other_bytes) = blob("another one");
        let mut short = store
            .begin(Some(other), other_bytes.len() as u64)
            .expect("begin");
        short.write(&other_bytes[..4]).expect("write");
        assert!(matches!(short.commit(), Err(SinkError::Length { .. })));
        let mut wrong = store
            .begin(Some(other), other_bytes.len() as u64)
            .expect("begin");
        wrong.write(b"another 0ne").expect("write");
        assert!(matches!(wrong.commit(), Err(SinkError::Corrupt(_))));
        let mut long = store.begin(Some(other), 3).expect("begin");
        long.write(b"abc").expect("as announced");
        let err = long.write(b"d").expect_err("more than announced");
        assert!(
            err.to_string().contains("more bytes than the 3 announced"),
            "{err}"
        );
        drop(long);
        assert!(!store.contains(&other));
        assert_eq!(
            fs::read_dir(dir.path().join("tmp")).expect("tmp").count(),
            0,
            "no leftovers"
        );
    }

    #[test]
    fn an_object_bigger_than_the_cache_is_refused_before_a_byte() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 1000).expect("open");
        let (oid, _) = blob("x");
        let err = store.begin(Some(oid), 1001).err().expect("too big");
        assert!(
            err.to_string().contains("larger than the whole cache"),
            "{err}"
        );
        assert!(store.begin(Some(oid), 1000).is_ok());
    }

    #[test]
    fn open_removes_leftovers_and_distrusts_wrong_lengths() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (oid, bytes) = blob("twelve bytes");
        {
            let store = Store::open(dir.path(), 0).expect("open");
            store.insert(&oid, &bytes).expect("insert");
        }
        fs::write(dir.path().join("tmp").join("torn"), b"half").expect("write");
        let path = Store::open(dir.path(), 0).expect("open").path_of(&oid);
        fs::write(&path, b"twelve").expect("truncate");
        let store = Store::open(dir.path(), 0).expect("reopen");
        assert!(!dir.path().join("tmp").join("torn").exists());
        assert!(
            !store.contains(&oid),
            "a file shorter than its index is dropped"
        );
        assert!(!path.exists());
        assert_eq!(
            store.known_size(&oid),
            Some(12),
            "the size itself is still known"
        );
    }

    #[test]
    fn sizes_and_objects_survive_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (oid, bytes) = blob("x");
        let (other, _) = blob("never fetched");
        {
            let store = Store::open(dir.path(), 0).expect("open");
            store.insert(&oid, &bytes).expect("insert");
            store.record_size(&other, 13);
        }
        let store = Store::open(dir.path(), 0).expect("reopen");
        assert!(store.contains(&oid));
        assert_eq!(store.known_size(&other), Some(13));
    }

    #[test]
    fn listing_records_count_against_the_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = ObjectId::from_bytes([1; 20]);
        let trees = [ObjectId::from_bytes([2; 20]); 3];
        {
            let store = Store::open(dir.path(), 100).expect("open");
            store.append_listing_record(&root, &trees);
            assert_eq!(store.usage().bytes, 60);
        }
        // A torn last record (a crash mid-append) is trimmed, and the trim counted.
        let record = dir.path().join("listings").join(root.to_hex());
        let mut torn = std::fs::read(&record).expect("record");
        torn.extend_from_slice(b"torn");
        std::fs::write(&record, &torn).expect("tear");
        let store = Store::open(dir.path(), 100).expect("reopen");
        assert_eq!(store.usage().bytes, 64, "counted as found");
        assert_eq!(store.listing_record(&root), trees);
        assert_eq!(store.usage().bytes, 60);
        // Past the limit, the least recently used goes, record or object.
        let (oid, bytes) = blob(&"x".repeat(50));
        store.insert(&oid, &bytes).expect("insert");
        store.evict_to_limit();
        assert!(store.contains(&oid), "the newer object stays");
        assert!(
            store.listing_record(&root).is_empty(),
            "the older record went"
        );
        assert_eq!(store.usage().bytes, 50);
        store.append_listing_record(&root, &trees);
        assert_eq!(store.clear(), 110, "clear takes records too");
        assert!(!record.exists());
    }

    #[test]
    fn eviction_keeps_the_limit_and_spares_pinned_and_recent_objects() {
        let dir = tempfile::tempdir().expect("tempdir");
        // 150: the 180 bytes below stay under the inline (hard) limit of 150 + 150/4.
        let store = Arc::new(Store::open(dir.path(), 150).expect("open"));
        let objects: Vec<_> = (0..6).map(|i| blob(&format!("{i:0>30}"))).collect();
        let pinned = store.pin(&objects[0].0);
        for (oid, bytes) in &objects[..3] {
            store.insert(oid, bytes).expect("insert");
        }
        // Use object 1 again, so object 2 is now the least recently used unpinned one.
        assert!(store.read(&objects[1].0).expect("read").is_some());
        for (oid, bytes) in &objects[3..] {
            store.insert(oid, bytes).expect("insert");
        }
        assert_eq!(usage_bytes(&store), 180);
        // What gc would free is what it then frees.
        let preview = store.gc_would_free();
        assert!(preview > 0);
        assert_eq!(usage_bytes(&store), 180, "a preview evicts nothing");
        assert_eq!(store.evict_to_limit(), preview);
        assert_eq!(store.gc_would_free(), 0, "within the limit now");
        let usage = store.usage();
        assert!(usage.bytes <= 150, "{usage:?}");
        assert!(store.contains(&objects[0].0), "pinned survives");
        assert!(!store.contains(&objects[2].0), "least recently used goes");
        assert!(store.contains(&objects[5].0), "newest stays");
        drop(pinned);
        assert_eq!(store.clear(), usage.bytes);
        assert_eq!(store.usage().objects, 0);
    }
}
