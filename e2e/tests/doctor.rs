//! `mega-fuse doctor`: each check passes on a healthy machine and fails, naming the fix, when
//! what it checks is broken: a server that does not answer, a bad configuration file, a
//! stale mount, a daemon that is not running.
//!
//! One test, in phases: the stale-mount check looks at the whole machine, so a stale mount
//! made by a test running alongside would fail the others.

mod common;

use std::process::Command;

use common::{path_str, World};
use megafs_testsupport::harness::{bin, statfs, Daemon};

/// `mega-fuse doctor` on `daemon`'s socket: whether it passed, and its stdout.
fn doctor(daemon: &Daemon) -> (bool, String) {
    let out = daemon.ctl(&["doctor"]);
    (out.status.success(), out.stdout)
}

fn line<'a>(text: &'a str, start: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("no line starting {start:?} in:\n{text}"))
}

#[test]
fn doctor_passes_when_all_is_well_and_names_each_broken_thing_with_its_fix() {
    // A configured mount whose server's port has nothing behind it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead = format!("http://{}", listener.local_addr().expect("addr"));
    drop(listener);
    let parent = tempfile::tempdir().expect("temp dir");
    let flaky_point = parent.path().join("flaky");
    let world = World::with_daemon_config(&format!(
        "\n[[mount]]\nname = \"flaky\"\nmega_url = \"{dead}\"\nrepo = \"/third-party/x\"\n\
         mountpoint = \"{}\"\n",
        flaky_point.display()
    ));
    world.mount_mega("good");

    let (passed, out) = doctor(&world.daemon);
    for ok in [
        "ok      /dev/fuse: present and usable",
        "ok      kernel: ",
        "ok      daemon: megafsd ",
        "ok      configuration: valid: ",
        "ok      stale mounts: none",
        "ok      cache space: ",
        "ok      server of good: ",
    ] {
        line(&out, ok);
    }
    assert!(
        line(&out, "ok      server of good: ").contains(" answered in "),
        "{out}"
    );
    // The server that does not answer, with what to do.
    let flaky = line(&out, "failed  server of flaky: ");
    assert!(
        flaky.contains("did not answer") && flaky.contains("; fix: "),
        "{out}"
    );
    assert!(!passed, "a failed check fails the command");

    // A configuration file broken on disk (the daemon still runs the old one).
    world.daemon.write_config("[daemon\n");
    let (_, out) = doctor(&world.daemon);
    let config = line(&out, "failed  configuration: ");
    assert!(config.contains("megafsd.toml:1: "), "{out}");
    assert!(config.contains("--check-config"), "{out}");

    // A stale mount: another daemon mounts and dies. (A daemon another test binary starts
    // would clean it, but those do not run alongside this one.)
    let point = world.daemon.mountpoint("stale");
    let mut other = Daemon::start();
    world.connect_mega(&other, "stale", &point, &[]);
    other.kill();
    assert_eq!(statfs(&point).err(), Some(libc::ENOTCONN), "a dead mount");
    let (_, out) = doctor(&world.daemon);
    let stale = line(&out, "failed  stale mounts: ");
    assert!(stale.contains(path_str(&point)), "{out}");
    assert!(stale.contains("fix: restart megafsd"), "{out}");
    let umount = Command::new("umount").arg("-l").arg(&point).status();
    assert!(umount.expect("umount").success());

    // No daemon on the socket at all: the local checks still run, and the fix is named.
    let nowhere = world.daemon.dir.path().join("nobody.sock");
    let out = Command::new(bin("mega-fuse"))
        .arg("--socket")
        .arg(&nowhere)
        .args(["doctor", "--json"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(report["ok"], false, "{report}");
    let checks = report["checks"].as_array().expect("checks");
    let daemon = checks
        .iter()
        .find(|c| c["name"] == "daemon")
        .expect("a daemon check");
    assert_eq!(daemon["status"], "failed", "{report}");
    assert!(
        daemon["detail"]
            .as_str()
            .unwrap_or("")
            .contains("not running"),
        "{report}"
    );
    assert!(checks
        .iter()
        .any(|c| c["name"] == "/dev/fuse" && c["status"] == "ok"));
}
