//! The [`Store`] trait every storage backend implements.

use std::collections::BTreeMap;
use std::fmt::Debug;

use std::sync::Arc;
use std::time::Duration;

use crate::{
    Claim, Clock, Counts, Finished, ListFilter, NewTask, Outcome, Result, Status, Task, TaskId,
    Timestamp, Totals,
};

/// Durable (or in-memory) storage of tasks.
///
/// Every method is one atomic operation: it happens whole or not at all, also when several
/// threads, queues or (for backends that allow it) processes use one store. State changes
/// go through [`crate::transition::apply`]. Stores never read a clock: callers pass `now`.
///
/// The `# Contract` of each method is checked for every backend by the conformance suite
/// in the `simplepyq-tests` package.
pub trait Store: Send + Sync + Debug + 'static {
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

    /// Extends the leases of running attempts to `lease_until` and returns how many are
    /// still held.
    ///
    /// # Contract
    /// Claims that are no longer held (finished, recovered, claimed again, removed) are
    /// skipped, not an error. A lease never shrinks.
    fn extend_leases(&self, claims: &[Claim], lease_until: Timestamp) -> Result<usize>;

    /// Records how attempts ended, all in one transaction, and returns each task's new
    /// status in order.
    ///
    /// # Contract
    /// An attempt whose `claim` is not the task's current running attempt (its lease
    /// expired and it was recovered, or the task was removed) gets
    /// [`crate::Error::LeaseLost`] in its place and changes nothing; the others are
    /// recorded. The outer error is a storage failure, and then nothing is recorded.
    fn finish_many(
        &self,
        results: &[(Claim, Outcome)],
        now: Timestamp,
    ) -> Result<Vec<Result<Status>>>;

    /// Gives back claimed tasks whose handlers never started; returns how many were still
    /// held.
    ///
    /// # Contract
    /// Each held claim's task is `Pending` again with its lease cleared and the attempt of
    /// the claim not counted (see [`crate::transition::Event::Release`]). Claims that are no
    /// longer held are skipped, not an error.
    fn release(&self, claims: &[Claim], now: Timestamp) -> Result<usize>;

    /// Recovers running tasks whose lease expired by `now` as lost runs (see
    /// [`crate::transition::Event::Expire`]); returns how many.
    ///
    /// # Contract
    /// Such a task becomes due at once with [`crate::transition::WORKER_LOST`] as its last
    /// error and its retries unchanged; the lost run past `max_lost_runs` makes it `Failed`.
    fn recover_expired(&self, now: Timestamp, max_lost_runs: u32) -> Result<usize>;

    /// Deletes failed tasks of `channel`, or of every channel; returns how many.
    fn clear_failed(&self, channel: Option<&str>) -> Result<usize>;

    /// Queues failed tasks of `channel` (or every channel) again, with the retry count they
    /// were enqueued with (`retries == None`) or `retries`; returns how many.
    ///
    /// # Contract
    /// Tasks go in id order. A failed task whose unique key an unfinished task of its
    /// channel holds (enqueued after it failed, or requeued just before it) stays failed:
    /// at most one unfinished task has a key.
    fn requeue_failed(
        &self,
        channel: Option<&str>,
        retries: Option<u32>,
        now: Timestamp,
    ) -> Result<usize>;

    /// Deletes every task of `channel`, whatever its status; returns how many.
    fn remove_channel(&self, channel: &str) -> Result<usize>;

    /// Deletes done tasks of `channel` (or every channel) that finished before `before`;
    /// returns how many.
    fn purge_done(&self, channel: Option<&str>, before: Timestamp) -> Result<usize>;

    /// The channels that have tasks, in name order.
    fn channels(&self) -> Result<Vec<String>>;

    /// Counts tasks per status, of `channel` or of every channel.
    fn counts(&self, channel: Option<&str>) -> Result<Counts>;

    /// The earliest time something is to be done in `channel`: the run-at of a pending task
    /// (pending tasks are due), else the first run-at of its delayed tasks or the first
    /// lease expiry of its running ones, whichever comes first; `None` when the channel has
    /// no pending, delayed or running task.
    fn next_wakeup(&self, channel: &str) -> Result<Option<Timestamp>>;

    /// The task with this id, if any.
    fn get(&self, id: TaskId) -> Result<Option<Task>>;

    /// A page of tasks in id order.
    fn list(&self, filter: &ListFilter) -> Result<Vec<Task>>;

    /// Deletes a pending or delayed task before it runs.
    ///
    /// # Contract
    /// [`crate::Error::NotFound`] if there is no such task; [`crate::Error::InvalidTransition`]
    /// if it is running, done or failed (and it stays as it is).
    fn cancel(&self, id: TaskId) -> Result<()>;

    /// Fires schedule `name` at fire time `at`: records `at` as its last firing and
    /// enqueues `task` (as [`Store::enqueue`] does), in one transaction, unless a firing at
    /// or after `at` is recorded already. Returns the task's id, or `None` if it was not
    /// fired. See [`crate::schedule`].
    ///
    /// # Contract
    /// A schedule's recorded firing only moves forward: of all calls for one schedule and
    /// one `at`, across threads, queues and processes sharing the store, exactly one
    /// enqueues (if none fired a later `at` first); a call with an `at` at or before the
    /// recorded one changes nothing. Recorded firings outlive the tasks they enqueued, and
    /// [`Store::remove_channel`] leaves them.
    fn fire_schedule(
        &self,
        name: &str,
        at: Timestamp,
        task: &NewTask,
        now: Timestamp,
    ) -> Result<Option<TaskId>>;

    /// The last recorded firing of schedule `name`, if any.
    fn last_fired(&self, name: &str) -> Result<Option<Timestamp>>;

    /// How many tasks of `channel` (or of every channel) ended done or failed since
    /// `since`, per bucket of `width` (see [`Finished::bucket_of`]), in time order; buckets
    /// with none are left out. A task counts once, at its last change: a failed task
    /// requeued and then done counts as done; deleted tasks count no more.
    ///
    /// The default reads every done and failed task; backends with an index on the time
    /// of their last change count in a query.
    fn finished(
        &self,
        channel: Option<&str>,
        since: Timestamp,
        width: Duration,
    ) -> Result<Vec<Finished>> {
        const PAGE: usize = 1_000;
        let mut rows = Vec::new();
        for status in [Status::Done, Status::Failed] {
            let mut filter = ListFilter::new(PAGE).status(status);
            filter.channel = channel.map(str::to_owned);
            loop {
                let page = self.list(&filter)?;
                rows.extend(
                    page.iter()
                        .filter(|t| t.state.updated_at >= since)
                        .map(|t| (t.state.updated_at, status, 1)),
                );
                match page.last() {
                    Some(last) if page.len() == PAGE => filter.after = Some(last.id),
                    _ => break,
                }
            }
        }
        Ok(Finished::tally(rows, width))
    }

    /// The [`Totals`] of every channel that has counted something, in name order.
    ///
    /// # Contract
    /// Each attempt [`Store::finish_many`] records and each lost run
    /// [`Store::recover_expired`] recovers counts once, as [`Totals::of`] says, in the
    /// same transaction as the change; refused outcomes count nothing. Totals only grow:
    /// removing, clearing, purging or requeueing tasks leaves them.
    fn totals(&self) -> Result<BTreeMap<String, Totals>>;

    /// The clock to time this store's tasks by, when the store has one of its own; `None`
    /// (the default) for the caller's (the system clock).
    ///
    /// A store shared by machines whose clocks differ gives the clock they agree on (the
    /// database server's), so that a lease means the same time on each of them.
    fn clock(&self) -> Option<Arc<dyn Clock>> {
        None
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

/// What [`Store::watch`] calls: with a channel's name, or `None` for every channel.
pub type Wake = Arc<dyn Fn(Option<&str>) + Send + Sync>;

/// Ends the wake-ups of [`Store::watch`] when dropped.
pub struct Watch(Option<Box<dyn FnOnce() + Send>>);

impl Watch {
    /// A watch that runs `stop` when dropped.
    pub fn new(stop: impl FnOnce() + Send + 'static) -> Self {
        Watch(Some(Box::new(stop)))
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(stop) = self.0.take() {
            stop();
        }
    }
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").finish_non_exhaustive()
    }
}

/// Helpers over any [`Store`].
pub trait StoreExt: Store {
    /// Enqueues one task and returns its id.
    fn enqueue_one(&self, task: NewTask, now: Timestamp) -> Result<TaskId> {
        let ids = self.enqueue(std::slice::from_ref(&task), now)?;
        ids.into_iter().next().ok_or_else(|| crate::Error::Backend {
            backend: "store",
            source: "enqueue returned no id for one task".into(),
        })
    }

    /// Records how one attempt ended and returns the task's new status; see
    /// [`Store::finish_many`].
    fn finish(&self, claim: Claim, outcome: &Outcome, now: Timestamp) -> Result<Status> {
        let mut results = self.finish_many(&[(claim, outcome.clone())], now)?;
        results.pop().unwrap_or_else(|| {
            Err(crate::Error::Backend {
                backend: "store",
                source: "finish_many returned no result for one attempt".into(),
            })
        })
    }

    /// Records a success.
    fn complete(&self, claim: Claim, now: Timestamp) -> Result<Status> {
        self.finish(claim, &Outcome::Succeeded, now)
    }

    /// When the oldest pending task of `channel` (the first by id) was enqueued.
    fn oldest_pending(&self, channel: &str) -> Result<Option<Timestamp>> {
        let first = ListFilter::new(1).channel(channel).status(Status::Pending);
        Ok(self.list(&first)?.first().map(|t| t.created_at))
    }

    /// What every channel with tasks holds now, in name order.
    fn channel_stats(&self) -> Result<Vec<ChannelStats>> {
        self.channels()?
            .into_iter()
            .map(|name| self.stats_of(name))
            .collect()
    }

    /// What channel `name` holds now.
    fn stats_of(&self, name: String) -> Result<ChannelStats> {
        Ok(ChannelStats {
            counts: self.counts(Some(&name))?,
            oldest_pending: self.oldest_pending(&name)?,
            next_wakeup: self.next_wakeup(&name)?,
            name,
        })
    }
}

/// What a channel holds now: see [`StoreExt::channel_stats`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelStats {
    /// The channel.
    pub name: String,
    /// Its tasks per status.
    pub counts: Counts,
    /// When its oldest pending task (by id) was enqueued, if it has one.
    pub oldest_pending: Option<Timestamp>,
    /// Its [`Store::next_wakeup`].
    pub next_wakeup: Option<Timestamp>,
}

impl ChannelStats {
    /// How long its oldest pending task has waited at `now`; zero with none pending (the
    /// figure of the `simplepyq_oldest_pending_age_seconds` gauge).
    pub fn oldest_pending_age(&self, now: Timestamp) -> Duration {
        self.oldest_pending
            .map_or(Duration::ZERO, |oldest| oldest.until(now))
    }
}

impl<S: Store + ?Sized> StoreExt for S {}

macro_rules! forward_store {
    ($($ty:ty),*) => {$(
        impl<S: Store + ?Sized> Store for $ty {
            fn enqueue(&self, tasks: &[NewTask], now: Timestamp) -> Result<Vec<TaskId>> {
                (**self).enqueue(tasks, now)
            }
            fn claim(&self, channel: &str, limit: usize, now: Timestamp, lease_until: Timestamp) -> Result<Vec<Task>> {
                (**self).claim(channel, limit, now, lease_until)
            }
            fn extend_leases(&self, claims: &[Claim], lease_until: Timestamp) -> Result<usize> {
                (**self).extend_leases(claims, lease_until)
            }
            fn finish_many(&self, results: &[(Claim, Outcome)], now: Timestamp) -> Result<Vec<Result<Status>>> {
                (**self).finish_many(results, now)
            }
            fn release(&self, claims: &[Claim], now: Timestamp) -> Result<usize> {
                (**self).release(claims, now)
            }
            fn recover_expired(&self, now: Timestamp, max_lost_runs: u32) -> Result<usize> {
                (**self).recover_expired(now, max_lost_runs)
            }
            fn clear_failed(&self, channel: Option<&str>) -> Result<usize> {
                (**self).clear_failed(channel)
            }
            fn requeue_failed(&self, channel: Option<&str>, retries: Option<u32>, now: Timestamp) -> Result<usize> {
                (**self).requeue_failed(channel, retries, now)
            }
            fn remove_channel(&self, channel: &str) -> Result<usize> {
                (**self).remove_channel(channel)
            }
            fn purge_done(&self, channel: Option<&str>, before: Timestamp) -> Result<usize> {
                (**self).purge_done(channel, before)
            }
            fn channels(&self) -> Result<Vec<String>> {
                (**self).channels()
            }
            fn counts(&self, channel: Option<&str>) -> Result<Counts> {
                (**self).counts(channel)
            }
            fn next_wakeup(&self, channel: &str) -> Result<Option<Timestamp>> {
                (**self).next_wakeup(channel)
            }
            fn get(&self, id: TaskId) -> Result<Option<Task>> {
                (**self).get(id)
            }
            fn list(&self, filter: &ListFilter) -> Result<Vec<Task>> {
                (**self).list(filter)
            }
            fn cancel(&self, id: TaskId) -> Result<()> {
                (**self).cancel(id)
            }
            fn fire_schedule(&self, name: &str, at: Timestamp, task: &NewTask, now: Timestamp) -> Result<Option<TaskId>> {
                (**self).fire_schedule(name, at, task, now)
            }
            fn last_fired(&self, name: &str) -> Result<Option<Timestamp>> {
                (**self).last_fired(name)
            }
            fn finished(&self, channel: Option<&str>, since: Timestamp, width: Duration) -> Result<Vec<Finished>> {
                (**self).finished(channel, since, width)
            }
            fn totals(&self) -> Result<BTreeMap<String, Totals>> {
                (**self).totals()
            }
            fn clock(&self) -> Option<Arc<dyn Clock>> {
                (**self).clock()
            }
            fn watch(&self, wake: Wake) -> Option<Watch> {
                (**self).watch(wake)
            }
        }
    )*};
}

forward_store!(Box<S>, std::sync::Arc<S>, &'static S);
