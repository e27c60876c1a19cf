//! [`PostgresStore`]: a [`Store`](simplepyq_core::Store) for simplepyq on a PostgreSQL
//! server, shared by worker processes on many machines.
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
//! - Done tasks stay until [`purge_done`](simplepyq_core::AdminStore::purge_done) deletes
//!   them (in batches of [`PURGE_BATCH`] rows, each its own short transaction); failed ones
//!   until [`clear_failed`](simplepyq_core::AdminStore::clear_failed). Purge regularly: a
//!   queue table should hold work, not history.
//! - The table turns over fast. Its autovacuum settings are set for that (vacuum once 1% of
//!   its rows are dead, with no cost delay). Watch `n_dead_tup` and `last_autovacuum` in
//!   `pg_stat_user_tables` for `tasks`; a long-running transaction anywhere in the database
//!   keeps vacuum from freeing rows, so watch `pg_stat_activity` for old `xact_start`s.
//! - Each store holds at most [`PostgresOptions::pool_size`] connections, whatever the
//!   number of workers: a handler never holds one.

// One concern per file. The store: `options`; `open` (the pool, `schema`'s migrations, the
// server's `clock`, the `listen`er); `row` (the row codec); one file per group of the
// `Store` contract: `claim`, `outcome`, `admin`, `inspect`, `schedules`, `flow`; `outbox` (and
// `outbox_async`), the writes in the caller's transaction; and `sql`, the
// statements that change many rows at once. Its machinery: `pool`, `error`, and `gather`
// (concurrent small enqueues in one statement).
mod admin;
mod claim;
mod clock;
mod dependency;
mod error;
mod flow;
mod gather;
mod inspect;
mod listen;
mod open;
mod options;
mod outbox;
#[cfg(feature = "tokio")]
mod outbox_async;
mod outcome;
mod pool;
mod row;
mod schedules;
mod schema;
pub mod sql;

use std::sync::Arc;

use postgres::{Client, Transaction};
use simplepyq_core::{Clock, Error, Result, batch};

use crate::error::{E, R};
use crate::pool::{Db, Pool};

pub use crate::clock::ServerClock;
pub use crate::options::PostgresOptions;
/// The `postgres` client this store is built with: an application that enqueues in its
/// own transactions ([`PostgresStore::enqueue_in`]) hands the store a client of this crate.
pub use postgres;
/// The `tokio_postgres` client of [`PostgresStore::enqueue_in_async`] and
/// [`PostgresStore::complete_in_async`].
#[cfg(feature = "tokio")]
pub use tokio_postgres;

/// How many done tasks one statement of
/// [`purge_done`](simplepyq_core::AdminStore::purge_done) deletes.
pub const PURGE_BATCH: i64 = batch::BULK_BATCH as i64;

/// A [`Store`](simplepyq_core::Store) on a PostgreSQL database. Any number of stores, in any
/// number of processes and machines, may share one schema.
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
    /// Small enqueues of this process's threads, gathered into one statement.
    gather: gather::Gather,
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
pub(crate) fn on_runtime() -> bool {
    tokio::runtime::Handle::try_current().is_ok()
}

/// Runs `call`, on a thread of its own when called on a thread that drives an async runtime
/// (an async handler, a web server's handler): the driver runs each request on a runtime of
/// its own, which tokio refuses to start there.
pub(crate) fn off_runtime<T: Send>(call: impl FnOnce() -> Result<T> + Send) -> Result<T> {
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

/// A transaction with its connection's prepared statements.
pub(crate) type Tx<'a, 'c> = Db<'a, Transaction<'c>>;

impl PostgresStore {
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

    pub(crate) fn pool(&self) -> &Pool {
        self.pool
            .as_ref()
            .expect("the pool lives until the store is dropped")
    }

    /// Runs `op` on a pooled connection; runs it again (on another connection) when it lost
    /// a deadlock or serialization race, or when its connection had broken before the
    /// request was sent. Neither had any effect.
    pub(crate) fn run<T: Send>(
        &self,
        op: impl FnMut(&mut Db<'_, Client>) -> R<T> + Send,
    ) -> Result<T> {
        self.run_with(Resend::Always, op)
    }

    /// [`PostgresStore::run`] for an `op` whose effect `resend` says whether it may be
    /// repeated: a connection that ends while a request is under way (a crashed server, a
    /// cut network) leaves unknown whether the server ran it.
    pub(crate) fn run_with<T: Send>(
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
    pub(crate) fn transaction<T: Send>(
        &self,
        op: impl FnMut(&mut Tx<'_, '_>) -> R<T> + Send,
    ) -> Result<T> {
        self.transaction_with(Resend::Always, op)
    }

    /// Runs `op` in a transaction, as [`PostgresStore::run_with`] does.
    pub(crate) fn transaction_with<T: Send>(
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

    /// Tells the queues listening (in any process) that `channels` have work, once the
    /// change that added it committed.
    pub(crate) fn announce<'a>(&self, channels: impl IntoIterator<Item = &'a str>) {
        if let Some(n) = &self.notifier {
            n.mark(channels);
        }
    }
}
