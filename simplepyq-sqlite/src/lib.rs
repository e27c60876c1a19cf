//! [`SqliteStore`]: the durable [`Store`](simplepyq_core::Store) of simplepyq, on an
//! embedded SQLite file.
//!
//! Tasks live in one table of a plain SQLite file (WAL mode), so they survive restarts and
//! crashes, and several processes can share one file: every change is one `BEGIN IMMEDIATE`
//! transaction, and a claimed task is held under a lease. SQLite is compiled in (the
//! `bundled` feature of rusqlite): nothing needs to be installed.
//!
//! ```
//! use std::time::Duration;
//! use simplepyq_core::prelude::*;
//! use simplepyq_core::{NewTask, Status, Timestamp};
//! use simplepyq_sqlite::SqliteStore;
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("tasks.db");
//! let now = Timestamp::from_millis(0);
//! let id = SqliteStore::open(&path)?.enqueue_one(NewTask::new("emails", vec![0x90]), now)?;
//! // Another open of the file (or another process) sees the task.
//! let store = SqliteStore::open(&path)?;
//! assert_eq!(store.get(id)?.map(|t| t.state.status), Some(Status::Pending));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # What it survives
//! - [`Durability::Normal`] (default; WAL with `synchronous=NORMAL`): a crash of the
//!   process loses nothing that was committed. A power loss or OS crash may lose the last
//!   commits before it (never corrupting the file).
//! - [`Durability::Full`] (`synchronous=FULL`): a commit is on disk when the call returns;
//!   it survives a power loss too, at the price of one fsync per commit.
//!
//! # What grows on disk
//! Done and failed tasks stay in the file (as in the original library), with their
//! arguments. Delete them with [`purge_done`](simplepyq_core::AdminStore::purge_done) and
//! [`clear_failed`](simplepyq_core::AdminStore::clear_failed). SQLite
//! reuses freed pages; the file itself shrinks only with `VACUUM`. The `-wal` file beside it
//! is checkpointed back into the database automatically.
//!
//! # Files of the original simplepyq
//! A `tasks.db` written by the original Python simplepyq (0.1.3) opens like a queue file:
//! [`SqliteStore::open`] first copies it to `<name>.simplepyq-0.1.3.bak` beside it, then
//! moves its tasks into this schema in one transaction, keeping their ids: pending and
//! running ones (the original leaves `running` rows after a crash) become pending, delayed
//! ones keep their time, done and failed ones stay. [`SqliteStore::open_read_only`] refuses
//! such a file, as it writes nothing.
//!
//! # In an application's database
//! The queue's tables are `simplepyq_tasks`, `simplepyq_schedules`, `simplepyq_totals`
//! and `simplepyq_schema` (the queue's schema version), with indexes named
//! `simplepyq_tasks_*`: a queue can live in the application's own database beside its
//! tables, which are never touched (nor its `PRAGMA user_version` and `application_id`),
//! and the application's rows and its tasks can commit in one transaction
//! ([`SqliteStore::enqueue_in`]). Opening any SQLite database adds these tables to it if
//! missing, and switches it to WAL mode. Files of versions before 7 (tables `tasks`,
//! `schedules`, `totals`, the version in `user_version`) are migrated in place.
//!
//! # Inspecting with SQL
//! The table `simplepyq_tasks` has one row per task: `id`, `channel`, `args` (MessagePack), `status`
//! (`pending`, `running`, `delayed`, `done`, `failed`), `retries_left`, `max_retries`,
//! `attempts`, `lost_runs`, `run_at`, `lease_until`, `last_error`, `created_at`,
//! `updated_at` (times in milliseconds since the Unix epoch). Read it freely; write it only
//! through simplepyq.

// One concern per file. The store: `options`; `open` (the checks before anything is
// written, then `schema`'s migrations or `original`'s import); `row` (the row codec); one
// file per group of the `Store` contract: `claim`, `outcome`, `admin`, `inspect`,
// `schedules`, `flow`; and `outbox`, enqueueing in a caller's transaction. Its machinery: `writer`
// (the group commit), `readers`, `checkpoint`, `watch` (wake-ups across processes),
// `error`.
mod admin;
mod checkpoint;
mod claim;
mod dependency;
mod error;
mod flow;
pub mod fork;
mod inspect;
mod open;
mod options;
mod original;
mod outbox;
mod outcome;
#[cfg(test)]
mod plans;
mod readers;
mod row;
mod schedules;
mod schema;
#[cfg(test)]
mod testing;
mod watch;
mod writer;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, Transaction};
use simplepyq_core::{Error, Result};

use crate::checkpoint::Checkpointer;
use crate::error::R;
use crate::open::retrying;
use crate::writer::{Caller, Writer};

pub(crate) use crate::open::wait_for_locks;
pub use crate::options::{Durability, SqliteOptions};
/// The rusqlite this store is built with: an application that writes its own rows in the
/// queue's file, in the transactions it enqueues in ([`SqliteStore::enqueue_in`]), opens
/// its connections with it, so that one SQLite library serves the process (two copies drop
/// each other's locks on the file).
pub use rusqlite;

/// A [`Store`](simplepyq_core::Store) on a SQLite file. Several stores (in one process or
/// several) may open the same file.
///
/// Each store has a writer thread that commits the writes of all its callers together
/// (group commit), a connection for reads, and a checkpointer thread that folds the WAL
/// back into the database off the callers' path.
#[derive(Debug)]
pub struct SqliteStore {
    readers: readers::Readers,
    /// The writer and checkpointer threads; `None` for a store opened read-only.
    writer: Option<(Writer, Checkpointer)>,
    path: PathBuf,
    busy_timeout: Duration,
    watch_interval: Option<Duration>,
    /// Tells other processes' queues of the tasks this store adds.
    announcer: Arc<watch::Announcer>,
    /// Tells them of the tasks added in callers' transactions, once committed.
    committed: outbox::Committed,
    /// Wakes this store's own queues when waiting tasks become due.
    wakes: simplepyq_core::LocalWakes,
    /// With `SqliteOptions::max_size`, the most pages an enqueue leaves the file with
    /// ([`claim::enqueue_pages`]).
    enqueue_pages: Option<i64>,
}

impl SqliteStore {
    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tells other processes' queues that `channels` have tasks due again (`n` of them).
    fn announce(&self, n: usize, channels: &BTreeSet<String>) {
        if n > 0 {
            self.announcer.announce(channels.iter().map(String::as_str));
        }
    }

    /// Tells every queue, this store's own too, that waiting tasks of `channels` became due.
    fn announce_due(&self, channels: &BTreeSet<String>) {
        if !channels.is_empty() {
            self.announcer.announce(channels.iter().map(String::as_str));
            self.wakes.wake(channels.iter().map(String::as_str));
        }
    }

    /// Runs `op` in the writer thread's next transaction (shared with other callers' writes)
    /// and returns its result once that transaction committed.
    fn write<T, F>(&self, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&Transaction<'_>) -> R<T> + Send + 'static,
    {
        self.write_as(Caller::Other, op)
    }

    /// [`SqliteStore::write`] for `caller`, which the group commit may wait for.
    fn write_as<T, F>(&self, caller: Caller, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&Transaction<'_>) -> R<T> + Send + 'static,
    {
        let Some((writer, checkpointer)) = &self.writer else {
            return Err(self.opened_read_only());
        };
        let result = writer.run(caller, op);
        checkpointer.wrote();
        result
    }

    /// The error for a write to a store opened read-only.
    fn opened_read_only(&self) -> Error {
        Error::ReadOnly {
            backend: error::BACKEND,
            message: format!("{} was opened read-only", self.path.display()),
        }
    }

    /// Runs a read on a read connection.
    fn read<T>(&self, mut op: impl FnMut(&Connection) -> R<T>) -> Result<T> {
        self.readers
            .with(|conn| retrying(self.busy_timeout, || op(conn)))?
    }
}
