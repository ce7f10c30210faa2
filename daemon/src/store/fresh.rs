//! A file being written for the cache, under no name until it is whole and verified. Where
//! the filesystem can (`O_TMPFILE`), it has no name at all while it is written and gets its
//! final one by a link: no directory that every writer shares is locked for each create and
//! rename, and a crash leaves nothing behind. Elsewhere it is written under a unique name in
//! `tmp/` and renamed into place.

use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::sys;

pub(super) struct FreshFile {
    file: File,
    /// Where it is written when it has a name of its own.
    named: Option<PathBuf>,
    /// `tmp/`, for a name of its own if it needs one after all (see [`FreshFile::keep_as`]).
    tmp: PathBuf,
    unique: String,
}

impl FreshFile {
    /// A new file for the cache, its unnamed kind where the filesystem has it, else
    /// `tmp/<unique>` (`tmp_dir` is `tmp` opened).
    pub(super) fn create(tmp_dir: &impl AsFd, tmp: &Path, unique: String) -> io::Result<FreshFile> {
        let (file, named) = match unnamed(tmp_dir)? {
            Some(file) => (file, None),
            None => {
                let path = tmp.join(&unique);
                (File::create(&path)?, Some(path))
            }
        };
        Ok(FreshFile {
            file,
            named,
            tmp: tmp.to_path_buf(),
            unique,
        })
    }

    pub(super) fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// The file opened again, for reading while it is written (it stays readable once kept).
    pub(super) fn reopen(&self) -> io::Result<File> {
        match &self.named {
            Some(path) => File::open(path),
            None => File::open(format!("/proc/self/fd/{}", self.file.as_raw_fd())),
        }
    }

    /// Gives the file its final name `path`, which is `rel` below directory `dir`, replacing
    /// whatever is there. On failure it can be tried again (once `path`'s directory is made,
    /// say).
    pub(super) fn keep_as(&mut self, dir: &impl AsFd, rel: &[u8], path: &Path) -> io::Result<()> {
        if self.named.is_none() {
            match sys::link_open_file_at(&self.file, dir, rel) {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    // What is there goes, as a rename would replace it: a name in `tmp/`
                    // first, then the rename.
                    let aside = self.tmp.join(&self.unique);
                    sys::link_open_file(&self.file, &aside)?;
                    self.named = Some(aside);
                }
                other => return other,
            }
        }
        if let Some(named) = &self.named {
            fs::rename(named, path)?;
            self.named = None;
        }
        Ok(())
    }
}

impl Drop for FreshFile {
    fn drop(&mut self) {
        if let Some(path) = self.named.take() {
            let _ = fs::remove_file(path);
        }
    }
}

/// An unnamed file in `dir`'s filesystem, or None where the filesystem or the system has no
/// such thing (or no `/proc` to name it by later).
fn unnamed(dir: &impl AsFd) -> io::Result<Option<File>> {
    static PROC: OnceLock<bool> = OnceLock::new();
    if !*PROC.get_or_init(|| Path::new("/proc/self/fd").is_dir()) {
        return Ok(None);
    }
    match sys::unnamed_file_in(dir) {
        Ok(file) => Ok(Some(file)),
        // No O_TMPFILE here (older kernels take it for O_DIRECTORY: EISDIR).
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn written_unnamed_then_kept_under_its_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tmp = dir.path().join("tmp");
        fs::create_dir(&tmp).expect("tmp");
        let tmp_dir = sys::open_dir_handle(&tmp).expect("tmp handle");
        let top = sys::open_dir_handle(dir.path()).expect("dir handle");
        let mut fresh = FreshFile::create(&tmp_dir, &tmp, "one".into()).expect("create");
        assert!(
            fresh
                .keep_as(
                    &top,
                    b"no-such-dir/kept",
                    &dir.path().join("no-such-dir/kept")
                )
                .is_err(),
            "no directory to keep it in"
        );
        fresh.file().write_all(b"hello").expect("write");
        let mut read = String::new();
        fresh
            .reopen()
            .expect("reopen")
            .read_to_string(&mut read)
            .expect("read");
        assert_eq!(read, "hello");
        let kept = dir.path().join("kept");
        fresh.keep_as(&top, b"kept", &kept).expect("keep");
        assert_eq!(fs::read(&kept).expect("kept"), b"hello");
        assert_eq!(
            fs::read_dir(&tmp).expect("tmp").count(),
            0,
            "nothing left in tmp/"
        );
    }

    #[test]
    fn keeping_replaces_what_is_there() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kept = dir.path().join("kept");
        fs::write(&kept, b"old").expect("old");
        let top = sys::open_dir_handle(dir.path()).expect("dir handle");
        let mut fresh = FreshFile::create(&top, dir.path(), "two".into()).expect("create");
        fresh.file().write_all(b"new").expect("write");
        fresh.keep_as(&top, b"kept", &kept).expect("keep");
        assert_eq!(fs::read(&kept).expect("kept"), b"new");
        assert!(!dir.path().join("two").exists());
    }

    #[test]
    fn dropped_unkept_it_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let top = sys::open_dir_handle(dir.path()).expect("dir handle");
        let mut fresh = FreshFile::create(&top, dir.path(), "three".into()).expect("create");
        fresh.file().write_all(b"half").expect("write");
        drop(fresh);
        assert_eq!(fs::read_dir(dir.path()).expect("dir").count(), 0);
    }
}
