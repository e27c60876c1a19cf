//! [`PostgresStore`]: a [`Store`] for simplepyq on a PostgreSQL server, shared by worker
//! processes on many machines.
//!
//! The tasks live in one table `tasks` in a schema of their own (`simplepyq` by default),
//! created and migrated when a store connects. Workers claim tasks with `FOR UPDATE SKIP
//! LOCKED`, so that claimers never wait for each other, and hold them under leases timed by
//! the database server's clock (see [`ServerClock`]): a machine that dies or is cut off only
//! delays its tasks by one lease.
//!
//! ```no_run
//! use simplepyq_core::{NewTask, Store, StoreExt, Timestamp};
//! use simplepyq_postgres::PostgresStore;
//!
//! let store = PostgresStore::connect("postgres://app@db.internal/app")?;
//! let id = store.enqueue_one(NewTask::new("emails", vec![0x90]), Timestamp::from_millis(0))?;
//! # Ok::<(), simplepyq_core::Error>(())
//! ```
//!
//! # Inspecting with SQL
//! `tasks` has the columns of the SQLite store's table: `id`, `channel`, `args`
//! (MessagePack), `status` (`pending`, `running`, `delayed`, `done`, `failed`),
//! `retries_left`, `max_retries`, `attempts`, `lost_runs`, `run_at`, `lease_until`,
//! `last_error`, `created_at`, `updated_at` (times in milliseconds since the Unix epoch, by
//! the server's clock). Read it freely; write it only through simplepyq.
//!
//! # Running it in production
//! - Done tasks stay until [`Store::purge_done`] deletes them (in batches of
//!   [`PURGE_BATCH`] rows, each its own short transaction); failed ones until
//!   [`Store::clear_failed`]. Purge regularly: a queue table should hold work, not history.
//! - The table turns over fast. Its autovacuum settings are set for that (vacuum once 1% of
//!   its rows are dead, with no cost delay). Watch `n_dead_tup` and `last_autovacuum` in
//!   `pg_stat_user_tables` for `tasks`; a long-running transaction anywhere in the database
//!   keeps vacuum from freeing rows, so watch `pg_stat_activity` for old `xact_start`s.
//! - Each store holds at most [`PostgresOptions::pool_size`] connections, whatever the
//!   number of workers: a handler never holds one.

mod clock;
mod error;
mod listen;
mod pool;
mod schema;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use postgres::types::ToSql;
use postgres::{Client, GenericClient, Row, Transaction};
use simplepyq_core::transition::{Event, apply, cancel};
use simplepyq_core::{
    Claim, Clock, Counts, Error, Finished, ListFilter, NewTask, Outcome, Result, Status, Store,
    Task, TaskId, TaskState, Timestamp, Totals, Wake, Watch, batch, validate_channel,
};

pub use crate::clock::ServerClock;
use crate::error::{E, R, bad_value};
use crate::pool::{Db, Manager, Pool};

/// How many done tasks one statement of [`Store::purge_done`] deletes.
pub const PURGE_BATCH: i64 = batch::BULK_BATCH as i64;

/// How many tasks (of any channel) one statement of [`Store::remove_channel`] looks
/// through: no index leads with the channel for every status, so the channel's tasks are
/// deleted a range of the primary key at a time, each statement short whatever the table's
/// size.
const REMOVE_RANGE: i64 = 50_000;

/// Settings of a [`PostgresStore`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PostgresOptions {
    /// The most connections the store opens (8 by default). Workers share them: one is
    /// taken for each statement, never while a handler runs.
    pub pool_size: u32,
    /// The schema that holds the queue's tables (`simplepyq` by default). Queues in
    /// different schemas of one database are independent.
    pub schema: String,
    /// How long one statement may run on the server before it is cancelled (30 s by
    /// default); the call then fails with [`Error::Busy`] and changes nothing.
    pub statement_timeout: Duration,
    /// How long to wait for a connection (10 s by default), and how long the network may
    /// stay silent under a request before the connection is given up.
    pub connect_timeout: Duration,
    /// Whether adding work notifies the queues of other processes (`NOTIFY`), so that an
    /// idle worker anywhere starts it within milliseconds instead of at its next poll (on
    /// by default). Each notifying transaction takes a database-wide lock for a moment at
    /// commit; see BENCHMARKS.md for what that costs at high enqueue rates.
    pub notify: bool,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            pool_size: 8,
            schema: "simplepyq".to_owned(),
            statement_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            notify: true,
        }
    }
}

impl PostgresOptions {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the most connections the store opens.
    pub fn pool_size(mut self, size: u32) -> Self {
        self.pool_size = size;
        self
    }

    /// Sets the schema of the queue's tables.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// Sets how long one statement may run.
    pub fn statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = timeout;
        self
    }

    /// Sets how long to wait for a connection.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets whether adding work notifies other processes' queues.
    pub fn notify(mut self, notify: bool) -> Self {
        self.notify = notify;
        self
    }
}

/// A [`Store`] on a PostgreSQL database. Any number of stores, in any number of processes
/// and machines, may share one schema.
#[derive(Debug)]
pub struct PostgresStore {
    /// `None` once dropped (see the `Drop` impl).
    pool: Option<Pool>,
    /// For the listening connection.
    config: postgres::Config,
    schema: String,
    clock: ServerClock,
    /// Tells the queues listening on the schema about added work; `None` when adding work
    /// notifies no one (and this store's queues do not listen either).
    notifier: Option<Arc<listen::Notifier>>,
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        if let Some(n) = &self.notifier {
            n.stop();
        }
        // Closing a connection is a request too (see `off_runtime`): on a runtime's thread,
        // the pool is dropped on a thread of its own.
        if let Some(pool) = self.pool.take().filter(|_| on_runtime()) {
            let spawned = std::thread::Builder::new()
                .name("simplepyq-postgres-close".into())
                .spawn(move || drop(pool));
            // Without a thread, the connections are left to close with the process.
            drop(spawned);
        }
    }
}

/// Whether the calling thread drives an async runtime.
fn on_runtime() -> bool {
    tokio::runtime::Handle::try_current().is_ok()
}

/// Runs `call`, on a thread of its own when called on a thread that drives an async runtime
/// (an async handler, a web server's handler): the driver runs each request on a runtime of
/// its own, which tokio refuses to start there.
fn off_runtime<T: Send>(call: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    if !on_runtime() {
        return call();
    }
    std::thread::scope(|s| {
        let thread = std::thread::Builder::new()
            .name("simplepyq-postgres".into())
            .spawn_scoped(s, call)
            .map_err(Error::Spawn)?;
        thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// [`batch::PROMOTE_PER_CLAIM`], as SQL binds it.
const PROMOTE_LIMIT: i64 = batch::PROMOTE_PER_CLAIM as i64;

/// The columns [`task_from_row`] reads: the task's own, then [`STATE_COLUMNS`].
const COLUMNS: &str = "id, channel, args, created_at, priority, unique_key, status, \
                       retries_left, max_retries, attempts, run_at, lease_until, last_error, \
                       updated_at, lost_runs";
/// The columns of a [`TaskState`], as [`state_from_row`] reads them.
const STATE_COLUMNS: &str = "status, retries_left, max_retries, attempts, run_at, lease_until, \
                             last_error, updated_at, lost_runs";
/// The arrays [`StateArrays`] binds to `$1..$10`: ids, then [`STATE_COLUMNS`].
const STATE_ARRAYS: &str = "$1::bigint[], $2::text[], $3::bigint[], $4::bigint[], \
                            $5::bigint[], $6::bigint[], $7::bigint[], $8::text[], \
                            $9::bigint[], $10::bigint[]";
/// The names of the columns of [`STATE_ARRAYS`] unnested.
const STATE_ALIASES: &str = "id, status, retries_left, max_retries, attempts, run_at, \
                             lease_until, last_error, updated_at, lost_runs";
/// Statuses of unfinished tasks, which hold their unique keys.
const UNFINISHED: &str = "('pending', 'delayed', 'running')";

impl PostgresStore {
    /// Connects to the database at `url` (a `postgres://` URL or a `key=value` connection
    /// string) with default options, creating or migrating the queue's schema.
    ///
    /// Errors, each changing nothing: [`Error::Foreign`] if the schema has a `tasks` table
    /// that is not a queue's, [`Error::SchemaTooNew`] for a schema of a newer simplepyq,
    /// [`Error::Unavailable`] when the server cannot be reached (with the driver's reason),
    /// and [`Error::InvalidConfig`] for a connection string or schema name that is not one.
    pub fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, PostgresOptions::default())
    }

    /// Connects to an existing queue to read it only, as an inspecting tool should: nothing
    /// is created or migrated, and every session is read-only, so each write fails with
    /// [`Error::ReadOnly`]. Errors as [`PostgresStore::connect`], and [`Error::Foreign`]
    /// when the schema holds no queue.
    pub fn connect_read_only(url: &str, options: PostgresOptions) -> Result<Self> {
        Self::open(url, options, true)
    }

    /// Connects to the database at `url` with `options`.
    pub fn connect_with(url: &str, options: PostgresOptions) -> Result<Self> {
        Self::open(url, options, false)
    }

    fn open(url: &str, options: PostgresOptions, read_only: bool) -> Result<Self> {
        off_runtime(move || Self::open_here(url, options, read_only))
    }

    fn open_here(url: &str, options: PostgresOptions, read_only: bool) -> Result<Self> {
        schema::check_name(&options.schema)?;
        if options.pool_size == 0 {
            return Err(Error::InvalidConfig(
                "the pool size must be at least 1".into(),
            ));
        }
        let mut config = postgres::Config::from_str(url)
            .map_err(|e| Error::InvalidConfig(format!("the PostgreSQL connection string: {e}")))?;
        let mut session = config.get_options().unwrap_or_default().to_owned();
        session.push_str(&format!(
            " -c search_path={} -c statement_timeout={}",
            options.schema,
            options.statement_timeout.as_millis()
        ));
        if read_only {
            session.push_str(" -c default_transaction_read_only=on");
        }
        config.options(session.trim_start());
        if config.get_application_name().is_none() {
            config.application_name("simplepyq");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(options.connect_timeout);
        }
        // A link that is cut leaves a request waiting for an answer that never comes: the
        // kernel gives the connection up once data stays unacknowledged this long.
        config.tcp_user_timeout(options.connect_timeout);
        config.keepalives_idle(Duration::from_secs(5));
        let manager = Manager {
            config: config.clone(),
        };
        let pool = r2d2::Pool::builder()
            .max_size(options.pool_size)
            .min_idle(Some(0))
            .test_on_check_out(false)
            .connection_timeout(options.connect_timeout)
            .error_handler(Box::new(r2d2::NopErrorHandler))
            .build_unchecked(manager);
        let mut conn = pool.get().map_err(|e| Error::from(E::from(e)))?;
        if read_only {
            if schema::version(&mut conn.client, &options.schema)? == 0 {
                return Err(Error::Foreign {
                    backend: error::BACKEND,
                    message: format!("the schema {} holds no simplepyq queue", options.schema),
                });
            }
        } else {
            schema::migrate(&mut conn.client, &options.schema)?;
        }
        let clock = ServerClock::measure_system(&mut conn.client)?;
        drop(conn);
        Ok(PostgresStore {
            pool: Some(pool),
            notifier: options
                .notify
                .then(|| listen::Notifier::new(&config, &options.schema)),
            config,
            schema: options.schema,
            clock,
        })
    }

    /// The schema of the queue's tables.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The server's clock as this process sees it: time tasks of this store by it, so that
    /// leases mean the same on every machine. [`simplepyq`'s builder] does so by default.
    ///
    /// [`simplepyq`'s builder]: https://docs.rs/simplepyq
    pub fn server_clock(&self) -> &ServerClock {
        &self.clock
    }

    /// Measures the server's clock again, against `local` instead of the system clock
    /// (a test's skewed clock, say).
    pub fn measure_clock(&self, local: impl Clock) -> Result<ServerClock> {
        off_runtime(|| {
            let mut conn = self.pool().get().map_err(E::from)?;
            Ok(ServerClock::measure(&mut conn.client, Arc::new(local))?)
        })
    }

    fn pool(&self) -> &Pool {
        self.pool
            .as_ref()
            .expect("the pool lives until the store is dropped")
    }

    /// Runs `op` on a pooled connection; runs it again (on another connection) when it lost
    /// a deadlock or serialization race, or when its connection had broken before the
    /// request was sent. Neither had any effect.
    fn run<T: Send>(&self, op: impl FnMut(&mut Db<'_, Client>) -> R<T> + Send) -> Result<T> {
        self.run_with(Resend::Always, op)
    }

    /// [`PostgresStore::run`] for an `op` whose effect `resend` says whether it may be
    /// repeated: a connection that ends while a request is under way (a crashed server, a
    /// cut network) leaves unknown whether the server ran it.
    fn run_with<T: Send>(
        &self,
        resend: Resend,
        mut op: impl FnMut(&mut Db<'_, Client>) -> R<T> + Send,
    ) -> Result<T> {
        off_runtime(|| {
            let mut tries = 0;
            loop {
                tries += 1;
                let mut conn = self.pool().get().map_err(E::from)?;
                let conn = &mut *conn;
                // Known to be closed before anything was sent: another connection, at no
                // risk (the pool drops this one).
                if conn.client.is_closed() && tries < 5 {
                    continue;
                }
                if self.clock.claim_remeasure() {
                    // A failed measurement keeps the last one; the next call tries again.
                    let _ = self.clock.remeasure(&mut conn.client);
                }
                let result = op(&mut Db {
                    client: &mut conn.client,
                    statements: &mut conn.statements,
                });
                match result {
                    Err(e) if tries < 5 && e.is_conflict() => continue,
                    Err(e) if tries < 5 && e.is_unread() => continue,
                    Err(e) if tries < 5 && resend == Resend::Always && e.is_unsent() => continue,
                    other => return other.map_err(Error::from),
                }
            }
        })
    }

    /// Runs `op` in a transaction, as [`PostgresStore::run`] does.
    fn transaction<T: Send>(&self, op: impl FnMut(&mut Tx<'_, '_>) -> R<T> + Send) -> Result<T> {
        self.transaction_with(Resend::Always, op)
    }

    /// Runs `op` in a transaction, as [`PostgresStore::run_with`] does.
    fn transaction_with<T: Send>(
        &self,
        resend: Resend,
        mut op: impl FnMut(&mut Tx<'_, '_>) -> R<T> + Send,
    ) -> Result<T> {
        self.run_with(resend, |db| {
            let mut tx = db.client.transaction()?;
            let value = op(&mut Db {
                client: &mut tx,
                statements: db.statements,
            })?;
            tx.commit()?;
            Ok(value)
        })
    }
}

/// Whether a store call may be sent again after its connection ended while it was under
/// way, with its effect unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resend {
    /// Yes: running it twice does what running it once does (a renewal, a guarded outcome,
    /// a claim whose first answer is lost either way).
    Always,
    /// Only if it provably never reached the server (an insert).
    IfUnsent,
}

fn to_u32(what: &str, v: i64) -> R<u32> {
    u32::try_from(v).map_err(|_| bad_value(what, v))
}

fn millis(t: Timestamp) -> i64 {
    t.as_millis()
}

impl PostgresStore {
    /// Tells the queues listening (in any process) that `channels` have work, once the
    /// change that added it committed.
    fn announce<'a>(&self, channels: impl IntoIterator<Item = &'a str>) {
        if let Some(n) = &self.notifier {
            n.mark(channels);
        }
    }
}

/// Reads the columns of [`STATE_COLUMNS`] starting at column `at`.
fn state_from_row(r: &Row, at: usize) -> R<TaskState> {
    let status: &str = r.try_get(at)?;
    Ok(TaskState {
        status: status.parse().map_err(|_| bad_value("status", status))?,
        retries_left: to_u32("retries_left", r.try_get(at + 1)?)?,
        max_retries: to_u32("max_retries", r.try_get(at + 2)?)?,
        attempts: to_u32("attempts", r.try_get(at + 3)?)?,
        run_at: Timestamp::from_millis(r.try_get(at + 4)?),
        lease_until: r
            .try_get::<_, Option<i64>>(at + 5)?
            .map(Timestamp::from_millis),
        last_error: r.try_get(at + 6)?,
        updated_at: Timestamp::from_millis(r.try_get(at + 7)?),
        lost_runs: to_u32("lost_runs", r.try_get(at + 8)?)?,
    })
}

/// Reads the columns of [`COLUMNS`].
fn task_from_row(r: &Row) -> R<Task> {
    Ok(Task {
        id: TaskId::new(r.try_get(0)?),
        channel: r.try_get(1)?,
        args: r.try_get(2)?,
        created_at: Timestamp::from_millis(r.try_get(3)?),
        priority: r.try_get(4)?,
        unique_key: r.try_get(5)?,
        state: state_from_row(r, 6)?,
    })
}

fn tasks_from_rows(rows: &[Row]) -> R<Vec<Task>> {
    rows.iter().map(task_from_row).collect()
}

/// A transaction with its connection's prepared statements.
type Tx<'a, 'c> = Db<'a, Transaction<'c>>;

/// Task states as the arrays of [`STATE_ARRAYS`], one per column.
#[derive(Default)]
struct StateArrays {
    ids: Vec<i64>,
    status: Vec<&'static str>,
    retries_left: Vec<i64>,
    max_retries: Vec<i64>,
    attempts: Vec<i64>,
    run_at: Vec<i64>,
    lease_until: Vec<Option<i64>>,
    last_error: Vec<Option<String>>,
    updated_at: Vec<i64>,
    lost_runs: Vec<i64>,
}

impl StateArrays {
    /// The arrays of the changes of a [`batch`] rule.
    fn of(changes: &[batch::Change]) -> Self {
        let mut arrays = StateArrays::default();
        for (id, state) in changes {
            arrays.push(*id, state);
        }
        arrays
    }

    fn push(&mut self, id: TaskId, s: &TaskState) {
        self.ids.push(id.get());
        self.status.push(s.status.as_str());
        self.retries_left.push(i64::from(s.retries_left));
        self.max_retries.push(i64::from(s.max_retries));
        self.attempts.push(i64::from(s.attempts));
        self.run_at.push(millis(s.run_at));
        self.lease_until.push(s.lease_until.map(millis));
        self.last_error.push(s.last_error.clone());
        self.updated_at.push(millis(s.updated_at));
        self.lost_runs.push(i64::from(s.lost_runs));
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 10] {
        [
            &self.ids,
            &self.status,
            &self.retries_left,
            &self.max_retries,
            &self.attempts,
            &self.run_at,
            &self.lease_until,
            &self.last_error,
            &self.updated_at,
            &self.lost_runs,
        ]
    }

    /// Stores each state in its task's row.
    fn save(&self, tx: &mut Tx<'_, '_>) -> R<()> {
        if self.ids.is_empty() {
            return Ok(());
        }
        tx.execute(
            &format!(
                "UPDATE tasks t SET status = u.status, retries_left = u.retries_left, \
                 max_retries = u.max_retries, attempts = u.attempts, run_at = u.run_at, \
                 lease_until = u.lease_until, last_error = u.last_error, \
                 updated_at = u.updated_at, lost_runs = u.lost_runs \
                 FROM unnest({STATE_ARRAYS}) AS u({STATE_ALIASES}) WHERE t.id = u.id"
            ),
            &self.params(),
        )?;
        Ok(())
    }
}

/// Totals as arrays, one per figure: done, failed, retried, lease lost.
struct TotalsArrays([Vec<i64>; 4]);

impl TotalsArrays {
    fn of(totals: impl Iterator<Item = Totals>) -> Self {
        let mut arrays: [Vec<i64>; 4] = Default::default();
        for t in totals {
            for (array, figure) in arrays.iter_mut().zip(t.to_i64s()) {
                array.push(figure);
            }
        }
        TotalsArrays(arrays)
    }

    fn params(&self) -> [&(dyn ToSql + Sync); 4] {
        let [done, failed, retried, lease_lost] = &self.0;
        [done, failed, retried, lease_lost]
    }
}

/// A locked task: its id, channel and state.
type Locked = (TaskId, String, TaskState);

/// Locks the tasks `ids` (in id order, so that two callers never deadlock) and reads their
/// channels and states.
fn lock_states(tx: &mut Tx<'_, '_>, ids: &[i64]) -> R<Vec<Locked>> {
    let rows = tx.query(
        &format!(
            "SELECT id, channel, {STATE_COLUMNS} FROM tasks WHERE id = ANY($1) \
             ORDER BY id FOR UPDATE"
        ),
        &[&ids],
    )?;
    rows.iter()
        .map(|r| {
            Ok((
                TaskId::new(r.try_get(0)?),
                r.try_get(1)?,
                state_from_row(r, 2)?,
            ))
        })
        .collect()
}

/// Applies `event` to the task of each claim still held, in one transaction; returns the
/// channels of those tasks.
fn on_held(tx: &mut Tx<'_, '_>, claims: &[Claim], event: &Event) -> R<Vec<String>> {
    let ids: Vec<i64> = claims.iter().map(|c| c.id.get()).collect();
    let mut locked: HashMap<TaskId, (String, TaskState)> = lock_states(tx, &ids)?
        .into_iter()
        .map(|(id, channel, state)| (id, (channel, state)))
        .collect();
    let changes = batch::on_held(claims, event, |id| {
        Ok(locked.get(&id).map(|(_, s)| s.clone()))
    })?;
    StateArrays::of(&changes).save(tx)?;
    Ok(changes
        .iter()
        .filter_map(|(id, _)| locked.remove(id).map(|(channel, _)| channel))
        .collect())
}

/// `AND channel = $n` when a channel is given.
fn channel_filter(channel: Option<&str>, n: usize) -> String {
    channel.map_or_else(String::new, |_| format!(" AND channel = ${n}"))
}

impl PostgresStore {
    /// Inserts one task without a unique key: the statement of a single enqueue, simpler
    /// to run than the `unnest` of a batch.
    fn insert_one<C: GenericClient>(
        tx: &mut Db<'_, C>,
        task: &NewTask,
        now: Timestamp,
    ) -> R<TaskId> {
        let s = task.initial_state(now);
        let row = tx.query_one(
            &format!(
                "INSERT INTO tasks (channel, args, created_at, priority, unique_key, \
                 {STATE_COLUMNS}) \
                 VALUES ($1, $2, $3, $4, NULL, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
                 RETURNING id"
            ),
            &[
                &task.channel,
                &task.args,
                &now.as_millis(),
                &task.priority,
                &s.status.as_str(),
                &i64::from(s.retries_left),
                &i64::from(s.max_retries),
                &i64::from(s.attempts),
                &millis(s.run_at),
                &s.lease_until.map(millis),
                &s.last_error,
                &millis(s.updated_at),
                &i64::from(s.lost_runs),
            ],
        )?;
        Ok(TaskId::new(row.try_get(0)?))
    }

    /// Inserts `tasks` (none of which repeats an earlier one's key) in `tx`; a task whose
    /// key an unfinished task holds gets that task's id instead. Returns the ids by
    /// position, each `Some`.
    fn insert_or_hold(
        tx: &mut Tx<'_, '_>,
        tasks: &[&NewTask],
        now: Timestamp,
    ) -> R<Vec<Option<TaskId>>> {
        if tasks.iter().all(|t| t.unique_key.is_none()) {
            return Self::insert(tx, tasks, now);
        }
        // A key an unfinished task holds names that task; a task that took the key between
        // the look and the insert is found by the next look.
        let keys: Vec<Key<'_>> = tasks
            .iter()
            .map(|t| key(&t.channel, &t.unique_key))
            .collect();
        let mut ids = holders(tx, &keys)?;
        loop {
            let missing: Vec<usize> = (0..tasks.len()).filter(|&i| ids[i].is_none()).collect();
            if missing.is_empty() {
                return Ok(ids);
            }
            let batch: Vec<&NewTask> = missing.iter().map(|&i| tasks[i]).collect();
            let inserted = Self::insert(tx, &batch, now)?;
            if inserted.iter().any(Option::is_none) {
                let batch_keys: Vec<Key<'_>> = missing.iter().map(|&i| keys[i]).collect();
                let held = holders(tx, &batch_keys)?;
                for ((&i, new), old) in missing.iter().zip(inserted).zip(held) {
                    ids[i] = new.or(old);
                }
            } else {
                for (&i, new) in missing.iter().zip(inserted) {
                    ids[i] = new;
                }
            }
        }
    }

    /// Inserts `tasks` (none of which repeats an earlier one's key) in one statement. A
    /// task whose key an unfinished task holds is skipped. Returns the ids of the inserted
    /// tasks by position.
    fn insert<C: GenericClient>(
        tx: &mut Db<'_, C>,
        tasks: &[&NewTask],
        now: Timestamp,
    ) -> R<Vec<Option<TaskId>>> {
        if let [task] = tasks
            && task.unique_key.is_none()
        {
            return Self::insert_one(tx, task, now).map(|id| vec![Some(id)]);
        }
        let mut states = StateArrays::default();
        for t in tasks {
            states.push(TaskId::new(0), &t.initial_state(now));
        }
        let channels: Vec<&str> = tasks.iter().map(|t| t.channel.as_str()).collect();
        let args: Vec<&[u8]> = tasks.iter().map(|t| t.args.as_slice()).collect();
        let priorities: Vec<i32> = tasks.iter().map(|t| t.priority).collect();
        let keys: Vec<Option<&str>> = tasks.iter().map(|t| t.unique_key.as_deref()).collect();
        let created_at = now.as_millis();
        let mut params = states.params().to_vec();
        params.extend_from_slice(&[&channels, &args, &priorities, &keys, &created_at]);
        let insert = format!(
            "INSERT INTO tasks (channel, args, created_at, priority, unique_key, \
                 {STATE_COLUMNS}) \
                 SELECT u.channel, u.args, $15, u.priority, u.unique_key, u.status, \
                   u.retries_left, u.max_retries, u.attempts, u.run_at, u.lease_until, \
                   u.last_error, u.updated_at, u.lost_runs \
                 FROM unnest({STATE_ARRAYS}, $11::text[], $12::bytea[], $13::int[], \
                   $14::text[]) WITH ORDINALITY \
                   AS u({STATE_ALIASES}, channel, args, priority, unique_key, ord) \
                 ORDER BY u.ord \
                 ON CONFLICT (channel, unique_key) \
                   WHERE unique_key IS NOT NULL AND status IN {UNFINISHED} DO NOTHING \
                 RETURNING id, channel, unique_key"
        );
        let rows = tx.query(&insert, &params)?;
        // Ids are drawn in insertion order; a task without a key is never skipped, so the
        // n-th such id is the n-th such task's.
        let mut inserted: Vec<(i64, String, Option<String>)> = rows
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect::<R<_>>()?;
        inserted.sort_unstable_by_key(|(id, ..)| *id);
        let mut ids = vec![None; tasks.len()];
        let mut keyless = (0..tasks.len()).filter(|&i| tasks[i].unique_key.is_none());
        for (id, channel, key) in inserted {
            let at = match key {
                Some(key) => tasks.iter().position(|t| {
                    t.channel == channel && t.unique_key.as_deref() == Some(key.as_str())
                }),
                None => keyless.next(),
            };
            let at = at.ok_or_else(|| bad_value("id", id))?;
            ids[at] = Some(TaskId::new(id));
        }
        Ok(ids)
    }
}

/// A task's channel and unique key.
type Key<'a> = (&'a str, Option<&'a str>);

fn key<'a>(channel: &'a str, unique_key: &'a Option<String>) -> Key<'a> {
    (channel, unique_key.as_deref())
}

/// The ids of the unfinished tasks holding `keys`, by position (`None` for a task without
/// a key).
fn holders(tx: &mut Tx<'_, '_>, keys: &[Key<'_>]) -> R<Vec<Option<TaskId>>> {
    let (channels, keys): (Vec<&str>, Vec<Option<&str>>) = keys.iter().copied().unzip();
    let rows = tx.query(
        &format!(
            "SELECT k.ord, t.id FROM unnest($1::text[], $2::text[]) WITH ORDINALITY \
               AS k(channel, unique_key, ord) \
             JOIN tasks t ON t.channel = k.channel AND t.unique_key = k.unique_key \
             WHERE t.status IN {UNFINISHED}"
        ),
        &[&channels, &keys],
    )?;
    let mut ids = vec![None; channels.len()];
    for r in rows {
        let ord: i64 = r.try_get(0)?;
        let at = usize::try_from(ord - 1).map_err(|_| bad_value("ordinality", ord))?;
        if let Some(slot) = ids.get_mut(at) {
            *slot = Some(TaskId::new(r.try_get(1)?));
        }
    }
    Ok(ids)
}

impl Store for PostgresStore {
    fn clock(&self) -> Option<Arc<dyn Clock>> {
        Some(Arc::new(self.clock.clone()))
    }

    fn watch(&self, wake: Wake) -> Option<Watch> {
        let topic = self.notifier.as_ref()?.topic.clone();
        listen::watch(self.config.clone(), topic, wake)
    }

    fn enqueue(&self, tasks: &[NewTask], now: Timestamp) -> Result<Vec<TaskId>> {
        for t in tasks {
            validate_channel(&t.channel)?;
        }
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        let repeats = batch::repeated_keys(tasks);
        let firsts: Vec<&NewTask> = tasks
            .iter()
            .zip(&repeats)
            .filter(|(_, r)| r.is_none())
            .map(|(t, _)| t)
            .collect();
        // Inserted twice, a task would run twice: an insert whose connection broke while
        // it was under way is not sent again (the caller learns that its effect is unknown).
        let ids = if firsts.iter().all(|t| t.unique_key.is_none()) {
            self.run_with(Resend::IfUnsent, |c| Self::insert(c, &firsts, now))?
        } else {
            self.transaction_with(Resend::IfUnsent, |tx| {
                Self::insert_or_hold(tx, &firsts, now)
            })?
        };
        self.announce(firsts.iter().map(|t| t.channel.as_str()));
        // Back to every position: a repeated key gets its first task's id.
        let mut firsts_ids = ids.into_iter();
        let mut all: Vec<TaskId> = Vec::with_capacity(tasks.len());
        for repeat in &repeats {
            let id = match repeat {
                Some(first) => all[*first],
                None => firsts_ids
                    .next()
                    .flatten()
                    .ok_or_else(|| Error::from(bad_value("id", "none")))?,
            };
            all.push(id);
        }
        Ok(all)
    }

    fn claim(
        &self,
        channel: &str,
        limit: usize,
        now: Timestamp,
        lease_until: Timestamp,
    ) -> Result<Vec<Task>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let (now, lease_until) = (millis(now), millis(lease_until));
        let mut tasks = self.run(|c| {
            // Each statement is Event::Promote, then Event::Claim, on many rows at once.
            c.execute(sql::PROMOTE, &[&channel, &now, &PROMOTE_LIMIT])?;
            let rows = c.query(sql::CLAIM, &[&channel, &now, &limit, &lease_until])?;
            tasks_from_rows(&rows)
        })?;
        tasks.sort_unstable_by_key(batch::claim_order);
        Ok(tasks)
    }

    fn extend_leases(&self, claims: &[Claim], lease_until: Timestamp) -> Result<usize> {
        if claims.is_empty() {
            return Ok(0);
        }
        let ids: Vec<i64> = claims.iter().map(|c| c.id.get()).collect();
        let attempts: Vec<i64> = claims.iter().map(|c| i64::from(c.attempt)).collect();
        let lease_until = millis(lease_until);
        self.run(|c| c.execute(sql::EXTEND, &[&ids, &attempts, &lease_until]))
    }

    fn finish_many(
        &self,
        results: &[(Claim, Outcome)],
        now: Timestamp,
    ) -> Result<Vec<Result<Status>>> {
        let ids: Vec<i64> = results.iter().map(|(c, _)| c.id.get()).collect();
        self.run(|db| {
            // Read without a lock, then write guarded by each claim: while a claim is held
            // its task changes only in its lease, which an outcome clears, so what `apply`
            // made of the state read is right if the claim still holds at the write. Two
            // round trips, no transaction: the write counts the totals of the rows it wrote.
            let rows = db.query(sql::READ_STATES, &[&ids])?;
            let mut states = HashMap::with_capacity(rows.len());
            for r in &rows {
                states.insert(TaskId::new(r.try_get(0)?), state_from_row(r, 1)?);
            }
            let batch::Finish {
                mut statuses,
                changes,
                totals,
            } = batch::finish(results, now, |id| Ok(states.get(&id).cloned()))?;
            let next = StateArrays::of(&changes);
            // Each change is of a claim that held at the read: its attempt is the one read.
            let attempts: Vec<i64> = changes
                .iter()
                .map(|(id, _)| states.get(id).map_or(0, |s| i64::from(s.attempts)))
                .collect();
            if next.ids.is_empty() {
                return Ok(statuses);
            }
            let counted = TotalsArrays::of(totals.into_iter());
            let mut params = next.params().to_vec();
            params.push(&attempts);
            params.extend(counted.params());
            let written: HashSet<i64> = db
                .query(sql::FINISH, &params)?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?;
            // A claim that lost its lease between the read and the write.
            for ((claim, _), status) in results.iter().zip(&mut statuses) {
                if status.is_ok() && !written.contains(&claim.id.get()) {
                    *status = Err(batch::lease_lost(claim));
                }
            }
            Ok(statuses)
        })
    }

    fn release(&self, claims: &[Claim], now: Timestamp) -> Result<usize> {
        if claims.is_empty() {
            return Ok(0);
        }
        let channels = self.transaction(|tx| on_held(tx, claims, &Event::Release { now }))?;
        // Other processes' workers may take them.
        self.announce(channels.iter().map(String::as_str));
        Ok(channels.len())
    }

    fn recover_expired(&self, now: Timestamp, max_lost_runs: u32) -> Result<usize> {
        let at = millis(now);
        let any = self.run(|c| {
            Ok(c.query_one(sql::ANY_EXPIRED, &[&at])?
                .try_get::<_, bool>(0)?)
        })?;
        if !any {
            return Ok(0);
        }
        let event = Event::Expire { now, max_lost_runs };
        let channels = self.transaction(|tx| {
            // A lease being renewed or a task being finished right now is skipped: its
            // holder is alive.
            let rows = tx.query(sql::LOCK_EXPIRED, &[&at])?;
            let mut next = StateArrays::default();
            let mut channels = Vec::with_capacity(rows.len());
            let mut counted = Vec::with_capacity(rows.len());
            for r in &rows {
                let id = TaskId::new(r.try_get(0)?);
                channels.push(r.try_get::<_, String>(1)?);
                let state = state_from_row(r, 2)?;
                let after = apply(&state, &event).map_err(|r| r.into_error(id))?;
                counted.push(Totals::of(&event, after.status));
                next.push(id, &after);
            }
            next.save(tx)?;
            let sums = Totals::by_channel(channels.iter().map(String::as_str).zip(counted));
            let names: Vec<&str> = sums.keys().map(String::as_str).collect();
            let figures = TotalsArrays::of(sums.values().copied());
            let mut params: Vec<&(dyn ToSql + Sync)> = vec![&names];
            params.extend(figures.params());
            tx.execute(sql::ADD_TOTALS, &params)?;
            Ok(channels)
        })?;
        self.announce(channels.iter().map(String::as_str));
        Ok(channels.len())
    }

    fn clear_failed(&self, channel: Option<&str>) -> Result<usize> {
        let sql = format!(
            "DELETE FROM tasks WHERE id IN (SELECT id FROM tasks \
             WHERE status = 'failed'{} LIMIT {PURGE_BATCH})",
            channel_filter(channel, 1)
        );
        batch::in_batches(|| self.run(|c| execute(c, &sql, channel, &[])))
    }

    fn requeue_failed(
        &self,
        channel: Option<&str>,
        retries: Option<u32>,
        now: Timestamp,
    ) -> Result<usize> {
        // A batch at a time, in the order of `tasks_failed`, from past the last one seen (a
        // task whose unique key is held stays failed).
        let sql = format!(
            "SELECT {COLUMNS} FROM tasks WHERE status = 'failed' AND (channel, id) > ($1, $2){} \
             ORDER BY channel, id LIMIT {PURGE_BATCH} FOR UPDATE",
            channel_filter(channel, 3)
        );
        let mut after = (channel.unwrap_or_default().to_owned(), 0i64);
        let mut total = 0;
        loop {
            let (seen, last, channels) = self.transaction(|tx| {
                let rows = match channel {
                    Some(c) => tx.query(&sql, &[&after.0, &after.1, &c])?,
                    None => tx.query(&sql, &[&after.0, &after.1])?,
                };
                let failed = tasks_from_rows(&rows)?;
                let keys: Vec<Key<'_>> = failed
                    .iter()
                    .map(|t| key(&t.channel, &t.unique_key))
                    .collect();
                let held: HashSet<Key<'_>> = keys
                    .iter()
                    .zip(holders(tx, &keys)?)
                    .filter_map(|(k, holder)| holder.map(|_| *k))
                    .collect();
                let changes = batch::requeue(&failed, now, retries, |channel, key| {
                    Ok(held.contains(&(channel, Some(key))))
                })?;
                StateArrays::of(&changes).save(tx)?;
                let channel_of: HashMap<TaskId, &str> =
                    failed.iter().map(|t| (t.id, t.channel.as_str())).collect();
                let last = failed.last().map(|t| (t.channel.clone(), t.id.get()));
                let channels = changes
                    .iter()
                    .filter_map(|(id, _)| channel_of.get(id).map(|c| (*c).to_owned()))
                    .collect::<Vec<String>>();
                Ok((failed.len(), last, channels))
            })?;
            self.announce(channels.iter().map(String::as_str));
            total += channels.len();
            match last {
                Some(last) if seen == batch::BULK_BATCH => after = last,
                _ => return Ok(total),
            }
        }
    }

    fn remove_channel(&self, channel: &str) -> Result<usize> {
        let mut total = 0;
        let mut from = 0i64;
        loop {
            // The id REMOVE_RANGE rows on (by the primary key), or none past the last rows.
            let to: Option<i64> = self.run(|c| {
                let rows = c.query(
                    &format!(
                        "SELECT id FROM tasks WHERE id >= $1 ORDER BY id \
                         OFFSET {REMOVE_RANGE} LIMIT 1"
                    ),
                    &[&from],
                )?;
                Ok(rows.first().map(|r| r.try_get(0)).transpose()?)
            })?;
            let until = to.unwrap_or(i64::MAX);
            total += self.run(|c| {
                c.execute(
                    "DELETE FROM tasks WHERE channel = $1 AND id >= $2 AND id < $3",
                    &[&channel, &from, &until],
                )
            })?;
            match to {
                Some(to) => from = to,
                None => return Ok(total),
            }
        }
    }

    fn purge_done(&self, channel: Option<&str>, before: Timestamp) -> Result<usize> {
        let sql = format!(
            "DELETE FROM tasks WHERE id IN (SELECT id FROM tasks \
             WHERE status = 'done' AND updated_at < $1{} LIMIT {PURGE_BATCH})",
            channel_filter(channel, 2)
        );
        let before = millis(before);
        batch::in_batches(|| self.run(|c| execute(c, &sql, channel, &[&before])))
    }

    fn channels(&self) -> Result<Vec<String>> {
        self.run(|c| {
            let rows = c.query("SELECT DISTINCT channel FROM tasks ORDER BY channel", &[])?;
            Ok(rows
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?)
        })
    }

    fn counts(&self, channel: Option<&str>) -> Result<Counts> {
        let sql = format!(
            "SELECT status, count(*) FROM tasks WHERE true{} GROUP BY status",
            channel_filter(channel, 1)
        );
        self.run(|c| {
            let rows = match channel {
                Some(ch) => c.query(&sql, &[&ch])?,
                None => c.query(&sql, &[])?,
            };
            let mut counts = Counts::default();
            for r in &rows {
                let status: &str = r.try_get(0)?;
                let status: Status = status.parse().map_err(|_| bad_value("status", status))?;
                let n: i64 = r.try_get(1)?;
                *counts.get_mut(status) = usize::try_from(n).map_err(|_| bad_value("count", n))?;
            }
            Ok(counts)
        })
    }

    fn next_wakeup(&self, channel: &str) -> Result<Option<Timestamp>> {
        self.run(|c| {
            let t: Option<i64> = c.query_one(sql::NEXT_WAKEUP, &[&channel])?.try_get(0)?;
            Ok(t.map(Timestamp::from_millis))
        })
    }

    fn get(&self, id: TaskId) -> Result<Option<Task>> {
        self.run(|c| {
            let row = c.query_opt(
                &format!("SELECT {COLUMNS} FROM tasks WHERE id = $1"),
                &[&id.get()],
            )?;
            row.as_ref().map(task_from_row).transpose()
        })
    }

    fn list(&self, filter: &ListFilter) -> Result<Vec<Task>> {
        let after = filter.after.map_or(0, TaskId::get);
        let status = filter.status.map(Status::as_str);
        let limit = i64::try_from(filter.limit).unwrap_or(i64::MAX);
        self.run(|c| {
            let rows = c.query(
                &format!(
                    "SELECT {COLUMNS} FROM tasks WHERE id > $1 \
                     AND ($2::text IS NULL OR channel = $2) \
                     AND ($3::text IS NULL OR status = $3) ORDER BY id LIMIT $4"
                ),
                &[&after, &filter.channel, &status, &limit],
            )?;
            tasks_from_rows(&rows)
        })
    }

    fn cancel(&self, id: TaskId) -> Result<()> {
        self.transaction(|tx| {
            let states = lock_states(tx, &[id.get()])?;
            let (_, _, state) = states.first().ok_or(Error::NotFound(id))?;
            cancel(state).map_err(|r| r.into_error(id))?;
            tx.execute("DELETE FROM tasks WHERE id = $1", &[&id.get()])?;
            Ok(())
        })
    }

    fn fire_schedule(
        &self,
        name: &str,
        at: Timestamp,
        task: &NewTask,
        now: Timestamp,
    ) -> Result<Option<TaskId>> {
        validate_channel(&task.channel)?;
        let id = self.transaction(|tx| {
            // The row lock makes concurrent firings wait; the condition is read again on
            // the row as the first one committed it.
            let fired = tx.execute(
                "INSERT INTO schedules (name, last_fired) VALUES ($1, $2) \
                 ON CONFLICT (name) DO UPDATE SET last_fired = EXCLUDED.last_fired \
                 WHERE schedules.last_fired < EXCLUDED.last_fired",
                &[&name, &at.as_millis()],
            )?;
            if fired == 0 {
                return Ok(None);
            }
            Ok(Self::insert_or_hold(tx, &[task], now)?.pop().flatten())
        })?;
        if id.is_some() {
            self.announce([task.channel.as_str()]);
        }
        Ok(id)
    }

    fn finished(
        &self,
        channel: Option<&str>,
        since: Timestamp,
        width: Duration,
    ) -> Result<Vec<Finished>> {
        // Over the done index on updated_at, and the failed one.
        let sql = format!(
            "SELECT updated_at - updated_at % $2, status, count(*) FROM tasks \
             WHERE status IN ('done', 'failed') AND updated_at >= $1{} GROUP BY 1, 2",
            channel_filter(channel, 3)
        );
        let width_ms = Finished::width_ms(width);
        let since = millis(since);
        self.run(|c| {
            let rows = match channel {
                Some(ch) => c.query(&sql, &[&since, &width_ms, &ch])?,
                None => c.query(&sql, &[&since, &width_ms])?,
            };
            let mut counted = Vec::with_capacity(rows.len());
            for r in &rows {
                let status: &str = r.try_get(1)?;
                let status: Status = status.parse().map_err(|_| bad_value("status", status))?;
                let n: i64 = r.try_get(2)?;
                let n = usize::try_from(n).map_err(|_| bad_value("count", n))?;
                counted.push((Timestamp::from_millis(r.try_get(0)?), status, n));
            }
            Ok(Finished::tally(counted, width))
        })
    }

    fn totals(&self) -> Result<BTreeMap<String, Totals>> {
        self.run(|c| {
            let mut totals = BTreeMap::new();
            for r in c.query(sql::TOTALS, &[])? {
                let figures = [r.try_get(1)?, r.try_get(2)?, r.try_get(3)?, r.try_get(4)?];
                let t = Totals::from_i64s(figures).map_err(|v| bad_value("totals", v))?;
                totals.insert(r.try_get(0)?, t);
            }
            Ok(totals)
        })
    }

    fn last_fired(&self, name: &str) -> Result<Option<Timestamp>> {
        self.run(|c| {
            let row = c.query_opt("SELECT last_fired FROM schedules WHERE name = $1", &[&name])?;
            Ok(row
                .map(|r| r.try_get::<_, i64>(0))
                .transpose()?
                .map(Timestamp::from_millis))
        })
    }
}

/// Runs `sql` whose last parameter is the optional channel; returns the rows it changed.
fn execute(
    c: &mut Db<'_, Client>,
    sql: &str,
    channel: Option<&str>,
    params: &[&(dyn ToSql + Sync)],
) -> R<usize> {
    let mut all = params.to_vec();
    if let Some(ch) = &channel {
        all.push(ch);
    }
    c.execute(sql, &all)
}

/// The statements that change many rows at once, public to be read and `EXPLAIN`ed.
///
/// Each of `PROMOTE`, `CLAIM` and `EXTEND` does what [`simplepyq_core::transition::apply`]
/// does for its event, for every row it touches (the tests compare them): a claim is then
/// one statement, and a lease renewal of all of a process's claims another. Every other
/// change is computed by `apply` itself and written back.
pub mod sql {
    /// `Event::Promote` at $2 for up to $3 due delayed tasks of channel $1, earliest run-at
    /// (then id) first. Rows another claimer is promoting are skipped, never waited for.
    pub const PROMOTE: &str = "UPDATE tasks SET status = 'pending', updated_at = $2 \
         WHERE id = ANY (ARRAY ( \
           SELECT id FROM tasks \
           WHERE channel = $1 AND status = 'delayed' AND run_at <= $2 \
           ORDER BY run_at, id \
           LIMIT $3 \
           FOR UPDATE SKIP LOCKED))";

    /// `Event::Claim` at $2, leased until $4, of up to $3 due pending tasks of channel $1 in
    /// claim order. Rows another claimer locked are skipped, never waited for. The update
    /// finds its rows by id in an array: a join with the CTE would, in the generic plan a
    /// prepared statement gets, be a hash join over a scan of the whole table.
    pub const CLAIM: &str = "WITH due AS MATERIALIZED ( \
           SELECT id FROM tasks \
           WHERE channel = $1 AND status = 'pending' AND run_at <= $2 \
           ORDER BY priority DESC, run_at, id \
           LIMIT $3 \
           FOR UPDATE SKIP LOCKED) \
         UPDATE tasks t SET status = 'running', attempts = t.attempts + 1, \
           lease_until = $4, updated_at = $2 \
         WHERE t.id = ANY (ARRAY (SELECT id FROM due)) \
         RETURNING t.id, t.channel, t.args, t.created_at, t.priority, t.unique_key, \
           t.status, t.retries_left, t.max_retries, t.attempts, t.run_at, t.lease_until, \
           t.last_error, t.updated_at, t.lost_runs";

    /// `Event::Extend` to $3 of the claims (ids $1, attempts $2) still held. It first
    /// locks the rows it can without waiting (the array is built before the update runs)
    /// and renews only those: a row locked elsewhere is being finished or recovered, and a
    /// renewal skipped once is made at the next one. Never waiting, it cannot deadlock with
    /// the statements that record outcomes, which do wait.
    pub const EXTEND: &str = "UPDATE tasks t \
         SET lease_until = greatest(t.lease_until, $3) \
         FROM unnest($1::bigint[], $2::bigint[]) AS c(id, attempt) \
         WHERE t.id = c.id AND t.status = 'running' AND t.attempts = c.attempt \
         AND t.id = ANY (ARRAY (SELECT id FROM tasks WHERE id = ANY ($1) \
           FOR UPDATE SKIP LOCKED))";

    /// Reads the states of the tasks with ids $1.
    pub const READ_STATES: &str = "SELECT id, status, retries_left, max_retries, attempts, \
         run_at, lease_until, last_error, updated_at, lost_runs FROM tasks WHERE id = ANY ($1)";

    /// Adds to the totals of channels: ends every statement that does so.
    macro_rules! add_totals {
        ($rows:literal) => {
            concat!(
                "INSERT INTO totals AS s (channel, shard, done, failed, retried, lease_lost) ",
                $rows,
                " ON CONFLICT (channel, shard) DO UPDATE SET done = s.done + excluded.done, \
                 failed = s.failed + excluded.failed, retried = s.retried + excluded.retried, \
                 lease_lost = s.lease_lost + excluded.lease_lost"
            )
        };
    }

    /// Writes the states of `StateArrays` ($1..$10) to the tasks whose claims (attempts $11)
    /// still hold, adds what each written one counts (done, failed, retried and lease-lost
    /// arrays $12..$15) to its channel's totals, and returns the ids written. Rows of
    /// totals are locked in channel order, after every task row: two finishing
    /// statements cannot wait on each other.
    pub const FINISH: &str = concat!(
        "WITH saved AS (UPDATE tasks t SET status = u.status, \
         retries_left = u.retries_left, max_retries = u.max_retries, attempts = u.attempts, \
         run_at = u.run_at, lease_until = u.lease_until, last_error = u.last_error, \
         updated_at = u.updated_at, lost_runs = u.lost_runs \
         FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[], \
           $6::bigint[], $7::bigint[], $8::text[], $9::bigint[], $10::bigint[], $11::bigint[], \
           $12::bigint[], $13::bigint[], $14::bigint[], $15::bigint[]) \
           AS u(id, status, retries_left, max_retries, attempts, run_at, lease_until, \
           last_error, updated_at, lost_runs, held, done, failed, retried, lease_lost) \
         WHERE t.id = u.id AND t.status = 'running' AND t.attempts = u.held \
         RETURNING t.id, t.channel, u.done, u.failed, u.retried, u.lease_lost), \
         counted AS (",
        add_totals!(
            "SELECT channel, pg_backend_pid() % 16, sum(done)::bigint, sum(failed)::bigint, \
             sum(retried)::bigint, sum(lease_lost)::bigint FROM saved GROUP BY channel \
             HAVING sum(done + failed + retried + lease_lost) > 0 ORDER BY channel"
        ),
        ") SELECT id FROM saved"
    );

    /// Adds totals (channels $1, done, failed, retried and lease-lost arrays $2..$5) to
    /// their channels' totals, in channel order.
    pub const ADD_TOTALS: &str = add_totals!(
        "SELECT c, pg_backend_pid() % 16, d, f, r, l FROM unnest($1::text[], $2::bigint[], \
         $3::bigint[], $4::bigint[], $5::bigint[]) AS u(c, d, f, r, l) ORDER BY c"
    );

    /// Every channel's totals, in name order.
    pub const TOTALS: &str = "SELECT channel, sum(done)::bigint, sum(failed)::bigint, \
         sum(retried)::bigint, sum(lease_lost)::bigint FROM totals GROUP BY channel \
         ORDER BY channel";

    /// Whether a lease expired by $1.
    pub const ANY_EXPIRED: &str = "SELECT EXISTS (SELECT 1 FROM tasks \
         WHERE status = 'running' AND lease_until <= $1)";

    /// Locks the running tasks whose lease expired by $1 and reads their channels and
    /// states.
    pub const LOCK_EXPIRED: &str = "SELECT id, channel, status, retries_left, max_retries, \
         attempts, run_at, lease_until, last_error, updated_at, lost_runs FROM tasks \
         WHERE status = 'running' AND lease_until <= $1 ORDER BY id FOR UPDATE SKIP LOCKED";

    /// The earliest time something is due in channel $1.
    pub const NEXT_WAKEUP: &str = "SELECT least( \
         (SELECT run_at FROM tasks WHERE channel = $1 AND status = 'pending' LIMIT 1), \
         (SELECT min(run_at) FROM tasks WHERE channel = $1 AND status = 'delayed'), \
         (SELECT min(lease_until) FROM tasks WHERE channel = $1 AND status = 'running'))";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_end_with_the_state_columns() {
        assert!(COLUMNS.ends_with(STATE_COLUMNS));
        assert!(sql::CLAIM.replace("t.", "").ends_with(COLUMNS));
        assert!(sql::LOCK_EXPIRED.contains(&format!("id, channel, {STATE_COLUMNS} FROM")));
        assert!(sql::READ_STATES.contains(&format!("id, {STATE_COLUMNS} FROM")));
        let arrays = format!(
            "unnest({STATE_ARRAYS}, $11::bigint[], $12::bigint[], $13::bigint[], \
             $14::bigint[], $15::bigint[]) AS u({STATE_ALIASES}, held, done, failed, retried, \
             lease_lost)"
        );
        assert!(sql::FINISH.contains(&arrays), "{arrays}");
    }

    #[test]
    fn schema_names_are_checked() {
        for good in ["simplepyq", "_q", "q2_test"] {
            assert!(schema::check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "Q", "2q", "q-1", "q;drop", "pg_q", &"q".repeat(64)] {
            assert!(schema::check_name(bad).is_err(), "{bad}");
        }
    }
}
