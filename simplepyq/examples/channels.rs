//! The original README's channels example: a channel bound to a handler with two workers.
//!
//! `cargo run --example channels`

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use simplepyq::{SimplePyQ, TaskError};

#[derive(Serialize, Deserialize)]
struct Scrape {
    url: String,
}

static RUNNING: AtomicUsize = AtomicUsize::new(0);
static MOST: AtomicUsize = AtomicUsize::new(0);

fn scrape_url(job: Scrape) -> Result<(), TaskError> {
    let now = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
    MOST.fetch_max(now, Ordering::SeqCst);
    println!("scraping {}", job.url);
    std::thread::sleep(Duration::from_millis(20));
    RUNNING.fetch_sub(1, Ordering::SeqCst);
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let q = SimplePyQ::open(dir.path().join("tasks.db"))?;
    q.add_channel("scrape", scrape_url, 2)?;
    for i in 0..6 {
        q.enqueue(
            "scrape",
            &Scrape {
                url: format!("https://example.com/{i}"),
            },
        )?;
    }
    q.run_until_complete()?;
    println!(
        "{} tasks done, at most {} at once (max_workers = 2)",
        q.counts("scrape")?.done,
        MOST.load(Ordering::SeqCst)
    );
    Ok(())
}
