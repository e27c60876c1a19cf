//! Administration: failed tasks cleared and requeued, channels removed, done tasks
//! purged, tasks cancelled.

use redb::ReadableTable;
use simplepyq_core::dependency::Ended;
use simplepyq_core::transition::{self};
use simplepyq_core::{AdminStore, Error, Result, Status, TaskId, Timestamp, batch};

use crate::error::db_err;
use crate::record::status_from_code;
use crate::tables::Tables;
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
            let changes = batch::requeue(&failed, now, retries, &mut Lookup(t))?;
            let read = failed.into_iter().map(|task| (task.id, task)).collect();
            t.write_changes(changes, read)
        })
    }

    fn remove_channel(&self, channel: &str, now: Timestamp) -> Result<usize> {
        self.write_tx(|tx, t| {
            let mut ids = Vec::new();
            for entry in t
                .by_status
                .range((channel, 0, 0)..=(channel, u8::MAX, u64::MAX))
                .map_err(db_err)?
            {
                let (key, _) = entry.map_err(db_err)?;
                let (_, status, id) = key.value();
                ids.push((
                    to_id(id)?,
                    status_from_code(status).is_some_and(|s| s.is_final()),
                ));
            }
            let all: Vec<TaskId> = ids.iter().map(|(id, _)| *id).collect();
            let n = t.delete_ids(&all)?;
            let removed = ids.iter().filter(|(_, finished)| !finished);
            t.settle(
                tx,
                removed.map(|(id, _)| (*id, Ended::Removed)).collect(),
                now,
            )?;
            Ok(n)
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

    fn cancel(&self, id: TaskId, now: Timestamp) -> Result<()> {
        self.write_tx(|tx, t| {
            let task = t.load(id)?.ok_or(Error::NotFound(id))?;
            transition::cancel(&task.state).map_err(|r| r.into_error(id))?;
            t.delete(&task)?;
            t.settle(tx, vec![(id, Ended::Removed)], now)?;
            Ok(())
        })
    }
}

/// What [`batch::requeue`] asks of the file, in the requeue's transaction.
struct Lookup<'a, 'tx>(&'a Tables<'tx>);

impl batch::RequeueLookup for Lookup<'_, '_> {
    fn key_held(&mut self, channel: &str, key: &str) -> Result<bool> {
        Ok(self.0.unique.get((channel, key)).map_err(db_err)?.is_some())
    }

    fn parents_left(&mut self, id: TaskId) -> Result<Vec<(TaskId, Option<Status>)>> {
        self.0.parents_left(id)
    }
}
