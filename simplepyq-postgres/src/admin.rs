//! Administration: failed tasks cleared and requeued, channels removed, done tasks
//! purged, tasks cancelled; the bulk calls in short statements.

use std::collections::{HashMap, HashSet};

use postgres::Client;
use postgres::types::ToSql;
use simplepyq_core::dependency::Ended;
use simplepyq_core::transition::cancel;
use simplepyq_core::{AdminStore, Error, Result, Status, TaskId, Timestamp, batch};

use crate::PURGE_BATCH;
use crate::claim::{Key, holders, key};
use crate::error::R;
use crate::inspect::channel_filter;
use crate::pool::Db;
use crate::row::{COLUMNS, StateArrays, lock_states, millis, tasks_from_rows};
use crate::{PostgresStore, Tx};

impl AdminStore for PostgresStore {
    fn clear_failed(&self, channel: Option<&str>) -> Result<usize> {
        let sql = format!(
            "DELETE FROM tasks WHERE id IN (SELECT id FROM tasks \
             WHERE status = 'failed'{} LIMIT {PURGE_BATCH})",
            channel_filter(channel, 1)
        );
        batch::in_batches(|| self.run(|c| execute(c, &sql, channel, &[])))
    }

    fn requeue_failed(
        &self,
        channel: Option<&str>,
        retries: Option<u32>,
        now: Timestamp,
    ) -> Result<usize> {
        // A batch at a time, in id order (a parent before the tasks that wait for it), from
        // past the last one seen (a task whose unique key is held stays failed).
        let sql = format!(
            "SELECT {COLUMNS} FROM tasks WHERE status = 'failed' AND id > $1{} \
             ORDER BY id LIMIT {PURGE_BATCH} FOR UPDATE",
            channel_filter(channel, 2)
        );
        let mut after = 0i64;
        let mut total = 0;
        loop {
            let (seen, last, channels) = self.transaction(|tx| {
                let rows = match channel {
                    Some(c) => tx.query(&sql, &[&after, &c])?,
                    None => tx.query(&sql, &[&after])?,
                };
                let failed = tasks_from_rows(&rows)?;
                let keys: Vec<Key<'_>> = failed
                    .iter()
                    .map(|t| key(&t.channel, &t.unique_key))
                    .collect();
                let held: HashSet<Key<'_>> = keys
                    .iter()
                    .zip(holders(tx, &keys)?)
                    .filter_map(|(k, holder)| holder.map(|_| *k))
                    .collect();
                let ids: Vec<i64> = failed.iter().map(|t| t.id.get()).collect();
                let waiting: HashSet<i64> = tx
                    .query(
                        "SELECT DISTINCT child FROM dependencies \
                         WHERE child = ANY ($1) AND NOT satisfied",
                        &[&ids],
                    )?
                    .iter()
                    .map(|r| r.try_get(0))
                    .collect::<Result<_, _>>()?;
                let mut lookup = Lookup {
                    held: &held,
                    waiting: &waiting,
                    tx,
                };
                let changes = batch::requeue(&failed, now, retries, &mut lookup)?;
                StateArrays::of(&changes).save(tx)?;
                let channel_of: HashMap<TaskId, &str> =
                    failed.iter().map(|t| (t.id, t.channel.as_str())).collect();
                let last = failed.last().map(|t| t.id.get());
                let channels = changes
                    .iter()
                    .filter_map(|(id, _)| channel_of.get(id).map(|c| (*c).to_owned()))
                    .collect::<Vec<String>>();
                Ok((failed.len(), last, channels))
            })?;
            self.announce(channels.iter().map(String::as_str));
            total += channels.len();
            match last {
                Some(last) if seen == batch::BULK_BATCH => after = last,
                _ => return Ok(total),
            }
        }
    }

    fn remove_channel(&self, channel: &str, now: Timestamp) -> Result<usize> {
        // Waiting tasks first: the channel's own are deleted, not failed, when their parents
        // of the channel go.
        let waiting = format!(
            "DELETE FROM tasks WHERE id IN (SELECT id FROM tasks \
             WHERE channel = $1 AND status = 'waiting' LIMIT {PURGE_BATCH}) \
             RETURNING id, NOT has_dependents"
        );
        let mut total =
            batch::in_batches(|| self.transaction(|tx| removing(tx, &waiting, &[&channel], now)))?;
        let mut from = 0i64;
        loop {
            // The id REMOVE_RANGE rows on (by the primary key), or none past the last rows.
            let to: Option<i64> = self.run(|c| {
                let rows = c.query(
                    &format!(
                        "SELECT id FROM tasks WHERE id >= $1 ORDER BY id \
                         OFFSET {REMOVE_RANGE} LIMIT 1"
                    ),
                    &[&from],
                )?;
                Ok(rows.first().map(|r| r.try_get(0)).transpose()?)
            })?;
            let until = to.unwrap_or(i64::MAX);
            total += self.transaction(|tx| {
                removing(
                    tx,
                    "DELETE FROM tasks WHERE channel = $1 AND id >= $2 AND id < $3 \
                     RETURNING id, status IN ('done', 'failed') OR NOT has_dependents",
                    &[&channel, &from, &until],
                    now,
                )
            })?;
            match to {
                Some(to) => from = to,
                None => return Ok(total),
            }
        }
    }

    fn purge_batch(
        &self,
        status: Status,
        channel: Option<&str>,
        before: Timestamp,
    ) -> Result<usize> {
        batch::purgeable(status)?;
        // The status is written in the query, so that its partial index is used.
        let sql = format!(
            "DELETE FROM tasks WHERE id IN (SELECT id FROM tasks \
             WHERE status = '{}' AND updated_at < $1{} LIMIT {PURGE_BATCH})",
            status.as_str(),
            channel_filter(channel, 2)
        );
        let before = millis(before);
        self.run(|c| execute(c, &sql, channel, &[&before]))
    }

    fn cancel(&self, id: TaskId, now: Timestamp) -> Result<()> {
        self.transaction(|tx| {
            let states = lock_states(tx, &[id.get()])?;
            let (_, _, state) = states.first().ok_or(Error::NotFound(id))?;
            cancel(state).map_err(|r| r.into_error(id))?;
            tx.execute("DELETE FROM tasks WHERE id = $1", &[&id.get()])?;
            crate::dependency::settle(tx, vec![(id, Ended::Removed)], now)?;
            Ok(())
        })
    }
}

/// What [`batch::requeue`] asks of the schema, in the requeue's transaction: the unique
/// keys held and the tasks with parents left, each looked up for the whole batch at once.
struct Lookup<'a, 'b, 'c, 'd> {
    held: &'a HashSet<Key<'b>>,
    waiting: &'a HashSet<i64>,
    tx: &'a mut Tx<'c, 'd>,
}

impl batch::RequeueLookup for Lookup<'_, '_, '_, '_> {
    fn key_held(&mut self, channel: &str, key: &str) -> Result<bool> {
        Ok(self.held.contains(&(channel, Some(key))))
    }

    fn parents_left(&mut self, id: TaskId) -> Result<Vec<(TaskId, Option<Status>)>> {
        if !self.waiting.contains(&id.get()) {
            return Ok(Vec::new());
        }
        Ok(crate::dependency::parents_left(self.tx, id)?)
    }
}

/// Runs `delete`, which returns each deleted task's id and whether it leaves no task
/// waiting (it was finished, or none waits for it), and fails the tasks that waited for the
/// others; returns how many it deleted.
fn removing(
    tx: &mut Tx<'_, '_>,
    delete: &str,
    params: &[&(dyn ToSql + Sync)],
    now: Timestamp,
) -> R<usize> {
    let rows = tx.query(delete, params)?;
    let mut removed = Vec::new();
    for r in &rows {
        if !r.try_get::<_, bool>(1)? {
            removed.push((TaskId::new(r.try_get(0)?), Ended::Removed));
        }
    }
    crate::dependency::settle(tx, removed, now)?;
    Ok(rows.len())
}

/// How many tasks (of any channel) one statement of [`AdminStore::remove_channel`] looks
/// through: no index leads with the channel for every status, so the channel's tasks are
/// deleted a range of the primary key at a time, each statement short whatever the table's
/// size.
pub(crate) const REMOVE_RANGE: i64 = 50_000;

/// Runs `sql` whose last parameter is the optional channel; returns the rows it changed.
pub(crate) fn execute(
    c: &mut Db<'_, Client>,
    sql: &str,
    channel: Option<&str>,
    params: &[&(dyn ToSql + Sync)],
) -> R<usize> {
    let mut all = params.to_vec();
    if let Some(ch) = &channel {
        all.push(ch);
    }
    c.execute(sql, &all)
}
