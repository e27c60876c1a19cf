//! The outbox pattern on PostgreSQL: an order and its "send the receipt" task commit in one
//! transaction of the application's own connection, or neither does.
//!
//! `DATABASE_URL=postgres://user@host/db cargo run --example outbox_postgres --features postgres`
//!
//! Three orders are placed; the second one's transaction rolls back (the payment failed),
//! taking its task with it. The third is placed by SQL alone, as a program in another
//! language or a trigger would, with the queue's function `simplepyq.enqueue`. The
//! workers, woken by each commit's `NOTIFY`, send the receipts: each handler records its
//! receipt and completes its task in one transaction of its own.

use std::time::Duration;

use simplepyq::postgres::{Client, NoTls};
use simplepyq::{PostgresOptions, PostgresStore, SimplePyQ, TaskContext, TaskError};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL")
        .map_err(|_| "set DATABASE_URL to a PostgreSQL database, e.g. postgres://user@host/db")?;
    // Schemas of the example's own, emptied first: the example can run again.
    run(&url, "simplepyq_example", "simplepyq_example_shop")
}

/// Runs the example on the database at `url`, with the queue in schema `queue` and the
/// shop's tables in schema `shop` (both created if needed, and emptied).
pub(crate) fn run(url: &str, queue: &str, shop: &str) -> Result<(), Box<dyn std::error::Error>> {
    let store = PostgresStore::connect_with(url, PostgresOptions::new().schema(queue))?;
    let q = SimplePyQ::builder(store)
        .poll_interval(Duration::from_secs(60)) // the commits wake the workers, not the poll
        .build()?;
    q.remove_channel("receipts")?;
    let mut db = Client::connect(url, NoTls)?;
    db.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {shop}; \
         DROP TABLE IF EXISTS {shop}.orders, {shop}.receipts; \
         CREATE TABLE {shop}.orders (id bigserial PRIMARY KEY, item text NOT NULL); \
         CREATE TABLE {shop}.receipts (order_id bigint PRIMARY KEY)"
    ))?;
    // The handler holds its channel's handle (not the queue) to complete its tasks, and a
    // connection of its own.
    let receipts = q.channel::<i64>("receipts");
    let handler_db = std::sync::Mutex::new(Client::connect(url, NoTls)?);
    let record = format!("INSERT INTO {shop}.receipts (order_id) VALUES ($1)");
    q.add_channel(
        "receipts",
        move |order: i64, ctx: &TaskContext| -> Result<(), TaskError> {
            let mut db = handler_db.lock().map_err(|_| TaskError::msg("poisoned"))?;
            let mut tx = db.transaction()?;
            tx.execute(&record, &[&order])?;
            receipts.complete_in(&mut tx, ctx)?; // the receipt and the task's `done`, together
            tx.commit()?;
            println!("receipt sent for order {order}");
            Ok(())
        },
        2,
    )?;
    q.start()?;

    let place = format!("INSERT INTO {shop}.orders (item) VALUES ($1) RETURNING id");
    for (item, paid) in [("tea", true), ("cake", false)] {
        let mut tx = db.transaction()?;
        let order: i64 = tx.query_one(&place, &[&item])?.get(0);
        q.enqueue_in(&mut tx, "receipts", &order)?;
        if paid {
            tx.commit()?;
            println!("order {order} ({item}) placed");
        } else {
            tx.rollback()?;
            println!("order {order} ({item}) rolled back: no row, no task");
        }
    }
    // From SQL alone: the arguments are JSON, which handlers read as they read MessagePack.
    let order: i64 = db
        .query_one(
            &format!(
                "WITH o AS (INSERT INTO {shop}.orders (item) VALUES ('scones') RETURNING id) \
                 SELECT id, {queue}.enqueue('receipts', to_jsonb(id)) FROM o"
            ),
            &[],
        )?
        .get(0);
    println!("order {order} (scones) placed by SQL");

    q.run_until_complete()?;
    let orders: i64 = db
        .query_one(&format!("SELECT count(*) FROM {shop}.orders"), &[])?
        .get(0);
    let recorded: i64 = db
        .query_one(&format!("SELECT count(*) FROM {shop}.receipts"), &[])?
        .get(0);
    let done = q.counts("receipts")?.done;
    println!("{orders} orders, {recorded} receipts recorded, {done} tasks done");
    assert_eq!((orders, recorded, done), (2, 2, 2));
    Ok(())
}
