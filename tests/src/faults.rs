//! A store wrapper that fails chosen operations some of the time, as a full disk or a
//! flaky file system would: the call returns an error and changes nothing.

use std::sync::atomic::{AtomicU64, Ordering};

use simplepyq_core::{
    Claim, Counts, Error, ListFilter, NewTask, Outcome, Result, Status, Store, Task, TaskId,
    Timestamp,
};

/// Which operations fail.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// `claim` fails.
    pub claim: bool,
    /// `finish_many` fails.
    pub finish: bool,
    /// `extend_leases` and `recover_expired` fail.
    pub leases: bool,
    /// `enqueue` fails.
    pub enqueue: bool,
}

/// Wraps a store; every `every`-th call of a chosen operation fails before reaching it.
#[derive(Debug)]
pub struct Flaky<S> {
    inner: S,
    faults: Faults,
    every: u64,
    calls: AtomicU64,
    /// How many calls failed.
    pub failed: AtomicU64,
}

impl<S: Store> Flaky<S> {
    /// Fails every `every`-th call (counted over all chosen operations) of `faults`.
    pub fn new(inner: S, faults: Faults, every: u64) -> Self {
        Flaky {
            inner,
            faults,
            every: every.max(1),
            calls: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    fn trip(&self, chosen: bool) -> Result<()> {
        if chosen
            && self
                .calls
                .fetch_add(1, Ordering::SeqCst)
                .is_multiple_of(self.every)
        {
            self.failed.fetch_add(1, Ordering::SeqCst);
            return Err(Error::Full {
                backend: "flaky",
                message: "injected fault".into(),
            });
        }
        Ok(())
    }
}

impl<S: Store> Store for Flaky<S> {
    fn enqueue(&self, tasks: &[NewTask], now: Timestamp) -> Result<Vec<TaskId>> {
        self.trip(self.faults.enqueue)?;
        self.inner.enqueue(tasks, now)
    }
    fn claim(
        &self,
        channel: &str,
        limit: usize,
        now: Timestamp,
        lease_until: Timestamp,
    ) -> Result<Vec<Task>> {
        self.trip(self.faults.claim)?;
        self.inner.claim(channel, limit, now, lease_until)
    }
    fn extend_leases(&self, claims: &[Claim], lease_until: Timestamp) -> Result<usize> {
        self.trip(self.faults.leases)?;
        self.inner.extend_leases(claims, lease_until)
    }
    fn finish_many(
        &self,
        results: &[(Claim, Outcome)],
        now: Timestamp,
    ) -> Result<Vec<Result<Status>>> {
        self.trip(self.faults.finish)?;
        self.inner.finish_many(results, now)
    }
    fn recover_expired(&self, now: Timestamp) -> Result<usize> {
        self.trip(self.faults.leases)?;
        self.inner.recover_expired(now)
    }
    fn clear_failed(&self, channel: Option<&str>) -> Result<usize> {
        self.inner.clear_failed(channel)
    }
    fn requeue_failed(
        &self,
        channel: Option<&str>,
        retries: Option<u32>,
        now: Timestamp,
    ) -> Result<usize> {
        self.inner.requeue_failed(channel, retries, now)
    }
    fn remove_channel(&self, channel: &str) -> Result<usize> {
        self.inner.remove_channel(channel)
    }
    fn purge_done(&self, channel: Option<&str>, before: Timestamp) -> Result<usize> {
        self.inner.purge_done(channel, before)
    }
    fn channels(&self) -> Result<Vec<String>> {
        self.inner.channels()
    }
    fn counts(&self, channel: Option<&str>) -> Result<Counts> {
        self.inner.counts(channel)
    }
    fn next_wakeup(&self, channel: &str) -> Result<Option<Timestamp>> {
        self.inner.next_wakeup(channel)
    }
    fn get(&self, id: TaskId) -> Result<Option<Task>> {
        self.inner.get(id)
    }
    fn list(&self, filter: &ListFilter) -> Result<Vec<Task>> {
        self.inner.list(filter)
    }
    fn cancel(&self, id: TaskId) -> Result<()> {
        self.inner.cancel(id)
    }
}
