//! Tasks that wait for others: the edges in `dependencies`, as the rules of
//! [`simplepyq_core::dependency`] read and write them.
//!
//! Transactions run side by side here, so each step takes its locks in an order that
//! settles every child exactly once:
//! - An enqueue marks each parent (`has_dependents`) with an `UPDATE`, under the parent's row
//!   lock, and reads the parent's status from the row it wrote: an outcome recorded before
//!   it is seen (a done parent adds a satisfied edge), and an outcome recorded after it finds
//!   the mark on the row it writes, and settles the new child ([`crate::outcome`]).
//! - An outcome that settles children satisfies its edges, then locks the children's rows
//!   (in id order), then looks for unsatisfied edges: of two parents ending at once, the
//!   second to take the child's lock sees the first's committed edge, and unblocks it.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use postgres::types::ToSql;
use simplepyq_core::dependency::{self, Ended, Graph};
use simplepyq_core::{NewTask, Result, Status, TaskId, TaskState, Timestamp, Totals};

use crate::error::{R, bad_value};
use crate::row::{StateArrays, TotalsArrays, lock_states};
use crate::{Tx, sql};

/// Settles the children of the tasks that `ended` at `now` ([`dependency::settle`]):
/// writes their changes, counts their failures, and wakes the workers of those now due.
pub(crate) fn settle(tx: &mut Tx<'_, '_>, ended: Vec<(TaskId, Ended)>, now: Timestamp) -> R<()> {
    if ended.is_empty() {
        return Ok(());
    }
    let settled = dependency::settle(&mut Edges(tx), ended, now)?;
    if settled.is_empty() {
        return Ok(());
    }
    let changes: Vec<(TaskId, TaskState)> =
        settled.iter().map(|c| (c.id, c.state.clone())).collect();
    StateArrays::of(&changes).save(tx)?;
    let sums = Totals::by_channel(settled.iter().map(|c| (c.channel.as_str(), c.counted)));
    if !sums.is_empty() {
        let names: Vec<&str> = sums.keys().map(String::as_str).collect();
        let figures = TotalsArrays::of(sums.values().copied());
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&names];
        params.extend(figures.params());
        tx.execute(sql::ADD_TOTALS, &params)?;
    }
    let due: BTreeSet<&str> = settled
        .iter()
        .filter(|c| c.state.status.is_queued())
        .map(|c| c.channel.as_str())
        .collect();
    if !due.is_empty() {
        // Delivered at the commit (of the caller's transaction too), to every queue
        // listening on the schema, this process's as well.
        let channels: Vec<&str> = due.into_iter().collect();
        tx.query(
            "SELECT pg_notify(left('simplepyq_' || current_schema(), 63), c) \
             FROM unnest($1::text[]) AS c",
            &[&channels],
        )?;
    }
    Ok(())
}

/// The state task `position` of an enqueue call starts in, and its edges, for the task
/// `state` would start without parents; `earlier` holds the ids of the call's tasks before
/// it. Marks each parent as having dependents, under its row lock (see the module).
pub(crate) fn start(
    tx: &mut Tx<'_, '_>,
    task: &NewTask,
    position: usize,
    earlier: &[TaskId],
    state: TaskState,
) -> R<(TaskState, Vec<(TaskId, bool)>)> {
    let statuses = |parents: &[TaskId]| -> Result<Vec<Option<Status>>> {
        let ids: Vec<i64> = parents.iter().map(|p| p.get()).collect();
        let marked = marked(tx, &ids)?;
        Ok(parents.iter().map(|p| marked.get(p).copied()).collect())
    };
    Ok(dependency::start_task(
        task, position, earlier, state, statuses,
    )?)
}

/// Inserts `tasks` (none with a unique key), some of which wait for others, in four
/// statements whatever their number: the parents already in the store are marked and read
/// (under their row locks, see the module), the tasks inserted in their starting states,
/// their edges inserted, and the parents among them marked. A parent earlier in the call is
/// new, hence unfinished: its children wait.
pub(crate) fn insert_all(tx: &mut Tx<'_, '_>, tasks: &[NewTask], now: Timestamp) -> R<Vec<TaskId>> {
    // Placeholders for the ids of the call's tasks, until they are inserted: -1 - position.
    let placeholder = |position: usize| TaskId::new(-1 - position as i64);
    let placeholders: Vec<TaskId> = (0..tasks.len()).map(placeholder).collect();
    let mut parents = Vec::with_capacity(tasks.len());
    for (position, task) in tasks.iter().enumerate() {
        parents.push(dependency::resolve(position, &task.after, &placeholders)?);
    }
    let stored: BTreeSet<i64> = parents
        .iter()
        .flatten()
        .map(|p| p.get())
        .filter(|p| *p >= 0)
        .collect();
    let stored = marked(tx, &stored.into_iter().collect::<Vec<i64>>())?;
    let mut states = Vec::with_capacity(tasks.len());
    let mut edges = Vec::with_capacity(tasks.len());
    for (task, parents) in tasks.iter().zip(&parents) {
        let found: Vec<(TaskId, Option<Status>)> = parents
            .iter()
            .map(|p| match p.get() {
                earlier if earlier < 0 => (*p, Some(Status::Pending)),
                _ => (*p, stored.get(p).copied()),
            })
            .collect();
        let (state, task_edges) = dependency::start(task.initial_state(now), &found)?;
        states.push(state);
        edges.push(task_edges);
    }
    let all: Vec<&NewTask> = tasks.iter().collect();
    let ids = crate::PostgresStore::insert_states(tx, &all, &states, now)?
        .into_iter()
        .map(|id| id.ok_or_else(|| bad_value("id", "none")))
        .collect::<R<Vec<TaskId>>>()?;
    let real = |p: TaskId| match p.get() {
        earlier if earlier < 0 => ids[usize::try_from(-1 - earlier).unwrap_or(0)],
        _ => p,
    };
    let (mut children, mut of, mut satisfied) = (Vec::new(), Vec::new(), Vec::new());
    for (child, task_edges) in ids.iter().zip(&edges) {
        for (parent, done) in task_edges {
            children.push(child.get());
            of.push(real(*parent).get());
            satisfied.push(*done);
        }
    }
    tx.execute(
        "INSERT INTO dependencies (child, parent, satisfied) \
         SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::boolean[])",
        &[&children, &of, &satisfied],
    )?;
    let new_parents: BTreeSet<i64> = edges
        .iter()
        .flatten()
        .filter(|(p, _)| p.get() < 0)
        .map(|(p, _)| real(*p).get())
        .collect();
    let new_parents: Vec<i64> = new_parents.into_iter().collect();
    tx.execute(
        "UPDATE tasks SET has_dependents = true WHERE id = ANY ($1)",
        &[&new_parents],
    )?;
    Ok(ids)
}

/// Marks the tasks `ids` as having dependents, under their row locks, and reads their
/// statuses (those that exist).
fn marked(tx: &mut Tx<'_, '_>, ids: &[i64]) -> R<BTreeMap<TaskId, Status>> {
    let rows = tx.query(
        "UPDATE tasks SET has_dependents = true WHERE id = ANY ($1) RETURNING id, status",
        &[&ids],
    )?;
    let mut statuses = BTreeMap::new();
    for r in rows {
        let status: String = r.try_get(1)?;
        let status: Status = status.parse().map_err(|_| bad_value("status", &status))?;
        statuses.insert(TaskId::new(r.try_get(0)?), status);
    }
    Ok(statuses)
}

/// Stores the edges of task `child`.
pub(crate) fn insert_edges(tx: &mut Tx<'_, '_>, child: TaskId, edges: &[(TaskId, bool)]) -> R<()> {
    if edges.is_empty() {
        return Ok(());
    }
    let parents: Vec<i64> = edges.iter().map(|(p, _)| p.get()).collect();
    let satisfied: Vec<bool> = edges.iter().map(|(_, s)| *s).collect();
    tx.execute(
        "INSERT INTO dependencies (child, parent, satisfied) \
         SELECT $1, p, s FROM unnest($2::bigint[], $3::boolean[]) AS u(p, s)",
        &[&child.get(), &parents, &satisfied],
    )?;
    Ok(())
}

/// The parents task `id` still waits for, with their statuses (`None` for one deleted).
pub(crate) fn parents_left(tx: &mut Tx<'_, '_>, id: TaskId) -> R<Vec<(TaskId, Option<Status>)>> {
    let rows = tx.query(
        "SELECT d.parent, t.status FROM dependencies d LEFT JOIN tasks t ON t.id = d.parent \
         WHERE d.child = $1 AND NOT d.satisfied ORDER BY d.parent",
        &[&id.get()],
    )?;
    let mut left = Vec::with_capacity(rows.len());
    for r in rows {
        let status: Option<String> = r.try_get(1)?;
        let status = match status {
            Some(s) => Some(s.parse().map_err(|_| bad_value("status", &s))?),
            None => None,
        };
        left.push((TaskId::new(r.try_get(0)?), status));
    }
    Ok(left)
}

/// The parents of task `id`, in id order.
pub(crate) const PARENTS: &str = "SELECT parent FROM dependencies WHERE child = $1 ORDER BY parent";

/// The edges, as [`dependency::settle`] reads and writes them in a transaction.
struct Edges<'a, 'b, 'c>(&'a mut Tx<'b, 'c>);

fn ids_of(ids: &[TaskId]) -> Vec<i64> {
    ids.iter().map(|id| id.get()).collect()
}

impl Graph for Edges<'_, '_, '_> {
    fn satisfy(&mut self, parents: &[TaskId]) -> Result<Vec<TaskId>> {
        let rows = self.0.query(
            "UPDATE dependencies SET satisfied = true WHERE parent = ANY ($1) AND NOT satisfied \
             RETURNING child",
            &[&ids_of(parents)],
        )?;
        let mut children = BTreeSet::new();
        for r in rows {
            children.insert(TaskId::new(r.try_get(0).map_err(crate::error::E::from)?));
        }
        Ok(children.into_iter().collect())
    }

    fn children(&mut self, parents: &[TaskId]) -> Result<Vec<(TaskId, TaskId)>> {
        let rows = self.0.query(
            "SELECT parent, child FROM dependencies WHERE parent = ANY ($1)",
            &[&ids_of(parents)],
        )?;
        rows.iter()
            .map(|r| {
                let parent = r.try_get(0).map_err(crate::error::E::from)?;
                let child = r.try_get(1).map_err(crate::error::E::from)?;
                Ok((TaskId::new(parent), TaskId::new(child)))
            })
            .collect()
    }

    fn still_waiting(&mut self, children: &[TaskId]) -> Result<HashSet<TaskId>> {
        let rows = self.0.query(
            "SELECT DISTINCT child FROM dependencies WHERE child = ANY ($1) AND NOT satisfied",
            &[&ids_of(children)],
        )?;
        let mut waiting = HashSet::new();
        for r in rows {
            waiting.insert(TaskId::new(r.try_get(0).map_err(crate::error::E::from)?));
        }
        Ok(waiting)
    }

    fn states(&mut self, ids: &[TaskId]) -> Result<BTreeMap<TaskId, (String, TaskState)>> {
        Ok(lock_states(self.0, &ids_of(ids))?
            .into_iter()
            .map(|(id, channel, state)| (id, (channel, state)))
            .collect())
    }
}
