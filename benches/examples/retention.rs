//! Measures what retention costs a drain: a queue file holds `--old N` done tasks that
//! finished a day ago, and `--n M` tasks to drain with `--workers W`; the drain runs once with
//! no retention and once with `keep_done(1 h)`, so that the queue's pruner deletes the old
//! tasks while the workers drain (each run on a fresh file; `--rounds R` alternates them R
//! times). Beside each drain a probe thread enqueues one task every 5 ms on another channel
//! and keeps the slowest enqueue: a write stall would show there.
//!
//! ```text
//! cargo run --release -p simplepyq-benches --example retention -- --old 100000 --n 20000 --workers 4 \
//!     [--backend sqlite|postgres|redb]
//! ```
//!
//! PostgreSQL: a throwaway server from the installed binaries, a fresh schema per run.
//!
//! Prints one JSON line per run: `{"retention":…,"drain_per_s":…,"pruned":…,
//! "slowest_write_ms":…,"totals_kept":…}`, and exits 1 if a run did not drain every task,
//! pruned the wrong tasks, or changed the totals.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use simplepyq::{Clock, Outcome, SimplePyQ, Store, SystemClock};
use simplepyq_benches::stores::Stores;
use simplepyq_benches::{Payload, payload};
use simplepyq_core::NewTask;

struct Args {
    backend: String,
    old: u64,
    n: u64,
    workers: usize,
    rounds: u32,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        backend: "sqlite".into(),
        old: 100_000,
        n: 20_000,
        workers: 4,
        rounds: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let number = || value.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--backend" => args.backend = value.clone(),
            "--old" => args.old = number()?,
            "--n" => args.n = number()?,
            "--workers" => args.workers = usize::try_from(number()?).map_err(|e| e.to_string())?,
            "--rounds" => args.rounds = u32::try_from(number()?).map_err(|e| e.to_string())?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

/// `old` done tasks of channel `bench`, finished a day ago, in batches of 10,000.
fn fill_old(store: &dyn Store, old: u64) -> Result<(), String> {
    let e = |e: simplepyq::Error| e.to_string();
    let day_ago = SystemClock.now().before(Duration::from_secs(86_400));
    let lease = day_ago.after(Duration::from_secs(60));
    let mut left = old;
    while left > 0 {
        let n = left.min(10_000);
        let tasks: Vec<NewTask> = (0..n)
            // MessagePack nil: a done task's arguments are never read again.
            .map(|_| NewTask::new("bench", vec![0xc0]))
            .collect();
        store.enqueue(&tasks, day_ago).map_err(e)?;
        let claimed = store
            .claim("bench", tasks.len(), day_ago, lease)
            .map_err(e)?;
        let done: Vec<_> = claimed
            .iter()
            .map(|t| (t.claim(), Outcome::Succeeded))
            .collect();
        for r in store.finish_many(&done, day_ago).map_err(e)? {
            r.map_err(e)?;
        }
        left -= n;
    }
    Ok(())
}

/// One run on a fresh store: returns its JSON line, or why it went wrong.
fn run(args: &Args, keep: bool, stores: &Stores, round: u32) -> Result<String, String> {
    let e = |e: simplepyq::Error| e.to_string();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let schema = format!("retention_{round}_{keep}");
    let store = stores.open(dir.path(), &schema)?;
    fill_old(&*store, args.old)?;
    let mut builder = SimplePyQ::builder(store);
    if keep {
        builder = builder.keep_done(Duration::from_secs(3_600));
    }
    let q = Arc::new(builder.build().map_err(e)?);
    let tasks: Vec<Payload> = (0..args.n).map(payload).collect();
    for chunk in tasks.chunks(10_000) {
        q.enqueue_many("bench", chunk, simplepyq::EnqueueOptions::new())
            .map_err(e)?;
    }
    let totals = q.store().totals().map_err(e)?;
    let processed = Arc::new(AtomicU64::new(0));
    let p = Arc::clone(&processed);
    q.add_channel(
        "bench",
        move |_: Payload| {
            p.fetch_add(1, Ordering::Relaxed);
            Ok(())
        },
        args.workers,
    )
    .map_err(e)?;
    // The probe: one enqueue every 5 ms on a channel no one serves, the slowest kept.
    let probing = Arc::new(AtomicBool::new(true));
    let probe = {
        let (q, probing) = (Arc::clone(&q), Arc::clone(&probing));
        std::thread::spawn(move || {
            let mut slowest = Duration::ZERO;
            let mut probes = 0u64;
            while probing.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let _ = q.enqueue("probe", &probes);
                slowest = slowest.max(t0.elapsed());
                probes += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            (slowest, probes)
        })
    };
    let started = Instant::now();
    q.start().map_err(e)?;
    while processed.load(Ordering::Relaxed) < args.n {
        std::thread::sleep(Duration::from_millis(1));
    }
    let drain_s = started.elapsed().as_secs_f64();
    // The pruner goes on after the drain if it has not finished: wait for it, at most 60 s.
    let deadline = Instant::now() + Duration::from_secs(60);
    let target = if keep { args.n } else { args.n + args.old };
    while keep && q.counts("bench").map_err(e)?.done > usize::try_from(target).unwrap_or(0) {
        if Instant::now() > deadline {
            return Err("the pruner did not finish in 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let prune_s = started.elapsed().as_secs_f64();
    q.stop();
    probing.store(false, Ordering::Relaxed);
    let (slowest, probes) = probe.join().map_err(|_| "the probe panicked")?;
    let done = q.counts("bench").map_err(e)?.done as u64;
    if done != target {
        return Err(format!("{done} done tasks of bench left, not {target}"));
    }
    let pruned = args.n + args.old - done;
    let mut after = q.store().totals().map_err(e)?;
    // The drain's own outcomes are counted in bench's totals: take them out to compare.
    if let Some(t) = after.get_mut("bench") {
        t.done -= args.n;
    }
    after.remove("probe");
    let totals_kept = after == totals;
    if !totals_kept {
        return Err(format!("the totals changed: {totals:?} then {after:?}"));
    }
    Ok(format!(
        "{{\"backend\":\"{}\",\"retention\":{keep},\"old\":{},\"n\":{},\"workers\":{},\"drain_per_s\":{:.0},\
         \"pruned\":{pruned},\"prune_done_s\":{prune_s:.2},\"slowest_write_ms\":{:.1},\
         \"probes\":{probes},\"totals_kept\":{totals_kept}}}",
        args.backend,
        args.old,
        args.n,
        args.workers,
        args.n as f64 / drain_s,
        slowest.as_secs_f64() * 1_000.0,
    ))
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("retention: {e}");
            return ExitCode::from(2);
        }
    };
    let stores = match Stores::new(&args.backend) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("retention: {e}");
            return ExitCode::from(2);
        }
    };
    for round in 0..args.rounds {
        for keep in [false, true] {
            match run(&args, keep, &stores, round) {
                Ok(line) => println!("{line}"),
                Err(e) => {
                    eprintln!("retention: {e}");
                    return ExitCode::from(1);
                }
            }
        }
    }
    ExitCode::SUCCESS
}
