//! Putting tasks in and taking them out: enqueue, and the claim (due delayed tasks
//! promoted first), each a range scan of an index.

use redb::{ReadTransaction, ReadableTable, TableDefinition};
use simplepyq_core::transition::Event;
use simplepyq_core::{
    ClaimStore, CountedWindows, Flow, KeyLoad, KeyedClaim, KeyedWake, NewTask, Result, Task,
    TaskId, Timestamp, batch,
};

use crate::error::{corrupt, db_err};
use crate::flow::{
    KEY_WINDOWS, WINDOWS, allowance, existing, flow_in_read, flow_in_write, key_window_of,
    save_key_windows, window_of,
};
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
            if allowance_in_read(read, channel)? > 0
                && first_ready(read, channel, Some(now))?.is_some()
            {
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
            let key_windows = match flow.rate_per_key.filter(|_| keyed) {
                Some(_) => Some(tx.open_table(KEY_WINDOWS).map_err(db_err)?),
                None => None,
            };
            let keys = Keys {
                tasks: &t.tasks,
                running: &t.keys_running,
                windows: key_windows.as_ref(),
            };
            let (ids, counted) =
                choose(&t.ready, keyed.then_some(&keys), &flow, channel, limit, now)?;
            drop(key_windows);
            if let (Some(rate), Some(windows)) = (flow.rate, windows.as_mut())
                && !ids.is_empty()
            {
                let next = rate.take(window, now, ids.len());
                let value = (next.start.as_millis(), next.used);
                windows.insert(channel, value).map_err(db_err)?;
            }
            if let Some(rate) = flow.rate_per_key.filter(|_| keyed) {
                save_key_windows(tx, channel, rate, now, &counted)?;
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
            let ready = first_ready(read, channel, None)?;
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
/// as a read transaction sees it (neither the pause nor the channel's limit counted); with
/// `now` `None`, when a claim could next take one as far as their concurrency keys go
/// ([`KeyedWake`]).
fn first_ready(
    read: &ReadTransaction,
    channel: &str,
    now: Option<Timestamp>,
) -> Result<Option<i64>> {
    let ready = read.open_table(READY).map_err(db_err)?;
    let keyed = match existing(read.open_table(KEYED_PENDING))? {
        Some(table) => table.get(channel).map_err(db_err)?.is_some(),
        None => false,
    };
    let tables = if keyed {
        Some((
            read.open_table(TASKS).map_err(db_err)?,
            read.open_table(KEYS_RUNNING).map_err(db_err)?,
            existing(read.open_table(KEY_WINDOWS))?,
        ))
    } else {
        None
    };
    let keys = tables.as_ref().map(|(tasks, running, windows)| Keys {
        tasks,
        running,
        windows: windows.as_ref(),
    });
    let flow = flow_in_read(read, channel)?;
    let Some(now) = now else {
        return first_start(&ready, keys.as_ref(), &flow, channel);
    };
    let (first, _) = choose(&ready, keys.as_ref(), &flow, channel, 1, now)?;
    Ok(first.first().map(|&(_, run_at)| run_at))
}

/// What a claim of a channel with pending tasks that have concurrency keys reads: the
/// tasks' records, the running tasks per key, and the keys' windows of starts (none in a
/// file without them, or for a channel without a rate per key).
struct Keys<'t, T, R, W> {
    tasks: &'t T,
    running: &'t R,
    windows: Option<&'t W>,
}

impl<T, R, W> Keys<'_, T, R, W>
where
    T: ReadableTable<u64, &'static [u8]>,
    R: ReadableTable<(&'static str, &'static str), u64>,
    W: ReadableTable<(&'static str, &'static str), (i64, u32)>,
{
    /// The concurrency key of pending task `id`.
    fn key_of(&self, id: u64) -> Result<Option<String>> {
        let task = to_id(id)?;
        let bytes = self
            .tasks
            .get(id)
            .map_err(db_err)?
            .ok_or_else(|| corrupt(format!("pending task {task} has no record")))?;
        Ok(record::decode(task, bytes.value())
            .map_err(|e| corrupt(format!("task {task}: {e}")))?
            .concurrency_key)
    }

    /// The load of key `key` of `channel`.
    fn load(&self, channel: &str, key: &str) -> Result<KeyLoad> {
        let n = self.running.get((channel, key)).map_err(db_err)?;
        Ok(KeyLoad {
            running: n.map_or(0, |n| usize::try_from(n.value()).unwrap_or(usize::MAX)),
            window: key_window_of(self.windows, channel, key)?,
        })
    }
}

/// The due pending tasks of `channel` (with their run-at) that a claim at `now` of up to
/// `allowance` takes, in claim order: the first ones, or, when the channel has pending
/// tasks with concurrency keys (`keyed`), those core's [`KeyedClaim`] takes; and the keys'
/// windows of starts to save.
fn choose<T, R, W>(
    ready: &impl ReadableTable<Ready, ()>,
    keyed: Option<&Keys<'_, T, R, W>>,
    flow: &Flow,
    channel: &str,
    allowance: usize,
    now: Timestamp,
) -> Result<(Vec<(TaskId, i64)>, CountedWindows)>
where
    T: ReadableTable<u64, &'static [u8]>,
    R: ReadableTable<(&'static str, &'static str), u64>,
    W: ReadableTable<(&'static str, &'static str), (i64, u32)>,
{
    let mut claim = KeyedClaim::new(flow, allowance, now);
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
        let key = match keyed {
            Some(keys) => keys.key_of(id)?,
            None => None,
        };
        let load = |key: &str| match keyed {
            Some(keys) => keys.load(channel, key),
            None => Ok(KeyLoad::default()),
        };
        if claim.take(key.as_deref(), load)? {
            chosen.push((to_id(id)?, run_at));
        }
    }
    let windows = claim.windows();
    Ok((chosen, windows))
}

/// When a claim of `channel` could next take one of its pending tasks (they are due), as
/// far as their concurrency keys go (core's [`KeyedWake`]): `None` while every key is busy.
fn first_start<T, R, W>(
    ready: &impl ReadableTable<Ready, ()>,
    keyed: Option<&Keys<'_, T, R, W>>,
    flow: &Flow,
    channel: &str,
) -> Result<Option<i64>>
where
    T: ReadableTable<u64, &'static [u8]>,
    R: ReadableTable<(&'static str, &'static str), u64>,
    W: ReadableTable<(&'static str, &'static str), (i64, u32)>,
{
    let mut wake = KeyedWake::new(flow);
    let all = (channel, i64::MIN, i64::MIN, 0)..=(channel, i64::MAX, i64::MAX, u64::MAX);
    for entry in ready.range(all).map_err(db_err)? {
        let (_, _, run_at, id) = entry.map_err(db_err)?.0.value();
        let key = match keyed {
            Some(keys) => keys.key_of(id)?,
            None => None,
        };
        let load = |key: &str| match keyed {
            Some(keys) => keys.load(channel, key),
            None => Ok(KeyLoad::default()),
        };
        if wake.look(key.as_deref(), Timestamp::from_millis(run_at), load)? {
            break;
        }
    }
    Ok(wake.earliest().map(|t| t.as_millis()))
}
