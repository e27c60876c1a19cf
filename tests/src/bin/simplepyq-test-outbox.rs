//! A producer or consumer process for the outbox crash tests.
//!
//! `simplepyq-test-outbox produce DB` opens the SQLite queue file DB and, until killed,
//! commits one transaction after another on its own connection, each inserting an order
//! into the application's table `orders` and enqueueing its task (channel `receipts`, the
//! order's id as arguments) with `enqueue_in`.
//!
//! `simplepyq-test-outbox consume DB` serves channel `receipts` with 2 workers (a lease of
//! 500 ms) until nothing is left: each run inserts a row into the application's table
//! `receipts` and completes its task in one transaction with `complete_in`, then works 5 ms
//! more.
//!
//! `produce-pg CONNINFO SCHEMA` and `consume-pg CONNINFO SCHEMA` do the same on PostgreSQL,
//! with the queue and the application's tables `orders` and `receipts` in SCHEMA.
//!
//! It exits 1 if anything fails.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use simplepyq::rusqlite::{Connection, TransactionBehavior};
use simplepyq::{SimplePyQ, SqliteStore, TaskContext, TaskError};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [mode, db] if mode == "produce" => produce(Path::new(db)),
        [mode, db] if mode == "consume" => consume(Path::new(db)),
        [mode, url, schema] if mode == "produce-pg" => pg::produce(url, schema),
        [mode, url, schema] if mode == "consume-pg" => pg::consume(url, schema),
        _ => {
            eprintln!(
                "usage: simplepyq-test-outbox produce|consume DB, \
                 or produce-pg|consume-pg CONNINFO SCHEMA"
            );
            return ExitCode::from(1);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// The application's connection to the queue's file, with its tables.
fn app(db: &Path) -> Result<Connection, simplepyq::rusqlite::Error> {
    let conn = Connection::open(db)?;
    conn.execute_batch(
        "PRAGMA busy_timeout = 10000; \
         CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, item TEXT NOT NULL); \
         CREATE TABLE IF NOT EXISTS receipts (order_id INTEGER NOT NULL)",
    )?;
    Ok(conn)
}

fn produce(db: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let q = SimplePyQ::open(db)?;
    let mut conn = app(db)?;
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute("INSERT INTO orders (item) VALUES ('tea')", [])?;
        let order = tx.last_insert_rowid();
        q.enqueue_in(&tx, "receipts", &order)?;
        tx.commit()?;
    }
}

fn consume(db: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let q = SimplePyQ::builder(SqliteStore::open(db)?)
        .lease(Duration::from_millis(500))
        // Killed on purpose, again and again: a task may be lost more often than a crash
        // would lose it.
        .max_lost_runs(100)
        .build()?;
    let receipts = q.channel::<i64>("receipts");
    let file = db.to_path_buf();
    q.add_channel(
        "receipts",
        move |order: i64, ctx: &TaskContext| -> Result<(), TaskError> {
            let mut conn = app(&file)?;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute("INSERT INTO receipts (order_id) VALUES (?1)", [order])?;
            receipts.complete_in(&tx, ctx)?;
            tx.commit()?;
            // More work after the transaction (a reply, a log line): a kill here must not
            // run the task again.
            std::thread::sleep(Duration::from_millis(5));
            Ok(())
        },
        2,
    )?;
    q.run_until_complete()?;
    Ok(())
}

/// The same on PostgreSQL.
mod pg {
    use std::time::Duration;

    use simplepyq::postgres::{Client, NoTls};
    use simplepyq::{PostgresOptions, PostgresStore, SimplePyQ, TaskContext, TaskError};

    type Failure = Box<dyn std::error::Error>;

    fn store(url: &str, schema: &str) -> Result<PostgresStore, Failure> {
        Ok(PostgresStore::connect_with(
            url,
            PostgresOptions::new().schema(schema).pool_size(2),
        )?)
    }

    /// The application's connection, with its tables in `schema`.
    fn app(url: &str, schema: &str) -> Result<Client, Failure> {
        let mut c = Client::connect(url, NoTls)?;
        c.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {schema}.orders (id bigserial PRIMARY KEY, item text); \
             CREATE TABLE IF NOT EXISTS {schema}.receipts (order_id bigint NOT NULL)"
        ))?;
        Ok(c)
    }

    pub(crate) fn produce(url: &str, schema: &str) -> Result<(), Failure> {
        let q = SimplePyQ::new(store(url, schema)?);
        let mut db = app(url, schema)?;
        let insert = format!("INSERT INTO {schema}.orders (item) VALUES ('tea') RETURNING id");
        loop {
            let mut tx = db.transaction()?;
            let order: i64 = tx.query_one(&insert, &[])?.get(0);
            q.enqueue_in(&mut tx, "receipts", &order)?;
            tx.commit()?;
        }
    }

    pub(crate) fn consume(url: &str, schema: &str) -> Result<(), Failure> {
        let q = SimplePyQ::builder(store(url, schema)?)
            .lease(Duration::from_millis(500))
            .max_lost_runs(100)
            .build()?;
        let receipts = q.channel::<i64>("receipts");
        let db = std::sync::Mutex::new(app(url, schema)?);
        let insert = format!("INSERT INTO {schema}.receipts (order_id) VALUES ($1)");
        q.add_channel(
            "receipts",
            move |order: i64, ctx: &TaskContext| -> Result<(), TaskError> {
                let mut db = db.lock().map_err(|_| TaskError::msg("poisoned"))?;
                let mut tx = db.transaction()?;
                tx.execute(&insert, &[&order])?;
                receipts.complete_in(&mut tx, ctx)?;
                tx.commit()?;
                std::thread::sleep(Duration::from_millis(5));
                Ok(())
            },
            1,
        )?;
        q.run_until_complete()?;
        Ok(())
    }
}
