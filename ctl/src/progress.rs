//! The prefetch progress bar: files done of found, bytes fetched, rate and time left.

use std::time::Duration;

use megafs_proto::v1::PrefetchProgress;

use crate::output::human_bytes;

const BAR_WIDTH: usize = 24;

/// One line of progress, `elapsed` after the start.
pub fn line(p: &PrefetchProgress, elapsed: Duration) -> String {
    let seconds = elapsed.as_secs_f64().max(0.001);
    let fraction = if p.files_total == 0 {
        0.0
    } else {
        (p.files_done + p.files_failed) as f64 / p.files_total as f64
    };
    // Until the walk is over the total still grows: the bar would only mislead.
    let bar = if p.walk_done {
        let filled = ((fraction * BAR_WIDTH as f64).round() as usize).min(BAR_WIDTH);
        format!(
            "[{}{}] ",
            "#".repeat(filled),
            ".".repeat(BAR_WIDTH - filled)
        )
    } else {
        String::new()
    };
    let total = if p.walk_done {
        p.files_total.to_string()
    } else {
        format!("{}+", p.files_total)
    };
    let mut out = format!(
        "{bar}{}/{total} files  {}  {}/s",
        p.files_done,
        human_bytes(p.bytes_done),
        human_bytes((p.bytes_done as f64 / seconds) as u64)
    );
    let finished = p.files_done + p.files_failed;
    if p.walk_done && finished > 0 && finished < p.files_total {
        let left = seconds * (p.files_total - finished) as f64 / finished as f64;
        out.push_str(&format!("  ETA {}", duration(left)));
    }
    if p.files_failed > 0 {
        out.push_str(&format!("  {} failed", p.files_failed));
    }
    out
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
        p.walk_done = true;
        let known = line(&p, Duration::from_secs(2));
        assert_eq!(
            known,
            "[######..................] 10/40 files  2.0 MiB  1.0 MiB/s  ETA 6.0s"
        );
        p.files_failed = 30;
        assert!(line(&p, Duration::from_secs(2)).ends_with("30 failed"));
        assert_eq!(
            summary(&p, Duration::from_secs(90)),
            "prefetched 10 of 40 files (2.0 MiB fetched) in 1m30s"
        );
    }
}
