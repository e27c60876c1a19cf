//! Administration: failed tasks cleared and requeued, channels removed, done tasks
//! purged, tasks cancelled; the bulk calls in batches of [`batch::BULK_BATCH`].

use std::collections::BTreeSet;

use rusqlite::{Transaction, params, params_from_iter};
use simplepyq_core::dependency::Ended;
use simplepyq_core::transition::cancel;
use simplepyq_core::{AdminStore, Error, Result, Status, TaskId, Timestamp, batch};

use crate::claim::KEY_HOLDER;
use crate::error::E;
use crate::inspect::channel_filter;
use crate::outcome::write_changes;
use crate::row::{COLUMNS, ids, load_state, select_tasks};
use crate::{SqliteStore, dependency};

impl AdminStore for SqliteStore {
    fn clear_failed(&self, channel: Option<&str>) -> Result<usize> {
        let sql = clear_failed_sql(channel);
        let channel = channel.map(str::to_owned);
        batch::in_batches(|| {
            let (sql, channel) = (sql.clone(), channel.clone());
            self.write(move |tx| Ok(tx.execute(&sql, params_from_iter(&channel))?))
        })
    }

    fn requeue_failed(
        &self,
        channel: Option<&str>,
        retries: Option<u32>,
        now: Timestamp,
    ) -> Result<usize> {
        let sql = failed_sql(channel);
        let only = channel.map(str::to_owned);
        // A batch at a time, each its own transaction, from past the last task seen (a task
        // whose unique key is held stays failed).
        let mut after = 0i64;
        let mut total = 0;
        loop {
            let (sql, only) = (sql.clone(), only.clone());
            let (seen, last, n, channels) = self.write(move |tx| {
                let failed = match &only {
                    Some(c) => select_tasks(tx, &sql, params![after, c])?,
                    None => select_tasks(tx, &sql, params![after])?,
                };
                let changes = batch::requeue(&failed, now, retries, &mut Lookup(tx))?;
                let channels: BTreeSet<String> = failed.iter().map(|t| t.channel.clone()).collect();
                let last = failed.last().map(|t| t.id.get());
                Ok((failed.len(), last, write_changes(tx, &changes)?, channels))
            })?;
            self.announce(n, &channels);
            total += n;
            match last {
                Some(last) if seen == batch::BULK_BATCH => after = last,
                _ => return Ok(total),
            }
        }
    }

    fn remove_channel(&self, channel: &str, now: Timestamp) -> Result<usize> {
        let mut total = 0;
        // Waiting tasks first: the channel's own are deleted, not failed, when their parents
        // of the channel go.
        let waiting_first = Status::ALL.into_iter().filter(|s| *s == Status::Waiting);
        let others = Status::ALL.into_iter().filter(|s| *s != Status::Waiting);
        for status in waiting_first.chain(others) {
            total += batch::in_batches(|| {
                let channel = channel.to_owned();
                self.write(move |tx| {
                    let removed = ids(tx, &remove_channel_sql(status), [&channel])?;
                    if !status.is_final() {
                        let ended = removed.iter().map(|id| (*id, Ended::Removed));
                        dependency::settle(tx, ended.collect(), now)?;
                    }
                    Ok(removed.len())
                })
            })?;
        }
        Ok(total)
    }

    fn purge_batch(
        &self,
        status: Status,
        channel: Option<&str>,
        before: Timestamp,
    ) -> Result<usize> {
        batch::purgeable(status)?;
        let sql = purge_sql(status, channel);
        let channel = channel.map(str::to_owned);
        self.write(move |tx| {
            let mut stmt = tx.prepare_cached(&sql)?;
            let n = match &channel {
                Some(c) => stmt.execute(params![before.as_millis(), c])?,
                None => stmt.execute([before.as_millis()])?,
            };
            Ok(n)
        })
    }

    fn cancel(&self, id: TaskId, now: Timestamp) -> Result<()> {
        self.write(move |tx| {
            let state = load_state(tx, id)?.ok_or(Error::NotFound(id))?;
            cancel(&state).map_err(|r| r.into_error(id))?;
            tx.execute("DELETE FROM simplepyq_tasks WHERE id = ?1", [id.get()])?;
            dependency::settle(tx, vec![(id, Ended::Removed)], now)?;
            Ok(())
        })
    }
}

/// What [`batch::requeue`] asks of the file, in the requeue's transaction.
struct Lookup<'a, 'c>(&'a Transaction<'c>);

impl batch::RequeueLookup for Lookup<'_, '_> {
    fn key_held(&mut self, channel: &str, key: &str) -> Result<bool> {
        let mut holder = self.0.prepare_cached(KEY_HOLDER).map_err(E::from)?;
        Ok(holder.exists(params![channel, key]).map_err(E::from)?)
    }

    fn parents_left(&mut self, id: TaskId) -> Result<Vec<(TaskId, Option<Status>)>> {
        Ok(dependency::parents_left(self.0, id)?)
    }
}

/// Deletes up to [`batch::BULK_BATCH`] tasks of channel ?1 with `status`, returning their
/// ids. No index holds
/// every row of a channel: a channel's tasks are deleted a status at a time, each following
/// its status's index (which SQLite uses only when the status is written in the query, not
/// bound).
pub(crate) fn remove_channel_sql(status: Status) -> String {
    format!(
        "DELETE FROM simplepyq_tasks WHERE id IN (SELECT id FROM simplepyq_tasks \
         WHERE channel = ?1 AND status = '{}' LIMIT {}) RETURNING id",
        status.as_str(),
        batch::BULK_BATCH
    )
}

/// Up to [`batch::BULK_BATCH`] failed tasks past id ?1, of channel ?2 if given, in id
/// order: a task requeued after the parent it waits for sees that parent requeued. Each
/// follows an index of failed tasks.
pub(crate) fn failed_sql(channel: Option<&str>) -> String {
    format!(
        "SELECT {COLUMNS} FROM simplepyq_tasks WHERE status = 'failed' AND id > ?1{} \
         ORDER BY id LIMIT {}",
        channel_filter(channel, 2),
        batch::BULK_BATCH
    )
}

/// Deletes up to [`batch::BULK_BATCH`] failed tasks (of channel ?1 if given).
pub(crate) fn clear_failed_sql(channel: Option<&str>) -> String {
    format!(
        "DELETE FROM simplepyq_tasks WHERE id IN (SELECT id FROM simplepyq_tasks WHERE status = 'failed'{} LIMIT {})",
        channel_filter(channel, 1),
        batch::BULK_BATCH
    )
}

/// Deletes up to [`batch::BULK_BATCH`] tasks with `status` (of channel ?2 if given) last
/// changed before ?1. The status is written in the query, so that its index is used.
pub(crate) fn purge_sql(status: Status, channel: Option<&str>) -> String {
    format!(
        "DELETE FROM simplepyq_tasks WHERE id IN (SELECT id FROM simplepyq_tasks \
         WHERE status = '{}' AND updated_at < ?1{} LIMIT {})",
        status.as_str(),
        channel_filter(channel, 2),
        batch::BULK_BATCH
    )
}
