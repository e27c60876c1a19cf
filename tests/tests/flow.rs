//! Flow control across processes: a pause quiets every worker process within one claim in
//! flight each, and a resume lets them finish.

use std::collections::HashMap;
use std::process::Child;
use std::time::{Duration, Instant};

use simplepyq::{Clock, SystemClock};
use simplepyq_core::StoreExt;

use crate::processes::{Backend, enqueue_numbers, spawn_worker, timed_runs, wait_ok};

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
    let runs = timed_runs(&log);
    let mut seen = HashMap::new();
    for (pid, task, _) in &runs {
        assert!(seen.insert(*task, *pid).is_none(), "task {task} ran twice");
    }
    assert_eq!(runs.len(), n as usize);
    let c = admin.counts(None).expect("counts");
    assert_eq!((c.done, c.total()), (n as usize, n as usize), "{c:?}");
}

#[test]
fn a_pause_quiets_every_process_sqlite() {
    a_pause_quiets_every_process(Backend::Sqlite);
}

#[test]
fn a_pause_quiets_every_process_postgres() {
    a_pause_quiets_every_process(Backend::Postgres);
}
