//! What the kernel is told: attributes and listings in fuser's types.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use fuser::{FileAttr, FileType, Generation, INodeNo, ReplyDirectory, ReplyDirectoryPlus};

use crate::fs::{Attr, DirEntry, MountFs};
use crate::object::EntryKind;

/// How long the kernel may cache entries and attributes. A mount shows one immutable commit,
/// and a refresh gives whatever changed new inodes and invalidates the root's stale entries.
pub(super) const TTL: Duration = Duration::from_secs(3600);

/// Attributes for a readdirplus entry whose real ones are not known yet: given with no time
/// to live, so the kernel looks the entry up before any use.
pub(super) fn placeholder_attr(ino: u64, kind: EntryKind) -> FileAttr {
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
pub(super) fn fill_listing(
    mut reply: ReplyDirectory,
    ino: u64,
    parent: u64,
    entries: &[DirEntry],
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
pub(super) fn fill_plus(
    mut reply: ReplyDirectoryPlus,
    fs: &MountFs,
    dir: u64,
    parent: u64,
    entries: &[DirEntry],
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

pub(super) fn file_type(kind: EntryKind) -> FileType {
    match kind {
        EntryKind::Directory | EntryKind::Submodule => FileType::Directory,
        EntryKind::File | EntryKind::Executable => FileType::RegularFile,
        EntryKind::Symlink => FileType::Symlink,
    }
}

pub(super) fn file_attr(attr: &Attr) -> FileAttr {
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
