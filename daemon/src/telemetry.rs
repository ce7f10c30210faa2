//! Logging: to stderr in the foreground, else to `megafsd.log` in the log dir.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Mutex;

use anyhow::Context;
use tracing_subscriber::EnvFilter;

pub fn init(foreground: bool, log_dir: &Path, level: &str) -> anyhow::Result<()> {
    // fuser warns when its own unmount finds the mount already gone, which is how megafsd
    // always unmounts (it unmounts first to tell "busy" from other failures).
    let filter = EnvFilter::try_from_env("MEGAFS_LOG")
        .or_else(|_| EnvFilter::try_new(format!("{level},fuser::mnt=error")))
        .context("invalid log level")?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if foreground {
        builder.with_writer(std::io::stderr).init();
    } else {
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
    }
    Ok(())
}
