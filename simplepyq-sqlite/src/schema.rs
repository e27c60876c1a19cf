//! Opening a file safely: what it is, and the migrations that bring it to this version.

use rusqlite::{Connection, TransactionBehavior};
use simplepyq_core::Error;

use crate::error::{BACKEND, R};
use crate::original;

/// `PRAGMA application_id` of simplepyq files: "SPYQ".
pub(crate) const APPLICATION_ID: i32 = 0x5350_5951;

/// The migrations, in order; the file's `PRAGMA user_version` is the number applied.
pub(crate) const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_tasks.sql"),
    include_str!("../migrations/0002_priority_unique.sql"),
    include_str!("../migrations/0003_lost_runs.sql"),
    include_str!("../migrations/0004_status_indexes.sql"),
    include_str!("../migrations/0005_schedules.sql"),
    include_str!("../migrations/0006_totals.sql"),
];

/// The schema version this build writes.
pub(crate) fn latest() -> i64 {
    MIGRATIONS.len() as i64
}

/// What a file holds, as [`inspect`] finds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Found {
    /// A simplepyq queue of a version this build reads, or an empty file.
    Queue,
    /// A file of the original Python simplepyq, to import ([`crate::original`]).
    Original,
}

/// Reads the file's header and schema without writing anything, and refuses files that
/// are not simplepyq queues of a version this build can read (or the original's).
pub(crate) fn inspect(conn: &Connection) -> R<Found> {
    // The first read of the header: a file that is not SQLite fails here.
    let app_id: i32 = conn.pragma_query_value(None, "application_id", |r| r.get(0))?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let tables: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%'",
        [],
        |r| r.get(0),
    )?;
    if app_id == 0 && version == 0 && tables > 0 && original::is_original(conn)? {
        return Ok(Found::Original);
    }
    if app_id != APPLICATION_ID && (app_id != 0 || tables > 0 || version > 0) {
        return Err(Error::Foreign {
            backend: BACKEND,
            message: format!(
                "the file is a SQLite database of another application (application_id {app_id:#x}, \
                 {tables} tables), not a simplepyq queue"
            ),
        }
        .into());
    }
    check_version(version)?;
    Ok(Found::Queue)
}

/// The columns each migration added, with the value they read as in a file without them.
pub(crate) const ADDED_COLUMNS: &[&[(&str, &str)]] = &[
    &[],
    &[("priority", "0"), ("unique_key", "NULL")],
    &[("lost_runs", "0")],
    &[],
    &[],
    &[],
];

/// The tables each migration created after the first, with their columns: in a file
/// without them they read as empty.
pub(crate) const ADDED_TABLES: &[&[(&str, &[&str])]] = &[
    &[],
    &[],
    &[],
    &[],
    &[("schedules", &["name", "last_fired"])],
    &[(
        "totals",
        &["channel", "done", "failed", "retried", "lease_lost"],
    )],
];

/// Lets a read-only connection read a file of an older schema as if it were the latest,
/// without writing it: a temporary view `tasks` (which shadows the file's table) adds the
/// columns later migrations added, with their defaults, and an empty temporary view stands
/// for each table they created. Returns the file's version.
pub(crate) fn read_as_latest(conn: &Connection) -> R<i64> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let applied = usize::try_from(version).unwrap_or(0);
    if applied == 0 || applied >= MIGRATIONS.len() {
        return Ok(version);
    }
    let added: Vec<String> = ADDED_COLUMNS[applied..]
        .iter()
        .flat_map(|columns| columns.iter())
        .map(|(name, default)| format!(", {default} AS {name}"))
        .collect();
    conn.execute_batch(&format!(
        "CREATE TEMP VIEW tasks AS SELECT *{} FROM main.tasks",
        added.concat()
    ))?;
    for (table, columns) in ADDED_TABLES[applied..].iter().flat_map(|t| t.iter()) {
        let nulls: Vec<String> = columns.iter().map(|c| format!("NULL AS {c}")).collect();
        conn.execute_batch(&format!(
            "CREATE TEMP VIEW {table} AS SELECT {} WHERE 0",
            nulls.join(", ")
        ))?;
    }
    Ok(version)
}

fn check_version(found: i64) -> R<()> {
    if found > latest() {
        return Err(Error::SchemaTooNew {
            backend: BACKEND,
            found,
            supported: latest(),
        }
        .into());
    }
    Ok(())
}

/// Applies the migrations the file lacks, all in one transaction; a file of the original
/// simplepyq has its tasks imported in it too. `now_ms` is the time of an import.
pub(crate) fn migrate(conn: &mut Connection, now_ms: i64) -> R<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Read again under the write lock: another process may have migrated meanwhile.
    let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    check_version(version)?;
    let import = version == 0 && original::is_original(&tx)?;
    if import {
        original::rename_table(&tx)?;
    }
    let applied = usize::try_from(version).unwrap_or(0);
    for sql in &MIGRATIONS[applied..] {
        tx.execute_batch(sql)?;
    }
    if import {
        original::copy_tasks(&tx, now_ms)?;
    }
    if version < latest() {
        tx.pragma_update(None, "application_id", APPLICATION_ID)?;
        tx.pragma_update(None, "user_version", latest())?;
    }
    tx.commit()?;
    Ok(())
}
