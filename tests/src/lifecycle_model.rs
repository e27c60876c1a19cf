//! Random lifecycles: sequences of enqueues, starts, stops (with and without a deadline),
//! drops and process crashes, at random points of real work, on every backend. After every
//! stop, drop or crash, and at the end:
//! - a task whose handler never started has no attempt counted but its lost runs (a run is
//!   lost only in a crash), and is not failed;
//! - no task's handler ever runs twice at once (each lease is live while its handler runs);
//! - after a final run, every task is done: none failed, with the defaults users get
//!   (`retries = 0`), and at most three crashes (the default bound on lost runs).
//!
//! A crash is a queue whose store calls all fail from one moment on (so its threads can no
//! longer claim, renew, record or give back anything) and which is never stopped or
//! dropped: as a killed process, it leaves its tasks to lease recovery.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use proptest::prelude::*;
use simplepyq::{EnqueueOptions, SimplePyQ, Status, TaskId};
use simplepyq_core::Store;

use crate::faults::Flaky;

/// Lease of the queues under test: short, so that crashed queues' tasks come back soon.
const LEASE: Duration = Duration::from_millis(300);
/// How long handlers that start once a stop is about to be called wait, so that each worker
/// starts at most one before the stop begins. 50 ms was too short with every core busy: the
/// stopping thread, descheduled, had not begun the stop when the gate opened, and a worker
/// started a second handler (seen once in four loaded runs: "5 handlers started").
const GATE: Duration = Duration::from_millis(400);

/// Crashes per sequence at most: the default bound on lost runs.
const MAX_CRASHES: usize = 3;

/// One step of a random lifecycle.
#[derive(Clone, Debug)]
pub enum Step {
    /// Enqueue this many tasks.
    Enqueue(u32),
    /// Start the queue.
    Start,
    /// Let it work this many milliseconds.
    Work(u64),
    /// `stop()`.
    Stop,
    /// `stop_timeout` with this many milliseconds.
    StopTimeout(u64),
    /// Drop the queue and build a new one on the store.
    Drop,
    /// Kill the queue's "process" and build a new one on the store.
    Crash,
}

/// A random step.
pub fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (1u32..12).prop_map(Step::Enqueue),
        3 => Just(Step::Start),
        3 => (0u64..15).prop_map(Step::Work),
        2 => Just(Step::Stop),
        1 => (0u64..10).prop_map(Step::StopTimeout),
        1 => Just(Step::Drop),
        1 => Just(Step::Crash),
    ]
}

/// What the handlers saw, across every queue of a sequence.
#[derive(Debug, Default)]
struct Runs {
    /// Starts per task.
    starts: Mutex<HashMap<u64, usize>>,
    /// Handlers running now, per task.
    running: Mutex<HashMap<u64, usize>>,
    /// The most handlers of one task seen running at once.
    overlap: AtomicUsize,
}

type Queue = SimplePyQ<Arc<Flaky<Arc<Box<dyn Store>>>>>;

/// Workers of the channel under test.
const WORKERS: usize = 2;

/// One queue of the sequence, with what its handlers do.
struct Generation {
    queue: Queue,
    flaky: Arc<Flaky<Arc<Box<dyn Store>>>>,
    marks: Arc<Marks>,
}

/// What one queue's handlers did.
#[derive(Debug, Default)]
struct Marks {
    /// Handlers running now.
    running: AtomicUsize,
    /// Set just before a stop or drop is called.
    stopping: AtomicBool,
    /// Handlers that started once `stopping` was set. Only those a worker had taken before
    /// the stop began may: at most one per worker, as each waits at the gate until the stop
    /// surely began.
    late_starts: AtomicUsize,
    /// Closed with `stopping`, opened a while after the stop or drop was called.
    gate_closed: AtomicBool,
    /// Set when the queue's process is killed: its handlers do nothing from then on.
    dead: AtomicBool,
}

impl Generation {
    /// Marks the stop about to be called: handlers that start from now on wait at the gate,
    /// which opens [`GATE`] later, when the stop has surely begun.
    fn stopping(&self) {
        self.marks.gate_closed.store(true, Ordering::SeqCst);
        self.marks.stopping.store(true, Ordering::SeqCst);
        let marks = Arc::clone(&self.marks);
        std::thread::spawn(move || {
            std::thread::sleep(GATE);
            marks.gate_closed.store(false, Ordering::SeqCst);
        });
    }

    /// Checks the late starts, then lets handlers start again.
    fn restart(&self) -> Result<(), String> {
        self.late_starts()?;
        self.marks.gate_closed.store(false, Ordering::SeqCst);
        self.marks.stopping.store(false, Ordering::SeqCst);
        self.marks.late_starts.store(0, Ordering::SeqCst);
        Ok(())
    }

    fn late_starts(&self) -> Result<(), String> {
        let late = self.marks.late_starts.load(Ordering::SeqCst);
        if late > WORKERS {
            return Err(format!("{late} handlers started after a stop began"));
        }
        Ok(())
    }
}

fn generation(store: &Arc<Box<dyn Store>>, runs: &Arc<Runs>) -> Generation {
    let flaky = Arc::new(Flaky::healthy(Arc::clone(store)));
    let queue = SimplePyQ::builder(Arc::clone(&flaky))
        .lease(LEASE)
        .poll_interval(Duration::from_millis(10))
        .build()
        .expect("valid settings");
    let marks = Arc::new(Marks::default());
    let (r, mine) = (Arc::clone(runs), Arc::clone(&marks));
    queue
        .add_channel(
            "m",
            move |n: u64| {
                if mine.dead.load(Ordering::SeqCst) {
                    return Ok(());
                }
                if mine.stopping.load(Ordering::SeqCst) {
                    mine.late_starts.fetch_add(1, Ordering::SeqCst);
                    while mine.gate_closed.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                mine.running.fetch_add(1, Ordering::SeqCst);
                *r.starts.lock().entry(n).or_default() += 1;
                let now = {
                    let mut running = r.running.lock();
                    let k = running.entry(n).or_default();
                    *k += 1;
                    *k
                };
                r.overlap.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_micros(n % 4 * 500));
                *r.running.lock().entry(n).or_default() -= 1;
                mine.running.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            },
            WORKERS,
        )
        .expect("add");
    Generation {
        queue,
        flaky,
        marks,
    }
}

/// Checks the tasks whose handlers never started, while no queue runs. After a crash, such
/// a task may still be `running` under the crashed queue's claim until a queue recovers it.
/// A task that is `running` is given a moment to be given back or to start.
fn check_unstarted(
    store: &dyn Store,
    ids: &[(TaskId, u64)],
    runs: &Runs,
    crashed: bool,
) -> Result<(), String> {
    for (id, n) in ids {
        let started = || runs.starts.lock().contains_key(n);
        let state = || -> Result<simplepyq_core::TaskState, String> {
            let task = store.get(*id).map_err(|e| e.to_string())?;
            Ok(task.ok_or("a task vanished")?.state)
        };
        if started() {
            continue;
        }
        let mut s = state()?;
        if s.status == Status::Running && crashed {
            continue;
        }
        // A claim in flight when a queue was dropped is given back by its worker once the
        // claim returns; a task taken just before a stop starts its handler at once (once
        // through the gate).
        let t0 = Instant::now();
        while s.status == Status::Running && t0.elapsed() < GATE + Duration::from_millis(300) {
            std::thread::sleep(Duration::from_millis(1));
            if started() {
                break;
            }
            s = state()?;
        }
        if started() {
            continue;
        }
        if s.status != Status::Pending || s.attempts != s.lost_runs {
            return Err(format!("task {n} never started, yet: {s:?}"));
        }
    }
    Ok(())
}

/// Runs `steps` on `store`; an error says which invariant broke.
pub fn check(store: Box<dyn Store>, steps: &[Step]) -> Result<(), String> {
    let store: Arc<Box<dyn Store>> = Arc::new(store);
    let runs = Arc::new(Runs::default());
    let mut current = generation(&store, &runs);
    let mut ids = Vec::new();
    let mut crashes = 0;
    // The marks of dropped queues, whose handlers may still start late.
    let mut done: Vec<Arc<Marks>> = Vec::new();
    for step in steps {
        current.late_starts()?;
        match step {
            Step::Enqueue(k) => {
                for _ in 0..*k {
                    let n = ids.len() as u64;
                    let id = current
                        .queue
                        .enqueue_with("m", &n, EnqueueOptions::new())
                        .map_err(|e| e.to_string())?;
                    ids.push((id, n));
                }
            }
            Step::Start => {
                current.restart()?;
                current.queue.start().map_err(|e| e.to_string())?;
            }
            Step::Work(ms) => std::thread::sleep(Duration::from_millis(*ms)),
            Step::Stop => {
                current.stopping();
                let report = current.queue.stop();
                if !report.running.is_empty() || !report.unrecorded.is_empty() {
                    return Err(format!("stop left work behind: {report:?}"));
                }
                check_unstarted(&**store, &ids, &runs, crashes > 0)?;
            }
            Step::StopTimeout(ms) => {
                current.stopping();
                current.queue.stop_timeout(Duration::from_millis(*ms));
                check_unstarted(&**store, &ids, &runs, crashes > 0)?;
            }
            Step::Drop => {
                current.stopping();
                let next = generation(&store, &runs);
                let dropped = std::mem::replace(&mut current, next);
                let marks = Arc::clone(&dropped.marks);
                drop(dropped);
                done.push(marks);
                check_unstarted(&**store, &ids, &runs, crashes > 0)?;
            }
            Step::Crash if crashes < MAX_CRASHES => {
                crashes += 1;
                current.marks.dead.store(true, Ordering::SeqCst);
                current.flaky.crash();
                let dead = std::mem::replace(&mut current, generation(&store, &runs));
                // Its handlers end; then nothing of it acts on the store again.
                let t0 = Instant::now();
                while dead.marks.running.load(Ordering::SeqCst) > 0 {
                    if t0.elapsed() > Duration::from_secs(10) {
                        return Err("a crashed queue's handler never ended".into());
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                check_unstarted(&**store, &ids, &runs, crashes > 0)?;
                // A killed process runs no destructor.
                std::mem::forget(dead);
            }
            Step::Crash => {}
        }
    }
    current.restart()?;
    current
        .queue
        .run_until_complete()
        .map_err(|e| e.to_string())?;
    let c = store.counts(Some("m")).map_err(|e| e.to_string())?;
    if (c.done, c.total()) != (ids.len(), ids.len()) {
        return Err(format!("not every task is done: {c:?}"));
    }
    if runs.starts.lock().len() != ids.len() {
        return Err("a task is done that never ran".into());
    }
    for marks in &done {
        let late = marks.late_starts.load(Ordering::SeqCst);
        if late > WORKERS {
            return Err(format!("{late} handlers started after a drop"));
        }
    }
    let overlap = runs.overlap.load(Ordering::SeqCst);
    if overlap > 1 {
        return Err(format!("a task ran {overlap} times at once"));
    }
    Ok(())
}

/// Expands into a proptest of random lifecycles on fresh stores from
/// `$factory: fn() -> Fixture`, with `$cases` cases.
#[macro_export]
macro_rules! lifecycle_model_tests {
    ($factory:path, $cases:expr) => {
        proptest::proptest! {
            #![proptest_config($crate::model::persisted(
                $cases,
                "proptest-regressions/lifecycle_model.txt",
            ))]
            #[test]
            fn random_lifecycles_start_nothing_after_a_stop_and_lose_nothing(
                steps in proptest::collection::vec($crate::lifecycle_model::step(), 1..30)
            ) {
                let $crate::Fixture { store, guard, .. } = $factory();
                let checked = $crate::lifecycle_model::check(store, &steps);
                drop(guard);
                proptest::prop_assert!(checked.is_ok(), "{}", checked.err().unwrap_or_default());
            }
        }
    };
}
