//! The application's own transactions on the queue's database: tasks enqueued in them
//! ([`SimplePyQ::enqueue_in`], the outbox pattern), and a handler's task completed in its
//! own ([`SimplePyQ::complete_in`]), on any store that can ([`TransactionStore`]: SQLite
//! and PostgreSQL).

use std::sync::{Arc, Weak};

use serde::Serialize;
use simplepyq_core::{Claim, Error, Result, Store, TaskId, TransactionStore};

use crate::channel::{Channel, tasks};
use crate::context::TaskContext;
use crate::engine::Engine;
use crate::options::EnqueueOptions;
use crate::queue::SimplePyQ;

/// Enqueues `args` (each a task) for `channel` in `tx`, and wakes the channel's idle
/// workers here once `tx` commits.
fn enqueue_in<'a, S, X, T, I>(
    engine: &Arc<Engine<S>>,
    tx: X,
    channel: &str,
    args: I,
    options: &EnqueueOptions,
) -> Result<Vec<TaskId>>
where
    S: Store + TransactionStore<X>,
    T: Serialize + ?Sized + 'a,
    I: IntoIterator<Item = &'a T>,
{
    let now = engine.now();
    let tasks = tasks(channel, args, options, now)?;
    let many = tasks.len() > 1;
    // A queue dropped meanwhile is not kept alive for a transaction it has no part in.
    let here: Weak<Engine<S>> = Arc::downgrade(engine);
    let name = channel.to_owned();
    let wake = Box::new(move || {
        if let Some(engine) = here.upgrade() {
            engine.wake(&name, many);
        }
    });
    engine.store.enqueue_in_then(tx, &tasks, now, wake)
}

/// Completes the task `ctx` runs in `tx`, for the queue of `engine`.
fn complete_in<S: Store + TransactionStore<X>, X>(
    engine: &Engine<S>,
    tx: X,
    ctx: &TaskContext,
) -> Result<()> {
    engine
        .store
        .complete_in(tx, own_claim(engine, ctx)?, engine.now())?;
    ctx.mark_completed_in();
    Ok(())
}

/// The claim of the run `ctx` is for, if the queue of `engine` runs it.
pub(crate) fn own_claim<S: Store>(engine: &Engine<S>, ctx: &TaskContext) -> Result<Claim> {
    if ctx.queue() != engine.id {
        return Err(Error::InvalidConfig(
            "the task context is another queue's: complete a task through its own queue".into(),
        ));
    }
    Ok(ctx.claim())
}

impl<S: Store> SimplePyQ<S> {
    /// Completes the task a handler runs (its `ctx`) in the handler's own transaction `tx`
    /// on the queue's database (`&rusqlite::Transaction` on the SQLite file, `&mut` a
    /// `postgres` transaction on PostgreSQL): the handler's writes and the task's `done`
    /// commit together, or neither does. Once `tx` commits, the run's outcome is recorded: what the handler
    /// returns then changes nothing. If `tx` rolls back, the task still runs here, and what
    /// the handler returns decides as usual.
    ///
    /// Fenced by the run's claim: if this run's lease was lost (it outlived its lease and
    /// another worker took the task over), this returns [`Error::LeaseLost`] and writes
    /// nothing; the handler must then not commit `tx`, which the `?` below sees to.
    ///
    /// ```
    /// # #[cfg(feature = "sqlite")] {
    /// use simplepyq::rusqlite::{Connection, TransactionBehavior};
    /// use simplepyq::{SimplePyQ, TaskContext};
    /// # let dir = tempfile::tempdir()?; let path = dir.path().join("shop.db");
    /// let q = std::sync::Arc::new(SimplePyQ::open(&path)?);
    /// let queue = std::sync::Arc::downgrade(&q); // a handler must not keep its queue alive
    /// let file = path.clone();
    /// q.add_channel("receipts", move |order: i64, ctx: &TaskContext| {
    ///     let mut db = Connection::open(&file)?;
    ///     db.execute_batch("CREATE TABLE IF NOT EXISTS receipts (order_id INTEGER)")?;
    ///     let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
    ///     tx.execute("INSERT INTO receipts (order_id) VALUES (?1)", [order])?;
    ///     if let Some(q) = queue.upgrade() {
    ///         q.complete_in(&tx, ctx)?;   // the receipt and the task's `done`, together
    ///     }
    ///     tx.commit()?;
    ///     Ok(())
    /// }, 1)?;
    /// q.enqueue("receipts", &7i64)?;
    /// q.run_until_complete()?;
    /// assert_eq!(q.counts("receipts")?.done, 1);
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn complete_in<X>(&self, tx: X, ctx: &TaskContext) -> Result<()>
    where
        S: TransactionStore<X>,
    {
        complete_in(&self.workers.engine, tx, ctx)
    }

    /// Enqueues a task for `channel` with `args` in the application's transaction `tx` on
    /// the queue's database: the task commits with the application's rows, or rolls back
    /// with them. Workers (in this process or another) see it only once committed, and are
    /// woken then. An error is returned, never retried inside the caller's transaction.
    ///
    /// - SQLite: `tx` is a `&`[`rusqlite::Transaction`](crate::rusqlite::Transaction) on
    ///   the queue's file. Open the application's connections with [`crate::rusqlite`], the
    ///   SQLite this queue runs on, and begin transactions that write with
    ///   [`TransactionBehavior::Immediate`](crate::rusqlite::TransactionBehavior::Immediate),
    ///   so that they wait for the file's lock at their start, not at this call.
    /// - PostgreSQL: `tx` is `&mut` a [`postgres::Transaction`](crate::postgres::Transaction)
    ///   (or `Client`) of the `postgres` crate ([`crate::postgres`]) on the queue's
    ///   database; the task's `NOTIFY` is sent at the commit. A failed statement aborts the
    ///   caller's transaction, as any of its statements would.
    ///
    /// ```
    /// # #[cfg(feature = "sqlite")] {
    /// use simplepyq::rusqlite::{Connection, TransactionBehavior};
    /// use simplepyq::SimplePyQ;
    /// # let dir = tempfile::tempdir()?; let path = dir.path().join("shop.db");
    /// let q = SimplePyQ::open(&path)?;
    /// let mut db = Connection::open(&path)?;          // the application's own connection
    /// db.execute_batch("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, item TEXT)")?;
    /// let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
    /// tx.execute("INSERT INTO orders (item) VALUES ('tea')", [])?;
    /// let order = tx.last_insert_rowid();
    /// q.enqueue_in(&tx, "receipts", &order)?;         // commits with the order, or not at all
    /// tx.commit()?;
    /// assert_eq!(q.counts("receipts")?.pending, 1);
    /// # }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn enqueue_in<X, T: Serialize + ?Sized>(
        &self,
        tx: X,
        channel: &str,
        args: &T,
    ) -> Result<TaskId>
    where
        S: TransactionStore<X>,
    {
        self.enqueue_with_in(tx, channel, args, EnqueueOptions::new())
    }

    /// [`SimplePyQ::enqueue_with`] in the application's transaction `tx`: see
    /// [`SimplePyQ::enqueue_in`].
    pub fn enqueue_with_in<X, T: Serialize + ?Sized>(
        &self,
        tx: X,
        channel: &str,
        args: &T,
        options: EnqueueOptions,
    ) -> Result<TaskId>
    where
        S: TransactionStore<X>,
    {
        let ids = enqueue_in(&self.workers.engine, tx, channel, [args], &options)?;
        ids.into_iter().next().ok_or_else(no_id)
    }

    /// [`SimplePyQ::enqueue_many`] in the application's transaction `tx`: see
    /// [`SimplePyQ::enqueue_in`].
    pub fn enqueue_many_in<'a, X, T, I>(
        &self,
        tx: X,
        channel: &str,
        args: I,
        options: EnqueueOptions,
    ) -> Result<Vec<TaskId>>
    where
        S: TransactionStore<X>,
        T: Serialize + ?Sized + 'a,
        I: IntoIterator<Item = &'a T>,
    {
        enqueue_in(&self.workers.engine, tx, channel, args, &options)
    }
}

impl<A: ?Sized, S: Store> Channel<A, S> {
    /// Completes the task a handler runs (its `ctx`) in the handler's own transaction `tx`:
    /// see [`SimplePyQ::complete_in`]. A handler can hold its channel's handle (it does not
    /// keep the queue running) to complete its tasks.
    pub fn complete_in<X>(&self, tx: X, ctx: &TaskContext) -> Result<()>
    where
        S: TransactionStore<X>,
    {
        complete_in(self.engine(), tx, ctx)
    }
}

impl<A: Serialize + ?Sized, S: Store> Channel<A, S> {
    /// Enqueues a task with no retries in the application's transaction `tx`: see
    /// [`SimplePyQ::enqueue_in`].
    pub fn enqueue_in<X>(&self, tx: X, args: &A) -> Result<TaskId>
    where
        S: TransactionStore<X>,
    {
        self.enqueue_with_in(tx, args, EnqueueOptions::new())
    }

    /// Enqueues a task with options in the application's transaction `tx`: see
    /// [`SimplePyQ::enqueue_in`].
    pub fn enqueue_with_in<X>(&self, tx: X, args: &A, options: EnqueueOptions) -> Result<TaskId>
    where
        S: TransactionStore<X>,
    {
        let ids = enqueue_in(self.engine(), tx, self.name(), [args], &options)?;
        ids.into_iter().next().ok_or_else(no_id)
    }
}

/// The error for an enqueue of one task that returned no id (a store's bug).
pub(crate) fn no_id() -> simplepyq_core::Error {
    simplepyq_core::Error::Backend {
        backend: "simplepyq",
        source: "enqueue returned no id for one task".into(),
    }
}
