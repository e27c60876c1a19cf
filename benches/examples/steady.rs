//! A PostgreSQL queue under steady load, for the capacity model of README's "Scaling out":
//! a producer enqueues `--rate` tasks a second (a batch every 20 ms) for `--seconds`, the
//! workers drain them, and the queue keeps done tasks `--keep` seconds (its pruner deletes
//! older ones, as `keep_done` does in production). Every 10 s the tool prints the tasks
//! table's size and its indexes', its live and dead rows and how many times autovacuum ran
//! on it, as one JSON line; the server is a throwaway one with default settings.
//!
//! ```text
//! cargo run --release -p simplepyq-benches --example steady -- --rate 5000 --seconds 150 \
//!     --keep 10 --workers 4
//! ```
//!
//! Exits 1 unless every task enqueued ran once.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use simplepyq::{PostgresOptions, PostgresStore, SimplePyQ, TaskError};
use simplepyq_benches::{Payload, payload};

struct Args {
    rate: u64,
    seconds: u64,
    keep: u64,
    workers: usize,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        rate: 5_000,
        seconds: 150,
        keep: 10,
        workers: 4,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let n: u64 = value.parse().map_err(|e| format!("{flag} {value}: {e}"))?;
        match flag.as_str() {
            "--rate" => args.rate = n.max(50),
            "--seconds" => args.seconds = n,
            "--keep" => args.keep = n,
            "--workers" => args.workers = usize::try_from(n).map_err(|e| e.to_string())?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("steady: {e}");
            ExitCode::from(1)
        }
    }
}

/// The tasks table's sizes and counters, as JSON fields.
fn sample(client: &mut postgres::Client) -> Result<String, String> {
    let row = client
        .query_one(
            "SELECT pg_relation_size('steady.tasks'), pg_indexes_size('steady.tasks'), \
             n_live_tup, n_dead_tup, autovacuum_count FROM pg_stat_user_tables \
             WHERE schemaname = 'steady' AND relname = 'tasks'",
            &[],
        )
        .map_err(|e| e.to_string())?;
    let mib = |bytes: i64| bytes as f64 / 1_048_576.0;
    Ok(format!(
        "\"table_mib\":{:.1},\"indexes_mib\":{:.1},\"live\":{},\"dead\":{},\"autovacuums\":{}",
        mib(row.get(0)),
        mib(row.get(1)),
        row.get::<_, i64>(2),
        row.get::<_, i64>(3),
        row.get::<_, i64>(4)
    ))
}

fn run() -> Result<(), String> {
    let args = parse()?;
    let server = simplepyq_tests::postgres::durable_server();
    let e = |e: simplepyq::Error| e.to_string();
    let store =
        PostgresStore::connect_with(server.conninfo(), PostgresOptions::new().schema("steady"))
            .map_err(e)?;
    let q = Arc::new(
        SimplePyQ::builder(store)
            .keep_done(Duration::from_secs(args.keep))
            .build()
            .map_err(e)?,
    );
    let processed = Arc::new(AtomicU64::new(0));
    let p = Arc::clone(&processed);
    q.add_channel(
        "bench",
        move |t: Payload| {
            if t.url.is_empty() {
                return Err(TaskError::msg("empty url"));
            }
            p.fetch_add(1, Ordering::Relaxed);
            Ok(())
        },
        args.workers,
    )
    .map_err(e)?;
    q.start().map_err(e)?;

    let producing = Arc::new(AtomicBool::new(true));
    let enqueued = Arc::new(AtomicU64::new(0));
    let producer = {
        let (q, producing, enqueued) = (
            Arc::clone(&q),
            Arc::clone(&producing),
            Arc::clone(&enqueued),
        );
        let (rate, seconds) = (args.rate, args.seconds);
        std::thread::spawn(move || -> Result<(), String> {
            let started = Instant::now();
            let batch = rate / 50;
            let mut next = started;
            while started.elapsed() < Duration::from_secs(seconds) {
                let from = enqueued.load(Ordering::Relaxed);
                let tasks: Vec<Payload> = (from..from + batch).map(payload).collect();
                q.enqueue_many("bench", &tasks, simplepyq::EnqueueOptions::new())
                    .map_err(|e| e.to_string())?;
                enqueued.fetch_add(batch, Ordering::Relaxed);
                next += Duration::from_millis(20);
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            producing.store(false, Ordering::Relaxed);
            Ok(())
        })
    };

    let mut client = server.client();
    let started = Instant::now();
    let mut last = Instant::now();
    while producing.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        if last.elapsed() >= Duration::from_secs(10) {
            last = Instant::now();
            println!(
                "{{\"s\":{},\"enqueued\":{},\"processed\":{},{}}}",
                started.elapsed().as_secs(),
                enqueued.load(Ordering::Relaxed),
                processed.load(Ordering::Relaxed),
                sample(&mut client)?
            );
        }
    }
    producer.join().map_err(|_| "the producer panicked")??;
    let total = enqueued.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(120);
    while processed.load(Ordering::Relaxed) < total && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    q.stop();
    let ran = processed.load(Ordering::Relaxed);
    println!(
        "{{\"s\":{},\"enqueued\":{total},\"processed\":{ran},{}}}",
        started.elapsed().as_secs(),
        sample(&mut client)?
    );
    if ran != total {
        return Err(format!("{ran} tasks ran of {total} enqueued"));
    }
    Ok(())
}
