//! The thin adapter between the kernel (fuser) and [`MountFs`]. A request the filesystem can
//! answer from what is loaded, or at hand in the cache, is answered on the FUSE thread, as a
//! native filesystem would; one that needs a fetch becomes a tokio task with a deadline, so
//! the FUSE loop never waits on the network. Every request is counted and timed, with where
//! it was answered from (`metrics`); those handed to tasks run in a span naming the mount,
//! the operation, the inode and the caller, which every log line of theirs carries. Cached
//! files open in passthrough mode (`open_files`).

mod attr;
mod notifier;
mod open_files;

use std::ffi::OsStr;
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuser::{
    Errno, FileHandle, Filesystem, Generation, INodeNo, LockOwner, OpenFlags, ReplyAttr, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, Request,
};
use tokio::runtime::Handle;
use tracing::{debug, warn, Instrument};

use crate::fs::{FsError, MountFs};
use crate::metrics::{self, MountMetrics, Op, Tier};
use attr::{file_attr, fill_listing, fill_plus, TTL};
pub use notifier::KernelNotifier;
use open_files::OpenFiles;
pub use open_files::ReadPath;

/// One request, as its numbers and log lines know it.
#[derive(Clone, Copy)]
struct Call {
    op: Op,
    ino: u64,
    pid: u32,
    started: Instant,
}

pub struct FuseAdapter {
    fs: Arc<MountFs>,
    metrics: Arc<MountMetrics>,
    runtime: Handle,
    timeout: Duration,
    name: Arc<str>,
    /// Whether to ask for passthrough at all (configuration).
    want_passthrough: bool,
    open_files: OpenFiles,
}

impl FuseAdapter {
    pub fn new(
        fs: Arc<MountFs>,
        runtime: Handle,
        timeout: Duration,
        want_passthrough: bool,
    ) -> Self {
        FuseAdapter {
            metrics: fs.metrics(),
            name: Arc::from(fs.name()),
            fs,
            runtime,
            timeout,
            want_passthrough,
            open_files: OpenFiles::default(),
        }
    }

    /// Shared with whoever reports the mount's status.
    pub fn read_path(&self) -> Arc<ReadPath> {
        Arc::clone(self.open_files.read_path())
    }

    fn call(&self, op: Op, ino: u64, req: &Request) -> Call {
        Call {
            op,
            ino,
            pid: req.pid(),
            started: Instant::now(),
        }
    }

    fn answered(&self, call: Call, tier: Tier, failed: bool) {
        self.metrics
            .answered(call.op, call.started.elapsed(), tier, failed);
    }

    /// Answers `call` here if `fast` can (it gives Some), else hands `slow`'s work to a task;
    /// either way `reply` takes the result.
    fn answer<T, W>(
        &self,
        call: Call,
        fast: impl FnOnce() -> Option<Result<T, FsError>>,
        slow: impl FnOnce() -> W,
        reply: impl FnOnce(Result<T, Errno>) + Send + 'static,
    ) where
        T: Send + 'static,
        W: Future<Output = Result<T, FsError>> + Send + 'static,
    {
        let (quick, tier) = {
            // Nothing answered here logs at the default level: the span costs nothing then.
            let _span = tracing::debug_span!(
                "fuse", mount = %self.name, op = call.op.name(), ino = call.ino, pid = call.pid
            )
            .entered();
            metrics::tracked_here(fast)
        };
        match quick {
            Some(result) => {
                let failed = result.as_ref().is_err_and(FsError::is_failure);
                reply(result.map_err(errno));
                self.answered(call, tier, failed);
            }
            None => self.spawn(call, slow(), reply),
        }
    }

    /// Runs `work` as a task with a deadline and a span, then hands its result to `reply`.
    fn spawn<T, W>(
        &self,
        call: Call,
        work: W,
        reply: impl FnOnce(Result<T, Errno>) + Send + 'static,
    ) where
        T: Send + 'static,
        W: Future<Output = Result<T, FsError>> + Send + 'static,
    {
        let (timeout, metrics) = (self.timeout, Arc::clone(&self.metrics));
        let span = tracing::info_span!(
            "fuse", mount = %self.name, op = call.op.name(), ino = call.ino, pid = call.pid
        );
        self.runtime.spawn(
            async move {
                let deadline = async {
                    // Asked for the calling process: the requests of one program's read
                    // share one deadline on a fetch (see `fs`), which fires first; this one
                    // is for everything else, a moment later.
                    let limit = timeout + Duration::from_millis(250);
                    crate::fs::asked_by(call.pid, tokio::time::timeout(limit, work))
                        .await
                        .unwrap_or(Err(FsError::Timeout(timeout)))
                };
                let (result, tier) = metrics::tracked(deadline).await;
                let failed = result.as_ref().is_err_and(FsError::is_failure);
                if let Err(e) = &result {
                    log_failure(e);
                }
                reply(result.map_err(errno));
                metrics.answered(call.op, call.started.elapsed(), tier, failed);
            }
            .instrument(span),
        );
    }

    /// Counts a write refused on this read-only mount.
    fn refused_write(&self, req: &Request) {
        let call = self.call(Op::Write, 0, req);
        self.answered(call, Tier::Memory, false);
    }
}

fn errno(e: FsError) -> Errno {
    Errno::from_i32(e.errno())
}

/// Logs a failed request once: a failed fetch was logged by the loader, naming path, object
/// and server, and a failing cache where it failed; what only the request knows (its
/// deadline passed) is logged here.
fn log_failure(e: &FsError) {
    match e {
        FsError::Timeout(_) | FsError::Internal(_) => warn!(error = %e, "request failed"),
        _ => debug!(error = %e, "request answered with an error"),
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
        self.open_files.read_path().set_passthrough(passthrough);
        Ok(())
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // Nothing to open: saying so makes the kernel stop sending opendir and releasedir (two
        // round trips per directory of a walk) and keep every listing in its page cache, as
        // FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE would (a listing is as immutable as its tree).
        reply.error(Errno::ENOSYS);
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let call = self.call(Op::Lookup, parent.0, req);
        let fs = &self.fs;
        let name = name.as_bytes();
        self.answer(
            call,
            || {
                let found = fs.lookup_loaded(parent.0, name)?;
                // Counted before the kernel hears of it, so its forget never comes first.
                Some(found.inspect(|attr| fs.remember(attr.ino)))
            },
            || {
                let (fs, name) = (Arc::clone(fs), name.to_vec());
                async move {
                    let attr = fs.lookup(parent.0, &name).await?;
                    fs.remember(attr.ino);
                    Ok(attr)
                }
            },
            move |r| match r {
                Ok(attr) => reply.entry(&TTL, &file_attr(&attr), Generation(0)),
                Err(e) => reply.error(e),
            },
        );
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let call = self.call(Op::Getattr, ino.0, req);
        let fs = &self.fs;
        self.answer(
            call,
            || fs.known_attr(ino.0).map(Ok),
            || {
                let fs = Arc::clone(fs);
                async move { fs.getattr(ino.0).await }
            },
            move |r| match r {
                Ok(attr) => reply.attr(&TTL, &file_attr(&attr)),
                Err(e) => reply.error(e),
            },
        );
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        let call = self.call(Op::Readlink, ino.0, req);
        let fs = Arc::clone(&self.fs);
        self.spawn(
            call,
            async move { fs.readlink(ino.0).await },
            move |r| match r {
                Ok(target) => reply.data(&target),
                Err(e) => reply.error(e),
            },
        );
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let call = self.call(Op::Open, ino.0, req);
        if flags.0 & libc::O_ACCMODE != libc::O_RDONLY {
            self.refused_write(req);
            return reply.error(Errno::EROFS);
        }
        let ((), tier) = metrics::tracked_here(|| match self.fs.open_file(ino.0) {
            Ok((handle, drop_pages)) => {
                let cached = || self.fs.cached_file(ino.0);
                self.open_files
                    .open(ino.0, handle, drop_pages, cached, reply)
            }
            Err(e) => reply.error(errno(e)),
        });
        self.answered(call, tier, false);
    }

    fn release(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let call = self.call(Op::Release, ino.0, req);
        self.open_files.release(ino.0);
        self.fs.release_file(fh.0);
        reply.ok();
        self.answered(call, Tier::Memory, false);
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let call = self.call(Op::Read, ino.0, req);
        let fs = Arc::clone(&self.fs);
        self.spawn(
            call,
            async move { fs.read(ino.0, offset, size).await },
            move |r| match r {
                Ok(bytes) => reply.data(&bytes),
                Err(e) => reply.error(e),
            },
        );
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        let call = self.call(Op::Readdir, ino.0, req);
        let fs = &self.fs;
        self.answer(
            call,
            || {
                Some(
                    fs.readdir_loaded(ino.0)?
                        .and_then(|e| Ok((e, fs.parent_of(ino.0)?))),
                )
            },
            || {
                let fs = Arc::clone(fs);
                async move {
                    let entries = fs.readdir(ino.0).await?;
                    Ok((entries, fs.parent_of(ino.0)?))
                }
            },
            move |r| match r {
                Ok((entries, parent)) => fill_listing(reply, ino.0, parent, &entries, offset),
                Err(e) => reply.error(e),
            },
        );
    }

    fn readdirplus(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        let call = self.call(Op::Readdirplus, ino.0, req);
        let fs = &self.fs;
        let filler = Arc::clone(fs);
        self.answer(
            call,
            || {
                Some(
                    fs.readdir_loaded(ino.0)?
                        .and_then(|e| Ok((e, fs.parent_of(ino.0)?))),
                )
            },
            || {
                let fs = Arc::clone(fs);
                async move {
                    let entries = fs.readdir(ino.0).await?;
                    Ok((entries, fs.parent_of(ino.0)?))
                }
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

    fn statfs(&self, req: &Request, ino: INodeNo, reply: ReplyStatfs) {
        let call = self.call(Op::Statfs, ino.0, req);
        let files = self.fs.inode_count() as u64;
        // Read-only: no free blocks or inodes. Block counts are not tracked, so report none.
        reply.statfs(0, 0, 0, files, 0, 4096, 255, 4096);
        self.answered(call, Tier::Memory, false);
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: fuser::AccessFlags, reply: ReplyEmpty) {
        let call = self.call(Op::Access, ino.0, req);
        if mask.contains(fuser::AccessFlags::W_OK) {
            reply.error(Errno::EROFS);
        } else {
            reply.ok();
        }
        self.answered(call, Tier::Memory, false);
    }

    // Everything that would change the tree: the mount is a read-only view of one commit.

    #[allow(clippy::too_many_arguments)]
    fn setattr(
        &self,
        req: &Request,
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
        self.refused_write(req);
        reply.error(Errno::EROFS);
    }

    fn mknod(
        &self,
        req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        self.refused_write(req);
        reply.error(Errno::EROFS);
    }

    fn mkdir(
        &self,
        req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        self.refused_write(req);
        reply.error(Errno::EROFS);
    }

    fn unlink(&self, req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        self.refused_write(req);
        reply.error(Errno::EROFS);
    }

    fn rmdir(&self, req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        self.refused_write(req);
        reply.error(Errno::EROFS);
    }

    fn symlink(
        &self,
        req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &Path,
        reply: ReplyEntry,
    ) {
        self.refused_write(req);
        reply.error(Errno::EROFS);
    }

    fn rename(
        &self,
        req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _newparent: INodeNo,
        _newname: &OsStr,
        _flags: fuser::RenameFlags,
        reply: ReplyEmpty,
    ) {
        self.refused_write(req);
        reply.error(Errno::EROFS);
    }

    fn link(
        &self,
        req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.refused_write(req);
        reply.error(Errno::EROFS);
    }

    fn create(
        &self,
        req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: fuser::ReplyCreate,
    ) {
        self.refused_write(req);
        reply.error(Errno::EROFS);
    }

    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _data: &[u8],
        _write_flags: fuser::WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: fuser::ReplyWrite,
    ) {
        self.refused_write(req);
        reply.error(Errno::EROFS);
    }

    /// A commit has no extended attributes: none of any name, answered at once. (ENOSYS would
    /// also end the questions, but fuser logs each unanswered kind as a warning, and ENODATA
    /// is what a filesystem without the name says.)
    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        reply.error(Errno::ENODATA);
    }

    /// No names: an empty list (its size, 0, where the caller asks for the size).
    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: fuser::ReplyXattr) {
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }

    fn setxattr(
        &self,
        req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        self.refused_write(req);
        reply.error(Errno::EROFS);
    }

    fn removexattr(&self, req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        self.refused_write(req);
        reply.error(Errno::EROFS);
    }

    fn fallocate(
        &self,
        req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        self.refused_write(req);
        reply.error(Errno::EROFS);
    }
}
