//! Compares two directory trees: the same paths, file types, bytes, permission bits of files
//! and symlink targets. Used to check a mount against `git archive` of the same commit.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, PartialEq, Eq)]
enum Item {
    Dir,
    File { mode: u32, bytes: Vec<u8> },
    Symlink(PathBuf),
}

fn walk(root: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, Item>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(root.join(rel))? {
        let entry = entry?;
        let rel_child = rel.join(entry.file_name());
        let path = root.join(&rel_child);
        let meta = std::fs::symlink_metadata(&path)?;
        let item = if meta.file_type().is_symlink() {
            Item::Symlink(std::fs::read_link(&path)?)
        } else if meta.is_dir() {
            walk(root, &rel_child, out)?;
            Item::Dir
        } else {
            Item::File {
                mode: meta.permissions().mode() & 0o777,
                bytes: std::fs::read(&path)?,
            }
        };
        out.insert(rel_child, item);
    }
    Ok(())
}

fn describe(item: &Item) -> String {
    match item {
        Item::Dir => "a directory".into(),
        Item::File { mode, bytes } => format!("a file, mode {mode:o}, {} bytes", bytes.len()),
        Item::Symlink(target) => format!("a symlink to {}", target.display()),
    }
}

/// Every difference between `expected` and `actual`, one line each; empty when they match.
pub fn differences(expected: &Path, actual: &Path) -> std::io::Result<Vec<String>> {
    let (mut want, mut got) = (BTreeMap::new(), BTreeMap::new());
    walk(expected, Path::new(""), &mut want)?;
    walk(actual, Path::new(""), &mut got)?;
    let mut diffs = Vec::new();
    for (path, item) in &want {
        match got.get(path) {
            None => diffs.push(format!("{} is missing", path.display())),
            Some(other) if other != item => diffs.push(format!(
                "{}: expected {}, got {}",
                path.display(),
                describe(item),
                describe(other)
            )),
            Some(_) => {}
        }
    }
    for path in got.keys().filter(|p| !want.contains_key(*p)) {
        diffs.push(format!("{} is unexpected", path.display()));
    }
    Ok(diffs)
}
