//! Runs the real binaries for tests: a `megafsd` on its own socket and cache, and `mega-fuse`
//! against it. Every mountpoint a test asks for is unmounted when the daemon guard drops,
//! even if the test failed.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
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

/// Every mount point at or under `dir`, from the mount table.
pub fn mounted_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let prefix = dir.to_string_lossy().replace(' ', "\\040");
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&prefix))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .collect()
}

/// statfs of `path`, or the errno it failed with. A dead FUSE mount answers ENOTCONN here
/// even where a stat would be answered from the kernel's cache.
pub fn statfs(path: &Path) -> Result<libc::statvfs, i32> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| libc::EINVAL)?;
    // SAFETY: statvfs fills the struct we own; c is a valid C string.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut stat) } == 0 {
        Ok(stat)
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

/// The names in directory `dir`.
pub fn list_names(dir: &Path) -> std::io::Result<Vec<String>> {
    std::fs::read_dir(dir)?
        .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect()
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

/// How a test wants its daemon started.
#[derive(Default, Clone)]
pub struct Options {
    /// Contents of a configuration file to pass with --config.
    pub config: Option<String>,
    /// Ask for watchdog pings this often (WATCHDOG_USEC), as systemd would.
    pub watchdog_usec: Option<u64>,
    /// Environment variables for the daemon (proxies are otherwise removed from it).
    pub env: Vec<(String, String)>,
}

/// Proxy variables the daemon would honour: a developer's own never reach a test's daemon.
const PROXY_VARIABLES: [&str; 8] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// What the daemon told "systemd": every sd_notify datagram, in order.
#[derive(Clone, Default)]
pub struct Notifications(Arc<Mutex<Vec<String>>>);

impl Notifications {
    pub fn all(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits until some datagram satisfies `pred`, counting from index `from`; returns its
    /// index.
    pub fn wait_for(
        &self,
        from: usize,
        limit: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<usize> {
        let deadline = Instant::now() + limit;
        loop {
            let all = self.all();
            if let Some(i) = all.iter().skip(from).position(|m| pred(m)) {
                return Some(from + i);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// A running `megafsd` with its own temporary socket, cache, log and notify socket.
pub struct Daemon {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub cache_dir: PathBuf,
    pub config_path: PathBuf,
    pub notifications: Notifications,
    options: Options,
    log_path: PathBuf,
    mountpoints: Mutex<Vec<PathBuf>>,
}

impl Daemon {
    pub fn start() -> Daemon {
        Self::start_with(Options::default())
    }

    /// Starts megafsd and waits until it tells "systemd" it is ready (READY=1).
    pub fn start_with(options: Options) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("megafs-test")
            .tempdir()
            .expect("temp dir");
        let notify_path = dir.path().join("notify.sock");
        let notifications = Notifications::default();
        let receiver = UnixDatagram::bind(&notify_path).expect("notify socket");
        let sink = notifications.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = receiver.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                sink.0.lock().unwrap_or_else(|p| p.into_inner()).push(text);
            }
        });
        let mut daemon = Daemon {
            child: None,
            socket: dir.path().join("megafsd.sock"),
            cache_dir: dir.path().join("cache"),
            config_path: dir.path().join("megafsd.toml"),
            log_path: dir.path().join("megafsd.stderr"),
            notifications,
            options,
            mountpoints: Mutex::new(Vec::new()),
            dir,
        };
        if let Some(text) = &daemon.options.config {
            std::fs::write(&daemon.config_path, text).expect("writing the config");
        }
        daemon.spawn();
        daemon
    }

    /// Starts a daemon whose configuration may name paths inside the daemon's own directory
    /// (`config` is given that directory). The mountpoints it names are registered for
    /// cleanup before the daemon mounts them; `<dir>/mnt` exists to put them in.
    pub fn start_configured(
        config: impl Fn(&Path) -> String,
        watchdog_usec: Option<u64>,
    ) -> Daemon {
        // The directory exists only once the daemon does: start with an empty configuration,
        // then write the real one and restart.
        let mut daemon = Daemon::start_with(Options {
            config: Some(String::new()),
            watchdog_usec,
            ..Default::default()
        });
        let text = config(daemon.dir.path());
        std::fs::create_dir_all(daemon.dir.path().join("mnt")).expect("mnt");
        for point in text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("mountpoint = \""))
        {
            daemon.mountpoint_registered(Path::new(point.trim_end_matches('"')));
        }
        daemon.write_config(&text);
        daemon.restart();
        daemon
    }

    /// Replaces the configuration file (for reload tests).
    pub fn write_config(&self, text: &str) {
        std::fs::write(&self.config_path, text).expect("writing the config");
    }

    /// Sends a signal to the daemon.
    pub fn signal(&self, signal: i32) {
        if let Some(child) = &self.child {
            // SAFETY: kill has no memory-safety preconditions; the pid is our own child's.
            unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        }
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("daemon log");
        let mut command = match self.options.watchdog_usec {
            // systemd names the pid that must ping; `exec` keeps the shell's pid.
            Some(usec) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg("WATCHDOG_PID=$$ exec \"$@\"")
                    .arg("sh")
                    .arg(bin("megafsd"))
                    .env("WATCHDOG_USEC", usec.to_string());
                c
            }
            None => Command::new(bin("megafsd")),
        };
        if self.options.config.is_some() {
            command.arg("--config").arg(&self.config_path);
        } else {
            // Never pick up a configuration file from the machine.
            command
                .arg("--config")
                .arg(self.dir.path().join("no-config.toml"));
            std::fs::write(self.dir.path().join("no-config.toml"), "").expect("empty config");
        }
        let seen = self.notifications.all().len();
        command
            .arg("--socket")
            .arg(&self.socket)
            .arg("--cache-dir")
            .arg(&self.cache_dir)
            .arg("--log-dir")
            .arg(self.dir.path().join("log"))
            .arg("--state-dir")
            .arg(self.state_dir())
            .arg("--foreground")
            .env("MEGAFS_LOG", "info,megafsd=debug")
            .env("NO_COLOR", "1")
            .env("NOTIFY_SOCKET", self.dir.path().join("notify.sock"))
            .env_remove("INVOCATION_ID")
            .env_remove("JOURNAL_STREAM");
        for name in PROXY_VARIABLES {
            command.env_remove(name);
        }
        command.envs(self.options.env.iter().map(|(k, v)| (k, v)));
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning megafsd");
        self.child = Some(child);
        self.wait_ready(seen);
    }

    /// Waits for READY=1 (sent once the socket answers and every configured mount has been
    /// tried once).
    fn wait_ready(&mut self, seen: usize) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let all = self.notifications.all();
            if all
                .iter()
                .skip(seen)
                .any(|m| m.lines().any(|l| l == "READY=1"))
            {
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

    /// Stops the daemon (SIGTERM) and starts it again on the same socket, cache and config.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Kills the daemon (SIGKILL), leaving its mounts dead behind it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the daemon again after `kill` or `stop`.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the daemon is still running");
        self.spawn();
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

    /// Registers a mountpoint the daemon creates itself (a configured one) for cleanup.
    pub fn mountpoint_registered(&self, path: &Path) {
        self.mountpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(path.to_path_buf());
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

    /// Where the daemon keeps its workspaces (`--state-dir`).
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The workspace directory of mount `name`.
    pub fn workspace_dir(&self, name: &str) -> PathBuf {
        self.state_dir().join("workspaces").join(name)
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
        // Whatever else is mounted in the daemon's directory (a workspace's view, beneath
        // its overlay), deepest first.
        let mut inside = mounted_under(self.dir.path());
        inside.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for point in inside {
            let _ = Command::new("umount").arg("-l").arg(&point).status();
        }
    }
}

/// Makes /dev/fuse open to every user, as Debian's udev rules do: FUSE for users needs it
/// (fusermount3 opens it as the user), and machines without udev (these test machines)
/// leave it 0600.
pub fn open_fuse_to_users() {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata("/dev/fuse")
        .expect("/dev/fuse")
        .permissions()
        .mode();
    if mode & 0o666 != 0o666 {
        std::fs::set_permissions("/dev/fuse", std::fs::Permissions::from_mode(0o666))
            .expect("chmod /dev/fuse");
    }
}
