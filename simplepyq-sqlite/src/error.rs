//! The one place where SQLite's errors become simplepyq's.

use rusqlite::ErrorCode;
use simplepyq_core::Error;

pub(crate) const BACKEND: &str = "sqlite";

/// An error inside the store: SQLite's, or already simplepyq's.
#[derive(Debug)]
pub(crate) enum E {
    Sql(rusqlite::Error),
    Core(Error),
}

pub(crate) type R<T> = Result<T, E>;

impl From<rusqlite::Error> for E {
    fn from(e: rusqlite::Error) -> Self {
        E::Sql(e)
    }
}

impl From<Error> for E {
    fn from(e: Error) -> Self {
        E::Core(e)
    }
}

impl E {
    /// Whether another connection holds the lock, so that trying again may succeed.
    pub(crate) fn is_busy(&self) -> bool {
        matches!(self, E::Sql(e) if matches!(
            e.sqlite_error_code(),
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
        ))
    }
}

impl E {
    /// The simplepyq error for this one, for each of several callers that share it (the
    /// callers of a failed group commit). A SQLite failure keeps its code, which decides
    /// the mapping; anything else becomes its message.
    pub(crate) fn to_error(&self) -> Error {
        match self {
            E::Sql(rusqlite::Error::SqliteFailure(code, message)) => {
                let message = message.clone().or_else(|| Some(self.to_string()));
                Error::from(E::Sql(rusqlite::Error::SqliteFailure(*code, message)))
            }
            E::Sql(sql) if is_bad_value(sql) => bad_value_error(sql),
            other => Error::Backend {
                backend: BACKEND,
                source: other.to_string().into(),
            },
        }
    }
}

impl std::fmt::Display for E {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            E::Sql(e) => e.fmt(f),
            E::Core(e) => e.fmt(f),
        }
    }
}

impl From<E> for Error {
    fn from(e: E) -> Self {
        let sql = match e {
            E::Core(e) => return e,
            E::Sql(sql) if is_bad_value(&sql) => return bad_value_error(&sql),
            E::Sql(sql) => sql,
        };
        match sql.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
                Error::Busy { backend: BACKEND }
            }
            Some(ErrorCode::NotADatabase) => Error::Foreign {
                backend: BACKEND,
                message: "the file is not a SQLite database (or is encrypted)".into(),
            },
            Some(ErrorCode::DatabaseCorrupt) => Error::Corrupt {
                backend: BACKEND,
                message: sql.to_string(),
            },
            Some(ErrorCode::DiskFull) => Error::Full {
                backend: BACKEND,
                message: sql.to_string(),
            },
            Some(ErrorCode::ReadOnly) => Error::ReadOnly {
                backend: BACKEND,
                message: read_only_reason(&sql).into(),
            },
            _ => Error::Backend {
                backend: BACKEND,
                source: Box::new(sql),
            },
        }
    }
}

/// Whether a stored value could not be read as the type simplepyq wrote: another program
/// changed the row.
fn is_bad_value(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::InvalidColumnType(..)
            | rusqlite::Error::IntegralValueOutOfRange(..)
            | rusqlite::Error::Utf8Error(..)
    )
}

fn bad_value_error(e: &rusqlite::Error) -> Error {
    Error::Corrupt {
        backend: BACKEND,
        message: format!("a stored value is not what simplepyq writes ({e})"),
    }
}

/// What a `SQLITE_READONLY` error means, told by its extended code.
fn read_only_reason(e: &rusqlite::Error) -> &'static str {
    match e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == rusqlite::ffi::SQLITE_READONLY_DIRECTORY =>
        {
            "the file's directory is read-only for this process, and SQLite must create its \
             -wal and -shm files there"
        }
        _ => {
            "the database file is read-only for this process (its permissions, or a read-only mount)"
        }
    }
}

/// A stored value that simplepyq did not write.
pub(crate) fn bad_value(what: &str, value: impl std::fmt::Display) -> E {
    E::Core(Error::Corrupt {
        backend: BACKEND,
        message: format!("column {what} holds {value}, which simplepyq never writes"),
    })
}
