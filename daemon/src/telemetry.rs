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

pub fn init(foreground: bool, log_dir: &Path, level: &str) -> anyhow::Result<LogTarget> {
    // fuser warns when its own unmount finds the mount already gone, which is how megafsd
    // always unmounts (it unmounts first to tell "busy" from other failures).
    let filter = EnvFilter::try_from_env("MEGAFS_LOG")
        .or_else(|_| EnvFilter::try_new(format!("{level},fuser::mnt=error")))
        .context("invalid log level")?;
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
        builder.with_writer(std::io::stderr).init();
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
