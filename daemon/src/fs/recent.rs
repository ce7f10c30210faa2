//! Tree bodies fetched or read lately, kept in memory up to a bound. A walk lists each
//! directory more than once (the look-ahead or the pass ahead of it, then the kernel's own
//! request), and each read from the cache costs an open, a stat, a read and a close: a few
//! thousand directories' worth of system calls saved on a cold `grep -r`. Oldest out first.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::object::ObjectId;

/// The most bytes of bodies kept by default.
pub const DEFAULT_RECENT_BYTES: usize = 4 << 20;

pub struct RecentTrees {
    inner: Mutex<Inner>,
    limit: usize,
}

#[derive(Default)]
struct Inner {
    bodies: HashMap<ObjectId, Arc<[u8]>>,
    order: VecDeque<ObjectId>,
    bytes: usize,
}

impl RecentTrees {
    /// Keeping up to `limit` bytes of bodies (a bigger body is not kept).
    pub fn new(limit: usize) -> Self {
        RecentTrees {
            inner: Mutex::new(Inner::default()),
            limit,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, oid: &ObjectId) -> Option<Arc<[u8]>> {
        self.lock().bodies.get(oid).cloned()
    }

    pub fn contains(&self, oid: &ObjectId) -> bool {
        self.lock().bodies.contains_key(oid)
    }

    /// Keeps `body` as tree `oid`'s (verified already), the oldest going to make room.
    pub fn insert(&self, oid: ObjectId, body: Arc<[u8]>) {
        if body.len() > self.limit {
            return;
        }
        let mut inner = self.lock();
        if inner.bodies.contains_key(&oid) {
            return;
        }
        inner.bytes += body.len();
        inner.bodies.insert(oid, body);
        inner.order.push_back(oid);
        while inner.bytes > self.limit {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            if let Some(gone) = inner.bodies.remove(&oldest) {
                inner.bytes -= gone.len();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oid(n: u8) -> ObjectId {
        ObjectId::from_bytes([n; 20])
    }

    #[test]
    fn the_oldest_go_first_and_the_bound_holds() {
        let recent = RecentTrees::new(10);
        recent.insert(oid(1), Arc::from(&b"aaaa"[..]));
        recent.insert(oid(2), Arc::from(&b"bbbb"[..]));
        recent.insert(oid(1), Arc::from(&b"aaaa"[..]));
        assert!(recent.contains(&oid(1)) && recent.contains(&oid(2)));
        recent.insert(oid(3), Arc::from(&b"cccc"[..]));
        assert!(!recent.contains(&oid(1)), "the oldest went");
        assert_eq!(recent.get(&oid(3)).as_deref(), Some(&b"cccc"[..]));
        recent.insert(oid(4), Arc::from(&b"far too many bytes"[..]));
        assert!(!recent.contains(&oid(4)), "bigger than the bound");
        assert!(recent.contains(&oid(2)) && recent.contains(&oid(3)));
    }
}
