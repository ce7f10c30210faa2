//! Where a repository lives, as a user names it: a path in a Mega monorepo (with the Mega
//! server's URL), a git server over HTTP(S), or a git repository on this machine. Told apart
//! here, once, for both ends: `mega-fuse` (which resolves a relative local path against its
//! own working directory) and `megafsd` (which opens a source for it).

use std::fmt;
use std::path::{Path, PathBuf};

use url::Url;

/// A repository's location.
#[derive(Clone, PartialEq, Eq)]
pub enum Location {
    /// A path in a Mega monorepo, normalised (single slashes, no trailing slash, no `.`), on
    /// the Mega server at `server`.
    Mega { server: String, path: String },
    /// A git repository served over smart HTTP, by its URL as given.
    Git { url: String },
    /// A git repository on this machine, by its absolute path.
    Local { path: PathBuf },
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LocationError {
    #[error("no repository given")]
    Empty,
    #[error("unsupported scheme {scheme} in {given:?}: use https://, http:// or a local path")]
    UnsupportedScheme { scheme: String, given: String },
    #[error("invalid {what} URL {given:?}: {reason}")]
    BadUrl {
        what: &'static str,
        given: String,
        reason: String,
    },
    #[error("a local repository path must be absolute: {0:?}")]
    Relative(String),
    #[error("repository path {0:?} must not contain '..'")]
    GoesUp(String),
    #[error(
        "{0:?} is a URL, but with a Mega server the repository is a path in its monorepo \
         (like /third-party/ripgrep)"
    )]
    UrlForMega(String),
}

impl Location {
    /// Parses a repository as given (`repo`, and the Mega server's URL if any). A relative
    /// local path is refused; see [`Location::parse_in`].
    pub fn parse(repo: &str, mega_url: Option<&str>) -> Result<Location, LocationError> {
        Location::parse_in(repo, mega_url, None)
    }

    /// Like [`Location::parse`], resolving a relative local path against `cwd` if given.
    pub fn parse_in(
        repo: &str,
        mega_url: Option<&str>,
        cwd: Option<&Path>,
    ) -> Result<Location, LocationError> {
        let repo = repo.trim();
        if repo.is_empty() {
            return Err(LocationError::Empty);
        }
        if let Some(server) = mega_url.map(str::trim).filter(|s| !s.is_empty()) {
            http_url(server, "Mega")?;
            if scheme_of(repo).is_some() {
                return Err(LocationError::UrlForMega(repo.to_string()));
            }
            return Ok(Location::Mega {
                server: server.trim_end_matches('/').to_string(),
                path: normalize_mega_path(repo)?,
            });
        }
        match scheme_of(repo) {
            Some(scheme) if scheme == "http" || scheme == "https" => {
                http_url(repo, "git")?;
                return Ok(Location::Git {
                    url: repo.to_string(),
                });
            }
            Some(scheme) if scheme == "file" => {
                let path = &repo["file://".len()..];
                return local(path, None);
            }
            Some(scheme) => {
                return Err(LocationError::UnsupportedScheme {
                    scheme,
                    given: repo.to_string(),
                })
            }
            None => {}
        }
        if is_scp_like(repo) {
            // git's own rule: a colon before any slash means ssh (`git@host:path`).
            return Err(LocationError::UnsupportedScheme {
                scheme: "ssh".into(),
                given: repo.to_string(),
            });
        }
        local(repo, cwd)
    }

    /// For `status` and logs, without passwords: `mega http://host:8000 /third-party/rg`,
    /// `git https://host/r.git`, `local /srv/repo`.
    pub fn describe(&self) -> String {
        match self {
            Location::Mega { server, path } => format!("mega {} {path}", redacted(server)),
            Location::Git { url } => format!("git {}", redacted(url)),
            Location::Local { path } => format!("local {}", path.display()),
        }
    }

    /// Whether the repository is on a server (not read from this machine's disk).
    pub fn is_remote(&self) -> bool {
        !matches!(self, Location::Local { .. })
    }

    /// The repository as a user names it again: the Mega path, the URL, the local path.
    pub fn repo(&self) -> String {
        match self {
            Location::Mega { path, .. } => path.clone(),
            Location::Git { url } => url.clone(),
            Location::Local { path } => path.display().to_string(),
        }
    }

    /// The Mega server's URL, for a Mega repository.
    pub fn mega_url(&self) -> Option<&str> {
        match self {
            Location::Mega { server, .. } => Some(server),
            _ => None,
        }
    }

    /// The name a mount of it gets unless told otherwise: the last component, without `.git`.
    pub fn default_name(&self) -> String {
        default_name_of(&self.repo())
    }
}

/// The last component of a repository as written, without `.git`: a mount's default name.
pub fn default_name_of(repo: &str) -> String {
    let last = repo
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default();
    last.strip_suffix(".git").unwrap_or(last).to_string()
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl fmt::Debug for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Location({})", self.describe())
    }
}

/// The lowercased scheme of `text` if it starts with one (`scheme://`).
fn scheme_of(text: &str) -> Option<String> {
    let (scheme, _) = text.split_once("://")?;
    let valid = !scheme.is_empty()
        && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then(|| scheme.to_ascii_lowercase())
}

/// `host:path` or `user@host:path`: a colon before the first slash.
fn is_scp_like(text: &str) -> bool {
    match (text.find(':'), text.find('/')) {
        (Some(colon), Some(slash)) => colon > 0 && colon < slash,
        (Some(colon), None) => colon > 0,
        _ => false,
    }
}

/// Checks an http(s) URL with a host, of a `what` ("Mega", "git") server.
fn http_url(text: &str, what: &'static str) -> Result<Url, LocationError> {
    let bad = |reason: &str| LocationError::BadUrl {
        what,
        given: text.to_string(),
        reason: reason.to_string(),
    };
    match scheme_of(text) {
        Some(scheme) if scheme == "http" || scheme == "https" => {}
        Some(scheme) => {
            return Err(LocationError::UnsupportedScheme {
                scheme,
                given: text.to_string(),
            })
        }
        None => return Err(bad("expected http:// or https:// and a host")),
    }
    let url = Url::parse(text).map_err(|e| bad(&e.to_string()))?;
    if url.host().is_none() {
        return Err(bad("it names no host"));
    }
    Ok(url)
}

fn local(path: &str, cwd: Option<&Path>) -> Result<Location, LocationError> {
    let given = Path::new(path);
    let path = match cwd {
        _ if given.is_absolute() => given.to_path_buf(),
        Some(cwd) => cwd.join(given),
        None => return Err(LocationError::Relative(path.to_string())),
    };
    Ok(Location::Local { path })
}

/// Single slashes, no trailing slash, no `.` or `..`: a Mega server mis-routes anything else.
pub fn normalize_mega_path(path: &str) -> Result<String, LocationError> {
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(LocationError::GoesUp(path.to_string())),
            p => parts.push(p),
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

/// A URL fit for logs and status (any password replaced); text that is no URL as is.
pub fn redacted(text: &str) -> String {
    let Ok(mut url) = Url::parse(text) else {
        return text.to_string();
    };
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    url.as_str().trim_end_matches('/').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(repo: &str, mega: Option<&str>) -> Result<Location, LocationError> {
        Location::parse(repo, mega)
    }

    #[test]
    fn tells_the_three_kinds_apart() {
        let mega = parse("//third-party//rg/", Some("http://me:pw@h:8000/")).expect("mega");
        assert_eq!(
            mega,
            Location::Mega {
                server: "http://me:pw@h:8000".into(),
                path: "/third-party/rg".into()
            }
        );
        assert_eq!(mega.describe(), "mega http://me:***@h:8000 /third-party/rg");
        assert_eq!(mega.default_name(), "rg");
        assert!(mega.is_remote());
        let git = parse("https://host/tools/r.git", None).expect("git");
        assert_eq!(git.describe(), "git https://host/tools/r.git");
        assert_eq!(git.default_name(), "r");
        assert!(git.is_remote());
        let local = parse("/srv/repo/", None).expect("local");
        assert_eq!(local.describe(), "local /srv/repo/");
        assert_eq!(local.default_name(), "repo");
        assert!(!local.is_remote());
        assert_eq!(
            parse("file:///srv/repo", None).expect("file URL"),
            Location::Local {
                path: "/srv/repo".into()
            }
        );
    }

    #[test]
    fn refuses_what_it_cannot_fetch_by_name() {
        for (given, scheme) in [
            ("ftp://host/r", "ftp"),
            ("ssh://git@host/r.git", "ssh"),
            ("git://host/r.git", "git"),
            ("git@github.com:org/r.git", "ssh"),
            ("host:r.git", "ssh"),
        ] {
            let err = parse(given, None).expect_err(given);
            assert_eq!(
                err,
                LocationError::UnsupportedScheme {
                    scheme: scheme.into(),
                    given: given.into()
                }
            );
            assert!(
                err.to_string().contains(&format!(
                    "unsupported scheme {scheme} in {given:?}: use https://, http:// or a local path"
                )),
                "{err}"
            );
        }
        assert_eq!(
            parse("repo", None),
            Err(LocationError::Relative("repo".into()))
        );
        assert_eq!(parse("  ", None), Err(LocationError::Empty));
        assert!(matches!(
            parse("/a/../b", Some("http://h")),
            Err(LocationError::GoesUp(_))
        ));
        assert!(matches!(
            parse("/r", Some("ftp://h")),
            Err(LocationError::UnsupportedScheme { .. })
        ));
        assert!(matches!(
            parse("/r", Some("not a url")),
            Err(LocationError::BadUrl { .. })
        ));
        assert!(matches!(
            parse("https://h/r.git", Some("http://h")),
            Err(LocationError::UrlForMega(_))
        ));
        assert!(matches!(
            parse("http://", None),
            Err(LocationError::BadUrl { .. })
        ));
    }

    #[test]
    fn relative_paths_resolve_where_asked() {
        let here = Location::parse_in("sub/repo", None, Some(Path::new("/home/me"))).expect("rel");
        assert_eq!(
            here,
            Location::Local {
                path: "/home/me/sub/repo".into()
            }
        );
        assert_eq!(redacted("/srv/git/repo"), "/srv/git/repo");
        assert_eq!(
            redacted("https://me:hunter2@h/r.git"),
            "https://me:***@h/r.git"
        );
    }
}
