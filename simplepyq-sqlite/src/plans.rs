//! The statements' query plans and programs: every status query follows an index, the
//! claim's cost does not grow with the backlog, writes build no temporary table.

use crate::testing::*;
use rusqlite::StatementStatus;
use std::time::Duration;

use rusqlite::Connection;
use rusqlite::{params, params_from_iter};
use simplepyq_core::{ClaimStore, NewTask, Status, StoreExt};

use crate::SqliteStore;
use crate::admin::{clear_failed_sql, failed_sql, purge_sql, remove_channel_sql};
use crate::claim::{KEY_HOLDER, claim_sql, due_sql, insert_sql, next_wakeup_sql};
use crate::inspect::{channels_sql, counts_sql};
use crate::outcome::EXPIRED;
use crate::row::SAVE_STATE;

/// Virtual-machine steps SQLite takes to find the next due task of a channel.
fn claim_query_steps(store: &SqliteStore) -> (i32, String) {
    store.readers.with(query_steps).expect("a read connection")
}

fn query_steps(conn: &Connection) -> (i32, String) {
    let sql = claim_sql();
    let plan: Vec<String> = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
        .expect("explain")
        .query_map(params!["c", T0.as_millis(), 1], |r| r.get(3))
        .expect("plan")
        .collect::<rusqlite::Result<_>>()
        .expect("plan rows");
    let mut stmt = conn.prepare(&sql).expect("prepare");
    let n = stmt
        .query_map(params!["c", T0.as_millis(), 1], |_| Ok(()))
        .expect("query")
        .count();
    assert_eq!(n, 1);
    (stmt.get_status(StatementStatus::VmStep), plan.join("; "))
}

/// Fills the store with `n` tasks of every kind a claim must skip, then one due task.
fn backlog(store: &SqliteStore, n: usize) {
    let later = T0.after(Duration::from_secs(3_600));
    let mut tasks = Vec::with_capacity(n * 3);
    for _ in 0..n {
        tasks.push(NewTask::new("c", vec![0; 16]).run_at(later));
        tasks.push(NewTask::new("other", vec![0; 16]));
        tasks.push(NewTask::new("b", vec![0; 16]));
    }
    store.enqueue(&tasks, T0).expect("enqueue");
    // Done and failed tasks too (set directly: only the rows matter here).
    store
        .write(|tx| {
            Ok(tx.execute_batch(
                "UPDATE simplepyq_tasks SET status = 'done' WHERE channel = 'b' AND id % 2 = 0;
             UPDATE simplepyq_tasks SET status = 'failed' WHERE channel = 'b' AND id % 2 = 1;
             UPDATE simplepyq_tasks SET channel = 'c' WHERE channel = 'b';",
            )?)
        })
        .expect("finish");
    store
        .enqueue_one(NewTask::new("c", vec![]), T0)
        .expect("enqueue");
}

/// Column `column` of every row of `explain` (an `EXPLAIN` or `EXPLAIN QUERY PLAN` of a
/// statement), its parameters left unbound.
fn explain(conn: &Connection, explain: &str, column: usize) -> rusqlite::Result<Vec<String>> {
    let mut stmt = conn.prepare(explain)?;
    let unbound = vec![rusqlite::types::Null; stmt.parameter_count()];
    let rows = stmt.query_map(params_from_iter(unbound), |r| r.get(column))?;
    rows.collect()
}

/// Every query of a status follows an index: none reads the whole table.
#[test]
fn status_queries_follow_an_index() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(dir.path().join("q.db")).expect("open");
    let mut queries = vec![EXPIRED.to_owned(), KEY_HOLDER.to_owned(), channels_sql()];
    queries.extend(Status::ALL.map(remove_channel_sql));
    for channel in [None, Some("c")] {
        queries.extend([
            failed_sql(channel),
            clear_failed_sql(channel),
            purge_sql(Status::Done, channel),
            purge_sql(Status::Failed, channel),
            counts_sql(channel),
        ]);
    }
    queries.extend(
        Status::ALL.map(|s| simplepyq_core::row::has_tasks_sql("simplepyq_tasks", "?1", &[s])),
    );
    store
        .readers
        .with(|conn| {
            for sql in &queries {
                let plan =
                    explain(conn, &format!("EXPLAIN QUERY PLAN {sql}"), 3).expect("the query plan");
                assert!(
                    plan.iter()
                        .all(|step| !step.starts_with("SCAN simplepyq_tasks")
                            || step.contains("INDEX")),
                    "{sql}: {plan:?}"
                );
                if sql == KEY_HOLDER {
                    assert!(plan.concat().contains("tasks_unique"), "{plan:?}");
                }
            }
        })
        .expect("a read connection");
}

/// The writer's insert and change of status build no temporary table (SQLite builds one
/// for an `IN` list of three values or more, in a check or an index's condition).
#[test]
fn writes_build_no_temporary_table() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(dir.path().join("q.db")).expect("open");
    for sql in [insert_sql(), SAVE_STATE.to_owned()] {
        let program = store
            .write(move |tx| Ok(explain(tx, &format!("EXPLAIN {sql}"), 1)?))
            .expect("the program");
        assert!(
            !program.iter().any(|op| op == "OpenEphemeral"),
            "{program:?}"
        );
    }
}

#[test]
fn claim_cost_does_not_grow_with_the_backlog() {
    let dir = tempfile::tempdir().expect("temp dir");
    let small = SqliteStore::open(dir.path().join("small.db")).expect("open");
    backlog(&small, 1_000);
    let large = SqliteStore::open(dir.path().join("large.db")).expect("open");
    backlog(&large, 100_000);
    let (small_steps, plan) = claim_query_steps(&small);
    let (large_steps, _) = claim_query_steps(&large);
    assert!(plan.contains("tasks_ready"), "{plan}");
    assert!(!plan.contains("TEMP B-TREE"), "claim sorts: {plan}");
    assert_eq!(small_steps, large_steps, "claim visits more rows at 100k");
}

/// The statements of dependencies each follow an index of the edges, by parent or by child
/// (of the unsatisfied ones, for whether a child has a parent left): none reads every edge,
/// so a fan-in's last parent costs what its first did.
#[test]
fn dependency_queries_follow_an_index() {
    use crate::dependency::{ANY_LEFT, CHILDREN, PARENTS, PARENTS_LEFT, SATISFY};
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(dir.path().join("q.db")).expect("open");
    let expected = [
        (CHILDREN, "simplepyq_dependencies_parent"),
        (SATISFY, "simplepyq_dependencies_parent"),
        (PARENTS, "PRIMARY KEY"),
        (ANY_LEFT, "simplepyq_dependencies_left"),
        (PARENTS_LEFT, "simplepyq_dependencies_left"),
    ];
    store
        .readers
        .with(|conn| {
            for (sql, index) in expected {
                let plan =
                    explain(conn, &format!("EXPLAIN QUERY PLAN {sql}"), 3).expect("the query plan");
                let edges: Vec<&String> = plan
                    .iter()
                    .filter(|step| step.contains("simplepyq_dependencies"))
                    .collect();
                assert!(
                    edges.iter().all(|step| step.starts_with("SEARCH")),
                    "{sql}: {plan:?}"
                );
                assert!(plan.concat().contains(index), "{sql}: {plan:?}");
            }
        })
        .expect("a read connection");
}

/// How many times `sql`'s cached statement on `conn` was prepared again since it was first
/// prepared, and how many times it ran.
fn prepared_again(conn: &Connection, sql: &str) -> (i32, i32) {
    let stmt = conn.prepare_cached(sql).expect("prepare");
    (
        stmt.get_status(StatementStatus::RePrepare),
        stmt.get_status(StatementStatus::Run),
    )
}

/// The looks of an idle worker (a claim's look for due tasks, the next wake-up) are
/// prepared once per connection. SQLite prepared them again at every call: it marked them
/// for a new plan whenever a parameter compared for equality in a term no index serves is
/// bound anew, which rusqlite's statement cache does at every use (about 0.25 ms of each
/// pick-up of a task).
#[test]
fn an_idle_workers_looks_are_prepared_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(dir.path().join("q.db")).expect("open");
    let lease_until = T0.after(Duration::from_secs(30));
    for _ in 0..5 {
        assert!(
            store
                .claim("c", 1, T0, lease_until)
                .expect("claim")
                .is_empty()
        );
        assert_eq!(store.next_wakeup("c").expect("next wake-up"), None);
    }
    let looks = store
        .readers
        .with(|conn| [due_sql(), next_wakeup_sql()].map(|sql| prepared_again(conn, &sql)))
        .expect("a read connection");
    assert_eq!(
        looks,
        [(0, 5), (0, 5)],
        "(prepared again, runs) of each look"
    );
}
