//! The inodes of a mount. A listed directory numbers all its entries at once (a number is
//! never reused for another entry), but only inodes the kernel holds, and the directories
//! being listed, have a [`Node`]: the kernel's lookups are counted, and a node it has forgotten
//! is dropped, with its listing, so memory follows what the kernel keeps, not the size of the
//! tree. A number stays as long as the kernel holds its inode (as FUSE asks); entries of a
//! directory listed again after being forgotten get new ones. An entry costs its name, id,
//! kind and number; a node holds its name (shared with the listing), not its path, which is
//! rebuilt from the parents when needed.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::object::{EntryKind, ObjectId, TreeEntry};
use crate::repo_path::RepoPath;

pub const ROOT_INO: u64 = 1;

/// An inode in use: handed to the kernel, or a directory the daemon lists.
pub struct Node {
    pub parent: u64,
    /// Its name in its parent (empty for the root).
    pub name: Arc<[u8]>,
    pub kind: EntryKind,
    pub oid: ObjectId,
    /// A directory's entries once listed.
    pub listing: Option<Arc<Listing>>,
    /// The directory this one replaced at a refresh, whose unchanged entries keep their
    /// numbers when this one is listed.
    pub previous: Option<u64>,
    /// Lookups the kernel has not forgotten yet.
    lookups: u64,
}

/// One entry of a listed directory.
pub struct Entry {
    pub name: Arc<[u8]>,
    pub ino: u64,
    pub kind: EntryKind,
    pub oid: ObjectId,
}

/// A listed directory: entries in tree order, and their positions sorted by name (to look
/// names up without a second copy of them).
pub struct Listing {
    pub entries: Vec<Entry>,
    by_name: Vec<u32>,
    /// Its subdirectories' listings were sent for (see `ahead`).
    pub looked_ahead: AtomicBool,
}

impl Listing {
    fn new(entries: Vec<Entry>) -> Self {
        let mut by_name: Vec<u32> = (0..entries.len() as u32).collect();
        by_name.sort_unstable_by(|&a, &b| entries[a as usize].name.cmp(&entries[b as usize].name));
        Listing {
            entries,
            by_name,
            looked_ahead: AtomicBool::new(false),
        }
    }

    pub fn entry(&self, name: &[u8]) -> Option<&Entry> {
        let at = self
            .by_name
            .binary_search_by(|&i| self.entries[i as usize].name.as_ref().cmp(name))
            .ok()?;
        Some(&self.entries[self.by_name[at] as usize])
    }

    pub fn get(&self, name: &[u8]) -> Option<u64> {
        self.entry(name).map(|e| e.ino)
    }
}

pub struct InodeTable {
    nodes: HashMap<u64, Node>,
    next_ino: u64,
    /// Directories changed by a refresh, new number to old: a node made for the new one
    /// remembers the old one to reuse from.
    replaced: HashMap<u64, u64>,
}

impl InodeTable {
    pub fn new(root_tree: ObjectId) -> Self {
        let root = Node {
            parent: ROOT_INO,
            name: Arc::from(&b""[..]),
            kind: EntryKind::Directory,
            oid: root_tree,
            listing: None,
            previous: None,
            lookups: 0,
        };
        InodeTable {
            nodes: HashMap::from([(ROOT_INO, root)]),
            next_ino: ROOT_INO + 1,
            replaced: HashMap::new(),
        }
    }

    fn allocate(&mut self) -> u64 {
        let ino = self.next_ino;
        self.next_ino += 1;
        ino
    }

    /// Points the root at a new tree (a refresh): the old root's listing moves to a retired
    /// inode that the new listing reuses unchanged entries from. Returns the old listing.
    pub fn retire_root(&mut self, new_tree: ObjectId) -> Option<Arc<Listing>> {
        let retired_ino = self.allocate();
        let root = self.nodes.get_mut(&ROOT_INO)?;
        let old = Node {
            parent: ROOT_INO,
            name: Arc::from(&b""[..]),
            kind: root.kind,
            oid: root.oid,
            listing: root.listing.take(),
            previous: root.previous.take(),
            lookups: 0,
        };
        root.oid = new_tree;
        root.previous = Some(retired_ino);
        let listing = old.listing.clone();
        self.nodes.insert(retired_ino, old);
        listing
    }

    pub fn get(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    /// Nodes in use.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// The node of entry `name` in listed directory `dir`, made if it has none; its number.
    pub fn node_for(&mut self, dir: u64, name: &[u8]) -> Option<u64> {
        let listing = self.nodes.get(&dir)?.listing.clone()?;
        let entry = listing.entry(name)?;
        if let Some(node) = self.nodes.get_mut(&entry.ino) {
            node.parent = dir;
            return Some(entry.ino);
        }
        let node = Node {
            parent: dir,
            name: entry.name.clone(),
            kind: entry.kind,
            oid: entry.oid,
            // A submodule shows as an empty directory.
            listing: (entry.kind == EntryKind::Submodule).then(|| Arc::new(Listing::empty())),
            previous: self.replaced.get(&entry.ino).copied(),
            lookups: 0,
        };
        self.nodes.insert(entry.ino, node);
        Some(entry.ino)
    }

    /// The kernel was handed `ino` once more.
    pub fn remember(&mut self, ino: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            node.lookups += 1;
        }
    }

    /// The kernel forgot `count` of its lookups of `ino`; at none left, the node goes, with
    /// whatever below it the kernel does not hold (the kernel forgets children first).
    pub fn forget(&mut self, ino: u64, count: u64) {
        let Some(node) = self.nodes.get_mut(&ino) else {
            return;
        };
        node.lookups = node.lookups.saturating_sub(count);
        if node.lookups == 0 && ino != ROOT_INO {
            self.drop_unused(ino);
            // A map keeps its peak capacity: after a big walk is forgotten, give it back
            // (rarely: only once it is mostly empty, so the rehash is paid for).
            if self.nodes.capacity() > 4 * self.nodes.len() + 1024 {
                self.nodes.shrink_to_fit();
            }
        }
    }

    /// Removes `ino` and the unheld nodes under it.
    fn drop_unused(&mut self, ino: u64) {
        let mut doomed = vec![ino];
        while let Some(ino) = doomed.pop() {
            let Some(node) = self.nodes.remove(&ino) else {
                continue;
            };
            for entry in node.listing.iter().flat_map(|l| l.entries.iter()) {
                let unheld = self
                    .nodes
                    .get(&entry.ino)
                    .is_some_and(|child| child.lookups == 0 && child.parent == ino);
                if unheld {
                    doomed.push(entry.ino);
                }
            }
        }
    }

    /// The repository path of `ino`.
    pub fn path_of(&self, ino: u64) -> RepoPath {
        let mut names = Vec::new();
        let mut at = ino;
        // Bounded: a parent chain never loops, but a bug should not hang a request.
        for _ in 0..4096 {
            if at == ROOT_INO {
                break;
            }
            let Some(node) = self.get(at) else { break };
            names.push(&node.name[..]);
            at = node.parent;
        }
        RepoPath::from_components(names.into_iter().rev())
    }

    /// Records the entries of directory `dir`, numbering each. Does nothing if the directory
    /// is already listed (two fetches raced), so numbers stay stable.
    pub fn add_listing(&mut self, dir: u64, entries: Vec<TreeEntry>) {
        let Some(node) = self.get(dir) else { return };
        if node.listing.is_some() {
            return;
        }
        let previous = node
            .previous
            .and_then(|p| self.get(p))
            .and_then(|p| p.listing.clone());
        let mut listed = Vec::with_capacity(entries.len());
        for entry in entries {
            let name: Arc<[u8]> = Arc::from(entry.name);
            let old = previous.as_ref().and_then(|old| old.entry(&name));
            // Unchanged since the commit before: the same number, with all it has loaded.
            let ino = match old {
                Some(old) if old.oid == entry.oid && old.kind == entry.kind => {
                    if let Some(node) = self.nodes.get_mut(&old.ino) {
                        node.parent = dir;
                    }
                    old.ino
                }
                _ => {
                    let ino = self.allocate();
                    // A changed directory remembers its old self, to reuse from it in turn.
                    if let Some(old) = old.filter(|o| o.kind.is_dir() && entry.kind.is_dir()) {
                        self.replaced.insert(ino, old.ino);
                    }
                    ino
                }
            };
            listed.push(Entry {
                name,
                ino,
                kind: entry.kind,
                oid: entry.oid,
            });
        }
        if let Some(node) = self.nodes.get_mut(&dir) {
            node.listing = Some(Arc::new(Listing::new(listed)));
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

    fn listing_of(table: &InodeTable, dir: u64) -> Arc<Listing> {
        table.get(dir).unwrap().listing.clone().unwrap()
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
        let root = listing_of(&table, ROOT_INO);
        assert_eq!(root.get(b"src"), Some(2));
        assert_eq!(root.get(b"a.txt"), Some(3));
        assert_eq!(table.len(), 1, "listing makes no nodes");
        let src = table.node_for(ROOT_INO, b"src").unwrap();
        table.add_listing(src, vec![entry("main.rs", EntryKind::File, 3)]);
        let main = table.node_for(src, b"main.rs").unwrap();
        assert_eq!(table.path_of(main).as_bytes(), b"src/main.rs");
        assert!(table.path_of(ROOT_INO).is_root());
        assert_eq!(table.get(main).unwrap().parent, src);
        // Listing again changes nothing.
        table.add_listing(ROOT_INO, vec![entry("other", EntryKind::File, 9)]);
        assert_eq!(listing_of(&table, ROOT_INO).entries.len(), 2);
        assert!(table.node_for(ROOT_INO, b"nope").is_none());
        assert!(table.get(99).is_none());
    }

    #[test]
    fn names_are_found_whatever_their_order() {
        let mut table = InodeTable::new(ObjectId::EMPTY_TREE);
        let names = ["b", "a.txt", "a", "c-d", "c", "Z"];
        let entries = names.iter().map(|n| entry(n, EntryKind::File, 1)).collect();
        table.add_listing(ROOT_INO, entries);
        let root = listing_of(&table, ROOT_INO);
        for (i, name) in names.iter().enumerate() {
            assert_eq!(root.get(name.as_bytes()), Some(i as u64 + 2), "{name}");
        }
    }

    #[test]
    fn forgotten_nodes_go_and_come_back_with_their_numbers() {
        let mut table = InodeTable::new(ObjectId::EMPTY_TREE);
        table.add_listing(ROOT_INO, vec![entry("dir", EntryKind::Directory, 1)]);
        let dir = table.node_for(ROOT_INO, b"dir").unwrap();
        table.remember(dir);
        table.add_listing(dir, vec![entry("f", EntryKind::File, 2)]);
        let f = table.node_for(dir, b"f").unwrap();
        table.remember(f);
        table.remember(f);
        assert_eq!(table.len(), 3);
        table.forget(f, 1);
        assert!(table.get(f).is_some(), "one lookup is still held");
        table.forget(f, 1);
        assert!(table.get(f).is_none());
        // An unheld node under a forgotten directory goes with it.
        table.node_for(dir, b"f").unwrap();
        table.forget(dir, 1);
        assert_eq!(table.len(), 1, "only the root is left");
        table.forget(ROOT_INO, 10);
        assert!(table.get(ROOT_INO).is_some(), "the root stays");
        // Looked up again, the same numbers.
        assert_eq!(table.node_for(ROOT_INO, b"dir"), Some(dir));
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
        let changed = table.node_for(ROOT_INO, b"changed").unwrap();
        table.add_listing(
            changed,
            vec![
                entry("deep-same", EntryKind::Directory, 7),
                entry("f", EntryKind::File, 8),
            ],
        );
        let deep_same = listing_of(&table, changed).get(b"deep-same").unwrap();
        let gone = table.node_for(ROOT_INO, b"gone").unwrap();
        let old = table
            .retire_root(ObjectId::from_bytes([9; 20]))
            .expect("old listing");
        assert_eq!(old.get(b"gone"), Some(gone));
        table.add_listing(
            ROOT_INO,
            vec![
                entry("same", EntryKind::Directory, 1),
                entry("changed", EntryKind::Directory, 5),
                entry("new", EntryKind::File, 6),
            ],
        );
        let root = listing_of(&table, ROOT_INO);
        assert_eq!(root.get(b"same"), Some(2), "unchanged keeps its number");
        let new_changed = table.node_for(ROOT_INO, b"changed").unwrap();
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
        let listing = listing_of(&table, new_changed);
        assert_eq!(listing.get(b"deep-same"), Some(deep_same));
        assert_ne!(listing.get(b"f"), Some(8));
        // The old file node still holds its old content id (open files read it).
        assert_eq!(table.get(gone).unwrap().oid, ObjectId::from_bytes([3; 20]));
    }

    #[test]
    fn submodules_are_empty_directories() {
        let mut table = InodeTable::new(ObjectId::EMPTY_TREE);
        table.add_listing(ROOT_INO, vec![entry("sub", EntryKind::Submodule, 1)]);
        let sub = table.node_for(ROOT_INO, b"sub").unwrap();
        assert!(listing_of(&table, sub).entries.is_empty());
    }
}
