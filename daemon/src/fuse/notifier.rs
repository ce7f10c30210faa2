//! Telling the kernel what its caches must forget, for the filesystem logic (which knows
//! only [`KernelCache`]) and for the supervisor's refreshes.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use tracing::warn;

use crate::fs::{KernelCache, ROOT_INO};

/// A mount's kernel caches, told what to forget on threads of their own: the kernel may need
/// locks that a request in flight holds.
#[derive(Clone)]
pub struct KernelNotifier(fuser::Notifier);

impl KernelNotifier {
    pub fn new(notifier: fuser::Notifier) -> Self {
        KernelNotifier(notifier)
    }

    /// Drops the kernel's entries for `names` at the root, and the root's listing, now (the
    /// caller may wait: it is not inside a filesystem request).
    pub fn invalidate_root_now(&self, names: Vec<Vec<u8>>) {
        invalidate_root(&self.0, names);
    }
}

impl KernelCache for KernelNotifier {
    fn stale_root_entries(&self, names: Vec<Vec<u8>>) {
        let notifier = self.0.clone();
        on_a_thread(move || invalidate_root(&notifier, names));
    }

    fn stale_pages(&self, ino: u64) {
        let notifier = self.0.clone();
        on_a_thread(move || {
            let _ = notifier.inval_inode(fuser::INodeNo(ino), 0, 0);
        });
    }
}

fn on_a_thread(work: impl FnOnce() + Send + 'static) {
    let spawned = std::thread::Builder::new()
        .name("megafs-inval".into())
        .spawn(work);
    if let Err(e) = spawned {
        warn!(error = %e, "cannot start a thread to invalidate kernel caches");
    }
}

fn invalidate_root(notifier: &fuser::Notifier, names: Vec<Vec<u8>>) {
    let root = fuser::INodeNo(ROOT_INO);
    for name in names {
        let _ = notifier.inval_entry(root, OsStr::from_bytes(&name));
    }
    let _ = notifier.inval_inode(root, 0, 0);
}
