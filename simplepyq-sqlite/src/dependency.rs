//! Tasks that wait for others: the edges in `simplepyq_dependencies`, as the rules of
//! [`simplepyq_core::dependency`] read and write them, in the writer's transaction (the
//! only writer of the file: no two transactions settle a child at once).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use simplepyq_core::dependency::{self, Ended, Graph};
use simplepyq_core::{Error, NewTask, Result, Status, TaskId, TaskState, Timestamp, Totals};

use crate::error::{E, R};
use crate::outcome::add_totals;
use crate::row::{STATE_COLUMNS, save_state, state_from_row};

/// The statements that find edges, each by an index (`plans::dependency_queries_follow_an_index`):
/// a parent's children, a task's parents, and whether a child has a parent left. The last
/// two name their index: the system's SQLite (3.40 on Debian 12, which the Python package
/// links) chose the primary key instead, which reads a child's satisfied edges too.
pub(crate) const CHILDREN: &str = "SELECT child FROM simplepyq_dependencies WHERE parent = ?1";
pub(crate) const SATISFY: &str =
    "UPDATE simplepyq_dependencies SET satisfied = 1 WHERE parent = ?1 RETURNING child";
pub(crate) const PARENTS: &str =
    "SELECT parent FROM simplepyq_dependencies WHERE child = ?1 ORDER BY parent";
pub(crate) const ANY_LEFT: &str = "SELECT EXISTS (SELECT 1 FROM simplepyq_dependencies \
     INDEXED BY simplepyq_dependencies_left WHERE child = ?1 AND satisfied = 0)";
pub(crate) const PARENTS_LEFT: &str = "SELECT d.parent, t.status FROM simplepyq_dependencies d \
     INDEXED BY simplepyq_dependencies_left LEFT JOIN simplepyq_tasks t ON t.id = d.parent \
     WHERE d.child = ?1 AND d.satisfied = 0 ORDER BY d.parent";

/// Whether any task waits, or waited, for another: while none has, a task's end settles
/// nothing and costs this one lookup.
fn any(tx: &Transaction<'_>) -> R<bool> {
    Ok(tx
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM simplepyq_dependencies)")?
        .query_row([], |r| r.get(0))?)
}

/// Settles the children of the tasks that `ended` at `now` ([`dependency::settle`]):
/// writes their changes and counts their failures; returns the channels of those now due.
pub(crate) fn settle(
    tx: &Transaction<'_>,
    ended: Vec<(TaskId, Ended)>,
    now: Timestamp,
) -> R<BTreeSet<String>> {
    let mut due = BTreeSet::new();
    if ended.is_empty() || !any(tx)? {
        return Ok(due);
    }
    let settled = dependency::settle(&mut Edges(tx), ended, now)?;
    for change in &settled {
        save_state(tx, change.id, &change.state)?;
        if change.state.status.is_queued() {
            due.insert(change.channel.clone());
        }
    }
    let counted = settled.iter().map(|c| (c.channel.as_str(), c.counted));
    add_totals(tx, &Totals::by_channel(counted))?;
    Ok(due)
}

/// The tasks that `changes` end.
pub(crate) fn ended_by(changes: &[(TaskId, TaskState)]) -> Vec<(TaskId, Ended)> {
    changes
        .iter()
        .filter_map(|(id, s)| Some((*id, Ended::of(s.status)?)))
        .collect()
}

/// The state task `position` of an enqueue call starts in, and its edges, for the task
/// `state` would start without parents; `earlier` holds the ids of the call's tasks before
/// it ([`dependency::start_task`]).
pub(crate) fn start(
    tx: &Transaction<'_>,
    task: &NewTask,
    position: usize,
    earlier: &[TaskId],
    state: TaskState,
) -> R<(TaskState, Vec<(TaskId, bool)>)> {
    let mut status = tx.prepare_cached("SELECT status FROM simplepyq_tasks WHERE id = ?1")?;
    let statuses = |parents: &[TaskId]| -> Result<Vec<Option<Status>>> {
        let mut found = Vec::with_capacity(parents.len());
        for parent in parents {
            let s: Option<String> = status
                .query_row([parent.get()], |r| r.get(0))
                .optional()
                .map_err(E::from)?;
            found.push(s.map(|s| parse_status(&s)).transpose()?);
        }
        Ok(found)
    };
    Ok(dependency::start_task(
        task, position, earlier, state, statuses,
    )?)
}

/// Stores the edges of task `child`.
pub(crate) fn insert_edges(tx: &Transaction<'_>, child: TaskId, edges: &[(TaskId, bool)]) -> R<()> {
    let mut insert = tx.prepare_cached(
        "INSERT INTO simplepyq_dependencies (child, parent, satisfied) VALUES (?1, ?2, ?3)",
    )?;
    for (parent, satisfied) in edges {
        insert.execute(params![child.get(), parent.get(), satisfied])?;
    }
    Ok(())
}

/// The parents of task `id`, in id order.
pub(crate) fn parents(conn: &Connection, id: TaskId) -> R<Vec<TaskId>> {
    let mut stmt = conn.prepare_cached(PARENTS)?;
    let ids = stmt
        .query_map([id.get()], |r| r.get(0).map(TaskId::new))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(ids)
}

/// The parents task `id` still waits for, with their statuses (`None` for one deleted).
pub(crate) fn parents_left(tx: &Transaction<'_>, id: TaskId) -> R<Vec<(TaskId, Option<Status>)>> {
    let mut stmt = tx.prepare_cached(PARENTS_LEFT)?;
    let mut rows = stmt.query([id.get()])?;
    let mut left = Vec::new();
    while let Some(r) = rows.next()? {
        let status: Option<String> = r.get(1)?;
        left.push((
            TaskId::new(r.get(0)?),
            status.map(|s| parse_status(&s)).transpose()?,
        ));
    }
    Ok(left)
}

fn parse_status(s: &str) -> R<Status> {
    s.parse().map_err(|_| crate::error::bad_value("status", s))
}

/// The edges, as [`dependency::settle`] reads and writes them in `tx`.
struct Edges<'a, 'c>(&'a Transaction<'c>);

impl Graph for Edges<'_, '_> {
    fn satisfy(&mut self, parents: &[TaskId]) -> Result<Vec<TaskId>> {
        let mut stmt = self.0.prepare_cached(SATISFY).map_err(E::from)?;
        let mut children = BTreeSet::new();
        for parent in parents {
            let rows = stmt
                .query_map([parent.get()], |r| r.get(0).map(TaskId::new))
                .map_err(E::from)?;
            for child in rows {
                children.insert(child.map_err(E::from)?);
            }
        }
        Ok(children.into_iter().collect())
    }

    fn children(&mut self, parents: &[TaskId]) -> Result<Vec<(TaskId, TaskId)>> {
        let mut stmt = self.0.prepare_cached(CHILDREN).map_err(E::from)?;
        let mut edges = Vec::new();
        for parent in parents {
            let rows = stmt
                .query_map([parent.get()], |r| r.get(0).map(TaskId::new))
                .map_err(E::from)?;
            for child in rows {
                edges.push((*parent, child.map_err(E::from)?));
            }
        }
        Ok(edges)
    }

    fn still_waiting(&mut self, children: &[TaskId]) -> Result<HashSet<TaskId>> {
        let mut stmt = self.0.prepare_cached(ANY_LEFT).map_err(E::from)?;
        let mut waiting = HashSet::new();
        for child in children {
            let left: bool = stmt
                .query_row([child.get()], |r| r.get(0))
                .map_err(E::from)?;
            if left {
                waiting.insert(*child);
            }
        }
        Ok(waiting)
    }

    fn states(&mut self, ids: &[TaskId]) -> Result<BTreeMap<TaskId, (String, TaskState)>> {
        let mut stmt = self
            .0
            .prepare_cached(&format!(
                "SELECT channel, {STATE_COLUMNS} FROM simplepyq_tasks WHERE id = ?1"
            ))
            .map_err(E::from)?;
        let mut states = BTreeMap::new();
        for id in ids {
            let mut rows = stmt.query([id.get()]).map_err(E::from)?;
            if let Some(r) = rows.next().map_err(E::from)? {
                let channel: String = r.get(0).map_err(E::from)?;
                states.insert(*id, (channel, state_from_row(r, 1).map_err(Error::from)?));
            }
        }
        Ok(states)
    }
}
