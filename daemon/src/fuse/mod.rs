//! The thin adapter between the kernel (fuser) and [`MountFs`]. Each request becomes a tokio
//! task, so the FUSE loop never waits on the network; the task answers the kernel when the
//! filesystem does, or with EIO once the request timeout passes. A file whose blob is cached
//! is opened in passthrough mode where the kernel allows: its cache file backs it, and its
//! reads never reach the daemon.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, Request,
};
use tokio::runtime::Handle;
use tracing::{debug, warn, Instrument};

use crate::fs::{Attr, FsError, MountFs};
use crate::object::EntryKind;

mod notifier;
pub use notifier::KernelNotifier;

/// How long the kernel may cache entries and attributes. A mount shows one immutable commit,
/// and a refresh gives whatever changed new inodes and invalidates the root's stale entries.
const TTL: Duration = Duration::from_secs(3600);

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

    fn set(&self, path: u8) {
        self.0.store(path, Ordering::Relaxed);
    }

    fn is_passthrough(&self) -> bool {
        self.0.load(Ordering::Relaxed) == READ_PATH_PASSTHROUGH
    }
}

/// How an inode's open files read. The kernel wants every open file of an inode in one mode,
/// and one backing file per inode while any is open.
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

pub struct FuseAdapter {
    fs: Arc<MountFs>,
    runtime: Handle,
    timeout: Duration,
    name: String,
    /// Whether to ask for passthrough at all (configuration).
    want_passthrough: bool,
    read_path: Arc<ReadPath>,
    open_inodes: Mutex<HashMap<u64, OpenInode>>,
}

impl FuseAdapter {
    pub fn new(
        fs: Arc<MountFs>,
        runtime: Handle,
        timeout: Duration,
        name: String,
        want_passthrough: bool,
    ) -> Self {
        FuseAdapter {
            fs,
            runtime,
            timeout,
            name,
            want_passthrough,
            read_path: Arc::new(ReadPath::default()),
            open_inodes: Mutex::new(HashMap::new()),
        }
    }

    /// Shared with whoever reports the mount's status.
    pub fn read_path(&self) -> Arc<ReadPath> {
        self.read_path.clone()
    }

    fn lock_open_inodes(&self) -> std::sync::MutexGuard<'_, HashMap<u64, OpenInode>> {
        self.open_inodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens `ino` (handle `fh`) in the mode its other open files use; a first open goes
    /// passthrough if the blob is cached and the kernel allows it.
    fn open_in_mode(&self, ino: u64, fh: u64, reply: ReplyOpen) {
        let mut open = self.lock_open_inodes();
        if let Some(inode) = open.get_mut(&ino) {
            inode.handles += 1;
            return match &inode.mode {
                OpenMode::Passthrough(backing) => {
                    reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), backing)
                }
                OpenMode::Cached => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
            };
        }
        let backing = self.backing_for(ino, &reply);
        let mode = match backing {
            Some(backing) => {
                let backing = Arc::new(backing);
                reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &backing);
                OpenMode::Passthrough(backing)
            }
            None => {
                reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE);
                OpenMode::Cached
            }
        };
        open.insert(ino, OpenInode { mode, handles: 1 });
    }

    /// A backing file for `ino`, if passthrough is on and its blob is cached. The first refusal
    /// (a daemon without CAP_SYS_ADMIN) turns passthrough off for the mount.
    fn backing_for(&self, ino: u64, reply: &ReplyOpen) -> Option<BackingId> {
        if !self.read_path.is_passthrough() {
            return None;
        }
        let file = self.fs.cached_file(ino)?;
        match reply.open_backing(&file) {
            Ok(backing) => Some(backing),
            Err(e) => {
                warn!(mount = %self.name, error = %e, "the kernel refused a backing file: reading through the daemon");
                self.read_path.set(READ_PATH_DAEMON);
                None
            }
        }
    }

    fn release_open(&self, ino: u64) {
        let mut open = self.lock_open_inodes();
        if let Some(inode) = open.get_mut(&ino) {
            inode.handles -= 1;
            if inode.handles == 0 {
                open.remove(&ino);
            }
        }
    }

    /// Runs `work` as a task with a deadline and a span, then hands its result to `answer`.
    fn spawn<T, W, F>(&self, op: &'static str, ino: u64, work: W, answer: F)
    where
        T: Send + 'static,
        W: Future<Output = Result<T, FsError>> + Send + 'static,
        F: FnOnce(Result<T, Errno>) + Send + 'static,
    {
        let timeout = self.timeout;
        let span = tracing::debug_span!("fuse", op, ino, mount = %self.name);
        self.runtime.spawn(
            async move {
                let result = match tokio::time::timeout(timeout, work).await {
                    Ok(result) => result,
                    Err(_) => Err(FsError::Timeout(timeout)),
                };
                answer(result.map_err(|e| {
                    if e.is_failure() {
                        warn!(error = %e, "request failed");
                    } else {
                        debug!(error = %e, "request refused");
                    }
                    Errno::from_i32(e.errno())
                }));
            }
            .instrument(span),
        );
    }
}

/// Attributes for a readdirplus entry whose real ones are not known yet: given with no time
/// to live, so the kernel looks the entry up before any use.
fn placeholder_attr(ino: u64, kind: EntryKind) -> FileAttr {
    file_attr(&Attr {
        ino,
        kind,
        size: 0,
        perm: 0o444,
        mtime: std::time::UNIX_EPOCH,
        uid: 0,
        gid: 0,
    })
}

/// Fills a plain listing reply from `offset` on: the dots, then the entries.
fn fill_listing(
    mut reply: ReplyDirectory,
    ino: u64,
    parent: u64,
    entries: &[crate::fs::DirEntry],
    offset: u64,
) {
    let dots = [
        (ino, FileType::Directory, &b"."[..]),
        (parent, FileType::Directory, &b".."[..]),
    ];
    let listed = entries
        .iter()
        .map(|e| (e.ino, file_type(e.kind), e.name.as_ref()));
    for (index, (child, kind, name)) in dots
        .into_iter()
        .chain(listed)
        .enumerate()
        .skip(offset as usize)
    {
        if reply.add(
            INodeNo(child),
            index as u64 + 1,
            kind,
            OsStr::from_bytes(name),
        ) {
            break;
        }
    }
    reply.ok();
}

/// Fills a listing-with-attributes reply from `offset` on: the dots, then the entries. An
/// entry whose attributes are not known yet (a size not learnt) goes with nothing the kernel
/// may keep: it looks the entry up before any use. The kernel takes a lookup of every entry
/// but the dots: counted before the reply goes, so a forget never comes first.
fn fill_plus(
    mut reply: ReplyDirectoryPlus,
    fs: &MountFs,
    dir: u64,
    parent: u64,
    entries: &[crate::fs::DirEntry],
    offset: u64,
) {
    let dots = [(dir, &b"."[..]), (parent, &b".."[..])]
        .map(|(ino, name)| (ino, EntryKind::Directory, name, None));
    let listed = entries
        .iter()
        .map(|e| (e.ino, e.kind, e.name.as_ref(), Some(e)));
    for (index, (ino, kind, name, entry)) in dots
        .into_iter()
        .chain(listed)
        .enumerate()
        .skip(offset as usize)
    {
        let attr = match entry {
            Some(entry) => fs.plus_attr(dir, entry),
            None => fs.known_attr(ino),
        };
        let (attr, ttl) = match attr {
            Some(attr) => (file_attr(&attr), TTL),
            None => (placeholder_attr(ino, kind), Duration::ZERO),
        };
        let name = OsStr::from_bytes(name);
        if reply.add(attr.ino, index as u64 + 1, name, &ttl, &attr, Generation(0)) {
            break;
        }
        if entry.is_some() {
            fs.remember(ino);
        }
    }
    reply.ok();
}

fn file_type(kind: EntryKind) -> FileType {
    match kind {
        EntryKind::Directory | EntryKind::Submodule => FileType::Directory,
        EntryKind::File | EntryKind::Executable => FileType::RegularFile,
        EntryKind::Symlink => FileType::Symlink,
    }
}

fn file_attr(attr: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(attr.ino),
        size: attr.size,
        blocks: attr.size.div_ceil(512),
        atime: attr.mtime,
        mtime: attr.mtime,
        ctime: attr.mtime,
        crtime: attr.mtime,
        kind: file_type(attr.kind),
        perm: attr.perm,
        nlink: if attr.kind.is_dir() { 2 } else { 1 },
        uid: attr.uid,
        gid: attr.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut fuser::KernelConfig) -> std::io::Result<()> {
        // Content never changes under an inode: let the kernel cache symlink targets, run
        // lookups in one directory in parallel, and take attributes with every listing (not
        // adaptively: the kernel then looked up each entry past a large directory's first
        // reply). Kernels without these say no.
        use fuser::InitFlags as F;
        let wanted = F::FUSE_CACHE_SYMLINKS | F::FUSE_PARALLEL_DIROPS | F::FUSE_DO_READDIRPLUS;
        if let Err(unsupported) = config.add_capabilities(wanted) {
            debug!(?unsupported, "kernel lacks some FUSE capabilities");
        }
        let passthrough = self.want_passthrough
            && config.add_capabilities(F::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok();
        self.read_path.set(if passthrough {
            READ_PATH_PASSTHROUGH
        } else {
            READ_PATH_DAEMON
        });
        Ok(())
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // Nothing to open: saying so makes the kernel stop sending opendir and releasedir (two
        // round trips per directory of a walk) and keep every listing in its page cache, as
        // FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE would (a listing is as immutable as its tree).
        reply.error(Errno::ENOSYS);
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        // Answered on this thread when everything is loaded: no task, no wait.
        match self.fs.lookup_loaded(parent.0, name.as_bytes()) {
            Some(Ok(attr)) => {
                self.fs.remember(attr.ino);
                return reply.entry(&TTL, &file_attr(&attr), Generation(0));
            }
            Some(Err(e)) => return reply.error(Errno::from_i32(e.errno())),
            None => {}
        }
        let fs = self.fs.clone();
        let name = name.as_bytes().to_vec();
        self.spawn(
            "lookup",
            parent.0,
            async move {
                let attr = fs.lookup(parent.0, &name).await?;
                // Counted before the kernel hears of it, so its forget never comes first.
                fs.remember(attr.ino);
                Ok(attr)
            },
            move |r| match r {
                Ok(attr) => reply.entry(&TTL, &file_attr(&attr), Generation(0)),
                Err(e) => reply.error(e),
            },
        );
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        if let Some(attr) = self.fs.known_attr(ino.0) {
            return reply.attr(&TTL, &file_attr(&attr));
        }
        let fs = self.fs.clone();
        self.spawn(
            "getattr",
            ino.0,
            async move { fs.getattr(ino.0).await },
            move |r| match r {
                Ok(attr) => reply.attr(&TTL, &file_attr(&attr)),
                Err(e) => reply.error(e),
            },
        );
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let fs = self.fs.clone();
        self.spawn(
            "readlink",
            ino.0,
            async move { fs.readlink(ino.0).await },
            move |r| match r {
                Ok(target) => reply.data(&target),
                Err(e) => reply.error(e),
            },
        );
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        match self.fs.open_file(ino.0) {
            Ok(handle) => self.open_in_mode(ino.0, handle, reply),
            Err(e) => reply.error(Errno::from_i32(e.errno())),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing is ever written, so there is nothing to flush.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.release_open(ino.0);
        self.fs.release_file(fh.0);
        reply.ok();
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let fs = self.fs.clone();
        self.spawn(
            "read",
            ino.0,
            async move { fs.read(ino.0, offset, size).await },
            move |r| match r {
                Ok(bytes) => reply.data(&bytes),
                Err(e) => reply.error(e),
            },
        );
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        match (self.fs.readdir_loaded(ino.0), self.fs.parent_of(ino.0)) {
            (Some(Ok(entries)), Ok(parent)) => {
                return fill_listing(reply, ino.0, parent, &entries, offset);
            }
            (Some(Err(e)), _) => return reply.error(Errno::from_i32(e.errno())),
            _ => {}
        }
        let fs = self.fs.clone();
        self.spawn(
            "readdir",
            ino.0,
            async move {
                let entries = fs.readdir(ino.0).await?;
                let parent = fs.parent_of(ino.0)?;
                Ok((entries, parent))
            },
            move |r| match r {
                Ok((entries, parent)) => fill_listing(reply, ino.0, parent, &entries, offset),
                Err(e) => reply.error(e),
            },
        );
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        match (self.fs.readdir_loaded(ino.0), self.fs.parent_of(ino.0)) {
            (Some(Ok(entries)), Ok(parent)) => {
                return fill_plus(reply, &self.fs, ino.0, parent, &entries, offset);
            }
            (Some(Err(e)), _) => return reply.error(Errno::from_i32(e.errno())),
            _ => {}
        }
        let fs = self.fs.clone();
        let filler = self.fs.clone();
        self.spawn(
            "readdirplus",
            ino.0,
            async move {
                let entries = fs.readdir(ino.0).await?;
                let parent = fs.parent_of(ino.0)?;
                Ok((entries, parent))
            },
            move |r| match r {
                Ok((entries, parent)) => fill_plus(reply, &filler, ino.0, parent, &entries, offset),
                Err(e) => reply.error(e),
            },
        );
    }

    // batch_forget's default hands each node here.
    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let files = self.fs.inode_count() as u64;
        // Read-only: no free blocks or inodes. Block counts are not tracked, so report none.
        reply.statfs(0, 0, 0, files, 0, 4096, 255, 4096);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, mask: fuser::AccessFlags, reply: ReplyEmpty) {
        if mask.contains(fuser::AccessFlags::W_OK) {
            return reply.error(Errno::EROFS);
        }
        reply.ok();
    }

    // Everything that would change the tree: the mount is a read-only view of one commit.

    #[allow(clippy::too_many_arguments)]
    fn setattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        _size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn mkdir(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn rename(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EROFS);
    }

    fn create(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: fuser::ReplyCreate,
    ) {
        reply.error(Errno::EROFS);
    }

    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: fuser::WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: fuser::ReplyWrite,
    ) {
        reply.error(Errno::EROFS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EROFS);
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EROFS);
    }
}
