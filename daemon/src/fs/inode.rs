//! The table of inodes a mount has handed to the kernel. Numbers are assigned when a directory
//! is first listed and never change or get reused for the mount's life. A node is kept small
//! (a tree of a million entries holds a million of them): it holds its name, shared with its
//! parent's listing, not its path, which is rebuilt from the parents when needed.

use std::sync::Arc;

use crate::object::{EntryKind, ObjectId, TreeEntry};

pub const ROOT_INO: u64 = 1;

pub struct Node {
    pub parent: u64,
    /// The entry's name in its parent (empty for the root).
    pub name: Arc<[u8]>,
    pub kind: EntryKind,
    pub oid: ObjectId,
    /// Known size of a file's or symlink's blob.
    pub size: Option<u64>,
    /// A directory's entries once listed.
    pub listing: Option<Arc<Listing>>,
    /// The directory this one replaced at a refresh, whose unchanged entries keep their
    /// inode numbers when this one is listed.
    pub previous: Option<u64>,
}

/// A listed directory: entries in tree order, and their positions sorted by name (to look
/// names up without a second copy of them).
pub struct Listing {
    pub entries: Vec<(Arc<[u8]>, u64)>,
    by_name: Vec<u32>,
}

impl Listing {
    fn new(entries: Vec<(Arc<[u8]>, u64)>) -> Self {
        let mut by_name: Vec<u32> = (0..entries.len() as u32).collect();
        by_name.sort_unstable_by(|&a, &b| entries[a as usize].0.cmp(&entries[b as usize].0));
        Listing { entries, by_name }
    }

    pub fn get(&self, name: &[u8]) -> Option<u64> {
        let at = self
            .by_name
            .binary_search_by(|&i| self.entries[i as usize].0.as_ref().cmp(name))
            .ok()?;
        Some(self.entries[self.by_name[at] as usize].1)
    }
}

pub struct InodeTable {
    /// Node `ino` lives at index `ino - 1`.
    nodes: Vec<Node>,
}

impl InodeTable {
    pub fn new(root_tree: ObjectId) -> Self {
        InodeTable {
            nodes: vec![Node {
                parent: ROOT_INO,
                name: Arc::from(&b""[..]),
                kind: EntryKind::Directory,
                oid: root_tree,
                size: None,
                listing: None,
                previous: None,
            }],
        }
    }

    /// Points the root at a new tree (a refresh): the old root's listing moves to a retired
    /// inode that the new listing reuses unchanged entries from. Returns the old listing.
    pub fn retire_root(&mut self, new_tree: ObjectId) -> Option<Arc<Listing>> {
        let retired_ino = self.nodes.len() as u64 + 1;
        let root = self.get_mut(ROOT_INO)?;
        let old = Node {
            parent: ROOT_INO,
            name: Arc::from(&b""[..]),
            kind: root.kind,
            oid: root.oid,
            size: None,
            listing: root.listing.take(),
            previous: root.previous.take(),
        };
        root.oid = new_tree;
        root.previous = Some(retired_ino);
        let listing = old.listing.clone();
        self.nodes.push(old);
        listing
    }

    pub fn get(&self, ino: u64) -> Option<&Node> {
        let index = usize::try_from(ino.checked_sub(1)?).ok()?;
        self.nodes.get(index)
    }

    pub fn get_mut(&mut self, ino: u64) -> Option<&mut Node> {
        let index = usize::try_from(ino.checked_sub(1)?).ok()?;
        self.nodes.get_mut(index)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// The repository-relative path of `ino`, `/`-separated, empty for the root.
    pub fn path_of(&self, ino: u64) -> String {
        let mut names = Vec::new();
        let mut at = ino;
        // Bounded: a parent chain never loops, but a bug should not hang a request.
        for _ in 0..4096 {
            if at == ROOT_INO {
                break;
            }
            let Some(node) = self.get(at) else { break };
            names.push(String::from_utf8_lossy(&node.name).into_owned());
            at = node.parent;
        }
        names.reverse();
        names.join("/")
    }

    /// Records the entries of directory `dir`, giving each a new inode. Does nothing if the
    /// directory is already listed (two fetches raced), so numbers stay stable.
    pub fn add_listing(&mut self, dir: u64, entries: Vec<TreeEntry>) {
        let Some(parent) = self.get(dir) else { return };
        if parent.listing.is_some() {
            return;
        }
        let previous = parent
            .previous
            .and_then(|p| self.get(p))
            .and_then(|p| p.listing.clone());
        let mut listed = Vec::with_capacity(entries.len());
        for entry in entries {
            let name: Arc<[u8]> = Arc::from(entry.name);
            // Unchanged since the commit before: the same inode, with all it has loaded.
            let reused = previous
                .as_ref()
                .and_then(|old| old.get(&name))
                .filter(|&old| {
                    self.get(old)
                        .is_some_and(|n| n.oid == entry.oid && n.kind == entry.kind)
                });
            if let Some(ino) = reused {
                if let Some(node) = self.get_mut(ino) {
                    node.parent = dir;
                }
                listed.push((name, ino));
                continue;
            }
            // A changed directory remembers its old self, to reuse from it in turn.
            let replaced = previous
                .as_ref()
                .and_then(|old| old.get(&name))
                .filter(|&old| {
                    self.get(old)
                        .is_some_and(|n| n.kind.is_dir() && entry.kind.is_dir())
                });
            let ino = self.nodes.len() as u64 + 1;
            self.nodes.push(Node {
                parent: dir,
                name: name.clone(),
                kind: entry.kind,
                oid: entry.oid,
                size: None,
                // A submodule shows as an empty directory.
                listing: (entry.kind == EntryKind::Submodule).then(|| Arc::new(Listing::empty())),
                previous: replaced,
            });
            listed.push((name, ino));
        }
        if let Some(parent) = self.get_mut(dir) {
            parent.listing = Some(Arc::new(Listing::new(listed)));
        }
    }
}

impl Listing {
    fn empty() -> Self {
        Listing::new(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, kind: EntryKind, byte: u8) -> TreeEntry {
        TreeEntry {
            name: name.as_bytes().to_vec(),
            kind,
            oid: ObjectId::from_bytes([byte; 20]),
        }
    }

    #[test]
    fn listing_assigns_stable_numbers_and_paths() {
        let mut table = InodeTable::new(ObjectId::EMPTY_TREE);
        table.add_listing(
            ROOT_INO,
            vec![
                entry("src", EntryKind::Directory, 1),
                entry("a.txt", EntryKind::File, 2),
            ],
        );
        let root = table.get(ROOT_INO).unwrap().listing.clone().unwrap();
        let src = root.get(b"src").unwrap();
        assert_eq!(src, 2);
        assert_eq!(root.get(b"a.txt"), Some(3));
        table.add_listing(src, vec![entry("main.rs", EntryKind::File, 3)]);
        let main = table
            .get(src)
            .unwrap()
            .listing
            .clone()
            .unwrap()
            .get(b"main.rs")
            .unwrap();
        assert_eq!(table.path_of(main), "src/main.rs");
        assert_eq!(table.path_of(ROOT_INO), "");
        assert_eq!(table.get(main).unwrap().parent, src);
        // Listing again changes nothing.
        table.add_listing(ROOT_INO, vec![entry("other", EntryKind::File, 9)]);
        assert_eq!(table.len(), 4);
        assert!(table.get(0).is_none());
        assert!(table.get(99).is_none());
    }

    #[test]
    fn a_new_root_keeps_the_numbers_of_what_did_not_change() {
        let mut table = InodeTable::new(ObjectId::EMPTY_TREE);
        table.add_listing(
            ROOT_INO,
            vec![
                entry("same", EntryKind::Directory, 1),
                entry("changed", EntryKind::Directory, 2),
                entry("gone", EntryKind::File, 3),
            ],
        );
        let changed = 3;
        table.add_listing(
            changed,
            vec![
                entry("deep-same", EntryKind::Directory, 7),
                entry("f", EntryKind::File, 8),
            ],
        );
        let deep_same = table
            .get(changed)
            .unwrap()
            .listing
            .clone()
            .unwrap()
            .get(b"deep-same")
            .unwrap();
        let old = table
            .retire_root(ObjectId::from_bytes([9; 20]))
            .expect("old listing");
        assert_eq!(old.get(b"gone"), Some(4));
        table.add_listing(
            ROOT_INO,
            vec![
                entry("same", EntryKind::Directory, 1),
                entry("changed", EntryKind::Directory, 5),
                entry("new", EntryKind::File, 6),
            ],
        );
        let root = table.get(ROOT_INO).unwrap().listing.clone().unwrap();
        assert_eq!(root.get(b"same"), Some(2), "unchanged keeps its number");
        let new_changed = root.get(b"changed").unwrap();
        assert_ne!(new_changed, changed, "changed gets a new number");
        assert!(root.get(b"gone").is_none());
        // Deeper, unchanged directories under a changed one keep theirs too.
        table.add_listing(
            new_changed,
            vec![
                entry("deep-same", EntryKind::Directory, 7),
                entry("f", EntryKind::File, 10),
            ],
        );
        let listing = table.get(new_changed).unwrap().listing.clone().unwrap();
        assert_eq!(listing.get(b"deep-same"), Some(deep_same));
        assert_ne!(listing.get(b"f"), Some(8));
        // The old file node still holds its old content id (open files read it).
        assert_eq!(table.get(4).unwrap().oid, ObjectId::from_bytes([3; 20]));
    }

    #[test]
    fn submodules_are_empty_directories() {
        let mut table = InodeTable::new(ObjectId::EMPTY_TREE);
        table.add_listing(ROOT_INO, vec![entry("sub", EntryKind::Submodule, 1)]);
        let sub = table.get(2).unwrap();
        assert!(sub.listing.as_ref().unwrap().entries.is_empty());
    }
}
