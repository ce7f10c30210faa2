//! How open files are read: by the kernel from the cache file (FUSE passthrough) where the
//! blob is cached and the kernel allows it, else through the daemon. The kernel wants every
//! open file of an inode in one mode, and one backing file per inode while any is open, so
//! the first open of an inode decides and later ones follow.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use fuser::{BackingId, FileHandle, FopenFlags, ReplyOpen};
use tracing::warn;

/// How a mount's cached files are read, for `status`: by the kernel from the cache file
/// (passthrough), or through the daemon.
#[derive(Default)]
pub struct ReadPath(AtomicU8);

const READ_PATH_PASSTHROUGH: u8 = 1;
const READ_PATH_DAEMON: u8 = 2;

impl ReadPath {
    pub fn describe(&self) -> &'static str {
        match self.0.load(Ordering::Relaxed) {
            READ_PATH_PASSTHROUGH => "passthrough",
            READ_PATH_DAEMON => "daemon",
            _ => "", // not mounted yet
        }
    }

    /// What the kernel agreed to at init.
    pub(super) fn set_passthrough(&self, passthrough: bool) {
        let path = if passthrough {
            READ_PATH_PASSTHROUGH
        } else {
            READ_PATH_DAEMON
        };
        self.0.store(path, Ordering::Relaxed);
    }

    fn is_passthrough(&self) -> bool {
        self.0.load(Ordering::Relaxed) == READ_PATH_PASSTHROUGH
    }
}

/// How an inode's open files read.
enum OpenMode {
    /// Through the daemon (and the kernel's page cache).
    Cached,
    /// From the backing cache file.
    Passthrough(Arc<BackingId>),
}

struct OpenInode {
    mode: OpenMode,
    handles: usize,
}

/// The open inodes of a mount and the mode each reads in.
#[derive(Default)]
pub(super) struct OpenFiles {
    read_path: Arc<ReadPath>,
    inodes: Mutex<HashMap<u64, OpenInode>>,
}

impl OpenFiles {
    /// Shared with whoever reports the mount's status.
    pub(super) fn read_path(&self) -> &Arc<ReadPath> {
        &self.read_path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, OpenInode>> {
        self.inodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens `ino` (handle `fh`) in the mode its other open files use; a first open goes
    /// passthrough if `cached` gives its blob's cache file and the kernel allows it. With
    /// `drop_pages`, the kernel is told not to keep the pages it holds of the file.
    pub(super) fn open(
        &self,
        ino: u64,
        fh: u64,
        drop_pages: bool,
        cached: impl FnOnce() -> Option<std::fs::File>,
        reply: ReplyOpen,
    ) {
        let keep = match drop_pages {
            true => FopenFlags::empty(),
            false => FopenFlags::FOPEN_KEEP_CACHE,
        };
        let mut open = self.lock();
        if let Some(inode) = open.get_mut(&ino) {
            inode.handles += 1;
            return match &inode.mode {
                OpenMode::Passthrough(backing) => {
                    reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), backing)
                }
                OpenMode::Cached => reply.opened(FileHandle(fh), keep),
            };
        }
        let mode = match self.backing(cached, &reply) {
            Some(backing) => {
                let backing = Arc::new(backing);
                reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &backing);
                OpenMode::Passthrough(backing)
            }
            None => {
                reply.opened(FileHandle(fh), keep);
                OpenMode::Cached
            }
        };
        open.insert(ino, OpenInode { mode, handles: 1 });
    }

    /// A backing file, if passthrough is on and the blob is cached. The first refusal (a
    /// daemon without CAP_SYS_ADMIN) turns passthrough off for the mount.
    fn backing(
        &self,
        cached: impl FnOnce() -> Option<std::fs::File>,
        reply: &ReplyOpen,
    ) -> Option<BackingId> {
        if !self.read_path.is_passthrough() {
            return None;
        }
        let file = cached()?;
        match reply.open_backing(&file) {
            Ok(backing) => Some(backing),
            Err(e) => {
                warn!(error = %e, "the kernel refused a backing file: reading through the daemon");
                self.read_path.0.store(READ_PATH_DAEMON, Ordering::Relaxed);
                None
            }
        }
    }

    pub(super) fn release(&self, ino: u64) {
        let mut open = self.lock();
        if let Some(inode) = open.get_mut(&ino) {
            inode.handles -= 1;
            if inode.handles == 0 {
                open.remove(&ino);
            }
        }
    }
}
