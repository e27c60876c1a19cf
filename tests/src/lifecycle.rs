//! The queue's lifecycle: what `stop`, `stop_timeout`, dropping the queue and
//! `remove_channel` do to tasks that run, that are claimed and that wait. The rule under
//! test: none of them runs, fails or loses a task whose handler had not started; a handler
//! that started keeps its lease until its outcome is recorded.
//!
//! Every test uses the defaults users get (`retries = 0`): a retry would hide a task that
//! failed without having run.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use simplepyq::{
    CancelReason, Cancelled, ChannelOptions, Error, SimplePyQ, Status, TaskContext, TaskError,
    TaskId,
};
use simplepyq_core::{Store, StoreExt};

use crate::Handlers;
use crate::faults::Slow;

/// Handlers that block until the test opens the gate, counting their starts per argument.
#[derive(Debug, Default)]
pub struct Gate {
    open: AtomicBool,
    running: AtomicUsize,
    starts: Mutex<HashMap<u32, usize>>,
}

impl Gate {
    fn new() -> Arc<Self> {
        Arc::new(Gate::default())
    }

    /// The handler body: counts the start, waits for the gate (at most `hold` for a task
    /// not in `blocked`), counts the end.
    fn run(&self, n: u32, hold: Duration) {
        *self.starts.lock().entry(n).or_default() += 1;
        self.running.fetch_add(1, Ordering::SeqCst);
        let t0 = Instant::now();
        while !self.open.load(Ordering::SeqCst) && t0.elapsed() < hold {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.running.fetch_sub(1, Ordering::SeqCst);
    }

    fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }

    fn started(&self) -> usize {
        self.starts.lock().values().sum()
    }

    fn starts_of(&self, n: u32) -> usize {
        self.starts.lock().get(&n).copied().unwrap_or(0)
    }

    fn max_starts(&self) -> usize {
        self.starts.lock().values().copied().max().unwrap_or(0)
    }
}

/// Waits until `done` holds, failing the test after 10 s.
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !done() {
        assert!(t0.elapsed() < Duration::from_secs(10), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

type Shared = Arc<Box<dyn Store>>;
type Faulty = Arc<crate::faults::Flaky<Shared>>;

fn queue_on<S: Store + Clone>(store: &S, lease: Duration) -> SimplePyQ<S> {
    SimplePyQ::builder(store.clone())
        .lease(lease)
        .poll_interval(Duration::from_millis(10))
        .build()
        .expect("valid settings")
}

/// `store` behind a wrapper whose faults and slow-downs a test turns on.
fn faulty(store: &Shared) -> Faulty {
    Arc::new(crate::faults::Flaky::healthy(Arc::clone(store)))
}

/// Adds channel `name` whose handler runs `gate` holding each task up to `hold`.
fn gated<S: Store>(
    q: &SimplePyQ<S>,
    handlers: Handlers,
    name: &str,
    gate: &Arc<Gate>,
    hold: Duration,
    workers: usize,
) {
    let g = Arc::clone(gate);
    handlers
        .add(
            q,
            name,
            move |n: u32| {
                g.run(n, hold);
                Ok(())
            },
            workers,
        )
        .expect("add");
}

fn enqueue<S: Store>(q: &SimplePyQ<S>, channel: &str, n: u32) -> Vec<TaskId> {
    (0..n)
        .map(|i| q.enqueue(channel, &i).expect("enqueue"))
        .collect()
}

/// Adds channel `name` (2 workers) whose handler counts its starts; returns the count.
fn counted<S: Store>(q: &SimplePyQ<S>, handlers: Handlers, name: &str) -> Arc<AtomicUsize> {
    let starts = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&starts);
    handlers
        .add(
            q,
            name,
            move |_: u32| {
                seen.fetch_add(1, Ordering::SeqCst);
                Ok(())
            },
            2,
        )
        .expect("add");
    starts
}

/// Asserts that every task not in `ran` is pending with no attempt used.
fn untouched(store: &Shared, ids: &[TaskId], gate: &Gate) {
    for (i, id) in ids.iter().enumerate() {
        let n = u32::try_from(i).expect("few tasks");
        if gate.starts_of(n) > 0 {
            continue;
        }
        let s = store.get(*id).expect("get").expect("exists").state;
        assert_eq!(
            (s.status, s.attempts, s.lost_runs),
            (Status::Pending, 0, 0),
            "task {n}, never started, was touched: {s:?}"
        );
    }
}

/// `stop` while 4 of 8 tasks run on 4 workers: no other task starts, the stop returns when
/// the 4 are done, the other 4 are pending with no attempt used; the store never shows
/// more running tasks than workers. A restart runs the 4 left, each once.
pub fn stop_starts_nothing_and_gives_back_claimed_tasks(store: Box<dyn Store>, handlers: Handlers) {
    let store: Shared = Arc::new(store);
    let q = queue_on(&store, Duration::from_secs(30));
    let gate = Gate::new();
    gated(&q, handlers, "s", &gate, Duration::from_millis(300), 4);
    let ids = enqueue(&q, "s", 8);
    q.start().expect("start");
    wait_until("4 handlers run", || gate.started() == 4);
    let running = store.counts(Some("s")).expect("counts").running;
    assert!(running <= 4, "{running} tasks running with 4 workers");
    q.stop();
    assert_eq!(gate.started(), 4, "a handler started after stop began");
    let c = store.counts(Some("s")).expect("counts");
    assert_eq!((c.done, c.pending, c.running), (4, 4, 0), "{c:?}");
    untouched(&store, &ids, &gate);
    gate.open();
    q.run_until_complete().expect("run");
    assert_eq!(store.counts(Some("s")).expect("counts").done, 8);
    assert_eq!((gate.started(), gate.max_starts()), (8, 1));
}

/// `stop_timeout` with one worker whose handler outlives the deadline: it returns exactly
/// that task, no other handler starts afterwards, the others are untouched, and the late
/// handler's outcome is still recorded (its lease kept meanwhile).
pub fn stop_timeout_returns_exactly_the_running_tasks(store: Box<dyn Store>, handlers: Handlers) {
    let store: Shared = Arc::new(store);
    let q = queue_on(&store, Duration::from_millis(200));
    let gate = Gate::new();
    gated(&q, handlers, "t", &gate, Duration::from_secs(10), 1);
    let ids = enqueue(&q, "t", 10);
    q.start().expect("start");
    wait_until("a handler runs", || gate.started() == 1);
    let t0 = Instant::now();
    let report = q.stop_timeout(Duration::from_millis(50));
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert_eq!(report.running, vec![ids[0]]);
    assert!(report.unrecorded.is_empty(), "{report:?}");
    // Three leases pass while the handler still runs: it keeps its lease.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(gate.started(), 1, "a handler started after stop_timeout");
    let now = simplepyq::Clock::now(&simplepyq::SystemClock);
    assert_eq!(store.recover_expired(now, 3).expect("recover"), 0);
    untouched(&store, &ids, &gate);
    gate.open();
    wait_until("the late outcome is recorded", || {
        store.counts(Some("t")).expect("counts").done == 1
    });
    let s = store.get(ids[0]).expect("get").expect("exists").state;
    assert_eq!((s.status, s.attempts), (Status::Done, 1));
}

/// Dropping a running queue starts no other handler; the tasks not started are pending
/// with no attempt used, and a queue opened next (here with a short lease) fails none of
/// them: every task ends done, each run once.
pub fn dropping_a_queue_starts_nothing_and_fails_nothing(
    store: Box<dyn Store>,
    handlers: Handlers,
) {
    let store: Shared = Arc::new(store);
    let gate = Gate::new();
    let ids = {
        let q = queue_on(&store, Duration::from_millis(300));
        gated(&q, handlers, "d", &gate, Duration::from_millis(100), 2);
        let ids = enqueue(&q, "d", 40);
        q.start().expect("start");
        wait_until("2 handlers run", || gate.started() == 2);
        ids
    };
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(gate.started(), 2, "handlers started after the drop");
    untouched(&store, &ids, &gate);
    let q = queue_on(&store, Duration::from_millis(300));
    gated(&q, handlers, "d", &gate, Duration::ZERO, 2);
    q.run_until_complete().expect("run");
    let c = store.counts(Some("d")).expect("counts");
    assert_eq!((c.done, c.failed), (40, 0), "{c:?}");
    assert_eq!((gate.started(), gate.max_starts()), (40, 1));
}

/// Once `remove_channel` returned, no handler of the removed channel starts.
pub fn removed_channel_starts_nothing(store: Box<dyn Store>, handlers: Handlers) {
    let store: Shared = Arc::new(store);
    let q = queue_on(&store, Duration::from_secs(30));
    let gate = Gate::new();
    gated(&q, handlers, "gone", &gate, Duration::from_millis(50), 1);
    enqueue(&q, "gone", 20);
    q.start().expect("start");
    wait_until("a handler runs", || gate.started() == 1);
    assert_eq!(q.remove_channel("gone").expect("remove"), 20);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(gate.started(), 1, "a removed task ran");
    q.stop();
}

/// A graceful `stop` keeps renewing the lease of a handler that outlives it: another queue
/// looking for expired leases all along never takes the task, which runs once.
pub fn stop_keeps_leases_until_handlers_finish(store: Box<dyn Store>, handlers: Handlers) {
    let store: Shared = Arc::new(store);
    // Leases long enough that a renewal delayed by a loaded machine (a redb fsync behind
    // the other tests' writes, with every core busy) does not lapse one; the handler
    // outlives three of them.
    let lease = Duration::from_secs(1);
    let q = queue_on(&store, lease);
    let gate = Gate::new();
    gated(&q, handlers, "l", &gate, lease * 3 + lease / 2, 1);
    let id = enqueue(&q, "l", 1)[0];
    q.start().expect("start");
    wait_until("the handler runs", || gate.started() == 1);
    let other = queue_on(&store, lease);
    gated(&other, handlers, "l", &gate, Duration::ZERO, 1);
    other.start().expect("start");
    q.stop();
    other.stop();
    let s = store.get(id).expect("get").expect("exists").state;
    assert_eq!((s.status, s.attempts, gate.started()), (Status::Done, 1, 1));
}

/// A stale attempt (its lease taken over by another process) ending after this queue
/// claimed the task again does not stop the renewal of the live attempt.
pub fn a_stale_attempt_does_not_end_the_live_ones_lease(store: Box<dyn Store>, handlers: Handlers) {
    let store: Shared = Arc::new(store);
    // Long enough that a renewal delayed by a loaded machine (a redb fsync behind the other
    // tests' writes took 500 ms here) does not lapse it; the bug lets it lapse for good.
    let lease = Duration::from_secs(1);
    let q = queue_on(&store, lease);
    let first_done = Arc::new(AtomicBool::new(false));
    let second = Arc::new(AtomicBool::new(false));
    let runs = Arc::new(AtomicUsize::new(0));
    let (f, s, r) = (
        Arc::clone(&first_done),
        Arc::clone(&second),
        Arc::clone(&runs),
    );
    handlers
        .add(
            &q,
            "x",
            move |n: u32| {
                if n > 0 {
                    return Ok(());
                }
                let run = r.fetch_add(1, Ordering::SeqCst);
                let until = if run == 0 { &f } else { &s };
                while !until.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Ok(())
            },
            2,
        )
        .expect("add");
    let id = q.enqueue("x", &0u32).expect("enqueue");
    q.start().expect("start");
    wait_until("the first run", || runs.load(Ordering::SeqCst) == 1);
    // Another process, its clock two leases ahead, takes the task for lost (and makes it
    // due at its own time).
    let ahead = simplepyq::Clock::now(&simplepyq::SystemClock).after(lease * 2);
    assert_eq!(store.recover_expired(ahead, 3).expect("recover"), 1);
    // Another task wakes the idle worker, so that this test does not hang on idle waits.
    q.enqueue("x", &1u32).expect("enqueue");
    wait_until("the second run", || runs.load(Ordering::SeqCst) == 2);
    first_done.store(true, Ordering::SeqCst);
    // Several leases pass: the second attempt keeps its lease.
    std::thread::sleep(lease * 4);
    let now = simplepyq::Clock::now(&simplepyq::SystemClock);
    let st = store.get(id).expect("get").expect("exists").state;
    assert_eq!((st.status, st.attempts), (Status::Running, 2), "{st:?}");
    assert!(st.lease_until > Some(now), "the live lease lapsed: {st:?}");
    second.store(true, Ordering::SeqCst);
    q.run_until_complete().expect("run");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    let stats = q.stats();
    assert_eq!((stats.lease_lost, stats.unrecorded), (1, 0), "{stats:?}");
}

/// `start` after a `stop_timeout` that left a handler running does not take that
/// handler's task for a dead worker's: it runs once.
pub fn start_after_stop_timeout_does_not_rerun_a_running_task(
    store: Box<dyn Store>,
    handlers: Handlers,
) {
    let store: Shared = Arc::new(store);
    let q = queue_on(&store, Duration::from_millis(100));
    let gate = Gate::new();
    gated(&q, handlers, "r", &gate, Duration::from_millis(500), 1);
    let id = enqueue(&q, "r", 1)[0];
    q.start().expect("start");
    wait_until("the handler runs", || gate.started() == 1);
    assert_eq!(q.stop_timeout(Duration::from_millis(10)).running, vec![id]);
    std::thread::sleep(Duration::from_millis(200));
    q.run_until_complete().expect("run");
    let s = store.get(id).expect("get").expect("exists").state;
    assert_eq!((s.status, s.attempts, gate.started()), (Status::Done, 1, 1));
}

/// While one worker runs a long handler, another worker of the channel still looks at the
/// store: a task another process enqueued starts within a few poll intervals.
pub fn idle_workers_poll_while_another_runs(store: Box<dyn Store>, handlers: Handlers) {
    let store: Shared = Arc::new(store);
    let q = queue_on(&store, Duration::from_secs(30));
    let gate = Gate::new();
    gated(&q, handlers, "p", &gate, Duration::from_secs(5), 2);
    enqueue(&q, "p", 1);
    q.start().expect("start");
    wait_until("the first handler runs", || gate.started() == 1);
    std::thread::sleep(Duration::from_millis(100));
    // Enqueued behind the queue's back, as another process would.
    let now = simplepyq::Clock::now(&simplepyq::SystemClock);
    let args = rmp_serde::to_vec_named(&1u32).expect("encode");
    store
        .enqueue_one(simplepyq_core::NewTask::new("p", args), now)
        .expect("enqueue");
    let t0 = Instant::now();
    while gate.started() < 2 && t0.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(gate.started(), 2, "the second task waited for the first");
    gate.open();
    q.stop();
}

/// `run_until_complete` returns, with an error saying so, when another thread stops the
/// queue (a Ctrl-C handler).
pub fn run_until_complete_returns_when_stopped_elsewhere(
    store: Box<dyn Store>,
    handlers: Handlers,
) {
    let store: Shared = Arc::new(store);
    let q = Arc::new(queue_on(&store, Duration::from_secs(30)));
    let gate = Gate::new();
    gated(&q, handlers, "u", &gate, Duration::from_millis(200), 1);
    enqueue(&q, "u", 5);
    let (tx, rx) = std::sync::mpsc::channel();
    let runner = Arc::clone(&q);
    std::thread::spawn(move || {
        let _ = tx.send(runner.run_until_complete());
    });
    wait_until("a handler runs", || gate.started() == 1);
    q.stop();
    let result = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("run_until_complete returned");
    assert!(matches!(result, Err(Error::Stopped)), "{result:?}");
    let c = store.counts(Some("u")).expect("counts");
    assert_eq!((c.done, c.pending, c.failed), (1, 4, 0), "{c:?}");
}

/// `run_until_complete` learns that its channels' work is done by looking at their statuses'
/// indexes, never by counting every task of a channel (a fleet of processes each counting a
/// table of done tasks at every check took minutes to end a drain of seconds). With a
/// waiting task and a paused channel's task it waits; once both are done it returns.
pub fn run_until_complete_never_counts_every_task(store: Box<dyn Store>, handlers: Handlers) {
    let store: Shared = Arc::new(store);
    let watched = faulty(&store);
    let q = SimplePyQ::builder(Arc::clone(&watched))
        .poll_interval(Duration::from_millis(10))
        .build()
        .expect("valid settings");
    for name in ["a", "p"] {
        handlers.add(&q, name, |_: u32| Ok(()), 2).expect("add");
    }
    for n in 0..20u32 {
        q.enqueue("a", &n).expect("enqueue");
    }
    q.pause("p").expect("pause");
    q.enqueue("p", &0u32).expect("enqueue");
    let parent = q.enqueue("a", &99u32).expect("enqueue");
    let opts = simplepyq::EnqueueOptions::new().after([parent]);
    q.enqueue_with("a", &100u32, opts).expect("a waiting task");
    let q = Arc::new(q);
    let runner = Arc::clone(&q);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(runner.run_until_complete());
    });
    // The paused channel's task is work left: the run does not end.
    assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
    q.resume("p").expect("resume");
    let result = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("run_until_complete returned");
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(store.counts(None).expect("counts").done, 23);
    assert_eq!(
        watched.counted.load(Ordering::SeqCst),
        0,
        "counts were read"
    );
}

/// A store that panics (a bug in a custom backend) in a claim does not leave the channel
/// stuck: the other workers go on and the tasks are done.
pub fn a_panicking_store_call_does_not_stall_the_channel(
    store: Box<dyn Store>,
    handlers: Handlers,
) {
    let store: Shared = Arc::new(store);
    let panicky = Arc::new(crate::faults::Flaky::healthy(Arc::clone(&store)));
    panicky.panic_claims(1);
    let q = SimplePyQ::builder(Arc::clone(&panicky))
        .poll_interval(Duration::from_millis(10))
        .build()
        .expect("valid settings");
    let ran = Arc::new(AtomicUsize::new(0));
    let r = Arc::clone(&ran);
    handlers
        .add(
            &q,
            "k",
            move |_: u32| {
                r.fetch_add(1, Ordering::SeqCst);
                Ok(())
            },
            2,
        )
        .expect("add");
    for n in 0..20u32 {
        q.enqueue("k", &n).expect("enqueue");
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let q = Arc::new(q);
    let runner = Arc::clone(&q);
    std::thread::spawn(move || {
        let _ = tx.send(runner.run_until_complete());
    });
    let result = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the queue went on after a store panic");
    result.expect("run");
    assert!(panicky.panicked() > 0, "no panic was injected");
    assert_eq!(store.counts(Some("k")).expect("counts").done, 20);
    assert_eq!(ran.load(Ordering::SeqCst), 20);
}

/// A claim whose answer comes after the lease it asked for ran out (a slow or cut network)
/// is not run: another worker may hold its tasks by then (here one does). The queue gives
/// such tasks back if they are still its own, and goes on with the rest.
pub fn a_claim_answered_after_its_lease_ran_out_is_not_run(
    store: Box<dyn Store>,
    handlers: Handlers,
) {
    let store: Shared = Arc::new(store);
    let late = Arc::new(crate::faults::Flaky::healthy(Arc::clone(&store)));
    late.late_claims(1);
    let q = SimplePyQ::builder(Arc::clone(&late))
        .lease(Duration::from_millis(300))
        .poll_interval(Duration::from_millis(10))
        .build()
        .expect("valid settings");
    let ran = Arc::new(Mutex::new(Vec::new()));
    let r = Arc::clone(&ran);
    handlers
        .add(
            &q,
            "late",
            move |n: u32| {
                r.lock().push(n);
                Ok(())
            },
            1,
        )
        .expect("add");
    let first = q.enqueue("late", &0u32).expect("enqueue");
    q.start().expect("start");
    wait_until("the other worker took the task over", || {
        store
            .get(first)
            .expect("get")
            .expect("exists")
            .state
            .attempts
            == 2
    });
    for n in 1..3u32 {
        q.enqueue("late", &n).expect("enqueue");
    }
    wait_until("the other tasks are done", || {
        store.counts(Some("late")).expect("counts").done == 2
    });
    q.stop();
    // The first task is the other worker's now: running, under its 60 s lease.
    let taken = store.get(first).expect("get").expect("exists");
    assert_eq!(taken.state.status, Status::Running, "{taken:?}");
    assert_eq!(
        *ran.lock(),
        vec![1, 2],
        "a task whose lease ran out was run"
    );
    assert_eq!(q.stats().lease_lost, 0);
}

/// Storage errors while recording outcomes, for longer than a few seconds, never fail a
/// task: the outcome waits (its lease renewed) until the store takes it.
pub fn a_long_storage_outage_fails_no_task(store: Box<dyn Store>, handlers: Handlers) {
    let store: Shared = Arc::new(store);
    let outage = Arc::new(crate::faults::Flaky::healthy(Arc::clone(&store)));
    let q = SimplePyQ::builder(Arc::clone(&outage))
        .lease(Duration::from_millis(200))
        .poll_interval(Duration::from_millis(10))
        .build()
        .expect("valid settings");
    let ran = Arc::new(AtomicUsize::new(0));
    let r = Arc::clone(&ran);
    handlers
        .add(
            &q,
            "o",
            move |_: u32| {
                r.fetch_add(1, Ordering::SeqCst);
                Ok(())
            },
            1,
        )
        .expect("add");
    let id = q.enqueue("o", &0u32).expect("enqueue");
    outage.outage(true);
    q.start().expect("start");
    wait_until("the handler ran", || ran.load(Ordering::SeqCst) == 1);
    std::thread::sleep(Duration::from_secs(4));
    outage.outage(false);
    wait_until("the outcome is recorded", || {
        store.get(id).expect("get").expect("exists").state.status == Status::Done
    });
    q.stop();
    assert_eq!(ran.load(Ordering::SeqCst), 1);
}

/// A handler may stop its own queue: the stop does not wait for that handler, which then
/// finishes and is recorded; nothing else starts.
pub fn a_handler_can_stop_its_own_queue(store: Box<dyn Store>, handlers: Handlers) {
    let store: Shared = Arc::new(store);
    let q = Arc::new(queue_on(&store, Duration::from_secs(30)));
    let weak = Arc::downgrade(&q);
    let (tx, rx) = std::sync::mpsc::channel();
    let runs = Arc::new(AtomicUsize::new(0));
    let r = Arc::clone(&runs);
    handlers
        .add(
            &q,
            "self",
            move |_: u32| {
                r.fetch_add(1, Ordering::SeqCst);
                if let Some(q) = weak.upgrade() {
                    let _ = tx.send(q.stop());
                }
                Ok(())
            },
            1,
        )
        .expect("add");
    let ids = enqueue(&q, "self", 5);
    q.start().expect("start");
    let report = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the stop returned inside the handler");
    assert_eq!(report.running, vec![ids[0]], "{report:?}");
    wait_until("the handler's outcome is recorded", || {
        store.counts(Some("self")).expect("counts").done == 1
    });
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(store.counts(Some("self")).expect("counts").pending, 4);
}

/// Two stops at once, one of them (or both) from handlers: a stop from a handler does not
/// wait for another stop under way, which waits for that handler; so every stop returns.
/// Here the test's thread stops the queue while both workers run, then both handlers call
/// `stop` (which returns at once with an empty report) and `start` (refused: the queue is
/// stopping, and waiting for that would wait for the handler itself). Whichever stop comes
/// first, before this fix the second one waited for ever.
pub fn stops_at_once_from_handlers_do_not_hang(store: Box<dyn Store>, handlers: Handlers) {
    let store: Shared = Arc::new(store);
    let q = Arc::new(queue_on(&store, Duration::from_secs(30)));
    let weak = Arc::downgrade(&q);
    let gate = Gate::new();
    let stopping = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = Arc::new(Mutex::new(tx));
    let (g, s) = (Arc::clone(&gate), Arc::clone(&stopping));
    handlers
        .add(
            &q,
            "two",
            move |n: u32| {
                g.run(n, Duration::ZERO);
                wait_until("both handlers run and the stop began", || {
                    g.started() >= 2 && s.load(Ordering::SeqCst)
                });
                // Long enough for the test thread's stop to be under way.
                std::thread::sleep(Duration::from_millis(50));
                if let Some(q) = weak.upgrade() {
                    let report = q.stop();
                    // Unless this stop was the first (a loaded machine delayed the test
                    // thread's), another is under way: start is refused.
                    let start = report.running.is_empty().then(|| q.start());
                    let _ = tx.lock().send((report, start));
                }
                Ok(())
            },
            2,
        )
        .expect("add");
    let ids = enqueue(&q, "two", 6);
    q.start().expect("start");
    wait_until("both handlers run", || gate.started() == 2);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let stopper = Arc::clone(&q);
    std::thread::spawn(move || {
        let _ = done_tx.send(stopper.stop());
    });
    stopping.store(true, Ordering::SeqCst);
    let mut stoppers = 0;
    for _ in 0..2 {
        let (report, start) = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("a handler's stop returned");
        match start {
            Some(start) => assert!(matches!(start, Err(Error::Stopped)), "{start:?}"),
            None => stoppers += 1,
        }
        assert!(report.running.len() <= 1, "{report:?}");
    }
    let report = done_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the test thread's stop returned");
    assert!(report.running.is_empty(), "{report:?}");
    assert!(stoppers <= 1, "two stops ran the same run");
    assert_eq!(gate.started(), 2, "a handler started after the stop");
    let c = store.counts(Some("two")).expect("counts");
    assert_eq!((c.done, c.pending, c.running), (2, 4, 0), "{c:?}");
    untouched(&store, &ids, &gate);
}

/// `run_until_complete` from a handler of the same queue would wait for that handler's own
/// task: it is refused at once, and the queue goes on.
pub fn run_until_complete_in_a_handler_is_refused(store: Box<dyn Store>, handlers: Handlers) {
    let store: Shared = Arc::new(store);
    let q = Arc::new(queue_on(&store, Duration::from_secs(30)));
    let weak = Arc::downgrade(&q);
    let (tx, rx) = std::sync::mpsc::channel();
    let tx = Mutex::new(tx);
    handlers
        .add(
            &q,
            "inner",
            move |_: u32| {
                if let Some(q) = weak.upgrade() {
                    let _ = tx.lock().send(q.run_until_complete());
                }
                Ok(())
            },
            1,
        )
        .expect("add");
    enqueue(&q, "inner", 1);
    q.start().expect("start");
    let result = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("run_until_complete returned in the handler");
    assert!(matches!(result, Err(Error::InHandler { .. })), "{result:?}");
    q.run_until_complete().expect("run");
    assert_eq!(store.counts(Some("inner")).expect("counts").done, 1);
}

/// No worker idles while a due task of its channel waits, even when claims are slow (a
/// durable write on a loaded disk): workers that come for work while another claims are
/// claimed for next, not left waiting for the poll interval (10 s here). Every handler
/// waits until all 4 run at once, which they do within a few claims.
pub fn no_worker_idles_while_a_slow_claim_runs(store: Box<dyn Store>, handlers: Handlers) {
    let store: Shared = Arc::new(store);
    let slow = faulty(&store);
    let q = SimplePyQ::builder(Arc::clone(&slow))
        .poll_interval(Duration::from_secs(10))
        .build()
        .expect("valid settings");
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (r, m) = (Arc::clone(&running), Arc::clone(&most));
    handlers
        .add(
            &q,
            "slow",
            move |_: u32| {
                let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(now, Ordering::SeqCst);
                let t0 = Instant::now();
                while m.load(Ordering::SeqCst) < 4 && t0.elapsed() < Duration::from_secs(5) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                r.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            },
            4,
        )
        .expect("add");
    for n in 0..8u32 {
        q.enqueue("slow", &n).expect("enqueue");
    }
    slow.slow(Slow::Claims, Duration::from_millis(50));
    q.start().expect("start");
    let t0 = Instant::now();
    while most.load(Ordering::SeqCst) < 4 && t0.elapsed() < Duration::from_secs(4) {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(
        most.load(Ordering::SeqCst),
        4,
        "4 workers and 8 due tasks, yet not 4 handlers at once within 4 s"
    );
    q.run_until_complete().expect("run");
    assert_eq!(store.counts(Some("slow")).expect("counts").done, 8);
}

/// Slow reads of the store (counts over millions of rows) never delay the renewal of a
/// running task's lease: the `metrics` feature's gauges (on in this suite) read on a thread
/// of their own. On the keeper's thread, 4 reads of 2 s each let a 1 s lease lapse, and
/// another process would have run the task again.
pub fn slow_gauges_do_not_delay_lease_renewals(store: Box<dyn Store>, handlers: Handlers) {
    let store: Shared = Arc::new(store);
    let slow = faulty(&store);
    let q = queue_on(&slow, Duration::from_secs(1));
    let gate = Gate::new();
    gated(&q, handlers, "g", &gate, Duration::from_secs(5), 1);
    let id = q.enqueue("g", &0u32).expect("enqueue");
    q.start().expect("start");
    wait_until("the handler runs", || gate.started() == 1);
    slow.slow(Slow::Reads, Duration::from_secs(2));
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(2_500) {
        let now = simplepyq::Clock::now(&simplepyq::SystemClock);
        let s = store.get(id).expect("get").expect("exists").state;
        assert!(
            s.status == Status::Running && s.lease_until > Some(now),
            "the lease lapsed while the handler ran: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    slow.slow(Slow::Reads, Duration::ZERO);
    gate.open();
    q.run_until_complete().expect("run");
    let s = store.get(id).expect("get").expect("exists").state;
    assert_eq!((s.status, s.attempts, gate.started()), (Status::Done, 1, 1));
}

/// `start` makes its store calls (renewing and recovering leases) without holding the
/// queue's lock: an `add_channel` from another thread meanwhile (in Python, one that holds
/// the interpreter's lock) does not wait for a slow store.
pub fn start_does_not_hold_up_other_calls_with_store_io(store: Box<dyn Store>, handlers: Handlers) {
    let store: Shared = Arc::new(store);
    let slow = faulty(&store);
    let q = Arc::new(queue_on(&slow, Duration::from_secs(30)));
    handlers.add(&q, "a", |_: u32| Ok(()), 1).expect("add");
    slow.slow(Slow::Recovery, Duration::from_secs(2));
    let starter = Arc::clone(&q);
    let started = std::thread::spawn(move || starter.start());
    std::thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    handlers.add(&q, "b", |_: u32| Ok(()), 1).expect("add");
    let took = t0.elapsed();
    assert!(
        took < Duration::from_millis(1_000),
        "add_channel waited {took:?} for start's store calls"
    );
    started.join().expect("start").expect("started");
    slow.slow(Slow::Recovery, Duration::ZERO);
    q.stop();
}

/// `stop_timeout(d)` returns by about `d` when the store is slow (a busy file, a database
/// failing over): the outcome the store has not taken yet is reported as unsettled, and is
/// still recorded in the background, its lease kept; nothing is lost or run twice.
pub fn stop_timeout_is_bounded_by_a_slow_store(store: Box<dyn Store>, handlers: Handlers) {
    let store: Shared = Arc::new(store);
    let slow = faulty(&store);
    let q = queue_on(&slow, Duration::from_millis(600));
    let ran = Arc::new(AtomicUsize::new(0));
    let r = Arc::clone(&ran);
    handlers
        .add(
            &q,
            "slow",
            move |_: u32| {
                r.fetch_add(1, Ordering::SeqCst);
                Ok(())
            },
            1,
        )
        .expect("add");
    slow.slow(Slow::Writes, Duration::from_secs(3));
    let id = q.enqueue("slow", &0u32).expect("enqueue");
    q.start().expect("start");
    wait_until("the handler ran", || ran.load(Ordering::SeqCst) == 1);
    let t0 = Instant::now();
    let report = q.stop_timeout(Duration::from_millis(300));
    let took = t0.elapsed();
    assert!(
        took < Duration::from_millis(1_500),
        "stop_timeout(300 ms) took {took:?}"
    );
    assert_eq!(report.unsettled, vec![id], "{report:?}");
    wait_until("the outcome is recorded", || {
        store.get(id).expect("get").expect("exists").state.status == Status::Done
    });
    let s = store.get(id).expect("get").expect("exists").state;
    assert_eq!((s.attempts, ran.load(Ordering::SeqCst)), (1, 1));
}

/// `cancel` of a task this queue claimed ahead (for a quick handler, a worker claims a
/// reserve behind the task it runs) and has not started: it never starts, and is deleted,
/// as a pending one is. It was refused as running.
pub fn cancel_reaches_tasks_claimed_ahead(store: Box<dyn Store>, handlers: Handlers) {
    let store: Shared = Arc::new(store);
    let q = queue_on(&store, Duration::from_secs(30));
    let gate = Gate::new();
    let g = Arc::clone(&gate);
    handlers
        .add(
            &q,
            "ahead",
            move |n: u32| {
                // The first 20 are quick: the worker learns to claim ahead.
                g.run(
                    n,
                    if n < 20 {
                        Duration::ZERO
                    } else {
                        Duration::from_secs(10)
                    },
                );
                Ok(())
            },
            1,
        )
        .expect("add");
    enqueue(&q, "ahead", 20);
    q.start().expect("start");
    wait_until("the quick tasks are done", || {
        store.counts(Some("ahead")).expect("counts").done == 20
    });
    let ids = q
        .enqueue_many(
            "ahead",
            (20..26u32).collect::<Vec<_>>().iter(),
            simplepyq::EnqueueOptions::new(),
        )
        .expect("enqueue");
    wait_until("the slow task runs", || gate.starts_of(20) == 1);
    let cancelled = q.cancel(ids[3]).expect("cancel");
    assert_eq!(cancelled, simplepyq::Cancelled::Removed);
    gate.open();
    q.run_until_complete().expect("run");
    assert_eq!(gate.starts_of(23), 0, "a cancelled task ran");
    assert!(
        store.get(ids[3]).expect("get").is_none(),
        "the task was not deleted"
    );
    assert_eq!(store.counts(Some("ahead")).expect("counts").done, 25);
}

/// `cancel` of a task this queue has claimed while the claim's answer is still on its way
/// to the worker (running in the store, not started here, as over a slow network or on a
/// descheduled thread): the handler is asked to stop once it starts. It was refused as
/// running in another queue or process.
pub fn cancel_reaches_a_claim_on_its_way(store: Box<dyn Store>, handlers: Handlers) {
    let store: Shared = Arc::new(store);
    let slow = faulty(&store);
    let q = queue_on(&slow, Duration::from_secs(30));
    let seen: Arc<Mutex<Vec<Option<CancelReason>>>> = Arc::default();
    let s = Arc::clone(&seen);
    let record = move |ctx: &TaskContext| {
        let t0 = Instant::now();
        while !ctx.is_cancelled() && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(1));
        }
        s.lock().push(ctx.cancel_reason());
        Err(TaskError::fatal("stopped early"))
    };
    match handlers {
        Handlers::Threads => q
            .add_channel("way", move |_: u32, ctx: &TaskContext| record(ctx), 1)
            .map(drop),
        Handlers::Async => {
            let record = Arc::new(record);
            q.add_channel_async_with(
                "way",
                move |_: u32, ctx: TaskContext| {
                    let record = Arc::clone(&record);
                    async move { record(&ctx) }
                },
                ChannelOptions::new(1).runtime(crate::runtime().handle().clone()),
            )
            .map(drop)
        }
    }
    .expect("add");
    let id = q.enqueue("way", &0u32).expect("enqueue");
    slow.slow(Slow::ClaimAnswers, Duration::from_millis(300));
    q.start().expect("start");
    wait_until("the claim is committed", || {
        store.get(id).expect("get").expect("kept").state.status == Status::Running
    });
    slow.slow(Slow::ClaimAnswers, Duration::ZERO);
    assert_eq!(q.cancel(id).expect("cancel"), Cancelled::Requested);
    wait_until("the task failed", || {
        store.get(id).expect("get").expect("kept").state.status == Status::Failed
    });
    assert_eq!(*seen.lock(), vec![Some(CancelReason::Cancel)]);
    q.stop();
}

/// A claim answered after its lease ran out (a slow network) gives its tasks back; while
/// the store refuses that for longer than a stop would wait (an outage of releases and
/// recoveries; renewals pass), the running queue keeps them, renewed, and keeps trying: a
/// task that never started loses no run. Given up after 2 s, it was recovered as a lost
/// run once the store came back (three such outages failed it unrun).
pub fn an_outage_costs_unstarted_tasks_no_run(store: Box<dyn Store>, handlers: Handlers) {
    let store: Shared = Arc::new(store);
    let flaky = faulty(&store);
    let q = queue_on(&flaky, Duration::from_millis(300));
    let gate = Gate::new();
    gated(&q, handlers, "out", &gate, Duration::ZERO, 1);
    let id = q.enqueue("out", &0u32).expect("enqueue");
    flaky.late_claims_kept(1);
    flaky.release_outage(true);
    q.start().expect("start");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(gate.started(), 0, "the late claim's task ran");
    flaky.release_outage(false);
    wait_until("the task is done", || gate.started() == 1);
    q.run_until_complete().expect("run");
    let s = store.get(id).expect("get").expect("exists").state;
    assert_eq!(
        (s.status, s.lost_runs, gate.started()),
        (Status::Done, 0, 1),
        "{s:?}"
    );
}

/// A channel paused by another queue on the store (another process) starts nothing more,
/// though its workers poll every 10 ms; `run_until_complete` waits for the resume, which
/// wakes the idle workers, and then every task runs once.
pub fn a_paused_channel_starts_nothing_until_resumed(store: Box<dyn Store>, handlers: Handlers) {
    let store: Shared = Arc::new(store);
    let q = queue_on(&store, Duration::from_secs(30));
    let admin = queue_on(&store, Duration::from_secs(30));
    let starts = counted(&q, handlers, "held");
    enqueue(&q, "held", 3);
    q.run_until_complete().expect("run");
    assert_eq!(starts.load(Ordering::SeqCst), 3);
    assert!(admin.pause("held").expect("pause"));
    enqueue(&q, "held", 5);
    q.start().expect("start");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        starts.load(Ordering::SeqCst),
        3,
        "a paused channel's task started"
    );
    let resumer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        assert!(admin.resume("held").expect("resume"));
    });
    q.run_until_complete().expect("run waits for the resume");
    resumer.join().expect("the resumer");
    assert_eq!(starts.load(Ordering::SeqCst), 8);
    assert_eq!(store.counts(Some("held")).expect("counts").done, 8);
    q.stop();
}

/// `run_until_complete` does not end while a channel resumed during its last look has
/// tasks: the resume comes (from another process) just as the queue reads the flow settings
/// after finding nothing due (seen failing: it returned with the 5 tasks queued, when it
/// read the settings after the channels' next wake-ups only).
pub fn a_resume_during_the_idle_check_is_seen(store: Box<dyn Store>, handlers: Handlers) {
    let store: Shared = Arc::new(store);
    let wrapped = faulty(&store);
    let q = queue_on(&wrapped, Duration::from_secs(30));
    let starts = counted(&q, handlers, "held");
    store.set_paused("held", true).expect("pause");
    enqueue(&q, "held", 5);
    let other = Arc::clone(&store);
    wrapped.before_flows(move || {
        other.set_paused("held", false).expect("resume");
    });
    q.run_until_complete().expect("run");
    assert_eq!(
        starts.load(Ordering::SeqCst),
        5,
        "returned with tasks queued"
    );
    q.stop();
}

/// A lone worker whose claim took all it asked for, reserve included, claims again early
/// while its last claimed tasks wait; when that claim finds nothing, it runs them. Before,
/// it claimed again and again and never ran them: `run_until_complete` never returned
/// (seen in a test of panicking handlers, two tasks held for 17 minutes). Batches of 1 to
/// 16 tasks: one of them is exactly as many as a claim asks for (one task and a reserve of
/// 5 ms of 1 ms runs).
pub fn a_lone_worker_runs_what_it_claimed_after_an_early_claim_finds_nothing(
    store: Box<dyn Store>,
    handlers: Handlers,
) {
    let q = Arc::new(
        SimplePyQ::builder(store)
            .poll_interval(Duration::from_millis(10))
            .build()
            .expect("valid settings"),
    );
    let ran = Arc::new(AtomicUsize::new(0));
    let r = Arc::clone(&ran);
    handlers
        .add(
            &q,
            "lone",
            move |_: u32| {
                std::thread::sleep(Duration::from_millis(1));
                r.fetch_add(1, Ordering::SeqCst);
                Ok(())
            },
            1,
        )
        .expect("add");
    let mut total = 0;
    for n in 1..=16u32 {
        let batch: Vec<u32> = (0..n).collect();
        q.enqueue_many("lone", &batch, simplepyq::EnqueueOptions::new())
            .expect("enqueue");
        total += n as usize;
        let runner = Arc::clone(&q);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(runner.run_until_complete());
        });
        let result = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("a batch of {n} never completed"));
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(ran.load(Ordering::SeqCst), total, "batch of {n}");
    }
    q.stop();
}

/// Expands into one `#[test]` per lifecycle case, each on a fresh store from
/// `$factory: fn() -> Fixture`.
#[macro_export]
macro_rules! lifecycle_tests {
    ($factory:expr) => {
        $crate::lifecycle_tests!(@each $factory;
            stop_starts_nothing_and_gives_back_claimed_tasks,
            stop_timeout_returns_exactly_the_running_tasks,
            dropping_a_queue_starts_nothing_and_fails_nothing,
            removed_channel_starts_nothing,
            stop_keeps_leases_until_handlers_finish,
            a_stale_attempt_does_not_end_the_live_ones_lease,
            start_after_stop_timeout_does_not_rerun_a_running_task,
            idle_workers_poll_while_another_runs,
            run_until_complete_returns_when_stopped_elsewhere,
            a_panicking_store_call_does_not_stall_the_channel,
            run_until_complete_never_counts_every_task,
            a_long_storage_outage_fails_no_task,
            a_handler_can_stop_its_own_queue,
            stops_at_once_from_handlers_do_not_hang,
            run_until_complete_in_a_handler_is_refused,
            no_worker_idles_while_a_slow_claim_runs,
            slow_gauges_do_not_delay_lease_renewals,
            start_does_not_hold_up_other_calls_with_store_io,
            stop_timeout_is_bounded_by_a_slow_store,
            cancel_reaches_tasks_claimed_ahead,
            cancel_reaches_a_claim_on_its_way,
            an_outage_costs_unstarted_tasks_no_run,
            a_claim_answered_after_its_lease_ran_out_is_not_run,
            a_paused_channel_starts_nothing_until_resumed,
            a_resume_during_the_idle_check_is_seen,
            a_lone_worker_runs_what_it_claimed_after_an_early_claim_finds_nothing
        );
    };
    (@each $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                for handlers in [$crate::Handlers::Threads, $crate::Handlers::Async] {
                    let $crate::Fixture { store, guard, .. } = $factory();
                    $crate::lifecycle::$name(store, handlers);
                    drop(guard);
                }
            }
        )*
    };
}
