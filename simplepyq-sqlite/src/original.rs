//! Files of the original Python simplepyq (0.1.3): one table `tasks (id, channel, args,
//! status, retries, delay_until)`, times in seconds. Opening one for writing imports it:
//! a backup copy is written beside the file, then, in the migration's transaction, its
//! tasks move into this schema with their ids, and its table is dropped.

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

/// Checks the original's tasks ([`check`]) and renames their table, in the caller's
/// transaction, so that the migrations create this schema's `tasks`; [`copy_tasks`] then
/// moves them.
///
/// Statuses: `pending` and `running` (left by a crash: the original has no leases) become
/// pending; `delayed` stays delayed until its `delay_until`; `done` and `failed` stay.
/// Retries left are the original's; the attempts made are not known and read 0.
pub(crate) fn rename_table(tx: &Connection) -> R<()> {
    check(tx)?;
    tx.execute_batch("ALTER TABLE tasks RENAME TO simplepyq_original_tasks")?;
    Ok(())
}

/// Copies the renamed table's tasks into the new `tasks` table, keeping their ids, and
/// drops it. `now_ms` is the time of the import. Returns how many tasks moved.
///
/// Every value is written as the type the store reads back (SQLite keeps a value's own
/// type in a column of another affinity when it cannot convert it exactly): a fractional
/// `delay_until` (the original's `DelayException(0.3)` stores `time + 0.3`) is rounded to
/// whole milliseconds, retries to a whole count that fits, arguments to bytes.
pub(crate) fn copy_tasks(tx: &Connection, now_ms: i64) -> R<usize> {
    let moved = tx.execute(
        "INSERT INTO tasks (id, channel, args, status, retries_left, max_retries, attempts, \
                            run_at, lease_until, last_error, created_at, updated_at) \
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
         FROM simplepyq_original_tasks ORDER BY id",
        [now_ms],
    )?;
    // Ids are never reused: the sequence goes on from the original's.
    tx.execute_batch(
        "INSERT INTO sqlite_sequence (name, seq) SELECT 'tasks', 0 \
         WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'tasks'); \
         UPDATE sqlite_sequence SET seq = max(seq, \
             (SELECT coalesce(max(seq), 0) FROM sqlite_sequence \
              WHERE name = 'simplepyq_original_tasks')) \
         WHERE name = 'tasks'; \
         DROP TABLE simplepyq_original_tasks;",
    )?;
    Ok(moved)
}
