//! Logging: to journald (with structured fields) under systemd, to stderr in the foreground,
//! else to `megafsd.log` in the log dir.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Mutex;

use anyhow::Context;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    Journald,
    Stderr,
    File,
}

/// Started by systemd with its output connected to the journal.
fn under_systemd() -> bool {
    std::env::var_os("JOURNAL_STREAM").is_some() || std::env::var_os("INVOCATION_ID").is_some()
}

/// The log filter: `MEGAFS_LOG` if set, else `level`, quieting two of fuser's messages
/// unless the filter names fuser itself. fuser warns when its own unmount finds the mount
/// already gone, which is how megafsd always unmounts (it unmounts first to tell "busy" from
/// other failures). And it logs as an error every reply the kernel refuses, which the kernel
/// does only where it no longer wants one: the caller was interrupted or killed, or the mount
/// was torn away (`disconnect --force`). Nothing is lost then, so nothing is said.
fn filter_directives(from_env: Option<&str>, level: &str) -> String {
    let asked = from_env.filter(|f| !f.is_empty()).unwrap_or(level);
    if asked.contains("fuser") {
        asked.to_string()
    } else {
        format!("{asked},fuser::mnt=error,fuser::reply=off")
    }
}

pub fn init(foreground: bool, log_dir: &Path, level: &str) -> anyhow::Result<LogTarget> {
    let from_env = std::env::var("MEGAFS_LOG").ok();
    let filter = EnvFilter::try_new(filter_directives(from_env.as_deref(), level))
        .context("invalid log level (--log-level or MEGAFS_LOG)")?;
    if under_systemd() {
        if let Ok(journald) = tracing_journald::layer() {
            tracing_subscriber::registry()
                .with(
                    journald
                        .with_syslog_identifier("megafsd".into())
                        // Plain field names, so `journalctl MOUNT=rg` finds a mount's lines.
                        .with_field_prefix(None)
                        .with_filter(filter),
                )
                .init();
            return Ok(LogTarget::Journald);
        }
    }
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if foreground {
        // Colours for a person at a terminal; none in a file or pipe stderr was sent to.
        use std::io::IsTerminal;
        builder
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .init();
        return Ok(LogTarget::Stderr);
    }
    std::fs::create_dir_all(log_dir)
        .with_context(|| format!("creating log dir {}", log_dir.display()))?;
    let path = log_dir.join("megafsd.log");
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening log file {}", path.display()))?;
    builder
        .with_ansi(false)
        .with_writer(Mutex::new(file))
        .init();
    Ok(LogTarget::File)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fuser_is_quieted_unless_the_filter_asks_for_it() {
        assert_eq!(
            filter_directives(None, "info"),
            "info,fuser::mnt=error,fuser::reply=off"
        );
        assert_eq!(
            filter_directives(Some("debug,megafsd=trace"), "info"),
            "debug,megafsd=trace,fuser::mnt=error,fuser::reply=off"
        );
        assert_eq!(
            filter_directives(Some(""), "warn"),
            "warn,fuser::mnt=error,fuser::reply=off"
        );
        assert_eq!(
            filter_directives(Some("info,fuser=debug"), "info"),
            "info,fuser=debug"
        );
    }
}
