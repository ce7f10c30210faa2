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
        self.connect_mega(&self.daemon, name, &point, &[]);
        point
    }

    /// Mounts the fixture from the dev Mega server as a workspace named `name`.
    pub fn mount_writable(&self, name: &str) -> PathBuf {
        let point = self.daemon.mountpoint(name);
        self.connect_mega(&self.daemon, name, &point, &["--writable"]);
        point
    }

    /// The arguments of `connect` for the fixture on the dev Mega server, onto `point` as
    /// `name`, then `extra`.
    fn mega_args<'a>(&self, url: &'a str, name: &'a str, point: &'a Path) -> Vec<&'a str> {
        let at = path_str(point);
        vec![
            "connect",
            MEGA_REPO,
            "--mega-url",
            url,
            "--mount-point",
            at,
            "--name",
            name,
        ]
    }

    /// `connect` of the fixture from the dev Mega server on `daemon`, expected to work.
    pub fn connect_mega(&self, daemon: &Daemon, name: &str, point: &Path, extra: &[&str]) {
        let url = self.server.url();
        let mut args = self.mega_args(&url, name, point);
        args.extend_from_slice(extra);
        daemon.ctl_ok(&args);
    }

    /// `connect` of the fixture from the dev Mega server, expected to fail: its message.
    pub fn connect_mega_err(&self, name: &str, point: &Path, extra: &[&str]) -> String {
        let url = self.server.url();
        let mut args = self.mega_args(&url, name, point);
        args.extend_from_slice(extra);
        self.daemon.ctl_err(&args)
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
