//! The bare limit of blocking calls answered by another thread: P threads each hand a call
//! to one answering thread and sleep until it answers, which it does for everything handed
//! over meanwhile, doing no other work. No store, no SQLite: what waking the callers costs
//! on this machine, the least a queue pays per enqueue whose caller waits for its commit.
//!
//! ```text
//! cargo run --release -p simplepyq-benches --example handoff -- [--producers P] [--n N]
//! ```
//!
//! Prints one JSON line: `{"producers":…,"calls_per_s":…,"calls_per_answer":…}`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// A call waiting for its answer.
struct Call {
    answered: Arc<AtomicBool>,
    caller: Thread,
}

#[derive(Default)]
struct Calls {
    waiting: Mutex<(Vec<Call>, bool)>,
    handed: Condvar,
}

/// Answers every call handed over meanwhile, until told to end; returns the rounds.
fn answer(calls: &Calls) -> u64 {
    let mut rounds = 0;
    loop {
        let batch = {
            let mut waiting = calls.waiting.lock().expect("not poisoned");
            while waiting.0.is_empty() {
                if waiting.1 {
                    return rounds;
                }
                waiting = calls.handed.wait(waiting).expect("not poisoned");
            }
            std::mem::take(&mut waiting.0)
        };
        rounds += 1;
        for call in batch {
            call.answered.store(true, Ordering::Release);
            call.caller.unpark();
        }
    }
}

fn call(calls: &Calls) {
    let answered = Arc::new(AtomicBool::new(false));
    calls.waiting.lock().expect("not poisoned").0.push(Call {
        answered: Arc::clone(&answered),
        caller: std::thread::current(),
    });
    calls.handed.notify_one();
    while !answered.load(Ordering::Acquire) {
        std::thread::park_timeout(Duration::from_millis(10));
    }
}

fn main() {
    let mut producers = 4u64;
    let mut n = 400_000u64;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().and_then(|v| v.parse::<u64>().ok());
        match (flag.as_str(), value) {
            ("--producers", Some(v)) => producers = v.max(1),
            ("--n", Some(v)) => n = v.max(1),
            _ => {
                eprintln!("usage: handoff [--producers P] [--n N]");
                std::process::exit(2);
            }
        }
    }
    let calls = Arc::new(Calls::default());
    let answerer = {
        let calls = Arc::clone(&calls);
        std::thread::spawn(move || answer(&calls))
    };
    let per_producer = n / producers;
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..producers {
            let calls = Arc::clone(&calls);
            s.spawn(move || (0..per_producer).for_each(|_| call(&calls)));
        }
    });
    let elapsed = started.elapsed().as_secs_f64();
    calls.waiting.lock().expect("not poisoned").1 = true;
    calls.handed.notify_one();
    let rounds = answerer.join().expect("the answering thread ended");
    let total = per_producer * producers;
    println!(
        "{{\"producers\":{producers},\"calls_per_s\":{:.0},\"calls_per_answer\":{:.1}}}",
        total as f64 / elapsed,
        total as f64 / rounds.max(1) as f64
    );
}
