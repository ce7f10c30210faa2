//! The content-addressed object cache on disk, shared by every mount of the daemon.
//!
//! Layout under the cache dir: `objects/ab/cdef…` holds verified objects by id (trees and blobs
//! alike: their ids never collide); `tmp/` holds objects being written; `sizes` is an
//! append-only log of known object sizes (`<hex id> <size>` lines), so sizes learnt without
//! content survive restarts. An object is written to `tmp/`, flushed, then renamed into place,
//! so a crash leaves either no object or a whole one; on open, leftovers in `tmp/` are removed
//! and an object whose length disagrees with the size log is dropped.
//!
//! The cache is bounded: past its limit, the least recently used objects that nobody has
//! pinned (an open file, a read under way) are evicted. Callers verify bytes against their id
//! before inserting them.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tracing::{info, warn};

use crate::object::{ObjectError, ObjectHasher, ObjectId, ObjectKind};

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

#[derive(Default)]
struct Index {
    /// Objects on disk.
    cached: HashMap<ObjectId, Entry>,
    /// Every size known, cached or not (a blob's size never changes).
    sizes: HashMap<ObjectId, u64>,
    /// Pins of objects not cached yet (an open file whose content is still to come).
    early_pins: HashMap<ObjectId, u32>,
    bytes: u64,
    clock: u64,
}

impl Index {
    fn touch(&mut self, oid: &ObjectId) -> bool {
        self.clock += 1;
        let clock = self.clock;
        match self.cached.get_mut(oid) {
            Some(entry) => {
                entry.last_used = clock;
                true
            }
            None => false,
        }
    }
}

pub struct Store {
    objects: PathBuf,
    /// What each source last resolved to, for mounting while it is unreachable.
    snapshots: PathBuf,
    /// Per root tree, the trees its mounts listed, in order (see `fs::recall`).
    listings: PathBuf,
    tmp: PathBuf,
    index: Mutex<Index>,
    sizes_log: Mutex<File>,
    limit: AtomicU64,
    next_tmp: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    evicted: AtomicU64,
}

/// An object being written as it arrives: hashed on the way, renamed into place only if it is
/// whole and hashes to its id. Dropped unfinished, it leaves nothing behind.
pub struct PendingObject {
    /// The id it must hash to; None: whatever it hashes to (a pack entry, named by its bytes).
    oid: Option<ObjectId>,
    expected_len: u64,
    written: u64,
    hasher: Option<ObjectHasher>,
    file: File,
    tmp_path: Option<PathBuf>,
}

impl PendingObject {
    /// Refuses bytes beyond the announced length at once: a server sending more than it
    /// said must not fill the disk before the length is checked at the end.
    pub fn write(&mut self, chunk: &[u8]) -> io::Result<()> {
        if self.written + chunk.len() as u64 > self.expected_len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "more bytes than the {} announced for this object",
                    self.expected_len
                ),
            ));
        }
        self.written += chunk.len() as u64;
        if let Some(hasher) = self.hasher.as_mut() {
            hasher.update(chunk);
        }
        self.file.write_all(chunk)
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The file being written, opened again for reading (it stays readable through the rename
    /// that keeps it).
    pub fn reader(&self) -> io::Result<File> {
        match &self.tmp_path {
            Some(path) => File::open(path),
            None => Err(io::Error::other("the object is no longer being written")),
        }
    }
}

impl Drop for PendingObject {
    fn drop(&mut self) {
        if let Some(path) = self.tmp_path.take() {
            let _ = fs::remove_file(path);
        }
    }
}

/// Why a streamed object was not kept.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Corrupt(ObjectError),
    #[error("expected {expected} bytes, received {received}")]
    Length { expected: u64, received: u64 },
}

/// Keeps an object from eviction while alive.
pub struct Pin {
    store: Arc<Store>,
    oid: ObjectId,
}

impl Drop for Pin {
    fn drop(&mut self) {
        self.store.unpin(&self.oid);
    }
}

impl Store {
    /// Opens (creating if needed) the cache under `dir`, bounded to `limit` bytes (0: none).
    pub fn open(dir: &Path, limit: u64) -> Result<Store, StoreError> {
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
        if let Ok(leftovers) = fs::read_dir(&tmp) {
            for entry in leftovers.flatten() {
                let _ = fs::remove_file(entry.path());
            }
        }
        let log_path = dir.join("sizes");
        let mut index = Index {
            sizes: read_sizes(&log_path),
            ..Index::default()
        };
        scan_objects(&objects, &mut index);
        let sizes_log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(err(&log_path))?;
        Ok(Store {
            objects,
            snapshots,
            listings,
            tmp,
            index: Mutex::new(index),
            sizes_log: Mutex::new(sizes_log),
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
        if !self.lock().touch(oid) {
            return Ok(None);
        }
        match fs::read(self.path_of(oid)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.forget(oid);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// An open handle on the cached object, if cached; counts a hit or a miss.
    pub fn open_object(&self, oid: &ObjectId) -> io::Result<Option<File>> {
        if !self.lock().touch(oid) {
            self.misses.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        }
        match File::open(self.path_of(oid)) {
            Ok(file) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Ok(Some(file))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.forget(oid);
                self.misses.fetch_add(1, Ordering::Relaxed);
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
        if self.lock().touch(oid) {
            return Ok(());
        }
        let final_path = self.path_of(oid);
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        let tmp_path = self
            .tmp
            .join(format!("{}.{}.{n}", oid.to_hex(), std::process::id()));
        let result = (|| {
            let mut file = File::create(&tmp_path)?;
            file.write_all(bytes)?;
            file.sync_data()?;
            if let Some(parent) = final_path.parent() {
                fs::create_dir_all(parent)?;
            }
            fs::rename(&tmp_path, &final_path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp_path);
            return result;
        }
        // Eviction runs in the background; only a cache far over its limit waits for it.
        self.admit(oid, bytes.len() as u64);
        Ok(())
    }

    /// Starts writing blob `oid` of `len` bytes as it arrives (see [`PendingObject`]).
    pub fn begin(&self, oid: &ObjectId, len: u64) -> io::Result<PendingObject> {
        self.begin_as(Some(*oid), len)
    }

    /// Starts writing a blob of `len` bytes whose id is whatever its bytes hash to.
    pub fn begin_unnamed(&self, len: u64) -> io::Result<PendingObject> {
        self.begin_as(None, len)
    }

    fn begin_as(&self, oid: Option<ObjectId>, len: u64) -> io::Result<PendingObject> {
        let limit = self.limit();
        if limit > 0 && len > limit {
            // It could never stay, and a server's word on a size must not fill the disk.
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("an object of {len} bytes is larger than the whole cache ({limit} bytes)"),
            ));
        }
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        let name = oid.map_or_else(|| "unnamed".to_string(), |oid| oid.to_hex());
        let tmp_path = self.tmp.join(format!("{name}.{}.{n}", std::process::id()));
        let file = File::create(&tmp_path)?;
        Ok(PendingObject {
            oid,
            expected_len: len,
            written: 0,
            hasher: Some(ObjectHasher::new(ObjectKind::Blob, len)),
            file,
            tmp_path: Some(tmp_path),
        })
    }

    /// Keeps a fully written object if it is whole and hashes to its id; returns the id.
    pub fn commit(&self, mut pending: PendingObject) -> Result<ObjectId, CommitError> {
        if pending.written != pending.expected_len {
            return Err(CommitError::Length {
                expected: pending.expected_len,
                received: pending.written,
            });
        }
        let hasher = pending
            .hasher
            .take()
            .ok_or_else(|| io::Error::other("an object committed twice"))?;
        let actual = hasher.finish();
        if let Some(expected) = pending.oid.filter(|&expected| expected != actual) {
            return Err(CommitError::Corrupt(ObjectError::Mismatch {
                kind: ObjectKind::Blob,
                expected,
                actual,
            }));
        }
        pending.file.sync_data()?;
        let final_path = self.path_of(&actual);
        if let Some(parent) = final_path.parent() {
            fs::create_dir_all(parent)?;
        }
        if let Some(tmp_path) = pending.tmp_path.take() {
            if let Err(e) = fs::rename(&tmp_path, &final_path) {
                let _ = fs::remove_file(&tmp_path);
                return Err(e.into());
            }
        }
        self.record_size(&actual, pending.written);
        self.admit(&actual, pending.written);
        Ok(actual)
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

    /// Remembers a size, on disk too, so a restart need not ask again.
    pub fn record_size(&self, oid: &ObjectId, size: u64) {
        let new = self.lock().sizes.insert(*oid, size).is_none();
        if new {
            let mut log = self.sizes_log.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = writeln!(log, "{} {size}", oid.to_hex()) {
                warn!(error = %e, "cannot record a size in the cache");
            }
        }
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

    /// Removes every unpinned object, and the listing records. Returns bytes freed.
    pub fn clear(&self) -> u64 {
        if let Ok(records) = fs::read_dir(&self.listings) {
            for record in records.flatten() {
                let _ = fs::remove_file(record.path());
            }
        }
        self.evict_down_to(0)
    }

    fn evict_down_to(&self, target: u64) -> u64 {
        let victims: Vec<(ObjectId, u64)> = {
            let index = self.lock();
            let mut candidates: Vec<_> = index
                .cached
                .iter()
                .filter(|(_, e)| e.pins == 0)
                .map(|(oid, e)| (e.last_used, *oid, e.size))
                .collect();
            candidates.sort_unstable();
            let mut excess = index.bytes.saturating_sub(target);
            candidates
                .into_iter()
                .take_while(|(_, _, size)| {
                    let take = excess > 0;
                    excess = excess.saturating_sub(*size);
                    take
                })
                .map(|(_, oid, size)| (oid, size))
                .collect()
        };
        let mut freed = 0;
        for (oid, size) in victims {
            let mut index = self.lock();
            // Pinned (or used) since we chose it: keep it.
            if index.cached.get(&oid).is_none_or(|e| e.pins != 0) {
                continue;
            }
            match fs::remove_file(self.path_of(&oid)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    warn!(%oid, error = %e, "cannot evict a cached object");
                    continue;
                }
            }
            index.cached.remove(&oid);
            index.bytes -= size;
            freed += size;
            self.evicted.fetch_add(1, Ordering::Relaxed);
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

    /// Remembers what `source` (a source's description) resolved to: commit, root tree and
    /// commit time, one line, written atomically.
    pub fn save_snapshot(&self, source: &str, commit: &ObjectId, tree: &ObjectId, time: i64) {
        let path = self.snapshot_path(source);
        let tmp = path.with_extension("tmp");
        let text = format!("{commit} {tree} {time}\n");
        if let Err(e) = fs::write(&tmp, text).and_then(|()| fs::rename(&tmp, &path)) {
            warn!(error = %e, "cannot remember a source's commit");
        }
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

/// Reads the size log; a torn last line (a crash mid-write) is skipped.
fn read_sizes(path: &Path) -> HashMap<ObjectId, u64> {
    let mut sizes = HashMap::new();
    let Ok(file) = File::open(path) else {
        return sizes;
    };
    for line in io::BufReader::new(file).lines().map_while(Result::ok) {
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

/// Indexes the objects on disk, oldest first, dropping any whose length disagrees with the
/// size log (a torn or tampered file) and anything that is not an object.
fn scan_objects(objects: &Path, index: &mut Index) {
    let mut found = Vec::new();
    for shard in fs::read_dir(objects).into_iter().flatten().flatten() {
        let prefix = shard.file_name().to_string_lossy().into_owned();
        for file in fs::read_dir(shard.path()).into_iter().flatten().flatten() {
            let name = file.file_name().to_string_lossy().into_owned();
            let Ok(meta) = file.metadata() else { continue };
            let oid = ObjectId::from_hex(&format!("{prefix}{name}"));
            let trusted = match &oid {
                Ok(oid) => index.sizes.get(oid).is_none_or(|&s| s == meta.len()),
                Err(_) => false,
            };
            if !trusted || !meta.is_file() {
                warn!(path = %file.path().display(), "dropping a cached object that does not match its index");
                let _ = fs::remove_file(file.path());
                continue;
            }
            if let Ok(oid) = oid {
                let mtime = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
                found.push((mtime, oid, meta.len()));
            }
        }
    }
    // Oldest first, so the clock orders them as least recently used.
    found.sort();
    for (_, oid, size) in found {
        index.clock += 1;
        index.bytes += size;
        index.sizes.entry(oid).or_insert(size);
        index.cached.insert(
            oid,
            Entry {
                size,
                last_used: index.clock,
                pins: 0,
            },
        );
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
        let mut pending = store.begin(&oid, bytes.len() as u64).expect("begin");
        for piece in bytes.chunks(5) {
            pending.write(piece).expect("write");
        }
        store.commit(pending).expect("commit");
        assert_eq!(store.read(&oid).expect("read"), Some(bytes.clone()));

        let (other, other_bytes) = blob("another one");
        let mut short = store
            .begin(&other, other_bytes.len() as u64)
            .expect("begin");
        short.write(&other_bytes[..4]).expect("write");
        assert!(matches!(
            store.commit(short),
            Err(CommitError::Length { .. })
        ));
        let mut wrong = store
            .begin(&other, other_bytes.len() as u64)
            .expect("begin");
        wrong.write(b"another 0ne").expect("write");
        assert!(matches!(store.commit(wrong), Err(CommitError::Corrupt(_))));
        let mut long = store.begin(&other, 3).expect("begin");
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
        let err = store.begin(&oid, 1001).err().expect("too big");
        assert!(
            err.to_string().contains("larger than the whole cache"),
            "{err}"
        );
        assert!(store.begin(&oid, 1000).is_ok());
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
        assert_eq!(store.usage().bytes, 180);
        store.evict_to_limit();
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
