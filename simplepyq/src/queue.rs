//! [`SimplePyQ`]: channels, enqueueing, and starting and stopping the workers.

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use serde::Serialize;
use serde::de::DeserializeOwned;
use simplepyq_core::transition::DEFAULT_MAX_LOST_RUNS;
use simplepyq_core::{
    Clock, Counts, Error, ListFilter, Result, Store, StoreExt, SystemClock, Task, TaskId,
    Timestamp, Watch, validate_channel,
};

use crate::dispatch::Dispatch;
use crate::engine::{Engine, Settings};
use crate::handler::{TaskError, erase};
use crate::leases;
use crate::options::{ChannelOptions, EnqueueOptions};
use crate::recorder;
use crate::report::{Hook, QueueStats, StopReport, TaskReport};
use crate::signal::Signal;
use crate::worker::{self, ChannelWork};

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
    max_lost_runs: u32,
    on_outcome: Option<Box<Hook>>,
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

    /// The clock tasks are timed by: by default the store's own ([`Store::clock`]: the
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
        };
        Ok(SimplePyQ {
            engine: Arc::new(Engine::new(self.store, settings)),
            registry: Mutex::new(Registry::default()),
            stopped: Condvar::new(),
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
    engine: Arc<Engine<S>>,
    registry: Mutex<Registry>,
    /// Signalled when a stop ends, for callers that wait for another thread's stop.
    stopped: Condvar,
}

impl<S: Store> std::fmt::Debug for SimplePyQ<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimplePyQ")
            .field("engine", &self.engine)
            .field("registry", &*self.registry.lock())
            .finish()
    }
}

/// The channels, and where the queue stands.
#[derive(Debug, Default)]
struct Registry {
    channels: HashMap<String, Arc<ChannelWork>>,
    life: Lifecycle,
}

/// Where the queue stands: one state, changed under the registry's lock.
#[derive(Debug, Default)]
enum Lifecycle {
    /// No worker runs (helper threads may still renew the leases of handlers that outlived
    /// a `stop_timeout`).
    #[default]
    Stopped,
    /// Workers run.
    Running(Run),
    /// A stop is under way, in some thread.
    Stopping,
}

/// The threads of one run, from `start` to the end of its stop.
#[derive(Debug)]
struct Run {
    number: u64,
    crews: HashMap<String, Crew>,
    /// Workers of channels removed while running, finishing their current task.
    retired: Vec<JoinHandle<()>>,
    /// Tells the keeper and the recorder that the run stopped.
    signal: Arc<Signal>,
    helpers: Vec<JoinHandle<()>>,
    /// The store's news of work from other processes, while the run lasts.
    watch: Option<Watch>,
}

/// The workers of one channel in a run.
#[derive(Debug)]
struct Crew {
    dispatch: Arc<Dispatch>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for ChannelWork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelWork")
            .field("name", &self.name)
            .field("workers", &self.workers)
            .finish_non_exhaustive()
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
        }
    }

    /// The store under the queue.
    pub fn store(&self) -> &S {
        &self.engine.store
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
        let mut reg = self.registry.lock();
        if reg.channels.contains_key(name) {
            return Err(Error::DuplicateChannel(name.to_owned()));
        }
        let work = Arc::new(ChannelWork {
            name: Arc::from(name),
            workers: options.max_workers,
            handler: erase(handler),
            backoff: options.backoff,
            average_run: std::sync::atomic::AtomicU64::new(0),
        });
        if let Lifecycle::Running(run) = &mut reg.life {
            let crew = self.spawn_crew(&work)?;
            run.crews.insert(name.to_owned(), crew);
        }
        reg.channels.insert(name.to_owned(), work);
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
        let now = self.engine.now();
        let task = options.task(channel, encode(args)?, now);
        let id = self.engine.store.enqueue_one(task, now)?;
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
        let now = self.engine.now();
        let tasks = args
            .into_iter()
            .map(|a| Ok(options.task(channel, encode(a)?, now)))
            .collect::<Result<Vec<_>>>()?;
        let ids = self.engine.store.enqueue(&tasks, now)?;
        self.wake(channel, true);
        Ok(ids)
    }

    /// Wakes idle workers of `channel` in this queue, if it has any.
    fn wake(&self, channel: &str, all: bool) {
        self.engine.wake(channel, all);
    }

    /// Starts the workers of every channel in background threads and returns at once.
    /// Calling it on a started queue does nothing; during another thread's stop, it waits
    /// for that stop to end.
    ///
    /// First recovers tasks whose lease expired (left `running` by a process that died), as
    /// the lease keeper does: renewing this queue's own leases first. Fails only if a thread
    /// cannot be started; then nothing runs.
    pub fn start(&self) -> Result<()> {
        let mut reg = self.registry.lock();
        loop {
            match reg.life {
                Lifecycle::Running(_) => return Ok(()),
                Lifecycle::Stopping => self.stopped.wait(&mut reg),
                Lifecycle::Stopped => break,
            }
        }
        // A failure here is not fatal: the lease keeper recovers expired leases again soon.
        if let Err(e) = leases::renew_and_recover(&self.engine) {
            self.engine.errors.record(&e);
        }
        self.engine.outcomes.stopping(false);
        let mut run = Run {
            number: self.engine.next_run(),
            crews: HashMap::new(),
            retired: Vec::new(),
            signal: Arc::new(Signal::default()),
            helpers: Vec::new(),
            watch: None,
        };
        match self.spawn_run(&reg, &mut run) {
            Ok(()) => {
                reg.life = Lifecycle::Running(run);
                Ok(())
            }
            Err(e) => {
                // Stop what did start, as any stop does, before waiting for it.
                reg.life = Lifecycle::Stopping;
                drop(reg);
                self.halt(&run);
                self.finish_stop(run, None);
                Err(e)
            }
        }
    }

    /// Starts the threads of `run`: each channel's workers, the lease keeper, the recorder.
    fn spawn_run(&self, reg: &Registry, run: &mut Run) -> Result<()> {
        for (name, work) in &reg.channels {
            let crew = self.spawn_crew(work)?;
            run.crews.insert(name.clone(), crew);
        }
        let (engine, signal, number) = (
            Arc::clone(&self.engine),
            Arc::clone(&run.signal),
            run.number,
        );
        let keeper = thread::Builder::new()
            .name("simplepyq-keeper".into())
            .spawn(move || leases::keep(&engine, &signal, number))
            .map_err(Error::Spawn)?;
        run.helpers.push(keeper);
        // Work another process adds wakes the channel's idle workers (the store holds only
        // a weak reference: it must not keep the queue alive).
        let engine = Arc::downgrade(&self.engine);
        run.watch = self.engine.store.watch(Arc::new(move |channel| {
            if let Some(engine) = engine.upgrade() {
                match channel {
                    Some(name) => engine.wake(name, true),
                    None => engine.wake_all(),
                }
            }
        }));
        self.engine.outcomes.open();
        let (engine, signal) = (Arc::clone(&self.engine), Arc::clone(&run.signal));
        let recorder = thread::Builder::new()
            .name("simplepyq-recorder".into())
            .spawn(move || recorder::run(&engine, &signal, number));
        match recorder {
            Ok(thread) => run.helpers.push(thread),
            // Without the thread, workers record their own outcomes.
            Err(e) => {
                self.engine.outcomes.close();
                self.engine.errors.record(&Error::Spawn(e));
            }
        }
        Ok(())
    }

    /// Starts the workers of one channel.
    fn spawn_crew(&self, work: &Arc<ChannelWork>) -> Result<Crew> {
        let mut crew = Crew {
            dispatch: Arc::new(Dispatch::default()),
            threads: Vec::new(),
        };
        self.engine.serve(&work.name, Arc::clone(&crew.dispatch));
        for i in 0..work.workers {
            let engine = Arc::clone(&self.engine);
            let (w, dispatch) = (Arc::clone(work), Arc::clone(&crew.dispatch));
            let spawned = thread::Builder::new()
                .name(format!("simplepyq-{}-{i}", work.name))
                .spawn(move || worker::work(&engine, &w, &dispatch));
            match spawned {
                Ok(t) => crew.threads.push(t),
                Err(e) => {
                    // The workers that did start stop at once: they have claimed nothing
                    // that a stop of the dispatch would not give back.
                    leases::give_back(&self.engine, &self.halt_crew(&work.name, &crew.dispatch));
                    for t in crew.threads {
                        let _ = t.join();
                    }
                    return Err(Error::Spawn(e));
                }
            }
        }
        Ok(crew)
    }

    /// Begins a stop: takes the run, if the queue runs, and stops every channel's dispatch,
    /// so that no handler starts from now on; gives back the tasks claimed and not started.
    /// Returns the run and how many tasks were given back; `None` if the queue was not
    /// running (after waiting for another thread's stop, if one was under way).
    /// With `only`, stops that run only: a run started since by someone else is theirs.
    fn begin_stop(&self, only: Option<u64>) -> Option<(Run, usize)> {
        let mut reg = self.registry.lock();
        let run = loop {
            match std::mem::replace(&mut reg.life, Lifecycle::Stopping) {
                Lifecycle::Running(run) if only.is_none_or(|n| n == run.number) => break run,
                Lifecycle::Stopping => self.stopped.wait(&mut reg),
                other => {
                    reg.life = other;
                    return None;
                }
            }
        };
        drop(reg);
        let released = self.halt(&run);
        Some((run, released))
    }

    /// The first step of every stop: tells `run`'s helpers, and stops its channels'
    /// dispatches, so that no handler starts from now on; gives back the tasks claimed and
    /// not started. Returns how many were given back.
    fn halt(&self, run: &Run) -> usize {
        self.engine.stop_run(&run.signal);
        let unstarted: Vec<Task> = run
            .crews
            .iter()
            .flat_map(|(name, crew)| self.halt_crew(name, &crew.dispatch))
            .collect();
        leases::give_back(&self.engine, &unstarted)
    }

    /// Stops one channel's dispatch: no handler of it starts from now on. Returns its tasks
    /// claimed and not started, to be given back.
    fn halt_crew(&self, name: &str, dispatch: &Dispatch) -> Vec<Task> {
        self.engine.unserve(name);
        dispatch.stop()
    }

    /// Ends a stop begun by [`Self::begin_stop`]: waits for the running handlers, this
    /// run's and any that outlived an earlier `stop_timeout` (until `deadline`, if any; those
    /// still running then are left to finish, their threads detached), then for every
    /// outcome handed over to be recorded or given up on. The keeper and the recorder go on
    /// while handlers still run, and are joined otherwise. The queue is then `Stopped`.
    /// Returns the tasks whose handlers still run.
    fn finish_stop(&self, run: Run, deadline: Option<Instant>) -> Vec<TaskId> {
        let held = &self.engine.held;
        // A stop from inside a handler does not wait for that handler.
        let own = worker::current_claim();
        loop {
            let (seen, _) = held.snapshot();
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if !held.running_except(own) || left.is_some_and(|l| l.is_zero()) {
                break;
            }
            let wait = left.map_or(Duration::from_millis(10), |l| {
                l.min(Duration::from_millis(10))
            });
            held.wait(seen, wait);
        }
        // Outcomes handed over are recorded (or, with a failing store, given up on).
        loop {
            let (seen, _) = held.snapshot();
            if held.only_running() {
                break;
            }
            held.wait(seen, Duration::from_millis(10));
        }
        let me = thread::current().id();
        let workers = run
            .crews
            .into_values()
            .flat_map(|c| c.threads)
            .chain(run.retired);
        for t in workers.filter(|t| t.thread().id() != me) {
            // A worker whose handler finished ends at once; one still running (past the
            // deadline) is detached: its handler cannot be interrupted. A worker that
            // panicked outside a handler has nothing left to clean up.
            if deadline.is_none() || t.is_finished() {
                let _ = t.join();
            }
        }
        let running = held.running();
        if running.is_empty() {
            // The keeper and the recorder end once nothing is held: wait for them.
            for t in run.helpers {
                let _ = t.join();
            }
        }
        let mut reg = self.registry.lock();
        reg.life = Lifecycle::Stopped;
        self.stopped.notify_all();
        running
    }

    /// Stops the workers and returns when it is done: no handler starts once the call
    /// began; tasks claimed ahead and not started are given back (pending again, no attempt
    /// used); running handlers finish, their leases renewed, and their outcomes are
    /// recorded. Queued tasks stay queued for the next start. Called from inside a handler,
    /// it does not wait for that handler's own thread.
    ///
    /// Nothing is lost; the report says what was given back, and which outcomes could not
    /// be recorded (a store that kept failing for seconds): those tasks run again once their
    /// lease expires.
    pub fn stop(&self) -> StopReport {
        self.stop_until(None)
    }

    /// Stops the workers like [`SimplePyQ::stop`], but waits at most `timeout` for running
    /// handlers. The report's `running` lists exactly the tasks whose handlers still ran at
    /// the deadline.
    ///
    /// Those handlers go on in their threads, and their leases are still renewed until they
    /// finish and their outcomes are recorded (by threads that end then): the tasks do not
    /// run again elsewhere meanwhile. A process that exits before then leaves them to lease
    /// recovery, as a crash would.
    pub fn stop_timeout(&self, timeout: Duration) -> StopReport {
        self.stop_until(Some(Instant::now() + timeout))
    }

    fn stop_until(&self, deadline: Option<Instant>) -> StopReport {
        let Some((run, released)) = self.begin_stop(None) else {
            return StopReport::default();
        };
        let running = self.finish_stop(run, deadline);
        StopReport {
            running,
            released,
            unrecorded: self.engine.outcomes.take_unrecorded(),
        }
    }

    /// Runs until no task of a channel with a handler here is pending, running or delayed
    /// (waiting out delays and, for tasks held by a dead worker, their lease), then stops.
    ///
    /// Starts the workers if needed. Tasks of channels without a handler here are not
    /// waited for. Returns an error if the store fails for good: a call fails with an
    /// error that is not [retryable](Error::is_retryable), or a worker finds the file
    /// damaged ([`Error::Corrupt`]) or unwritable ([`Error::ReadOnly`]), which waiting would
    /// not cure; and [`Error::Stopped`] if another thread stops the queue meanwhile (a
    /// Ctrl-C handler calling [`SimplePyQ::stop`]). The workers are stopped either way;
    /// unfinished tasks stay in the store.
    pub fn run_until_complete(&self) -> Result<()> {
        let channels: Vec<String> = self.registry.lock().channels.keys().cloned().collect();
        if channels.is_empty() {
            return Ok(());
        }
        // Only what this run meets counts.
        self.engine.errors.take_lasting();
        self.start()?;
        let Some(number) = self.running_number() else {
            return Err(Error::Stopped);
        };
        let result = loop {
            if let Some(e) = self.engine.errors.take_lasting() {
                break Err(e);
            }
            let (seen, busy) = self.engine.held.snapshot();
            if self.running_number() != Some(number) {
                return Err(Error::Stopped);
            }
            // While a worker here holds a task the channel is not idle: ask the store only
            // when this process holds nothing.
            if !busy {
                match self.idle(&channels) {
                    Ok(true) => break Ok(()),
                    Ok(false) => {}
                    Err(e) if e.is_retryable() => self.engine.errors.record(&e),
                    Err(e) => break Err(e),
                }
            }
            self.engine.held.wait(seen, self.engine.poll_interval);
        };
        if let Some((run, _)) = self.begin_stop(Some(number)) {
            self.finish_stop(run, None);
        }
        result
    }

    /// The number of the run under way, if the queue runs.
    fn running_number(&self) -> Option<u64> {
        match &self.registry.lock().life {
            Lifecycle::Running(run) => Some(run.number),
            _ => None,
        }
    }

    /// Whether none of `channels` has a pending, delayed or running task.
    fn idle(&self, channels: &[String]) -> Result<bool> {
        for ch in channels {
            if self.engine.store.next_wakeup(ch)?.is_some() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Deletes the failed tasks of `channel`, or of every channel with `None`; returns how
    /// many.
    pub fn clear_failed<'a>(&self, channel: impl Into<Option<&'a str>>) -> Result<usize> {
        self.engine.store.clear_failed(channel.into())
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
            .engine
            .store
            .requeue_failed(channel, retries.into(), self.engine.now())?;
        if n > 0 {
            self.engine.wake_all();
        }
        Ok(n)
    }

    /// Removes channel `name`: its handler and every task of it in the store, whatever their
    /// status; returns how many tasks. Once it returns, no handler of the channel starts
    /// here; handlers that run finish (their outcomes are then dropped, as their tasks are
    /// gone).
    pub fn remove_channel(&self, name: &str) -> Result<usize> {
        let crew = {
            let mut reg = self.registry.lock();
            reg.channels.remove(name);
            match &mut reg.life {
                Lifecycle::Running(run) => run.crews.remove(name).map(|crew| {
                    run.retired.extend(std::mem::take(&mut { crew.threads }));
                    crew.dispatch
                }),
                _ => None,
            }
        };
        if let Some(dispatch) = crew {
            leases::give_back(&self.engine, &self.halt_crew(name, &dispatch));
        }
        self.engine.store.remove_channel(name)
    }

    /// Deletes the done tasks of `channel` (or of every channel with `None`) that finished
    /// more than `older_than` ago; returns how many. Done tasks are kept until then, as in
    /// the original, so that they can be inspected.
    pub fn purge_done<'a>(
        &self,
        channel: impl Into<Option<&'a str>>,
        older_than: Duration,
    ) -> Result<usize> {
        let now = self.engine.now().as_millis();
        let ms = i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX);
        let before = Timestamp::from_millis(now.saturating_sub(ms));
        self.engine.store.purge_done(channel.into(), before)
    }

    /// Counts tasks per status, of `channel` or of every channel with `None`.
    pub fn counts<'a>(&self, channel: impl Into<Option<&'a str>>) -> Result<Counts> {
        self.engine.store.counts(channel.into())
    }

    /// The task with this id, if it exists. [`decode_args`] reads its arguments.
    pub fn task(&self, id: TaskId) -> Result<Option<Task>> {
        self.engine.store.get(id)
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
        self.engine.store.list(filter)
    }

    /// Cancels a pending or delayed task: it is deleted and will not run.
    ///
    /// Errors: [`Error::NotFound`] if there is no such task; [`Error::InvalidTransition`] if
    /// it is running (it cannot be taken from its worker), done or failed.
    pub fn cancel(&self, id: TaskId) -> Result<()> {
        self.engine.store.cancel(id)
    }

    /// The last storage error a worker met and could not return to a caller (it retried,
    /// or left the task to lease recovery), if any.
    pub fn last_worker_error(&self) -> Option<String> {
        self.engine.errors.last()
    }

    /// What the runtime did beside running handlers: tasks given back, outcomes refused as
    /// lease-lost, outcomes never recorded, tasks of dead workers recovered.
    pub fn stats(&self) -> QueueStats {
        self.engine.stats.snapshot()
    }
}

impl<S: Store> Drop for SimplePyQ<S> {
    /// Tells the workers to stop after their current task, without waiting for them: no
    /// handler starts from now on, and tasks claimed ahead are given back. Running handlers
    /// finish in their threads, which renew their leases and record their outcomes until
    /// then, and end.
    fn drop(&mut self) {
        if let Some((run, _)) = self.begin_stop(None) {
            // Detached: the threads end by themselves once nothing is held.
            drop(run);
            self.registry.lock().life = Lifecycle::Stopped;
        }
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
