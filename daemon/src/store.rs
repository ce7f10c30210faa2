//! The content-addressed object cache on disk, shared by every mount of the daemon.
//!
//! Layout under the cache dir: `objects/ab/cdef…` holds verified objects by id (trees and blobs
//! alike: their ids never collide), `tmp/` holds objects being written. An object is written to
//! `tmp/`, flushed, then renamed into place, so a crash leaves either no object or a whole one.
//! Callers verify bytes against their id before inserting them.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::object::ObjectId;

#[derive(Debug, thiserror::Error)]
#[error("cache at {path}: {source}")]
pub struct StoreError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

pub struct Store {
    objects: PathBuf,
    tmp: PathBuf,
    /// Blob sizes learnt without fetching content, by id (a blob's size never changes).
    sizes: Mutex<HashMap<ObjectId, u64>>,
    next_tmp: AtomicU64,
}

impl Store {
    /// Opens (creating if needed) the cache under `dir` and removes temporaries a crashed
    /// predecessor left behind.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let objects = dir.join("objects");
        let tmp = dir.join("tmp");
        for d in [&objects, &tmp] {
            fs::create_dir_all(d).map_err(|source| StoreError {
                path: d.clone(),
                source,
            })?;
        }
        if let Ok(leftovers) = fs::read_dir(&tmp) {
            for entry in leftovers.flatten() {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(Store {
            objects,
            tmp,
            sizes: Mutex::new(HashMap::new()),
            next_tmp: AtomicU64::new(0),
        })
    }

    /// Where the object `oid` lives once cached.
    pub fn path_of(&self, oid: &ObjectId) -> PathBuf {
        let hex = oid.to_hex();
        self.objects.join(&hex[..2]).join(&hex[2..])
    }

    pub fn contains(&self, oid: &ObjectId) -> bool {
        self.path_of(oid).is_file()
    }

    /// The whole object, if cached.
    pub fn read(&self, oid: &ObjectId) -> io::Result<Option<Vec<u8>>> {
        match fs::read(self.path_of(oid)) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// An open handle on the cached object, if cached.
    pub fn open_object(&self, oid: &ObjectId) -> io::Result<Option<File>> {
        match File::open(self.path_of(oid)) {
            Ok(file) => Ok(Some(file)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Stores verified bytes under `oid`, atomically.
    pub fn insert(&self, oid: &ObjectId, bytes: &[u8]) -> io::Result<()> {
        let final_path = self.path_of(oid);
        if final_path.is_file() {
            return Ok(());
        }
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
        }
        self.record_size(oid, bytes.len() as u64);
        result
    }

    /// The size of blob `oid` if known, from a previous size query or its cached content.
    pub fn known_size(&self, oid: &ObjectId) -> Option<u64> {
        if let Some(size) = self.lock_sizes().get(oid) {
            return Some(*size);
        }
        let size = fs::metadata(self.path_of(oid)).ok()?.len();
        self.record_size(oid, size);
        Some(size)
    }

    pub fn record_size(&self, oid: &ObjectId, size: u64) {
        self.lock_sizes().insert(*oid, size);
    }

    fn lock_sizes(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectId, u64>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.sizes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object::ObjectKind;

    #[test]
    fn insert_then_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let oid = ObjectId::hash(ObjectKind::Blob, b"content");
        assert!(!store.contains(&oid));
        assert_eq!(store.known_size(&oid), None);
        store.insert(&oid, b"content").expect("insert");
        assert_eq!(store.read(&oid).expect("read"), Some(b"content".to_vec()));
        assert_eq!(store.known_size(&oid), Some(7));
        // Nothing is left in tmp/.
        assert_eq!(
            fs::read_dir(dir.path().join("tmp")).expect("tmp").count(),
            0
        );
    }

    #[test]
    fn open_removes_leftover_temporaries() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(Store::open(dir.path()).expect("open"));
        fs::write(dir.path().join("tmp").join("torn"), b"half").expect("write");
        let _store = Store::open(dir.path()).expect("reopen");
        assert!(!dir.path().join("tmp").join("torn").exists());
    }

    #[test]
    fn a_new_store_sees_cached_objects() {
        let dir = tempfile::tempdir().expect("tempdir");
        let oid = ObjectId::hash(ObjectKind::Blob, b"x");
        Store::open(dir.path())
            .expect("open")
            .insert(&oid, b"x")
            .expect("insert");
        let store = Store::open(dir.path()).expect("reopen");
        assert_eq!(store.known_size(&oid), Some(1));
    }
}
