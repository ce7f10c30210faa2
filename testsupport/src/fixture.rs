//! The fixture repository every source is tested with, built with git itself: nested
//! directories, an executable, two symlinks, a binary file, an empty file, names with spaces
//! and non-ASCII, a 5 MB file, a submodule entry, and two commits (the first tagged `v1`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

pub struct Fixture {
    /// The repository (with a work tree).
    pub path: PathBuf,
    /// The newest commit (HEAD of `main`).
    pub head: String,
    /// The first commit, tagged `v1`.
    pub v1: String,
}

/// Paths of the small files under `many/`, for parallel reads.
pub const MANY_FILES: usize = 8;

pub const UNICODE_NAME: &str = "docs/file with spaces ünïcødé 日本.txt";

/// Runs git in `repo` with a fixed identity and dates, so ids are the same on every machine.
pub fn git(repo: &Path, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(args)
        .env("GIT_AUTHOR_NAME", "Fixture Author")
        .env("GIT_AUTHOR_EMAIL", "author@example.com")
        .env("GIT_COMMITTER_NAME", "Fixture Committer")
        .env("GIT_COMMITTER_EMAIL", "committer@example.com")
        .env("GIT_AUTHOR_DATE", "2024-01-02T03:04:05Z")
        .env("GIT_COMMITTER_DATE", "2024-01-02T03:04:05Z")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", repo)
        .output()
        .with_context(|| format!("running git {args:?}"))?;
    if !output.status.success() {
        bail!(
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// Deterministic incompressible bytes.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn write(root: &Path, rel: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let path = root.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// Builds the fixture in a new directory `dir`.
pub fn build(dir: &Path) -> anyhow::Result<Fixture> {
    use std::os::unix::fs::{symlink, PermissionsExt};
    std::fs::create_dir_all(dir)?;
    git(dir, &["init", "-q", "-b", "main"])?;
    write(dir, "README.md", b"fixture v1\n")?;
    write(
        dir,
        "src/main.rs",
        b"fn main() {\n    println!(\"hi\");\n}\n",
    )?;
    write(dir, "src/nested/mid.txt", b"middle\n")?;
    write(dir, "src/nested/deep/leaf.txt", b"a leaf, deep down\n")?;
    write(dir, "run.sh", b"#!/bin/sh\necho run\n")?;
    std::fs::set_permissions(dir.join("run.sh"), std::fs::Permissions::from_mode(0o755))?;
    symlink("README.md", dir.join("link-to-readme"))?;
    std::fs::create_dir_all(dir.join("docs"))?;
    symlink("../src", dir.join("docs/link-to-src"))?;
    let all_bytes: Vec<u8> = (0..=255u8).cycle().take(1024).collect();
    write(dir, "data.bin", &all_bytes)?;
    write(dir, "empty.txt", b"")?;
    write(dir, UNICODE_NAME, "grüße, 世界\n".as_bytes())?;
    write(dir, "big/five-mb.bin", &pseudo_random(5 * 1024 * 1024, 42))?;
    for i in 0..MANY_FILES {
        write(
            dir,
            &format!("many/f{i}.txt"),
            format!("file number {i}\n").as_bytes(),
        )?;
    }
    git(dir, &["add", "-A"])?;
    // A submodule entry: a gitlink in the index, with no .gitmodules needed to exist.
    git(
        dir,
        &[
            "update-index",
            "--add",
            "--cacheinfo",
            "160000,1111111111111111111111111111111111111111,vendor/sub",
        ],
    )?;
    git(dir, &["commit", "-q", "-m", "first"])?;
    git(dir, &["tag", "v1"])?;
    let v1 = git(dir, &["rev-parse", "HEAD"])?;
    write(dir, "README.md", b"fixture v2\n")?;
    // Not `commit -a`: it would drop the gitlink, which has no directory in the work tree.
    git(dir, &["add", "README.md"])?;
    git(dir, &["commit", "-q", "-m", "second"])?;
    let head = git(dir, &["rev-parse", "HEAD"])?;
    Ok(Fixture {
        path: dir.to_path_buf(),
        head,
        v1,
    })
}

/// Extracts `git archive` of `commit` into `dest`, with git's modes (0644/0755).
pub fn archive(repo: &Path, commit: &str, dest: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dest)?;
    let status = Command::new("sh")
        .arg("-c")
        .arg("git -C \"$1\" -c tar.umask=0022 archive \"$2\" | tar -x -p -C \"$3\"")
        .arg("sh")
        .arg(repo)
        .arg(commit)
        .arg(dest)
        .status()?;
    if !status.success() {
        bail!("git archive {commit} | tar -x failed");
    }
    Ok(())
}
