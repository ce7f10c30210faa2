//! The few calls into the C library that are not about mounting (those are `mounts`'s): who
//! the daemon runs as, a filesystem's size, page-cache hints and the allocator's knobs. Every
//! wrapper is safe to call; each unsafe block says why it is sound.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The effective user id.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

pub fn is_root() -> bool {
    euid() == 0
}

/// The real user and group ids: whom the daemon runs for.
pub fn identity() -> (u32, u32) {
    // SAFETY: getuid and getgid have no preconditions and cannot fail.
    unsafe { (libc::getuid(), libc::getgid()) }
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

/// The descriptor an open call returned, owned; its error where it returned none.
fn opened(fd: libc::c_int) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens `name` (one component) in directory `dir` with `flags`, never following a symlink
/// there (O_NOFOLLOW: a symlink is ELOOP, or itself with O_PATH).
pub fn open_at(dir: &impl AsFd, name: &[u8], flags: libc::c_int) -> io::Result<OwnedFd> {
    let c_name = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name contains NUL"))?;
    // SAFETY: dir is an open descriptor and c_name a valid C string, both for the call.
    let fd = unsafe {
        libc::openat(
            dir.as_fd().as_raw_fd(),
            c_name.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    opened(fd)
}

/// The target of symlink `name` in directory `dir`.
pub fn read_link_at(dir: &impl AsFd, name: &[u8]) -> io::Result<Vec<u8>> {
    let c_name = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name contains NUL"))?;
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: dir is open, c_name a valid C string and buf ours for buf.len() bytes.
    let len = unsafe {
        libc::readlinkat(
            dir.as_fd().as_raw_fd(),
            c_name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    let len = usize::try_from(len).map_err(|_| io::Error::last_os_error())?;
    buf.truncate(len);
    Ok(buf)
}

/// statvfs(2) of `path`.
fn statvfs(path: &Path) -> io::Result<libc::statvfs> {
    let c_path = c_path(path)?;
    // SAFETY: statvfs is plain data, for which zero is a valid value.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is a valid C string and stat a struct we own, both for the call.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat)
}

/// The errno statfs fails with on `path`, if it fails. The kernel never answers statfs from
/// its caches, so a dead FUSE mount shows here (ENOTCONN) even where a stat would not.
pub fn statfs_errno(path: &Path) -> Option<i32> {
    statvfs(path).err().and_then(|e| e.raw_os_error())
}

/// The bytes an unprivileged writer may still use on the filesystem holding `path`.
pub fn filesystem_free(path: &Path) -> io::Result<u64> {
    let stat = statvfs(path)?;
    Ok((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

/// The size in bytes of the filesystem holding `path`.
pub fn filesystem_bytes(path: &Path) -> io::Result<u64> {
    let stat = statvfs(path)?;
    Ok((stat.f_blocks as u64).saturating_mul(stat.f_frsize as u64))
}

/// Writes everything written on the filesystem holding `dir` to its disk (syncfs(2)),
/// returning once it is there.
pub fn sync_filesystem(dir: &Path) -> io::Result<()> {
    let file = File::open(dir)?;
    // SAFETY: syncfs takes any open descriptor and touches no memory of ours.
    if unsafe { libc::syncfs(file.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Extended attribute `name` of `path` itself (a symlink is not followed), if it has one.
pub fn xattr(path: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    let c_path = c_path(path)?;
    let c_name = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name contains NUL"))?;
    let mut buf = vec![0u8; 256];
    loop {
        // SAFETY: both names are valid C strings and buf is a buffer of buf.len() bytes we
        // own, all for the duration of the call.
        let n = unsafe {
            libc::lgetxattr(
                c_path.as_ptr(),
                c_name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if let Ok(n) = usize::try_from(n) {
            buf.truncate(n);
            return Ok(Some(buf));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENODATA) | Some(libc::ENOTSUP) => return Ok(None),
            Some(libc::ERANGE) if buf.len() < 1 << 16 => buf.resize(buf.len() * 4, 0),
            _ => return Err(e),
        }
    }
}

/// Asks the kernel to read `file` into the page cache in the background; false if it would
/// not take the advice.
pub fn will_need(file: &File) -> bool {
    // SAFETY: the descriptor is open for the duration of the call; fadvise only gives advice.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_WILLNEED) };
    rc == 0
}

/// Large buffers straight from the kernel, and back to it when freed. Each FUSE thread of
/// each mount allocates a zeroed 16 MiB request buffer of which it touches a few pages; once
/// glibc has raised its mmap threshold (it does after the first large free), such a buffer
/// comes from a heap arena instead and is zeroed by hand, which makes all 16 MiB resident,
/// and stays so after the mount is gone. Call before any thread starts.
pub fn keep_large_allocations_mapped() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4 << 20);
    }
}

/// Gives the heap's free memory back to the system.
pub fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free memory to the system.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Gives the open file `file` the name `to` (a new link: it fails if `to` exists). For a
/// file opened with `O_TMPFILE`, this is how it first appears; `/proc` is where an open
/// file can be named without the privilege `AT_EMPTY_PATH` asks for.
pub fn link_open_file(file: &File, to: &Path) -> io::Result<()> {
    link_via_proc(file, libc::AT_FDCWD, &c_path(to)?)
}

/// Opens directory `path` to name files relative to it (`O_PATH`: no read access needed):
/// a lookup below it then walks one or two components, not the whole path each time.
pub fn open_dir_handle(path: &Path) -> io::Result<OwnedFd> {
    let c = c_path(path)?;
    // SAFETY: c is a valid C string for the call.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    opened(fd)
}

/// Opens `rel` (a relative path) below directory `dir` for reading.
pub fn open_read_at(dir: &impl AsFd, rel: &[u8]) -> io::Result<File> {
    let c = CString::new(rel)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name contains NUL"))?;
    // SAFETY: dir is an open descriptor and c a valid C string, both for the call.
    let fd = unsafe {
        libc::openat(
            dir.as_fd().as_raw_fd(),
            c.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    opened(fd).map(File::from)
}

/// A new file without a name (`O_TMPFILE`) in directory `dir`, open for reading and writing.
pub fn unnamed_file_in(dir: &impl AsFd) -> io::Result<File> {
    // SAFETY: dir is an open descriptor and "." a valid C string; O_TMPFILE takes a mode.
    let fd = unsafe {
        libc::openat(
            dir.as_fd().as_raw_fd(),
            c".".as_ptr(),
            libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC,
            0o666 as libc::c_uint,
        )
    };
    opened(fd).map(File::from)
}

/// [`link_open_file`] to `rel` below directory `dir`. With the privilege for it (a daemon
/// run by root), by the descriptor itself (`AT_EMPTY_PATH`), which saves a walk through
/// `/proc`; without, the kernel says ENOENT once and `/proc` serves from then on.
pub fn link_open_file_at(file: &File, dir: &impl AsFd, rel: &[u8]) -> io::Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static EMPTY_PATH_REFUSED: AtomicBool = AtomicBool::new(false);
    let to = CString::new(rel)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "name contains NUL"))?;
    let dir = dir.as_fd().as_raw_fd();
    if !EMPTY_PATH_REFUSED.load(Ordering::Relaxed) {
        // SAFETY: the descriptors are open and both strings valid for the call.
        let linked = unsafe {
            libc::linkat(
                file.as_raw_fd(),
                c"".as_ptr(),
                dir,
                to.as_ptr(),
                libc::AT_EMPTY_PATH,
            )
        };
        if linked == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if !matches!(error.raw_os_error(), Some(libc::ENOENT | libc::EPERM)) {
            return Err(error);
        }
        // ENOENT is also a missing directory: `/proc` tells which.
        let via_proc = link_via_proc(file, dir, &to);
        if via_proc.is_ok() || error.raw_os_error() == Some(libc::EPERM) {
            EMPTY_PATH_REFUSED.store(true, Ordering::Relaxed);
        }
        return via_proc;
    }
    link_via_proc(file, dir, &to)
}

/// Links `file` by its name in `/proc` to `to`, relative to directory `dir` (or absolute).
fn link_via_proc(file: &File, dir: libc::c_int, to: &CString) -> io::Result<()> {
    let from = c_path(Path::new(&format!("/proc/self/fd/{}", file.as_raw_fd())))?;
    // SAFETY: dir is open and both strings are valid for the call.
    let linked = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            dir,
            to.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if linked != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_system() {
        assert!(filesystem_bytes(Path::new("/")).expect("statvfs /") > 0);
        assert_eq!(statfs_errno(Path::new("/")), None);
        assert_eq!(
            statfs_errno(Path::new("/surely/not/here")),
            Some(libc::ENOENT)
        );
        let (uid, _) = identity();
        assert_eq!(is_root(), euid() == 0);
        assert!(uid == euid() || !is_root());
    }
}
