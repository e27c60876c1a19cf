//! The original README's delay example (`DelayException`): a handler defers its task, which
//! runs again by itself when the time comes, without using a retry.
//!
//! `cargo run --example delay`

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use simplepyq::{SimplePyQ, TaskError};

static ASKED: AtomicBool = AtomicBool::new(false);

fn call_api(endpoint: String) -> Result<(), TaskError> {
    if !ASKED.swap(true, Ordering::SeqCst) {
        println!("{endpoint}: rate limited, trying again in 300 ms");
        return Err(TaskError::Delay(Duration::from_millis(300)));
    }
    println!("{endpoint}: called");
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let q = SimplePyQ::open(dir.path().join("tasks.db"))?;
    q.add_channel("api", call_api, 1)?;
    let id = q.enqueue("api", "/v1/report")?;
    let started = Instant::now();
    q.run_until_complete()?;
    let t = q.task(id)?.ok_or("the task is gone")?;
    println!(
        "task {id}: {} after {:?}, {} attempts, retries left {}",
        t.state.status,
        started.elapsed(),
        t.state.attempts,
        t.state.retries_left
    );
    Ok(())
}
