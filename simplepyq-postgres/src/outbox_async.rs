//! Enqueueing and completing in the caller's transaction on `tokio_postgres`, for async
//! programs (a web server's handlers, async channels): the statements of the sync path
//! ([`crate::outbox`]), awaited.

use simplepyq_core::{Claim, Error, NewTask, Outcome, Result, Status, TaskId, Timestamp};

use crate::error::R;
use crate::outbox::{EnqueueCall, RESTORE_PATH, SET_PATH, one_status};
use crate::outcome::FinishPlan;
use crate::{PostgresStore, sql};

impl PostgresStore {
    /// [`PostgresStore::enqueue_in`] on a `tokio_postgres` client or transaction.
    pub async fn enqueue_in_async<C: tokio_postgres::GenericClient + Sync>(
        &self,
        client: &C,
        tasks: &[NewTask],
        now: Timestamp,
    ) -> Result<Vec<TaskId>> {
        let Some(call) = EnqueueCall::of(&self.schema, tasks, now)? else {
            return Ok(Vec::new());
        };
        let rows = client
            .query_typed(&call.sql, &call.params())
            .await
            .map_err(|e| self.in_caller(e.into()))?;
        call.ids(&rows)
    }

    /// [`PostgresStore::complete_in`] on a `tokio_postgres` client or transaction.
    pub async fn complete_in_async<C: tokio_postgres::GenericClient + Send>(
        &self,
        client: &mut C,
        claim: Claim,
        now: Timestamp,
    ) -> Result<Status> {
        let results = [(claim, Outcome::Succeeded)];
        let statuses: R<Vec<Result<Status>>> = async {
            let tx = client.transaction().await?;
            let theirs: String = tx.query_one(SET_PATH, &[&self.schema]).await?.try_get(0)?;
            // Locked: no task can wait for it from now until the commit.
            let rows = tx
                .query(sql::LOCK_STATES, &[&FinishPlan::ids(&results)])
                .await?;
            if !FinishPlan::with_dependents(&rows)?.is_empty() {
                return Err(Error::config(format!(
                    "task {} has tasks that wait for it: complete it with complete_in, or \
                     through the queue, which settle them",
                    claim.id
                ))
                .into());
            }
            let plan = FinishPlan::of(&results, now, &rows)?;
            let statuses = if plan.writes_nothing() {
                plan.into_statuses()
            } else {
                let written = tx.query(sql::FINISH, &plan.params(false)).await?;
                plan.settle(&results, &written)?
            };
            tx.execute(RESTORE_PATH, &[&theirs]).await?;
            tx.commit().await?;
            Ok(statuses)
        }
        .await;
        one_status(statuses.map_err(|e| self.in_caller(e))?)
    }
}
