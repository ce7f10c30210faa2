//! What the HTTP sources (Mega, git) share: the client, URL checks, retry pauses, and turning
//! transport failures into clear errors without secrets.

use std::time::Duration;

use reqwest::{Client, Url};

use super::SourceError;

/// How many times an idempotent request is tried.
pub const ATTEMPTS: u32 = 3;

/// A client whose connects and stalled reads are bounded. No deadline on a whole response: a
/// big file may take longer than any one read may stall; fetches are bounded above this.
pub fn client(timeout: Duration, connect_timeout: Duration) -> Result<Client, SourceError> {
    Client::builder()
        .connect_timeout(connect_timeout)
        .read_timeout(timeout)
        .build()
        .map_err(|e| SourceError::Unsupported(format!("cannot build an HTTP client: {e}")))
}

/// Parses an http(s) URL of a `what` ("Mega", "git") server.
pub fn parse_url(url: &str, what: &str) -> Result<Url, SourceError> {
    let parsed = Url::parse(url)
        .map_err(|e| SourceError::Unsupported(format!("invalid {what} URL {url:?}: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(SourceError::Unsupported(format!(
            "invalid {what} URL {url:?}: the scheme must be http or https"
        )));
    }
    Ok(parsed)
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
        SourceError::Unreachable {
            server: server.to_string(),
            detail: root_cause(e),
        }
    } else {
        SourceError::Server {
            server: server.to_string(),
            what: e.url().map(|u| u.path().to_string()).unwrap_or_default(),
            detail: root_cause(e),
        }
    }
}

/// The innermost cause, e.g. "Connection refused (os error 111)": what a person needs.
pub fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// A URL fit for logs and status (any password replaced); text that is no URL as is.
pub fn display_url(url: &str) -> String {
    Url::parse(url).map_or_else(|_| url.to_string(), |u| redacted(&u))
}

/// A URL fit for logs and status: any password replaced.
pub fn redacted(url: &Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() {
        let _ = shown.set_password(Some("***"));
    }
    shown.as_str().trim_end_matches('/').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_show_without_passwords() {
        assert_eq!(
            display_url("https://me:hunter2@h/r.git"),
            "https://me:***@h/r.git"
        );
        assert_eq!(display_url("/srv/git/repo"), "/srv/git/repo");
        assert!(parse_url("ftp://x", "git").is_err());
        assert!(
            backoff(1) >= Duration::from_millis(200) && backoff(1) < Duration::from_millis(400)
        );
    }
}
