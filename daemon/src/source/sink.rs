//! Where a source writes blobs itself: a batch of them, or one as it arrives. The cache
//! implements [`BlobSink`], so sources hand over bytes without knowing the cache. A blob is
//! written as it comes, kept only once whole and only under the id its bytes hash to; one
//! named in advance is kept only if it hashes to that name.

use crate::object::{ObjectError, ObjectId};

/// Why a blob was not kept.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("writing into the cache: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes do not hash to the id the blob was announced under.
    #[error("{0}")]
    Corrupt(ObjectError),
    #[error("expected {expected} bytes, received {received}")]
    Length { expected: u64, received: u64 },
    #[error("more bytes than the {0} announced for this object")]
    Overflow(u64),
    #[error("an object of {size} bytes is larger than the whole cache ({limit} bytes)")]
    LargerThanCache { size: u64, limit: u64 },
}

/// Takes blobs as they arrive.
pub trait BlobSink: Send + Sync {
    /// Starts a blob of `len` bytes. With `oid`, it is kept only if it hashes to that id;
    /// without, under whatever id it hashes to.
    fn begin_blob(
        &self,
        oid: Option<ObjectId>,
        len: u64,
    ) -> Result<Box<dyn PendingBlob + '_>, SinkError>;

    /// A blob already kept, whole (the base of a delta); None if it is not there.
    fn blob(&self, oid: &ObjectId) -> Result<Option<Vec<u8>>, SinkError>;
}

/// A blob being written. Dropped unfinished, it leaves nothing behind.
pub trait PendingBlob: Send {
    fn write(&mut self, piece: &[u8]) -> Result<(), SinkError>;

    /// Bytes written so far.
    fn written(&self) -> u64;

    /// Keeps the blob if it is whole and right; returns its id.
    fn finish(self: Box<Self>) -> Result<ObjectId, SinkError>;
}

/// A sink in memory, for tests of what sources write.
/// A sink that tells a watch channel each time it kept a blob (the count so far), so those
/// waiting on some of a batch's blobs go on as soon as theirs are in, not at the batch's end.
pub struct Watched<'a> {
    inner: &'a dyn BlobSink,
    kept: &'a tokio::sync::watch::Sender<u64>,
}

impl<'a> Watched<'a> {
    pub fn new(inner: &'a dyn BlobSink, kept: &'a tokio::sync::watch::Sender<u64>) -> Self {
        Watched { inner, kept }
    }
}

impl BlobSink for Watched<'_> {
    fn begin_blob(
        &self,
        oid: Option<ObjectId>,
        len: u64,
    ) -> Result<Box<dyn PendingBlob + '_>, SinkError> {
        let pending = self.inner.begin_blob(oid, len)?;
        Ok(Box::new(WatchedBlob {
            pending,
            kept: self.kept,
        }))
    }

    fn blob(&self, oid: &ObjectId) -> Result<Option<Vec<u8>>, SinkError> {
        self.inner.blob(oid)
    }
}

struct WatchedBlob<'a> {
    pending: Box<dyn PendingBlob + 'a>,
    kept: &'a tokio::sync::watch::Sender<u64>,
}

impl PendingBlob for WatchedBlob<'_> {
    fn write(&mut self, piece: &[u8]) -> Result<(), SinkError> {
        self.pending.write(piece)
    }

    fn written(&self) -> u64 {
        self.pending.written()
    }

    fn finish(self: Box<Self>) -> Result<ObjectId, SinkError> {
        let oid = self.pending.finish()?;
        self.kept.send_modify(|count| *count += 1);
        Ok(oid)
    }
}

#[cfg(test)]
pub mod memory {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;
    use crate::object::{ObjectHasher, ObjectKind};

    #[derive(Default)]
    pub struct MemorySink {
        pub blobs: Mutex<HashMap<ObjectId, Vec<u8>>>,
    }

    impl MemorySink {
        pub fn get(&self, oid: &ObjectId) -> Option<Vec<u8>> {
            self.blobs.lock().expect("lock").get(oid).cloned()
        }
    }

    struct Pending<'a> {
        sink: &'a MemorySink,
        oid: Option<ObjectId>,
        len: u64,
        bytes: Vec<u8>,
    }

    impl BlobSink for MemorySink {
        fn begin_blob(
            &self,
            oid: Option<ObjectId>,
            len: u64,
        ) -> Result<Box<dyn PendingBlob + '_>, SinkError> {
            Ok(Box::new(Pending {
                sink: self,
                oid,
                len,
                bytes: Vec::new(),
            }))
        }

        fn blob(&self, oid: &ObjectId) -> Result<Option<Vec<u8>>, SinkError> {
            Ok(self.get(oid))
        }
    }

    impl PendingBlob for Pending<'_> {
        fn write(&mut self, piece: &[u8]) -> Result<(), SinkError> {
            if self.bytes.len() as u64 + piece.len() as u64 > self.len {
                return Err(SinkError::Overflow(self.len));
            }
            self.bytes.extend_from_slice(piece);
            Ok(())
        }

        fn written(&self) -> u64 {
            self.bytes.len() as u64
        }

        fn finish(self: Box<Self>) -> Result<ObjectId, SinkError> {
            if self.written() != self.len {
                return Err(SinkError::Length {
                    expected: self.len,
                    received: self.written(),
                });
            }
            let mut hasher = ObjectHasher::new(ObjectKind::Blob, self.len);
            hasher.update(&self.bytes);
            let actual = hasher.finish();
            if let Some(expected) = self.oid.filter(|&e| e != actual) {
                return Err(SinkError::Corrupt(crate::object::ObjectError::Mismatch {
                    kind: ObjectKind::Blob,
                    expected,
                    actual,
                }));
            }
            self.sink
                .blobs
                .lock()
                .expect("lock")
                .insert(actual, self.bytes);
            Ok(actual)
        }
    }
}
