//! The row codec: the columns of a task, how a row reads as a [`Task`] or a
//! [`TaskState`], and the arrays that write states and totals back in one statement.

use postgres::Row;
use postgres::types::ToSql;
use simplepyq_core::row::{self, RowValues};
use simplepyq_core::{Task, TaskId, TaskState, Timestamp, Totals, batch};

use crate::Tx;
use crate::error::{E, R, bad_value};

/// The columns [`task_from_row`] reads: the task's own, then [`STATE_COLUMNS`].
pub(crate) const COLUMNS: &str = simplepyq_core::task_columns!();

/// The columns of a [`TaskState`], as [`state_from_row`] reads them.
pub(crate) const STATE_COLUMNS: &str = simplepyq_core::state_columns!();

/// The arrays [`StateArrays`] binds to `$1..$10`: ids, then [`STATE_COLUMNS`].
pub(crate) const STATE_ARRAYS: &str = "$1::bigint[], $2::text[], $3::bigint[], $4::bigint[], \
                            $5::bigint[], $6::bigint[], $7::bigint[], $8::text[], \
                            $9::bigint[], $10::bigint[]";

/// The names of the columns of [`STATE_ARRAYS`] unnested.
pub(crate) const STATE_ALIASES: &str = "id, status, retries_left, max_retries, attempts, run_at, \
                             lease_until, last_error, updated_at, lost_runs";

/// Statuses of unfinished tasks, which hold their unique keys.
pub(crate) const UNFINISHED: &str = "('pending', 'delayed', 'running', 'waiting')";

pub(crate) fn millis(t: Timestamp) -> i64 {
    t.as_millis()
}

/// A row as [`simplepyq_core::row`] reads it.
struct Values<'a>(&'a Row);

impl RowValues for Values<'_> {
    type Error = E;

    fn int(&self, column: usize) -> R<i64> {
        Ok(self.0.try_get(column)?)
    }

    fn opt_int(&self, column: usize) -> R<Option<i64>> {
        Ok(self.0.try_get(column)?)
    }

    fn int32(&self, column: usize) -> R<i32> {
        Ok(self.0.try_get(column)?)
    }

    fn text<T>(&self, column: usize, read: impl FnOnce(&str) -> T) -> R<T> {
        Ok(read(self.0.try_get(column)?))
    }

    fn opt_text(&self, column: usize) -> R<Option<String>> {
        Ok(self.0.try_get(column)?)
    }

    fn bytes(&self, column: usize) -> R<Vec<u8>> {
        Ok(self.0.try_get(column)?)
    }

    fn bad_value(&self, column: &str, value: &dyn std::fmt::Display) -> E {
        bad_value(column, value)
    }
}

/// Reads the columns of [`STATE_COLUMNS`] starting at column `at`.
pub(crate) fn state_from_row(r: &Row, at: usize) -> R<TaskState> {
    row::read_state(&Values(r), at)
}

/// Reads the columns of [`COLUMNS`].
/// A mark of `InspectStore::stuck` from a row of `id, channel, attempt, since`.
pub(crate) fn stuck_from_row(r: &Row) -> R<simplepyq_core::Stuck> {
    row::read_stuck(&Values(r))
}

pub(crate) fn task_from_row(r: &Row) -> R<Task> {
    row::read_task(&Values(r))
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
    fn statements_take_the_columns_in_the_row_readers_order() {
        assert!(sql::CLAIM.replace("t.", "").ends_with(COLUMNS));
        assert!(sql::LOCK_EXPIRED.contains(&format!("id, channel, {STATE_COLUMNS} FROM")));
        assert!(sql::READ_STATES.contains(&format!("id, {STATE_COLUMNS}, has_dependents FROM")));
        assert!(sql::LOCK_STATES.contains(&format!("id, {STATE_COLUMNS}, has_dependents FROM")));
        let arrays = format!(
            "unnest({STATE_ARRAYS}, $11::bigint[], $12::bigint[], $13::bigint[], \
             $14::bigint[], $15::bigint[], $16::bytea[]) AS u({STATE_ALIASES}, held, done, \
             failed, retried, lease_lost, result)"
        );
        assert!(sql::FINISH.contains(&arrays), "{arrays}");
    }
}
