//! Measures how soon `wait` answers once a task's outcome is recorded by another process:
//! two queues on one SQLite file, or one PostgreSQL schema on a throwaway server (two
//! stores, two connections, as two processes have), the
//! first running the tasks, the second enqueueing each one and waiting for it. The outcome
//! is timed by the first queue's `on_outcome` hook, which runs once the outcome committed;
//! the wait, when the second queue's `wait` returns.
//!
//! ```text
//! cargo run --release -p simplepyq-benches --example wait_latency -- --n 200 [--work-ms 5] \
//!     [--backend sqlite|postgres]
//! ```
//!
//! Prints one JSON line: `{"n":…,"work_ms":…,"wait_after_outcome_ms_p50":…,"…_p99":…}`.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use simplepyq::{SimplePyQ, TaskContext, TaskEnd, TaskId};
use simplepyq_benches::stores::Stores;

fn main() -> ExitCode {
    match run() {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wait_latency: {e}");
            ExitCode::from(1)
        }
    }
}

fn run() -> Result<String, String> {
    let (mut n, mut work_ms, mut backend) = (200u32, 5u64, "sqlite".to_owned());
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--n" => n = value.parse().map_err(|e| format!("--n: {e}"))?,
            "--work-ms" => work_ms = value.parse().map_err(|e| format!("--work-ms: {e}"))?,
            "--backend" => backend = value,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    let e = |e: simplepyq::Error| e.to_string();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let stores = Stores::new(&backend)?;
    let open = || stores.open(dir.path(), "wait_latency");
    // When each task's outcome was recorded by the running queue.
    let recorded: Arc<Mutex<HashMap<TaskId, Instant>>> = Arc::default();
    let r = Arc::clone(&recorded);
    let runner = SimplePyQ::builder(open()?)
        .on_outcome(move |report| {
            if let Ok(mut map) = r.lock() {
                map.insert(report.id, Instant::now());
            }
        })
        .build()
        .map_err(e)?;
    let work = Duration::from_millis(work_ms);
    runner
        .add_channel(
            "work",
            move |n: u32, ctx: &TaskContext| {
                std::thread::sleep(work);
                ctx.set_result(&n)?;
                Ok(())
            },
            2,
        )
        .map_err(e)?;
    runner.start().map_err(e)?;
    let waiter = SimplePyQ::new(open()?);
    let mut after = Vec::with_capacity(n as usize);
    for i in 0..n {
        let id = waiter.enqueue("work", &i).map_err(e)?;
        let end = waiter.wait::<u32>(id, Duration::from_secs(30)).map_err(e)?;
        let answered = Instant::now();
        if end != Some(TaskEnd::Done(Some(i))) {
            return Err(format!("task {id} ended as {end:?}"));
        }
        // The hook runs right after the commit, on the runner's recorder: give it a moment.
        let mut committed = None;
        for _ in 0..100 {
            committed = recorded
                .lock()
                .map_err(|e| e.to_string())?
                .get(&id)
                .copied();
            if committed.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let committed = committed.ok_or(format!("no outcome reported for task {id}"))?;
        after.push(answered.saturating_duration_since(committed).as_secs_f64() * 1_000.0);
    }
    runner.stop();
    after.sort_by(f64::total_cmp);
    let at = |q: f64| after[((after.len() - 1) as f64 * q) as usize];
    Ok(format!(
        "{{\"backend\":\"{backend}\",\"n\":{n},\"work_ms\":{work_ms},\"wait_after_outcome_ms_p50\":{:.2},\
         \"wait_after_outcome_ms_p99\":{:.2}}}",
        at(0.5),
        at(0.99)
    ))
}
