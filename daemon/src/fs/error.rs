//! Errors of filesystem operations, each with the errno the kernel gets.

use std::sync::Arc;

use crate::object::ObjectError;
use crate::repo_path::RepoPath;
use crate::source::SourceError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum FsError {
    #[error("no such entry")]
    NotFound,
    #[error("no such path in the mount: {0}")]
    NoSuchPath(RepoPath),
    #[error("unknown inode {0}")]
    StaleInode(u64),
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("not a symlink")]
    NotSymlink,
    #[error("{0}")]
    Source(Arc<SourceError>),
    #[error("{what} from {server} failed verification: {error}")]
    Corrupt {
        what: String,
        server: String,
        error: ObjectError,
    },
    #[error("cache: {0}")]
    Cache(Arc<std::io::Error>),
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    #[error(
        "the imported repository at {import} moved on {server} since this mount entered it, \
         and {path} is not there as shown (remount to see the repository as it is now)"
    )]
    ImportMoved {
        import: RepoPath,
        path: RepoPath,
        server: String,
    },
    #[error("more than {0} entries differ between the two commits")]
    TooManyChanges(usize),
    #[error("internal: {0}")]
    Internal(String),
}

impl FsError {
    /// The errno the kernel (and so the reading program) sees.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound | FsError::NoSuchPath(_) => libc::ENOENT,
            FsError::StaleInode(_) => libc::ESTALE,
            FsError::NotDir => libc::ENOTDIR,
            FsError::IsDir => libc::EISDIR,
            FsError::NotSymlink => libc::EINVAL,
            FsError::Source(_)
            | FsError::Corrupt { .. }
            | FsError::Cache(_)
            | FsError::Timeout(_)
            | FsError::ImportMoved { .. }
            | FsError::TooManyChanges(_)
            | FsError::Internal(_) => libc::EIO,
        }
    }

    /// Whether this is worth a warning in the log (server and cache trouble), rather than an
    /// everyday answer like "no such file".
    pub fn is_failure(&self) -> bool {
        self.errno() == libc::EIO
    }
}

impl From<SourceError> for FsError {
    fn from(e: SourceError) -> Self {
        FsError::Source(Arc::new(e))
    }
}

impl FsError {
    /// The cache on disk failed (or a cache file read): logged here, where it is made, once.
    pub fn cache(e: std::io::Error) -> FsError {
        tracing::error!(error = %e, "the cache failed");
        FsError::Cache(Arc::new(e))
    }
}
