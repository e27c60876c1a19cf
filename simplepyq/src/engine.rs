//! What the parts of a running queue share: the store and its settings, the claims held,
//! the outcomes waiting to be recorded, the errors met, and each channel's dispatch (to wake
//! its workers). Each part owns its own state; this only brings them together.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::sync::Mutex;
use simplepyq_core::{Claim, Clock, Error, Flow, Result, Store, TaskId, Timestamp};

use crate::dispatch::Dispatch;
use crate::held::Held;
use crate::outcomes::Outcomes;
use crate::reads::Reads;
use crate::report::{self, Hook, QueueStats};
use crate::schedules::Schedules;
use crate::signal::StopSignal;

/// The shared parts of one queue.
pub(crate) struct Engine<S> {
    /// Tells this queue apart from every other of the process (a handler's own claim is
    /// its own queue's only).
    pub(crate) id: u64,
    pub(crate) store: S,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) lease: Duration,
    pub(crate) poll_interval: Duration,
    pub(crate) max_lost_runs: u32,
    pub(crate) held: Held,
    pub(crate) outcomes: Outcomes,
    pub(crate) errors: Errors,
    pub(crate) stats: Stats,
    /// The deadlines of runs with a timeout.
    pub(crate) deadlines: crate::deadlines::Deadlines,
    pub(crate) on_outcome: Option<Box<Hook>>,
    /// The dispatch of each channel whose workers run.
    dispatches: Mutex<HashMap<String, Arc<Dispatch>>>,
    /// Counts the queue's starts: the helper threads of an older run leave their work to
    /// the newer run's.
    runs: AtomicU64,
    /// The periodic tasks the scheduler thread fires.
    pub(crate) schedules: Schedules,
    /// The channels with a limit of running tasks, as last read from the store (by the
    /// lease keeper, every third of a lease) or set here: a recorded outcome of theirs wakes
    /// an idle worker, since it frees a slot.
    limited: Mutex<HashSet<String>>,
    /// Whether `limited` names any channel: while none is (the usual case), a worker's
    /// look at it per task takes no lock that every worker shares.
    any_limited: AtomicBool,
    /// How long each channel's finished tasks are kept (the pruner thread reads it).
    pub(crate) kept: crate::retention::Kept,
    /// This engine, for the handlers' contexts to read parents and their results with
    /// (set once it is shared).
    reads: std::sync::OnceLock<Weak<dyn Reads>>,
}

impl<S: Store> Engine<S> {
    /// Shares `engine` with its handlers' contexts (once it is in an `Arc`).
    pub(crate) fn share(engine: &Arc<Engine<S>>) {
        let weak: Weak<dyn Reads> = Arc::downgrade(engine) as Weak<dyn Reads>;
        let _ = engine.reads.set(weak);
    }

    /// The context of a run of `task` in `channel`, with its cancellation signal.
    pub(crate) fn context(
        &self,
        task: &simplepyq_core::Task,
        channel: &Arc<str>,
        cancel: crate::context::CancelToken,
    ) -> crate::TaskContext {
        crate::TaskContext::new(task, channel, cancel, self.id, self.reads())
    }

    /// What a handler's context reads the store through.
    fn reads(&self) -> Weak<dyn Reads> {
        self.reads
            .get()
            .cloned()
            .unwrap_or_else(|| Weak::<Engine<S>>::new() as Weak<dyn Reads>)
    }
}

impl<S: Store> Reads for Engine<S> {
    fn parents(&self, id: TaskId) -> Result<Vec<TaskId>> {
        self.store.parents(id)
    }

    fn result(&self, id: TaskId) -> Result<Option<Vec<u8>>> {
        self.store.result(id)
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for Engine<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("store", &self.store)
            .field("lease", &self.lease)
            .field("poll_interval", &self.poll_interval)
            .field("max_lost_runs", &self.max_lost_runs)
            .finish_non_exhaustive()
    }
}

/// The settings an engine is built with.
pub(crate) struct Settings {
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) lease: Duration,
    pub(crate) poll_interval: Duration,
    pub(crate) max_lost_runs: u32,
    pub(crate) on_outcome: Option<Box<Hook>>,
    /// How long finished tasks are kept, for channels that do not say.
    pub(crate) retention: crate::retention::Retention,
}

impl<S> Engine<S> {
    pub(crate) fn new(store: S, settings: Settings) -> Self {
        static QUEUES: AtomicU64 = AtomicU64::new(0);
        Engine {
            id: QUEUES.fetch_add(1, Ordering::Relaxed),
            store,
            clock: settings.clock,
            lease: settings.lease,
            poll_interval: settings.poll_interval,
            max_lost_runs: settings.max_lost_runs,
            held: Held::default(),
            outcomes: Outcomes::default(),
            errors: Errors::default(),
            stats: Stats::default(),
            deadlines: crate::deadlines::Deadlines::default(),
            on_outcome: settings.on_outcome,
            dispatches: Mutex::new(HashMap::new()),
            runs: AtomicU64::new(0),
            schedules: Schedules::default(),
            limited: Mutex::new(HashSet::new()),
            any_limited: AtomicBool::new(false),
            kept: crate::retention::Kept::new(settings.retention),
            reads: std::sync::OnceLock::new(),
        }
    }

    /// Notes which channels have a limit of running tasks, from the store's `flows`.
    pub(crate) fn note_flows(&self, flows: &BTreeMap<String, Flow>) {
        let mut set = self.limited.lock();
        *set = flows
            .iter()
            .filter(|(_, f)| f.max_running.is_some())
            .map(|(c, _)| c.clone())
            .collect();
        self.any_limited.store(!set.is_empty(), Ordering::Release);
    }

    /// Notes whether `channel` has a limit of running tasks (set by this queue).
    pub(crate) fn note_limited(&self, channel: &str, limited: bool) {
        let mut set = self.limited.lock();
        if limited {
            set.insert(channel.to_owned());
        } else {
            set.remove(channel);
        }
        self.any_limited.store(!set.is_empty(), Ordering::Release);
    }

    /// Whether `channel` has a limit of running tasks, as last seen.
    pub(crate) fn is_limited(&self, channel: &str) -> bool {
        self.any_limited.load(Ordering::Acquire) && self.limited.lock().contains(channel)
    }

    /// Begins a new run; returns its number.
    pub(crate) fn next_run(&self) -> u64 {
        self.runs.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// The number of the latest run.
    pub(crate) fn current_run(&self) -> u64 {
        self.runs.load(Ordering::SeqCst)
    }

    pub(crate) fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Lets claims go (recorded, given back, or abandoned). Once none is held, the recorder
    /// of a stopped run is woken to see that it may end.
    pub(crate) fn let_go(&self, claims: &[Claim]) {
        if self.held.remove(claims) {
            self.outcomes.wake();
        }
    }

    /// Tells the helper threads of the run of `signal` that it stops: the signal first, then
    /// the wake-ups, so that a recorder woken here sees the stop.
    pub(crate) fn stop_run(&self, signal: &StopSignal) {
        signal.stop();
        self.schedules.poke();
        self.outcomes.stopping(true);
        // run_until_complete waits on the held claims: let it see the stop.
        self.held.bump();
    }

    /// Registers the dispatch of a channel whose workers start.
    pub(crate) fn serve(&self, channel: &str, dispatch: Arc<Dispatch>) {
        self.dispatches.lock().insert(channel.to_owned(), dispatch);
    }

    /// Forgets the dispatch of a channel whose workers stop, if it is still `dispatch`: a
    /// channel of the same name added since keeps its own.
    pub(crate) fn unserve(&self, channel: &str, dispatch: &Arc<Dispatch>) {
        let mut dispatches = self.dispatches.lock();
        if dispatches
            .get(channel)
            .is_some_and(|d| Arc::ptr_eq(d, dispatch))
        {
            dispatches.remove(channel);
        }
    }

    /// The channels whose workers run here.
    pub(crate) fn served(&self) -> Vec<String> {
        self.dispatches.lock().keys().cloned().collect()
    }

    /// Takes task `id` out of the tasks a channel here claimed and has not started, if it is
    /// one of them (see [`Dispatch::take`]).
    pub(crate) fn take_unstarted(
        &self,
        id: simplepyq_core::TaskId,
    ) -> Option<simplepyq_core::Task> {
        self.dispatches.lock().values().find_map(|d| d.take(id))
    }

    /// Wakes idle workers of `channel`, if it has any here.
    pub(crate) fn wake(&self, channel: &str, all: bool) {
        if let Some(d) = self.dispatches.lock().get(channel) {
            d.notify(all);
        }
    }

    /// Wakes the idle workers of every channel, e.g. after leases were recovered.
    pub(crate) fn wake_all(&self) {
        for d in self.dispatches.lock().values() {
            d.notify(true);
        }
    }
}

/// Runs a call into the store (or the clock), turning a panic in it (a bug in a custom
/// backend) into an error, so that no flag or thread of the runtime is left behind by it.
pub(crate) fn guarded<T>(call: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(call)).unwrap_or_else(|panic| {
        Err(Error::Backend {
            backend: "store",
            source: format!("a store call panicked: {}", report::panic_message(&*panic)).into(),
        })
    })
}

/// Storage errors that workers met and could not return to a caller.
#[derive(Debug, Default)]
pub(crate) struct Errors {
    last: Mutex<Option<String>>,
    /// An error no retry will cure (a damaged file, one that cannot be written, an async
    /// channel whose runtime shut down), for `run_until_complete` to return instead of
    /// waiting forever.
    lasting: Mutex<Option<Error>>,
}

impl Errors {
    /// Keeps `e`, traced.
    pub(crate) fn record(&self, e: &Error) {
        report::trace_store_error(e);
        *self.last.lock() = Some(e.to_string());
        if matches!(
            e,
            Error::Corrupt { .. } | Error::ReadOnly { .. } | Error::InvalidConfig(_)
        ) {
            *self.lasting.lock() = e.try_clone();
        }
    }

    pub(crate) fn last(&self) -> Option<String> {
        self.last.lock().clone()
    }

    pub(crate) fn take_lasting(&self) -> Option<Error> {
        self.lasting.lock().take()
    }
}

/// Counters of what the runtime did beside running handlers.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) released: AtomicU64,
    pub(crate) lease_lost: AtomicU64,
    pub(crate) unrecorded: AtomicU64,
    pub(crate) recovered: AtomicU64,
    pub(crate) timed_out: AtomicU64,
}

impl Stats {
    pub(crate) fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// The counters, with `stuck` thread handlers running past their timeout now.
    pub(crate) fn snapshot(&self, stuck: u64) -> QueueStats {
        QueueStats {
            released: self.released.load(Ordering::Relaxed),
            lease_lost: self.lease_lost.load(Ordering::Relaxed),
            unrecorded: self.unrecorded.load(Ordering::Relaxed),
            recovered: self.recovered.load(Ordering::Relaxed),
            timed_out: self.timed_out.load(Ordering::Relaxed),
            stuck,
        }
    }
}

/// Exponential pauses: from `start`, doubling up to `max`.
#[derive(Debug)]
pub(crate) struct Pause {
    next: Duration,
    start: Duration,
    max: Duration,
}

impl Pause {
    pub(crate) fn new(start: Duration, max: Duration) -> Self {
        Pause {
            next: start,
            start,
            max,
        }
    }

    /// Pauses after storage errors: 10 ms doubling to 1 s.
    pub(crate) fn errors() -> Self {
        Pause::new(Duration::from_millis(10), Duration::from_secs(1))
    }

    pub(crate) fn next(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub(crate) fn reset(&mut self) {
        self.next = self.start;
    }
}
