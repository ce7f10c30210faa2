//! When written objects reach the disk, and what a crash of the machine may have torn.
//!
//! An fsync per object costs a whole-tree fetch seconds (thousands of journal commits), so
//! objects are written and named into place without one, and the cache's filesystem is
//! flushed instead with one `syncfs` every few seconds and at shutdown. A stamp then records
//! when that flush began and on which boot. A crash of the daemon loses nothing (the kernel
//! holds what it wrote); only a crash of the machine can leave an object named in place
//! whose bytes never reached the disk. So at open, if the machine booted since the stamp, the
//! objects changed since its flush began are checked against their ids.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long the kernel may hold written objects before they are flushed.
const FLUSH_EVERY: Duration = Duration::from_secs(5);

/// Slack for the clock: files changed this long before the stamp's time are checked too.
const CLOCK_SLACK: Duration = Duration::from_secs(60);

/// A flush that completed: when it began, on which boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub boot: String,
    pub began: SystemTime,
}

impl Stamp {
    fn parse(text: &str) -> Option<Stamp> {
        let mut parts = text.split_whitespace();
        let boot = parts.next()?.to_string();
        let secs: u64 = parts.next()?.parse().ok()?;
        Some(Stamp {
            boot,
            began: UNIX_EPOCH + Duration::from_secs(secs),
        })
    }

    fn text(&self) -> String {
        let secs = self
            .began
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        format!("{} {secs}\n", self.boot)
    }
}

/// This boot's id, as the kernel gives it; None where it cannot be read.
pub fn boot_id() -> Option<String> {
    let text = fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let id = text.trim();
    (!id.is_empty()).then(|| id.to_string())
}

/// Files changed at or after the returned time may be torn; None: nothing may be. No stamp
/// means a cache no flush of ours has run on yet, written by a version that flushed every
/// object on its own.
pub fn suspect_since(stamp: Option<&Stamp>, boot: Option<&str>) -> Option<SystemTime> {
    let stamp = stamp?;
    if boot == Some(stamp.boot.as_str()) {
        return None;
    }
    Some(stamp.began.checked_sub(CLOCK_SLACK).unwrap_or(UNIX_EPOCH))
}

/// Whether anything was written since the last flush, and the flushing itself.
pub struct Flusher {
    /// The directory whose filesystem is flushed (the cache's).
    dir: PathBuf,
    stamp_path: PathBuf,
    boot: Option<String>,
    dirty: AtomicBool,
    last: Mutex<Instant>,
}

impl Flusher {
    /// The flusher of the cache at `dir`, and the stamp left by the last flush, if any.
    pub fn open(dir: &Path, boot: Option<String>) -> (Flusher, Option<Stamp>) {
        let stamp_path = dir.join("flushed");
        let stamp = fs::read_to_string(&stamp_path)
            .ok()
            .and_then(|t| Stamp::parse(&t));
        let flusher = Flusher {
            dir: dir.to_path_buf(),
            stamp_path,
            boot,
            dirty: AtomicBool::new(false),
            last: Mutex::new(Instant::now()),
        };
        (flusher, stamp)
    }

    /// Something was written that a flush must reach the disk.
    pub fn written(&self) {
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Flushes if something was written and the last flush is `FLUSH_EVERY` old, unless a
    /// flush is under way.
    pub fn flush_if_due(&self) -> io::Result<()> {
        let Ok(mut last) = self.last.try_lock() else {
            return Ok(());
        };
        if last.elapsed() < FLUSH_EVERY || !self.dirty.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.flush_holding(&mut last)
    }

    /// Writes everything written so far to the disk, then the stamp saying so. Also run at
    /// open, so that a cache in use always has a stamp.
    pub fn flush(&self) -> io::Result<()> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        self.flush_holding(&mut last)
    }

    fn flush_holding(&self, last: &mut Instant) -> io::Result<()> {
        let began = SystemTime::now();
        self.dirty.store(false, Ordering::Relaxed);
        *last = Instant::now();
        let result = crate::sys::sync_filesystem(&self.dir).and_then(|()| {
            let stamp = Stamp {
                boot: self.boot.clone().unwrap_or_else(|| "unknown".into()),
                began,
            };
            write_durably(&self.stamp_path, stamp.text().as_bytes())
        });
        if result.is_err() {
            // Not flushed after all: try again on the next round.
            self.dirty.store(true, Ordering::Relaxed);
        }
        result
    }
}

/// Replaces `path` with `bytes`, on the disk before this returns.
fn write_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_data()?;
    fs::rename(&tmp, path)?;
    if let Some(parent) = path.parent() {
        fs::File::open(parent)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(boot: &str, secs: u64) -> Stamp {
        Stamp {
            boot: boot.into(),
            began: UNIX_EPOCH + Duration::from_secs(secs),
        }
    }

    #[test]
    fn only_a_new_boot_makes_recent_files_suspect() {
        let s = stamp("b1", 1_000_000);
        assert_eq!(suspect_since(None, Some("b2")), None);
        assert_eq!(suspect_since(Some(&s), Some("b1")), None);
        let since = UNIX_EPOCH + Duration::from_secs(1_000_000) - CLOCK_SLACK;
        assert_eq!(suspect_since(Some(&s), Some("b2")), Some(since));
        // A boot that cannot be told: assume the worst.
        assert_eq!(suspect_since(Some(&s), None), Some(since));
    }

    #[test]
    fn stamps_round_trip_and_garbage_is_no_stamp() {
        let s = stamp("0c1f-id", 1_700_000_000);
        assert_eq!(Stamp::parse(&s.text()), Some(s));
        assert_eq!(Stamp::parse(""), None);
        assert_eq!(Stamp::parse("boot notanumber"), None);
    }

    #[test]
    fn a_flush_leaves_a_stamp_of_this_boot() {
        let dir = tempfile::tempdir().unwrap();
        let (flusher, before) = Flusher::open(dir.path(), Some("this-boot".into()));
        assert_eq!(before, None);
        flusher.written();
        flusher.flush().unwrap();
        let (_, after) = Flusher::open(dir.path(), None);
        let after = after.expect("a stamp");
        assert_eq!(after.boot, "this-boot");
        assert!(after.began <= SystemTime::now());
    }
}
