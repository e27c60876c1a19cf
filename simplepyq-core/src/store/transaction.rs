//! Enqueueing and completing in the caller's own transaction (the outbox pattern): what a
//! store offers when the application's rows live in its database.

use crate::{Claim, NewTask, Result, Status, TaskId, Timestamp};

use super::ClaimStore;

/// What [`TransactionStore::enqueue_in_then`] calls once the tasks are committed.
pub type OnCommit = Box<dyn FnOnce() + Send>;

/// Writes of the queue inside the caller's transaction `Tx` on the store's database, so
/// that they commit with the application's own rows, or roll back with them: tasks
/// enqueued by a producer (a row and the task about it), a task completed by its handler
/// (the handler's rows and the task's `done`).
///
/// `Tx` is how the caller hands its transaction: `&rusqlite::Transaction` for SQLite,
/// `&mut C` for a `postgres::GenericClient` `C` (a `Transaction` or a `Client`) for
/// PostgreSQL. A store never retries an error inside the caller's transaction: it returns
/// it, and the caller decides.
pub trait TransactionStore<Tx>: ClaimStore {
    /// Adds `tasks` in `tx` by the rule of [`ClaimStore::enqueue`] (unique keys,
    /// priorities, delays) and returns their ids. Workers see them only once `tx` commits;
    /// nothing remains if it rolls back. `committed` is called once they are committed
    /// when the store learns of it (SQLite); a store whose workers are told by the commit
    /// itself (PostgreSQL's `NOTIFY`) drops it.
    fn enqueue_in_then(
        &self,
        tx: Tx,
        tasks: &[NewTask],
        now: Timestamp,
        committed: OnCommit,
    ) -> Result<Vec<TaskId>>;

    /// Completes the running attempt `claim` in `tx`: its task is done once `tx` commits,
    /// and stays running if `tx` rolls back. Fenced as an outcome is: if the attempt no
    /// longer holds its task, [`crate::Error::LeaseLost`] and nothing is written (the caller
    /// must not commit then). Returns the task's new status.
    fn complete_in(&self, tx: Tx, claim: Claim, now: Timestamp) -> Result<Status>;
}
