//! Files of the original Python simplepyq (0.1.3): one table `tasks (id, channel, args,
//! status, retries, delay_until)`, times in seconds. Opening one for writing imports it:
//! a backup copy is written beside the file, then, in the migration's transaction, its
//! tasks move into the queue's table `simplepyq_tasks` with their ids, and its table is
//! dropped.

use std::path::{Path, PathBuf};

use rusqlite::Connection;
use simplepyq_core::Error;

use crate::error::{BACKEND, R};

/// The original's table, column by column.
const COLUMNS: [&str; 6] = ["id", "channel", "args", "status", "retries", "delay_until"];

/// Whether the file is the original's: no header of ours, and its one table is `tasks`
/// with exactly the original's columns.
pub(crate) fn is_original(conn: &Connection) -> R<bool> {
    let tables: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    if tables != ["tasks"] {
        return Ok(false);
    }
    let columns: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('tasks') ORDER BY cid")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(columns == COLUMNS)
}

/// Where a backup copy of `path` goes: `<name>.simplepyq-0.1.3.bak` beside it, or `.bak.1`,
/// `.bak.2`… if that exists.
pub(crate) fn backup_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "tasks.db".to_owned());
    let base = path.with_file_name(format!("{name}.simplepyq-0.1.3.bak"));
    let mut copy = base.clone();
    let mut n = 0;
    while copy.exists() {
        n += 1;
        copy = PathBuf::from(format!("{}.{n}", base.display()));
    }
    copy
}

/// Copies the file, as it is now, to [`backup_path`]. Returns the copy's path.
pub(crate) fn back_up(conn: &Connection, path: &Path) -> R<PathBuf> {
    let copy = backup_path(path);
    let target = copy.to_str().ok_or_else(|| Error::Backend {
        backend: BACKEND,
        source: format!("the backup path {} is not UTF-8", copy.display()).into(),
    })?;
    conn.execute("VACUUM INTO ?1", [target])?;
    Ok(copy)
}

/// Refuses an original's file that this import could not read back: a status the original
/// never writes, a channel that is not text, a retry count that is missing, negative or not
/// a number, a `delay_until` that is not a number. Reads only: run before the backup and the
/// switch to WAL, so that a refused file is left as it was, and again under the import's
/// write lock.
pub(crate) fn check(conn: &Connection) -> R<()> {
    let unknown: Option<String> = conn
        .query_row(
            "SELECT printf('status %s, channel of type %s, retries %s, delay_until %s',                            coalesce(status, 'NULL'), typeof(channel),                            coalesce(quote(retries), 'NULL'), coalesce(quote(delay_until), 'NULL'))              FROM tasks              WHERE status IS NULL OR status NOT IN ('pending', 'running', 'delayed', 'done', 'failed')              OR typeof(channel) != 'text'              OR typeof(retries) NOT IN ('integer', 'real') OR retries < 0              OR typeof(delay_until) NOT IN ('integer', 'real', 'null') LIMIT 1",
            [],
            |r| r.get(0),
        )
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })?;
    match unknown {
        Some(what) => Err(Error::Corrupt {
            backend: BACKEND,
            message: format!(
                "the file is the original simplepyq's, but a task in it has a value that                  version never writes ({what}); nothing was imported or changed"
            ),
        }
        .into()),
        None => Ok(()),
    }
}

/// Copies the original's tasks (its table `tasks`, [`check`]ed) into the queue's table
/// `simplepyq_tasks`, keeping their ids, and drops the original's table, in the caller's
/// transaction. `now_ms` is the time of the import. Returns how many tasks moved.
///
/// Statuses: `pending` and `running` (left by a crash: the original has no leases) become
/// pending; `delayed` stays delayed until its `delay_until`; `done` and `failed` stay.
/// Retries left are the original's; the attempts made are not known and read 0.
///
/// Every value is written as the type the store reads back (SQLite keeps a value's own
/// type in a column of another affinity when it cannot convert it exactly): a fractional
/// `delay_until` (the original's `DelayException(0.3)` stores `time + 0.3`) is rounded to
/// whole milliseconds, retries to a whole count that fits, arguments to bytes.
pub(crate) fn copy_tasks(tx: &Connection, now_ms: i64) -> R<usize> {
    let moved = tx.execute(
        "INSERT INTO simplepyq_tasks (id, channel, args, status, retries_left, max_retries, \
                            attempts, run_at, lease_until, last_error, created_at, updated_at) \
         SELECT id, channel, coalesce(CAST(args AS BLOB), X'c0'), \
                CASE WHEN status = 'delayed' AND delay_until IS NOT NULL THEN 'delayed' \
                     WHEN status IN ('pending', 'running', 'delayed') THEN 'pending' \
                     ELSE status END, \
                min(CAST(retries AS INTEGER), 4294967295), \
                min(CAST(retries AS INTEGER), 4294967295), 0, \
                CASE WHEN status = 'delayed' AND delay_until IS NOT NULL \
                     THEN CAST(round(delay_until * 1000) AS INTEGER) ELSE ?1 END, \
                NULL, \
                CASE WHEN status = 'failed' \
                     THEN 'failed under the original simplepyq, which keeps no error' END, \
                ?1, ?1 \
         FROM main.tasks ORDER BY id",
        [now_ms],
    )?;
    // Ids are never reused: the ids the original gave out stay given out.
    tx.execute_batch(
        "UPDATE simplepyq_ids SET given_out = max(given_out, \
             (SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'tasks')); \
         DROP TABLE main.tasks;",
    )?;
    Ok(moved)
}

#[cfg(test)]
mod tests {

    use std::path::Path;

    use std::time::Duration;

    use rusqlite::Connection;
    use rusqlite::params;

    use simplepyq_core::{
        ClaimStore, Clock, Error, InspectStore, ListFilter, NewTask, Status, StoreExt, SystemClock,
        Timestamp,
    };

    use crate::testing::*;
    use crate::{SqliteStore, original, schema};

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
        assert_eq!(
            (queue_version(&path), header(&path)),
            (schema::latest(), (0, 0))
        );
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
            .prepare(
                "SELECT typeof(args), typeof(retries_left), typeof(run_at) FROM simplepyq_tasks",
            )
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
}
