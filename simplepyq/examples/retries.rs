//! The original README's retries example: a failing task is tried again up to `retries`
//! more times, then marked failed with its last error.
//!
//! `cargo run --example retries`

use std::sync::atomic::{AtomicU32, Ordering};

use simplepyq::{EnqueueOptions, SimplePyQ, TaskError};

static FLAKY_RUNS: AtomicU32 = AtomicU32::new(0);

fn fetch(url: String) -> Result<(), TaskError> {
    if url.contains("down") {
        println!("{url}: failed");
        return Err(TaskError::msg(format!("{url} is down")));
    }
    let run = FLAKY_RUNS.fetch_add(1, Ordering::SeqCst) + 1;
    if run < 3 {
        println!("{url}: timeout on attempt {run}");
        return Err(TaskError::msg("timeout"));
    }
    println!("{url}: fetched on attempt {run}");
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let q = SimplePyQ::open(dir.path().join("tasks.db"))?;
    q.add_channel("fetch", fetch, 1)?;
    let flaky = q.enqueue_with(
        "fetch",
        "https://flaky.example",
        EnqueueOptions::new().retries(2),
    )?;
    let down = q.enqueue_with(
        "fetch",
        "https://down.example",
        EnqueueOptions::new().retries(1),
    )?;
    q.run_until_complete()?;
    for id in [flaky, down] {
        let t = q.task(id)?.ok_or("the task is gone")?;
        println!(
            "task {id}: {} after {} attempt(s), last error: {:?}",
            t.state.status, t.state.attempts, t.state.last_error
        );
    }
    Ok(())
}
