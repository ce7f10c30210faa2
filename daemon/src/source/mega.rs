//! A Mega server through its HTTP API (see docs/architecture.md and the API contract):
//! listings with modes from `/api/v1/file/tree`, content from `/api/v1/file/blob/{oid}`,
//! sizes from `HEAD` on the blob, the commit from `/api/v1/latest-commit`.

use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use reqwest::header::HeaderMap;
use reqwest::{Client, Method, Response, StatusCode};
use tracing::debug;

use super::http::{self, backoff, redacted, root_cause, ATTEMPTS};
use super::{ByteStream, Snapshot, Source, SourceError, MAX_IN_MEMORY};
use crate::object::ObjectId;

pub struct MegaSource {
    client: Client,
    base: String,
    /// `base` as it may be shown: without any password in it.
    server: String,
    /// Normalised absolute path of the repository in the monorepo, e.g. `/third-party/rg`.
    repo: String,
}

impl MegaSource {
    /// `timeout` bounds each request's waits; `connect_timeout` establishing a connection.
    pub fn new(
        base_url: &str,
        repo: &str,
        timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<Self, SourceError> {
        let base = base_url.trim_end_matches('/').to_string();
        let parsed = http::parse_url(&base, "Mega")?;
        let client = http::client(timeout, connect_timeout)?;
        Ok(MegaSource {
            client,
            server: redacted(&parsed),
            base,
            repo: normalize_repo_path(repo)?,
        })
    }

    fn full_path(&self, path: &str) -> String {
        match (self.repo.as_str(), path) {
            (repo, "") => repo.to_string(),
            ("/", p) => format!("/{p}"),
            (repo, p) => format!("{repo}/{p}"),
        }
    }

    /// One request, whole body included. Every request megafs makes is idempotent, so a
    /// dropped connection, a timeout or a 5xx is tried again (with growing, jittered pauses);
    /// a 4xx is an answer and is not.
    async fn send(
        &self,
        method: Method,
        endpoint: &str,
        query: &[(&str, &str)],
    ) -> Result<Answer, SourceError> {
        let url = format!("{}{endpoint}", self.base);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = self.attempt(method.clone(), &url, query).await;
            let retryable = match &result {
                Ok(answer) => answer.status.is_server_error(),
                Err(SourceError::Unreachable { .. })
                | Err(SourceError::Timeout { .. })
                | Err(SourceError::Server { .. }) => true,
                Err(_) => false,
            };
            if !retryable || attempt >= ATTEMPTS {
                return result;
            }
            let pause = backoff(attempt);
            debug!(url = %endpoint, attempt, ?pause, "retrying a failed request");
            tokio::time::sleep(pause).await;
        }
    }

    /// Like `send`, but hands back the response once its headers are in, body unread.
    async fn open(&self, endpoint: &str) -> Result<Response, SourceError> {
        let url = format!("{}{endpoint}", self.base);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = self
                .client
                .get(&url)
                .send()
                .await
                .map_err(|e| self.transport_error(e));
            let retryable = match &result {
                Ok(response) => response.status().is_server_error(),
                Err(e) => e.is_unavailable(),
            };
            if !retryable || attempt >= ATTEMPTS {
                return result;
            }
            tokio::time::sleep(backoff(attempt)).await;
        }
    }

    async fn attempt(
        &self,
        method: Method,
        url: &str,
        query: &[(&str, &str)],
    ) -> Result<Answer, SourceError> {
        // A HEAD answer announces the size of a body it does not send (a blob's, however big).
        let head = method == Method::HEAD;
        let response = self
            .client
            .request(method, url)
            .query(query)
            .send()
            .await
            .map_err(|e| self.transport_error(e))?;
        let status = response.status();
        let headers = response.headers().clone();
        if head {
            return Ok(Answer {
                status,
                headers,
                body: Vec::new(),
            });
        }
        let body = http::body_within(
            response,
            MAX_IN_MEMORY,
            &self.server,
            &http::display_url(url),
        )
        .await?;
        Ok(Answer {
            status,
            headers,
            body,
        })
    }

    fn transport_error(&self, e: reqwest::Error) -> SourceError {
        http::transport_error(&self.server, &e)
    }

    /// The body of a 200 answer, or the server's error text.
    fn body_of(&self, what: &str, answer: Answer) -> Result<Vec<u8>, SourceError> {
        if answer.status != StatusCode::OK {
            return Err(SourceError::Server {
                server: self.server.clone(),
                what: what.to_string(),
                detail: format!("HTTP {}: {}", answer.status, error_text(&answer.body)),
            });
        }
        Ok(answer.body)
    }

    async fn latest_commit(&self) -> Result<(ObjectId, i64), SourceError> {
        let what = format!("latest-commit of {}", self.repo);
        let response = self
            .send(
                Method::GET,
                "/api/v1/latest-commit",
                &[("path", &self.repo)],
            )
            .await?;
        if response.status == StatusCode::NOT_FOUND {
            return Err(SourceError::RepoNotFound(format!(
                "{} on {}",
                self.repo, self.server
            )));
        }
        let body = self.body_of(&what, response)?;
        let bad = |detail: String| SourceError::Server {
            server: self.server.clone(),
            what: what.clone(),
            detail,
        };
        parse_latest_commit(&body).map_err(bad)
    }
}

/// The commit and its time from Mega's `latest-commit` answer.
pub fn parse_latest_commit(body: &[u8]) -> Result<(ObjectId, i64), String> {
    let info: LatestCommit =
        serde_json::from_slice(body).map_err(|e| format!("unreadable JSON: {e}"))?;
    let oid = ObjectId::from_hex(&info.oid).map_err(|e| e.to_string())?;
    let time = info
        .date
        .trim()
        .parse::<i64>()
        .map_err(|_| format!("unreadable date {:?}", info.date))?;
    Ok((oid, time))
}

/// A whole HTTP answer.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
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
        let response = self
            .send(Method::GET, "/api/v1/file/tree", &[("path", &self.repo)])
            .await?;
        let root_body = self.body_of(&format!("tree {}", self.repo), response)?;
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

    async fn fetch_tree(&self, path: &str, oid: ObjectId) -> Result<Vec<u8>, SourceError> {
        let full = self.full_path(path);
        let hex = oid.to_hex();
        let response = self
            .send(
                Method::GET,
                "/api/v1/file/tree",
                &[("path", &full), ("oid", &hex)],
            )
            .await?;
        let body = self.body_of(&format!("tree {full}"), response)?;
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

    async fn fetch_blob(&self, oid: ObjectId) -> Result<Vec<u8>, SourceError> {
        let endpoint = format!("/api/v1/file/blob/{oid}");
        let response = self.send(Method::GET, &endpoint, &[]).await?;
        if response.status == StatusCode::NOT_FOUND {
            return Err(SourceError::ObjectMissing {
                server: self.server.clone(),
                oid,
                detail: error_text(&response.body),
            });
        }
        self.body_of(&format!("blob {oid}"), response)
    }

    async fn fetch_blob_stream(&self, oid: ObjectId) -> Result<(u64, ByteStream), SourceError> {
        let endpoint = format!("/api/v1/file/blob/{oid}");
        let response = self.open(&endpoint).await?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            let body = response.bytes().await.unwrap_or_default();
            return Err(SourceError::ObjectMissing {
                server: self.server.clone(),
                oid,
                detail: error_text(&body),
            });
        }
        let what = format!("blob {oid}");
        if status != StatusCode::OK {
            let body = response.bytes().await.unwrap_or_default();
            return Err(SourceError::Server {
                server: self.server.clone(),
                what,
                detail: format!("HTTP {status}: {}", error_text(&body)),
            });
        }
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
        let response = self.send(Method::HEAD, &endpoint, &[]).await?;
        let status = response.status;
        if status != StatusCode::OK {
            return Err(SourceError::Server {
                server: self.server.clone(),
                what: format!("HEAD blob {oid}"),
                detail: format!("HTTP {status}"),
            });
        }
        response
            .headers
            .get(reqwest::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| SourceError::Server {
                server: self.server.clone(),
                what: format!("HEAD blob {oid}"),
                detail: "no Content-Length".into(),
            })
    }
}

/// Single slashes, no trailing slash, no `.` or `..`: the server mis-routes anything else.
pub fn normalize_repo_path(path: &str) -> Result<String, SourceError> {
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(SourceError::Unsupported(format!(
                    "repository path {path:?} must not contain '..'"
                )))
            }
            p => parts.push(p),
        }
    }
    Ok(format!("/{}", parts.join("/")))
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
    fn normalises_paths() {
        assert_eq!(
            normalize_repo_path("//third-party//rg/").unwrap(),
            "/third-party/rg"
        );
        assert_eq!(
            normalize_repo_path("third-party/./rg").unwrap(),
            "/third-party/rg"
        );
        assert_eq!(normalize_repo_path("/").unwrap(), "/");
        assert!(normalize_repo_path("/a/../b").is_err());
    }

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
        )
        .unwrap();
        assert_eq!(s.full_path(""), "/third-party/rg");
        assert_eq!(s.full_path("src/a"), "/third-party/rg/src/a");
        assert!(MegaSource::new(
            "ftp://x",
            "/r",
            Duration::from_secs(1),
            Duration::from_secs(1)
        )
        .is_err());
        let secret = MegaSource::new(
            "http://me:hunter2@host:8000",
            "/r",
            Duration::from_secs(1),
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(secret.describe(), "mega http://me:***@host:8000 /r");
        assert!(MegaSource::new(
            "not a url",
            "/r",
            Duration::from_secs(1),
            Duration::from_secs(1)
        )
        .is_err());
    }
}
