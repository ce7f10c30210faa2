//! A repository a hostile server could serve: honest objects (every id matches its bytes, so
//! verification passes) whose trees hold entries no filesystem may show. Built with git's
//! plumbing (`hash-object --literally` writes trees git itself would refuse to make).
//!
//! The root holds `README.md`, a good directory `ok/` and one directory per bad entry (see
//! [`BAD_DIRS`]), each of which must fail alone while the rest of the mount keeps working.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

use crate::fixture::git;

/// The directories whose trees are bad, and what is wrong with each (as the daemon's log says
/// it, in part).
pub const BAD_DIRS: &[(&str, &str)] = &[
    ("dot-dot", "unsafe entry name \"..\""),
    ("single-dot", "unsafe entry name \".\""),
    ("empty-name", "unsafe entry name \"\""),
    ("slash", "unsafe entry name \"a/b\""),
    ("long-name", "unsafe entry name"),
    ("duplicate", "duplicate entry \"twice\""),
    ("bad-mode", "unknown mode \"100600\""),
];

pub struct Hostile {
    pub path: PathBuf,
    pub head: String,
}

/// Builds the repository at `dir` (a work tree with only `main` pointing at the bad commit).
pub fn build(dir: &Path) -> anyhow::Result<Hostile> {
    build_without(dir, &[])
}

/// [`build`], leaving out the bad directories named in `skip` (git's own upload-pack, for
/// one, will not walk a tree with an empty name, so no git server can send it).
pub fn build_without(dir: &Path, skip: &[&str]) -> anyhow::Result<Hostile> {
    std::fs::create_dir_all(dir)?;
    git(dir, &["init", "-q", "-b", "main"])?;
    let readme = write_object(dir, "blob", b"hostile fixture\n")?;
    let file = write_object(dir, "blob", b"a good file\n")?;
    let ok = tree(dir, &[("100644", b"file.txt", &file)])?;
    let long = vec![b'n'; 256];
    let bad_trees: Vec<(&str, String)> = vec![
        ("dot-dot", tree(dir, &[("100644", b"..", &file)])?),
        ("single-dot", tree(dir, &[("100644", b".", &file)])?),
        ("empty-name", tree(dir, &[("100644", b"", &file)])?),
        ("slash", tree(dir, &[("100644", b"a/b", &file)])?),
        ("long-name", tree(dir, &[("100644", &long, &file)])?),
        (
            "duplicate",
            tree(
                dir,
                &[("100644", b"twice", &file), ("100644", b"twice", &file)],
            )?,
        ),
        ("bad-mode", tree(dir, &[("100600", b"odd", &file)])?),
    ];
    let mut root: Vec<(&str, Vec<u8>, String)> = vec![
        ("100644", b"README.md".to_vec(), readme),
        ("40000", b"ok".to_vec(), ok),
    ];
    for (name, oid) in bad_trees.into_iter().filter(|(n, _)| !skip.contains(n)) {
        root.push(("40000", name.as_bytes().to_vec(), oid));
    }
    // Git orders entries by name (directories as if they ended in '/'): these names sort the
    // same either way.
    root.sort_by(|a, b| a.1.cmp(&b.1));
    let entries: Vec<(&str, &[u8], &String)> =
        root.iter().map(|(m, n, o)| (*m, n.as_slice(), o)).collect();
    let root_tree = tree(dir, &entries)?;
    let commit = git(dir, &["commit-tree", &root_tree, "-m", "hostile"])?;
    git(dir, &["update-ref", "refs/heads/main", &commit])?;
    Ok(Hostile {
        path: dir.to_path_buf(),
        head: commit,
    })
}

/// Writes a raw tree of `(mode, name, hex id)` entries, as given (no checks, no sorting).
fn tree(dir: &Path, entries: &[(&str, &[u8], &String)]) -> anyhow::Result<String> {
    let mut body = Vec::new();
    for (mode, name, oid) in entries {
        body.extend_from_slice(mode.as_bytes());
        body.push(b' ');
        body.extend_from_slice(name);
        body.push(0);
        body.extend_from_slice(&hex_to_bytes(oid)?);
    }
    write_object(dir, "tree", &body)
}

fn write_object(dir: &Path, kind: &str, body: &[u8]) -> anyhow::Result<String> {
    let mut child = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["hash-object", "--literally", "-w", "--stdin", "-t", kind])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running git hash-object")?;
    child.stdin.take().context("git's stdin")?.write_all(body)?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "git hash-object: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8(output.stdout)?.trim().to_string())
}

/// A protocol v2 fetch answer whose pack holds one blob announcing `announced` bytes (far
/// more than follow: a few zeros, deflated): a decompression bomb's opening, as a hostile git
/// server would send it.
pub fn bomb_answer(announced: u64) -> Vec<u8> {
    let mut pack = b"PACK".to_vec();
    pack.extend_from_slice(&2u32.to_be_bytes());
    pack.extend_from_slice(&1u32.to_be_bytes());
    pack.extend(pack_entry_header(3, announced));
    // zlib: a header, one stored block of 1024 zeros, and their Adler-32.
    let zeros = [0u8; 1024];
    pack.extend_from_slice(&[0x78, 0x01, 0x01, 0x00, 0x04, 0xff, 0xfb]);
    pack.extend_from_slice(&zeros);
    pack.extend_from_slice(&adler32(&zeros).to_be_bytes());
    let mut answer = pkt(b"packfile\n");
    for chunk in pack.chunks(65_000) {
        let mut band = vec![1u8];
        band.extend_from_slice(chunk);
        answer.extend(pkt(&band));
    }
    answer.extend_from_slice(b"0000");
    answer
}

/// A pack entry's header: its type number and the size's low 4 bits, then 7 bits a byte.
pub fn pack_entry_header(kind: u8, size: u64) -> Vec<u8> {
    let mut out = Vec::new();
    let mut size = size;
    let mut byte = (kind << 4) | (size & 0x0f) as u8;
    size >>= 4;
    while size > 0 {
        out.push(byte | 0x80);
        byte = (size & 0x7f) as u8;
        size >>= 7;
    }
    out.push(byte);
    out
}

fn pkt(payload: &[u8]) -> Vec<u8> {
    let mut out = format!("{:04x}", payload.len() + 4).into_bytes();
    out.extend_from_slice(payload);
    out
}

fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in data {
        a = (a + u32::from(byte)) % 65_521;
        b = (b + a) % 65_521;
    }
    (b << 16) | a
}

fn hex_to_bytes(hex: &str) -> anyhow::Result<Vec<u8>> {
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(hex.get(i..i + 2).context("odd hex")?, 16).context("bad hex digit")
        })
        .collect()
}
