//! Any git server over smart HTTP, protocol v2, with partial-clone filters: capabilities once,
//! `ls-refs` to resolve the ref, the commit and all its trees in one `fetch` (`filter
//! blob:none`, `deepen 1`), then blobs by id. Every answer is decoded as it arrives
//! (`fetch_answer`, `pack`, `pack_sinks`): one blob streams to the reader, a batch goes
//! straight into the cache, a commit and its trees are kept in memory. See the shared notes'
//! git-protocol-v2 summary and git's gitprotocol-v2(5).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use reqwest::{Client, StatusCode, Url};
use tokio::sync::OnceCell;
use tracing::debug;

use super::fetch_answer::{AnswerError, FetchAnswer};
use super::http;
use super::pack::{EntryError, PackError, PackSink};
use super::pack_sinks::{BlobsToSink, ObjectsInMemory, OneBlob};
use super::pktline::{self, Pkt};
use super::sink::BlobSink;
use super::{ByteStream, RepoPath, Snapshot, Source, SourceError, MAX_IN_MEMORY};
use crate::metrics::ServerMetrics;
use crate::object::{ObjectId, ObjectKind};

/// Who to say we are to a git server.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub secret: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials {{ user: {:?}, secret: *** }}", self.user)
    }
}

/// How the server asked to be told (its `WWW-Authenticate`), once it has asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AuthScheme {
    Basic,
    Bearer,
}

pub struct GitSource {
    client: Client,
    /// Every request to the server, timed.
    meter: Arc<ServerMetrics>,
    credentials: Option<Credentials>,
    scheme: Mutex<Option<AuthScheme>>,
    /// The repository URL, without a trailing slash.
    url: String,
    /// `url` fit for logs: no password.
    server: String,
    reference: String,
    capabilities: OnceCell<Capabilities>,
    /// Trees that came with the commit, by id.
    trees: Mutex<HashMap<ObjectId, Vec<u8>>>,
}

/// How long the question "is this a Mega server?" may take, after a connect already failed.
const MEGA_PROBE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone, Debug, Default)]
struct Capabilities {
    filter: bool,
    object_info: bool,
}

impl GitSource {
    /// `credentials` (from the configuration) win over those in the URL, the environment or
    /// ~/.netrc.
    pub fn new(
        url: &str,
        reference: &str,
        timeout: Duration,
        connect_timeout: Duration,
        proxy: Option<&str>,
        credentials: Option<Credentials>,
        meter: Arc<ServerMetrics>,
    ) -> Result<Self, SourceError> {
        let parsed = http::parse_url(url, "git")?;
        let client = http::client(timeout, connect_timeout, proxy)?;
        let credentials = credentials.or_else(|| credentials_for(&parsed));
        // Requests go without the user info; credentials are sent as the server asks.
        let mut bare = parsed.clone();
        let _ = bare.set_username("");
        let _ = bare.set_password(None);
        Ok(GitSource {
            client,
            meter,
            credentials,
            scheme: Mutex::new(None),
            url: bare.as_str().trim_end_matches('/').to_string(),
            server: megafs_proto::location::redacted(url),
            reference: reference.to_string(),
            capabilities: OnceCell::new(),
            trees: Mutex::new(HashMap::new()),
        })
    }

    fn error(&self, what: &str, detail: impl Into<String>) -> SourceError {
        SourceError::Server {
            server: self.server.clone(),
            what: what.to_string(),
            detail: detail.into(),
        }
    }

    fn transport(&self, e: reqwest::Error) -> SourceError {
        http::transport_error(&self.server, &e)
    }

    /// GET or POST, tried again where it failed for want of a healthy server; the whole body.
    async fn request(&self, post: Option<Vec<u8>>, what: &str) -> Result<Vec<u8>, SourceError> {
        http::retry(&self.meter, what, || async {
            let response = self.attempt(post.clone(), what).await?;
            http::body_within(response, MAX_IN_MEMORY, &self.server, what).await
        })
        .await
    }

    /// POST, tried again until the server answers with success; the body is the caller's to
    /// read as it arrives.
    async fn respond(&self, post: Vec<u8>, what: &str) -> Result<reqwest::Response, SourceError> {
        http::retry(&self.meter, what, || self.attempt(Some(post.clone()), what)).await
    }

    /// One request (two where a 401 asks for credentials); a success, or the error it means.
    async fn attempt(
        &self,
        post: Option<Vec<u8>>,
        what: &str,
    ) -> Result<reqwest::Response, SourceError> {
        loop {
            let scheme = *self.scheme.lock().unwrap_or_else(|p| p.into_inner());
            let response = self.send_once(post.clone(), scheme).await?;
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED && scheme.is_none() {
                if let Some(asked) = asked_scheme(response.headers()) {
                    if self.credentials.is_some() {
                        *self.scheme.lock().unwrap_or_else(|p| p.into_inner()) = Some(asked);
                        continue;
                    }
                }
            }
            return self.successful(response, what);
        }
    }

    async fn send_once(
        &self,
        post: Option<Vec<u8>>,
        scheme: Option<AuthScheme>,
    ) -> Result<reqwest::Response, SourceError> {
        let mut request = match post {
            Some(body) => self
                .client
                .post(format!("{}/git-upload-pack", self.url))
                .header("Content-Type", "application/x-git-upload-pack-request")
                .header("Accept", "application/x-git-upload-pack-result")
                .body(body),
            None => self
                .client
                .get(format!("{}/info/refs?service=git-upload-pack", self.url)),
        };
        if let (Some(scheme), Some(c)) = (scheme, &self.credentials) {
            request = match scheme {
                AuthScheme::Basic => request.basic_auth(&c.user, Some(&c.secret)),
                AuthScheme::Bearer => request.bearer_auth(&c.secret),
            };
        }
        request
            .header("Git-Protocol", "version=2")
            .send()
            .await
            .map_err(|e| self.transport(e))
    }

    fn successful(
        &self,
        response: reqwest::Response,
        what: &str,
    ) -> Result<reqwest::Response, SourceError> {
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Err(SourceError::RepoNotFound(format!(
                "{} (HTTP 404)",
                self.server
            )));
        }
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            let hint = if self.credentials.is_some() {
                "it refused the credentials given"
            } else {
                "give credentials in the URL (https://user:token@host/...), in \
                 MEGAFS_GIT_TOKEN (and MEGAFS_GIT_USERNAME), or in ~/.netrc"
            };
            return Err(SourceError::Unsupported(format!(
                "{} refused access (HTTP {status}): {hint}",
                self.server
            )));
        }
        if !status.is_success() {
            return Err(SourceError::Http {
                server: self.server.clone(),
                what: what.to_string(),
                status,
                detail: String::new(),
            });
        }
        Ok(response)
    }

    async fn capabilities(&self) -> Result<&Capabilities, SourceError> {
        self.capabilities
            .get_or_try_init(|| async {
                let body = match self.request(None, "capabilities").await {
                    Ok(body) => body,
                    Err(e @ SourceError::RepoNotFound(_)) => return Err(self.mega_instead(e).await),
                    Err(e) => return Err(e),
                };
                let pkts = pktline::parse(&body).map_err(|e| self.error("capabilities", e.to_string()))?;
                let lines: Vec<String> = pkts
                    .iter()
                    .filter_map(|p| match p {
                        Pkt::Data(d) => Some(pktline::text(d)),
                        _ => None,
                    })
                    .collect();
                if !lines.iter().any(|l| l == "version 2") {
                    let e = SourceError::Unsupported(format!(
                        "{} does not speak git protocol v2",
                        self.server
                    ));
                    return Err(self.mega_instead(e).await);
                }
                let fetch = lines.iter().find_map(|l| l.strip_prefix("fetch=")).unwrap_or("");
                let caps = Capabilities {
                    filter: fetch.split(' ').any(|c| c == "filter"),
                    object_info: lines.iter().any(|l| l == "object-info" || l.starts_with("object-info=")),
                };
                if !caps.filter {
                    return Err(SourceError::Unsupported(format!(
                        "{} does not support partial-clone filters (uploadpack.allowFilter), so \
                         megafs cannot fetch lazily from it (it will not clone the whole repository)",
                        self.server
                    )));
                }
                Ok(caps)
            })
            .await
    }

    /// `e`, or where the server is a Mega server (which serves git only as protocol v0, and
    /// not at every path), the error that says how to mount it as one.
    async fn mega_instead(&self, e: SourceError) -> SourceError {
        let Ok(url) = Url::parse(&self.url) else {
            return e;
        };
        let origin = url.origin().ascii_serialization();
        let answered = self
            .client
            .get(format!("{origin}/api/v1/status"))
            .timeout(MEGA_PROBE_TIMEOUT)
            .send()
            .await;
        let is_mega = match answered {
            Ok(response) if response.status().is_success() => response
                .text()
                .await
                .is_ok_and(|body| body.contains("ready")),
            _ => false,
        };
        if !is_mega {
            return e;
        }
        let path = url.path().trim_end_matches('/').trim_end_matches(".git");
        let path = if path.is_empty() { "/" } else { path };
        SourceError::Unsupported(format!(
            "{} is a Mega server, not a git repository ({e}): mount its path with --mega-url, \
             as in `mega-fuse connect {path} --mega-url {origin} --mount-point DIR`",
            self.server
        ))
    }

    /// A v2 command: `command=NAME`, capabilities, delimiter, arguments, flush.
    fn command(name: &str, args: &[String]) -> Vec<u8> {
        let mut body = Vec::new();
        pktline::line(&mut body, &format!("command={name}"));
        pktline::line(&mut body, "object-format=sha1");
        pktline::delim(&mut body);
        for arg in args {
            pktline::line(&mut body, arg);
        }
        pktline::flush(&mut body);
        body
    }

    /// The commit the configured reference names.
    async fn resolve_ref(&self) -> Result<ObjectId, SourceError> {
        if let Ok(oid) = ObjectId::from_hex(&self.reference) {
            return Ok(oid);
        }
        let abbreviated = is_abbreviated_id(&self.reference);
        // An abbreviated id can be resolved only against the tips the server lists: all of
        // them, then.
        let prefixes: &[&str] = if abbreviated {
            &["ref-prefix HEAD", "ref-prefix refs/"]
        } else {
            &[
                "ref-prefix HEAD",
                "ref-prefix refs/heads/",
                "ref-prefix refs/tags/",
            ]
        };
        let args: Vec<String> = ["peel", "symrefs"]
            .iter()
            .chain(prefixes)
            .map(|s| s.to_string())
            .collect();
        let body = self
            .request(Some(Self::command("ls-refs", &args)), "ls-refs")
            .await?;
        let pkts = pktline::parse(&body).map_err(|e| self.error("ls-refs", e.to_string()))?;
        let wanted = if self.reference.is_empty() {
            "HEAD"
        } else {
            &self.reference
        };
        let candidates = [
            wanted.to_string(),
            format!("refs/heads/{wanted}"),
            format!("refs/tags/{wanted}"),
        ];
        let mut abbreviates = std::collections::BTreeSet::new();
        for pkt in pkts {
            let Pkt::Data(d) = pkt else { continue };
            let line = pktline::text(d);
            if let Some(message) = line.strip_prefix("ERR ") {
                return Err(self.error("ls-refs", message));
            }
            let mut parts = line.split(' ');
            let (Some(oid), Some(name)) = (parts.next(), parts.next()) else {
                continue;
            };
            // An annotated tag names the tag object; `peeled:` names its commit.
            let peeled = parts.find_map(|p| p.strip_prefix("peeled:")).unwrap_or(oid);
            if candidates.iter().any(|c| c == name) {
                return ObjectId::from_hex(peeled)
                    .map_err(|e| self.error("ls-refs", e.to_string()));
            }
            if abbreviated && peeled.starts_with(&self.reference.to_ascii_lowercase()) {
                abbreviates.insert(peeled.to_string());
            }
        }
        let (repo, reference) = (self.server.clone(), wanted.to_string());
        match abbreviates.len() {
            1 => ObjectId::from_hex(abbreviates.first().map_or("", String::as_str))
                .map_err(|e| self.error("ls-refs", e.to_string())),
            0 if abbreviated => Err(SourceError::AbbreviatedId { repo, reference }),
            0 => Err(SourceError::UnknownRef { repo, reference }),
            _ => Err(SourceError::AmbiguousId { repo, reference }),
        }
    }

    /// `fetch` with `want`s and a filter: the objects of the (small) pack that comes back,
    /// deltas resolved, tried again where a transport failure or a 5xx cut it short.
    async fn fetch_objects(
        &self,
        wants: &[ObjectId],
        extra: &[&str],
    ) -> Result<ObjectsInMemory, SourceError> {
        http::retry(&self.meter, "fetch", || async {
            let mut objects = ObjectsInMemory::default();
            self.fetch_into(wants, extra, &mut objects).await?;
            Ok(objects)
        })
        .await
    }

    /// One `fetch`, its pack decoded into `sink` as it arrives.
    async fn fetch_into(
        &self,
        wants: &[ObjectId],
        extra: &[&str],
        sink: &mut (dyn PackSink + Send),
    ) -> Result<(), SourceError> {
        self.capabilities().await?;
        let command = Self::fetch_command(wants, extra);
        let started = std::time::Instant::now();
        let mut body = self.attempt(Some(command), "fetch").await?.bytes_stream();
        let mut answer = FetchAnswer::default();
        let (mut empty, mut bytes) = (true, 0);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| self.transport(e))?;
            if empty {
                debug!(wants = wants.len(), ?extra, after = ?started.elapsed(), "fetch answer begins");
            }
            empty &= chunk.is_empty();
            bytes += chunk.len();
            answer
                .feed(&chunk, sink)
                .map_err(|e| self.answer_error(wants, e))?;
        }
        if empty {
            return Err(self.answer_error(wants, AnswerError::Empty));
        }
        debug!(wants = wants.len(), ?extra, bytes, took = ?started.elapsed(), "fetch answered");
        answer.finish().map_err(|e| self.answer_error(wants, e))
    }

    /// Blobs `wants` into `sink` in one fetch; the ones kept, with their lengths.
    async fn fetch_blobs_once(
        &self,
        wants: &[ObjectId],
        sink: &dyn BlobSink,
    ) -> Result<HashMap<ObjectId, u64>, SourceError> {
        http::retry(&self.meter, "fetch", || async {
            let mut blobs = BlobsToSink::new(sink);
            self.fetch_into(wants, &["filter blob:none"], &mut blobs)
                .await?;
            Ok(blobs.kept)
        })
        .await
    }

    fn missing(&self, oid: ObjectId) -> SourceError {
        SourceError::ObjectMissing {
            server: self.server.clone(),
            oid,
            detail: "not in the pack the server sent".into(),
        }
    }

    fn fetch_command(wants: &[ObjectId], extra: &[&str]) -> Vec<u8> {
        let mut args: Vec<String> = ["no-progress", "ofs-delta"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(wants.iter().map(|w| format!("want {w}")));
        args.push("done".into());
        Self::command("fetch", &args)
    }

    /// What a refused or malformed answer to a fetch of `wants` means.
    fn answer_error(&self, wants: &[ObjectId], e: AnswerError) -> SourceError {
        match (e, wants) {
            (AnswerError::Refused(detail), &[oid]) if detail.contains("not our ref") => {
                SourceError::ObjectMissing {
                    server: self.server.clone(),
                    oid,
                    detail,
                }
            }
            (AnswerError::Refused(message), _) => self.error("fetch", message),
            (AnswerError::Pack(PackError::Entry(EntryError::Sink(e))), _) => SourceError::Sink(e),
            (malformed, _) => self.error("fetch", malformed.to_string()),
        }
    }
}

/// The scheme a 401 asks for; Basic where it names none we know.
/// Whether `reference` looks like an abbreviated commit id (as git abbreviates: at least 4
/// hex digits, fewer than 40).
fn is_abbreviated_id(reference: &str) -> bool {
    (4..40).contains(&reference.len()) && reference.bytes().all(|b| b.is_ascii_hexdigit())
}

fn asked_scheme(headers: &reqwest::header::HeaderMap) -> Option<AuthScheme> {
    let value = headers
        .get(reqwest::header::WWW_AUTHENTICATE)?
        .to_str()
        .ok()?;
    Some(
        if value
            .trim_start()
            .to_ascii_lowercase()
            .starts_with("bearer")
        {
            AuthScheme::Bearer
        } else {
            AuthScheme::Basic
        },
    )
}

/// Credentials for `url`: its user info, else MEGAFS_GIT_TOKEN (with MEGAFS_GIT_USERNAME),
/// else the `~/.netrc` entry for its host.
fn credentials_for(url: &reqwest::Url) -> Option<Credentials> {
    if let Some(password) = url.password() {
        return Some(Credentials {
            user: percent_decode(url.username()),
            secret: percent_decode(password),
        });
    }
    if let Ok(token) = std::env::var("MEGAFS_GIT_TOKEN") {
        let user = std::env::var("MEGAFS_GIT_USERNAME").unwrap_or_else(|_| "git".into());
        return Some(Credentials {
            user,
            secret: token,
        });
    }
    let home = std::env::var_os("HOME")?;
    let netrc = std::fs::read_to_string(std::path::Path::new(&home).join(".netrc")).ok()?;
    netrc_lookup(&netrc, url.host_str()?)
}

/// The `machine HOST login USER password SECRET` entry for `host` (or `default`).
fn netrc_lookup(text: &str, host: &str) -> Option<Credentials> {
    let tokens: Vec<&str> = text.split_whitespace().collect();
    let mut found = None;
    let mut i = 0;
    while i < tokens.len() {
        let applies = match tokens[i] {
            "machine" => {
                i += 1;
                tokens.get(i) == Some(&host)
            }
            "default" => found.is_none(),
            _ => {
                i += 1;
                continue;
            }
        };
        i += 1;
        let (mut user, mut secret) = (String::new(), None);
        while i < tokens.len() && !matches!(tokens[i], "machine" | "default") {
            match (tokens[i], tokens.get(i + 1)) {
                ("login", Some(v)) => user = v.to_string(),
                ("password", Some(v)) => secret = Some(v.to_string()),
                _ => {}
            }
            i += 2;
        }
        if applies {
            if let Some(secret) = secret {
                found = Some(Credentials { user, secret });
            }
        }
    }
    found
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The tree and committer time of a raw commit.
pub fn parse_commit(body: &[u8]) -> Option<(ObjectId, i64)> {
    let text = String::from_utf8_lossy(body);
    let mut tree = None;
    let mut time = 0;
    for line in text.lines() {
        if line.is_empty() {
            break;
        }
        if let Some(hex) = line.strip_prefix("tree ") {
            tree = ObjectId::from_hex(hex.trim()).ok();
        } else if let Some(rest) = line.strip_prefix("committer ") {
            let mut fields = rest.rsplit(' ');
            let _zone = fields.next();
            time = fields.next().and_then(|t| t.parse().ok()).unwrap_or(0);
        }
    }
    Some((tree?, time))
}

#[async_trait]
impl Source for GitSource {
    fn describe(&self) -> String {
        match self.reference.as_str() {
            "" => format!("git {}", self.server),
            r => format!("git {} {r}", self.server),
        }
    }

    async fn resolve(&self) -> Result<Snapshot, SourceError> {
        self.capabilities().await?;
        let commit = self.resolve_ref().await?;
        let pack = self
            .fetch_objects(&[commit], &["filter blob:none", "deepen 1"])
            .await?;
        let mut commit_body = None;
        let mut trees = self.trees.lock().unwrap_or_else(|p| p.into_inner());
        for (oid, (kind, data)) in pack.objects {
            match kind {
                ObjectKind::Commit if oid == commit => commit_body = Some(data),
                ObjectKind::Tree => {
                    trees.insert(oid, data);
                }
                _ => {}
            }
        }
        let body = commit_body
            .ok_or_else(|| self.error("fetch", format!("commit {commit} missing from the pack")))?;
        commit
            .verify(ObjectKind::Commit, &body)
            .map_err(|e| self.error("fetch", e.to_string()))?;
        let (root_tree, commit_time) = parse_commit(&body)
            .ok_or_else(|| self.error("fetch", format!("commit {commit} is malformed")))?;
        Ok(Snapshot {
            commit,
            root_tree,
            commit_time,
            root_body: trees.get(&root_tree).cloned(),
        })
    }

    async fn fetch_tree(&self, _path: &RepoPath, oid: ObjectId) -> Result<Vec<u8>, SourceError> {
        if let Some(body) = self
            .trees
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&oid)
        {
            return Ok(body.clone());
        }
        let mut pack = self.fetch_objects(&[oid], &["filter tree:0"]).await?;
        pack.take(&oid).ok_or_else(|| self.missing(oid))
    }

    async fn fetch_blob(&self, oid: ObjectId) -> Result<Vec<u8>, SourceError> {
        let mut pack = self.fetch_objects(&[oid], &["filter blob:none"]).await?;
        pack.take(&oid).ok_or_else(|| self.missing(oid))
    }

    async fn fetch_blobs_into(
        &self,
        oids: &[ObjectId],
        sink: &dyn BlobSink,
    ) -> Vec<(ObjectId, Result<u64, SourceError>)> {
        let mut out = Vec::with_capacity(oids.len());
        // Halves of a batch that failed as a whole (one missing object fails a fetch) are
        // tried apart, down to single objects, so the rest still arrive. A server that cannot
        // be reached is not asked again.
        let mut pending: Vec<Vec<ObjectId>> = vec![oids.to_vec()];
        while let Some(batch) = pending.pop() {
            match self.fetch_blobs_once(&batch, sink).await {
                Ok(kept) => {
                    for oid in batch {
                        let result = kept.get(&oid).copied().ok_or_else(|| self.missing(oid));
                        out.push((oid, result));
                    }
                }
                Err(e) if batch.len() > 1 && !is_unreachable(&e) => {
                    let (left, right) = batch.split_at(batch.len() / 2);
                    pending.push(left.to_vec());
                    pending.push(right.to_vec());
                }
                Err(e) => {
                    let text = e.to_string();
                    let mut first = Some(e);
                    for oid in batch {
                        let error = first
                            .take()
                            .unwrap_or_else(|| self.error("fetch", text.clone()));
                        out.push((oid, Err(error)));
                    }
                }
            }
        }
        out
    }

    /// One blob, inflated as its pack arrives: the length comes from the pack entry's header,
    /// then the content piece by piece.
    async fn fetch_blob_stream(&self, oid: ObjectId) -> Result<(u64, ByteStream), SourceError> {
        self.capabilities().await?;
        let command = Self::fetch_command(&[oid], &["filter blob:none"]);
        let mut body = self.respond(command, "fetch").await?.bytes_stream();
        let (mut answer, mut blob) = (FetchAnswer::default(), OneBlob::default());
        let mut empty = true;
        // Read until the entry header tells the length; what came with it goes first.
        let len = loop {
            if let Some(len) = blob.size {
                break len;
            }
            match body.next().await {
                Some(Ok(chunk)) => {
                    empty &= chunk.is_empty();
                    answer.feed(&chunk, &mut blob)
                }
                Some(Err(e)) => return Err(self.transport(e)),
                None if empty => Err(AnswerError::Empty),
                None => answer.finish(),
            }
            .map_err(|e| self.answer_error(&[oid], e))?;
        };
        let (server, what) = (self.server.clone(), format!("blob {oid}"));
        let broke = move |detail: String| SourceError::Server {
            server: server.clone(),
            what: what.clone(),
            detail,
        };
        let first: Vec<_> = blob.pieces.drain(..).map(Ok).collect();
        let rest = futures::stream::unfold(Some((body, answer, blob)), move |state| {
            let broke = broke.clone();
            async move {
                let (mut body, mut answer, mut blob) = state?;
                // Whether more may come.
                let step: Result<bool, SourceError> = match body.next().await {
                    Some(Ok(chunk)) => answer
                        .feed(&chunk, &mut blob)
                        .map(|()| true)
                        .map_err(|e| broke(e.to_string())),
                    Some(Err(e)) => Err(broke(format!(
                        "the body broke off: {}",
                        http::root_cause(&e)
                    ))),
                    None => answer
                        .finish()
                        .map(|()| false)
                        .map_err(|e| broke(e.to_string())),
                };
                let mut items: Vec<Result<bytes::Bytes, SourceError>> =
                    blob.pieces.drain(..).map(Ok).collect();
                match step {
                    Ok(true) => Some((items, Some((body, answer, blob)))),
                    Ok(false) => Some((items, None)),
                    Err(e) => {
                        items.push(Err(e));
                        Some((items, None))
                    }
                }
            }
        });
        let pieces = futures::stream::iter(first)
            .chain(rest.flat_map(futures::stream::iter))
            .boxed();
        Ok((len, pieces))
    }

    fn filters_blobs(&self) -> bool {
        true // A server without filters is refused at mount.
    }

    fn tree_at_hand(&self, oid: &ObjectId) -> Option<Vec<u8>> {
        let trees = self.trees.lock().unwrap_or_else(|p| p.into_inner());
        trees.get(oid).cloned()
    }

    fn sizes_need_content(&self) -> bool {
        self.capabilities.get().is_some_and(|c| !c.object_info)
    }

    async fn fetch_small_files_into(
        &self,
        trees: &[ObjectId],
        depth: u32,
        limit: u64,
        sink: &dyn BlobSink,
    ) -> Option<Result<HashMap<ObjectId, u64>, SourceError>> {
        // Each tree, the files under the limit `depth` levels down, and the bare trees of the
        // level below (passed over).
        let filter = format!("filter combine:tree:{depth}+blob:limit={limit}");
        let fetched = http::retry(&self.meter, "fetch", || async {
            let mut blobs = BlobsToSink::new(sink);
            self.fetch_into(trees, &[&filter], &mut blobs).await?;
            Ok(blobs.kept)
        })
        .await;
        Some(fetched)
    }

    fn fetches_whole_trees(&self) -> bool {
        true
    }

    async fn fetch_whole_trees_into(
        &self,
        trees: &[ObjectId],
        sink: &dyn BlobSink,
    ) -> Option<Result<HashMap<ObjectId, u64>, SourceError>> {
        let fetched = http::retry(&self.meter, "fetch", || async {
            let mut kept = BlobsToSink::new(sink);
            self.fetch_into(trees, &[], &mut kept).await?;
            Ok(kept.kept)
        })
        .await;
        Some(fetched)
    }

    async fn blob_size(&self, oid: ObjectId) -> Result<u64, SourceError> {
        if self.capabilities().await?.object_info {
            let args = vec!["size".to_string(), format!("oid {oid}")];
            let body = self
                .request(Some(Self::command("object-info", &args)), "object-info")
                .await?;
            let pkts =
                pktline::parse(&body).map_err(|e| self.error("object-info", e.to_string()))?;
            for pkt in pkts {
                let Pkt::Data(d) = pkt else { continue };
                let line = pktline::text(d);
                if let Some(size) = line.strip_prefix(&format!("{oid} ")) {
                    return size
                        .parse()
                        .map_err(|_| self.error("object-info", line.clone()));
                }
            }
            return Err(self.error("object-info", format!("no size for {oid}")));
        }
        // Without object-info, the size is in the header of the blob's pack entry: read that
        // far, then drop the answer (closing the connection) rather than take the content.
        let (len, _content) = self.fetch_blob_stream(oid).await?;
        Ok(len)
    }
}

/// Whether a failure means the server could not be reached at all (as opposed to an answer).
fn is_unreachable(e: &SourceError) -> bool {
    matches!(
        e,
        SourceError::Unreachable { .. } | SourceError::Timeout { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> GitSource {
        let t = Duration::from_secs(1);
        GitSource::new(
            "http://me:pw@127.0.0.1:1/repo.git",
            "",
            t,
            t,
            None,
            None,
            Arc::default(),
        )
        .expect("source")
    }

    #[test]
    fn refused_and_malformed_answers_become_clear_errors() {
        let s = source();
        let oid = ObjectId::EMPTY_TREE;
        let refused = |text: &str| AnswerError::Refused(text.into());
        let missing = s.answer_error(&[oid], refused("upload-pack: not our ref 4b82"));
        assert!(
            matches!(missing, SourceError::ObjectMissing { .. }),
            "{missing:?}"
        );
        // Among several wants, which one is missing is unknown: the batch is split instead.
        let batch = s.answer_error(&[oid, oid], refused("upload-pack: not our ref 4b82"));
        assert!(matches!(batch, SourceError::Server { .. }), "{batch:?}");
        assert!(!is_unreachable(&batch));
        let broken = s.answer_error(&[oid], AnswerError::Pack(PackError::BrokeOff));
        assert!(
            broken.to_string().contains("the pack broke off"),
            "{broken}"
        );
        // The password never shows.
        assert_eq!(s.describe(), "git http://me:***@127.0.0.1:1/repo.git");
    }

    #[test]
    fn answers_401s_in_the_scheme_asked_for() {
        let mut headers = reqwest::header::HeaderMap::new();
        assert_eq!(asked_scheme(&headers), None);
        headers.insert(
            reqwest::header::WWW_AUTHENTICATE,
            "Bearer realm=\"x\"".parse().unwrap(),
        );
        assert_eq!(asked_scheme(&headers), Some(AuthScheme::Bearer));
        headers.insert(
            reqwest::header::WWW_AUTHENTICATE,
            "Basic realm=\"x\"".parse().unwrap(),
        );
        assert_eq!(asked_scheme(&headers), Some(AuthScheme::Basic));
        let c = Credentials {
            user: "u".into(),
            secret: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn finds_netrc_entries() {
        let netrc = "machine other login a password b\nmachine git.example.org login me password s3cret\ndefault login anon password x";
        let c = netrc_lookup(netrc, "git.example.org").expect("entry");
        assert_eq!((c.user.as_str(), c.secret.as_str()), ("me", "s3cret"));
        assert_eq!(
            netrc_lookup(netrc, "elsewhere").expect("default").user,
            "anon"
        );
        assert!(netrc_lookup("machine x login a", "x").is_none());
        assert_eq!(percent_decode("p%40ss%2Fw"), "p@ss/w");
    }

    #[test]
    fn reads_commit_headers() {
        let body = b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\nparent 1111111111111111111111111111111111111111\nauthor A <a@x> 1700000000 +0100\ncommitter C <c@x> 1704164645 +0000\n\nmessage\n";
        let (tree, time) = parse_commit(body).expect("commit");
        assert_eq!(tree, ObjectId::EMPTY_TREE);
        assert_eq!(time, 1_704_164_645);
        assert!(parse_commit(b"no tree here\n").is_none());
    }
}
