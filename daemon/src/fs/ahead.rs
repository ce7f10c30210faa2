//! Listings ahead of a walk: when the kernel first reads a directory, the listings of its
//! subdirectories load in the background (from the cache, else from the source), so a walk
//! going on into them finds them at hand instead of waiting on a disk or a server for each in
//! turn. Bounded: a few loads at once per mount, the first subdirectories of a directory
//! only, and a cap on directories waiting their turn; what falls outside loads on demand.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures::stream::{self, StreamExt};
use tokio::sync::Semaphore;
use tracing::debug;

use super::inode::Listing;
use super::MountFs;
use crate::object::{EntryKind, ObjectId};

/// Subdirectories loaded ahead for one directory, by default.
pub const DEFAULT_LOOK_AHEAD: usize = 64;

/// Listings loading at once, per mount.
const PARALLEL_LOADS: usize = 4;

/// Directories whose subdirectories wait to load. A walk that outruns the look-ahead gains
/// nothing from a longer queue, and a queue must not grow with the tree.
const MAX_WAITING: usize = 64;

pub(super) struct LookAhead {
    waiting: AtomicUsize,
    loads: Semaphore,
}

impl LookAhead {
    pub(super) fn new() -> Self {
        LookAhead {
            waiting: AtomicUsize::new(0),
            loads: Semaphore::new(PARALLEL_LOADS),
        }
    }
}

impl MountFs {
    /// Starts loading the listings of `dir`'s first subdirectories, once per listing of `dir`
    /// (which the kernel has just read).
    pub(super) fn look_ahead(self: &Arc<Self>, dir: u64, listing: &Listing) {
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
        if self.ahead.waiting.fetch_add(1, Ordering::Relaxed) >= MAX_WAITING {
            self.ahead.waiting.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        // Weak: a mount that goes away takes its look-ahead with it.
        let mount = Arc::downgrade(self);
        self.runtime.spawn(async move {
            stream::iter(subdirs)
                .for_each_concurrent(None, |(name, oid)| {
                    let mount = mount.clone();
                    async move {
                        if let Some(fs) = mount.upgrade() {
                            fs.load_ahead(dir, &name, oid).await;
                        }
                    }
                })
                .await;
            if let Some(fs) = mount.upgrade() {
                fs.ahead.waiting.fetch_sub(1, Ordering::Relaxed);
            }
        });
    }

    /// Brings the tree `oid` of subdirectory `name` of `dir` close: a cached tree is read into
    /// the page cache (off the runtime's threads: it may wait on the disk), which is all a
    /// demand load then lacks; a missing one is fetched and its listing loaded.
    async fn load_ahead(self: Arc<Self>, dir: u64, name: &[u8], oid: ObjectId) {
        let Ok(_permit) = self.ahead.loads.acquire().await else {
            return;
        };
        if self.store.contains(&oid) {
            let store = Arc::clone(&self.store);
            let _ = tokio::task::spawn_blocking(move || store.read(&oid)).await;
            return;
        }
        let Some(ino) = self.write_inodes().node_for(dir, name) else {
            return;
        };
        // Failures are the demand load's to report, with the request that wants it.
        if let Err(error) = self.listing(ino).await {
            debug!(dir, name = %String::from_utf8_lossy(name), %error, "look-ahead failed");
        }
    }
}
