//! A git repository on this machine, read through gitoxide. Also the demo's source.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use futures::StreamExt;
use tokio::io::AsyncReadExt;

use super::{ByteStream, RepoPath, Snapshot, Source, SourceError};
use crate::metrics::ServerMetrics;
use crate::object::ObjectId;

/// Blobs at least this big are streamed out of the repository by `git cat-file` (gitoxide
/// reads an object whole into memory); smaller ones are read directly.
const STREAM_FROM: u64 = 4 << 20;

/// The piece size of a streamed blob.
const PIECE: usize = 256 * 1024;

pub struct LocalSource {
    path: PathBuf,
    /// Every read of the repository, timed.
    meter: Arc<ServerMetrics>,
    reference: String,
    repo: gix::ThreadSafeRepository,
}

impl LocalSource {
    /// Opens the repository at `path` (bare or not). `reference` names a branch, tag or
    /// commit; empty means HEAD.
    pub fn open(
        path: &Path,
        reference: &str,
        meter: Arc<ServerMetrics>,
    ) -> Result<Self, SourceError> {
        let path = path.to_path_buf();
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
            meter,
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

    /// Runs `work` on the repository. The object database is local disk, so this runs on the
    /// blocking pool rather than stalling the async workers; each read is timed as a request.
    async fn on_disk<T: Send + 'static>(
        &self,
        work: impl FnOnce(gix::Repository) -> Result<T, SourceError> + Send + 'static,
    ) -> Result<T, SourceError> {
        let repo = self.repo.clone();
        let read = tokio::task::spawn_blocking(move || work(repo.to_thread_local()));
        self.meter
            .request(async { read.await.map_err(|e| self.local_error(e))? })
            .await
    }

    /// Reads one object of the expected kind.
    async fn read_object(
        &self,
        oid: ObjectId,
        kind: gix::object::Kind,
    ) -> Result<Vec<u8>, SourceError> {
        let server = self.path.display().to_string();
        self.on_disk(move |repo| {
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
    }
}

impl LocalSource {
    /// Blob `oid` as `git cat-file` writes it, piece by piece. The fetch above verifies what
    /// comes (length and hash), so a git that fails shows as a short or wrong blob.
    fn cat_file(&self, oid: ObjectId) -> std::io::Result<ByteStream> {
        let mut child = tokio::process::Command::new("git")
            .arg("-C")
            .arg(&self.path)
            .args(["cat-file", "blob", &oid.to_hex()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| std::io::Error::other("git cat-file has no stdout"))?;
        let repo = self.path.display().to_string();
        // The child lives in the stream's state: dropping the stream kills it.
        let pieces = futures::stream::unfold(Some((child, stdout)), move |state| {
            let repo = repo.clone();
            async move {
                let (child, mut stdout) = state?;
                let mut piece = vec![0u8; PIECE];
                match stdout.read(&mut piece).await {
                    Ok(0) => None,
                    Ok(n) => {
                        piece.truncate(n);
                        Some((Ok(bytes::Bytes::from(piece)), Some((child, stdout))))
                    }
                    Err(e) => {
                        let error = SourceError::Local {
                            repo,
                            detail: format!("git cat-file: {e}"),
                        };
                        Some((Err(error), None))
                    }
                }
            }
        });
        Ok(pieces.boxed())
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
        let reference = self.reference.clone();
        let repo_name = self.path.display().to_string();
        self.on_disk(move |repo| {
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
    }

    async fn fetch_tree(&self, _path: &RepoPath, oid: ObjectId) -> Result<Vec<u8>, SourceError> {
        self.read_object(oid, gix::object::Kind::Tree).await
    }

    async fn fetch_blob(&self, oid: ObjectId) -> Result<Vec<u8>, SourceError> {
        self.read_object(oid, gix::object::Kind::Blob).await
    }

    async fn fetch_blob_stream(&self, oid: ObjectId) -> Result<(u64, ByteStream), SourceError> {
        let len = self.blob_size(oid).await?;
        if len >= STREAM_FROM {
            match self.cat_file(oid) {
                Ok(pieces) => return Ok((len, pieces)),
                // No git on this machine: read it whole after all.
                Err(e) => tracing::debug!(error = %e, "cannot run git cat-file"),
            }
        }
        let bytes = bytes::Bytes::from(self.fetch_blob(oid).await?);
        Ok((len, futures::stream::once(async move { Ok(bytes) }).boxed()))
    }

    async fn blob_size(&self, oid: ObjectId) -> Result<u64, SourceError> {
        let server = self.path.display().to_string();
        self.on_disk(move |repo| {
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
    }
}
