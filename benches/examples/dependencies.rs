//! Measures tasks that wait for others against the same tasks without: a chain of n tasks
//! (each after the one before), a fan-in of n tasks to one, a fan-out of one to n, and n
//! independent tasks; each enqueued in one call, then drained by one queue of 4 workers
//! that polls once a minute (every step is woken by its parent's outcome). Run at two
//! sizes, the time per task shows whether a shape costs in proportion to its tasks.
//!
//! ```text
//! cargo run --release -p simplepyq-benches --example dependencies -- --n 10000 \
//!     [--backend sqlite|postgres|redb]
//! ```
//!
//! Prints one JSON line per shape: `{"shape":…,"n":…,"enqueue_ms":…,"drain_ms":…,
//! "drain_us_per_task":…,"drain_vs_independent":…}`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use simplepyq::{Clock, SimplePyQ, SystemClock, TaskEnd, TaskId};
use simplepyq_benches::stores::Stores;
use simplepyq_core::NewTask;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dependencies: {e}");
            ExitCode::from(1)
        }
    }
}

/// The shapes, each as the tasks of one enqueue call (parents named by position).
fn shape(name: &str, n: usize) -> Vec<NewTask> {
    let task = || NewTask::new("work", vec![0xc0]);
    match name {
        "chain" => (0..n)
            .map(|i| match i {
                0 => task(),
                i => task().after_earlier(i - 1),
            })
            .collect(),
        "fan_in" => {
            let mut tasks: Vec<NewTask> = (0..n - 1).map(|_| task()).collect();
            let mut last = task();
            for i in 0..n - 1 {
                last = last.after_earlier(i);
            }
            tasks.push(last);
            tasks
        }
        "fan_out" => (0..n)
            .map(|i| match i {
                0 => task(),
                _ => task().after_earlier(0),
            })
            .collect(),
        _ => (0..n).map(|_| task()).collect(),
    }
}

fn run() -> Result<(), String> {
    let (mut n, mut backend) = (10_000usize, "sqlite".to_owned());
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--n" => n = value.parse().map_err(|e| format!("--n: {e}"))?,
            "--backend" => backend = value,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    let stores = Stores::new(&backend)?;
    let mut independent_ms = None;
    for name in ["independent", "chain", "fan_in", "fan_out"] {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let (enqueue_ms, drain_ms) = measure(&stores, dir.path(), name, n)?;
        let base = *independent_ms.get_or_insert(drain_ms);
        println!(
            "{{\"backend\":\"{backend}\",\"shape\":\"{name}\",\"n\":{n},\"enqueue_ms\":{enqueue_ms:.1},\
             \"drain_ms\":{drain_ms:.1},\"drain_us_per_task\":{:.1},\"drain_vs_independent\":{:.2}}}",
            drain_ms * 1000.0 / n as f64,
            drain_ms / base
        );
    }
    Ok(())
}

/// Enqueues shape `name` of `n` tasks, then drains it; returns both times in milliseconds.
fn measure(
    stores: &Stores,
    dir: &std::path::Path,
    name: &str,
    n: usize,
) -> Result<(f64, f64), String> {
    let e = |e: simplepyq::Error| e.to_string();
    let schema = format!("deps_{name}_{n}");
    let q = SimplePyQ::builder(stores.open(dir, &schema)?)
        .poll_interval(Duration::from_secs(60))
        .build()
        .map_err(e)?;
    q.add_channel("work", |(): ()| Ok(()), 4).map_err(e)?;
    let tasks = shape(name, n);
    let began = Instant::now();
    let ids: Vec<TaskId> = q.store().enqueue(&tasks, SystemClock.now()).map_err(e)?;
    let enqueue_ms = began.elapsed().as_secs_f64() * 1000.0;
    let began = Instant::now();
    q.start().map_err(e)?;
    let last = *ids.last().ok_or("no tasks")?;
    match q.wait::<()>(last, Duration::from_secs(600)).map_err(e)? {
        Some(TaskEnd::Done(_)) => {}
        other => return Err(format!("{name}: the last task ended {other:?}")),
    }
    // The fan-out's and the independent tasks' last id is not the last to run.
    q.run_until_complete().map_err(e)?;
    let drain_ms = began.elapsed().as_secs_f64() * 1000.0;
    q.stop();
    let c = q.counts(None).map_err(e)?;
    if c.done != n {
        return Err(format!("{name}: {} of {n} done: {c:?}", c.done));
    }
    Ok((enqueue_ms, drain_ms))
}
