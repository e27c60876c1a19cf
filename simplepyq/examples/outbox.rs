//! The outbox pattern on SQLite: an order and its "send the receipt" task commit in one
//! transaction of the application's own connection, or neither does.
//!
//! `cargo run --example outbox`
//!
//! Three orders are placed; the second one's transaction rolls back (the payment failed),
//! taking its task with it. The workers send two receipts, woken by each commit.

use std::time::Duration;

use simplepyq::rusqlite::{Connection, TransactionBehavior};
use simplepyq::{SimplePyQ, TaskError};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("shop.db");
    let q = SimplePyQ::builder(simplepyq::SqliteStore::open(&path)?)
        .poll_interval(Duration::from_secs(60)) // the commits wake the workers, not the poll
        .build()?;
    q.add_channel(
        "receipts",
        |order: i64| {
            println!("receipt sent for order {order}");
            Ok::<(), TaskError>(())
        },
        2,
    )?;
    q.start()?;

    let mut db = Connection::open(&path)?;
    db.execute_batch(
        "CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, item TEXT NOT NULL)",
    )?;
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
    let sent = q.counts("receipts")?.done;
    println!("{orders} orders, {sent} receipts sent");
    assert_eq!((orders, sent), (2, 2));
    Ok(())
}
