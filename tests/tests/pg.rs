//! What only the PostgreSQL store has: its statements against the state machine, the claim's
//! plan, migrations by several processes at once, the server's clock, and connections
//! killed under load.

use std::sync::Arc;
use std::time::{Duration, Instant};

use simplepyq::{Clock, PostgresStore, SimplePyQ, Status, SystemClock, Timestamp};
use simplepyq_core::prelude::*;
use simplepyq_core::transition::{Event, apply};
use simplepyq_core::{NewTask, StoreExt};
use simplepyq_postgres::sql;
use simplepyq_tests::postgres::{DropSchema, fresh_schema, options, server};

fn store(schema: &str) -> PostgresStore {
    PostgresStore::connect_with(server().conninfo(), options(schema)).expect("connect")
}

fn at(ms: i64) -> Timestamp {
    Timestamp::from_millis(1_000_000 + ms)
}

/// The claim, promotion and renewal statements leave each task as
/// `simplepyq_core::transition::apply` would.
#[test]
fn set_based_statements_do_what_the_state_machine_does() {
    let schema = fresh_schema();
    let _drop = DropSchema(schema.clone());
    let s = store(&schema);
    let task = |run_at: i64, retries: u32| {
        NewTask::new("c", vec![1])
            .run_at(at(run_at))
            .retries(retries)
    };
    let ids = s
        .enqueue(
            &[task(0, 0), task(5, 3), task(50, 1), task(10_000, 2)],
            at(0),
        )
        .expect("enqueue");
    let before: Vec<_> = ids
        .iter()
        .map(|id| s.get(*id).expect("get").expect("there").state)
        .collect();
    assert_eq!(before[2].status, Status::Delayed);
    // At 60 the first three are due: two are claimed, the third is only promoted.
    let claimed = s.claim("c", 2, at(60), at(1_060)).expect("claim");
    assert_eq!(claimed.len(), 2);
    let claim = Event::Claim {
        now: at(60),
        lease_until: at(1_060),
    };
    for t in &claimed {
        let i = ids.iter().position(|id| *id == t.id).expect("ours");
        assert_eq!(t.state, apply(&before[i], &claim).expect("legal"), "{t:?}");
        assert_eq!(Some(t), s.get(t.id).expect("get").as_ref());
    }
    let promoted = s.get(ids[2]).expect("get").expect("there").state;
    assert_eq!(
        promoted,
        apply(&before[2], &Event::Promote { now: at(60) }).expect("legal")
    );
    let not_due = s.get(ids[3]).expect("get").expect("there").state;
    assert_eq!(not_due, before[3]);
    // A renewal extends held claims only, and never shrinks a lease.
    let mut stale = claimed[1].claim();
    stale.attempt += 1;
    let held = s
        .extend_leases(&[claimed[0].claim(), stale], at(2_000))
        .expect("extend");
    assert_eq!(held, 1);
    let extended = s.get(claimed[0].id).expect("get").expect("there").state;
    let extend = Event::Extend {
        lease_until: at(2_000),
    };
    assert_eq!(extended, apply(&claimed[0].state, &extend).expect("legal"));
    s.extend_leases(&[claimed[0].claim()], at(1_500))
        .expect("extend");
    assert_eq!(
        s.get(claimed[0].id).expect("get").expect("there").state,
        extended
    );
    assert_eq!(
        s.get(claimed[1].id).expect("get").expect("there").state,
        claimed[1].state
    );
}

/// The claim walks the partial index of pending tasks in claim order and locks what it
/// takes, however many done tasks the table holds: no scan of the table, no sort.
#[test]
fn a_claim_walks_the_pending_index() {
    let schema = fresh_schema();
    let _drop = DropSchema(schema.clone());
    let s = store(&schema);
    let tasks: Vec<NewTask> = (0..20_000)
        .map(|i| NewTask::new(if i % 2 == 0 { "c" } else { "d" }, vec![1]))
        .collect();
    s.enqueue(&tasks, at(0)).expect("enqueue");
    // Most of the table is done, as in a queue that has run a while.
    while !s.claim("d", 1_000, at(0), at(1)).expect("claim").is_empty() {}
    let mut c = server().client();
    c.batch_execute(&format!(
        "SET search_path = {schema}; UPDATE tasks SET status = 'done', lease_until = NULL \
         WHERE channel = 'd'; ANALYZE tasks; SET plan_cache_mode = force_generic_plan"
    ))
    .expect("set up");
    c.batch_execute(&format!("PREPARE claim AS {}", sql::CLAIM))
        .expect("prepare");
    let plan: String = c
        .query("EXPLAIN EXECUTE claim('c', 0, 32, 1)", &[])
        .expect("explain")
        .iter()
        .map(|r| r.get::<_, String>(0) + "\n")
        .collect();
    assert!(
        plan.contains("Index Scan using tasks_pending on tasks"),
        "{plan}"
    );
    assert!(plan.contains("LockRows"), "{plan}");
    assert!(plan.contains("Index Scan using tasks_pkey"), "{plan}");
    assert!(!plan.contains("Seq Scan"), "{plan}");
    assert!(!plan.contains("Sort"), "{plan}");
}

/// A bulk enqueue draws its ids with one look-up of the table's sequence, not one per id:
/// in a subquery the planner folded in, `pg_get_serial_sequence` ran for every id drawn
/// (24 of the 27 ms that 10,000 ids took).
#[test]
fn drawing_ids_looks_the_sequence_up_once() {
    let schema = fresh_schema();
    let _drop = DropSchema(schema.clone());
    let s = store(&schema);
    let mut c = server().client();
    c.batch_execute(&format!("SET search_path = {schema}"))
        .expect("set up");
    c.batch_execute(&format!("PREPARE draw AS {}", sql::DRAW_IDS))
        .expect("prepare");
    let plan: Vec<String> = c
        .query("EXPLAIN VERBOSE EXECUTE draw(10)", &[])
        .expect("explain")
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    let aggregate = plan
        .iter()
        .skip_while(|l| !l.contains("Aggregate"))
        .find(|l| l.trim_start().starts_with("Output:"))
        .expect("the aggregate's output");
    assert!(aggregate.contains("nextval"), "{plan:#?}");
    assert!(
        !aggregate.contains("pg_get_serial_sequence"),
        "the sequence is looked up for every id: {plan:#?}"
    );
    let ids = s
        .enqueue(&vec![NewTask::new("c", vec![1]); 1_500], at(0))
        .expect("enqueue");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
}

/// Eight processes' stores connecting at once to a new schema migrate it once, and all of
/// them work.
#[test]
fn stores_connecting_at_once_migrate_once() {
    let schema = fresh_schema();
    let _drop = DropSchema(schema.clone());
    let stores: Vec<PostgresStore> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8).map(|_| scope.spawn(|| store(&schema))).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("connect"))
            .collect()
    });
    // Each migration applied once: as many rows as versions, numbered from 1.
    let row = server()
        .client()
        .query_one(
            &format!(
                "SELECT count(*), count(DISTINCT version), max(version)::bigint \
                 FROM {schema}.simplepyq_schema"
            ),
            &[],
        )
        .expect("versions");
    let (rows, distinct, latest): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!((rows, distinct), (latest, latest));
    assert!(latest >= 2, "the migrations up to the schedules table");
    let id = stores[0]
        .enqueue_one(NewTask::new("c", vec![]), at(0))
        .expect("enqueue");
    assert!(stores[7].get(id).expect("get").is_some());
}

/// A schema whose `tasks` table is another application's, or that a newer simplepyq
/// wrote, is refused with a clear error and left exactly as it was.
#[test]
fn foreign_and_newer_schemas_are_refused_unchanged() {
    let foreign = fresh_schema();
    let _drop = DropSchema(foreign.clone());
    let mut c = server().client();
    c.batch_execute(&format!(
        "CREATE SCHEMA {foreign}; CREATE TABLE {foreign}.tasks (x int); \
         INSERT INTO {foreign}.tasks VALUES (7)"
    ))
    .expect("set up");
    let err =
        PostgresStore::connect_with(server().conninfo(), options(&foreign)).expect_err("refused");
    assert!(matches!(err, simplepyq::Error::Foreign { .. }), "{err}");
    assert!(err.to_string().contains("not a simplepyq queue"), "{err}");
    let tables: Vec<String> = c
        .query(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1",
            &[&foreign],
        )
        .expect("tables")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(tables, vec!["tasks".to_owned()]);

    let newer = fresh_schema();
    let _drop_newer = DropSchema(newer.clone());
    let id = store(&newer)
        .enqueue_one(NewTask::new("c", vec![]), at(0))
        .expect("enqueue");
    c.batch_execute(&format!(
        "INSERT INTO {newer}.simplepyq_schema (version) VALUES (99)"
    ))
    .expect("a newer version");
    let err =
        PostgresStore::connect_with(server().conninfo(), options(&newer)).expect_err("refused");
    assert!(
        matches!(err, simplepyq::Error::SchemaTooNew { found: 99, .. }),
        "{err}"
    );
    let n: i64 = c
        .query_one(&format!("SELECT count(*) FROM {newer}.tasks"), &[])
        .expect("count")
        .get(0);
    assert_eq!(n, 1, "task {id} is still there, alone");
}

/// A machine's clock, `skew` off the true time.
#[derive(Debug)]
struct Skewed(i64);

impl Clock for Skewed {
    fn now(&self) -> Timestamp {
        Timestamp::from_millis(SystemClock.now().as_millis() + self.0)
    }
}

/// Two machines whose clocks are 30 s apart (each way) time leases by the server's clock:
/// a lease one machine took is not recovered by the other while it is live, and is
/// recovered once it expired, not 30 s earlier or later.
#[test]
fn leases_hold_across_machines_whose_clocks_differ_by_30_s() {
    const LEASE: Duration = Duration::from_millis(1_500);
    for skew in [30_000, -30_000] {
        let schema = fresh_schema();
        let _drop = DropSchema(schema.clone());
        let s = store(&schema);
        let here = s.measure_clock(SystemClock).expect("measure");
        let there = s.measure_clock(Skewed(skew)).expect("measure");
        // Both read the same time within a few milliseconds, whatever their clocks say.
        let apart = (here.now().as_millis() - there.now().as_millis()).abs();
        assert!(apart < 50, "skew {skew}: the clocks read {apart} ms apart");
        s.enqueue_one(NewTask::new("c", vec![]), here.now())
            .expect("enqueue");
        let taken = Instant::now();
        let now = there.now();
        let held = s.claim("c", 1, now, now.after(LEASE)).expect("claim");
        assert_eq!(held.len(), 1);
        // The other machine looks for expired leases all along.
        let recovered_after = loop {
            if s.recover_expired(here.now(), 3).expect("recover") > 0 {
                break taken.elapsed();
            }
            assert!(taken.elapsed() < Duration::from_secs(10), "never recovered");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(
            recovered_after >= LEASE - Duration::from_millis(50),
            "skew {skew}: recovered after {recovered_after:?}, before the lease expired"
        );
        assert!(
            recovered_after < LEASE + Duration::from_millis(1_000),
            "skew {skew}: recovered only after {recovered_after:?}"
        );
    }
}

/// A queue on PostgreSQL times its tasks by the server's clock unless told otherwise.
#[test]
fn a_queue_times_tasks_by_the_stores_clock() {
    let schema = fresh_schema();
    let _drop = DropSchema(schema.clone());
    let s = store(&schema);
    let clock = s.clock().expect("the store has a clock");
    let offset = s.server_clock().offset_millis();
    assert!(offset.abs() < 1_000, "one machine: offset {offset} ms");
    let q = SimplePyQ::new(s);
    let id = q.enqueue("c", &1u32).expect("enqueue");
    let created = q.task(id).expect("get").expect("there").created_at;
    assert!((clock.now().as_millis() - created.as_millis()).abs() < 1_000);
}

/// Connections are terminated by the server (`pg_terminate_backend`) in the middle of a
/// claim and in the middle of recording outcomes (the killer watches `pg_stat_activity` for
/// those statements under way), again and again, while a queue drains 2,000 tasks with the
/// default `retries = 0`: every task ends done, none fails.
#[test]
fn connections_terminated_mid_claim_and_mid_outcome_fail_no_task() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    const CUTS: usize = 8;
    let schema = fresh_schema();
    let _drop = DropSchema(schema.clone());
    let app = format!("simplepyq_{schema}");
    let conninfo = format!("{} application_name={app}", server().conninfo());
    let s = PostgresStore::connect_with(&conninfo, options(&schema)).expect("connect");
    let q = SimplePyQ::builder(s)
        .lease(Duration::from_secs(1))
        .poll_interval(Duration::from_millis(20))
        .build()
        .expect("build");
    let runs = Arc::new(AtomicUsize::new(0));
    let r = Arc::clone(&runs);
    q.add_channel(
        "work",
        move |_: u32| {
            r.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_micros(500));
            Ok(())
        },
        4,
    )
    .expect("add");
    let items: Vec<u32> = (0..2_000).collect();
    q.enqueue_many("work", &items, simplepyq::EnqueueOptions::new())
        .expect("enqueue");
    let done = AtomicBool::new(false);
    let statements = [("claim", sql::CLAIM), ("outcomes", sql::FINISH)];
    let cut = std::thread::scope(|scope| {
        let killer = scope.spawn(|| {
            let mut admin = server().client();
            let mut cut = [0usize; 2];
            while !done.load(Ordering::SeqCst) && cut.iter().any(|&n| n < CUTS) {
                for (i, (_, text)) in statements.iter().enumerate() {
                    if cut[i] >= CUTS {
                        continue;
                    }
                    let prefix = format!("{}%", &text[..30]);
                    cut[i] += admin
                        .query(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                             WHERE application_name = $1 AND state = 'active' \
                             AND query LIKE $2",
                            &[&app, &prefix],
                        )
                        .expect("terminate")
                        .len();
                }
                std::thread::sleep(Duration::from_micros(300));
            }
            cut
        });
        let result = q.run_until_complete();
        done.store(true, Ordering::SeqCst);
        result.expect("run");
        killer.join().expect("killer")
    });
    eprintln!(
        "connections cut mid-claim: {}, mid-outcome: {}; {} runs for 2000 tasks",
        cut[0],
        cut[1],
        runs.load(Ordering::SeqCst)
    );
    for ((what, _), n) in statements.iter().zip(cut) {
        assert!(
            n > 0,
            "no connection was cut in the middle of a {what} statement"
        );
    }
    let c = q.counts("work").expect("counts");
    assert_eq!((c.done, c.failed, c.total()), (2_000, 0, 2_000), "{c:?}");
    assert!(runs.load(Ordering::SeqCst) >= 2_000);
    // An outcome cut before its commit is written again, one cut after it is refused: each
    // task is counted done once.
    let totals = q.store().totals().expect("totals");
    assert_eq!(
        totals.get("work").map(|t| t.done),
        Some(2_000),
        "{totals:?}"
    );
}

/// The pid of the connection listening for the queue in `schema`, once there is one other
/// than `not`.
fn listener(schema: &str, not: Option<i32>) -> i32 {
    let mut c = server().client();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let row = c
            .query_opt(
                "SELECT pid FROM pg_stat_activity WHERE query = $1 AND pid <> $2",
                &[&format!("LISTEN simplepyq_{schema}"), &not.unwrap_or(0)],
            )
            .expect("look");
        if let Some(row) = row {
            return row.get(0);
        }
        assert!(Instant::now() < deadline, "no listener");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Work another process adds starts at once, not at the next poll (30 s here): the
/// queue listens for it. When its listening connection is killed, it listens again.
#[test]
fn work_from_another_process_wakes_an_idle_queue() {
    let schema = fresh_schema();
    let _drop = DropSchema(schema.clone());
    let q = SimplePyQ::builder(store(&schema))
        .poll_interval(Duration::from_secs(30))
        .build()
        .expect("build");
    let rx = crate::processes::report_starts(&q, 2);
    q.start().expect("start");
    let first = listener(&schema, None);
    let other = store(&schema);
    let mut latencies = Vec::new();
    let mut send = |n: u32| {
        let sent = Instant::now();
        other
            .enqueue_one(
                NewTask::new("work", rmp_serde::to_vec(&n).expect("encode")),
                SystemClock.now(),
            )
            .expect("enqueue");
        let (got, started) = rx.recv_timeout(Duration::from_secs(10)).expect("ran");
        assert_eq!(got, n);
        let latency = started - sent;
        assert!(
            latency < Duration::from_secs(2),
            "task {n} started after {latency:?}"
        );
        latencies.push(latency);
    };
    for n in 0..20 {
        send(n);
    }
    let mut c = server().client();
    c.query("SELECT pg_terminate_backend($1)", &[&first])
        .expect("terminate");
    let second = listener(&schema, Some(first));
    assert_ne!(first, second);
    for n in 20..25 {
        send(n);
    }
    latencies.sort();
    eprintln!(
        "start latency: p50 {:?}, max {:?}",
        latencies[12], latencies[24]
    );
    q.stop();
}

/// A burst of enqueues sends at most one `NOTIFY` a millisecond: each is a transaction that
/// takes the server's database-wide notify lock and wakes every listening queue, and a
/// lone producer's enqueues each sent one (8,442 for 10,000). The burst is still announced.
#[test]
fn a_burst_of_enqueues_notifies_at_most_once_a_millisecond() {
    use postgres::fallible_iterator::FallibleIterator;
    let schema = fresh_schema();
    let _drop = DropSchema(schema.clone());
    let s = store(&schema);
    let mut c = server().client();
    c.batch_execute(&format!("LISTEN simplepyq_{schema}"))
        .expect("listen");
    let started = Instant::now();
    for _ in 0..1_000 {
        s.enqueue_one(NewTask::new("burst", vec![0x90]), at(0))
            .expect("enqueue");
    }
    let elapsed = started.elapsed();
    let mut heard = 0u128;
    let mut notifications = c.notifications();
    let mut each = notifications.timeout_iter(Duration::from_millis(300));
    while let Some(n) = each.next().expect("a notification") {
        assert_eq!(n.payload(), "burst");
        heard += 1;
    }
    // One at the start, then one a millisecond at most, the last within one after the
    // burst.
    let most = elapsed.as_millis() + 2;
    assert!(
        (1..=most).contains(&heard),
        "{heard} notifications for 1,000 enqueues in {elapsed:?}"
    );
}

/// Statements that change many named rows lock them in id order: two renewals of the same
/// claims in opposite orders, and outcomes recorded meanwhile, never deadlock (PostgreSQL's
/// own count of deadlocks stays the same).
#[test]
fn renewals_and_outcomes_never_deadlock() {
    let schema = fresh_schema();
    let _drop = DropSchema(schema.clone());
    let s = store(&schema);
    let tasks: Vec<NewTask> = (0..400).map(|_| NewTask::new("c", vec![])).collect();
    s.enqueue(&tasks, at(0)).expect("enqueue");
    let claims: Vec<_> = s
        .claim("c", 400, at(0), at(60_000))
        .expect("claim")
        .iter()
        .map(|t| t.claim())
        .collect();
    let deadlocks = || -> i64 {
        server()
            .client()
            .query_one(
                "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()",
                &[],
            )
            .expect("stats")
            .get(0)
    };
    let before = deadlocks();
    let reversed: Vec<_> = claims.iter().rev().copied().collect();
    std::thread::scope(|scope| {
        for order in [&claims, &reversed] {
            let s = &s;
            scope.spawn(move || {
                for i in 0..60 {
                    s.extend_leases(order, at(60_000 + i)).expect("extend");
                }
            });
        }
        let s = &s;
        let claims = &reversed;
        scope.spawn(move || {
            for chunk in claims.chunks(20) {
                let done: Vec<_> = chunk
                    .iter()
                    .map(|c| (*c, simplepyq::Outcome::Succeeded))
                    .collect();
                s.finish_many(&done, at(1)).expect("finish");
            }
        });
    });
    // The statistics collector reports within a moment.
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(deadlocks(), before, "PostgreSQL detected deadlocks");
    assert_eq!(s.counts(None).expect("counts").done, 400);
}

/// A queue on PostgreSQL connects, enqueues from an axum-like request handler and an async
/// handler, and is dropped, all on a runtime's threads: the driver runs on a runtime of its
/// own, which tokio refuses to start inside another (the async scenario that enqueued from
/// its handler failed so: 0 of 15 tasks done).
#[test]
fn a_queue_lives_on_an_async_runtime() {
    for flavor in ["current_thread", "multi_thread"] {
        let schema = fresh_schema();
        let _drop = DropSchema(schema.clone());
        let rt = if flavor == "current_thread" {
            tokio::runtime::Builder::new_current_thread()
        } else {
            tokio::runtime::Builder::new_multi_thread()
        }
        .enable_all()
        .build()
        .expect("runtime");
        rt.block_on(async {
            let store = PostgresStore::connect_with(server().conninfo(), options(&schema))
                .expect("connect on the runtime");
            let q = SimplePyQ::builder(store)
                .poll_interval(Duration::from_millis(20))
                .build()
                .expect("build");
            let next = q.channel::<u32>("pages");
            q.add_channel_async(
                "links",
                move |n: u32| {
                    let next = next.clone();
                    async move {
                        next.enqueue(&n)?; // from the handler, on a runtime thread
                        Ok(())
                    }
                },
                4,
            )
            .expect("add");
            q.add_channel_async("pages", |_: u32| async { Ok(()) }, 4)
                .expect("add");
            for n in 0..20u32 {
                q.enqueue("links", &n).expect("enqueue on the runtime");
            }
            q.run_until_complete_async().await.expect("run");
            assert_eq!(q.counts("pages").expect("counts").done, 20, "{flavor}");
            q.clear_failed(None).expect("clear");
            drop(q); // closes its connections, on the runtime's thread
        });
    }
}

/// A wall clock that the test steps, as NTP or an admin would.
#[derive(Debug, Default)]
struct Stepped(std::sync::atomic::AtomicI64);

impl Clock for Stepped {
    fn now(&self) -> Timestamp {
        let step = self.0.load(std::sync::atomic::Ordering::SeqCst);
        Timestamp::from_millis(SystemClock.now().as_millis() + step)
    }
}

impl Clock for &'static Stepped {
    fn now(&self) -> Timestamp {
        (**self).now()
    }
}

/// A step of this machine's wall clock after the store measured the server's (an NTP step,
/// a resumed VM) moves neither the server's time as read here nor the leases this process
/// writes: read off the wall clock plus an offset, a step back of a minute made every lease
/// written here expired on arrival, and other processes ran its tasks again.
#[test]
fn a_step_of_the_wall_clock_does_not_move_the_servers_time() {
    let schema = fresh_schema();
    let _drop = DropSchema(schema.clone());
    let s = store(&schema);
    let wall: &'static Stepped = Box::leak(Box::default());
    let clock = s.measure_clock(wall).expect("measure");
    let server = s.measure_clock(SystemClock).expect("measure");
    for step in [-60_000, 60_000, 3_600_000] {
        wall.0.store(step, std::sync::atomic::Ordering::SeqCst);
        let apart = (clock.now().as_millis() - server.now().as_millis()).abs();
        assert!(
            apart < 100,
            "a step of {step} ms moved the server's time by {apart} ms"
        );
    }
}

/// A schema name PostgreSQL reserves (`user`, `order`) is refused as a bad setting before
/// any SQL runs: written unquoted, it failed later with a syntax error from the server.
#[test]
fn a_reserved_word_is_refused_as_a_schema_name() {
    for name in ["user", "order", "select", "table"] {
        let err = PostgresStore::connect_with(server().conninfo(), options(name))
            .expect_err("a reserved word");
        assert!(
            matches!(err, simplepyq::Error::InvalidConfig(_)),
            "{name}: {err}"
        );
    }
}

/// A TCP proxy to the test server that, once armed, cuts the first connection that runs an
/// `INSERT INTO tasks`: the statement reaches the server (which runs and commits it), its
/// answer never reaches the client, which sees its connection end mid-request.
struct CutAfterInsert {
    port: u16,
    armed: Arc<std::sync::atomic::AtomicBool>,
}

impl CutAfterInsert {
    fn start() -> Self {
        use std::io::{Read, Write};
        use std::net::{Shutdown, TcpListener, TcpStream};
        use std::sync::atomic::{AtomicBool, Ordering};
        let upstream = server()
            .url()
            .rsplit_once('@')
            .and_then(|(_, rest)| rest.split_once('/'))
            .map(|(addr, _)| addr.to_owned())
            .expect("the server's address");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        let armed = Arc::new(AtomicBool::new(false));
        let arm = Arc::clone(&armed);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(&upstream) else {
                    return;
                };
                let muted = Arc::new(AtomicBool::new(false));
                let (mut c_in, mut s_out) = (
                    client.try_clone().expect("clone"),
                    server.try_clone().expect("clone"),
                );
                let (arm, mute) = (Arc::clone(&arm), Arc::clone(&muted));
                let cut_client = client.try_clone().expect("clone");
                std::thread::spawn(move || {
                    let mut buf = [0u8; 65_536];
                    // The statement is prepared first (its text, in a Parse message), then
                    // run by the client's next message (Bind, Execute): that one is cut.
                    let mut prepared = false;
                    while let Ok(n) = c_in.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        let insert = buf[..n].windows(17).any(|w| w == b"INSERT INTO tasks");
                        let execute = message_kinds(&buf[..n]).contains(&b'E');
                        if insert && !execute && arm.load(Ordering::SeqCst) {
                            prepared = true;
                        } else if (insert || prepared)
                            && execute
                            && arm.swap(false, Ordering::SeqCst)
                        {
                            mute.store(true, Ordering::SeqCst);
                            let _ = s_out.write_all(&buf[..n]);
                            // Long enough for the server to run and commit it.
                            std::thread::sleep(Duration::from_millis(300));
                            let _ = cut_client.shutdown(Shutdown::Both);
                            let _ = s_out.shutdown(Shutdown::Both);
                            return;
                        }
                        if s_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
                let (mut s_in, mut c_out) = (server, client);
                std::thread::spawn(move || {
                    let mut buf = [0u8; 65_536];
                    while let Ok(n) = s_in.read(&mut buf) {
                        if n == 0 || muted.load(Ordering::SeqCst) {
                            break;
                        }
                        if c_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        CutAfterInsert { port, armed }
    }
}

/// The kinds of the frontend messages in `bytes` (each a kind byte, then its length).
fn message_kinds(mut bytes: &[u8]) -> Vec<u8> {
    let mut kinds = Vec::new();
    while bytes.len() >= 5 {
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        kinds.push(bytes[0]);
        bytes = bytes.get(1 + len..).unwrap_or_default();
    }
    kinds
}

/// An enqueue whose connection broke after the server got it (it committed; its answer was
/// lost) is not sent again as if it never reached the server: the task is stored once, and
/// the caller is told that the effect is unknown. Retried, it was stored twice.
#[test]
fn an_enqueue_cut_off_after_it_was_sent_is_not_stored_twice() {
    let schema = fresh_schema();
    let _drop = DropSchema(schema.clone());
    let proxy = CutAfterInsert::start();
    let conninfo = format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres",
        proxy.port
    );
    let s = PostgresStore::connect_with(&conninfo, options(&schema)).expect("connect");
    proxy.armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let result = s.enqueue_one(NewTask::new("once", vec![1]), at(0));
    if let Err(e) = &result {
        assert!(matches!(e, simplepyq::Error::Unavailable { .. }), "{e}");
    }
    let stored: i64 = server()
        .client()
        .query_one(&format!("SELECT count(*) FROM {schema}.tasks"), &[])
        .expect("count")
        .get(0);
    assert_eq!(
        stored, 1,
        "the enqueue was stored {stored} times ({result:?})"
    );
}

/// Requeueing, clearing and removing a channel of many tasks runs as many statements of at
/// most `BULK_BATCH` rows each, far inside a statement timeout: one statement over millions
/// of tasks timed out (30 s by default) and could never be done. Statement-level triggers
/// count the rows each statement changes.
#[test]
fn bulk_calls_change_a_batch_per_statement() {
    let schema = fresh_schema();
    let _drop = DropSchema(schema.clone());
    let s = store(&schema);
    let mut client = server().client();
    client
        .batch_execute(&format!(
            "CREATE TABLE {schema}.statement_rows (n bigint NOT NULL); \
             CREATE FUNCTION {schema}.count_new() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN INSERT INTO {schema}.statement_rows SELECT count(*) FROM changed; \
             RETURN NULL; END $$; \
             CREATE TRIGGER updated AFTER UPDATE ON {schema}.tasks \
             REFERENCING NEW TABLE AS changed FOR EACH STATEMENT \
             EXECUTE FUNCTION {schema}.count_new(); \
             CREATE TRIGGER deleted AFTER DELETE ON {schema}.tasks \
             REFERENCING OLD TABLE AS changed FOR EACH STATEMENT \
             EXECUTE FUNCTION {schema}.count_new();"
        ))
        .expect("triggers");
    let n = 3 * simplepyq_core::batch::BULK_BATCH as i64 + 11;
    let fill = |client: &mut postgres::Client, status: &str, n: i64| {
        client
            .execute(
                &format!(
                    "INSERT INTO {schema}.tasks (channel, args, created_at, status, retries_left, \
                     max_retries, attempts, run_at, updated_at) \
                     SELECT 'many', '\\x91'::bytea, 0, '{status}', 0, 0, 1, 0, 0 \
                     FROM generate_series(1, $1::bigint)"
                ),
                &[&n],
            )
            .expect("fill")
    };
    let largest = |client: &mut postgres::Client| -> (i64, i64) {
        let row = client
            .query_one(
                &format!(
                    "SELECT coalesce(max(n), 0), coalesce(sum(n), 0)::bigint \
                     FROM {schema}.statement_rows"
                ),
                &[],
            )
            .expect("count");
        client
            .execute(&format!("DELETE FROM {schema}.statement_rows"), &[])
            .expect("reset");
        (row.get(0), row.get(1))
    };
    let batch = simplepyq_core::batch::BULK_BATCH as i64;
    fill(&mut client, "failed", n);
    assert_eq!(
        s.requeue_failed(Some("many"), None, at(0))
            .expect("requeue"),
        n as usize
    );
    let (most, all) = largest(&mut client);
    assert!(
        most <= batch && all == n,
        "requeue: {most} rows in one statement, {all} in all"
    );
    client
        .execute(&format!("UPDATE {schema}.tasks SET status = 'failed'"), &[])
        .expect("fail them again");
    largest(&mut client);
    assert_eq!(s.clear_failed(None).expect("clear"), n as usize);
    let (most, all) = largest(&mut client);
    assert!(
        most <= batch && all == n,
        "clear: {most} rows in one statement, {all} in all"
    );
    // Removal goes a range of 50,000 ids at a time.
    let wide = 2 * 50_000 + 11;
    fill(&mut client, "done", wide);
    assert_eq!(
        s.remove_channel("many", Timestamp::from_millis(0))
            .expect("remove"),
        wide as usize
    );
    let (most, all) = largest(&mut client);
    assert!(
        most <= 50_000 && all == wide,
        "remove: {most} rows in one statement, {all} in all"
    );
    fill(&mut client, "done", n);
    assert_eq!(s.purge_done(None, at(1)).expect("purge"), n as usize);
    let (most, all) = largest(&mut client);
    assert!(
        most <= batch && all == n,
        "purge: {most} rows in one statement, {all} in all"
    );
}
