//! A team's shared cache: a real nginx running the README's configuration in front of the dev
//! Mega server. One daemon reads a repository through it; a second, with a cache of its own
//! that is empty, then reads the whole repository without one object request reaching the
//! server, while the trunk's listing by path (which moves) still goes to the server.

mod common;

use common::World;
use megafs_testsupport::compare::differences;
use megafs_testsupport::harness::{within, Daemon, Options};
use megafs_testsupport::shared_cache::SharedCache;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

/// A daemon whose `[daemon] proxy` is `proxy`.
fn daemon_through(proxy: &str) -> Daemon {
    Daemon::start_with(Options {
        config: Some(format!("[daemon]\nproxy = \"{proxy}\"\n")),
        ..Default::default()
    })
}

/// Mounts the fixture on `daemon` and compares every file, mode and link with `git archive`.
fn read_everything(world: &World, daemon: &Daemon, name: &str) {
    let point = daemon.mountpoint(name);
    world.connect_mega(daemon, name, &point, &[]);
    let archive = world.archive("HEAD");
    let want = archive.path().to_path_buf();
    let diffs = within(LIMIT, move || differences(&want, &point)).expect("walk");
    assert!(diffs.is_empty(), "{diffs:?}");
}

#[test]
fn a_second_daemon_reads_everything_from_the_shared_cache() {
    let world = World::new();
    let server = world.server.url();
    let cache = SharedCache::start(server.trim_start_matches("http://")).expect("nginx");

    let first = daemon_through(&cache.url());
    read_everything(&world, &first, "first");
    let reached = world.server.requests();
    assert!(
        reached.iter().any(|r| r.is_blob_get()),
        "the first daemon's fetches reached the server through the proxy: {reached:?}"
    );
    assert!(cache.entries() > 0, "nginx kept nothing");

    world.server.clear_requests();
    let second = daemon_through(&cache.url());
    read_everything(&world, &second, "second");
    let reached = world.server.requests();
    let objects: Vec<_> = reached
        .iter()
        .filter(|r| r.is_blob_get() || r.is_blob_head() || r.is_tree() && r.query.contains("oid="))
        .collect();
    assert!(
        objects.is_empty(),
        "object requests reached the server past the cache: {objects:?}\nnginx saw:\n{}",
        cache.access_log()
    );
    // What moves is never kept: the second mount asked the server for the trunk itself.
    assert!(
        reached
            .iter()
            .any(|r| r.is_tree() && !r.query.contains("oid=")),
        "the trunk's listing by path came from the cache: {reached:?}"
    );
    let log = cache.access_log();
    assert!(log.contains(" HIT"), "{log}");
}

#[test]
fn the_environment_s_proxy_variables_are_honoured() {
    let world = World::new();
    let server = world.server.url();
    let cache = SharedCache::start(server.trim_start_matches("http://")).expect("nginx");

    // No proxy configured: HTTP_PROXY, as for any other program.
    let from_env = Daemon::start_with(Options {
        env: vec![("HTTP_PROXY".into(), cache.url())],
        ..Default::default()
    });
    read_everything(&world, &from_env, "env");
    let through = cache.access_log().lines().count();
    assert!(
        cache.access_log().contains("GET /api/v1/file/blob/"),
        "{}",
        cache.access_log()
    );

    // NO_PROXY naming the server wins over a configured proxy too.
    world.server.clear_requests();
    let direct = Daemon::start_with(Options {
        config: Some(format!("[daemon]\nproxy = \"{}\"\n", cache.url())),
        env: vec![("NO_PROXY".into(), "127.0.0.1".into())],
        ..Default::default()
    });
    read_everything(&world, &direct, "direct");
    assert_eq!(
        cache.access_log().lines().count(),
        through,
        "{}",
        cache.access_log()
    );
    assert!(world.server.requests().iter().any(|r| r.is_blob_get()));
}
