//! A workspace's overlay: the kernel's overlayfs (for the system daemon) with the mount's
//! FUSE view of the commit as its lower layer and the workspace's `upper/` as its upper
//! layer, mounted onto the checked mountpoint's descriptor. Directories may be renamed
//! (`redirect_dir=on`: overlayfs records where a renamed directory came from); files are
//! copied up whole when first changed. The lower layer must not change while the overlay is
//! mounted, which is why a workspace never follows its commit on its own.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::mount_name::MountName;
use crate::mounts;

/// The layers of one overlay.
pub struct Layers<'a> {
    /// The FUSE view of the commit.
    pub lower: &'a Path,
    /// The changes.
    pub upper: &'a Path,
    /// overlayfs's scratch, on the upper layer's filesystem.
    pub work: &'a Path,
}

/// Mounts the overlay of `layers` onto directory `target` (a descriptor of the checked
/// mountpoint), named `megafs:NAME` in the mount table. Needs root.
pub fn mount(layers: &Layers<'_>, target: &OwnedFd, name: &MountName) -> io::Result<()> {
    let options = options(layers)?;
    mounts::mount_overlay(target, &format!("megafs:{name}"), &options)
}

/// Mounts the overlay of `layers` at `point` with `fuse-overlayfs`, as the daemon's own user
/// (for a daemon that may not mount overlayfs), named `megafs:NAME` in the mount table.
/// fuse-overlayfs serves it from a process of its own, which lives until it is unmounted.
pub fn mount_fuse_overlayfs(layers: &Layers<'_>, point: &Path, name: &MountName) -> io::Result<()> {
    let options = format!("{},fsname=megafs:{name}", layer_options(layers)?);
    let output = Command::new("fuse-overlayfs")
        .arg("-o")
        .arg(&options)
        .arg(point)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot run fuse-overlayfs (package fuse-overlayfs): {e}"),
            )
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "fuse-overlayfs failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// overlayfs's mount options for `layers`.
fn options(layers: &Layers<'_>) -> io::Result<String> {
    Ok(format!("{},redirect_dir=on", layer_options(layers)?))
}

/// The layers as overlay options. Paths go escaped: `,` separates options and `:` lower
/// layers, and a backslash before either (and before itself) makes it plain.
fn layer_options(layers: &Layers<'_>) -> io::Result<String> {
    let escaped = |path: &Path| -> io::Result<String> {
        let text = std::str::from_utf8(path.as_os_str().as_bytes()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not UTF-8", path.display()),
            )
        })?;
        let mut out = String::with_capacity(text.len());
        for c in text.chars() {
            if matches!(c, ',' | ':' | '\\') {
                out.push('\\');
            }
            out.push(c);
        }
        Ok(out)
    };
    Ok(format!(
        "lowerdir={},upperdir={},workdir={}",
        escaped(layers.lower)?,
        escaped(layers.upper)?,
        escaped(layers.work)?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_are_escaped_for_overlayfs() {
        let layers = Layers {
            lower: Path::new("/run/megafs/lower/a:b"),
            upper: Path::new("/var/lib/megafs/workspaces/x,y/upper"),
            work: Path::new("/w\\z"),
        };
        assert_eq!(
            options(&layers).expect("options"),
            "lowerdir=/run/megafs/lower/a\\:b,upperdir=/var/lib/megafs/workspaces/x\\,y/upper,\
             workdir=/w\\\\z,redirect_dir=on"
        );
    }
}
