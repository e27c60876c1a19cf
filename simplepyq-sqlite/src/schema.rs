//! Opening a file safely: what it is, and the migrations that bring it to this version.

use rusqlite::{Connection, TransactionBehavior};
use simplepyq_core::Error;

use crate::error::{BACKEND, R};
use crate::original;

/// `PRAGMA application_id` of simplepyq files of versions 1 to 6, whose `PRAGMA
/// user_version` was their version; version 7 leaves both to the application.
pub(crate) const APPLICATION_ID: i32 = 0x5350_5951;

/// The migrations, in order: the version of a file is the number applied. Files of
/// versions 1 to 6 keep the queue's tables under the names `tasks`, `schedules` and
/// `totals`; 0007 renames them.
pub(crate) const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_tasks.sql"),
    include_str!("../migrations/0002_priority_unique.sql"),
    include_str!("../migrations/0003_lost_runs.sql"),
    include_str!("../migrations/0004_status_indexes.sql"),
    include_str!("../migrations/0005_schedules.sql"),
    include_str!("../migrations/0006_totals.sql"),
    include_str!("../migrations/0007_own_names.sql"),
    include_str!("../migrations/0008_channels.sql"),
    include_str!("../migrations/0009_keys_and_timeouts.sql"),
    include_str!("../migrations/0010_results.sql"),
    include_str!("../migrations/0011_dependencies.sql"),
    include_str!("../migrations/0012_traces.sql"),
    include_str!("../migrations/0013_stuck.sql"),
    include_str!("../migrations/0014_key_rates.sql"),
    include_str!("../migrations/0015_ids.sql"),
];

/// The tables of version [`OWN_NAMES`], made at once in a file without a queue (or beside
/// an application's tables, which the first migrations' names could collide with).
const CREATE: &str = include_str!("../migrations/schema.sql");

/// The version from which the queue's tables have names of their own and the version is
/// kept in `simplepyq_schema`.
pub(crate) const OWN_NAMES: i64 = 7;

/// The schema version this build writes.
pub(crate) fn latest() -> i64 {
    MIGRATIONS.len() as i64
}

/// What a file holds, as [`inspect`] finds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Found {
    /// A simplepyq queue of a version this build reads, or a file without one (new, or an
    /// application's database), where one is made.
    Queue,
    /// A file of the original Python simplepyq, to import ([`crate::original`]).
    Original,
}

/// Which queue a file holds, by the marks each version leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// None: a new file, or an application's database.
    None,
    /// Versions 1 to 6: tables `tasks`, `schedules`, `totals`, the version in
    /// `PRAGMA user_version` and [`APPLICATION_ID`] in the header.
    Unprefixed(i64),
    /// Version 7 on: tables `simplepyq_*`, the version in `simplepyq_schema`.
    Own(i64),
}

impl Layout {
    /// The version of the queue (0 for none).
    pub(crate) fn version(self) -> i64 {
        match self {
            Layout::None => 0,
            Layout::Unprefixed(v) | Layout::Own(v) => v,
        }
    }
}

/// Whether the file has a table or view named `name`.
fn has_table(conn: &Connection, name: &str) -> R<bool> {
    Ok(conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM main.sqlite_schema WHERE type = 'table' AND name = ?1)",
        [name],
        |r| r.get(0),
    )?)
}

/// Reads which queue the file holds, without writing anything. A table `simplepyq_tasks`
/// without the version table is another program's, and refused.
pub(crate) fn layout(conn: &Connection) -> R<Layout> {
    // The first read of the header: a file that is not SQLite fails here.
    let app_id: i32 = conn.pragma_query_value(None, "application_id", |r| r.get(0))?;
    if has_table(conn, "simplepyq_schema")? {
        let version: Option<i64> =
            conn.query_row("SELECT max(version) FROM main.simplepyq_schema", [], |r| {
                r.get(0)
            })?;
        let version = version.unwrap_or(0);
        check_version(version)?;
        return Ok(Layout::Own(version));
    }
    if has_table(conn, "simplepyq_tasks")? {
        return Err(Error::Foreign {
            backend: BACKEND,
            message: "the file has a table simplepyq_tasks that is not a simplepyq queue's \
                      (no simplepyq_schema beside it)"
                .into(),
        }
        .into());
    }
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if app_id == APPLICATION_ID && version > 0 {
        // Versions 1 to 6 wrote both; a later one writes neither.
        if version >= OWN_NAMES {
            return Err(Error::SchemaTooNew {
                backend: BACKEND,
                found: version,
                supported: latest(),
            }
            .into());
        }
        return Ok(Layout::Unprefixed(version));
    }
    Ok(Layout::None)
}

/// Reads the file's header and schema without writing anything, and refuses files that
/// are not SQLite, and queues of a version this build cannot read. An application's
/// database is a file without a queue: the queue's tables go beside its own.
pub(crate) fn inspect(conn: &Connection) -> R<Found> {
    if layout(conn)? == Layout::None && original::is_original(conn)? {
        return Ok(Found::Original);
    }
    Ok(Found::Queue)
}

/// The columns each migration added to a table it did not create, as (table, column, the
/// value it reads as in a file without it).
pub(crate) const ADDED_COLUMNS: &[&[(&str, &str, &str)]] = &[
    &[],
    &[
        ("simplepyq_tasks", "priority", "0"),
        ("simplepyq_tasks", "unique_key", "NULL"),
    ],
    &[("simplepyq_tasks", "lost_runs", "0")],
    &[],
    &[],
    &[],
    &[],
    &[],
    &[
        ("simplepyq_tasks", "concurrency_key", "NULL"),
        ("simplepyq_channels", "max_running_per_key", "1"),
        ("simplepyq_channels", "rate_starts", "NULL"),
        ("simplepyq_channels", "rate_per_ms", "NULL"),
        ("simplepyq_channels", "window_start", "NULL"),
        ("simplepyq_channels", "window_used", "0"),
        ("simplepyq_tasks", "timeout_ms", "NULL"),
    ],
    &[("simplepyq_tasks", "result", "NULL")],
    &[],
    &[("simplepyq_tasks", "traceparent", "NULL")],
    &[],
    &[
        ("simplepyq_channels", "key_rate_starts", "NULL"),
        ("simplepyq_channels", "key_rate_per_ms", "NULL"),
    ],
    &[],
];

/// The tables each migration created after the first, with their columns (those later
/// migrations added too): in a file without them they read as empty.
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
    &[("simplepyq_schema", &["version", "applied_at"])],
    &[(
        "simplepyq_channels",
        &[
            "channel",
            "paused",
            "max_running",
            "max_running_per_key",
            "rate_starts",
            "rate_per_ms",
            "window_start",
            "window_used",
            "key_rate_starts",
            "key_rate_per_ms",
        ],
    )],
    &[],
    &[],
    &[("simplepyq_dependencies", &["child", "parent", "satisfied"])],
    &[],
    &[("simplepyq_stuck", &["id", "attempt", "since"])],
    &[(
        "simplepyq_key_windows",
        &["channel", "key", "window_start", "window_used"],
    )],
    &[("simplepyq_ids", &["given_out"])],
];

/// Lets a read-only connection read a file of an older schema as if it were the latest,
/// without writing it: temporary views under the latest names (which shadow the file's
/// tables) read the file's tables with the columns later migrations added, at their
/// defaults, and stand empty for each table they created. Returns the file's version (0
/// for a file without a queue).
pub(crate) fn read_as_latest(conn: &Connection) -> R<i64> {
    let (applied, legacy) = match layout(conn)? {
        Layout::Unprefixed(v) => (v, true),
        Layout::Own(v) => (v, false),
        Layout::None => return Ok(0),
    };
    let from = usize::try_from(applied).unwrap_or(0).min(MIGRATIONS.len());
    // Every table: the migration that made it, its name then, its latest columns.
    let tasks: (usize, &str, &[&str]) = (0, "tasks", &[]);
    let made = ADDED_TABLES.iter().enumerate().flat_map(|(i, tables)| {
        tables
            .iter()
            .map(move |&(table, columns)| (i, table, columns))
    });
    for (i, table, columns) in std::iter::once(tasks).chain(made) {
        let name = format!(
            "simplepyq_{}",
            table.strip_prefix("simplepyq_").unwrap_or(table)
        );
        let body = if i >= from {
            let nulls: Vec<String> = columns.iter().map(|c| format!("NULL AS {c}")).collect();
            format!("{} WHERE 0", nulls.join(", "))
        } else {
            // A table of the file (under its old name in a legacy file), with the columns
            // later migrations added at their defaults.
            let source = if legacy { table } else { name.as_str() };
            let added: String = ADDED_COLUMNS[from..]
                .iter()
                .flat_map(|columns| columns.iter())
                .filter(|(of, ..)| *of == name)
                .map(|(_, column, default)| format!(", {default} AS {column}"))
                .collect();
            if source == name && added.is_empty() {
                continue;
            }
            format!("*{added} FROM main.{source}")
        };
        conn.execute_batch(&format!("CREATE TEMP VIEW {name} AS SELECT {body}"))?;
    }
    Ok(applied)
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

/// Applies the migrations the file lacks, all in one transaction: a file without a queue
/// gets the latest tables at once; a file of the original simplepyq has its tasks imported
/// in it too. `now_ms` is the time of an import and of the migration's record.
pub(crate) fn migrate(conn: &mut Connection, now_ms: i64) -> R<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Read again under the write lock: another process may have migrated meanwhile.
    let found = layout(&tx)?;
    let import = found == Layout::None && original::is_original(&tx)?;
    if import {
        original::check(&tx)?;
    }
    let applied = match found {
        Layout::None => {
            tx.execute_batch(CREATE)?;
            OWN_NAMES
        }
        Layout::Unprefixed(v) | Layout::Own(v) => v,
    };
    for sql in &MIGRATIONS[usize::try_from(applied).unwrap_or(0)..] {
        tx.execute_batch(sql)?;
    }
    if import {
        original::copy_tasks(&tx, now_ms)?;
    }
    if let Layout::Unprefixed(_) = found {
        // The header is the application's from now on.
        tx.pragma_update(None, "application_id", 0)?;
        tx.pragma_update(None, "user_version", 0)?;
    }
    if found.version() < latest() {
        tx.execute(
            "INSERT INTO simplepyq_schema (version, applied_at) VALUES (?1, ?2)",
            [latest(), now_ms],
        )?;
    }
    tx.commit()?;
    Ok(())
}
