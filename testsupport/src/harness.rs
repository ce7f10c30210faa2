//! Runs the real binaries for tests: a `megafsd` on its own socket and cache, and `mega-fuse`
//! against it. Every mountpoint a test asks for is unmounted when the daemon guard drops,
//! even if the test failed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long the daemon may take to answer on its socket.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the daemon may take to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// A workspace binary (`megafsd`, `mega-fuse`, `mega-dev-server`), from `$MEGAFS_BIN_DIR` or
/// the target directory the test itself was built into.
pub fn bin(name: &str) -> PathBuf {
    let dir = std::env::var_os("MEGAFS_BIN_DIR")
        .map(PathBuf::from)
        .or_else(|| {
            // target/<profile>/deps/<test> -> target/<profile>
            let exe = std::env::current_exe().ok()?;
            Some(exe.parent()?.parent()?.to_path_buf())
        })
        .unwrap_or_else(|| PathBuf::from("target/debug"));
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        path.display()
    );
    path
}

/// Whether `path` is a mount point now.
pub fn is_mounted(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let wanted = path.to_string_lossy().replace(' ', "\\040");
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|p| p == wanted)
}

/// Runs `f` on its own thread and gives up after `limit`: a hung filesystem call fails the
/// test instead of hanging it. (The thread is left behind if it hangs.)
pub fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("operation did not finish within {limit:?}"))
}

/// The result of one `mega-fuse` run.
#[derive(Debug)]
pub struct CtlOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CtlOutput {
    fn from(output: Output) -> Self {
        CtlOutput {
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// A running `megafsd` with its own temporary socket, cache and log.
pub struct Daemon {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub cache_dir: PathBuf,
    log_path: PathBuf,
    mountpoints: Mutex<Vec<PathBuf>>,
}

impl Daemon {
    pub fn start() -> Daemon {
        Self::start_with(&[])
    }

    /// Starts megafsd with extra arguments and waits until its socket answers.
    pub fn start_with(extra: &[&str]) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("megafs-test")
            .tempdir()
            .expect("temp dir");
        let socket = dir.path().join("megafsd.sock");
        let cache_dir = dir.path().join("cache");
        let log_path = dir.path().join("megafsd.stderr");
        let mut daemon = Daemon {
            child: None,
            socket,
            cache_dir,
            log_path,
            mountpoints: Mutex::new(Vec::new()),
            dir,
        };
        daemon.spawn(extra);
        daemon
    }

    fn spawn(&mut self, extra: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("daemon log");
        let child = Command::new(bin("megafsd"))
            .arg("--socket")
            .arg(&self.socket)
            .arg("--cache-dir")
            .arg(&self.cache_dir)
            .arg("--log-dir")
            .arg(self.dir.path().join("log"))
            .arg("--foreground")
            .args(extra)
            .env("MEGAFS_LOG", "info,megafsd=debug")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning megafsd");
        self.child = Some(child);
        self.wait_ready();
    }

    /// Waits until the socket accepts a connection (the daemon binds it once it is ready).
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "megafsd exited with {status} before it was ready:\n{}",
                        self.log()
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "megafsd did not answer within {START_TIMEOUT:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stops the daemon (SIGTERM) and starts it again on the same socket and cache.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn(&[]);
    }

    /// A new empty directory to mount on; it is unmounted when the daemon guard drops.
    pub fn mountpoint(&self, name: &str) -> PathBuf {
        let path = self.dir.path().join("mnt").join(name);
        std::fs::create_dir_all(&path).expect("mountpoint");
        self.mountpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(path.clone());
        path
    }

    /// Runs `mega-fuse --socket <ours> ARGS`.
    pub fn ctl(&self, args: &[&str]) -> CtlOutput {
        let output = Command::new(bin("mega-fuse"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running mega-fuse");
        CtlOutput::from(output)
    }

    /// Runs mega-fuse and expects success; returns stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "mega-fuse {args:?} failed: {}\ndaemon log:\n{}",
            out.stderr,
            self.log()
        );
        out.stdout
    }

    /// Runs mega-fuse and expects failure; returns stderr.
    pub fn ctl_err(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            !out.status.success(),
            "mega-fuse {args:?} should have failed but printed: {}",
            out.stdout
        );
        out.stderr
    }

    /// `status --json`, parsed.
    pub fn status(&self) -> serde_json::Value {
        let text = self.ctl_ok(&["status", "--json"]);
        serde_json::from_str(&text).expect("status --json is JSON")
    }

    /// What the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// SIGTERM and wait; SIGKILL if it does not stop in time.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: kill has no memory-safety preconditions; the pid is our own child's.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        let points =
            std::mem::take(&mut *self.mountpoints.lock().unwrap_or_else(|p| p.into_inner()));
        for point in points {
            if is_mounted(&point) {
                let _ = Command::new("umount").arg("-l").arg(&point).status();
            }
        }
    }
}
