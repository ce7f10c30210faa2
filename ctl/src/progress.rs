//! The prefetch progress bar: files done of found, bytes fetched, rate and time left.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use megafs_proto::v1::PrefetchProgress;

use crate::output::human_bytes;

/// How often a prefetch whose stderr is not a terminal says how far it is.
const LINE_EVERY: Duration = Duration::from_secs(5);

/// The bar: files done of found (growing, marked `+`, while the walk goes on), bytes, rate,
/// and indicatif's estimate of the time left.
const BAR: &str = "[{bar:24}] {pos}/{len}{msg}  ETA {eta}";
/// Before any file is found there is nothing to measure against.
const SPINNER: &str = "{spinner} {msg}";

/// How progress is shown: drawn on a terminal, else a plain line now and then (a log file or
/// a CI job gets lines it can keep, not escape codes).
pub enum Progress {
    Bar { bar: ProgressBar, counting: bool },
    Lines { last: Option<Instant> },
}

impl Progress {
    pub fn new() -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress::Lines { last: None };
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(style(SPINNER));
        bar.set_message("looking for files");
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress::Bar {
            bar,
            counting: false,
        }
    }

    pub fn update(&mut self, p: &PrefetchProgress, elapsed: Duration) {
        match self {
            Progress::Bar { bar, counting } => {
                if p.files_total == 0 {
                    return;
                }
                if !*counting {
                    bar.set_style(style(BAR));
                    *counting = true;
                }
                bar.set_length(p.files_total);
                bar.set_position(p.files_done + p.files_failed);
                bar.set_message(details(p, elapsed));
            }
            Progress::Lines { last } => {
                if worth_a_line(p, *last) {
                    eprintln!("prefetch: {}", line(p, elapsed));
                    *last = Some(Instant::now());
                }
            }
        }
    }

    /// Takes the bar off the terminal, before the closing line.
    pub fn finish(&self) {
        if let Progress::Bar { bar, .. } = self {
            bar.finish_and_clear();
        }
    }
}

/// Whether a plain line is due: every [`LINE_EVERY`], and only once a file is found (before
/// that, `0/0+ files` tells a log nothing).
fn worth_a_line(p: &PrefetchProgress, last: Option<Instant>) -> bool {
    p.files_total > 0 && last.is_none_or(|at| at.elapsed() >= LINE_EVERY)
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .map(|s| s.progress_chars("#>."))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// What follows `done/found` on the bar: ` files` (`+ files` while more may be found), bytes,
/// rate, failures.
fn details(p: &PrefetchProgress, elapsed: Duration) -> String {
    let seconds = elapsed.as_secs_f64().max(0.001);
    let mut out = format!(
        "{} files  {}  {}/s",
        if p.walk_done { "" } else { "+" },
        human_bytes(p.bytes_done),
        human_bytes((p.bytes_done as f64 / seconds) as u64)
    );
    if p.files_failed > 0 {
        out.push_str(&format!("  {} failed", p.files_failed));
    }
    out
}

/// A plain progress line, `elapsed` after the start.
pub fn line(p: &PrefetchProgress, elapsed: Duration) -> String {
    let mut out = format!("{}/{}{}", p.files_done, p.files_total, details(p, elapsed));
    let finished = p.files_done + p.files_failed;
    if p.walk_done && finished > 0 && finished < p.files_total {
        let seconds = elapsed.as_secs_f64();
        let left = seconds * (p.files_total - finished) as f64 / finished as f64;
        out.push_str(&format!("  ETA {}", duration(left)));
    }
    out
}

/// The closing line of a prefetch stopped by Ctrl-C, after `last` (None: nothing came yet).
pub fn stopped(last: Option<&PrefetchProgress>, elapsed: Duration) -> String {
    let p = last.cloned().unwrap_or_default();
    format!(
        "stopped: {} of {}{} files fetched ({}) in {}; what was fetched stays cached",
        p.files_done,
        p.files_total,
        if p.walk_done { "" } else { "+" },
        human_bytes(p.bytes_done),
        duration(elapsed.as_secs_f64())
    )
}

/// The closing line.
pub fn summary(p: &PrefetchProgress, elapsed: Duration) -> String {
    format!(
        "prefetched {} of {} files ({} fetched) in {}",
        p.files_done,
        p.files_total,
        human_bytes(p.bytes_done),
        duration(elapsed.as_secs_f64())
    )
}

fn duration(seconds: f64) -> String {
    if seconds < 60.0 {
        format!("{seconds:.1}s")
    } else {
        let whole = seconds.round() as u64;
        format!("{}m{:02}s", whole / 60, whole % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_read_well() {
        let mut p = PrefetchProgress {
            files_total: 40,
            files_done: 10,
            bytes_done: 2 << 20,
            ..Default::default()
        };
        let walking = line(&p, Duration::from_secs(2));
        assert_eq!(walking, "10/40+ files  2.0 MiB  1.0 MiB/s");
        assert_eq!(
            stopped(Some(&p), Duration::from_secs(2)),
            "stopped: 10 of 40+ files fetched (2.0 MiB) in 2.0s; what was fetched stays cached"
        );
        p.walk_done = true;
        let known = line(&p, Duration::from_secs(2));
        assert_eq!(known, "10/40 files  2.0 MiB  1.0 MiB/s  ETA 6.0s");
        p.files_failed = 30;
        assert!(line(&p, Duration::from_secs(2)).contains("30 failed"));
        assert_eq!(
            summary(&p, Duration::from_secs(90)),
            "prefetched 10 of 40 files (2.0 MiB fetched) in 1m30s"
        );
        assert!(stopped(None, Duration::ZERO).starts_with("stopped: 0 of 0+ files"));
    }

    #[test]
    fn lines_wait_for_a_file_then_come_now_and_then() {
        let nothing = PrefetchProgress::default();
        assert!(!worth_a_line(&nothing, None), "no `0/0+ files` line");
        let found = PrefetchProgress {
            files_total: 3,
            ..Default::default()
        };
        assert!(
            worth_a_line(&found, None),
            "the first line once a file is found"
        );
        assert!(
            !worth_a_line(&found, Some(Instant::now())),
            "not again at once"
        );
    }

    #[test]
    fn the_bar_templates_are_valid() {
        for template in [BAR, SPINNER] {
            assert!(ProgressStyle::with_template(template).is_ok(), "{template}");
        }
    }
}
