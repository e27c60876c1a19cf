//! The original README's `requeue_failed` example: run failed tasks again, with their
//! original retry count or a new one.
//!
//! `cargo run --example requeue_failed`

use std::sync::atomic::{AtomicBool, Ordering};

use simplepyq::{EnqueueOptions, SimplePyQ, TaskError};

static SERVICE_UP: AtomicBool = AtomicBool::new(false);

fn deliver(n: u32) -> Result<(), TaskError> {
    if SERVICE_UP.load(Ordering::SeqCst) {
        println!("delivered {n}");
        Ok(())
    } else {
        Err(TaskError::msg("service unavailable"))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let q = SimplePyQ::open(dir.path().join("tasks.db"))?;
    q.add_channel("deliver", deliver, 2)?;
    for n in 0..4u32 {
        q.enqueue_with("deliver", &n, EnqueueOptions::new().retries(1))?;
    }
    q.run_until_complete()?;
    println!(
        "while the service is down: {} failed",
        q.counts("deliver")?.failed
    );
    SERVICE_UP.store(true, Ordering::SeqCst);
    println!(
        "requeue_failed(\"deliver\", 3) requeued {}",
        q.requeue_failed("deliver", 3)?
    );
    q.run_until_complete()?;
    let c = q.counts("deliver")?;
    println!("after the requeue: {} done, {} failed", c.done, c.failed);
    Ok(())
}
