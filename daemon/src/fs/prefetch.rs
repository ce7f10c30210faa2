//! Prefetch: walking a mount's directories and fetching the files a set of patterns wants,
//! ahead of any read. Directories are listed a few at a time; the files they want flow to
//! batches of many directories' files at once (one request each where the source batches,
//! as git does: each request costs the server a process or three, so a request per directory
//! made a prefetch far slower than a clone), a few batches at a time, while the walk goes on.
//! Progress is counted in [`PrefetchProgress`], which the caller reports meanwhile.

use std::collections::HashSet;
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

/// Files a walk found, on their way to the batches.
type Found = tokio::sync::mpsc::UnboundedSender<Vec<(RepoPath, ObjectId)>>;

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
}

/// What one prefetch has already taken on: patterns overlap (`src` and `src/*.rs`), and each
/// directory is walked and each file counted once.
#[derive(Default)]
struct Seen(Mutex<HashSet<u64>>);

impl Seen {
    /// True the first time for `ino`.
    fn first(&self, ino: u64) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(ino)
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
    found: &Found,
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
            });
        } else if seen.first(base) {
            let file = (fs.path_of(base), fs.file_oid(base)?);
            send(found, vec![file], progress);
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

/// Counts `files` in the total and sends them on to be fetched.
fn send(found: &Found, files: Vec<(RepoPath, ObjectId)>, progress: &PrefetchProgress) {
    progress
        .files_total
        .fetch_add(files.len() as u64, Ordering::Relaxed);
    // The receiver lives until the walk is over.
    let _ = found.send(files);
}

/// Fetches the files the walk finds, in batches of what has come so far (up to
/// [`BATCH_FILES`]), [`BATCHES_AT_ONCE`] at a time, until the walk is over.
async fn fetch_batches(
    fs: &MountFs,
    batches: tokio::sync::mpsc::UnboundedReceiver<Vec<(RepoPath, ObjectId)>>,
    progress: &PrefetchProgress,
) {
    let batches = stream::unfold(
        (batches, Vec::new()),
        |(mut incoming, mut left)| async move {
            let mut batch: Vec<(RepoPath, ObjectId)> = std::mem::take(&mut left);
            if batch.is_empty() {
                batch = incoming.recv().await?;
            }
            // Whatever else has come meanwhile joins, up to a batch's worth.
            while batch.len() < BATCH_FILES {
                match incoming.try_recv() {
                    Ok(more) => batch.extend(more),
                    Err(_) => break,
                }
            }
            if batch.len() > BATCH_FILES {
                left = batch.split_off(BATCH_FILES);
            }
            Some((batch, (incoming, left)))
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
    found: &Found,
) -> Vec<Dir> {
    let dir_path = fs.path_of(dir.ino);
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
                    });
                }
            }
            EntryKind::File | EntryKind::Executable | EntryKind::Symlink => {
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
        send(found, wanted, progress);
    }
    below
}

/// Fetches the files not cached yet, in one batch; counts every one (the total already
/// counts them).
async fn fetch_wanted(fs: &MountFs, files: Vec<(RepoPath, ObjectId)>, progress: &PrefetchProgress) {
    let loader = fs.loader();
    let (cached, missing): (Vec<_>, Vec<_>) =
        files.into_iter().partition(|(_, oid)| loader.contains(oid));
    progress
        .files_done
        .fetch_add(cached.len() as u64, Ordering::Relaxed);
    for (path, _, result) in loader.blobs_into_cache(&missing).await {
        match result {
            Ok(len) => {
                progress.files_done.fetch_add(1, Ordering::Relaxed);
                progress.bytes_done.fetch_add(len, Ordering::Relaxed);
            }
            Err(e) => progress.failed(format!("{path}: {e}")),
        }
    }
}
