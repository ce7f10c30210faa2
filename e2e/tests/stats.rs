//! `mega-fuse stats`: every request of a real mount counted and timed, with where it was
//! answered from, and the mount's requests to its server.

mod common;

use std::time::Duration;

use common::World;
use megafs_testsupport::harness::within;
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(20);

fn stats(world: &World, target: &str) -> Value {
    let text = world.daemon.ctl_ok(&["stats", target, "--json"]);
    serde_json::from_str(&text).expect("stats --json is JSON")
}

fn count(op: &Value) -> u64 {
    op["count"].as_u64().unwrap_or(0)
}

/// The latencies of `what` are in order and not all zero.
fn assert_percentiles(what: &str, latency: &Value) {
    let at = |p: &str| {
        latency[p]
            .as_f64()
            .unwrap_or_else(|| panic!("{what} {p}: {latency}"))
    };
    let (p50, p90, p99, max) = (at("p50"), at("p90"), at("p99"), at("max"));
    assert!(p50 > 0.0, "{what}: {latency}");
    assert!(p50 <= p90 && p90 <= p99 && p99 <= max, "{what}: {latency}");
}

#[test]
fn a_real_mount_counts_and_times_every_operation() {
    let world = World::new();
    let point = world.mount_mega("counted");
    let walked = point.clone();
    within(LIMIT, move || {
        let mut dirs = vec![walked];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("list") {
                let entry = entry.expect("entry");
                let meta = entry.metadata().expect("stat");
                if meta.is_dir() {
                    dirs.push(entry.path());
                } else if meta.is_file() {
                    std::fs::read(entry.path()).expect("read");
                }
            }
        }
    });
    // The same file again, now from the cache.
    let readme = point.join("README.md");
    within(LIMIT, move || std::fs::read(readme).expect("read again"));

    let all = stats(&world, "counted");
    let mount = &all["mounts"][0];
    assert_eq!(mount["name"], "counted");
    let ops = &mount["ops"];
    for op in ["lookup", "read", "open", "release"] {
        assert!(count(&ops[op]) > 0, "{op} counted: {ops}");
        assert_percentiles(op, &ops[op]["latency_us"]);
    }
    let listings = count(&ops["readdir"]) + count(&ops["readdirplus"]);
    assert!(listings > 0, "listings counted: {ops}");
    // Reads of files fetched for them came from the server; every read is counted by where
    // it was answered from.
    let read = &ops["read"]["answered_from"];
    assert!(read["server"].as_u64() > Some(0), "{read}");
    let answered: u64 = ["memory", "cache", "server"]
        .iter()
        .map(|tier| read[tier].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(answered, count(&ops["read"]), "{read}");
    // Lookups of a listed directory are answered from memory.
    assert!(
        ops["lookup"]["answered_from"]["memory"].as_u64() > Some(0),
        "{ops}"
    );

    let server = &mount["server"];
    assert!(server["requests"].as_u64() > Some(0), "{server}");
    assert_percentiles("server", &server["latency_us"]);
    assert!(mount["fetched_objects"].as_u64() > Some(0), "{mount}");
    assert!(mount["cache_hits"].as_u64() > Some(0), "{mount}");
    assert_eq!(mount["fetches_in_flight"], 0, "{mount}");

    // Every mount when none is named, as a table too; an unknown one is an error.
    world.mount_mega("other");
    let both = world.daemon.ctl_ok(&["stats", "--json"]);
    let both: Value = serde_json::from_str(&both).expect("JSON");
    assert_eq!(both["mounts"].as_array().map(Vec::len), Some(2));
    let table = world.daemon.ctl_ok(&["stats", "counted"]);
    assert!(table.contains("OP") && table.contains("P99"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("lookup")), "{table}");
    let err = world.daemon.ctl_err(&["stats", "nonesuch"]);
    assert!(err.contains("no mount is named \"nonesuch\""), "{err}");
}
