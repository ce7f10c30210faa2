//! Prefetch: walking a mount's directories and fetching the files a set of patterns wants,
//! ahead of any read. Directories are listed a few at a time; the files they want flow to
//! batches of many directories' files at once (one request each where the source batches,
//! as git does: each request costs the server a process or three, so a request per directory
//! made a prefetch far slower than a clone), a few batches at a time, while the walk goes on.
//! Where the source takes whole trees (git), a directory whose files are all wanted goes as
//! its tree, many directories' trees per request: the server packs a tree's files for about
//! the cost of a clone, and the same files asked for by id for half as much again.
//! Progress is counted in [`PrefetchProgress`], which the caller reports meanwhile.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::stream::{self, StreamExt};
use tracing::debug;

use super::pattern::Pattern;
use super::{FsError, MountFs, ROOT_INO};
use crate::object::{EntryKind, ObjectId};
use crate::repo_path::RepoPath;

/// How many directories are listed at once.
const DIRECTORY_PARALLELISM: usize = 4;

/// The most files one batch fetches.
const BATCH_FILES: usize = 512;

/// How many batches are fetched at once.
const BATCHES_AT_ONCE: usize = 3;

/// The most files a batch of whole trees brings, and so the most a tree taken whole holds.
const TREE_BATCH_FILES: usize = 8192;

/// What a walk found to fetch.
enum Found {
    Files(Vec<(RepoPath, ObjectId)>),
    /// A directory's tree, to be fetched whole, and the files that brings.
    Tree {
        tree: ObjectId,
        files: Vec<(RepoPath, ObjectId)>,
    },
}

/// Where the walk sends what it found, on its way to the batches.
type FoundTx = tokio::sync::mpsc::UnboundedSender<Found>;

/// One request's worth: whole trees (none: the files alone, by id), and every file it brings.
#[derive(Default)]
struct Batch {
    trees: Vec<ObjectId>,
    files: Vec<(RepoPath, ObjectId)>,
}

/// What the walk found and no batch has taken yet.
#[derive(Default)]
struct Pending {
    files: Vec<(RepoPath, ObjectId)>,
    trees: Batch,
    /// Batches of trees full already.
    full: VecDeque<Batch>,
}

impl Pending {
    fn add(&mut self, found: Found) {
        match found {
            Found::Files(files) => self.files.extend(files),
            Found::Tree { tree, files } => {
                if self.trees.files.len() + files.len() > TREE_BATCH_FILES {
                    self.full.push_back(std::mem::take(&mut self.trees));
                }
                self.trees.trees.push(tree);
                self.trees.files.extend(files);
            }
        }
    }

    /// A full batch if there is one; with `flush`, else whatever there is.
    fn take(&mut self, flush: bool) -> Option<Batch> {
        if let Some(batch) = self.full.pop_front() {
            return Some(batch);
        }
        if self.trees.files.len() >= TREE_BATCH_FILES || (flush && !self.trees.trees.is_empty()) {
            return Some(std::mem::take(&mut self.trees));
        }
        if self.files.len() >= BATCH_FILES || (flush && !self.files.is_empty()) {
            let rest = self.files.split_off(self.files.len().min(BATCH_FILES));
            let files = std::mem::replace(&mut self.files, rest);
            return Some(Batch {
                files,
                ..Batch::default()
            });
        }
        None
    }
}

/// How far a prefetch has come. Totals grow while the walk finds more.
#[derive(Default)]
pub struct PrefetchProgress {
    pub files_total: AtomicU64,
    pub files_done: AtomicU64,
    pub files_failed: AtomicU64,
    pub bytes_done: AtomicU64,
    /// The walk is over: the totals are final.
    pub walk_done: AtomicBool,
    pub last_error: Mutex<String>,
}

impl PrefetchProgress {
    fn failed(&self, what: String) {
        self.files_failed.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = what;
    }

    pub fn last_error(&self) -> String {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A directory to walk, and how deep below its pattern's base it is.
struct Dir {
    ino: u64,
    /// Below its pattern's base.
    level: u32,
    /// The levels its pattern names, walked on top of the depth asked for.
    own_levels: u32,
    /// Its files come with a tree above it, taken whole: it is only listed.
    covered: bool,
}

/// What one prefetch has already taken on: patterns overlap (`src` and `src/*.rs`), and each
/// directory is walked and each file counted once.
#[derive(Default)]
struct Seen {
    inos: Mutex<HashSet<u64>>,
    /// Files named by a pattern's base, which a tree taken whole leaves out.
    bases: Mutex<HashSet<RepoPath>>,
}

impl Seen {
    /// True the first time for `ino`.
    fn first(&self, ino: u64) -> bool {
        self.inos
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ino)
    }

    fn base_file(&self, path: &RepoPath) {
        let mut bases = self.bases.lock().unwrap_or_else(|p| p.into_inner());
        bases.insert(path.clone());
    }

    fn is_base_file(&self, path: &RepoPath) -> bool {
        let bases = self.bases.lock().unwrap_or_else(|p| p.into_inner());
        bases.contains(path)
    }
}

/// Fetches the listings and files `patterns` want (all of the mount if none), down to
/// `depth` levels below where each pattern ends (0: no limit; see `Pattern::own_levels`). Failures of single files are
/// counted and logged, not fatal; a base that does not exist is.
pub(super) async fn run(
    fs: &Arc<MountFs>,
    patterns: &[Pattern],
    depth: u32,
    progress: &PrefetchProgress,
) -> Result<(), FsError> {
    let all = [Pattern::everything()];
    let patterns = if patterns.is_empty() {
        &all[..]
    } else {
        patterns
    };
    let (found, batches) = tokio::sync::mpsc::unbounded_channel();
    let walk = async move {
        let walked = walk(fs, patterns, depth, progress, &found).await;
        // A failed walk is not done: its error is the answer.
        progress.walk_done.store(walked.is_ok(), Ordering::Relaxed);
        walked
    };
    let (walked, ()) = futures::join!(walk, fetch_batches(fs, batches, progress));
    walked
}

/// Walks what `patterns` want, sending the files found to `found`.
async fn walk(
    fs: &Arc<MountFs>,
    patterns: &[Pattern],
    depth: u32,
    progress: &PrefetchProgress,
    found: &FoundTx,
) -> Result<(), FsError> {
    let seen = Seen::default();
    let mut level = Vec::new();
    for pattern in patterns {
        let base = resolve(fs, &pattern.base()).await?;
        if fs.kind_of(base).is_some_and(|k| k.is_dir()) {
            level.push(Dir {
                ino: base,
                level: 0,
                own_levels: pattern.own_levels(),
                covered: false,
            });
        } else if seen.first(base) {
            let file = (fs.path_of(base), fs.file_oid(base)?);
            seen.base_file(&file.0);
            send(found, Found::Files(vec![file]), progress);
        }
    }
    while !level.is_empty() {
        level.retain(|dir| seen.first(dir.ino));
        let walked: Vec<Vec<Dir>> = stream::iter(level)
            .map(|dir| prefetch_directory(fs, dir, patterns, depth, progress, &seen, found))
            .buffer_unordered(DIRECTORY_PARALLELISM)
            .collect()
            .await;
        level = walked.into_iter().flatten().collect();
    }
    Ok(())
}

/// Counts what was found in the total and sends it on to be fetched.
fn send(found: &FoundTx, what: Found, progress: &PrefetchProgress) {
    let count = match &what {
        Found::Files(files) | Found::Tree { files, .. } => files.len(),
    };
    progress
        .files_total
        .fetch_add(count as u64, Ordering::Relaxed);
    // The receiver lives until the walk is over.
    let _ = found.send(what);
}

/// Fetches what the walk finds, in batches of what has come so far (up to [`BATCH_FILES`]
/// loose files, or [`TREE_BATCH_FILES`] files in whole trees), [`BATCHES_AT_ONCE`] at a
/// time, until the walk is over.
async fn fetch_batches(
    fs: &MountFs,
    found: tokio::sync::mpsc::UnboundedReceiver<Found>,
    progress: &PrefetchProgress,
) {
    use tokio::sync::mpsc::error::TryRecvError;
    let batches = stream::unfold(
        (found, Pending::default()),
        |(mut incoming, mut pending)| async move {
            loop {
                if let Some(batch) = pending.take(false) {
                    return Some((batch, (incoming, pending)));
                }
                match incoming.try_recv() {
                    Ok(found) => pending.add(found),
                    // Nothing more for now: what has come goes.
                    Err(TryRecvError::Empty) => match pending.take(true) {
                        Some(batch) => return Some((batch, (incoming, pending))),
                        None => pending.add(incoming.recv().await?),
                    },
                    Err(TryRecvError::Disconnected) => {
                        return pending.take(true).map(|batch| (batch, (incoming, pending)));
                    }
                }
            }
        },
    );
    batches
        .map(|batch| fetch_wanted(fs, batch, progress))
        .buffer_unordered(BATCHES_AT_ONCE)
        .collect::<Vec<()>>()
        .await;
}

/// The inode at `path` (components) from the root.
async fn resolve(fs: &Arc<MountFs>, path: &[Vec<u8>]) -> Result<u64, FsError> {
    let mut ino = ROOT_INO;
    for name in path {
        ino = match fs.lookup(ino, name).await {
            Ok(attr) => attr.ino,
            Err(FsError::NotFound | FsError::NotDir) => {
                let shown = RepoPath::from_components(path.iter().map(Vec::as_slice));
                return Err(FsError::NoSuchPath(shown));
            }
            Err(e) => return Err(e),
        };
    }
    Ok(ino)
}

/// Lists `dir`, fetches its wanted files, and returns its subdirectories to walk next.
async fn prefetch_directory(
    fs: &Arc<MountFs>,
    dir: Dir,
    patterns: &[Pattern],
    depth: u32,
    progress: &PrefetchProgress,
    seen: &Seen,
    found: &FoundTx,
) -> Vec<Dir> {
    let dir_path = fs.path_of(dir.ino);
    let mut covered = dir.covered;
    if !covered && depth == 0 {
        if let Some(tree) = whole_tree(fs, dir.ino, &dir_path, patterns, seen) {
            send(found, tree, progress);
            covered = true;
        }
    }
    let listing = match fs.listing(dir.ino).await {
        Ok(listing) => listing,
        Err(e) => {
            // The loader logged why; the prefetch reports it to its caller.
            debug!(path = %dir_path, error = %e, "prefetch cannot list a directory");
            progress.failed(format!("{dir_path}: {e}"));
            return Vec::new();
        }
    };
    let mut wanted = Vec::new();
    let mut below = Vec::new();
    for entry in &listing.entries {
        match entry.kind {
            EntryKind::Directory if depth == 0 || dir.level + 1 < depth + dir.own_levels => {
                if let Some(ino) = fs.child(dir.ino, &entry.name) {
                    below.push(Dir {
                        ino,
                        level: dir.level + 1,
                        own_levels: dir.own_levels,
                        covered,
                    });
                }
            }
            EntryKind::File | EntryKind::Executable | EntryKind::Symlink if !covered => {
                let path = dir_path.join(&entry.name);
                let parts: Vec<&[u8]> = path.components().collect();
                if patterns.iter().any(|p| p.matches(&parts)) && seen.first(entry.ino) {
                    wanted.push((path, entry.oid));
                }
            }
            // Submodules have nothing to fetch; deeper directories are past `depth`.
            _ => {}
        }
    }
    if !wanted.is_empty() {
        send(found, Found::Files(wanted), progress);
    }
    below
}

/// Directory `ino` (at `path`) as a tree to fetch whole, where the source takes whole trees,
/// every file below it is wanted, and most are not cached yet: one of those is a cheap
/// request, while a tree mostly cached is cheaper taken file by file.
fn whole_tree(
    fs: &MountFs,
    ino: u64,
    path: &RepoPath,
    patterns: &[Pattern],
    seen: &Seen,
) -> Option<Found> {
    let loader = fs.loader();
    if !loader.fetches_whole_trees() {
        return None;
    }
    let parts: Vec<&[u8]> = path.components().collect();
    if !patterns.iter().any(|p| p.matches(&parts)) {
        return None;
    }
    let tree = fs.read_inodes().get(ino)?.oid;
    let files = loader.files_below(path, tree, TREE_BATCH_FILES)?;
    let cached = files.iter().filter(|(_, oid)| loader.contains(oid)).count();
    if cached * 2 > files.len() {
        return None;
    }
    let files = files
        .into_iter()
        .filter(|(path, _)| !seen.is_base_file(path))
        .collect();
    Some(Found::Tree { tree, files })
}

/// Fetches the files of `batch` not cached yet, in one request; counts every one (the total
/// already counts them).
async fn fetch_wanted(fs: &MountFs, batch: Batch, progress: &PrefetchProgress) {
    let loader = fs.loader();
    let (cached, missing): (Vec<_>, Vec<_>) = batch
        .files
        .iter()
        .cloned()
        .partition(|(_, oid)| loader.contains(oid));
    progress
        .files_done
        .fetch_add(cached.len() as u64, Ordering::Relaxed);
    let results = if batch.trees.is_empty() {
        loader.blobs_into_cache(&missing).await
    } else {
        loader.trees_into_cache(&batch.trees, &batch.files).await
    };
    for (path, _, result) in results {
        match result {
            Ok(len) => {
                progress.files_done.fetch_add(1, Ordering::Relaxed);
                progress.bytes_done.fetch_add(len, Ordering::Relaxed);
            }
            Err(e) => progress.failed(format!("{path}: {e}")),
        }
    }
}
