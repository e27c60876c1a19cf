//! Tasks enqueued in the application's own transaction on the SQLite queue file (the
//! outbox pattern): they run only once committed, never after a rollback, and the workers
//! are woken by the commit, not by their poll.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use simplepyq::rusqlite::{Connection, TransactionBehavior};
use simplepyq::{EnqueueOptions, SimplePyQ, SqliteStore, TaskContext, TaskError};

/// The orders a handler ran, each with when.
type Ran = Arc<Mutex<Vec<(i64, Instant)>>>;

/// A queue on `path` polling every `poll`, whose channel `receipts` records when each order
/// it is given ran.
fn queue(path: &std::path::Path, poll: Duration) -> (SimplePyQ<SqliteStore>, Ran) {
    let store = SqliteStore::open(path).expect("open");
    let q = SimplePyQ::builder(store)
        .poll_interval(poll)
        .build()
        .expect("valid settings");
    let ran = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&ran);
    q.add_channel(
        "receipts",
        move |order: i64| {
            seen.lock().push((order, Instant::now()));
            Ok(())
        },
        2,
    )
    .expect("add");
    (q, ran)
}

/// The application's connection to the queue's file, with its own table.
fn app(path: &std::path::Path) -> Connection {
    let conn = Connection::open(path).expect("the application's connection");
    conn.execute_batch(
        "PRAGMA busy_timeout = 5000; \
         CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, item TEXT); \
         CREATE TABLE IF NOT EXISTS receipts (order_id INTEGER NOT NULL)",
    )
    .expect("the application's table");
    conn
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Workers that look every millisecond never claim a task whose transaction is still open
/// (500 ms here); once it commits, the task runs once.
#[test]
fn a_task_runs_only_once_its_transaction_commits() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("shop.db");
    let (q, ran) = queue(&path, Duration::from_millis(1));
    q.start().expect("start");
    let mut db = app(&path);
    let tx = db
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .expect("begin");
    tx.execute("INSERT INTO orders (item) VALUES ('tea')", [])
        .expect("the order");
    let order = tx.last_insert_rowid();
    let id = q.enqueue_in(&tx, "receipts", &order).expect("enqueue in");
    std::thread::sleep(Duration::from_millis(500));
    assert!(ran.lock().is_empty(), "ran before its commit");
    assert_eq!(q.task(id).expect("task"), None, "visible before its commit");
    tx.commit().expect("commit");
    wait_for("the committed task to run", Duration::from_secs(10), || {
        !ran.lock().is_empty()
    });
    q.stop();
    assert_eq!(
        ran.lock().iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![order]
    );
    assert_eq!(q.counts("receipts").expect("counts").done, 1);
}

/// A rollback takes the task with the application's row: it never runs, nothing remains.
#[test]
fn a_rolled_back_task_never_runs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("shop.db");
    let (q, ran) = queue(&path, Duration::from_millis(1));
    q.start().expect("start");
    let mut db = app(&path);
    let tx = db.transaction().expect("begin");
    tx.execute("INSERT INTO orders (item) VALUES ('cake')", [])
        .expect("the order");
    let ids = q
        .enqueue_many_in(&tx, "receipts", &[1i64, 2, 3], EnqueueOptions::new())
        .expect("enqueue in");
    assert_eq!(ids.len(), 3);
    tx.rollback().expect("rollback");
    // The queue goes on with other work meanwhile, and finds nothing of the rollback's.
    q.enqueue("receipts", &4i64).expect("enqueue");
    wait_for("the other task to run", Duration::from_secs(10), || {
        !ran.lock().is_empty()
    });
    std::thread::sleep(Duration::from_millis(100));
    q.stop();
    assert_eq!(ran.lock().iter().map(|r| r.0).collect::<Vec<_>>(), vec![4]);
    let counts = q.counts("receipts").expect("counts");
    assert_eq!((counts.total(), counts.done), (1, 1));
    let orders: i64 = db
        .query_row("SELECT count(*) FROM orders", [], |r| r.get(0))
        .expect("count");
    assert_eq!(orders, 0);
}

/// The commit wakes the workers: with a poll of a minute, a task committed in the
/// application's transaction runs within a second, in this queue and in another queue on
/// the file (as another process's would be told).
#[test]
fn the_commit_wakes_the_workers_here_and_in_other_queues() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("shop.db");
    let minute = Duration::from_secs(60);
    let (producer, ran_here) = queue(&path, minute);
    let (other, ran_there) = queue(&path, minute);
    producer.start().expect("start");
    // Let the idle workers settle into their minute-long sleeps.
    std::thread::sleep(Duration::from_millis(200));
    let mut db = app(&path);
    let tx = db
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .expect("begin");
    producer
        .enqueue_in(&tx, "receipts", &1i64)
        .expect("enqueue in");
    let committed = {
        tx.commit().expect("commit");
        Instant::now()
    };
    wait_for(
        "a wake-up by the commit here",
        Duration::from_secs(5),
        || !ran_here.lock().is_empty(),
    );
    assert!(ran_here.lock()[0].1 - committed < Duration::from_secs(1));
    producer.stop();

    other.start().expect("start");
    std::thread::sleep(Duration::from_millis(200));
    let tx = db
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .expect("begin");
    let typed = producer.channel::<i64>("receipts");
    typed.enqueue_in(&tx, &2).expect("enqueue in");
    tx.commit().expect("commit");
    let committed = Instant::now();
    wait_for(
        "a wake-up by the commit there",
        Duration::from_secs(5),
        || !ran_there.lock().is_empty(),
    );
    assert!(ran_there.lock()[0].1 - committed < Duration::from_secs(1));
    other.stop();
    let runs = AtomicUsize::new(ran_here.lock().len() + ran_there.lock().len());
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

/// A producer process killed at random moments, round after round, while it commits orders
/// and their tasks in one transaction each: every order has exactly one task (its id as
/// arguments), and no task is without its order.
#[test]
fn a_killed_producer_leaves_every_order_with_exactly_one_task() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("shop.db");
    // The queue file and the application's table exist before the first kill.
    drop(SimplePyQ::open(&path).expect("open"));
    drop(app(&path));
    let rounds: u64 = std::env::var("SIMPLEPYQ_OUTBOX_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(12);
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for _ in 0..rounds {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_simplepyq-test-outbox"))
            .arg("produce")
            .arg(&path)
            .spawn()
            .expect("start the producer");
        // A random moment: xorshift, 20 to 120 ms in.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(20 + seed % 100));
        assert!(
            child.try_wait().expect("the producer's status").is_none(),
            "the producer ended by itself"
        );
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
    }
    let db = app(&path);
    let orders: Vec<i64> = db
        .prepare("SELECT id FROM orders ORDER BY id")
        .expect("prepare")
        .query_map([], |r| r.get(0))
        .expect("orders")
        .collect::<Result<_, _>>()
        .expect("orders");
    assert!(
        orders.len() > rounds as usize,
        "too few orders: {}",
        orders.len()
    );
    let q = SimplePyQ::open(&path).expect("open");
    let mut tasks: Vec<i64> = Vec::new();
    let mut after = None;
    loop {
        let mut filter = simplepyq::ListFilter::new(1_000).channel("receipts");
        filter.after = after;
        let page = q.tasks(&filter);
        let page = page.expect("tasks");
        for t in &page {
            tasks.push(rmp_serde::from_slice(&t.args).expect("an order id"));
        }
        match page.last() {
            Some(last) if page.len() == 1_000 => after = Some(last.id),
            _ => break,
        }
    }
    tasks.sort_unstable();
    assert_eq!(tasks, orders, "orders and their tasks differ");
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity check");
    assert_eq!(check, "ok");
}

/// A queue on `path` whose channel `receipts` writes each order's receipt into the
/// application's table and completes its task in one transaction, then ends it with `end`
/// (commit or roll back) and returns what `after` says for the order.
fn receipts_queue(
    path: &std::path::Path,
    end: fn(simplepyq::rusqlite::Transaction<'_>) -> simplepyq::rusqlite::Result<()>,
    after: fn(i64) -> Result<(), TaskError>,
) -> SimplePyQ<SqliteStore> {
    let q = SimplePyQ::open(path).expect("open");
    add_receipts(&q, path, end, after);
    q
}

/// Adds channel `receipts` to `q`, as [`receipts_queue`] says.
fn add_receipts(
    q: &SimplePyQ<SqliteStore>,
    path: &std::path::Path,
    end: fn(simplepyq::rusqlite::Transaction<'_>) -> simplepyq::rusqlite::Result<()>,
    after: fn(i64) -> Result<(), TaskError>,
) {
    let receipts = q.channel::<i64>("receipts");
    let file = path.to_path_buf();
    q.add_channel(
        "receipts",
        move |order: i64, ctx: &TaskContext| -> Result<(), TaskError> {
            let mut db = app(&file);
            let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute(
                "INSERT INTO orders (id, item) VALUES (?1, 'receipt')",
                [order],
            )?;
            receipts.complete_in(&tx, ctx)?;
            end(tx)?;
            after(order)
        },
        2,
    )
    .expect("add");
}

/// The rows of the application's table.
fn orders(path: &std::path::Path) -> i64 {
    app(path)
        .query_row("SELECT count(*) FROM orders", [], |r| r.get(0))
        .expect("count")
}

/// A handler that writes its receipt and completes its task in one transaction: the task is
/// done with the receipt, counted once, and what the handler returns after the commit
/// changes nothing (not a lease lost, not a retry).
#[test]
fn a_handler_completes_its_task_with_its_own_rows() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("shop.db");
    let q = receipts_queue(
        &path,
        |tx| tx.commit(),
        |order| match order {
            2 => Err(TaskError::msg("an error after the commit")),
            _ => Ok(()),
        },
    );
    run_two_orders(&q);
    assert_eq!(orders(&path), 2);
}

/// Runs orders 1 and 2 (3 retries each) through a queue whose handler completes each task
/// in its own transaction (and fails order 2 after the commit), and checks that each task
/// is done in one attempt, counted once, with no retry and no lease lost.
pub(crate) fn run_two_orders<S: simplepyq::Store>(q: &SimplePyQ<S>) {
    for order in [1i64, 2] {
        q.enqueue_with("receipts", &order, EnqueueOptions::new().retries(3))
            .expect("enqueue");
    }
    q.run_until_complete().expect("run");
    let counts = q.counts("receipts").expect("counts");
    assert_eq!((counts.done, counts.total()), (2, 2));
    for t in q.tasks(&simplepyq::ListFilter::new(10)).expect("tasks") {
        assert_eq!(
            (t.state.attempts, t.state.last_error),
            (1, None),
            "{:?}",
            t.id
        );
    }
    let totals = q.store().totals().expect("totals");
    assert_eq!(
        (totals["receipts"].done, totals["receipts"].retried),
        (2, 0)
    );
    assert_eq!(q.stats().lease_lost, 0);
}

/// A handler whose transaction rolls back after it completed the task: the task is not
/// done by it, and what the handler returns decides (a fatal error: failed).
#[test]
fn a_rolled_back_completion_leaves_the_outcome_to_the_handler() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("shop.db");
    let q = receipts_queue(
        &path,
        |tx| tx.rollback(),
        |_| Err(TaskError::fatal("the printer is on fire")),
    );
    q.enqueue("receipts", &1i64).expect("enqueue");
    q.run_until_complete().expect("run");
    let counts = q.counts("receipts").expect("counts");
    assert_eq!((counts.failed, counts.done), (1, 0));
    assert_eq!(orders(&path), 0);
}

/// Consumer processes killed at random moments, round after round, while their handlers
/// write each order's receipt and complete its task in one transaction; then one runs to
/// the end: every task is done, and every order has exactly one receipt (a killed run wrote
/// nothing, or its receipt and its task's `done` together).
#[test]
fn killed_consumers_write_each_receipt_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("shop.db");
    let q = SimplePyQ::open(&path).expect("open");
    let orders = 300i64;
    for order in 1..=orders {
        q.enqueue("receipts", &order).expect("enqueue");
    }
    let consumer = || {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_simplepyq-test-outbox"));
        c.arg("consume").arg(&path);
        c
    };
    let rounds: u64 = std::env::var("SIMPLEPYQ_OUTBOX_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(12);
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for _ in 0..rounds {
        let mut child = consumer().spawn().expect("start a consumer");
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(20 + seed % 100));
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
    }
    let status = consumer().status().expect("the last consumer");
    assert!(status.success(), "the last consumer failed: {status}");
    let counts = q.counts("receipts").expect("counts");
    assert_eq!(
        (counts.done, counts.total()),
        (orders as usize, orders as usize)
    );
    let written: Vec<(i64, i64)> = app(&path)
        .prepare("SELECT order_id, count(*) FROM receipts GROUP BY order_id ORDER BY order_id")
        .expect("prepare")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("receipts")
        .collect::<Result<_, _>>()
        .expect("receipts");
    let once: Vec<(i64, i64)> = (1..=orders).map(|o| (o, 1)).collect();
    assert_eq!(written, once, "receipts written other than once per order");
}

/// The application's database, with its own `tasks` table and index `tasks_ready` (names
/// the queue's tables and indexes had before version 7), its `user_version` and
/// `application_id`, migrated by the application before and after the queue's tables are
/// added: every table, row, index and pragma of the application's stays, and the queue
/// works beside them, committing with the application's rows.
#[test]
fn the_queue_lives_in_the_applications_database_and_leaves_it_alone() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("app.db");
    let db = Connection::open(&path).expect("the application's database");
    // The application's migration 1.
    db.execute_batch(
        "CREATE TABLE tasks (id INTEGER PRIMARY KEY, title TEXT NOT NULL); \
         CREATE INDEX tasks_ready ON tasks (title); \
         INSERT INTO tasks (title) VALUES ('write the report'), ('water the plants'); \
         PRAGMA user_version = 1; PRAGMA application_id = 42;",
    )
    .expect("the application's schema");
    let app_state = |db: &Connection| -> (Vec<(i64, String)>, i64, i64, i64) {
        let rows = db
            .prepare("SELECT id, title FROM tasks ORDER BY id")
            .expect("prepare")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("rows")
            .collect::<Result<_, _>>()
            .expect("rows");
        let version = db
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("user_version");
        let app_id = db
            .pragma_query_value(None, "application_id", |r| r.get(0))
            .expect("application_id");
        let index: i64 = db
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name = 'tasks_ready' \
                 AND tbl_name = 'tasks'",
                [],
                |r| r.get(0),
            )
            .expect("index");
        (rows, version, app_id, index)
    };
    let before = app_state(&db);

    let (q, ran) = queue(&path, Duration::from_millis(10));
    assert_eq!(
        app_state(&db),
        before,
        "opening the queue changed the application's"
    );
    let mut db = db;
    let tx = db
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .expect("begin");
    tx.execute("INSERT INTO tasks (title) VALUES ('send the invoice')", [])
        .expect("the application's row");
    let row = tx.last_insert_rowid();
    q.enqueue_in(&tx, "receipts", &row).expect("enqueue in");
    tx.commit().expect("commit");
    q.run_until_complete().expect("run");
    assert_eq!(
        ran.lock().iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![row]
    );
    drop(q);

    // The application's migration 2, with the queue's tables there, then the queue again.
    db.execute_batch(
        "ALTER TABLE tasks ADD COLUMN done INTEGER NOT NULL DEFAULT 0; PRAGMA user_version = 2;",
    )
    .expect("the application's migration");
    let (q, _) = queue(&path, Duration::from_millis(10));
    q.enqueue("receipts", &0i64).expect("enqueue");
    q.run_until_complete().expect("run");
    assert_eq!(q.counts("receipts").expect("counts").done, 2);
    let (rows, version, app_id, index) = app_state(&db);
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[..2], before.0[..]);
    assert_eq!((version, app_id, index), (2, 42, 1));
    let columns: i64 = db
        .query_row("SELECT count(*) FROM pragma_table_info('tasks')", [], |r| {
            r.get(0)
        })
        .expect("columns");
    assert_eq!(columns, 3, "the application's table is as it made it");
}

/// A handler that completes its task in its own transaction unblocks the tasks waiting for
/// it at once, as a recorded outcome does: a child on another channel of the queue starts
/// within a second, though the workers poll only every 30 s (it waited for that poll
/// before: nothing woke its channel).
#[test]
fn a_completion_in_a_transaction_wakes_the_tasks_waiting_for_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("shop.db");
    let store = SqliteStore::open(&path).expect("open");
    let q = SimplePyQ::builder(store)
        .poll_interval(Duration::from_secs(30))
        .build()
        .expect("valid settings");
    add_receipts(&q, &path, |tx| tx.commit(), |_| Ok(()));
    let mailed = Arc::new(Mutex::new(None));
    let seen = Arc::clone(&mailed);
    q.add_channel(
        "mail",
        move |_: i64| {
            *seen.lock() = Some(Instant::now());
            Ok(())
        },
        1,
    )
    .expect("add");
    q.start().expect("start");
    // Both workers idle, asleep for the poll interval.
    std::thread::sleep(Duration::from_millis(200));
    let parent = q.enqueue("receipts", &7i64).expect("enqueue");
    q.enqueue_with("mail", &7i64, EnqueueOptions::new().after([parent]))
        .expect("enqueue the child");
    wait_for("the receipt", Duration::from_secs(10), || {
        orders(&path) == 1
    });
    let receipt = Instant::now();
    wait_for("the child, woken", Duration::from_secs(5), || {
        mailed.lock().is_some()
    });
    let waited = mailed
        .lock()
        .expect("mailed")
        .saturating_duration_since(receipt);
    assert!(
        waited < Duration::from_secs(1),
        "the child waited {waited:?}"
    );
    q.stop();
}
