//! The worker side of a queue: its channels, and its lifecycle (`Stopped → Running →
//! Stopping → Stopped`) with the threads of each run.

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use simplepyq_core::{Claim, Error, Result, Status, Store, Task, TaskId, Watch};

use crate::channel_work::ChannelWork;
use crate::context::CancelReason;
use crate::dispatch::Dispatch;
use crate::engine::{Engine, guarded};
use crate::leases;
use crate::periodic;
use crate::pruner;
use crate::recorder;
use crate::report::StopReport;
use crate::runner::Runner;
use crate::signal::StopSignal;
use crate::worker;

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
    signal: Arc<StopSignal>,
    helpers: Vec<JoinHandle<()>>,
    /// The store's news of work from other processes, while the run lasts.
    watch: Option<Watch>,
}

impl Run {
    /// Keeps the threads of a channel removed while running until they end; joins those
    /// of earlier removals that ended, so that a queue adding and removing channels for
    /// ever does not keep every thread's stack.
    fn retire(&mut self, threads: Vec<JoinHandle<()>>) {
        let (ended, running): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retired)
            .into_iter()
            .partition(JoinHandle::is_finished);
        for t in ended {
            let _ = t.join();
        }
        self.retired = running;
        self.retired.extend(threads);
    }
}

/// Whether a stop waits for another thread's stop under way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wait {
    /// Until it ends.
    ForOtherStop,
    /// Not at all: a handler (which that stop waits for), or a dropped queue.
    Never,
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

/// The channels of a queue and its lifecycle, shared by the queue and the calls that wait
/// for it on another thread (the async ones).
pub(crate) struct Workers<S> {
    pub(crate) engine: Arc<Engine<S>>,
    registry: Mutex<Registry>,
    /// Signalled when a stop ends, for callers that wait for another thread's stop.
    stopped: Condvar,
}

impl<S: std::fmt::Debug> std::fmt::Debug for Workers<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("engine", &self.engine)
            .field("registry", &*self.registry.lock())
            .finish()
    }
}

impl<S: Store> Workers<S> {
    pub(crate) fn new(engine: Engine<S>) -> Self {
        let engine = Arc::new(engine);
        Engine::share(&engine);
        Workers {
            engine,
            registry: Mutex::new(Registry::default()),
            stopped: Condvar::new(),
        }
    }

    /// Adds a channel; its workers start at once if the queue runs.
    pub(crate) fn add(&self, work: ChannelWork) -> Result<()> {
        let mut reg = self.registry.lock();
        if reg.channels.contains_key(&*work.name) {
            return Err(Error::DuplicateChannel(work.name.to_string()));
        }
        let work = Arc::new(work);
        if let Lifecycle::Running(run) = &mut reg.life {
            let crew = self.spawn_crew(&work)?;
            run.crews.insert(work.name.to_string(), crew);
        }
        reg.channels.insert(work.name.to_string(), work);
        Ok(())
    }

    /// Removes a channel: once this returns, no handler of it starts here; its tasks
    /// claimed and not started are given back.
    pub(crate) fn remove(&self, name: &str) {
        let crew = {
            let mut reg = self.registry.lock();
            reg.channels.remove(name);
            match &mut reg.life {
                Lifecycle::Running(run) => run.crews.remove(name).map(|crew| {
                    run.retire(crew.threads);
                    crew.dispatch
                }),
                _ => None,
            }
        };
        if let Some(dispatch) = crew {
            leases::give_back(&self.engine, &self.halt_crew(name, &dispatch));
        }
    }

    /// The stop of a dropped queue: as every stop, no handler starts from now on and tasks
    /// claimed ahead are given back; the threads are not waited for, nor a stop already
    /// under way in another thread (which ends by itself).
    pub(crate) fn stop_detached(&self) {
        if let Some((run, _)) = self.begin_stop(None, Wait::Never, None) {
            // Detached: the threads end by themselves once nothing is held.
            drop(run);
            self.end_stop();
        }
    }

    /// Ends a stop: the queue is `Stopped`, and the callers waiting for that are woken.
    fn end_stop(&self) {
        let mut reg = self.registry.lock();
        reg.life = Lifecycle::Stopped;
        self.stopped.notify_all();
    }

    /// Starts the workers: see [`SimplePyQ::start`]. `own` is the claim of the handler
    /// it is called from, if any: that one cannot wait for a stop under way (the stop
    /// waits for it), and gets [`Error::Stopped`] instead.
    pub(crate) fn start(&self, own: Option<Claim>) -> Result<()> {
        let mut reg = self.registry.lock();
        loop {
            match reg.life {
                Lifecycle::Running(_) => return Ok(()),
                Lifecycle::Stopping if own.is_some() => return Err(Error::Stopped),
                Lifecycle::Stopping => self.stopped.wait(&mut reg),
                Lifecycle::Stopped => break,
            }
        }
        self.engine.outcomes.stopping(false);
        let mut run = Run {
            number: self.engine.next_run(),
            crews: HashMap::new(),
            retired: Vec::new(),
            signal: Arc::new(StopSignal::default()),
            helpers: Vec::new(),
            watch: None,
        };
        match self.spawn_run(&reg, &mut run) {
            Ok(()) => {
                reg.life = Lifecycle::Running(run);
                drop(reg);
                // Store calls, which may wait for seconds, are made without the registry's
                // lock: `add_channel`, `stop` and the rest are not held up by them. A
                // failure is not fatal: the lease keeper recovers expired leases again soon.
                if let Err(e) = guarded(|| leases::renew_and_recover(&self.engine)) {
                    self.engine.errors.record(&e);
                }
                Ok(())
            }
            Err(e) => {
                // Stop what did start, as any stop does, before waiting for it.
                reg.life = Lifecycle::Stopping;
                drop(reg);
                self.halt(&run, None);
                self.finish_stop(run, None, own);
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
        let (engine, signal) = (Arc::clone(&self.engine), Arc::clone(&run.signal));
        let started = engine.now();
        let scheduler = thread::Builder::new()
            .name("simplepyq-scheduler".into())
            .spawn(move || periodic::run(&engine, &signal, started))
            .map_err(Error::Spawn)?;
        run.helpers.push(scheduler);
        let (engine, signal) = (Arc::clone(&self.engine), Arc::clone(&run.signal));
        let pruner = thread::Builder::new()
            .name("simplepyq-pruner".into())
            .spawn(move || pruner::prune(&engine, &signal))
            .map_err(Error::Spawn)?;
        run.helpers.push(pruner);
        if cfg!(feature = "metrics") {
            let (engine, signal) = (Arc::clone(&self.engine), Arc::clone(&run.signal));
            let gauges = thread::Builder::new()
                .name("simplepyq-gauges".into())
                .spawn(move || leases::gauge(&engine, &signal))
                .map_err(Error::Spawn)?;
            run.helpers.push(gauges);
        }
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
        // An async channel has one thread, which claims for its futures.
        let threads = match work.runner {
            Runner::Threads(_) => work.workers,
            #[cfg(feature = "tokio")]
            Runner::Async(_) => 1,
        };
        for i in 0..threads {
            let engine = Arc::clone(&self.engine);
            let (w, dispatch) = (Arc::clone(work), Arc::clone(&crew.dispatch));
            let spawned = thread::Builder::new()
                .name(format!("simplepyq-{}-{i}", work.name))
                .spawn(move || match &w.runner {
                    Runner::Threads(handler) => worker::work(&engine, &w, handler, &dispatch),
                    #[cfg(feature = "tokio")]
                    Runner::Async(runner) => {
                        crate::spawner::work(&engine, &w, runner, &dispatch);
                    }
                });
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
    /// running, or if another thread's stop was under way (after waiting for it to end, as
    /// `wait` says).
    /// With `only`, stops that run only: a run started since by someone else is theirs.
    fn begin_stop(
        &self,
        only: Option<u64>,
        wait: Wait,
        deadline: Option<Instant>,
    ) -> Option<(Run, usize)> {
        let mut reg = self.registry.lock();
        let run = loop {
            match std::mem::replace(&mut reg.life, Lifecycle::Stopping) {
                Lifecycle::Running(run) if only.is_none_or(|n| n == run.number) => break run,
                Lifecycle::Stopping if wait == Wait::ForOtherStop => self.stopped.wait(&mut reg),
                other => {
                    reg.life = other;
                    return None;
                }
            }
        };
        drop(reg);
        let released = self.halt(&run, deadline);
        Some((run, released))
    }

    /// The first step of every stop: tells `run`'s helpers, and stops its channels'
    /// dispatches, so that no handler starts from now on; gives back the tasks claimed and
    /// not started, waiting for the store until `deadline` at most (the rest are given back
    /// in the background). Returns how many were given back by then.
    fn halt(&self, run: &Run, deadline: Option<Instant>) -> usize {
        self.engine.stop_run(&run.signal);
        let unstarted: Vec<Task> = run
            .crews
            .iter()
            .flat_map(|(name, crew)| self.halt_crew(name, &crew.dispatch))
            .collect();
        let Some(deadline) = deadline else {
            return leases::give_back(&self.engine, &unstarted);
        };
        if unstarted.is_empty() {
            return 0;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let engine = Arc::clone(&self.engine);
        let tasks = unstarted.clone();
        let spawned = thread::Builder::new()
            .name("simplepyq-give-back".into())
            .spawn(move || {
                let _ = tx.send(leases::give_back(&engine, &tasks));
            });
        match spawned {
            Ok(_) => rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or(0),
            Err(_) => leases::give_back(&self.engine, &unstarted),
        }
    }

    /// Stops one channel's dispatch: no handler of it starts from now on. Returns its tasks
    /// claimed and not started, to be given back.
    fn halt_crew(&self, name: &str, dispatch: &Arc<Dispatch>) -> Vec<Task> {
        self.engine.unserve(name, dispatch);
        dispatch.stop()
    }

    /// Ends a stop begun by [`Self::begin_stop`]: waits for the running handlers, this
    /// run's and any that outlived an earlier `stop_timeout` (until `deadline`, if any; those
    /// still running then are left to finish, their threads detached), then for every
    /// outcome handed over to be recorded or given up on. The keeper and the recorder go on
    /// while handlers still run, and are joined otherwise. The queue is then `Stopped`.
    /// Returns the tasks whose handlers still run, and those whose outcome or giving back
    /// the store had not taken by the deadline.
    fn finish_stop(
        &self,
        run: Run,
        deadline: Option<Instant>,
        own: Option<Claim>,
    ) -> (Vec<TaskId>, Vec<TaskId>) {
        let held = &self.engine.held;
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
        // Past the deadline: ask the handlers still running to end early.
        if deadline.is_some() {
            held.cancel(None, CancelReason::Stop);
        }
        // Outcomes handed over are recorded (or, with a failing store, given up on), and
        // tasks claimed ahead given back: until the deadline, if any (a slow store's calls
        // go on in the background then).
        loop {
            let (seen, _) = held.snapshot();
            if held.only_running() || deadline.is_some_and(|d| Instant::now() >= d) {
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
        let unsettled = held.unsettled();
        if running.is_empty() && unsettled.is_empty() {
            // The keeper and the recorder end once nothing is held: wait for them.
            for t in run.helpers {
                let _ = t.join();
            }
        }
        self.end_stop();
        (running, unsettled)
    }

    /// See [`SimplePyQ::stop`].
    pub(crate) fn stop(&self, own: Option<Claim>) -> StopReport {
        self.stop_until(None, own)
    }

    /// See [`SimplePyQ::stop_timeout`].
    pub(crate) fn stop_timeout(&self, timeout: Duration, own: Option<Claim>) -> StopReport {
        self.stop_until(Some(Instant::now() + timeout), own)
    }

    /// Stops, waiting for running handlers until `deadline`, except `own`: the handler the
    /// stop was called from.
    fn stop_until(&self, deadline: Option<Instant>, own: Option<Claim>) -> StopReport {
        // Waiting would stall the runtime that runs the handlers waited for.
        let deadline = if on_current_thread_runtime() {
            Some(Instant::now())
        } else {
            deadline
        };
        // A handler cannot wait for another stop: that stop waits for the handler.
        let wait = if own.is_some() {
            Wait::Never
        } else {
            Wait::ForOtherStop
        };
        let Some((run, released)) = self.begin_stop(None, wait, deadline) else {
            return StopReport::default();
        };
        let (running, unsettled) = self.finish_stop(run, deadline, own);
        StopReport {
            running,
            released,
            unrecorded: self.engine.outcomes.take_unrecorded(),
            unsettled,
        }
    }

    /// See [`SimplePyQ::run_until_complete`]; `own` as for [`Self::start`].
    pub(crate) fn run_until_complete(&self, own: Option<Claim>) -> Result<()> {
        if on_current_thread_runtime() {
            return Err(Error::WouldBlock {
                call: "run_until_complete",
            });
        }
        // It would wait for its own handler to end.
        if own.is_some() {
            return Err(Error::InHandler {
                call: "run_until_complete",
            });
        }
        let channels: Vec<String> = self.registry.lock().channels.keys().cloned().collect();
        if channels.is_empty() {
            return Ok(());
        }
        // Only what this run meets counts.
        self.engine.errors.take_lasting();
        self.start(None)?;
        let Some(number) = self.running_number() else {
            return Err(Error::Stopped);
        };
        let result = loop {
            if let Some(e) = self.engine.errors.take_lasting() {
                break Err(e);
            }
            let quiet = self.engine.held.quiet();
            let (seen, busy) = self.engine.held.snapshot();
            if self.running_number() != Some(number) {
                return Err(Error::Stopped);
            }
            // While a worker here holds a task the channel is not idle: ask the store only
            // when this process holds nothing.
            if !busy {
                match self.idle(&channels) {
                    // Only if nothing changed here meanwhile: a handler of a channel read
                    // later may have enqueued into one read earlier, and finished.
                    Ok(true) if self.engine.held.snapshot().0 == seen => break Ok(()),
                    Ok(_) => {}
                    Err(e) if e.is_retryable() => self.engine.errors.record(&e),
                    Err(e) => break Err(e),
                }
            }
            if busy {
                // Woken when the last claim goes, not at each outcome recorded.
                self.engine
                    .held
                    .wait_quiet(quiet, self.engine.poll_interval);
            } else {
                self.engine.held.wait(seen, self.engine.poll_interval);
            }
        };
        if let Some((run, _)) = self.begin_stop(Some(number), Wait::ForOtherStop, None) {
            self.finish_stop(run, None, None);
        }
        result
    }

    /// How many threads of channels removed from the run under way are kept (not joined).
    #[cfg(all(test, feature = "memory", not(shuttle)))]
    pub(crate) fn retired(&self) -> usize {
        match &self.registry.lock().life {
            Lifecycle::Running(run) => run.retired.len(),
            _ => 0,
        }
    }

    /// The number of the run under way, if the queue runs.
    fn running_number(&self) -> Option<u64> {
        match &self.registry.lock().life {
            Lifecycle::Running(run) => Some(run.number),
            _ => None,
        }
    }

    /// Whether `channel` has a handler here.
    pub(crate) fn has(&self, channel: &str) -> bool {
        self.registry.lock().channels.contains_key(channel)
    }

    /// Whether none of `channels` has a pending, delayed, running or waiting task. A paused
    /// channel's queued tasks are work left too: the run waits for its resume; and so are
    /// tasks waiting for parents (of other channels, or other queues' work).
    fn idle(&self, channels: &[String]) -> Result<bool> {
        for ch in channels {
            if self.engine.store.next_wakeup(ch)?.is_some() {
                return Ok(false);
            }
        }
        // Nothing is due: the paused channels' queued tasks wait for a resume. The settings
        // are read after the wake-ups, so each channel not paused now is looked at again: a
        // resume in between shows there.
        // Each a look at the status's index: a count of every task of the channel (its done
        // tasks too) made the check of each process cost as much as the table.
        let flows = self.engine.store.flows()?;
        for ch in channels {
            let paused = flows.get(ch).is_some_and(|f| f.paused);
            let queued: &[Status] = if paused {
                &[Status::Waiting, Status::Pending, Status::Delayed]
            } else {
                &[Status::Waiting]
            };
            if self.engine.store.has_tasks(ch, queued)? {
                return Ok(false);
            }
            if !paused && self.engine.store.next_wakeup(ch)?.is_some() {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Whether the calling thread drives a current-thread tokio runtime, where a call that waits
/// would stall every future of that runtime.
fn on_current_thread_runtime() -> bool {
    #[cfg(feature = "tokio")]
    {
        use tokio::runtime::{Handle, RuntimeFlavor};
        Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::CurrentThread)
    }
    #[cfg(not(feature = "tokio"))]
    false
}

#[cfg(all(test, feature = "memory", not(shuttle)))]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use crate::SimplePyQ;

    /// A running queue that adds and removes channels for ever (a channel per tenant) keeps
    /// the threads of removed channels only until they end: each removal joins those of
    /// earlier removals that ended. Kept until the next stop, 60 rounds of a 2-worker
    /// channel kept 120 threads' stacks.
    #[test]
    fn removed_channels_threads_are_joined_while_running() {
        let q = SimplePyQ::memory();
        q.start().expect("start");
        let done = Arc::new(AtomicUsize::new(0));
        for round in 0..60 {
            let name = format!("tenant-{round}");
            let d = Arc::clone(&done);
            q.add_channel(
                &name,
                move |_: u32| {
                    d.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                },
                2,
            )
            .expect("add");
            q.enqueue(&name, &0u32).expect("enqueue");
            let t0 = Instant::now();
            while done.load(Ordering::SeqCst) <= round {
                assert!(t0.elapsed() < Duration::from_secs(10), "round {round}");
                std::thread::sleep(Duration::from_millis(1));
            }
            q.remove_channel(&name).expect("remove");
        }
        // Give the last removals' workers time to end, then remove once more to join them.
        let t0 = Instant::now();
        let kept = loop {
            q.add_channel("last", |_: u32| Ok(()), 1).expect("add");
            q.remove_channel("last").expect("remove");
            let kept = q.workers.retired();
            if kept <= 3 || t0.elapsed() > Duration::from_secs(10) {
                break kept;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(kept <= 3, "{kept} threads of removed channels kept");
        q.stop();
    }
}
