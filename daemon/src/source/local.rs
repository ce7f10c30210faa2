//! A git repository on this machine, read through gitoxide. Also the demo's source.

use std::path::PathBuf;

use async_trait::async_trait;

use super::{Snapshot, Source, SourceError};
use crate::object::ObjectId;

pub struct LocalSource {
    path: PathBuf,
    reference: String,
    repo: gix::ThreadSafeRepository,
}

impl LocalSource {
    /// Opens the repository at `location` (a path, bare or not, or a `file://` URL).
    /// `reference` names a branch, tag or commit; empty means HEAD.
    pub fn open(location: &str, reference: &str) -> Result<Self, SourceError> {
        let path = PathBuf::from(location.strip_prefix("file://").unwrap_or(location));
        if !path.is_dir() {
            return Err(SourceError::RepoNotFound(format!(
                "{} does not exist or is not a directory",
                path.display()
            )));
        }
        let repo = gix::open(&path).map_err(|e| {
            SourceError::RepoNotFound(format!("{} is not a git repository: {e}", path.display()))
        })?;
        Ok(LocalSource {
            path,
            reference: if reference.is_empty() {
                "HEAD".to_string()
            } else {
                reference.to_string()
            },
            repo: repo.into_sync(),
        })
    }

    fn local_error(&self, detail: impl std::fmt::Display) -> SourceError {
        SourceError::Local {
            repo: self.path.display().to_string(),
            detail: detail.to_string(),
        }
    }

    /// Reads one object of the expected kind. The object database is local disk, so this runs
    /// on the blocking pool rather than stalling the async workers.
    async fn read_object(
        &self,
        oid: ObjectId,
        kind: gix::object::Kind,
    ) -> Result<Vec<u8>, SourceError> {
        let repo = self.repo.clone();
        let server = self.path.display().to_string();
        tokio::task::spawn_blocking(move || {
            let repo = repo.to_thread_local();
            let id = to_gix(oid);
            let object = repo
                .find_object(id)
                .map_err(|e| SourceError::ObjectMissing {
                    server: server.clone(),
                    oid,
                    detail: e.to_string(),
                })?;
            if object.kind != kind {
                return Err(SourceError::ObjectMissing {
                    server,
                    oid,
                    detail: format!("it is a {}, not a {kind}", object.kind),
                });
            }
            Ok(object.detach().data)
        })
        .await
        .map_err(|e| self.local_error(e))?
    }
}

fn to_gix(oid: ObjectId) -> gix::ObjectId {
    gix::ObjectId::from_bytes_or_panic(oid.as_bytes())
}

fn from_gix(id: &gix::oid) -> ObjectId {
    let mut bytes = [0u8; 20];
    bytes.copy_from_slice(id.as_bytes());
    ObjectId::from_bytes(bytes)
}

#[async_trait]
impl Source for LocalSource {
    fn describe(&self) -> String {
        format!("local {}", self.path.display())
    }

    async fn resolve(&self) -> Result<Snapshot, SourceError> {
        let repo = self.repo.clone();
        let reference = self.reference.clone();
        let repo_name = self.path.display().to_string();
        tokio::task::spawn_blocking(move || {
            let repo = repo.to_thread_local();
            let unknown = || SourceError::UnknownRef {
                repo: repo_name.clone(),
                reference: reference.clone(),
            };
            let id = repo
                .rev_parse_single(reference.as_str())
                .map_err(|_| unknown())?;
            let commit = id
                .object()
                .map_err(|_| unknown())?
                .peel_to_commit()
                .map_err(|_| unknown())?;
            let tree = commit.tree_id().map_err(|_| unknown())?;
            let time = commit.time().map(|t| t.seconds).unwrap_or(0);
            Ok(Snapshot {
                commit: from_gix(&commit.id),
                root_tree: from_gix(&tree),
                commit_time: time,
                root_body: None,
            })
        })
        .await
        .map_err(|e| self.local_error(e))?
    }

    async fn fetch_tree(&self, _path: &str, oid: ObjectId) -> Result<Vec<u8>, SourceError> {
        self.read_object(oid, gix::object::Kind::Tree).await
    }

    async fn fetch_blob(&self, oid: ObjectId) -> Result<Vec<u8>, SourceError> {
        self.read_object(oid, gix::object::Kind::Blob).await
    }

    async fn blob_size(&self, oid: ObjectId) -> Result<u64, SourceError> {
        let repo = self.repo.clone();
        let server = self.path.display().to_string();
        tokio::task::spawn_blocking(move || {
            let repo = repo.to_thread_local();
            let header = repo
                .find_header(to_gix(oid))
                .map_err(|e| SourceError::ObjectMissing {
                    server,
                    oid,
                    detail: e.to_string(),
                })?;
            Ok(header.size())
        })
        .await
        .map_err(|e| self.local_error(e))?
    }
}
