//! Execution timeouts (`ChannelOptions::timeout`): the signal at the deadline, the attempt
//! failed as timed out and retried by the policy, an async handler's future dropped, and a
//! thread handler that ignores the signal reported as stuck while its task keeps its lease.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use simplepyq::InspectStore;
use simplepyq::{
    CancelReason, ChannelOptions, EnqueueOptions, Error, SimplePyQ, SqliteStore, Status,
    TaskContext,
};

const TIMEOUT: Duration = Duration::from_millis(100);

fn queue(path: &std::path::Path, lease: Duration) -> SimplePyQ<SqliteStore> {
    SimplePyQ::builder(SqliteStore::open(path).expect("open"))
        .lease(lease)
        .poll_interval(Duration::from_millis(10))
        .build()
        .expect("valid settings")
}

/// A thread handler that looks at its signal ends at the deadline; the attempt fails as
/// timed out whatever the handler returned, and the retry runs (and times out) again.
#[test]
fn a_thread_handler_watching_its_signal_times_out_and_is_retried() {
    let dir = tempfile::tempdir().expect("temp dir");
    let q = queue(&dir.path().join("q.db"), Duration::from_secs(30));
    let reasons = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&reasons);
    q.add_channel_with(
        "c",
        move |_: u32, ctx: &TaskContext| {
            let began = Instant::now();
            while !ctx.is_cancelled() {
                assert!(began.elapsed() < Duration::from_secs(5), "no signal");
                std::thread::sleep(Duration::from_millis(5));
            }
            seen.lock().push((ctx.cancel_reason(), began.elapsed()));
            Ok(())
        },
        ChannelOptions::new(1).timeout(TIMEOUT),
    )
    .expect("add");
    let id = q
        .enqueue_with("c", &1, EnqueueOptions::new().retries(1))
        .expect("enqueue");
    q.run_until_complete().expect("run");
    let reasons = reasons.lock().clone();
    assert_eq!(reasons.len(), 2, "the first attempt and its retry");
    for (reason, took) in &reasons {
        assert_eq!(*reason, Some(CancelReason::Timeout));
        assert!(*took >= TIMEOUT, "signalled early: {took:?}");
    }
    let task = q.task(id).expect("read").expect("kept");
    assert_eq!(task.state.status, Status::Failed);
    assert_eq!(task.state.attempts, 2);
    assert_eq!(
        task.state.last_error.as_deref(),
        Some("timed out after 100ms")
    );
    assert_eq!((q.stats().timed_out, q.stats().stuck), (2, 0));
}

/// A thread handler that ignores its signal runs on past the deadline: it is counted as
/// stuck meanwhile, and marked so in the store (a read-only view of the file, as the
/// dashboard and other processes read it, lists it); its task keeps its lease (a second
/// queue on the file, as another process, never starts it again, though the lease is 300 ms
/// and the handler runs 1.2 s), and when it returns Ok its attempt is recorded as timed out
/// and the mark counts no more.
#[test]
fn a_thread_handler_ignoring_its_signal_keeps_its_lease_and_is_stuck() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("q.db");
    let lease = Duration::from_millis(300);
    let (q, other) = (queue(&path, lease), queue(&path, lease));
    let starts = Arc::new(AtomicUsize::new(0));
    for queue in [&q, &other] {
        let starts = Arc::clone(&starts);
        queue
            .add_channel_with(
                "c",
                move |_: u32| {
                    starts.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(1_200));
                    Ok(())
                },
                ChannelOptions::new(1).timeout(TIMEOUT),
            )
            .expect("add");
    }
    let id = q.enqueue("c", &1).expect("enqueue");
    q.start().expect("start");
    other.start().expect("start");
    let deadline = Instant::now() + Duration::from_secs(5);
    while q.stats().stuck + other.stats().stuck == 0 {
        assert!(Instant::now() < deadline, "never counted as stuck");
        std::thread::sleep(Duration::from_millis(10));
    }
    let view = SqliteStore::open_read_only(&path).expect("a read-only view");
    while view.stuck(None).expect("stuck").is_empty() {
        assert!(Instant::now() < deadline, "never marked stuck in the store");
        std::thread::sleep(Duration::from_millis(10));
    }
    let marked = view.stuck(Some("c")).expect("stuck");
    assert_eq!((marked[0].id, marked[0].attempt), (id, 1));
    assert_eq!(q.stuck(None).expect("stuck"), marked);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        starts.load(Ordering::SeqCst),
        1,
        "a second run while the first runs"
    );
    let task = q.task(id).expect("read").expect("kept");
    assert_eq!(task.state.status, Status::Running, "its lease is kept");
    while q.task(id).expect("read").expect("kept").state.status == Status::Running {
        assert!(Instant::now() < deadline, "never recorded");
        std::thread::sleep(Duration::from_millis(10));
    }
    q.stop();
    other.stop();
    let task = q.task(id).expect("read").expect("kept");
    assert_eq!(task.state.status, Status::Failed, "retries = 0");
    assert_eq!(
        task.state.last_error.as_deref(),
        Some("timed out after 100ms")
    );
    assert_eq!(starts.load(Ordering::SeqCst), 1);
    assert_eq!(
        view.stuck(None).expect("stuck"),
        vec![],
        "its attempt ended"
    );
    let stats = [q.stats(), other.stats()];
    assert_eq!(stats.iter().map(|s| s.stuck).sum::<u64>(), 0);
    assert_eq!(stats.iter().map(|s| s.timed_out).sum::<u64>(), 1);
}

/// Drops what it holds: tells whether the future that owns it was dropped.
struct Dropped(Arc<AtomicUsize>);

impl Drop for Dropped {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// An async handler's future that never ends is dropped at its deadline; the attempt fails
/// as timed out at once, not when the future would have ended.
#[test]
fn an_async_handler_is_dropped_at_its_timeout() {
    let dir = tempfile::tempdir().expect("temp dir");
    let q = queue(&dir.path().join("q.db"), Duration::from_secs(30));
    let dropped = Arc::new(AtomicUsize::new(0));
    let reasons = Arc::new(Mutex::new(Vec::new()));
    let (d, r) = (Arc::clone(&dropped), Arc::clone(&reasons));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    q.add_channel_async_with(
        "c",
        move |_: u32, ctx: TaskContext| {
            let guard = Dropped(Arc::clone(&d));
            let reasons = Arc::clone(&r);
            async move {
                let _guard = guard;
                ctx.cancelled().await;
                reasons.lock().push(ctx.cancel_reason());
                // Past the signal, a future that would go on for a minute.
                std::future::pending::<()>().await;
                Ok(())
            }
        },
        ChannelOptions::new(2)
            .timeout(TIMEOUT)
            .runtime(rt.handle().clone()),
    )
    .expect("add");
    let ids: Vec<_> = (0..2u32)
        .map(|n| q.enqueue("c", &n).expect("enqueue"))
        .collect();
    let began = Instant::now();
    q.run_until_complete().expect("run");
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(dropped.load(Ordering::SeqCst), 2, "both futures dropped");
    for id in ids {
        let task = q.task(id).expect("read").expect("kept");
        assert_eq!(task.state.status, Status::Failed);
        assert_eq!(
            task.state.last_error.as_deref(),
            Some("timed out after 100ms")
        );
    }
    assert_eq!((q.stats().timed_out, q.stats().stuck), (2, 0));
    q.stop();
}

/// A timeout of zero is refused when the channel is added.
#[test]
fn a_zero_timeout_is_refused() {
    let q = SimplePyQ::memory();
    let err = q
        .add_channel_with(
            "c",
            |_: u32| Ok(()),
            ChannelOptions::new(1).timeout(Duration::ZERO),
        )
        .expect_err("zero");
    assert!(matches!(err, Error::InvalidConfig(_)), "{err}");
}

/// A task's own timeout is kept to by the queue that runs it, before the channel's (none
/// here): the task with one times out, the one without runs to its end.
#[test]
fn a_tasks_own_timeout_comes_before_its_channels() {
    let dir = tempfile::tempdir().expect("temp dir");
    let q = queue(&dir.path().join("q.db"), Duration::from_secs(30));
    q.add_channel_with(
        "c",
        |ms: u64, ctx: &TaskContext| {
            let began = Instant::now();
            while !ctx.is_cancelled() && began.elapsed() < Duration::from_millis(ms) {
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(())
        },
        ChannelOptions::new(2),
    )
    .expect("add");
    let limited = q
        .enqueue_with("c", &5_000u64, EnqueueOptions::new().timeout(TIMEOUT))
        .expect("enqueue");
    let free = q.enqueue("c", &300u64).expect("enqueue");
    q.run_until_complete().expect("run");
    let task = q.task(limited).expect("read").expect("kept");
    assert_eq!(task.timeout, Some(TIMEOUT));
    assert_eq!(
        task.state.last_error.as_deref(),
        Some("timed out after 100ms")
    );
    let task = q.task(free).expect("read").expect("kept");
    assert_eq!(task.state.status, Status::Done);
}

/// A handler past its timeout keeps its slot: with a limit of one running task, the
/// channel's next task starts only once the stuck handler has returned (its attempt then
/// recorded as timed out), though two workers are idle-free.
#[test]
fn a_stuck_handler_keeps_its_slot_until_it_returns() {
    let dir = tempfile::tempdir().expect("temp dir");
    let q = queue(&dir.path().join("q.db"), Duration::from_secs(30));
    let starts = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&starts);
    q.add_channel_with(
        "c",
        move |n: u32| {
            seen.lock().push((n, Instant::now()));
            if n == 0 {
                std::thread::sleep(Duration::from_millis(600));
            }
            Ok(())
        },
        ChannelOptions::new(2).timeout(TIMEOUT),
    )
    .expect("add");
    q.set_max_running("c", Some(1)).expect("limit");
    let stuck = q.enqueue("c", &0u32).expect("enqueue");
    let next = q.enqueue("c", &1u32).expect("enqueue");
    q.run_until_complete().expect("run");
    let starts = starts.lock().clone();
    assert_eq!(starts.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [0, 1]);
    let waited = starts[1].1 - starts[0].1;
    assert!(
        waited >= Duration::from_millis(600),
        "the next task started {waited:?} after the stuck one, before it returned"
    );
    let task = q.task(stuck).expect("read").expect("kept");
    assert_eq!(
        task.state.last_error.as_deref(),
        Some("timed out after 100ms")
    );
    assert_eq!(
        q.task(next).expect("read").expect("kept").state.status,
        Status::Done
    );
}
