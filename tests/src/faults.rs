//! A store wrapper that fails chosen operations some of the time, as a full disk or a
//! flaky file system would: the call returns an error and changes nothing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use simplepyq_core::{
    AdminStore, Claim, ClaimStore, Clock, Counts, Error, InspectStore, ListFilter, NewTask,
    Outcome, OutcomeStore, Result, ScheduleStore, Status, Store, SystemClock, Task, TaskId,
    Timestamp,
};

/// Which operations fail.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// `claim` fails.
    pub claim: bool,
    /// `finish_many` fails.
    pub finish: bool,
    /// `extend_leases`, `release` and `recover_expired` fail.
    pub leases: bool,
    /// `enqueue` fails.
    pub enqueue: bool,
}

/// Kinds of calls [`Flaky::slow`] slows down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slow {
    /// `claim`, as a durable write on a slow disk: long enough for other workers to come
    /// for work while it runs.
    Claims,
    /// The store's inspection (`channels`, `counts`, `list`, `next_wakeup`), as counts over
    /// millions of rows.
    Reads,
    /// `recover_expired` (a busy file, a database failing over).
    Recovery,
    /// `finish_many` and `release` (a busy file, a database failing over).
    Writes,
    /// The answer of a `claim` that took tasks, after its commit (a slow network): the
    /// tasks are running in the store before the worker has them.
    ClaimAnswers,
}

/// Wraps a store; every `every`-th call of a chosen operation fails before reaching it.
/// Beside that, an outage switch fails every `finish_many` while it is on, and the first
/// claims may be made to panic, as a custom backend with a bug would.
#[derive(Debug)]
pub struct Flaky<S> {
    inner: S,
    faults: Faults,
    every: u64,
    calls: AtomicU64,
    /// How many calls failed.
    pub failed: AtomicU64,
    outage: AtomicBool,
    dead: AtomicBool,
    panics_left: AtomicU64,
    panicked: AtomicU64,
    late_left: AtomicU64,
    /// Milliseconds each kind of call takes longer, by [`Slow`].
    slow_ms: [AtomicU64; 5],
    late_kept_left: AtomicU64,
    release_outage: AtomicBool,
    /// Calls, and calls made on a thread that drives an async runtime.
    calls_made: AtomicU64,
    on_runtime: AtomicU64,
    /// Run once at the start of the next `flows` call.
    before_flows: parking_lot::Mutex<Option<Hook>>,
    /// Calls of `counts`, which read every task of a channel.
    pub counted: AtomicU64,
}

/// A call a test makes from inside a store call.
struct Hook(Box<dyn FnOnce() + Send>);

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hook")
    }
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
            outage: AtomicBool::new(false),
            dead: AtomicBool::new(false),
            panics_left: AtomicU64::new(0),
            panicked: AtomicU64::new(0),
            late_left: AtomicU64::new(0),
            slow_ms: Default::default(),
            late_kept_left: AtomicU64::new(0),
            release_outage: AtomicBool::new(false),
            calls_made: AtomicU64::new(0),
            on_runtime: AtomicU64::new(0),
            before_flows: parking_lot::Mutex::new(None),
            counted: AtomicU64::new(0),
        }
    }

    /// Runs `hook` at the start of the next `flows` call (a change another process makes
    /// at that moment).
    pub fn before_flows(&self, hook: impl FnOnce() + Send + 'static) {
        *self.before_flows.lock() = Some(Hook(Box::new(hook)));
    }

    /// A wrapper that injects nothing until told to.
    pub fn healthy(inner: S) -> Self {
        Flaky::new(inner, Faults::default(), 1)
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// While on, every `finish_many` fails.
    pub fn outage(&self, on: bool) {
        self.outage.store(on, Ordering::SeqCst);
    }

    /// From now on every call that would change the store fails, as if the process using
    /// it had been killed: its workers can no longer claim, renew, record or give back.
    pub fn crash(&self) {
        self.dead.store(true, Ordering::SeqCst);
    }

    /// How many calls reached the wrapper, and how many of them on a thread that drives an
    /// async runtime.
    pub fn calls_on_runtime(&self) -> (u64, u64) {
        (
            self.calls_made.load(Ordering::SeqCst),
            self.on_runtime.load(Ordering::SeqCst),
        )
    }

    fn alive(&self) -> Result<()> {
        self.calls_made.fetch_add(1, Ordering::SeqCst);
        if tokio::runtime::Handle::try_current().is_ok() {
            self.on_runtime.fetch_add(1, Ordering::SeqCst);
        }
        if self.dead.load(Ordering::SeqCst) {
            return Err(Error::Backend {
                backend: "flaky",
                source: "the process crashed".into(),
            });
        }
        Ok(())
    }

    /// The next `n` claims panic.
    pub fn panic_claims(&self, n: u64) {
        self.panics_left.store(n, Ordering::SeqCst);
    }

    /// The next `n` claims that take tasks answer late, as over a slow or cut network:
    /// meanwhile the leases they asked for run out and another worker takes the tasks over
    /// (they are recovered and claimed again with a 60 s lease); the answer comes once the
    /// system clock has passed the lease.
    pub fn late_claims(&self, n: u64) {
        self.late_left.store(n, Ordering::SeqCst);
    }

    /// From now on every call of kind `what` takes `pause` longer (and then takes effect).
    pub fn slow(&self, what: Slow, pause: std::time::Duration) {
        let ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX);
        self.slow_ms[what as usize].store(ms, Ordering::SeqCst);
    }

    /// Takes as much longer as calls of kind `what` are made to.
    fn wait(&self, what: Slow) {
        let ms = self.slow_ms[what as usize].load(Ordering::SeqCst);
        if ms > 0 {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
    }

    /// The next `n` claims that take tasks answer once the lease they asked for ran out, as
    /// over a slow network, with no other worker taking the tasks meanwhile.
    pub fn late_claims_kept(&self, n: u64) {
        self.late_kept_left.store(n, Ordering::SeqCst);
    }

    /// While on, every `release` and `recover_expired` fails (renewals still pass).
    pub fn release_outage(&self, on: bool) {
        self.release_outage.store(on, Ordering::SeqCst);
    }

    /// How many claims panicked.
    pub fn panicked(&self) -> u64 {
        self.panicked.load(Ordering::SeqCst)
    }

    fn trip(&self, chosen: bool) -> Result<()> {
        if chosen
            && self
                .calls
                .fetch_add(1, Ordering::SeqCst)
                .is_multiple_of(self.every)
        {
            return self.fail();
        }
        Ok(())
    }

    fn fail(&self) -> Result<()> {
        self.failed.fetch_add(1, Ordering::SeqCst);
        Err(Error::Full {
            backend: "flaky",
            message: "injected fault".into(),
        })
    }
}

impl<S: Store> ClaimStore for Flaky<S> {
    fn max_reserve(&self) -> usize {
        self.inner.max_reserve()
    }

    fn enqueue(&self, tasks: &[NewTask], now: Timestamp) -> Result<Vec<TaskId>> {
        self.alive()?;
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
        self.alive()?;
        self.trip(self.faults.claim)?;
        let panic = self
            .panics_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if panic.is_ok() {
            self.panicked.fetch_add(1, Ordering::SeqCst);
            panic!("injected panic in claim");
        }
        self.wait(Slow::Claims);
        let tasks = self.inner.claim(channel, limit, now, lease_until)?;
        if !tasks.is_empty() {
            self.wait(Slow::ClaimAnswers);
        }
        let late = !tasks.is_empty()
            && self
                .late_left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        let kept = !tasks.is_empty()
            && self
                .late_kept_left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
        if kept {
            let wait = SystemClock.now().until(lease_until);
            std::thread::sleep(wait + std::time::Duration::from_millis(20));
        }
        if late {
            self.inner.recover_expired(lease_until, u32::MAX)?;
            let other = lease_until.after(std::time::Duration::from_secs(60));
            self.inner.claim(channel, limit, lease_until, other)?;
            let wait = SystemClock.now().until(lease_until);
            std::thread::sleep(wait + std::time::Duration::from_millis(20));
        }
        Ok(tasks)
    }

    fn next_wakeup(&self, channel: &str) -> Result<Option<Timestamp>> {
        self.wait(Slow::Reads);
        self.inner.next_wakeup(channel)
    }
}

impl<S: Store> OutcomeStore for Flaky<S> {
    fn extend_leases(&self, claims: &[Claim], lease_until: Timestamp) -> Result<usize> {
        self.alive()?;
        self.trip(self.faults.leases)?;
        self.inner.extend_leases(claims, lease_until)
    }

    fn finish_many(
        &self,
        results: &[(Claim, Outcome)],
        now: Timestamp,
    ) -> Result<Vec<Result<Status>>> {
        self.alive()?;
        self.trip(self.faults.finish)?;
        if self.outage.load(Ordering::SeqCst) {
            self.fail()?;
        }
        self.wait(Slow::Writes);
        self.inner.finish_many(results, now)
    }

    fn release(&self, claims: &[Claim], now: Timestamp) -> Result<usize> {
        self.alive()?;
        self.trip(self.faults.leases)?;
        if self.release_outage.load(Ordering::SeqCst) {
            self.fail()?;
        }
        self.wait(Slow::Writes);
        self.inner.release(claims, now)
    }

    fn mark_stuck(&self, claim: Claim, since: Timestamp) -> Result<bool> {
        self.alive()?;
        self.trip(self.faults.leases)?;
        self.inner.mark_stuck(claim, since)
    }

    fn recover_expired(&self, now: Timestamp, max_lost_runs: u32) -> Result<usize> {
        self.alive()?;
        if self.release_outage.load(Ordering::SeqCst) {
            self.fail()?;
        }
        self.wait(Slow::Recovery);
        self.trip(self.faults.leases)?;
        self.inner.recover_expired(now, max_lost_runs)
    }
}

impl<S: Store> AdminStore for Flaky<S> {
    fn clear_failed(&self, channel: Option<&str>) -> Result<usize> {
        self.alive()?;
        self.inner.clear_failed(channel)
    }

    fn requeue_failed(
        &self,
        channel: Option<&str>,
        retries: Option<u32>,
        now: Timestamp,
    ) -> Result<usize> {
        self.alive()?;
        self.inner.requeue_failed(channel, retries, now)
    }

    fn remove_channel(&self, channel: &str, now: Timestamp) -> Result<usize> {
        self.alive()?;
        self.inner.remove_channel(channel, now)
    }

    fn purge_batch(
        &self,
        status: Status,
        channel: Option<&str>,
        before: Timestamp,
    ) -> Result<usize> {
        self.alive()?;
        self.inner.purge_batch(status, channel, before)
    }

    fn cancel(&self, id: TaskId, now: Timestamp) -> Result<()> {
        self.alive()?;
        self.inner.cancel(id, now)
    }
}

impl<S: Store> InspectStore for Flaky<S> {
    fn channels(&self) -> Result<Vec<String>> {
        self.wait(Slow::Reads);
        self.inner.channels()
    }

    fn counts(&self, channel: Option<&str>) -> Result<Counts> {
        self.wait(Slow::Reads);
        self.counted.fetch_add(1, Ordering::Relaxed);
        self.inner.counts(channel)
    }

    fn has_tasks(&self, channel: &str, statuses: &[Status]) -> Result<bool> {
        self.wait(Slow::Reads);
        self.inner.has_tasks(channel, statuses)
    }

    fn get(&self, id: TaskId) -> Result<Option<Task>> {
        self.inner.get(id)
    }

    fn parents(&self, id: TaskId) -> Result<Vec<TaskId>> {
        self.inner.parents(id)
    }

    fn result(&self, id: TaskId) -> Result<Option<Vec<u8>>> {
        self.inner.result(id)
    }

    fn list(&self, filter: &ListFilter) -> Result<Vec<Task>> {
        self.wait(Slow::Reads);
        self.inner.list(filter)
    }

    fn totals(&self) -> Result<std::collections::BTreeMap<String, simplepyq_core::Totals>> {
        self.inner.totals()
    }

    fn stuck(&self, channel: Option<&str>) -> Result<Vec<simplepyq_core::Stuck>> {
        self.inner.stuck(channel)
    }
}

impl<S: Store> ScheduleStore for Flaky<S> {
    fn fire_schedule(
        &self,
        name: &str,
        at: Timestamp,
        task: &NewTask,
        now: Timestamp,
    ) -> Result<Option<TaskId>> {
        self.alive()?;
        self.inner.fire_schedule(name, at, task, now)
    }

    fn last_fired(&self, name: &str) -> Result<Option<Timestamp>> {
        self.inner.last_fired(name)
    }
}

impl<S: Store> simplepyq_core::FlowStore for Flaky<S> {
    fn set_paused(&self, channel: &str, paused: bool) -> Result<bool> {
        self.alive()?;
        self.inner.set_paused(channel, paused)
    }

    fn set_max_running(&self, channel: &str, max: Option<u32>) -> Result<bool> {
        self.alive()?;
        self.inner.set_max_running(channel, max)
    }

    fn set_max_running_per_key(&self, channel: &str, max: u32) -> Result<bool> {
        self.alive()?;
        self.inner.set_max_running_per_key(channel, max)
    }

    fn set_rate(&self, channel: &str, rate: Option<simplepyq_core::Rate>) -> Result<bool> {
        self.alive()?;
        self.inner.set_rate(channel, rate)
    }

    fn set_rate_per_key(&self, channel: &str, rate: Option<simplepyq_core::Rate>) -> Result<bool> {
        self.alive()?;
        self.inner.set_rate_per_key(channel, rate)
    }

    fn flows(&self) -> Result<std::collections::BTreeMap<String, simplepyq_core::Flow>> {
        let hook = self.before_flows.lock().take();
        if let Some(Hook(hook)) = hook {
            hook();
        }
        self.inner.flows()
    }
}
