//! A Mega server through its HTTP API (see docs/architecture.md and the API contract):
//! listings with modes from `/api/v1/file/tree`, content from `/api/v1/file/blob/{oid}`,
//! sizes from `HEAD` on the blob, the commit from `/api/v1/latest-commit`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use reqwest::header::HeaderMap;
use reqwest::{Client, Method, Response, StatusCode};

use super::http::{self, redacted, root_cause};
use super::{ByteStream, RepoPath, Snapshot, Source, SourceError, MAX_IN_MEMORY};
use crate::metrics::ServerMetrics;
use crate::object::ObjectId;

pub struct MegaSource {
    client: Client,
    /// Every request to the server, timed.
    meter: Arc<ServerMetrics>,
    base: String,
    /// `base` as it may be shown: without any password in it.
    server: String,
    /// Normalised absolute path of the repository in the monorepo, e.g. `/third-party/rg`
    /// (as `Location` gives it).
    repo: String,
}

impl MegaSource {
    /// `timeout` bounds each request's waits; `connect_timeout` establishing a connection.
    pub fn new(
        base_url: &str,
        repo: &str,
        timeout: Duration,
        connect_timeout: Duration,
        proxy: Option<&str>,
        meter: Arc<ServerMetrics>,
    ) -> Result<Self, SourceError> {
        let base = base_url.trim_end_matches('/').to_string();
        let parsed = http::parse_url(&base, "Mega")?;
        let client = http::client(timeout, connect_timeout, proxy)?;
        Ok(MegaSource {
            client,
            meter,
            server: redacted(&parsed),
            base,
            repo: repo.to_string(),
        })
    }

    /// The monorepo path of `path` in the repository. Mega's API takes paths as text: a name
    /// that is not UTF-8 cannot be asked for.
    fn full_path(&self, path: &RepoPath) -> Result<String, SourceError> {
        let text = path.to_str().ok_or_else(|| {
            SourceError::Unsupported(format!(
                "{path} is not UTF-8, and Mega's API takes paths as text"
            ))
        })?;
        Ok(match (self.repo.as_str(), text) {
            (repo, "") => repo.to_string(),
            ("/", p) => format!("/{p}"),
            (repo, p) => format!("{repo}/{p}"),
        })
    }

    /// A GET answered with success: its whole body (bounded). Every request megafs makes is
    /// idempotent, so one that fails for want of a healthy server is tried again.
    async fn get(
        &self,
        endpoint: &str,
        query: &[(&str, &str)],
        what: &str,
    ) -> Result<Vec<u8>, SourceError> {
        let url = format!("{}{endpoint}", self.base);
        http::retry(&self.meter, what, || async {
            let response = self.send(Method::GET, &url, query, what).await?;
            http::body_within(response, MAX_IN_MEMORY, &self.server, what).await
        })
        .await
    }

    /// A GET answered with success, its body unread (to stream it).
    async fn open(&self, endpoint: &str, what: &str) -> Result<Response, SourceError> {
        let url = format!("{}{endpoint}", self.base);
        http::retry(&self.meter, what, || {
            self.send(Method::GET, &url, &[], what)
        })
        .await
    }

    /// A HEAD answered with success: its headers. A HEAD answer announces the size of a
    /// body it does not send (a blob's, however big), so its length is never held against
    /// the in-memory limit.
    async fn head(&self, endpoint: &str, what: &str) -> Result<HeaderMap, SourceError> {
        let url = format!("{}{endpoint}", self.base);
        http::retry(&self.meter, what, || async {
            let response = self.send(Method::HEAD, &url, &[], what).await?;
            Ok(response.headers().clone())
        })
        .await
    }

    /// One request; a success, or the error it means.
    async fn send(
        &self,
        method: Method,
        url: &str,
        query: &[(&str, &str)],
        what: &str,
    ) -> Result<Response, SourceError> {
        let response = self
            .client
            .request(method, url)
            .query(query)
            .send()
            .await
            .map_err(|e| http::transport_error(&self.server, &e))?;
        http::success(response, &self.server, what, error_text).await
    }

    /// A 404 from the server as the caller's own meaning of it.
    fn not_found_as(e: SourceError, meaning: impl FnOnce(String) -> SourceError) -> SourceError {
        match e {
            SourceError::Http { status, detail, .. } if status == StatusCode::NOT_FOUND => {
                meaning(detail)
            }
            other => other,
        }
    }

    async fn latest_commit(&self) -> Result<(ObjectId, i64), SourceError> {
        let what = format!("latest-commit of {}", self.repo);
        let body = self
            .get("/api/v1/latest-commit", &[("path", &self.repo)], &what)
            .await
            .map_err(|e| {
                Self::not_found_as(e, |_| {
                    SourceError::RepoNotFound(format!("{} on {}", self.repo, self.server))
                })
            })?;
        parse_latest_commit(&body).map_err(|e| SourceError::Server {
            server: self.server.clone(),
            what: what.clone(),
            detail: e.to_string(),
        })
    }

    fn blob_missing(&self, oid: ObjectId) -> impl FnOnce(String) -> SourceError + '_ {
        move |detail| SourceError::ObjectMissing {
            server: self.server.clone(),
            oid,
            detail,
        }
    }
}

/// Why Mega's `latest-commit` answer could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LatestCommitError {
    #[error("unreadable JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Id(#[from] crate::object::ObjectError),
    #[error("unreadable date {0:?}")]
    Date(String),
}

/// The commit and its time from Mega's `latest-commit` answer.
pub fn parse_latest_commit(body: &[u8]) -> Result<(ObjectId, i64), LatestCommitError> {
    let info: LatestCommit = serde_json::from_slice(body)?;
    let oid = ObjectId::from_hex(&info.oid)?;
    let time = info
        .date
        .trim()
        .parse::<i64>()
        .map_err(|_| LatestCommitError::Date(info.date.clone()))?;
    Ok((oid, time))
}

#[derive(serde::Deserialize)]
struct LatestCommit {
    oid: String,
    date: String,
}

#[async_trait]
impl Source for MegaSource {
    fn describe(&self) -> String {
        format!("mega {} {}", self.server, self.repo)
    }

    async fn resolve(&self) -> Result<Snapshot, SourceError> {
        let what = format!("tree {}", self.repo);
        let root_body = self
            .get("/api/v1/file/tree", &[("path", &self.repo)], &what)
            .await?;
        if root_body.is_empty() {
            return Err(SourceError::RepoNotFound(format!(
                "{} is not a directory on {}",
                self.repo, self.server
            )));
        }
        let (commit, commit_time) = self.latest_commit().await?;
        Ok(Snapshot {
            commit,
            root_tree: ObjectId::hash(crate::object::ObjectKind::Tree, &root_body),
            commit_time,
            root_body: Some(root_body),
        })
    }

    async fn fetch_tree(&self, path: &RepoPath, oid: ObjectId) -> Result<Vec<u8>, SourceError> {
        let full = self.full_path(path)?;
        let hex = oid.to_hex();
        let body = self
            .get(
                "/api/v1/file/tree",
                &[("path", &full), ("oid", &hex)],
                &format!("tree {full}"),
            )
            .await?;
        // An empty answer means the path's tree is no longer `oid`: the trunk moved.
        if body.is_empty() && oid != ObjectId::EMPTY_TREE {
            return Err(SourceError::TrunkMoved {
                server: self.server.clone(),
                path: full,
                expected: oid,
            });
        }
        Ok(body)
    }

    async fn tree_at(&self, path: &RepoPath) -> Result<Option<Vec<u8>>, SourceError> {
        let full = self.full_path(path)?;
        let what = format!("tree {full} (by path)");
        let body = self
            .get("/api/v1/file/tree", &[("path", &full)], &what)
            .await?;
        Ok((!body.is_empty()).then_some(body))
    }

    async fn fetch_blob(&self, oid: ObjectId) -> Result<Vec<u8>, SourceError> {
        let endpoint = format!("/api/v1/file/blob/{oid}");
        self.get(&endpoint, &[], &format!("blob {oid}"))
            .await
            .map_err(|e| Self::not_found_as(e, self.blob_missing(oid)))
    }

    async fn fetch_blob_stream(&self, oid: ObjectId) -> Result<(u64, ByteStream), SourceError> {
        let endpoint = format!("/api/v1/file/blob/{oid}");
        let what = format!("blob {oid}");
        let response = self
            .open(&endpoint, &what)
            .await
            .map_err(|e| Self::not_found_as(e, self.blob_missing(oid)))?;
        let len = response
            .content_length()
            .ok_or_else(|| SourceError::Server {
                server: self.server.clone(),
                what: what.clone(),
                detail: "no Content-Length".into(),
            })?;
        let server = self.server.clone();
        let stream = response
            .bytes_stream()
            .map(move |chunk| {
                chunk.map_err(|e| SourceError::Server {
                    server: server.clone(),
                    what: what.clone(),
                    detail: format!("the body broke off: {}", root_cause(&e)),
                })
            })
            .boxed();
        Ok((len, stream))
    }

    async fn blob_size(&self, oid: ObjectId) -> Result<u64, SourceError> {
        let endpoint = format!("/api/v1/file/blob/{oid}");
        let what = format!("HEAD blob {oid}");
        let headers = self.head(&endpoint, &what).await?;
        headers
            .get(reqwest::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| SourceError::Server {
                server: self.server.clone(),
                what,
                detail: "no Content-Length".into(),
            })
    }
}

/// The `err_message` of a Mega JSON error, else the body as text.
pub fn error_text(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct CommonResult {
        err_message: String,
    }
    match serde_json::from_slice::<CommonResult>(body) {
        Ok(r) => r.err_message,
        Err(_) => String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mega_error_messages() {
        let body = br#"{"req_result":false,"data":null,"err_message":"File not found"}"#;
        assert_eq!(error_text(body), "File not found");
        assert_eq!(
            error_text(b"Operation not supported"),
            "Operation not supported"
        );
    }

    #[test]
    fn joins_paths_under_the_repo() {
        let s = MegaSource::new(
            "http://127.0.0.1:1/",
            "/third-party/rg",
            Duration::from_secs(1),
            Duration::from_secs(1),
            None,
            Arc::default(),
        )
        .unwrap();
        let path =
            |p: &str| s.full_path(&RepoPath::from_components(p.split('/').map(str::as_bytes)));
        assert_eq!(path("").unwrap(), "/third-party/rg");
        assert_eq!(path("src/a").unwrap(), "/third-party/rg/src/a");
        assert!(s.full_path(&RepoPath::root().join(b"\xff")).is_err());
        let secret = MegaSource::new(
            "http://me:hunter2@host:8000",
            "/r",
            Duration::from_secs(1),
            Duration::from_secs(1),
            None,
            Arc::default(),
        )
        .unwrap();
        assert_eq!(secret.describe(), "mega http://me:***@host:8000 /r");
        assert!(MegaSource::new(
            "not a url",
            "/r",
            Duration::from_secs(1),
            Duration::from_secs(1),
            None,
            Arc::default(),
        )
        .is_err());
    }
}
