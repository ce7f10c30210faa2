//! How results are shown: tables for people, JSON for programs.

use megafs_proto::v1::{CacheReply, MountInfo, StatusReply};
use serde_json::json;

pub fn short(commit: &str) -> &str {
    &commit[..commit.len().min(12)]
}

/// 1536 -> "1.5 KiB".
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
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
        "READS",
        "FETCHED",
    ];
    let rows: Vec<[String; 7]> = mounts
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
                if m.error.is_empty() {
                    m.state.clone()
                } else {
                    format!("{} ({})", m.state, m.error)
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
    let mut widths = header.map(str::len);
    for row in &rows {
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
    for row in &rows {
        line(row);
    }
    if mounts.iter().any(|m| m.from_config) {
        out.push_str("* from the configuration file\n");
    }
    out
}

pub fn status_json(reply: &StatusReply) -> String {
    let mounts: Vec<_> = reply
        .mounts
        .iter()
        .map(|m| {
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
                "error": m.error,
            })
        })
        .collect();
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
