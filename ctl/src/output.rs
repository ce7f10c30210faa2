//! How results are shown: tables for people, JSON for programs.

use megafs_proto::v1::{
    change, CacheReply, ChangesReply, DuReply, Latency, MountInfo, MountStats, StatsReply,
    StatusReply,
};
use serde_json::json;

pub use megafs_proto::units::human_bytes;

pub fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

pub fn status_table(mounts: &[MountInfo]) -> String {
    if mounts.is_empty() {
        return "no mounts\n".to_string();
    }
    let header = [
        "NAME",
        "MOUNTPOINT",
        "SOURCE",
        "COMMIT",
        "STATE",
        "WRITES",
        "READS",
        "FETCHED",
    ];
    let rows: Vec<[String; 8]> = mounts
        .iter()
        .map(|m| {
            [
                // Configured mounts are marked, as the daemon mounts them again by itself.
                if m.from_config {
                    format!("{}*", m.name)
                } else {
                    m.name.clone()
                },
                m.mountpoint.clone(),
                m.source.clone(),
                short(&m.commit).to_string(),
                m.state.clone(),
                if m.writable {
                    format!(
                        "{} paths, {}",
                        m.changed_paths,
                        human_bytes(m.workspace_bytes)
                    )
                } else {
                    "read-only".to_string()
                },
                m.read_path.clone(),
                format!(
                    "{} objects, {}",
                    m.fetched_objects,
                    human_bytes(m.fetched_bytes)
                ),
            ]
        })
        .collect();
    let mut out = table(&header, &rows);
    if mounts.iter().any(|m| m.from_config) {
        out.push_str("* from the configuration file\n");
    }
    // Reasons can be long (a server's whole error): each on its own line, below the table.
    for m in mounts.iter().filter(|m| !m.error.is_empty()) {
        out.push_str(&format!("{} {}: {}\n", m.name, m.state, m.error));
    }
    out
}

/// The mount `target` names: its name, else its mountpoint, else its repository (the
/// source as `status` shows it, or its last part) where only one mount has it.
pub fn find_mount<'a>(mounts: &'a [MountInfo], target: &str) -> anyhow::Result<&'a MountInfo> {
    let trimmed = target.trim_end_matches('/');
    if let Some(m) = mounts
        .iter()
        .find(|m| m.name == target || m.mountpoint == trimmed)
    {
        return Ok(m);
    }
    let by_repo: Vec<&MountInfo> = mounts
        .iter()
        .filter(|m| m.source == target || m.source.ends_with(&format!(" {target}")))
        .collect();
    match by_repo.as_slice() {
        [one] => Ok(one),
        [] => Err(anyhow::anyhow!(
            "no mount is named {target:?} (mounts: {})",
            names(mounts)
        )),
        several => Err(anyhow::anyhow!(
            "{target} is shown by several mounts ({}): name one",
            names(several.iter().copied())
        )),
    }
}

fn names<'a>(mounts: impl IntoIterator<Item = &'a MountInfo>) -> String {
    let names: Vec<&str> = mounts.into_iter().map(|m| m.name.as_str()).collect();
    if names.is_empty() {
        "none".to_string()
    } else {
        names.join(", ")
    }
}

/// One mount, a field a line.
pub fn mount_detail(m: &MountInfo) -> String {
    let mut lines: Vec<(&str, String)> = vec![
        ("name", m.name.clone()),
        (
            "from",
            if m.from_config {
                "the configuration file".to_string()
            } else {
                format!("mega-fuse connect, by uid {}", m.owner_uid)
            },
        ),
        ("state", m.state.clone()),
        ("mountpoint", m.mountpoint.clone()),
        ("source", m.source.clone()),
        (
            "ref",
            if m.git_ref.is_empty() {
                "(default)".to_string()
            } else {
                m.git_ref.clone()
            },
        ),
        (
            "commit",
            match m.commit_time {
                0 => m.commit.clone(),
                t => format!("{} ({})", m.commit, utc(t)),
            },
        ),
        (
            "refreshed",
            match m.refreshed_at {
                0 => "never".to_string(),
                t => utc(t),
            },
        ),
        (
            "reads",
            if m.read_path.is_empty() {
                "-".to_string()
            } else {
                m.read_path.clone()
            },
        ),
        (
            "writes",
            if m.writable {
                format!(
                    "a workspace: {} paths changed, {}",
                    m.changed_paths,
                    human_bytes(m.workspace_bytes)
                )
            } else {
                "read-only".to_string()
            },
        ),
        (
            "fetched",
            format!(
                "{} objects, {}; {} reads from the cache",
                m.fetched_objects,
                human_bytes(m.fetched_bytes),
                m.cache_hits
            ),
        ),
    ];
    if !m.error.is_empty() {
        lines.push(("reason", m.error.clone()));
    }
    lines
        .iter()
        .map(|(key, value)| format!("{:<12}{value}\n", format!("{key}:")))
        .collect()
}

/// Unix seconds as `2026-12-02 23:34:51 UTC` (the proleptic Gregorian calendar, as git's
/// `--date=iso` shows it in UTC).
pub fn utc(seconds: i64) -> String {
    let days = seconds.div_euclid(86_400);
    let rest = seconds.rem_euclid(86_400);
    // Days since 1970-01-01 to a civil date, by 400-year eras (each 146097 days).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Rows under a header, each column as wide as its widest cell, two spaces apart.
fn table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(padded.join("  ").trim_end());
        out.push('\n');
    };
    line(&header.map(String::from));
    for row in rows {
        line(row);
    }
    out
}

/// A latency for people: "850 ns", "12 µs", "3.4 ms", "1.20 s".
pub fn human_duration(nanos: u64) -> String {
    match nanos {
        0..1_000 => format!("{nanos} ns"),
        1_000..1_000_000 => format!("{} µs", nanos / 1_000),
        1_000_000..1_000_000_000 => format!("{:.1} ms", nanos as f64 / 1e6),
        _ => format!("{:.2} s", nanos as f64 / 1e9),
    }
}

/// The share of objects found in the cache rather than fetched.
fn mount_hit_rate(m: &MountStats) -> Option<f64> {
    let total = m.cache_hits + m.fetched_objects;
    (total > 0).then(|| m.cache_hits as f64 / total as f64)
}

pub fn stats_text(reply: &StatsReply) -> String {
    if reply.mounts.is_empty() {
        return "no mounts\n".to_string();
    }
    let mut out = String::new();
    for m in &reply.mounts {
        let rate = mount_hit_rate(m).map_or("no objects yet".to_string(), |r| {
            format!("cache hit rate {:.1}%", r * 100.0)
        });
        out.push_str(&format!(
            "{}: {} objects ({}) fetched, {} found in the cache, {rate}; {} fetches in flight\n",
            m.name,
            m.fetched_objects,
            human_bytes(m.fetched_bytes),
            m.cache_hits,
            m.fetches_in_flight
        ));
        let header = [
            "OP", "COUNT", "FAILED", "MEMORY", "CACHE", "SERVER", "P50", "P90", "P99", "MAX",
        ];
        let lat = |l: &Option<Latency>| {
            let l = l.unwrap_or_default();
            [l.p50_ns, l.p90_ns, l.p99_ns, l.max_ns].map(human_duration)
        };
        let mut rows: Vec<[String; 10]> = m
            .ops
            .iter()
            .map(|o| {
                let [p50, p90, p99, max] = lat(&o.latency);
                [
                    o.op.clone(),
                    o.count.to_string(),
                    o.failed.to_string(),
                    o.from_memory.to_string(),
                    o.from_cache.to_string(),
                    o.from_server.to_string(),
                    p50,
                    p90,
                    p99,
                    max,
                ]
            })
            .collect();
        let [p50, p90, p99, max] = lat(&m.server_latency);
        rows.push([
            "(server)".into(),
            m.server_requests.to_string(),
            m.server_failed.to_string(),
            String::new(),
            String::new(),
            String::new(),
            p50,
            p90,
            p99,
            max,
        ]);
        out.push_str(&table(&header, &rows));
    }
    out
}

pub fn stats_json(reply: &StatsReply) -> String {
    let latency = |l: &Option<Latency>| {
        let l = l.unwrap_or_default();
        let us = |ns: u64| ns as f64 / 1000.0;
        json!({
            "p50": us(l.p50_ns),
            "p90": us(l.p90_ns),
            "p99": us(l.p99_ns),
            "max": us(l.max_ns),
        })
    };
    let mounts: Vec<_> = reply
        .mounts
        .iter()
        .map(|m| {
            let ops: serde_json::Map<String, serde_json::Value> = m
                .ops
                .iter()
                .map(|o| {
                    let value = json!({
                        "count": o.count,
                        "failed": o.failed,
                        "answered_from": {
                            "memory": o.from_memory,
                            "cache": o.from_cache,
                            "server": o.from_server,
                        },
                        "latency_us": latency(&o.latency),
                    });
                    (o.op.clone(), value)
                })
                .collect();
            json!({
                "name": m.name,
                "since": m.since,
                "ops": ops,
                "server": {
                    "requests": m.server_requests,
                    "failed": m.server_failed,
                    "latency_us": latency(&m.server_latency),
                },
                "fetched_objects": m.fetched_objects,
                "fetched_bytes": m.fetched_bytes,
                "cache_hits": m.cache_hits,
                "cache_hit_rate": mount_hit_rate(m),
                "fetches_in_flight": m.fetches_in_flight,
            })
        })
        .collect();
    json!({ "mounts": mounts }).to_string()
}

/// A change's letter, as `git status --porcelain` has it.
fn change_letter(kind: i32) -> &'static str {
    match change::Kind::try_from(kind) {
        Ok(change::Kind::Added) => "A",
        Ok(change::Kind::Modified) => "M",
        Ok(change::Kind::Deleted) => "D",
        Ok(change::Kind::TypeChanged) => "T",
        Err(_) => "?",
    }
}

fn change_name(kind: i32) -> &'static str {
    match change::Kind::try_from(kind) {
        Ok(change::Kind::Added) => "added",
        Ok(change::Kind::Modified) => "modified",
        Ok(change::Kind::Deleted) => "deleted",
        Ok(change::Kind::TypeChanged) => "type-changed",
        Err(_) => "unknown",
    }
}

/// One line a change: `M src/lib.rs`.
pub fn changes_text(reply: &ChangesReply) -> String {
    reply
        .changes
        .iter()
        .map(|c| {
            let letter = if c.conflict {
                "U"
            } else {
                change_letter(c.kind)
            };
            format!("{letter} {}\n", String::from_utf8_lossy(&c.path))
        })
        .collect()
}

pub fn changes_json(reply: &ChangesReply) -> String {
    let changes: Vec<_> = reply
        .changes
        .iter()
        .map(|c| {
            json!({
                "path": String::from_utf8_lossy(&c.path),
                "change": change_name(c.kind),
                "conflict": c.conflict,
            })
        })
        .collect();
    json!({ "commit": reply.commit, "changes": changes }).to_string()
}

pub fn status_json(reply: &StatusReply) -> String {
    let mounts: Vec<_> = reply.mounts.iter().map(mount_value).collect();
    json!({
        "daemon": {
            "version": reply.daemon_version,
            "pid": reply.daemon_pid,
            "config_file": reply.config_file,
        },
        "mounts": mounts,
    })
    .to_string()
}

/// `mega-fuse du`: the cache by mount, then what is shared, unreached, recorded, and what
/// `cache gc` would free.
pub fn du_text(reply: &DuReply) -> String {
    let limit = match reply.limit {
        0 => "no limit".to_string(),
        l => format!("limit {}", human_bytes(l)),
    };
    let mut out = format!(
        "cache {}: {} in {} objects, {limit}\n",
        reply.dir,
        human_bytes(reply.bytes),
        reply.objects
    );
    let header = ["MOUNT", "OBJECTS", "BYTES", "SHARED", "RECORD", "WORKSPACE"];
    let rows: Vec<[String; 6]> = reply
        .mounts
        .iter()
        .map(|m| {
            [
                m.name.clone(),
                m.objects.to_string(),
                human_bytes(m.bytes),
                format!("{} ({})", m.shared_objects, human_bytes(m.shared_bytes)),
                human_bytes(m.record_bytes),
                if m.writable {
                    format!(
                        "{} paths, {}",
                        m.workspace_paths,
                        human_bytes(m.workspace_bytes)
                    )
                } else {
                    "read-only".to_string()
                },
            ]
        })
        .collect();
    if !rows.is_empty() {
        out.push_str(&table(&header, &rows));
    }
    out.push_str(&format!(
        "shared by several mounts, counted once: {} objects, {}\n",
        reply.shared_objects,
        human_bytes(reply.shared_bytes)
    ));
    out.push_str(&format!(
        "in no mount shown (older commits, mounts gone): {}\n",
        human_bytes(reply.unreached_bytes)
    ));
    out.push_str(&format!(
        "listing records: {}\n",
        human_bytes(reply.record_bytes)
    ));
    out.push_str(&match reply.gc_frees {
        0 => "cache gc would free nothing (the cache is within its limit)\n".to_string(),
        n => format!("cache gc would free {}\n", human_bytes(n)),
    });
    out
}

pub fn du_json(reply: &DuReply) -> String {
    let mounts: Vec<_> = reply
        .mounts
        .iter()
        .map(|m| {
            json!({
                "name": m.name,
                "objects": m.objects,
                "bytes": m.bytes,
                "shared_objects": m.shared_objects,
                "shared_bytes": m.shared_bytes,
                "record_bytes": m.record_bytes,
                "writable": m.writable,
                "workspace_paths": m.workspace_paths,
                "workspace_bytes": m.workspace_bytes,
            })
        })
        .collect();
    json!({
        "dir": reply.dir,
        "bytes": reply.bytes,
        "objects": reply.objects,
        "limit": reply.limit,
        "mounts": mounts,
        "shared_objects": reply.shared_objects,
        "shared_bytes": reply.shared_bytes,
        "unreached_bytes": reply.unreached_bytes,
        "record_bytes": reply.record_bytes,
        "gc_frees": reply.gc_frees,
    })
    .to_string()
}

/// One mount as `status NAME --json` prints it: the object `status --json` lists.
pub fn mount_json(m: &MountInfo) -> String {
    mount_value(m).to_string()
}

fn mount_value(m: &MountInfo) -> serde_json::Value {
    json!({
        "name": m.name,
        "mountpoint": m.mountpoint,
        "source": m.source,
        "commit": m.commit,
        "ref": m.git_ref,
        "commit_time": m.commit_time,
        "state": m.state,
        "fetched_objects": m.fetched_objects,
        "fetched_bytes": m.fetched_bytes,
        "cache_hits": m.cache_hits,
        "owner_uid": m.owner_uid,
        "from_config": m.from_config,
        "refreshed_at": m.refreshed_at,
        "read_path": m.read_path,
        "writable": m.writable,
        "changed_paths": m.changed_paths,
        "workspace_bytes": m.workspace_bytes,
        "error": m.error,
    })
}

fn hit_rate(reply: &CacheReply) -> Option<f64> {
    let reads = reply.hits + reply.misses;
    (reads > 0).then(|| reply.hits as f64 / reads as f64)
}

pub fn cache_text(reply: &CacheReply) -> String {
    let limit = if reply.limit == 0 {
        "no limit".to_string()
    } else {
        format!("limit {}", human_bytes(reply.limit))
    };
    let rate = hit_rate(reply).map_or("no reads yet".to_string(), |r| {
        format!(
            "hit rate {:.1}% ({} hits, {} misses)",
            r * 100.0,
            reply.hits,
            reply.misses
        )
    });
    let mut out = format!(
        "cache {}: {} in {} objects, {limit}\n{rate}; {} evicted\n",
        reply.dir,
        human_bytes(reply.bytes),
        reply.objects,
        reply.evicted
    );
    if reply.freed > 0 {
        out.push_str(&format!("freed {}\n", human_bytes(reply.freed)));
    }
    out
}

pub fn cache_json(reply: &CacheReply) -> String {
    json!({
        "dir": reply.dir,
        "bytes": reply.bytes,
        "limit": reply.limit,
        "objects": reply.objects,
        "hits": reply.hits,
        "misses": reply.misses,
        "hit_rate": hit_rate(reply),
        "evicted": reply.evicted,
        "freed": reply.freed,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(name: &str, state: &str, error: &str) -> MountInfo {
        MountInfo {
            name: name.into(),
            mountpoint: format!("/srv/{name}"),
            source: format!("mega http://mega.example:8000 /third-party/{name}"),
            commit: "4b825dc642cb6eb9a060e54bf8d69288fbee4904".into(),
            commit_time: 1_764_718_491,
            state: state.into(),
            error: error.into(),
            from_config: true,
            ..Default::default()
        }
    }

    #[test]
    fn a_failing_mounts_reason_goes_below_the_table_which_stays_narrow() {
        let reason = "server http://mega.example:8000 is unreachable: ".to_string()
            + &"a very long reason ".repeat(10);
        let text = status_table(&[mount("rg", "retrying", &reason), mount("ok", "mounted", "")]);
        let lines: Vec<&str> = text.lines().collect();
        let header = lines[0];
        assert!(
            lines[..3].iter().all(|l| l.len() <= header.len() + 20),
            "{text}"
        );
        assert!(!lines[1].contains("unreachable"), "{text}");
        assert_eq!(
            lines.last(),
            Some(&format!("rg retrying: {reason}").as_str())
        );
    }

    #[test]
    fn one_mount_is_found_by_name_mountpoint_or_repository_and_shown_whole() {
        let mounts = [
            mount("rg", "retrying", "server down"),
            mount("fd", "mounted", ""),
        ];
        assert_eq!(find_mount(&mounts, "fd").unwrap().name, "fd");
        assert_eq!(find_mount(&mounts, "/srv/rg/").unwrap().name, "rg");
        assert_eq!(find_mount(&mounts, "/third-party/fd").unwrap().name, "fd");
        let err = find_mount(&mounts, "nope").unwrap_err().to_string();
        assert!(
            err.contains("no mount is named \"nope\" (mounts: rg, fd)"),
            "{err}"
        );
        let text = mount_detail(&mounts[0]);
        for line in [
            "name:       rg",
            "from:       the configuration file",
            "state:      retrying",
            "commit:     4b825dc642cb6eb9a060e54bf8d69288fbee4904 (2025-12-02 23:34:51 UTC)",
            "refreshed:  never",
            "reason:     server down",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} in:\n{text}");
        }
        let json: serde_json::Value = serde_json::from_str(&mount_json(&mounts[0])).unwrap();
        assert_eq!(json["error"], "server down");
    }

    #[test]
    fn times_read_as_utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_764_718_491), "2025-12-02 23:34:51 UTC");
        assert_eq!(utc(-1), "1969-12-31 23:59:59 UTC");
    }

    #[test]
    fn sizes_read_like_people_write_them() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024), "5.0 MiB");
    }

    #[test]
    fn cache_usage_reads_well() {
        let reply = CacheReply {
            dir: "/var/cache/megafs".into(),
            bytes: 3 << 20,
            limit: 10 << 30,
            objects: 4,
            hits: 3,
            misses: 1,
            ..Default::default()
        };
        let text = cache_text(&reply);
        assert!(
            text.starts_with("cache /var/cache/megafs: 3.0 MiB in 4 objects, limit 10.0 GiB"),
            "{text}"
        );
        assert!(text.contains("hit rate 75.0% (3 hits, 1 misses)"), "{text}");
        assert!(cache_json(&reply).contains("\"hit_rate\":0.75"));
    }

    #[test]
    fn stats_read_like_a_table_and_as_json() {
        assert_eq!(human_duration(850), "850 ns");
        assert_eq!(human_duration(12_345), "12 µs");
        assert_eq!(human_duration(3_400_000), "3.4 ms");
        assert_eq!(human_duration(1_200_000_000), "1.20 s");
        let lat = Some(Latency {
            p50_ns: 2_000,
            p90_ns: 9_000,
            p99_ns: 40_000,
            max_ns: 2_000_000,
        });
        let reply = StatsReply {
            mounts: vec![MountStats {
                name: "rg".into(),
                ops: vec![megafs_proto::v1::OpStats {
                    op: "lookup".into(),
                    count: 10,
                    from_memory: 7,
                    from_cache: 2,
                    from_server: 1,
                    latency: lat,
                    ..Default::default()
                }],
                server_requests: 1,
                server_latency: lat,
                fetched_objects: 1,
                cache_hits: 3,
                ..Default::default()
            }],
        };
        let text = stats_text(&reply);
        assert!(
            text.starts_with(
                "rg: 1 objects (0 B) fetched, 3 found in the cache, cache hit rate 75.0%"
            ),
            "{text}"
        );
        let lookup = text
            .lines()
            .find(|l| l.starts_with("lookup"))
            .expect("a lookup row");
        assert!(
            lookup.contains("10") && lookup.contains("2 µs") && lookup.ends_with("2.0 ms"),
            "{lookup}"
        );
        let json: serde_json::Value = serde_json::from_str(&stats_json(&reply)).expect("JSON");
        assert_eq!(
            json["mounts"][0]["ops"]["lookup"]["answered_from"]["cache"],
            2
        );
        assert_eq!(
            json["mounts"][0]["ops"]["lookup"]["latency_us"]["p99"],
            40.0
        );
        assert_eq!(json["mounts"][0]["cache_hit_rate"], 0.75);
    }

    #[test]
    fn table_aligns_columns() {
        let m = MountInfo {
            name: "rg".into(),
            mountpoint: "/mnt/rg".into(),
            source: "local /src/rg".into(),
            commit: "0123456789abcdef0123456789abcdef01234567".into(),
            state: "mounted".into(),
            fetched_objects: 3,
            fetched_bytes: 2048,
            ..Default::default()
        };
        let table = status_table(&[m]);
        let lines: Vec<_> = table.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("NAME  MOUNTPOINT"));
        assert!(lines[1].contains("0123456789ab"));
        assert!(lines[1].ends_with("3 objects, 2.0 KiB"));
        assert_eq!(status_table(&[]), "no mounts\n");
    }
}
