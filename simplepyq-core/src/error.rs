//! The one error type of simplepyq.

use std::error::Error as StdError;

use crate::{Status, TaskId};

/// A boxed error from a storage engine, kept as the source of [`Error::Backend`].
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// `Result` with simplepyq's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in simplepyq, described so that a user can act on it.
///
/// Storage errors are never recorded as a task's failure: a task fails only through its
/// handler (an error, a panic, or arguments that do not decode).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The channel name cannot be used.
    #[error("invalid channel name {name:?}: {reason}")]
    InvalidChannel {
        /// The name that was refused (cut to 64 characters).
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },

    /// The channel has no handler here and the store knows nothing of it (no task, no
    /// setting): most likely a misspelt name.
    #[error("no channel {0:?}: it has no handler here and no task or setting in the store")]
    UnknownChannel(String),

    /// `add_channel` was called twice with one name.
    #[error("channel {0:?} already has a handler: remove_channel it first to replace it")]
    DuplicateChannel(String),

    /// A setting is out of its range, e.g. a channel with zero workers.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),

    /// No task has this id.
    #[error("no task with id {0}")]
    NotFound(TaskId),

    /// The task is not in a state that allows the requested change.
    #[error("task {id}: cannot {action} a task that is {status}")]
    InvalidTransition {
        /// The task.
        id: TaskId,
        /// Its current status.
        status: Status,
        /// What was attempted.
        action: &'static str,
    },

    /// The worker's claim on a running task is gone: its lease expired and the task was
    /// recovered (and maybe claimed again), or the task was removed. The worker's result is
    /// dropped; the task's current owner decides its outcome.
    #[error("task {id}: the lease of attempt {attempt} is no longer held")]
    LeaseLost {
        /// The task.
        id: TaskId,
        /// The attempt whose lease was lost.
        attempt: u32,
    },

    /// Arguments could not be encoded to, or decoded from, MessagePack.
    #[error("arguments could not be {action} as MessagePack: {message}")]
    Codec {
        /// "encoded" or "decoded".
        action: &'static str,
        /// The codec's message.
        message: String,
    },

    /// The store stayed locked by another connection or process for too long.
    #[error("the {backend} store stayed busy (locked by another connection) too long; try again")]
    Busy {
        /// Which backend.
        backend: &'static str,
    },

    /// The store's file is held by another process and this backend allows one process per
    /// file. Stop the other process, or use the SQLite backend to share a file.
    #[error("{backend} store: {message}")]
    InUse {
        /// Which backend.
        backend: &'static str,
        /// Who holds it.
        message: String,
    },

    /// The store's file is damaged. Restore it from a backup, or recover what the engine's
    /// own tools can read into a new file.
    #[error("{backend} store is damaged: {message}")]
    Corrupt {
        /// Which backend.
        backend: &'static str,
        /// What is wrong.
        message: String,
    },

    /// The file is not a simplepyq queue (another application's database, or no database
    /// at all). Nothing was changed; point the queue at a new or a simplepyq file.
    #[error("{backend} store: {message}; nothing was changed")]
    Foreign {
        /// Which backend.
        backend: &'static str,
        /// What the file is.
        message: String,
    },

    /// The file was written by a newer simplepyq whose schema this version cannot read.
    /// Nothing was changed; upgrade simplepyq to open it.
    #[error(
        "{backend} store has schema version {found}, newer than the {supported} this simplepyq \
         knows: upgrade simplepyq to open it; nothing was changed"
    )]
    SchemaTooNew {
        /// Which backend.
        backend: &'static str,
        /// The file's schema version.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },

    /// The store's file, or the directory it lives in, cannot be written by this process:
    /// file permissions, or a read-only mount. Nothing was changed; give this user write
    /// access to both (SQLite also creates `-wal` and `-shm` files beside the database), or
    /// copy the file somewhere writable.
    #[error("{backend} store cannot be written: {message}; nothing was changed")]
    ReadOnly {
        /// Which backend.
        backend: &'static str,
        /// What cannot be written.
        message: String,
    },

    /// The disk, or the size limit set in the store's options, is full. The call changed
    /// nothing and what was committed before stays; claims and results of running tasks
    /// may still go through. Free space (or raise the limit) and try again.
    #[error(
        "{backend} store is full: {message}; free space or raise the size limit, then try again"
    )]
    Full {
        /// Which backend.
        backend: &'static str,
        /// The engine's message.
        message: String,
    },

    /// The store's server cannot be reached: it is restarting or down, or the network to it
    /// is cut. The call may or may not have taken effect if the connection broke while it
    /// was under way. Queues wait and try again; a task never fails for it.
    #[error("{backend} store is unreachable: {message}; it is tried again")]
    Unavailable {
        /// Which backend.
        backend: &'static str,
        /// What failed.
        message: String,
    },

    /// The queue was stopped (by another thread, or by dropping it) while this call waited
    /// for its work to be done.
    #[error("the queue was stopped before its work was complete")]
    Stopped,

    /// A call that waits was made on a thread that drives a current-thread async runtime:
    /// waiting there would stall every future of that runtime, the queue's async handlers
    /// among them, for ever. Its async variant (`…_async().await`) is the one to call there.
    #[error(
        "{call} would block the current-thread async runtime it was called on: use {call}_async().await"
    )]
    WouldBlock {
        /// The call that was refused.
        call: &'static str,
    },

    /// A call that waits for the queue's handlers to end was made from one of those
    /// handlers: it would wait for itself.
    #[error(
        "{call} cannot be called from a handler of the same queue: it would wait for that handler"
    )]
    InHandler {
        /// The call that was refused.
        call: &'static str,
    },

    /// A worker thread could not be started.
    #[error("could not start a worker thread: {0}")]
    Spawn(#[source] std::io::Error),

    /// Any other storage failure, with the engine's error as source.
    #[error("{backend} store error: {source}")]
    Backend {
        /// Which backend.
        backend: &'static str,
        /// The engine's error.
        #[source]
        source: BoxError,
    },
}

impl Error {
    /// Whether trying the same call again later is expected to succeed: the store was
    /// locked by someone else, or its server was out of reach. Other storage errors may
    /// pass too (a full disk), but are not retried blindly.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Busy { .. } | Error::Unavailable { .. })
    }

    /// A copy of this error, for one failure shared by several callers; `None` for
    /// [`Error::Spawn`] and [`Error::Backend`], whose sources cannot be copied.
    pub fn try_clone(&self) -> Option<Error> {
        Some(match self {
            Error::InvalidChannel { name, reason } => Error::InvalidChannel {
                name: name.clone(),
                reason,
            },
            Error::DuplicateChannel(name) => Error::DuplicateChannel(name.clone()),
            Error::UnknownChannel(name) => Error::UnknownChannel(name.clone()),
            Error::InvalidConfig(message) => Error::InvalidConfig(message.clone()),
            Error::NotFound(id) => Error::NotFound(*id),
            Error::InvalidTransition { id, status, action } => Error::InvalidTransition {
                id: *id,
                status: *status,
                action,
            },
            Error::LeaseLost { id, attempt } => Error::LeaseLost {
                id: *id,
                attempt: *attempt,
            },
            Error::Codec { action, message } => Error::Codec {
                action,
                message: message.clone(),
            },
            Error::Busy { backend } => Error::Busy { backend },
            Error::WouldBlock { call } => Error::WouldBlock { call },
            Error::InHandler { call } => Error::InHandler { call },
            Error::InUse { backend, message } => Error::InUse {
                backend,
                message: message.clone(),
            },
            Error::Corrupt { backend, message } => Error::Corrupt {
                backend,
                message: message.clone(),
            },
            Error::Foreign { backend, message } => Error::Foreign {
                backend,
                message: message.clone(),
            },
            Error::SchemaTooNew {
                backend,
                found,
                supported,
            } => Error::SchemaTooNew {
                backend,
                found: *found,
                supported: *supported,
            },
            Error::ReadOnly { backend, message } => Error::ReadOnly {
                backend,
                message: message.clone(),
            },
            Error::Full { backend, message } => Error::Full {
                backend,
                message: message.clone(),
            },
            Error::Unavailable { backend, message } => Error::Unavailable {
                backend,
                message: message.clone(),
            },
            Error::Stopped => Error::Stopped,
            Error::Spawn(_) | Error::Backend { .. } => return None,
        })
    }

    /// [`Error::InvalidConfig`] naming `path` if the directory that should hold the queue
    /// file at `path` does not exist; for a store that could not create its file.
    pub fn missing_directory(path: &std::path::Path) -> Option<Self> {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty())?;
        (!dir.is_dir()).then(|| {
            Error::config(format!(
                "cannot create the queue file {}: its directory does not exist",
                path.display()
            ))
        })
    }

    /// [`Error::InvalidConfig`] naming `path` if it is a directory, or if the directory that
    /// should hold it does not exist: why a store could not open or create its file there,
    /// said alike by every file backend.
    pub fn unusable_path(path: &std::path::Path) -> Option<Self> {
        Self::directory_given(path).or_else(|| Self::missing_directory(path))
    }

    /// [`Error::InvalidConfig`] naming `path` if it is a directory, given where a queue
    /// file was wanted.
    pub fn directory_given(path: &std::path::Path) -> Option<Self> {
        path.is_dir().then(|| {
            Error::config(format!(
                "{} is a directory: give the path of a queue file (created if missing)",
                path.display()
            ))
        })
    }

    /// Builds [`Error::InvalidConfig`].
    pub fn config(message: impl Into<String>) -> Self {
        Error::InvalidConfig(message.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_say_the_same_and_sources_are_not_copied() {
        let copyable = [
            Error::config("zero workers"),
            Error::Stopped,
            Error::LeaseLost {
                id: TaskId::new(3),
                attempt: 2,
            },
            Error::Corrupt {
                backend: "b",
                message: "page 7".into(),
            },
            Error::ReadOnly {
                backend: "b",
                message: "q.db".into(),
            },
            Error::Full {
                backend: "b",
                message: "disk".into(),
            },
            Error::SchemaTooNew {
                backend: "b",
                found: 9,
                supported: 2,
            },
        ];
        for e in &copyable {
            let copy = e.try_clone().expect("copyable");
            assert_eq!(copy.to_string(), e.to_string());
            assert_eq!(std::mem::discriminant(&copy), std::mem::discriminant(e));
        }
        let backend = Error::Backend {
            backend: "b",
            source: "engine".into(),
        };
        assert!(backend.try_clone().is_none());
        assert!(
            Error::Spawn(std::io::Error::other("no threads"))
                .try_clone()
                .is_none()
        );
    }
}
