//! Opening a queue file: the connections, the checks before anything is written, the
//! import of the original's files, the migrations and the settings.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};
use simplepyq_core::{Clock, Error, Result, SystemClock};

use crate::checkpoint::{self, Checkpointer};
use crate::error::{self, E, R};
use crate::writer::{Gather, Writer};
use crate::{
    Durability, SqliteOptions, SqliteStore, fork, original, outbox, readers, schema, watch,
};

impl SqliteStore {
    /// Opens the queue file at `path`, creating it if needed, with default settings. An
    /// application's database gets the queue's tables beside its own (see the crate's
    /// documentation).
    ///
    /// Errors, each leaving the file unchanged: [`Error::Foreign`] for a file that is not
    /// SQLite, or has a table `simplepyq_tasks` that is not a queue's;
    /// [`Error::SchemaTooNew`] for a file of a newer simplepyq, [`Error::Corrupt`] for a
    /// damaged one.
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
        fork::within(|| Self::open_for_reading(path.as_ref()))
    }

    fn open_for_reading(path: &Path) -> Result<Self> {
        let path = path.to_path_buf();
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
        let announcer = Arc::new(watch::Announcer::new(&path));
        let committed =
            outbox::Committed::new(&conn, path.clone(), busy_timeout, Arc::clone(&announcer));
        Ok(SqliteStore {
            committed,
            announcer,
            readers: readers::Readers::new(conn, more),
            writer: None,
            path,
            busy_timeout,
            watch_interval: None,
            wakes: simplepyq_core::LocalWakes::default(),
            enqueue_pages: None,
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
        fork::within(|| {
            let conn = connect_read_only(path.as_ref(), busy_timeout)?;
            retrying(busy_timeout, || {
                schema::inspect(&conn).map(|found| found == schema::Found::Original)
            })
        })
    }

    /// Where the next import of the original's file at `path` writes its backup copy.
    pub fn original_backup_path(path: impl AsRef<Path>) -> PathBuf {
        original::backup_path(path.as_ref())
    }

    /// Opens the queue file at `path` with `options`.
    pub fn open_with(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self> {
        fork::within(|| Self::open_for_writing(path.as_ref(), options))
    }

    fn open_for_writing(path: &Path, options: SqliteOptions) -> Result<Self> {
        let path = path.to_path_buf();
        // SQLite's names for a database in memory and for a private temporary file: each
        // connection of the store would have one of its own, and WAL (which a queue needs)
        // refuses them.
        if path.as_os_str() == ":memory:" {
            return Err(Error::InvalidConfig(
                "\":memory:\" is not a file: a queue in memory is SimplePyQ::memory() (the memory \
                 store); a SQLite store needs a file"
                    .into(),
            ));
        }
        if path.as_os_str().is_empty() {
            return Err(Error::config("the queue file's path is empty"));
        }
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
        let mut enqueue_pages = None;
        if let Some(bytes) = options.max_size {
            let page: i64 = conn
                .pragma_query_value(None, "page_size", |r| r.get(0))
                .map_err(E::from)?;
            let pages = (i64::try_from(bytes).unwrap_or(i64::MAX) / page.max(1)).max(1);
            conn.pragma_update(None, "max_page_count", pages)
                .map_err(E::from)?;
            enqueue_pages = Some(crate::claim::enqueue_pages(pages));
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
        let gather = match options.durability {
            Durability::Normal => Gather::Briefly,
            Durability::Full => Gather::ForTheDisk,
        };
        let writer = Writer::start(conn, options.busy_timeout, gather)?;
        let checkpointer = Checkpointer::start(connect(&path, checkpoint::WAIT)?, writer.holder())?;
        let announcer = Arc::new(watch::Announcer::new(&path));
        let committed = outbox::Committed::new(
            &reader,
            path.clone(),
            options.busy_timeout,
            Arc::clone(&announcer),
        );
        Ok(SqliteStore {
            committed,
            announcer,
            readers: readers::Readers::new(reader, open_reader),
            writer: Some((writer, checkpointer)),
            path,
            busy_timeout: options.busy_timeout,
            watch_interval: options.watch_interval,
            wakes: simplepyq_core::LocalWakes::default(),
            enqueue_pages,
        })
    }
}

/// Opens a connection to the existing file at `path` that only reads, waiting up to
/// `busy_timeout` for locks.
pub(crate) fn connect_read_only(path: &Path, busy_timeout: Duration) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| cannot_open(path, e))?;
    keep_plans(&conn).map_err(|e| cannot_open(path, e))?;
    wait_for_locks(&conn, busy_timeout).map_err(|e| cannot_open(path, e))?;
    Ok(conn)
}

/// Makes `conn`'s statements keep the plan they were prepared with, whatever values are
/// bound (SQLite's query planner stability guarantee). Without it, SQLite looks at the value
/// bound to a parameter compared for equality in a term no index serves (to guess how many
/// rows pass), and marks the statement to be prepared again once that parameter is bound
/// anew; rusqlite clears a cached statement's bindings as it goes back to the cache, which
/// then prepares it again at every use. The claim's look for due tasks and the idle
/// workers' look for the next wake-up were parsed and planned at each call (about 0.25 ms
/// of a task's pick-up). The store keeps no statistics for a plan to follow either.
fn keep_plans(conn: &Connection) -> rusqlite::Result<()> {
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )
    .map(drop)
}

/// Makes `conn` wait up to `timeout` for a lock before it answers "busy". By the pragma,
/// not rusqlite's `busy_timeout`, which needs SQLite 3.44 (`sqlite3_set_clientdata`): the
/// store also runs on the system's SQLite (Debian 12 has 3.40), for one library per process.
pub(crate) fn wait_for_locks(conn: &Connection, timeout: Duration) -> rusqlite::Result<()> {
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    conn.query_row(&format!("PRAGMA busy_timeout = {ms}"), [], |_| Ok(()))
}

/// Opens a connection to `path` that waits up to `busy_timeout` for locks.
pub(crate) fn connect(path: &Path, busy_timeout: Duration) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| cannot_open(path, e))?;
    keep_plans(&conn).map_err(E::from)?;
    wait_for_locks(&conn, busy_timeout).map_err(E::from)?;
    Ok(conn)
}

/// The error for a file SQLite could not open: the path is what the user must fix.
pub(crate) fn cannot_open(path: &Path, e: rusqlite::Error) -> Error {
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
pub(crate) fn retrying<T>(busy_timeout: Duration, mut op: impl FnMut() -> R<T>) -> Result<T> {
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

#[cfg(test)]
mod tests {

    use std::path::Path;

    use std::time::{Duration, Instant};

    use rusqlite::Connection;
    use rusqlite::params;

    use simplepyq_core::{
        ClaimStore, Error, FlowStore, InspectStore, ListFilter, NewTask, Outcome, OutcomeStore,
        ScheduleStore, StoreExt,
    };

    use crate::testing::*;
    use crate::{SqliteOptions, SqliteStore, schema};

    /// SQLite's ":memory:" is refused with a pointer to the memory store, not an error about
    /// WAL mode.
    #[test]
    fn memory_is_refused_naming_the_memory_store() {
        let err = SqliteStore::open(":memory:").expect_err("not a file");
        assert!(matches!(err, Error::InvalidConfig(_)), "{err}");
        assert!(err.to_string().contains("SimplePyQ::memory()"), "{err}");
    }

    /// An empty path (SQLite's private temporary database) is refused as such, not with an
    /// error about WAL mode.
    #[test]
    fn an_empty_path_is_refused_as_empty() {
        let err = SqliteStore::open("").expect_err("no file");
        assert!(matches!(err, Error::InvalidConfig(_)), "{err}");
        assert!(err.to_string().contains("path is empty"), "{err}");
    }

    #[test]
    fn migrations_apply_to_a_fresh_file_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("q.db");
        let id = SqliteStore::open(&path)
            .expect("create")
            .enqueue_one(NewTask::new("c", vec![1]), T0)
            .expect("enqueue");
        assert_eq!(queue_version(&path), schema::latest());
        // The header is left to the application.
        assert_eq!(header(&path), (0, 0));
        // Opening again migrates nothing and keeps the data.
        let store = SqliteStore::open(&path).expect("reopen");
        assert_eq!(store.get(id).expect("get").map(|t| t.args), Some(vec![1]));
        assert_eq!(queue_version(&path), schema::latest());
    }

    /// A file as version 1 left it, with a pending and a delayed task.
    fn version_1_file(path: &Path) {
        version_file(path, 1);
    }

    /// A file as version `v` (1 to the one before the latest) left it, with a pending and a
    /// delayed task.
    fn version_file(path: &Path, v: usize) {
        let conn = Connection::open(path).expect("open raw");
        conn.execute_batch("PRAGMA journal_mode = WAL;")
            .expect("wal");
        for sql in &schema::MIGRATIONS[..v] {
            conn.execute_batch(sql).expect("a migration");
        }
        let own = v as i64 >= schema::OWN_NAMES;
        if own {
            conn.execute(
                "INSERT INTO simplepyq_schema (version, applied_at) VALUES (?1, 0)",
                [v as i64],
            )
            .expect("version");
        } else {
            conn.pragma_update(None, "application_id", schema::APPLICATION_ID)
                .expect("application_id");
            conn.pragma_update(None, "user_version", v as i64)
                .expect("user_version");
        }
        let table = if own { "simplepyq_tasks" } else { "tasks" };
        for (args, status, run_at) in [(1, "pending", 0), (2, "delayed", 5_000)] {
            conn.execute(
                &format!(
                    "INSERT INTO {table} (channel, args, status, retries_left, max_retries, \
                     attempts, run_at, created_at, updated_at) \
                     VALUES ('c', ?1, ?2, 1, 1, 0, ?3, 0, 0)"
                ),
                params![vec![args as u8], status, T0.as_millis() + run_at],
            )
            .expect("insert");
        }
    }

    /// A file of every earlier version is read as it is by a read-only open, and opened
    /// (migrated) with its tasks, which then run.
    #[test]
    fn files_of_every_earlier_version_open() {
        let dir = tempfile::tempdir().expect("temp dir");
        for v in 1..usize::try_from(schema::latest()).expect("a version") {
            let path = dir.path().join(format!("v{v}.db"));
            version_file(&path, v);
            let before = (header(&path), std::fs::read(&path).expect("read"));
            let store = SqliteStore::open_read_only(&path).expect("read-only");
            let counts = store.counts(None).expect("counts");
            assert_eq!((counts.pending, counts.delayed), (1, 1), "version {v}");
            assert!(store.flows().expect("flows").is_empty(), "version {v}");
            assert_eq!(store.last_fired("s").expect("last fired"), None);
            drop(store);
            let after = (header(&path), std::fs::read(&path).expect("read"));
            assert!(
                before == after,
                "version {v}: the read-only open changed the file"
            );
            let store = SqliteStore::open(&path).expect("migrate");
            assert_eq!(queue_version(&path), schema::latest(), "version {v}");
            let later = T0.after(Duration::from_secs(5));
            let claimed = store.claim("c", 5, later, later).expect("claim");
            let args: Vec<Vec<u8>> = claimed.iter().map(|t| t.args.clone()).collect();
            assert_eq!(args, vec![vec![1], vec![2]], "version {v}");
            let id = store
                .enqueue_one(NewTask::new("c", vec![3]), T0)
                .expect("enqueue");
            assert!(id.get() > claimed[1].id.get(), "ids go on");
        }
    }

    /// Migration 0011 makes the tasks table anew: the rows, their results and the sequence
    /// of ids come through (the id of a task deleted before it is never given again).
    #[test]
    fn the_rebuilt_tasks_table_keeps_rows_and_ids() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("v10.db");
        version_file(&path, 10);
        {
            let conn = Connection::open(&path).expect("open raw");
            conn.execute(
                "INSERT INTO simplepyq_tasks (channel, args, status, retries_left, \
                 max_retries, attempts, run_at, created_at, updated_at, result) \
                 VALUES ('c', x'90', 'done', 0, 0, 1, 0, 0, 0, x'2a')",
                [],
            )
            .expect("a done task with a result");
            conn.execute(
                "INSERT INTO simplepyq_tasks (channel, args, status, retries_left, \
                 max_retries, attempts, run_at, created_at, updated_at) \
                 VALUES ('c', x'90', 'pending', 0, 0, 0, 0, 0, 0)",
                [],
            )
            .expect("a task deleted next");
            conn.execute("DELETE FROM simplepyq_tasks WHERE id = 4", [])
                .expect("delete");
        }
        let store = SqliteStore::open(&path).expect("migrate");
        assert_eq!(store.counts(None).expect("counts").total(), 3);
        use simplepyq_core::TaskId;
        assert_eq!(
            store.result(TaskId::new(3)).expect("result"),
            Some(vec![0x2a])
        );
        let id = store
            .enqueue_one(NewTask::new("c", vec![]).after([TaskId::new(3)]), T0)
            .expect("enqueue");
        assert_eq!(id, TaskId::new(5), "4 is never given again");
        assert_eq!(store.parents(id).expect("parents"), [TaskId::new(3)]);
    }

    /// Migration 0015 makes the tasks table anew without `AUTOINCREMENT`: its rows, its
    /// indexes and its trigger come through unchanged, and the ids given out before (the
    /// largest one deleted) are never given again.
    #[test]
    fn ids_without_autoincrement_keep_the_files_indexes_and_ids() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("v14.db");
        version_file(&path, 14);
        let schema_of = |conn: &Connection| -> Vec<(String, String)> {
            let mut stmt = conn
                .prepare(
                    "SELECT name, sql FROM sqlite_master WHERE tbl_name = 'simplepyq_tasks' \
                     AND type IN ('index', 'trigger') AND sql IS NOT NULL ORDER BY name",
                )
                .expect("schema");
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .expect("rows")
                .collect::<rusqlite::Result<_>>()
                .expect("schema")
        };
        let mut before = {
            let conn = Connection::open(&path).expect("open raw");
            conn.execute("DELETE FROM simplepyq_tasks WHERE id = 2", [])
                .expect("the largest id deleted");
            schema_of(&conn)
        };
        let store = SqliteStore::open(&path).expect("migrate");
        assert_eq!(store.counts(None).expect("counts").total(), 1);
        let id = store
            .enqueue_one(NewTask::new("c", vec![]), T0)
            .expect("enqueue");
        assert_eq!(id, simplepyq_core::TaskId::new(3), "2 is never given again");
        drop(store);
        let conn = Connection::open(&path).expect("open raw");
        let table: String = conn
            .query_row(
                "SELECT sql FROM sqlite_master WHERE name = 'simplepyq_tasks'",
                [],
                |r| r.get(0),
            )
            .expect("table");
        assert!(!table.contains("AUTOINCREMENT"), "{table}");
        let trigger = "simplepyq_tasks_given_out".to_owned();
        let after = schema_of(&conn);
        assert!(after.iter().any(|(name, _)| *name == trigger), "{after:?}");
        before.push((trigger.clone(), String::new()));
        before.sort();
        let names = |s: &[(String, String)]| -> Vec<String> {
            s.iter().map(|(name, _)| name.clone()).collect()
        };
        assert_eq!(names(&after), names(&before));
        for ((name, sql), (_, was)) in after.iter().zip(&before) {
            if *name != trigger {
                assert_eq!(sql, was, "{name}");
            }
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
            for (_, name, _) in *columns {
                assert!(sql.contains(&format!("ADD COLUMN {name} ")), "{name}");
            }
        }
        assert_eq!(schema::ADDED_TABLES.len(), schema::MIGRATIONS.len());
        for (sql, tables) in schema::MIGRATIONS.iter().zip(schema::ADDED_TABLES).skip(1) {
            // A table made anew to replace one (0011's) is not an added table.
            let replaced = sql.matches("_next RENAME TO").count();
            assert_eq!(
                sql.matches("CREATE TABLE").count() - replaced,
                tables.len(),
                "{sql}"
            );
            for (name, columns) in *tables {
                let at = sql.find(&format!("CREATE TABLE {name} (")).expect(name);
                let added_later = |column: &str| {
                    schema::ADDED_COLUMNS
                        .iter()
                        .flat_map(|c| c.iter())
                        .any(|&(table, added, _)| table == *name && added == column)
                };
                for column in *columns {
                    assert!(
                        sql[at..].contains(&format!("    {column} ")) || added_later(column),
                        "{name}.{column}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_version_1_file_is_migrated_keeping_its_tasks() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("v1.db");
        version_1_file(&path);
        let store = SqliteStore::open(&path).expect("migrate");
        // The version moved to the queue's table; the header is the application's now.
        assert_eq!(
            (queue_version(&path), header(&path)),
            (schema::latest(), (0, 0))
        );
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

    /// A capped file refuses the enqueue that would pass its cap, with nothing of it
    /// stored, and loses nothing: its tasks run while it is full (claims and outcomes have
    /// the room enqueues leave) or, where a claim still finds no room (rows of large
    /// arguments packed two to a page, which a claim's lease makes split), once there is
    /// room again; a write refused as full changes nothing. For tasks of many sizes, since
    /// whether a claim splits a page depends on how rows pack.
    #[test]
    fn a_full_database_refuses_writes_and_keeps_what_it_has() {
        for size in [10, 100, 1_990, 2_000, 2_001, 2_010, 3_000] {
            let dir = tempfile::tempdir().expect("temp dir");
            let path = dir.path().join("q.db");
            let small = SqliteOptions::new().max_size(256 * 1024);
            let store = SqliteStore::open_with(&path, small.clone()).expect("open");
            let mut stored = Vec::new();
            let err = loop {
                match store.enqueue_one(NewTask::new("c", vec![7; size]), T0) {
                    Ok(id) => stored.push(id),
                    Err(e) => break e,
                }
                assert!(stored.len() < 100_000, "the size cap did not hold");
            };
            assert!(matches!(err, Error::Full { .. }), "{size}: {err}");
            assert!(
                err.to_string().contains("database or disk is full"),
                "{err}"
            );
            assert!(!stored.is_empty());
            let counts = |s: &SqliteStore| s.counts(None).expect("counts");
            assert_eq!(counts(&store).total(), stored.len());
            // Work goes on while full, one task at a time, until a claim finds no room.
            let mut ran = 0;
            loop {
                let before = counts(&store);
                let t = match store.claim("c", 1, T0, T0) {
                    Ok(t) if t.is_empty() => break,
                    Ok(t) => t,
                    Err(Error::Full { .. }) => {
                        assert_eq!(counts(&store), before, "{size}: a refused claim changed");
                        break;
                    }
                    Err(e) => panic!("{size}: claim while full: {e}"),
                };
                store
                    .complete(t[0].claim(), T0)
                    .unwrap_or_else(|e| panic!("{size}: complete while full: {e}"));
                ran += 1;
            }
            if size <= 100 {
                // Small rows grow no page a claim cannot find room for in the reserve.
                assert_eq!(ran, stored.len(), "{size}: every task ran while full");
            } else {
                assert!(ran > 0, "{size}: no task ran while full");
            }
            drop(store);
            // With room again, every task is there, and the rest run.
            let store = SqliteStore::open(&path).expect("reopen without a cap");
            assert_eq!(counts(&store).total(), stored.len());
            for t in store.claim("c", usize::MAX, T0, T0).expect("claim") {
                store.complete(t.claim(), T0).expect("complete");
            }
            assert_eq!(counts(&store).done, stored.len(), "{size}");
            store
                .enqueue_one(NewTask::new("c", vec![7; size]), T0)
                .expect("room again");
        }
    }

    /// The cap holds for tasks enqueued in the application's own transaction, on a
    /// connection the store did not open (and so without the cap's pragma): the enqueue
    /// that would pass the store's reserve is refused as full, and the caller rolls back;
    /// then every task runs while the file is full, as after the store's own enqueues.
    #[test]
    fn an_enqueue_in_the_callers_transaction_keeps_the_cap() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("q.db");
        let small = SqliteOptions::new().max_size(256 * 1024);
        let store = SqliteStore::open_with(&path, small).expect("open");
        let mut app = Connection::open(&path).expect("the application's connection");
        let mut stored = 0;
        let err = loop {
            let tx = app
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .expect("begin");
            match store.enqueue_in(&tx, &[NewTask::new("c", vec![7; 100])], T0) {
                Ok(_) => {
                    tx.commit().expect("commit");
                    stored += 1;
                }
                Err(e) => break e,
            }
            assert!(stored < 100_000, "the size cap did not hold");
        };
        assert!(matches!(err, Error::Full { .. }), "{err}");
        assert_eq!(store.counts(None).expect("counts").total(), stored);
        for _ in 0..stored {
            let t = store.claim("c", 1, T0, T0).expect("claim while full");
            store
                .complete(t[0].claim(), T0)
                .expect("complete while full");
        }
        assert_eq!(store.counts(None).expect("counts").done, stored);
    }

    /// A schedule's firing is an enqueue: once enqueues are refused as full, so is a
    /// firing (nothing recorded, so it fires once there is room), and the room left stays
    /// for claims and outcomes.
    #[test]
    fn a_schedule_firing_keeps_the_reserve() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("q.db");
        let small = SqliteOptions::new().max_size(256 * 1024);
        let store = SqliteStore::open_with(&path, small).expect("open");
        let task = NewTask::new("c", vec![7; 100]);
        let mut stored = 0;
        while store.enqueue_one(task.clone(), T0).is_ok() {
            stored += 1;
            assert!(stored < 100_000, "the size cap did not hold");
        }
        let fired = store.fire_schedule("every minute", T0, &task, T0);
        assert!(matches!(fired, Err(Error::Full { .. })), "{fired:?}");
        assert_eq!(store.last_fired("every minute").expect("last fired"), None);
        assert_eq!(store.counts(None).expect("counts").total(), stored);
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
            .query_row("SELECT count(*) FROM simplepyq_tasks", [], |r| r.get(0))
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

    /// The WAL's checkpoint sequence number, which moves on each time the WAL restarts. Only
    /// the header is read: reading the whole WAL between writes left the write lock free
    /// long enough for a restart.
    fn wal_sequence(wal: &Path) -> Option<[u8; 4]> {
        use std::io::Read;
        let mut header = [0u8; 16];
        std::fs::File::open(wal)
            .ok()?
            .read_exact(&mut header)
            .ok()?;
        header[12..16].try_into().ok()
    }

    /// A producer whose commits follow each other holds the write lock most of the time (at
    /// `synchronous=FULL` each commit waits for its fsync): the checkpointer's restarts,
    /// which need that lock, nearly all failed, and the WAL grew through the whole run (27
    /// MB in 3,000 lone enqueues), each commit appending to the file, 30% slower than
    /// overwriting it. The checkpointer now holds the store's writes back while it restarts
    /// the WAL: here, where each write keeps its transaction 5 ms, back to back for 4 s, the
    /// WAL restarts at each of the checkpointer's rounds (once a second), where before it
    /// restarted once or not at all.
    #[test]
    fn writes_back_to_back_let_the_wal_restart() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("q.db");
        let store = SqliteStore::open(&path).expect("open");
        let wal = dir.path().join("q.db-wal");
        store
            .write(|tx| Ok(tx.execute_batch("CREATE TABLE filler (b BLOB)")?))
            .expect("table");
        let mut seen = std::collections::HashSet::new();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(4) {
            store
                .write(|tx| {
                    // 10 pages a write: past RESTART_PAGES between two rounds.
                    tx.execute("INSERT INTO filler VALUES (zeroblob(40000))", [])?;
                    std::thread::sleep(Duration::from_millis(5));
                    Ok(())
                })
                .expect("write");
            seen.extend(wal_sequence(&wal));
        }
        assert!(
            seen.len() >= 3,
            "the WAL restarted {} times in 4 s",
            seen.len().saturating_sub(1)
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
            seen.extend(wal_sequence(&wal));
        }
        assert!(
            seen.len() >= 3,
            "the WAL restarted {} times",
            seen.len() - 1
        );
    }

    #[test]
    fn an_empty_database_gets_the_latest_tables_once() {
        let mut conn = Connection::open_in_memory().expect("in memory");
        schema::inspect(&conn).expect("an empty database is accepted");
        schema::migrate(&mut conn, 0).expect("migrate");
        let version: i64 = conn
            .query_row("SELECT max(version) FROM simplepyq_schema", [], |r| {
                r.get(0)
            })
            .expect("version");
        assert_eq!(version, schema::latest());
        let indexes: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE type = 'index' \
                 AND name LIKE 'simplepyq_tasks_%'",
                [],
                |r| r.get(0),
            )
            .expect("indexes");
        assert_eq!(indexes, 9);
        schema::migrate(&mut conn, 0).expect("migrating again does nothing");
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM simplepyq_schema", [], |r| r.get(0))
            .expect("versions");
        assert_eq!(rows, 1);
    }

    /// What a database holds of the queue's: each table's columns (name, type, not null,
    /// default, key), and each index's text.
    fn shape(conn: &Connection) -> Vec<String> {
        let mut shape = Vec::new();
        for table in [
            "simplepyq_tasks",
            "simplepyq_schedules",
            "simplepyq_totals",
            "simplepyq_schema",
            "simplepyq_channels",
        ] {
            let mut columns = conn
                .prepare(&format!(
                    "SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info('{table}')"
                ))
                .expect("columns");
            let rows = columns
                .query_map([], |r| {
                    Ok(format!(
                        "{table}.{}: {} {} {:?} {}",
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, i64>(4)?
                    ))
                })
                .expect("columns");
            shape.extend(rows.map(|r| r.expect("a column")));
        }
        let mut indexes = conn
            .prepare("SELECT name, sql FROM sqlite_schema WHERE type = 'index' AND sql IS NOT NULL ORDER BY name")
            .expect("indexes");
        let rows = indexes
            .query_map([], |r| {
                Ok(format!(
                    "{}: {}",
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?
                ))
            })
            .expect("indexes");
        shape.extend(rows.map(|r| r.expect("an index")));
        shape
    }

    /// A file migrated from version 1 through every migration holds the tables that a new
    /// file gets at once (schema.sql): one schema, whichever way it came.
    #[test]
    fn the_migrations_and_the_new_schema_agree() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (old, new) = (dir.path().join("old.db"), dir.path().join("new.db"));
        version_1_file(&old);
        drop(SqliteStore::open(&old).expect("migrate"));
        drop(SqliteStore::open(&new).expect("create"));
        let (old, new) = (
            Connection::open(&old).expect("open"),
            Connection::open(&new).expect("open"),
        );
        assert_eq!(shape(&old), shape(&new));
        assert!(shape(&new).len() > 25, "{:?}", shape(&new));
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

    /// A table named as the queue's without the queue's version table is another
    /// program's: refused, the file unchanged.
    #[test]
    fn a_table_with_the_queues_name_that_is_not_the_queues_is_refused_unchanged() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("app.db");
        Connection::open(&path)
            .expect("open raw")
            .execute_batch("CREATE TABLE simplepyq_tasks (id INTEGER PRIMARY KEY, name TEXT);")
            .expect("create");
        let err = refused(&path);
        assert!(matches!(err, Error::Foreign { .. }), "{err}");
        assert!(err.to_string().contains("simplepyq_tasks"), "{err}");
    }

    #[test]
    fn a_newer_schema_is_refused_unchanged() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("q.db");
        drop(SqliteStore::open(&path).expect("create"));
        let conn = Connection::open(&path).expect("open raw");
        conn.execute(
            "INSERT INTO simplepyq_schema (version, applied_at) VALUES (?1, 0)",
            [schema::latest() + 1],
        )
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
}
