//! Flow control across processes: a pause quiets every worker process within one claim in
//! flight each, and a resume lets them finish; limits of running tasks, per channel and
//! per concurrency key, hold across processes (and through SIGKILLs); a rate, of a channel
//! or per key, holds across processes, and a channel waiting for a window sleeps.

use std::collections::HashMap;
use std::process::Child;
use std::time::{Duration, Instant};

use simplepyq::{Clock, SystemClock};
use simplepyq_core::{NewTask, StoreExt};

use crate::processes::{
    Backend, WORKER, drain_through_two_kills, enqueue_numbers, spawn_worker, spawn_worker_with,
    timed_runs, wait_ok,
};

const PROCESSES: usize = 3;
const WORKERS: u32 = 4;

/// Three worker processes (4 workers each) drain 3,000 tasks of 10 ms; another process
/// pauses the channel (as `simplepyq pause` does: the same call). Once the pause has
/// committed, at most one claim per process is still started: at most 4 tasks each, 12 in
/// all; then none for a second. After the resume every task runs exactly once.
fn a_pause_quiets_every_process(backend: Backend) {
    let dir = tempfile::tempdir().expect("temp dir");
    let ((db, _drop), log) = (backend.db(dir.path()), dir.path().join("runs.log"));
    let n = 3_000;
    enqueue_numbers(backend, &db, n, 0);
    let children: Vec<Child> = (0..PROCESSES)
        .map(|_| spawn_worker(backend, &db, &log, WORKERS, 10, 30_000))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while timed_runs(&log).len() < 300 {
        assert!(Instant::now() < deadline, "the drain did not get going");
        std::thread::sleep(Duration::from_millis(5));
    }
    let admin = backend.open(&db);
    let asked_at = SystemClock.now().as_millis();
    assert!(admin.pause_known("work", true, false).expect("pause"));
    let paused_at = SystemClock.now().as_millis();
    std::thread::sleep(Duration::from_secs(1));
    let runs = timed_runs(&log);
    let late: Vec<i64> = runs
        .iter()
        .filter(|(_, _, ms)| *ms > paused_at)
        .map(|(_, _, ms)| ms - paused_at)
        .collect();
    let bound = PROCESSES * WORKERS as usize;
    assert!(
        late.len() <= bound,
        "{} starts after the pause committed, more than {bound}",
        late.len()
    );
    assert!(runs.len() < n as usize, "the drain ended before the pause");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(timed_runs(&log).len(), runs.len(), "a start while paused");
    // Pause to quiet: from the call to the last start anywhere.
    let last = runs.iter().map(|(_, _, ms)| *ms).max().unwrap_or(asked_at);
    eprintln!(
        "{backend:?}: {} start(s) after the pause committed; the last start {} ms after the \
         pause was asked for (the call took {} ms)",
        late.len(),
        last - asked_at,
        paused_at - asked_at
    );
    assert!(admin.set_paused("work", false).expect("resume"));
    for child in children {
        wait_ok(child);
    }
    each_ran_once_and_done(&*admin, &timed_runs(&log), n);
}

#[test]
fn a_pause_quiets_every_process_sqlite() {
    a_pause_quiets_every_process(Backend::Sqlite);
}

#[test]
fn a_pause_quiets_every_process_postgres() {
    a_pause_quiets_every_process(Backend::Postgres);
}

/// Every one of the `n` tasks ran exactly once (`runs` as the workers logged them) and is
/// done, none left in the store otherwise.
fn each_ran_once_and_done(admin: &dyn simplepyq_core::Store, runs: &[(u32, u32, i64)], n: u32) {
    let mut seen = HashMap::new();
    for (pid, task, _) in runs {
        assert!(seen.insert(*task, *pid).is_none(), "task {task} ran twice");
    }
    assert_eq!(runs.len(), n as usize);
    let c = admin.counts(None).expect("counts");
    assert_eq!((c.done, c.total()), (n as usize, n as usize), "{c:?}");
}

/// After kills: every one of the `n` tasks ran (some twice: a killed run is run again) and
/// is done, none failed.
fn every_task_ran_and_done(admin: &dyn simplepyq_core::Store, runs: &[(u32, u32, i64)], n: u32) {
    let c = admin.counts(None).expect("counts");
    assert_eq!(
        (c.done, c.failed, c.total()),
        (n as usize, 0, n as usize),
        "{c:?}"
    );
    let ran: std::collections::HashSet<u32> = runs.iter().map(|(_, task, _)| *task).collect();
    assert_eq!(ran.len(), n as usize, "a task never ran");
}

/// The most runs of `runs` (each `(pid, task, start ms)`, lasting `ms`) that overlap at
/// any moment.
fn most_at_once(runs: &[(u32, u32, i64)], ms: i64) -> usize {
    let mut edges: Vec<(i64, i32)> = runs
        .iter()
        .flat_map(|(_, _, start)| [(*start, 1), (start + ms, -1)])
        .collect();
    // An end before a start at the same moment: back-to-back runs do not overlap.
    edges.sort_unstable();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    usize::try_from(most).unwrap_or(0)
}

/// Three worker processes (4 workers each) drain 300 tasks of 20 ms from a channel limited
/// to 3 running tasks: never more than 3 run at once anywhere (each run lasts at least its
/// 20 ms from its logged start, so more slots would show as more overlapping runs); every
/// task runs exactly once; the processes together keep the 3 slots busy.
fn a_limit_holds_across_processes(backend: Backend) {
    let dir = tempfile::tempdir().expect("temp dir");
    let ((db, _drop), log) = (backend.db(dir.path()), dir.path().join("runs.log"));
    let (n, sleep_ms, limit) = (300u32, 20i64, 3usize);
    enqueue_numbers(backend, &db, n, 0);
    let admin = backend.open(&db);
    assert!(admin.limit_known("work", Some(3), false).expect("limit"));
    let started = Instant::now();
    let children: Vec<Child> = (0..PROCESSES)
        .map(|_| spawn_worker(backend, &db, &log, WORKERS, sleep_ms as u64, 30_000))
        .collect();
    for child in children {
        wait_ok(child);
    }
    let took = started.elapsed();
    let runs = timed_runs(&log);
    each_ran_once_and_done(&*admin, &runs, n);
    let most = most_at_once(&runs, sleep_ms);
    assert!(
        most <= limit,
        "{most} tasks ran at once, over the limit of {limit}"
    );
    // The bare minimum: n runs of 20 ms, 3 at a time.
    let floor = Duration::from_millis(n as u64 * sleep_ms as u64 / limit as u64);
    eprintln!(
        "{backend:?}: at most {most} at once; {took:?} for what takes at least {floor:?} \
         with {limit} slots"
    );
}

#[test]
fn a_limit_holds_across_processes_sqlite() {
    a_limit_holds_across_processes(Backend::Sqlite);
}

#[test]
fn a_limit_holds_across_processes_postgres() {
    a_limit_holds_across_processes(Backend::Postgres);
}

/// The same with processes SIGKILLed mid-drain (leases of 1 s, `retries = 0`): never more
/// than 3 runs overlap, nothing fails, and the killed holders' slots come back with their
/// leases (the drain ends, in the processes started after the kills).
fn a_limit_holds_through_kills(backend: Backend) {
    let dir = tempfile::tempdir().expect("temp dir");
    let ((db, _drop), log) = (backend.db(dir.path()), dir.path().join("runs.log"));
    let (n, sleep_ms, limit) = (200u32, 20i64, 3usize);
    enqueue_numbers(backend, &db, n, 0);
    let admin = backend.open(&db);
    assert!(admin.limit_known("work", Some(3), false).expect("limit"));
    let spawn = || spawn_worker(backend, &db, &log, WORKERS, sleep_ms as u64, 1_000);
    drain_through_two_kills(spawn);
    let runs = timed_runs(&log);
    let most = most_at_once(&runs, sleep_ms);
    assert!(
        most <= limit,
        "{most} tasks ran at once, over the limit of {limit}"
    );
    every_task_ran_and_done(&*admin, &runs, n);
    eprintln!(
        "{backend:?}: at most {most} at once through 2 kills; {} runs of {n} tasks",
        runs.len()
    );
}

#[test]
fn a_limit_holds_through_kills_sqlite() {
    a_limit_holds_through_kills(Backend::Sqlite);
}

#[test]
fn a_limit_holds_through_kills_postgres() {
    a_limit_holds_through_kills(Backend::Postgres);
}

/// Asserts that no two of `runs` (each `(pid, task, start ms)`) of one key overlap, task i
/// having key i mod `keys` and lasting `lasts(i)` from its logged start.
fn runs_of_a_key_apart(runs: &[(u32, u32, i64)], keys: u32, lasts: impl Fn(u32) -> i64) {
    let mut by_key: HashMap<u32, Vec<(i64, u32)>> = HashMap::new();
    for (_, task, ms) in runs {
        by_key.entry(task % keys).or_default().push((*ms, *task));
    }
    for (key, mut starts) in by_key {
        starts.sort_unstable();
        for pair in starts.windows(2) {
            let ((start, task), (next, _)) = (pair[0], pair[1]);
            assert!(
                next >= start + lasts(task),
                "two runs of key {key} overlapped: task {task} started at {start}, the next \
                 at {next}"
            );
        }
    }
}

/// `n` tasks of channel `work`, task i with concurrency key `k{i mod keys}`.
fn keyed_tasks(n: u32, keys: u32) -> Vec<NewTask> {
    (0..n)
        .map(|i| {
            NewTask::new("work", rmp_serde::to_vec_named(&i).expect("encode"))
                .concurrency_key(format!("k{}", i % keys))
        })
        .collect()
}

/// Three worker processes (4 workers each) drain 1,000 tasks of 10 ms over 200 concurrency
/// keys (task i has key i mod 200; the default limit of 1 per key), task 0 taking 2 s: no
/// two runs of one key overlap anywhere (each run lasts its sleep from its logged start);
/// every task runs exactly once; and while key 0 is busy for 2 s, the other keys' tasks keep
/// running (claims skip key 0's waiting tasks; stopping at them would let at most the 199
/// tasks before task 200 start).
fn keys_hold_across_processes(backend: Backend) {
    let dir = tempfile::tempdir().expect("temp dir");
    let ((db, _drop), log) = (backend.db(dir.path()), dir.path().join("runs.log"));
    let (n, keys, sleep_ms, slow_ms) = (1_000u32, 200u32, 10i64, 2_000i64);
    let admin = backend.open(&db);
    admin
        .enqueue(&keyed_tasks(n, keys), SystemClock.now())
        .expect("enqueue");
    let children: Vec<Child> = (0..PROCESSES)
        .map(|_| {
            let mut command = std::process::Command::new(WORKER);
            command.env("SIMPLEPYQ_TEST_SLOW", format!("0:{slow_ms}"));
            let sleep = sleep_ms as u64;
            spawn_worker_with(command, backend, &db, &log, WORKERS, sleep, 30_000)
        })
        .collect();
    for child in children {
        wait_ok(child);
    }
    let runs = timed_runs(&log);
    each_ran_once_and_done(&*admin, &runs, n);
    runs_of_a_key_apart(
        &runs,
        keys,
        |task| if task == 0 { slow_ms } else { sleep_ms },
    );
    let start0 = runs
        .iter()
        .find(|(_, task, _)| *task == 0)
        .map(|(_, _, ms)| *ms)
        .expect("task 0 ran");
    let beside = runs
        .iter()
        .filter(|(_, task, ms)| task % keys != 0 && *ms > start0 && *ms < start0 + slow_ms)
        .count();
    eprintln!("{backend:?}: {beside} runs of other keys while key 0 was busy for {slow_ms} ms");
    assert!(
        beside >= 400,
        "only {beside} runs of other keys while key 0 was busy: held up behind it"
    );
}

#[test]
fn keys_hold_across_processes_sqlite() {
    keys_hold_across_processes(Backend::Sqlite);
}

#[test]
fn keys_hold_across_processes_postgres() {
    keys_hold_across_processes(Backend::Postgres);
}

/// Keys through kills: three worker processes drain 600 tasks of 20 ms over 30 keys (the
/// default limit of 1 per key; leases of 1 s, `retries = 0`), and one process is SIGKILLed
/// twice mid-drain: no two runs of one key overlap (a killed holder's key stays taken until
/// its lease runs out), nothing fails, and every task runs (the killed holders' keys come
/// back with their leases, so the drain ends).
fn keys_hold_through_kills(backend: Backend) {
    let dir = tempfile::tempdir().expect("temp dir");
    let ((db, _drop), log) = (backend.db(dir.path()), dir.path().join("runs.log"));
    let (n, keys, sleep_ms) = (600u32, 30u32, 20i64);
    let admin = backend.open(&db);
    admin
        .enqueue(&keyed_tasks(n, keys), SystemClock.now())
        .expect("enqueue");
    let spawn = || spawn_worker(backend, &db, &log, WORKERS, sleep_ms as u64, 1_000);
    drain_through_two_kills(spawn);
    let runs = timed_runs(&log);
    runs_of_a_key_apart(&runs, keys, |_| sleep_ms);
    every_task_ran_and_done(&*admin, &runs, n);
    eprintln!(
        "{backend:?}: keys apart through 2 kills; {} runs of {n} tasks",
        runs.len()
    );
}

#[test]
fn keys_hold_through_kills_sqlite() {
    keys_hold_through_kills(Backend::Sqlite);
}

#[test]
fn keys_hold_through_kills_postgres() {
    keys_hold_through_kills(Backend::Postgres);
}

/// Three worker processes (4 workers each) drain 250 tasks of 5 ms from a channel with a
/// rate of 50 starts per second (windows of whole seconds): no window holds more than 50
/// starts anywhere (101 starts never within a second: see [`never_faster_than`]), the whole
/// seconds of the run hold close to 50 each (the processes together keep to the rate, not
/// below it), and every task runs exactly once.
fn a_rate_holds_across_processes(backend: Backend) {
    let dir = tempfile::tempdir().expect("temp dir");
    let ((db, _drop), log) = (backend.db(dir.path()), dir.path().join("runs.log"));
    let (n, per_second) = (250u32, 50usize);
    enqueue_numbers(backend, &db, n, 0);
    let admin = backend.open(&db);
    let rate = simplepyq_core::Rate::new(50, Duration::from_secs(1));
    assert!(admin.rate_known("work", Some(rate), false).expect("rate"));
    let children: Vec<Child> = (0..PROCESSES)
        .map(|_| spawn_worker(backend, &db, &log, WORKERS, 5, 30_000))
        .collect();
    for child in children {
        wait_ok(child);
    }
    let runs = timed_runs(&log);
    each_ran_once_and_done(&*admin, &runs, n);
    // Starts per window, by the store's clock (SQLite's is this machine's; the test
    // server's is this machine's too).
    let mut windows: std::collections::BTreeMap<i64, usize> = std::collections::BTreeMap::new();
    for (_, _, ms) in &runs {
        *windows.entry(ms / 1_000).or_default() += 1;
    }
    let counts: Vec<usize> = windows.values().copied().collect();
    eprintln!("{backend:?}: starts per second {counts:?}");
    let mut starts: Vec<i64> = runs.iter().map(|(_, _, ms)| *ms).collect();
    never_faster_than(&mut starts, per_second, "the channel");
    let inner = &counts[1..counts.len().saturating_sub(1)];
    assert!(
        inner.iter().all(|&c| c >= per_second - 5),
        "a whole second well below the rate: {counts:?}"
    );
    assert!(
        counts.len() >= 5,
        "250 starts at 50 a second took {} windows",
        counts.len()
    );
}

/// Asserts that `starts` (logged times, in ms) keep to a rate of `n` per window of a second:
/// 2n + 1 starts take three windows, so more than a second passes from the first to the
/// last. Counting starts per logged second instead would not hold: starts are logged a
/// little after their claims, by a clock that may differ from the store's by a millisecond
/// or two (PostgreSQL's, measured at connect), while a window's starts come in a burst at
/// its start, which can fall on either side of a logged second (seen in CI: 55 in a
/// second at 50 a second, the next window's first starts logged early).
fn never_faster_than(starts: &mut [i64], n: usize, what: &str) {
    starts.sort_unstable();
    for span in starts.windows(2 * n + 1) {
        let took = span[2 * n] - span[0];
        assert!(took > 950, "{} starts of {what} in {took} ms", 2 * n + 1);
    }
}

#[test]
fn a_rate_holds_across_processes_sqlite() {
    a_rate_holds_across_processes(Backend::Sqlite);
}

#[test]
fn a_rate_holds_across_processes_postgres() {
    a_rate_holds_across_processes(Backend::Postgres);
}

/// Three worker processes (4 workers each) drain 200 tasks of 5 ms over 5 concurrency keys
/// (task i has key i mod 5; up to 4 running per key) from a channel with a rate of 10
/// starts per second per key: no key starts faster than its rate anywhere (21 of its starts
/// never within a second: see [`never_faster_than`]), the whole seconds hold close to 10 of
/// each (a used-up key holds up no other key: together they start 50 a second), and every
/// task runs exactly once.
fn a_rate_per_key_holds_across_processes(backend: Backend) {
    let dir = tempfile::tempdir().expect("temp dir");
    let ((db, _drop), log) = (backend.db(dir.path()), dir.path().join("runs.log"));
    let (n, keys, per_second) = (200u32, 5u32, 10usize);
    let admin = backend.open(&db);
    admin
        .enqueue(&keyed_tasks(n, keys), SystemClock.now())
        .expect("enqueue");
    admin
        .limit_per_key_known("work", 4, false)
        .expect("per key");
    let rate = simplepyq_core::Rate::new(10, Duration::from_secs(1));
    assert!(
        admin
            .rate_per_key_known("work", Some(rate), false)
            .expect("rate")
    );
    let children: Vec<Child> = (0..PROCESSES)
        .map(|_| spawn_worker(backend, &db, &log, WORKERS, 5, 30_000))
        .collect();
    for child in children {
        wait_ok(child);
    }
    let runs = timed_runs(&log);
    each_ran_once_and_done(&*admin, &runs, n);
    // Starts per key per window, by the store's clock (this machine's, as above).
    let mut windows: std::collections::BTreeMap<i64, Vec<usize>> = Default::default();
    for (_, task, ms) in &runs {
        windows
            .entry(ms / 1_000)
            .or_insert_with(|| vec![0; keys as usize])[(task % keys) as usize] += 1;
    }
    let counts: Vec<Vec<usize>> = windows.values().cloned().collect();
    eprintln!("{backend:?}: starts per second of each key {counts:?}");
    for key in 0..keys {
        let mut starts: Vec<i64> = runs
            .iter()
            .filter(|(_, task, _)| task % keys == key)
            .map(|(_, _, ms)| *ms)
            .collect();
        never_faster_than(&mut starts, per_second, &format!("key {key}"));
    }
    let inner = &counts[1..counts.len().saturating_sub(1)];
    assert!(
        inner.iter().flatten().all(|&c| c >= per_second - 3),
        "a whole second well below a key's rate: {counts:?}"
    );
    assert!(
        counts.len() >= 4,
        "40 starts of each key at 10 a second took {} windows",
        counts.len()
    );
}

#[test]
fn a_rate_per_key_holds_across_processes_sqlite() {
    a_rate_per_key_holds_across_processes(Backend::Sqlite);
}

#[test]
fn a_rate_per_key_holds_across_processes_postgres() {
    a_rate_per_key_holds_across_processes(Backend::Postgres);
}

/// An idle rate-limited channel sleeps: a worker process (4 workers) has used up its
/// channel's window (1 start per 30 s; or, `per_key`, its one key's window) with 2 more
/// tasks waiting; over the next 2 s it uses at most 2% of one core (a worker polling for
/// the window would use all of it; the queue sleeps until the window's end, waking at its
/// poll interval, here 1 s, at most).
fn an_idle_rate_limited_channel_sleeps(backend: Backend, per_key: bool) {
    let dir = tempfile::tempdir().expect("temp dir");
    let ((db, _drop), log) = (backend.db(dir.path()), dir.path().join("runs.log"));
    let admin = backend.open(&db);
    let rate = simplepyq_core::Rate::new(1, Duration::from_secs(30));
    if per_key {
        admin
            .enqueue(&keyed_tasks(3, 1), SystemClock.now())
            .expect("enqueue");
        admin
            .limit_per_key_known("work", 4, false)
            .expect("per key");
        assert!(
            admin
                .rate_per_key_known("work", Some(rate), false)
                .expect("rate")
        );
    } else {
        enqueue_numbers(backend, &db, 3, 0);
        assert!(admin.rate_known("work", Some(rate), false).expect("rate"));
    }
    let mut command = std::process::Command::new(WORKER);
    command.env("SIMPLEPYQ_TEST_POLL_MS", "1000");
    let mut child = spawn_worker_with(command, backend, &db, &log, WORKERS, 0, 30_000);
    let started = Instant::now();
    while timed_runs(&log).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no task started"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Settled: the first task's outcome recorded, the workers asleep.
    std::thread::sleep(Duration::from_millis(300));
    let before = cpu_ticks(child.id());
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(child.id()) - before;
    let ran = timed_runs(&log).len();
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    eprintln!("{backend:?}: {used} ticks of CPU in 2 s while waiting for the window");
    // A window boundary can fall in those 2 s (windows are laid from the Unix epoch): then
    // one more task starts; never the third, whose window is 30 s later.
    assert!(ran <= 2, "{ran} starts in a window of one");
    // Ticks of 10 ms (USER_HZ 100): 4 ticks is 40 ms in 2 s, 2% of one core.
    assert!(used <= 4, "{used} ticks of CPU in 2 s while idle");
}

/// A process's CPU time so far (user and system), in the kernel's ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the process's stat");
    // The fields after the command name, which is in parentheses: utime and stime are the
    // 12th and 13th of them.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|f| f.parse().expect("a number of ticks"))
        .collect();
    fields.iter().sum()
}

#[test]
fn an_idle_rate_limited_channel_sleeps_sqlite() {
    an_idle_rate_limited_channel_sleeps(Backend::Sqlite, false);
}

#[test]
fn an_idle_rate_limited_channel_sleeps_postgres() {
    an_idle_rate_limited_channel_sleeps(Backend::Postgres, false);
}

#[test]
fn an_idle_channel_with_a_used_up_key_sleeps_sqlite() {
    an_idle_rate_limited_channel_sleeps(Backend::Sqlite, true);
}

#[test]
fn an_idle_channel_with_a_used_up_key_sleeps_postgres() {
    an_idle_rate_limited_channel_sleeps(Backend::Postgres, true);
}
