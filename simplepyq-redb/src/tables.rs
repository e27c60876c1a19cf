//! The tables of the file and the indexes kept in step with each task: every change of a
//! task goes through [`Tables`], which updates the indexes, counts and totals with it.

use std::collections::{BTreeMap, HashMap};

use redb::{ReadTransaction, ReadableTable, Table, TableDefinition, WriteTransaction};
use simplepyq_core::transition::{Event, apply};
use simplepyq_core::{
    Claim, Error, ListFilter, NewTask, Result, Status, Task, TaskId, TaskState, Timestamp, Totals,
    batch,
};

use crate::error::{corrupt, db_err};
use crate::record::{self, status_code};
use crate::{to_id, to_key};

/// The layout version this build writes. Format 1 (one `queued` index, records without
/// priority and unique key) is upgraded on open; formats 2 (records without lost runs) and
/// 3 (without concurrency keys) only have their version raised, as their records are still
/// read (the version keeps builds that cannot read concurrency keys away).
/// Formats 4 (before tasks could wait for others), 5 (before records kept a trace
/// context) and 6 (before the tables of stuck marks and of rates per concurrency key, which
/// a build of format 6 would ignore) only have their version raised too.
pub(crate) const FORMAT: u64 = 7;

pub(crate) const TASKS: TableDefinition<u64, &[u8]> = TableDefinition::new("tasks");

/// Pending tasks in claim order: (channel, -priority, run-at, id).
pub(crate) const READY: TableDefinition<(&str, i64, i64, u64), ()> = TableDefinition::new("ready");

pub(crate) const DELAYED: TableDefinition<(&str, i64, u64), ()> = TableDefinition::new("delayed");

/// Unique keys of pending, delayed and running tasks: (channel, key) → id.
pub(crate) const UNIQUE: TableDefinition<(&str, &str), u64> = TableDefinition::new("unique_keys");

/// The index tables of format 1, dropped by the upgrade.
pub(crate) const FORMAT_1_INDEXES: [&str; 5] =
    ["queued", "leases", "channel_leases", "by_status", "counts"];

pub(crate) const LEASES: TableDefinition<(i64, u64), ()> = TableDefinition::new("leases");

pub(crate) const CHANNEL_LEASES: TableDefinition<(&str, i64, u64), ()> =
    TableDefinition::new("channel_leases");

pub(crate) const BY_STATUS: TableDefinition<(&str, u8, u64), ()> =
    TableDefinition::new("by_status");

pub(crate) const COUNTS: TableDefinition<(&str, u8), u64> = TableDefinition::new("counts");

pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("simplepyq_meta");

/// Running tasks per concurrency key: (channel, key) → how many.
pub(crate) const KEYS_RUNNING: TableDefinition<(&str, &str), u64> =
    TableDefinition::new("keys_running");

/// Pending tasks with a concurrency key, per channel: while a channel has none, a claim
/// takes its first due tasks without reading their records.
pub(crate) const KEYED_PENDING: TableDefinition<&str, u64> = TableDefinition::new("keyed_pending");

/// Each schedule's last firing, in milliseconds since the Unix epoch.
pub(crate) const SCHEDULES: TableDefinition<&str, i64> = TableDefinition::new("schedules");

/// Each channel's [`Totals`]: (done, failed, retried, lease lost).
pub(crate) const TOTALS: TableDefinition<&str, (u64, u64, u64, u64)> =
    TableDefinition::new("totals");

/// A done task's result (MessagePack), by id: what its handler gave when it succeeded.
pub(crate) const RESULTS: TableDefinition<u64, &[u8]> = TableDefinition::new("results");

/// Attempts marked stuck (`OutcomeStore::mark_stuck`): id → (attempt, since in
/// milliseconds). A mark counts while its attempt is its task's running attempt. Made by the
/// first mark: a file without it has none.
pub(crate) const STUCK: TableDefinition<u64, (u32, i64)> = TableDefinition::new("stuck");

/// The edges of tasks that wait for others: (child, parent) → 1 once the parent is done
/// (see [`simplepyq_core::dependency`]).
pub(crate) const EDGES: TableDefinition<(u64, u64), u8> = TableDefinition::new("edges");

/// The same edges by parent: (parent, child).
pub(crate) const DEPENDENTS: TableDefinition<(u64, u64), ()> = TableDefinition::new("dependents");

/// How many unsatisfied edges each waiting child has left (no entry for none).
pub(crate) const EDGES_LEFT: TableDefinition<u64, u64> = TableDefinition::new("edges_left");

pub(crate) const META_FORMAT: &str = "format";

pub(crate) const META_LAST_ID: &str = "last_id";

/// The tables of one write transaction.
pub(crate) struct Tables<'tx> {
    pub(crate) tasks: Table<'tx, u64, &'static [u8]>,
    pub(crate) ready: Table<'tx, (&'static str, i64, i64, u64), ()>,
    pub(crate) delayed: Table<'tx, (&'static str, i64, u64), ()>,
    pub(crate) unique: Table<'tx, (&'static str, &'static str), u64>,
    pub(crate) leases: Table<'tx, (i64, u64), ()>,
    pub(crate) channel_leases: Table<'tx, (&'static str, i64, u64), ()>,
    pub(crate) by_status: Table<'tx, (&'static str, u8, u64), ()>,
    pub(crate) counts: Table<'tx, (&'static str, u8), u64>,
    pub(crate) meta: Table<'tx, &'static str, u64>,
    pub(crate) keys_running: Table<'tx, (&'static str, &'static str), u64>,
    pub(crate) keyed_pending: Table<'tx, &'static str, u64>,
    pub(crate) results: Table<'tx, u64, &'static [u8]>,
    pub(crate) edges: Table<'tx, (u64, u64), u8>,
    pub(crate) dependents: Table<'tx, (u64, u64), ()>,
    pub(crate) edges_left: Table<'tx, u64, u64>,
}

impl<'tx> Tables<'tx> {
    pub(crate) fn open(tx: &'tx WriteTransaction) -> Result<Self> {
        Ok(Tables {
            tasks: tx.open_table(TASKS).map_err(db_err)?,
            ready: tx.open_table(READY).map_err(db_err)?,
            delayed: tx.open_table(DELAYED).map_err(db_err)?,
            unique: tx.open_table(UNIQUE).map_err(db_err)?,
            leases: tx.open_table(LEASES).map_err(db_err)?,
            channel_leases: tx.open_table(CHANNEL_LEASES).map_err(db_err)?,
            by_status: tx.open_table(BY_STATUS).map_err(db_err)?,
            counts: tx.open_table(COUNTS).map_err(db_err)?,
            meta: tx.open_table(META).map_err(db_err)?,
            keys_running: tx.open_table(KEYS_RUNNING).map_err(db_err)?,
            keyed_pending: tx.open_table(KEYED_PENDING).map_err(db_err)?,
            results: tx.open_table(RESULTS).map_err(db_err)?,
            edges: tx.open_table(EDGES).map_err(db_err)?,
            dependents: tx.open_table(DEPENDENTS).map_err(db_err)?,
            edges_left: tx.open_table(EDGES_LEFT).map_err(db_err)?,
        })
    }

    /// Adds tasks; a task whose unique key an unfinished task of its channel holds gets
    /// that task's id instead.
    pub(crate) fn add(&mut self, tasks: &[NewTask], now: Timestamp) -> Result<Vec<TaskId>> {
        let mut last = self
            .meta
            .get(META_LAST_ID)
            .map_err(db_err)?
            .map_or(0, |v| v.value());
        let mut ids = Vec::with_capacity(tasks.len());
        for (position, new) in tasks.iter().enumerate() {
            if let Some(key) = &new.unique_key {
                let existing = self
                    .unique
                    .get((new.channel.as_str(), key.as_str()))
                    .map_err(db_err)?;
                if let Some(id) = existing {
                    ids.push(to_id(id.value())?);
                    continue;
                }
            }
            last += 1;
            let mut task = new.to_task(to_id(last)?, now);
            if !new.after.is_empty() {
                let edges;
                (task.state, edges) = self.start(new, position, &ids, task.state)?;
                self.insert_edges(task.id, &edges)?;
            }
            self.index(&task, true)?;
            self.put(&task)?;
            ids.push(task.id);
        }
        self.meta.insert(META_LAST_ID, last).map_err(db_err)?;
        Ok(ids)
    }

    pub(crate) fn load(&self, id: TaskId) -> Result<Option<Task>> {
        let Some(bytes) = self.tasks.get(to_key(id)).map_err(db_err)? else {
            return Ok(None);
        };
        record::decode(id, bytes.value())
            .map(Some)
            .map_err(|e| corrupt(format!("task {id}: {e}")))
    }

    /// Adds (`add == true`) or removes the index entries and count of `task` as it stands.
    pub(crate) fn index(&mut self, task: &Task, add: bool) -> Result<()> {
        let (id, ch, s) = (to_key(task.id), task.channel.as_str(), &task.state);
        let code = status_code(s.status);
        let lease = s.lease_until.map_or(0, Timestamp::as_millis);
        if add {
            self.by_status.insert((ch, code, id), ()).map_err(db_err)?;
        } else {
            self.by_status.remove((ch, code, id)).map_err(db_err)?;
        }
        step(&mut self.counts, (ch, code), add)?;
        if let Some(key) = task.concurrency_key.as_deref() {
            match s.status {
                Status::Pending => step(&mut self.keyed_pending, ch, add)?,
                Status::Running => step(&mut self.keys_running, (ch, key), add)?,
                _ => {}
            }
        }
        if let Some(key) = task.unique_key.as_deref().filter(|_| !s.status.is_final()) {
            if add {
                self.unique.insert((ch, key), id).map_err(db_err)?;
            } else {
                self.unique.remove((ch, key)).map_err(db_err)?;
            }
        }
        let ready = (ch, -i64::from(task.priority), s.run_at.as_millis(), id);
        let delayed = (ch, s.run_at.as_millis(), id);
        match (s.status, add) {
            (Status::Pending, true) => {
                self.ready.insert(ready, ()).map_err(db_err)?;
            }
            (Status::Pending, false) => {
                self.ready.remove(ready).map_err(db_err)?;
            }
            (Status::Delayed, true) => {
                self.delayed.insert(delayed, ()).map_err(db_err)?;
            }
            (Status::Delayed, false) => {
                self.delayed.remove(delayed).map_err(db_err)?;
            }
            (Status::Running, true) => {
                self.leases.insert((lease, id), ()).map_err(db_err)?;
                self.channel_leases
                    .insert((ch, lease, id), ())
                    .map_err(db_err)?;
            }
            (Status::Running, false) => {
                self.leases.remove((lease, id)).map_err(db_err)?;
                self.channel_leases
                    .remove((ch, lease, id))
                    .map_err(db_err)?;
            }
            (Status::Done | Status::Failed | Status::Waiting, _) => {}
        }
        Ok(())
    }

    /// Whether `channel` has pending tasks with a concurrency key.
    pub(crate) fn has_keyed_pending(&self, channel: &str) -> Result<bool> {
        Ok(self.keyed_pending.get(channel).map_err(db_err)?.is_some())
    }

    pub(crate) fn put(&mut self, task: &Task) -> Result<()> {
        self.tasks
            .insert(to_key(task.id), record::encode(task).as_slice())
            .map_err(db_err)?;
        Ok(())
    }

    /// Applies `event` to `task`, re-indexes and stores it.
    pub(crate) fn transition(&mut self, task: &mut Task, event: &Event) -> Result<()> {
        let next = apply(&task.state, event).map_err(|r| r.into_error(task.id))?;
        self.set_state(task, next)
    }

    /// Gives `task` its new state, re-indexes and stores it.
    pub(crate) fn set_state(&mut self, task: &mut Task, next: TaskState) -> Result<()> {
        self.index(task, false)?;
        task.state = next;
        self.index(task, true)?;
        self.put(task)
    }

    /// Writes the changes of a [`batch`] rule to the tasks the rule read (`read`, by id);
    /// returns how many.
    pub(crate) fn write_changes(
        &mut self,
        changes: Vec<batch::Change>,
        mut read: HashMap<TaskId, Task>,
    ) -> Result<usize> {
        let n = changes.len();
        for (id, next) in changes {
            let mut task = read.remove(&id).ok_or(Error::NotFound(id))?;
            self.set_state(&mut task, next)?;
        }
        Ok(n)
    }

    pub(crate) fn transition_id(&mut self, id: TaskId, event: &Event) -> Result<Task> {
        let mut task = self.load(id)?.ok_or(Error::NotFound(id))?;
        self.transition(&mut task, event)?;
        Ok(task)
    }

    pub(crate) fn delete(&mut self, task: &Task) -> Result<()> {
        self.index(task, false)?;
        self.tasks.remove(to_key(task.id)).map_err(db_err)?;
        self.results.remove(to_key(task.id)).map_err(db_err)?;
        self.delete_edges(task.id)
    }

    /// Reads a task's state for a [`batch`] rule, keeping the task in `read` for the write.
    pub(crate) fn read_state(
        &self,
        id: TaskId,
        read: &mut HashMap<TaskId, Task>,
    ) -> Result<Option<TaskState>> {
        let Some(task) = self.load(id)? else {
            return Ok(None);
        };
        let state = task.state.clone();
        read.insert(id, task);
        Ok(Some(state))
    }

    /// Applies `event` to the task of each claim still held; returns how many.
    pub(crate) fn on_held(&mut self, claims: &[Claim], event: &Event) -> Result<usize> {
        let mut read = HashMap::new();
        let changes = batch::on_held(claims, event, |id| self.read_state(id, &mut read))?;
        self.write_changes(changes, read)
    }

    /// Ids of tasks with `status` in `channel`, or in every channel.
    pub(crate) fn ids_with_status(
        &self,
        channel: Option<&str>,
        status: Status,
    ) -> Result<Vec<TaskId>> {
        self.ids_with_status_up_to(channel, status, usize::MAX, |_| Ok(true))
    }

    /// Up to `max` ids of tasks with `status` (of `channel`, or every channel), in id
    /// order per channel, that `pick` keeps: it stops reading once it has `max`.
    pub(crate) fn ids_with_status_up_to(
        &self,
        channel: Option<&str>,
        status: Status,
        max: usize,
        mut pick: impl FnMut(TaskId) -> Result<bool>,
    ) -> Result<Vec<TaskId>> {
        let code = status_code(status);
        let entries = match channel {
            Some(ch) => self.by_status.range((ch, code, 0)..=(ch, code, u64::MAX)),
            None => self.by_status.iter(),
        }
        .map_err(db_err)?;
        let mut ids = Vec::new();
        for entry in entries {
            if ids.len() >= max {
                break;
            }
            let (key, _) = entry.map_err(db_err)?;
            let (_, c, id) = key.value();
            if c == code {
                let id = to_id(id)?;
                if pick(id)? {
                    ids.push(id);
                }
            }
        }
        Ok(ids)
    }

    /// Deletes the tasks `ids`; returns how many existed.
    pub(crate) fn delete_ids(&mut self, ids: &[TaskId]) -> Result<usize> {
        let mut n = 0;
        for id in ids {
            if let Some(task) = self.load(*id)? {
                self.delete(&task)?;
                n += 1;
            }
        }
        Ok(n)
    }
}

/// The (channel, status code) pairs of the status index that `filter` (which names a
/// channel, a status or both) selects: the channels come from the counts table.
pub(crate) fn status_pairs(
    read: &ReadTransaction,
    filter: &ListFilter,
) -> Result<Vec<(String, u8)>> {
    let codes: Vec<u8> = match filter.status {
        Some(s) => vec![status_code(s)],
        None => Status::ALL.map(status_code).to_vec(),
    };
    let channels = match &filter.channel {
        Some(c) => vec![c.clone()],
        None => channel_names(read)?,
    };
    Ok(channels
        .iter()
        .flat_map(|c| codes.iter().map(move |code| (c.clone(), *code)))
        .collect())
}

/// The channels with tasks, in order: the keys of the counts table.
pub(crate) fn channel_names(read: &ReadTransaction) -> Result<Vec<String>> {
    let table = match read.open_table(COUNTS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(db_err(e)),
    };
    let mut names: Vec<String> = Vec::new();
    for entry in table.iter().map_err(db_err)? {
        let (key, _) = entry.map_err(db_err)?;
        let name = key.value().0;
        if names.last().is_none_or(|last| last != name) {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

/// Totals as the `totals` table stores them.
pub(crate) fn stored_totals((done, failed, retried, lease_lost): (u64, u64, u64, u64)) -> Totals {
    Totals::from_figures([done, failed, retried, lease_lost])
}

/// Adds `counted` to the channels' totals.
pub(crate) fn add_totals(tx: &WriteTransaction, counted: &BTreeMap<String, Totals>) -> Result<()> {
    if counted.is_empty() {
        return Ok(());
    }
    let mut table = tx.open_table(TOTALS).map_err(db_err)?;
    for (channel, c) in counted {
        let mut sum = table
            .get(channel.as_str())
            .map_err(db_err)?
            .map_or_else(Totals::default, |v| stored_totals(v.value()));
        sum.add(*c);
        let [done, failed, retried, lease_lost] = sum.figures();
        table
            .insert(channel.as_str(), (done, failed, retried, lease_lost))
            .map_err(db_err)?;
    }
    Ok(())
}

/// Adds one to (`add`) or takes one from the count at `key` in `table`, keeping no entry
/// for a count of 0.
pub(crate) fn step<K: redb::Key + 'static>(
    table: &mut Table<'_, K, u64>,
    key: K::SelfType<'_>,
    add: bool,
) -> Result<()>
where
    for<'a> K::SelfType<'a>: Clone,
{
    let count = table
        .get(key.clone())
        .map_err(db_err)?
        .map_or(0, |v| v.value());
    let count = if add {
        count + 1
    } else {
        count.saturating_sub(1)
    };
    if count == 0 {
        table.remove(key).map_err(db_err)?;
    } else {
        table.insert(key, count).map_err(db_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use redb::ReadableDatabase;
    use redb::ReadableTableMetadata;
    use simplepyq_core::{
        AdminStore, ClaimStore, InspectStore, NewTask, OutcomeStore, StoreExt, Timestamp,
    };

    use crate::RedbStore;

    const T0: Timestamp = Timestamp::from_millis(1_000_000);

    #[test]
    pub(crate) fn indexes_stay_in_step_with_tasks() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = RedbStore::open(dir.path().join("q.redb")).expect("create");
        let tasks: Vec<NewTask> = (0..50)
            .map(|i| NewTask::new(if i % 2 == 0 { "a" } else { "b" }, vec![]).retries(1))
            .collect();
        store.enqueue(&tasks, T0).expect("enqueue");
        for t in store.claim("a", 10, T0, T0).expect("claim") {
            store.complete(t.claim(), T0).expect("complete");
        }
        store.claim("b", 5, T0, T0).expect("claim");
        store.recover_expired(T0, 3).expect("recover");
        store.remove_channel("a", T0).expect("remove");
        let db = store.database().expect("database");
        let read = db.begin_read().expect("read");
        let tasks = read.open_table(TASKS).expect("tasks").len().expect("len");
        let by_status = read
            .open_table(BY_STATUS)
            .expect("by_status")
            .len()
            .expect("len");
        let queued = read.open_table(READY).expect("ready").len().expect("len");
        let leases = read.open_table(LEASES).expect("leases").len().expect("len");
        let counts = store.counts(None).expect("counts");
        assert_eq!((tasks, by_status), (25, 25));
        assert_eq!((queued, leases), (25, 0));
        assert_eq!((counts.pending, counts.total()), (25, 25));
    }
}
