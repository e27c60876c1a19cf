//! Administration: the original's calls on failed tasks and channels, and cancel.

use std::fmt::Debug;

use crate::{Result, Status, TaskId, Timestamp, batch};

/// Administration: deleting and requeueing failed tasks, removing a channel, purging done
/// tasks, cancelling a task before it runs. What a program, the command line and the
/// dashboard call; see [`super::Store`] for what every method of a store promises.
pub trait AdminStore: Send + Sync + Debug + 'static {
    /// Deletes failed tasks of `channel`, or of every channel; returns how many.
    fn clear_failed(&self, channel: Option<&str>) -> Result<usize>;

    /// Queues failed tasks of `channel` (or every channel) again, with the retry count they
    /// were enqueued with (`retries == None`) or `retries`; returns how many.
    ///
    /// # Contract
    /// Tasks go in id order. A failed task whose unique key an unfinished task of its
    /// channel holds (enqueued after it failed, or requeued just before it) stays failed:
    /// at most one unfinished task has a key. A task that waits for a parent that is still
    /// failed or was deleted stays failed; one whose parents are not all done waits again
    /// ([`crate::batch::requeue`]).
    fn requeue_failed(
        &self,
        channel: Option<&str>,
        retries: Option<u32>,
        now: Timestamp,
    ) -> Result<usize>;

    /// Deletes every task of `channel`, whatever its status; returns how many.
    ///
    /// # Contract
    /// A waiting task of another channel whose parent is deleted before it was done fails
    /// at `now`, naming it ([`crate::dependency`]), and so do its own waiting children.
    fn remove_channel(&self, channel: &str, now: Timestamp) -> Result<usize>;

    /// Deletes done tasks of `channel` (or every channel) that finished before `before`;
    /// returns how many. A transaction per [`AdminStore::purge_batch`].
    fn purge_done(&self, channel: Option<&str>, before: Timestamp) -> Result<usize> {
        batch::in_batches(|| self.purge_batch(Status::Done, channel, before))
    }

    /// Deletes failed tasks of `channel` (or every channel) that failed before `before`;
    /// returns how many. (A queue's retention calls it; `clear_failed` deletes them all.)
    fn purge_failed(&self, channel: Option<&str>, before: Timestamp) -> Result<usize> {
        batch::in_batches(|| self.purge_batch(Status::Failed, channel, before))
    }

    /// Deletes, in one transaction, up to [`batch::BULK_BATCH`] tasks of `channel` (or every
    /// channel) with `status` last changed before `before`; returns how many (fewer than
    /// the batch: none is left).
    ///
    /// # Contract
    /// Only done and failed tasks are purged: another status is
    /// [`crate::Error::InvalidConfig`] ([`batch::purgeable`]), and nothing is deleted.
    fn purge_batch(
        &self,
        status: Status,
        channel: Option<&str>,
        before: Timestamp,
    ) -> Result<usize>;

    /// Deletes a pending, delayed or waiting task before it runs.
    ///
    /// # Contract
    /// [`crate::Error::NotFound`] if there is no such task; [`crate::Error::InvalidTransition`]
    /// if it is running, done or failed (and it stays as it is). Its waiting children fail
    /// at `now`, naming it, and so do theirs.
    fn cancel(&self, id: TaskId, now: Timestamp) -> Result<()>;
}

forward!(AdminStore {
    fn clear_failed(&self, channel: Option<&str>) -> Result<usize>;
    fn requeue_failed(&self, channel: Option<&str>, retries: Option<u32>, now: Timestamp) -> Result<usize>;
    fn remove_channel(&self, channel: &str, now: Timestamp) -> Result<usize>;
    fn purge_done(&self, channel: Option<&str>, before: Timestamp) -> Result<usize>;
    fn purge_failed(&self, channel: Option<&str>, before: Timestamp) -> Result<usize>;
    fn purge_batch(&self, status: Status, channel: Option<&str>, before: Timestamp) -> Result<usize>;
    fn cancel(&self, id: TaskId, now: Timestamp) -> Result<()>;
});
