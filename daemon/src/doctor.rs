//! What the daemon checks of its own health for `mega-fuse doctor`: its configuration file,
//! megafs mounts nobody serves, the cache's room to grow, and each mount's server. Each check
//! says what it found and, where something is wrong, what to do.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::location::Location;
use crate::mount_name::MountName;
use crate::source::http;
use crate::store::Usage;

/// How long one server may take to answer a probe.
const SERVER_TIMEOUT: Duration = Duration::from_secs(5);

/// Free space under which a cache cannot keep a build's worth of files.
const LOW_SPACE: u64 = 256 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// It works, but not as well as it could.
    Warning,
    Failed,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Warning => "warning",
            Verdict::Failed => "failed",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub verdict: Verdict,
    pub detail: String,
    pub fix: String,
}

impl Check {
    fn ok(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            verdict: Verdict::Ok,
            detail: detail.into(),
            fix: String::new(),
        }
    }

    fn not_ok(
        verdict: Verdict,
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            name: name.into(),
            verdict,
            detail: detail.into(),
            fix: fix.into(),
        }
    }
}

/// The configuration file as it is on disk now (the daemon may run an older one).
pub fn configuration(file: Option<&Path>) -> Check {
    let Some(file) = file else {
        return Check::ok("configuration", "no configuration file: defaults");
    };
    let fix = "fix it (`megafsd --check-config` checks), then `systemctl reload megafsd`";
    match Config::load(file, true) {
        Err(e) => Check::not_ok(Verdict::Failed, "configuration", e.to_string(), fix),
        Ok(config) => match config.problems().as_slice() {
            [] => Check::ok("configuration", format!("valid: {}", file.display())),
            problems => Check::not_ok(
                Verdict::Failed,
                "configuration",
                format!("{}: {}", file.display(), problems.join("; ")),
                fix,
            ),
        },
    }
}

/// megafs mounts with no daemon behind them (`Transport endpoint is not connected`).
pub fn stale_mounts() -> Check {
    match crate::mounts::dead_mounts() {
        Err(e) => Check::not_ok(
            Verdict::Warning,
            "stale mounts",
            format!("cannot read the mount table: {e}"),
            "",
        ),
        Ok(dead) if dead.is_empty() => Check::ok("stale mounts", "none"),
        Ok(dead) => {
            let points: Vec<String> = dead
                .iter()
                .map(|m| m.mountpoint.display().to_string())
                .collect();
            Check::not_ok(
                Verdict::Failed,
                "stale mounts",
                format!(
                    "{} with no daemon behind it: {}",
                    dead.len(),
                    points.join(", ")
                ),
                format!(
                    "restart megafsd (it cleans them at start), or `umount -l {}`",
                    points[0]
                ),
            )
        }
    }
}

/// Whether the cache's filesystem has room for the cache to grow to its limit.
pub fn cache_room(dir: &Path, usage: &Usage, free: std::io::Result<u64>) -> Check {
    let name = "cache space";
    let free = match free {
        Ok(free) => free,
        Err(e) => {
            return Check::not_ok(
                Verdict::Failed,
                name,
                format!("cannot look at {}: {e}", dir.display()),
                "check that the cache directory exists and the daemon may read it",
            )
        }
    };
    let human = megafs_proto::units::human_bytes;
    let holds = format!(
        "{} holds {} of {}, {} free",
        dir.display(),
        human(usage.bytes),
        if usage.limit == 0 {
            "no limit".to_string()
        } else {
            human(usage.limit)
        },
        human(free)
    );
    let fix = "free space on that filesystem, lower cache_max_size, or `mega-fuse cache gc`";
    if free < LOW_SPACE {
        return Check::not_ok(Verdict::Failed, name, holds, fix);
    }
    let to_grow = usage.limit.saturating_sub(usage.bytes);
    if usage.limit == 0 || free < to_grow {
        return Check::not_ok(
            Verdict::Warning,
            name,
            format!("{holds}: the cache may grow past what is free"),
            fix,
        );
    }
    Check::ok(name, holds)
}

/// Each mount's server, asked the cheapest question that shows it answers, with the time it
/// took: a Mega server's status, a git server's advertisement, a local repository's directory.
pub async fn servers(mounts: Vec<(MountName, Location, Option<String>)>) -> Vec<Check> {
    let probes = mounts
        .into_iter()
        .map(|(name, location, proxy)| server(name, location, proxy));
    futures::future::join_all(probes).await
}

/// Asks `location`'s server as its mount does: through `proxy`, if it has one.
async fn server(name: MountName, location: Location, proxy: Option<String>) -> Check {
    let check = format!("server of {name}");
    let (url, shown) = match &location {
        Location::Local { path } => {
            return if path.is_dir() {
                Check::ok(check, format!("local repository {}", path.display()))
            } else {
                Check::not_ok(
                    Verdict::Failed,
                    check,
                    format!("{} is gone", path.display()),
                    "put the repository back, or disconnect the mount",
                )
            };
        }
        Location::Mega { server, .. } => (
            format!("{}/api/v1/status", server.trim_end_matches('/')),
            megafs_proto::location::redacted(server),
        ),
        Location::Git { url } => (
            format!(
                "{}/info/refs?service=git-upload-pack",
                url.trim_end_matches('/')
            ),
            megafs_proto::location::redacted(url),
        ),
    };
    // Built here, after a local repository has returned: it has no server to ask.
    let client = match http::client(SERVER_TIMEOUT, SERVER_TIMEOUT, proxy.as_deref()) {
        Ok(client) => client,
        Err(e) => {
            return Check::not_ok(
                Verdict::Failed,
                check,
                e.to_string(),
                "check the proxy in the configuration",
            )
        }
    };
    let started = Instant::now();
    let answer = client
        .get(&url)
        .header("Git-Protocol", "version=2")
        .timeout(SERVER_TIMEOUT)
        .send()
        .await;
    let took = started.elapsed();
    match answer {
        // A 401 or 403 is an answer: the server is there (credentials are another matter).
        Ok(response) if response.status().is_success() || response.status().as_u16() / 100 == 4 => {
            let status = response.status();
            if status == reqwest::StatusCode::NOT_FOUND {
                Check::not_ok(
                    Verdict::Failed,
                    check,
                    format!("{shown} answered 404 in {}", millis(took)),
                    "check the repository's URL",
                )
            } else {
                Check::ok(check, format!("{shown} answered in {}", millis(took)))
            }
        }
        Ok(response) => Check::not_ok(
            Verdict::Failed,
            check,
            format!("{shown} answered {} in {}", response.status(), millis(took)),
            "the server is unwell: try again later, or ask its operators",
        ),
        Err(e) => Check::not_ok(
            Verdict::Failed,
            check,
            format!("{shown} did not answer: {}", http::root_cause(&e)),
            "check the URL, the network, and that the server is up",
        ),
    }
}

fn millis(took: Duration) -> String {
    format!("{:.1} ms", took.as_secs_f64() * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(bytes: u64, limit: u64) -> Usage {
        Usage {
            bytes,
            limit,
            ..Default::default()
        }
    }

    #[test]
    fn the_cache_needs_room_to_grow_to_its_limit() {
        let dir = Path::new("/var/cache/megafs");
        let gib = 1u64 << 30;
        let ok = cache_room(dir, &usage(gib, 10 * gib), Ok(20 * gib));
        assert_eq!(ok.verdict, Verdict::Ok, "{ok:?}");
        let tight = cache_room(dir, &usage(gib, 10 * gib), Ok(5 * gib));
        assert_eq!(tight.verdict, Verdict::Warning, "{tight:?}");
        assert!(tight.fix.contains("cache_max_size"), "{tight:?}");
        let full = cache_room(dir, &usage(gib, 10 * gib), Ok(1 << 20));
        assert_eq!(full.verdict, Verdict::Failed, "{full:?}");
        let unbounded = cache_room(dir, &usage(gib, 0), Ok(20 * gib));
        assert_eq!(unbounded.verdict, Verdict::Warning, "{unbounded:?}");
        let gone = cache_room(dir, &usage(0, 0), Err(std::io::Error::other("nope")));
        assert_eq!(gone.verdict, Verdict::Failed, "{gone:?}");
    }
}
