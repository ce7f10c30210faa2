//! Files ahead of a walk that reads, where each file costs a request of its own (Mega): from
//! the directory a walk (`grep -r`) has entered, a depth-first pass in the walk's own order
//! fetches each directory's tree, then its files' sizes and contents, and keeps up to
//! [`AHEAD`] directories-and-files ahead of the walk: the walk finds its next directories
//! listed and their files cached instead of waiting on a round of requests in each. The pass
//! moves on as the walk does; a walk found somewhere it did not expect starts a new pass
//! there. Trees of the directories just reached are fetched several at once, and several
//! directories' files at once. Works through the loader alone; what the pass starts runs to
//! its end (the loader's fetches are shared with the walk's own requests), so stopping a
//! pass loses nothing.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{watch, Semaphore};
use tracing::{debug, Instrument};

use super::loader::Loader;
use crate::object::{EntryKind, ObjectId};
use crate::repo_path::RepoPath;

/// How far ahead of the walk the pass goes, in directories and files (one each).
const AHEAD: u64 = 2048;

/// Files being fetched at once, over all the directories of a pass.
const FILES_AT_ONCE: usize = 32;

/// Trees fetched at once ahead of the pass, how many of a directory's subdirectories start
/// theirs when it is reached, and how many may wait their turn in all (past that, the pass
/// fetches a tree when it gets there).
const TREES_AT_ONCE: usize = 8;
const TREES_PER_DIRECTORY: usize = 64;
const TREES_QUEUED: usize = 512;

/// The pass under way for a mount, if any.
pub(super) struct WalkAhead {
    pass: Mutex<Option<Pass>>,
    /// Files up to this size come whole; a bigger one's content is read as it arrives.
    up_to: u64,
}

/// A pass: where it has been, and how far it may go.
struct Pass {
    reached: Arc<Mutex<Reached>>,
    allowed: watch::Sender<u64>,
    task: tokio::task::AbortHandle,
}

/// The directories a pass reached, in order, each with its position (directories and files
/// before it): the recent ones only, so that a long walk does not grow it.
#[derive(Default)]
struct Reached {
    positions: HashMap<(RepoPath, ObjectId), u64>,
    order: VecDeque<((RepoPath, ObjectId), u64)>,
}

impl Reached {
    fn add(&mut self, dir: (RepoPath, ObjectId), position: u64) {
        self.positions.insert(dir.clone(), position);
        self.order.push_back((dir, position));
    }

    /// Forgets the directories more than [`AHEAD`] behind `position`.
    fn forget_before(&mut self, position: u64) {
        while let Some((dir, at)) = self.order.front() {
            if at + AHEAD >= position {
                break;
            }
            self.positions.remove(dir);
            self.order.pop_front();
        }
    }
}

impl Drop for WalkAhead {
    fn drop(&mut self) {
        if let Some(pass) = self.lock().take() {
            pass.task.abort();
        }
    }
}

impl WalkAhead {
    /// Passes that fetch files of up to `up_to` bytes whole (the bigger ones sized only).
    pub(super) fn new(up_to: u64) -> Self {
        WalkAhead {
            pass: Mutex::new(None),
            up_to,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Pass>> {
        self.pass.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The walk entered directory `dir` (path, tree): the pass goes on to [`AHEAD`] past it,
    /// or, where the pass has not been there, a new one starts from it, going on through
    /// the directories `after` gives (those a depth-first walk reaches after `dir`'s own).
    pub(super) fn entered(
        &self,
        loader: &Arc<Loader>,
        runtime: &tokio::runtime::Handle,
        dir: (RepoPath, ObjectId),
        after: impl FnOnce() -> Vec<(RepoPath, ObjectId)>,
        mount: &str,
    ) {
        let mut current = self.lock();
        if let Some(pass) = current.as_ref() {
            let mut reached = pass.reached.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(&position) = reached.positions.get(&dir) {
                reached.forget_before(position);
                pass.allowed.send_if_modified(|allowed| {
                    let further = position + AHEAD > *allowed;
                    *allowed = (*allowed).max(position + AHEAD);
                    further
                });
                return;
            }
            drop(reached);
            pass.task.abort();
        }
        let span = tracing::info_span!("walk_ahead", mount, dir = %dir.0);
        let mut roots = vec![dir];
        roots.extend(after());
        let reached = Arc::new(Mutex::new(Reached::default()));
        let (allowed, watched) = watch::channel(AHEAD);
        let work = run(
            Arc::downgrade(loader),
            roots,
            self.up_to,
            Arc::clone(&reached),
            watched,
        );
        let task = runtime.spawn(work.instrument(span)).abort_handle();
        *current = Some(Pass {
            reached,
            allowed,
            task,
        });
    }
}

/// The pass itself: depth-first from `roots`, in order, never past what `allowed` says.
async fn run(
    loader: Weak<Loader>,
    roots: Vec<(RepoPath, ObjectId)>,
    up_to: u64,
    reached: Arc<Mutex<Reached>>,
    mut allowed: watch::Receiver<u64>,
) {
    let files_slots = Arc::new(Semaphore::new(FILES_AT_ONCE));
    let tree_slots = Arc::new(Semaphore::new(TREES_AT_ONCE));
    let trees_queued = Arc::new(AtomicUsize::new(0));
    let mut to_visit: Vec<(RepoPath, ObjectId)> = roots.into_iter().rev().collect();
    let mut position = 0;
    while let Some((path, tree)) = to_visit.pop() {
        if allowed.wait_for(|&a| position <= a).await.is_err() {
            return;
        }
        // A mount that goes away takes its pass with it.
        let Some(loader) = loader.upgrade() else {
            return;
        };
        reached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add((path.clone(), tree), position);
        let entries = match loader.entries_uncounted(&path, tree).await {
            Ok(entries) => entries,
            Err(error) => {
                // The walk's own request reports it. The next would most likely fail too, each
                // after its own wait: the pass ends, and the walk's next directory starts another.
                debug!(%path, %error, "walk-ahead cannot list a directory: it stops");
                return;
            }
        };
        let subdirs: Vec<(RepoPath, ObjectId)> = entries
            .iter()
            .filter(|e| e.kind == EntryKind::Directory)
            .map(|e| (path.join(&e.name), e.oid))
            .collect();
        for (sub, oid) in subdirs.iter().take(TREES_PER_DIRECTORY) {
            if loader.contains(oid) || trees_queued.load(Ordering::Relaxed) >= TREES_QUEUED {
                continue;
            }
            trees_queued.fetch_add(1, Ordering::Relaxed);
            let (loader, sub, oid) = (Arc::clone(&loader), sub.clone(), *oid);
            let (slots, queued) = (Arc::clone(&tree_slots), Arc::clone(&trees_queued));
            tokio::spawn(async move {
                fetch_tree(loader, sub, oid, slots).await;
                queued.fetch_sub(1, Ordering::Relaxed);
            });
        }
        to_visit.extend(subdirs.into_iter().rev());
        let files: Vec<(RepoPath, ObjectId)> = entries
            .iter()
            .filter(|e| matches!(e.kind, EntryKind::File | EntryKind::Executable))
            .filter(|e| !loader.contains(&e.oid))
            .map(|e| (path.join(&e.name), e.oid))
            .collect();
        position += 1 + files.len() as u64;
        if files.is_empty() {
            continue;
        }
        let wanted = files.len().min(FILES_AT_ONCE) as u32;
        let Ok(slots) = Arc::clone(&files_slots).acquire_many_owned(wanted).await else {
            return;
        };
        tokio::spawn(
            async move {
                fetch_files(&loader, tree, files, up_to).await;
                drop(slots);
            }
            .in_current_span(),
        );
    }
}

/// Tree `oid` (at `path`) into the cache, a slot of `slots` held while it comes.
async fn fetch_tree(loader: Arc<Loader>, path: RepoPath, oid: ObjectId, slots: Arc<Semaphore>) {
    let Ok(_slot) = slots.acquire_owned().await else {
        return;
    };
    // A failure is logged by the loader, and reported by the walk's own request.
    let _ = loader.fetch_tree(&path, oid).await;
}

/// The files of directory tree `tree` up to `up_to` bytes into the cache: those of unknown
/// size with their sizes (a bigger one sized only), those sized already whole. A failure is
/// the walk's own request's to report.
async fn fetch_files(
    loader: &Arc<Loader>,
    tree: ObjectId,
    files: Vec<(RepoPath, ObjectId)>,
    up_to: u64,
) {
    let (unknown, sized): (Vec<_>, Vec<_>) = files
        .into_iter()
        .partition(|(_, oid)| loader.known_size(oid).is_none());
    if !unknown.is_empty() {
        let _ = loader.learn_sizes(tree, unknown, Vec::new(), up_to).await;
    }
    let small: Vec<_> = sized
        .into_iter()
        .filter(|(_, oid)| loader.known_size(oid).is_some_and(|s| s <= up_to))
        .collect();
    if !small.is_empty() {
        loader.blobs_into_cache(&small).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> (RepoPath, ObjectId) {
        (RepoPath::root().join(name.as_bytes()), ObjectId::EMPTY_TREE)
    }

    #[test]
    fn a_pass_forgets_only_what_is_far_behind() {
        let mut reached = Reached::default();
        reached.add(dir("a"), 0);
        reached.add(dir("b"), 10);
        reached.add(dir("c"), AHEAD + 20);
        reached.forget_before(AHEAD + 5);
        assert!(!reached.positions.contains_key(&dir("a")));
        assert_eq!(reached.positions.get(&dir("b")), Some(&10));
        assert_eq!(reached.order.len(), 2);
        reached.forget_before(3 * AHEAD);
        assert!(reached.positions.is_empty() && reached.order.is_empty());
    }
}
