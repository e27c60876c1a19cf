//! A producer process for the crash tests of enqueueing.
//!
//! `simplepyq-test-producer BACKEND DB ROUND THREADS` enqueues into channel `work` of the
//! queue DB (BACKEND `sqlite`, `redb` or `postgres`; for `postgres`, DB is the schema on the
//! server `SIMPLEPYQ_TEST_POSTGRES` names) from THREADS threads, each one task at a time,
//! for ever: thread T's S-th task has the arguments `(ROUND, T, S)`. Once an enqueue has
//! returned, the thread prints `T S` on a line of its own (one write each), so that a
//! process killed at any moment has printed only enqueues that returned. An enqueue that
//! fails prints `error T S MESSAGE` and ends the process with 2; bad usage or a failure to
//! open the queue ends it with 1.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use simplepyq::{PostgresOptions, PostgresStore, RedbStore, SimplePyQ, SqliteStore, Store};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [backend, db, round, threads] = args.as_slice() else {
        eprintln!("usage: simplepyq-test-producer BACKEND DB ROUND THREADS");
        return ExitCode::from(1);
    };
    let (Ok(round), Ok(threads)) = (round.parse::<u32>(), threads.parse::<u32>()) else {
        eprintln!("ROUND and THREADS must be whole numbers");
        return ExitCode::from(1);
    };
    let store: Box<dyn Store> = match open(backend, db) {
        Ok(store) => store,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let q = match SimplePyQ::builder(store).build() {
        Ok(q) => Arc::new(q),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let q = Arc::clone(&q);
            std::thread::spawn(move || {
                for s in 0u32.. {
                    let line = match q.enqueue("work", &(round, t, s)) {
                        Ok(_) => format!("{t} {s}\n"),
                        Err(e) => format!("error {t} {s} {e}\n"),
                    };
                    // One write per line: lines of several threads never interleave.
                    let mut out = std::io::stdout().lock();
                    if out
                        .write_all(line.as_bytes())
                        .and_then(|()| out.flush())
                        .is_err()
                        || line.starts_with("error")
                    {
                        return;
                    }
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
    // The threads enqueue for ever: they end only on an error.
    ExitCode::from(2)
}

fn open(backend: &str, db: &str) -> Result<Box<dyn Store>, Box<dyn std::error::Error>> {
    Ok(match backend {
        "sqlite" => Box::new(SqliteStore::open(db)?),
        "redb" => Box::new(RedbStore::open(db)?),
        "postgres" => {
            let server = std::env::var("SIMPLEPYQ_TEST_POSTGRES")?;
            let options = PostgresOptions::new().schema(db).pool_size(4);
            Box::new(PostgresStore::connect_with(&server, options)?)
        }
        other => return Err(format!("unknown backend {other:?}").into()),
    })
}
