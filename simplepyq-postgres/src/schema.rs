//! The queue's tables: what a schema holds, and the migrations that bring it to this version.

use postgres::Client;
use simplepyq_core::Error;

use crate::error::{BACKEND, R};

/// The migrations, in order; the table `simplepyq_schema` lists the versions applied.
pub(crate) const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_tasks.sql"),
    include_str!("../migrations/0002_schedules.sql"),
    include_str!("../migrations/0003_totals.sql"),
    include_str!("../migrations/0004_enqueue.sql"),
    include_str!("../migrations/0005_channels.sql"),
    include_str!("../migrations/0006_keys_and_timeouts.sql"),
    include_str!("../migrations/0007_results.sql"),
    include_str!("../migrations/0008_dependencies.sql"),
    include_str!("../migrations/0009_traces.sql"),
    include_str!("../migrations/0010_stuck.sql"),
    include_str!("../migrations/0011_key_rates.sql"),
];

/// The schema version this build writes.
pub(crate) fn latest() -> i64 {
    MIGRATIONS.len() as i64
}

/// Whether `name` can be a schema name as it is: it is written into SQL unquoted.
pub(crate) fn check_name(name: &str) -> Result<(), Error> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if first_ok && rest_ok && name.len() <= 63 && !name.starts_with("pg_") {
        if RESERVED.contains(&name) {
            return Err(Error::InvalidConfig(format!(
                "schema name {name:?} is a word PostgreSQL reserves: choose another"
            )));
        }
        Ok(())
    } else {
        Err(Error::InvalidConfig(format!(
            "schema name {name:?}: use 1 to 63 lower-case letters, digits and underscores, \
             starting with a letter or underscore (and not with pg_)"
        )))
    }
}

/// PostgreSQL's key words that cannot name a schema unquoted (its documentation's
/// Appendix C: "reserved", and "reserved (can be function or type)").
const RESERVED: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "binary",
    "both",
    "case",
    "cast",
    "check",
    "collate",
    "collation",
    "column",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "false",
    "fetch",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "group",
    "having",
    "ilike",
    "in",
    "initially",
    "inner",
    "intersect",
    "into",
    "is",
    "isnull",
    "join",
    "lateral",
    "leading",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "natural",
    "not",
    "notnull",
    "null",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "outer",
    "overlaps",
    "placing",
    "primary",
    "references",
    "returning",
    "right",
    "select",
    "session_user",
    "similar",
    "some",
    "symmetric",
    "system_user",
    "table",
    "tablesample",
    "then",
    "to",
    "trailing",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
];

/// Creates the schema `name` if needed and applies the migrations it lacks, all in one
/// transaction under an advisory lock, so that processes starting at once migrate once.
/// A schema of a newer version, or one whose `tasks` table is not ours, is refused and left
/// as it is. Returns the version the schema had.
pub(crate) fn migrate(client: &mut Client, name: &str) -> R<i64> {
    check_name(name)?;
    let mut tx = client.transaction()?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended('simplepyq schema ' || $1, 0))",
        &[&name],
    )?;
    let found = version(&mut tx, name)?;
    if found < latest() {
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS {name}; SET LOCAL search_path = {name}"
        ))?;
        for (i, sql) in MIGRATIONS
            .iter()
            .enumerate()
            .skip(usize::try_from(found).unwrap_or(0))
        {
            tx.batch_execute(sql)?;
            let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
            tx.execute(
                "INSERT INTO simplepyq_schema (version) VALUES ($1)",
                &[&version],
            )?;
        }
    }
    tx.commit()?;
    Ok(found)
}

/// The version of the queue in schema `name` (0 for none), without changing anything.
pub(crate) fn version(client: &mut impl postgres::GenericClient, name: &str) -> R<i64> {
    let row = client.query_one(
        "SELECT to_regclass(quote_ident($1) || '.tasks') IS NOT NULL, \
                to_regclass(quote_ident($1) || '.simplepyq_schema') IS NOT NULL",
        &[&name],
    )?;
    let (tasks, versions): (bool, bool) = (row.get(0), row.get(1));
    if !versions {
        if tasks {
            return Err(Error::Foreign {
                backend: BACKEND,
                message: format!(
                    "the schema {name} has a table tasks that is not a simplepyq queue's; \
                     choose another schema name in the options"
                ),
            }
            .into());
        }
        return Ok(0);
    }
    let found: Option<i32> = client
        .query_one(
            &format!("SELECT max(version) FROM {name}.simplepyq_schema"),
            &[],
        )?
        .get(0);
    let found = i64::from(found.unwrap_or(0));
    if found > latest() {
        return Err(Error::SchemaTooNew {
            backend: BACKEND,
            found,
            supported: latest(),
        }
        .into());
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_checked() {
        for good in ["simplepyq", "_q", "q2_test"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "Q", "2q", "q-1", "q;drop", "pg_q", &"q".repeat(64)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
