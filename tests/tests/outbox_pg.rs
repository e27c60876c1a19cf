//! Tasks enqueued and completed in the application's own transaction on PostgreSQL (the
//! outbox pattern): through the `postgres` client, from SQL (`psql`, a trigger) with the
//! queue's SQL function, and the rules both follow.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use postgres::{Client, NoTls};
use simplepyq::{
    EnqueueOptions, Error, PostgresStore, SimplePyQ, Status, TaskContext, TaskError, Timestamp,
};
use simplepyq_core::prelude::*;
use simplepyq_core::{NewTask, validate_channel};
use simplepyq_tests::postgres::{DropSchema, fresh_schema, options, server};

/// A store in a fresh schema, and the guard that drops the schema.
fn store() -> (PostgresStore, DropSchema) {
    let schema = fresh_schema();
    let store =
        PostgresStore::connect_with(server().conninfo(), options(&schema)).expect("connect");
    (store, DropSchema(schema))
}

/// The application's connection, with its table `orders` in `schema` (the queue's).
fn app(schema: &str) -> Client {
    let mut c = Client::connect(server().conninfo(), NoTls).expect("connect");
    c.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {schema}.orders (id bigserial PRIMARY KEY, item text); \
         CREATE TABLE IF NOT EXISTS {schema}.receipts (order_id bigint NOT NULL)"
    ))
    .expect("the application's tables");
    c
}

fn count(c: &mut Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).expect(sql).get(0)
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The orders a handler ran, each with when.
type Ran = Arc<Mutex<Vec<(i64, Instant)>>>;

/// A queue on `store` polling every `poll`, whose channel `receipts` records each order.
fn queue(store: PostgresStore, poll: Duration) -> (SimplePyQ<PostgresStore>, Ran) {
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

/// JSON arguments given to the SQL function become the MessagePack that Rust (and Python)
/// handlers read: every kind of value, and every length class of strings, arrays and maps.
#[test]
fn json_arguments_become_the_messagepack_handlers_read() {
    let (store, _drop) = store();
    let mut c = server().client();
    let schema = store.schema().to_owned();
    let mut pack = |json: &str| -> Vec<u8> {
        c.query_one(
            &format!("SELECT {schema}.msgpack($1::text::jsonb)"),
            &[&json],
        )
        .expect(json)
        .get(0)
    };
    let long = |n: usize| serde_json::Value::String("é".repeat(n / 2) + &"a".repeat(n % 2));
    let array = |n: usize| serde_json::Value::Array((0..n).map(|i| i.into()).collect());
    let map =
        |n: usize| serde_json::Value::Object((0..n).map(|i| (format!("k{i}"), i.into())).collect());
    let mut cases: Vec<serde_json::Value> = [
        "null",
        "true",
        "false",
        "0",
        "127",
        "128",
        "-1",
        "-32",
        "-33",
        "9223372036854775807",
        "-9223372036854775808",
        "1.5",
        "-0.25",
        "\"\"",
        "\"é✓😀\"",
        "[]",
        "{}",
        "[1, [2, [3, {\"a\": [null]}]]]",
        "{\"to\": \"a@example.com\", \"n\": 3, \"tags\": [\"x\"], \"ok\": true}",
    ]
    .iter()
    .map(|j| serde_json::from_str(j).expect(j))
    .collect();
    for n in [31, 32, 255, 256, 65_535, 65_536, 100_000] {
        cases.push(long(n));
    }
    for n in [15, 16, 65_535, 65_536] {
        cases.push(array(n));
        cases.push(map(n));
    }
    for case in &cases {
        let text = case.to_string();
        let bytes = pack(&text);
        let back: serde_json::Value = rmp_serde::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{} does not decode: {e}", &text[..text.len().min(80)]));
        assert_eq!(&back, case, "{}", &text[..text.len().min(80)]);
    }
    // The small forms are MessagePack's own (as rmp-serde writes them).
    for small in ["null", "true", "7", "-5", "\"ab\"", "[1, 2]", "{\"a\": 1}"] {
        let value: serde_json::Value = serde_json::from_str(small).expect(small);
        assert_eq!(
            pack(small),
            rmp_serde::to_vec(&value).expect("encode"),
            "{small}"
        );
    }
    // A whole number past 64 bits is a float; typed handlers read arrays and objects.
    let big: f64 = rmp_serde::from_slice(&pack("18446744073709551616")).expect("a float");
    assert_eq!(big, 18_446_744_073_709_551_616.0);
    let (to, n): (String, u32) =
        rmp_serde::from_slice(&pack("[\"a@example.com\", 3]")).expect("a tuple");
    assert_eq!((to.as_str(), n), ("a@example.com", 3));
    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Mail {
        to: String,
        n: u8,
    }
    let mail: Mail = rmp_serde::from_slice(&pack("{\"n\": 3, \"to\": \"b\"}")).expect("a struct");
    assert_eq!(
        mail,
        Mail {
            to: "b".into(),
            n: 3
        }
    );
}

/// The row of every column but the id.
fn row_of(c: &mut Client, schema: &str, id: i64) -> String {
    let row = c
        .query_one(
            &format!(
                "SELECT row(channel, args, created_at, priority, unique_key, status, \
                 retries_left, max_retries, attempts, lost_runs, run_at, lease_until, \
                 last_error, updated_at, concurrency_key, timeout_ms, traceparent)::text \
                 FROM {schema}.tasks WHERE id = $1"
            ),
            &[&id],
        )
        .expect("the row");
    row.get(0)
}

/// The SQL function writes the row the store's own enqueue writes, for tasks due at once or
/// later, with retries, priorities, unique keys (a held key returns its holder's id),
/// concurrency keys, timeouts and trace contexts;
/// and it refuses the channel names that core refuses, and only those.
#[test]
fn the_sql_function_writes_the_row_the_store_writes() {
    let (store, _drop) = store();
    let schema = store.schema().to_owned();
    let mut c = server().client();
    let now = Timestamp::from_millis(1_700_000_000_000);
    let cases = [
        NewTask::new("a", vec![0x90]),
        NewTask::new("a", vec![0xc0]).retries(3).priority(-2),
        NewTask::new("b", vec![1]).run_at(Timestamp::from_millis(1_700_000_060_000)),
        NewTask::new("b", vec![2]).run_at(Timestamp::from_millis(1_600_000_000_000)),
        NewTask::new("b", vec![4]).run_at(now),
        NewTask::new("c", vec![3]).unique_key("k"),
        NewTask::new("d", vec![5])
            .concurrency_key("customer-1")
            .timeout(Duration::from_millis(2_500))
            .traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    ];
    let sql = format!("SELECT {schema}.enqueue_msgpack($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)");
    let by_sql = |c: &mut Client, task: &NewTask| -> i64 {
        c.query_one(
            &sql,
            &[
                &task.channel,
                &task.args,
                &i64::from(task.retries),
                &task.priority,
                &task.unique_key,
                &task.run_at.map(Timestamp::as_millis),
                &now.as_millis(),
                &task.concurrency_key,
                &task.timeout_ms(),
                &task.traceparent,
            ],
        )
        .expect("enqueue by SQL")
        .get(0)
    };
    let delete = format!("DELETE FROM {schema}.tasks WHERE id = $1");
    for (i, task) in cases.iter().enumerate() {
        let ours = store.enqueue_one(task.clone(), now).expect("enqueue").get();
        let row = row_of(&mut c, &schema, ours);
        c.execute(&delete, &[&ours]).expect("delete");
        let theirs = by_sql(&mut c, task);
        assert_ne!(theirs, ours, "a new id");
        assert_eq!(row_of(&mut c, &schema, theirs), row, "case {i}");
        if task.unique_key.is_some() {
            // The key is held: each way returns its holder's id and adds nothing.
            assert_eq!(by_sql(&mut c, task), theirs, "a held key, by SQL");
            let again = store.enqueue_one(task.clone(), now).expect("enqueue").get();
            assert_eq!(again, theirs, "a held key, by the store");
        }
    }
    let all = count(&mut c, &format!("SELECT count(*) FROM {schema}.tasks"));
    assert_eq!(all, cases.len() as i64);
    // The same names are refused by core's rule and by the function.
    let names = [
        String::new(),
        "a".repeat(255),
        "a".repeat(256),
        "é".repeat(128),
        "tab\there".into(),
        "del\u{7f}".into(),
        "c1\u{85}".into(),
        "ok name ✓".into(),
    ];
    let sql = format!("SELECT {schema}.enqueue($1, 'null')");
    for name in &names {
        let by_sql = c.query_one(&sql, &[name]);
        assert_eq!(
            by_sql.is_ok(),
            validate_channel(name).is_ok(),
            "{name:?}: {by_sql:?}"
        );
    }
}

/// Workers that look every millisecond never claim a task whose transaction is still open
/// (500 ms here); once it commits, it runs once. A rollback leaves nothing.
#[test]
fn a_task_runs_only_once_its_transaction_commits() {
    let (store, drop) = store();
    let schema = drop.0.clone();
    let (q, ran) = queue(store, Duration::from_millis(1));
    q.start().expect("start");
    let mut db = app(&schema);
    let mut tx = db.transaction().expect("begin");
    let order: i64 = tx
        .query_one(
            &format!("INSERT INTO {schema}.orders (item) VALUES ('tea') RETURNING id"),
            &[],
        )
        .expect("the order")
        .get(0);
    let id = q
        .enqueue_in(&mut tx, "receipts", &order)
        .expect("enqueue in");
    std::thread::sleep(Duration::from_millis(500));
    assert!(ran.lock().is_empty(), "ran before its commit");
    assert_eq!(q.task(id).expect("task"), None, "visible before its commit");
    tx.commit().expect("commit");
    wait_for("the committed task to run", Duration::from_secs(10), || {
        !ran.lock().is_empty()
    });

    let mut tx = db.transaction().expect("begin");
    tx.execute(
        &format!("INSERT INTO {schema}.orders (item) VALUES ('cake')"),
        &[],
    )
    .expect("the order");
    let typed = q.channel::<i64>("receipts");
    let ids = q
        .enqueue_many_in(&mut tx, "receipts", &[2i64, 3], EnqueueOptions::new())
        .expect("enqueue in");
    typed.enqueue_in(&mut tx, &4).expect("enqueue in");
    assert_eq!(ids.len(), 2);
    tx.rollback().expect("rollback");
    std::thread::sleep(Duration::from_millis(200));
    q.stop();
    assert_eq!(
        ran.lock().iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![order]
    );
    let counts = q.counts("receipts").expect("counts");
    assert_eq!((counts.total(), counts.done), (1, 1));
    assert_eq!(
        count(&mut db, &format!("SELECT count(*) FROM {schema}.orders")),
        1
    );
}

/// The commit wakes the workers of every queue on the schema (its `NOTIFY` is delivered
/// then): with a poll of a minute, a task committed by the client, or by `psql` through the
/// SQL function, runs within a second.
#[test]
fn the_commit_wakes_the_workers() {
    let (store, drop) = store();
    let schema = drop.0.clone();
    let (q, ran) = queue(store, Duration::from_secs(60));
    q.start().expect("start");
    std::thread::sleep(Duration::from_millis(300));
    let mut db = app(&schema);
    let mut tx = db.transaction().expect("begin");
    q.enqueue_in(&mut tx, "receipts", &1i64)
        .expect("enqueue in");
    tx.commit().expect("commit");
    let committed = Instant::now();
    wait_for("a wake-up by the commit", Duration::from_secs(5), || {
        !ran.lock().is_empty()
    });
    assert!(ran.lock()[0].1 - committed < Duration::from_secs(1));

    psql(&format!(
        "BEGIN; SELECT {schema}.enqueue('receipts', '2'); COMMIT;"
    ));
    let committed = Instant::now();
    wait_for("a wake-up by psql's commit", Duration::from_secs(5), || {
        ran.lock().len() == 2
    });
    assert!(ran.lock()[1].1 - committed < Duration::from_secs(1));
    q.stop();
    assert_eq!(
        ran.lock().iter().map(|r| r.0).collect::<Vec<_>>(),
        vec![1, 2]
    );
}

/// Runs `sql` with `psql` on the test server; panics if it fails.
fn psql(sql: &str) -> String {
    let out = std::process::Command::new(simplepyq_tests::postgres::psql())
        .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-d"])
        .arg(server().conninfo())
        .args(["-c", sql])
        .output()
        .expect("run psql (Debian's postgresql-client)");
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// From `psql`, in a transaction: committed, the task is there; rolled back, it is not. A
/// trigger that enqueues a task for each inserted row: the rows and their tasks commit or
/// roll back together, and a Rust handler reads the arguments the trigger built.
#[test]
fn psql_and_a_trigger_enqueue_in_their_transactions() {
    let (store, drop) = store();
    let schema = drop.0.clone();
    let mut db = app(&schema);
    psql(&format!(
        "BEGIN; SELECT {schema}.enqueue('mail', '{{\"to\": \"a@example.com\"}}', retries => 2); COMMIT;"
    ));
    psql(&format!(
        "BEGIN; SELECT {schema}.enqueue('mail', '{{\"to\": \"b@example.com\"}}'); ROLLBACK;"
    ));
    let mail = store
        .list(&simplepyq::ListFilter::new(10).channel("mail"))
        .expect("list");
    assert_eq!(mail.len(), 1);
    let args: std::collections::BTreeMap<String, String> =
        rmp_serde::from_slice(&mail[0].args).expect("a map");
    assert_eq!(args["to"], "a@example.com");
    assert_eq!(
        (mail[0].state.status, mail[0].state.max_retries),
        (Status::Pending, 2)
    );

    db.batch_execute(&format!(
        "CREATE FUNCTION {schema}.order_receipt() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN PERFORM {schema}.enqueue('receipts', jsonb_build_array(NEW.id, NEW.item)); \
         RETURN NEW; END $$; \
         CREATE TRIGGER order_receipt AFTER INSERT ON {schema}.orders \
         FOR EACH ROW EXECUTE FUNCTION {schema}.order_receipt()"
    ))
    .expect("the trigger");
    let mut tx = db.transaction().expect("begin");
    tx.execute(
        &format!("INSERT INTO {schema}.orders (item) VALUES ('tea'), ('cake')"),
        &[],
    )
    .expect("orders");
    tx.commit().expect("commit");
    let mut tx = db.transaction().expect("begin");
    tx.execute(
        &format!("INSERT INTO {schema}.orders (item) VALUES ('pie')"),
        &[],
    )
    .expect("an order");
    tx.rollback().expect("rollback");
    let q = SimplePyQ::new(store);
    let got = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&got);
    q.add_channel(
        "receipts",
        move |(id, item): (i64, String)| {
            seen.lock().push((id, item));
            Ok(())
        },
        1,
    )
    .expect("add");
    q.run_until_complete().expect("run");
    let mut got = got.lock().clone();
    got.sort();
    let orders: Vec<(i64, String)> = db
        .query(
            &format!("SELECT id, item FROM {schema}.orders ORDER BY id"),
            &[],
        )
        .expect("orders")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(got, orders);
    assert_eq!(orders.len(), 2);
}

/// Bad input gets a clear error and writes nothing: an invalid channel (before anything is
/// sent: the transaction goes on), a read-only transaction, a database without the queue,
/// a closed connection; from SQL, NULL arguments, text that is not JSON, negative retries.
#[test]
fn bad_input_is_refused_and_writes_nothing() {
    let (store, drop) = store();
    let schema = drop.0.clone();
    let q = SimplePyQ::new(store);
    let mut db = app(&schema);

    let mut tx = db.transaction().expect("begin");
    let bad = q.enqueue_in(&mut tx, "", &1i64);
    assert!(matches!(bad, Err(Error::InvalidChannel { .. })), "{bad:?}");
    tx.execute(
        &format!("INSERT INTO {schema}.orders (item) VALUES ('still fine')"),
        &[],
    )
    .expect("the transaction goes on");
    tx.commit().expect("commit");

    let mut tx = db
        .build_transaction()
        .read_only(true)
        .start()
        .expect("begin");
    let read_only = q.enqueue_in(&mut tx, "receipts", &1i64);
    assert!(
        matches!(read_only, Err(Error::ReadOnly { .. })),
        "{read_only:?}"
    );
    drop_tx(tx);

    // Another database of the server, without the queue.
    let other = format!("{schema}_elsewhere");
    db.batch_execute(&format!("CREATE DATABASE {other}"))
        .expect("create a database");
    {
        let conninfo = server()
            .conninfo()
            .replace("dbname=postgres", &format!("dbname={other}"));
        let mut elsewhere = Client::connect(&conninfo, NoTls).expect("connect");
        let mut tx = elsewhere.transaction().expect("begin");
        let wrong = q.enqueue_in(&mut tx, "receipts", &1i64);
        assert!(
            matches!(&wrong, Err(Error::InvalidConfig(m)) if m.contains("no simplepyq queue")),
            "{wrong:?}"
        );
    }
    db.batch_execute(&format!("DROP DATABASE {other}"))
        .expect("drop the database");

    let mut closed = Client::connect(server().conninfo(), NoTls).expect("connect");
    let pid: i32 = closed
        .query_one("SELECT pg_backend_pid()", &[])
        .expect("pid")
        .get(0);
    db.execute("SELECT pg_terminate_backend($1)", &[&pid])
        .expect("terminate");
    wait_for("the backend to end", Duration::from_secs(5), || {
        count(
            &mut db,
            &format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}"),
        ) == 0
    });
    let gone = q.enqueue_in(&mut closed, "receipts", &1i64);
    assert!(matches!(gone, Err(Error::Unavailable { .. })), "{gone:?}");

    for (sql, what) in [
        (format!("SELECT {schema}.enqueue('receipts', NULL)"), "NULL"),
        (format!("SELECT {schema}.enqueue('receipts', '{{')"), "json"),
        (
            format!("SELECT {schema}.enqueue('receipts', '1', retries => -1)"),
            "retries",
        ),
        (
            format!("SELECT {schema}.enqueue('receipts', '1', traceparent => '00-4bf9')"),
            "traceparent",
        ),
        (
            format!(
                "SELECT {schema}.enqueue('receipts', '1', traceparent => \
                 '00-00000000000000000000000000000000-00f067aa0ba902b7-01')"
            ),
            "traceparent",
        ),
    ] {
        let e = db.query_one(&sql, &[]).expect_err(&sql);
        assert!(
            e.to_string().contains(what) || format!("{e:?}").contains(what),
            "{e:?}"
        );
    }
    assert_eq!(
        count(&mut db, &format!("SELECT count(*) FROM {schema}.tasks")),
        0,
        "something was written"
    );
}

/// Rolls back a transaction (dropping it does).
fn drop_tx(tx: postgres::Transaction<'_>) {
    tx.rollback().expect("rollback");
}

/// A queue whose channel `receipts` writes each order's receipt and completes its task in
/// one transaction on its own connection, then ends it with `end` and returns what `after`
/// says for the order. It checks that the completion left the search path as it was.
fn receipts_queue(
    store: PostgresStore,
    schema: &str,
    end: fn(postgres::Transaction<'_>) -> Result<(), postgres::Error>,
    after: fn(i64) -> Result<(), TaskError>,
) -> SimplePyQ<PostgresStore> {
    let q = SimplePyQ::new(store);
    let receipts = q.channel::<i64>("receipts");
    let conn = Mutex::new(app(schema));
    let insert = format!("INSERT INTO {schema}.receipts (order_id) VALUES ($1)");
    q.add_channel(
        "receipts",
        move |order: i64, ctx: &TaskContext| -> Result<(), TaskError> {
            let mut conn = conn.lock();
            let mut tx = conn.transaction()?;
            let path = |tx: &mut postgres::Transaction<'_>| -> Result<String, postgres::Error> {
                tx.query_one("SHOW search_path", &[])?.try_get(0)
            };
            let before = path(&mut tx)?;
            tx.execute(&insert, &[&order])?;
            receipts.complete_in(&mut tx, ctx)?;
            assert_eq!(path(&mut tx)?, before, "the search path changed");
            end(tx)?;
            after(order)
        },
        1,
    )
    .expect("add");
    q
}

/// A handler that writes its receipt and completes its task in one transaction: the task is
/// done with the receipt, counted once, and what the handler returns after the commit
/// changes nothing. If the transaction rolls back, the handler's return decides.
#[test]
fn a_handler_completes_its_task_with_its_own_rows() {
    let (store, drop) = store();
    let schema = drop.0.clone();
    let q = receipts_queue(
        store,
        &schema,
        |tx| tx.commit(),
        |order| match order {
            2 => Err(TaskError::msg("an error after the commit")),
            _ => Ok(()),
        },
    );
    crate::outbox::run_two_orders(&q);
    let mut db = app(&schema);
    let receipts = format!("SELECT count(*) FROM {schema}.receipts");
    assert_eq!(count(&mut db, &receipts), 2);
    drop_queue(q);

    let (store, drop) = self::store();
    let schema = drop.0.clone();
    let q = receipts_queue(
        store,
        &schema,
        |tx| tx.rollback(),
        |_| Err(TaskError::fatal("the printer is on fire")),
    );
    q.enqueue("receipts", &1i64).expect("enqueue");
    q.run_until_complete().expect("run");
    let counts = q.counts("receipts").expect("counts");
    assert_eq!((counts.failed, counts.done), (1, 0));
    let mut db = app(&schema);
    let receipts = format!("SELECT count(*) FROM {schema}.receipts");
    assert_eq!(count(&mut db, &receipts), 0);
}

fn drop_queue(q: SimplePyQ<PostgresStore>) {
    q.stop();
}

/// A stale run's completion (its lease expired and another worker took the task) is
/// refused and writes nothing; the live run's completes the task.
#[test]
fn a_stale_runs_completion_is_refused() {
    let (store, drop) = store();
    let schema = drop.0.clone();
    let t0 = Timestamp::from_millis(1_000_000);
    let at = |ms: i64| Timestamp::from_millis(1_000_000 + ms);
    store
        .enqueue_one(NewTask::new("receipts", vec![0x01]), t0)
        .expect("enqueue");
    let first = store.claim("receipts", 1, t0, at(100)).expect("claim");
    store.recover_expired(at(200), 10).expect("recover");
    let second = store
        .claim("receipts", 1, at(200), at(10_000))
        .expect("claim");
    let (stale, live) = (first[0].claim(), second[0].claim());
    let mut db = app(&schema);
    let mut tx = db.transaction().expect("begin");
    let refused = store.complete_in(&mut tx, stale, at(300));
    assert!(
        matches!(refused, Err(Error::LeaseLost { .. })),
        "{refused:?}"
    );
    tx.commit().expect("commit");
    let task = store.get(live.id).expect("get").expect("the task");
    assert_eq!(
        (task.state.status, task.state.attempts),
        (Status::Running, 2)
    );
    let mut tx = db.transaction().expect("begin");
    let done = store.complete_in(&mut tx, live, at(400)).expect("complete");
    assert_eq!(done, Status::Done);
    assert_eq!(
        store.get(live.id).expect("get").expect("task").state.status,
        Status::Running,
        "done before the commit"
    );
    tx.commit().expect("commit");
    let task = store.get(live.id).expect("get").expect("the task");
    assert_eq!(task.state.status, Status::Done);
    assert_eq!(store.totals().expect("totals")["receipts"].done, 1);
}

/// The PostgreSQL outbox example, run against the test server in schemas of its own.
#[test]
fn the_postgres_outbox_example_runs() {
    let (queue, shop) = (fresh_schema(), fresh_schema());
    let _drop = (DropSchema(queue.clone()), DropSchema(shop.clone()));
    example::run(server().conninfo(), &queue, &shop).expect("the example");
}

#[allow(dead_code)] // its `main`
#[path = "../../simplepyq/examples/outbox_postgres.rs"]
mod example;

/// On `tokio_postgres`, as an async web server and async handlers use it: a transaction's
/// task is invisible before its commit and gone after a rollback; an async handler writes
/// its receipt and completes its task in one transaction (the search path kept).
#[test]
fn tokio_postgres_transactions_enqueue_and_complete() {
    use simplepyq::tokio_postgres;

    let (store, drop) = store();
    let schema = drop.0.clone();
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let connect = || async {
            let (client, connection) = tokio_postgres::connect(server().conninfo(), NoTls)
                .await
                .expect("connect");
            tokio::spawn(connection);
            client
        };
        let mut web = connect().await;
        web.batch_execute(&format!(
            "CREATE TABLE {schema}.orders (id bigserial PRIMARY KEY, item text); \
             CREATE TABLE {schema}.receipts (order_id bigint NOT NULL)"
        ))
        .await
        .expect("the application's tables");
        let q = SimplePyQ::new(store);
        let receipts = q.channel::<i64>("receipts");
        let handler_db = Arc::new(tokio::sync::Mutex::new(connect().await));
        let insert = Arc::new(format!(
            "INSERT INTO {schema}.receipts (order_id) VALUES ($1)"
        ));
        q.add_channel_async(
            "receipts",
            move |order: i64, ctx: TaskContext| {
                let (receipts, db, insert) = (
                    receipts.clone(),
                    Arc::clone(&handler_db),
                    Arc::clone(&insert),
                );
                async move {
                    let mut db = db.lock().await;
                    let mut tx = db.transaction().await?;
                    let path: String = tx.query_one("SHOW search_path", &[]).await?.get(0);
                    tx.execute(insert.as_str(), &[&order]).await?;
                    receipts.complete_in_async(&mut tx, &ctx).await?;
                    let after: String = tx.query_one("SHOW search_path", &[]).await?.get(0);
                    assert_eq!(after, path, "the search path changed");
                    tx.commit().await?;
                    Err::<(), _>(TaskError::msg("an error after the commit changes nothing"))
                }
            },
            4,
        )
        .expect("add");
        q.start().expect("start");

        let place = format!("INSERT INTO {schema}.orders (item) VALUES ('tea') RETURNING id");
        let tx = web.transaction().await.expect("begin");
        let order: i64 = tx.query_one(&place, &[]).await.expect("order").get(0);
        let id = q
            .enqueue_in_async(&tx, "receipts", &order)
            .await
            .expect("enqueue in");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(q.task(id).expect("task"), None, "visible before its commit");
        tx.commit().await.expect("commit");

        let tx = web.transaction().await.expect("begin");
        tx.query_one(&place, &[]).await.expect("order");
        q.enqueue_many_in_async(&tx, "receipts", &[-1i64, -2], EnqueueOptions::new())
            .await
            .expect("enqueue in");
        tx.rollback().await.expect("rollback");

        q.run_until_complete_async().await.expect("run");
        let counts = q.counts("receipts").expect("counts");
        assert_eq!((counts.done, counts.total()), (1, 1));
        assert_eq!(q.stats().lease_lost, 0);
        let written: Vec<i64> = web
            .query(&format!("SELECT order_id FROM {schema}.receipts"), &[])
            .await
            .expect("receipts")
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(written, vec![order]);
        q.stop_async().await;
    });
}

/// A random moment, 20 to 120 ms in (xorshift).
fn moment(seed: &mut u64) -> Duration {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    Duration::from_millis(20 + *seed % 100)
}

fn rounds() -> u64 {
    std::env::var("SIMPLEPYQ_OUTBOX_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(12)
}

fn outbox_process(mode: &str, schema: &str) -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_simplepyq-test-outbox"));
    c.arg(mode).arg(server().conninfo()).arg(schema);
    c
}

/// Producer processes killed at random moments, round after round, while each commits
/// orders and their tasks in one transaction after another: every order has exactly one
/// task, and no task is without its order.
#[test]
fn a_killed_producer_leaves_every_order_with_exactly_one_task() {
    let (store, drop) = store();
    let schema = drop.0.clone();
    std::mem::drop(app(&schema)); // the application's tables, before the first kill
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for _ in 0..rounds() {
        let mut child = outbox_process("produce-pg", &schema)
            .spawn()
            .expect("start the producer");
        std::thread::sleep(moment(&mut seed));
        assert!(
            child.try_wait().expect("status").is_none(),
            "the producer ended by itself"
        );
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
    }
    let mut db = app(&schema);
    let orders: Vec<i64> = db
        .query(&format!("SELECT id FROM {schema}.orders ORDER BY id"), &[])
        .expect("orders")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        orders.len() > rounds() as usize,
        "too few orders: {}",
        orders.len()
    );
    let mut tasks: Vec<i64> = store
        .list(&simplepyq::ListFilter::new(1_000_000).channel("receipts"))
        .expect("tasks")
        .iter()
        .map(|t| rmp_serde::from_slice(&t.args).expect("an order id"))
        .collect();
    tasks.sort_unstable();
    assert_eq!(tasks, orders, "orders and their tasks differ");
}

/// Consumer processes killed at random moments while their handlers write each order's
/// receipt and complete its task in one transaction; then one runs to the end: every task
/// is done, and every order has exactly one receipt.
#[test]
fn killed_consumers_write_each_receipt_once() {
    let (store, drop) = store();
    let schema = drop.0.clone();
    std::mem::drop(app(&schema)); // the application's tables, before the first kill
    let orders = 200i64;
    let ids: Vec<i64> = (1..=orders).collect();
    let tasks: Vec<NewTask> = ids
        .iter()
        .map(|o| NewTask::new("receipts", rmp_serde::to_vec(o).expect("encode")))
        .collect();
    store
        .enqueue(&tasks, simplepyq::Clock::now(store.server_clock()))
        .expect("enqueue");
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for _ in 0..rounds() {
        let mut child = outbox_process("consume-pg", &schema)
            .spawn()
            .expect("start a consumer");
        std::thread::sleep(moment(&mut seed));
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
    }
    let status = outbox_process("consume-pg", &schema)
        .status()
        .expect("the last consumer");
    assert!(status.success(), "the last consumer failed: {status}");
    let counts = store.counts(Some("receipts")).expect("counts");
    assert_eq!(
        (counts.done, counts.total()),
        (orders as usize, orders as usize)
    );
    let mut db = app(&schema);
    let written: Vec<(i64, i64)> = db
        .query(
            &format!(
                "SELECT order_id, count(*) FROM {schema}.receipts GROUP BY order_id \
                 ORDER BY order_id"
            ),
            &[],
        )
        .expect("receipts")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let once: Vec<(i64, i64)> = ids.iter().map(|&o| (o, 1)).collect();
    assert_eq!(written, once, "receipts written other than once per order");
}
