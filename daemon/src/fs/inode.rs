//! The inodes of a mount. A listed directory numbers all its entries at once, but only inodes
//! the kernel holds, and the directories being listed, have a [`Node`]: the kernel's lookups
//! are counted, and a node it has forgotten is dropped, with its listing, so memory follows
//! what the kernel keeps, not the size of the tree. An entry costs its name, id, kind and
//! number; a node holds its name (shared with the listing), not its path, which is rebuilt
//! from the parents when needed.
//!
//! A number is a hash of the entry's path, kind and object id, so a path whose object did not
//! change keeps its number when its directory is listed again after the kernel forgot it,
//! across a refresh and across remounts: tools that key on `st_ino` (`#pragma once`, rsync's
//! hard links, find's loop check) see one file. A number already held by another entry (a
//! hash collision, about once in 10^8 pairs) is probed past, so numbers stay unique.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;

use crate::object::{EntryKind, ObjectId, TreeEntry};
use crate::repo_path::RepoPath;

pub const ROOT_INO: u64 = 1;

/// Numbers made of hashes lie in [HASHED, 2 * HASHED): under 2^48, so that overlayfs (a
/// workspace's) has high bits to spare for its own numbering (xino), and far above the
/// root's.
const HASHED: u64 = 1 << 47;

/// The key of the root's path, which every other path's key is made from.
const ROOT_KEY: u64 = 0;

/// The key of path `parent/name`, from its parent's.
fn path_key(parent: u64, name: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    parent.hash(&mut hasher);
    name.hash(&mut hasher);
    hasher.finish()
}

/// The key of `path`, as its node has it.
pub fn key_of(path: &RepoPath) -> u64 {
    path.components().fold(ROOT_KEY, path_key)
}

/// The number of an entry at the path of `key`, its `attempt`th choice (0 unless taken).
fn hashed_number(key: u64, kind: EntryKind, oid: &ObjectId, attempt: u32) -> u64 {
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    (kind as u8).hash(&mut hasher);
    oid.hash(&mut hasher);
    attempt.hash(&mut hasher);
    HASHED + hasher.finish() % HASHED
}

/// An inode in use: handed to the kernel, or a directory the daemon lists.
pub struct Node {
    pub parent: u64,
    /// Its name in its parent (empty for the root).
    pub name: Arc<[u8]>,
    pub kind: EntryKind,
    pub oid: ObjectId,
    /// A directory's entries once listed.
    pub listing: Option<Arc<Listing>>,
    /// Its path's key, which its number and its entries' are made from.
    key: u64,
    /// Lookups the kernel has not forgotten yet.
    lookups: u64,
}

impl Node {
    /// Its path's key (see [`key_of`]).
    pub fn key(&self) -> u64 {
        self.key
    }
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
    /// When the kernel last read it or asked for its files' sizes (see `MountFs::note_walk`;
    /// 0: never).
    pub visited: AtomicU64,
    /// A walk going down the tree came through it (see `MountFs::note_walk`).
    pub in_walk: AtomicBool,
    /// A walk's read-ahead of its small files was sent for (see `MountFs::read_ahead`).
    pub read_ahead: AtomicBool,
}

impl Listing {
    fn new(entries: Vec<Entry>) -> Self {
        let mut by_name: Vec<u32> = (0..entries.len() as u32).collect();
        by_name.sort_unstable_by(|&a, &b| entries[a as usize].name.cmp(&entries[b as usize].name));
        Listing {
            entries,
            by_name,
            looked_ahead: AtomicBool::new(false),
            visited: AtomicU64::new(0),
            in_walk: AtomicBool::new(false),
            read_ahead: AtomicBool::new(false),
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

/// The nodes, by number: a slab of nodes and a map from number to slot. A map holding the
/// nodes themselves would keep a node-sized bucket for every slot of its table, which is up
/// to twice the nodes held (a million held inodes cost 170 MB that way, 110 MB this way).
#[derive(Default)]
struct Nodes {
    slots: Vec<Option<Node>>,
    free: Vec<u32>,
    index: HashMap<u64, u32>,
}

impl Nodes {
    fn get(&self, ino: &u64) -> Option<&Node> {
        self.slots.get(*self.index.get(ino)? as usize)?.as_ref()
    }

    fn get_mut(&mut self, ino: &u64) -> Option<&mut Node> {
        let slot = *self.index.get(ino)? as usize;
        self.slots.get_mut(slot)?.as_mut()
    }

    fn insert(&mut self, ino: u64, node: Node) {
        if let Some(&slot) = self.index.get(&ino) {
            self.slots[slot as usize] = Some(node);
            return;
        }
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some(node);
                slot
            }
            None => {
                self.slots.push(Some(node));
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(ino, slot);
    }

    fn remove(&mut self, ino: &u64) -> Option<Node> {
        let slot = self.index.remove(ino)?;
        let node = self.slots.get_mut(slot as usize)?.take();
        self.free.push(slot);
        node
    }

    fn len(&self) -> usize {
        self.index.len()
    }

    /// After a big walk was forgotten, gives the memory back: rarely (only once the slab is
    /// mostly empty, so the copy is paid for), moving the nodes left into a slab their size.
    fn shrink_if_mostly_empty(&mut self) {
        if self.slots.len() <= 4 * self.index.len() + 1024 {
            return;
        }
        let mut slots = Vec::with_capacity(self.index.len());
        for slot in self.index.values_mut() {
            slots.push(self.slots[*slot as usize].take());
            *slot = (slots.len() - 1) as u32;
        }
        self.slots = slots;
        self.free = Vec::new();
        self.index.shrink_to_fit();
    }
}

pub struct InodeTable {
    nodes: Nodes,
    /// Entries whose listed number another entry's node took first (path key and id to the
    /// number their node has instead): hash collisions across listings, so nearly always empty.
    moved: HashMap<(u64, ObjectId), u64>,
}

impl InodeTable {
    pub fn new(root_tree: ObjectId) -> Self {
        let root = Node {
            parent: ROOT_INO,
            name: Arc::from(&b""[..]),
            kind: EntryKind::Directory,
            oid: root_tree,
            listing: None,
            key: ROOT_KEY,
            lookups: 0,
        };
        InodeTable {
            nodes: {
                let mut nodes = Nodes::default();
                nodes.insert(ROOT_INO, root);
                nodes
            },
            moved: HashMap::new(),
        }
    }

    /// A number for an entry at the path of `key`: its hash, or the next choice where that is
    /// held by another entry's node or already `taken` in the listing being made.
    fn number(&self, key: u64, kind: EntryKind, oid: &ObjectId, taken: &HashSet<u64>) -> u64 {
        let mut attempt = 0;
        loop {
            let ino = hashed_number(key, kind, oid, attempt);
            let free = match self.nodes.get(&ino) {
                Some(node) => node.key == key && node.kind == kind && node.oid == *oid,
                None => true,
            };
            if free && !taken.contains(&ino) {
                return ino;
            }
            attempt += 1;
        }
    }

    /// Points the root at a new tree (a refresh) and returns its old listing. Nodes the kernel
    /// still holds keep their paths (their parents are unchanged); entries that did not change
    /// get their numbers, and their nodes, back when the new root is listed.
    pub fn retire_root(&mut self, new_tree: ObjectId) -> Option<Arc<Listing>> {
        let root = self.nodes.get_mut(&ROOT_INO)?;
        root.oid = new_tree;
        root.listing.take()
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
        let parent = self.nodes.get(&dir)?;
        let listing = parent.listing.clone()?;
        let entry = listing.entry(name)?;
        let key = path_key(parent.key, &entry.name);
        let mut ino = entry.ino;
        if let Some(&moved) = self.moved.get(&(key, entry.oid)) {
            ino = moved;
        }
        match self.nodes.get_mut(&ino) {
            Some(node) if node.key == key && node.kind == entry.kind && node.oid == entry.oid => {
                node.parent = dir;
                return Some(ino);
            }
            Some(_) => {
                // Another listing's entry hashed to the same number and took it first.
                ino = self.number(key, entry.kind, &entry.oid, &HashSet::new());
                self.moved.insert((key, entry.oid), ino);
            }
            None => {}
        }
        let node = Node {
            parent: dir,
            name: entry.name.clone(),
            kind: entry.kind,
            oid: entry.oid,
            // A submodule shows as an empty directory.
            listing: (entry.kind == EntryKind::Submodule).then(|| Arc::new(Listing::empty())),
            key,
            lookups: 0,
        };
        self.nodes.insert(ino, node);
        Some(ino)
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
            self.nodes.shrink_if_mostly_empty();
        }
    }

    /// Removes `ino` and the unheld nodes under it.
    fn drop_unused(&mut self, ino: u64) {
        let mut doomed = vec![ino];
        while let Some(ino) = doomed.pop() {
            let Some(node) = self.nodes.remove(&ino) else {
                continue;
            };
            if !self.moved.is_empty() {
                self.moved.retain(|_, moved| *moved != ino);
            }
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
        let dir_key = node.key;
        let mut taken = HashSet::with_capacity(entries.len());
        let mut listed = Vec::with_capacity(entries.len());
        for entry in entries {
            let name: Arc<[u8]> = Arc::from(entry.name);
            let key = path_key(dir_key, &name);
            let ino = self.number(key, entry.kind, &entry.oid, &taken);
            taken.insert(ino);
            // Unchanged since the commit before a refresh: its node, with all it has loaded,
            // is this directory's now.
            if let Some(node) = self.nodes.get_mut(&ino) {
                node.parent = dir;
            }
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
        let (src, a) = (root.get(b"src").unwrap(), root.get(b"a.txt").unwrap());
        assert_ne!(src, a);
        assert!((HASHED..2 * HASHED).contains(&src), "{src:#x}");
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
            assert_eq!(
                root.get(name.as_bytes()),
                Some(root.entries[i].ino),
                "{name}"
            );
        }
    }

    #[test]
    fn a_path_and_object_number_the_same_in_every_table() {
        let tree = |table: &mut InodeTable| {
            table.add_listing(
                ROOT_INO,
                vec![
                    entry("dir", EntryKind::Directory, 1),
                    entry("other", EntryKind::Directory, 1),
                ],
            );
            let dir = table.node_for(ROOT_INO, b"dir").unwrap();
            table.add_listing(dir, vec![entry("f", EntryKind::File, 2)]);
            (dir, table.node_for(dir, b"f").unwrap())
        };
        let mut first = InodeTable::new(ObjectId::EMPTY_TREE);
        let mut second = InodeTable::new(ObjectId::EMPTY_TREE);
        assert_eq!(
            tree(&mut first),
            tree(&mut second),
            "a remount numbers alike"
        );
        // The same object elsewhere, or the same path with another object or kind, differ.
        let root = listing_of(&first, ROOT_INO);
        assert_ne!(root.get(b"dir"), root.get(b"other"));
        let mut changed = InodeTable::new(ObjectId::EMPTY_TREE);
        changed.add_listing(ROOT_INO, vec![entry("dir", EntryKind::Directory, 3)]);
        assert_ne!(listing_of(&changed, ROOT_INO).get(b"dir"), root.get(b"dir"));
        let mut symlink = InodeTable::new(ObjectId::EMPTY_TREE);
        symlink.add_listing(ROOT_INO, vec![entry("dir", EntryKind::Symlink, 1)]);
        assert_ne!(listing_of(&symlink, ROOT_INO).get(b"dir"), root.get(b"dir"));
    }

    #[test]
    fn a_number_held_by_another_entry_is_probed_past() {
        let mut table = InodeTable::new(ObjectId::EMPTY_TREE);
        table.add_listing(
            ROOT_INO,
            vec![
                entry("a", EntryKind::Directory, 1),
                entry("b", EntryKind::Directory, 2),
            ],
        );
        let a = table.node_for(ROOT_INO, b"a").unwrap();
        let b = table.node_for(ROOT_INO, b"b").unwrap();
        table.add_listing(a, vec![entry("x", EntryKind::File, 3)]);
        // Force a collision: b's entry y is listed with the number a's x has.
        table.add_listing(b, vec![entry("y", EntryKind::File, 4)]);
        let x_ino = listing_of(&table, a).get(b"x").unwrap();
        let listing = Listing::new(vec![Entry {
            name: Arc::from(&b"y"[..]),
            ino: x_ino,
            kind: EntryKind::File,
            oid: ObjectId::from_bytes([4; 20]),
        }]);
        table.nodes.get_mut(&b).unwrap().listing = Some(Arc::new(listing));
        let x = table.node_for(a, b"x").unwrap();
        let y = table.node_for(b, b"y").unwrap();
        assert_eq!(x, x_ino);
        assert_ne!(y, x, "y's node gets a number of its own");
        assert_eq!(table.node_for(b, b"y"), Some(y), "and keeps it");
        assert_eq!(table.path_of(x).as_bytes(), b"a/x");
        assert_eq!(table.path_of(y).as_bytes(), b"b/y");
        // Within one listing, a number taken is not handed out twice.
        let (key, oid) = (path_key(ROOT_KEY, b"z"), ObjectId::from_bytes([5; 20]));
        let first = hashed_number(key, EntryKind::File, &oid, 0);
        let taken = HashSet::from([first]);
        let second = table.number(key, EntryKind::File, &oid, &taken);
        assert_ne!(second, first);
        assert!((HASHED..2 * HASHED).contains(&second));
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
        assert_eq!(
            root.get(b"same"),
            old.get(b"same"),
            "unchanged keeps its number"
        );
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
    fn the_slab_of_nodes_reuses_slots_and_gives_memory_back() {
        let node = |byte: u8| Node {
            parent: ROOT_INO,
            name: Arc::from(&b"n"[..]),
            kind: EntryKind::File,
            oid: ObjectId::from_bytes([byte; 20]),
            listing: None,
            key: 0,
            lookups: 0,
        };
        let mut nodes = Nodes::default();
        for ino in 0..5000u64 {
            nodes.insert(ino, node((ino % 250) as u8));
        }
        for ino in 3..5000u64 {
            assert!(nodes.remove(&ino).is_some());
        }
        assert!(nodes.remove(&7).is_none(), "gone already");
        nodes.insert(9000, node(1));
        assert_eq!(nodes.slots.len(), 5000, "a free slot was reused");
        nodes.shrink_if_mostly_empty();
        assert_eq!((nodes.len(), nodes.slots.len()), (4, 4));
        for ino in [0, 1, 2, 9000] {
            assert!(nodes.get(&ino).is_some(), "{ino} kept");
        }
        assert_eq!(
            nodes.get(&2).map(|n| n.oid),
            Some(ObjectId::from_bytes([2; 20]))
        );
        nodes.get_mut(&9000).expect("held").lookups = 3;
        assert_eq!(nodes.get(&9000).map(|n| n.lookups), Some(3));
    }

    #[test]
    fn refreshes_leave_no_old_roots_behind() {
        let mut table = InodeTable::new(ObjectId::EMPTY_TREE);
        let listing = |byte: u8| vec![entry("dir", EntryKind::Directory, byte)];
        table.add_listing(ROOT_INO, listing(1));
        // A node the kernel holds under the first root keeps that root.
        let held = table.node_for(ROOT_INO, b"dir").unwrap();
        table.remember(held);
        for byte in 2..10 {
            table.retire_root(ObjectId::from_bytes([byte; 20]));
            table.add_listing(ROOT_INO, listing(byte));
        }
        // The root and the held node: refreshes leave nothing behind.
        assert_eq!(table.len(), 2);
        assert_eq!(
            table.path_of(held).as_bytes(),
            b"dir",
            "its path still resolves"
        );
        assert_eq!(
            table.get(held).map(|n| n.oid),
            Some(ObjectId::from_bytes([1; 20]))
        );
        table.forget(held, 1);
        assert_eq!(table.len(), 1, "only the root");
    }

    #[test]
    fn submodules_are_empty_directories() {
        let mut table = InodeTable::new(ObjectId::EMPTY_TREE);
        table.add_listing(ROOT_INO, vec![entry("sub", EntryKind::Submodule, 1)]);
        let sub = table.node_for(ROOT_INO, b"sub").unwrap();
        assert!(listing_of(&table, sub).entries.is_empty());
    }
}
