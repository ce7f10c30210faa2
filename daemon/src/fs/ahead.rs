//! Listings ahead of a walk: when the kernel first reads a directory, the trees of its
//! subdirectories are brought close in the background (a cached one into the page cache, a
//! missing one fetched into the cache), so a walk going on into them finds them at hand
//! instead of waiting on a disk or a server for each in turn. Bounded: a few loads at once
//! per mount, the first subdirectories of a directory only, and a cap on directories waiting
//! their turn; what falls outside loads on demand. Works through the loader alone.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures::stream::{self, StreamExt};
use tokio::sync::Semaphore;
use tracing::{debug, Instrument};

use super::loader::Loader;
use crate::object::ObjectId;
use crate::repo_path::RepoPath;

/// Subdirectories loaded ahead for one directory, by default.
pub const DEFAULT_LOOK_AHEAD: usize = 64;

/// Listings loading at once, per mount.
const PARALLEL_LOADS: usize = 4;

/// Directories whose subdirectories wait to load. A walk that outruns the look-ahead gains
/// nothing from a longer queue, and a queue must not grow with the tree.
const MAX_WAITING: usize = 64;

pub(super) struct LookAhead {
    waiting: Arc<AtomicUsize>,
    loads: Arc<Semaphore>,
}

impl LookAhead {
    pub(super) fn new() -> Self {
        LookAhead {
            waiting: Arc::new(AtomicUsize::new(0)),
            loads: Arc::new(Semaphore::new(PARALLEL_LOADS)),
        }
    }

    /// Takes every load slot (for tests: loads then queue until it is dropped).
    #[cfg(test)]
    pub(super) async fn hold_every_slot(&self) -> tokio::sync::OwnedSemaphorePermit {
        let all = PARALLEL_LOADS as u32;
        let held = Arc::clone(&self.loads).acquire_many_owned(all).await;
        held.unwrap_or_else(|_| unreachable!("the semaphore is never closed"))
    }

    /// Brings the trees of `subdirs` (path, tree) of directory `dir` of mount `mount` close,
    /// in the background.
    pub(super) fn start(
        &self,
        loader: &Arc<Loader>,
        runtime: &tokio::runtime::Handle,
        subdirs: Vec<(RepoPath, ObjectId)>,
        mount: &str,
        dir: &RepoPath,
    ) {
        if self.waiting.fetch_add(1, Ordering::Relaxed) >= MAX_WAITING {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let span = tracing::info_span!("look_ahead", mount, %dir);
        // Weak: a mount that goes away takes its look-ahead with it.
        let loader = Arc::downgrade(loader);
        let (waiting, loads) = (self.waiting.clone(), self.loads.clone());
        runtime.spawn(
            async move {
                stream::iter(subdirs)
                    .for_each_concurrent(None, |(path, oid)| {
                        let (loader, loads) = (loader.clone(), loads.clone());
                        async move {
                            // The slot first, then the mount: one that went away while this
                            // waited is not kept alive by the queue.
                            let Ok(_slot) = loads.acquire_owned().await else {
                                return;
                            };
                            if let Some(loader) = loader.upgrade() {
                                load(&loader, &path, oid).await;
                            }
                        }
                    })
                    .await;
                waiting.fetch_sub(1, Ordering::Relaxed);
            }
            .instrument(span),
        );
    }
}

/// Brings tree `oid` (at `path`) close: a cached one is read into the page cache by the
/// kernel (off the runtime's threads: opening it may wait on the disk), which is all a
/// demand load then lacks; a missing one is fetched into the cache.
async fn load(loader: &Arc<Loader>, path: &RepoPath, oid: ObjectId) {
    if loader.tree_in_memory(&oid) {
        return;
    }
    if loader.contains(&oid) {
        let loader = Arc::clone(loader);
        let _ = tokio::task::spawn_blocking(move || loader.warm(&oid)).await;
        return;
    }
    // A failure is logged by the loader; the demand load reports it to whoever asks.
    if let Err(error) = loader.fetch_tree(path, oid).await {
        debug!(%path, %error, "look-ahead failed");
    }
}
