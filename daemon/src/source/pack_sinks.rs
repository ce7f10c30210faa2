//! Where the entries of a pack go ([`PackSink`]s): the one blob a fetch asked for, as it
//! arrives ([`OneBlob`]); a batch of blobs, written into a [`BlobSink`] (the cache) as they
//! arrive ([`BlobsToSink`]); or a small pack's objects, in memory ([`ObjectsInMemory`]).

use std::collections::HashMap;

use bytes::Bytes;

use super::pack::{Entry, EntryError, EntryKind, PackSink};
use super::sink::{BlobSink, PendingBlob};
use super::{delta, MAX_IN_MEMORY, MAX_PACK_IN_MEMORY};
use crate::object::{ObjectId, ObjectKind};

/// Collects the one blob a fetch asked for, piece by piece; refuses anything else.
#[derive(Default)]
pub struct OneBlob {
    /// Its length, once its entry has begun.
    pub size: Option<u64>,
    /// Pieces not yet taken.
    pub pieces: Vec<Bytes>,
}

impl PackSink for OneBlob {
    fn begin(&mut self, entry: &Entry) -> Result<(), EntryError> {
        if self.size.is_some() {
            return Err(EntryError::Unwanted(
                "more than one object in the pack, one was asked for".into(),
            ));
        }
        if entry.kind != EntryKind::Blob {
            return Err(EntryError::Unwanted(format!(
                "the pack holds a {:?} entry, a blob was asked for",
                entry.kind
            )));
        }
        self.size = Some(entry.size);
        Ok(())
    }

    fn data(&mut self, piece: &[u8]) -> Result<(), EntryError> {
        self.pieces.push(Bytes::copy_from_slice(piece));
        Ok(())
    }

    fn end(&mut self) -> Result<(), EntryError> {
        Ok(())
    }
}

/// Every object of a small pack (a commit and its trees), deltas resolved, by id.
#[derive(Default)]
pub struct ObjectsInMemory {
    pub objects: HashMap<ObjectId, (ObjectKind, Vec<u8>)>,
    by_offset: HashMap<u64, ObjectId>,
    current: Option<(Entry, Vec<u8>)>,
    /// Bytes held so far, against [`MAX_PACK_IN_MEMORY`].
    held: u64,
}

impl ObjectsInMemory {
    /// The content of object `oid`, if the pack had it.
    pub fn take(&mut self, oid: &ObjectId) -> Option<Vec<u8>> {
        self.objects.remove(oid).map(|(_, data)| data)
    }

    fn base(&self, id: Option<&ObjectId>) -> Result<&(ObjectKind, Vec<u8>), EntryError> {
        id.and_then(|id| self.objects.get(id))
            .ok_or(EntryError::MissingBase)
    }

    /// Counts `bytes` more against [`MAX_PACK_IN_MEMORY`].
    fn hold(&mut self, bytes: u64) -> Result<(), EntryError> {
        self.held += bytes;
        if self.held > MAX_PACK_IN_MEMORY {
            return Err(EntryError::PackTooBig);
        }
        Ok(())
    }
}

impl PackSink for ObjectsInMemory {
    fn begin(&mut self, entry: &Entry) -> Result<(), EntryError> {
        if entry.size > MAX_IN_MEMORY {
            return Err(EntryError::TooBig(entry.size));
        }
        // The size is the server's word: reserve no more than a little up front.
        let reserve = entry.size.min(1 << 20) as usize;
        self.current = Some((*entry, Vec::with_capacity(reserve)));
        Ok(())
    }

    fn data(&mut self, piece: &[u8]) -> Result<(), EntryError> {
        self.hold(piece.len() as u64)?;
        if let Some((_, data)) = &mut self.current {
            data.extend_from_slice(piece);
        }
        Ok(())
    }

    fn end(&mut self) -> Result<(), EntryError> {
        let Some((entry, data)) = self.current.take() else {
            return Ok(());
        };
        let (kind, content) = match entry.kind {
            EntryKind::Commit => (ObjectKind::Commit, data),
            EntryKind::Tree => (ObjectKind::Tree, data),
            EntryKind::Blob => (ObjectKind::Blob, data),
            EntryKind::Tag => return Ok(()),
            EntryKind::OfsDelta { base_offset } => {
                let (kind, base) = self.base(self.by_offset.get(&base_offset))?;
                (*kind, delta::apply(base, &data)?)
            }
            EntryKind::RefDelta { base } => {
                let (kind, base) = self.base(Some(&base))?;
                (*kind, delta::apply(base, &data)?)
            }
        };
        // A delta's result counts too: a small delta may build a large object.
        if matches!(
            entry.kind,
            EntryKind::OfsDelta { .. } | EntryKind::RefDelta { .. }
        ) {
            self.hold(content.len() as u64)?;
        }
        let oid = ObjectId::hash(kind, &content);
        self.by_offset.insert(entry.offset, oid);
        self.objects.insert(oid, (kind, content));
        Ok(())
    }
}

/// Blob entries of a pack written into a sink (the cache) as they arrive. Each is hashed on
/// the way and kept under the id it hashes to, so nothing unverified is kept and no blob has
/// to be in memory whole. A delta is applied in memory to its base, read back from the sink;
/// git rarely deltifies big files, so this is the uncommon case.
pub struct BlobsToSink<'a> {
    sink: &'a dyn BlobSink,
    /// The id of each blob kept so far, by its pack offset (the bases of ofs-deltas).
    by_offset: HashMap<u64, ObjectId>,
    /// Every blob kept, with its length.
    pub kept: HashMap<ObjectId, u64>,
    current: Current<'a>,
}

enum Current<'a> {
    Nothing,
    Blob {
        offset: u64,
        pending: Box<dyn PendingBlob + 'a>,
    },
    Delta {
        offset: u64,
        base: Option<ObjectId>,
        instructions: Vec<u8>,
    },
}

impl<'a> BlobsToSink<'a> {
    pub fn new(sink: &'a dyn BlobSink) -> Self {
        BlobsToSink {
            sink,
            by_offset: HashMap::new(),
            kept: HashMap::new(),
            current: Current::Nothing,
        }
    }

    fn keep(&mut self, offset: u64, oid: ObjectId, len: u64) {
        self.by_offset.insert(offset, oid);
        self.kept.insert(oid, len);
    }

    /// Applies a delta to its base (if that is a blob in the cache) and keeps the result.
    fn resolve(
        &mut self,
        offset: u64,
        base: Option<ObjectId>,
        instructions: &[u8],
    ) -> Result<(), EntryError> {
        // A delta on something else is left out: its blob is then reported missing.
        let Some(base) = base else { return Ok(()) };
        let Some(base_bytes) = self.sink.blob(&base)? else {
            return Ok(());
        };
        let content = delta::apply(&base_bytes, instructions)?;
        let mut pending = self.sink.begin_blob(None, content.len() as u64)?;
        pending.write(&content)?;
        let oid = pending.finish()?;
        self.keep(offset, oid, content.len() as u64);
        Ok(())
    }
}

impl PackSink for BlobsToSink<'_> {
    fn begin(&mut self, entry: &Entry) -> Result<(), EntryError> {
        let offset = entry.offset;
        self.current = match entry.kind {
            EntryKind::Blob => Current::Blob {
                offset,
                pending: self.sink.begin_blob(None, entry.size)?,
            },
            EntryKind::OfsDelta { base_offset } => Current::Delta {
                offset,
                base: self.by_offset.get(&base_offset).copied(),
                instructions: Vec::new(),
            },
            EntryKind::RefDelta { base } => Current::Delta {
                offset,
                base: Some(base),
                instructions: Vec::new(),
            },
            // Only blobs were asked for; anything else is passed over.
            EntryKind::Commit | EntryKind::Tree | EntryKind::Tag => Current::Nothing,
        };
        Ok(())
    }

    fn data(&mut self, piece: &[u8]) -> Result<(), EntryError> {
        match &mut self.current {
            Current::Blob { pending, .. } => Ok(pending.write(piece)?),
            Current::Delta { instructions, .. } => {
                instructions.extend_from_slice(piece);
                Ok(())
            }
            Current::Nothing => Ok(()),
        }
    }

    fn end(&mut self) -> Result<(), EntryError> {
        match std::mem::replace(&mut self.current, Current::Nothing) {
            Current::Blob { offset, pending } => {
                let len = pending.written();
                let oid = pending.finish()?;
                self.keep(offset, oid, len);
                Ok(())
            }
            Current::Delta {
                offset,
                base,
                instructions,
            } => self.resolve(offset, base, &instructions),
            Current::Nothing => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::pack::tests::pack_of;
    use crate::source::pack::{PackError, PackParser};
    use crate::source::sink::memory::MemorySink;

    #[test]
    fn small_packs_resolve_their_deltas_in_memory() {
        let base = b"0123456789abcdef".to_vec();
        let base_id = ObjectId::hash(ObjectKind::Tree, &base);
        let delta = vec![16, 9, 0x91, 10, 4, 3, b'X', b'Y', b'Z', 0x90, 2];
        let first = pack_of(&[(2, vec![], base.clone())]);
        let distance = (first.len() - 20 - 12) as u8;
        let pack = pack_of(&[(2, vec![], base.clone()), (6, vec![distance], delta)]);
        let mut sink = ObjectsInMemory::default();
        let mut parser = PackParser::default();
        parser.feed(&pack, &mut sink).expect("feed");
        parser.finish().expect("whole");
        let derived = ObjectId::hash(ObjectKind::Tree, b"abcdXYZ01");
        assert_eq!(
            sink.objects[&derived],
            (ObjectKind::Tree, b"abcdXYZ01".to_vec())
        );
        assert_eq!(sink.take(&base_id), Some(base));
        let mut sink = ObjectsInMemory::default();
        let huge = Entry {
            offset: 12,
            kind: EntryKind::Tree,
            size: MAX_IN_MEMORY + 1,
        };
        let err = sink.begin(&huge).expect_err("too big");
        assert!(matches!(err, EntryError::TooBig(_)), "{err}");
        let orphan = pack_of(&[(7, [9u8; 20].to_vec(), b"x".to_vec())]);
        let mut parser = PackParser::default();
        let err = parser.feed(&orphan, &mut ObjectsInMemory::default());
        assert!(matches!(
            err,
            Err(PackError::Entry(EntryError::MissingBase))
        ));
    }

    #[test]
    fn blobs_and_deltas_land_in_the_sink_under_their_ids() {
        let store = MemorySink::default();
        let base = b"0123456789abcdef".to_vec();
        let base_id = ObjectId::hash(ObjectKind::Blob, &base);
        // "abcdXYZ01": copy 4 from 10, insert XYZ, copy 2 from 0.
        let delta = vec![16, 9, 0x91, 10, 4, 3, b'X', b'Y', b'Z', 0x90, 2];
        let derived_id = ObjectId::hash(ObjectKind::Blob, b"abcdXYZ01");
        let first = pack_of(&[(3, vec![], base.clone())]);
        let distance = (first.len() - 20 - 12) as u8;
        let pack = pack_of(&[
            (3, vec![], base.clone()),
            (6, vec![distance], delta.clone()),
            (7, base_id.as_bytes().to_vec(), delta),
            (2, vec![], b"not a blob".to_vec()),
        ]);
        let mut sink = BlobsToSink::new(&store);
        let mut parser = PackParser::default();
        for part in pack.chunks(10) {
            parser.feed(part, &mut sink).expect("feed");
        }
        parser.finish().expect("whole");
        assert_eq!(sink.kept.len(), 2);
        assert_eq!(sink.kept[&base_id], 16);
        assert_eq!(sink.kept[&derived_id], 9);
        assert_eq!(store.get(&derived_id).unwrap(), b"abcdXYZ01");
        assert_eq!(store.get(&base_id).unwrap(), base);
    }
}
