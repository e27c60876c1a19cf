//! Tasks that wait for others, through the queue: chains and fan-ins run in order, each
//! step woken by its parent's outcome (not by a poll), a fan-in reads its group's results,
//! and a failed parent fails what waits for it, on every backend; and a diamond of 1,002
//! tasks across worker processes SIGKILLed meanwhile.

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use simplepyq::{
    Clock, EnqueueOptions, MemoryStore, RedbStore, SimplePyQ, SqliteStore, Status, Store,
    SystemClock, TaskContext, TaskEnd, TaskError,
};
use simplepyq_core::{NewTask, StoreExt};
use simplepyq_tests::postgres::{fresh_schema, options, server};

use crate::processes::{Backend, WORKER, drain_through_two_kills, spawn_worker_with, timed_runs};

/// Polls once a minute: whatever runs sooner was woken.
const NO_POLL: Duration = Duration::from_secs(60);

fn queue<S: Store>(store: S) -> SimplePyQ<S> {
    SimplePyQ::builder(store)
        .poll_interval(NO_POLL)
        .build()
        .expect("valid settings")
}

/// Runs `check` on a queue of each backend.
fn on_every_backend(check: impl Fn(&str, &dyn Fn() -> Box<dyn Store>)) {
    let dir = tempfile::tempdir().expect("temp dir");
    check("memory", &|| Box::new(MemoryStore::new()));
    let n = std::sync::atomic::AtomicUsize::new(0);
    let file = |ext: &str| {
        let i = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        dir.path().join(format!("q{i}.{ext}"))
    };
    check("sqlite", &|| {
        Box::new(SqliteStore::open(file("db")).expect("open"))
    });
    check("redb", &|| {
        Box::new(RedbStore::open(file("redb")).expect("open"))
    });
    check("postgres", &|| {
        let store =
            simplepyq::PostgresStore::connect_with(server().conninfo(), options(&fresh_schema()))
                .expect("connect");
        Box::new(store)
    });
}

/// A chain of 200 tasks runs in order, each once, started by its parent's outcome: with a
/// poll of a minute it ends in seconds.
#[test]
fn a_chain_runs_in_order_woken_by_each_parent() {
    on_every_backend(|backend, store| {
        let q = queue(store());
        let ran: Arc<Mutex<Vec<u32>>> = Arc::default();
        let r = Arc::clone(&ran);
        q.add_channel(
            "step",
            move |n: u32| {
                r.lock().push(n);
                Ok(())
            },
            4,
        )
        .expect("channel");
        let mut last = q.enqueue("step", &0u32).expect("enqueue");
        for n in 1..200u32 {
            let options = EnqueueOptions::new().after([last]);
            last = q.enqueue_with("step", &n, options).expect("enqueue");
        }
        assert_eq!(
            q.task(last).expect("get").expect("exists").state.status,
            Status::Waiting
        );
        let began = Instant::now();
        q.start().expect("start");
        let end = q.wait::<()>(last, Duration::from_secs(30)).expect("wait");
        q.stop();
        assert_eq!(end, Some(TaskEnd::Done(None)), "{backend}");
        assert_eq!(
            *ran.lock(),
            (0..200).collect::<Vec<u32>>(),
            "{backend}: in order, once"
        );
        assert!(
            began.elapsed() < Duration::from_secs(20),
            "{backend}: {:?} for 200 steps (polled, not woken?)",
            began.elapsed()
        );
    });
}

/// A group's final task reads the results of its group; the group's tasks run beside each
/// other, the final task after the last.
#[test]
fn a_fan_in_reads_its_groups_results() {
    on_every_backend(|backend, store| {
        let q = queue(store());
        q.add_channel(
            "square",
            |n: u64, ctx: &TaskContext| {
                ctx.set_result(&(n * n))?;
                Ok(())
            },
            4,
        )
        .expect("channel");
        q.add_channel(
            "sum",
            |(): (), ctx: &TaskContext| {
                let parents = ctx.parent_results::<u64>()?;
                assert_eq!(parents.len(), 100);
                let sum: u64 = parents.into_iter().filter_map(|(_, r)| r).sum();
                ctx.set_result(&sum)?;
                Ok(())
            },
            1,
        )
        .expect("channel");
        let numbers: Vec<u64> = (1..=100).collect();
        let (group, last) = q
            .enqueue_group(
                "square",
                &numbers,
                EnqueueOptions::new(),
                "sum",
                &(),
                EnqueueOptions::new(),
            )
            .expect("enqueue");
        assert_eq!(group.len(), 100);
        q.start().expect("start");
        let end = q.wait::<u64>(last, Duration::from_secs(30)).expect("wait");
        q.stop();
        let expected: u64 = numbers.iter().map(|n| n * n).sum();
        assert_eq!(end, Some(TaskEnd::Done(Some(expected))), "{backend}");
    });
}

/// With the default `retries = 0`, a parent that fails fails the tasks that wait for it,
/// which never run, and `wait` on the last says why.
#[test]
fn a_failed_parent_fails_what_waits_for_it() {
    on_every_backend(|backend, store| {
        let q = queue(store());
        let ran: Arc<Mutex<Vec<u32>>> = Arc::default();
        let r = Arc::clone(&ran);
        q.add_channel(
            "step",
            move |n: u32| {
                r.lock().push(n);
                if n == 1 {
                    return Err(TaskError::msg("step 1 broke"));
                }
                Ok(())
            },
            2,
        )
        .expect("channel");
        let first = q.enqueue("step", &0u32).expect("enqueue");
        let second = q
            .enqueue_with("step", &1u32, EnqueueOptions::new().after([first]))
            .expect("enqueue");
        let third = q
            .enqueue_with("step", &2u32, EnqueueOptions::new().after([second]))
            .expect("enqueue");
        q.start().expect("start");
        let end = q.wait::<()>(third, Duration::from_secs(30)).expect("wait");
        q.stop();
        assert_eq!(
            end,
            Some(TaskEnd::Failed(format!("parent task {second} failed"))),
            "{backend}"
        );
        assert_eq!(*ran.lock(), [0, 1], "{backend}: the third never ran");
        assert_eq!(q.counts(None).expect("counts").failed, 2, "{backend}");
    });
}

/// Three worker processes (4 workers each, leases of 1 s, `retries = 0`) run a diamond of
/// 1,002 tasks of 5 ms (a root, 1,000 tasks after it, a final task after all of them) and
/// a failing task with a child, while the oldest process is SIGKILLed twice: every task of
/// the diamond ends done, each after its parents (its last start after each parent's last
/// start and run), none failed; the failing task's child never runs and fails naming it.
fn a_diamond_holds_through_kills(backend: Backend) {
    let dir = tempfile::tempdir().expect("temp dir");
    let ((db, _drop), log) = (backend.db(dir.path()), dir.path().join("runs.log"));
    let (middle, sleep_ms) = (1_000u32, 5i64);
    let admin = backend.open(&db);
    let now = SystemClock.now();
    let root = admin
        .enqueue_one(NewTask::new("work", encode(0)), now)
        .expect("enqueue");
    let fan_out: Vec<NewTask> = (1..=middle)
        .map(|n| NewTask::new("work", encode(n)).after([root]))
        .collect();
    let middles = admin.enqueue(&fan_out, now).expect("enqueue");
    let last = admin
        .enqueue_one(
            NewTask::new("work", encode(middle + 1)).after(middles.iter().copied()),
            now,
        )
        .expect("enqueue");
    let (doomed, orphan) = (middle + 2, middle + 3);
    let failing = admin
        .enqueue_one(NewTask::new("work", encode(doomed)), now)
        .expect("enqueue");
    let child = admin
        .enqueue_one(NewTask::new("work", encode(orphan)).after([failing]), now)
        .expect("enqueue");
    let spawn = || {
        let mut command = Command::new(WORKER);
        command.env("SIMPLEPYQ_TEST_FAIL", doomed.to_string());
        spawn_worker_with(command, backend, &db, &log, 4, sleep_ms as u64, 1_000)
    };
    drain_through_two_kills(spawn);
    let runs = timed_runs(&log);
    let mut last_start: HashMap<u32, i64> = HashMap::new();
    for (_, n, ms) in &runs {
        let at = last_start.entry(*n).or_insert(*ms);
        *at = (*at).max(*ms);
    }
    let first_start = |n: u32| {
        runs.iter()
            .filter(|(_, m, _)| *m == n)
            .map(|(_, _, ms)| *ms)
            .min()
            .expect("ran")
    };
    for n in 1..=middle {
        assert!(
            first_start(n) >= last_start[&0] + sleep_ms,
            "task {n} started before the root was done"
        );
    }
    let latest_middle = (1..=middle).map(|n| last_start[&n]).max().expect("ran");
    assert!(
        first_start(middle + 1) >= latest_middle + sleep_ms,
        "the final task started before its last parent was done"
    );
    assert!(
        !last_start.contains_key(&orphan),
        "the failed task's child ran"
    );
    let c = admin.counts(None).expect("counts");
    assert_eq!(
        (c.done, c.failed, c.total()),
        (middle as usize + 2, 2, middle as usize + 4),
        "{c:?}"
    );
    let orphaned = admin.get(child).expect("get").expect("kept");
    assert_eq!(
        orphaned.state.last_error,
        Some(format!("parent task {failing} failed"))
    );
    assert_eq!(
        admin.get(last).expect("get").expect("kept").state.status,
        Status::Done
    );
    let final_runs = runs.iter().filter(|(_, n, _)| *n == middle + 1).count();
    eprintln!(
        "{backend:?}: a diamond of {} tasks through 2 kills: {} runs, the final task ran {final_runs} time(s)",
        middle + 2,
        runs.len()
    );
}

fn encode(n: u32) -> Vec<u8> {
    rmp_serde::to_vec(&n).expect("encode")
}

#[test]
fn a_diamond_holds_through_kills_sqlite() {
    a_diamond_holds_through_kills(Backend::Sqlite);
}

#[test]
fn a_diamond_holds_through_kills_postgres() {
    a_diamond_holds_through_kills(Backend::Postgres);
}
