//! Putting tasks in and taking them out: enqueue, and the claim (due delayed tasks
//! promoted first), each a range scan of an index.

use redb::{ReadTransaction, ReadableTable, TableDefinition};
use simplepyq_core::transition::Event;
use simplepyq_core::{
    ClaimStore, Flow, KeyedClaim, NewTask, Result, Task, TaskId, Timestamp, batch,
};

use crate::error::{corrupt, db_err};
use crate::flow::{WINDOWS, allowance, existing, flow_in_read, flow_in_write, window_of};
use crate::record;
use crate::tables::{CHANNEL_LEASES, COUNTS, DELAYED, KEYED_PENDING, KEYS_RUNNING, READY, TASKS};
use crate::{RedbStore, to_id};

/// The index of pending tasks, in claim order.
type Ready = (&'static str, i64, i64, u64);

impl ClaimStore for RedbStore {
    fn watch(&self, wake: simplepyq_core::Wake) -> Option<simplepyq_core::Watch> {
        // One process has the file: its own queues are all there is to wake.
        Some(self.wakes.watch(wake))
    }

    fn enqueue(&self, tasks: &[NewTask], now: Timestamp) -> Result<Vec<TaskId>> {
        for t in tasks {
            t.validate()?;
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
        let due_delayed = (channel, i64::MIN, 0)..=(channel, now.as_millis(), u64::MAX);
        // Look in a read transaction first: idle workers poll without taking the writer.
        // Due delayed tasks are promoted unless the channel is paused, though it may be full.
        let idle = self.read(|read| {
            if flow_in_read(read, channel)?.paused {
                return Ok(true);
            }
            if allowance_in_read(read, channel)? > 0 && first_ready(read, channel, now)?.is_some() {
                return Ok(false);
            }
            let delayed = read.open_table(DELAYED).map_err(db_err)?;
            Ok(delayed
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
            let flow = flow_in_write(tx, channel)?;
            if flow.paused {
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
            let mut limit = allowance(&flow, Some(&t.counts), channel, limit)?;
            // A rate of starts: no more than its window's room, counted in this transaction.
            let mut windows = match flow.rate {
                Some(_) => Some(tx.open_table(WINDOWS).map_err(db_err)?),
                None => None,
            };
            let window = window_of(windows.as_ref(), channel)?;
            if let Some(rate) = flow.rate {
                limit = limit.min(rate.room(window, now));
            }
            let keyed = t.has_keyed_pending(channel)?;
            let ids = choose(
                &t.ready,
                keyed.then_some((&t.tasks, &t.keys_running)),
                &flow,
                channel,
                limit,
                now,
            )?;
            if let (Some(rate), Some(windows)) = (flow.rate, windows.as_mut())
                && !ids.is_empty()
            {
                let next = rate.take(window, now, ids.len());
                let value = (next.start.as_millis(), next.used);
                windows.insert(channel, value).map_err(db_err)?;
            }
            ids.into_iter()
                .map(|(id, _)| t.transition_id(id, &event))
                .collect()
        })
    }

    fn next_wakeup(&self, channel: &str) -> Result<Option<Timestamp>> {
        self.read(|read| {
            // A paused or full channel's queued tasks are not due, nor pending tasks whose
            // concurrency keys are busy.
            let paused = allowance_in_read(read, channel)? == 0;
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
                return Ok(lease.map(Timestamp::from_millis));
            }
            let ready = first_ready(read, channel, Timestamp::from_millis(i64::MAX))?;
            let delayed = first(DELAYED)?;
            // None before a used-up window of the channel's rate ends.
            let windows = existing(read.open_table(WINDOWS))?;
            let free_at = match flow_in_read(read, channel)?.rate {
                Some(rate) => rate.free_at(window_of(windows.as_ref(), channel)?),
                None => None,
            };
            let later = |t: Option<i64>| t.map(|t| free_at.map_or(t, |f| t.max(f.as_millis())));
            Ok([later(ready), later(delayed), lease]
                .into_iter()
                .flatten()
                .min()
                .map(Timestamp::from_millis))
        })
    }
}

/// How many tasks a claim of one may take from `channel` by its flow settings (0 while it
/// is paused or full), as a read transaction sees it.
fn allowance_in_read(read: &ReadTransaction, channel: &str) -> Result<usize> {
    let counts = existing(read.open_table(COUNTS))?;
    allowance(&flow_in_read(read, channel)?, counts.as_ref(), channel, 1)
}

/// The run-at of the first pending task of `channel` due by `now` that a claim would take,
/// as a read transaction sees it (neither the pause nor the channel's limit counted).
fn first_ready(read: &ReadTransaction, channel: &str, now: Timestamp) -> Result<Option<i64>> {
    let ready = read.open_table(READY).map_err(db_err)?;
    let keyed = match existing(read.open_table(KEYED_PENDING))? {
        Some(table) => table.get(channel).map_err(db_err)?.is_some(),
        None => false,
    };
    let tables = if keyed {
        Some((
            read.open_table(TASKS).map_err(db_err)?,
            read.open_table(KEYS_RUNNING).map_err(db_err)?,
        ))
    } else {
        None
    };
    let flow = flow_in_read(read, channel)?;
    let tables = tables.as_ref().map(|(tasks, running)| (tasks, running));
    let first = choose(&ready, tables, &flow, channel, 1, now)?;
    Ok(first.first().map(|&(_, run_at)| run_at))
}

/// The due pending tasks of `channel` (with their run-at) that a claim of up to
/// `allowance` takes, in claim order: the first ones, or, when the channel has pending
/// tasks with concurrency keys (`keyed`: the tasks and the running tasks per key), those
/// core's [`KeyedClaim`] takes.
fn choose(
    ready: &impl ReadableTable<Ready, ()>,
    keyed: Option<(
        &impl ReadableTable<u64, &'static [u8]>,
        &impl ReadableTable<(&'static str, &'static str), u64>,
    )>,
    flow: &Flow,
    channel: &str,
    allowance: usize,
    now: Timestamp,
) -> Result<Vec<(TaskId, i64)>> {
    let mut claim = KeyedClaim::new(flow, allowance);
    let mut chosen = Vec::new();
    let all = (channel, i64::MIN, i64::MIN, 0)..=(channel, i64::MAX, i64::MAX, u64::MAX);
    for entry in ready.range(all).map_err(db_err)? {
        if claim.is_full() {
            break;
        }
        let (_, _, run_at, id) = entry.map_err(db_err)?.0.value();
        // Pending tasks are due, unless another process's clock runs ahead.
        if run_at > now.as_millis() {
            continue;
        }
        let task = to_id(id)?;
        let key = match keyed {
            Some((tasks, _)) => {
                let bytes = tasks
                    .get(id)
                    .map_err(db_err)?
                    .ok_or_else(|| corrupt(format!("pending task {task} has no record")))?;
                record::decode(task, bytes.value())
                    .map_err(|e| corrupt(format!("task {task}: {e}")))?
                    .concurrency_key
            }
            None => None,
        };
        let running = |key: &str| -> Result<usize> {
            let Some((_, running)) = keyed else {
                return Ok(0);
            };
            let n = running.get((channel, key)).map_err(db_err)?;
            Ok(n.map_or(0, |n| usize::try_from(n.value()).unwrap_or(usize::MAX)))
        };
        if claim.take(key.as_deref(), running)? {
            chosen.push((task, run_at));
        }
    }
    Ok(chosen)
}
