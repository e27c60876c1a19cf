//! Tasks that wait for others: the edges in the `edges` and `dependents` tables, as the
//! rules of [`simplepyq_core::dependency`] read and write them, in the one write
//! transaction of the file at a time.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use redb::{ReadableTable, ReadableTableMetadata, WriteTransaction};
use simplepyq_core::dependency::{self, Ended, Graph};
use simplepyq_core::{NewTask, Result, Status, TaskId, TaskState, Timestamp, Totals};

use crate::error::db_err;
use crate::tables::{EDGES, Tables, add_totals, step};
use crate::{to_id, to_key};

/// The key range of the edges of child (or the dependents of parent) `id`.
fn of(id: TaskId) -> std::ops::RangeInclusive<(u64, u64)> {
    (to_key(id), 0)..=(to_key(id), u64::MAX)
}

impl Tables<'_> {
    /// The state task `position` of an enqueue call starts in, and its edges, for the task
    /// `state` would start without parents; `earlier` holds the ids of the call's tasks
    /// before it.
    pub(crate) fn start(
        &self,
        task: &NewTask,
        position: usize,
        earlier: &[TaskId],
        state: TaskState,
    ) -> Result<(TaskState, Vec<(TaskId, bool)>)> {
        dependency::start_task(task, position, earlier, state, |parents| {
            parents
                .iter()
                .map(|p| Ok(self.load(*p)?.map(|t| t.state.status)))
                .collect()
        })
    }

    /// Stores the edges of task `child`.
    pub(crate) fn insert_edges(&mut self, child: TaskId, edges: &[(TaskId, bool)]) -> Result<()> {
        for (parent, satisfied) in edges {
            let (c, p) = (to_key(child), to_key(*parent));
            self.edges
                .insert((c, p), u8::from(*satisfied))
                .map_err(db_err)?;
            self.dependents.insert((p, c), ()).map_err(db_err)?;
            if !satisfied {
                step(&mut self.edges_left, c, true)?;
            }
        }
        Ok(())
    }

    /// Deletes the edges of task `child`, which is deleted.
    pub(crate) fn delete_edges(&mut self, child: TaskId) -> Result<()> {
        let mut parents = Vec::new();
        for entry in self.edges.range(of(child)).map_err(db_err)? {
            parents.push(entry.map_err(db_err)?.0.value().1);
        }
        for parent in parents {
            self.edges.remove((to_key(child), parent)).map_err(db_err)?;
            self.dependents
                .remove((parent, to_key(child)))
                .map_err(db_err)?;
        }
        self.edges_left.remove(to_key(child)).map_err(db_err)?;
        Ok(())
    }

    /// The edges of child `id`: each parent, and whether it is done.
    pub(crate) fn edges_of(&self, id: TaskId) -> Result<Vec<(TaskId, bool)>> {
        let mut edges = Vec::new();
        for entry in self.edges.range(of(id)).map_err(db_err)? {
            let (key, satisfied) = entry.map_err(db_err)?;
            edges.push((to_id(key.value().1)?, satisfied.value() == 1));
        }
        Ok(edges)
    }

    /// The parents task `id` still waits for, with their statuses (`None` for one deleted).
    pub(crate) fn parents_left(&self, id: TaskId) -> Result<Vec<(TaskId, Option<Status>)>> {
        let mut left = Vec::new();
        for (parent, satisfied) in self.edges_of(id)? {
            if !satisfied {
                left.push((parent, self.load(parent)?.map(|t| t.state.status)));
            }
        }
        Ok(left)
    }

    /// Settles the children of the tasks that `ended` at `now` ([`dependency::settle`]):
    /// writes their changes and counts their failures; returns the channels of those now
    /// due.
    pub(crate) fn settle(
        &mut self,
        tx: &WriteTransaction,
        ended: Vec<(TaskId, Ended)>,
        now: Timestamp,
    ) -> Result<BTreeSet<String>> {
        let mut due = BTreeSet::new();
        if ended.is_empty() || self.edges.is_empty().map_err(db_err)? {
            return Ok(due);
        }
        let settled = dependency::settle(self, ended, now)?;
        for change in &settled {
            if let Some(mut task) = self.load(change.id)? {
                self.set_state(&mut task, change.state.clone())?;
            }
            if change.state.status.is_queued() {
                due.insert(change.channel.clone());
            }
        }
        let counted = settled.iter().map(|c| (c.channel.as_str(), c.counted));
        add_totals(tx, &Totals::by_channel(counted))?;
        Ok(due)
    }
}

/// The parents of task `id` in a read transaction, in id order.
pub(crate) fn parents(read: &redb::ReadTransaction, id: TaskId) -> Result<Vec<TaskId>> {
    let table = match read.open_table(EDGES) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(db_err(e)),
    };
    let mut parents = Vec::new();
    for entry in table.range(of(id)).map_err(db_err)? {
        parents.push(to_id(entry.map_err(db_err)?.0.value().1)?);
    }
    Ok(parents)
}

impl Graph for Tables<'_> {
    fn satisfy(&mut self, parents: &[TaskId]) -> Result<Vec<TaskId>> {
        let mut children = BTreeSet::new();
        for (parent, child) in self.children(parents)? {
            let key = (to_key(child), to_key(parent));
            let was = self
                .edges
                .insert(key, 1)
                .map_err(db_err)?
                .map(|v| v.value());
            if was == Some(0) {
                step(&mut self.edges_left, key.0, false)?;
            }
            children.insert(child);
        }
        Ok(children.into_iter().collect())
    }

    fn children(&mut self, parents: &[TaskId]) -> Result<Vec<(TaskId, TaskId)>> {
        let mut edges = Vec::new();
        for parent in parents {
            for entry in self.dependents.range(of(*parent)).map_err(db_err)? {
                edges.push((*parent, to_id(entry.map_err(db_err)?.0.value().1)?));
            }
        }
        Ok(edges)
    }

    fn still_waiting(&mut self, children: &[TaskId]) -> Result<HashSet<TaskId>> {
        let mut waiting = HashSet::new();
        for child in children {
            if self
                .edges_left
                .get(to_key(*child))
                .map_err(db_err)?
                .is_some()
            {
                waiting.insert(*child);
            }
        }
        Ok(waiting)
    }

    fn states(&mut self, ids: &[TaskId]) -> Result<BTreeMap<TaskId, (String, TaskState)>> {
        let mut states = BTreeMap::new();
        for id in ids {
            if let Some(task) = self.load(*id)? {
                states.insert(*id, (task.channel, task.state));
            }
        }
        Ok(states)
    }
}
