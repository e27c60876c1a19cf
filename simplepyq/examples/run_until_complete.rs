//! The original README's `run_until_complete` example: process until nothing this queue can
//! run is left, waiting out delays, then stop.
//!
//! `cargo run --example run_until_complete`

use std::time::{Duration, Instant};

use simplepyq::{EnqueueOptions, SimplePyQ};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let q = SimplePyQ::open(dir.path().join("tasks.db"))?;
    q.add_channel(
        "work",
        |n: u32| {
            println!("work {n}");
            Ok(())
        },
        3,
    )?;
    for n in 0..5u32 {
        q.enqueue("work", &n)?;
    }
    q.enqueue_with(
        "work",
        &99u32,
        EnqueueOptions::new().delay(Duration::from_millis(200)),
    )?;
    // No handler here for this channel: run_until_complete does not wait for it.
    q.enqueue("elsewhere", &0u32)?;
    let started = Instant::now();
    q.run_until_complete()?;
    println!(
        "returned after {:?}: work {} done; elsewhere {} still pending",
        started.elapsed(),
        q.counts("work")?.done,
        q.counts("elsewhere")?.pending
    );
    Ok(())
}
