//! The file under a [`RedbStore`](crate::RedbStore): redb's own file backend, with an
//! optional size cap and a record of failed writes.
//!
//! redb stops serving a database after a failed write (every later call returns
//! `PreviousIo`) until it is closed and opened again. The store learns of such a failure
//! here and reopens the file at its next call, so that a full disk, once there is room
//! again, costs only the calls that failed.

use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

/// Whether a write, resize or flush of the file failed since it was opened.
#[derive(Clone, Debug, Default)]
pub(crate) struct Failures(Arc<AtomicBool>);

impl Failures {
    /// Takes the record: whether a failure happened since the last call.
    pub(crate) fn take(&self) -> bool {
        self.0.swap(false, Ordering::AcqRel)
    }

    /// Records a failure found outside the file's calls.
    pub(crate) fn note_failure(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn note<T, E>(&self, result: Result<T, E>) -> Result<T, E> {
        if result.is_err() {
            self.0.store(true, Ordering::Release);
        }
        result
    }
}

/// The largest the file may grow, shared by the store and its open file.
#[derive(Clone, Debug)]
pub(crate) struct Cap(Arc<AtomicU64>);

impl Cap {
    pub(crate) fn new(max_len: Option<u64>) -> Self {
        Cap(Arc::new(AtomicU64::new(max_len.unwrap_or(u64::MAX))))
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// Changes the cap of the open file (a test's way to make room).
    #[cfg(test)]
    pub(crate) fn set(&self, max_len: u64) {
        self.0.store(max_len, Ordering::Release);
    }
}

/// redb's file backend, refusing to grow the file past its cap.
#[derive(Debug)]
pub(crate) struct FileStorage {
    file: FileBackend,
    cap: Cap,
    failures: Failures,
}

impl FileStorage {
    /// Opens (or, with `create`, creates) the file at `path` for reading and writing.
    pub(crate) fn open(
        path: &Path,
        create: bool,
        cap: Cap,
        failures: Failures,
    ) -> io::Result<Self> {
        let file: File = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(path)?;
        let file = FileBackend::new(file).map_err(io::Error::other)?;
        Ok(FileStorage {
            file,
            cap,
            failures,
        })
    }

    /// Fails, as a full disk does, if the file would grow past the cap.
    fn check_len(&self, len: u64) -> io::Result<()> {
        let max = self.cap.get();
        if len > max {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!("the file would grow to {len} bytes, past RedbOptions::max_size ({max})"),
            ));
        }
        Ok(())
    }
}

impl StorageBackend for FileStorage {
    fn len(&self) -> Result<u64, io::Error> {
        self.file.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.file.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.failures
            .note(self.check_len(len).and_then(|()| self.file.set_len(len)))
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.failures.note(self.file.sync_data())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let end = offset.saturating_add(data.len() as u64);
        self.failures.note(
            self.check_len(end)
                .and_then(|()| self.file.write(offset, data)),
        )
    }

    fn close(&self) -> Result<(), io::Error> {
        self.file.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.file.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.failures.note(self.file.unlock_range(start, end))
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.query_lock_range(start, end)
    }
}
