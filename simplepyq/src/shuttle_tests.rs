//! Deterministic concurrency tests of the runtime's meeting points, under shuttle: its
//! scheduler runs the threads of a scenario in one random interleaving per iteration (and
//! reports the seed of a failing one), over the runtime's own code built on shuttle's locks
//! (`crate::sync`). Shuttle rather than loom: the scenarios run whole worker loops over a
//! store, whose state space loom would enumerate exhaustively and never finish; and loom
//! has no timed waits, which the dispatcher uses.
//!
//! A dropped queue begins its stop as `stop` does (the same function) and only does not
//! wait for its workers, so `stop_racing_a_claim` covers a drop racing a claim too.
//!
//! Run them with `RUSTFLAGS="--cfg shuttle" cargo test -p simplepyq --features memory --lib
//! shuttle` (`.ci/run` does, in its own target folder).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use shuttle::thread;
use simplepyq_core::transition::DEFAULT_MAX_LOST_RUNS;
use simplepyq_core::{
    AdminStore, Claim, ClaimStore, Counts, Error, InspectStore, ListFilter, NewTask, Outcome,
    OutcomeStore, Result, ScheduleStore, Status, StoreExt, SystemClock, Task, TaskId, Timestamp,
};
use simplepyq_memory::MemoryStore;

use crate::channel_work::ChannelWork;
use crate::dispatch::Dispatch;
use crate::engine::{Engine, Settings};
use crate::handler::erase;
use crate::options::Backoff;
use crate::runner::Runner;
use crate::signal::StopSignal;
use crate::sync::Mutex;
use crate::worker;
use crate::{leases, recorder};

const ITERATIONS: usize = 2_000;
const TASKS: u32 = 4;
const WORKERS: usize = 2;

/// A memory store whose `finish_many` fails while `failing` is set.
#[derive(Debug, Default)]
struct Store2 {
    inner: MemoryStore,
    failing: AtomicBool,
}

impl ClaimStore for Store2 {
    fn enqueue(&self, tasks: &[NewTask], now: Timestamp) -> Result<Vec<TaskId>> {
        self.inner.enqueue(tasks, now)
    }

    fn claim(&self, c: &str, n: usize, now: Timestamp, until: Timestamp) -> Result<Vec<Task>> {
        self.inner.claim(c, n, now, until)
    }

    fn next_wakeup(&self, c: &str) -> Result<Option<Timestamp>> {
        self.inner.next_wakeup(c)
    }
}

impl OutcomeStore for Store2 {
    fn extend_leases(&self, claims: &[Claim], until: Timestamp) -> Result<usize> {
        self.inner.extend_leases(claims, until)
    }

    fn finish_many(&self, r: &[(Claim, Outcome)], now: Timestamp) -> Result<Vec<Result<Status>>> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(Error::Full {
                backend: "test",
                message: "injected".into(),
            });
        }
        self.inner.finish_many(r, now)
    }

    fn release(&self, claims: &[Claim], now: Timestamp) -> Result<usize> {
        self.inner.release(claims, now)
    }

    fn recover_expired(&self, now: Timestamp, max_lost_runs: u32) -> Result<usize> {
        self.inner.recover_expired(now, max_lost_runs)
    }

    fn mark_stuck(&self, claim: Claim, since: Timestamp) -> Result<bool> {
        self.inner.mark_stuck(claim, since)
    }
}

impl AdminStore for Store2 {
    fn clear_failed(&self, c: Option<&str>) -> Result<usize> {
        self.inner.clear_failed(c)
    }

    fn requeue_failed(&self, c: Option<&str>, r: Option<u32>, now: Timestamp) -> Result<usize> {
        self.inner.requeue_failed(c, r, now)
    }

    fn remove_channel(&self, c: &str, now: Timestamp) -> Result<usize> {
        self.inner.remove_channel(c, now)
    }

    fn purge_batch(&self, s: Status, c: Option<&str>, before: Timestamp) -> Result<usize> {
        self.inner.purge_batch(s, c, before)
    }

    fn cancel(&self, id: TaskId, now: Timestamp) -> Result<()> {
        self.inner.cancel(id, now)
    }
}

impl InspectStore for Store2 {
    fn channels(&self) -> Result<Vec<String>> {
        self.inner.channels()
    }

    fn counts(&self, c: Option<&str>) -> Result<Counts> {
        self.inner.counts(c)
    }

    fn get(&self, id: TaskId) -> Result<Option<Task>> {
        self.inner.get(id)
    }

    fn result(&self, id: TaskId) -> Result<Option<Vec<u8>>> {
        self.inner.result(id)
    }

    fn parents(&self, id: TaskId) -> Result<Vec<TaskId>> {
        self.inner.parents(id)
    }

    fn list(&self, filter: &ListFilter) -> Result<Vec<Task>> {
        self.inner.list(filter)
    }

    fn totals(&self) -> Result<std::collections::BTreeMap<String, simplepyq_core::Totals>> {
        self.inner.totals()
    }

    fn stuck(&self, channel: Option<&str>) -> Result<Vec<simplepyq_core::Stuck>> {
        self.inner.stuck(channel)
    }
}

impl ScheduleStore for Store2 {
    fn fire_schedule(
        &self,
        name: &str,
        at: Timestamp,
        task: &NewTask,
        now: Timestamp,
    ) -> Result<Option<TaskId>> {
        self.inner.fire_schedule(name, at, task, now)
    }

    fn last_fired(&self, name: &str) -> Result<Option<Timestamp>> {
        self.inner.last_fired(name)
    }
}

impl simplepyq_core::FlowStore for Store2 {
    fn set_paused(&self, channel: &str, paused: bool) -> Result<bool> {
        self.inner.set_paused(channel, paused)
    }

    fn set_max_running(&self, channel: &str, max: Option<u32>) -> Result<bool> {
        self.inner.set_max_running(channel, max)
    }

    fn set_max_running_per_key(&self, channel: &str, max: u32) -> Result<bool> {
        self.inner.set_max_running_per_key(channel, max)
    }

    fn set_rate(&self, channel: &str, rate: Option<simplepyq_core::Rate>) -> Result<bool> {
        self.inner.set_rate(channel, rate)
    }

    fn set_rate_per_key(&self, channel: &str, rate: Option<simplepyq_core::Rate>) -> Result<bool> {
        self.inner.set_rate_per_key(channel, rate)
    }

    fn flows(&self) -> Result<std::collections::BTreeMap<String, simplepyq_core::Flow>> {
        self.inner.flows()
    }
}

/// One scenario's queue parts: an engine over `TASKS` pending tasks, and a channel whose
/// handler notes each start, and whether the stop had been seen to end by then.
struct Scene {
    engine: Arc<Engine<Store2>>,
    channel: Arc<ChannelWork>,
    dispatch: Arc<Dispatch>,
    ids: Vec<TaskId>,
    starts: Arc<Mutex<Vec<(u32, bool)>>>,
    stopped: Arc<AtomicBool>,
}

impl Scene {
    fn new() -> Self {
        Scene::with_handler(|_| {})
    }

    /// A scene whose handler also runs `then` after noting its start.
    fn with_handler(then: impl Fn(u32) + Send + Sync + 'static) -> Self {
        let settings = Settings {
            clock: Arc::new(SystemClock),
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_millis(10),
            max_lost_runs: DEFAULT_MAX_LOST_RUNS,
            on_outcome: None,
            retention: crate::Retention::default(),
        };
        let engine = Arc::new(Engine::new(Store2::default(), settings));
        let now = engine.now();
        let ids = (0..TASKS)
            .map(|n| {
                let args = rmp_serde::to_vec_named(&n).expect("encode");
                engine
                    .store
                    .enqueue_one(NewTask::new("c", args), now)
                    .expect("enqueue")
            })
            .collect();
        let starts = Arc::new(Mutex::new(Vec::new()));
        let stopped = Arc::new(AtomicBool::new(false));
        let (s, st) = (Arc::clone(&starts), Arc::clone(&stopped));
        let channel = Arc::new(ChannelWork {
            name: Arc::from("c"),
            workers: WORKERS,
            runner: Runner::Threads(erase(move |n: u32| {
                s.lock().push((n, st.load(Ordering::SeqCst)));
                thread::yield_now();
                then(n);
                Ok(())
            })),
            backoff: Backoff::Immediate,
            timeout: None,
            average_run: AtomicU64::new(0),
            max_reserve: engine.store.max_reserve(),
        });
        let dispatch = Arc::new(Dispatch::default());
        engine.serve("c", Arc::clone(&dispatch));
        Scene {
            engine,
            channel,
            dispatch,
            ids,
            starts,
            stopped,
        }
    }

    /// As if the handler's runs had been timed at half the reserve's time: each claim takes
    /// a reserve of 2 tasks beyond the idle workers, and a worker claims again before the
    /// last handed task runs (the early claims of [`Dispatch::turn`]).
    fn with_reserve(self) -> Self {
        self.channel.average_run.store(2_500_000, Ordering::SeqCst);
        assert_eq!(self.channel.reserve(), 2);
        self
    }

    fn spawn_workers(&self) -> Vec<thread::JoinHandle<()>> {
        (0..WORKERS)
            .map(|_| {
                let (e, c, d) = (
                    Arc::clone(&self.engine),
                    Arc::clone(&self.channel),
                    Arc::clone(&self.dispatch),
                );
                thread::spawn(move || match &c.runner {
                    Runner::Threads(handler) => worker::work(&e, &c, handler, &d),
                    #[cfg(feature = "tokio")]
                    Runner::Async(_) => unreachable!("a thread channel"),
                })
            })
            .collect()
    }

    /// What a stop does first: no handler starts from now on, and the tasks claimed and not
    /// started are given back. Returns the tasks whose handlers may still start (a worker
    /// took them before the stop).
    fn stop(&self) -> HashSet<TaskId> {
        let unstarted = self.dispatch.stop();
        let taken: HashSet<TaskId> = self.engine.held.running().into_iter().collect();
        self.stopped.store(true, Ordering::SeqCst);
        leases::give_back(&self.engine, &unstarted);
        taken
    }

    /// After the workers ended: checks what became of every task.
    fn check(&self, taken: &HashSet<TaskId>, removed: bool) {
        let starts = self.starts.lock().clone();
        let mut per_task: HashMap<u32, usize> = HashMap::new();
        for (n, after_stop) in &starts {
            *per_task.entry(*n).or_default() += 1;
            if *after_stop {
                let id = self.ids[*n as usize];
                assert!(
                    taken.contains(&id),
                    "task {n} started after the stop: {starts:?}"
                );
            }
        }
        assert!(
            per_task.values().all(|&k| k == 1),
            "a task ran twice: {starts:?}"
        );
        assert!(!self.engine.held.snapshot().1, "claims left held");
        for (n, id) in self.ids.iter().enumerate() {
            let task = self.engine.store.get(*id).expect("get");
            let ran = per_task.contains_key(&(n as u32));
            match (task, removed) {
                (None, true) => {}
                (Some(t), false) if ran => assert_eq!(t.state.status, Status::Done, "{t:?}"),
                (Some(t), false) => assert_eq!(
                    (t.state.status, t.state.attempts),
                    (Status::Pending, 0),
                    "task {n} never started: {t:?}"
                ),
                (t, _) => panic!("task {n}: {t:?}"),
            }
        }
    }
}

/// A stop racing the workers' claims and hand-overs: no handler starts once it began but
/// those a worker had taken; every task is done once or pending with no attempt used.
#[test]
fn stop_racing_a_claim() {
    shuttle::check_random(|| race_a_claim(false), ITERATIONS);
}

/// `remove_channel` racing a claim: the channel's dispatch stops, its unstarted claims are
/// given back, its tasks deleted; no handler starts but those already taken, and their
/// outcomes are dropped as lease-lost, not recorded on a deleted task.
#[test]
fn remove_racing_a_claim() {
    shuttle::check_random(|| race_a_claim(true), ITERATIONS);
}

/// A stop racing the workers of a channel limited to one running task, each of which
/// records its outcome and claims its next task in one call
/// (`OutcomeStore::finish_and_claim`), outside any claim turn: no handler starts once the
/// stop began but those a worker had taken; every task is done once or pending with no
/// attempt used.
#[test]
fn stop_racing_a_claim_with_an_outcome() {
    shuttle::check_random(|| race_a_claim_limited(false, true), ITERATIONS);
}

/// [`stop_racing_a_claim`] with claims that take a reserve, so that workers claim again
/// while handed tasks are left.
#[test]
fn stop_racing_an_early_claim() {
    shuttle::check_random(
        || race_in(Scene::new().with_reserve(), false, false),
        ITERATIONS,
    );
}

/// Two workers claim and run while the test stops the channel (and removes it, if
/// `remove`), as `stop` and `remove_channel` do.
fn race_a_claim(remove: bool) {
    race_a_claim_limited(remove, false);
}

/// [`race_a_claim`], the channel limited to one running task if `limited`.
fn race_a_claim_limited(remove: bool, limited: bool) {
    race_in(Scene::new(), remove, limited);
}

/// [`race_a_claim_limited`] in `scene`.
fn race_in(scene: Scene, remove: bool, limited: bool) {
    if limited {
        let store = &scene.engine.store;
        simplepyq_core::FlowStore::set_max_running(store, "c", Some(1)).expect("limit");
        scene.engine.note_limited("c", true);
    }
    let workers = scene.spawn_workers();
    thread::yield_now();
    let taken = scene.stop();
    if remove {
        scene.engine.unserve("c", &scene.dispatch);
        let now = scene.engine.now();
        scene.engine.store.remove_channel("c", now).expect("remove");
    }
    for w in workers {
        w.join().expect("worker");
    }
    scene.check(&taken, remove);
}

/// No worker stays idle while a due task of its channel waits: every handler waits until
/// `WORKERS` handlers have started, which happens only if each worker gets a task while
/// the others run. Shuttle's timed waits never time out, so a worker left waiting for a
/// wake-up that does not come (one that arrived while another claimed, and was claimed for
/// by nobody) waits for ever, and shuttle reports the deadlock with its seed.
#[test]
fn no_worker_idles_while_a_due_task_waits() {
    shuttle::check_random(|| no_worker_idles(false), ITERATIONS);
}

/// [`no_worker_idles_while_a_due_task_waits`] with claims that take a reserve, so that
/// workers claim again while handed tasks are left.
#[test]
fn no_worker_idles_while_a_due_task_waits_with_early_claims() {
    shuttle::check_random(|| no_worker_idles(true), ITERATIONS);
}

/// The scene of [`no_worker_idles_while_a_due_task_waits`], its claims taking a reserve if
/// `reserve`.
fn no_worker_idles(reserve: bool) {
    let started = Arc::new((Mutex::new(0usize), crate::sync::Condvar::default()));
    let s = Arc::clone(&started);
    let scene = Scene::with_handler(move |_| {
        let (count, cv) = &*s;
        let mut n = count.lock();
        *n += 1;
        cv.notify_all();
        while *n < WORKERS {
            cv.wait(&mut n);
        }
    });
    let scene = if reserve { scene.with_reserve() } else { scene };
    let workers = scene.spawn_workers();
    {
        let (count, cv) = &*started;
        let mut n = count.lock();
        while *n < TASKS as usize {
            cv.wait(&mut n);
        }
    }
    let taken = scene.stop();
    for w in workers {
        w.join().expect("worker");
    }
    scene.check(&taken, false);
}

/// The recorder thread failing while the queue stops: every outcome handed over is either
/// recorded or reported as unrecorded, never dropped silently; the recorder ends once
/// nothing is held, and nothing is left held.
#[test]
fn recorder_failing_during_stop() {
    shuttle::check_random(
        || {
            let scene = Scene::new();
            let signal = Arc::new(StopSignal::default());
            scene.engine.outcomes.open();
            let run = scene.engine.next_run();
            let (e, s) = (Arc::clone(&scene.engine), Arc::clone(&signal));
            let recorder = thread::spawn(move || recorder::run(&e, &s, run));
            let workers = scene.spawn_workers();
            thread::yield_now();
            scene.engine.store.failing.store(true, Ordering::SeqCst);
            scene.engine.stop_run(&signal);
            let taken = scene.stop();
            for w in workers {
                w.join().expect("worker");
            }
            recorder.join().expect("recorder");
            assert!(!scene.engine.held.snapshot().1, "claims left held");
            let unrecorded: HashSet<TaskId> = scene
                .engine
                .outcomes
                .take_unrecorded()
                .into_iter()
                .collect();
            let starts = scene.starts.lock().clone();
            for (n, after_stop) in &starts {
                let id = scene.ids[*n as usize];
                assert!(
                    !after_stop || taken.contains(&id),
                    "{n} started after the stop"
                );
                let t = scene.engine.store.get(id).expect("get").expect("exists");
                let recorded = t.state.status == Status::Done;
                assert!(
                    recorded != unrecorded.contains(&id),
                    "task {n}: recorded {recorded}, reported unrecorded {}: {t:?}",
                    unrecorded.contains(&id)
                );
            }
        },
        ITERATIONS,
    );
}
