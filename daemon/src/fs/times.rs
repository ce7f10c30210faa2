//! Modification times that build tools can trust. make and cargo compare mtimes: were every
//! file's mtime its commit's, a refresh would make every file look changed and everything
//! would be built again. So a path keeps the time it was stamped with for as long as its object
//! stays the same, and a path whose object changed, or that is new, is stamped with the new
//! commit's time, and never earlier than a stamp handed out before (a move to an older commit
//! still looks newer). Only paths changed since the mount's first commit have stamps: every
//! other path has that commit's time (`base`). The stamps are kept per mount name in the
//! daemon's state directory, so a remount and a restart find them; a move between commits is
//! worked out from their trees, comparing only what differs.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use super::error::FsError;
use super::inode::key_of;
use super::loader::Loader;
use crate::object::{EntryKind, ObjectId};
use crate::repo_path::RepoPath;
use crate::source::Snapshot;

/// Entries a move between two commits may compare before giving up and stamping everything
/// anew (which costs a rebuild, never a missed change).
pub const MAX_COMPARED: usize = 200_000;

/// The longest a move between two commits may spend comparing trees (at a mount, or before a
/// refresh shows the new commit) before stamping everything anew; at most half the wait
/// limit, so that a mount still fits in its request's deadline.
const COMPARE_BUDGET: Duration = Duration::from_secs(10);

fn compare_budget(wait_limit: Option<Duration>) -> Duration {
    wait_limit.map_or(COMPARE_BUDGET, |limit| (limit / 2).min(COMPARE_BUDGET))
}

/// Where a mount's stamps are kept, and what they must be of.
#[derive(Clone, Debug)]
pub struct TimesFile {
    pub path: PathBuf,
    /// The repository (its location, as the supervisor names it): stamps of another
    /// repository under the same mount name are not this one's.
    pub identity: String,
}

/// An identity as the header keeps it: on one line.
fn one_line(identity: &str) -> String {
    identity.escape_default().to_string()
}

/// The times of one commit's paths.
#[derive(Clone, Debug, PartialEq)]
pub struct Times {
    identity: String,
    commit: ObjectId,
    root: ObjectId,
    /// The time of every path without a stamp.
    base: i64,
    /// The newest time handed out.
    latest: i64,
    /// By path key.
    stamps: HashMap<u64, Stamp>,
}

#[derive(Clone, Debug, PartialEq)]
struct Stamp {
    path: RepoPath,
    /// The object the path had when stamped: the stamp holds only while it still has it.
    oid: ObjectId,
    time: i64,
}

/// What a move between two commits did to one path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The path has `oid` now, which it did not have before (changed or added).
    Now { path: RepoPath, oid: ObjectId },
    /// The path, and everything under it, is gone.
    Gone(RepoPath),
}

impl Times {
    /// A mount's first commit: every path has its time.
    pub fn first(identity: &str, snapshot: &Snapshot) -> Times {
        Times {
            identity: one_line(identity),
            commit: snapshot.commit,
            root: snapshot.root_tree,
            base: snapshot.commit_time,
            latest: snapshot.commit_time,
            stamps: HashMap::new(),
        }
    }

    /// `snapshot` with every path stamped anew: for when a move could not be worked out.
    pub fn restamped(&self, snapshot: &Snapshot) -> Times {
        let time = self.next_stamp(snapshot);
        Times {
            identity: self.identity.clone(),
            commit: snapshot.commit,
            root: snapshot.root_tree,
            base: time,
            latest: time,
            stamps: HashMap::new(),
        }
    }

    /// `snapshot`, reached from this commit by `changes`.
    pub fn moved(&self, snapshot: &Snapshot, changes: &[Change]) -> Times {
        let time = self.next_stamp(snapshot);
        let gone: HashSet<&[u8]> = changes
            .iter()
            .filter_map(|c| match c {
                Change::Gone(path) => Some(path.as_bytes()),
                Change::Now { .. } => None,
            })
            .collect();
        let mut stamps = self.stamps.clone();
        if !gone.is_empty() {
            stamps.retain(|_, stamp| !within_any(&stamp.path, &gone));
        }
        for change in changes {
            if let Change::Now { path, oid } = change {
                let stamp = Stamp {
                    path: path.clone(),
                    oid: *oid,
                    time,
                };
                stamps.insert(key_of(path), stamp);
            }
        }
        Times {
            identity: self.identity.clone(),
            commit: snapshot.commit,
            root: snapshot.root_tree,
            base: self.base,
            latest: time,
            stamps,
        }
    }

    fn next_stamp(&self, snapshot: &Snapshot) -> i64 {
        snapshot.commit_time.max(self.latest + 1)
    }

    /// The time of the path of `key` while it holds `oid`.
    pub fn time_of(&self, key: u64, oid: &ObjectId) -> i64 {
        match self.stamps.get(&key) {
            Some(stamp) if stamp.oid == *oid => stamp.time,
            _ => self.base,
        }
    }

    pub fn commit(&self) -> ObjectId {
        self.commit
    }

    pub fn root(&self) -> ObjectId {
        self.root
    }

    /// Whether these are stamps of the repository `identity` names.
    pub fn is_of(&self, identity: &str) -> bool {
        self.identity == one_line(identity)
    }

    /// The stamps kept in `path`; None if there are none. Blocking.
    pub fn load(path: &Path) -> io::Result<Option<Times>> {
        match std::fs::read(path) {
            Ok(bytes) => decode(&bytes)
                .map(Some)
                .map_err(|why| io::Error::new(io::ErrorKind::InvalidData, why)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Keeps the stamps in `path`, replacing what was there whole. Blocking.
    pub fn save(&self, path: &Path) -> io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let partial = path.with_extension("partial");
        std::fs::write(&partial, self.encode())?;
        std::fs::rename(&partial, path)
    }

    /// A header of `key value` lines, a blank line, then one `time oid path` record per stamp,
    /// each ended by NUL (a path may hold any byte but NUL).
    fn encode(&self) -> Vec<u8> {
        let mut out = format!(
            "megafs-times 1\nidentity {}\ncommit {}\nroot {}\nbase {}\nlatest {}\n\n",
            self.identity,
            self.commit.to_hex(),
            self.root.to_hex(),
            self.base,
            self.latest
        )
        .into_bytes();
        let mut stamps: Vec<&Stamp> = self.stamps.values().collect();
        stamps.sort_by(|a, b| a.path.cmp(&b.path));
        for stamp in stamps {
            out.extend_from_slice(format!("{} {} ", stamp.time, stamp.oid.to_hex()).as_bytes());
            out.extend_from_slice(stamp.path.as_bytes());
            out.push(0);
        }
        out
    }
}

/// Whether `path` is one of `dirs` or under one.
fn within_any(path: &RepoPath, dirs: &HashSet<&[u8]>) -> bool {
    let bytes = path.as_bytes();
    dirs.contains(bytes)
        || bytes
            .iter()
            .enumerate()
            .any(|(i, &b)| b == b'/' && dirs.contains(&bytes[..i]))
}

fn decode(bytes: &[u8]) -> Result<Times, String> {
    let text_end = bytes
        .windows(2)
        .position(|w| w == b"\n\n")
        .ok_or("no end of header")?;
    let header = std::str::from_utf8(&bytes[..text_end]).map_err(|_| "a header not UTF-8")?;
    let mut lines = header.lines();
    if lines.next() != Some("megafs-times 1") {
        return Err("not a megafs times file of version 1".into());
    }
    let mut fields = HashMap::new();
    for line in lines {
        let (key, value) = line.split_once(' ').unwrap_or((line, ""));
        fields.insert(key, value);
    }
    let field = |name: &str| fields.get(name).copied().ok_or(format!("no {name}"));
    let oid = |name: &str| {
        let hex = field(name)?;
        ObjectId::from_hex(hex).map_err(|_| format!("{name}: not an object id: {hex}"))
    };
    let number = |name: &str| {
        let text = field(name)?;
        text.parse::<i64>()
            .map_err(|_| format!("{name}: not a number: {text}"))
    };
    let mut stamps = HashMap::new();
    for record in bytes[text_end + 2..].split(|&b| b == 0) {
        if record.is_empty() {
            continue;
        }
        let stamp = decode_stamp(record)?;
        stamps.insert(key_of(&stamp.path), stamp);
    }
    Ok(Times {
        identity: field("identity")?.to_string(),
        commit: oid("commit")?,
        root: oid("root")?,
        base: number("base")?,
        latest: number("latest")?,
        stamps,
    })
}

fn decode_stamp(record: &[u8]) -> Result<Stamp, String> {
    let bad = || format!("a bad stamp: {}", String::from_utf8_lossy(record));
    let mut parts = record.splitn(3, |&b| b == b' ');
    let time = parts.next().and_then(|t| std::str::from_utf8(t).ok());
    let oid = parts.next().and_then(|o| std::str::from_utf8(o).ok());
    let (Some(time), Some(oid), Some(path)) = (time, oid, parts.next()) else {
        return Err(bad());
    };
    let path = RepoPath::from_components(path.split(|&b| b == b'/'));
    Ok(Stamp {
        path,
        oid: ObjectId::from_hex(oid).map_err(|_| bad())?,
        time: time.parse().map_err(|_| bad())?,
    })
}

/// The times of `snapshot` for a mount whose stamps are kept in `file`: those kept, moved to
/// `snapshot` if they are of another commit; a mount's first times if there are none (or
/// they are of another repository). Kept again if they changed.
pub(super) async fn kept(
    loader: &Arc<Loader>,
    file: Option<&TimesFile>,
    snapshot: &Snapshot,
) -> Times {
    let Some(file) = file else {
        return Times::first("", snapshot);
    };
    let path = file.path.clone();
    let loaded = tokio::task::spawn_blocking(move || Times::load(&path))
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)));
    match loaded {
        Ok(Some(times)) if times.is_of(&file.identity) => {
            if times.commit() == snapshot.commit {
                return times;
            }
            moved(loader, &times, Some(file), snapshot).await
        }
        Ok(_) => {
            let times = Times::first(&file.identity, snapshot);
            save(&times, file).await;
            times
        }
        Err(error) => {
            // Whatever was handed out before is unknown: stamp everything as new now, so
            // that nothing changed can look older than what was built from it.
            warn!(path = %file.path.display(), %error, "the kept file times are unreadable; every file is stamped anew");
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            let times = Times::first(&file.identity, snapshot).restamped(&Snapshot {
                commit_time: now,
                root_body: None,
                ..*snapshot
            });
            save(&times, file).await;
            times
        }
    }
}

/// `times` moved to `snapshot` (kept in `file`): the paths that differ stamped, or, if the
/// trees cannot be compared in time, every path.
pub(super) async fn moved(
    loader: &Arc<Loader>,
    times: &Times,
    file: Option<&TimesFile>,
    snapshot: &Snapshot,
) -> Times {
    let budget = compare_budget(loader.wait_limit());
    let compared = tokio::time::timeout(
        budget,
        changes_between(loader, times.root(), snapshot.root_tree, MAX_COMPARED),
    )
    .await;
    let next = match compared {
        Ok(Ok(changes)) => times.moved(snapshot, &changes),
        Ok(Err(error)) => {
            warn!(%error, "cannot compare the commits' trees; every file is stamped anew");
            times.restamped(snapshot)
        }
        Err(_) => {
            warn!(
                ?budget,
                "comparing the commits' trees took too long; every file is stamped anew"
            );
            times.restamped(snapshot)
        }
    };
    if let Some(file) = file {
        save(&next, file).await;
    }
    next
}

/// Keeps `times` in `file`; a failure costs only the next mount's times (stamped anew).
async fn save(times: &Times, file: &TimesFile) {
    let (times, path) = (times.clone(), file.path.clone());
    let saved = tokio::task::spawn_blocking(move || times.save(&path))
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)));
    if let Err(error) = saved {
        warn!(path = %file.path.display(), %error, "cannot keep the file times");
    }
}

/// What differs between trees `old` and `new` (the roots of two commits), compared where
/// their ids differ; an error past `limit` entries. A directory whose old tree cannot be had
/// (gone from the cache and the server) counts as new, all of it.
pub(super) async fn changes_between(
    loader: &Arc<Loader>,
    old: ObjectId,
    new: ObjectId,
    limit: usize,
) -> Result<Vec<Change>, FsError> {
    let mut changes = Vec::new();
    let mut compared = 0usize;
    let mut pending = vec![(RepoPath::root(), Some(old), new)];
    while let Some((path, old, new)) = pending.pop() {
        if old == Some(new) {
            continue;
        }
        changes.push(Change::Now {
            path: path.clone(),
            oid: new,
        });
        let new_entries = loader.entries(&path, new).await?;
        let old_entries = match old {
            Some(old) => loader.entries(&path, old).await.ok(),
            None => None,
        };
        compared += new_entries.len() + old_entries.as_ref().map_or(0, Vec::len);
        if compared > limit {
            return Err(FsError::TooManyChanges(limit));
        }
        let before: HashMap<&[u8], (EntryKind, ObjectId)> = old_entries
            .iter()
            .flatten()
            .map(|e| (&e.name[..], (e.kind, e.oid)))
            .collect();
        let after: HashSet<&[u8]> = new_entries.iter().map(|e| &e.name[..]).collect();
        for entry in &new_entries {
            let child = path.join(&entry.name);
            match (before.get(&entry.name[..]), entry.kind) {
                (Some(&(kind, oid)), _) if kind == entry.kind && oid == entry.oid => {}
                (Some(&(EntryKind::Directory, oid)), EntryKind::Directory) => {
                    pending.push((child, Some(oid), entry.oid));
                }
                (was, EntryKind::Directory) => {
                    if was.is_some() {
                        changes.push(Change::Gone(child.clone()));
                    }
                    pending.push((child, None, entry.oid));
                }
                (was, _) => {
                    if was.is_some_and(|&(kind, _)| kind == EntryKind::Directory) {
                        changes.push(Change::Gone(child.clone()));
                    }
                    changes.push(Change::Now {
                        path: child,
                        oid: entry.oid,
                    });
                }
            }
        }
        for name in before.keys().filter(|name| !after.contains(*name)) {
            changes.push(Change::Gone(path.join(name)));
        }
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oid(byte: u8) -> ObjectId {
        ObjectId::from_bytes([byte; 20])
    }

    fn path(text: &str) -> RepoPath {
        RepoPath::from_components(text.split('/').map(str::as_bytes))
    }

    fn snapshot(commit: u8, time: i64) -> Snapshot {
        Snapshot {
            commit: oid(commit),
            root_tree: oid(commit + 100),
            commit_time: time,
            root_body: None,
        }
    }

    fn time(times: &Times, at: &str, object: u8) -> i64 {
        times.time_of(key_of(&path(at)), &oid(object))
    }

    #[test]
    fn unchanged_paths_keep_their_time_and_changed_ones_get_the_new_commits() {
        let first = Times::first("repo", &snapshot(1, 1000));
        assert_eq!(time(&first, "src/a.rs", 7), 1000);
        let second = first.moved(
            &snapshot(2, 2000),
            &[Change::Now {
                path: path("src/a.rs"),
                oid: oid(8),
            }],
        );
        assert_eq!(time(&second, "src/a.rs", 8), 2000);
        assert_eq!(time(&second, "src/b.rs", 9), 1000, "unchanged");
        // An older commit is still newer to make.
        let third = second.moved(
            &snapshot(3, 1500),
            &[Change::Now {
                path: path("src/a.rs"),
                oid: oid(7),
            }],
        );
        assert_eq!(time(&third, "src/a.rs", 7), 2001);
        assert_eq!(third.commit(), oid(3));
        // A stamp holds only for the object it was made for.
        assert_eq!(time(&third, "src/a.rs", 8), 1000);
    }

    #[test]
    fn a_gone_directory_takes_its_stamps_with_it() {
        let first = Times::first("repo", &snapshot(1, 1000));
        let now = |p: &str, o: u8| Change::Now {
            path: path(p),
            oid: oid(o),
        };
        let second = first.moved(
            &snapshot(2, 2000),
            &[now("dir/a", 2), now("dir/sub/b", 3), now("dirt", 4)],
        );
        let third = second.moved(&snapshot(3, 3000), &[Change::Gone(path("dir"))]);
        assert_eq!(third.stamps.len(), 1, "{:?}", third.stamps);
        assert_eq!(time(&third, "dirt", 4), 2000);
        assert_eq!(time(&third, "dir/a", 2), 1000);
    }

    #[test]
    fn stamps_are_kept_and_read_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("times/mount");
        assert_eq!(Times::load(&file).unwrap(), None);
        let odd = "a dir/ünï\ncødé \\ name";
        let times = Times::first("http://x/repo", &snapshot(1, 1000)).moved(
            &snapshot(2, 2000),
            &[
                Change::Now {
                    path: path(odd),
                    oid: oid(5),
                },
                Change::Now {
                    path: RepoPath::root(),
                    oid: oid(6),
                },
            ],
        );
        times.save(&file).unwrap();
        let back = Times::load(&file).unwrap().unwrap();
        assert_eq!(back, times);
        assert_eq!(time(&back, odd, 5), 2000);
        assert!(back.is_of("http://x/repo"));
        assert!(!back.is_of("http://x/other"));
    }

    #[test]
    fn a_damaged_file_is_an_error_not_a_guess() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("times");
        for bad in [
            &b"something else\n\n"[..],
            b"megafs-times 1\nidentity r\ncommit 12\nroot 00\nbase 1\nlatest 1\n\n",
            b"megafs-times 1\nidentity r\n",
        ] {
            std::fs::write(&file, bad).unwrap();
            assert!(
                Times::load(&file).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let good = Times::first("r", &snapshot(1, 5));
        let mut bytes = good.encode();
        bytes.extend_from_slice(b"12 nothex a/b\0");
        std::fs::write(&file, bytes).unwrap();
        assert!(Times::load(&file).is_err());
    }
}
