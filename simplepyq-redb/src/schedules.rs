//! The firings of periodic tasks: a firing recorded and its task enqueued together.

use redb::ReadableTable;
use simplepyq_core::{NewTask, Result, ScheduleStore, TaskId, Timestamp};

use crate::RedbStore;
use crate::error::db_err;
use crate::tables::SCHEDULES;

impl ScheduleStore for RedbStore {
    fn fire_schedule(
        &self,
        name: &str,
        at: Timestamp,
        task: &NewTask,
        now: Timestamp,
    ) -> Result<Option<TaskId>> {
        task.validate()?;
        self.write_tx(|tx, t| {
            let mut schedules = tx.open_table(SCHEDULES).map_err(db_err)?;
            let last = schedules.get(name).map_err(db_err)?.map(|v| v.value());
            if last.is_some_and(|last| last >= at.as_millis()) {
                return Ok(None);
            }
            schedules.insert(name, at.as_millis()).map_err(db_err)?;
            Ok(t.add(std::slice::from_ref(task), now)?.pop())
        })
    }

    fn last_fired(&self, name: &str) -> Result<Option<Timestamp>> {
        self.read(|read| {
            let schedules = match read.open_table(SCHEDULES) {
                Ok(table) => table,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(db_err(e)),
            };
            let last = schedules.get(name).map_err(db_err)?.map(|v| v.value());
            Ok(last.map(Timestamp::from_millis))
        })
    }
}
