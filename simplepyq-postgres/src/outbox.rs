//! Enqueueing and completing in the caller's own transaction (the outbox pattern), on the
//! caller's `postgres` client: the application's rows and the queue's commit together, or
//! neither.
//!
//! An enqueue is one statement, `enqueue_msgpack` (migration 0004): the function that SQL
//! callers in any language use too, so that a row written by either is the same (a test
//! compares them with the store's own enqueue). Its `NOTIFY` is part of the caller's
//! transaction: PostgreSQL delivers it at the commit, and drops it on a rollback.

use std::collections::HashMap;

use postgres::types::{ToSql, Type};
use postgres::{GenericClient, Row, Transaction};
use simplepyq_core::{
    Claim, Error, NewTask, OnCommit, Outcome, Result, Status, TaskId, Timestamp, TransactionStore,
};

use crate::PostgresStore;
use crate::error::{BACKEND, E, R};
use crate::outcome::finish_in;
use crate::pool::Db;
use crate::row::millis;

impl PostgresStore {
    /// Enqueues `tasks` in the caller's transaction on `client` (a `postgres::Transaction`,
    /// or a `Client` for a transaction of one statement), connected to this store's
    /// database, and returns their ids (as [`ClaimStore::enqueue`] does: a task whose unique
    /// key an unfinished task holds gets that task's id). They commit with the caller's
    /// transaction, or roll back with it; workers of every process are told at the commit.
    ///
    /// Errors are returned, never retried in the caller's transaction. A failed statement
    /// aborts that transaction, as any statement of the caller's would:
    /// [`Error::InvalidChannel`] is found before anything is sent; [`Error::ReadOnly`] for a
    /// read-only transaction; [`Error::InvalidConfig`] for a database without this store's
    /// queue; [`Error::Unavailable`] for a closed connection.
    ///
    /// [`ClaimStore::enqueue`]: simplepyq_core::ClaimStore::enqueue
    pub fn enqueue_in<C: GenericClient>(
        &self,
        client: &mut C,
        tasks: &[NewTask],
        now: Timestamp,
    ) -> Result<Vec<TaskId>> {
        let Some(call) = EnqueueCall::of(&self.schema, tasks, now)? else {
            return Ok(Vec::new());
        };
        let rows = client
            .query_typed(&call.sql, &call.params())
            .map_err(|e| self.in_caller(e.into()))?;
        call.ids(&rows)
    }

    /// Completes the running attempt `claim` in the caller's transaction on `client`: the
    /// task is done once that transaction commits, with whatever else it wrote (a
    /// handler's own rows), or stays running if it rolls back. Fenced as an outcome is:
    /// [`Error::LeaseLost`] if the attempt no longer holds its task (its lease expired and
    /// another worker took it over), and then nothing is written: do not commit. The other
    /// errors are [`PostgresStore::enqueue_in`]'s; after one, the caller's transaction can
    /// go on (the completion ran in a savepoint of its own).
    pub fn complete_in<C: GenericClient>(
        &self,
        client: &mut C,
        claim: Claim,
        now: Timestamp,
    ) -> Result<Status> {
        let statuses = self
            .in_schema(client, |db| {
                finish_in(db, &[(claim, Outcome::Succeeded)], now)
            })
            .map_err(|e| self.in_caller(e))?;
        one_status(statuses)
    }

    /// Runs `op` in a savepoint of the caller's transaction on `client` (or a transaction,
    /// on a client outside one), with the queue's schema as its search path; the caller's
    /// search path is back when it ends.
    fn in_schema<C: GenericClient, T>(
        &self,
        client: &mut C,
        op: impl FnOnce(&mut Db<'_, Transaction<'_>>) -> R<T>,
    ) -> R<T> {
        let mut tx = client.transaction()?;
        let theirs: String = tx.query_one(SET_PATH, &[&self.schema])?.try_get(0)?;
        let mut statements = HashMap::new();
        let value = op(&mut Db {
            client: &mut tx,
            statements: &mut statements,
        })?;
        tx.execute(RESTORE_PATH, &[&theirs])?;
        tx.commit()?;
        Ok(value)
    }

    /// The error of a statement in the caller's transaction: a database without this
    /// store's queue is named as such.
    pub(crate) fn in_caller(&self, e: E) -> Error {
        let missing = matches!(&e, E::Pg(pg) if pg.code().is_some_and(|c| {
            *c == postgres::error::SqlState::UNDEFINED_FUNCTION
                || *c == postgres::error::SqlState::UNDEFINED_TABLE
                || *c == postgres::error::SqlState::INVALID_SCHEMA_NAME
        }));
        if missing {
            return Error::InvalidConfig(format!(
                "the transaction's database has no simplepyq queue in the schema {} ({e}): \
                 enqueue in a transaction on the queue's own database",
                self.schema
            ));
        }
        e.into()
    }
}

/// Sets the search path to $1 until the transaction ends, and returns the one it replaces.
pub(crate) const SET_PATH: &str =
    "SELECT current_setting('search_path'), set_config('search_path', $1, true)";
/// Sets the search path back to $1 (what [`SET_PATH`] returned).
pub(crate) const RESTORE_PATH: &str = "SELECT set_config('search_path', $1, true)";

/// An enqueue in the caller's transaction: one statement, `enqueue_msgpack` once per task
/// in order (a later task sees an earlier one's unique key), and its parameters.
pub(crate) struct EnqueueCall<'a> {
    pub(crate) sql: String,
    channels: Vec<&'a str>,
    args: Vec<&'a [u8]>,
    retries: Vec<i64>,
    priorities: Vec<i32>,
    keys: Vec<Option<&'a str>>,
    run_at: Vec<Option<i64>>,
    concurrency_keys: Vec<Option<&'a str>>,
    timeouts: Vec<Option<i64>>,
    traceparents: Vec<Option<&'a str>>,
    now: i64,
}

impl<'a> EnqueueCall<'a> {
    /// The call for `tasks` at `now` into the queue in `schema`; `None` for no tasks. An
    /// invalid channel name is refused here, before anything is sent.
    pub(crate) fn of(schema: &str, tasks: &'a [NewTask], now: Timestamp) -> Result<Option<Self>> {
        for t in tasks {
            t.validate()?;
            if !t.after.is_empty() {
                return Err(Error::config(
                    "a task that waits for others (NewTask::after) cannot be enqueued in the \
                     caller's transaction on PostgreSQL: enqueue it with the store",
                ));
            }
        }
        if tasks.is_empty() {
            return Ok(None);
        }
        Ok(Some(EnqueueCall {
            sql: format!(
                "SELECT u.ord, {schema}.enqueue_msgpack(u.channel, u.args, u.retries, \
                   u.priority, u.unique_key, u.run_at, $7, u.concurrency_key, u.timeout_ms, \
                   u.traceparent) \
                 FROM unnest($1::text[], $2::bytea[], $3::bigint[], $4::int[], $5::text[], \
                   $6::bigint[], $8::text[], $9::bigint[], $10::text[]) WITH ORDINALITY \
                   AS u(channel, args, retries, priority, unique_key, run_at, \
                   concurrency_key, timeout_ms, traceparent, ord) \
                 ORDER BY u.ord"
            ),
            channels: tasks.iter().map(|t| t.channel.as_str()).collect(),
            args: tasks.iter().map(|t| t.args.as_slice()).collect(),
            retries: tasks.iter().map(|t| i64::from(t.retries)).collect(),
            priorities: tasks.iter().map(|t| t.priority).collect(),
            keys: tasks.iter().map(|t| t.unique_key.as_deref()).collect(),
            concurrency_keys: tasks.iter().map(|t| t.concurrency_key.as_deref()).collect(),
            timeouts: tasks.iter().map(NewTask::timeout_ms).collect(),
            traceparents: tasks.iter().map(|t| t.traceparent.as_deref()).collect(),
            run_at: tasks.iter().map(|t| t.run_at.map(millis)).collect(),
            now: millis(now),
        }))
    }

    /// The parameters with their types: the statement is sent with them, unprepared, in
    /// one round trip (a prepared one takes two).
    pub(crate) fn params(&self) -> [(&(dyn ToSql + Sync), Type); 10] {
        [
            (&self.channels, Type::TEXT_ARRAY),
            (&self.args, Type::BYTEA_ARRAY),
            (&self.retries, Type::INT8_ARRAY),
            (&self.priorities, Type::INT4_ARRAY),
            (&self.keys, Type::TEXT_ARRAY),
            (&self.run_at, Type::INT8_ARRAY),
            (&self.now, Type::INT8),
            (&self.concurrency_keys, Type::TEXT_ARRAY),
            (&self.timeouts, Type::INT8_ARRAY),
            (&self.traceparents, Type::TEXT_ARRAY),
        ]
    }

    /// The tasks' ids, in order, from the statement's rows.
    pub(crate) fn ids(&self, rows: &[Row]) -> Result<Vec<TaskId>> {
        let mut ids = vec![None; self.channels.len()];
        for r in rows {
            let (ord, id): (i64, i64) = (r.get(0), r.get(1));
            if let Some(slot) = usize::try_from(ord - 1).ok().and_then(|i| ids.get_mut(i)) {
                *slot = Some(TaskId::new(id));
            }
        }
        ids.into_iter()
            .map(|id| {
                id.ok_or_else(|| Error::Backend {
                    backend: BACKEND,
                    source: "the enqueue returned no id for a task".into(),
                })
            })
            .collect()
    }
}

/// The status of the one attempt a completion recorded.
pub(crate) fn one_status(mut statuses: Vec<Result<Status>>) -> Result<Status> {
    statuses.pop().unwrap_or_else(|| {
        Err(Error::Backend {
            backend: BACKEND,
            source: "no status for one attempt".into(),
        })
    })
}

impl<'t, C: GenericClient> TransactionStore<&'t mut C> for PostgresStore {
    /// Workers are told by the `NOTIFY` the commit delivers: `committed` is dropped.
    fn enqueue_in_then(
        &self,
        tx: &'t mut C,
        tasks: &[NewTask],
        now: Timestamp,
        _committed: OnCommit,
    ) -> Result<Vec<TaskId>> {
        self.enqueue_in(tx, tasks, now)
    }

    fn complete_in(&self, tx: &'t mut C, claim: Claim, now: Timestamp) -> Result<Status> {
        PostgresStore::complete_in(self, tx, claim, now)
    }
}
