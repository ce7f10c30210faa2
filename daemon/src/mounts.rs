//! The kernel's view of mounts: whether a path is a mount point, and unmounting.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Every mount point listed in /proc/self/mountinfo.
pub fn mount_points() -> io::Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(text
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mountinfo(field)))
        .collect())
}

pub fn is_mount_point(path: &Path) -> bool {
    mount_points().is_ok_and(|points| points.iter().any(|p| p == path))
}

/// mountinfo writes space, tab, newline and backslash as `\ooo` octal escapes.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 4]).ok();
            if let Some(value) = digits.and_then(|d| u8::from_str_radix(d, 8).ok()) {
                out.push(value);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Who holds files open (or sits) under `mountpoint`, for log lines: "pid 12 (bash), …".
pub fn holders(mountpoint: &Path) -> String {
    let found = holders_of(&[mountpoint]);
    if found.is_empty() {
        "unknown".into()
    } else {
        found.join(", ")
    }
}

/// The processes that hold something at or under one of `places` open (a file, their
/// working or root directory): "pid 12 (bash)" each. Only processes the daemon may look
/// at count (a per-user daemon sees its user's).
pub fn holders_of(places: &[&Path]) -> Vec<String> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for proc_dir in procs.flatten() {
        let pid = proc_dir.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let base = proc_dir.path();
        let mut links: Vec<PathBuf> = vec![base.join("cwd"), base.join("root")];
        if let Ok(fds) = std::fs::read_dir(base.join("fd")) {
            links.extend(fds.flatten().map(|fd| fd.path()));
        }
        let holds = links
            .iter()
            .filter_map(|l| std::fs::read_link(l).ok())
            .any(|target| places.iter().any(|place| target.starts_with(place)));
        if holds {
            let comm = std::fs::read_to_string(base.join("comm")).unwrap_or_default();
            found.push(format!("pid {pid} ({})", comm.trim()));
        }
    }
    found
}

/// A megafs mount in the mount table: where, and the name it was mounted under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MegafsMount {
    pub mountpoint: PathBuf,
    pub name: String,
    /// The user (and group) whose processes the kernel lets in (`user_id`, `group_id`).
    pub owner: Option<(u32, u32)>,
    /// For a workspace's overlay, its lower layer (the FUSE view of the commit).
    pub lower: Option<PathBuf>,
}

/// Every FUSE mount and workspace overlay whose source names megafs (`megafs:<name>`).
pub fn megafs_mounts() -> io::Result<Vec<MegafsMount>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(text.lines().filter_map(parse_megafs_line).collect())
}

fn parse_megafs_line(line: &str) -> Option<MegafsMount> {
    let (left, right) = line.split_once(" - ")?;
    let mountpoint = left.split(' ').nth(4)?;
    let mut right = right.split(' ');
    let fstype = right.next()?;
    let source = unescape_mountinfo(right.next()?);
    let overlay = fstype == "overlay" || fstype == "fuse.fuse-overlayfs";
    if !fstype.starts_with("fuse") && !overlay {
        return None;
    }
    let name = source.strip_prefix("megafs:")?;
    let options = right.next().unwrap_or_default();
    let option = |key: &str| {
        options
            .split(',')
            .find_map(|o| o.strip_prefix(key)?.parse::<u32>().ok())
    };
    let lower = options
        .split(',')
        .find_map(|o| o.strip_prefix("lowerdir="))
        .map(|l| PathBuf::from(unescape_mountinfo(l)));
    Some(MegafsMount {
        mountpoint: PathBuf::from(unescape_mountinfo(mountpoint)),
        name: name.to_string(),
        owner: option("user_id=").zip(option("group_id=")),
        lower: if overlay { lower } else { None },
    })
}

use crate::sys::statfs_errno;

/// Whether a FUSE mountpoint has no daemon behind it any more. Asks with statfs, which the
/// kernel never answers from its caches (a stat may be), on a thread with a deadline: a live
/// but stuck daemon must not hang the caller (it counts as alive).
pub fn is_dead(mountpoint: &Path) -> bool {
    let path = mountpoint.to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(statfs_errno(&path));
    });
    matches!(rx.recv_timeout(PROBE_LIMIT), Ok(Some(libc::ENOTCONN)))
}

/// How long a live but stuck daemon may keep a liveness question waiting.
const PROBE_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The exit status of `megafsd --probe-mount` for a mount with no daemon behind it.
pub const PROBE_DEAD: i32 = 2;

/// What `megafsd --probe-mount` answers: whether the mount at `point` has no daemon behind it.
pub fn probe_is_dead(point: &Path) -> bool {
    statfs_errno(point) == Some(libc::ENOTCONN)
}

/// Whether megafs mount `mount` has no daemon behind it. The kernel answers a user's mount
/// for nobody but that user (anyone else gets an answer made of nothing), so root asks as the
/// owner, through `megafsd --probe-mount` run as them; another user's mount is not ours to
/// judge.
fn is_dead_mount(mount: &MegafsMount) -> io::Result<bool> {
    if let Some(lower) = &mount.lower {
        // An overlay is dead when the view of the commit beneath it is.
        return Ok(is_dead(lower));
    }
    let me = crate::sys::euid();
    match mount.owner {
        Some((uid, gid)) if uid != me => {
            if me == 0 {
                probe_as(&mount.mountpoint, uid, gid)
            } else {
                Ok(false)
            }
        }
        _ => Ok(is_dead(&mount.mountpoint)),
    }
}

/// Runs this program's mount probe as `uid`:`gid` on `point`; true if it found it dead. An
/// error: the probe could not run at all.
fn probe_as(point: &Path, uid: u32, gid: u32) -> io::Result<bool> {
    let program = std::env::current_exe()?;
    let mut child = Command::new(&program)
        .arg("--probe-mount")
        .arg(point)
        .uid(uid)
        .gid(gid)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("running {} as uid {uid}: {e}", program.display()),
            )
        })?;
    let deadline = std::time::Instant::now() + PROBE_LIMIT;
    loop {
        match child.try_wait()? {
            Some(status) => return Ok(status.code() == Some(PROBE_DEAD)),
            None if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            None => {
                // Stuck on a live daemon that does not answer: alive, as far as we know.
                let _ = child.kill();
                let _ = child.wait();
                return Ok(false);
            }
        }
    }
}

/// What became of a megafs mount found at start.
pub enum Stale {
    /// Nobody served it; it was lazily unmounted.
    Cleaned(MegafsMount),
    /// It could not be judged or unmounted, and why.
    Failed(MegafsMount, io::Error),
}

/// Lazily unmounts megafs mounts nobody serves any more (a killed predecessor's). Every mount
/// is probed at once (each probe may wait up to [`PROBE_LIMIT`] on a stuck daemon); returns
/// what was cleaned and what could not be looked at, for the log, or why the mount table
/// could not be read.
pub fn clean_stale() -> io::Result<Vec<Stale>> {
    let (overlays, views): (Vec<_>, Vec<_>) = megafs_mounts()?
        .into_iter()
        .partition(|m| m.lower.is_some());
    // Overlays first: a dead view beneath a live overlay is busy.
    let mut cleaned = clean_all(overlays);
    cleaned.extend(clean_all(views));
    Ok(cleaned)
}

/// The megafs mounts nobody serves, found as `clean_stale` would find them but left in place
/// (for `mega-fuse doctor`).
pub fn dead_mounts() -> io::Result<Vec<MegafsMount>> {
    let mounts = megafs_mounts()?;
    let dead: Vec<bool> = std::thread::scope(|scope| {
        let probes: Vec<_> = mounts
            .iter()
            .map(|mount| scope.spawn(move || is_dead_mount(mount).unwrap_or(false)))
            .collect();
        probes
            .into_iter()
            .map(|probe| probe.join().unwrap_or(false))
            .collect()
    });
    Ok(mounts
        .into_iter()
        .zip(dead)
        .filter_map(|(mount, dead)| dead.then_some(mount))
        .collect())
}

/// Probes `mounts` at once and cleans the dead ones.
fn clean_all(mounts: Vec<MegafsMount>) -> Vec<Stale> {
    std::thread::scope(|scope| {
        let probes: Vec<_> = mounts
            .into_iter()
            .map(|mount| (mount.clone(), scope.spawn(move || clean_if_dead(mount))))
            .collect();
        probes
            .into_iter()
            .filter_map(|(mount, probe)| match probe.join() {
                Ok(outcome) => outcome,
                Err(_) => Some(Stale::Failed(mount, io::Error::other("its probe panicked"))),
            })
            .collect()
    })
}

/// Unmounts `mount` if nobody serves it; what became of it, if anything.
fn clean_if_dead(mount: MegafsMount) -> Option<Stale> {
    match is_dead_mount(&mount) {
        Ok(false) => None,
        Ok(true) => Some(match unmount(&mount.mountpoint, true) {
            Ok(()) => Stale::Cleaned(mount),
            Err(e) => Stale::Failed(mount, e),
        }),
        Err(e) => Some(Stale::Failed(mount, e)),
    }
}

/// Sets the read-ahead of the mount at `point` (its backing device's `read_ahead_kb`), so that
/// sequential reads arrive in requests that large. Needs root. The device comes from the mount
/// table: a user's mount does not let root stat it.
pub fn set_read_ahead(point: &Path, kb: u32) -> io::Result<()> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    let device = text
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let device = fields.nth(2)?;
            let at = fields.nth(1)?;
            (Path::new(&unescape_mountinfo(at)) == point).then(|| device.to_string())
        })
        .next_back()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "not in the mount table"))?;
    std::fs::write(
        format!("/sys/class/bdi/{device}/read_ahead_kb"),
        kb.to_string(),
    )
}

/// Opens directory `path` to mount on (O_PATH). For a user's request no symlink may be on the
/// way (ELOOP), so the directory opened is the one the path names plainly; the mount then goes
/// onto this descriptor, never the path again, so swapping a component meanwhile changes
/// nothing.
pub fn open_dir(path: &Path, no_symlinks: bool) -> io::Result<OwnedFd> {
    if no_symlinks {
        return open_dir_step_by_step(path);
    }
    let c_path = c_string(path.as_os_str().as_bytes())?;
    // SAFETY: c_path is a valid NUL-terminated string for the duration of the call.
    let fd = unsafe {
        libc::open(
            c_path.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    owned(fd)
}

/// Walks `path` from `/` one component at a time, each opened without following a symlink
/// (openat2's RESOLVE_NO_SYMLINKS would do the same, but seccomp filters, systemd-nspawn's
/// among them, may not know it). Only plain components: `..` is refused before this.
fn open_dir_step_by_step(path: &Path) -> io::Result<OwnedFd> {
    // SAFETY: a constant, valid C string.
    let mut dir = owned(unsafe {
        libc::open(
            c"/".as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })?;
    for component in path.components() {
        let name = match component {
            std::path::Component::RootDir | std::path::Component::CurDir => continue,
            std::path::Component::Normal(name) => c_string(name.as_bytes())?,
            _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
        };
        // SAFETY: dir is an open descriptor and name a valid C string, both for the call.
        let next = owned(unsafe {
            libc::openat(
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        })?;
        // SAFETY: stat is plain data, for which zero is a valid value.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat fills the struct we own from a descriptor we own.
        if unsafe { libc::fstat(next.as_raw_fd(), &mut stat) } != 0 {
            return Err(io::Error::last_os_error());
        }
        match stat.st_mode & libc::S_IFMT {
            libc::S_IFDIR => dir = next,
            libc::S_IFLNK => return Err(io::Error::from_raw_os_error(libc::ELOOP)),
            _ => return Err(io::Error::from_raw_os_error(libc::ENOTDIR)),
        }
    }
    Ok(dir)
}

fn c_string(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

/// A descriptor just returned by a call, or the call's error.
fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Mounts a read-only FUSE filesystem named `fsname` on directory `dir` (from [`open_dir`])
/// for `owner`: the kernel lets only that user's processes in, unless `allow_other`. Returns
/// the /dev/fuse descriptor to serve it from. Needs root.
pub fn mount_fuse(
    dir: &OwnedFd,
    fsname: &str,
    owner: (u32, u32),
    allow_other: bool,
) -> io::Result<OwnedFd> {
    let invalid = |_| io::Error::new(io::ErrorKind::InvalidInput, "name contains NUL");
    let device = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")?;
    let mut data = format!(
        "fd={},rootmode=40000,user_id={},group_id={},default_permissions",
        device.as_raw_fd(),
        owner.0,
        owner.1
    );
    if allow_other {
        data.push_str(",allow_other");
    }
    // The magic link names the directory itself, not a path to it.
    let target = CString::new(format!("/proc/self/fd/{}", dir.as_raw_fd())).map_err(invalid)?;
    let source = CString::new(fsname).map_err(invalid)?;
    let data = CString::new(data).map_err(invalid)?;
    let flags = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
    // SAFETY: every pointer is a valid NUL-terminated string for the duration of the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            c"fuse.megafs".as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(OwnedFd::from(device))
}

/// Mounts an overlay named `source` with `options` (overlayfs's: the layers, escaped) onto
/// directory `dir` (from [`open_dir`]). Needs root.
pub fn mount_overlay(dir: &OwnedFd, source: &str, options: &str) -> io::Result<()> {
    let invalid = |_| io::Error::new(io::ErrorKind::InvalidInput, "an option contains NUL");
    let target = CString::new(format!("/proc/self/fd/{}", dir.as_raw_fd())).map_err(invalid)?;
    let source = CString::new(source).map_err(invalid)?;
    let data = CString::new(options).map_err(invalid)?;
    let flags = libc::MS_NOSUID | libc::MS_NODEV;
    // SAFETY: every pointer is a valid NUL-terminated string for the duration of the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            c"overlay".as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Mounts a FUSE filesystem at `mountpoint` through the setuid `fusermount3`, as libfuse does
/// for users who may not mount (or open /dev/fuse) themselves, and returns the /dev/fuse
/// descriptor it hands back. `options` are fusermount's `-o` options.
pub fn fusermount(mountpoint: &Path, options: &str) -> io::Result<OwnedFd> {
    let (ours, theirs) = UnixStream::pair()?;
    let their_fd = theirs.as_raw_fd();
    let mut command = Command::new("fusermount3");
    command
        .arg("-o")
        .arg(options)
        .arg("--")
        .arg(mountpoint)
        .env("_FUSE_COMMFD", their_fd.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // SAFETY: between fork and exec this only calls fcntl, which is async-signal-safe, on a
    // descriptor that stays open for the child's lifetime.
    unsafe {
        command.pre_exec(move || {
            let flags = libc::fcntl(their_fd, libc::F_GETFD);
            if flags < 0 || libc::fcntl(their_fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn().map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot run fusermount3 (package fuse3): {e}"),
        )
    })?;
    drop(theirs);
    let received = receive_fd(&ours);
    let output = child.wait_with_output()?;
    match received {
        Ok(fd) if output.status.success() => Ok(fd),
        _ => Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "fusermount3 failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        )),
    }
}

/// Receives one file descriptor sent with SCM_RIGHTS.
fn receive_fd(socket: &UnixStream) -> io::Result<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: byte.len(),
    };
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: msghdr is plain data; zero is a valid starting value for every field.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = &mut iov;
    message.msg_iovlen = 1;
    message.msg_control = control.as_mut_ptr().cast();
    message.msg_controllen = space as _;
    // SAFETY: message points at buffers that live until the call returns.
    let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut message, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: message was filled by recvmsg; CMSG_FIRSTHDR checks the control length.
    let header = unsafe { libc::CMSG_FIRSTHDR(&message) };
    if header.is_null() {
        return Err(io::Error::other("fusermount3 sent no descriptor"));
    }
    // SAFETY: header is non-null and points into `control`, which outlives this read.
    let (level, kind) = unsafe { ((*header).cmsg_level, (*header).cmsg_type) };
    if level != libc::SOL_SOCKET || kind != libc::SCM_RIGHTS {
        return Err(io::Error::other("fusermount3 sent no descriptor"));
    }
    // SAFETY: an SCM_RIGHTS message carries at least one int; it may be unaligned.
    let fd = unsafe { std::ptr::read_unaligned(libc::CMSG_DATA(header).cast::<libc::c_int>()) };
    // SAFETY: the kernel just installed this descriptor in our table; we own it now.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Like [`unmount`], but rides out a busy mount for up to a second: the kernel releases a
/// just-closed FUSE file asynchronously, so a mount can look busy for a moment after the last
/// file was closed.
pub fn unmount_patiently(path: &Path, lazy: bool) -> io::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        match unmount(path, lazy) {
            Err(e)
                if e.raw_os_error() == Some(libc::EBUSY)
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(25));
            }
            result => return result,
        }
    }
}

/// Unmounts `path`; `lazy` detaches it even while files are open. Root calls umount2(2)
/// directly; other users go through the setuid `fusermount3`.
pub fn unmount(path: &Path, lazy: bool) -> io::Result<()> {
    // A user may own the directories above their mountpoint and swap one for a symlink: root
    // reaches the mount through a descriptor of its parent, opened with no symlink on the way,
    // and does not follow a symlink in its place either.
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    let parent = open_dir(parent, true)?;
    let mut target = format!("/proc/self/fd/{}/", parent.as_raw_fd()).into_bytes();
    target.extend_from_slice(name.as_bytes());
    let c_path = c_string(&target)?;
    let flags = libc::UMOUNT_NOFOLLOW | if lazy { libc::MNT_DETACH } else { 0 };
    // SAFETY: c_path is a valid NUL-terminated string for the duration of the call.
    if unsafe { libc::umount2(c_path.as_ptr(), flags) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EPERM) {
        return Err(err);
    }
    let mut cmd = Command::new("fusermount3");
    cmd.arg("-u");
    if lazy {
        cmd.arg("-z");
    }
    let output = cmd.arg("--").arg(path).output()?;
    if output.status.success() {
        Ok(())
    } else {
        let text = String::from_utf8_lossy(&output.stderr);
        if text.contains("busy") {
            Err(io::Error::from_raw_os_error(libc::EBUSY))
        } else {
            Err(io::Error::other(format!("fusermount3 -u: {}", text.trim())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo_fields() {
        assert_eq!(unescape_mountinfo("/tmp/a\\040b"), "/tmp/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/back\\134slash"), "/back\\slash");
    }

    #[test]
    fn finds_megafs_lines() {
        let line = "42 27 0:39 / /tmp/m\\040x ro,nosuid - fuse megafs:rg ro,user_id=0";
        assert_eq!(
            parse_megafs_line(line),
            Some(MegafsMount {
                mountpoint: PathBuf::from("/tmp/m x"),
                name: "rg".into(),
                owner: None,
                lower: None,
            })
        );
        let users = "42 27 0:39 / /m ro - fuse.megafs megafs:a ro,user_id=1001,group_id=100";
        assert_eq!(
            parse_megafs_line(users).and_then(|m| m.owner),
            Some((1001, 100))
        );
        let other = "42 27 0:39 / /home ro - ext4 /dev/sda1 rw";
        assert_eq!(parse_megafs_line(other), None);
        let sshfs = "42 27 0:39 / /mnt ro - fuse.sshfs host:/ rw";
        assert_eq!(parse_megafs_line(sshfs), None);
        let overlay = "50 27 0:45 / /home/a/rg rw - overlay megafs:rg rw,lowerdir=/run/megafs/lower/rg,upperdir=/u,workdir=/w";
        let overlay = parse_megafs_line(overlay).expect("an overlay of ours");
        assert_eq!(overlay.lower, Some(PathBuf::from("/run/megafs/lower/rg")));
        assert_eq!(overlay.mountpoint, PathBuf::from("/home/a/rg"));
        let theirs = "50 27 0:45 / /var/lib/docker/x rw - overlay overlay rw,lowerdir=/l";
        assert_eq!(parse_megafs_line(theirs), None);
    }

    #[test]
    fn directories_open_without_symlinks_on_the_way() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = dir.path().join("real");
        std::fs::create_dir(&real).expect("mkdir");
        std::os::unix::fs::symlink(&real, dir.path().join("link")).expect("symlink");
        std::fs::write(dir.path().join("file"), b"x").expect("write");
        let errno = |p: &str| {
            open_dir(&dir.path().join(p), true)
                .err()
                .and_then(|e| e.raw_os_error())
        };
        assert!(open_dir(&real, true).is_ok());
        assert_eq!(errno("link"), Some(libc::ELOOP));
        assert_eq!(errno("link/."), Some(libc::ELOOP));
        assert_eq!(errno("file"), Some(libc::ENOTDIR));
        assert_eq!(errno("missing"), Some(libc::ENOENT));
        assert!(
            open_dir(&dir.path().join("link"), false).is_ok(),
            "root's way follows"
        );
    }

    #[test]
    fn root_is_a_mount_point() {
        assert!(is_mount_point(Path::new("/")));
        assert!(!is_mount_point(Path::new("/surely/not/mounted/here")));
    }
}
