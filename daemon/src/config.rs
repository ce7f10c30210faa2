//! The daemon's TOML configuration: a `[daemon]` table and any number of `[[mount]]` tables.
//! Every key has a default; an unknown key, a bad value, a duplicate name or mountpoint is an
//! error naming the file, line and key. See packaging/megafsd.toml for the documented example.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::location::{Location, LocationError};
use crate::mount_name::MountName;

/// Where the system daemon reads its configuration.
pub const SYSTEM_CONFIG: &str = "/etc/megafs/megafsd.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    /// `key` is empty where the file is not TOML at all (no key to name).
    #[error("{file}:{line}: {}{message}", key_then_colon(.key))]
    Invalid {
        file: String,
        line: usize,
        key: String,
        message: String,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct DaemonConfig {
    pub socket: Option<PathBuf>,
    pub cache_dir: Option<PathBuf>,
    /// Bytes; enforced by the bounded cache.
    pub cache_max_size: Option<u64>,
    pub log_dir: Option<PathBuf>,
    /// Where workspaces are kept.
    pub state_dir: Option<PathBuf>,
    pub log_level: Option<String>,
    pub request_timeout: Option<Duration>,
    pub connect_timeout: Option<Duration>,
    pub fetch_timeout: Option<Duration>,
    /// Files at least this big are read as they arrive; `Some(None)`: never ("off").
    pub stream_min_size: Option<Option<u64>>,
    /// Open cached files in FUSE passthrough mode where the kernel allows (default true).
    pub passthrough: Option<bool>,
    /// Subdirectories of a directory being read whose listings load in the background.
    pub look_ahead: Option<usize>,
    /// Where users other than root may mount; empty: anywhere outside system directories.
    pub allowed_roots: Vec<PathBuf>,
    /// Whether users other than root may let everyone into their mounts.
    pub user_allow_other: bool,
    /// An HTTP proxy for every server request (a mount's own wins); None: `HTTP_PROXY` and
    /// the like from the environment.
    pub proxy: Option<String>,
}

impl DaemonConfig {
    /// What the configuration says about other users' requests on the control socket.
    pub fn policy(&self) -> crate::access::Policy {
        crate::access::Policy {
            allowed_roots: self.allowed_roots.clone(),
            user_allow_other: self.user_allow_other,
        }
    }
}

/// A password or token: compared and cloned like a string, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// One configured mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountConfig {
    pub name: MountName,
    /// `repo` (with `mega_url`, for a Mega server).
    pub location: Location,
    pub git_ref: String,
    pub mountpoint: PathBuf,
    /// Let users other than the daemon's see the mount.
    pub allow_other: bool,
    /// A workspace: the mount takes writes, kept in its workspace directory.
    pub writable: bool,
    /// Move to the newest commit of what the mount follows this often.
    pub refresh_interval: Option<Duration>,
    /// Credentials for a git server (else from the URL, the environment or ~/.netrc).
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// An HTTP proxy for this mount's server, instead of the daemon's.
    pub proxy: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The file it came from, if any.
    pub file: Option<PathBuf>,
    pub daemon: DaemonConfig,
    pub mounts: Vec<MountConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    daemon: Option<Spanned<RawDaemon>>,
    #[serde(default)]
    mount: Vec<Spanned<RawMount>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    socket: Option<PathBuf>,
    cache_dir: Option<PathBuf>,
    cache_max_size: Option<Spanned<toml::Value>>,
    log_dir: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    log_level: Option<String>,
    request_timeout: Option<Spanned<toml::Value>>,
    connect_timeout: Option<Spanned<toml::Value>>,
    fetch_timeout: Option<Spanned<toml::Value>>,
    stream_min_size: Option<Spanned<toml::Value>>,
    passthrough: Option<bool>,
    look_ahead: Option<usize>,
    allowed_roots: Option<Spanned<Vec<PathBuf>>>,
    user_allow_other: Option<bool>,
    proxy: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMount {
    name: Option<Spanned<String>>,
    repo: Spanned<String>,
    mega_url: Option<Spanned<String>>,
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    mountpoint: Spanned<PathBuf>,
    #[serde(default)]
    options: Vec<Spanned<String>>,
    refresh_interval: Option<Spanned<toml::Value>>,
    writable: Option<bool>,
    username: Option<String>,
    password: Option<String>,
    proxy: Option<Spanned<String>>,
}

/// Finds line numbers for spans of one file.
struct Source<'a> {
    file: String,
    text: &'a str,
}

impl Source<'_> {
    fn line_of(&self, span: &Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text[..end].bytes().filter(|&b| b == b'\n').count() + 1
    }

    fn error(&self, span: &Range<usize>, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.clone(),
            line: self.line_of(span),
            key: key.to_string(),
            message: message.into(),
        }
    }
}

impl Config {
    /// No file: defaults everywhere, nothing to mount.
    pub fn empty() -> Config {
        Config {
            file: None,
            daemon: DaemonConfig {
                socket: None,
                cache_dir: None,
                cache_max_size: None,
                log_dir: None,
                state_dir: None,
                log_level: None,
                request_timeout: None,
                connect_timeout: None,
                fetch_timeout: None,
                stream_min_size: None,
                passthrough: None,
                look_ahead: None,
                allowed_roots: Vec::new(),
                user_allow_other: false,
                proxy: None,
            },
            mounts: Vec::new(),
        }
    }

    /// Reads `path`. A missing file is an error only if `required` (it was named explicitly).
    pub fn load(path: &Path, required: bool) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Ok(Config::empty()),
            Err(source) => Err(ConfigError::Read {
                file: path.display().to_string(),
                source,
            }),
        }
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let src = Source {
            file: path.display().to_string(),
            text,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            let message = e.message().to_string();
            let key = unknown_key(&message).unwrap_or_default();
            src.error(&span, &key, message)
        })?;
        let daemon = match raw.daemon {
            Some(d) => daemon_config(&src, d.into_inner())?,
            None => Config::empty().daemon,
        };
        let mut mounts = Vec::new();
        let mut names: HashMap<MountName, usize> = HashMap::new();
        let mut points: HashMap<PathBuf, usize> = HashMap::new();
        for raw_mount in raw.mount {
            let span = raw_mount.span();
            let mount = mount_config(&src, raw_mount.into_inner(), &span)?;
            let line = src.line_of(&span);
            if let Some(first) = names.insert(mount.name.clone(), line) {
                return Err(src.error(
                    &span,
                    "name",
                    format!(
                        "duplicate mount name {:?} (first at line {first})",
                        mount.name
                    ),
                ));
            }
            if let Some(first) = points.insert(mount.mountpoint.clone(), line) {
                return Err(src.error(
                    &span,
                    "mountpoint",
                    format!(
                        "duplicate mountpoint {} (first at line {first})",
                        mount.mountpoint.display()
                    ),
                ));
            }
            mounts.push(mount);
        }
        Ok(Config {
            file: Some(path.to_path_buf()),
            daemon,
            mounts,
        })
    }

    /// What is unsafe about the file as it stands: a password or token in a file that users
    /// other than its owner may read.
    pub fn warnings(&self) -> Vec<String> {
        use std::os::unix::fs::PermissionsExt;
        let Some(file) = &self.file else {
            return Vec::new();
        };
        let has_secret = self.mounts.iter().any(|m| {
            let url = match &m.location {
                Location::Mega { server, .. } => server.as_str(),
                Location::Git { url } => url.as_str(),
                Location::Local { .. } => "",
            };
            m.password.is_some() || url_has_password(url)
        });
        let mode = match std::fs::metadata(file) {
            Ok(meta) => meta.permissions().mode() & 0o777,
            Err(_) => return Vec::new(),
        };
        if has_secret && mode & 0o044 != 0 {
            vec![format!(
                "{} holds a password or token but other users can read it (mode {mode:o}): \
                 chmod 600 it",
                file.display()
            )]
        } else {
            Vec::new()
        }
    }
}

impl Config {
    /// What would make a configured mount fail that can be seen without mounting (for
    /// `--check-config`): a local repository that is missing or not a git repository, a
    /// mountpoint whose parent is missing or that is not a directory.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for m in &self.mounts {
            if let Location::Local { path } = &m.location {
                if !path.is_dir() {
                    problems.push(format!(
                        "mount {}: the repository {} does not exist or is not a directory",
                        m.name,
                        path.display()
                    ));
                } else if let Err(e) = gix::open(path) {
                    problems.push(format!(
                        "mount {}: {} is not a git repository ({e})",
                        m.name,
                        path.display()
                    ));
                }
            }
            let point = &m.mountpoint;
            if point.exists() && !point.is_dir() {
                problems.push(format!(
                    "mount {}: the mountpoint {} is not a directory",
                    m.name,
                    point.display()
                ));
            } else if let Some(parent) = point.parent().filter(|p| !p.is_dir()) {
                if !point.exists() {
                    problems.push(format!(
                        "mount {}: the mountpoint's parent {} does not exist (the daemon \
                         creates the mountpoint, not its parents): mkdir -p it",
                        m.name,
                        parent.display()
                    ));
                }
            }
        }
        problems
    }
}

fn url_has_password(text: &str) -> bool {
    reqwest::Url::parse(text).is_ok_and(|url| url.password().is_some())
}

/// `"key: "`, or nothing where there is no key.
fn key_then_colon(key: &str) -> String {
    match key {
        "" => String::new(),
        key => format!("{key}: "),
    }
}

/// toml reports unknown fields as "unknown field `x`, expected ...".
fn unknown_key(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest[..rest.find('`')?].to_string())
}

fn daemon_config(src: &Source<'_>, raw: RawDaemon) -> Result<DaemonConfig, ConfigError> {
    let cache_max_size = match raw.cache_max_size {
        Some(v) => Some(
            parse_size(v.get_ref())
                .map_err(|m| src.error(&v.span(), "daemon.cache_max_size", m.to_string()))?,
        ),
        None => None,
    };
    let duration = |value: &Option<Spanned<toml::Value>>, key: &str| match value {
        Some(v) => parse_duration(v.get_ref())
            .map(Some)
            .map_err(|m| src.error(&v.span(), key, m.to_string())),
        None => Ok(None),
    };
    let request_timeout = duration(&raw.request_timeout, "daemon.request_timeout")?;
    let connect_timeout = duration(&raw.connect_timeout, "daemon.connect_timeout")?;
    let fetch_timeout = duration(&raw.fetch_timeout, "daemon.fetch_timeout")?;
    let stream_min_size = match raw.stream_min_size {
        Some(v) => Some(
            parse_size_or_off(v.get_ref())
                .map_err(|m| src.error(&v.span(), "daemon.stream_min_size", m.to_string()))?,
        ),
        None => None,
    };
    let allowed_roots = match raw.allowed_roots {
        Some(roots) => {
            if let Some(bad) = roots.get_ref().iter().find(|r| !r.is_absolute()) {
                let message = format!("{} is not an absolute path", bad.display());
                return Err(src.error(&roots.span(), "daemon.allowed_roots", message));
            }
            roots.into_inner()
        }
        None => Vec::new(),
    };
    Ok(DaemonConfig {
        socket: raw.socket,
        cache_dir: raw.cache_dir,
        cache_max_size,
        log_dir: raw.log_dir,
        state_dir: raw.state_dir,
        log_level: raw.log_level,
        request_timeout,
        connect_timeout,
        fetch_timeout,
        stream_min_size,
        passthrough: raw.passthrough,
        look_ahead: raw.look_ahead,
        allowed_roots,
        user_allow_other: raw.user_allow_other.unwrap_or(false),
        proxy: proxy_url(src, raw.proxy, "daemon.proxy")?,
    })
}

/// A proxy's URL, checked: `http://` or `https://`, with a host.
fn proxy_url(
    src: &Source<'_>,
    value: Option<Spanned<String>>,
    key: &str,
) -> Result<Option<String>, ConfigError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let text = value.get_ref();
    match reqwest::Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
            Ok(Some(text.clone()))
        }
        _ => Err(src.error(
            &value.span(),
            key,
            format!("invalid proxy {text:?}: give its URL, as in \"http://cache.example:3128\""),
        )),
    }
}

fn mount_config(
    src: &Source<'_>,
    raw: RawMount,
    span: &Range<usize>,
) -> Result<MountConfig, ConfigError> {
    let mega_url = raw.mega_url.as_ref().map(|u| u.get_ref().as_str());
    let location = Location::parse(raw.repo.get_ref(), mega_url).map_err(|e| {
        // A URL that is wrong may be either key's.
        let of_mega_url = matches!(
            &e,
            LocationError::UnsupportedScheme { given, .. } | LocationError::BadUrl { given, .. }
                if Some(given.as_str()) == mega_url
        );
        match (&raw.mega_url, of_mega_url) {
            (Some(url), true) => src.error(&url.span(), "mount.mega_url", e.to_string()),
            _ => src.error(&raw.repo.span(), "mount.repo", e.to_string()),
        }
    })?;
    let mountpoint = raw.mountpoint.get_ref().clone();
    if !mountpoint.is_absolute() {
        return Err(src.error(
            &raw.mountpoint.span(),
            "mount.mountpoint",
            "must be absolute",
        ));
    }
    let given = raw
        .name
        .as_ref()
        .map(|n| n.get_ref().as_str())
        .unwrap_or("");
    let name = MountName::given_or_default(given, &location).map_err(|e| {
        let at = raw.name.as_ref().map(|n| n.span()).unwrap_or(span.clone());
        src.error(&at, "mount.name", e.to_string())
    })?;
    let mut allow_other = false;
    for option in &raw.options {
        match option.get_ref().as_str() {
            "allow_other" => allow_other = true,
            other => {
                return Err(src.error(
                    &option.span(),
                    "mount.options",
                    format!("unknown option {other:?} (known: allow_other)"),
                ))
            }
        }
    }
    let refresh_interval = match &raw.refresh_interval {
        Some(v) => Some(
            parse_duration(v.get_ref())
                .map_err(|m| src.error(&v.span(), "mount.refresh_interval", m.to_string()))?,
        ),
        None => None,
    };
    Ok(MountConfig {
        name,
        location,
        git_ref: raw.git_ref.unwrap_or_default(),
        mountpoint,
        allow_other,
        writable: raw.writable.unwrap_or(false),
        refresh_interval,
        username: raw.username,
        password: raw.password.map(Secret),
        proxy: proxy_url(src, raw.proxy, "mount.proxy")?,
    })
}

/// A value of the configuration (or of an option) that does not mean what its key takes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("expected a size like \"10G\", got {0}")]
    NotASize(String),
    #[error("unknown size unit in {0:?} (use K, M, G or T)")]
    SizeUnit(String),
    #[error("expected a duration like \"30s\", got {0}")]
    NotADuration(String),
    #[error("unknown duration unit in {0:?} (use ms, s, m or h)")]
    DurationUnit(String),
    #[error("must be more than zero")]
    Zero,
}

/// A size, or `"off"` (None).
pub fn parse_size_or_off(value: &toml::Value) -> Result<Option<u64>, ValueError> {
    match value {
        toml::Value::String(s) if s.trim().eq_ignore_ascii_case("off") => Ok(None),
        other => parse_size(other).map(Some),
    }
}

/// `1073741824`, `"512M"`, `"10G"`, `"1.5GiB"`.
pub fn parse_size(value: &toml::Value) -> Result<u64, ValueError> {
    let text = match value {
        toml::Value::Integer(n) if *n >= 0 => return Ok(*n as u64),
        toml::Value::String(s) => s.trim().to_string(),
        other => return Err(ValueError::NotASize(other.to_string())),
    };
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| ValueError::NotASize(format!("{text:?}")))?;
    let factor: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        "T" | "TB" | "TIB" => 1 << 40,
        _ => return Err(ValueError::SizeUnit(text)),
    };
    Ok((number * factor as f64) as u64)
}

/// `30` (seconds), `"30s"`, `"500ms"`, `"2m"`.
pub fn parse_duration(value: &toml::Value) -> Result<Duration, ValueError> {
    let text = match value {
        toml::Value::Integer(n) if *n > 0 => return Ok(Duration::from_secs(*n as u64)),
        toml::Value::String(s) => s.trim().to_string(),
        other => return Err(ValueError::NotADuration(other.to_string())),
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| ValueError::NotADuration(format!("{text:?}")))?;
    let duration = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" | "min" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(ValueError::DurationUnit(text)),
    };
    if duration.is_zero() {
        return Err(ValueError::Zero);
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/megafs/megafsd.toml"))
    }

    fn error_of(text: &str) -> String {
        parse(text).expect_err("should be refused").to_string()
    }

    #[test]
    fn a_full_config() {
        let config = parse(
            r#"
[daemon]
socket = "/run/x.sock"
cache_max_size = "2G"
request_timeout = "45s"

[[mount]]
name = "rg"
repo = "/third-party/ripgrep"
mega_url = "http://127.0.0.1:8000"
mountpoint = "/mnt/rg"

[[mount]]
repo = "/srv/git/tool.git"
ref = "v1"
mountpoint = "/mnt/tool"
options = ["allow_other"]
"#,
        )
        .expect("valid");
        assert_eq!(config.daemon.cache_max_size, Some(2 << 30));
        assert_eq!(config.daemon.request_timeout, Some(Duration::from_secs(45)));
        assert_eq!(config.mounts.len(), 2);
        assert_eq!(config.mounts[1].name, "tool");
        assert_eq!(config.mounts[1].git_ref, "v1");
        assert!(config.mounts[1].allow_other);
        assert_eq!(parse("").expect("empty").mounts, []);
        let off = parse("[daemon]\nstream_min_size = \"off\"\n").expect("off");
        assert_eq!(off.daemon.stream_min_size, Some(None));
        let big = parse("[daemon]\nstream_min_size = \"64M\"\n").expect("64M");
        assert_eq!(big.daemon.stream_min_size, Some(Some(64 << 20)));
        let roots = parse("[daemon]\nallowed_roots = [\"/home\"]\nuser_allow_other = true\n")
            .expect("roots");
        assert_eq!(roots.daemon.allowed_roots, [PathBuf::from("/home")]);
        assert!(roots.daemon.user_allow_other);
        assert!(error_of("[daemon]\nallowed_roots = [\"home\"]\n")
            .contains(":2: daemon.allowed_roots: home is not an absolute path"));
        let ahead = parse("[daemon]\nlook_ahead = 0\n").expect("look_ahead");
        assert_eq!(ahead.daemon.look_ahead, Some(0));
        assert!(parse("[daemon]\nlook_ahead = -1\n").is_err());
        let proxied = parse(
            "[daemon]\nproxy = \"http://cache:3128\"\n[[mount]]\nrepo = \"/r\"\nmountpoint = \"/m\"\nproxy = \"https://other:443\"\n",
        )
        .expect("proxies");
        assert_eq!(proxied.daemon.proxy.as_deref(), Some("http://cache:3128"));
        assert_eq!(
            proxied.mounts[0].proxy.as_deref(),
            Some("https://other:443")
        );
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let e = error_of("[daemon]\nsocket = \"/x\"\ncolour = \"blue\"\n");
        assert!(e.starts_with("/etc/megafs/megafsd.toml:3: colour:"), "{e}");
        // Not TOML at all: there is no key to name, and no empty one shown.
        let e = error_of("[daemon\n");
        assert!(e.starts_with("/etc/megafs/megafsd.toml:1: "), "{e}");
        assert!(!e.contains(": :"), "{e}");
        let e = error_of("[[mount]]\nrepo = \"/r\"\nmountpoint = \"/m\"\nmega_url = \"ftp://x\"\n");
        assert!(
            error_of("[[mount]]\nrepo = \"https://\"\nmountpoint = \"/m\"\n")
                .contains(":2: mount.repo: invalid git URL")
        );
        assert!(
            e.contains(":4: mount.mega_url: unsupported scheme ftp in \"ftp://x\""),
            "{e}"
        );
        let e = error_of("[[mount]]\nrepo = \"git@host:r.git\"\nmountpoint = \"/m\"\n");
        assert!(
            e.contains(":2: mount.repo: unsupported scheme ssh in \"git@host:r.git\": use https://, http:// or a local path"),
            "{e}"
        );
        let two = "[[mount]]\nrepo = \"/a/r\"\nmountpoint = \"/m1\"\n\n[[mount]]\nrepo = \"/b/r\"\nmountpoint = \"/m2\"\n";
        let e = error_of(two);
        assert!(
            e.contains(":5: name: duplicate mount name \"r\" (first at line 1)"),
            "{e}"
        );
        let same_point = "[[mount]]\nrepo = \"/a\"\nmountpoint = \"/m\"\n[[mount]]\nrepo = \"/b\"\nmountpoint = \"/m\"\n";
        assert!(error_of(same_point).contains(":4: mountpoint: duplicate mountpoint /m"));
        assert!(
            error_of("[[mount]]\nrepo = \"rel/path\"\nmountpoint = \"/m\"\n")
                .contains(":2: mount.repo: a local repository path must be absolute")
        );
        assert!(error_of("[[mount]]\nrepo = \"/r\"\nmountpoint = \"m\"\n")
            .contains(":3: mount.mountpoint: must be absolute"));
        assert!(
            error_of("[[mount]]\nrepo = \"/r\"\nmountpoint = \"/m\"\noptions = [\"x\"]\n")
                .contains(":4: mount.options: unknown option")
        );
        assert!(error_of("[daemon]\nrequest_timeout = \"3 fortnights\"\n")
            .contains(":2: daemon.request_timeout:"));
        assert!(error_of("[[mount]]\nmountpoint = \"/m\"\n").contains("missing field `repo`"));
        assert!(error_of("[daemon]\nstream_min_size = \"huge\"\n")
            .contains(":2: daemon.stream_min_size:"));
        assert!(error_of("this is not toml").contains("megafsd.toml:1"));
        for bad in ["cache:3128", "socks5://cache:1080", "http://"] {
            let e = error_of(&format!("[daemon]\nproxy = \"{bad}\"\n"));
            assert!(
                e.contains(":2: daemon.proxy: invalid proxy")
                    && e.contains("http://cache.example:3128"),
                "{e}"
            );
        }
    }

    #[test]
    fn a_secret_others_can_read_is_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str, mode: u32| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            Config::load(&path, true).expect("valid")
        };
        let secret = "[[mount]]\nrepo = \"https://git.example/r.git\"\nmountpoint = \"/m\"\nusername = \"u\"\npassword = \"s3cret\"\n";
        let warnings = write("open.toml", secret, 0o644).warnings();
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].contains("other users can read it (mode 644)"),
            "{warnings:?}"
        );
        assert!(!warnings[0].contains("s3cret"));
        assert!(write("closed.toml", secret, 0o600).warnings().is_empty());
        let in_url = "[[mount]]\nrepo = \"https://u:tok@git.example/r.git\"\nmountpoint = \"/m\"\n";
        assert_eq!(write("url.toml", in_url, 0o640).warnings().len(), 1);
        let plain = "[[mount]]\nrepo = \"https://git.example/r.git\"\nmountpoint = \"/m\"\n";
        assert!(write("plain.toml", plain, 0o644).warnings().is_empty());
    }

    #[test]
    fn passwords_never_print() {
        let config = parse("[[mount]]\nrepo = \"https://h/r.git\"\nmountpoint = \"/m\"\nusername = \"me\"\npassword = \"hunter2\"\n")
            .expect("valid");
        let shown = format!("{config:?}");
        assert!(
            shown.contains("me") && !shown.contains("hunter2"),
            "{shown}"
        );
        assert_eq!(config.mounts[0].password, Some(Secret("hunter2".into())));
    }

    #[test]
    fn sizes_and_durations() {
        let s = |t: &str| parse_size(&toml::Value::String(t.into()));
        assert_eq!(s("512M"), Ok(512 << 20));
        assert_eq!(s("1.5GiB"), Ok(3 << 29));
        assert!(s("lots").is_err());
        assert_eq!(parse_size(&toml::Value::Integer(10)), Ok(10));
        let d = |t: &str| parse_duration(&toml::Value::String(t.into()));
        assert_eq!(d("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(d("2m"), Ok(Duration::from_secs(120)));
        assert!(d("0s").is_err());
        assert_eq!(
            parse_duration(&toml::Value::Integer(7)),
            Ok(Duration::from_secs(7))
        );
    }

    #[test]
    fn the_shipped_example_is_valid_commented_and_uncommented() {
        let example = include_str!("../../packaging/megafsd.toml");
        assert_eq!(parse(example).expect("as shipped").mounts, []);
        // Uncomment every `#key = value` and `#[[mount]]` line: the examples must parse too.
        let uncommented: String = example
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest)
                    if rest.starts_with("[[") || rest.contains(" = ") && !rest.starts_with(' ') =>
                {
                    rest
                }
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let config = parse(&uncommented).expect("uncommented");
        assert_eq!(config.mounts.len(), 4);
        assert!(config.mounts[3].writable);
        assert_eq!(config.daemon.cache_max_size, Some(10 << 30));
        assert_eq!(
            config.daemon.state_dir.as_deref(),
            Some(Path::new("/var/lib/megafs"))
        );
    }

    #[test]
    fn a_missing_default_file_is_an_empty_config() {
        let missing = Path::new("/surely/not/here.toml");
        assert_eq!(Config::load(missing, false).expect("optional").mounts, []);
        assert!(Config::load(missing, true).is_err());
    }
}
