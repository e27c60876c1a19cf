//! A process that adds and removes channels on a running queue, as a service with a channel
//! per tenant does, and says how much its address space grew.
//!
//! `simplepyq-test-churn BACKEND DB ROUNDS` (BACKEND `memory`, `sqlite` or `redb`): starts
//! a queue on DB, then ROUNDS times adds a channel of 2 workers, runs one task on it and
//! removes it. Prints `grew KIB`: the growth of `VmSize` (Linux) from the end of the first
//! round to the end of the last. Exits 1 on bad usage or an error.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use simplepyq::{MemoryStore, RedbStore, SimplePyQ, SqliteStore, Store};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [backend, db, rounds] = args.as_slice() else {
        eprintln!("usage: simplepyq-test-churn BACKEND DB ROUNDS");
        return ExitCode::from(1);
    };
    let Ok(rounds) = rounds.parse::<usize>() else {
        eprintln!("ROUNDS must be a whole number");
        return ExitCode::from(1);
    };
    match run(backend, db, rounds) {
        Ok(grew) => {
            println!("grew {grew}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(backend: &str, db: &str, rounds: usize) -> Result<u64, Box<dyn std::error::Error>> {
    let store: Box<dyn Store> = match backend {
        "memory" => Box::new(MemoryStore::new()),
        "sqlite" => Box::new(SqliteStore::open(db)?),
        "redb" => Box::new(RedbStore::open(db)?),
        other => return Err(format!("unknown backend {other}").into()),
    };
    let q = SimplePyQ::new(store);
    q.start()?;
    let done = Arc::new(AtomicUsize::new(0));
    let mut first = None;
    for round in 0..rounds {
        let name = format!("tenant-{round}");
        let d = Arc::clone(&done);
        q.add_channel(
            &name,
            move |_: u32| {
                d.fetch_add(1, Ordering::SeqCst);
                Ok(())
            },
            2,
        )?;
        q.enqueue(&name, &0u32)?;
        let t0 = Instant::now();
        while done.load(Ordering::SeqCst) <= round {
            if t0.elapsed() > Duration::from_secs(10) {
                return Err(format!("the task of round {round} did not run").into());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        q.remove_channel(&name)?;
        if round == 0 {
            first = Some(vm_size()?);
        }
    }
    q.stop();
    let last = vm_size()?;
    Ok(last.saturating_sub(first.unwrap_or(last)))
}

/// The process's address space, in KiB.
fn vm_size() -> Result<u64, Box<dyn std::error::Error>> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .ok_or("no VmSize in /proc/self/status")?;
    Ok(line.trim().trim_end_matches("kB").trim().parse()?)
}
