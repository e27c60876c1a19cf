//! The original README's `clear_failed` example: delete the failed tasks of a channel, or
//! of every channel.
//!
//! `cargo run --example clear_failed`

use simplepyq::{SimplePyQ, TaskError};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let q = SimplePyQ::open(dir.path().join("tasks.db"))?;
    q.add_channel("resize", |_: u32| Err(TaskError::msg("corrupt image")), 1)?;
    q.add_channel("notify", |_: u32| Err(TaskError::msg("no such user")), 1)?;
    for i in 0..3u32 {
        q.enqueue("resize", &i)?;
    }
    q.enqueue("notify", &7u32)?;
    q.run_until_complete()?;
    println!(
        "failed: resize {}, notify {}",
        q.counts("resize")?.failed,
        q.counts("notify")?.failed
    );
    println!(
        "clear_failed(\"resize\") deleted {}",
        q.clear_failed("resize")?
    );
    println!("clear_failed(None) deleted {}", q.clear_failed(None)?);
    println!("tasks left: {}", q.counts(None)?.total());
    Ok(())
}
