//! A real nginx on loopback, running the shared-cache configuration the README gives
//! (`docs/nginx-shared-cache.conf`, as shipped, with its three marked places filled in), for
//! tests of daemons reading through a team's cache.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The placeholders of the shipped configuration, which a site changes.
const SERVER_PLACEHOLDER: &str = "mega.example.org:8000";
const LISTEN_PLACEHOLDER: &str = "listen 3128;";
const CACHE_PLACEHOLDER: &str = "/var/cache/nginx/megafs";

/// The running nginx; stopped (and its files removed) on drop.
pub struct SharedCache {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl SharedCache {
    /// Starts nginx as a forward proxy for `server` (`host:port`, as daemons name it) and
    /// returns once it accepts connections.
    pub fn start(server: &str) -> anyhow::Result<SharedCache> {
        let nginx = find_nginx()?;
        let dir = tempfile::Builder::new().prefix("megafs-nginx").tempdir()?;
        let addr = free_port()?;
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/nginx-shared-cache.conf");
        let text = std::fs::read_to_string(&shipped)
            .with_context(|| format!("reading {}", shipped.display()))?;
        let site = fill_in(&text, server, addr, &dir.path().join("cache"))?;
        std::fs::write(dir.path().join("megafs.conf"), site)?;
        std::fs::write(dir.path().join("nginx.conf"), wrapper(dir.path()))?;
        let child = Command::new(&nginx)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", nginx.display()))?;
        let mut cache = SharedCache { child, addr, dir };
        cache.wait_until_listening()?;
        Ok(cache)
    }

    /// The URL daemons give as their proxy.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many answers nginx keeps on disk.
    pub fn entries(&self) -> usize {
        count_files(&self.dir.path().join("cache"))
    }

    /// nginx's access log: one line a request, ending with its cache status.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    /// Polls until nginx accepts a connection; fails as soon as it exits (its error log then
    /// says why) or after 10 s.
    fn wait_until_listening(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("nginx exited ({status}): {}", self.error_log());
            }
            if Instant::now() > deadline {
                bail!(
                    "nginx did not listen on {} within 10 s: {}",
                    self.addr,
                    self.error_log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for SharedCache {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The shipped configuration for this test's server, port and cache directory; fails if a
/// placeholder is gone (the configuration changed without this test).
fn fill_in(text: &str, server: &str, addr: SocketAddr, cache: &Path) -> anyhow::Result<String> {
    for placeholder in [SERVER_PLACEHOLDER, LISTEN_PLACEHOLDER, CACHE_PLACEHOLDER] {
        if !text.contains(placeholder) {
            bail!("docs/nginx-shared-cache.conf no longer holds {placeholder:?}");
        }
    }
    let cache = cache.to_str().context("a UTF-8 temporary directory")?;
    Ok(text
        .replace(SERVER_PLACEHOLDER, server)
        .replace(LISTEN_PLACEHOLDER, &format!("listen {addr};"))
        .replace(CACHE_PLACEHOLDER, cache))
}

/// The main configuration a site already has, reduced to what a test needs: one process in
/// the foreground, every file under `dir`.
fn wrapper(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
         events {{}}\nhttp {{\n\
         log_format megafs '$request_method $request_uri $status $upstream_cache_status';\n\
         access_log {d}/access.log megafs;\n\
         client_body_temp_path {d}/body;\nproxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi;\nuwsgi_temp_path {d}/uwsgi;\nscgi_temp_path {d}/scgi;\n\
         include {d}/megafs.conf;\n}}\n"
    )
}

fn find_nginx() -> anyhow::Result<PathBuf> {
    let candidates = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()]);
    for dir in candidates {
        let path = dir.join("nginx");
        if path.is_file() {
            return Ok(path);
        }
    }
    bail!("nginx is not installed: run scripts/setup --test (or apt-get install nginx)")
}

/// A loopback port nothing listens on now (nginx cannot be told to pick one).
fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn count_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| {
            let path = e.path();
            if path.is_dir() {
                count_files(&path)
            } else {
                1
            }
        })
        .sum()
}
