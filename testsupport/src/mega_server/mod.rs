//! The dev Mega server: serves git repositories on disk through the Mega HTTP API exactly as
//! the contract (shared notes, mega-api.md) and the recorded transcripts say, including empty
//! bodies and error codes. It also records every request (tests count them for laziness) and
//! can misbehave on purpose (`Faults`): corrupt bytes, delays, bodies cut short.

mod monorepo;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

pub use monorepo::{components, is_imported, placeholder_id, tree_id, Monorepo, ServedRepo};

use crate::background::Background;

/// Ways the server can misbehave, set by tests (or `POST /__dev/faults?...`). The blob and
/// tree faults (all but `corrupt_trees`/`blob_delay_ms`, which always apply) hit a request with
/// `probability` (default: always), and only the next `count` requests when `count` > 0.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Flip one byte of every non-empty blob body.
    pub corrupt_blobs: bool,
    /// Flip one byte of every non-empty tree body.
    pub corrupt_trees: bool,
    /// Wait this long before answering a blob GET.
    pub blob_delay_ms: u64,
    /// Send this many bytes of a longer blob, then hold the rest back until the faults are
    /// set again (always applies, like `blob_delay_ms`).
    pub hold_blobs_after: Option<u64>,
    /// Send a blob one byte at a time, this many milliseconds apart (always applies).
    pub trickle_blobs_ms: Option<u64>,
    /// Send half of a blob body, then drop the connection.
    pub truncate_blobs: bool,
    /// Drop the connection right after the headers of a blob or tree answer.
    pub reset: bool,
    /// Never answer a blob or tree request (the client must give up).
    pub stall: bool,
    /// Answer blob and tree requests with this HTTP status (500, 503, 404, ...).
    pub status: Option<u16>,
    /// Append bytes after a blob's content.
    pub extra_bytes: bool,
    /// Answer every tree request with this many bytes of junk (always applies), announced in
    /// Content-Length when the flag says so, else sent chunked: a listing no daemon should
    /// hold.
    pub huge_trees: Option<(u64, bool)>,
    /// The chance (0 to 1) that a blob or tree request is hit by the faults above.
    pub probability: f64,
    /// Hit only this many requests, then behave (0: no bound).
    pub count: u32,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            corrupt_blobs: false,
            corrupt_trees: false,
            blob_delay_ms: 0,
            hold_blobs_after: None,
            trickle_blobs_ms: None,
            truncate_blobs: false,
            reset: false,
            stall: false,
            status: None,
            extra_bytes: false,
            huge_trees: None,
            probability: 1.0,
            count: 0,
        }
    }
}

/// What happened to one request, decided once per request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    None,
    Reset,
    Stall,
    Status(u16),
    Truncate,
    Extra,
    Corrupt,
}

/// One request as the server saw it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub query: String,
}

impl Logged {
    pub fn is_tree(&self) -> bool {
        self.method == "GET" && self.path == "/api/v1/file/tree"
    }
    pub fn is_blob_get(&self) -> bool {
        self.method == "GET" && self.path.starts_with("/api/v1/file/blob/")
    }
    pub fn is_blob_head(&self) -> bool {
        self.method == "HEAD" && self.path.starts_with("/api/v1/file/blob/")
    }
    /// The `path=` of a tree request, decoded.
    pub fn tree_path(&self) -> Option<String> {
        let params: Vec<(String, String)> =
            serde_urlencoded_pairs(&self.query).into_iter().collect();
        params
            .into_iter()
            .find(|(k, _)| k == "path")
            .map(|(_, v)| v)
    }
}

fn serde_urlencoded_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(
                    std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or(""),
                    16,
                ) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct ServerState {
    monorepo: Monorepo,
    faults: Mutex<Faults>,
    log: Mutex<Vec<Logged>>,
    next_request_id: AtomicU64,
    /// Faults dealt so far, and the state of the dice.
    injected: AtomicU64,
    dice: AtomicU64,
    /// Bumped whenever the faults are set: releases held blobs.
    faults_set: tokio::sync::watch::Sender<u64>,
}

impl ServerState {
    fn set_faults(&self, faults: Faults) {
        *self.faults.lock().unwrap_or_else(|p| p.into_inner()) = faults;
        self.faults_set.send_modify(|n| *n += 1);
    }

    fn faults(&self) -> Faults {
        self.faults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Decides whether this request is hit, and by what.
    fn deal(&self, is_blob: bool) -> Fault {
        let mut faults = self.faults.lock().unwrap_or_else(|p| p.into_inner());
        let fault = if faults.reset {
            Fault::Reset
        } else if faults.stall {
            Fault::Stall
        } else if let Some(code) = faults.status {
            Fault::Status(code)
        } else if is_blob && faults.truncate_blobs {
            Fault::Truncate
        } else if is_blob && faults.extra_bytes {
            Fault::Extra
        } else if is_blob && faults.corrupt_blobs {
            Fault::Corrupt
        } else {
            return Fault::None;
        };
        // xorshift: cheap, and repeatable for a given sequence of requests.
        let mut x = self.dice.load(Ordering::Relaxed) | 1;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.dice.store(x, Ordering::Relaxed);
        let roll = (x >> 11) as f64 / (1u64 << 53) as f64;
        if roll >= faults.probability {
            return Fault::None;
        }
        if faults.count > 0 {
            faults.count -= 1;
            if faults.count == 0 {
                *faults = Faults {
                    blob_delay_ms: faults.blob_delay_ms,
                    hold_blobs_after: faults.hold_blobs_after,
                    trickle_blobs_ms: faults.trickle_blobs_ms,
                    corrupt_trees: faults.corrupt_trees,
                    ..Faults::default()
                };
            }
        }
        self.injected.fetch_add(1, Ordering::Relaxed);
        fault
    }
}

/// An answer that fails the way `fault` says, if it says anything.
async fn faulty(fault: Fault, filename: &str, length: u64) -> Option<Response> {
    match fault {
        Fault::Reset => {
            let stream = futures::stream::iter(vec![Err::<bytes::Bytes, _>(
                std::io::Error::other("dev server: reset on purpose"),
            )]);
            Some(octet_stream(
                filename,
                Body::from_stream(stream),
                length.max(1),
            ))
        }
        Fault::Stall => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            None
        }
        Fault::Status(code) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            Some(common_error(status, "dev server: failing on purpose"))
        }
        _ => None,
    }
}

/// A running dev server. Dropping it stops it.
pub struct DevServer {
    addr: SocketAddr,
    state: Arc<ServerState>,
    server: Background,
}

impl DevServer {
    /// Starts serving `repos` on a free loopback port, on a thread of its own.
    pub fn start(repos: Vec<ServedRepo>) -> anyhow::Result<DevServer> {
        Self::start_on("127.0.0.1:0".parse()?, repos)
    }

    pub fn start_on(addr: SocketAddr, repos: Vec<ServedRepo>) -> anyhow::Result<DevServer> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(ServerState {
            monorepo: Monorepo { repos },
            faults: Mutex::new(Faults::default()),
            log: Mutex::new(Vec::new()),
            next_request_id: AtomicU64::new(1),
            injected: AtomicU64::new(0),
            dice: AtomicU64::new(0x9e37_79b9_7f4a_7c15),
            faults_set: tokio::sync::watch::Sender::new(0),
        });
        let server = Background::serve("mega-dev-server", listener, router(state.clone()))?;
        Ok(DevServer {
            addr,
            state,
            server,
        })
    }

    /// Serves until killed (for the binary).
    pub fn wait(self) {
        self.server.wait();
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Logged> {
        self.state
            .log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn clear_requests(&self) {
        self.state
            .log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    pub fn set_faults(&self, faults: Faults) {
        self.state.set_faults(faults);
    }

    /// How many requests the faults have hit so far.
    pub fn faults_injected(&self) -> u64 {
        self.state.injected.load(Ordering::Relaxed)
    }
}

fn router(state: Arc<ServerState>) -> Router {
    Router::new()
        .route("/api/v1/status", get(status))
        .route("/api/v1/file/tree", get(file_tree))
        .route("/api/v1/file/blob/{oid}", get(blob))
        .route("/api/v1/latest-commit", get(latest_commit))
        .route("/api/v1/tree/content-hash", get(content_hash))
        .route("/__dev/requests", get(dev_requests))
        .route("/__dev/faults", post(dev_faults))
        .route("/__dev/reset", post(dev_reset))
        .route("/__dev/stats", get(dev_stats))
        .fallback(unknown_route)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            record_and_decorate,
        ))
        .with_state(state)
}

/// Logs the request and adds the headers every answer of the real server carries.
async fn record_and_decorate(
    State(state): State<Arc<ServerState>>,
    request: Request,
    next: Next,
) -> Response {
    if !request.uri().path().starts_with("/__dev/") {
        state
            .log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Logged {
                method: request.method().to_string(),
                path: request.uri().path().to_string(),
                query: request.uri().query().unwrap_or_default().to_string(),
            });
    }
    let id = state.next_request_id.fetch_add(1, Ordering::Relaxed);
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::VARY, HeaderValue::from_static("origin"));
    headers.insert(
        "access-control-allow-credentials",
        HeaderValue::from_static("true"),
    );
    headers.insert(
        "access-control-expose-headers",
        HeaderValue::from_static("x-request-id"),
    );
    if let Ok(value) = HeaderValue::from_str(&format!("00000000-0000-4000-8000-{id:012x}")) {
        headers.insert("x-request-id", value);
    }
    response
}

/// Mega's `CommonResult` error body.
fn common_error(status: StatusCode, message: &str) -> Response {
    // Built by hand: the real server's key order, which serde_json's map would not keep.
    let body = format!(
        "{{\"req_result\":false,\"data\":null,\"err_message\":{}}}",
        serde_json::Value::from(message)
    );
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn internal(e: anyhow::Error) -> Response {
    tracing::error!("dev server: {e:#}");
    common_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error")
}

fn octet_stream(filename: &str, body: Body, length: u64) -> Response {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("inline; filename=\"{filename}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    response
}

/// Plain text with no content type, as the real server answers.
async fn unknown_route() -> Response {
    let mut response = Response::new(Body::from("Operation not supported"));
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
}

async fn status() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        "\"http ready\"",
    )
        .into_response()
}

#[derive(Deserialize)]
struct TreeQuery {
    path: Option<String>,
    oid: Option<String>,
}

async fn file_tree(State(state): State<Arc<ServerState>>, Query(q): Query<TreeQuery>) -> Response {
    let path = q.path.unwrap_or_else(|| "/".to_string());
    let mut body = match state.monorepo.tree(&path) {
        Ok(body) => body.unwrap_or_default(),
        Err(e) => return internal(e),
    };
    // `oid=` asks "is it still this tree?": anything else gets an empty body.
    if let Some(oid) = q.oid {
        if hex::encode(tree_id(&body)) != oid {
            body.clear();
        }
    }
    if let Some((size, announced)) = state.faults().huge_trees {
        return junk(size, announced);
    }
    if state.faults().corrupt_trees {
        flip_a_byte(&mut body);
    }
    let length = body.len() as u64;
    if let Some(response) = faulty(state.deal(false), "", length).await {
        return response;
    }
    octet_stream("", Body::from(body), length)
}

/// `size` bytes of zeros in 1 MiB chunks, with or without a Content-Length.
fn junk(size: u64, announced: bool) -> Response {
    const CHUNK: u64 = 1 << 20;
    let chunks = (0..size.div_ceil(CHUNK)).map(move |i| {
        let len = CHUNK.min(size - i * CHUNK) as usize;
        Ok::<_, std::io::Error>(bytes::Bytes::from(vec![0u8; len]))
    });
    let body = Body::from_stream(futures::stream::iter(chunks));
    if announced {
        return octet_stream("", body, size);
    }
    let mut response = Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response
}

fn flip_a_byte(body: &mut [u8]) {
    if let Some(byte) = body.get_mut(body.len() / 2) {
        *byte ^= 0x20;
    }
}

fn blob_not_found(oid: &str) -> Response {
    common_error(
        StatusCode::NOT_FOUND,
        &format!(
            "ObjStorage not found: [obj_missing_in_db_and_s3] Blob {oid} not found in both \
             object storage and metadata (likely never written or invalid request)"
        ),
    )
}

async fn blob(
    State(state): State<Arc<ServerState>>,
    method: Method,
    Path(oid_text): Path<String>,
) -> Response {
    // The real server: a malformed id is a 500, an unknown (or uppercase) one a 404.
    let Ok(oid) = gix::ObjectId::from_hex(oid_text.as_bytes()) else {
        return common_error(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error");
    };
    if oid_text.bytes().any(|b| b.is_ascii_uppercase()) {
        return blob_not_found(&oid_text);
    }
    if method == Method::HEAD {
        return match state.monorepo.blob_size(&oid) {
            Some(size) => octet_stream(&oid_text, Body::empty(), size),
            None => blob_not_found(&oid_text),
        };
    }
    let faults = state.faults();
    if faults.blob_delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(faults.blob_delay_ms)).await;
    }
    let Some(mut data) = state.monorepo.blob(&oid) else {
        return blob_not_found(&oid_text);
    };
    let fault = state.deal(true);
    if let Some(response) = faulty(fault, &oid_text, data.len() as u64).await {
        return response;
    }
    if fault == Fault::Corrupt {
        flip_a_byte(&mut data);
    }
    if fault == Fault::Extra {
        data.extend_from_slice(b"extra bytes the object does not have");
    }
    let length = data.len() as u64;
    if fault == Fault::Truncate && data.len() > 1 {
        // Promise the whole length, send half, then fail the stream: the connection drops.
        let half = bytes::Bytes::from(data[..data.len() / 2].to_vec());
        let stream = futures::stream::iter(vec![
            Ok(half),
            Err(std::io::Error::other("dev server: cut short on purpose")),
        ]);
        return octet_stream(&oid_text, Body::from_stream(stream), length);
    }
    if let Some(hold) = faults.hold_blobs_after.filter(|&n| n < length) {
        return octet_stream(&oid_text, held_back(&state, data, hold as usize), length);
    }
    if let Some(ms) = faults.trickle_blobs_ms {
        return octet_stream(&oid_text, trickled(&state, data, ms), length);
    }
    octet_stream(&oid_text, Body::from(data), length)
}

/// A body sent a byte at a time, `ms` milliseconds apart, and the rest at once when the
/// faults are set again (so that no answer outlives a test).
fn trickled(state: &ServerState, data: Vec<u8>, ms: u64) -> Body {
    let released = state.faults_set.subscribe();
    let bytes = futures::stream::unfold(
        (data, 0usize, released, false),
        move |(data, at, mut released, free)| async move {
            if at >= data.len() {
                return None;
            }
            if free {
                let rest = bytes::Bytes::from(data[at..].to_vec());
                return Some((
                    Ok::<_, std::io::Error>(rest),
                    (data, usize::MAX, released, true),
                ));
            }
            let pause = tokio::time::sleep(std::time::Duration::from_millis(ms));
            let free = tokio::select! {
                _ = pause => false,
                _ = released.changed() => true,
            };
            let byte = bytes::Bytes::from(vec![data[at]]);
            Some((Ok(byte), (data, at + 1, released, free)))
        },
    );
    Body::from_stream(bytes)
}

/// A body whose first `hold` bytes go at once and the rest once the faults are set again.
fn held_back(state: &ServerState, mut data: Vec<u8>, hold: usize) -> Body {
    let rest = bytes::Bytes::from(data.split_off(hold));
    let mut released = state.faults_set.subscribe();
    let first =
        futures::stream::once(async move { Ok::<_, std::io::Error>(bytes::Bytes::from(data)) });
    let then = futures::stream::once(async move {
        let _ = released.changed().await;
        Ok(rest)
    });
    Body::from_stream(first.chain(then))
}

#[derive(Deserialize)]
struct PathQuery {
    path: Option<String>,
    refs: Option<String>,
}

async fn latest_commit(
    State(state): State<Arc<ServerState>>,
    Query(q): Query<PathQuery>,
) -> Response {
    let path = q.path.unwrap_or_else(|| "/".to_string());
    match state.monorepo.latest_commit(&path, q.refs.as_deref()) {
        Ok(Some(c)) => {
            // Bare JSON, keys in the real server's order.
            let body = format!(
                "{{\"oid\":{},\"date\":{},\"short_message\":{},\"author\":{},\"committer\":{},\"status\":\"success\"}}",
                serde_json::Value::from(c.oid),
                serde_json::Value::from(c.date.to_string()),
                serde_json::Value::from(c.short_message),
                serde_json::Value::from(c.author),
                serde_json::Value::from(c.committer),
            );
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Ok(None) => common_error(StatusCode::NOT_FOUND, "File not found"),
        Err(e) => internal(e),
    }
}

async fn content_hash(
    State(state): State<Arc<ServerState>>,
    Query(q): Query<PathQuery>,
) -> Response {
    let path = q.path.unwrap_or_else(|| "/".to_string());
    match state.monorepo.content_hash(&path) {
        Ok(entries) => {
            let data: Vec<_> = entries
                .into_iter()
                .map(|(name, is_dir, oid)| {
                    let kind = if is_dir { "directory" } else { "file" };
                    format!(
                        "{{\"name\":{},\"content_type\":\"{kind}\",\"oid\":\"{oid}\"}}",
                        serde_json::Value::from(name)
                    )
                })
                .collect();
            let body = format!(
                "{{\"req_result\":true,\"data\":[{}],\"err_message\":\"\"}}",
                data.join(",")
            );
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Err(e) => internal(e),
    }
}

async fn dev_requests(State(state): State<Arc<ServerState>>) -> Response {
    let log = state.log.lock().unwrap_or_else(|p| p.into_inner()).clone();
    json_response(serde_json::to_string(&log))
}

async fn dev_faults(State(state): State<Arc<ServerState>>, Query(f): Query<Faults>) -> Response {
    state.set_faults(f.clone());
    json_response(serde_json::to_string(&f))
}

async fn dev_stats(State(state): State<Arc<ServerState>>) -> Response {
    let requests = state.log.lock().unwrap_or_else(|p| p.into_inner()).len();
    let injected = state.injected.load(Ordering::Relaxed);
    json_response(Ok(format!(
        "{{\"requests\":{requests},\"faults_injected\":{injected}}}"
    )))
}

async fn dev_reset(State(state): State<Arc<ServerState>>) -> Response {
    state.set_faults(Faults::default());
    state.log.lock().unwrap_or_else(|p| p.into_inner()).clear();
    StatusCode::NO_CONTENT.into_response()
}

fn json_response(body: serde_json::Result<String>) -> Response {
    match body {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => internal(e.into()),
    }
}
