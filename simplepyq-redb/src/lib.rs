//! [`RedbStore`]: a durable [`Store`] for simplepyq in pure Rust, on [redb](https://docs.rs/redb).
//!
//! For builds that want no C code. Tasks live in one redb file; every change of a task is
//! one write transaction. redb lets one process open a file at a time: a second process
//! gets [`Error::InUse`] at once. Several queues in one process share a store through an
//! `Arc<RedbStore>`.
//!
//! ```
//! use std::sync::Arc;
//! use simplepyq_core::{NewTask, Status, Store, StoreExt, Timestamp};
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
//! disk, or [`RedbOptions::max_size`]) returns [`Error::Full`] and changes nothing. redb then refuses every call until the file is
//! closed; the store closes it and opens it again at its next call, so that work goes on
//! once there is room. redb panics on some damaged files that its checksums do not catch;
//! the store turns those panics into [`Error::Corrupt`] (unless built with
//! `panic = "abort"`).
//!
//! # Layout
//! `tasks` maps an id to the task's record; ordered index tables make claiming the next due
//! task of a channel a range scan, O(log n): `ready` (channel, -priority, run-at, id) for
//! pending tasks, `delayed` (channel, run-at, id), `leases` (lease expiry, id),
//! `channel_leases` (channel, lease expiry, id), `by_status` (channel, status, id),
//! `unique_keys` (channel, key) → id, and `counts` (channel, status) → number.
//! `simplepyq_meta` holds the format version and the last id given out; `schedules` each
//! schedule's last firing, `totals` each channel's counts of outcomes.

mod record;
mod storage;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use parking_lot::{MappedRwLockReadGuard, RwLock, RwLockReadGuard};
use redb::{
    Database, ReadOnlyDatabase, ReadTransaction, ReadableDatabase, ReadableTable, Table,
    TableDefinition, WriteTransaction,
};
use simplepyq_core::transition::{self, Event, apply};
use simplepyq_core::{
    Claim, Counts, Error, ListFilter, NewTask, Outcome, Result, Status, Store, Task, TaskId,
    TaskState, Timestamp, Totals, batch, validate_channel,
};

use crate::record::{status_code, status_from_code};
use crate::storage::{Cap, Failures, FileStorage};

const BACKEND: &str = "redb";
/// The layout version this build writes. Format 1 (one `queued` index, records without
/// priority and unique key) is upgraded on open; format 2 (records without lost runs) only
/// has its version raised, as its records are still read.
const FORMAT: u64 = 3;

const TASKS: TableDefinition<u64, &[u8]> = TableDefinition::new("tasks");
/// Pending tasks in claim order: (channel, -priority, run-at, id).
const READY: TableDefinition<(&str, i64, i64, u64), ()> = TableDefinition::new("ready");
const DELAYED: TableDefinition<(&str, i64, u64), ()> = TableDefinition::new("delayed");
/// Unique keys of pending, delayed and running tasks: (channel, key) → id.
const UNIQUE: TableDefinition<(&str, &str), u64> = TableDefinition::new("unique_keys");
/// The index tables of format 1, dropped by the upgrade.
const FORMAT_1_INDEXES: [&str; 5] = ["queued", "leases", "channel_leases", "by_status", "counts"];
const LEASES: TableDefinition<(i64, u64), ()> = TableDefinition::new("leases");
const CHANNEL_LEASES: TableDefinition<(&str, i64, u64), ()> =
    TableDefinition::new("channel_leases");
const BY_STATUS: TableDefinition<(&str, u8, u64), ()> = TableDefinition::new("by_status");
const COUNTS: TableDefinition<(&str, u8), u64> = TableDefinition::new("counts");
const META: TableDefinition<&str, u64> = TableDefinition::new("simplepyq_meta");
/// Each schedule's last firing, in milliseconds since the Unix epoch.
const SCHEDULES: TableDefinition<&str, i64> = TableDefinition::new("schedules");
/// Each channel's [`Totals`]: (done, failed, retried, lease lost).
const TOTALS: TableDefinition<&str, (u64, u64, u64, u64)> = TableDefinition::new("totals");

const META_FORMAT: &str = "format";
const META_LAST_ID: &str = "last_id";

/// How much a commit survives. See the [crate docs](crate#what-it-survives).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum RedbDurability {
    /// Flushed at every commit: survives a process crash and a power loss.
    #[default]
    Immediate,
    /// Not flushed: a crash may lose the latest commits.
    None,
}

/// Settings of a [`RedbStore`].
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct RedbOptions {
    /// What a commit survives.
    pub durability: RedbDurability,
    /// The largest the file may grow, in bytes; `None` (the default) for no limit but the
    /// disk's. A write that would grow the file past it fails with [`Error::Full`] and
    /// changes nothing, as on a full disk; what was committed stays, and the store goes on
    /// once there is room (a smaller queue, or a reopen with a larger limit).
    pub max_size: Option<u64>,
}

impl RedbOptions {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the durability.
    pub fn durability(mut self, durability: RedbDurability) -> Self {
        self.durability = durability;
        self
    }

    /// Caps the file at `bytes`; see [`RedbOptions::max_size`].
    pub fn max_size(mut self, bytes: u64) -> Self {
        self.max_size = Some(bytes);
        self
    }
}

/// A [`Store`] on a redb file.
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
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("durability", &self.durability)
            .finish_non_exhaustive()
    }
}

/// Maps any redb error into simplepyq's: the one place that knows redb's errors.
fn db_err(e: impl Into<redb::Error>) -> Error {
    match e.into() {
        redb::Error::DatabaseAlreadyOpen | redb::Error::LockProtocolMismatch => Error::InUse {
            backend: BACKEND,
            message: "the file is open in another process (redb allows one process per file)"
                .into(),
        },
        redb::Error::Corrupted(message) => corrupt(message),
        redb::Error::UpgradeRequired(v) => Error::Foreign {
            backend: BACKEND,
            message: format!("the file is in redb's old format {v}, which this redb cannot read"),
        },
        redb::Error::Io(io) => io_err(io),
        other => Error::Backend {
            backend: BACKEND,
            source: Box::new(other),
        },
    }
}

/// Maps an I/O error of the file: the kinds a user can act on get their own variant.
fn io_err(io: std::io::Error) -> Error {
    use std::io::ErrorKind as K;
    match io.kind() {
        K::InvalidData => Error::Foreign {
            backend: BACKEND,
            message: format!("the file is not a redb database ({io})"),
        },
        K::StorageFull | K::QuotaExceeded | K::FileTooLarge => Error::Full {
            backend: BACKEND,
            message: io.to_string(),
        },
        K::PermissionDenied | K::ReadOnlyFilesystem => Error::ReadOnly {
            backend: BACKEND,
            message: format!(
                "the file or its directory is read-only for this process ({io}: its \
                 permissions, or a read-only mount)"
            ),
        },
        _ => Error::Backend {
            backend: BACKEND,
            source: Box::new(io),
        },
    }
}

/// Inspects a file that redb must repair before it can be read (it was not closed cleanly):
/// repairs a copy of it and inspects that, so that a file that is not a simplepyq queue is
/// refused unchanged. It costs a copy of the file, only after a crash.
fn inspect_repaired_copy(path: &Path) -> Result<()> {
    let dir = tempfile::tempdir().map_err(io_err)?;
    let copy = dir.path().join("check.redb");
    std::fs::copy(path, &copy).map_err(io_err)?;
    let db = Database::create(&copy).map_err(db_err)?;
    inspect(&db).map(drop)
}

/// Opens the redb database in the file at `path` (creating the file if `create`).
///
/// The integrity check reads every page, so that a file damaged outside redb gives
/// [`Error::Corrupt`] rather than a panic deep inside redb later.
fn open_database(path: &Path, create: bool, cap: &Cap, failures: &Failures) -> Result<Database> {
    let file = FileStorage::open(path, create, cap.clone(), failures.clone()).map_err(|io| {
        if let Some(unusable) = Error::unusable_path(path) {
            return unusable;
        }
        match io_err(io) {
            Error::ReadOnly { backend, message } => Error::ReadOnly {
                backend,
                message: format!("{}: {message}", path.display()),
            },
            other => other,
        }
    })?;
    Database::builder()
        .set_check_integrity_on_open(true)
        .create_with_backend(file)
        .map_err(db_err)
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

/// Runs `op`, turning a panic inside it into an [`Error::Corrupt`] (the outer error).
///
/// redb trusts the bytes of its file: some damage that its checksums do not catch makes it
/// panic (seen: "Malformed allocator state", a table name that is not UTF-8). A damaged
/// file must give an error, not bring down the worker threads. (In a build with
/// `panic = "abort"` the process still aborts.)
fn guarded<T>(op: impl FnOnce() -> T) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(op)).map_err(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("a panic");
        corrupt(format!(
            "redb stopped while reading the file ({what}); the file is likely damaged"
        ))
    })
}

fn corrupt(message: impl Into<String>) -> Error {
    let message = message.into();
    if message.contains("magic number") {
        return Error::Foreign {
            backend: BACKEND,
            message: "the file is not a redb database".into(),
        };
    }
    Error::Corrupt {
        backend: BACKEND,
        message,
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
    /// Opens an existing queue file for reading only, as an inspecting tool should: nothing
    /// is written, not even a format upgrade. Every write fails with [`Error::ReadOnly`].
    ///
    /// Errors, besides those of [`RedbStore::open`]: [`Error::Foreign`] for a file that
    /// holds no queue yet; [`Error::ReadOnly`] for a file that must be written before it can
    /// be read (it was not closed cleanly, or is of format 1): opening it read-write once
    /// (any command that changes the queue, or a worker) repairs or upgrades it.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        guarded(|| Self::open_read_only_in(path))?
    }

    fn open_read_only_in(path: &Path) -> Result<Self> {
        Error::directory_given(path).map_or(Ok(()), Err)?;
        let needs_write = |why: &str| Error::ReadOnly {
            backend: BACKEND,
            message: format!(
                "{} {why}, which writes it: open it read-write once to read it",
                path.display()
            ),
        };
        let reader = match ReadOnlyDatabase::open(path) {
            Ok(reader) => reader,
            Err(redb::DatabaseError::RepairAborted) => {
                return Err(needs_write("was not closed cleanly and must be repaired"));
            }
            Err(e) => return Err(db_err(e)),
        };
        match inspect(&reader)? {
            Some(2 | FORMAT) => {}
            Some(_) => return Err(needs_write("is of format 1 and must be upgraded")),
            None => {
                return Err(Error::Foreign {
                    backend: BACKEND,
                    message: format!("{} holds no simplepyq queue", path.display()),
                });
            }
        }
        Ok(RedbStore {
            db: RwLock::new(None),
            reader: Some(reader),
            path: path.to_path_buf(),
            cap: Cap::new(None),
            failures: Failures::default(),
            durability: redb::Durability::Immediate,
        })
    }

    /// Opens the queue file at `path`, creating it if needed, with default settings.
    ///
    /// Errors, each leaving the file unchanged: [`Error::InUse`] if another process has it
    /// open, [`Error::Foreign`] for a file that is not redb or is another application's
    /// redb database, [`Error::SchemaTooNew`] for a file of a newer simplepyq,
    /// [`Error::Corrupt`] for a damaged one (every page's checksum is checked at open),
    /// [`Error::ReadOnly`] for a file or directory this process may not write.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, RedbOptions::default())
    }

    /// Opens the queue file at `path` with `options`.
    pub fn open_with(path: impl AsRef<Path>, options: RedbOptions) -> Result<Self> {
        let path = path.as_ref();
        guarded(|| Self::open_in(path, options))?
    }

    fn open_in(path: &Path, options: RedbOptions) -> Result<Self> {
        Error::directory_given(path).map_or(Ok(()), Err)?;
        let existing = std::fs::metadata(path).is_ok_and(|m| m.len() > 0);
        if existing {
            // Look read-only first: opening for writing updates redb's header, and a file
            // that is not ours must stay as it was.
            match ReadOnlyDatabase::open(path) {
                Ok(db) => {
                    inspect(&db)?;
                }
                // Not closed cleanly (a crash): redb must repair it, which writes it.
                Err(redb::DatabaseError::RepairAborted) => inspect_repaired_copy(path)?,
                Err(e) => return Err(db_err(e)),
            }
        }
        let failures = Failures::default();
        let cap = Cap::new(options.max_size);
        let db = open_database(path, true, &cap, &failures)?;
        let format = inspect(&db)?;
        let store = RedbStore {
            db: RwLock::new(Some(db)),
            reader: None,
            path: path.to_path_buf(),
            cap,
            failures,
            durability: match options.durability {
                RedbDurability::Immediate => redb::Durability::Immediate,
                RedbDurability::None => redb::Durability::None,
            },
        };
        match format {
            Some(FORMAT) => {}
            Some(2) => store.write(|t| {
                t.meta.insert(META_FORMAT, FORMAT).map_err(db_err)?;
                Ok(())
            })?,
            Some(_) => store.upgrade_from_format_1()?,
            None => store.write(|t| {
                t.meta.insert(META_FORMAT, FORMAT).map_err(db_err)?;
                t.meta.insert(META_LAST_ID, 0).map_err(db_err)?;
                Ok(())
            })?,
        }
        Ok(store)
    }

    /// The open database, opened again first if a failed write closed it.
    fn database(&self) -> Result<MappedRwLockReadGuard<'_, Database>> {
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
    fn after_error(&self) {
        if self.failures.take() {
            let closed = self.db.write().take();
            // Closing a database that redb gave up on may panic in turn.
            let _ = guarded(move || drop(closed));
        }
    }

    /// Runs `op` on the database, closing it for a reopen if a write of the file failed or
    /// redb panicked (its state may be half-changed; the reopen checks the file).
    fn with_db<T>(&self, op: impl FnOnce(&Database) -> Result<T>) -> Result<T> {
        let result = guarded(|| op(&*self.database()?)).unwrap_or_else(|panicked| {
            self.failures.note_failure();
            Err(panicked)
        });
        if result.is_err() {
            self.after_error();
        }
        result
    }

    /// Rebuilds the indexes of a format-1 file and rewrites its records, in one transaction.
    fn upgrade_from_format_1(&self) -> Result<()> {
        self.with_db(|db| self.upgrade_in(db))
    }

    fn upgrade_in(&self, db: &Database) -> Result<()> {
        let mut tx = db.begin_write().map_err(db_err)?;
        tx.set_durability(self.durability).map_err(db_err)?;
        for name in FORMAT_1_INDEXES {
            let table: TableDefinition<'_, u64, ()> = TableDefinition::new(name);
            // The typed handle only names the table: delete_table ignores its types.
            tx.delete_table(table).map_err(db_err)?;
        }
        {
            let mut t = Tables::open(&tx)?;
            let mut tasks = Vec::new();
            for entry in t.tasks.iter().map_err(db_err)? {
                let (key, bytes) = entry.map_err(db_err)?;
                let id = to_id(key.value())?;
                tasks.push(
                    record::decode(id, bytes.value())
                        .map_err(|e| corrupt(format!("task {id}: {e}")))?,
                );
            }
            for task in &tasks {
                t.index(task, true)?;
                t.put(task)?;
            }
            t.meta.insert(META_FORMAT, FORMAT).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)
    }

    /// Runs `op` in one write transaction, committed if it succeeds.
    fn write<T>(&self, op: impl FnOnce(&mut Tables<'_>) -> Result<T>) -> Result<T> {
        self.write_tx(|_, tables| op(tables))
    }

    /// [`RedbStore::write`], with the transaction too, for tables not in [`Tables`].
    fn write_tx<T>(
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
    fn read<T>(&self, op: impl FnOnce(&ReadTransaction) -> Result<T>) -> Result<T> {
        match &self.reader {
            Some(reader) => guarded(|| op(&reader.begin_read().map_err(db_err)?))?,
            None => self.with_db(|db| op(&db.begin_read().map_err(db_err)?)),
        }
    }
}

/// The (channel, status code) pairs of the status index that `filter` (which names a
/// channel, a status or both) selects: the channels come from the counts table.
fn status_pairs(read: &ReadTransaction, filter: &ListFilter) -> Result<Vec<(String, u8)>> {
    let codes: Vec<u8> = match filter.status {
        Some(s) => vec![status_code(s)],
        None => Status::ALL.map(status_code).to_vec(),
    };
    let channels = match &filter.channel {
        Some(c) => vec![c.clone()],
        None => channel_names(read)?,
    };
    Ok(channels
        .iter()
        .flat_map(|c| codes.iter().map(move |code| (c.clone(), *code)))
        .collect())
}

/// The channels with tasks, in order: the keys of the counts table.
fn channel_names(read: &ReadTransaction) -> Result<Vec<String>> {
    let table = match read.open_table(COUNTS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(db_err(e)),
    };
    let mut names: Vec<String> = Vec::new();
    for entry in table.iter().map_err(db_err)? {
        let (key, _) = entry.map_err(db_err)?;
        let name = key.value().0;
        if names.last().is_none_or(|last| last != name) {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

/// The format of the simplepyq queue in `db`, if it is one this build reads, or `None` if
/// `db` is empty; an error for anything else. Reads only.
fn inspect(db: &impl ReadableDatabase) -> Result<Option<u64>> {
    let read = db.begin_read().map_err(db_err)?;
    match read.open_table(META) {
        Ok(meta) => {
            let format = meta.get(META_FORMAT).map_err(db_err)?.map(|v| v.value());
            return match format {
                Some(f @ (1 | 2 | FORMAT)) => Ok(Some(f)),
                Some(found) => Err(Error::SchemaTooNew {
                    backend: BACKEND,
                    found: i64::try_from(found).unwrap_or(i64::MAX),
                    supported: FORMAT as i64,
                }),
                None => Err(corrupt("the simplepyq_meta table has no format")),
            };
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(db_err(e)),
    }
    let tables = read.list_tables().map_err(db_err)?.count();
    if tables > 0 {
        return Err(Error::Foreign {
            backend: BACKEND,
            message: format!(
                "the file is a redb database of another application ({tables} tables), not a \
                 simplepyq queue"
            ),
        });
    }
    Ok(None)
}

/// Totals as the `totals` table stores them.
fn stored_totals((done, failed, retried, lease_lost): (u64, u64, u64, u64)) -> Totals {
    Totals::from_figures([done, failed, retried, lease_lost])
}

/// Adds `counted` to the channels' totals.
fn add_totals(tx: &WriteTransaction, counted: &BTreeMap<String, Totals>) -> Result<()> {
    if counted.is_empty() {
        return Ok(());
    }
    let mut table = tx.open_table(TOTALS).map_err(db_err)?;
    for (channel, c) in counted {
        let mut sum = table
            .get(channel.as_str())
            .map_err(db_err)?
            .map_or_else(Totals::default, |v| stored_totals(v.value()));
        sum.add(*c);
        let [done, failed, retried, lease_lost] = sum.figures();
        table
            .insert(channel.as_str(), (done, failed, retried, lease_lost))
            .map_err(db_err)?;
    }
    Ok(())
}

/// The tables of one write transaction.
struct Tables<'tx> {
    tasks: Table<'tx, u64, &'static [u8]>,
    ready: Table<'tx, (&'static str, i64, i64, u64), ()>,
    delayed: Table<'tx, (&'static str, i64, u64), ()>,
    unique: Table<'tx, (&'static str, &'static str), u64>,
    leases: Table<'tx, (i64, u64), ()>,
    channel_leases: Table<'tx, (&'static str, i64, u64), ()>,
    by_status: Table<'tx, (&'static str, u8, u64), ()>,
    counts: Table<'tx, (&'static str, u8), u64>,
    meta: Table<'tx, &'static str, u64>,
}

impl<'tx> Tables<'tx> {
    fn open(tx: &'tx WriteTransaction) -> Result<Self> {
        Ok(Tables {
            tasks: tx.open_table(TASKS).map_err(db_err)?,
            ready: tx.open_table(READY).map_err(db_err)?,
            delayed: tx.open_table(DELAYED).map_err(db_err)?,
            unique: tx.open_table(UNIQUE).map_err(db_err)?,
            leases: tx.open_table(LEASES).map_err(db_err)?,
            channel_leases: tx.open_table(CHANNEL_LEASES).map_err(db_err)?,
            by_status: tx.open_table(BY_STATUS).map_err(db_err)?,
            counts: tx.open_table(COUNTS).map_err(db_err)?,
            meta: tx.open_table(META).map_err(db_err)?,
        })
    }

    /// Adds tasks; a task whose unique key an unfinished task of its channel holds gets
    /// that task's id instead.
    fn add(&mut self, tasks: &[NewTask], now: Timestamp) -> Result<Vec<TaskId>> {
        let mut last = self
            .meta
            .get(META_LAST_ID)
            .map_err(db_err)?
            .map_or(0, |v| v.value());
        let mut ids = Vec::with_capacity(tasks.len());
        for new in tasks {
            if let Some(key) = &new.unique_key {
                let existing = self
                    .unique
                    .get((new.channel.as_str(), key.as_str()))
                    .map_err(db_err)?;
                if let Some(id) = existing {
                    ids.push(to_id(id.value())?);
                    continue;
                }
            }
            last += 1;
            let task = new.to_task(to_id(last)?, now);
            self.index(&task, true)?;
            self.put(&task)?;
            ids.push(task.id);
        }
        self.meta.insert(META_LAST_ID, last).map_err(db_err)?;
        Ok(ids)
    }

    fn load(&self, id: TaskId) -> Result<Option<Task>> {
        let Some(bytes) = self.tasks.get(to_key(id)).map_err(db_err)? else {
            return Ok(None);
        };
        record::decode(id, bytes.value())
            .map(Some)
            .map_err(|e| corrupt(format!("task {id}: {e}")))
    }

    /// Adds (`add == true`) or removes the index entries and count of `task` as it stands.
    fn index(&mut self, task: &Task, add: bool) -> Result<()> {
        let (id, ch, s) = (to_key(task.id), task.channel.as_str(), &task.state);
        let code = status_code(s.status);
        let lease = s.lease_until.map_or(0, Timestamp::as_millis);
        if add {
            self.by_status.insert((ch, code, id), ()).map_err(db_err)?;
        } else {
            self.by_status.remove((ch, code, id)).map_err(db_err)?;
        }
        let count = self
            .counts
            .get((ch, code))
            .map_err(db_err)?
            .map_or(0, |v| v.value());
        let count = if add {
            count + 1
        } else {
            count.saturating_sub(1)
        };
        if count == 0 {
            self.counts.remove((ch, code)).map_err(db_err)?;
        } else {
            self.counts.insert((ch, code), count).map_err(db_err)?;
        }
        if let Some(key) = task.unique_key.as_deref().filter(|_| !s.status.is_final()) {
            if add {
                self.unique.insert((ch, key), id).map_err(db_err)?;
            } else {
                self.unique.remove((ch, key)).map_err(db_err)?;
            }
        }
        let ready = (ch, -i64::from(task.priority), s.run_at.as_millis(), id);
        let delayed = (ch, s.run_at.as_millis(), id);
        match (s.status, add) {
            (Status::Pending, true) => {
                self.ready.insert(ready, ()).map_err(db_err)?;
            }
            (Status::Pending, false) => {
                self.ready.remove(ready).map_err(db_err)?;
            }
            (Status::Delayed, true) => {
                self.delayed.insert(delayed, ()).map_err(db_err)?;
            }
            (Status::Delayed, false) => {
                self.delayed.remove(delayed).map_err(db_err)?;
            }
            (Status::Running, true) => {
                self.leases.insert((lease, id), ()).map_err(db_err)?;
                self.channel_leases
                    .insert((ch, lease, id), ())
                    .map_err(db_err)?;
            }
            (Status::Running, false) => {
                self.leases.remove((lease, id)).map_err(db_err)?;
                self.channel_leases
                    .remove((ch, lease, id))
                    .map_err(db_err)?;
            }
            (Status::Done | Status::Failed, _) => {}
        }
        Ok(())
    }

    fn put(&mut self, task: &Task) -> Result<()> {
        self.tasks
            .insert(to_key(task.id), record::encode(task).as_slice())
            .map_err(db_err)?;
        Ok(())
    }

    /// Applies `event` to `task`, re-indexes and stores it.
    fn transition(&mut self, task: &mut Task, event: &Event) -> Result<()> {
        let next = apply(&task.state, event).map_err(|r| r.into_error(task.id))?;
        self.set_state(task, next)
    }

    /// Gives `task` its new state, re-indexes and stores it.
    fn set_state(&mut self, task: &mut Task, next: TaskState) -> Result<()> {
        self.index(task, false)?;
        task.state = next;
        self.index(task, true)?;
        self.put(task)
    }

    /// Writes the changes of a [`batch`] rule to the tasks the rule read (`read`, by id);
    /// returns how many.
    fn write_changes(
        &mut self,
        changes: Vec<batch::Change>,
        mut read: HashMap<TaskId, Task>,
    ) -> Result<usize> {
        let n = changes.len();
        for (id, next) in changes {
            let mut task = read.remove(&id).ok_or(Error::NotFound(id))?;
            self.set_state(&mut task, next)?;
        }
        Ok(n)
    }

    fn transition_id(&mut self, id: TaskId, event: &Event) -> Result<Task> {
        let mut task = self.load(id)?.ok_or(Error::NotFound(id))?;
        self.transition(&mut task, event)?;
        Ok(task)
    }

    fn delete(&mut self, task: &Task) -> Result<()> {
        self.index(task, false)?;
        self.tasks.remove(to_key(task.id)).map_err(db_err)?;
        Ok(())
    }

    /// Reads a task's state for a [`batch`] rule, keeping the task in `read` for the write.
    fn read_state(
        &self,
        id: TaskId,
        read: &mut HashMap<TaskId, Task>,
    ) -> Result<Option<TaskState>> {
        let Some(task) = self.load(id)? else {
            return Ok(None);
        };
        let state = task.state.clone();
        read.insert(id, task);
        Ok(Some(state))
    }

    /// Applies `event` to the task of each claim still held; returns how many.
    fn on_held(&mut self, claims: &[Claim], event: &Event) -> Result<usize> {
        let mut read = HashMap::new();
        let changes = batch::on_held(claims, event, |id| self.read_state(id, &mut read))?;
        self.write_changes(changes, read)
    }

    /// Ids of tasks with `status` in `channel`, or in every channel.
    fn ids_with_status(&self, channel: Option<&str>, status: Status) -> Result<Vec<TaskId>> {
        let code = status_code(status);
        let entries = match channel {
            Some(ch) => self.by_status.range((ch, code, 0)..=(ch, code, u64::MAX)),
            None => self.by_status.iter(),
        }
        .map_err(db_err)?;
        let mut ids = Vec::new();
        for entry in entries {
            let (key, _) = entry.map_err(db_err)?;
            let (_, c, id) = key.value();
            if c == code {
                ids.push(to_id(id)?);
            }
        }
        Ok(ids)
    }

    /// Deletes the tasks `ids`; returns how many existed.
    fn delete_ids(&mut self, ids: &[TaskId]) -> Result<usize> {
        let mut n = 0;
        for id in ids {
            if let Some(task) = self.load(*id)? {
                self.delete(&task)?;
                n += 1;
            }
        }
        Ok(n)
    }
}

impl Store for RedbStore {
    fn enqueue(&self, tasks: &[NewTask], now: Timestamp) -> Result<Vec<TaskId>> {
        for t in tasks {
            validate_channel(&t.channel)?;
        }
        self.write(|t| t.add(tasks, now))
    }

    fn claim(
        &self,
        channel: &str,
        limit: usize,
        now: Timestamp,
        lease_until: Timestamp,
    ) -> Result<Vec<Task>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let all_ready = (channel, i64::MIN, i64::MIN, 0)..=(channel, i64::MAX, i64::MAX, u64::MAX);
        let due_delayed = (channel, i64::MIN, 0)..=(channel, now.as_millis(), u64::MAX);
        // Look in a read transaction first: idle workers poll without taking the writer.
        let idle = self.read(|read| {
            let ready = read.open_table(READY).map_err(db_err)?;
            let delayed = read.open_table(DELAYED).map_err(db_err)?;
            Ok(ready
                .range(all_ready.clone())
                .map_err(db_err)?
                .next()
                .is_none()
                && delayed
                    .range(due_delayed.clone())
                    .map_err(db_err)?
                    .next()
                    .is_none())
        })?;
        if idle {
            return Ok(Vec::new());
        }
        let event = Event::Claim { now, lease_until };
        self.write(|t| {
            let mut promote = Vec::new();
            let due = t.delayed.range(due_delayed.clone()).map_err(db_err)?;
            for entry in due.take(batch::PROMOTE_PER_CLAIM) {
                promote.push(to_id(entry.map_err(db_err)?.0.value().2)?);
            }
            for id in promote {
                t.transition_id(id, &Event::Promote { now })?;
            }
            let mut ids = Vec::new();
            for entry in t.ready.range(all_ready.clone()).map_err(db_err)? {
                let (_, _, run_at, id) = entry.map_err(db_err)?.0.value();
                // Pending tasks are due, unless another process's clock runs ahead.
                if run_at <= now.as_millis() {
                    ids.push(to_id(id)?);
                    if ids.len() == limit {
                        break;
                    }
                }
            }
            ids.into_iter()
                .map(|id| t.transition_id(id, &event))
                .collect()
        })
    }

    fn extend_leases(&self, claims: &[Claim], lease_until: Timestamp) -> Result<usize> {
        self.write(|t| t.on_held(claims, &Event::Extend { lease_until }))
    }

    fn release(&self, claims: &[Claim], now: Timestamp) -> Result<usize> {
        self.write(|t| t.on_held(claims, &Event::Release { now }))
    }

    fn finish_many(
        &self,
        results: &[(Claim, Outcome)],
        now: Timestamp,
    ) -> Result<Vec<Result<Status>>> {
        self.write_tx(|tx, t| {
            let mut read = HashMap::new();
            let done = batch::finish(results, now, |id| t.read_state(id, &mut read))?;
            let counted = done.totals_by_channel(|id| read.get(&id).map(|t| t.channel.as_str()));
            add_totals(tx, &counted)?;
            t.write_changes(done.changes, read)?;
            Ok(done.statuses)
        })
    }

    fn recover_expired(&self, now: Timestamp, max_lost_runs: u32) -> Result<usize> {
        let expired = (i64::MIN, 0)..=(now.as_millis(), u64::MAX);
        let none_expired = self.read(|read| {
            let leases = read.open_table(LEASES).map_err(db_err)?;
            Ok(leases
                .range(expired.clone())
                .map_err(db_err)?
                .next()
                .is_none())
        })?;
        if none_expired {
            return Ok(0);
        }
        self.write_tx(|tx, t| {
            let mut ids = Vec::new();
            for entry in t.leases.range(expired.clone()).map_err(db_err)? {
                let (key, _) = entry.map_err(db_err)?;
                ids.push(to_id(key.value().1)?);
            }
            let event = Event::Expire { now, max_lost_runs };
            let mut counted = Vec::with_capacity(ids.len());
            for id in &ids {
                let task = t.transition_id(*id, &event)?;
                counted.push((task.channel, Totals::of(&event, task.state.status)));
            }
            add_totals(
                tx,
                &Totals::by_channel(counted.iter().map(|(c, t)| (c.as_str(), *t))),
            )?;
            Ok(ids.len())
        })
    }

    fn clear_failed(&self, channel: Option<&str>) -> Result<usize> {
        self.write(|t| {
            let ids = t.ids_with_status(channel, Status::Failed)?;
            t.delete_ids(&ids)
        })
    }

    fn requeue_failed(
        &self,
        channel: Option<&str>,
        retries: Option<u32>,
        now: Timestamp,
    ) -> Result<usize> {
        self.write(|t| {
            let mut failed = Vec::new();
            for id in t.ids_with_status(channel, Status::Failed)? {
                failed.push(t.load(id)?.ok_or(Error::NotFound(id))?);
            }
            failed.sort_unstable_by_key(|task| task.id);
            let changes = batch::requeue(&failed, now, retries, |channel, key| {
                Ok(t.unique.get((channel, key)).map_err(db_err)?.is_some())
            })?;
            let read = failed.into_iter().map(|task| (task.id, task)).collect();
            t.write_changes(changes, read)
        })
    }

    fn remove_channel(&self, channel: &str) -> Result<usize> {
        self.write(|t| {
            let mut ids = Vec::new();
            for entry in t
                .by_status
                .range((channel, 0, 0)..=(channel, u8::MAX, u64::MAX))
                .map_err(db_err)?
            {
                let (key, _) = entry.map_err(db_err)?;
                ids.push(to_id(key.value().2)?);
            }
            t.delete_ids(&ids)
        })
    }

    fn purge_done(&self, channel: Option<&str>, before: Timestamp) -> Result<usize> {
        self.write(|t| {
            let mut old = Vec::new();
            for id in t.ids_with_status(channel, Status::Done)? {
                if t.load(id)?
                    .is_some_and(|task| task.state.updated_at < before)
                {
                    old.push(id);
                }
            }
            t.delete_ids(&old)
        })
    }

    fn channels(&self) -> Result<Vec<String>> {
        self.read(channel_names)
    }

    fn counts(&self, channel: Option<&str>) -> Result<Counts> {
        self.read(|read| {
            let table = match read.open_table(COUNTS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Counts::default()),
                Err(e) => return Err(db_err(e)),
            };
            let entries = match channel {
                Some(ch) => table.range((ch, 0)..=(ch, u8::MAX)),
                None => table.iter(),
            }
            .map_err(db_err)?;
            let mut counts = Counts::default();
            for entry in entries {
                let (key, n) = entry.map_err(db_err)?;
                let code = key.value().1;
                let status = status_from_code(code)
                    .ok_or_else(|| corrupt(format!("unknown status code {code} in counts")))?;
                *counts.get_mut(status) += usize::try_from(n.value()).unwrap_or(usize::MAX);
            }
            Ok(counts)
        })
    }

    fn next_wakeup(&self, channel: &str) -> Result<Option<Timestamp>> {
        self.read(|read| {
            let ready = read.open_table(READY).map_err(db_err)?;
            let ready = match ready
                .range((channel, i64::MIN, i64::MIN, 0)..=(channel, i64::MAX, i64::MAX, u64::MAX))
                .map_err(db_err)?
                .next()
            {
                Some(entry) => Some(entry.map_err(db_err)?.0.value().2),
                None => None,
            };
            let first = |def: TableDefinition<(&str, i64, u64), ()>| -> Result<Option<i64>> {
                let table = read.open_table(def).map_err(db_err)?;
                let mut range = table
                    .range((channel, i64::MIN, 0)..=(channel, i64::MAX, u64::MAX))
                    .map_err(db_err)?;
                match range.next() {
                    Some(entry) => Ok(Some(entry.map_err(db_err)?.0.value().1)),
                    None => Ok(None),
                }
            };
            let delayed = first(DELAYED)?;
            let lease = first(CHANNEL_LEASES)?;
            Ok([ready, delayed, lease]
                .into_iter()
                .flatten()
                .min()
                .map(Timestamp::from_millis))
        })
    }

    fn list(&self, filter: &ListFilter) -> Result<Vec<Task>> {
        self.read(|read| {
            let tasks = read.open_table(TASKS).map_err(db_err)?;
            let first = filter.after.map_or(0, |a| to_key(a).saturating_add(1));
            let decode = |key: u64, bytes: &[u8]| {
                let id = to_id(key)?;
                record::decode(id, bytes).map_err(|e| corrupt(format!("task {id}: {e}")))
            };
            if filter.channel.is_none() && filter.status.is_none() {
                // Every task matches: the first `limit` in id order.
                let mut out = Vec::new();
                for entry in tasks.range(first..).map_err(db_err)?.take(filter.limit) {
                    let (key, bytes) = entry.map_err(db_err)?;
                    out.push(decode(key.value(), bytes.value())?);
                }
                return Ok(out);
            }
            // The ids come from the status index, whose keys are (channel, status, id):
            // the first `limit` of each pair the filter names, merged; only those tasks
            // are read.
            let pairs = status_pairs(read, filter)?;
            let by_status = read.open_table(BY_STATUS).map_err(db_err)?;
            let mut ids = Vec::new();
            for (channel, code) in &pairs {
                let range = by_status
                    .range((channel.as_str(), *code, first)..=(channel.as_str(), *code, u64::MAX))
                    .map_err(db_err)?;
                for entry in range.take(filter.limit) {
                    ids.push(entry.map_err(db_err)?.0.value().2);
                }
            }
            ids.sort_unstable();
            ids.truncate(filter.limit);
            let mut out = Vec::with_capacity(ids.len());
            for key in ids {
                let bytes = tasks
                    .get(key)
                    .map_err(db_err)?
                    .ok_or_else(|| corrupt(format!("task {key} is indexed but missing")))?;
                out.push(decode(key, bytes.value())?);
            }
            Ok(out)
        })
    }

    fn cancel(&self, id: TaskId) -> Result<()> {
        self.write(|t| {
            let task = t.load(id)?.ok_or(Error::NotFound(id))?;
            transition::cancel(&task.state).map_err(|r| r.into_error(id))?;
            t.delete(&task)
        })
    }

    fn fire_schedule(
        &self,
        name: &str,
        at: Timestamp,
        task: &NewTask,
        now: Timestamp,
    ) -> Result<Option<TaskId>> {
        validate_channel(&task.channel)?;
        self.write_tx(|tx, t| {
            let mut schedules = tx.open_table(SCHEDULES).map_err(db_err)?;
            let last = schedules.get(name).map_err(db_err)?.map(|v| v.value());
            if last.is_some_and(|last| last >= at.as_millis()) {
                return Ok(None);
            }
            schedules.insert(name, at.as_millis()).map_err(db_err)?;
            Ok(t.add(std::slice::from_ref(task), now)?.pop())
        })
    }

    fn last_fired(&self, name: &str) -> Result<Option<Timestamp>> {
        self.read(|read| {
            let schedules = match read.open_table(SCHEDULES) {
                Ok(table) => table,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(db_err(e)),
            };
            let last = schedules.get(name).map_err(db_err)?.map(|v| v.value());
            Ok(last.map(Timestamp::from_millis))
        })
    }

    fn totals(&self) -> Result<BTreeMap<String, Totals>> {
        self.read(|read| {
            let table = match read.open_table(TOTALS) {
                Ok(table) => table,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(BTreeMap::new()),
                Err(e) => return Err(db_err(e)),
            };
            let mut totals = BTreeMap::new();
            for entry in table.iter().map_err(db_err)? {
                let (channel, counts) = entry.map_err(db_err)?;
                totals.insert(channel.value().to_owned(), stored_totals(counts.value()));
            }
            Ok(totals)
        })
    }

    fn get(&self, id: TaskId) -> Result<Option<Task>> {
        self.read(|read| {
            let tasks = read.open_table(TASKS).map_err(db_err)?;
            let Some(bytes) = tasks.get(to_key(id)).map_err(db_err)? else {
                return Ok(None);
            };
            record::decode(id, bytes.value())
                .map(Some)
                .map_err(|e| corrupt(format!("task {id}: {e}")))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{ReadableTableMetadata, TableHandle};
    use simplepyq_core::StoreExt;

    const T0: Timestamp = Timestamp::from_millis(1_000_000);

    /// Opens `path` expecting an error, and checks the file's bytes did not change.
    fn refused(path: &Path) -> Error {
        let before = std::fs::read(path).expect("read");
        let err = RedbStore::open(path).expect_err("must be refused");
        assert!(
            std::fs::read(path).expect("read") == before,
            "the file changed"
        );
        err
    }

    #[test]
    fn a_file_that_is_not_redb_is_refused_unchanged() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("notes.txt");
        std::fs::write(&path, "just some text, not a database\n".repeat(300)).expect("write");
        let err = refused(&path);
        assert!(matches!(err, Error::Foreign { .. }), "{err}");
        assert!(err.to_string().contains("not a redb database"), "{err}");
    }

    #[test]
    fn a_sqlite_file_is_refused_unchanged() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("q.db");
        let mut bytes = b"SQLite format 3\0".to_vec();
        bytes.resize(4096, 0);
        std::fs::write(&path, &bytes).expect("write");
        let err = refused(&path);
        assert!(matches!(err, Error::Foreign { .. }), "{err}");
    }

    #[test]
    fn another_applications_redb_file_is_refused_unchanged() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("app.redb");
        {
            let db = Database::create(&path).expect("create");
            let tx = db.begin_write().expect("write");
            {
                let users: TableDefinition<u64, &str> = TableDefinition::new("users");
                let mut t = tx.open_table(users).expect("table");
                t.insert(1, "ada").expect("insert");
            }
            tx.commit().expect("commit");
        }
        let err = refused(&path);
        assert!(matches!(err, Error::Foreign { .. }), "{err}");
        assert!(err.to_string().contains("not a simplepyq queue"), "{err}");
    }

    /// A read-only open writes nothing: a format-2 file stays format 2 while its tasks are
    /// read, every write is refused, and a format-1 file (which must be upgraded to be read)
    /// is refused unchanged.
    #[test]
    fn a_read_only_open_writes_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("q.redb");
        let format = |path: &Path| {
            let db = Database::open(path).expect("open raw");
            let read = db.begin_read().expect("read");
            let meta = read.open_table(META).expect("meta");
            meta.get(META_FORMAT).expect("get").map(|v| v.value())
        };
        let set_format = |path: &Path, f: u64| {
            let db = Database::open(path).expect("open raw");
            let tx = db.begin_write().expect("write");
            tx.open_table(META)
                .expect("meta")
                .insert(META_FORMAT, f)
                .expect("format");
            tx.commit().expect("commit");
        };
        {
            let store = RedbStore::open(&path).expect("create");
            store
                .enqueue_one(NewTask::new("c", vec![0x90]), T0)
                .expect("enqueue");
        }
        set_format(&path, 2);
        let before = std::fs::read(&path).expect("read");
        {
            let store = RedbStore::open_read_only(&path).expect("open read-only");
            assert_eq!(store.counts(None).expect("counts").pending, 1);
            assert_eq!(store.list(&ListFilter::new(5)).expect("list").len(), 1);
            let err = store
                .enqueue_one(NewTask::new("c", vec![]), T0)
                .expect_err("read-only");
            assert!(matches!(err, Error::ReadOnly { .. }), "{err}");
        }
        assert!(
            std::fs::read(&path).expect("read") == before,
            "the file changed"
        );
        assert_eq!(format(&path), Some(2));
        set_format(&path, 1);
        let before = std::fs::read(&path).expect("read");
        let err = RedbStore::open_read_only(&path).expect_err("format 1 needs an upgrade");
        assert!(matches!(err, Error::ReadOnly { .. }), "{err}");
        assert!(
            std::fs::read(&path).expect("read") == before,
            "the file changed"
        );
    }

    #[test]
    fn a_newer_format_is_refused_unchanged() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("q.redb");
        {
            let store = RedbStore::open(&path).expect("create");
            store
                .write(|t| {
                    t.meta.insert(META_FORMAT, FORMAT + 1).map_err(db_err)?;
                    Ok(())
                })
                .expect("bump");
        }
        match refused(&path) {
            Error::SchemaTooNew {
                found, supported, ..
            } => assert_eq!((found, supported), (FORMAT as i64 + 1, FORMAT as i64)),
            other => panic!("expected SchemaTooNew, got {other}"),
        }
    }

    #[test]
    fn a_second_open_of_a_held_file_is_in_use() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("q.redb");
        let first = RedbStore::open(&path).expect("create");
        let id = first
            .enqueue_one(NewTask::new("c", vec![1]), T0)
            .expect("enqueue");
        let err = RedbStore::open(&path).expect_err("the file is held");
        assert!(matches!(err, Error::InUse { .. }), "{err}");
        drop(first);
        let again = RedbStore::open(&path).expect("free again");
        assert_eq!(again.get(id).expect("get").map(|t| t.args), Some(vec![1]));
    }

    #[test]
    fn a_format_1_file_is_upgraded_keeping_its_tasks() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("v1.redb");
        let pending = NewTask::new("c", vec![1]).to_task(TaskId::new(1), T0);
        let delayed = NewTask::new("c", vec![2])
            .run_at(T0.after(std::time::Duration::from_secs(1)))
            .to_task(TaskId::new(2), T0);
        {
            // The layout format 1 wrote.
            let db = Database::create(&path).expect("create");
            let tx = db.begin_write().expect("write");
            {
                let mut meta = tx.open_table(META).expect("meta");
                meta.insert(META_FORMAT, 1).expect("format");
                meta.insert(META_LAST_ID, 2).expect("last id");
                let mut tasks = tx.open_table(TASKS).expect("tasks");
                let queued: TableDefinition<(&str, i64, u64), ()> = TableDefinition::new("queued");
                let mut queued = tx.open_table(queued).expect("queued");
                let mut counts = tx.open_table(COUNTS).expect("counts");
                for t in [&pending, &delayed] {
                    let v1 = record::tests::encode_format_1(t);
                    tasks.insert(to_key(t.id), v1.as_slice()).expect("task");
                    queued
                        .insert(("c", t.state.run_at.as_millis(), to_key(t.id)), ())
                        .expect("queued");
                    let code = status_code(t.state.status);
                    counts.insert(("c", code), 1).expect("count");
                }
            }
            tx.commit().expect("commit");
        }
        let store = RedbStore::open(&path).expect("upgrade");
        {
            let db = store.database().expect("database");
            let read = db.begin_read().expect("read");
            let meta = read.open_table(META).expect("meta");
            let format = meta.get(META_FORMAT).expect("get").map(|v| v.value());
            assert_eq!(format, Some(FORMAT));
            let tables: Vec<String> = read
                .list_tables()
                .expect("tables")
                .map(|t| t.name().to_owned())
                .collect();
            assert!(!tables.contains(&"queued".to_owned()), "{tables:?}");
        }
        let c = store.counts(Some("c")).expect("counts");
        assert_eq!((c.pending, c.delayed), (1, 1));
        let first = store.claim("c", 5, T0, T0).expect("claim");
        assert_eq!(
            first.iter().map(|t| t.id).collect::<Vec<_>>(),
            vec![pending.id]
        );
        let later = T0.after(std::time::Duration::from_secs(1));
        let second = store.claim("c", 5, later, later).expect("claim");
        assert_eq!(second[0].args, vec![2]);
        let next = store
            .enqueue_one(NewTask::new("c", vec![]), T0)
            .expect("enqueue");
        assert_eq!(next, TaskId::new(3), "ids go on after the upgrade");
    }

    #[test]
    fn a_full_file_refuses_writes_keeps_what_it_has_and_goes_on_once_there_is_room() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("q.redb");
        let capped = RedbOptions::new().max_size(4 * 1024 * 1024);
        let store = RedbStore::open_with(&path, capped).expect("open");
        let mut stored = Vec::new();
        let err = loop {
            match store.enqueue_one(NewTask::new("c", vec![7; 2_000]), T0) {
                Ok(id) => stored.push(id),
                Err(e) => break e,
            }
            assert!(stored.len() < 10_000, "the size cap did not hold");
        };
        assert!(matches!(err, Error::Full { .. }), "{err}");
        assert!(err.to_string().contains("max_size"), "{err}");
        assert!(stored.len() > 100, "only {} tasks fit", stored.len());
        // redb refuses every call after a failed write until the file is reopened; the store
        // reopens it by itself, and every committed task is there.
        assert_eq!(store.counts(None).expect("counts").total(), stored.len());
        // Every write may need new pages (redb copies on write): whatever fails, fails as full.
        match store.claim("c", 10, T0, T0) {
            Ok(_) | Err(Error::Full { .. }) => {}
            Err(e) => panic!("a claim on a full file: {e}"),
        }
        // Room again (as when the disk is freed), in the same store: every task runs.
        store.cap.set(64 * 1024 * 1024);
        let claimed = store.claim("c", usize::MAX, T0, T0).expect("claim");
        assert_eq!(claimed.len(), stored.len());
        assert!(claimed.iter().all(|t| t.args == vec![7; 2_000]));
        for t in &claimed {
            store.complete(t.claim(), T0).expect("complete");
        }
        store
            .enqueue_one(NewTask::new("c", vec![7; 2_000]), T0)
            .expect("room again");
        drop(store);
        let store = RedbStore::open(&path).expect("reopen without a cap");
        let counts = store.counts(None).expect("counts");
        assert_eq!((counts.done, counts.pending), (stored.len(), 1));
    }

    /// A file cut short, at several lengths: refused at open as damaged (never a store
    /// that misses tasks silently).
    #[test]
    fn a_truncated_file_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("q.redb");
        {
            let store = RedbStore::open(&path).expect("open");
            let tasks: Vec<NewTask> = (0..500).map(|_| NewTask::new("c", vec![7; 100])).collect();
            store.enqueue(&tasks, T0).expect("enqueue");
        }
        let good = std::fs::read(&path).expect("read");
        for keep in [good.len() / 10, good.len() / 2, good.len() - 4096] {
            std::fs::write(&path, &good[..keep]).expect("write a cut copy");
            let err = RedbStore::open(&path).expect_err("a cut file must be refused");
            assert!(matches!(err, Error::Corrupt { .. }), "{keep} bytes: {err}");
            assert!(err.to_string().contains("truncated"), "{err}");
        }
    }

    /// Damaged copies of a queue file (1 to 8 bytes changed at random places, 300 seeds):
    /// each opens and serves calls, or gives a clear error and stays unchanged; none
    /// panics. redb panics on some of these inside; the store turns that into
    /// [`Error::Corrupt`].
    #[test]
    fn a_damaged_file_gives_an_error_never_a_panic() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("q.redb");
        {
            let store = RedbStore::open(&path).expect("open");
            let tasks: Vec<NewTask> = (0..20).map(|i| NewTask::new("c", vec![i; 30])).collect();
            store.enqueue(&tasks, T0).expect("enqueue");
        }
        let good = std::fs::read(&path).expect("read");
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut refused = 0;
        for round in 0..300 {
            let mut bytes = good.clone();
            for _ in 0..(1 + round % 8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let at = usize::try_from(x % good.len() as u64).expect("in range");
                bytes[at] ^= (x >> 32) as u8 | 1;
            }
            std::fs::write(&path, &bytes).expect("write");
            match RedbStore::open(&path) {
                Ok(store) => {
                    // Served or refused, but no panic.
                    let _ = store.counts(None);
                    let _ = store.list(&ListFilter::new(100));
                    let _ = store.claim("c", 100, T0, T0);
                }
                Err(Error::Corrupt { .. } | Error::Foreign { .. } | Error::SchemaTooNew { .. }) => {
                    refused += 1;
                    assert!(
                        std::fs::read(&path).expect("read") == bytes,
                        "round {round}: a refused file was changed"
                    );
                }
                Err(e) => panic!("round {round}: unexpected error {e}"),
            }
        }
        assert!(
            refused > 100,
            "only {refused} of 300 damaged files were noticed"
        );
    }

    /// A list filtered by channel or status follows the status index: it reads only the
    /// records it returns (a damaged record of another status is not even decoded), in id
    /// order across channels and statuses, a page at a time.
    #[test]
    fn a_filtered_list_reads_only_the_tasks_it_returns() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = RedbStore::open(dir.path().join("q.redb")).expect("create");
        let ids = store
            .enqueue(
                &["a", "b", "a", "b", "a"].map(|c| NewTask::new(c, vec![])),
                T0,
            )
            .expect("enqueue");
        for t in store.claim("a", 1, T0, T0).expect("claim") {
            store.complete(t.claim(), T0).expect("complete");
        }
        {
            let db = store.database().expect("database");
            let tx = db.begin_write().expect("write");
            tx.open_table(TASKS)
                .expect("tasks")
                .insert(to_key(ids[4]), &b"damaged"[..])
                .expect("damage");
            tx.commit().expect("commit");
        }
        let list = |channel: Option<&str>, status: Option<Status>, after: Option<TaskId>, limit| {
            let mut filter = ListFilter::new(limit);
            filter.channel = channel.map(str::to_owned);
            filter.status = status;
            filter.after = after;
            store
                .list(&filter)
                .map(|tasks| tasks.iter().map(|t| t.id).collect::<Vec<_>>())
        };
        let done = Some(Status::Done);
        let pending = Some(Status::Pending);
        assert_eq!(list(Some("a"), done, None, 10).expect("done"), [ids[0]]);
        assert_eq!(list(None, done, None, 10).expect("done"), [ids[0]]);
        assert_eq!(
            list(Some("b"), None, None, 10).expect("b"),
            [ids[1], ids[3]]
        );
        assert_eq!(
            list(None, pending, None, 2).expect("page 1"),
            [ids[1], ids[2]]
        );
        assert_eq!(
            list(None, pending, Some(ids[2]), 1).expect("page 2"),
            [ids[3]]
        );
        // The damaged record is read when it is selected.
        let err = list(None, pending, Some(ids[3]), 1).expect_err("damaged");
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    }

    #[test]
    fn indexes_stay_in_step_with_tasks() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = RedbStore::open(dir.path().join("q.redb")).expect("create");
        let tasks: Vec<NewTask> = (0..50)
            .map(|i| NewTask::new(if i % 2 == 0 { "a" } else { "b" }, vec![]).retries(1))
            .collect();
        store.enqueue(&tasks, T0).expect("enqueue");
        for t in store.claim("a", 10, T0, T0).expect("claim") {
            store.complete(t.claim(), T0).expect("complete");
        }
        store.claim("b", 5, T0, T0).expect("claim");
        store.recover_expired(T0, 3).expect("recover");
        store.remove_channel("a").expect("remove");
        let db = store.database().expect("database");
        let read = db.begin_read().expect("read");
        let tasks = read.open_table(TASKS).expect("tasks").len().expect("len");
        let by_status = read
            .open_table(BY_STATUS)
            .expect("by_status")
            .len()
            .expect("len");
        let queued = read.open_table(READY).expect("ready").len().expect("len");
        let leases = read.open_table(LEASES).expect("leases").len().expect("len");
        let counts = store.counts(None).expect("counts");
        assert_eq!((tasks, by_status), (25, 25));
        assert_eq!((queued, leases), (25, 0));
        assert_eq!((counts.pending, counts.total()), (25, 25));
    }
}
