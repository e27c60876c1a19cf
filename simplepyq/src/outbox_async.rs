//! The application's own `tokio_postgres` transactions on the PostgreSQL queue's database,
//! for async programs: [`SimplePyQ::enqueue_in_async`] and
//! [`SimplePyQ::complete_in_async`], the async forms of the outbox calls.

use serde::Serialize;
use simplepyq_core::{Result, TaskId};
use simplepyq_postgres::PostgresStore;
use simplepyq_postgres::tokio_postgres::GenericClient;

use crate::channel::{Channel, tasks};
use crate::context::TaskContext;
use crate::engine::Engine;
use crate::options::EnqueueOptions;
use crate::outbox::{no_id, own_claim};
use crate::queue::SimplePyQ;

/// Enqueues `args` (each a task) for `channel` in the caller's transaction on `tx`.
async fn enqueue_in<'a, C, T, I>(
    engine: &Engine<PostgresStore>,
    tx: &C,
    channel: &str,
    args: I,
    options: &EnqueueOptions,
) -> Result<Vec<TaskId>>
where
    C: GenericClient + Sync,
    T: Serialize + ?Sized + 'a,
    I: IntoIterator<Item = &'a T>,
{
    let now = engine.now();
    let tasks = tasks(channel, args, options, now)?;
    engine.store.enqueue_in_async(tx, &tasks, now).await
}

/// Completes the task `ctx` runs in the caller's transaction on `tx`.
async fn complete_in<C: GenericClient + Send>(
    engine: &Engine<PostgresStore>,
    tx: &mut C,
    ctx: &TaskContext,
) -> Result<()> {
    let claim = own_claim(engine, ctx)?;
    engine
        .store
        .complete_in_async(tx, claim, engine.now())
        .await?;
    ctx.mark_completed_in();
    Ok(())
}

impl SimplePyQ<PostgresStore> {
    /// [`SimplePyQ::enqueue_in`] on a `tokio_postgres` transaction (or client) of the
    /// queue's database ([`crate::tokio_postgres`]): the task commits with the
    /// transaction's rows, or rolls back with them; its `NOTIFY` is sent at the commit.
    ///
    /// ```no_run
    /// # async fn demo(q: simplepyq::SimplePyQ<simplepyq::PostgresStore>,
    /// #               db: &mut simplepyq::tokio_postgres::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// let tx = db.transaction().await?;
    /// let order: i64 = tx
    ///     .query_one("INSERT INTO orders (item) VALUES ('tea') RETURNING id", &[])
    ///     .await?
    ///     .get(0);
    /// q.enqueue_in_async(&tx, "receipts", &order).await?; // commits with the order
    /// tx.commit().await?;
    /// # Ok(()) }
    /// ```
    pub async fn enqueue_in_async<C, T>(&self, tx: &C, channel: &str, args: &T) -> Result<TaskId>
    where
        C: GenericClient + Sync,
        T: Serialize + ?Sized,
    {
        self.enqueue_with_in_async(tx, channel, args, EnqueueOptions::new())
            .await
    }

    /// [`SimplePyQ::enqueue_with_in`] on a `tokio_postgres` transaction: see
    /// [`SimplePyQ::enqueue_in_async`].
    pub async fn enqueue_with_in_async<C, T>(
        &self,
        tx: &C,
        channel: &str,
        args: &T,
        options: EnqueueOptions,
    ) -> Result<TaskId>
    where
        C: GenericClient + Sync,
        T: Serialize + ?Sized,
    {
        let ids = enqueue_in(&self.workers.engine, tx, channel, [args], &options).await?;
        ids.into_iter().next().ok_or_else(no_id)
    }

    /// [`SimplePyQ::enqueue_many_in`] on a `tokio_postgres` transaction: see
    /// [`SimplePyQ::enqueue_in_async`].
    pub async fn enqueue_many_in_async<'a, C, T, I>(
        &self,
        tx: &C,
        channel: &str,
        args: I,
        options: EnqueueOptions,
    ) -> Result<Vec<TaskId>>
    where
        C: GenericClient + Sync,
        T: Serialize + ?Sized + 'a,
        I: IntoIterator<Item = &'a T>,
    {
        enqueue_in(&self.workers.engine, tx, channel, args, &options).await
    }

    /// [`SimplePyQ::complete_in`] on a `tokio_postgres` transaction (`&mut`): the
    /// handler's writes and its task's `done` commit together, or neither.
    pub async fn complete_in_async<C: GenericClient + Send>(
        &self,
        tx: &mut C,
        ctx: &TaskContext,
    ) -> Result<()> {
        complete_in(&self.workers.engine, tx, ctx).await
    }
}

impl<A: ?Sized> Channel<A, PostgresStore> {
    /// Completes the task a handler runs in its `tokio_postgres` transaction: see
    /// [`SimplePyQ::complete_in_async`].
    pub async fn complete_in_async<C: GenericClient + Send>(
        &self,
        tx: &mut C,
        ctx: &TaskContext,
    ) -> Result<()> {
        complete_in(self.engine(), tx, ctx).await
    }
}

impl<A: Serialize + ?Sized> Channel<A, PostgresStore> {
    /// Enqueues a task with no retries in a `tokio_postgres` transaction: see
    /// [`SimplePyQ::enqueue_in_async`].
    pub async fn enqueue_in_async<C: GenericClient + Sync>(
        &self,
        tx: &C,
        args: &A,
    ) -> Result<TaskId> {
        self.enqueue_with_in_async(tx, args, EnqueueOptions::new())
            .await
    }

    /// Enqueues a task with options in a `tokio_postgres` transaction: see
    /// [`SimplePyQ::enqueue_in_async`].
    pub async fn enqueue_with_in_async<C: GenericClient + Sync>(
        &self,
        tx: &C,
        args: &A,
        options: EnqueueOptions,
    ) -> Result<TaskId> {
        let ids = enqueue_in(self.engine(), tx, self.name(), [args], &options).await?;
        ids.into_iter().next().ok_or_else(no_id)
    }
}
