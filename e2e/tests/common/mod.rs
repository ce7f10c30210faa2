//! Setup shared by the end-to-end tests: a fixture repository, served by the dev Mega server,
//! and a daemon.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use megafs_testsupport::fixture::{self, Fixture};
use megafs_testsupport::harness::Daemon;
use megafs_testsupport::{DevServer, ServedRepo};

/// Where the fixture appears on the dev Mega server.
pub const MEGA_REPO: &str = "/third-party/fixture";

pub struct World {
    pub daemon: Daemon,
    pub fixture: Fixture,
    pub server: DevServer,
    _fixture_dir: tempfile::TempDir,
}

impl World {
    pub fn new() -> World {
        Self::with_daemon(Daemon::start)
    }

    /// A world whose daemon's configuration has `lines` in its `[daemon]` section.
    pub fn with_daemon_config(lines: &str) -> World {
        let config = format!("[daemon]\n{lines}\n");
        Self::with_daemon(move || {
            Daemon::start_with(megafs_testsupport::harness::Options {
                config: Some(config),
                ..Default::default()
            })
        })
    }

    fn with_daemon(start: impl FnOnce() -> Daemon) -> World {
        let dir = tempfile::Builder::new()
            .prefix("megafs-fixture")
            .tempdir()
            .expect("temp dir");
        let fixture = fixture::build(&dir.path().join("repo")).expect("building the fixture");
        let served =
            ServedRepo::open(MEGA_REPO, &fixture.path, "main").expect("opening the fixture");
        let server = DevServer::start(vec![served]).expect("starting the dev Mega server");
        World {
            daemon: start(),
            fixture,
            server,
            _fixture_dir: dir,
        }
    }

    /// Mounts the fixture from the dev Mega server; returns the mountpoint.
    pub fn mount_mega(&self, name: &str) -> PathBuf {
        let point = self.daemon.mountpoint(name);
        self.daemon.ctl_ok(&[
            "connect",
            MEGA_REPO,
            "--mega-url",
            &self.server.url(),
            "--mount-point",
            path_str(&point),
            "--name",
            name,
        ]);
        point
    }

    /// Mounts the fixture as a local repository at `git_ref` (empty: HEAD).
    pub fn mount_local(&self, name: &str, git_ref: &str) -> PathBuf {
        let point = self.daemon.mountpoint(name);
        let repo = path_str(&self.fixture.path).to_string();
        let mut args = vec![
            "connect",
            &repo,
            "--mount-point",
            path_str(&point),
            "--name",
            name,
        ];
        if !git_ref.is_empty() {
            args.extend(["--ref", git_ref]);
        }
        self.daemon.ctl_ok(&args);
        point
    }

    /// `git archive` of `commit`, extracted into a new directory.
    pub fn archive(&self, commit: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        fixture::archive(&self.fixture.path, commit, dir.path()).expect("git archive");
        dir
    }
}

pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// The errno of an I/O error, for assertions.
pub fn errno(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}
