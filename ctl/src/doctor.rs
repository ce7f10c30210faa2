//! `mega-fuse doctor`: what this machine needs for megafs (checked here, as the user who runs
//! it), then what the daemon checks of itself (its configuration, stale mounts, the cache's
//! room, each mount's server).

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;

use megafs_proto::v1::{DoctorCheck, DoctorRequest, StatusRequest};
use serde_json::json;

use crate::client::{self, status_error};
use crate::Cli;

/// Passthrough reads (the kernel reading cache files itself) came with this kernel.
const PASSTHROUGH_KERNEL: (u32, u32) = (6, 9);

fn check(name: &str, status: &str, detail: String, fix: &str) -> DoctorCheck {
    DoctorCheck {
        name: name.to_string(),
        status: status.to_string(),
        detail,
        fix: fix.to_string(),
    }
}

/// Every check, local ones first; the daemon's only where it answers.
pub async fn run(cli: &Cli, json: bool) -> anyhow::Result<()> {
    let root = is_root();
    let mut checks = vec![dev_fuse(root), fusermount(root), kernel()];
    match client::connect(cli).await {
        Err(e) => {
            checks.push(check(
                "daemon",
                "failed",
                format!("{e:#}"),
                "start it: `systemctl start megafsd`, or `mega-fuse connect` starts one for you",
            ));
        }
        Ok(mut daemon) => {
            let socket = client::socket_path(cli);
            let status = daemon
                .status(StatusRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            checks.push(check(
                "daemon",
                "ok",
                format!(
                    "megafsd {} (pid {}) answers on {}",
                    status.daemon_version,
                    status.daemon_pid,
                    socket.display()
                ),
                "",
            ));
            let reply = daemon
                .doctor(DoctorRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            checks.extend(reply.checks);
        }
    }
    let failed = checks.iter().filter(|c| c.status == "failed").count();
    if json {
        println!("{}", as_json(&checks));
    } else {
        print!("{}", as_text(&checks));
    }
    if failed > 0 {
        return Err(anyhow::anyhow!(
            "{failed} of {} checks failed",
            checks.len()
        ));
    }
    Ok(())
}

fn as_text(checks: &[DoctorCheck]) -> String {
    checks
        .iter()
        .map(|c| {
            let fix = if c.fix.is_empty() || c.status == "ok" {
                String::new()
            } else {
                format!("; fix: {}", c.fix)
            };
            format!("{:<8}{}: {}{fix}\n", c.status, c.name, c.detail)
        })
        .collect()
}

fn as_json(checks: &[DoctorCheck]) -> String {
    let list: Vec<_> = checks
        .iter()
        .map(|c| json!({"name": c.name, "status": c.status, "detail": c.detail, "fix": c.fix}))
        .collect();
    let ok = checks.iter().all(|c| c.status != "failed");
    json!({ "ok": ok, "checks": list }).to_string()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `/dev/fuse`, as this user can open it.
fn dev_fuse(root: bool) -> DoctorCheck {
    let name = "/dev/fuse";
    let meta = match std::fs::metadata(name) {
        Ok(meta) if meta.file_type().is_char_device() => meta,
        _ => {
            return check(
                name,
                "failed",
                "missing".into(),
                "load the module (`modprobe fuse`), or in a container pass the device in",
            )
        }
    };
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(name)
    {
        Ok(_) => check(name, "ok", "present and usable".into(), ""),
        Err(e) => {
            let fix = if root {
                "check the container's device rules (cgroup) for /dev/fuse"
            } else {
                "let users open it: `sudo chmod 0666 /dev/fuse` (Debian's udev default)"
            };
            check(
                name,
                "failed",
                format!("cannot open it (mode {:o}): {e}", meta.mode() & 0o7777),
                fix,
            )
        }
    }
}

/// `fusermount3`, which mounts for users other than root: present, and setuid root.
fn fusermount(root: bool) -> DoctorCheck {
    let name = "fusermount3";
    // Root mounts by itself; a user's daemon cannot without it.
    let missing = if root { "warning" } else { "failed" };
    let Some(path) = on_path(name) else {
        return check(
            name,
            missing,
            "not found on PATH".into(),
            "install it: `sudo apt install fuse3`",
        );
    };
    match std::fs::metadata(&path) {
        Ok(meta) if meta.uid() == 0 && meta.mode() & 0o4000 != 0 => {
            check(name, "ok", format!("{} is setuid root", path.display()), "")
        }
        Ok(meta) => check(
            name,
            missing,
            format!(
                "{} is not setuid root (mode {:o})",
                path.display(),
                meta.mode() & 0o7777
            ),
            "reinstall fuse3, or `sudo chmod u+s` it",
        ),
        Err(e) => check(name, missing, format!("{}: {e}", path.display()), ""),
    }
}

fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// The kernel, for what it offers: passthrough reads need 6.9.
fn kernel() -> DoctorCheck {
    let name = "kernel";
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim();
    match version_of(release) {
        Some(v) if v >= PASSTHROUGH_KERNEL => check(
            name,
            "ok",
            format!("Linux {release}: passthrough reads available"),
            "",
        ),
        Some(_) => check(
            name,
            "warning",
            format!("Linux {release}: every read goes through the daemon"),
            "Linux 6.9 or later lets the kernel read cached files itself (passthrough)",
        ),
        None => check(name, "warning", format!("unknown release {release:?}"), ""),
    }
}

/// `6.18.44-fc-v1045` -> (6, 18).
fn version_of(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_releases_read_as_versions() {
        assert_eq!(version_of("6.18.44-fc-v1045"), Some((6, 18)));
        assert_eq!(version_of("5.10.0-28-amd64"), Some((5, 10)));
        assert_eq!(version_of("6.9"), Some((6, 9)));
        assert_eq!(version_of("weird"), None);
        assert!((6, 9) >= PASSTHROUGH_KERNEL && (6, 8) < PASSTHROUGH_KERNEL);
    }

    #[test]
    fn each_check_is_one_line_with_its_fix_when_not_ok() {
        let checks = [
            check("/dev/fuse", "ok", "present and usable".into(), ""),
            check("daemon", "failed", "not running".into(), "start it"),
        ];
        let text = as_text(&checks);
        assert_eq!(
            text,
            "ok      /dev/fuse: present and usable\nfailed  daemon: not running; fix: start it\n"
        );
        let value: serde_json::Value = serde_json::from_str(&as_json(&checks)).unwrap();
        assert_eq!(value["ok"], false);
        assert_eq!(value["checks"][1]["fix"], "start it");
    }
}
