//! Putting work in and taking it out: what producers and the dispatcher call.

use std::fmt::Debug;
use std::sync::Arc;

use crate::{Clock, NewTask, Result, Task, TaskId, Timestamp};

use super::{Wake, Watch};

/// The most tasks a queue of a store shared by processes claims beyond one per idle worker
/// (its reserve, for quick handlers): see [`ClaimStore::max_reserve`].
pub const SHARED_MAX_RESERVE: usize = 256;

/// Putting work in and taking it out: enqueue, claim, when to look again (the next due
/// time, and wake-ups from other processes), and the clock tasks are timed by. See
/// [`super::Store`] for what every method of a store promises.
pub trait ClaimStore: Send + Sync + Debug + 'static {
    /// Adds tasks, all or none, and returns their ids in order.
    ///
    /// # Contract
    /// Ids are unique and never reused, even after tasks are removed. A task whose run-at is
    /// later than `now` starts `Delayed`, otherwise `Pending`. An invalid channel name fails
    /// the whole call with [`crate::Error::InvalidChannel`] and adds nothing. A task with a
    /// unique key that a pending, delayed or running task of its channel already has (or an
    /// earlier task of the same call) is not added: its place holds that task's id.
    fn enqueue(&self, tasks: &[NewTask], now: Timestamp) -> Result<Vec<TaskId>>;

    /// Claims up to `limit` due queued tasks of `channel` for a worker, leased until
    /// `lease_until`.
    ///
    /// # Contract
    /// Delayed tasks due by `now` are promoted to pending first, at most
    /// [`crate::batch::PROMOTE_PER_CLAIM`] of them, earliest run-at (then id) first: the rest
    /// are promoted by the next claims, so that a claim after a long outage does not rewrite
    /// a million rows in one transaction. Tasks come by priority,
    /// highest first, then in run-at order, then id order. Each returned task is `Running` with one
    /// more attempt; no task is returned to two callers while its lease is live. Tasks whose
    /// run-at is later than `now` are not returned. `limit == 0` returns nothing and changes
    /// nothing.
    fn claim(
        &self,
        channel: &str,
        limit: usize,
        now: Timestamp,
        lease_until: Timestamp,
    ) -> Result<Vec<Task>>;

    /// The earliest time something is to be done in `channel`: the run-at of a pending task
    /// (pending tasks are due), else the first run-at of its delayed tasks or the first
    /// lease expiry of its running ones, whichever comes first; `None` when the channel has
    /// no pending, delayed or running task.
    fn next_wakeup(&self, channel: &str) -> Result<Option<Timestamp>>;

    /// The clock to time this store's tasks by, when the store has one of its own; `None`
    /// (the default) for the caller's (the system clock).
    ///
    /// A store shared by machines whose clocks differ gives the clock they agree on (the
    /// database server's), so that a lease means the same time on each of them.
    fn clock(&self) -> Option<Arc<dyn Clock>> {
        None
    }

    /// The most tasks a queue claims beyond one per idle worker: a reserve for quick
    /// handlers, so that a worker done with a task finds its next one in its process instead
    /// of waiting for a claim. Reserved tasks wait in the claiming process with their leases
    /// held, where no other process can run them, and each claim of a reserve is one larger
    /// transaction; the queue also keeps a reserve to about 5 ms of handler time.
    ///
    /// The default, [`SHARED_MAX_RESERVE`], is for a store that processes share. With 1,024,
    /// PostgreSQL drained 10-25% slower: its outcomes were recorded in more, smaller
    /// transactions, each a commit (BENCHMARKS.md). A store that only its own process sees
    /// (the memory store) can allow more: no other process waits for its tasks.
    fn max_reserve(&self) -> usize {
        SHARED_MAX_RESERVE
    }

    /// Calls `wake` whenever another process may have added work: with the channel's name,
    /// or `None` for any channel (after a gap in which news may have been missed). Returns
    /// `None` (the default) for a store with no such news: queues then poll. Dropping the
    /// returned [`Watch`] ends the calls.
    ///
    /// A wake-up is a hint, never a promise: a queue looks at the store when woken and polls
    /// anyway, so that a missed or late wake-up only delays work.
    fn watch(&self, wake: Wake) -> Option<Watch> {
        let _ = wake;
        None
    }
}

forward!(ClaimStore {
    fn enqueue(&self, tasks: &[NewTask], now: Timestamp) -> Result<Vec<TaskId>>;
    fn claim(&self, channel: &str, limit: usize, now: Timestamp, lease_until: Timestamp) -> Result<Vec<Task>>;
    fn next_wakeup(&self, channel: &str) -> Result<Option<Timestamp>>;
    fn clock(&self) -> Option<Arc<dyn Clock>>;
    fn max_reserve(&self) -> usize;
    fn watch(&self, wake: Wake) -> Option<Watch>;
});
