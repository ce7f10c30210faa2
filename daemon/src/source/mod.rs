//! Where a mount's objects come from. One trait, one implementation per kind of server; the
//! filesystem never knows which it talks to. Sources only produce bytes: trees and blobs
//! returned or streamed, which the caller (the filesystem's loader) verifies against their
//! id, and batches of blobs written into a [`BlobSink`] (the cache, which keeps each only
//! under the id its bytes hash to). Nothing here knows the cache itself.

pub mod delta;
pub mod fetch_answer;
pub mod git;
pub mod http;
pub mod local;
pub mod mega;
pub mod pack;
pub mod pack_sinks;
pub mod pktline;
pub mod sink;

use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt};

use crate::object::ObjectId;
pub use crate::repo_path::RepoPath;
pub use sink::{BlobSink, PendingBlob, SinkError};

/// The most one answer of a server may make the daemon hold in memory: a listing, a JSON
/// answer, a blob fetched whole, an object of a pack kept in memory, a delta's result. Bigger
/// files stream into the cache instead; a server sending more is refused, not believed.
pub const MAX_IN_MEMORY: u64 = 256 << 20;

/// The most all objects of one pack kept in memory (a commit and its trees) may take.
pub const MAX_PACK_IN_MEMORY: u64 = 1 << 30;

/// How many blobs a source without batches fetches at once for a batch.
const BLOB_PARALLELISM: usize = 8;

/// A blob's content as it arrives.
pub type ByteStream = BoxStream<'static, Result<bytes::Bytes, SourceError>>;

/// The commit a mount shows.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub commit: ObjectId,
    pub root_tree: ObjectId,
    /// Unix seconds.
    pub commit_time: i64,
    /// The root tree's body when resolving already fetched it (Mega lists the root to learn it).
    pub root_body: Option<Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("server {server} is unreachable: {detail}")]
    Unreachable { server: String, detail: String },
    #[error("timed out talking to {server}")]
    Timeout { server: String },
    #[error("repository not found: {0}")]
    RepoNotFound(String),
    #[error("unknown ref {reference:?} in {repo}")]
    UnknownRef { repo: String, reference: String },
    #[error(
        "{reference:?} looks like an abbreviated commit id, and no branch or tag of {repo} \
         points at a commit it abbreviates (git's protocol resolves only full ids): give the \
         full 40-character id (`git rev-parse {reference}` in a clone)"
    )]
    AbbreviatedId { repo: String, reference: String },
    #[error("{reference:?} abbreviates several commits of {repo}: give more of the id")]
    AmbiguousId { repo: String, reference: String },
    #[error("{0}")]
    Unsupported(String),
    #[error(
        "the trunk moved: {path} on {server} is no longer tree {expected} (remount to see the new trunk)"
    )]
    TrunkMoved {
        server: String,
        path: String,
        expected: ObjectId,
    },
    #[error("object {oid} not found on {server}: {detail}")]
    ObjectMissing {
        server: String,
        oid: ObjectId,
        detail: String,
    },
    /// An answer that broke off or made no sense.
    #[error("server {server} answered {what} with an error: {detail}")]
    Server {
        server: String,
        what: String,
        detail: String,
    },
    /// An answer with an HTTP error status.
    #[error(
        "server {server} answered {what} with HTTP {status}{}",
        colon_then(detail)
    )]
    Http {
        server: String,
        what: String,
        status: reqwest::StatusCode,
        detail: String,
    },
    #[error("reading {repo}: {detail}")]
    Local { repo: String, detail: String },
    /// What the source wrote into refused it: the cache failing, or bytes that do not hash
    /// to the id they came under.
    #[error("{0}")]
    Sink(#[from] SinkError),
    /// An answer past what the daemon holds: refused, and not asked for again.
    #[error("server {server} answered {what} with {size}, more than the {limit} bytes allowed")]
    TooBig {
        server: String,
        what: String,
        size: String,
        limit: u64,
    },
}

impl SourceError {
    /// Trouble reaching a healthy server, as opposed to an answer (not found, bad ref):
    /// the kind of failure that cached data may stand in for, and that is worth trying again.
    pub fn is_unavailable(&self) -> bool {
        match self {
            SourceError::Unreachable { .. }
            | SourceError::Timeout { .. }
            | SourceError::Server { .. } => true,
            SourceError::Http { status, .. } => status.is_server_error(),
            _ => false,
        }
    }

    /// Whether a request that failed so is worth sending again: the same as unavailable (a
    /// 4xx is an answer, a too-big answer would come as big again).
    pub fn is_retryable(&self) -> bool {
        self.is_unavailable()
    }
}

fn colon_then(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

/// A repository the filesystem can list and read.
#[async_trait]
pub trait Source: Send + Sync {
    /// For `status` and logs, e.g. `mega http://127.0.0.1:8000 /third-party/rg`.
    fn describe(&self) -> String;

    /// Resolves what the mount shows: the commit and its root tree.
    async fn resolve(&self) -> Result<Snapshot, SourceError>;

    /// The raw body of tree `oid`, found at `path`.
    async fn fetch_tree(&self, path: &RepoPath, oid: ObjectId) -> Result<Vec<u8>, SourceError>;

    /// The raw body of the tree `path` serves now, whatever its parent listed there; None
    /// where nothing is. Only a source whose paths follow a moving trunk (Mega) has this: an
    /// imported repository's root is found by it (see `fs::loader`). Others serve trees by
    /// id alone.
    async fn tree_at(&self, _path: &RepoPath) -> Result<Option<Vec<u8>>, SourceError> {
        Ok(None)
    }

    /// The raw content of blob `oid`.
    async fn fetch_blob(&self, oid: ObjectId) -> Result<Vec<u8>, SourceError>;

    /// The size of blob `oid`, without its content where the source allows.
    async fn blob_size(&self, oid: ObjectId) -> Result<u64, SourceError>;

    /// Several blobs at once, where the source can batch them (default: a few at a time),
    /// each written into `sink` as it arrives and kept only under the id it hashes to.
    /// Returns each blob's length, or why it did not come: one failing does not stop the
    /// others. A blob the source sent but that does not hash to the id asked for is a
    /// [`SinkError::Corrupt`].
    async fn fetch_blobs_into(
        &self,
        oids: &[ObjectId],
        sink: &dyn BlobSink,
    ) -> Vec<(ObjectId, Result<u64, SourceError>)> {
        let fetches = oids.iter().map(|&oid| async move {
            let result = async {
                let (len, pieces) = self.fetch_blob_stream(oid).await?;
                write_stream(sink, oid, len, pieces).await
            };
            (oid, result.await)
        });
        futures::stream::iter(fetches.collect::<Vec<_>>())
            .buffer_unordered(BLOB_PARALLELISM)
            .collect()
            .await
    }

    /// Whether [`Source::fetch_small_files_into`] works: the server leaves files out by size.
    fn filters_blobs(&self) -> bool {
        false
    }

    /// Tree `oid`'s body if the source holds it already (a git mount's trees all came with
    /// its commit), without asking the server.
    fn tree_at_hand(&self, _oid: &ObjectId) -> Option<Vec<u8>> {
        None
    }

    /// Whether learning a blob's size costs fetching its content anyway (then the content is
    /// fetched into the cache instead, so a later read is free).
    fn sizes_need_content(&self) -> bool {
        false
    }

    /// The files smaller than `limit` bytes in directory trees `trees` and their
    /// subdirectories, `depth` levels deep (1: their own files only), fetched into `sink` in
    /// one go, the bigger ones left out by the server; each kept one's length. None where the
    /// source cannot leave files out (then sizes cost whole contents).
    async fn fetch_small_files_into(
        &self,
        _trees: &[ObjectId],
        _depth: u32,
        _limit: u64,
        _sink: &dyn BlobSink,
    ) -> Option<Result<std::collections::HashMap<ObjectId, u64>, SourceError>> {
        None
    }

    /// Whether [`Source::fetch_whole_trees_into`] works.
    fn fetches_whole_trees(&self) -> bool {
        false
    }

    /// Every file of trees `trees`, all the way down, fetched into `sink` in one go; each kept one's length. None where the source fetches files by id
    /// only. A git server packs a tree's files far more cheaply than the same files asked
    /// for by id: it knows their paths, so it finds deltas among them and reuses its own.
    async fn fetch_whole_trees_into(
        &self,
        _trees: &[ObjectId],
        _sink: &dyn BlobSink,
    ) -> Option<Result<std::collections::HashMap<ObjectId, u64>, SourceError>> {
        None
    }

    /// The length and content of blob `oid` as it arrives, so that big files never have to
    /// fit in memory. By default, the whole blob at once.
    async fn fetch_blob_stream(&self, oid: ObjectId) -> Result<(u64, ByteStream), SourceError> {
        let bytes = self.fetch_blob(oid).await?;
        let len = bytes.len() as u64;
        let chunk = bytes::Bytes::from(bytes);
        Ok((len, futures::stream::once(async move { Ok(chunk) }).boxed()))
    }
}

/// Writes blob `oid` of `len` bytes into `sink` as its pieces arrive; its length once kept.
pub async fn write_stream(
    sink: &dyn BlobSink,
    oid: ObjectId,
    len: u64,
    mut pieces: ByteStream,
) -> Result<u64, SourceError> {
    let mut pending = sink.begin_blob(Some(oid), len)?;
    while let Some(piece) = pieces.next().await {
        pending.write(&piece?)?;
    }
    pending.finish()?;
    Ok(len)
}
