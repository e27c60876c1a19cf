//! redb's errors as simplepyq's, and panics on damaged files as errors.

use simplepyq_core::{Error, Result};

use crate::BACKEND;

/// Maps any redb error into simplepyq's: the one place that knows redb's errors.
pub(crate) fn db_err(e: impl Into<redb::Error>) -> Error {
    match e.into() {
        redb::Error::DatabaseAlreadyOpen | redb::Error::LockProtocolMismatch => Error::InUse {
            backend: BACKEND,
            message: "the file is open in another process (redb allows one process per file)"
                .into(),
        },
        redb::Error::Corrupted(message) => corrupt(message),
        // A table of the queue's names whose stored types are not the queue's: a damaged
        // table definition (or a file another program wrote under the same names).
        e @ (redb::Error::TableTypeMismatch { .. }
        | redb::Error::TypeDefinitionChanged { .. }
        | redb::Error::TableIsMultimap(_)
        | redb::Error::TableIsNotMultimap(_)) => corrupt(format!(
            "a table of the file is not what the queue wrote ({e}): the file is damaged, or \
             another program's"
        )),
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
pub(crate) fn io_err(io: std::io::Error) -> Error {
    use std::io::ErrorKind as K;
    match io.kind() {
        K::InvalidData => Error::Foreign {
            backend: BACKEND,
            message: format!("the file is not a redb database ({io})"),
        },
        // redb read where the file's own pages said data was, and the file ended: damage
        // its checksums did not catch, or a truncated copy.
        K::UnexpectedEof => corrupt(format!(
            "the file ends where its pages say data is ({io}): it is truncated or damaged"
        )),
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

/// Runs `op`, turning a panic inside it into an [`Error::Corrupt`] (the outer error).
///
/// redb trusts the bytes of its file: some damage that its checksums do not catch makes it
/// panic (seen: "Malformed allocator state", a table name that is not UTF-8). A damaged
/// file must give an error, not bring down the worker threads. (In a build with
/// `panic = "abort"` the process still aborts.)
pub(crate) fn guarded<T>(op: impl FnOnce() -> T) -> Result<T> {
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

pub(crate) fn corrupt(message: impl Into<String>) -> Error {
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
