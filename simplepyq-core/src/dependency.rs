//! Tasks that wait for other tasks ([`crate::NewTask::after`]): the rules, written once for
//! every store.
//!
//! A store keeps one *edge* per parent of a task, beside the tasks: unsatisfied until the
//! parent is done, then satisfied. The edges of a task go when the task is deleted; a
//! parent's deletion leaves its children's edges (a dependent of a removed parent stays
//! failed, and says why).
//!
//! - Enqueueing a task with parents ([`resolve`], then [`start`]): every parent must exist
//!   and must not have failed. Parents are tasks enqueued before (or earlier in the same
//!   call): a task cannot wait for itself or for a later one, so there are no cycles. The
//!   task starts [`Status::Waiting`] unless every parent is done already.
//! - When tasks end ([`settle`], in the transaction that ends them): a done parent's edges
//!   are satisfied, and a child with no unsatisfied edge left is unblocked (due); a parent
//!   that failed, or was removed before it was done, fails its waiting children, and they
//!   theirs. Each child is changed once, however many of its parents end in one call, and,
//!   because the check runs in the transaction that satisfies the last edge (on PostgreSQL
//!   under the child's row lock), exactly once when its parents end at the same moment in
//!   different processes.
//! - Requeueing a failed task that waits for parents: see [`crate::batch::requeue`].
//!
//! Every step costs time in proportion to the edges it touches: a fan-in of n parents is
//! n edges satisfied one by one, each checked against the index of the child's edges.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use crate::transition::{Event, apply};
use crate::{Error, Parent, Result, Status, TaskId, TaskState, Timestamp, Totals};

/// What [`settle`] asks of a store, inside the transaction that ends the tasks.
pub trait Graph {
    /// Marks the edges from `parents` (done now) satisfied; returns the children they lead
    /// to, each once.
    fn satisfy(&mut self, parents: &[TaskId]) -> Result<Vec<TaskId>>;

    /// The edges from `parents`, as `(parent, child)`, satisfied or not.
    fn children(&mut self, parents: &[TaskId]) -> Result<Vec<(TaskId, TaskId)>>;

    /// Those of `children` that still have an unsatisfied edge.
    fn still_waiting(&mut self, children: &[TaskId]) -> Result<HashSet<TaskId>>;

    /// The channel and state of each of `ids` that exists. A store whose transactions run
    /// beside each other (PostgreSQL) locks these rows first, in id order, so that of two
    /// transactions satisfying a child's last two edges, the second sees the first's.
    fn states(&mut self, ids: &[TaskId]) -> Result<BTreeMap<TaskId, (String, TaskState)>>;
}

/// How a parent ended, for [`settle`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// It is done: its edges are satisfied.
    Done,
    /// It failed for good: its waiting children fail.
    Failed,
    /// It was deleted before it was done (cancelled, its channel removed): its waiting
    /// children fail.
    Removed,
}

impl Ended {
    /// How a task whose new status is `status` ended, if it did.
    pub fn of(status: Status) -> Option<Ended> {
        match status {
            Status::Done => Some(Ended::Done),
            Status::Failed => Some(Ended::Failed),
            _ => None,
        }
    }
}

/// A dependent task's change, for the store to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settled {
    /// The task.
    pub id: TaskId,
    /// Its channel (to wake its workers, and to count its failure in).
    pub channel: String,
    /// Its new state: due, or failed.
    pub state: TaskState,
    /// What the change counts in its channel's [`Totals`]: a failure.
    pub counted: Totals,
}

/// What becomes of the children of the tasks that `ended` (and of their children) at
/// `now`: the changes to write, in the same transaction.
pub fn settle(
    graph: &mut impl Graph,
    ended: impl IntoIterator<Item = (TaskId, Ended)>,
    now: Timestamp,
) -> Result<Vec<Settled>> {
    let mut done = Vec::new();
    let mut lost = BTreeMap::new();
    for (id, how) in ended {
        match how {
            Ended::Done => done.push(id),
            Ended::Failed => {
                lost.insert(id, false);
            }
            Ended::Removed => {
                lost.insert(id, true);
            }
        }
    }
    let mut settled = Vec::new();
    let mut changed = HashSet::new();
    if !done.is_empty() {
        let children = graph.satisfy(&done)?;
        if !children.is_empty() {
            let states = graph.states(&children)?;
            let waiting = graph.still_waiting(&children)?;
            let event = Event::Unblock { now };
            for (id, (channel, state)) in states {
                if state.status == Status::Waiting && !waiting.contains(&id) {
                    let next = apply(&state, &event).map_err(|r| r.into_error(id))?;
                    settled.push(Settled {
                        id,
                        channel,
                        counted: Totals::default(),
                        state: next,
                    });
                    changed.insert(id);
                }
            }
        }
    }
    // Failures cascade: a failed child is a failed parent of its own children.
    while !lost.is_empty() {
        let parents: Vec<TaskId> = lost.keys().copied().collect();
        let mut edges = graph.children(&parents)?;
        edges.sort_unstable_by_key(|&(parent, child)| (child, parent));
        let children: BTreeSet<TaskId> = edges.iter().map(|&(_, child)| child).collect();
        let children: Vec<TaskId> = children.into_iter().collect();
        let mut states = if children.is_empty() {
            BTreeMap::new()
        } else {
            graph.states(&children)?
        };
        let mut next_lost = BTreeMap::new();
        for (parent, child) in edges {
            if changed.contains(&child) {
                continue;
            }
            let Some((channel, state)) = states.remove(&child) else {
                continue;
            };
            if state.status != Status::Waiting {
                continue;
            }
            let removed = lost.get(&parent).copied().unwrap_or(false);
            let event = Event::ParentLost {
                now,
                parent,
                removed,
            };
            let next = apply(&state, &event).map_err(|r| r.into_error(child))?;
            settled.push(Settled {
                id: child,
                channel,
                counted: Totals::of(&event, next.status),
                state: next,
            });
            changed.insert(child);
            next_lost.insert(child, false);
        }
        lost = next_lost;
    }
    Ok(settled)
}

/// The parents of the task at `position` of an enqueue call, as ids, each once, in id
/// order; `earlier` holds the ids of the call's tasks before it.
///
/// [`Parent::Earlier`] must name a position before `position`: this is what makes cycles
/// impossible (every parent exists before its child).
pub fn resolve(position: usize, after: &[Parent], earlier: &[TaskId]) -> Result<Vec<TaskId>> {
    let mut ids = BTreeSet::new();
    for parent in after {
        let id = match *parent {
            Parent::Task(id) => id,
            Parent::Earlier(i) if i < position => *earlier.get(i).ok_or_else(|| {
                Error::config(format!(
                    "task {position} of the call waits for task {i}, which is not before it"
                ))
            })?,
            Parent::Earlier(i) => {
                return Err(Error::config(format!(
                    "task {position} of the call waits for task {i} of the call: a task \
                     can wait only for one before it"
                )));
            }
        };
        ids.insert(id);
    }
    Ok(ids.into_iter().collect())
}

/// The state a task with parents starts in (`state` is the one it would have with none),
/// and each parent's edge as `(parent, satisfied)`; `parents` are the parents' statuses,
/// `None` for one that does not exist.
///
/// A parent that does not exist (never enqueued, or deleted) or that failed is an error,
/// and the call adds nothing: the task could never run.
pub fn start(
    mut state: TaskState,
    parents: &[(TaskId, Option<Status>)],
) -> Result<(TaskState, Vec<(TaskId, bool)>)> {
    let mut edges = Vec::with_capacity(parents.len());
    for &(parent, status) in parents {
        match status {
            None => {
                return Err(Error::config(format!(
                    "parent task {parent} does not exist (it was never enqueued, or was \
                     deleted): a task can wait only for tasks in the store"
                )));
            }
            Some(Status::Failed) => {
                return Err(Error::config(format!(
                    "parent task {parent} failed: a task that waits for it would never run"
                )));
            }
            Some(status) => edges.push((parent, status == Status::Done)),
        }
    }
    if edges.iter().any(|&(_, satisfied)| !satisfied) {
        state.status = Status::Waiting;
    }
    Ok((state, edges))
}

/// [`resolve`], then [`start`]: the state and edges of the task at `position` of an enqueue
/// call (`state`: the one it would start in without parents; `earlier`: the ids of the
/// call's tasks before it), reading its parents' statuses with `statuses` (for the ids
/// given, in their order; `None` for one that does not exist).
pub fn start_task(
    task: &crate::NewTask,
    position: usize,
    earlier: &[TaskId],
    state: TaskState,
    statuses: impl FnOnce(&[TaskId]) -> Result<Vec<Option<Status>>>,
) -> Result<(TaskState, Vec<(TaskId, bool)>)> {
    let parents = resolve(position, &task.after, earlier)?;
    let found: Vec<(TaskId, Option<Status>)> =
        parents.iter().copied().zip(statuses(&parents)?).collect();
    start(state, &found)
}

/// Whether a failed task whose unsatisfied edges lead to `parents` (with their statuses,
/// `None` for one deleted) may be requeued, and if so whether it waits: `Some(true)` while
/// a parent is unfinished (or was `requeued` earlier in the same call), `Some(false)` with
/// none left, `None` (it stays failed) while a parent is failed or gone.
pub fn requeue(parents: &[(TaskId, Option<Status>)], requeued: &HashSet<TaskId>) -> Option<bool> {
    let mut waits = false;
    for &(parent, status) in parents {
        match status {
            _ if requeued.contains(&parent) => waits = true,
            None | Some(Status::Failed) => return None,
            Some(Status::Done) => {}
            Some(_) => waits = true,
        }
    }
    Some(waits)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::transition::parent_lost;

    const T0: Timestamp = Timestamp::from_millis(1_000);

    /// A graph in memory: edges `(child, parent) -> satisfied`, and states.
    #[derive(Default)]
    struct Mem {
        edges: BTreeMap<(TaskId, TaskId), bool>,
        states: HashMap<TaskId, TaskState>,
    }

    impl Graph for Mem {
        fn satisfy(&mut self, parents: &[TaskId]) -> Result<Vec<TaskId>> {
            let mut children = BTreeSet::new();
            for ((child, parent), satisfied) in &mut self.edges {
                if parents.contains(parent) {
                    *satisfied = true;
                    children.insert(*child);
                }
            }
            Ok(children.into_iter().collect())
        }

        fn children(&mut self, parents: &[TaskId]) -> Result<Vec<(TaskId, TaskId)>> {
            Ok(self
                .edges
                .keys()
                .filter(|(_, p)| parents.contains(p))
                .map(|&(c, p)| (p, c))
                .collect())
        }

        fn still_waiting(&mut self, children: &[TaskId]) -> Result<HashSet<TaskId>> {
            Ok(self
                .edges
                .iter()
                .filter(|((c, _), satisfied)| children.contains(c) && !**satisfied)
                .map(|((c, _), _)| *c)
                .collect())
        }

        fn states(&mut self, ids: &[TaskId]) -> Result<BTreeMap<TaskId, (String, TaskState)>> {
            Ok(ids
                .iter()
                .filter_map(|id| Some((*id, ("c".to_owned(), self.states.get(id)?.clone()))))
                .collect())
        }
    }

    fn id(n: i64) -> TaskId {
        TaskId::new(n)
    }

    fn waiting() -> TaskState {
        let mut s = TaskState::new(0, T0, T0);
        s.status = Status::Waiting;
        s
    }

    /// Tasks 1 and 2 are parents of 3; 3 is the parent of 4.
    fn diamond() -> Mem {
        let mut g = Mem::default();
        for (child, parent) in [(3, 1), (3, 2), (4, 3)] {
            g.edges.insert((id(child), id(parent)), false);
        }
        g.states.insert(id(3), waiting());
        g.states.insert(id(4), waiting());
        g
    }

    fn apply_all(g: &mut Mem, settled: &[Settled]) {
        for s in settled {
            g.states.insert(s.id, s.state.clone());
        }
    }

    #[test]
    fn a_child_is_due_once_its_last_parent_is_done() {
        let mut g = diamond();
        let first = settle(&mut g, [(id(1), Ended::Done)], T0).expect("settle");
        assert!(first.is_empty(), "2 is not done yet: {first:?}");
        let later = Timestamp::from_millis(5_000);
        let second = settle(&mut g, [(id(2), Ended::Done)], later).expect("settle");
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].id, id(3));
        assert_eq!(second[0].state.status, Status::Pending);
        assert_eq!(second[0].state.run_at, later, "queued behind what is due");
        assert!(second[0].counted.is_zero());
    }

    #[test]
    fn parents_done_together_unblock_their_child_once() {
        let mut g = diamond();
        let settled =
            settle(&mut g, [(id(1), Ended::Done), (id(2), Ended::Done)], T0).expect("settle");
        assert_eq!(settled.iter().map(|s| s.id).collect::<Vec<_>>(), [id(3)]);
    }

    #[test]
    fn a_failed_parent_fails_its_children_and_theirs() {
        let mut g = diamond();
        let settled = settle(&mut g, [(id(2), Ended::Failed)], T0).expect("settle");
        apply_all(&mut g, &settled);
        let errors: Vec<(TaskId, Option<String>)> = settled
            .iter()
            .map(|s| (s.id, s.state.last_error.clone()))
            .collect();
        assert_eq!(
            errors,
            [
                (id(3), Some(parent_lost(id(2), false))),
                (id(4), Some(parent_lost(id(3), false))),
            ]
        );
        assert!(settled.iter().all(|s| s.state.status == Status::Failed));
        assert!(settled.iter().all(|s| s.counted.failed == 1));
        // The other parent's end later changes nothing.
        assert!(
            settle(&mut g, [(id(1), Ended::Done)], T0)
                .expect("settle")
                .is_empty()
        );
    }

    #[test]
    fn a_removed_parent_is_named_as_removed() {
        let mut g = diamond();
        let settled = settle(&mut g, [(id(1), Ended::Removed)], T0).expect("settle");
        assert_eq!(settled[0].state.last_error, Some(parent_lost(id(1), true)));
    }

    #[test]
    fn a_child_failed_by_one_parent_is_not_unblocked_by_another() {
        let mut g = diamond();
        let settled =
            settle(&mut g, [(id(1), Ended::Done), (id(2), Ended::Failed)], T0).expect("settle");
        assert_eq!(settled[0].id, id(3));
        assert_eq!(settled[0].state.status, Status::Failed);
    }

    #[test]
    fn resolve_takes_earlier_tasks_of_the_call_only() {
        let earlier = [id(10), id(11)];
        let got = resolve(
            2,
            &[Parent::Earlier(1), Parent::Task(id(3)), Parent::Earlier(1)],
            &earlier,
        );
        assert_eq!(got.expect("resolve"), [id(3), id(11)]);
        assert!(
            resolve(1, &[Parent::Earlier(1)], &earlier).is_err(),
            "itself"
        );
        assert!(
            resolve(0, &[Parent::Earlier(1)], &earlier).is_err(),
            "a later one"
        );
    }

    #[test]
    fn start_waits_for_unfinished_parents_and_refuses_lost_ones() {
        let state = TaskState::new(0, T0, T0);
        let (s, edges) = start(
            state.clone(),
            &[(id(1), Some(Status::Done)), (id(2), Some(Status::Running))],
        )
        .expect("start");
        assert_eq!(s.status, Status::Waiting);
        assert_eq!(edges, [(id(1), true), (id(2), false)]);
        let (s, _) = start(state.clone(), &[(id(1), Some(Status::Done))]).expect("start");
        assert_eq!(s.status, Status::Pending, "every parent is done");
        assert!(start(state.clone(), &[(id(1), None)]).is_err());
        assert!(start(state, &[(id(1), Some(Status::Failed))]).is_err());
    }

    #[test]
    fn requeue_waits_for_unfinished_or_requeued_parents() {
        let none = HashSet::new();
        assert_eq!(requeue(&[], &none), Some(false));
        assert_eq!(
            requeue(&[(id(1), Some(Status::Pending))], &none),
            Some(true)
        );
        assert_eq!(requeue(&[(id(1), Some(Status::Failed))], &none), None);
        assert_eq!(requeue(&[(id(1), None)], &none), None);
        let requeued = HashSet::from([id(1)]);
        assert_eq!(
            requeue(&[(id(1), Some(Status::Failed))], &requeued),
            Some(true)
        );
    }
}
