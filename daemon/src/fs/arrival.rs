//! Big blobs as they arrive. A blob at least `stream_min_size` long is read while it streams
//! into the cache: a read of bytes that have already arrived is answered from the partly
//! written cache file, so the first bytes of a 1 GB file do not wait for the rest.
//!
//! A blob can only be verified whole (its id hashes all of it, and neither Mega nor git offers
//! hashes of parts), so the read that reaches the end of the file waits for verification. A
//! program that reads a file to its end thus gets either all of it verified or an error; one
//! that stops early may have seen bytes the end later proves wrong, which is why this is only
//! for big files and can be turned off.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;

use tokio::sync::watch;

use super::error::FsError;

/// How far a blob has come.
#[derive(Clone, Debug)]
pub enum Progress {
    /// This many bytes are in the cache file, not yet verified.
    Arriving(u64),
    /// Fetched and verified (the object is in the cache), or failed.
    Done(Result<(), FsError>),
}

/// One blob streaming into the cache, watched by the reads waiting for its bytes.
pub struct Arrival {
    /// The partly written cache file, opened for reading; set once writing starts. It stays
    /// readable through the rename that keeps it.
    file: OnceLock<File>,
    progress: watch::Sender<Progress>,
}

/// What a read of bytes `start..end` of an arriving blob may do now.
pub enum Ready {
    /// Read them from the partly written file.
    Partial,
    /// The blob is verified and in the cache.
    Verified,
}

impl Arrival {
    pub fn new() -> Arrival {
        Arrival {
            file: OnceLock::new(),
            progress: watch::Sender::new(Progress::Arriving(0)),
        }
    }

    /// Called by the fetch once the cache file exists.
    pub fn started(&self, reader: File) {
        let _ = self.file.set(reader);
    }

    /// Called by the fetch after each write: `written` bytes are in the file.
    pub fn advanced(&self, written: u64) {
        self.progress.send_replace(Progress::Arriving(written));
    }

    pub fn finish(&self, result: Result<(), FsError>) {
        self.progress.send_replace(Progress::Done(result));
    }

    /// Waits until bytes up to `end` of a blob of `len` bytes may be served. Bytes short of the
    /// end are served once written; the end only once verified.
    pub async fn wait_for(&self, end: u64, len: u64) -> Result<Ready, FsError> {
        let mut watcher = self.progress.subscribe();
        let progress = watcher
            .wait_for(|p| match p {
                Progress::Done(_) => true,
                Progress::Arriving(written) => end < len && *written >= end,
            })
            .await
            .map_err(|_| FsError::Internal("a fetch ended without a word".into()))?
            .clone();
        match progress {
            Progress::Done(Ok(())) => Ok(Ready::Verified),
            Progress::Done(Err(e)) => Err(e),
            Progress::Arriving(_) => Ok(Ready::Partial),
        }
    }

    /// Reads from the partly written file; only bytes [`Arrival::wait_for`] allowed.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<usize, FsError> {
        let file = self
            .file
            .get()
            .ok_or_else(|| FsError::Internal("an arriving blob has no file".into()))?;
        file.read_at(buf, offset).map_err(FsError::cache)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::Arc;

    #[tokio::test]
    async fn bytes_before_the_end_are_served_as_they_arrive_and_the_end_only_verified() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("partial");
        let mut writer = File::create(&path).unwrap();
        let arrival = Arc::new(Arrival::new());
        arrival.started(File::open(&path).unwrap());

        writer.write_all(b"hello ").unwrap();
        arrival.advanced(6);
        assert!(matches!(arrival.wait_for(6, 11).await, Ok(Ready::Partial)));
        let mut buf = [0u8; 6];
        assert_eq!(arrival.read_at(&mut buf, 0).unwrap(), 6);
        assert_eq!(&buf, b"hello ");

        // All bytes written is not enough for the read that reaches the end.
        writer.write_all(b"world").unwrap();
        arrival.advanced(11);
        let waiter = {
            let arrival = arrival.clone();
            tokio::spawn(async move { arrival.wait_for(11, 11).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        arrival.finish(Ok(()));
        assert!(matches!(waiter.await.unwrap(), Ok(Ready::Verified)));
    }

    #[tokio::test]
    async fn a_failed_blob_fails_every_waiting_read() {
        let arrival = Arc::new(Arrival::new());
        let early = {
            let arrival = arrival.clone();
            tokio::spawn(async move { arrival.wait_for(4096, 1 << 20).await })
        };
        tokio::task::yield_now().await;
        arrival.finish(Err(FsError::Timeout(std::time::Duration::from_secs(1))));
        assert!(matches!(early.await.unwrap(), Err(FsError::Timeout(_))));
        assert!(arrival.wait_for(1 << 20, 1 << 20).await.is_err());
    }
}
