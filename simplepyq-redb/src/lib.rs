//! [`RedbStore`]: a durable [`Store`](simplepyq_core::Store) for simplepyq in pure Rust, on
//! [redb](https://docs.rs/redb).
//!
//! For builds that want no C code. Tasks live in one redb file; every change of a task is
//! one write transaction. redb lets one process open a file at a time: a second process
//! gets [`Error::InUse`] at once. Several queues in one process share a store through an
//! `Arc<RedbStore>`.
//!
//! ```
//! use std::sync::Arc;
//! use simplepyq_core::prelude::*;
//! use simplepyq_core::{NewTask, Status, Timestamp};
//! use simplepyq_redb::RedbStore;
//!
//! let dir = tempfile::tempdir()?;
//! let store = Arc::new(RedbStore::open(dir.path().join("tasks.redb"))?);
//! let now = Timestamp::from_millis(0);
//! let id = store.enqueue_one(NewTask::new("emails", vec![0x90]), now)?;
//! assert_eq!(store.get(id)?.map(|t| t.state.status), Some(Status::Pending));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # What it survives
//! - [`RedbDurability::Immediate`] (default): a commit is on disk when the call returns; it
//!   survives a process crash and a power loss (one fsync per commit).
//! - [`RedbDurability::None`]: commits are not flushed. Faster, but a crash of the process
//!   or the machine loses what was committed since the last durable commit (the file stays
//!   intact). Only for queues whose tasks can be enqueued again.
//!
//! # Failures
//! Opening checks every page's checksum, so that a damaged file is refused at once (this
//! took 0.1–0.25 s for a 272 MiB file of a million tasks). A write that fails (a full
//! disk, or [`RedbOptions::max_size`]) returns [`Error::Full`] and changes nothing. redb
//! then refuses every call until the file is closed; the store closes it and opens it
//! again at its next call, so that work goes on once there is room. redb panics on some
//! damaged files that its checksums do not catch; the store turns those panics into
//! [`Error::Corrupt`] (unless built with `panic = "abort"`).
//!
//! # Layout
//! `tasks` maps an id to the task's record; ordered index tables make claiming the next due
//! task of a channel a range scan, O(log n): `ready` (channel, -priority, run-at, id) for
//! pending tasks, `delayed` (channel, run-at, id), `leases` (lease expiry, id),
//! `channel_leases` (channel, lease expiry, id), `by_status` (channel, status, id),
//! `unique_keys` (channel, key) → id, and `counts` (channel, status) → number.
//! `simplepyq_meta` holds the format version and the last id given out; `schedules` each
//! schedule's last firing, `totals` each channel's counts of outcomes.

// One concern per file. The store: `options`; `open` (the checks, the upgrades of older
// formats); `tables` (the tables and the indexes kept in step with each task) and `record`
// (a task's bytes); one file per group of the `Store` contract: `claim`, `outcome`,
// `admin`, `inspect`, `schedules`. Its machinery: `storage` (the file, with its size cap),
// `error`.
mod admin;
mod claim;
mod dependency;
mod error;
mod flow;
mod inspect;
mod open;
mod options;
mod outcome;
mod record;
mod schedules;
mod storage;
mod tables;

use std::path::PathBuf;

use parking_lot::{MappedRwLockReadGuard, RwLock, RwLockReadGuard};
use redb::{Database, ReadOnlyDatabase, ReadTransaction, ReadableDatabase, WriteTransaction};
use simplepyq_core::{Error, Result, TaskId};

use crate::error::{corrupt, db_err, guarded};
use crate::open::open_database;
use crate::storage::{Cap, Failures};
use crate::tables::Tables;

pub use crate::options::{RedbDurability, RedbOptions};

const BACKEND: &str = "redb";

/// A [`Store`](simplepyq_core::Store) on a redb file.
pub struct RedbStore {
    /// The open database; `None` after a failed write, until the next call reopens it.
    db: RwLock<Option<Database>>,
    /// The database of a store opened read-only; then `db` stays `None`.
    reader: Option<ReadOnlyDatabase>,
    path: PathBuf,
    cap: Cap,
    /// Failed writes of the current database, which make redb refuse every later call.
    failures: Failures,
    durability: redb::Durability,
    /// The watching queues, woken when waiting tasks become due.
    wakes: simplepyq_core::LocalWakes,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("durability", &self.durability)
            .finish_non_exhaustive()
    }
}

/// Decodes a stored task record, then checks that encoding the result gives it back: the
/// body of the `redb_record` fuzz target. Not a stable API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub fn fuzz_record(bytes: &[u8]) {
    let id = TaskId::new(1);
    if let Ok(task) = record::decode(id, bytes) {
        let again = record::decode(id, &record::encode(&task));
        assert_eq!(
            again.as_ref(),
            Ok(&task),
            "a decoded record must round-trip"
        );
    }
}

fn to_key(id: TaskId) -> u64 {
    u64::try_from(id.get()).unwrap_or(0)
}

fn to_id(key: u64) -> Result<TaskId> {
    i64::try_from(key)
        .map(TaskId::new)
        .map_err(|_| corrupt(format!("task key {key} is out of range")))
}

impl RedbStore {
    /// The open database, opened again first if a failed write closed it.
    pub(crate) fn database(&self) -> Result<MappedRwLockReadGuard<'_, Database>> {
        loop {
            // Calls in flight do not queue behind a waiting reopen (which waits for them).
            let guard = self.db.read_recursive();
            match RwLockReadGuard::try_map(guard, Option::as_ref) {
                Ok(db) => return Ok(db),
                Err(guard) => drop(guard),
            }
            let mut slot = self.db.write();
            if slot.is_none() {
                *slot = Some(open_database(&self.path, false, &self.cap, &self.failures)?);
            }
        }
    }

    /// After a failed call: if a write of the file failed, redb refuses every later call
    /// until the database is closed, so close it now; the next call opens it again (redb
    /// repairs what the failed write left).
    pub(crate) fn after_error(&self) {
        if self.failures.take() {
            let closed = self.db.write().take();
            // Closing a database that redb gave up on may panic in turn.
            let _ = guarded(move || drop(closed));
        }
    }

    /// Runs `op` on the database, closing it for a reopen if a write of the file failed or
    /// redb panicked (its state may be half-changed; the reopen checks the file).
    pub(crate) fn with_db<T>(&self, op: impl FnOnce(&Database) -> Result<T>) -> Result<T> {
        let result = guarded(|| op(&*self.database()?)).unwrap_or_else(|panicked| {
            self.failures.note_failure();
            Err(panicked)
        });
        if result.is_err() {
            self.after_error();
        }
        result
    }

    /// Runs `op` in one write transaction, committed if it succeeds.
    pub(crate) fn write<T>(&self, op: impl FnOnce(&mut Tables<'_>) -> Result<T>) -> Result<T> {
        self.write_tx(|_, tables| op(tables))
    }

    /// [`RedbStore::write`], with the transaction too, for tables not in [`Tables`].
    pub(crate) fn write_tx<T>(
        &self,
        op: impl FnOnce(&WriteTransaction, &mut Tables<'_>) -> Result<T>,
    ) -> Result<T> {
        if self.reader.is_some() {
            return Err(Error::ReadOnly {
                backend: BACKEND,
                message: format!("{} was opened read-only", self.path.display()),
            });
        }
        self.with_db(|db| {
            let mut tx = db.begin_write().map_err(db_err)?;
            tx.set_durability(self.durability).map_err(db_err)?;
            let value = {
                let mut tables = Tables::open(&tx)?;
                op(&tx, &mut tables)?
            };
            tx.commit().map_err(db_err)?;
            Ok(value)
        })
    }

    /// Runs `op` in one read transaction.
    pub(crate) fn read<T>(&self, op: impl FnOnce(&ReadTransaction) -> Result<T>) -> Result<T> {
        match &self.reader {
            Some(reader) => guarded(|| op(&reader.begin_read().map_err(db_err)?))?,
            None => self.with_db(|db| op(&db.begin_read().map_err(db_err)?)),
        }
    }
}
