//! A worker process for the crash and multi-process tests.
//!
//! `simplepyq-test-worker BACKEND DB LOG WORKERS SLEEP_MS LEASE_MS` serves channel `work` of
//! the queue file DB (BACKEND `sqlite` or `redb`; for `postgres`, DB is the schema on the
//! server `SIMPLEPYQ_TEST_POSTGRES` names) with WORKERS threads until nothing is left to
//! do. Its handler appends `PID N MS` to LOG when it starts on task N (MS: the time in
//! milliseconds since the Unix epoch), then sleeps SLEEP_MS; at the end the process prints
//! `lease_lost L recovered R`, its queue's stats. With `SIMPLEPYQ_TEST_CLOCK_SKEW_MS=D` a
//! PostgreSQL worker acts as a machine whose clock is D ms off. With
//! `SIMPLEPYQ_TEST_MIXED=1` it also fails the first run in this process of every fifth task
//! (to be retried) and delays the first run of every seventh by 30 ms. With
//! `SIMPLEPYQ_TEST_SLOW=N:MS` task N sleeps MS instead of SLEEP_MS. With
//! `SIMPLEPYQ_TEST_FAIL=N` every run of task N fails. The queue polls every
//! 20 ms, or every `SIMPLEPYQ_TEST_POLL_MS` milliseconds. It exits 0 when
//! done, 2 if a worker met a storage error, 1 on bad usage or a failure to open the queue.

use std::fs::OpenOptions;
use std::io::Write;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use simplepyq::{
    Clock, PostgresOptions, PostgresStore, RedbStore, SimplePyQ, SqliteStore, Store, SystemClock,
    TaskError, Timestamp,
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [backend, db, log, workers, sleep_ms, lease_ms] = args.as_slice() else {
        eprintln!("usage: simplepyq-test-worker BACKEND DB LOG WORKERS SLEEP_MS LEASE_MS");
        return ExitCode::from(1);
    };
    let (Ok(workers), Ok(sleep_ms), Ok(lease_ms)) = (
        workers.parse::<usize>(),
        sleep_ms.parse::<u64>(),
        lease_ms.parse::<u64>(),
    ) else {
        eprintln!("WORKERS, SLEEP_MS and LEASE_MS must be whole numbers");
        return ExitCode::from(1);
    };
    match run(backend, db, log, workers, sleep_ms, lease_ms) {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(worker_error)) => {
            eprintln!("a worker met a storage error: {worker_error}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// The system clock, `.0` milliseconds off.
#[derive(Debug)]
struct Skewed(i64);

impl Clock for Skewed {
    fn now(&self) -> Timestamp {
        Timestamp::from_millis(SystemClock.now().as_millis() + self.0)
    }
}

fn run(
    backend: &str,
    db: &str,
    log: &str,
    workers: usize,
    sleep_ms: u64,
    lease_ms: u64,
) -> Result<Option<String>, Box<dyn std::error::Error>> {
    let log = Arc::new(Mutex::new(
        OpenOptions::new().create(true).append(true).open(log)?,
    ));
    let mut skewed = None;
    let store: Box<dyn Store> = match backend {
        "sqlite" => Box::new(SqliteStore::open(db)?),
        "redb" => Box::new(RedbStore::open(db)?),
        "postgres" => {
            let server = std::env::var("SIMPLEPYQ_TEST_POSTGRES")?;
            let options = PostgresOptions::new().schema(db).pool_size(4);
            let store = PostgresStore::connect_with(&server, options)?;
            // A machine whose clock is this far off: the store's clock is measured
            // against it.
            if let Ok(skew) = std::env::var("SIMPLEPYQ_TEST_CLOCK_SKEW_MS") {
                skewed = Some(store.measure_clock(Skewed(skew.parse()?))?);
            }
            Box::new(store)
        }
        other => return Err(format!("unknown backend {other:?}").into()),
    };
    let poll_ms = match std::env::var("SIMPLEPYQ_TEST_POLL_MS") {
        Ok(v) => v.parse()?,
        Err(_) => 20,
    };
    let mut builder = SimplePyQ::builder(store)
        .lease(Duration::from_millis(lease_ms))
        .poll_interval(Duration::from_millis(poll_ms));
    if let Some(clock) = skewed {
        builder = builder.clock(clock);
    }
    let q = builder.build()?;
    let pid = std::process::id();
    let mixed = std::env::var("SIMPLEPYQ_TEST_MIXED").is_ok_and(|v| v == "1");
    let seen = Mutex::new(std::collections::HashSet::new());
    let slow: Option<(u32, u64)> = match std::env::var("SIMPLEPYQ_TEST_SLOW") {
        Ok(v) => {
            let (n, ms) = v.split_once(':').ok_or("SIMPLEPYQ_TEST_SLOW is N:MS")?;
            Some((n.parse()?, ms.parse()?))
        }
        Err(_) => None,
    };
    let fail: Option<u32> = match std::env::var("SIMPLEPYQ_TEST_FAIL") {
        Ok(v) => Some(v.parse()?),
        Err(_) => None,
    };
    q.add_channel(
        "work",
        move |n: u32| {
            // One write per line, so lines of several processes never interleave.
            let ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            let line = format!("{pid} {n} {ms}\n");
            log.lock()
                .map_err(|_| TaskError::msg("log lock poisoned"))?
                .write_all(line.as_bytes())?;
            let sleep_ms = match slow {
                Some((slow, ms)) if slow == n => ms,
                _ => sleep_ms,
            };
            std::thread::sleep(Duration::from_millis(sleep_ms));
            if fail == Some(n) {
                return Err(TaskError::msg(format!("task {n} always fails")));
            }
            let first = seen
                .lock()
                .map_err(|_| TaskError::msg("lock poisoned"))?
                .insert(n);
            if mixed && first && n.is_multiple_of(5) {
                return Err(TaskError::msg(format!("planned failure of {n}")));
            }
            if mixed && first && n.is_multiple_of(7) {
                return Err(TaskError::Delay(Duration::from_millis(30)));
            }
            Ok(())
        },
        workers,
    )?;
    q.run_until_complete()?;
    let stats = q.stats();
    println!(
        "lease_lost {} recovered {}",
        stats.lease_lost, stats.recovered
    );
    Ok(q.last_worker_error())
}
