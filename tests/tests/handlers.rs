//! Handlers beyond the basic ones: async channels on tokio, the task context and its
//! cancellation, typed channel handles, and errors converted with `?`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use simplepyq::{
    CancelReason, Cancelled, ChannelOptions, EnqueueOptions, Error, MemoryStore, SimplePyQ,
    SqliteStore, Status, TaskContext, TaskEnd, TaskError, TaskId,
};
use simplepyq_tests::Handlers;
use simplepyq_tests::faults::Flaky;

fn sqlite() -> (tempfile::TempDir, SimplePyQ<SqliteStore>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(dir.path().join("q.db")).expect("open");
    let q = SimplePyQ::builder(store)
        .poll_interval(Duration::from_millis(20))
        .build()
        .expect("valid settings");
    (dir, q)
}

fn runtime(threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// Counts each task's runs by its argument.
#[derive(Default)]
struct Runs(Mutex<HashMap<u32, usize>>);

impl Runs {
    fn add(&self, n: u32) {
        *self.0.lock().entry(n).or_default() += 1;
    }

    fn assert_each_once(&self, n: u32) {
        let runs = self.0.lock();
        assert_eq!(runs.len(), n as usize, "tasks that ran");
        let twice: Vec<_> = runs.iter().filter(|(_, r)| **r != 1).collect();
        assert!(twice.is_empty(), "tasks run more than once: {twice:?}");
    }
}

/// Many I/O-bound tasks wait together: 2,000 tasks each awaiting a 100 ms timer, 500 in
/// flight, on a 2-thread runtime, take about 4 rounds of 100 ms, each run exactly once.
/// (The 10,000 × 1,000 run, with thread channels beside it, is the `async_timers`
/// example, whose times the closing note reports.)
#[test]
fn futures_wait_together_on_two_threads() {
    let rt = runtime(2);
    let (_dir, q) = sqlite();
    let runs = Arc::new(Runs::default());
    let r = Arc::clone(&runs);
    let options = ChannelOptions::new(500).runtime(rt.handle().clone());
    let timers = q
        .add_channel_async_with(
            "timers",
            move |n: u32| {
                let r = Arc::clone(&r);
                async move {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    r.add(n);
                    Ok(())
                }
            },
            options,
        )
        .expect("add");
    let numbers: Vec<u32> = (0..2_000).collect();
    timers
        .enqueue_many(&numbers, Default::default())
        .expect("enqueue");
    let t0 = Instant::now();
    q.run_until_complete().expect("run");
    let took = t0.elapsed();
    runs.assert_each_once(2_000);
    assert_eq!(q.counts("timers").expect("counts").done, 2_000);
    // 4 rounds of 100 ms could not end sooner if fewer than 500 waited at once.
    assert!(took >= Duration::from_millis(400), "{took:?}");
    eprintln!("2,000 timers of 100 ms, 500 in flight, 2 runtime threads: {took:?}");
}

/// Claims, renewals, outcomes and waits are never made on a runtime's thread: the
/// runtime's threads only run handlers. 1,000 tasks, 3 failing once, some delayed.
#[test]
fn no_store_call_runs_on_a_runtime_thread() {
    let rt = runtime(2);
    let store = Arc::new(Flaky::healthy(MemoryStore::new()));
    let q = SimplePyQ::builder(Arc::clone(&store))
        .lease(Duration::from_millis(300))
        .poll_interval(Duration::from_millis(20))
        .build()
        .expect("settings");
    let failed_once = Arc::new(Mutex::new(std::collections::HashSet::new()));
    let f = Arc::clone(&failed_once);
    let options = ChannelOptions::new(50).runtime(rt.handle().clone());
    q.add_channel_async_with(
        "work",
        move |n: u32| {
            let f = Arc::clone(&f);
            async move {
                tokio::time::sleep(Duration::from_millis(u64::from(n % 7))).await;
                if n.is_multiple_of(300) && f.lock().insert(n) {
                    return Err(TaskError::msg("once"));
                }
                if n % 250 == 1 && f.lock().insert(n) {
                    return Err(TaskError::delay(Duration::from_millis(50)));
                }
                Ok(())
            }
        },
        options,
    )
    .expect("add");
    for n in 0..1_000u32 {
        q.enqueue_with("work", &n, simplepyq::EnqueueOptions::new().retries(1))
            .expect("enqueue");
    }
    q.run_until_complete().expect("run");
    assert_eq!(q.counts("work").expect("counts").done, 1_000);
    let (calls, on_runtime) = store.calls_on_runtime();
    assert!(calls > 10, "{calls}");
    assert_eq!(on_runtime, 0, "store calls made on a runtime thread");
}

/// A future the runtime drops before it ends (the runtime shut down) gives its task back:
/// pending again, its attempt not counted; it is not left running with a renewed lease, and
/// a stop does not wait for it. The channel then claims no more, and says why.
#[test]
fn a_future_dropped_by_its_runtime_gives_its_task_back() {
    let rt = runtime(1);
    let (_dir, q) = sqlite();
    let started = Arc::new(AtomicBool::new(false));
    let s = Arc::clone(&started);
    let options = ChannelOptions::new(4).runtime(rt.handle().clone());
    q.add_channel_async_with(
        "forever",
        move |_: u32| {
            let s = Arc::clone(&s);
            async move {
                s.store(true, Ordering::SeqCst);
                std::future::pending::<()>().await;
                Ok(())
            }
        },
        options,
    )
    .expect("add");
    let id = q.enqueue("forever", &1u32).expect("enqueue");
    q.start().expect("start");
    let t0 = Instant::now();
    while !started.load(Ordering::SeqCst) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the future never ran"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    rt.shutdown_background();
    let t0 = Instant::now();
    loop {
        let task = q.task(id).expect("get").expect("exists");
        if task.state.status == Status::Pending {
            assert_eq!(task.state.attempts, 0, "the attempt was given back");
            assert_eq!(task.state.retries_left, 0);
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", task.state);
        std::thread::sleep(Duration::from_millis(5));
    }
    // The channel claims no more: claiming for a dead runtime gave each task back at once,
    // for ever, with a new thread per round and no error.
    std::thread::sleep(Duration::from_millis(100));
    let released = q.stats().released;
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(q.stats().released, released, "the channel kept claiming");
    let error = q.last_worker_error().expect("an error says why");
    assert!(
        error.contains("runtime") && error.contains("shut down"),
        "{error}"
    );
    let t0 = Instant::now();
    let report = q.stop();
    assert!(t0.elapsed() < Duration::from_secs(5), "the stop waited");
    assert!(report.running.is_empty(), "{report:?}");
    // Waiting for the channel's work would wait for ever: it says why instead.
    let err = q.run_until_complete().expect_err("the runtime is gone");
    assert!(err.to_string().contains("runtime"), "{err}");
    let task = q.task(id).expect("get").expect("exists");
    assert_eq!(
        (task.state.status, task.state.attempts),
        (Status::Pending, 0)
    );
}

/// Blocking calls on a current-thread runtime do not hang: `run_until_complete` refuses
/// with a clear error, `stop` does not wait; the async variants do the work.
#[test]
fn blocking_calls_on_a_current_thread_runtime_do_not_hang() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (_dir, q) = sqlite();
    rt.block_on(async {
        let runs = Arc::new(AtomicUsize::new(0));
        let r = Arc::clone(&runs);
        q.add_channel_async(
            "c",
            move |_: u32| {
                let r = Arc::clone(&r);
                async move {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    r.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            },
            8,
        )
        .expect("add");
        for n in 0..50u32 {
            q.enqueue("c", &n).expect("enqueue");
        }
        let err = q.run_until_complete().expect_err("refused");
        assert!(matches!(err, Error::WouldBlock { .. }), "{err}");
        assert!(
            err.to_string().contains("run_until_complete_async"),
            "{err}"
        );
        q.run_until_complete_async().await.expect("run");
        assert_eq!(runs.load(Ordering::SeqCst), 50);

        // A handler that runs until asked to stop; `stop` must not wait for it here. (Its
        // start, not the store's status, is waited for: a stop gives back a task claimed
        // and not started.)
        let started = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&started);
        q.add_channel_async(
            "long",
            move |_: u32, ctx: TaskContext| {
                s.store(true, Ordering::SeqCst);
                async move {
                    ctx.cancelled().await;
                    Err(TaskError::delay(Duration::ZERO))
                }
            },
            1,
        )
        .expect("add");
        let id = q.enqueue("long", &0u32).expect("enqueue");
        q.start().expect("start");
        wait_async(|| started.load(Ordering::SeqCst)).await;
        let report = q.stop();
        assert_eq!(report.running, vec![id], "{report:?}");
        // Asked to stop, the handler deferred its task: it runs again on the next start.
        wait_async(|| q.task(id).expect("get").expect("exists").state.status == Status::Delayed)
            .await;
        let report = q.stop_async().await;
        assert!(report.running.is_empty());
    });
}

async fn wait_async(mut done: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !done() {
        assert!(t0.elapsed() < Duration::from_secs(10), "timed out");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The context tells the handler its task; its signal reaches a running handler on
/// `cancel(id)` and on `stop_timeout`, with thread and with async handlers.
#[test]
fn the_cancellation_signal_reaches_running_handlers() {
    for handlers in [Handlers::Threads, Handlers::Async] {
        for by_stop in [false, true] {
            cancellation(handlers, by_stop);
        }
    }
}

/// What a handler saw in its context: id, channel, attempt, retries left, cancel reason.
type Seen = (TaskId, String, u32, u32, Option<CancelReason>);

fn cancellation(handlers: Handlers, by_stop: bool) {
    let (_dir, q) = sqlite();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let s = Arc::clone(&seen);
    let record = move |ctx: &TaskContext| {
        s.lock().push((
            ctx.id(),
            ctx.channel().to_owned(),
            ctx.attempt(),
            ctx.retries_left(),
            ctx.cancel_reason(),
        ));
    };
    let record = Arc::new(record);
    // A stop gives back a task claimed and not started: it reports the handlers started.
    let started = Arc::new(AtomicBool::new(false));
    match handlers {
        Handlers::Threads => {
            let record = Arc::clone(&record);
            let started = Arc::clone(&started);
            q.add_channel(
                "job",
                move |_: u32, ctx: &TaskContext| {
                    started.store(true, Ordering::SeqCst);
                    while !ctx.is_cancelled() {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    record(ctx);
                    Err(TaskError::fatal("stopped early"))
                },
                1,
            )
            .map(drop)
        }
        Handlers::Async => {
            let record = Arc::clone(&record);
            let started = Arc::clone(&started);
            q.add_channel_async_with(
                "job",
                move |_: u32, ctx: TaskContext| {
                    let record = Arc::clone(&record);
                    started.store(true, Ordering::SeqCst);
                    async move {
                        ctx.cancelled().await;
                        record(&ctx);
                        Err(TaskError::fatal("stopped early"))
                    }
                },
                ChannelOptions::new(1).runtime(simplepyq_tests::runtime().handle().clone()),
            )
            .map(drop)
        }
    }
    .expect("add");
    let enqueued = std::time::SystemTime::now();
    let id = q
        .enqueue_with("job", &7u32, simplepyq::EnqueueOptions::new().retries(2))
        .expect("enqueue");
    q.start().expect("start");
    let t0 = Instant::now();
    while q.task(id).expect("get").expect("exists").state.status != Status::Running {
        assert!(t0.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(1));
    }
    let reason = if by_stop {
        while !started.load(Ordering::SeqCst) {
            assert!(t0.elapsed() < Duration::from_secs(10));
            std::thread::sleep(Duration::from_millis(1));
        }
        let report = q.stop_timeout(Duration::from_millis(50));
        assert_eq!(report.running, vec![id], "{handlers:?}");
        CancelReason::Stop
    } else {
        // Not reachable by the store alone: the queue asks the handler.
        assert_eq!(q.cancel(id).expect("cancel"), Cancelled::Requested);
        CancelReason::Cancel
    };
    let t0 = Instant::now();
    while q.task(id).expect("get").expect("exists").state.status != Status::Failed {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{handlers:?} {by_stop}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let seen = seen.lock().clone();
    assert_eq!(
        seen,
        vec![(id, "job".to_owned(), 1, 2, Some(reason))],
        "{handlers:?}"
    );
    let task = q.task(id).expect("get").expect("exists");
    assert_eq!(task.state.last_error.as_deref(), Some("stopped early"));
    let ctx_enqueued = task.created_at.as_millis();
    let now = i64::try_from(
        enqueued
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_millis(),
    )
    .expect("fits");
    assert!((ctx_enqueued - now).abs() < 1_000);
    // A pending task is removed, not asked.
    let pending = q.enqueue("nobody", &1u32).expect("enqueue");
    assert_eq!(q.cancel(pending).expect("cancel"), Cancelled::Removed);
    q.stop();
}

/// The context's enqueue time is the task's.
#[test]
fn the_context_carries_the_enqueue_time() {
    let (_dir, q) = sqlite();
    let times = Arc::new(Mutex::new(Vec::new()));
    let t = Arc::clone(&times);
    q.add_channel(
        "t",
        move |_: u32, ctx: &TaskContext| {
            t.lock().push(ctx.enqueued_at());
            Ok(())
        },
        1,
    )
    .expect("add");
    let before = std::time::SystemTime::now() - Duration::from_millis(1);
    let id = q.enqueue("t", &1u32).expect("enqueue");
    let after = std::time::SystemTime::now() + Duration::from_millis(1);
    q.run_until_complete().expect("run");
    let times = times.lock();
    assert_eq!(times.len(), 1);
    assert!(times[0] >= before && times[0] <= after, "{:?}", times[0]);
    let created = q.task(id).expect("get").expect("exists").created_at;
    let ms = times[0]
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis();
    assert_eq!(i64::try_from(ms).expect("fits"), created.as_millis());
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Resize {
    path: String,
    width: u32,
}

/// Typed handles enqueue from other threads, and a producer's handle reaches a channel
/// served by another queue on the same file (another process would do the same).
#[test]
fn typed_channels_enqueue_from_threads_and_producers() {
    let (dir, q) = sqlite();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = Arc::clone(&got);
    let resize = q
        .add_channel(
            "resize",
            move |r: Resize| {
                g.lock().push(r);
                Ok(())
            },
            2,
        )
        .expect("add");
    assert_eq!(resize.name(), "resize");
    let threads: Vec<_> = (0..4u32)
        .map(|i| {
            let resize = resize.clone();
            std::thread::spawn(move || {
                resize
                    .enqueue(&Resize {
                        path: format!("{i}.png"),
                        width: i,
                    })
                    .expect("enqueue")
            })
        })
        .collect();
    for t in threads {
        t.join().expect("producer");
    }
    let producer = SimplePyQ::open(dir.path().join("q.db")).expect("open");
    let handle = producer.channel::<Resize>("resize");
    handle
        .enqueue(&Resize {
            path: "p.png".into(),
            width: 9,
        })
        .expect("enqueue");
    q.run_until_complete().expect("run");
    let mut got = got.lock().clone();
    got.sort_by_key(|r| r.width);
    let widths: Vec<u32> = got.iter().map(|r| r.width).collect();
    assert_eq!(widths, vec![0, 1, 2, 3, 9]);
}

#[derive(Debug)]
struct Outer {
    source: std::io::Error,
}

impl std::fmt::Display for Outer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("could not read the invoice")
    }
}

impl std::error::Error for Outer {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

fn boxed() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    Err("the box said no".into())
}

fn with_anyhow() -> anyhow::Result<()> {
    use anyhow::Context;
    Err(std::io::Error::other("disk gone")).context("saving the report")
}

/// `?` takes std errors, boxed errors and anyhow errors, and the task's last error keeps
/// the chain of causes, with thread and with async handlers.
#[test]
fn question_mark_keeps_the_chain_of_causes() {
    for handlers in [Handlers::Threads, Handlers::Async] {
        let (_dir, q) = sqlite();
        handlers
            .add(
                &q,
                "errors",
                |kind: u32| {
                    match kind {
                        0 => Err(Outer {
                            source: std::io::Error::other("permission denied"),
                        })?,
                        1 => boxed()?,
                        2 => with_anyhow()?,
                        _ => "x".parse::<u8>().map(drop)?,
                    }
                    Ok(())
                },
                1,
            )
            .expect("add");
        let ids: Vec<TaskId> = (0..4u32)
            .map(|k| q.enqueue("errors", &k).expect("enqueue"))
            .collect();
        q.run_until_complete().expect("run");
        let errors: Vec<String> = ids
            .iter()
            .map(|id| {
                let t = q.task(*id).expect("get").expect("exists");
                assert_eq!(t.state.status, Status::Failed);
                t.state.last_error.expect("an error")
            })
            .collect();
        assert_eq!(
            errors,
            vec![
                "could not read the invoice: permission denied".to_owned(),
                "the box said no".to_owned(),
                "saving the report: disk gone".to_owned(),
                "invalid digit found in string".to_owned(),
            ],
            "{handlers:?}"
        );
    }
}

/// A future that panics fails its attempt only; the channel goes on.
#[test]
fn a_panicking_future_fails_its_attempt() {
    let (_dir, q) = sqlite();
    q.add_channel_async(
        "p",
        |n: u32| async move {
            tokio::task::yield_now().await;
            assert!(n != 1, "task {n} panics");
            Ok(())
        },
        4,
    )
    .expect("add");
    let ids: Vec<TaskId> = (0..5u32)
        .map(|n| q.enqueue("p", &n).expect("enqueue"))
        .collect();
    q.run_until_complete().expect("run");
    let t = q.task(ids[1]).expect("get").expect("exists");
    assert_eq!(t.state.status, Status::Failed);
    let e = t.state.last_error.expect("error");
    assert!(
        e.contains("handler panicked") && e.contains("task 1 panics"),
        "{e}"
    );
    assert_eq!(q.counts("p").expect("counts").done, 4);
}

/// A handler of one queue that stops another queue is not that queue's handler: the stop
/// waits (up to its deadline) for the other queue's own running handler, even when both
/// tasks have the same id and attempt (two stores each start at id 1). The "own claim" was
/// per thread: that stop returned at once, reporting the other's handler as its caller's.
#[test]
fn a_handler_stopping_another_queue_waits_for_that_queues_handlers() {
    let b = Arc::new(SimplePyQ::memory());
    let b_done = Arc::new(AtomicBool::new(false));
    let b_running = Arc::new(AtomicBool::new(false));
    let (done, running) = (Arc::clone(&b_done), Arc::clone(&b_running));
    b.add_channel(
        "b",
        move |_: u32| {
            running.store(true, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(300));
            done.store(true, Ordering::SeqCst);
            Ok(())
        },
        1,
    )
    .expect("add");
    b.enqueue("b", &0u32).expect("enqueue");
    b.start().expect("start");
    let t0 = Instant::now();
    while !b_running.load(Ordering::SeqCst) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "b's handler never ran"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let a = SimplePyQ::memory();
    let (tx, rx) = std::sync::mpsc::channel();
    let (other, seen_done) = (Arc::clone(&b), Arc::clone(&b_done));
    let tx = Mutex::new(tx);
    a.add_channel(
        "a",
        move |_: u32| {
            let report = other.stop_timeout(Duration::from_secs(5));
            let _ = tx.lock().send((report, seen_done.load(Ordering::SeqCst)));
            Ok(())
        },
        1,
    )
    .expect("add");
    a.enqueue("a", &0u32).expect("enqueue");
    a.start().expect("start");
    let (report, b_finished) = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the stop returned");
    assert!(report.running.is_empty(), "{report:?}");
    assert!(b_finished, "the stop returned while b's handler ran");
    a.stop();
}

/// Results: what a thread or an async handler gives with `set_result` is read back once its
/// task is done, by id; a run that fails after giving one keeps none (its task failed); a
/// result over the limit fails the attempt with a clear error even though the handler then
/// returns `Ok`; `()` handlers keep nothing; a result read as the wrong type is a codec
/// error.
#[test]
fn results_of_thread_and_async_handlers() {
    let (_dir, q) = sqlite();
    let rt = runtime(2);
    q.add_channel(
        "thread",
        |n: u32, ctx: &TaskContext| {
            match n {
                0 => {}
                7 => {
                    ctx.set_result(&"lost")?;
                    return Err(TaskError::fatal("seven"));
                }
                9 => {
                    // Ignores the error: the attempt fails all the same.
                    let _ = ctx.set_result(&vec![1u8; 2 << 20]);
                }
                _ => ctx.set_result(&(n * 2))?,
            }
            Ok(())
        },
        2,
    )
    .expect("add");
    rt.block_on(async {
        q.add_channel_async(
            "async",
            |n: u32, ctx: TaskContext| async move {
                ctx.set_result(&format!("a{n}"))?;
                Ok(())
            },
            2,
        )
        .expect("add");
    });
    let ids: Vec<TaskId> = [0u32, 5, 7, 9]
        .iter()
        .map(|n| q.enqueue("thread", n).expect("enqueue"))
        .collect();
    let on_async = q.enqueue("async", &4u32).expect("enqueue");
    assert_eq!(
        q.result::<u32>(ids[1]).expect("result"),
        None,
        "not done yet"
    );
    rt.block_on(q.run_until_complete_async()).expect("run");
    let status = |id: TaskId| q.task(id).expect("get").expect("exists").state;
    assert_eq!(q.result::<u32>(ids[0]).expect("result"), None);
    assert_eq!(status(ids[0]).status, Status::Done);
    assert_eq!(q.result::<u32>(ids[1]).expect("result"), Some(10));
    assert_eq!(
        q.result::<String>(on_async).expect("result"),
        Some("a4".into())
    );
    assert_eq!(q.result::<String>(ids[2]).expect("result"), None);
    assert_eq!(status(ids[2]).status, Status::Failed);
    let big = status(ids[3]);
    assert_eq!(big.status, Status::Failed);
    let error = big.last_error.unwrap_or_default();
    assert!(error.contains("over the limit"), "{error}");
    assert!(matches!(
        q.result::<Vec<String>>(ids[1]),
        Err(Error::Codec { .. })
    ));
}

/// `wait`: a task done here ends the wait with its result, a failed one with its error; one
/// cancelled or removed meanwhile is gone; one that has not ended by the timeout gives
/// `None`; a task run by another queue on the file (another process's, as far as this one
/// knows) is seen too; and `wait_async` does the same from async code.
#[test]
fn wait_answers_as_a_task_ends() {
    let (dir, q) = sqlite();
    q.add_channel(
        "c",
        |n: u32, ctx: &TaskContext| {
            if n == 0 {
                return Err(TaskError::fatal("zero"));
            }
            std::thread::sleep(Duration::from_millis(30));
            ctx.set_result(&(n + 1))?;
            Ok(())
        },
        2,
    )
    .expect("add");
    q.start().expect("start");
    let long = Duration::from_secs(10);
    let done = q.enqueue("c", &41u32).expect("enqueue");
    assert_eq!(
        q.wait::<u32>(done, long).expect("wait"),
        Some(TaskEnd::Done(Some(42)))
    );
    let failed = q.enqueue("c", &0u32).expect("enqueue");
    assert_eq!(
        q.wait::<u32>(failed, long).expect("wait"),
        Some(TaskEnd::Failed("zero".into()))
    );
    // Not due for an hour: not ended in 50 ms; then cancelled while waited for.
    let later = q
        .enqueue_with(
            "c",
            &1u32,
            EnqueueOptions::new().delay(Duration::from_secs(3_600)),
        )
        .expect("enqueue");
    let t0 = Instant::now();
    assert_eq!(
        q.wait::<u32>(later, Duration::from_millis(50))
            .expect("wait"),
        None
    );
    assert!(t0.elapsed() >= Duration::from_millis(50));
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(50));
            q.cancel(later).expect("cancel");
        });
        assert_eq!(
            q.wait::<u32>(later, long).expect("wait"),
            Some(TaskEnd::Gone)
        );
    });
    // Another queue on the file, which serves no channel, waits for a task this one runs.
    let other = SimplePyQ::new(SqliteStore::open(dir.path().join("q.db")).expect("open"));
    let elsewhere = other.enqueue("c", &9u32).expect("enqueue");
    assert_eq!(
        other.wait::<u32>(elsewhere, long).expect("wait"),
        Some(TaskEnd::Done(Some(10)))
    );
    let rt = runtime(1);
    let id = q.enqueue("c", &1u32).expect("enqueue");
    let end = rt.block_on(q.wait_async::<u32>(id, long)).expect("wait");
    assert_eq!(end, Some(TaskEnd::Done(Some(2))));
    q.stop();
}
