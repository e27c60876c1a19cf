//! The original library's usage examples, and the facade's promises, as functions over a
//! fresh store. Real worker threads run real handlers; outcomes are asserted, not printed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use simplepyq::{EnqueueOptions, Error, ManualClock, SimplePyQ, Status, TaskError, TaskId};
use simplepyq_core::{Store, StoreExt};

use crate::Handlers;

/// The queue type the scenarios run: any backend behind a box.
pub type Queue = SimplePyQ<Box<dyn Store>>;

/// A queue over `store` that notices other processes' work quickly.
pub fn queue(store: Box<dyn Store>) -> Queue {
    SimplePyQ::builder(store)
        .poll_interval(Duration::from_millis(20))
        .build()
        .expect("valid settings")
}

/// The arguments of the original README's scraping example.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Scrape {
    /// The page to fetch.
    pub url: String,
}

fn scrape(i: usize) -> Scrape {
    Scrape {
        url: format!("https://example.com/{i}"),
    }
}

/// Records which tasks ran and how many ran at once.
#[derive(Debug, Default)]
pub struct Tracker {
    running: AtomicUsize,
    max_running: AtomicUsize,
    runs: std::sync::Mutex<HashMap<String, usize>>,
}

impl Tracker {
    /// Marks the start of a run of `key`; returns its run number (1 for the first).
    pub fn enter(&self, key: &str) -> usize {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(now, Ordering::SeqCst);
        let mut runs = self.runs.lock().expect("no panics while held");
        let n = runs.entry(key.to_owned()).or_default();
        *n += 1;
        *n
    }

    /// Marks the end of a run.
    pub fn leave(&self) {
        self.running.fetch_sub(1, Ordering::SeqCst);
    }

    /// The most runs seen at once.
    pub fn max_running(&self) -> usize {
        self.max_running.load(Ordering::SeqCst)
    }

    /// Runs per key.
    pub fn runs(&self) -> HashMap<String, usize> {
        self.runs.lock().expect("no panics while held").clone()
    }
}

fn state(q: &Queue, id: TaskId) -> simplepyq_core::TaskState {
    q.task(id).expect("get").expect("task exists").state
}

/// Original README: a channel with two workers scrapes URLs; every task runs once and at
/// most two run at a time. A second channel with one worker runs beside it.
pub fn channels_with_two_workers(store: Box<dyn Store>, handlers: Handlers) {
    let q = queue(store);
    let scrape_t = Arc::new(Tracker::default());
    let other_t = Arc::new(Tracker::default());
    let t = Arc::clone(&scrape_t);
    handlers
        .add(
            &q,
            "scrape",
            move |job: Scrape| {
                t.enter(&job.url);
                std::thread::sleep(Duration::from_millis(2));
                t.leave();
                Ok(())
            },
            2,
        )
        .expect("add");
    let t = Arc::clone(&other_t);
    handlers
        .add(
            &q,
            "other",
            move |n: u32| {
                t.enter(&n.to_string());
                t.leave();
                Ok(())
            },
            1,
        )
        .expect("add");
    for i in 0..30 {
        q.enqueue("scrape", &scrape(i)).expect("enqueue");
    }
    for n in 0..5u32 {
        q.enqueue("other", &n).expect("enqueue");
    }
    q.run_until_complete().expect("run");
    assert_eq!(q.counts("scrape").expect("counts").done, 30);
    assert_eq!(q.counts("other").expect("counts").done, 5);
    let runs = scrape_t.runs();
    assert_eq!(runs.len(), 30);
    assert!(runs.values().all(|&n| n == 1), "{runs:?}");
    assert!(scrape_t.max_running() <= 2, "{}", scrape_t.max_running());
    assert_eq!(other_t.max_running(), 1);
}

/// Original README: a task with `retries=2` that fails twice succeeds on its third attempt;
/// one that always fails ends `failed` after `retries + 1` attempts, keeping its error.
pub fn retries(store: Box<dyn Store>, handlers: Handlers) {
    let q = queue(store);
    let tracker = Arc::new(Tracker::default());
    let t = Arc::clone(&tracker);
    handlers
        .add(
            &q,
            "flaky",
            move |job: Scrape| {
                let run = t.enter(&job.url);
                t.leave();
                if job.url.ends_with("always") {
                    Err(TaskError::msg(format!("{} is down", job.url)))
                } else if run < 3 {
                    Err(TaskError::msg("timeout"))
                } else {
                    Ok(())
                }
            },
            1,
        )
        .expect("add");
    let opts = EnqueueOptions::new().retries(2);
    let ok = q.enqueue_with("flaky", &scrape(1), opts).expect("enqueue");
    let always = Scrape {
        url: "https://example.com/always".into(),
    };
    let bad = q
        .enqueue_with("flaky", &always, EnqueueOptions::new().retries(1))
        .expect("enqueue");
    q.run_until_complete().expect("run");
    let ok = state(&q, ok);
    assert_eq!((ok.status, ok.attempts), (Status::Done, 3));
    let bad = state(&q, bad);
    assert_eq!((bad.status, bad.attempts), (Status::Failed, 2));
    assert_eq!(
        bad.last_error.as_deref(),
        Some("https://example.com/always is down")
    );
}

/// Original README: `DelayException` defers a task; it runs again by itself, no retry used.
pub fn delay(store: Box<dyn Store>, handlers: Handlers) {
    let q = queue(store);
    let tracker = Arc::new(Tracker::default());
    let t = Arc::clone(&tracker);
    handlers
        .add(
            &q,
            "later",
            move |job: Scrape| {
                let run = t.enter(&job.url);
                t.leave();
                if run == 1 {
                    return Err(TaskError::Delay(Duration::from_millis(150)));
                }
                Ok(())
            },
            1,
        )
        .expect("add");
    let id = q.enqueue("later", &scrape(7)).expect("enqueue");
    let started = Instant::now();
    q.run_until_complete().expect("run");
    // Timestamps have millisecond resolution: the delay may end up to 1 ms early.
    assert!(started.elapsed() >= Duration::from_millis(149));
    let s = state(&q, id);
    assert_eq!((s.status, s.attempts, s.retries_left), (Status::Done, 2, 0));
}

fn always_failing(q: &Queue, handlers: Handlers, channel: &str) {
    handlers
        .add(q, channel, |_: u32| Err(TaskError::msg("no")), 1)
        .expect("add");
}

/// Original README: `clear_failed` deletes a channel's failed tasks, or every channel's.
pub fn clear_failed(store: Box<dyn Store>, handlers: Handlers) {
    let q = queue(store);
    always_failing(&q, handlers, "a");
    always_failing(&q, handlers, "b");
    for i in 0..3u32 {
        q.enqueue("a", &i).expect("enqueue");
    }
    q.enqueue("b", &9u32).expect("enqueue");
    q.run_until_complete().expect("run");
    assert_eq!(q.counts("a").expect("counts").failed, 3);
    assert_eq!(q.clear_failed("a").expect("clear"), 3);
    assert_eq!(q.counts("a").expect("counts").total(), 0);
    assert_eq!(q.counts("b").expect("counts").failed, 1);
    assert_eq!(q.clear_failed(None).expect("clear"), 1);
    assert_eq!(q.counts(None).expect("counts").total(), 0);
}

/// Original README: `requeue_failed` runs failed tasks again, with their original retry
/// count or a new one.
pub fn requeue_failed(store: Box<dyn Store>, handlers: Handlers) {
    let q = queue(store);
    let healthy = Arc::new(AtomicBool::new(false));
    let h = Arc::clone(&healthy);
    handlers
        .add(
            &q,
            "a",
            move |_: u32| {
                if h.load(Ordering::SeqCst) {
                    Ok(())
                } else {
                    Err(TaskError::msg("down"))
                }
            },
            2,
        )
        .expect("add");
    let ids: Vec<TaskId> = (0..4u32)
        .map(|i| {
            q.enqueue_with("a", &i, EnqueueOptions::new().retries(1))
                .expect("enqueue")
        })
        .collect();
    q.run_until_complete().expect("run");
    assert_eq!(q.counts("a").expect("counts").failed, 4);
    assert_eq!(q.requeue_failed("a", 5).expect("requeue"), 4);
    assert!(ids.iter().all(|id| state(&q, *id).retries_left == 5));
    q.run_until_complete().expect("run");
    // Still down: each ran 6 more times (1 + 5 retries).
    assert!(ids.iter().all(|id| state(&q, *id).attempts == 8));
    assert_eq!(q.requeue_failed(None, None).expect("requeue"), 4);
    assert!(ids.iter().all(|id| state(&q, *id).retries_left == 1));
    healthy.store(true, Ordering::SeqCst);
    q.run_until_complete().expect("run");
    assert_eq!(q.counts("a").expect("counts").done, 4);
}

/// Original README: `remove_channel` drops the handler and every task of the channel.
pub fn remove_channel(store: Box<dyn Store>, handlers: Handlers) {
    let q = queue(store);
    handlers.add(&q, "gone", |_: u32| Ok(()), 1).expect("add");
    handlers.add(&q, "kept", |_: u32| Ok(()), 1).expect("add");
    for i in 0..4u32 {
        q.enqueue("gone", &i).expect("enqueue");
    }
    q.enqueue("kept", &1u32).expect("enqueue");
    assert_eq!(q.remove_channel("gone").expect("remove"), 4);
    assert_eq!(q.counts("gone").expect("counts").total(), 0);
    q.run_until_complete().expect("run");
    assert_eq!(q.counts("kept").expect("counts").done, 1);
    // Done tasks stay until purged.
    assert_eq!(
        q.purge_done("kept", Duration::from_secs(3_600))
            .expect("purge"),
        0
    );
    std::thread::sleep(Duration::from_millis(2));
    assert_eq!(q.purge_done(None, Duration::ZERO).expect("purge"), 1);
    assert_eq!(q.counts(None).expect("counts").total(), 0);
    // The name is free again.
    handlers
        .add(&q, "gone", |_: u32| Ok(()), 1)
        .expect("add again");
}

/// Original README: `run_until_complete` returns once nothing of its channels is pending,
/// running or delayed; it does not wait for channels it has no handler for.
pub fn run_until_complete(store: Box<dyn Store>, handlers: Handlers) {
    let q = queue(store);
    q.run_until_complete()
        .expect("no channels: returns at once");
    let done = Arc::new(AtomicUsize::new(0));
    let delayed = Arc::new(AtomicBool::new(false));
    let (d, once) = (Arc::clone(&done), Arc::clone(&delayed));
    handlers
        .add(
            &q,
            "work",
            move |n: u32| {
                d.fetch_add(1, Ordering::SeqCst);
                if n == 0 && !once.swap(true, Ordering::SeqCst) {
                    return Err(TaskError::Delay(Duration::from_millis(50)));
                }
                Ok(())
            },
            3,
        )
        .expect("add");
    q.enqueue("nobody-serves-this", &1u32).expect("enqueue");
    for n in 0..20u32 {
        q.enqueue("work", &n).expect("enqueue");
    }
    q.run_until_complete().expect("run");
    assert_eq!(q.counts("work").expect("counts").done, 20);
    assert_eq!(done.load(Ordering::SeqCst), 21);
    assert_eq!(q.counts("nobody-serves-this").expect("counts").pending, 1);
}

/// `stop` while handlers run: it waits for them, records their outcomes, leaves the rest
/// queued; a restart finishes everything, each task exactly once.
pub fn stop_while_busy_loses_nothing(store: Box<dyn Store>, handlers: Handlers) {
    let q = queue(store);
    let tracker = Arc::new(Tracker::default());
    let t = Arc::clone(&tracker);
    handlers
        .add(
            &q,
            "busy",
            move |n: u32| {
                t.enter(&n.to_string());
                std::thread::sleep(Duration::from_millis(1));
                t.leave();
                Ok(())
            },
            4,
        )
        .expect("add");
    for n in 0..300u32 {
        q.enqueue("busy", &n).expect("enqueue");
    }
    q.start().expect("start");
    while q.counts("busy").expect("counts").done < 20 {
        std::thread::yield_now();
    }
    q.stop();
    let c = q.counts("busy").expect("counts");
    assert_eq!(c.running, 0, "stop left tasks running: {c:?}");
    assert_eq!(c.done + c.pending, 300, "{c:?}");
    assert!(c.pending > 0, "stopped too late to test anything: {c:?}");
    assert_eq!(tracker.runs().len(), c.done);
    q.run_until_complete().expect("run");
    assert_eq!(q.counts("busy").expect("counts").done, 300);
    let runs = tracker.runs();
    assert_eq!(runs.len(), 300);
    assert!(runs.values().all(|&n| n == 1));
}

/// A panicking handler fails its attempt with the panic message; the worker lives on.
pub fn panic_fails_the_attempt_only(store: Box<dyn Store>, handlers: Handlers) {
    let q = queue(store);
    handlers
        .add(
            &q,
            "p",
            |n: u32| {
                if n % 2 == 1 {
                    panic!("odd number {n}");
                }
                Ok(())
            },
            1,
        )
        .expect("add");
    let ids: Vec<TaskId> = (0..10u32)
        .map(|n| {
            q.enqueue_with("p", &n, EnqueueOptions::new().retries(1))
                .expect("enqueue")
        })
        .collect();
    q.run_until_complete().expect("run");
    for (n, id) in ids.iter().enumerate() {
        let s = state(&q, *id);
        if n % 2 == 1 {
            assert_eq!((s.status, s.attempts), (Status::Failed, 2));
            let expected = format!("handler panicked: odd number {n}");
            assert_eq!(s.last_error.as_deref(), Some(expected.as_str()));
        } else {
            assert_eq!(s.status, Status::Done);
        }
    }
}

/// Arguments that do not decode fail that task at once, naming the type; others go on.
pub fn undecodable_args_fail_without_retry(store: Box<dyn Store>, handlers: Handlers) {
    let q = queue(store);
    handlers
        .add(&q, "typed", |_: Scrape| Ok(()), 1)
        .expect("add");
    let bad = q
        .enqueue_with("typed", &[1u8, 2, 3], EnqueueOptions::new().retries(5))
        .expect("enqueue");
    let good = q.enqueue("typed", &scrape(1)).expect("enqueue");
    q.run_until_complete().expect("run");
    let b = state(&q, bad);
    assert_eq!((b.status, b.attempts), (Status::Failed, 1));
    let msg = b.last_error.expect("an error is kept");
    assert!(
        msg.contains("do not decode into") && msg.contains("Scrape"),
        "{msg}"
    );
    assert_eq!(state(&q, good).status, Status::Done);
}

/// Many producers and workers: every task runs exactly once, never two at once.
pub fn many_threads_run_each_task_once(store: Box<dyn Store>, handlers: Handlers) {
    let q = Arc::new(queue(store));
    let seen = Arc::new(std::sync::Mutex::new(HashSet::new()));
    let dupes = Arc::new(AtomicUsize::new(0));
    let (s, d) = (Arc::clone(&seen), Arc::clone(&dupes));
    handlers
        .add(
            &q,
            "n",
            move |n: u32| {
                if !s.lock().expect("no panics while held").insert(n) {
                    d.fetch_add(1, Ordering::SeqCst);
                }
                Ok(())
            },
            8,
        )
        .expect("add");
    q.start().expect("start");
    std::thread::scope(|scope| {
        for p in 0..4u32 {
            let q = Arc::clone(&q);
            scope.spawn(move || {
                for i in 0..500u32 {
                    q.enqueue("n", &(p * 1_000 + i)).expect("enqueue");
                }
            });
        }
    });
    q.run_until_complete().expect("run");
    assert_eq!(dupes.load(Ordering::SeqCst), 0);
    assert_eq!(seen.lock().expect("no panics while held").len(), 2_000);
    assert_eq!(q.counts("n").expect("counts").done, 2_000);
}

/// Clear errors for zero workers, a duplicate channel and an unusable name; `start` twice
/// is harmless; enqueueing after `stop` keeps the task for the next start.
pub fn misuse_gets_clear_errors(store: Box<dyn Store>, handlers: Handlers) {
    let q = queue(store);
    let zero = q
        .add_channel("z", |_: u32| Ok(()), 0)
        .expect_err("must fail");
    assert!(matches!(zero, Error::InvalidConfig(_)), "{zero}");
    assert!(zero.to_string().contains("at least one worker"), "{zero}");
    handlers.add(&q, "a", |_: u32| Ok(()), 1).expect("add");
    let dup = q
        .add_channel("a", |_: u32| Ok(()), 1)
        .expect_err("must fail");
    assert!(matches!(dup, Error::DuplicateChannel(_)), "{dup}");
    let empty = q
        .add_channel("", |_: u32| Ok(()), 1)
        .expect_err("must fail");
    assert!(matches!(empty, Error::InvalidChannel { .. }), "{empty}");
    assert!(matches!(
        q.enqueue("", &1u32),
        Err(Error::InvalidChannel { .. })
    ));
    q.start().expect("start");
    q.start().expect("second start does nothing");
    q.stop();
    let id = q.enqueue("a", &1u32).expect("enqueue after stop");
    assert_eq!(state(&q, id).status, Status::Pending);
    q.run_until_complete().expect("run");
    assert_eq!(state(&q, id).status, Status::Done);
}

/// Retention: a running queue deletes finished tasks older than kept — a channel's own
/// time over the queue's — and nothing else: not younger ones, not another channel's, not
/// queued ones; the totals stay as they were.
pub fn a_running_queue_deletes_what_it_keeps_no_longer(store: Box<dyn Store>, handlers: Handlers) {
    let clock = ManualClock::new(crate::conformance::T0);
    let q = SimplePyQ::builder(store)
        .clock(clock.clone())
        .poll_interval(Duration::from_millis(5))
        .keep_done(Duration::from_secs(16))
        .build()
        .expect("valid settings");
    // Odd numbers fail (retries = 0).
    let handler = |n: u32| {
        if n % 2 == 1 {
            Err(TaskError::msg("odd"))
        } else {
            Ok(())
        }
    };
    let own = simplepyq::ChannelOptions::new(2).keep_failed(Duration::from_secs(8));
    handlers.add_with(&q, "a", handler, own).expect("add");
    handlers.add(&q, "b", handler, 2).expect("add");
    for n in 0..6u32 {
        q.enqueue("a", &n).expect("enqueue");
        q.enqueue("b", &n).expect("enqueue");
    }
    q.run_until_complete().expect("run");
    let totals = q.store().totals().expect("totals");
    let later = q
        .enqueue_with(
            "a",
            &0u32,
            EnqueueOptions::new().delay(Duration::from_secs(3_600)),
        )
        .expect("enqueue");
    q.start().expect("start");
    let counts = |c: &str| {
        let c = q.counts(c).expect("counts");
        (c.done, c.failed)
    };
    // 10 s on: a's failed tasks (kept 8 s) go; its done ones (the queue's 16 s) stay, and
    // b keeps its failed ones (the queue keeps them for ever).
    clock.advance(Duration::from_secs(10));
    crate::lifecycle::wait_until("a's failed tasks deleted", || counts("a") == (3, 0));
    assert_eq!(counts("b"), (3, 3));
    // 10 s more: done tasks of both go; b's failed ones stay; the delayed task stays.
    clock.advance(Duration::from_secs(10));
    crate::lifecycle::wait_until("done tasks deleted", || {
        counts("a") == (0, 0) && counts("b") == (0, 3)
    });
    q.stop();
    assert_eq!(state(&q, later).status, Status::Delayed);
    assert_eq!(q.store().totals().expect("totals"), totals);
}

/// A task left running by a dead worker runs again once its lease expires.
pub fn expired_lease_runs_the_task_again(store: Box<dyn Store>, handlers: Handlers) {
    let clock = ManualClock::new(crate::conformance::T0);
    let q = SimplePyQ::builder(store)
        .clock(clock.clone())
        .lease(Duration::from_secs(10))
        .poll_interval(Duration::from_millis(5))
        .build()
        .expect("valid settings");
    let id = q
        .enqueue_with("c", &1u32, EnqueueOptions::new().retries(1))
        .expect("enqueue");
    // A worker of some other process claims it and dies.
    let now = crate::conformance::T0;
    let dead = q
        .store()
        .claim("c", 1, now, now.after(Duration::from_secs(10)))
        .expect("claim");
    assert_eq!(dead.len(), 1);
    let ran = Arc::new(AtomicUsize::new(0));
    let r = Arc::clone(&ran);
    handlers
        .add(
            &q,
            "c",
            move |_: u32| {
                r.fetch_add(1, Ordering::SeqCst);
                Ok(())
            },
            1,
        )
        .expect("add");
    q.start().expect("start");
    assert_eq!(
        ran.load(Ordering::SeqCst),
        0,
        "ran while the lease was live"
    );
    clock.advance(Duration::from_secs(11));
    q.run_until_complete().expect("run");
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    let s = state(&q, id);
    assert_eq!((s.status, s.attempts), (Status::Done, 2));
    let stale = q.store().complete(dead[0].claim(), now);
    assert!(matches!(stale, Err(Error::LeaseLost { .. })));
}

/// A lease of this queue's own that lapsed before its keeper renewed it (here: the clock
/// jumps two leases ahead while a handler runs, and the keeper's next round is seconds
/// away) is renewed, not recovered: an idle worker of the same queue, finding an expired
/// lease, does not run the task a second time.
pub fn a_lapsed_lease_of_a_live_worker_is_renewed_not_recovered(
    store: Box<dyn Store>,
    handlers: Handlers,
) {
    let clock = ManualClock::new(crate::conformance::T0);
    let q = SimplePyQ::builder(store)
        .clock(clock.clone())
        .lease(Duration::from_secs(30))
        .poll_interval(Duration::from_millis(5))
        .build()
        .expect("valid settings");
    let runs = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(AtomicBool::new(false));
    let (r, go) = (Arc::clone(&runs), Arc::clone(&release));
    handlers
        .add(
            &q,
            "c",
            move |_: u32| {
                r.fetch_add(1, Ordering::SeqCst);
                while !go.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Ok(())
            },
            2,
        )
        .expect("add");
    let id = q
        .enqueue_with("c", &1u32, EnqueueOptions::new().retries(3))
        .expect("enqueue");
    q.start().expect("start");
    while runs.load(Ordering::SeqCst) == 0 {
        std::thread::yield_now();
    }
    clock.advance(Duration::from_secs(60));
    // The idle worker polls every few milliseconds meanwhile.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the running task ran again");
    release.store(true, Ordering::SeqCst);
    q.run_until_complete().expect("run");
    let s = state(&q, id);
    assert_eq!(
        (s.status, s.attempts, runs.load(Ordering::SeqCst)),
        (Status::Done, 1, 1)
    );
}

/// A handler that runs for several leases keeps its task: the lease is renewed, so the task
/// is neither recovered nor claimed by anyone else meanwhile, and it runs once.
pub fn slow_handler_keeps_its_lease(store: Box<dyn Store>, handlers: Handlers) {
    let q = SimplePyQ::builder(store)
        .lease(Duration::from_millis(150))
        .poll_interval(Duration::from_millis(10))
        .build()
        .expect("valid settings");
    let started = Arc::new(AtomicBool::new(false));
    let s = Arc::clone(&started);
    handlers
        .add(
            &q,
            "slow",
            move |_: u32| {
                s.store(true, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(600));
                Ok(())
            },
            1,
        )
        .expect("add");
    let id = q.enqueue("slow", &1u32).expect("enqueue");
    q.start().expect("start");
    while !started.load(Ordering::SeqCst) {
        std::thread::yield_now();
    }
    // Another worker (as of another process) keeps trying for four lease lengths.
    let until = Instant::now() + Duration::from_millis(450);
    while Instant::now() < until {
        let now = simplepyq::Clock::now(&simplepyq::SystemClock);
        assert_eq!(q.store().recover_expired(now, 3).expect("recover"), 0);
        let stolen = q
            .store()
            .claim("slow", 1, now, now.after(Duration::from_secs(1)))
            .expect("claim");
        assert!(stolen.is_empty(), "a running task was claimed again");
        std::thread::sleep(Duration::from_millis(20));
    }
    q.run_until_complete().expect("run");
    let s = state(&q, id);
    assert_eq!((s.status, s.attempts), (Status::Done, 1));
}

/// Scheduled tasks (a delay, a time) run once due, not before; a batch enqueues all.
pub fn scheduled_tasks_run_when_due(store: Box<dyn Store>, handlers: Handlers) {
    let q = queue(store);
    let ran = Arc::new(std::sync::Mutex::new(Vec::new()));
    let r = Arc::clone(&ran);
    let start = Instant::now();
    handlers
        .add(
            &q,
            "s",
            move |n: u32| {
                r.lock().expect("lock").push((n, start.elapsed()));
                Ok(())
            },
            2,
        )
        .expect("add");
    let delayed = q
        .enqueue_with(
            "s",
            &1u32,
            EnqueueOptions::new().delay(Duration::from_millis(200)),
        )
        .expect("enqueue");
    let at = std::time::SystemTime::now() + Duration::from_millis(100);
    q.enqueue_with("s", &2u32, EnqueueOptions::new().at(at))
        .expect("enqueue");
    let batch = q
        .enqueue_many("s", &[10u32, 11, 12], EnqueueOptions::new())
        .expect("batch");
    assert_eq!(batch.len(), 3);
    assert_eq!(state(&q, delayed).status, Status::Delayed);
    q.run_until_complete().expect("run");
    let ran = ran.lock().expect("lock").clone();
    assert_eq!(ran.len(), 5);
    let when = |n: u32| {
        ran.iter()
            .find(|(m, _)| *m == n)
            .map(|(_, t)| *t)
            .expect("ran")
    };
    // Timestamps have millisecond resolution: a task may start up to 1 ms early.
    assert!(when(1) >= Duration::from_millis(199), "{:?}", when(1));
    assert!(when(2) >= Duration::from_millis(99), "{:?}", when(2));
    assert!(when(10) < when(2) && when(2) < when(1));
}

/// With one worker, higher priorities run first; equal ones in enqueue order.
pub fn priorities_run_highest_first(store: Box<dyn Store>, handlers: Handlers) {
    let q = queue(store);
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let o = Arc::clone(&order);
    handlers
        .add(
            &q,
            "p",
            move |n: u32| {
                o.lock().expect("lock").push(n);
                Ok(())
            },
            1,
        )
        .expect("add");
    for (n, priority) in [(1u32, 0), (2, 5), (3, 0), (4, 9), (5, -2), (6, 5)] {
        q.enqueue_with("p", &n, EnqueueOptions::new().priority(priority))
            .expect("enqueue");
    }
    q.run_until_complete().expect("run");
    assert_eq!(*order.lock().expect("lock"), vec![4, 2, 6, 1, 3, 5]);
}

/// A unique key gives back the unfinished task instead of a duplicate.
pub fn unique_keys_prevent_duplicates(store: Box<dyn Store>, handlers: Handlers) {
    let q = queue(store);
    let ran = Arc::new(AtomicUsize::new(0));
    let r = Arc::clone(&ran);
    handlers
        .add(
            &q,
            "u",
            move |_: String| {
                r.fetch_add(1, Ordering::SeqCst);
                Ok(())
            },
            1,
        )
        .expect("add");
    let opts = || EnqueueOptions::new().unique("report-2026-11");
    let first = q.enqueue_with("u", "a", opts()).expect("enqueue");
    assert_eq!(q.enqueue_with("u", "b", opts()).expect("enqueue"), first);
    q.run_until_complete().expect("run");
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    // Done: the key is free for the next run of the report.
    let next = q.enqueue_with("u", "c", opts()).expect("enqueue");
    assert_ne!(next, first);
}

/// An exponential backoff spaces retries out; a delay asked for by the handler wins over it.
pub fn backoff_spaces_retries_and_delay_wins(store: Box<dyn Store>, handlers: Handlers) {
    let q = queue(store);
    let times = Arc::new(std::sync::Mutex::new(Vec::new()));
    let t = Arc::clone(&times);
    let backoff = simplepyq::Backoff::Exponential {
        base: Duration::from_millis(60),
        max: Duration::from_secs(10),
        jitter: false,
    };
    handlers
        .add_with(
            &q,
            "b",
            move |mode: String| {
                let mut times = t.lock().expect("lock");
                times.push((mode.clone(), Instant::now()));
                let runs = times.iter().filter(|(m, _)| *m == mode).count();
                match (mode.as_str(), runs) {
                    ("fail", 1 | 2) => Err(TaskError::msg("not yet")),
                    ("delay", 1) => Err(TaskError::Delay(Duration::from_millis(5))),
                    _ => Ok(()),
                }
            },
            simplepyq::ChannelOptions::new(2).backoff(backoff),
        )
        .expect("add");
    let failing = q
        .enqueue_with("b", "fail", EnqueueOptions::new().retries(2))
        .expect("enqueue");
    q.enqueue("b", "delay").expect("enqueue");
    q.run_until_complete().expect("run");
    assert_eq!(state(&q, failing).status, Status::Done);
    let times = times.lock().expect("lock");
    let of = |mode: &str| -> Vec<Instant> {
        times
            .iter()
            .filter(|(m, _)| m == mode)
            .map(|(_, t)| *t)
            .collect()
    };
    let fail = of("fail");
    assert_eq!(fail.len(), 3);
    // Waits of 60 ms, then 120 ms (less 1 ms of timestamp resolution).
    assert!(
        fail[1] - fail[0] >= Duration::from_millis(59),
        "{:?}",
        fail[1] - fail[0]
    );
    assert!(
        fail[2] - fail[1] >= Duration::from_millis(119),
        "{:?}",
        fail[2] - fail[1]
    );
    let delay = of("delay");
    assert_eq!(delay.len(), 2);
    assert!(
        delay[1] - delay[0] < Duration::from_millis(60),
        "the backoff was used for a delay"
    );
}

/// Inspection: pages of tasks, their arguments decoded, and cancelling a queued task.
pub fn inspect_and_cancel(store: Box<dyn Store>, handlers: Handlers) {
    let q = queue(store);
    let ids: Vec<TaskId> = (0..5)
        .map(|i| q.enqueue("i", &scrape(i)).expect("enqueue"))
        .collect();
    q.cancel(ids[1]).expect("cancel");
    let page = q
        .tasks(
            &simplepyq::ListFilter::new(10)
                .channel("i")
                .status(Status::Pending),
        )
        .expect("list");
    assert_eq!(
        page.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![ids[0], ids[2], ids[3], ids[4]]
    );
    let args: Scrape = simplepyq::decode_args(&page[1]).expect("decode");
    assert_eq!(args, scrape(2));
    let wrong = simplepyq::decode_args::<u64>(&page[1]).expect_err("not a number");
    assert!(matches!(wrong, Error::Codec { .. }), "{wrong}");
    assert!(matches!(q.cancel(ids[1]), Err(Error::NotFound(_))));
    handlers.add(&q, "i", |_: Scrape| Ok(()), 1).expect("add");
    q.run_until_complete().expect("run");
    assert!(matches!(
        q.cancel(ids[0]),
        Err(Error::InvalidTransition { .. })
    ));
    assert_eq!(q.counts("i").expect("counts").done, 4);
}

/// The outcome hook hears of every recorded attempt, with the status it led to.
pub fn outcome_hook_sees_every_attempt(store: Box<dyn Store>, handlers: Handlers) {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    let q = SimplePyQ::builder(store)
        .poll_interval(Duration::from_millis(20))
        .on_outcome(move |r| {
            s.lock().expect("lock").push((r.id, r.attempt, r.status));
        })
        .build()
        .expect("valid settings");
    let failed_once = Arc::new(AtomicBool::new(false));
    let f = Arc::clone(&failed_once);
    handlers
        .add(
            &q,
            "h",
            move |fail: bool| {
                if fail && !f.swap(true, Ordering::SeqCst) {
                    return Err(TaskError::msg("first try fails"));
                }
                Ok(())
            },
            1,
        )
        .expect("add");
    let flaky = q
        .enqueue_with("h", &true, EnqueueOptions::new().retries(1))
        .expect("enqueue");
    let fine = q.enqueue("h", &false).expect("enqueue");
    q.run_until_complete().expect("run");
    let mut seen = seen.lock().expect("lock").clone();
    seen.sort_by_key(|(id, attempt, _)| (*id, *attempt));
    assert_eq!(
        seen,
        vec![
            (flaky, 1, Status::Pending),
            (flaky, 2, Status::Done),
            (fine, 1, Status::Done)
        ]
    );
}

/// Injected storage faults on claims, on recording outcomes, and on leases: the workers go
/// on, every task ends done exactly once it was recorded (a lost outcome makes it run
/// again after its lease), none is left running, and errors are reported, not hidden.
pub fn injected_faults_lose_nothing(store: Box<dyn Store>, handlers: Handlers) {
    use crate::faults::{Faults, Flaky};
    let faults = Faults {
        claim: true,
        finish: true,
        leases: true,
        enqueue: false,
    };
    let flaky = Arc::new(Flaky::new(store, faults, 3));
    let q = SimplePyQ::builder(Arc::clone(&flaky))
        .lease(Duration::from_millis(200))
        .poll_interval(Duration::from_millis(10))
        .build()
        .expect("valid settings");
    let runs = Arc::new(AtomicUsize::new(0));
    let r = Arc::clone(&runs);
    handlers
        .add(
            &q,
            "f",
            move |_: u32| {
                r.fetch_add(1, Ordering::SeqCst);
                Ok(())
            },
            2,
        )
        .expect("add");
    for n in 0..60u32 {
        q.enqueue_with("f", &n, EnqueueOptions::new().retries(5))
            .expect("enqueue");
    }
    q.run_until_complete().expect("run");
    let c = flaky.inner().counts(Some("f")).expect("counts");
    assert_eq!((c.done, c.total()), (60, 60), "{c:?}");
    assert!(
        flaky.failed.load(Ordering::SeqCst) > 0,
        "no fault was injected"
    );
    assert!(runs.load(Ordering::SeqCst) >= 60);
    let reported = q.last_worker_error().expect("the faults were reported");
    assert!(reported.contains("injected fault"), "{reported}");
}

/// A handler may enqueue more work to its own channel; it runs in the same run.
pub fn handlers_can_enqueue_to_their_own_channel(store: Box<dyn Store>, handlers: Handlers) {
    let q = Arc::new(queue(store));
    let weak = Arc::downgrade(&q);
    handlers
        .add(
            &q,
            "tree",
            move |depth: u32| {
                if depth < 3 {
                    let q = weak
                        .upgrade()
                        .ok_or_else(|| TaskError::fatal("queue gone"))?;
                    for _ in 0..2 {
                        q.enqueue("tree", &(depth + 1))?;
                    }
                }
                Ok(())
            },
            2,
        )
        .expect("add");
    q.enqueue("tree", &0u32).expect("enqueue");
    q.run_until_complete().expect("run");
    // 1 + 2 + 4 + 8 nodes.
    assert_eq!(q.counts("tree").expect("counts").done, 15);
}

/// Dropping a running queue without `stop` ends its workers; nothing is lost: what was not
/// run stays queued for the next queue on the store.
pub fn dropping_a_running_queue_loses_nothing(store: Box<dyn Store>, handlers: Handlers) {
    let store: Arc<Box<dyn Store>> = Arc::new(store);
    let ran = Arc::new(AtomicUsize::new(0));
    {
        let q = SimplePyQ::builder(Arc::clone(&store))
            .poll_interval(Duration::from_millis(10))
            .build()
            .expect("valid settings");
        let r = Arc::clone(&ran);
        handlers
            .add(
                &q,
                "d",
                move |_: u32| {
                    r.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(2));
                    Ok(())
                },
                2,
            )
            .expect("add");
        for n in 0..100u32 {
            q.enqueue("d", &n).expect("enqueue");
        }
        q.start().expect("start");
        while ran.load(Ordering::SeqCst) < 10 {
            std::thread::yield_now();
        }
    }
    // The dropped queue's workers finish their current tasks and record them.
    let mut waited = 0;
    while store.counts(Some("d")).expect("counts").running > 0 && waited < 500 {
        std::thread::sleep(Duration::from_millis(10));
        waited += 1;
    }
    let c = store.counts(Some("d")).expect("counts");
    assert_eq!(c.running, 0, "{c:?}");
    assert_eq!(c.done + c.pending, 100, "{c:?}");
    let q = SimplePyQ::builder(Arc::clone(&store))
        .poll_interval(Duration::from_millis(10))
        .build()
        .expect("valid settings");
    handlers.add(&q, "d", |_: u32| Ok(()), 2).expect("add");
    q.run_until_complete().expect("run");
    assert_eq!(store.counts(Some("d")).expect("counts").done, 100);
}

/// Expands into one `#[test]` per scenario, each on a fresh store from
/// `$factory: fn() -> Fixture`.
#[macro_export]
macro_rules! scenario_tests {
    ($factory:expr) => {
        $crate::scenario_tests!(@each $factory;
            channels_with_two_workers,
            retries,
            delay,
            clear_failed,
            requeue_failed,
            remove_channel,
            run_until_complete,
            stop_while_busy_loses_nothing,
            panic_fails_the_attempt_only,
            undecodable_args_fail_without_retry,
            many_threads_run_each_task_once,
            misuse_gets_clear_errors,
            expired_lease_runs_the_task_again,
            a_running_queue_deletes_what_it_keeps_no_longer,
            slow_handler_keeps_its_lease,
            a_lapsed_lease_of_a_live_worker_is_renewed_not_recovered,
            scheduled_tasks_run_when_due,
            priorities_run_highest_first,
            unique_keys_prevent_duplicates,
            backoff_spaces_retries_and_delay_wins,
            inspect_and_cancel,
            outcome_hook_sees_every_attempt,
            injected_faults_lose_nothing,
            handlers_can_enqueue_to_their_own_channel,
            dropping_a_running_queue_loses_nothing
        );
    };
    (@each $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                for handlers in [$crate::Handlers::Threads, $crate::Handlers::Async] {
                    let $crate::Fixture { store, guard, .. } = $factory();
                    $crate::scenarios::$name(store, handlers);
                    drop(guard);
                }
            }
        )*
    };
}
