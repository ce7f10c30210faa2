//! Git object ids, git tree bodies, and verification of fetched bytes against their id.

use std::fmt;

use sha1::{Digest, Sha1};

/// A SHA-1 git object id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectId([u8; 20]);

/// The kinds of object megafs fetches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectKind {
    Blob,
    Tree,
    Commit,
}

impl ObjectKind {
    fn header_name(self) -> &'static str {
        match self {
            ObjectKind::Blob => "blob",
            ObjectKind::Tree => "tree",
            ObjectKind::Commit => "commit",
        }
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ObjectError {
    #[error("not a 40-digit hex object id: {0:?}")]
    BadId(String),
    #[error("malformed tree: {0}")]
    BadTree(String),
    #[error("{kind:?} {expected} does not match its content (content hashes to {actual})")]
    Mismatch {
        kind: ObjectKind,
        expected: ObjectId,
        actual: ObjectId,
    },
}

impl ObjectId {
    /// The id of the empty tree, whose body is empty.
    pub const EMPTY_TREE: ObjectId = ObjectId([
        0x4b, 0x82, 0x5d, 0xc6, 0x42, 0xcb, 0x6e, 0xb9, 0xa0, 0x60, 0xe5, 0x4b, 0xf8, 0xd6, 0x92,
        0x88, 0xfb, 0xee, 0x49, 0x04,
    ]);

    pub fn from_bytes(bytes: [u8; 20]) -> Self {
        ObjectId(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }

    /// Parses 40 lowercase or uppercase hex digits.
    pub fn from_hex(hex_str: &str) -> Result<Self, ObjectError> {
        let mut bytes = [0u8; 20];
        if hex_str.len() != 40 {
            return Err(ObjectError::BadId(hex_str.to_string()));
        }
        hex::decode_to_slice(hex_str, &mut bytes)
            .map_err(|_| ObjectError::BadId(hex_str.to_string()))?;
        Ok(ObjectId(bytes))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The id git gives to `content` stored as an object of `kind`.
    pub fn hash(kind: ObjectKind, content: &[u8]) -> ObjectId {
        let mut hasher = Sha1::new();
        hasher.update(kind.header_name().as_bytes());
        hasher.update(b" ");
        hasher.update(content.len().to_string().as_bytes());
        hasher.update(b"\0");
        hasher.update(content);
        ObjectId(hasher.finalize().into())
    }

    /// Checks that `content` is the object this id names.
    pub fn verify(&self, kind: ObjectKind, content: &[u8]) -> Result<(), ObjectError> {
        let actual = ObjectId::hash(kind, content);
        if actual == *self {
            Ok(())
        } else {
            Err(ObjectError::Mismatch {
                kind,
                expected: *self,
                actual,
            })
        }
    }
}

/// Hashes an object of known length as its bytes arrive, for content too big to hold.
pub struct ObjectHasher {
    hasher: Sha1,
}

impl ObjectHasher {
    pub fn new(kind: ObjectKind, len: u64) -> Self {
        let mut hasher = Sha1::new();
        hasher.update(kind.header_name().as_bytes());
        hasher.update(b" ");
        hasher.update(len.to_string().as_bytes());
        hasher.update(b"\0");
        ObjectHasher { hasher }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
    }

    pub fn finish(self) -> ObjectId {
        ObjectId(self.hasher.finalize().into())
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({})", self.to_hex())
    }
}

/// What a tree entry is, from its git mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    Directory,
    File,
    Executable,
    Symlink,
    /// A gitlink (mode 160000): shown as an empty directory.
    Submodule,
}

impl EntryKind {
    fn from_mode(mode: &[u8]) -> Option<Self> {
        Some(match mode {
            b"40000" | b"040000" => EntryKind::Directory,
            b"100644" | b"100664" => EntryKind::File,
            b"100755" => EntryKind::Executable,
            b"120000" => EntryKind::Symlink,
            b"160000" => EntryKind::Submodule,
            _ => return None,
        })
    }

    /// True for kinds that show as directories.
    pub fn is_dir(self) -> bool {
        matches!(self, EntryKind::Directory | EntryKind::Submodule)
    }
}

/// One entry of a git tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeEntry {
    pub name: Vec<u8>,
    pub kind: EntryKind,
    pub oid: ObjectId,
}

/// Parses a raw git tree body (`<mode> SP <name> NUL <20-byte id>`, repeated), refusing
/// anything that could not be a safe path component: such a tree is a server error.
pub fn parse_tree(body: &[u8]) -> Result<Vec<TreeEntry>, ObjectError> {
    let mut entries = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut rest = body;
    while !rest.is_empty() {
        let space = position(rest, b' ', "entry without a mode")?;
        let mode = &rest[..space];
        let kind = EntryKind::from_mode(mode).ok_or_else(|| {
            ObjectError::BadTree(format!("unknown mode {:?}", String::from_utf8_lossy(mode)))
        })?;
        rest = &rest[space + 1..];
        let nul = position(rest, 0, "entry name without terminator")?;
        let name = &rest[..nul];
        check_name(name)?;
        rest = &rest[nul + 1..];
        if rest.len() < 20 {
            return Err(ObjectError::BadTree("truncated object id".into()));
        }
        let mut oid = [0u8; 20];
        oid.copy_from_slice(&rest[..20]);
        rest = &rest[20..];
        if !seen.insert(name) {
            return Err(ObjectError::BadTree(format!(
                "duplicate entry {:?}",
                String::from_utf8_lossy(name)
            )));
        }
        entries.push(TreeEntry {
            name: name.to_vec(),
            kind,
            oid: ObjectId(oid),
        });
    }
    Ok(entries)
}

fn position(haystack: &[u8], needle: u8, what: &str) -> Result<usize, ObjectError> {
    haystack
        .iter()
        .position(|&b| b == needle)
        .ok_or_else(|| ObjectError::BadTree(what.to_string()))
}

fn check_name(name: &[u8]) -> Result<(), ObjectError> {
    let bad = name.is_empty()
        || name == b"."
        || name == b".."
        || name.len() > 255
        || name.contains(&b'/');
    if bad {
        return Err(ObjectError::BadTree(format!(
            "unsafe entry name {:?}",
            String::from_utf8_lossy(name)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(mode: &str, name: &[u8], oid: u8) -> Vec<u8> {
        let mut out = format!("{mode} ").into_bytes();
        out.extend_from_slice(name);
        out.push(0);
        out.extend_from_slice(&[oid; 20]);
        out
    }

    #[test]
    fn hashes_like_git() {
        // `git hash-object` of "hello world v2\n" (the fixture README).
        let oid = ObjectId::hash(ObjectKind::Blob, b"hello world v2\n");
        assert_eq!(oid.to_hex(), "533ba6aae425285855227a4a95c48e95553df491");
        assert_eq!(ObjectId::hash(ObjectKind::Tree, b""), ObjectId::EMPTY_TREE);
        assert_eq!(
            ObjectId::hash(ObjectKind::Blob, b"").to_hex(),
            "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
        );
    }

    #[test]
    fn hashing_in_pieces_is_hashing_at_once() {
        let content = b"some content, in three pieces";
        let mut hasher = ObjectHasher::new(ObjectKind::Blob, content.len() as u64);
        for piece in content.chunks(11) {
            hasher.update(piece);
        }
        assert_eq!(hasher.finish(), ObjectId::hash(ObjectKind::Blob, content));
    }

    #[test]
    fn verify_reports_mismatch() {
        let oid = ObjectId::hash(ObjectKind::Blob, b"right");
        assert!(oid.verify(ObjectKind::Blob, b"right").is_ok());
        assert!(matches!(
            oid.verify(ObjectKind::Blob, b"wrong"),
            Err(ObjectError::Mismatch { .. })
        ));
        // The same bytes as a tree are a different object.
        assert!(oid.verify(ObjectKind::Tree, b"right").is_err());
    }

    #[test]
    fn parses_every_mode() {
        let mut body = Vec::new();
        body.extend(entry("100644", b"a.txt", 1));
        body.extend(entry("100755", b"run.sh", 2));
        body.extend(entry("120000", b"link", 3));
        body.extend(entry("40000", b"dir", 4));
        body.extend(entry("160000", b"sub", 5));
        let entries = parse_tree(&body).expect("valid tree");
        let kinds: Vec<_> = entries.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                EntryKind::File,
                EntryKind::Executable,
                EntryKind::Symlink,
                EntryKind::Directory,
                EntryKind::Submodule
            ]
        );
        assert_eq!(entries[2].name, b"link");
        assert_eq!(entries[4].oid, ObjectId([5; 20]));
    }

    #[test]
    fn refuses_unsafe_trees() {
        for bad in [
            entry("100644", b"", 1),
            entry("100644", b".", 1),
            entry("100644", b"..", 1),
            entry("100644", b"a/b", 1),
            entry("100644", &[b'x'; 256], 1),
            entry("100600", b"odd-mode", 1),
            [entry("100644", b"twice", 1), entry("100644", b"twice", 2)].concat(),
            entry("100644", b"short", 1)[..20].to_vec(),
            b"100644 no-terminator".to_vec(),
        ] {
            assert!(parse_tree(&bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn parses_hex_strictly() {
        assert!(ObjectId::from_hex("533ba6aae425285855227a4a95c48e95553df491").is_ok());
        assert!(ObjectId::from_hex("533ba6a").is_err());
        assert!(ObjectId::from_hex("zz3ba6aae425285855227a4a95c48e95553df491").is_err());
    }
}
