//! The original README's `remove_channel` example: drop a channel's handler and every task
//! of it.
//!
//! `cargo run --example remove_channel`

use simplepyq::SimplePyQ;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let q = SimplePyQ::open(dir.path().join("tasks.db"))?;
    q.add_channel("legacy", |_: u32| Ok(()), 1)?;
    q.add_channel("current", |_: u32| Ok(()), 1)?;
    for i in 0..5u32 {
        q.enqueue("legacy", &i)?;
    }
    q.enqueue("current", &1u32)?;
    println!(
        "remove_channel(\"legacy\") deleted {} tasks",
        q.remove_channel("legacy")?
    );
    q.run_until_complete()?;
    println!(
        "legacy: {} tasks; current: {} done",
        q.counts("legacy")?.total(),
        q.counts("current")?.done
    );
    Ok(())
}
