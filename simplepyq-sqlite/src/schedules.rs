//! The firings of periodic tasks: a firing recorded and its task enqueued together.

use rusqlite::OptionalExtension;
use rusqlite::params;
use simplepyq_core::{NewTask, Result, ScheduleStore, TaskId, Timestamp};

use crate::SqliteStore;
use crate::claim::{insert_tasks, within};

impl ScheduleStore for SqliteStore {
    fn fire_schedule(
        &self,
        name: &str,
        at: Timestamp,
        task: &NewTask,
        now: Timestamp,
    ) -> Result<Option<TaskId>> {
        task.validate()?;
        let (name, new) = (name.to_owned(), task.clone());
        let most = self.enqueue_pages;
        let id = self.write(move |tx| {
            // Records `at` only if it is later than the firing recorded: one row changes,
            // or none.
            let fired = tx.execute(
                "INSERT INTO simplepyq_schedules (name, last_fired) VALUES (?1, ?2) \
                 ON CONFLICT (name) DO UPDATE SET last_fired = excluded.last_fired \
                 WHERE last_fired < excluded.last_fired",
                params![name, at.as_millis()],
            )?;
            if fired == 0 {
                return Ok(None);
            }
            let id = insert_tasks(tx, std::slice::from_ref(&new), now)?.pop();
            if let Some(most) = most {
                within(tx, most)?;
            }
            Ok(id)
        })?;
        if id.is_some() {
            self.announcer.announce([task.channel.as_str()]);
        }
        Ok(id)
    }

    fn last_fired(&self, name: &str) -> Result<Option<Timestamp>> {
        self.read(|conn| {
            let ms: Option<i64> = conn
                .prepare_cached("SELECT last_fired FROM simplepyq_schedules WHERE name = ?1")?
                .query_row([name], |r| r.get(0))
                .optional()?;
            Ok(ms.map(Timestamp::from_millis))
        })
    }
}
