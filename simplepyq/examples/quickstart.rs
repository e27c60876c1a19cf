//! The README's quick start: a real queue on a SQLite file.
//!
//! ```text
//! cargo run --release --example quickstart [-- PATH]
//! ```
//!
//! Enqueues pages to "scrape" on a channel with two workers; some fail once and are retried,
//! one asks to be delayed, one always fails. Prints what happened, then shows that the file
//! keeps the tasks: it reopens it and requeues the failed one.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use simplepyq::{EnqueueOptions, SimplePyQ, TaskError};

#[derive(Serialize, Deserialize)]
struct Page {
    url: String,
}

fn scrape(page: Page, runs: &AtomicUsize) -> Result<(), TaskError> {
    let run = runs.fetch_add(1, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(5)); // the "download"
    if page.url.ends_with("/gone") {
        return Err(TaskError::msg(format!("{}: 404 not found", page.url)));
    }
    if page.url.ends_with("/slow") && run.is_multiple_of(2) {
        return Err(TaskError::Delay(Duration::from_millis(200))); // the original's DelayException
    }
    if page.url.ends_with("7") && run.is_multiple_of(3) {
        return Err(TaskError::msg("connection reset")); // retried
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = match std::env::args().nth(1) {
        Some(p) => std::path::PathBuf::from(p),
        None => {
            std::env::temp_dir().join(format!("simplepyq-quickstart-{}.db", std::process::id()))
        }
    };
    println!("queue file: {}", path.display());

    let q = SimplePyQ::open(&path)?;
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&runs);
    q.add_channel("scrape", move |page: Page| scrape(page, &counter), 2)?;

    let started = Instant::now();
    let mut urls: Vec<String> = (0..40)
        .map(|i| format!("https://example.com/{i}"))
        .collect();
    urls.push("https://example.com/slow".into());
    urls.push("https://example.com/gone".into());
    for url in &urls {
        q.enqueue_with(
            "scrape",
            &Page { url: url.clone() },
            EnqueueOptions::new().retries(2),
        )?;
    }
    println!("enqueued {} tasks in {:?}", urls.len(), started.elapsed());

    q.run_until_complete()?;
    let c = q.counts("scrape")?;
    println!(
        "processed in {:?}: {} runs, {} done, {} failed, {} left",
        started.elapsed(),
        runs.load(Ordering::SeqCst),
        c.done,
        c.failed,
        c.active()
    );
    drop(q);

    // The file keeps everything: reopen it and look at the failed task.
    let q = SimplePyQ::open(&path)?;
    q.add_channel("scrape", |_: Page| Ok::<(), TaskError>(()), 1)?;
    let counts = q.counts(None)?;
    println!(
        "after reopening: {} done, {} failed",
        counts.done, counts.failed
    );
    let requeued = q.requeue_failed("scrape", 0)?;
    q.run_until_complete()?;
    println!(
        "requeued {requeued} failed task(s) with a fixed handler: {} done, {} failed",
        q.counts("scrape")?.done,
        q.counts("scrape")?.failed
    );
    if std::env::args().nth(1).is_none() {
        drop(q);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
    Ok(())
}
