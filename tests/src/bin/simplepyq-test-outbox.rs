//! A producer process for the outbox crash test.
//!
//! `simplepyq-test-outbox DB` opens the SQLite queue file DB and, until killed, commits one
//! transaction after another on its own connection, each inserting an order into the
//! application's table `orders` and enqueueing its task (channel `receipts`, the order's id
//! as arguments) with `enqueue_in`. It exits 1 if anything fails.

use std::process::ExitCode;

use simplepyq::SimplePyQ;
use simplepyq::rusqlite::{Connection, TransactionBehavior};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [db] = args.as_slice() else {
        eprintln!("usage: simplepyq-test-outbox DB");
        return ExitCode::from(1);
    };
    match run(db) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(db: &str) -> Result<(), Box<dyn std::error::Error>> {
    let q = SimplePyQ::open(db)?;
    let mut conn = Connection::open(db)?;
    conn.execute_batch(
        "PRAGMA busy_timeout = 10000; \
         CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, item TEXT NOT NULL)",
    )?;
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute("INSERT INTO orders (item) VALUES ('tea')", [])?;
        let order = tx.last_insert_rowid();
        q.enqueue_in(&tx, "receipts", &order)?;
        tx.commit()?;
    }
}
