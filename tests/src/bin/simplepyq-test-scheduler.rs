//! A scheduler process for the periodic-task tests.
//!
//! `simplepyq-test-scheduler BACKEND DB MS` runs a queue over DB (BACKEND `sqlite`; for
//! `postgres`, DB is the schema on the server `SIMPLEPYQ_TEST_POSTGRES` names) with the
//! schedule `tick`, every 100 ms into channel `ticks` (no handler: the tasks stay pending),
//! for MS milliseconds, then stops. It exits 0 when done, 2 if the queue met a storage
//! error, 1 on bad usage or a failure to open the queue.

use std::process::ExitCode;
use std::time::Duration;

use simplepyq::{PostgresOptions, PostgresStore, Schedule, SimplePyQ, SqliteStore, Store};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [backend, db, ms] = args.as_slice() else {
        eprintln!("usage: simplepyq-test-scheduler BACKEND DB MS");
        return ExitCode::from(1);
    };
    let Ok(ms) = ms.parse::<u64>() else {
        eprintln!("MS must be a whole number");
        return ExitCode::from(1);
    };
    match run(backend, db, ms) {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(error)) => {
            eprintln!("the queue met a storage error: {error}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(backend: &str, db: &str, ms: u64) -> Result<Option<String>, Box<dyn std::error::Error>> {
    let store: Box<dyn Store> = match backend {
        "sqlite" => Box::new(SqliteStore::open(db)?),
        "postgres" => {
            let server = std::env::var("SIMPLEPYQ_TEST_POSTGRES")?;
            let options = PostgresOptions::new().schema(db).pool_size(2);
            Box::new(PostgresStore::connect_with(&server, options)?)
        }
        other => return Err(format!("unknown backend {other:?}").into()),
    };
    let q = SimplePyQ::builder(store)
        .poll_interval(Duration::from_millis(20))
        .build()?;
    q.add_schedule(
        "tick",
        "ticks",
        Schedule::every(Duration::from_millis(100))?,
        &(),
    )?;
    q.start()?;
    std::thread::sleep(Duration::from_millis(ms));
    q.stop();
    Ok(q.last_worker_error())
}
