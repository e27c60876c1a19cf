//! The firings of periodic tasks: a firing recorded and its task enqueued together.

use simplepyq_core::{NewTask, Result, ScheduleStore, TaskId, Timestamp};

use crate::PostgresStore;

impl ScheduleStore for PostgresStore {
    fn fire_schedule(
        &self,
        name: &str,
        at: Timestamp,
        task: &NewTask,
        now: Timestamp,
    ) -> Result<Option<TaskId>> {
        task.validate()?;
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
