//! The rules a store applies to many tasks in one call that are not storage: which claims
//! still hold, what each outcome does, which failed tasks may be requeued, which tasks of a
//! batch repeat a unique key, and the order claims take tasks in.
//!
//! A store reads the states a call needs, passes them to one of these functions, and writes
//! the changes it returns, all in one transaction (or statement). What must run inside the
//! store's own statement for atomicity (SQL's `ORDER BY` of a claim, say) follows
//! [`claim_order`] there; nothing else is re-encoded.

use std::cmp::Reverse;
use std::collections::HashSet;

use crate::transition::{Event, apply};
use crate::{
    Claim, Error, IdSet, MAX_RESULT_BYTES, NewTask, Outcome, Result, Status, Task, TaskId,
    TaskState, Timestamp, Totals,
};

/// A task's new state, for the store to write.
pub type Change = (TaskId, TaskState);

/// How many tasks one transaction of an administrative call changes at most (clearing,
/// requeueing, removing, purging): a call over millions of tasks runs as many short
/// transactions, so that it holds no lock for long (on SQLite, the only writer) and no
/// statement runs into a statement timeout.
pub const BULK_BATCH: usize = 5_000;

/// Runs `step` (one transaction of an administrative call, changing at most [`BULK_BATCH`]
/// tasks and saying how many) until a step changes fewer; returns how many all changed.
pub fn in_batches(mut step: impl FnMut() -> Result<usize>) -> Result<usize> {
    let mut total = 0;
    loop {
        let n = step()?;
        total += n;
        if n < BULK_BATCH {
            return Ok(total);
        }
    }
}

/// Whether tasks with `status` may be purged ([`crate::AdminStore::purge_batch`]): done and
/// failed ones only.
pub fn purgeable(status: Status) -> Result<()> {
    match status {
        Status::Done | Status::Failed => Ok(()),
        other => Err(Error::config(format!(
            "only done and failed tasks are purged, not {} ones",
            other.as_str()
        ))),
    }
}

/// The most due delayed tasks one claim promotes to pending, earliest run-at (then id)
/// first. Until every due delayed task of a channel is promoted (more than this many came due
/// at once: a long outage, a large scheduled batch), priorities order only the promoted ones.
pub const PROMOTE_PER_CLAIM: usize = 1_000;

/// The order in which claims take due tasks: highest priority first, then earliest run-at,
/// then lowest id. Sort by this key, ascending.
pub fn claim_order(task: &Task) -> (Reverse<i32>, Timestamp, TaskId) {
    (Reverse(task.priority), task.state.run_at, task.id)
}

/// `event` for the task of each claim that still holds it; `state` reads a task's stored
/// state (`None` for a task that is gone). A task is changed once, however many times the
/// claims name it.
pub fn on_held(
    claims: &[Claim],
    event: &Event,
    mut state: impl FnMut(TaskId) -> Result<Option<TaskState>>,
) -> Result<Vec<Change>> {
    let mut changed = IdSet::with_capacity_and_hasher(claims.len(), Default::default());
    let mut changes = Vec::with_capacity(claims.len());
    for claim in claims {
        if changed.contains(&claim.id) {
            continue;
        }
        if let Some(s) = state(claim.id)?.filter(|s| claim.holds(s)) {
            let next = apply(&s, event).map_err(|r| r.into_error(claim.id))?;
            changes.push((claim.id, next));
            changed.insert(claim.id);
        }
    }
    Ok(changes)
}

/// What [`finish`] makes of a batch of outcomes.
#[derive(Debug)]
pub struct Finish {
    /// Each attempt's task's new status in order, or [`Error::LeaseLost`].
    pub statuses: Vec<Result<Status>>,
    /// The changes to write.
    pub changes: Vec<Change>,
    /// What each change counts, in the order of `changes` (see [`Totals::of`]).
    pub totals: Vec<Totals>,
    /// The result to store with each change's task, in the order of `changes`: a
    /// handler's result ([`Outcome::Returned`]), else none.
    pub results: Vec<Option<Vec<u8>>>,
}

impl Finish {
    /// What the changes count, summed per channel (see [`Totals::by_channel`]);
    /// `channel_of` names each changed task's channel.
    pub fn totals_by_channel<'a>(
        &self,
        channel_of: impl Fn(TaskId) -> Option<&'a str>,
    ) -> std::collections::BTreeMap<String, Totals> {
        let counted = self.changes.iter().zip(&self.totals);
        Totals::by_channel(counted.filter_map(|((id, _), &t)| Some((channel_of(*id)?, t))))
    }
}

/// How each attempt ended: its task's new status in order, or [`Error::LeaseLost`] for a
/// claim that no longer holds (or that this batch already recorded), the changes to write
/// and what each counts. `state` reads a task's stored state.
pub fn finish(
    results: &[(Claim, Outcome)],
    now: Timestamp,
    mut state: impl FnMut(TaskId) -> Result<Option<TaskState>>,
) -> Result<Finish> {
    let mut recorded = IdSet::with_capacity_and_hasher(results.len(), Default::default());
    let mut done = Finish {
        statuses: Vec::with_capacity(results.len()),
        changes: Vec::with_capacity(results.len()),
        totals: Vec::with_capacity(results.len()),
        results: Vec::with_capacity(results.len()),
    };
    for (claim, outcome) in results {
        let held = if recorded.contains(&claim.id) {
            None
        } else {
            state(claim.id)?.filter(|s| claim.holds(s))
        };
        let Some(s) = held else {
            done.statuses.push(Err(lease_lost(claim)));
            continue;
        };
        if let Some(result) = outcome.result().filter(|r| r.len() > MAX_RESULT_BYTES) {
            done.statuses.push(Err(Error::config(format!(
                "the result of task {} is {} bytes, over the limit of {MAX_RESULT_BYTES}",
                claim.id,
                result.len()
            ))));
            continue;
        }
        let event = Event::Finish {
            now,
            outcome: outcome.clone(),
        };
        let next = apply(&s, &event).map_err(|r| r.into_error(claim.id))?;
        done.statuses.push(Ok(next.status));
        done.totals.push(Totals::of(&event, next.status));
        done.results.push(outcome.result().map(<[u8]>::to_vec));
        done.changes.push((claim.id, next));
        recorded.insert(claim.id);
    }
    Ok(done)
}

/// The error for a claim that no longer holds its task.
pub fn lease_lost(claim: &Claim) -> Error {
    Error::LeaseLost {
        id: claim.id,
        attempt: claim.attempt,
    }
}

/// What a store answers [`requeue`] about a failed task.
pub trait RequeueLookup {
    /// Whether an unfinished task of `channel` holds the unique `key`.
    fn key_held(&mut self, channel: &str, key: &str) -> Result<bool>;

    /// The parents task `id` still waits for (its unsatisfied edges, see
    /// [`crate::dependency`]), with their statuses (`None` for one deleted).
    fn parents_left(&mut self, id: TaskId) -> Result<Vec<(TaskId, Option<Status>)>>;
}

/// Which of the failed tasks `failed` (in id order) go back to the queue, as
/// [`Event::Requeue`] with `retries`: each, unless its unique key is held by an unfinished
/// task or by a task requeued before it in this call (at most one unfinished task has a
/// key), or a parent it waits for is failed or gone and not requeued before it in this
/// call ([`crate::dependency::requeue`]). One with a parent left waits again.
pub fn requeue<'a>(
    failed: impl IntoIterator<Item = &'a Task>,
    now: Timestamp,
    retries: Option<u32>,
    lookup: &mut impl RequeueLookup,
) -> Result<Vec<Change>> {
    let mut taken: HashSet<(&str, &str)> = HashSet::new();
    let mut requeued = HashSet::new();
    let mut changes = Vec::new();
    for task in failed {
        let key = task.unique_key.as_deref();
        if let Some(key) = key
            && (taken.contains(&(task.channel.as_str(), key))
                || lookup.key_held(&task.channel, key)?)
        {
            continue;
        }
        let parents = lookup.parents_left(task.id)?;
        let Some(waiting) = crate::dependency::requeue(&parents, &requeued) else {
            continue;
        };
        if let Some(key) = key {
            taken.insert((task.channel.as_str(), key));
        }
        let event = Event::Requeue {
            now,
            retries,
            waiting,
        };
        let next = apply(&task.state, &event).map_err(|r| r.into_error(task.id))?;
        changes.push((task.id, next));
        requeued.insert(task.id);
    }
    Ok(changes)
}

/// For each task of an enqueue batch, the position of an earlier task of the batch with the
/// same channel and unique key (it is the same task: it gets that task's id), or `None`.
pub fn repeated_keys(tasks: &[NewTask]) -> Vec<Option<usize>> {
    let mut first = std::collections::HashMap::new();
    tasks
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let key = t.unique_key.as_deref()?;
            let at = *first.entry((t.channel.as_str(), key)).or_insert(i);
            (at != i).then_some(at)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Timestamp = Timestamp::from_millis(1_000);

    fn running(attempts: u32) -> TaskState {
        let mut s = TaskState::new(0, T0, T0);
        s.status = Status::Running;
        s.attempts = attempts;
        s.lease_until = Some(T0);
        s
    }

    #[test]
    fn finish_refuses_stale_and_repeated_claims() {
        let (a, b) = (TaskId::new(1), TaskId::new(2));
        let results = [
            (Claim { id: a, attempt: 1 }, Outcome::Returned(vec![0xc0])),
            (Claim { id: b, attempt: 1 }, Outcome::Succeeded),
            (Claim { id: a, attempt: 1 }, Outcome::Succeeded),
        ];
        let Finish {
            statuses,
            changes,
            totals,
            results: kept,
        } = finish(&results, T0, |id| {
            Ok(Some(running(if id == a { 1 } else { 2 })))
        })
        .expect("finish");
        assert_eq!(totals.len(), 1);
        assert_eq!(totals[0].done, 1);
        assert!(matches!(statuses[0], Ok(Status::Done)));
        assert!(matches!(statuses[1], Err(Error::LeaseLost { .. })));
        assert!(matches!(statuses[2], Err(Error::LeaseLost { .. })));
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].1.status, Status::Done);
        assert_eq!(
            kept,
            vec![Some(vec![0xc0])],
            "the held attempt's result only"
        );
    }

    /// A stale attempt's outcome beside the live one's, in one batch: the stale one is
    /// refused, the live one recorded, in either order.
    #[test]
    fn a_stale_claim_does_not_hide_the_live_one() {
        let a = TaskId::new(1);
        let (stale, live) = (Claim { id: a, attempt: 1 }, Claim { id: a, attempt: 2 });
        for claims in [[stale, live], [live, stale]] {
            let results = claims.map(|c| (c, Outcome::Succeeded));
            let Finish {
                statuses, changes, ..
            } = finish(&results, T0, |_| Ok(Some(running(2)))).expect("finish");
            let live_at = usize::from(claims[0] == stale);
            assert!(
                matches!(statuses[live_at], Ok(Status::Done)),
                "{statuses:?}"
            );
            assert!(matches!(
                statuses[1 - live_at],
                Err(Error::LeaseLost { .. })
            ));
            assert_eq!(changes.len(), 1);
            let released = on_held(&claims, &Event::Release { now: T0 }, |_| {
                Ok(Some(running(2)))
            })
            .expect("release");
            assert_eq!(released.len(), 1);
        }
    }

    #[test]
    fn requeue_keeps_keys_unique() {
        let failed = |id: i64, key: Option<&str>| {
            let mut t = NewTask::new("c", vec![]).to_task(TaskId::new(id), T0);
            t.unique_key = key.map(str::to_owned);
            t.state.status = Status::Failed;
            t
        };
        let tasks = [
            failed(1, Some("k")),
            failed(2, Some("k")),
            failed(3, None),
            failed(4, Some("held")),
        ];
        struct Held;
        impl RequeueLookup for Held {
            fn key_held(&mut self, _: &str, key: &str) -> Result<bool> {
                Ok(key == "held")
            }
            fn parents_left(&mut self, _: TaskId) -> Result<Vec<(TaskId, Option<Status>)>> {
                Ok(Vec::new())
            }
        }
        let changes = requeue(&tasks, T0, Some(2), &mut Held).expect("requeue");
        let ids: Vec<i64> = changes.iter().map(|(id, _)| id.get()).collect();
        assert_eq!(ids, vec![1, 3]);
        assert!(
            changes
                .iter()
                .all(|(_, s)| s.status == Status::Pending && s.retries_left == 2)
        );
    }

    #[test]
    fn repeated_keys_point_at_their_first_task() {
        let t = |ch: &str, key: Option<&str>| {
            let task = NewTask::new(ch, vec![]);
            match key {
                Some(k) => task.unique_key(k),
                None => task,
            }
        };
        let tasks = [
            t("a", Some("k")),
            t("a", None),
            t("a", Some("k")),
            t("b", Some("k")),
            t("b", Some("k")),
        ];
        assert_eq!(
            repeated_keys(&tasks),
            vec![None, None, Some(0), None, Some(3)]
        );
    }

    #[test]
    fn claim_order_is_priority_then_run_at_then_id() {
        let task = |id: i64, priority: i32, run_at: i64| {
            NewTask::new("c", vec![])
                .priority(priority)
                .run_at(Timestamp::from_millis(run_at))
                .to_task(TaskId::new(id), T0)
        };
        let mut tasks = [task(1, 0, 5), task(2, 9, 9), task(3, 0, 1), task(4, 0, 1)];
        tasks.sort_by_key(claim_order);
        let ids: Vec<i64> = tasks.iter().map(|t| t.id.get()).collect();
        assert_eq!(ids, vec![2, 3, 4, 1]);
    }
}
