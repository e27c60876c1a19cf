//! Administration: failed tasks cleared and requeued, channels removed, done tasks
//! purged, tasks cancelled.

use redb::ReadableTable;
use simplepyq_core::transition::{self};
use simplepyq_core::{AdminStore, Error, Result, Status, TaskId, Timestamp, batch};

use crate::error::db_err;
use crate::{RedbStore, to_id};

impl AdminStore for RedbStore {
    fn clear_failed(&self, channel: Option<&str>) -> Result<usize> {
        self.write(|t| {
            let ids = t.ids_with_status(channel, Status::Failed)?;
            t.delete_ids(&ids)
        })
    }

    fn requeue_failed(
        &self,
        channel: Option<&str>,
        retries: Option<u32>,
        now: Timestamp,
    ) -> Result<usize> {
        self.write(|t| {
            let mut failed = Vec::new();
            for id in t.ids_with_status(channel, Status::Failed)? {
                failed.push(t.load(id)?.ok_or(Error::NotFound(id))?);
            }
            failed.sort_unstable_by_key(|task| task.id);
            let changes = batch::requeue(&failed, now, retries, |channel, key| {
                Ok(t.unique.get((channel, key)).map_err(db_err)?.is_some())
            })?;
            let read = failed.into_iter().map(|task| (task.id, task)).collect();
            t.write_changes(changes, read)
        })
    }

    fn remove_channel(&self, channel: &str) -> Result<usize> {
        self.write(|t| {
            let mut ids = Vec::new();
            for entry in t
                .by_status
                .range((channel, 0, 0)..=(channel, u8::MAX, u64::MAX))
                .map_err(db_err)?
            {
                let (key, _) = entry.map_err(db_err)?;
                ids.push(to_id(key.value().2)?);
            }
            t.delete_ids(&ids)
        })
    }

    fn purge_batch(
        &self,
        status: Status,
        channel: Option<&str>,
        before: Timestamp,
    ) -> Result<usize> {
        batch::purgeable(status)?;
        self.write(|t| {
            let old = t.ids_with_status_up_to(channel, status, batch::BULK_BATCH, |id| {
                Ok(t.load(id)?
                    .is_some_and(|task| task.state.updated_at < before))
            })?;
            t.delete_ids(&old)
        })
    }

    fn cancel(&self, id: TaskId) -> Result<()> {
        self.write(|t| {
            let task = t.load(id)?.ok_or(Error::NotFound(id))?;
            transition::cancel(&task.state).map_err(|r| r.into_error(id))?;
            t.delete(&task)
        })
    }
}
