//! Async channels against thread channels on I/O-bound work.
//!
//! ```text
//! cargo run --release -p simplepyq-examples --example async_timers [-- TASKS CONCURRENCY]
//! ```
//!
//! 10,000 tasks (by default) whose handler waits 100 ms, as an HTTP call would, with 1,000
//! in flight: on an async channel over a 2-thread tokio runtime, then on a thread channel
//! with 1,000 worker threads. Each run checks that every task ran exactly once. Then it
//! measures how long `enqueue` holds a runtime thread when called from async code (one
//! group commit on the SQLite file).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use simplepyq::{ChannelOptions, SimplePyQ, SqliteStore};

fn queue(dir: &std::path::Path, name: &str) -> Result<SimplePyQ<SqliteStore>, simplepyq::Error> {
    SimplePyQ::open(dir.join(name))
}

/// One counter per task: each must end at exactly 1.
fn counters(n: u32) -> Arc<Vec<AtomicU32>> {
    Arc::new((0..n).map(|_| AtomicU32::new(0)).collect())
}

fn check(runs: &[AtomicU32], what: &str) {
    let wrong = runs
        .iter()
        .filter(|r| r.load(Ordering::SeqCst) != 1)
        .count();
    assert_eq!(wrong, 0, "{what}: {wrong} tasks did not run exactly once");
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let tasks: u32 = args.next().map_or(Ok(10_000), |a| a.parse())?;
    let concurrency: usize = args.next().map_or(Ok(1_000), |a| a.parse())?;
    let dir = tempfile::tempdir()?;
    let numbers: Vec<u32> = (0..tasks).collect();
    let ideal = Duration::from_millis(100) * tasks.div_ceil(concurrency as u32);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let q = queue(dir.path(), "async.db")?;
    let runs = counters(tasks);
    let r = Arc::clone(&runs);
    let timers = q.add_channel_async_with(
        "timers",
        move |n: u32| {
            let r = Arc::clone(&r);
            async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                r[n as usize].fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        },
        ChannelOptions::new(concurrency).runtime(rt.handle().clone()),
    )?;
    timers.enqueue_many(&numbers, Default::default())?;
    let t0 = Instant::now();
    q.run_until_complete()?;
    let async_time = t0.elapsed();
    check(&runs, "async");
    println!(
        "async channel, {concurrency} in flight on 2 runtime threads: {tasks} tasks of 100 ms in {:.2} s (ideal {:.1} s)",
        async_time.as_secs_f64(),
        ideal.as_secs_f64()
    );

    let q = queue(dir.path(), "threads.db")?;
    let runs = counters(tasks);
    let r = Arc::clone(&runs);
    let timers = q.add_channel(
        "timers",
        move |n: u32| {
            std::thread::sleep(Duration::from_millis(100));
            r[n as usize].fetch_add(1, Ordering::SeqCst);
            Ok(())
        },
        concurrency,
    )?;
    timers.enqueue_many(&numbers, Default::default())?;
    let t0 = Instant::now();
    q.run_until_complete()?;
    let thread_time = t0.elapsed();
    check(&runs, "threads");
    println!(
        "thread channel, {concurrency} worker threads: {tasks} tasks of 100 ms in {:.2} s",
        thread_time.as_secs_f64()
    );

    // How long an enqueue holds the runtime thread it is called on.
    let q = Arc::new(queue(dir.path(), "enqueue.db")?);
    let held: Vec<Duration> = rt.block_on({
        let q = Arc::clone(&q);
        async move {
            let mut held = Vec::new();
            for n in 0..2_000u32 {
                let t0 = Instant::now();
                q.enqueue("later", &n).expect("enqueue");
                held.push(t0.elapsed());
                tokio::task::yield_now().await;
            }
            held
        }
    });
    let mut held = held;
    held.sort();
    let at = |p: usize| held[(held.len() - 1) * p / 100].as_secs_f64() * 1e6;
    println!(
        "enqueue from async code holds the runtime thread: p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs (one commit each)",
        at(50),
        at(99),
        at(100)
    );
    Ok(())
}
