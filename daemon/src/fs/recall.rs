//! What earlier mounts of the same commit listed, recalled. Every tree a mount lists is
//! recorded (its id, appended to a record per root tree in the cache). When the kernel first
//! reads the root of a later mount of that commit (after a remount, a restart, a reboot), the
//! recorded trees are brought into the page cache in the background, many at once and in the
//! order they were first listed: a walk then finds them in memory instead of waiting on the
//! disk for one directory after another, which is what a native walk of a cold disk does.
//! Records are read and written on blocking threads, never on a thread that answers requests.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::stream::{self, StreamExt};
use tracing::{debug, Instrument};

use super::loader::Loader;
use crate::object::ObjectId;

/// Trees warmed at once while recalling.
const PARALLEL_READS: usize = 16;

/// Trees recorded per commit at most (20 bytes each): a bound on the record and its set.
const MAX_RECORDED: usize = 1 << 20;

pub(super) struct Recall {
    loader: Arc<Loader>,
    root: ObjectId,
    runtime: tokio::runtime::Handle,
    /// Trees recorded so far, so each is recorded once.
    recorded: Mutex<HashSet<ObjectId>>,
    /// The record as it was at mount, in order, until recalled.
    earlier: Mutex<Vec<ObjectId>>,
    /// Trees listed and not yet appended to the record.
    unwritten: Mutex<Vec<ObjectId>>,
    started: AtomicBool,
    /// Trees brought close so far.
    pub(super) recalled: Arc<AtomicU64>,
}

impl Recall {
    /// The record of root tree `root`, read (it may not exist yet).
    pub(super) async fn open(loader: &Arc<Loader>, root: ObjectId) -> Arc<Recall> {
        let reader = Arc::clone(loader);
        let record = tokio::task::spawn_blocking(move || reader.listing_record(&root))
            .await
            .unwrap_or_default();
        let mut recorded = HashSet::new();
        let earlier: Vec<ObjectId> = record
            .into_iter()
            .filter(|oid| recorded.insert(*oid))
            .collect();
        Arc::new(Recall {
            loader: Arc::clone(loader),
            root,
            runtime: tokio::runtime::Handle::current(),
            recorded: Mutex::new(recorded),
            earlier: Mutex::new(earlier),
            unwritten: Mutex::new(Vec::new()),
            started: AtomicBool::new(false),
            recalled: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Records that tree `oid` was listed, unless it is already. The record is written in
    /// the background: this may be called on a thread answering the kernel.
    pub(super) fn record(self: &Arc<Self>, oid: ObjectId) {
        {
            let mut recorded = lock(&self.recorded);
            if recorded.len() >= MAX_RECORDED || !recorded.insert(oid) {
                return;
            }
        }
        let first = {
            let mut unwritten = lock(&self.unwritten);
            unwritten.push(oid);
            unwritten.len() == 1
        };
        if first {
            let this = Arc::clone(self);
            self.runtime.spawn_blocking(move || this.write_unwritten());
        }
    }

    /// Appends what was recorded since the last write.
    fn write_unwritten(&self) {
        let trees = std::mem::take(&mut *lock(&self.unwritten));
        if !trees.is_empty() {
            self.loader.record_listings(&self.root, &trees);
        }
    }

    /// Brings the trees earlier mounts of this commit listed into the page cache, in the
    /// background, once (when the kernel first reads the root of mount `mount`).
    pub(super) fn start(&self, mount: &str) {
        if self.started.swap(true, Ordering::Relaxed) {
            return;
        }
        let earlier = std::mem::take(&mut *lock(&self.earlier));
        if earlier.is_empty() {
            return;
        }
        // Weak: a mount that goes away stops its recall.
        let loader = Arc::downgrade(&self.loader);
        let recalled = Arc::clone(&self.recalled);
        let span = tracing::info_span!("recall", mount, trees = earlier.len());
        self.runtime.spawn(
            async move {
                stream::iter(earlier)
                    .for_each_concurrent(PARALLEL_READS, |oid| {
                        let (loader, recalled) = (loader.clone(), Arc::clone(&recalled));
                        async move {
                            let Some(loader) = loader.upgrade() else {
                                return;
                            };
                            // Off the runtime's threads: opening each may wait on the disk.
                            let warmed = tokio::task::spawn_blocking(move || loader.warm(&oid));
                            if let Ok(true) = warmed.await {
                                recalled.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    })
                    .await;
                debug!(
                    trees = recalled.load(Ordering::Relaxed),
                    "recalled earlier listings"
                );
            }
            .instrument(span),
        );
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
