//! [`SimplePyQ`]: channels, enqueueing, and starting and stopping the workers.

use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "tokio")]
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;
use simplepyq_core::transition::DEFAULT_MAX_LOST_RUNS;
use simplepyq_core::{
    Clock, Counts, Error, ListFilter, Result, Schedule, Status, Store, Stuck, SystemClock, Task,
    TaskId, validate_channel,
};

use crate::channel::{self, Channel};
use crate::channel_work::ChannelWork;
use crate::context::CancelReason;
#[cfg(doc)]
use crate::context::TaskContext;
use crate::engine::{Engine, Settings};
#[cfg(feature = "tokio")]
use crate::handler::AsyncHandler;
use crate::handler::{Handler, erase};
use crate::options::{ChannelOptions, EnqueueOptions};
use crate::report::{Hook, QueueStats, StopReport, TaskReport};
use crate::retention::Retention;
use crate::runner::Runner;
use crate::waiting::{self, TaskEnd};
use crate::workers::Workers;

/// Decodes a task's arguments (as [`SimplePyQ::task`] or [`SimplePyQ::tasks`] return it)
/// into `T`.
///
/// ```
/// # let dir = tempfile::tempdir()?;
/// # let q = simplepyq::SimplePyQ::open(dir.path().join("q.db"))?;
/// let id = q.enqueue("greet", &("Ada".to_string(), 36u8))?;
/// let task = q.task(id)?.expect("just enqueued");
/// let (name, age): (String, u8) = simplepyq::decode_args(&task)?;
/// assert_eq!((name.as_str(), age), ("Ada", 36));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn decode_args<T: DeserializeOwned>(task: &Task) -> Result<T> {
    rmp_serde::from_slice(&task.args).map_err(|e| Error::Codec {
        action: "decoded",
        message: e.to_string(),
    })
}

/// Settings of a [`SimplePyQ`], from [`SimplePyQ::builder`].
pub struct Builder<S> {
    store: S,
    clock: Arc<dyn Clock>,
    lease: Duration,
    poll_interval: Duration,
    max_lost_runs: u32,
    on_outcome: Option<Box<Hook>>,
    retention: Retention,
}

impl<S: std::fmt::Debug> std::fmt::Debug for Builder<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("store", &self.store)
            .field("lease", &self.lease)
            .field("poll_interval", &self.poll_interval)
            .field("max_lost_runs", &self.max_lost_runs)
            .finish_non_exhaustive()
    }
}

impl<S: Store> Builder<S> {
    /// How many lost runs a task may have (3 by default) before the next one fails it with
    /// "worker lost". A run is lost when its lease expires before its outcome is recorded:
    /// the process running it died (killed, crashed, out of memory) or hung. A lost run
    /// uses no retry, so a crash costs a task with the default `retries = 0` nothing but a
    /// second run; the bound stops a task that kills its worker every time (a poison pill).
    /// The queue that recovers the task applies its own bound.
    pub fn max_lost_runs(mut self, n: u32) -> Self {
        self.max_lost_runs = n;
        self
    }

    /// The clock tasks are timed by: by default the store's own ([`crate::ClaimStore::clock`]: the
    /// database server's, for a store shared by machines), else [`SystemClock`]. Tests pass
    /// a [`simplepyq_core::ManualClock`].
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// How long a worker's claim on a task lasts unless renewed (30 s by default). Leases of
    /// running tasks are renewed every third of this; a task whose worker died runs again
    /// (or fails, with no retry left) once its lease expired.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// The longest an idle worker waits before looking at the store again (500 ms by
    /// default). Work enqueued in this process, and delayed tasks coming due, wake a worker
    /// at once; this bounds how late work enqueued by another process is noticed. Right
    /// after a worker had work it looks again sooner (an eighth of this), doubling the
    /// pause while it finds none.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Keeps done tasks this long after they finished, then deletes them, in every channel
    /// of this queue that does not say otherwise ([`ChannelOptions::keep_done`]). By default
    /// they are kept until purged ([`SimplePyQ::purge_done`], `simplepyq purge-done`), as
    /// in the original. The queue deletes them while it runs, on a thread of its own, in
    /// short transactions (see [`Retention`]).
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// use std::time::Duration;
    /// use simplepyq::{SimplePyQ, SqliteStore};
    ///
    /// let day = Duration::from_secs(86_400);
    /// let q = SimplePyQ::builder(SqliteStore::open(dir.path().join("q.db"))?)
    ///     .keep_done(day)
    ///     .keep_failed(30 * day)
    ///     .build()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn keep_done(mut self, keep: Duration) -> Self {
        self.retention.done = Some(keep);
        self
    }

    /// Keeps failed tasks this long after they failed for good, then deletes them, in every
    /// channel of this queue that does not say otherwise ([`ChannelOptions::keep_failed`]).
    /// By default they are kept until cleared or requeued.
    pub fn keep_failed(mut self, keep: Duration) -> Self {
        self.retention.failed = Some(keep);
        self
    }

    /// A function told of every attempt's outcome once it is recorded, e.g. for metrics.
    /// It runs on the thread that records outcomes (the queue's recorder thread, which
    /// records in batches): keep it quick, as outcomes wait for it. A panic in it is caught
    /// and ignored.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    /// use simplepyq::{SimplePyQ, Status};
    ///
    /// let failures = Arc::new(AtomicUsize::new(0));
    /// let f = Arc::clone(&failures);
    /// # let dir = tempfile::tempdir()?;
    /// let q = SimplePyQ::builder(simplepyq::SqliteStore::open(dir.path().join("q.db"))?)
    ///     .on_outcome(move |report| {
    ///         if report.status == Status::Failed {
    ///             f.fetch_add(1, Ordering::Relaxed);
    ///         }
    ///     })
    ///     .build()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn on_outcome(mut self, hook: impl Fn(&TaskReport<'_>) + Send + Sync + 'static) -> Self {
        self.on_outcome = Some(Box::new(hook));
        self
    }

    /// Builds the queue. Workers start with [`SimplePyQ::start`].
    pub fn build(self) -> Result<SimplePyQ<S>> {
        if self.lease < Duration::from_millis(10) {
            return Err(Error::config("the lease must be at least 10 ms"));
        }
        if self.poll_interval.is_zero() {
            return Err(Error::config("the poll interval must not be zero"));
        }
        let settings = Settings {
            clock: self.clock,
            lease: self.lease,
            poll_interval: self.poll_interval,
            max_lost_runs: self.max_lost_runs,
            on_outcome: self.on_outcome,
            retention: self.retention,
        };
        Ok(SimplePyQ {
            workers: Arc::new(Workers::new(Engine::new(self.store, settings))),
            #[cfg(feature = "tokio")]
            own_runtime: Mutex::new(None),
        })
    }
}

/// A task queue: channels of handlers with worker threads, over a [`Store`].
///
/// All methods take `&self`; share a queue between threads with an `Arc` (it is `Send` and
/// `Sync`). Its lifecycle is `Stopped → Running → Stopping → Stopped`: [`SimplePyQ::start`]
/// starts the workers; [`SimplePyQ::stop`] and [`SimplePyQ::stop_timeout`] stop them, and
/// dropping the queue tells them to stop without waiting. From the moment a stop begins, no
/// handler starts: tasks claimed ahead and not started are given back (pending again, no
/// attempt used), and running handlers keep their leases until their outcomes are recorded.
pub struct SimplePyQ<S: Store> {
    pub(crate) workers: Arc<Workers<S>>,
    /// The runtime of async channels given none, once one is.
    #[cfg(feature = "tokio")]
    own_runtime: Mutex<Option<Arc<crate::runner::OwnedRuntime>>>,
}

impl<S: Store> std::fmt::Debug for SimplePyQ<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimplePyQ")
            .field("workers", &self.workers)
            .finish()
    }
}

impl<S: Store> SimplePyQ<S> {
    /// A queue over `store` with default settings.
    pub fn new(store: S) -> Self {
        SimplePyQ::builder(store)
            .build()
            .expect("the default settings are valid")
    }

    /// A queue over `store`, with settings to choose.
    pub fn builder(store: S) -> Builder<S> {
        Builder {
            clock: store.clock().unwrap_or_else(|| Arc::new(SystemClock)),
            store,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_millis(500),
            max_lost_runs: DEFAULT_MAX_LOST_RUNS,
            on_outcome: None,
            retention: Retention::default(),
        }
    }

    /// The store under the queue.
    pub fn store(&self) -> &S {
        &self.workers.engine.store
    }

    /// Binds `handler` to channel `name`, run by up to `max_workers` threads at once;
    /// returns the channel's typed handle, which enqueues `A` only.
    ///
    /// The handler takes the task's arguments, decoded from MessagePack into `A`, and may
    /// take its [`TaskContext`] too (see [`Handler`]). Arguments that do not decode fail the
    /// task at once with a message naming the type. A handler that panics fails its attempt
    /// (the panic message is the task's error); its worker goes on. If the queue is
    /// started, the workers start at once. Failed attempts are retried at once;
    /// [`SimplePyQ::add_channel_with`] sets a backoff.
    ///
    /// Errors: [`Error::InvalidConfig`] for zero workers, [`Error::DuplicateChannel`] if the
    /// channel has a handler already, [`Error::InvalidChannel`] for an unusable name.
    ///
    /// A handler that enqueues follow-up work captures a [`Channel`] handle (it holds what
    /// enqueueing needs, not the queue); one that must stop or inspect the queue captures a
    /// `Weak<SimplePyQ<_>>`. An `Arc<SimplePyQ<_>>` captured by its own handler is a cycle
    /// (queue → handler → queue): the queue is then never dropped, and never stops on drop.
    ///
    /// Handlers run on worker threads, so what they capture must be `Send + Sync`:
    ///
    /// ```compile_fail
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let q = simplepyq::SimplePyQ::open(dir.path().join("q.db")).unwrap();
    /// let not_shareable = std::rc::Rc::new(0);
    /// q.add_channel("c", move |_: u32| { let _ = &not_shareable; Ok(()) }, 1);
    /// ```
    pub fn add_channel<A, K, H>(
        &self,
        name: &str,
        handler: H,
        max_workers: usize,
    ) -> Result<Channel<A, S>>
    where
        A: DeserializeOwned + 'static,
        H: Handler<A, K>,
    {
        self.add_channel_with(name, handler, ChannelOptions::new(max_workers))
    }

    /// Binds `handler` to channel `name` with options: workers and retry backoff.
    ///
    /// ```
    /// use std::time::Duration;
    /// use simplepyq::{Backoff, ChannelOptions, SimplePyQ, TaskError};
    /// # let dir = tempfile::tempdir()?;
    /// # let q = SimplePyQ::open(dir.path().join("q.db"))?;
    /// let backoff = Backoff::exponential(Duration::from_secs(1), Duration::from_secs(60));
    /// q.add_channel_with(
    ///     "webhooks",
    ///     |url: String| Err(TaskError::msg(format!("{url} is down"))), // retried 1 s, 2 s, ... later
    ///     ChannelOptions::new(4).backoff(backoff),
    /// )?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn add_channel_with<A, K, H>(
        &self,
        name: &str,
        handler: H,
        options: ChannelOptions,
    ) -> Result<Channel<A, S>>
    where
        A: DeserializeOwned + 'static,
        H: Handler<A, K>,
    {
        self.add(name, Runner::Threads(erase(handler)), &options)
    }

    /// Binds an async `handler` to channel `name`: each task's future is spawned on a tokio
    /// runtime, up to `concurrency` in flight at once, so that many I/O-bound tasks wait
    /// together on few threads. Returns the channel's typed handle.
    ///
    /// The runtime is the one given with [`ChannelOptions::runtime`], else the one this is
    /// called from, else one the queue starts for itself. Claims, leases and outcomes are
    /// the same as for thread channels, and run on the queue's own threads, never on the
    /// runtime's. A future that panics fails its attempt; a future the runtime drops before
    /// it ends (the runtime shut down) gives its task back: pending again, no attempt used.
    ///
    /// ```
    /// use std::time::Duration;
    /// use simplepyq::{SimplePyQ, TaskContext};
    /// # let dir = tempfile::tempdir()?;
    /// # let q = SimplePyQ::open(dir.path().join("q.db"))?;
    /// q.add_channel_async("fetch", |url: String| async move {
    ///     tokio::time::sleep(Duration::from_millis(10)).await; // an HTTP call, say
    ///     println!("fetched {url}");
    ///     Ok(())
    /// }, 100)?;
    /// q.add_channel_async("aware", |n: u32, ctx: TaskContext| async move {
    ///     tokio::select! {
    ///         _ = ctx.cancelled() => println!("task {} asked to stop", ctx.id()),
    ///         _ = tokio::time::sleep(Duration::from_millis(n.into())) => {}
    ///     }
    ///     Ok(())
    /// }, 10)?;
    /// q.enqueue("fetch", "https://example.com")?;
    /// q.run_until_complete()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[cfg(feature = "tokio")]
    pub fn add_channel_async<A, K, H>(
        &self,
        name: &str,
        handler: H,
        concurrency: usize,
    ) -> Result<Channel<A, S>>
    where
        A: DeserializeOwned + Send + 'static,
        H: AsyncHandler<A, K>,
    {
        self.add_channel_async_with(name, handler, ChannelOptions::new(concurrency))
    }

    /// [`SimplePyQ::add_channel_async`] with options: `max_workers` is the concurrency;
    /// also the backoff and the runtime.
    #[cfg(feature = "tokio")]
    pub fn add_channel_async_with<A, K, H>(
        &self,
        name: &str,
        handler: H,
        options: ChannelOptions,
    ) -> Result<Channel<A, S>>
    where
        A: DeserializeOwned + Send + 'static,
        H: AsyncHandler<A, K>,
    {
        let runtime = match &options.runtime {
            Some(handle) => crate::runner::Runtime::Given(handle.clone()),
            None => self.runtime()?,
        };
        let runner = crate::runner::AsyncRunner::new(handler, runtime);
        self.add(name, Runner::Async(runner), &options)
    }

    /// The runtime an async channel runs on when none is given: the caller's, else the
    /// queue's own (started once, shared by its async channels).
    #[cfg(feature = "tokio")]
    fn runtime(&self) -> Result<crate::runner::Runtime> {
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            return Ok(crate::runner::Runtime::Given(handle));
        }
        let mut own = self.own_runtime.lock();
        if let Some(rt) = &*own {
            return Ok(crate::runner::Runtime::Owned(Arc::clone(rt)));
        }
        let rt = Arc::new(crate::runner::OwnedRuntime::start()?);
        *own = Some(Arc::clone(&rt));
        Ok(crate::runner::Runtime::Owned(rt))
    }

    fn add<A>(
        &self,
        name: &str,
        runner: Runner,
        options: &ChannelOptions,
    ) -> Result<Channel<A, S>> {
        validate_channel(name)?;
        if options.max_workers == 0 {
            return Err(Error::config(format!(
                "channel {name:?} needs at least one worker (max_workers was 0)"
            )));
        }
        if options.timeout == Some(Duration::ZERO) {
            return Err(Error::config(format!(
                "channel {name:?}: a timeout must be longer than zero"
            )));
        }
        self.workers.add(ChannelWork {
            name: Arc::from(name),
            workers: options.max_workers,
            runner,
            backoff: options.backoff,
            timeout: options.timeout,
            average_run: std::sync::atomic::AtomicU64::new(0),
            max_reserve: self.workers.engine.store.max_reserve(),
        })?;
        self.workers.engine.kept.add(name, options.retention);
        Ok(self.channel(name))
    }

    /// The typed handle of channel `name`, for a producer: it needs no handler here (another
    /// queue or process may serve the channel). The type is the producer's promise; the
    /// handler that decodes the arguments must agree.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let q = simplepyq::SimplePyQ::open(dir.path().join("q.db"))?;
    /// let resize = q.channel::<(String, u32)>("resize");
    /// resize.enqueue(&("cat.png".to_string(), 128))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn channel<A: ?Sized>(&self, name: &str) -> Channel<A, S> {
        Channel::new(Arc::clone(&self.workers.engine), name)
    }

    /// Enqueues a task for `channel` with `args` and no retries; returns its id.
    ///
    /// The channel needs no handler in this queue: another queue or process on the same
    /// store may serve it.
    pub fn enqueue<T: Serialize + ?Sized>(&self, channel: &str, args: &T) -> Result<TaskId> {
        self.enqueue_with(channel, args, EnqueueOptions::new())
    }

    /// Enqueues a task with options (retries, when, priority, unique key); returns its id,
    /// or the id of the unfinished task that has the same unique key.
    pub fn enqueue_with<T: Serialize + ?Sized>(
        &self,
        channel: &str,
        args: &T,
        options: EnqueueOptions,
    ) -> Result<TaskId> {
        channel::enqueue(&self.workers.engine, channel, args, &options)
    }

    /// Enqueues many tasks for `channel` in one transaction, all or none, with the same
    /// options; returns their ids in order. (A unique key in `options` applies to every
    /// task, so they all get the id of the first.)
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let q = simplepyq::SimplePyQ::open(dir.path().join("q.db"))?;
    /// let urls = ["https://a.example", "https://b.example"];
    /// let ids = q.enqueue_many("scrape", &urls, simplepyq::EnqueueOptions::new().retries(2))?;
    /// assert_eq!(ids.len(), 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn enqueue_many<'a, T, I>(
        &self,
        channel: &str,
        args: I,
        options: EnqueueOptions,
    ) -> Result<Vec<TaskId>>
    where
        T: Serialize + ?Sized + 'a,
        I: IntoIterator<Item = &'a T>,
    {
        channel::enqueue_many(&self.workers.engine, channel, args, &options)
    }

    /// Enqueues a group: tasks of `channel` with `args` (each with `options`), and a final
    /// task of `then` with `then_args` (and `then_options`) that waits for every one of
    /// them ([`EnqueueOptions::after`]), all in one transaction; returns the group's ids and
    /// the final task's. The final task reads what the group gave with
    /// [`TaskContext::parent_results`], and fails if one of them fails for good. (A group
    /// may be empty: the final task is then due at once.)
    pub fn enqueue_group<'a, T, I, F>(
        &self,
        channel: &str,
        args: I,
        options: EnqueueOptions,
        then: &str,
        then_args: &F,
        then_options: EnqueueOptions,
    ) -> Result<(Vec<TaskId>, TaskId)>
    where
        T: Serialize + ?Sized + 'a,
        I: IntoIterator<Item = &'a T>,
        F: Serialize + ?Sized,
    {
        channel::enqueue_group(
            &self.workers.engine,
            (channel, args, &options),
            (then, then_args, &then_options),
        )
    }

    /// Fires `schedule` into `channel` with `args`: a periodic task. Each fire time is
    /// enqueued once, however many queues and processes sharing the store run the same
    /// schedule (by `name`), and the firing is recorded in the store, so that a restart
    /// neither repeats nor loses one. The task's run-at is its fire time; it has no retries
    /// ([`SimplePyQ::add_schedule_with`] sets them).
    ///
    /// The rules ([`simplepyq_core::schedule`]): fire times are on the store's clock, in
    /// UTC (an interval's are its multiples since the Unix epoch); a new schedule first
    /// fires at its first fire time after the queue starts (or after it is added to a
    /// running queue); firings missed while nothing ran (more than a second late) are made
    /// up for by one run, then the schedule goes on.
    /// The queue's scheduler thread fires while the queue runs (from [`SimplePyQ::start`]
    /// to its stop); the channel needs no handler here.
    ///
    /// ```
    /// use std::time::Duration;
    /// use simplepyq::{Schedule, SimplePyQ};
    /// # let dir = tempfile::tempdir()?;
    /// # let q = SimplePyQ::open(dir.path().join("q.db"))?;
    /// q.add_schedule("report", "reports", Schedule::cron("0 6 * * mon")?, "weekly")?;
    /// q.add_schedule("sweep", "sweeps", Schedule::every(Duration::from_secs(300))?, &())?;
    /// q.start()?;
    /// # q.stop();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// Errors: [`Error::InvalidConfig`] for a name the queue has a schedule of already, or
    /// an empty one; [`Error::InvalidChannel`]; [`Error::Codec`] for arguments that do not
    /// encode.
    pub fn add_schedule<T: Serialize + ?Sized>(
        &self,
        name: &str,
        channel: &str,
        schedule: Schedule,
        args: &T,
    ) -> Result<()> {
        self.add_schedule_with(name, channel, schedule, args, EnqueueOptions::new())
    }

    /// [`SimplePyQ::add_schedule`] with the options of each task it enqueues: retries,
    /// priority, and a unique key (with one, a firing while the last firing's task is
    /// unfinished adds nothing: runs never overlap). A delay or a time is an
    /// [`Error::InvalidConfig`]: the schedule says when.
    pub fn add_schedule_with<T: Serialize + ?Sized>(
        &self,
        name: &str,
        channel: &str,
        schedule: Schedule,
        args: &T,
        options: EnqueueOptions,
    ) -> Result<()> {
        validate_channel(channel)?;
        if name.is_empty() || name.len() > 255 {
            return Err(Error::config(format!(
                "a schedule's name must be 1 to 255 bytes long, got {name:?}"
            )));
        }
        if options.when.is_some() {
            return Err(Error::config(format!(
                "schedule {name:?}: its schedule says when its tasks run, not a delay or a time"
            )));
        }
        let engine = &self.workers.engine;
        let now = engine.now();
        let task = options.task(channel, channel::encode(args)?, now);
        engine
            .schedules
            .add(crate::schedules::Entry::new(name, schedule, task, now))
    }

    /// Stops firing schedule `name` in this queue; returns whether it had one. Its record
    /// in the store stays: added again, it goes on from its last firing.
    pub fn remove_schedule(&self, name: &str) -> bool {
        self.workers.engine.schedules.remove(name)
    }

    /// Starts the workers of every channel in background threads and returns at once.
    /// Calling it on a started queue does nothing; during another thread's stop, it waits
    /// for that stop to end, except in a handler of this queue (the stop waits for that
    /// handler): there it returns [`Error::Stopped`] at once.
    ///
    /// Before it returns, it also recovers tasks whose lease expired (left `running` by a
    /// process that died), as the lease keeper does: renewing this queue's own leases first
    /// (without holding up `add_channel`, `stop` and the rest meanwhile). Fails only if a
    /// thread cannot be started; then nothing runs.
    pub fn start(&self) -> Result<()> {
        self.workers.start(self.own_claim())
    }

    /// The claim whose handler (of this queue) runs on the calling thread, if any.
    fn own_claim(&self) -> Option<simplepyq_core::Claim> {
        crate::current::current_claim(&self.workers.engine)
    }

    /// Stops the workers and returns when it is done: no handler starts once the call
    /// began; tasks claimed ahead and not started are given back (pending again, no attempt
    /// used); running handlers finish, their leases renewed, and their outcomes are
    /// recorded. Queued tasks stay queued for the next start. Called from inside a handler,
    /// it does not wait for that handler's own thread; and if another stop is already under
    /// way (another handler's, a Ctrl-C handler's), it returns at once with an empty report
    /// instead of waiting for that stop, which waits for this handler.
    ///
    /// Nothing is lost; the report says what was given back, and which outcomes could not
    /// be recorded (a store that kept failing for seconds): those tasks run again once their
    /// lease expires.
    ///
    /// On a thread that drives a current-thread tokio runtime it does not wait for running
    /// handlers (that would stall their runtime): it stops as `stop_timeout(0)` does. Await
    /// [`SimplePyQ::stop_async`] there.
    pub fn stop(&self) -> StopReport {
        self.workers.stop(self.own_claim())
    }

    /// [`SimplePyQ::stop`] for async code: waits on a thread of its own, so the runtime's
    /// threads go on running futures (the queue's async handlers among them).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// let q = simplepyq::SimplePyQ::open(dir.path().join("q.db"))?;
    /// q.add_channel_async("ping", |_: ()| async { Ok(()) }, 10)?;
    /// q.start()?;
    /// q.enqueue("ping", &())?;
    /// let report = q.stop_async().await;
    /// assert!(report.running.is_empty());
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "tokio")]
    pub async fn stop_async(&self) -> StopReport {
        let (workers, own) = (Arc::clone(&self.workers), self.own_claim());
        off_runtime(move || workers.stop(own)).await
    }

    /// [`SimplePyQ::stop_timeout`] for async code, waiting on a thread of its own.
    #[cfg(feature = "tokio")]
    pub async fn stop_timeout_async(&self, timeout: Duration) -> StopReport {
        let (workers, own) = (Arc::clone(&self.workers), self.own_claim());
        off_runtime(move || workers.stop_timeout(timeout, own)).await
    }

    /// [`SimplePyQ::run_until_complete`] for async code, waiting on a thread of its own.
    /// (The blocking call returns [`Error::WouldBlock`] on a current-thread runtime.)
    #[cfg(feature = "tokio")]
    pub async fn run_until_complete_async(&self) -> Result<()> {
        let (workers, own) = (Arc::clone(&self.workers), self.own_claim());
        off_runtime(move || workers.run_until_complete(own)).await
    }

    /// Stops the workers like [`SimplePyQ::stop`], but waits at most `timeout` for running
    /// handlers. The report's `running` lists exactly the tasks whose handlers still ran at
    /// the deadline; their [`TaskContext`] is cancelled then
    /// ([`CancelReason::Stop`]), so that a handler that looks may end early.
    ///
    /// Those handlers go on in their threads, and their leases are still renewed until they
    /// finish and their outcomes are recorded (by threads that end then): the tasks do not
    /// run again elsewhere meanwhile. A process that exits before then leaves them to lease
    /// recovery, as a crash would.
    pub fn stop_timeout(&self, timeout: Duration) -> StopReport {
        self.workers.stop_timeout(timeout, self.own_claim())
    }

    /// Runs until no task of a channel with a handler here is pending, running, delayed or
    /// waiting for its parents (waiting out delays, parents run elsewhere and, for tasks held
    /// by a dead worker, their lease), then stops.
    ///
    /// Starts the workers if needed. Tasks of channels without a handler here are not
    /// waited for. Returns an error if the store fails for good: a call fails with an
    /// error that is not [retryable](Error::is_retryable), or a worker finds the file
    /// damaged ([`Error::Corrupt`]) or unwritable ([`Error::ReadOnly`]), which waiting would
    /// not cure; and [`Error::Stopped`] if another thread stops the queue meanwhile (a
    /// Ctrl-C handler calling [`SimplePyQ::stop`]). The workers are stopped either way;
    /// unfinished tasks stay in the store.
    ///
    /// On a thread that drives a current-thread tokio runtime, it returns
    /// [`Error::WouldBlock`] at once: await [`SimplePyQ::run_until_complete_async`] there.
    /// In a handler of this queue it returns [`Error::InHandler`] at once: it would wait
    /// for that handler's own task.
    pub fn run_until_complete(&self) -> Result<()> {
        self.workers.run_until_complete(self.own_claim())
    }

    /// Deletes the failed tasks of `channel`, or of every channel with `None`; returns how
    /// many.
    pub fn clear_failed<'a>(&self, channel: impl Into<Option<&'a str>>) -> Result<usize> {
        self.workers.engine.store.clear_failed(channel.into())
    }

    /// Queues the failed tasks of `channel` (or of every channel with `None`) again, with
    /// the retry count they were enqueued with (`None`) or a new one; returns how many.
    ///
    /// ```
    /// # let dir = tempfile::tempdir()?;
    /// # let q = simplepyq::SimplePyQ::open(dir.path().join("tasks.db"))?;
    /// q.requeue_failed("emails", None)?; // each with its original retries
    /// q.requeue_failed(None, 3)?; // every channel, 3 retries each
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn requeue_failed<'a>(
        &self,
        channel: impl Into<Option<&'a str>>,
        retries: impl Into<Option<u32>>,
    ) -> Result<usize> {
        let channel = channel.into();
        let engine = &self.workers.engine;
        let n = engine
            .store
            .requeue_failed(channel, retries.into(), engine.now())?;
        if n > 0 {
            engine.wake_all();
        }
        Ok(n)
    }

    /// Removes channel `name`: its handler and every task of it in the store, whatever their
    /// status; returns how many tasks. Once it returns, no handler of the channel starts
    /// here; handlers that run finish (their outcomes are then dropped, as their tasks are
    /// gone).
    pub fn remove_channel(&self, name: &str) -> Result<usize> {
        self.workers.remove(name);
        self.workers.engine.kept.remove(name);
        let now = self.workers.engine.now();
        self.workers.engine.store.remove_channel(name, now)
    }

    /// Deletes the done tasks of `channel` (or of every channel with `None`) that finished
    /// more than `older_than` ago; returns how many. Done tasks are kept until then, as in
    /// the original, so that they can be inspected.
    pub fn purge_done<'a>(
        &self,
        channel: impl Into<Option<&'a str>>,
        older_than: Duration,
    ) -> Result<usize> {
        let before = self.workers.engine.now().before(older_than);
        self.workers.engine.store.purge_done(channel.into(), before)
    }

    /// Counts tasks per status, of `channel` or of every channel with `None`.
    pub fn counts<'a>(&self, channel: impl Into<Option<&'a str>>) -> Result<Counts> {
        self.workers.engine.store.counts(channel.into())
    }

    /// The result task `id`'s handler gave ([`TaskContext::set_result`]), decoded as `T`:
    /// `None` while the task is not done, if it gave none, or if the task does not exist
    /// (never did, or was deleted). [`Error::Codec`] if the result does not decode as `T`.
    pub fn result<T: DeserializeOwned>(&self, id: TaskId) -> Result<Option<T>> {
        crate::reads::decode_result(id, self.workers.engine.store.result(id)?)
    }

    /// Waits up to `timeout` for task `id` to end, and says how: done (with its result,
    /// decoded as `T`; `()` if you want none), failed (its last error), or gone (cancelled,
    /// removed or deleted); `None` if it has not ended by then. It may run in this queue or
    /// in any process on the store: an outcome this queue records ends the wait at once,
    /// another process's within 4 ms (the wait reads the task again, from 1 ms apart to
    /// 4 ms: a read of one row every 4 ms while it waits). A handler that waits holds its
    /// worker meanwhile.
    ///
    /// ```
    /// use std::time::Duration;
    /// use simplepyq::{SimplePyQ, TaskContext, TaskEnd};
    /// # let dir = tempfile::tempdir()?;
    /// let q = SimplePyQ::open(dir.path().join("q.db"))?;
    /// q.add_channel("double", |n: u32, ctx: &TaskContext| {
    ///     ctx.set_result(&(2 * n))?;
    ///     Ok(())
    /// }, 1)?;
    /// q.start()?;
    /// let id = q.enqueue("double", &21u32)?;
    /// let end = q.wait::<u32>(id, Duration::from_secs(10))?;
    /// assert_eq!(end, Some(TaskEnd::Done(Some(42))));
    /// q.stop();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn wait<T: DeserializeOwned>(
        &self,
        id: TaskId,
        timeout: Duration,
    ) -> Result<Option<TaskEnd<T>>> {
        waiting::wait(&self.workers.engine, id, timeout)
    }

    /// [`SimplePyQ::wait`] from async code: the runtime's thread is not held meanwhile.
    #[cfg(feature = "tokio")]
    pub async fn wait_async<T: DeserializeOwned + Send + 'static>(
        &self,
        id: TaskId,
        timeout: Duration,
    ) -> Result<Option<TaskEnd<T>>> {
        let workers = Arc::clone(&self.workers);
        off_runtime(move || waiting::wait(&workers.engine, id, timeout)).await
    }

    /// The tasks task `id` waits (or waited) for ([`EnqueueOptions::after`]), in id order;
    /// none for a task without parents, or one that does not exist.
    pub fn parents(&self, id: TaskId) -> Result<Vec<TaskId>> {
        self.workers.engine.store.parents(id)
    }

    /// The running tasks whose thread handler ran past its timeout and still runs (stuck:
    /// its worker keeps its lease until it returns), in any process or machine on the store,
    /// of `channel` or of every channel, in id order. Each is marked by the process that
    /// runs it within a third of a lease of its deadline.
    pub fn stuck<'a>(&self, channel: impl Into<Option<&'a str>>) -> Result<Vec<Stuck>> {
        self.workers.engine.store.stuck(channel.into())
    }

    /// The task with this id, if it exists. [`decode_args`] reads its arguments.
    pub fn task(&self, id: TaskId) -> Result<Option<Task>> {
        self.workers.engine.store.get(id)
    }

    /// A page of tasks in id order, by channel and status.
    ///
    /// ```
    /// use simplepyq::{ListFilter, Status};
    /// # let dir = tempfile::tempdir()?;
    /// # let q = simplepyq::SimplePyQ::open(dir.path().join("q.db"))?;
    /// let mut page = q.tasks(&ListFilter::new(100).channel("scrape").status(Status::Failed))?;
    /// while let Some(last) = page.last().map(|t| t.id) {
    ///     for task in &page {
    ///         println!("{}: {:?}", task.id, task.state.last_error);
    ///     }
    ///     page = q.tasks(&ListFilter::new(100).channel("scrape").status(Status::Failed).after(last))?;
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn tasks(&self, filter: &ListFilter) -> Result<Vec<Task>> {
        self.workers.engine.store.list(filter)
    }

    /// Cancels a task: a pending, delayed or waiting one (or one this queue claimed ahead
    /// and has not started) is deleted and will not run ([`Cancelled::Removed`]), and the
    /// tasks that wait for it fail; one whose handler runs in this queue (or starts once
    /// this queue's claim of it reaches a worker) is asked to stop through its
    /// [`TaskContext`] ([`Cancelled::Requested`]): the handler decides what its attempt's
    /// outcome is.
    ///
    /// Errors: [`Error::NotFound`] if there is no such task; [`Error::InvalidTransition`] if
    /// it is done or failed, or running in another queue or process (it cannot be reached
    /// from here).
    pub fn cancel(&self, id: TaskId) -> Result<Cancelled> {
        let engine = &self.workers.engine;
        // Taken after the store's first answer, once: only the claims under way then may
        // have made the task running, so a busy queue's later claims never hold the look up.
        let mut mark = None;
        loop {
            let e = match engine.store.cancel(id, engine.now()) {
                Ok(()) => return Ok(Cancelled::Removed),
                Err(
                    e @ Error::InvalidTransition {
                        status: Status::Running,
                        ..
                    },
                ) => e,
                Err(e) => return Err(e),
            };
            // Looked at before the handlers: a task on its way does not leave that way
            // except to start, to wait for a worker, or to be given back.
            let mark = *mark.get_or_insert_with(|| engine.held.mark());
            let on_its_way = engine.held.on_its_way(id, mark);
            if engine.held.cancel(Some(id), CancelReason::Cancel) {
                return Ok(Cancelled::Requested);
            }
            // Claimed here ahead of its start: it does not start; given back, it is pending
            // again and deleted as any pending task.
            if let Some(task) = engine.take_unstarted(id) {
                crate::leases::give_back(engine, &[task]);
                return engine
                    .store
                    .cancel(id, engine.now())
                    .map(|()| Cancelled::Removed);
            }
            if !on_its_way {
                return Err(e);
            }
            // Claimed here, its claim's answer not yet with a worker: look again once it
            // is (started, handed over, or given back).
            let (seen, _) = engine.held.snapshot();
            engine.held.wait(seen, Duration::from_millis(1));
        }
    }

    /// The last storage error a worker met and could not return to a caller (it retried,
    /// or left the task to lease recovery), if any.
    pub fn last_worker_error(&self) -> Option<String> {
        self.workers.engine.errors.last()
    }

    /// What the runtime did beside running handlers: tasks given back, outcomes refused as
    /// lease-lost, outcomes never recorded, tasks of dead workers recovered, attempts timed
    /// out, thread handlers stuck past their timeout.
    pub fn stats(&self) -> QueueStats {
        let engine = &self.workers.engine;
        engine.stats.snapshot(engine.deadlines.stuck())
    }
}

/// Runs `call` on a thread of its own (outside any runtime) and awaits its result; runs it
/// here if no thread can be started (the blocking calls do not wait on a current-thread
/// runtime, so this cannot hang).
#[cfg(feature = "tokio")]
async fn off_runtime<T: Send + 'static>(call: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let call = Arc::new(Mutex::new(Some(call)));
    let theirs = Arc::clone(&call);
    let spawned = std::thread::Builder::new()
        .name("simplepyq-wait".into())
        .spawn(move || {
            if let Some(call) = theirs.lock().take() {
                let _ = tx.send(call());
            }
        });
    if let (Ok(_), Ok(value)) = (spawned, rx.await) {
        return value;
    }
    // No thread, or it panicked: the call was not made, or made and lost with the panic.
    let call = call.lock().take();
    match call {
        Some(call) => call(),
        None => std::panic::resume_unwind(Box::new("the waiting thread panicked")),
    }
}

/// What [`SimplePyQ::cancel`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Cancelled {
    /// The task was pending or delayed: it is deleted and will not run.
    Removed,
    /// The task runs here: its handler was asked to stop.
    Requested,
}

impl<S: Store> Drop for SimplePyQ<S> {
    /// Tells the workers to stop after their current task, without waiting for them: no
    /// handler starts from now on, and tasks claimed ahead are given back. Running handlers
    /// finish in their threads, which renew their leases and record their outcomes until
    /// then, and end.
    fn drop(&mut self) {
        self.workers.stop_detached();
    }
}

#[cfg(feature = "memory")]
impl SimplePyQ<simplepyq_memory::MemoryStore> {
    /// A queue in memory: nothing survives the process. For tests and throwaway queues.
    pub fn memory() -> Self {
        SimplePyQ::new(simplepyq_memory::MemoryStore::new())
    }
}

#[cfg(any(feature = "sqlite", feature = "system-sqlite"))]
impl SimplePyQ<simplepyq_sqlite::SqliteStore> {
    /// A queue on the SQLite file at `path`, created if needed: the original's
    /// `SimplePyQ("tasks.db")`. Tasks survive restarts and crashes; several processes may
    /// open the same file.
    ///
    /// The file may be the application's own database: the queue's tables (named
    /// `simplepyq_*`) go beside its tables, which are left alone. Fails with a clear error,
    /// changing nothing, if the file is not SQLite or was written by a newer version. For settings (durability, lease, poll interval) use
    /// [`SimplePyQ::builder`] with [`simplepyq_sqlite::SqliteStore::open_with`].
    pub fn open(path: impl AsRef<std::path::Path>) -> Result<Self> {
        Ok(SimplePyQ::new(simplepyq_sqlite::SqliteStore::open(path)?))
    }
}

#[cfg(feature = "postgres")]
impl SimplePyQ<simplepyq_postgres::PostgresStore> {
    /// A queue on the PostgreSQL database at `url` (`postgres://user@host/db`), in the
    /// schema `simplepyq`, created if needed. Processes on any number of machines may
    /// connect to one queue; tasks are timed by the server's clock. For settings (pool size,
    /// schema) use [`SimplePyQ::builder`] with
    /// [`simplepyq_postgres::PostgresStore::connect_with`].
    pub fn connect(url: &str) -> Result<Self> {
        Ok(SimplePyQ::new(simplepyq_postgres::PostgresStore::connect(
            url,
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shareable<T: Send + Sync>() {}

    #[test]
    fn queues_can_be_shared_between_threads() {
        shareable::<SimplePyQ<Box<dyn Store>>>();
        #[cfg(any(feature = "sqlite", feature = "system-sqlite"))]
        shareable::<SimplePyQ<simplepyq_sqlite::SqliteStore>>();
    }

    /// Each backend feature works alone (CI builds and runs this with one feature at a time).
    fn runs_a_queue<S: Store>(q: SimplePyQ<S>) {
        use std::sync::atomic::{AtomicU32, Ordering};
        let sum = Arc::new(AtomicU32::new(0));
        let s = Arc::clone(&sum);
        q.add_channel(
            "add",
            move |n: u32| {
                s.fetch_add(n, Ordering::SeqCst);
                Ok(())
            },
            2,
        )
        .expect("add");
        for n in 1..=10u32 {
            q.enqueue("add", &n).expect("enqueue");
        }
        q.run_until_complete().expect("run");
        assert_eq!(sum.load(Ordering::SeqCst), 55);
        assert_eq!(q.counts("add").expect("counts").done, 10);
    }

    #[cfg(feature = "redb")]
    #[test]
    fn the_redb_feature_runs_a_queue() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = simplepyq_redb::RedbStore::open(dir.path().join("q.redb")).expect("open");
        runs_a_queue(SimplePyQ::new(store));
    }

    #[cfg(any(feature = "sqlite", feature = "system-sqlite"))]
    #[test]
    fn the_sqlite_feature_runs_a_queue() {
        let dir = tempfile::tempdir().expect("temp dir");
        runs_a_queue(SimplePyQ::open(dir.path().join("q.db")).expect("open"));
    }

    #[cfg(feature = "memory")]
    #[test]
    fn the_memory_feature_runs_a_queue() {
        runs_a_queue(SimplePyQ::memory());
    }

    #[cfg(feature = "memory")]
    #[test]
    fn settings_out_of_range_are_refused() {
        use simplepyq_memory::MemoryStore;
        let err = SimplePyQ::builder(MemoryStore::new())
            .lease(Duration::from_millis(1))
            .build()
            .expect_err("a 1 ms lease is refused");
        assert!(err.to_string().contains("lease"), "{err}");
        let err = SimplePyQ::builder(MemoryStore::new())
            .poll_interval(Duration::ZERO)
            .build()
            .expect_err("a zero poll interval is refused");
        assert!(err.to_string().contains("poll interval"), "{err}");
    }
}
