//! What earlier mounts of the same commit listed, recalled. Every tree a mount lists is
//! recorded (its id, appended to a file per root tree in the cache). When the kernel first
//! reads the root of a later mount of that commit (after a remount, a restart, a reboot), the
//! recorded trees are read from the cache in the background, many at once and in the order
//! they were first listed: a walk then finds them in memory instead of waiting on the disk
//! for one directory after another, which is what a native walk of a cold disk does.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::stream::{self, StreamExt};
use tracing::debug;

use super::MountFs;
use crate::object::ObjectId;
use crate::store::Store;

/// Reads from the cache at once while recalling.
const PARALLEL_READS: usize = 16;

/// Trees recorded per commit at most (20 bytes each): a bound on the record and its set.
const MAX_RECORDED: usize = 1 << 20;

pub(super) struct Recall {
    path: PathBuf,
    /// Trees recorded so far, so each is recorded once.
    recorded: Mutex<HashSet<ObjectId>>,
    /// The record as it was at mount, in order, until recalled.
    earlier: Mutex<Vec<ObjectId>>,
    file: Mutex<Option<File>>,
    started: AtomicBool,
    /// Trees read back so far.
    pub(super) recalled: Arc<AtomicU64>,
}

impl Recall {
    /// The record of root tree `root`, read (it may not exist yet).
    pub(super) fn open(store: &Store, root: &ObjectId) -> Recall {
        let path = store.listings_record(root);
        let mut bytes = std::fs::read(&path).unwrap_or_default();
        let whole = bytes.len() - bytes.len() % 20;
        if whole != bytes.len() {
            // A torn last record (a crash mid-append) would misalign every one after it.
            bytes.truncate(whole);
            let trimmed = OpenOptions::new().write(true).open(&path);
            if let Err(e) = trimmed.and_then(|f| f.set_len(whole as u64)) {
                debug!(error = %e, path = %path.display(), "cannot trim a torn record");
            }
        }
        let mut recorded = HashSet::new();
        let earlier: Vec<ObjectId> = bytes
            .chunks_exact(20)
            .filter_map(|raw| {
                let mut id = [0u8; 20];
                id.copy_from_slice(raw);
                recorded
                    .insert(ObjectId::from_bytes(id))
                    .then_some(ObjectId::from_bytes(id))
            })
            .collect();
        Recall {
            path,
            recorded: Mutex::new(recorded),
            earlier: Mutex::new(earlier),
            file: Mutex::new(None),
            started: AtomicBool::new(false),
            recalled: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Records that tree `oid` was listed, unless it is already.
    pub(super) fn record(&self, oid: &ObjectId) {
        {
            let mut recorded = self.recorded.lock().unwrap_or_else(|p| p.into_inner());
            if recorded.len() >= MAX_RECORDED || !recorded.insert(*oid) {
                return;
            }
        }
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if file.is_none() {
            *file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .ok();
        }
        // A record is a help, not a need: a failure to write one costs only speed later.
        if let Some(Err(e)) = file.as_mut().map(|f| f.write_all(oid.as_bytes())) {
            debug!(error = %e, path = %self.path.display(), "cannot record a listing");
        }
    }
}

impl MountFs {
    /// The record of the root tree shown.
    pub(super) fn recall(&self) -> Arc<Recall> {
        Arc::clone(&self.recall.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Reads the trees earlier mounts of this commit listed into memory, in the background,
    /// once (when the kernel first reads the root).
    pub(super) fn recall_listings(self: &Arc<Self>) {
        let recall = self.recall();
        if recall.started.swap(true, Ordering::Relaxed) {
            return;
        }
        let earlier =
            std::mem::take(&mut *recall.earlier.lock().unwrap_or_else(|p| p.into_inner()));
        if earlier.is_empty() {
            return;
        }
        let store = Arc::clone(&self.store);
        let recalled = Arc::clone(&recall.recalled);
        self.runtime.spawn(async move {
            stream::iter(earlier)
                .for_each_concurrent(PARALLEL_READS, |oid| {
                    let store = Arc::clone(&store);
                    let recalled = Arc::clone(&recalled);
                    async move {
                        // Off the runtime's threads: each may wait on the disk.
                        let _ = tokio::task::spawn_blocking(move || {
                            if let Ok(Some(_)) = store.read(&oid) {
                                recalled.fetch_add(1, Ordering::Relaxed);
                            }
                        })
                        .await;
                    }
                })
                .await;
            debug!(
                trees = recalled.load(Ordering::Relaxed),
                "recalled earlier listings"
            );
        });
    }
}
