//! What the shared cache holds for each mount, for `mega-fuse du`: the cached objects its
//! commit reaches, the ones other mounts reach too (counted once, shown as shared), and its
//! listing record. A cached object is found from the mount's root tree and the trees its
//! listing record names (a Mega import's real trees are there, not under the trunk's
//! placeholders), through the trees the cache holds; an uncached tree ends the walk there.

use std::collections::{HashMap, HashSet};

use crate::mount_name::MountName;
use crate::object::{parse_tree, EntryKind, ObjectId};
use crate::store::Store;

/// One mount's share of the cache.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MountUse {
    pub objects: u64,
    pub bytes: u64,
    /// Of those, the ones another mount reaches too.
    pub shared_objects: u64,
    pub shared_bytes: u64,
    pub record_bytes: u64,
}

/// The cache as a whole.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheUse {
    pub mounts: Vec<(MountName, MountUse)>,
    /// Objects cached once for several mounts, and bytes, counted once.
    pub shared_objects: u64,
    pub shared_bytes: u64,
    /// Bytes no mount shown reaches (older commits, mounts gone, other users' mounts).
    pub unreached_bytes: u64,
    pub record_bytes: u64,
}

/// Walks each mount's cached trees (`mounts`: name and root tree) and adds up what it reaches.
pub fn measure(store: &Store, mounts: &[(MountName, ObjectId)]) -> CacheUse {
    let reached: Vec<HashSet<ObjectId>> = mounts
        .iter()
        .map(|(_, root)| reachable(store, root))
        .collect();
    let mut holders: HashMap<ObjectId, u32> = HashMap::new();
    for set in &reached {
        for oid in set {
            *holders.entry(*oid).or_default() += 1;
        }
    }
    let size = |oid: &ObjectId| store.cached_size(oid).unwrap_or(0);
    let per_mount = mounts
        .iter()
        .zip(&reached)
        .map(|((name, root), set)| {
            let record_bytes = store.record_bytes(root);
            let shared: Vec<&ObjectId> = set.iter().filter(|o| holders[*o] > 1).collect();
            let usage = MountUse {
                objects: set.len() as u64,
                bytes: set.iter().map(size).sum(),
                shared_objects: shared.len() as u64,
                shared_bytes: shared.iter().copied().map(size).sum(),
                record_bytes,
            };
            (name.clone(), usage)
        })
        .collect();
    let shared: Vec<&ObjectId> = holders
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(o, _)| o)
        .collect();
    let reached_bytes: u64 = holders.keys().map(size).sum();
    let total = store.usage().bytes;
    let records = store.records_bytes();
    CacheUse {
        mounts: per_mount,
        shared_objects: shared.len() as u64,
        shared_bytes: shared.iter().copied().map(size).sum(),
        unreached_bytes: total.saturating_sub(reached_bytes + records),
        record_bytes: records,
    }
}

/// The cached objects reachable from root tree `root` and the trees its record names.
fn reachable(store: &Store, root: &ObjectId) -> HashSet<ObjectId> {
    let mut seen = HashSet::new();
    let mut trees: Vec<ObjectId> = vec![*root];
    trees.extend(store.listing_record(root));
    while let Some(tree) = trees.pop() {
        if !seen.insert(tree) {
            continue;
        }
        let Ok(Some(body)) = store.read(&tree) else {
            seen.remove(&tree);
            continue;
        };
        let Ok(entries) = parse_tree(&body) else {
            continue;
        };
        for entry in entries {
            match entry.kind {
                EntryKind::Directory => trees.push(entry.oid),
                EntryKind::Submodule => {}
                _ if store.cached_size(&entry.oid).is_some() => {
                    seen.insert(entry.oid);
                }
                _ => {}
            }
        }
    }
    seen
}
