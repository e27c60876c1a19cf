//! The one place where PostgreSQL's errors become simplepyq's.

use postgres::error::SqlState;
use simplepyq_core::Error;

pub(crate) const BACKEND: &str = "postgres";

/// An error inside the store: the driver's, the pool's, or already simplepyq's.
#[derive(Debug)]
pub(crate) enum E {
    Pg(postgres::Error),
    Pool(r2d2::Error),
    Core(Error),
}

pub(crate) type R<T> = Result<T, E>;

impl From<postgres::Error> for E {
    fn from(e: postgres::Error) -> Self {
        E::Pg(e)
    }
}

impl From<r2d2::Error> for E {
    fn from(e: r2d2::Error) -> Self {
        E::Pool(e)
    }
}

impl From<Error> for E {
    fn from(e: Error) -> Self {
        E::Core(e)
    }
}

impl E {
    /// Whether the transaction lost a race that PostgreSQL resolves by aborting one side (a
    /// deadlock, a serialization failure): running it again is safe and will succeed.
    pub(crate) fn is_conflict(&self) -> bool {
        matches!(self, E::Pg(e) if e.code().is_some_and(|c| {
            *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
        }))
    }

    /// Whether the server could not be reached or the connection broke: the server is
    /// restarting or down, the network is cut, or the backend was terminated.
    pub(crate) fn is_unreachable(&self) -> bool {
        match self {
            E::Pool(_) => true,
            E::Pg(e) => match e.code() {
                Some(c) => {
                    c.code().starts_with("08")
                        || *c == SqlState::ADMIN_SHUTDOWN
                        || *c == SqlState::CRASH_SHUTDOWN
                        || *c == SqlState::CANNOT_CONNECT_NOW
                }
                None => e.is_closed() || is_link_failure(e),
            },
            E::Core(_) => false,
        }
    }

    /// Whether the connection broke while idle in the pool or during the request (a
    /// restarted or crashed server, a terminated backend, a cut network). Then the request
    /// most likely had no effect, but a request under way may have been run (and committed)
    /// before its answer was lost: only a call that may run twice is sent again for it.
    pub(crate) fn is_unsent(&self) -> bool {
        matches!(self, E::Pg(e) if e.is_closed() || e.code().is_some_and(|c| {
            *c == SqlState::ADMIN_SHUTDOWN || *c == SqlState::CRASH_SHUTDOWN
        }))
    }

    /// Whether the server ended the connection before it read the request: a backend
    /// terminated (`pg_terminate_backend`, a fast shutdown) while the connection was idle
    /// reports it to the next request, which it never read. (A crash's 57P02 can reach a
    /// backend after its commit: not this.)
    pub(crate) fn is_unread(&self) -> bool {
        matches!(self, E::Pg(e) if e.code() == Some(&SqlState::ADMIN_SHUTDOWN))
    }
}

impl std::fmt::Display for E {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            E::Pg(e) => match e.as_db_error() {
                Some(db) => write!(f, "{} ({})", db.message(), db.code().code()),
                None => write!(f, "{e}"),
            },
            E::Pool(e) => write!(f, "no connection to PostgreSQL: {e}"),
            E::Core(e) => write!(f, "{e}"),
        }
    }
}

impl From<E> for Error {
    fn from(e: E) -> Self {
        let code = match &e {
            E::Core(_) => None,
            E::Pg(pg) => pg.code().cloned(),
            E::Pool(_) => None,
        };
        if e.is_unreachable() {
            return Error::Unavailable {
                backend: BACKEND,
                message: e.to_string(),
            };
        }
        match (e, code) {
            (E::Core(core), _) => core,
            (e, Some(c)) if c == SqlState::DISK_FULL || c == SqlState::PROGRAM_LIMIT_EXCEEDED => {
                Error::Full {
                    backend: BACKEND,
                    message: e.to_string(),
                }
            }
            (e, Some(c))
                if c == SqlState::READ_ONLY_SQL_TRANSACTION
                    || c == SqlState::INSUFFICIENT_PRIVILEGE =>
            {
                Error::ReadOnly {
                    backend: BACKEND,
                    message: e.to_string(),
                }
            }
            (_, Some(c))
                if c == SqlState::LOCK_NOT_AVAILABLE
                    || c == SqlState::QUERY_CANCELED
                    || c == SqlState::T_R_DEADLOCK_DETECTED
                    || c == SqlState::T_R_SERIALIZATION_FAILURE =>
            {
                Error::Busy { backend: BACKEND }
            }
            (e, _) => Error::Backend {
                backend: BACKEND,
                source: e.to_string().into(),
            },
        }
    }
}

/// Whether the driver lost the server: the link failed, or no connection could be made
/// (the driver says so only in its message).
fn is_link_failure(e: &postgres::Error) -> bool {
    let text = e.to_string();
    [
        "error communicating with the server",
        "error connecting to server",
        "timeout waiting for server",
    ]
    .iter()
    .any(|prefix| text.starts_with(prefix))
}

/// The error for a stored value simplepyq never writes.
pub(crate) fn bad_value(what: &str, value: impl std::fmt::Display) -> E {
    E::Core(Error::Corrupt {
        backend: BACKEND,
        message: format!("the column {what} holds {value}, which simplepyq never writes"),
    })
}
