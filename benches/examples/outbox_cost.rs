//! Measures what enqueueing in the application's own transaction costs, and how soon
//! another queue on the file picks such a task up.
//!
//! ```text
//! cargo run --release -p simplepyq-benches --example outbox_cost -- [--n 5000] [--rounds 3]
//! cargo run --release -p simplepyq-benches --example outbox_cost -- --postgres [--n 2000]
//! ```
//!
//! For each durability (SQLite `synchronous=NORMAL` and `FULL`) and 1 and 4 producer
//! threads, each with its own connection to the queue's file: N application transactions
//! (`BEGIN IMMEDIATE`, one row into the application's table, `COMMIT`) timed against N that
//! also enqueue the row's task (`enqueue_in`), alternating, `--rounds` times; the ratio of
//! their times is the cost of the outbox (target: at most 1.5). Then the pick-up latency: 200
//! tasks committed one by one in application transactions through one queue, each timed
//! until a second queue on the file (as another process would be; its poll is a minute, so
//! only the commit's wake-up counts) starts it.
//!
//! With `--postgres`, the same on a PostgreSQL server of its own (started from the installed
//! binaries, with PostgreSQL's default durability): application transactions on the
//! `postgres` client with and without `enqueue_in`, 1 and 4 producers; then the pick-up
//! latency by a second store's queue (its own pool and listening connection, as another
//! machine's), woken by the commit's `NOTIFY`.
//!
//! Prints one JSON line per durability and producer count, then one for the latency.

use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use simplepyq::rusqlite::{Connection, TransactionBehavior};
use simplepyq::{Durability, SimplePyQ, SqliteOptions, SqliteStore};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn flag(name: &str, default: u64) -> Result<u64, String> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{name} takes a whole number")),
        None => Ok(default),
    }
}

fn run() -> Result<(), String> {
    let n = flag("--n", 5_000)?;
    let rounds = flag("--rounds", 3)?;
    if std::env::args().any(|a| a == "--postgres") {
        return postgres::run(n, rounds);
    }
    let e = |e: simplepyq::Error| e.to_string();
    for (durability, sync) in [(Durability::Normal, "NORMAL"), (Durability::Full, "FULL")] {
        for producers in [1u64, 4] {
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            let path = dir.path().join("shop.db");
            let store = SqliteStore::open_with(&path, SqliteOptions::new().durability(durability))
                .map_err(e)?;
            let q = Arc::new(SimplePyQ::new(store));
            let (mut alone, mut with_task) = (Vec::new(), Vec::new());
            for _ in 0..rounds {
                alone.push(transactions(&path, sync, n, producers, None)?);
                with_task.push(transactions(&path, sync, n, producers, Some(&q))?);
            }
            let best = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
            let (a, t) = (best(&alone), best(&with_task));
            println!(
                "{{\"synchronous\":\"{sync}\",\"producers\":{producers},\"n\":{n},\
                 \"row_alone_per_s\":{:.0},\"row_and_task_per_s\":{:.0},\"time_ratio\":{:.2}}}",
                n as f64 / a,
                n as f64 / t,
                t / a
            );
        }
    }
    latency()
}

/// Seconds for `n` application transactions from `producers` threads, each inserting one
/// row, and with `q` enqueueing its task too.
fn transactions(
    path: &Path,
    sync: &str,
    n: u64,
    producers: u64,
    q: Option<&Arc<SimplePyQ<SqliteStore>>>,
) -> Result<f64, String> {
    let started = Instant::now();
    std::thread::scope(|s| -> Result<(), String> {
        let handles: Vec<_> = (0..producers)
            .map(|p| {
                s.spawn(move || -> Result<(), String> {
                    let mut db = app(path, sync)?;
                    let mut i = p;
                    while i < n {
                        let tx = db
                            .transaction_with_behavior(TransactionBehavior::Immediate)
                            .map_err(|e| e.to_string())?;
                        tx.execute("INSERT INTO orders (item) VALUES ('tea')", [])
                            .map_err(|e| e.to_string())?;
                        if let Some(q) = q {
                            let order = tx.last_insert_rowid();
                            q.enqueue_in(&tx, "receipts", &order)
                                .map_err(|e| e.to_string())?;
                        }
                        tx.commit().map_err(|e| e.to_string())?;
                        i += producers;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| "a producer panicked".to_string())??;
        }
        Ok(())
    })?;
    Ok(started.elapsed().as_secs_f64())
}

/// The application's connection to the queue's file, at the queue's `synchronous`.
fn app(path: &Path, sync: &str) -> Result<Connection, String> {
    let db = Connection::open(path).map_err(|e| e.to_string())?;
    db.execute_batch(&format!(
        "PRAGMA busy_timeout = 30000; PRAGMA synchronous = {sync}; \
         CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, item TEXT NOT NULL)"
    ))
    .map_err(|e| e.to_string())?;
    Ok(db)
}

/// The pick-up latency of tasks committed in application transactions, by a second queue.
fn latency() -> Result<(), String> {
    let e = |e: simplepyq::Error| e.to_string();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = dir.path().join("shop.db");
    let producer = SimplePyQ::open(&path).map_err(e)?;
    let other = SimplePyQ::builder(SqliteStore::open(&path).map_err(e)?)
        .poll_interval(Duration::from_secs(60))
        .build()
        .map_err(e)?;
    let started: Arc<Mutex<Option<Instant>>> = Arc::default();
    let seen = Arc::clone(&started);
    other
        .add_channel(
            "receipts",
            move |_: i64| {
                *seen.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
                Ok(())
            },
            1,
        )
        .map_err(e)?;
    other.start().map_err(e)?;
    let mut db = app(&path, "NORMAL")?;
    let (p50, p99) = pickups(&started, |order| {
        let tx = db
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| e.to_string())?;
        producer.enqueue_in(&tx, "receipts", &order).map_err(e)?;
        tx.commit().map_err(|e| e.to_string())
    })?;
    other.stop();
    println!("{{\"pickup_after_commit_ms_p50\":{p50:.3},\"pickup_after_commit_ms_p99\":{p99:.3}}}");
    Ok(())
}

/// Commits 200 orders one by one with `commit` (which enqueues each in its transaction),
/// each timed from its commit until a handler marks `started`; returns the p50 and p99 in
/// milliseconds.
fn pickups(
    started: &Mutex<Option<Instant>>,
    mut commit: impl FnMut(i64) -> Result<(), String>,
) -> Result<(f64, f64), String> {
    let mut latencies = Vec::with_capacity(200);
    for order in 0..200i64 {
        std::thread::sleep(Duration::from_millis(5));
        *started.lock().unwrap_or_else(PoisonError::into_inner) = None;
        commit(order)?;
        let committed = Instant::now();
        let deadline = committed + Duration::from_secs(10);
        let ran = loop {
            if let Some(at) = *started.lock().unwrap_or_else(PoisonError::into_inner) {
                break at;
            }
            if Instant::now() > deadline {
                return Err(format!("order {order} was not picked up within 10 s"));
            }
            std::thread::sleep(Duration::from_micros(50));
        };
        latencies.push(ran.saturating_duration_since(committed).as_secs_f64() * 1_000.0);
    }
    latencies.sort_by(f64::total_cmp);
    Ok((
        latencies[latencies.len() / 2],
        latencies[latencies.len() * 99 / 100],
    ))
}

/// The same measures on PostgreSQL.
mod postgres {
    use std::sync::{Arc, Mutex, PoisonError};
    use std::time::{Duration, Instant};

    use simplepyq::postgres::{Client, NoTls};
    use simplepyq::{PostgresOptions, PostgresStore, SimplePyQ};

    fn err(e: impl std::fmt::Display) -> String {
        e.to_string()
    }

    pub(crate) fn run(n: u64, rounds: u64) -> Result<(), String> {
        let server = simplepyq_tests::postgres::durable_server();
        let url = server.conninfo().to_owned();
        let open = |schema: &str| {
            PostgresStore::connect_with(&url, PostgresOptions::new().schema(schema)).map_err(err)
        };
        let q = Arc::new(SimplePyQ::new(open("bench")?));
        let mut setup = Client::connect(&url, NoTls).map_err(err)?;
        setup
            .batch_execute("CREATE TABLE orders (id bigserial PRIMARY KEY, item text NOT NULL)")
            .map_err(err)?;
        for producers in [1u64, 4] {
            let (mut alone, mut with_task) = (Vec::new(), Vec::new());
            for _ in 0..rounds {
                alone.push(transactions(&url, n, producers, None)?);
                with_task.push(transactions(&url, n, producers, Some(&q))?);
            }
            let best = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
            let (a, t) = (best(&alone), best(&with_task));
            println!(
                "{{\"backend\":\"postgres\",\"producers\":{producers},\"n\":{n},\
                 \"row_alone_per_s\":{:.0},\"row_and_task_per_s\":{:.0},\"time_ratio\":{:.2}}}",
                n as f64 / a,
                n as f64 / t,
                t / a
            );
        }
        latency(&url, &q, open("bench")?)
    }

    /// Seconds for `n` application transactions from `producers` threads, each on its own
    /// connection inserting one row, and with `q` enqueueing its task too.
    fn transactions(
        url: &str,
        n: u64,
        producers: u64,
        q: Option<&Arc<SimplePyQ<PostgresStore>>>,
    ) -> Result<f64, String> {
        let mut clients = (0..producers)
            .map(|_| Client::connect(url, NoTls).map_err(err))
            .collect::<Result<Vec<_>, _>>()?;
        let started = Instant::now();
        std::thread::scope(|s| -> Result<(), String> {
            let handles: Vec<_> = clients
                .iter_mut()
                .enumerate()
                .map(|(p, db)| {
                    s.spawn(move || -> Result<(), String> {
                        let mut i = p as u64;
                        while i < n {
                            let mut tx = db.transaction().map_err(err)?;
                            let order: i64 = tx
                                .query_one(
                                    "INSERT INTO orders (item) VALUES ('tea') RETURNING id",
                                    &[],
                                )
                                .map_err(err)?
                                .get(0);
                            if let Some(q) = q {
                                q.enqueue_in(&mut tx, "receipts", &order).map_err(err)?;
                            }
                            tx.commit().map_err(err)?;
                            i += producers;
                        }
                        Ok(())
                    })
                })
                .collect();
            for h in handles {
                h.join().map_err(|_| "a producer panicked".to_string())??;
            }
            Ok(())
        })?;
        Ok(started.elapsed().as_secs_f64())
    }

    /// The pick-up latency, by a queue on `other` (a store of its own), of tasks that `q`
    /// enqueues in application transactions, one at a time.
    fn latency(
        url: &str,
        q: &SimplePyQ<PostgresStore>,
        other: PostgresStore,
    ) -> Result<(), String> {
        let other = SimplePyQ::builder(other)
            .poll_interval(Duration::from_secs(60))
            .build()
            .map_err(err)?;
        let started: Arc<Mutex<Option<Instant>>> = Arc::default();
        let seen = Arc::clone(&started);
        other
            .add_channel(
                "pickup",
                move |_: i64| {
                    *seen.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
                    Ok(())
                },
                1,
            )
            .map_err(err)?;
        other.start().map_err(err)?;
        std::thread::sleep(Duration::from_millis(300));
        let mut db = Client::connect(url, NoTls).map_err(err)?;
        let (p50, p99) = super::pickups(&started, |order| {
            let mut tx = db.transaction().map_err(err)?;
            q.enqueue_in(&mut tx, "pickup", &order).map_err(err)?;
            tx.commit().map_err(err)
        })?;
        other.stop();
        println!(
            "{{\"backend\":\"postgres\",\"pickup_after_commit_ms_p50\":{p50:.3},\
             \"pickup_after_commit_ms_p99\":{p99:.3}}}"
        );
        Ok(())
    }
}
