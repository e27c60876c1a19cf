//! The row codec: the columns of a task, how a row reads as a [`Task`] or a
//! [`TaskState`], and the arrays that write states and totals back in one statement.

use postgres::Row;
use postgres::types::ToSql;
use simplepyq_core::{Task, TaskId, TaskState, Timestamp, Totals, batch};

use crate::Tx;
use crate::error::{R, bad_value};

/// The columns [`task_from_row`] reads: the task's own, then [`STATE_COLUMNS`].
pub(crate) const COLUMNS: &str = "id, channel, args, created_at, priority, unique_key, status, \
                       retries_left, max_retries, attempts, run_at, lease_until, last_error, \
                       updated_at, lost_runs";

/// The columns of a [`TaskState`], as [`state_from_row`] reads them.
pub(crate) const STATE_COLUMNS: &str = "status, retries_left, max_retries, attempts, run_at, \
                                        lease_until, last_error, updated_at, lost_runs";

/// The arrays [`StateArrays`] binds to `$1..$10`: ids, then [`STATE_COLUMNS`].
pub(crate) const STATE_ARRAYS: &str = "$1::bigint[], $2::text[], $3::bigint[], $4::bigint[], \
                            $5::bigint[], $6::bigint[], $7::bigint[], $8::text[], \
                            $9::bigint[], $10::bigint[]";

/// The names of the columns of [`STATE_ARRAYS`] unnested.
pub(crate) const STATE_ALIASES: &str = "id, status, retries_left, max_retries, attempts, run_at, \
                             lease_until, last_error, updated_at, lost_runs";

/// Statuses of unfinished tasks, which hold their unique keys.
pub(crate) const UNFINISHED: &str = "('pending', 'delayed', 'running')";

pub(crate) fn to_u32(what: &str, v: i64) -> R<u32> {
    u32::try_from(v).map_err(|_| bad_value(what, v))
}

pub(crate) fn millis(t: Timestamp) -> i64 {
    t.as_millis()
}

/// Reads the columns of [`STATE_COLUMNS`] starting at column `at`.
pub(crate) fn state_from_row(r: &Row, at: usize) -> R<TaskState> {
    let status: &str = r.try_get(at)?;
    Ok(TaskState {
        status: status.parse().map_err(|_| bad_value("status", status))?,
        retries_left: to_u32("retries_left", r.try_get(at + 1)?)?,
        max_retries: to_u32("max_retries", r.try_get(at + 2)?)?,
        attempts: to_u32("attempts", r.try_get(at + 3)?)?,
        run_at: Timestamp::from_millis(r.try_get(at + 4)?),
        lease_until: r
            .try_get::<_, Option<i64>>(at + 5)?
            .map(Timestamp::from_millis),
        last_error: r.try_get(at + 6)?,
        updated_at: Timestamp::from_millis(r.try_get(at + 7)?),
        lost_runs: to_u32("lost_runs", r.try_get(at + 8)?)?,
    })
}

/// Reads the columns of [`COLUMNS`].
pub(crate) fn task_from_row(r: &Row) -> R<Task> {
    Ok(Task {
        id: TaskId::new(r.try_get(0)?),
        channel: r.try_get(1)?,
        args: r.try_get(2)?,
        created_at: Timestamp::from_millis(r.try_get(3)?),
        priority: r.try_get(4)?,
        unique_key: r.try_get(5)?,
        state: state_from_row(r, 6)?,
    })
}

pub(crate) fn tasks_from_rows(rows: &[Row]) -> R<Vec<Task>> {
    rows.iter().map(task_from_row).collect()
}

/// Task states as the arrays of [`STATE_ARRAYS`], one per column.
#[derive(Default)]
pub(crate) struct StateArrays {
    ids: Vec<i64>,
    status: Vec<&'static str>,
    retries_left: Vec<i64>,
    max_retries: Vec<i64>,
    attempts: Vec<i64>,
    run_at: Vec<i64>,
    lease_until: Vec<Option<i64>>,
    last_error: Vec<Option<String>>,
    updated_at: Vec<i64>,
    lost_runs: Vec<i64>,
}

impl StateArrays {
    /// Whether it holds no state.
    pub(crate) fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The arrays of the changes of a [`batch`] rule.
    pub(crate) fn of(changes: &[batch::Change]) -> Self {
        let mut arrays = StateArrays::default();
        for (id, state) in changes {
            arrays.push(*id, state);
        }
        arrays
    }

    pub(crate) fn push(&mut self, id: TaskId, s: &TaskState) {
        self.ids.push(id.get());
        self.status.push(s.status.as_str());
        self.retries_left.push(i64::from(s.retries_left));
        self.max_retries.push(i64::from(s.max_retries));
        self.attempts.push(i64::from(s.attempts));
        self.run_at.push(millis(s.run_at));
        self.lease_until.push(s.lease_until.map(millis));
        self.last_error.push(s.last_error.clone());
        self.updated_at.push(millis(s.updated_at));
        self.lost_runs.push(i64::from(s.lost_runs));
    }

    pub(crate) fn params(&self) -> [&(dyn ToSql + Sync); 10] {
        [
            &self.ids,
            &self.status,
            &self.retries_left,
            &self.max_retries,
            &self.attempts,
            &self.run_at,
            &self.lease_until,
            &self.last_error,
            &self.updated_at,
            &self.lost_runs,
        ]
    }

    /// Stores each state in its task's row.
    pub(crate) fn save(&self, tx: &mut Tx<'_, '_>) -> R<()> {
        if self.ids.is_empty() {
            return Ok(());
        }
        tx.execute(
            &format!(
                "UPDATE tasks t SET status = u.status, retries_left = u.retries_left, \
                 max_retries = u.max_retries, attempts = u.attempts, run_at = u.run_at, \
                 lease_until = u.lease_until, last_error = u.last_error, \
                 updated_at = u.updated_at, lost_runs = u.lost_runs \
                 FROM unnest({STATE_ARRAYS}) AS u({STATE_ALIASES}) WHERE t.id = u.id"
            ),
            &self.params(),
        )?;
        Ok(())
    }
}

/// Totals as arrays, one per figure: done, failed, retried, lease lost.
pub(crate) struct TotalsArrays([Vec<i64>; 4]);

impl TotalsArrays {
    pub(crate) fn of(totals: impl Iterator<Item = Totals>) -> Self {
        let mut arrays: [Vec<i64>; 4] = Default::default();
        for t in totals {
            for (array, figure) in arrays.iter_mut().zip(t.to_i64s()) {
                array.push(figure);
            }
        }
        TotalsArrays(arrays)
    }

    pub(crate) fn params(&self) -> [&(dyn ToSql + Sync); 4] {
        let [done, failed, retried, lease_lost] = &self.0;
        [done, failed, retried, lease_lost]
    }
}

/// A locked task: its id, channel and state.
pub(crate) type Locked = (TaskId, String, TaskState);

/// Locks the tasks `ids` (in id order, so that two callers never deadlock) and reads their
/// channels and states.
pub(crate) fn lock_states(tx: &mut Tx<'_, '_>, ids: &[i64]) -> R<Vec<Locked>> {
    let rows = tx.query(
        &format!(
            "SELECT id, channel, {STATE_COLUMNS} FROM tasks WHERE id = ANY($1) \
             ORDER BY id FOR UPDATE"
        ),
        &[&ids],
    )?;
    rows.iter()
        .map(|r| {
            Ok((
                TaskId::new(r.try_get(0)?),
                r.try_get(1)?,
                state_from_row(r, 2)?,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sql;

    #[test]
    pub(crate) fn columns_end_with_the_state_columns() {
        assert!(COLUMNS.ends_with(STATE_COLUMNS));
        assert!(sql::CLAIM.replace("t.", "").ends_with(COLUMNS));
        assert!(sql::LOCK_EXPIRED.contains(&format!("id, channel, {STATE_COLUMNS} FROM")));
        assert!(sql::READ_STATES.contains(&format!("id, {STATE_COLUMNS} FROM")));
        let arrays = format!(
            "unnest({STATE_ARRAYS}, $11::bigint[], $12::bigint[], $13::bigint[], \
             $14::bigint[], $15::bigint[]) AS u({STATE_ALIASES}, held, done, failed, retried, \
             lease_lost)"
        );
        assert!(sql::FINISH.contains(&arrays), "{arrays}");
    }
}
