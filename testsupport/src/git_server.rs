//! A smart-HTTP git server for tests: git's own `git http-backend`, run as a CGI program per
//! request behind a small axum front. Serves every repository under a root directory with
//! partial-clone filters allowed (or not), and records each request (the protocol v2 command
//! it carried) so tests can count them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use axum::Router;

use crate::background::Background;

/// One request as the server saw it: method, path, and for POSTs the v2 command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GitRequest {
    pub method: String,
    pub path: String,
    pub command: Option<String>,
    /// The arguments of a v2 command (`want <oid>`, `filter blob:none`, ...).
    pub args: Vec<String>,
}

struct GitState {
    root: PathBuf,
    allow_filter: bool,
    object_info: bool,
    /// The `Authorization` header every request must carry, if any.
    required_auth: Option<String>,
    log: Mutex<Vec<GitRequest>>,
    /// Bytes of answers handed to the connection so far (what a client that stops reading
    /// early never asked to be sent stays with git).
    sent: Arc<std::sync::atomic::AtomicU64>,
    /// A hostile server's answer to every fetch, in place of git's (see `hostile`).
    fetch_answer: Mutex<Option<Vec<u8>>>,
}

pub struct GitServer {
    addr: SocketAddr,
    state: Arc<GitState>,
    _server: Background,
}

impl GitServer {
    /// Serves the repositories under `root` (`<url>/<name>` is `root/<name>`).
    pub fn start(root: &Path, allow_filter: bool) -> anyhow::Result<GitServer> {
        Self::start_with(root, allow_filter, false)
    }

    /// Like `start`; `object_info` advertises the object-info command (off by default since
    /// git 2.45).
    pub fn start_with(
        root: &Path,
        allow_filter: bool,
        object_info: bool,
    ) -> anyhow::Result<GitServer> {
        Self::start_full(root, allow_filter, object_info, None)
    }

    /// A server that answers only requests with HTTP Basic credentials `user:password`
    /// (anything else gets a 401 asking for Basic).
    pub fn start_with_basic_auth(
        root: &Path,
        user: &str,
        password: &str,
    ) -> anyhow::Result<GitServer> {
        use base64::Engine;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        Self::start_full(root, true, false, Some(format!("Basic {token}")))
    }

    /// Serves on `addr` (for the `git-http-server` binary: demos and benchmarks).
    pub fn start_on(addr: SocketAddr, root: &Path, object_info: bool) -> anyhow::Result<GitServer> {
        Self::start_full_on(addr, root, true, object_info, None)
    }

    fn start_full(
        root: &Path,
        allow_filter: bool,
        object_info: bool,
        required_auth: Option<String>,
    ) -> anyhow::Result<GitServer> {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        Self::start_full_on(loopback, root, allow_filter, object_info, required_auth)
    }

    fn start_full_on(
        addr: SocketAddr,
        root: &Path,
        allow_filter: bool,
        object_info: bool,
        required_auth: Option<String>,
    ) -> anyhow::Result<GitServer> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let state = Arc::new(GitState {
            root: root.to_path_buf(),
            allow_filter,
            object_info,
            required_auth,
            log: Mutex::new(Vec::new()),
            sent: Arc::default(),
            fetch_answer: Mutex::new(None),
        });
        let app = Router::new().fallback(cgi).with_state(state.clone());
        let server = Background::serve("git-http-backend", listener, app)?;
        Ok(GitServer {
            addr,
            state,
            _server: server,
        })
    }

    /// Serves until the process ends.
    pub fn wait(self) {
        self._server.wait();
    }

    /// The URL of repository `name` under the root.
    pub fn url(&self, name: &str) -> String {
        format!("http://{}/{name}", self.addr)
    }

    pub fn requests(&self) -> Vec<GitRequest> {
        self.state
            .log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Answers every `fetch` with `answer` (raw, as the body of the HTTP answer) instead of
    /// asking git, until called again with None: a server turned hostile.
    pub fn answer_fetches_with(&self, answer: Option<Vec<u8>>) {
        *self
            .state
            .fetch_answer
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = answer;
    }

    /// Bytes of answer bodies sent so far.
    pub fn bytes_sent(&self) -> u64 {
        self.state.sent.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn clear_requests(&self) {
        self.state
            .log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }
}

/// The argument lines of a v2 command (after its delimiter), for tests to inspect.
fn args_of(body: &[u8]) -> Vec<String> {
    let mut args = Vec::new();
    let mut rest = body;
    let mut after_delim = false;
    while rest.len() >= 4 {
        let Some(len) = std::str::from_utf8(&rest[..4])
            .ok()
            .and_then(|t| usize::from_str_radix(t, 16).ok())
        else {
            break;
        };
        if len < 4 {
            after_delim |= len == 1;
            rest = &rest[4..];
            continue;
        }
        let Some(payload) = rest.get(4..len) else {
            break;
        };
        if after_delim {
            args.push(String::from_utf8_lossy(payload).trim_end().to_string());
        }
        rest = &rest[len..];
    }
    args
}

/// The v2 command of a request body (`command=fetch`), from its first pkt-line.
fn command_of(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body.get(4..64.min(body.len()))?).into_owned();
    let line = text.lines().next()?;
    line.strip_prefix("command=").map(|c| c.trim().to_string())
}

async fn cgi(State(state): State<Arc<GitState>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 64 << 20)
        .await
        .unwrap_or_default();
    state
        .log
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(GitRequest {
            method: parts.method.to_string(),
            path: parts.uri.path().to_string(),
            command: (parts.method == Method::POST)
                .then(|| command_of(&body))
                .flatten(),
            args: args_of(&body),
        });
    if let Some(required) = &state.required_auth {
        if header(&parts.headers, "authorization") != *required {
            let mut response = plain(StatusCode::UNAUTHORIZED, "authentication required".into());
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"megafs-test\""),
            );
            return response;
        }
    }
    let hostile = state
        .fetch_answer
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if let Some(answer) = hostile.filter(|_| command_of(&body).as_deref() == Some("fetch")) {
        let mut response = Response::new(Body::from(answer));
        response.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-git-upload-pack-result"),
        );
        return response;
    }
    let state = state.clone();
    let result = tokio::task::spawn_blocking(move || run_backend(&state, &parts, &body)).await;
    match result {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("git http-backend: {e:#}"),
        ),
        Err(e) => plain(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn plain(status: StatusCode, text: String) -> Response {
    let mut response = Response::new(Body::from(text));
    *response.status_mut() = status;
    response
}

fn header(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

fn run_backend(
    state: &GitState,
    parts: &axum::http::request::Parts,
    body: &Bytes,
) -> anyhow::Result<Response> {
    use std::io::Write;
    let mut command = std::process::Command::new("git");
    command
        .arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", &state.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("PATH_INFO", parts.uri.path())
        .env("QUERY_STRING", parts.uri.query().unwrap_or_default())
        .env("CONTENT_TYPE", header(&parts.headers, "content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_GIT_PROTOCOL", header(&parts.headers, "git-protocol"))
        .env(
            "HTTP_CONTENT_ENCODING",
            header(&parts.headers, "content-encoding"),
        )
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_COUNT", "3")
        .env("GIT_CONFIG_KEY_2", "transfer.advertiseObjectInfo")
        .env(
            "GIT_CONFIG_VALUE_2",
            if state.object_info { "true" } else { "false" },
        )
        .env("GIT_CONFIG_KEY_0", "uploadpack.allowFilter")
        .env(
            "GIT_CONFIG_VALUE_0",
            if state.allow_filter { "true" } else { "false" },
        )
        .env("GIT_CONFIG_KEY_1", "safe.directory")
        .env("GIT_CONFIG_VALUE_1", "*")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let mut child = command.spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(body)?;
    }
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    // The header first; the body streams as git writes it, as a web server in front of
    // http-backend sends it (a client may stop reading early, and the fetch then stops).
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    let (end, sep) = loop {
        if let Some(found) = header_end(&out) {
            break found;
        }
        let n = std::io::Read::read(&mut stdout, &mut chunk)?;
        if n == 0 {
            let _ = child.wait();
            anyhow::bail!("no CGI header end");
        }
        out.extend_from_slice(&chunk[..n]);
    };
    let first = Bytes::copy_from_slice(&out[end + sep..]);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(1);
    let sent = Arc::clone(&state.sent);
    std::thread::spawn(move || {
        let mut next = Some(first);
        loop {
            let piece = match next.take() {
                Some(piece) => piece,
                None => match std::io::Read::read(&mut stdout, &mut chunk) {
                    Ok(0) => break,
                    Ok(n) => Bytes::copy_from_slice(&chunk[..n]),
                    Err(e) => {
                        let _ = tx.blocking_send(Err(e));
                        break;
                    }
                },
            };
            let len = piece.len() as u64;
            if !piece.is_empty() && tx.blocking_send(Ok(piece)).is_err() {
                // The client went away: stop git rather than let it write on.
                let _ = child.kill();
                break;
            }
            sent.fetch_add(len, std::sync::atomic::Ordering::Relaxed);
        }
        let _ = child.wait();
    });
    let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    response_with(&out[..end], Body::from_stream(stream))
}

/// Where CGI output's header ends: its offset and the separator's length.
fn header_end(out: &[u8]) -> Option<(usize, usize)> {
    out.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, 4))
        .or_else(|| out.windows(2).position(|w| w == b"\n\n").map(|p| (p, 2)))
}

/// A response with CGI header lines `head` (with `Status:`) and `body`.
fn response_with(head: &[u8], body: Body) -> anyhow::Result<Response> {
    let head = String::from_utf8_lossy(head).into_owned();
    let mut response = Response::new(body);
    for line in head.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value
                .split(' ')
                .next()
                .unwrap_or("200")
                .parse()
                .unwrap_or(200);
            *response.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
        } else if let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    Ok(response)
}
