//! The outbox pattern on SQLite: an order and its "send the receipt" task commit in one
//! transaction of the application's own connection, or neither does.
//!
//! `cargo run --example outbox`
//!
//! Three orders are placed; the second one's transaction rolls back (the payment failed),
//! taking its task with it. The workers, woken by each commit, send two receipts: each
//! handler records its receipt and completes its task in one transaction of its own.

use std::time::Duration;

use simplepyq::rusqlite::{Connection, TransactionBehavior};
use simplepyq::{SimplePyQ, TaskContext, TaskError};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("shop.db");
    let q = SimplePyQ::builder(simplepyq::SqliteStore::open(&path)?)
        .poll_interval(Duration::from_secs(60)) // the commits wake the workers, not the poll
        .build()?;
    let mut db = Connection::open(&path)?;
    db.execute_batch(
        "CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, item TEXT NOT NULL); \
         CREATE TABLE IF NOT EXISTS receipts (order_id INTEGER PRIMARY KEY)",
    )?;
    // The handler holds its channel's handle (not the queue) to complete its tasks.
    let receipts = q.channel::<i64>("receipts");
    let file = path.clone();
    q.add_channel(
        "receipts",
        move |order: i64, ctx: &TaskContext| -> Result<(), TaskError> {
            let mut db = Connection::open(&file)?;
            let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute("INSERT INTO receipts (order_id) VALUES (?1)", [order])?;
            receipts.complete_in(&tx, ctx)?; // the receipt and the task's `done`, together
            tx.commit()?;
            println!("receipt sent for order {order}");
            Ok(())
        },
        2,
    )?;
    q.start()?;

    for (item, paid) in [("tea", true), ("cake", false), ("scones", true)] {
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute("INSERT INTO orders (item) VALUES (?1)", [item])?;
        let order = tx.last_insert_rowid();
        q.enqueue_in(&tx, "receipts", &order)?;
        if paid {
            tx.commit()?;
            println!("order {order} ({item}) placed");
        } else {
            tx.rollback()?;
            println!("order {order} ({item}) rolled back: no row, no task");
        }
    }
    q.run_until_complete()?;
    let orders: i64 = db.query_row("SELECT count(*) FROM orders", [], |r| r.get(0))?;
    let recorded: i64 = db.query_row("SELECT count(*) FROM receipts", [], |r| r.get(0))?;
    let done = q.counts("receipts")?.done;
    println!("{orders} orders, {recorded} receipts recorded, {done} tasks done");
    assert_eq!((orders, recorded, done), (2, 2, 2));
    Ok(())
}
