//! Periodic tasks: every fire time enqueued exactly once by several queues and processes
//! sharing one store, across restarts, with an injected clock and with real processes.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use simplepyq::ScheduleStore;
use simplepyq::{
    EnqueueOptions, ListFilter, ManualClock, Schedule, SimplePyQ, SqliteStore, Store, Timestamp,
};
use simplepyq_tests::lifecycle::wait_until;
use simplepyq_tests::postgres::{self as pg, DropSchema};

use crate::processes::wait_ok;

const SCHEDULER: &str = env!("CARGO_BIN_EXE_simplepyq-test-scheduler");

/// A multiple of 100 ms: the interval's fire times are its multiples since the epoch.
const T0: Timestamp = Timestamp::from_millis(1_700_000_000_000);

fn every_100ms() -> Schedule {
    Schedule::every(Duration::from_millis(100)).expect("a valid interval")
}

/// The run-ats of the tasks of channel `ticks`, in order.
fn fire_times(store: &dyn Store) -> Vec<i64> {
    let mut times: Vec<i64> = store
        .list(&ListFilter::new(100_000).channel("ticks"))
        .expect("list")
        .iter()
        .map(|t| t.state.run_at.as_millis())
        .collect();
    times.sort_unstable();
    times
}

/// A queue over the file, on the injected clock, looking again every 5 ms.
fn queue_on(path: &Path, clock: &ManualClock) -> SimplePyQ<SqliteStore> {
    SimplePyQ::builder(SqliteStore::open(path).expect("open"))
        .clock(clock.clone())
        .poll_interval(Duration::from_millis(5))
        .build()
        .expect("build")
}

/// A started queue over the file, on the injected clock, firing `tick` every 100 ms.
fn scheduling_queue(path: &Path, clock: &ManualClock) -> SimplePyQ<SqliteStore> {
    let q = queue_on(path, clock);
    q.add_schedule("tick", "ticks", every_100ms(), "tick")
        .expect("add the schedule");
    q.start().expect("start");
    q
}

/// Three queues on one file run the same schedule: each fire time is enqueued once, also
/// when one restarts in the middle; an hour with nothing running is made up for by one run
/// (and the firings of the last second, each less than a second late).
#[test]
fn three_queues_enqueue_each_fire_time_once_on_an_injected_clock() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("tasks.db");
    let clock = ManualClock::new(T0);
    let mut queues: Vec<_> = (0..3).map(|_| scheduling_queue(&path, &clock)).collect();
    let store = SqliteStore::open(&path).expect("open");
    for k in 1..=20_i64 {
        if k == 10 {
            let restarted = queues.remove(0);
            restarted.stop();
            drop(restarted);
            queues.push(scheduling_queue(&path, &clock));
        }
        clock.advance(Duration::from_millis(100));
        wait_until(&format!("firing {k}"), || {
            fire_times(&store).len() == k as usize
        });
    }
    // No queue fires anything more while the clock stands still.
    std::thread::sleep(Duration::from_millis(50));
    let expected: Vec<i64> = (1..=20).map(|k| T0.as_millis() + 100 * k).collect();
    assert_eq!(fire_times(&store), expected);
    assert_eq!(
        store.last_fired("tick").expect("last fired"),
        Some(Timestamp::from_millis(T0.as_millis() + 2_000))
    );

    // Nothing runs for an hour.
    for q in queues.drain(..) {
        q.stop();
    }
    clock.advance(Duration::from_secs(3_600));
    let q = scheduling_queue(&path, &clock);
    let now = T0.as_millis() + 2_000 + 3_600_000;
    wait_until("the catch-up", || fire_times(&store).len() == 20 + 11);
    std::thread::sleep(Duration::from_millis(50));
    let made_up: Vec<i64> = fire_times(&store)[20..].to_vec();
    let mut expected = vec![now - 1_000];
    expected.extend((1..=10).map(|k| now - 1_000 + 100 * k));
    assert_eq!(made_up, expected);
    q.stop();
}

/// A schedule starts with its queue: added an hour before `start`, it makes up for nothing.
#[test]
fn a_new_schedule_starts_with_its_queue() {
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = ManualClock::new(T0);
    let q = queue_on(&dir.path().join("q.db"), &clock);
    q.add_schedule("tick", "ticks", every_100ms(), &())
        .expect("add");
    clock.advance(Duration::from_secs(3_600));
    q.start().expect("start");
    std::thread::sleep(Duration::from_millis(50));
    assert!(fire_times(q.store()).is_empty(), "nothing made up for");
    clock.advance(Duration::from_millis(100));
    wait_until("the first firing", || fire_times(q.store()).len() == 1);
    assert_eq!(fire_times(q.store()), vec![T0.as_millis() + 3_600_100]);
    q.stop();
}

/// The CPU time (user and system, in clock ticks) of this process's threads named `name`.
fn thread_ticks(name: &str) -> u64 {
    let mut ticks = 0;
    for task in std::fs::read_dir("/proc/self/task").expect("the process's threads") {
        let dir = task.expect("a thread").path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim_end() != name {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
        // The fields after the command's closing parenthesis; utime and stime are the
        // 12th and 13th of them.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, rest)| rest)
            .split_whitespace()
            .collect();
        ticks += fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
    }
    ticks
}

/// A schedule that never fires again leaves its scheduler asleep, not spinning.
#[test]
fn a_schedule_that_never_fires_leaves_the_scheduler_asleep() {
    let dir = tempfile::tempdir().expect("temp dir");
    let q = SimplePyQ::open(dir.path().join("q.db")).expect("open");
    let never = Schedule::cron("0 0 30 2 *").expect("valid, but February has no 30th");
    q.add_schedule("never", "ticks", never, &()).expect("add");
    q.start().expect("start");
    // Its first look searches the calendar for a next date (a fraction of a second of
    // CPU); then it waits for a change. A spinning thread uses about 25 ticks (at 100 a
    // second) in each quarter of a second.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut before = thread_ticks("simplepyq-sched");
    loop {
        std::thread::sleep(Duration::from_millis(250));
        let now = thread_ticks("simplepyq-sched");
        if now - before <= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the scheduler is still busy: {} ticks in the last 250 ms",
            now - before
        );
        before = now;
    }
    q.stop();
    assert!(fire_times(q.store()).is_empty());
}

/// A schedule with a unique key adds nothing while its last task is unfinished; the
/// options reject a delay; names are checked.
#[test]
fn schedule_options_and_names() {
    let dir = tempfile::tempdir().expect("temp dir");
    let clock = ManualClock::new(T0);
    let q = queue_on(&dir.path().join("q.db"), &clock);
    let one_at_a_time = EnqueueOptions::new().unique("sweep").retries(2).priority(3);
    q.add_schedule_with("sweep", "ticks", every_100ms(), &1u8, one_at_a_time)
        .expect("add");
    let err = q
        .add_schedule("sweep", "ticks", every_100ms(), &1u8)
        .expect_err("a second schedule of the name");
    assert!(err.to_string().contains("sweep"), "{err}");
    let delayed = EnqueueOptions::new().delay(Duration::from_secs(1));
    assert!(
        q.add_schedule_with("late", "ticks", every_100ms(), &1u8, delayed)
            .is_err()
    );
    assert!(q.add_schedule("", "ticks", every_100ms(), &1u8).is_err());
    assert!(
        q.add_schedule("bad channel", "", every_100ms(), &1u8)
            .is_err()
    );
    q.start().expect("start");
    for _ in 0..3 {
        clock.advance(Duration::from_millis(100));
        wait_until("the firing to be recorded", || {
            q.store().last_fired("sweep").expect("last fired") == Some(clock_now(&clock))
        });
    }
    let tasks = q
        .tasks(&ListFilter::new(10).channel("ticks"))
        .expect("list");
    assert_eq!(
        tasks.len(),
        1,
        "the first task is unfinished: no other is added"
    );
    assert_eq!((tasks[0].state.max_retries, tasks[0].priority), (2, 3));
    assert!(q.remove_schedule("sweep"));
    assert!(!q.remove_schedule("sweep"));
    q.stop();
}

fn clock_now(clock: &ManualClock) -> Timestamp {
    use simplepyq::Clock;
    clock.now()
}

fn scheduler(backend: &str, db: &str, ms: u64) -> Child {
    let mut command = Command::new(SCHEDULER);
    if backend == "postgres" {
        command.env(pg::SERVER_VAR, pg::server().conninfo());
    }
    command
        .args([backend, db, &ms.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start a scheduler process")
}

/// Three processes run the same schedule every 100 ms for 5 s; one is killed half way and
/// another started: the fire times enqueued are consecutive, each once.
fn three_processes_enqueue_each_fire_time_once(backend: &str, db: &str, store: &dyn Store) {
    let mut first: Vec<Child> = (0..3).map(|_| scheduler(backend, db, 5_000)).collect();
    std::thread::sleep(Duration::from_millis(2_500));
    let mut killed = first.remove(0);
    killed.kill().expect("kill");
    let _ = killed.wait();
    let second = scheduler(backend, db, 2_500);
    for child in first {
        wait_ok(child);
    }
    wait_ok(second);
    let times = fire_times(store);
    assert!(times.len() >= 30, "only {} firings in 5 s", times.len());
    let steps: Vec<i64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        steps.iter().all(|&d| d == 100),
        "each fire time once, none missed: {times:?}"
    );
}

#[test]
fn three_sqlite_processes_enqueue_each_fire_time_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("tasks.db");
    let store = SqliteStore::open(&path).expect("create");
    three_processes_enqueue_each_fire_time_once(
        "sqlite",
        path.to_str().expect("a UTF-8 path"),
        &store,
    );
}

#[test]
fn three_postgres_processes_enqueue_each_fire_time_once() {
    let schema = pg::fresh_schema();
    let _drop = DropSchema(schema.clone());
    let store =
        simplepyq::PostgresStore::connect_with(pg::server().conninfo(), pg::options(&schema))
            .expect("connect");
    three_processes_enqueue_each_fire_time_once("postgres", &schema, &store);
}
