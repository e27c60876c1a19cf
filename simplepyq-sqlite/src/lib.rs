//! [`SqliteStore`]: the durable [`Store`] of simplepyq, on an embedded SQLite file.
//!
//! Tasks live in one table of a plain SQLite file (WAL mode), so they survive restarts and
//! crashes, and several processes can share one file: every change is one `BEGIN IMMEDIATE`
//! transaction, and a claimed task is held under a lease. SQLite is compiled in (the
//! `bundled` feature of rusqlite): nothing needs to be installed.
//!
//! ```
//! use std::time::Duration;
//! use simplepyq_core::{NewTask, Status, Store, StoreExt, Timestamp};
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
//! arguments. Delete them with [`Store::purge_done`] and [`Store::clear_failed`]. SQLite
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
//! # Inspecting with SQL
//! The table `tasks` has one row per task: `id`, `channel`, `args` (MessagePack), `status`
//! (`pending`, `running`, `delayed`, `done`, `failed`), `retries_left`, `max_retries`,
//! `attempts`, `lost_runs`, `run_at`, `lease_until`, `last_error`, `created_at`,
//! `updated_at` (times in milliseconds since the Unix epoch). Read it freely; write it only
//! through simplepyq.

mod checkpoint;
mod error;
mod original;
mod readers;
mod schema;
mod watch;
mod writer;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, Row, Statement, Transaction};
use rusqlite::{OptionalExtension, params, params_from_iter};
use simplepyq_core::transition::{Event, apply, cancel};
use simplepyq_core::{
    Claim, Counts, Error, Finished, ListFilter, NewTask, Outcome, Result, Status, Store, Task,
    TaskId, TaskState, Timestamp, Totals, Wake, Watch, batch, validate_channel,
};
use simplepyq_core::{Clock, SystemClock};

use crate::checkpoint::Checkpointer;
use crate::error::{E, R, bad_value};
use crate::writer::{Caller, Writer};

/// How much a commit survives. See the [crate docs](crate#what-it-survives).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Durability {
    /// WAL with `synchronous=NORMAL`: survives a process crash.
    #[default]
    Normal,
    /// WAL with `synchronous=FULL`: survives a power loss too.
    Full,
}

/// Settings of a [`SqliteStore`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SqliteOptions {
    /// What a commit survives.
    pub durability: Durability,
    /// How long one call waits for another connection's lock before it reports
    /// [`Error::Busy`] (30 s by default). Locks are held for one short transaction, so
    /// waiting this long means something else holds the file.
    pub busy_timeout: Duration,
    /// The most the database file may grow to, in bytes (rounded down to whole pages);
    /// `None` (the default) for SQLite's own limit. Writes that would pass it fail with
    /// [`Error::Full`] and change nothing; what was committed stays.
    pub max_size: Option<u64>,
    /// Whether a running queue watches for work other processes add, waking the channel's
    /// idle workers at once: on Unix by a socket in a folder beside the file
    /// (`FILE-wake/`), which costs nothing while idle; where no socket can be had, by reading
    /// the file's change counter every this long (1 ms by default). `None` turns watching
    /// off; the queue then notices such work by polling.
    pub watch_interval: Option<Duration>,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            durability: Durability::Normal,
            busy_timeout: Duration::from_secs(30),
            max_size: None,
            watch_interval: Some(Duration::from_millis(1)),
        }
    }
}

impl SqliteOptions {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the durability.
    pub fn durability(mut self, durability: Durability) -> Self {
        self.durability = durability;
        self
    }

    /// Sets how long a call waits for a lock.
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// Caps the size of the database file.
    pub fn max_size(mut self, bytes: u64) -> Self {
        self.max_size = Some(bytes);
        self
    }

    /// Sets how often a running queue looks for other processes' work where it has no
    /// socket to be told by; `None` for no watching at all.
    pub fn watch_interval(mut self, interval: Option<Duration>) -> Self {
        self.watch_interval = interval;
        self
    }
}

/// A [`Store`] on a SQLite file. Several stores (in one process or several) may open the
/// same file.
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
}

/// [`batch::PROMOTE_PER_CLAIM`], as SQL binds it.
const PROMOTE_LIMIT: i64 = batch::PROMOTE_PER_CLAIM as i64;

/// The columns [`task_from_row`] reads: the task's own, then [`STATE_COLUMNS`].
const COLUMNS: &str = "id, channel, args, created_at, priority, unique_key, status, \
                       retries_left, max_retries, attempts, run_at, lease_until, last_error, \
                       updated_at, lost_runs";
/// The columns of a [`TaskState`], as [`state_from_row`] reads them.
const STATE_COLUMNS: &str = "status, retries_left, max_retries, attempts, run_at, lease_until, \
                             last_error, updated_at, lost_runs";

impl SqliteStore {
    /// Opens the queue file at `path`, creating it if needed, with default settings.
    ///
    /// Errors, each leaving the file unchanged: [`Error::Foreign`] for a file that is not
    /// SQLite or is another application's database, [`Error::SchemaTooNew`] for a file of a
    /// newer simplepyq, [`Error::Corrupt`] for a damaged one.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, SqliteOptions::default())
    }

    /// Opens an existing queue file for reading only, as an inspecting tool should: nothing
    /// is written, not even a migration, so that a newer reader leaves a file that older
    /// workers use as it is. A file of an older schema is read as it is (the columns it lacks
    /// read as their defaults). Every write fails with [`Error::ReadOnly`].
    ///
    /// Errors as [`SqliteStore::open`], and [`Error::Foreign`] for a file that does not exist
    /// or holds no queue yet.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let busy_timeout = SqliteOptions::default().busy_timeout;
        let open = {
            let path = path.clone();
            move || connect_read_only(&path, busy_timeout)
        };
        let conn = open()?;
        let version = retrying(busy_timeout, || {
            if schema::inspect(&conn)? == schema::Found::Original {
                return Err(E::Core(Error::Foreign {
                    backend: error::BACKEND,
                    message: format!(
                        "{} is a file of the original Python simplepyq: opening it for writing \
                         (SimplePyQ::open, or `simplepyq import FILE`) imports its tasks",
                        path.display()
                    ),
                }));
            }
            schema::read_as_latest(&conn)
        })?;
        if version == 0 {
            return Err(Error::Foreign {
                backend: error::BACKEND,
                message: format!("{} holds no simplepyq queue", path.display()),
            });
        }
        // Each connection reads an older schema through its own view of it.
        let more = move || -> Result<Connection> {
            let conn = open()?;
            retrying(busy_timeout, || schema::read_as_latest(&conn))?;
            Ok(conn)
        };
        Ok(SqliteStore {
            announcer: Arc::new(watch::Announcer::new(&path)),
            readers: readers::Readers::new(conn, more),
            writer: None,
            path,
            busy_timeout,
            watch_interval: None,
        })
    }

    /// The version of the SQLite library this store runs on: its own copy, or with the
    /// crate's `bundled` feature off, the system's (`libsqlite3.so.0`).
    pub fn library_version() -> &'static str {
        rusqlite::version()
    }

    /// Whether the file at `path` was written by the original Python simplepyq (0.1.3):
    /// [`SqliteStore::open`] imports such a file. Reads only; `false` for any other file,
    /// an error if it cannot be read as SQLite.
    pub fn is_original(path: impl AsRef<Path>) -> Result<bool> {
        let busy_timeout = SqliteOptions::default().busy_timeout;
        let conn = connect_read_only(path.as_ref(), busy_timeout)?;
        retrying(busy_timeout, || {
            schema::inspect(&conn).map(|found| found == schema::Found::Original)
        })
    }

    /// Where the next import of the original's file at `path` writes its backup copy.
    pub fn original_backup_path(path: impl AsRef<Path>) -> PathBuf {
        original::backup_path(path.as_ref())
    }

    /// Opens the queue file at `path` with `options`.
    pub fn open_with(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let conn = connect(&path, options.busy_timeout)?;
        // SQLite falls back to reading a file it may not write; a queue must write.
        if conn.is_readonly(rusqlite::MAIN_DB).map_err(E::from)? {
            return Err(Error::ReadOnly {
                backend: error::BACKEND,
                message: format!(
                    "{} is read-only for this process (its permissions, or a read-only mount)",
                    path.display()
                ),
            });
        }
        let found = retrying(options.busy_timeout, || schema::inspect(&conn))?;
        if found == schema::Found::Original {
            // A file the import would refuse is refused before anything is written: no
            // backup copy at every try (a restart loop would fill the disk), no switch to WAL.
            retrying(options.busy_timeout, || original::check(&conn))?;
            retrying(options.busy_timeout, || original::back_up(&conn, &path))?;
        }
        retrying(options.busy_timeout, || {
            // From here on the file is ours (or new): changing it is fine.
            let mode: String =
                conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
            if !mode.eq_ignore_ascii_case("wal") {
                return Err(E::Core(Error::Backend {
                    backend: error::BACKEND,
                    source: format!("could not switch the file to WAL mode (got {mode})").into(),
                }));
            }
            Ok(())
        })?;
        let mut conn = conn;
        let now_ms = SystemClock.now().as_millis();
        retrying(options.busy_timeout, || schema::migrate(&mut conn, now_ms))?;
        let sync = match options.durability {
            Durability::Normal => "NORMAL",
            Durability::Full => "FULL",
        };
        conn.pragma_update(None, "synchronous", sync)
            .map_err(E::from)?;
        // The checkpointer thread checkpoints; commits need not. A WAL that grew in a burst
        // is cut back to 64 MiB once it starts over.
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(E::from)?;
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)
            .map_err(E::from)?;
        // The table's CHECK constraints hold for every value this connection writes: each
        // comes from the typed task state (a status from its enum, counts unsigned). SQLite
        // would build the status check's list of five values into a temporary table at every
        // insert and every change of status (measured: a third of the drain's time). Other
        // connections to the file (a `sqlite3` shell, say) still check.
        conn.pragma_update(None, "ignore_check_constraints", true)
            .map_err(E::from)?;
        if let Some(bytes) = options.max_size {
            let page: i64 = conn
                .pragma_query_value(None, "page_size", |r| r.get(0))
                .map_err(E::from)?;
            let pages = i64::try_from(bytes).unwrap_or(i64::MAX) / page.max(1);
            conn.pragma_update(None, "max_page_count", pages.max(1))
                .map_err(E::from)?;
        }
        let open_reader = {
            let (path, busy_timeout) = (path.clone(), options.busy_timeout);
            move || -> Result<Connection> {
                let reader = connect(&path, busy_timeout)?;
                reader
                    .pragma_update(None, "query_only", true)
                    .map_err(E::from)?;
                Ok(reader)
            }
        };
        let reader = open_reader()?;
        let checkpointer = Checkpointer::start(connect(&path, checkpoint::WAIT)?)?;
        Ok(SqliteStore {
            announcer: Arc::new(watch::Announcer::new(&path)),
            readers: readers::Readers::new(reader, open_reader),
            writer: Some((Writer::start(conn, options.busy_timeout)?, checkpointer)),
            path,
            busy_timeout: options.busy_timeout,
            watch_interval: options.watch_interval,
        })
    }

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
            return Err(Error::ReadOnly {
                backend: error::BACKEND,
                message: format!("{} was opened read-only", self.path.display()),
            });
        };
        let result = writer.run(caller, op);
        checkpointer.wrote();
        result
    }

    /// Runs a read on a read connection.
    fn read<T>(&self, mut op: impl FnMut(&Connection) -> R<T>) -> Result<T> {
        self.readers
            .with(|conn| retrying(self.busy_timeout, || op(conn)))?
    }
}

/// Inserts tasks in `tx`; a task whose unique key an unfinished task of its channel holds
/// gets that task's id instead.
fn insert_tasks(tx: &Transaction<'_>, tasks: &[NewTask], now: Timestamp) -> R<Vec<TaskId>> {
    let mut insert = tx.prepare_cached(&insert_sql())?;
    let mut existing = tx.prepare_cached(KEY_HOLDER)?;
    let mut ids = Vec::with_capacity(tasks.len());
    for t in tasks {
        if let Some(key) = &t.unique_key {
            let found: Option<i64> = existing
                .query_row(params![t.channel, key], |r| r.get(0))
                .optional()?;
            if let Some(id) = found {
                ids.push(TaskId::new(id));
                continue;
            }
        }
        insert.raw_bind_parameter(1, &t.channel)?;
        insert.raw_bind_parameter(2, &t.args)?;
        insert.raw_bind_parameter(3, now.as_millis())?;
        insert.raw_bind_parameter(4, t.priority)?;
        insert.raw_bind_parameter(5, &t.unique_key)?;
        bind_state(&mut insert, 6, &t.initial_state(now))?;
        insert.raw_execute()?;
        ids.push(TaskId::new(tx.last_insert_rowid()));
    }
    Ok(ids)
}

/// Opens a connection to the existing file at `path` that only reads, waiting up to
/// `busy_timeout` for locks.
fn connect_read_only(path: &Path, busy_timeout: Duration) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| cannot_open(path, e))?;
    wait_for_locks(&conn, busy_timeout).map_err(|e| cannot_open(path, e))?;
    Ok(conn)
}

/// Makes `conn` wait up to `timeout` for a lock before it answers "busy". By the pragma,
/// not rusqlite's `busy_timeout`, which needs SQLite 3.44 (`sqlite3_set_clientdata`): the
/// store also runs on the system's SQLite (Debian 12 has 3.40), for one library per process.
pub(crate) fn wait_for_locks(conn: &Connection, timeout: Duration) -> rusqlite::Result<()> {
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    conn.query_row(&format!("PRAGMA busy_timeout = {ms}"), [], |_| Ok(()))
}

/// Opens a connection to `path` that waits up to `busy_timeout` for locks.
fn connect(path: &Path, busy_timeout: Duration) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| cannot_open(path, e))?;
    wait_for_locks(&conn, busy_timeout).map_err(E::from)?;
    Ok(conn)
}

/// The error for a file SQLite could not open: the path is what the user must fix.
fn cannot_open(path: &Path, e: rusqlite::Error) -> Error {
    // A directory (SQLite says "disk I/O error" or "unable to open"), or none to hold it.
    if let Some(unusable) = Error::unusable_path(path) {
        return unusable;
    }
    if e.sqlite_error_code() != Some(rusqlite::ErrorCode::CannotOpen) {
        return E::from(e).into();
    }
    Error::ReadOnly {
        backend: error::BACKEND,
        message: format!(
            "{} cannot be opened or created by this process (the permissions of the file or \
             its directory, or a read-only mount)",
            path.display()
        ),
    }
}

/// Runs `op` again while another connection holds the lock, for up to `busy_timeout` in all.
fn retrying<T>(busy_timeout: Duration, mut op: impl FnMut() -> R<T>) -> Result<T> {
    let deadline = Instant::now() + busy_timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        match op() {
            Err(e) if e.is_busy() && Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            result => return result.map_err(Error::from),
        }
    }
}

fn to_u32(what: &str, v: i64) -> R<u32> {
    u32::try_from(v).map_err(|_| bad_value(what, v))
}

fn status_from(s: &str) -> R<Status> {
    s.parse().map_err(|_| bad_value("status", s))
}

/// Reads the columns of [`STATE_COLUMNS`] starting at column `at`.
fn state_from_row(r: &Row<'_>, at: usize) -> R<TaskState> {
    let status: String = r.get(at)?;
    Ok(TaskState {
        status: status_from(&status)?,
        retries_left: to_u32("retries_left", r.get(at + 1)?)?,
        max_retries: to_u32("max_retries", r.get(at + 2)?)?,
        attempts: to_u32("attempts", r.get(at + 3)?)?,
        run_at: Timestamp::from_millis(r.get(at + 4)?),
        lease_until: r.get::<_, Option<i64>>(at + 5)?.map(Timestamp::from_millis),
        last_error: r.get(at + 6)?,
        updated_at: Timestamp::from_millis(r.get(at + 7)?),
        lost_runs: to_u32("lost_runs", r.get(at + 8)?)?,
    })
}

/// Reads the columns of [`COLUMNS`].
fn task_from_row(r: &Row<'_>) -> R<Task> {
    Ok(Task {
        id: TaskId::new(r.get(0)?),
        channel: r.get(1)?,
        args: r.get(2)?,
        created_at: Timestamp::from_millis(r.get(3)?),
        priority: r.get(4)?,
        unique_key: r.get(5)?,
        state: state_from_row(r, 6)?,
    })
}

fn load_state(tx: &Transaction<'_>, id: TaskId) -> R<Option<TaskState>> {
    let mut stmt =
        tx.prepare_cached(&format!("SELECT {STATE_COLUMNS} FROM tasks WHERE id = ?1"))?;
    let mut rows = stmt.query([id.get()])?;
    match rows.next()? {
        Some(r) => Ok(Some(state_from_row(r, 0)?)),
        None => Ok(None),
    }
}

/// Binds the values of [`STATE_COLUMNS`] to parameters `first..first + 9`.
fn bind_state(stmt: &mut Statement<'_>, first: usize, s: &TaskState) -> R<()> {
    stmt.raw_bind_parameter(first, s.status.as_str())?;
    stmt.raw_bind_parameter(first + 1, s.retries_left)?;
    stmt.raw_bind_parameter(first + 2, s.max_retries)?;
    stmt.raw_bind_parameter(first + 3, s.attempts)?;
    stmt.raw_bind_parameter(first + 4, s.run_at.as_millis())?;
    stmt.raw_bind_parameter(first + 5, s.lease_until.map(Timestamp::as_millis))?;
    stmt.raw_bind_parameter(first + 6, &s.last_error)?;
    stmt.raw_bind_parameter(first + 7, s.updated_at.as_millis())?;
    stmt.raw_bind_parameter(first + 8, s.lost_runs)?;
    Ok(())
}

/// Inserts a task: ?1 channel, ?2 args, ?3 created at, ?4 priority, ?5 unique key, ?6..
/// the values of [`STATE_COLUMNS`].
fn insert_sql() -> String {
    format!(
        "INSERT INTO tasks (channel, args, created_at, priority, unique_key, {STATE_COLUMNS}) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)"
    )
}

/// Writes a task's state: ?1 the id, ?2.. the values of [`STATE_COLUMNS`].
const SAVE_STATE: &str = "UPDATE tasks SET status = ?2, retries_left = ?3, max_retries = ?4, \
     attempts = ?5, run_at = ?6, lease_until = ?7, last_error = ?8, updated_at = ?9, \
     lost_runs = ?10 WHERE id = ?1";

fn save_state(tx: &Transaction<'_>, id: TaskId, s: &TaskState) -> R<()> {
    let mut stmt = tx.prepare_cached(SAVE_STATE)?;
    stmt.raw_bind_parameter(1, id.get())?;
    bind_state(&mut stmt, 2, s)?;
    stmt.raw_execute()?;
    Ok(())
}

/// Applies `event` to task `id` and stores the result.
fn transition(tx: &Transaction<'_>, id: TaskId, event: &Event) -> R<TaskState> {
    let state = load_state(tx, id)?.ok_or(Error::NotFound(id))?;
    let next = apply(&state, event).map_err(|r| r.into_error(id))?;
    save_state(tx, id, &next)?;
    Ok(next)
}

/// Ids selected by `sql` with `params`.
fn ids(tx: &Connection, sql: &str, params: impl rusqlite::Params) -> R<Vec<TaskId>> {
    let mut stmt = tx.prepare_cached(sql)?;
    let ids = stmt
        .query_map(params, |r| r.get(0).map(TaskId::new))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(ids)
}

/// The tasks selected by `sql` (which selects [`COLUMNS`]) with `params`.
fn select_tasks(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> R<Vec<Task>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params)?;
    let mut tasks = Vec::new();
    while let Some(r) = rows.next()? {
        tasks.push(task_from_row(r)?);
    }
    Ok(tasks)
}

/// `AND channel = ?n` when a channel is given.
fn channel_filter(channel: Option<&str>, n: usize) -> String {
    channel.map_or_else(String::new, |_| format!(" AND channel = ?{n}"))
}

/// Reads a task's state for a [`batch`] rule, noting its channel in `channels`.
fn channel_and_state_of<'a>(
    tx: &'a Transaction<'_>,
    channels: &'a mut HashMap<TaskId, String>,
) -> impl FnMut(TaskId) -> Result<Option<TaskState>> + 'a {
    move |id| {
        let mut stmt = tx
            .prepare_cached(&format!(
                "SELECT channel, {STATE_COLUMNS} FROM tasks WHERE id = ?1"
            ))
            .map_err(E::from)?;
        let mut rows = stmt.query([id.get()]).map_err(E::from)?;
        let Some(r) = rows.next().map_err(E::from)? else {
            return Ok(None);
        };
        channels.insert(id, r.get(0).map_err(E::from)?);
        Ok(Some(state_from_row(r, 1)?))
    }
}

/// Adds `counted` to the channels' totals.
fn add_totals(tx: &Transaction<'_>, counted: &BTreeMap<String, Totals>) -> R<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO totals (channel, done, failed, retried, lease_lost) \
         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (channel) DO UPDATE SET \
         done = done + excluded.done, failed = failed + excluded.failed, \
         retried = retried + excluded.retried, lease_lost = lease_lost + excluded.lease_lost",
    )?;
    for (channel, t) in counted {
        let [done, failed, retried, lease_lost] = t.to_i64s();
        stmt.execute(params![channel, done, failed, retried, lease_lost])?;
    }
    Ok(())
}

/// Reads a task's state for a [`batch`] rule.
fn state_of<'a>(tx: &'a Transaction<'_>) -> impl FnMut(TaskId) -> Result<Option<TaskState>> + 'a {
    move |id| load_state(tx, id).map_err(Error::from)
}

/// Writes the changes of a [`batch`] rule; returns how many.
fn write_changes(tx: &Transaction<'_>, changes: &[batch::Change]) -> R<usize> {
    for (id, next) in changes {
        save_state(tx, *id, next)?;
    }
    Ok(changes.len())
}

/// Applies `event` to the task of each claim still held; returns how many.
fn on_held(tx: &Transaction<'_>, claims: &[Claim], event: &Event) -> R<usize> {
    let changes = batch::on_held(claims, event, state_of(tx))?;
    write_changes(tx, &changes)
}

/// Pending tasks of channel ?1 due by ?2 (pending tasks are due unless clocks disagree).
const READY: &str = "channel = ?1 AND status = 'pending' AND run_at <= ?2";
/// Delayed tasks of channel ?1 whose run-at has come by ?2.
const DUE_DELAYED: &str = "channel = ?1 AND status = 'delayed' AND run_at <= ?2";
/// The unfinished task of channel ?1 holding unique key ?2, in `tasks_unique` (whose
/// condition the query repeats word for word: SQLite uses a partial index only then).
const KEY_HOLDER: &str = "SELECT id FROM tasks WHERE channel = ?1 AND unique_key = ?2 \
     AND unique_key IS NOT NULL AND status NOT IN ('done', 'failed')";
/// Running tasks whose lease ended by ?1: their ids and channels.
const EXPIRED: &str = "SELECT id, channel FROM tasks WHERE status = 'running' \
     AND lease_until <= ?1 ORDER BY lease_until";
/// Deletes up to [`batch::BULK_BATCH`] tasks of channel ?1 with `status`. No index holds
/// every row of a channel: a channel's tasks are deleted a status at a time, each following
/// its status's index (which SQLite uses only when the status is written in the query, not
/// bound).
fn remove_channel_sql(status: Status) -> String {
    format!(
        "DELETE FROM tasks WHERE id IN (SELECT id FROM tasks \
         WHERE channel = ?1 AND status = '{}' LIMIT {})",
        status.as_str(),
        batch::BULK_BATCH
    )
}

/// Up to [`batch::BULK_BATCH`] failed tasks past (channel ?1, id ?2) (of channel ?3 if
/// given), in the order of `tasks_failed`.
fn failed_sql(channel: Option<&str>) -> String {
    format!(
        "SELECT {COLUMNS} FROM tasks WHERE status = 'failed' AND (channel, id) > (?1, ?2){} \
         ORDER BY channel, id LIMIT {}",
        channel_filter(channel, 3),
        batch::BULK_BATCH
    )
}

/// Deletes up to [`batch::BULK_BATCH`] failed tasks (of channel ?1 if given).
fn clear_failed_sql(channel: Option<&str>) -> String {
    format!(
        "DELETE FROM tasks WHERE id IN (SELECT id FROM tasks WHERE status = 'failed'{} LIMIT {})",
        channel_filter(channel, 1),
        batch::BULK_BATCH
    )
}

/// Deletes up to [`batch::BULK_BATCH`] done tasks (of channel ?2 if given) last changed
/// before ?1.
fn purge_done_sql(channel: Option<&str>) -> String {
    format!(
        "DELETE FROM tasks WHERE id IN (SELECT id FROM tasks \
         WHERE status = 'done' AND updated_at < ?1{} LIMIT {})",
        channel_filter(channel, 2),
        batch::BULK_BATCH
    )
}

/// The count of each status (of channel ?1 if given), in [`Status::ALL`]'s order, each
/// over its status's index.
fn counts_sql(channel: Option<&str>) -> String {
    let counts = Status::ALL.map(|s| {
        format!(
            "(SELECT count(*) FROM tasks WHERE status = '{}'{})",
            s.as_str(),
            channel_filter(channel, 1)
        )
    });
    format!("SELECT {}", counts.join(", "))
}

/// Done and failed tasks changed at or after ?1, counted per bucket of ?2 milliseconds (of
/// channel ?3 if given), each over its status's index.
fn finished_sql(channel: Option<&str>) -> String {
    let of_status = [Status::Done, Status::Failed].map(|s| {
        format!(
            "SELECT updated_at - updated_at % ?2, '{0}', count(*) FROM tasks \
             WHERE status = '{0}' AND updated_at >= ?1{1} GROUP BY 1",
            s.as_str(),
            channel_filter(channel, 3)
        )
    });
    of_status.join(" UNION ALL ")
}

/// The channels with tasks, from each status's index (each leads with the channel): a skip
/// scan, one seek per channel and status (`min(channel)` above the last one found), where a
/// plain `SELECT DISTINCT` would read every entry.
fn channels_sql() -> String {
    let walks = Status::ALL.map(|s| {
        format!(
            "in_{0}(ch) AS (SELECT min(channel) FROM tasks WHERE status = '{0}' \
             UNION ALL SELECT (SELECT min(channel) FROM tasks \
             WHERE status = '{0}' AND channel > in_{0}.ch) FROM in_{0} WHERE ch IS NOT NULL)",
            s.as_str()
        )
    });
    let found =
        Status::ALL.map(|s| format!("SELECT ch FROM in_{} WHERE ch IS NOT NULL", s.as_str()));
    format!(
        "WITH RECURSIVE {} {} ORDER BY 1",
        walks.join(", "),
        found.join(" UNION ")
    )
}

impl Store for SqliteStore {
    fn watch(&self, wake: Wake) -> Option<Watch> {
        watch::watch(&self.path, self.watch_interval?, wake, &self.announcer)
    }

    fn enqueue(&self, tasks: &[NewTask], now: Timestamp) -> Result<Vec<TaskId>> {
        for t in tasks {
            validate_channel(&t.channel)?;
        }
        // The channels to announce, each once (not a name per task).
        let mut channels: Vec<&str> = tasks.iter().map(|t| t.channel.as_str()).collect();
        channels.sort_unstable();
        channels.dedup();
        let channels: Vec<String> = channels.into_iter().map(str::to_owned).collect();
        let tasks = tasks.to_vec();
        let ids = self.write_as(Caller::Producer, move |tx| insert_tasks(tx, &tasks, now))?;
        self.announcer.announce(channels.iter().map(String::as_str));
        Ok(ids)
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
        // Look before taking the write lock: idle workers poll without blocking writers.
        let due = self.read(|conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT EXISTS (SELECT 1 FROM tasks WHERE {READY}) \
                 OR EXISTS (SELECT 1 FROM tasks WHERE {DUE_DELAYED})"
            ))?;
            Ok(stmt.query_row(params![channel, now.as_millis()], |r| r.get::<_, bool>(0))?)
        })?;
        if !due {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let event = Event::Claim { now, lease_until };
        let channel = channel.to_owned();
        self.write(move |tx| {
            let promote = ids(
                tx,
                &format!("SELECT id FROM tasks WHERE {DUE_DELAYED} ORDER BY run_at, id LIMIT ?3"),
                params![channel, now.as_millis(), PROMOTE_LIMIT],
            )?;
            for id in promote {
                transition(tx, id, &Event::Promote { now })?;
            }
            let mut tasks = select_tasks(
                tx,
                &format!(
                    "SELECT {COLUMNS} FROM tasks WHERE {READY} \
                     ORDER BY priority DESC, run_at, id LIMIT ?3"
                ),
                params![channel, now.as_millis(), limit],
            )?;
            for t in &mut tasks {
                t.state = apply(&t.state, &event).map_err(|r| r.into_error(t.id))?;
                save_state(tx, t.id, &t.state)?;
            }
            Ok(tasks)
        })
    }

    fn extend_leases(&self, claims: &[Claim], lease_until: Timestamp) -> Result<usize> {
        let claims = claims.to_vec();
        self.write(move |tx| on_held(tx, &claims, &Event::Extend { lease_until }))
    }

    fn release(&self, claims: &[Claim], now: Timestamp) -> Result<usize> {
        let claims = claims.to_vec();
        let (n, channels) = self.write(move |tx| {
            let mut channel = tx.prepare_cached("SELECT channel FROM tasks WHERE id = ?1")?;
            let mut channels = BTreeSet::new();
            for c in &claims {
                if let Some(name) = channel
                    .query_row([c.id.get()], |r| r.get::<_, String>(0))
                    .optional()?
                {
                    channels.insert(name);
                }
            }
            Ok((on_held(tx, &claims, &Event::Release { now })?, channels))
        })?;
        // Tasks given back are other processes' to take.
        self.announce(n, &channels);
        Ok(n)
    }

    fn finish_many(
        &self,
        results: &[(Claim, Outcome)],
        now: Timestamp,
    ) -> Result<Vec<Result<Status>>> {
        let results = results.to_vec();
        self.write(move |tx| {
            let mut channels = HashMap::with_capacity(results.len());
            let done = batch::finish(&results, now, channel_and_state_of(tx, &mut channels))?;
            write_changes(tx, &done.changes)?;
            add_totals(
                tx,
                &done.totals_by_channel(|id| channels.get(&id).map(String::as_str)),
            )?;
            Ok(done.statuses)
        })
    }

    fn recover_expired(&self, now: Timestamp, max_lost_runs: u32) -> Result<usize> {
        if self
            .read(|conn| ids(conn, EXPIRED, [now.as_millis()]))?
            .is_empty()
        {
            return Ok(0);
        }
        self.write(move |tx| {
            let expired: Vec<(TaskId, String)> = tx
                .prepare_cached(EXPIRED)?
                .query_map([now.as_millis()], |r| {
                    Ok((TaskId::new(r.get(0)?), r.get(1)?))
                })?
                .collect::<rusqlite::Result<_>>()?;
            let event = Event::Expire { now, max_lost_runs };
            let mut counted = Vec::with_capacity(expired.len());
            for (id, channel) in expired {
                let next = transition(tx, id, &event)?;
                counted.push((channel, Totals::of(&event, next.status)));
            }
            add_totals(
                tx,
                &Totals::by_channel(counted.iter().map(|(c, t)| (c.as_str(), *t))),
            )?;
            let n = counted.len();
            let channels: BTreeSet<String> = counted.into_iter().map(|(c, _)| c).collect();
            Ok((n, channels))
        })
        .map(|(n, channels)| {
            // Tasks of dead workers are due again, for any process to take.
            self.announce(n, &channels);
            n
        })
    }

    fn clear_failed(&self, channel: Option<&str>) -> Result<usize> {
        let sql = clear_failed_sql(channel);
        let channel = channel.map(str::to_owned);
        batch::in_batches(|| {
            let (sql, channel) = (sql.clone(), channel.clone());
            self.write(move |tx| Ok(tx.execute(&sql, params_from_iter(&channel))?))
        })
    }

    fn requeue_failed(
        &self,
        channel: Option<&str>,
        retries: Option<u32>,
        now: Timestamp,
    ) -> Result<usize> {
        let sql = failed_sql(channel);
        let only = channel.map(str::to_owned);
        // A batch at a time, each its own transaction, from past the last task seen (a task
        // whose unique key is held stays failed).
        let mut after = (channel.unwrap_or_default().to_owned(), 0i64);
        let mut total = 0;
        loop {
            let (sql, only, from) = (sql.clone(), only.clone(), after.clone());
            let (seen, last, n, channels) = self.write(move |tx| {
                let failed = match &only {
                    Some(c) => select_tasks(tx, &sql, params![from.0, from.1, c])?,
                    None => select_tasks(tx, &sql, params![from.0, from.1])?,
                };
                let mut holder = tx.prepare_cached(KEY_HOLDER)?;
                let changes = batch::requeue(&failed, now, retries, |channel, key| {
                    holder
                        .exists(params![channel, key])
                        .map_err(|e| Error::from(E::from(e)))
                })?;
                let channels: BTreeSet<String> = failed.iter().map(|t| t.channel.clone()).collect();
                let last = failed.last().map(|t| (t.channel.clone(), t.id.get()));
                Ok((failed.len(), last, write_changes(tx, &changes)?, channels))
            })?;
            self.announce(n, &channels);
            total += n;
            match last {
                Some(last) if seen == batch::BULK_BATCH => after = last,
                _ => return Ok(total),
            }
        }
    }

    fn remove_channel(&self, channel: &str) -> Result<usize> {
        let mut total = 0;
        for status in Status::ALL {
            total += batch::in_batches(|| {
                let channel = channel.to_owned();
                self.write(move |tx| {
                    Ok(tx
                        .prepare_cached(&remove_channel_sql(status))?
                        .execute([&channel])?)
                })
            })?;
        }
        Ok(total)
    }

    fn purge_done(&self, channel: Option<&str>, before: Timestamp) -> Result<usize> {
        let sql = purge_done_sql(channel);
        let channel = channel.map(str::to_owned);
        batch::in_batches(|| {
            let (sql, channel) = (sql.clone(), channel.clone());
            self.write(move |tx| {
                let mut stmt = tx.prepare_cached(&sql)?;
                let n = match &channel {
                    Some(c) => stmt.execute(params![before.as_millis(), c])?,
                    None => stmt.execute([before.as_millis()])?,
                };
                Ok(n)
            })
        })
    }

    fn channels(&self) -> Result<Vec<String>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&channels_sql())?;
            let names = stmt
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            Ok(names)
        })
    }

    fn counts(&self, channel: Option<&str>) -> Result<Counts> {
        let sql = counts_sql(channel);
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            let mut rows = stmt.query(params_from_iter(channel))?;
            let mut counts = Counts::default();
            if let Some(r) = rows.next()? {
                for (i, status) in Status::ALL.into_iter().enumerate() {
                    let n: i64 = r.get(i)?;
                    *counts.get_mut(status) =
                        usize::try_from(n).map_err(|_| bad_value("count", n))?;
                }
            }
            Ok(counts)
        })
    }

    fn next_wakeup(&self, channel: &str) -> Result<Option<Timestamp>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT min(t) FROM ( \
                   SELECT * FROM (SELECT run_at AS t FROM tasks \
                     WHERE channel = ?1 AND status = 'pending' LIMIT 1) \
                   UNION ALL \
                   SELECT min(run_at) FROM tasks WHERE channel = ?1 AND status = 'delayed' \
                   UNION ALL \
                   SELECT min(lease_until) FROM tasks WHERE channel = ?1 AND status = 'running')",
            )?;
            let t: Option<i64> = stmt.query_row([channel], |r| r.get(0))?;
            Ok(t.map(Timestamp::from_millis))
        })
    }

    fn list(&self, filter: &ListFilter) -> Result<Vec<Task>> {
        let mut sql = format!("SELECT {COLUMNS} FROM tasks WHERE id > ?1");
        let mut values: Vec<rusqlite::types::Value> =
            vec![filter.after.map_or(0, TaskId::get).into()];
        if let Some(channel) = &filter.channel {
            values.push(channel.clone().into());
            sql.push_str(&format!(" AND channel = ?{}", values.len()));
        }
        if let Some(status) = filter.status {
            // Written in, not bound: SQLite uses a status's partial index only then.
            sql.push_str(&format!(" AND status = '{}'", status.as_str()));
        }
        values.push(i64::try_from(filter.limit).unwrap_or(i64::MAX).into());
        sql.push_str(&format!(" ORDER BY id LIMIT ?{}", values.len()));
        self.read(|conn| select_tasks(conn, &sql, params_from_iter(&values)))
    }

    fn cancel(&self, id: TaskId) -> Result<()> {
        self.write(move |tx| {
            let state = load_state(tx, id)?.ok_or(Error::NotFound(id))?;
            cancel(&state).map_err(|r| r.into_error(id))?;
            tx.execute("DELETE FROM tasks WHERE id = ?1", [id.get()])?;
            Ok(())
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
        let (name, new) = (name.to_owned(), task.clone());
        let id = self.write(move |tx| {
            // Records `at` only if it is later than the firing recorded: one row changes,
            // or none.
            let fired = tx.execute(
                "INSERT INTO schedules (name, last_fired) VALUES (?1, ?2) \
                 ON CONFLICT (name) DO UPDATE SET last_fired = excluded.last_fired \
                 WHERE last_fired < excluded.last_fired",
                params![name, at.as_millis()],
            )?;
            if fired == 0 {
                return Ok(None);
            }
            Ok(insert_tasks(tx, std::slice::from_ref(&new), now)?.pop())
        })?;
        if id.is_some() {
            self.announcer.announce([task.channel.as_str()]);
        }
        Ok(id)
    }

    fn last_fired(&self, name: &str) -> Result<Option<Timestamp>> {
        self.read(|conn| {
            let ms: Option<i64> = conn
                .prepare_cached("SELECT last_fired FROM schedules WHERE name = ?1")?
                .query_row([name], |r| r.get(0))
                .optional()?;
            Ok(ms.map(Timestamp::from_millis))
        })
    }

    fn totals(&self) -> Result<BTreeMap<String, Totals>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT channel, done, failed, retried, lease_lost FROM totals ORDER BY channel",
            )?;
            let mut rows = stmt.query([])?;
            let mut totals = BTreeMap::new();
            while let Some(r) = rows.next()? {
                let figures = [r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?];
                let t = Totals::from_i64s(figures).map_err(|v| bad_value("totals", v))?;
                totals.insert(r.get(0)?, t);
            }
            Ok(totals)
        })
    }

    fn finished(
        &self,
        channel: Option<&str>,
        since: Timestamp,
        width: Duration,
    ) -> Result<Vec<Finished>> {
        let sql = finished_sql(channel);
        let width_ms = Finished::width_ms(width);
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            let mut values: Vec<rusqlite::types::Value> =
                vec![since.as_millis().into(), width_ms.into()];
            values.extend(channel.map(|c| c.to_owned().into()));
            let rows = stmt
                .query_map(params_from_iter(&values), |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut counted = Vec::with_capacity(rows.len());
            for (bucket, status, n) in rows {
                let status: Status = status.parse().map_err(|_| bad_value("status", &status))?;
                let n = usize::try_from(n).map_err(|_| bad_value("count", n))?;
                counted.push((Timestamp::from_millis(bucket), status, n));
            }
            Ok(Finished::tally(counted, width))
        })
    }

    fn get(&self, id: TaskId) -> Result<Option<Task>> {
        self.read(|conn| {
            let mut stmt =
                conn.prepare_cached(&format!("SELECT {COLUMNS} FROM tasks WHERE id = ?1"))?;
            let mut rows = stmt.query([id.get()])?;
            match rows.next()? {
                Some(r) => Ok(Some(task_from_row(r)?)),
                None => Ok(None),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::StatementStatus;
    use simplepyq_core::StoreExt;

    const T0: Timestamp = Timestamp::from_millis(1_000_000);

    /// Tasks another process's store makes due again (given back, recovered from a dead
    /// worker, requeued) wake a watching queue as enqueued ones do, not only at its next
    /// poll.
    #[cfg(unix)]
    #[test]
    fn tasks_due_again_wake_other_processes_queues() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("tasks.db");
        let watching = SqliteStore::open(&path).expect("open");
        let heard: Arc<parking_lot::Mutex<Vec<String>>> = Arc::default();
        let h = Arc::clone(&heard);
        let _watch = watching
            .watch(Arc::new(move |c: Option<&str>| {
                if let Some(c) = c {
                    h.lock().push(c.to_owned());
                }
            }))
            .expect("watching");
        let other = SqliteStore::open(&path).expect("open");
        let hears = |what: &str, channel: &str, act: &dyn Fn()| {
            // Past the announcer's quiet time and the listener's second wake-up.
            std::thread::sleep(Duration::from_millis(20));
            heard.lock().clear();
            act();
            let t0 = std::time::Instant::now();
            while !heard.lock().iter().any(|c| c == channel) {
                assert!(t0.elapsed() < Duration::from_secs(2), "{what}: not heard");
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        let now = SystemClock.now();
        let later = now.after(Duration::from_secs(60));
        hears("enqueue", "given", &|| {
            other
                .enqueue(
                    &[NewTask::new("given", vec![]), NewTask::new("lost", vec![])],
                    now,
                )
                .map(drop)
                .expect("enqueue");
        });
        let given = other.claim("given", 1, now, later).expect("claim");
        hears("release", "given", &|| {
            other.release(&[given[0].claim()], now).expect("release");
        });
        other.claim("lost", 1, now, now).expect("claim");
        hears("recovery", "lost", &|| {
            assert_eq!(
                other
                    .recover_expired(now.after(Duration::from_millis(1)), 0)
                    .expect("recover"),
                1
            );
        });
        hears("requeue", "lost", &|| {
            assert_eq!(other.requeue_failed(None, None, now).expect("requeue"), 1);
        });
    }

    #[test]
    fn columns_end_with_the_state_columns() {
        assert!(COLUMNS.ends_with(STATE_COLUMNS));
    }

    fn header(path: &Path) -> (i32, i64) {
        let conn = Connection::open(path).expect("open raw");
        let app: i32 = conn
            .pragma_query_value(None, "application_id", |r| r.get(0))
            .expect("application_id");
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("user_version");
        (app, version)
    }

    #[test]
    fn migrations_apply_to_a_fresh_file_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("q.db");
        let id = SqliteStore::open(&path)
            .expect("create")
            .enqueue_one(NewTask::new("c", vec![1]), T0)
            .expect("enqueue");
        assert_eq!(header(&path), (schema::APPLICATION_ID, schema::latest()));
        // Opening again migrates nothing and keeps the data.
        let store = SqliteStore::open(&path).expect("reopen");
        assert_eq!(store.get(id).expect("get").map(|t| t.args), Some(vec![1]));
        assert_eq!(header(&path), (schema::APPLICATION_ID, schema::latest()));
    }

    /// A file as version 1 left it, with a pending and a delayed task.
    fn version_1_file(path: &Path) {
        let conn = Connection::open(path).expect("open raw");
        conn.execute_batch("PRAGMA journal_mode = WAL;")
            .expect("wal");
        conn.execute_batch(schema::MIGRATIONS[0]).expect("0001");
        conn.pragma_update(None, "application_id", schema::APPLICATION_ID)
            .expect("application_id");
        conn.pragma_update(None, "user_version", 1)
            .expect("user_version");
        for (args, status, run_at) in [(1, "pending", 0), (2, "delayed", 5_000)] {
            conn.execute(
                "INSERT INTO tasks (channel, args, status, retries_left, max_retries, \
                 attempts, run_at, created_at, updated_at) \
                 VALUES ('c', ?1, ?2, 1, 1, 0, ?3, 0, 0)",
                params![vec![args as u8], status, T0.as_millis() + run_at],
            )
            .expect("insert");
        }
    }

    /// Read-only opens never write: a version-1 file is read as it is, not migrated, while
    /// a worker of its version may use it; every write is refused.
    #[test]
    fn a_read_only_open_reads_an_old_file_as_it_is() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("v1.db");
        version_1_file(&path);
        let store = SqliteStore::open_read_only(&path).expect("open read-only");
        assert_eq!(header(&path), (schema::APPLICATION_ID, 1));
        let counts = store.counts(None).expect("counts");
        assert_eq!((counts.pending, counts.delayed), (1, 1));
        let tasks = store.list(&ListFilter::new(10)).expect("list");
        assert_eq!(tasks.len(), 2);
        assert!(
            tasks
                .iter()
                .all(|t| t.priority == 0 && t.state.lost_runs == 0)
        );
        assert_eq!(store.channels().expect("channels"), vec!["c".to_owned()]);
        assert!(store.next_wakeup("c").expect("next wakeup").is_some());
        // Tables of later versions read as empty.
        assert_eq!(store.last_fired("s").expect("last fired"), None);
        assert!(store.totals().expect("totals").is_empty());
        let err = store
            .enqueue_one(NewTask::new("c", vec![]), T0)
            .expect_err("read-only");
        assert!(matches!(err, Error::ReadOnly { .. }), "{err}");
        drop(store);
        assert_eq!(header(&path), (schema::APPLICATION_ID, 1));
        // A file of the latest version reads the same way.
        let store = SqliteStore::open(&path).expect("migrate");
        drop(store);
        let store = SqliteStore::open_read_only(&path).expect("open read-only");
        assert_eq!(store.list(&ListFilter::new(10)).expect("list").len(), 2);
        let missing = SqliteStore::open_read_only(dir.path().join("none.db"));
        assert!(missing.is_err());
    }

    #[test]
    fn every_migration_says_what_columns_it_added() {
        assert_eq!(schema::ADDED_COLUMNS.len(), schema::MIGRATIONS.len());
        for (sql, columns) in schema::MIGRATIONS.iter().zip(schema::ADDED_COLUMNS) {
            let added = sql.matches("ADD COLUMN").count();
            assert_eq!(added, columns.len(), "{sql}");
            for (name, _) in *columns {
                assert!(sql.contains(&format!("ADD COLUMN {name} ")), "{name}");
            }
        }
        assert_eq!(schema::ADDED_TABLES.len(), schema::MIGRATIONS.len());
        for (sql, tables) in schema::MIGRATIONS.iter().zip(schema::ADDED_TABLES).skip(1) {
            assert_eq!(sql.matches("CREATE TABLE").count(), tables.len(), "{sql}");
            for (name, columns) in *tables {
                let at = sql.find(&format!("CREATE TABLE {name} (")).expect(name);
                for column in *columns {
                    assert!(
                        sql[at..].contains(&format!("    {column} ")),
                        "{name}.{column}"
                    );
                }
            }
        }
    }

    /// A file as the original Python simplepyq 0.1.3 writes it (its exact table), with
    /// one task of each status it writes, and a sequence past its last id (tasks cleared).
    fn original_file(path: &Path, rows: &[(&str, Option<i64>)]) {
        let conn = Connection::open(path).expect("open raw");
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS tasks (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                channel TEXT NOT NULL,
                args BLOB,
                status TEXT DEFAULT 'pending',
                retries INTEGER DEFAULT 0,
                delay_until INTEGER
            )",
        )
        .expect("the original's table");
        for (n, (status, delay_until)) in rows.iter().enumerate() {
            conn.execute(
                "INSERT INTO tasks (channel, args, status, retries, delay_until) \
                 VALUES ('scrape', ?1, ?2, ?3, ?4)",
                params![vec![n as u8], status, n as i64, delay_until],
            )
            .expect("insert");
        }
        conn.execute_batch("UPDATE sqlite_sequence SET seq = 40 WHERE name = 'tasks'")
            .expect("sequence");
    }

    #[test]
    fn a_file_of_the_original_is_imported_after_a_backup() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("tasks.db");
        let later_s = SystemClock.now().as_millis() / 1000 + 3_600;
        let rows = [
            ("pending", None),
            ("running", None),
            ("delayed", Some(later_s)),
            ("done", None),
            ("failed", None),
            ("delayed", None),
        ];
        original_file(&path, &rows);
        let read_only =
            SqliteStore::open_read_only(&path).expect_err("read-only opens write nothing");
        assert!(matches!(read_only, Error::Foreign { .. }), "{read_only}");
        assert!(read_only.to_string().contains("original"), "{read_only}");

        let store = SqliteStore::open(&path).expect("open imports");
        assert_eq!(header(&path), (schema::APPLICATION_ID, schema::latest()));
        let tasks = store.list(&ListFilter::new(10)).expect("list");
        let seen: Vec<(i64, Vec<u8>, Status, u32)> = tasks
            .iter()
            .map(|t| {
                (
                    t.id.get(),
                    t.args.clone(),
                    t.state.status,
                    t.state.retries_left,
                )
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                (1, vec![0], Status::Pending, 0),
                (2, vec![1], Status::Pending, 1),
                (3, vec![2], Status::Delayed, 2),
                (4, vec![3], Status::Done, 3),
                (5, vec![4], Status::Failed, 4),
                (6, vec![5], Status::Pending, 5),
            ]
        );
        assert_eq!(
            tasks[2].state.run_at,
            Timestamp::from_millis(later_s * 1000)
        );
        assert!(tasks[4].state.last_error.is_some());
        // Ids go on from the original's sequence, never reusing one it gave.
        let id = store
            .enqueue_one(NewTask::new("scrape", vec![9]), T0)
            .expect("enqueue");
        assert_eq!(id.get(), 41);
        // The backup is the original file as it was.
        let backup = dir.path().join("tasks.db.simplepyq-0.1.3.bak");
        let copy = Connection::open(&backup).expect("open the backup");
        let statuses: Vec<String> = copy
            .prepare("SELECT status FROM tasks ORDER BY id")
            .expect("prepare")
            .query_map([], |r| r.get(0))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        assert_eq!(statuses, rows.map(|(s, _)| s.to_owned()));
        // Opening again imports nothing more and backs up nothing more.
        drop(store);
        let store = SqliteStore::open(&path).expect("reopen");
        assert_eq!(store.list(&ListFilter::new(10)).expect("list").len(), 7);
        assert!(!dir.path().join("tasks.db.simplepyq-0.1.3.bak.1").exists());
    }

    /// Every value the original can store, read back from the imported file by every read
    /// the store has: a fractional `delay_until` (the original stores `time + 0.3` for a
    /// `DelayException(0.3)`) became a REAL `run_at`, which every read of its channel then
    /// refused as a damaged file.
    #[test]
    fn every_value_of_an_original_file_reads_back_after_the_import() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("tasks.db");
        original_file(&path, &[]);
        let now_s = SystemClock.now().as_millis() as f64 / 1000.0;
        let conn = Connection::open(&path).expect("open raw");
        let rows: [(
            &str,
            rusqlite::types::Value,
            rusqlite::types::Value,
            rusqlite::types::Value,
        ); 6] = {
            use rusqlite::types::Value::{Blob, Integer, Null, Real, Text};
            [
                (
                    "delayed",
                    Blob(vec![0x01]),
                    Integer(2),
                    Real(now_s - 1.234_5),
                ),
                (
                    "delayed",
                    Blob(vec![0x02]),
                    Real(3.0),
                    Real(now_s + 100.123_4),
                ),
                ("pending", Text("\u{1}".into()), Real(2.5), Null),
                ("failed", Null, Integer(i64::from(u32::MAX) + 7), Real(0.5)),
                ("running", Blob(vec![0x05]), Integer(0), Integer(12)),
                ("done", Blob(vec![0x06]), Integer(1), Null),
            ]
        };
        for (status, args, retries, delay_until) in &rows {
            conn.execute(
                "INSERT INTO tasks (channel, args, status, retries, delay_until) \
                 VALUES ('odd', ?1, ?2, ?3, ?4)",
                params![args, status, retries, delay_until],
            )
            .expect("insert");
        }
        drop(conn);
        let store = SqliteStore::open(&path).expect("open imports");
        let types: Vec<(String, String, String)> = Connection::open(&path)
            .expect("open raw")
            .prepare("SELECT typeof(args), typeof(retries_left), typeof(run_at) FROM tasks")
            .expect("prepare")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        for t in &types {
            assert_eq!(t, &("blob".into(), "integer".into(), "integer".into()));
        }
        let all = store.list(&ListFilter::new(100)).expect("list");
        assert_eq!(all.len(), rows.len());
        for task in &all {
            assert_eq!(store.get(task.id).expect("get").as_ref(), Some(task));
        }
        let retries: Vec<u32> = all.iter().map(|t| t.state.retries_left).collect();
        assert_eq!(retries, vec![2, 3, 2, u32::MAX, 0, 1]);
        assert_eq!(all[2].args, vec![1]);
        assert_eq!(all[3].args, vec![0xc0]);
        let later = Timestamp::from_millis((now_s * 1000.0).round() as i64 + 100_123);
        assert!(all[1].state.run_at.as_millis().abs_diff(later.as_millis()) <= 1);
        assert_eq!(store.channels().expect("channels"), vec!["odd".to_owned()]);
        let c = store.counts(Some("odd")).expect("counts");
        assert_eq!(
            (c.pending, c.delayed, c.done, c.failed),
            (2, 2, 1, 1),
            "{c:?}"
        );
        assert!(store.next_wakeup("odd").expect("next wakeup").is_some());
        // The due delayed task is promoted and claimed with the others; the later one too,
        // once due.
        let now = SystemClock.now();
        assert_eq!(
            store
                .claim("odd", 10, now, now.after(Duration::from_secs(60)))
                .expect("claim")
                .len(),
            3
        );
        let due = later.after(Duration::from_millis(1));
        assert_eq!(
            store
                .claim("odd", 10, due, due.after(Duration::from_secs(60)))
                .expect("claim")
                .len(),
            1
        );
        store
            .finished(None, T0, Duration::from_secs(60))
            .expect("finished");
        store.totals().expect("totals");
    }

    #[test]
    fn an_original_file_with_a_status_it_never_writes_is_refused_unchanged() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("tasks.db");
        original_file(&path, &[("pending", None), ("paused", None)]);
        for _ in 0..3 {
            let err = SqliteStore::open(&path).expect_err("an unknown status");
            assert!(matches!(err, Error::Corrupt { .. }), "{err}");
            assert!(err.to_string().contains("paused"), "{err}");
        }
        // Refused before anything was written: no backup copy (one per try filled the disk
        // of a restart loop), and the file's journal mode is its own still.
        let backups = std::fs::read_dir(dir.path())
            .expect("read dir")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().contains(".bak"))
            })
            .count();
        assert_eq!(backups, 0);
        let conn = Connection::open(&path).expect("open raw");
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .expect("journal mode");
        assert_eq!(mode, "delete");
        assert!(
            original::is_original(&conn).expect("inspect"),
            "the file is unchanged"
        );
        let n: i64 = conn
            .query_row("SELECT count(*) FROM tasks", [], |r| r.get(0))
            .expect("count");
        assert_eq!(n, 2);
    }

    #[test]
    fn a_version_1_file_is_migrated_keeping_its_tasks() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("v1.db");
        version_1_file(&path);
        let store = SqliteStore::open(&path).expect("migrate");
        assert_eq!(header(&path), (schema::APPLICATION_ID, schema::latest()));
        let first = store.claim("c", 5, T0, T0).expect("claim");
        assert_eq!(first.len(), 1);
        assert_eq!((first[0].args.clone(), first[0].priority), (vec![1], 0));
        let later = T0.after(Duration::from_secs(5));
        let second = store.claim("c", 5, later, later).expect("claim");
        assert_eq!(second[0].args, vec![2]);
        let keyed = NewTask::new("c", vec![]).unique_key("k");
        let id = store.enqueue_one(keyed.clone(), T0).expect("enqueue");
        assert_eq!(store.enqueue_one(keyed, T0).expect("enqueue"), id);
    }

    #[test]
    fn a_full_database_refuses_writes_and_keeps_what_it_has() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("q.db");
        let small = SqliteOptions::new().max_size(256 * 1024);
        let store = SqliteStore::open_with(&path, small.clone()).expect("open");
        let mut stored = Vec::new();
        let err = loop {
            match store.enqueue_one(NewTask::new("c", vec![7; 2_000]), T0) {
                Ok(id) => stored.push(id),
                Err(e) => break e,
            }
            assert!(stored.len() < 1_000, "the size cap did not hold");
        };
        assert!(matches!(err, Error::Full { .. }), "{err}");
        assert!(
            err.to_string().contains("database or disk is full"),
            "{err}"
        );
        assert!(!stored.is_empty());
        // Claims and outcomes need no new pages: work goes on while full.
        let t = store.claim("c", 1, T0, T0).expect("claim while full");
        store
            .complete(t[0].claim(), T0)
            .expect("complete while full");
        drop(store);
        // With room again, every task committed before the error is there and runs.
        let store = SqliteStore::open(&path).expect("reopen without a cap");
        assert_eq!(store.counts(None).expect("counts").total(), stored.len());
        store
            .enqueue_one(NewTask::new("c", vec![7; 2_000]), T0)
            .expect("room again");
        let rest = store.claim("c", usize::MAX, T0, T0).expect("claim");
        assert_eq!(rest.len(), stored.len());
        assert!(rest.iter().all(|t| t.args == vec![7; 2_000]));
    }

    /// A reader that holds a snapshot for long (a `sqlite3` shell, a backup) never stalls
    /// writers for long: the checkpointer waits for it only a few milliseconds at a time.
    #[test]
    fn a_long_reader_does_not_stall_writers() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("q.db");
        let options = SqliteOptions::new().busy_timeout(Duration::from_secs(3));
        let store = SqliteStore::open_with(&path, options).expect("open");
        let other = Connection::open(&path).expect("open raw");
        for _ in 0..200 {
            store
                .enqueue_one(NewTask::new("c", vec![1; 100]), T0)
                .expect("enqueue");
        }
        // Holds a snapshot of the file as it is now.
        other.execute_batch("BEGIN").expect("begin");
        let n: i64 = other
            .query_row("SELECT count(*) FROM tasks", [], |r| r.get(0))
            .expect("read");
        assert_eq!(n, 200);
        let mut slowest = Duration::ZERO;
        let t0 = Instant::now();
        // Past a second and a thousand writes: the checkpointer runs meanwhile.
        while t0.elapsed() < Duration::from_millis(2_500) {
            let t = Instant::now();
            store
                .enqueue_one(NewTask::new("c", vec![1; 100]), T0)
                .expect("enqueue");
            slowest = slowest.max(t.elapsed());
        }
        other.execute_batch("COMMIT").expect("end the read");
        assert!(
            slowest < Duration::from_millis(500),
            "a write waited {slowest:?}"
        );
    }

    /// Under continuous writes the WAL starts over again and again: the checkpointer
    /// restarts it once it passes its size (a passive checkpoint alone never catches up, and
    /// the WAL then grows without bound: 96 MB in 3 s here).
    #[test]
    fn continuous_writes_restart_the_wal() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("q.db");
        let store = SqliteStore::open(&path).expect("open");
        let wal = dir.path().join("q.db-wal");
        // The WAL header's checkpoint sequence number moves on each time the WAL restarts.
        let sequence = || {
            let header = std::fs::read(&wal).map(|b| b[..32.min(b.len())].to_vec());
            header.ok().and_then(|h| h.get(12..16).map(<[u8]>::to_vec))
        };
        let mut seen = std::collections::HashSet::new();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) && seen.len() < 3 {
            let tasks: Vec<NewTask> = (0..50).map(|_| NewTask::new("c", vec![1; 200])).collect();
            store.enqueue(&tasks, T0).expect("enqueue");
            let claimed = store.claim("c", 50, T0, T0).expect("claim");
            let done: Vec<_> = claimed
                .iter()
                .map(|t| (t.claim(), Outcome::Succeeded))
                .collect();
            store.finish_many(&done, T0).expect("finish");
            seen.extend(sequence());
        }
        assert!(
            seen.len() >= 3,
            "the WAL restarted {} times",
            seen.len() - 1
        );
    }

    #[test]
    fn every_migration_applies_to_an_empty_in_memory_database() {
        let mut conn = Connection::open_in_memory().expect("in memory");
        schema::inspect(&conn).expect("an empty database is accepted");
        schema::migrate(&mut conn, 0).expect("migrate");
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("user_version");
        assert_eq!(version, schema::latest());
        let indexes: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE type = 'index' AND name LIKE 'tasks_%'",
                [],
                |r| r.get(0),
            )
            .expect("indexes");
        assert_eq!(indexes, 6);
        schema::migrate(&mut conn, 0).expect("migrating again does nothing");
    }

    /// Opens `path` expecting an error, and checks the file's bytes did not change.
    fn refused(path: &Path) -> Error {
        let before = std::fs::read(path).expect("read");
        let err = SqliteStore::open(path).expect_err("must be refused");
        assert!(
            std::fs::read(path).expect("read") == before,
            "the file changed"
        );
        err
    }

    #[test]
    fn a_file_that_is_not_sqlite_is_refused_unchanged() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("notes.txt");
        std::fs::write(&path, "just some text, not a database\n".repeat(300)).expect("write");
        let err = refused(&path);
        assert!(matches!(err, Error::Foreign { .. }), "{err}");
        assert!(err.to_string().contains("not a SQLite database"), "{err}");
    }

    #[test]
    fn another_applications_database_is_refused_unchanged() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("app.db");
        Connection::open(&path)
            .expect("open raw")
            .execute_batch("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT);")
            .expect("create");
        let err = refused(&path);
        assert!(matches!(err, Error::Foreign { .. }), "{err}");
        assert!(err.to_string().contains("not a simplepyq queue"), "{err}");
    }

    #[test]
    fn a_newer_schema_is_refused_unchanged() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("q.db");
        drop(SqliteStore::open(&path).expect("create"));
        let conn = Connection::open(&path).expect("open raw");
        conn.pragma_update(None, "user_version", schema::latest() + 1)
            .expect("bump");
        drop(conn);
        let err = refused(&path);
        match err {
            Error::SchemaTooNew {
                found, supported, ..
            } => assert_eq!((found, supported), (schema::latest() + 1, schema::latest())),
            other => panic!("expected SchemaTooNew, got {other}"),
        }
    }

    /// A closed queue file of 2,000 tasks with its WAL folded in, so that damage to the
    /// file hits the tasks.
    fn queue_of_2000(dir: &tempfile::TempDir) -> std::path::PathBuf {
        let path = dir.path().join("q.db");
        {
            let store = SqliteStore::open(&path).expect("create");
            let tasks: Vec<NewTask> = (0..2_000)
                .map(|_| NewTask::new("c", vec![7; 100]))
                .collect();
            store.enqueue(&tasks, T0).expect("enqueue");
        }
        Connection::open(&path)
            .expect("open raw")
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .expect("checkpoint");
        path
    }

    #[test]
    fn a_damaged_file_gives_corrupt_errors_not_panics() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = queue_of_2000(&dir);
        let mut bytes = std::fs::read(&path).expect("read");
        assert!(bytes.len() > 16 * 4096, "{} bytes", bytes.len());
        for b in &mut bytes[4 * 4096..12 * 4096] {
            *b = 0xab;
        }
        std::fs::write(&path, &bytes).expect("damage");
        let err = SqliteStore::open(&path)
            .and_then(|s| s.claim("c", 10, T0, T0).and(s.counts(None)))
            .expect_err("damage must be reported");
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    }

    /// A file cut short (a bad copy, a full disk outside SQLite): the first call that needs
    /// the missing pages says the file is damaged; none claims a partial list is whole.
    #[test]
    fn a_truncated_file_gives_corrupt_errors() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = queue_of_2000(&dir);
        let len = std::fs::metadata(&path).expect("stat").len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open")
            .set_len(len / 2)
            .expect("truncate");
        let err = SqliteStore::open(&path)
            .and_then(|s| s.list(&ListFilter::new(10_000)))
            .expect_err("a cut file must be reported");
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    }

    /// Another program wrote bytes that are not UTF-8 into text columns (channel, error,
    /// unique key) and a wrong type into a number column: reading those rows gives
    /// `Error::Corrupt` naming the problem, never a panic; other channels go on.
    #[test]
    fn values_simplepyq_never_writes_are_corrupt_errors() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("q.db");
        let store = SqliteStore::open(&path).expect("create");
        let good = store
            .enqueue_one(NewTask::new("good", vec![1]), T0)
            .expect("enqueue");
        let bad: Vec<TaskId> = (0..3)
            .map(|_| {
                store
                    .enqueue_one(NewTask::new("bad", vec![2]), T0)
                    .expect("enqueue")
            })
            .collect();
        let raw = Connection::open(&path).expect("open raw");
        raw.execute(
            "UPDATE tasks SET last_error = CAST(X'66ff6f' AS TEXT) WHERE id = ?1",
            [bad[0].get()],
        )
        .expect("damage the error");
        raw.execute(
            "UPDATE tasks SET unique_key = CAST(X'c328' AS TEXT) WHERE id = ?1",
            [bad[1].get()],
        )
        .expect("damage the key");
        raw.execute(
            "UPDATE tasks SET attempts = 'many' WHERE id = ?1",
            [bad[2].get()],
        )
        .expect("damage a number");
        for id in &bad {
            let err = store.get(*id).expect_err("a damaged row");
            assert!(matches!(err, Error::Corrupt { .. }), "{err}");
        }
        assert!(matches!(
            store.list(&ListFilter::new(10)),
            Err(Error::Corrupt { .. })
        ));
        let err = store.claim("bad", 10, T0, T0).expect_err("damaged rows");
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
        let ok = store.claim("good", 10, T0, T0).expect("another channel");
        assert_eq!(ok.iter().map(|t| t.id).collect::<Vec<_>>(), vec![good]);
        store.complete(ok[0].claim(), T0).expect("complete");
    }

    /// Virtual-machine steps SQLite takes to find the next due task of a channel.
    fn claim_query_steps(store: &SqliteStore) -> (i32, String) {
        store.readers.with(query_steps).expect("a read connection")
    }

    fn query_steps(conn: &Connection) -> (i32, String) {
        let sql = format!(
            "SELECT {COLUMNS} FROM tasks WHERE {READY} ORDER BY priority DESC, run_at, id LIMIT ?3"
        );
        let plan: Vec<String> = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .expect("explain")
            .query_map(params!["c", T0.as_millis(), 1], |r| r.get(3))
            .expect("plan")
            .collect::<rusqlite::Result<_>>()
            .expect("plan rows");
        let mut stmt = conn.prepare(&sql).expect("prepare");
        let n = stmt
            .query_map(params!["c", T0.as_millis(), 1], |_| Ok(()))
            .expect("query")
            .count();
        assert_eq!(n, 1);
        (stmt.get_status(StatementStatus::VmStep), plan.join("; "))
    }

    /// Fills the store with `n` tasks of every kind a claim must skip, then one due task.
    fn backlog(store: &SqliteStore, n: usize) {
        let later = T0.after(Duration::from_secs(3_600));
        let mut tasks = Vec::with_capacity(n * 3);
        for _ in 0..n {
            tasks.push(NewTask::new("c", vec![0; 16]).run_at(later));
            tasks.push(NewTask::new("other", vec![0; 16]));
            tasks.push(NewTask::new("b", vec![0; 16]));
        }
        store.enqueue(&tasks, T0).expect("enqueue");
        // Done and failed tasks too (set directly: only the rows matter here).
        store
            .write(|tx| {
                Ok(tx.execute_batch(
                    "UPDATE tasks SET status = 'done' WHERE channel = 'b' AND id % 2 = 0;
                     UPDATE tasks SET status = 'failed' WHERE channel = 'b' AND id % 2 = 1;
                     UPDATE tasks SET channel = 'c' WHERE channel = 'b';",
                )?)
            })
            .expect("finish");
        store
            .enqueue_one(NewTask::new("c", vec![]), T0)
            .expect("enqueue");
    }

    /// Column `column` of every row of `explain` (an `EXPLAIN` or `EXPLAIN QUERY PLAN` of a
    /// statement), its parameters left unbound.
    fn explain(conn: &Connection, explain: &str, column: usize) -> rusqlite::Result<Vec<String>> {
        let mut stmt = conn.prepare(explain)?;
        let unbound = vec![rusqlite::types::Null; stmt.parameter_count()];
        let rows = stmt.query_map(params_from_iter(unbound), |r| r.get(column))?;
        rows.collect()
    }

    /// Every query of a status follows an index: none reads the whole table.
    #[test]
    fn status_queries_follow_an_index() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(dir.path().join("q.db")).expect("open");
        let mut queries = vec![EXPIRED.to_owned(), KEY_HOLDER.to_owned(), channels_sql()];
        queries.extend(Status::ALL.map(remove_channel_sql));
        for channel in [None, Some("c")] {
            queries.extend([
                failed_sql(channel),
                clear_failed_sql(channel),
                purge_done_sql(channel),
                counts_sql(channel),
            ]);
        }
        store
            .readers
            .with(|conn| {
                for sql in &queries {
                    let plan = explain(conn, &format!("EXPLAIN QUERY PLAN {sql}"), 3)
                        .expect("the query plan");
                    assert!(
                        plan.iter()
                            .all(|step| !step.starts_with("SCAN tasks") || step.contains("INDEX")),
                        "{sql}: {plan:?}"
                    );
                    if sql == KEY_HOLDER {
                        assert!(plan.concat().contains("tasks_unique"), "{plan:?}");
                    }
                }
            })
            .expect("a read connection");
    }

    /// The writer's insert and change of status build no temporary table (SQLite builds one
    /// for an `IN` list of three values or more, in a check or an index's condition).
    #[test]
    fn writes_build_no_temporary_table() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(dir.path().join("q.db")).expect("open");
        for sql in [insert_sql(), SAVE_STATE.to_owned()] {
            let program = store
                .write(move |tx| Ok(explain(tx, &format!("EXPLAIN {sql}"), 1)?))
                .expect("the program");
            assert!(
                !program.iter().any(|op| op == "OpenEphemeral"),
                "{program:?}"
            );
        }
    }

    #[test]
    fn claim_cost_does_not_grow_with_the_backlog() {
        let dir = tempfile::tempdir().expect("temp dir");
        let small = SqliteStore::open(dir.path().join("small.db")).expect("open");
        backlog(&small, 1_000);
        let large = SqliteStore::open(dir.path().join("large.db")).expect("open");
        backlog(&large, 100_000);
        let (small_steps, plan) = claim_query_steps(&small);
        let (large_steps, _) = claim_query_steps(&large);
        assert!(plan.contains("tasks_ready"), "{plan}");
        assert!(!plan.contains("TEMP B-TREE"), "claim sorts: {plan}");
        assert_eq!(small_steps, large_steps, "claim visits more rows at 100k");
    }
}
