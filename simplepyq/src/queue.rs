//! [`SimplePyQ`]: channels, enqueueing, and starting and stopping the workers.

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use serde::Serialize;
use serde::de::DeserializeOwned;
use simplepyq_core::{
    Claim, Clock, Counts, Error, ListFilter, Result, Store, StoreExt, SystemClock, Task, TaskId,
    Timestamp, validate_channel,
};

use crate::handler::{TaskError, erase};
use crate::options::{ChannelOptions, EnqueueOptions};
use crate::recorder::{self, Recorder};
use crate::report::{self, Hook, TaskReport};
use crate::signal::Signal;
use crate::worker::{self, ChannelWork, Dispatch};

fn encode<T: Serialize + ?Sized>(args: &T) -> Result<Vec<u8>> {
    rmp_serde::to_vec_named(args).map_err(|e| Error::Codec {
        action: "encoded",
        message: e.to_string(),
    })
}

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
    on_outcome: Option<Box<Hook>>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for Builder<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("store", &self.store)
            .field("lease", &self.lease)
            .field("poll_interval", &self.poll_interval)
            .finish_non_exhaustive()
    }
}

impl<S: Store> Builder<S> {
    /// The clock tasks are timed by; [`SystemClock`] by default. Tests pass a
    /// [`simplepyq_core::ManualClock`].
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

    /// A function told of every attempt's outcome once it is recorded, e.g. for metrics.
    /// It runs on the worker thread: keep it quick. A panic in it is caught and ignored.
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
        Ok(SimplePyQ {
            shared: Arc::new(Shared {
                store: self.store,
                clock: self.clock,
                lease: self.lease,
                poll_interval: self.poll_interval,
                registry: Mutex::new(Registry::default()),
                inflight: Mutex::new(InFlight::default()),
                progress: Condvar::new(),
                last_error: Mutex::new(None),
                lasting_error: Mutex::new(None),
                recorder: Recorder::closed(),
                on_outcome: self.on_outcome,
            }),
        })
    }
}

/// A task queue: channels of handlers with worker threads, over a [`Store`].
///
/// All methods take `&self`; share a queue between threads with an `Arc` (it is `Send` and
/// `Sync`). Dropping it tells
/// the workers to stop after their current task; [`SimplePyQ::stop`] also waits for them.
#[derive(Debug)]
pub struct SimplePyQ<S: Store> {
    shared: Arc<Shared<S>>,
}

/// What the queue and its worker threads share.
pub(crate) struct Shared<S> {
    pub(crate) store: S,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) lease: Duration,
    pub(crate) poll_interval: Duration,
    registry: Mutex<Registry>,
    pub(crate) inflight: Mutex<InFlight>,
    /// Signalled when a task finishes or a worker finds nothing to do.
    pub(crate) progress: Condvar,
    last_error: Mutex<Option<String>>,
    /// A storage error met by a worker that no retry will cure (a damaged file, one that
    /// cannot be written), for `run_until_complete` to return instead of waiting forever.
    lasting_error: Mutex<Option<Error>>,
    pub(crate) on_outcome: Option<Box<Hook>>,
    pub(crate) recorder: Recorder,
}

impl<S: std::fmt::Debug> std::fmt::Debug for Shared<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("store", &self.store)
            .field("lease", &self.lease)
            .field("poll_interval", &self.poll_interval)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct Registry {
    channels: HashMap<String, Channel>,
    running: bool,
    keeper: Option<(Arc<Signal>, JoinHandle<()>)>,
    recorder: Option<JoinHandle<()>>,
    /// Workers of removed channels, finishing their current task.
    retired: Vec<JoinHandle<()>>,
}

struct Channel {
    work: Arc<ChannelWork>,
    max_workers: usize,
    dispatch: Arc<Dispatch>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("max_workers", &self.max_workers)
            .field("threads", &self.threads.len())
            .finish_non_exhaustive()
    }
}

/// Attempts that workers of this queue are running now.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    pub(crate) claims: HashMap<TaskId, Claim>,
    /// Moves on every [`Shared::progress`] notification.
    pub(crate) generation: u64,
}

impl<S: Store> Shared<S> {
    pub(crate) fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Keeps a storage error that a worker could not return to anyone.
    pub(crate) fn record_error(&self, e: &Error) {
        report::trace_store_error(e);
        *self.last_error.lock() = Some(e.to_string());
        let lasting = match e {
            Error::Corrupt { .. } | Error::ReadOnly { .. } => e.try_clone(),
            _ => None,
        };
        if lasting.is_some() {
            *self.lasting_error.lock() = lasting;
            self.progress.notify_all();
        }
    }

    /// A worker found nothing to do: `run_until_complete` may look whether all is done.
    pub(crate) fn notify_idle(&self) {
        self.inflight.lock().generation += 1;
        self.progress.notify_all();
    }

    /// The attempt of `id` is over (recorded, or left to lease recovery).
    pub(crate) fn finished(&self, id: TaskId) {
        let mut inflight = self.inflight.lock();
        inflight.claims.remove(&id);
        // Only a queue with nothing in flight can be done: wake the waiters only then.
        if inflight.claims.is_empty() {
            inflight.generation += 1;
            self.progress.notify_all();
        }
    }

    /// Wakes the idle workers of every channel, e.g. after leases were recovered.
    pub(crate) fn wake_all(&self) {
        for ch in self.registry.lock().channels.values() {
            ch.dispatch.notify(true);
        }
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
            store,
            clock: Arc::new(SystemClock),
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_millis(500),
            on_outcome: None,
        }
    }

    /// The store under the queue.
    pub fn store(&self) -> &S {
        &self.shared.store
    }

    /// Binds `handler` to channel `name`, run by up to `max_workers` threads at once.
    ///
    /// The handler takes the task's arguments, decoded from MessagePack into `A`. Arguments
    /// that do not decode fail the task at once with a message naming the type. A handler
    /// that panics fails its attempt (the panic message is the task's error); its worker
    /// goes on. If the queue is started, the workers start at once. Failed attempts are
    /// retried at once; [`SimplePyQ::add_channel_with`] sets a backoff.
    ///
    /// Errors: [`Error::InvalidConfig`] for zero workers, [`Error::DuplicateChannel`] if the
    /// channel has a handler already, [`Error::InvalidChannel`] for an unusable name.
    ///
    /// Handlers run on worker threads, so what they capture must be `Send + Sync`:
    ///
    /// ```compile_fail
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let q = simplepyq::SimplePyQ::open(dir.path().join("q.db")).unwrap();
    /// let not_shareable = std::rc::Rc::new(0);
    /// q.add_channel("c", move |_: u32| { let _ = &not_shareable; Ok(()) }, 1);
    /// ```
    pub fn add_channel<A, F>(&self, name: &str, handler: F, max_workers: usize) -> Result<()>
    where
        A: DeserializeOwned + 'static,
        F: Fn(A) -> Result<(), TaskError> + Send + Sync + 'static,
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
    pub fn add_channel_with<A, F>(
        &self,
        name: &str,
        handler: F,
        options: ChannelOptions,
    ) -> Result<()>
    where
        A: DeserializeOwned + 'static,
        F: Fn(A) -> Result<(), TaskError> + Send + Sync + 'static,
    {
        validate_channel(name)?;
        if options.max_workers == 0 {
            return Err(Error::config(format!(
                "channel {name:?} needs at least one worker (max_workers was 0)"
            )));
        }
        let mut reg = self.shared.registry.lock();
        if reg.channels.contains_key(name) {
            return Err(Error::DuplicateChannel(name.to_owned()));
        }
        let mut channel = Channel {
            work: Arc::new(ChannelWork {
                name: name.to_owned(),
                workers: options.max_workers,
                handler: erase(handler),
                backoff: options.backoff,
                average_run: std::sync::atomic::AtomicU64::new(0),
            }),
            max_workers: options.max_workers,
            dispatch: Arc::new(Dispatch::default()),
            threads: Vec::new(),
        };
        if reg.running {
            self.spawn_workers(&mut channel)?;
        }
        reg.channels.insert(name.to_owned(), channel);
        Ok(())
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
        let now = self.shared.now();
        let task = options.task(channel, encode(args)?, now);
        let id = self.shared.store.enqueue_one(task, now)?;
        self.wake(channel, false);
        Ok(id)
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
        let now = self.shared.now();
        let tasks = args
            .into_iter()
            .map(|a| Ok(options.task(channel, encode(a)?, now)))
            .collect::<Result<Vec<_>>>()?;
        let ids = self.shared.store.enqueue(&tasks, now)?;
        self.wake(channel, true);
        Ok(ids)
    }

    /// Wakes idle workers of `channel` in this queue, if it has any.
    fn wake(&self, channel: &str, all: bool) {
        if let Some(ch) = self.shared.registry.lock().channels.get(channel) {
            ch.dispatch.notify(all);
        }
    }

    /// Starts the workers of every channel in background threads and returns at once.
    /// Calling it on a started queue does nothing.
    ///
    /// First recovers tasks whose lease expired (left `running` by a process that died).
    /// Fails only if a thread cannot be started.
    pub fn start(&self) -> Result<()> {
        let mut reg = self.shared.registry.lock();
        if reg.running {
            return Ok(());
        }
        // A failure here is not fatal: the lease keeper recovers expired leases again soon.
        if let Err(e) = self.shared.store.recover_expired(
            self.shared.now(),
            simplepyq_core::transition::DEFAULT_MAX_LOST_RUNS,
        ) {
            self.shared.record_error(&e);
        }
        let names: Vec<String> = reg.channels.keys().cloned().collect();
        for name in names {
            let mut channel = reg.channels.remove(&name).expect("name was just listed");
            channel.dispatch = Arc::new(Dispatch::default());
            let spawned = self.spawn_workers(&mut channel);
            reg.channels.insert(name, channel);
            if let Err(e) = spawned {
                drop(reg);
                self.stop();
                return Err(e);
            }
        }
        let signal = Arc::new(Signal::default());
        let shared = Arc::clone(&self.shared);
        let keeper_signal = Arc::clone(&signal);
        let keeper = thread::Builder::new()
            .name("simplepyq-keeper".into())
            .spawn(move || worker::keep_leases(&shared, &keeper_signal))
            .map_err(Error::Spawn)?;
        reg.keeper = Some((signal, keeper));
        self.shared.recorder.open();
        let shared = Arc::clone(&self.shared);
        let recorder = thread::Builder::new()
            .name("simplepyq-recorder".into())
            .spawn(move || recorder::run(&shared));
        match recorder {
            Ok(thread) => reg.recorder = Some(thread),
            // Without the thread, workers record their own outcomes.
            Err(e) => {
                self.shared.recorder.close();
                self.shared.record_error(&Error::Spawn(e));
            }
        }
        reg.running = true;
        Ok(())
    }

    fn spawn_workers(&self, channel: &mut Channel) -> Result<()> {
        for i in 0..channel.max_workers {
            let shared = Arc::clone(&self.shared);
            let work = Arc::clone(&channel.work);
            let dispatch = Arc::clone(&channel.dispatch);
            let thread = thread::Builder::new()
                .name(format!("simplepyq-{}-{i}", work.name))
                .spawn(move || worker::work(&shared, &work, &dispatch))
                .map_err(Error::Spawn)?;
            channel.threads.push(thread);
        }
        Ok(())
    }

    /// Tells every worker and the lease keeper to stop, and hands over their threads: the
    /// workers', then the keeper's and the recorder's.
    fn signal_stop(&self) -> (Vec<JoinHandle<()>>, Vec<JoinHandle<()>>) {
        let mut reg = self.shared.registry.lock();
        reg.running = false;
        let mut workers = std::mem::take(&mut reg.retired);
        for ch in reg.channels.values_mut() {
            ch.dispatch.stop();
            workers.append(&mut ch.threads);
        }
        let mut helpers = Vec::new();
        if let Some((signal, keeper)) = reg.keeper.take() {
            signal.stop();
            helpers.push(keeper);
        }
        helpers.extend(reg.recorder.take());
        (workers, helpers)
    }

    /// Once the workers are done: the recorder records what they handed over and stops;
    /// joins it and the keeper.
    fn finish_stop(&self, helpers: Vec<JoinHandle<()>>) {
        self.shared.recorder.close();
        for t in helpers {
            // Neither runs user code: a panic there leaves nothing to clean up.
            let _ = t.join();
        }
    }

    /// Stops the workers: no new task is claimed, and the call returns when the running
    /// handlers have finished and their outcomes are recorded. Nothing is lost: queued tasks
    /// stay queued for the next start. Called from inside a handler, it does not wait for
    /// that handler's own thread.
    pub fn stop(&self) {
        let me = thread::current().id();
        let (workers, helpers) = self.signal_stop();
        for t in workers {
            if t.thread().id() != me {
                // A worker that panicked outside a handler has nothing left to clean up.
                let _ = t.join();
            }
        }
        self.finish_stop(helpers);
    }

    /// Stops the workers like [`SimplePyQ::stop`], but waits at most `timeout` for running
    /// handlers; returns the tasks whose handlers were still running then.
    ///
    /// Those handlers go on in their threads, but their leases are no longer renewed: once
    /// a lease expires, the task is recovered like a dead worker's (run again, or failed if
    /// no retry is left), and a late result of the old run is dropped.
    pub fn stop_timeout(&self, timeout: Duration) -> Vec<TaskId> {
        let deadline = Instant::now() + timeout;
        let me = thread::current().id();
        let (workers, helpers) = self.signal_stop();
        let workers: Vec<_> = workers
            .into_iter()
            .filter(|t| t.thread().id() != me)
            .collect();
        while !workers.iter().all(JoinHandle::is_finished) {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let mut inflight = self.shared.inflight.lock();
            let wait = (deadline - now).min(Duration::from_millis(10));
            self.shared.progress.wait_for(&mut inflight, wait);
        }
        let mut finished = Vec::new();
        for t in workers {
            if t.is_finished() {
                finished.push(t);
            }
            // Unfinished threads are detached: their handlers cannot be interrupted.
        }
        for t in finished {
            let _ = t.join();
        }
        self.finish_stop(helpers);
        let mut running: Vec<TaskId> = self.shared.inflight.lock().claims.keys().copied().collect();
        running.sort_unstable();
        running
    }

    /// Runs until no task of a channel with a handler here is pending, running or delayed
    /// (waiting out delays and, for tasks held by a dead worker, their lease), then stops.
    ///
    /// Starts the workers if needed. Tasks of channels without a handler here are not
    /// waited for. Returns an error only if the store fails for good: a call fails with an
    /// error that is not [retryable](Error::is_retryable), or a worker finds the file
    /// damaged ([`Error::Corrupt`]) or unwritable ([`Error::ReadOnly`]), which waiting would
    /// not cure. The workers are stopped either way; unfinished tasks stay in the store.
    pub fn run_until_complete(&self) -> Result<()> {
        let channels: Vec<String> = self
            .shared
            .registry
            .lock()
            .channels
            .keys()
            .cloned()
            .collect();
        if channels.is_empty() {
            return Ok(());
        }
        // Only what this run meets counts.
        self.shared.lasting_error.lock().take();
        self.start()?;
        let result = loop {
            if let Some(e) = self.shared.lasting_error.lock().take() {
                break Err(e);
            }
            let (seen, busy) = {
                let inflight = self.shared.inflight.lock();
                (inflight.generation, !inflight.claims.is_empty())
            };
            // While a worker here runs a task the channel is not idle: ask the store only
            // when this process has nothing in flight.
            if !busy {
                match self.idle(&channels) {
                    Ok(true) => break Ok(()),
                    Ok(false) => {}
                    Err(e) if e.is_retryable() => self.shared.record_error(&e),
                    Err(e) => break Err(e),
                }
            }
            let mut inflight = self.shared.inflight.lock();
            if inflight.generation == seen {
                self.shared
                    .progress
                    .wait_for(&mut inflight, self.shared.poll_interval);
            }
        };
        self.stop();
        result
    }

    /// Whether none of `channels` has a pending, delayed or running task.
    fn idle(&self, channels: &[String]) -> Result<bool> {
        for ch in channels {
            if self.shared.store.next_wakeup(ch)?.is_some() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Deletes the failed tasks of `channel`, or of every channel with `None`; returns how
    /// many.
    pub fn clear_failed<'a>(&self, channel: impl Into<Option<&'a str>>) -> Result<usize> {
        self.shared.store.clear_failed(channel.into())
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
        let n = self
            .shared
            .store
            .requeue_failed(channel, retries.into(), self.shared.now())?;
        if n > 0 {
            self.shared.wake_all();
        }
        Ok(n)
    }

    /// Removes channel `name`: its handler (its workers stop after their current task) and
    /// every task of it in the store, whatever their status; returns how many tasks.
    pub fn remove_channel(&self, name: &str) -> Result<usize> {
        {
            let mut reg = self.shared.registry.lock();
            if let Some(mut ch) = reg.channels.remove(name) {
                ch.dispatch.stop();
                reg.retired.append(&mut ch.threads);
            }
        }
        self.shared.store.remove_channel(name)
    }

    /// Deletes the done tasks of `channel` (or of every channel with `None`) that finished
    /// more than `older_than` ago; returns how many. Done tasks are kept until then, as in
    /// the original, so that they can be inspected.
    pub fn purge_done<'a>(
        &self,
        channel: impl Into<Option<&'a str>>,
        older_than: Duration,
    ) -> Result<usize> {
        let now = self.shared.now().as_millis();
        let ms = i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX);
        let before = Timestamp::from_millis(now.saturating_sub(ms));
        self.shared.store.purge_done(channel.into(), before)
    }

    /// Counts tasks per status, of `channel` or of every channel with `None`.
    pub fn counts<'a>(&self, channel: impl Into<Option<&'a str>>) -> Result<Counts> {
        self.shared.store.counts(channel.into())
    }

    /// The task with this id, if it exists. [`decode_args`] reads its arguments.
    pub fn task(&self, id: TaskId) -> Result<Option<Task>> {
        self.shared.store.get(id)
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
        self.shared.store.list(filter)
    }

    /// Cancels a pending or delayed task: it is deleted and will not run.
    ///
    /// Errors: [`Error::NotFound`] if there is no such task; [`Error::InvalidTransition`] if
    /// it is running (it cannot be taken from its worker), done or failed.
    pub fn cancel(&self, id: TaskId) -> Result<()> {
        self.shared.store.cancel(id)
    }

    /// The last storage error a worker met and could not return to a caller (it retried,
    /// or left the task to lease recovery), if any.
    pub fn last_worker_error(&self) -> Option<String> {
        self.shared.last_error.lock().clone()
    }
}

impl<S: Store> Drop for SimplePyQ<S> {
    /// Tells the workers to stop after their current task, without waiting for them.
    fn drop(&mut self) {
        let mut reg = self.shared.registry.lock();
        reg.running = false;
        for ch in reg.channels.values() {
            ch.dispatch.stop();
        }
        if let Some((signal, _)) = &reg.keeper {
            signal.stop();
        }
        // The recorder thread records what is waiting and ends; workers that finish later
        // record their own outcomes.
        self.shared.recorder.close();
    }
}

#[cfg(feature = "memory")]
impl SimplePyQ<simplepyq_memory::MemoryStore> {
    /// A queue in memory: nothing survives the process. For tests and throwaway queues.
    pub fn memory() -> Self {
        SimplePyQ::new(simplepyq_memory::MemoryStore::new())
    }
}

#[cfg(feature = "sqlite")]
impl SimplePyQ<simplepyq_sqlite::SqliteStore> {
    /// A queue on the SQLite file at `path`, created if needed: the original's
    /// `SimplePyQ("tasks.db")`. Tasks survive restarts and crashes; several processes may
    /// open the same file.
    ///
    /// Fails with a clear error, changing nothing, if the file is not a simplepyq queue or
    /// was written by a newer version. For settings (durability, lease, poll interval) use
    /// [`SimplePyQ::builder`] with [`simplepyq_sqlite::SqliteStore::open_with`].
    pub fn open(path: impl AsRef<std::path::Path>) -> Result<Self> {
        Ok(SimplePyQ::new(simplepyq_sqlite::SqliteStore::open(path)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shareable<T: Send + Sync>() {}

    #[test]
    fn queues_can_be_shared_between_threads() {
        shareable::<SimplePyQ<Box<dyn Store>>>();
        #[cfg(feature = "sqlite")]
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

    #[cfg(feature = "sqlite")]
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
