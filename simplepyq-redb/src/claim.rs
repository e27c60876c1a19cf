//! Putting tasks in and taking them out: enqueue, and the claim (due delayed tasks
//! promoted first), each a range scan of an index.

use redb::{ReadableTable, TableDefinition};
use simplepyq_core::transition::Event;
use simplepyq_core::{
    ClaimStore, NewTask, Result, Task, TaskId, Timestamp, batch, validate_channel,
};

use crate::error::db_err;
use crate::flow::{allowance_in_read, allowance_in_write};
use crate::tables::{CHANNEL_LEASES, DELAYED, READY};
use crate::{RedbStore, to_id};

impl ClaimStore for RedbStore {
    fn enqueue(&self, tasks: &[NewTask], now: Timestamp) -> Result<Vec<TaskId>> {
        for t in tasks {
            validate_channel(&t.channel)?;
        }
        self.write(|t| t.add(tasks, now))
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
        let all_ready = (channel, i64::MIN, i64::MIN, 0)..=(channel, i64::MAX, i64::MAX, u64::MAX);
        let due_delayed = (channel, i64::MIN, 0)..=(channel, now.as_millis(), u64::MAX);
        // Look in a read transaction first: idle workers poll without taking the writer.
        let idle = self.read(|read| {
            if allowance_in_read(read, channel, 1)? == 0 {
                return Ok(true);
            }
            let ready = read.open_table(READY).map_err(db_err)?;
            let delayed = read.open_table(DELAYED).map_err(db_err)?;
            Ok(ready
                .range(all_ready.clone())
                .map_err(db_err)?
                .next()
                .is_none()
                && delayed
                    .range(due_delayed.clone())
                    .map_err(db_err)?
                    .next()
                    .is_none())
        })?;
        if idle {
            return Ok(Vec::new());
        }
        let event = Event::Claim { now, lease_until };
        self.write_tx(|tx, t| {
            let limit = allowance_in_write(tx, &t.counts, channel, limit)?;
            if limit == 0 {
                return Ok(Vec::new());
            }
            let mut promote = Vec::new();
            let due = t.delayed.range(due_delayed.clone()).map_err(db_err)?;
            for entry in due.take(batch::PROMOTE_PER_CLAIM) {
                promote.push(to_id(entry.map_err(db_err)?.0.value().2)?);
            }
            for id in promote {
                t.transition_id(id, &Event::Promote { now })?;
            }
            let mut ids = Vec::new();
            for entry in t.ready.range(all_ready.clone()).map_err(db_err)? {
                let (_, _, run_at, id) = entry.map_err(db_err)?.0.value();
                // Pending tasks are due, unless another process's clock runs ahead.
                if run_at <= now.as_millis() {
                    ids.push(to_id(id)?);
                    if ids.len() == limit {
                        break;
                    }
                }
            }
            ids.into_iter()
                .map(|id| t.transition_id(id, &event))
                .collect()
        })
    }

    fn next_wakeup(&self, channel: &str) -> Result<Option<Timestamp>> {
        self.read(|read| {
            // A paused or full channel's queued tasks are not due.
            let paused = allowance_in_read(read, channel, 1)? == 0;
            let ready = read.open_table(READY).map_err(db_err)?;
            let ready = match ready
                .range((channel, i64::MIN, i64::MIN, 0)..=(channel, i64::MAX, i64::MAX, u64::MAX))
                .map_err(db_err)?
                .next()
            {
                Some(entry) => Some(entry.map_err(db_err)?.0.value().2),
                None => None,
            };
            let first = |def: TableDefinition<(&str, i64, u64), ()>| -> Result<Option<i64>> {
                let table = read.open_table(def).map_err(db_err)?;
                let mut range = table
                    .range((channel, i64::MIN, 0)..=(channel, i64::MAX, u64::MAX))
                    .map_err(db_err)?;
                match range.next() {
                    Some(entry) => Ok(Some(entry.map_err(db_err)?.0.value().1)),
                    None => Ok(None),
                }
            };
            let lease = first(CHANNEL_LEASES)?;
            if paused {
                // A paused channel's queued tasks are not due.
                return Ok(lease.map(Timestamp::from_millis));
            }
            let delayed = first(DELAYED)?;
            Ok([ready, delayed, lease]
                .into_iter()
                .flatten()
                .min()
                .map(Timestamp::from_millis))
        })
    }
}
