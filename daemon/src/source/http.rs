//! What the HTTP sources (Mega, git) share: the client, URL checks, retry pauses, and turning
//! transport failures into clear errors without secrets.

use std::time::Duration;

use reqwest::{Client, Url};

use super::SourceError;
use crate::metrics::ServerMetrics;

/// How many times an idempotent request is tried.
pub const ATTEMPTS: u32 = 3;

/// The longest error body kept for its message.
const MAX_ERROR_BODY: u64 = 64 << 10;

/// Runs `once` until it succeeds, fails for good or has been tried [`ATTEMPTS`] times, with
/// growing, jittered pauses between tries, timing each try into `meter`. Every request megafs
/// makes is idempotent; which failures are worth another try is
/// [`SourceError::is_retryable`]'s to say, for every source.
pub async fn retry<T, F, Fut>(
    meter: &ServerMetrics,
    what: &str,
    mut once: F,
) -> Result<T, SourceError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, SourceError>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        match meter.request(once()).await {
            Err(e) if e.is_retryable() && attempt < ATTEMPTS => {
                let pause = backoff(attempt);
                tracing::debug!(what, attempt, ?pause, error = %e, "retrying a request");
                tokio::time::sleep(pause).await;
            }
            result => return result,
        }
    }
}

/// `response` if its status is a success; else the HTTP error it is, with the server's own
/// words from its (bounded) body.
pub async fn success(
    response: reqwest::Response,
    server: &str,
    what: &str,
    words: impl FnOnce(&[u8]) -> String,
) -> Result<reqwest::Response, SourceError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = body_within(response, MAX_ERROR_BODY, server, what)
        .await
        .unwrap_or_default();
    Err(SourceError::Http {
        server: server.to_string(),
        what: what.to_string(),
        status,
        detail: words(&body),
    })
}

/// A client whose connects and stalled reads are bounded. No deadline on a whole response: a
/// big file may take longer than any one read may stall; fetches are bounded above this.
/// Requests go through `proxy` where one is given (hosts `NO_PROXY` names excepted), else
/// through what `HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY` and `NO_PROXY` say.
pub fn client(
    timeout: Duration,
    connect_timeout: Duration,
    proxy: Option<&str>,
) -> Result<Client, SourceError> {
    let mut builder = Client::builder()
        .connect_timeout(connect_timeout)
        .read_timeout(timeout);
    if let Some(url) = proxy {
        let proxy = reqwest::Proxy::all(url)
            .map_err(|e| SourceError::Unsupported(format!("invalid proxy {url:?}: {e}")))?
            .no_proxy(reqwest::NoProxy::from_env());
        builder = builder.proxy(proxy);
    }
    builder
        .build()
        .map_err(|e| SourceError::Unsupported(format!("cannot build an HTTP client: {e}")))
}

/// The whole body of `response`, refusing one of more than `limit` bytes, whether announced
/// (Content-Length) or as it arrives: a server must not make the daemon hold what it likes.
pub async fn body_within(
    response: reqwest::Response,
    limit: u64,
    server: &str,
    what: &str,
) -> Result<Vec<u8>, SourceError> {
    let too_big = |size: String| SourceError::TooBig {
        server: server.to_string(),
        what: what.to_string(),
        size,
        limit,
    };
    let announced = response
        .headers()
        .get(reqwest::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let Some(announced) = announced.filter(|&n| n > limit) {
        return Err(too_big(format!("an answer of {announced} bytes")));
    }
    let mut body = Vec::new();
    let mut response = response;
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| transport_error(server, &e))?
    {
        if body.len() as u64 + chunk.len() as u64 > limit {
            return Err(too_big("a longer answer".into()));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Parses the URL of a `what` ("Mega", "git") server (checked already as a `Location`).
pub fn parse_url(url: &str, what: &str) -> Result<Url, SourceError> {
    Url::parse(url)
        .map_err(|e| SourceError::Unsupported(format!("invalid {what} URL {url:?}: {e}")))
}

/// The pause before attempt `attempt + 1`: 100 ms doubling, with up to as much again of
/// jitter so that many readers do not retry in step.
pub fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(100) * (1 << attempt.min(6));
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    base + base.mul_f64(f64::from(nanos % 1000) / 1000.0)
}

/// A failed request as a source error: unreachable, timed out, or broken off.
pub fn transport_error(server: &str, e: &reqwest::Error) -> SourceError {
    if e.is_timeout() {
        SourceError::Timeout {
            server: server.to_string(),
        }
    } else if e.is_connect() {
        let cause = root_cause(e);
        let https = e.url().is_some_and(|u| u.scheme() == "https");
        match tls_hint(https, &cause) {
            // Reached, and answered: not worth trying again, nor a reason to show `offline`.
            Some(hint) => SourceError::Unsupported(format!("{server}: {hint}")),
            None => SourceError::Unreachable {
                server: server.to_string(),
                detail: cause,
            },
        }
    } else {
        SourceError::Server {
            server: server.to_string(),
            what: e.url().map(|u| u.path().to_string()).unwrap_or_default(),
            detail: root_cause(e),
        }
    }
}

/// What a TLS handshake's failure means where the server answered in plain HTTP: rustls
/// reads the first bytes of an HTTP answer as a record of a type that does not exist.
fn tls_hint(https: bool, cause: &str) -> Option<String> {
    (https && cause.contains("InvalidContentType"))
        .then(|| format!("the server does not speak TLS; try http:// ({cause})"))
}

/// The innermost cause, e.g. "Connection refused (os error 111)": what a person needs.
pub fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// A URL fit for logs and status: any password replaced.
pub fn redacted(url: &Url) -> String {
    megafs_proto::location::redacted(url.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_http_answer_to_https_is_named_as_such() {
        let rustls = "received corrupt message of type InvalidContentType";
        let hint = tls_hint(true, rustls).expect("a hint");
        assert!(
            hint.starts_with("the server does not speak TLS; try http://"),
            "{hint}"
        );
        assert_eq!(tls_hint(false, rustls), None);
        assert_eq!(tls_hint(true, "Connection refused (os error 111)"), None);
    }

    fn response(body: &'static str, announced: Option<u64>) -> reqwest::Response {
        let mut builder = ::http::Response::builder();
        if let Some(len) = announced {
            builder = builder.header("content-length", len);
        }
        reqwest::Response::from(builder.body(body).expect("response"))
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_refused_announced_or_not() {
        let ok = body_within(response("twelve bytes", None), 12, "srv", "x").await;
        assert_eq!(ok.expect("within"), b"twelve bytes");
        let long = body_within(response("thirteen byte", None), 12, "srv", "x").await;
        let err = long.expect_err("longer").to_string();
        assert!(err.contains("more than the 12 bytes allowed"), "{err}");
        let announced = body_within(response("", Some(1 << 40)), 12, "srv", "x").await;
        assert!(announced
            .expect_err("announced")
            .to_string()
            .contains("1099511627776 bytes"));
    }

    #[test]
    fn pauses_grow_with_jitter() {
        assert!(
            backoff(1) >= Duration::from_millis(200) && backoff(1) < Duration::from_millis(400)
        );
    }
}
